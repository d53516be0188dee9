//! How the store reaches Redis: one server, a Redis Cluster, or the primary that Redis Sentinel
//! names; each over TLS (`rediss://`, with a custom CA and an optional client certificate) or
//! plain TCP.
//!
//! [`Conn`] is the one connection type the store's commands run on, whatever the topology:
//!
//! - **Standalone**: a [`ConnectionManager`], which reconnects in the background.
//! - **Cluster**: the cluster-aware client, which follows `MOVED` and `ASK`, refreshes the slot
//!   map after a failover or a resharding, and routes each command (and each Lua script, by its
//!   first key) to the primary owning its slot. Every multi-key command and script of the store
//!   touches keys of one hash slot (the layout in the [module docs](super)).
//! - **Sentinel**: [`SentinelPrimary`] asks the Sentinels for the primary, keeps one connection to
//!   it, and asks again after any error that says the primary may have changed (the connection
//!   dropped or was refused, a timeout, or `READONLY` from a demoted primary).
//!
//! A blocking read (`XREADGROUP … BLOCK`) holds its connection, so [`Connector::blocking`] makes
//! a connection of its own, without the per-command timeout, in the same topology.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{TcpSettings, socket2};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture, RedisResult, TlsCertificates,
    TlsMode, Value,
};

use crate::store::StoreError;

/// How the Redis deployment is laid out (`FULFILLD_REDIS_MODE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a managed endpoint that hides its failover behind one address).
    Standalone,
    /// Redis Cluster: `REDIS_URL` lists one or more of its nodes.
    Cluster,
    /// Redis Sentinel: `REDIS_URL` lists the Sentinels; `master` is the name they know the
    /// primary by.
    Sentinel { master: String },
}

impl RedisTopology {
    /// The setting's value for this topology.
    pub fn name(&self) -> &'static str {
        match self {
            RedisTopology::Standalone => "standalone",
            RedisTopology::Cluster => "cluster",
            RedisTopology::Sentinel { .. } => "sentinel",
        }
    }
}

/// TLS material beyond the system's roots, as PEM bytes (read from the files the settings name).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// `FULFILLD_REDIS_CA_FILE`: trust these CAs instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// `FULFILLD_REDIS_CLIENT_CERT_FILE` and `FULFILLD_REDIS_CLIENT_KEY_FILE`: the client
    /// certificate and its key, for servers that require one (`tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    fn certificates(&self) -> Option<TlsCertificates> {
        if self.ca.is_none() && self.client.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        })
    }
}

/// Where the store's Redis is: the URL(s), the topology and the TLS material.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// `REDIS_URL`, as given: one URL, or (cluster, sentinel) several separated by commas.
    pub url: String,
    pub topology: RedisTopology,
    pub tls: RedisTls,
}

impl RedisTarget {
    /// One standalone server at `url`, with the system's TLS roots.
    pub fn standalone(url: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_owned(),
            topology: RedisTopology::Standalone,
            tls: RedisTls::default(),
        }
    }

    /// The URLs of `REDIS_URL`, each parsed. Errors never quote a URL (it may hold a password).
    fn infos(&self, tcp: &TcpSettings) -> Result<Vec<ConnectionInfo>, StoreError> {
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(invalid("REDIS_URL is empty"));
        }
        if urls.len() > 1 && self.topology == RedisTopology::Standalone {
            return Err(invalid(format!(
                "REDIS_URL lists {} URLs: several are read only with FULFILLD_REDIS_MODE=cluster \
                 (nodes) or sentinel (Sentinels)",
                urls.len()
            )));
        }
        let mut infos = Vec::with_capacity(urls.len());
        for (n, url) in urls.iter().enumerate() {
            if url.contains("protocol=resp3") {
                return Err(invalid(
                    "REDIS_URL: protocol=resp3 is not supported; remove it (RESP2 is used)",
                ));
            }
            let info = url.into_connection_info().map_err(|e| {
                invalid(format!("REDIS_URL: URL {} is not a Redis URL: {e}", n + 1))
            })?;
            if let ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
                return Err(invalid(format!(
                    "REDIS_URL: URL {} turns off certificate checks (#insecure); trust the \
                     server's CA with FULFILLD_REDIS_CA_FILE instead",
                    n + 1
                )));
            }
            infos.push(info.set_tcp_settings(tcp.clone()));
        }
        if self.topology != RedisTopology::Standalone {
            let tls: Vec<bool> = infos.iter().map(|i| is_tls(i.addr())).collect();
            if tls.iter().any(|t| *t != tls[0]) {
                return Err(invalid(
                    "REDIS_URL mixes rediss:// and redis:// URLs: use one scheme for all",
                ));
            }
        }
        Ok(infos)
    }
}

fn is_tls(addr: &ConnectionAddr) -> bool {
    matches!(addr, ConnectionAddr::TcpTls { .. })
}

fn invalid(text: impl Into<String>) -> StoreError {
    StoreError::Invalid(text.into())
}

fn unavailable(what: &str, error: RedisError) -> StoreError {
    super::unavailable(what, error)
}

/// Makes the store's connections for one [`RedisTarget`].
pub(super) enum Connector {
    Standalone(Box<Client>),
    Cluster {
        /// With the per-command timeout.
        client: Box<ClusterClient>,
        /// Without it, for blocking reads.
        blocking: Box<ClusterClient>,
    },
    Sentinel(Arc<SentinelPrimary>),
}

impl Connector {
    /// Checks the target and builds the clients; connects to nothing yet.
    pub(super) fn new(target: &RedisTarget, timeout: Duration) -> Result<Connector, StoreError> {
        // A link that dies without a reset (a crashed host, a failover to another address, a NAT
        // dropping the flow) is noticed by the kernel within seconds, so the connection is
        // rebuilt instead of every command timing out for the ~15 minutes TCP retries last.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(2))
            .with_retries(3);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(timeout.max(Duration::from_secs(5)));
        let infos = target.infos(&tcp)?;
        let certificates = target.tls.certificates();
        if certificates.is_some() && !infos.iter().any(|i| is_tls(i.addr())) {
            return Err(invalid(
                "FULFILLD_REDIS_CA_FILE / FULFILLD_REDIS_CLIENT_CERT_FILE are set but REDIS_URL is \
                 not rediss://: use rediss:// for TLS, or unset them",
            ));
        }
        let bad = |e: RedisError| invalid(format!("REDIS_URL: {e}"));
        match &target.topology {
            RedisTopology::Standalone => {
                let info = infos
                    .into_iter()
                    .next()
                    .ok_or_else(|| invalid("REDIS_URL is empty"))?;
                let client = match certificates {
                    Some(certs) => Client::build_with_tls(info, certs),
                    None => Client::open(info),
                }
                .map_err(bad)?;
                Ok(Connector::Standalone(Box::new(client)))
            }
            RedisTopology::Cluster => {
                let builder = |response_timeout: Option<Duration>| {
                    let mut builder = ClusterClientBuilder::new(infos.clone())
                        .connection_timeout(timeout)
                        .tcp_settings(tcp.clone())
                        .retries(4)
                        .min_retry_wait(50)
                        .max_retry_wait(1000);
                    builder = match response_timeout {
                        Some(t) => builder.response_timeout(t),
                        None => builder.response_timeout(Duration::from_secs(24 * 3600)),
                    };
                    if let Some(certs) = &certificates {
                        builder = builder.certs(certs.clone());
                    }
                    builder.build().map_err(bad)
                };
                Ok(Connector::Cluster {
                    client: Box::new(builder(Some(timeout))?),
                    blocking: Box::new(builder(None)?),
                })
            }
            RedisTopology::Sentinel { master } => Ok(Connector::Sentinel(Arc::new(
                SentinelPrimary::new(&infos, master, certificates, &tcp, timeout)?,
            ))),
        }
    }

    /// The shared connection ordinary commands run on.
    pub(super) async fn shared(&self, timeout: Duration) -> Result<Conn, StoreError> {
        match self {
            Connector::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let conn = ConnectionManager::new_lazy_with_config(Client::clone(client), config)
                    .map_err(|e| unavailable("connect", e))?;
                Ok(Conn::Managed(conn))
            }
            Connector::Cluster { client, .. } => {
                let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(crate::store::Detail::new(format!(
                            "redis connect (cluster): no node answered within {} ms",
                            (timeout * 2).as_millis()
                        )))
                    })?
                    .map_err(|e| unavailable("connect (cluster)", e))?;
                Ok(Conn::Cluster(conn))
            }
            Connector::Sentinel(primary) => Ok(Conn::Sentinel(primary.clone())),
        }
    }

    /// A connection of its own for a blocking read.
    pub(super) async fn blocking(&self, connect_timeout: Duration) -> Result<Conn, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        match self {
            Connector::Standalone(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Conn::Direct)
                .map_err(|e| unavailable("connect (blocking reads)", e)),
            Connector::Cluster { blocking, .. } => {
                tokio::time::timeout(connect_timeout * 2, blocking.get_async_connection())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(crate::store::Detail::new(
                            "redis connect (blocking reads, cluster): no node answered",
                        ))
                    })?
                    .map(Conn::Cluster)
                    .map_err(|e| unavailable("connect (blocking reads, cluster)", e))
            }
            Connector::Sentinel(primary) => primary
                .connect(&config)
                .await
                .map(Conn::Direct)
                .map_err(|e| unavailable("connect (blocking reads, sentinel)", e)),
        }
    }
}

/// The primary that Redis Sentinel names, found again whenever it may have changed.
pub(super) struct SentinelPrimary {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
    master: String,
}

impl SentinelPrimary {
    fn new(
        sentinels: &[ConnectionInfo],
        master: &str,
        certificates: Option<TlsCertificates>,
        tcp: &TcpSettings,
        timeout: Duration,
    ) -> Result<SentinelPrimary, StoreError> {
        let first = sentinels
            .first()
            .ok_or_else(|| invalid("REDIS_URL lists no Sentinel"))?;
        let tls = is_tls(first.addr());
        let settings = first.redis_settings();
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|i| i.addr().clone()),
            master,
            SentinelServerType::Master,
        )
        .map_err(|e| invalid(format!("REDIS_URL (Sentinels): {e}")))?
        .set_client_to_redis_db(settings.db())
        .set_client_to_redis_tcp_settings(tcp.clone())
        .set_client_to_sentinel_tcp_settings(tcp.clone());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = builder
            .build()
            .map_err(|e| invalid(format!("REDIS_URL (Sentinels): {e}")))?;
        Ok(SentinelPrimary {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            master: master.to_owned(),
        })
    }

    /// A new connection to the primary the Sentinels name now.
    async fn connect(&self, config: &AsyncConnectionConfig) -> RedisResult<MultiplexedConnection> {
        let client = {
            let mut sentinels = self.sentinels.lock().await;
            sentinels.async_get_client().await?
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        tracing::debug!(master = %self.master, "connected to the primary Redis Sentinel names");
        Ok(conn)
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current.lock().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let conn = self.connect(&self.config).await?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(conn.clone());
        }
        Ok(conn)
    }

    /// After an error that says the primary may have moved, the next command asks the
    /// Sentinels again.
    fn after(&self, error: &RedisError) {
        if may_have_moved(error)
            && let Ok(mut current) = self.current.lock()
            && current.take().is_some()
        {
            tracing::warn!(
                master = %self.master,
                error = %error,
                "lost the Redis primary; asking the Sentinels for it again"
            );
        }
    }
}

/// An error after which the primary may be elsewhere.
fn may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || error.code() == Some("READONLY")
}

/// One connection of the store, whatever the topology.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelPrimary>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(primary) => async move {
                let mut conn = primary.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                if let Err(e) = &result {
                    primary.after(e);
                }
                result
            }
            .boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(primary) => async move {
                let mut conn = primary.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &result {
                    primary.after(e);
                }
                result
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, topology: RedisTopology) -> RedisTarget {
        RedisTarget {
            url: url.to_owned(),
            topology,
            tls: RedisTls::default(),
        }
    }

    fn problem(target: &RedisTarget) -> String {
        match Connector::new(target, Duration::from_secs(1)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_targets_are_named_without_the_password() {
        let several = target(
            "redis://:hunter2@a:6379,redis://:hunter2@b:6379",
            RedisTopology::Standalone,
        );
        let text = problem(&several);
        assert!(text.contains("FULFILLD_REDIS_MODE=cluster"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let mixed = target("rediss://a:6379,redis://b:6379", RedisTopology::Cluster);
        assert!(
            problem(&mixed).contains("mixes rediss://"),
            "{}",
            problem(&mixed)
        );

        let insecure = target(
            "rediss://:hunter2@a:6380/#insecure",
            RedisTopology::Standalone,
        );
        let text = problem(&insecure);
        assert!(
            text.contains("#insecure") && !text.contains("hunter2"),
            "{text}"
        );

        let mut ca_without_tls = target("redis://a:6379", RedisTopology::Standalone);
        ca_without_tls.tls.ca = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(problem(&ca_without_tls).contains("not rediss://"));

        let junk = target("redis://:hunter2@a:notaport", RedisTopology::Cluster);
        let text = problem(&junk);
        assert!(
            text.contains("URL 1 is not a Redis URL") && !text.contains("hunter2"),
            "{text}"
        );

        for ok in [
            target("redis://a:6379", RedisTopology::Standalone),
            target("redis://a:7000, redis://b:7001", RedisTopology::Cluster),
            target(
                "redis://:pw@s1:26379,redis://:pw@s2:26379/2",
                RedisTopology::Sentinel {
                    master: "mymaster".into(),
                },
            ),
            target("rediss://a:6380", RedisTopology::Standalone),
        ] {
            assert_eq!(problem(&ok), "", "{ok:?}");
        }
    }
}
