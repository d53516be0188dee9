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
mod connection;
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
use redis::{FromRedisValue, ScriptInvocation, Value};

use self::connection::{Conn, Connector};
pub use self::connection::{RedisTarget, RedisTls, RedisTopology};
use self::scripts::Scripts;
use crate::store::{Backend, ComponentShare, Detail, Store, StoreError};

/// How long one ordinary command may take before the store counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// In cluster and sentinel modes, how long a claim, an ingest or a hold waits for a replica to
/// have it.
const REPLICA_WAIT_MS: u64 = 500;

/// After a wait no replica answered, how long the store stops waiting (a primary without a
/// replica, e.g. right after a failover, must not stall every command behind a `WAIT`).
const NO_REPLICA_BACKOFF_MS: i64 = 5000;

/// A Redis-backed [`Store`].
pub struct RedisStore {
    connector: Connector,
    conn: Conn,
    topology: RedisTopology,
    namespace: String,
    /// Connections for blocking reads (`XREADGROUP ... BLOCK`): a blocked command holds its
    /// connection, so each concurrent claimer borrows one of its own.
    blocking: Mutex<Vec<Conn>>,
    scripts: Scripts,
    /// Until when (ms since the epoch) [`RedisStore::replicated`] does not wait.
    skip_replica_wait_until: std::sync::atomic::AtomicI64,
}

impl RedisStore {
    /// Connects to one Redis at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS with the system's roots) and checks the connection with a `PING`. Keys other than
    /// the cursor are prefixed with `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisStore, StoreError> {
        Self::connect_to(&RedisTarget::standalone(url), namespace).await
    }

    /// Connects to `target` (standalone, Cluster or Sentinel; TLS as its URLs and files say).
    pub async fn connect_to(
        target: &RedisTarget,
        namespace: &str,
    ) -> Result<RedisStore, StoreError> {
        Self::connect_with_timeout(target, namespace, COMMAND_TIMEOUT).await
    }

    /// [`RedisStore::connect_to`] with a custom per-command timeout.
    pub async fn connect_with_timeout(
        target: &RedisTarget,
        namespace: &str,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(StoreError::Invalid(format!(
                "Redis namespace {namespace:?}: must be non-empty and free of braces"
            )));
        }
        let connector = Connector::new(target, timeout)?;
        let conn = connector.shared(timeout).await?;
        let store = RedisStore {
            connector,
            conn,
            topology: target.topology.clone(),
            namespace: namespace.to_owned(),
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts::new(),
            skip_replica_wait_until: std::sync::atomic::AtomicI64::new(0),
        };
        store.ping_inner().await?;
        store.check_server().await?;
        Ok(store)
    }

    /// How this store reaches Redis.
    pub fn topology(&self) -> &RedisTopology {
        &self.topology
    }

    /// In cluster and sentinel modes, waits (`WAIT 1`, up to [`REPLICA_WAIT_MS`]) until a
    /// replica has what `conn` wrote so far, on the node serving `key`. Replication is
    /// asynchronous: without this, a primary killed right after a claim or a hold could take
    /// them with it, and the promoted replica would hand the same job to a second worker as new
    /// (delivery 1, a shared hold) while the first still runs it. A claim or hold no replica
    /// confirmed in time goes ahead (logged at WARN), and for the next
    /// [`NO_REPLICA_BACKOFF_MS`] nothing waits: a `WAIT` holds its connection, which the other
    /// commands share.
    async fn replicated(&self, conn: &mut Conn, key: &str) {
        use std::sync::atomic::Ordering;
        if self.topology == RedisTopology::Standalone
            || crate::domain::now_ms() < self.skip_replica_wait_until.load(Ordering::Relaxed)
        {
            return;
        }
        let mut pipe = redis::pipe();
        // The first command routes the pipeline to `key`'s node (Cluster); WAIT has no key.
        pipe.cmd("EXISTS")
            .arg(key)
            .ignore()
            .cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT_MS);
        match pipe.query_async::<(i64,)>(conn).await {
            Ok((n,)) if n >= 1 => {}
            Ok(_) => {
                self.skip_replica_wait_until.store(
                    crate::domain::now_ms() + NO_REPLICA_BACKOFF_MS,
                    Ordering::Relaxed,
                );
                tracing::warn!(
                    key,
                    "no Redis replica confirmed the write within {REPLICA_WAIT_MS} ms; going on \
                     without waiting for replicas for {NO_REPLICA_BACKOFF_MS} ms (a failover now \
                     could lose the last writes)"
                );
            }
            Err(e) => tracing::debug!(key, error = %e, "WAIT for a replica failed"),
        }
    }

    /// `INFO` of the server (on a cluster, of every primary, one after the other).
    pub async fn server_info(&self) -> Result<String, StoreError> {
        let value: Value = self.query(&redis::cmd("INFO"), "INFO").await?;
        Ok(info_text(value))
    }

    /// Refuses a Redis older than 6.2 (`XPENDING ... IDLE` and `XAUTOCLAIM` semantics), and warns
    /// when the server may lose or evict what the guarantees rest on.
    async fn check_server(&self) -> Result<(), StoreError> {
        let info = self.server_info().await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        // Every server's (a cluster answers primary by primary); a server that does not say is
        // taken as it is.
        for version in info
            .lines()
            .filter_map(|line| line.strip_prefix("redis_version:"))
        {
            check_redis_version(version)
                .map_err(|problem| StoreError::Invalid(format!("REDIS_URL: {problem}")))?;
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

    fn conn(&self) -> Conn {
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

    /// Runs a pipeline (`MULTI`/`EXEC` when atomic) whose keys share one hash slot; a failure is
    /// [`StoreError::Unavailable`] naming `what`.
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
        let _: Value = self.query(&redis::cmd("PING"), "PING").await?;
        Ok(started.elapsed())
    }

    /// A connection of its own for a blocking read, from the pool or new.
    async fn blocking_conn(&self) -> Result<Conn, StoreError> {
        let pooled = self.blocking.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        self.connector.blocking(COMMAND_TIMEOUT).await
    }

    fn return_blocking_conn(&self, conn: Conn) {
        if let Ok(mut pool) = self.blocking.lock() {
            pool.push(conn);
        }
    }
}

/// The oldest Redis the store runs on: `XPENDING ... IDLE` and `XAUTOCLAIM` as the queue uses
/// them came with 6.2.
pub const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// Whether a server whose `INFO` says `redis_version:<version>` is one the store runs on, and if
/// not, why. Only `major.minor` counts (`7`, `7.0.15`, `7.2.0-rc1`); a version that does not
/// start that way is refused too, as nothing says the commands the store needs are there.
pub fn check_redis_version(version: &str) -> Result<(), String> {
    let text = version.trim();
    let mut parts = text.split(['.', '-']);
    let number = |part: &str| part.parse::<u32>().ok();
    let major = parts.next().and_then(number);
    let minor = parts.next().map_or(Some(0), number);
    let (want_major, want_minor) = MIN_REDIS_VERSION;
    match major.zip(minor) {
        Some(found) if found >= MIN_REDIS_VERSION => Ok(()),
        Some(_) => Err(format!(
            "Redis {text} is too old; {want_major}.{want_minor} or newer is required"
        )),
        None => Err(format!(
            "Redis reports the version {text:?}, which is not a version number; \
             {want_major}.{want_minor} or newer is required"
        )),
    }
}

/// The text of an `INFO` answer: one server's, or a cluster's answers (node by node) joined.
fn info_text(value: Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::SimpleString(text) => text,
        Value::VerbatimString { text, .. } => text,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(_, v)| info_text(v))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(items) => items
            .into_iter()
            .map(info_text)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
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

#[cfg(test)]
mod tests {
    use super::check_redis_version;

    #[test]
    fn redis_older_than_6_2_is_refused_with_the_version_it_reported() {
        assert_eq!(
            check_redis_version("6.0.16"),
            Err("Redis 6.0.16 is too old; 6.2 or newer is required".to_owned())
        );
        for old in ["6.1.9", "5.0.14", "6", "2.8.24-rc1"] {
            let refused = check_redis_version(old).unwrap_err();
            assert!(
                refused.starts_with(&format!("Redis {old} is too old")),
                "{refused}"
            );
        }
    }

    #[test]
    fn redis_6_2_and_newer_is_accepted() {
        for version in [
            "6.2.0",
            "7.0.15",
            "6.2",
            "7",
            "10.0.0",
            "7.2.0-rc1",
            " 7.0.15\r",
        ] {
            assert_eq!(check_redis_version(version), Ok(()), "{version:?}");
        }
    }

    #[test]
    fn a_version_that_is_not_a_number_is_refused_as_unreadable() {
        for odd in [
            "",
            "  ",
            "seven",
            "v7.0.15",
            ".2",
            "7.x",
            "-1.0",
            "99999999999.0",
        ] {
            let refused = check_redis_version(odd).unwrap_err();
            assert!(
                refused.contains("which is not a version number; 6.2 or newer is required"),
                "{odd:?}: {refused}"
            );
        }
    }
}
