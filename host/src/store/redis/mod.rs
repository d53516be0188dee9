//! The Redis backend: several replicas share one Redis (or Redis Cluster).
//!
//! Key layout for a channel `<ch>` under namespace `<ns>` (every key of a channel carries the hash
//! tag `{sf:pe:replay:<ch>}`, and the cursor key `sf:pe:replay:<ch>` hashes to the same slot, so
//! each Lua script touches a single slot and runs on Redis Cluster):
//!
//! | key                                   | type   | holds                                        |
//! |---------------------------------------|--------|----------------------------------------------|
//! | `sf:pe:replay:<ch>`                   | string | the cursor: decimal value of the replay id   |
//! | `<ns>:{sf:pe:replay:<ch>}:lease`      | hash   | `holder`, `epoch`; expires with the lease     |
//! | `<ns>:{sf:pe:replay:<ch>}:epoch`      | string | the last epoch handed out (only grows)        |
//! | `<ns>:{sf:pe:replay:<ch>}:backfill`   | string | present while a backfill is requested         |
//! | `<ns>:{sf:pe:replay:<ch>}:jobs`       | stream | the job queue, consumer group `workers`       |
//! | `<ns>:{sf:pe:replay:<ch>}:dedupe:<u>` | string | EventUuid `<u>` seen; expires after 7 days    |
//! | `<ns>:{sf:pe:replay:<ch>}:dead`       | stream | dead letters                                  |
//! | `<ns>:record:<u>`                     | string | JSON [`JobRecord`] of EventUuid `<u>`         |
//! | `<ns>:journal:<u>`                    | list   | the job journal of `<u>` (JSON entries)       |
//! | `<ns>:order:<o>`                      | zset   | EventUuids of Order `<o>` (18 chars) by time  |
//! | `<ns>:failed`                         | zset   | EventUuids of failed jobs by finish time      |
//!
//! Outside the channels: `<ns>:component:<sha256>` (hash: `meta`, `wasm`, `signature`) is a
//! component version shared between replicas, `<ns>:component:active` (JSON) the version every
//! replica should run, and `<ns>:{hold:<name>}:shared` (sorted set of holders scored by expiry)
//! with `<ns>:{hold:<name>}:exclusive` (string with a TTL) a named hold.
//!
//! The cursor key is the runbook's (and the previous portal's): a value it wrote is read as is.
//! Job entries are removed (`XACK` + `XDEL`) when completed, so `XLEN` of the queue is its depth.
//!
//! Files: `keys` names the keys, `scripts` loads the Lua scripts of `lua/`, `codec` reads
//! replies; one file per concern of the [`Store`] (`cursor_lease`, `queue`, `dead_letters`,
//! `holds`, `components`).
//!
//! [`JobRecord`]: crate::store::JobRecord

mod codec;
mod components;
mod cursor_lease;
mod dead_letters;
mod holds;
mod journal;
mod keys;
mod queue;
mod scripts;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::{TcpSettings, socket2};
use redis::{
    AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo as _, ScriptInvocation,
};

use self::scripts::Scripts;
use crate::store::{Backend, ComponentShare, Detail, Store, StoreError};

/// How long one ordinary command may take before the store counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis-backed [`Store`].
pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
    namespace: String,
    /// Connections for blocking reads (`XREADGROUP ... BLOCK`): a blocked command holds its
    /// connection, so each concurrent claimer borrows one of its own.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    scripts: Scripts,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or `rediss://` for TLS) and
    /// checks the connection with a `PING`. Keys other than the cursor are prefixed with
    /// `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with_timeout(url, namespace, COMMAND_TIMEOUT).await
    }

    /// [`RedisStore::connect`] with a custom per-command timeout.
    pub async fn connect_with_timeout(
        url: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(StoreError::Invalid(format!(
                "Redis namespace {namespace:?}: must be non-empty and free of braces"
            )));
        }
        if url.contains("protocol=resp3") {
            return Err(StoreError::Invalid(
                "REDIS_URL: protocol=resp3 is not supported; remove it (RESP2 is used)".to_owned(),
            ));
        }
        let info = url
            .into_connection_info()
            .map_err(|e| StoreError::Invalid(format!("REDIS_URL: not a Redis URL: {e}")))?;
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
        let client = Client::open(info.set_tcp_settings(tcp))
            .map_err(|e| StoreError::Invalid(format!("REDIS_URL: not a Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| unavailable("connect", e))?;
        let store = RedisStore {
            client,
            conn,
            namespace: namespace.to_owned(),
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts::new(),
        };
        store.ping_inner().await?;
        store.check_server().await?;
        Ok(store)
    }

    /// Refuses a Redis older than 6.2 (`XPENDING ... IDLE` and `XAUTOCLAIM` semantics), and warns
    /// when the server may lose or evict what the guarantees rest on.
    async fn check_server(&self) -> Result<(), StoreError> {
        let info: String = self.query(&redis::cmd("INFO"), "INFO").await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if let Some(version) = field("redis_version") {
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (6, 2) {
                return Err(StoreError::Invalid(format!(
                    "REDIS_URL: Redis {version} is too old; 6.2 or newer is required"
                )));
            }
        }
        if let Some(policy) = field("maxmemory_policy")
            && policy != "noeviction"
        {
            tracing::warn!(
                maxmemory_policy = policy,
                "Redis may evict keys under memory pressure; deduplication keys and jobs can be \
                 lost: set maxmemory-policy noeviction"
            );
        }
        if field("aof_enabled") == Some("0") {
            tracing::info!(
                "Redis runs without an append-only file: a Redis restart loses what changed \
                 since its last snapshot (cursor, queued jobs, deduplication keys)"
            );
        }
        Ok(())
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one command; a failure is [`StoreError::Unavailable`] naming `what`.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: &str,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| unavailable(what, e))
    }

    /// Runs a pipeline (`MULTI`/`EXEC` when atomic); a failure is [`StoreError::Unavailable`]
    /// naming `what`.
    async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        what: &str,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| unavailable(what, e))
    }

    /// Runs one script (loading it when Redis does not know it); a failure is
    /// [`StoreError::Unavailable`] naming `what`.
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        what: &str,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        script
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(what, e))
    }

    async fn ping_inner(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        let _: String = self.query(&redis::cmd("PING"), "PING").await?;
        Ok(started.elapsed())
    }

    /// A connection of its own for a blocking read, from the pool or new.
    async fn blocking_conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let pooled = self.blocking.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable("connect (blocking reads)", e))
    }

    fn return_blocking_conn(&self, conn: MultiplexedConnection) {
        if let Ok(mut pool) = self.blocking.lock() {
            pool.push(conn);
        }
    }
}

fn unavailable(what: &str, error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(Detail::caused_by(format_args!("redis {what}"), error))
}

impl Store for RedisStore {
    fn backend(&self) -> Backend {
        Backend::Redis
    }

    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>> {
        self.ping_inner().boxed()
    }

    fn component_share(&self) -> Option<&dyn ComponentShare> {
        Some(self)
    }
}
