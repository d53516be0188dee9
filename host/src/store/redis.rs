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
//!
//! The cursor key is the runbook's (and the previous portal's): a value it wrote is read as is.
//! Job entries are removed (`XACK` + `XDEL`) when completed, so `XLEN` of the queue is its depth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::{TcpSettings, socket2};
use redis::{
    AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo as _, Script,
    ScriptInvocation, Value,
};

use super::{
    Backend, ClaimOptions, DEDUPE_TTL, DeadLetter, DeadLetterKind, IngestBatch, IngestReport, Job,
    JobRecord, Lease, LeaseInfo, Store, StoreError, cursor_key, now_ms,
};
use super::{SharedActive, SharedComponent};
use crate::domain::ReplayId;
use crate::holds::{HoldBackend, HoldError, HoldMode};

/// The consumer group every worker of every replica reads jobs through.
const GROUP: &str = "workers";

/// How long one ordinary command may take before the store counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How many idle pending jobs one claim looks at (those past their delivery limit are all
/// dead-lettered; at most `max` of the others are handed out).
const RECLAIM_SCAN: usize = 1000;

/// Extra time a blocking read gets on top of its `BLOCK` before it counts as failed.
const BLOCK_GRACE: Duration = Duration::from_secs(2);

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

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    ingest: Script,
    reclaim: Script,
    touch: Script,
    finish: Script,
    dead_letter_job: Script,
    requeue: Script,
    hold: Script,
    unhold: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            acquire: Script::new(ACQUIRE_LUA),
            renew: Script::new(RENEW_LUA),
            release: Script::new(RELEASE_LUA),
            ingest: Script::new(INGEST_LUA),
            reclaim: Script::new(RECLAIM_LUA),
            touch: Script::new(TOUCH_LUA),
            finish: Script::new(FINISH_LUA),
            dead_letter_job: Script::new(DEAD_LETTER_JOB_LUA),
            requeue: Script::new(REQUEUE_LUA),
            hold: Script::new(HOLD_LUA),
            unhold: Script::new(UNHOLD_LUA),
        }
    }
}

/// The keys of one channel.
struct ChannelKeys {
    cursor: String,
    lease: String,
    epoch: String,
    backfill: String,
    jobs: String,
    dead: String,
    dedupe_prefix: String,
}

impl ChannelKeys {
    fn new(namespace: &str, channel: &str) -> ChannelKeys {
        let cursor = cursor_key(channel);
        let base = format!("{namespace}:{{{cursor}}}");
        ChannelKeys {
            lease: format!("{base}:lease"),
            epoch: format!("{base}:epoch"),
            backfill: format!("{base}:backfill"),
            jobs: format!("{base}:jobs"),
            dead: format!("{base}:dead"),
            dedupe_prefix: format!("{base}:dedupe:"),
            cursor,
        }
    }
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

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.namespace, channel)
    }

    /// A shared component version: hash of `meta` (JSON), `wasm` and `signature`.
    fn component_key(&self, sha256: &str) -> String {
        format!("{}:component:{sha256}", self.namespace)
    }

    /// The version every replica should run (JSON [`SharedActive`]).
    fn active_component_key(&self) -> String {
        format!("{}:component:active", self.namespace)
    }

    /// The two keys of a hold, in one hash slot: holders in shared mode (a sorted set scored by
    /// expiry) and the exclusive holder (a string with a TTL).
    fn hold_keys(&self, name: &str) -> (String, String) {
        let base = format!("{}:{{hold:{name}}}", self.namespace);
        (format!("{base}:shared"), format!("{base}:exclusive"))
    }

    fn record_key(&self, event_uuid: &str) -> String {
        format!("{}:record:{event_uuid}", self.namespace)
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

    /// Hands `options.consumer` the jobs idle past `min_idle` (at most `max`), after moving
    /// every idle job delivered `max_deliveries` times to the dead letters.
    async fn reclaim(
        &self,
        channel: &str,
        keys: &ChannelKeys,
        options: &ClaimOptions,
    ) -> Result<Vec<Job>, StoreError> {
        let reply: Value = self
            .invoke(
                self.scripts
                    .reclaim
                    .key(&keys.jobs)
                    .key(&keys.dead)
                    .arg(&options.consumer)
                    .arg(ttl_ms(options.min_idle))
                    .arg(options.max)
                    .arg(options.max_deliveries.max(1))
                    .arg(now_ms())
                    .arg(GROUP)
                    .arg(RECLAIM_SCAN),
                "reclaim jobs",
            )
            .await?;
        // [[id, deliveries, [field, value, ...]], ...]
        let mut jobs = Vec::new();
        for item in array(reply) {
            let mut parts = array(item).into_iter();
            let id = parts.next().map(text).unwrap_or_default();
            let deliveries = parts.next().as_ref().and_then(int).unwrap_or(1);
            let fields = fields(parts.next().unwrap_or(Value::Nil));
            jobs.push(job_from_fields(
                channel,
                &id,
                &fields,
                u32::try_from(deliveries).unwrap_or(u32::MAX),
            )?);
        }
        Ok(jobs)
    }

    /// `XREADGROUP` of new jobs, blocking up to `block` on a connection of its own.
    async fn read_new(
        &self,
        channel: &str,
        jobs_key: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let block_ms = block.as_millis();
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms as u64);
        }
        cmd.arg("STREAMS").arg(jobs_key).arg(">");
        let value: Value = if block_ms > 0 {
            let mut conn = self.blocking_conn().await?;
            match tokio::time::timeout(block + BLOCK_GRACE, cmd.query_async(&mut conn)).await {
                Ok(Ok(value)) => {
                    self.return_blocking_conn(conn);
                    value
                }
                Ok(Err(e)) => return Err(unavailable("XREADGROUP", e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "XREADGROUP on {jobs_key}: no answer within {} ms",
                        (block + BLOCK_GRACE).as_millis()
                    )));
                }
            }
        } else {
            self.query(&cmd, "XREADGROUP").await?
        };
        // Nil on timeout, else [[stream, [[id, [field, value, ...]], ...]]].
        let mut jobs = Vec::new();
        for stream in array(value) {
            let mut parts = array(stream).into_iter();
            let _name = parts.next();
            for entry in parts.next().map(array).unwrap_or_default() {
                let mut entry = array(entry).into_iter();
                let id = entry.next().map(text).unwrap_or_default();
                let fields = fields(entry.next().unwrap_or(Value::Nil));
                jobs.push(job_from_fields(channel, &id, &fields, 1)?);
            }
        }
        Ok(jobs)
    }
}

fn unavailable(what: &str, error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: {error}"))
}

/// The elements of an array reply (empty for `Nil` or anything else).
fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        _ => Vec::new(),
    }
}

fn text(value: Value) -> String {
    String::from_utf8_lossy(&bytes(value)).into_owned()
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A stream entry's `[field, value, ...]` as a map.
fn fields(value: Value) -> HashMap<String, Vec<u8>> {
    let mut map = HashMap::new();
    let mut items = array(value).into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        map.insert(text(k), bytes(v));
    }
    map
}

fn field_text(
    fields: &HashMap<String, Vec<u8>>,
    name: &str,
    entry: &str,
) -> Result<String, StoreError> {
    let raw = fields
        .get(name)
        .ok_or_else(|| StoreError::Corrupt(format!("stream entry {entry}: no field {name:?}")))?;
    String::from_utf8(raw.clone()).map_err(|_| {
        StoreError::Corrupt(format!("stream entry {entry}: field {name:?} is not UTF-8"))
    })
}

fn field_int(
    fields: &HashMap<String, Vec<u8>>,
    name: &str,
    entry: &str,
) -> Result<i64, StoreError> {
    field_text(fields, name, entry)?.parse().map_err(|_| {
        StoreError::Corrupt(format!(
            "stream entry {entry}: field {name:?} is not a number"
        ))
    })
}

fn field_replay(fields: &HashMap<String, Vec<u8>>, entry: &str) -> Result<ReplayId, StoreError> {
    ReplayId::parse(&field_text(fields, "replay", entry)?)
        .map_err(|e| StoreError::Corrupt(format!("stream entry {entry}: field \"replay\": {e}")))
}

fn job_from_fields(
    channel: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    deliveries: u32,
) -> Result<Job, StoreError> {
    Ok(Job {
        id: id.to_owned(),
        channel: channel.to_owned(),
        event_uuid: field_text(fields, "uuid", id)?,
        replay_id: field_replay(fields, id)?,
        payload: fields.get("payload").cloned().unwrap_or_default(),
        deliveries,
        enqueued_at_ms: field_int(fields, "enq", id)?,
    })
}

fn dead_letter_from_entry(channel: &str, entry: Value) -> Result<DeadLetter, StoreError> {
    let mut entry = array(entry).into_iter();
    let id = entry.next().map(text).unwrap_or_default();
    let fields = fields(entry.next().unwrap_or(Value::Nil));
    let kind = match field_text(&fields, "kind", &id)?.as_str() {
        "undecodable" => DeadLetterKind::Undecodable,
        "job" => DeadLetterKind::Job,
        other => {
            return Err(StoreError::Corrupt(format!(
                "dead letter {id}: unknown kind {other:?}"
            )));
        }
    };
    Ok(DeadLetter {
        channel: channel.to_owned(),
        event_uuid: field_text(&fields, "uuid", &id)?,
        replay_id: field_replay(&fields, &id)?,
        payload: fields.get("payload").cloned().unwrap_or_default(),
        kind,
        reason: field_text(&fields, "reason", &id)?,
        deliveries: u32::try_from(field_int(&fields, "deliveries", &id)?).unwrap_or(u32::MAX),
        dead_at_ms: field_int(&fields, "dead", &id)?,
        id,
    })
}

/// A stream id as Redis writes them (`<ms>-<seq>`); anything else is no dead letter of ours.
fn is_stream_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => {
            !ms.is_empty()
                && !seq.is_empty()
                && ms.bytes().all(|b| b.is_ascii_digit())
                && seq.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store for RedisStore {
    fn backend(&self) -> Backend {
        Backend::Redis
    }

    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>> {
        self.ping_inner().boxed()
    }

    fn cursor<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReplayId>, StoreError>> {
        async move {
            let key = cursor_key(channel);
            let value: Option<String> = self
                .query(redis::cmd("GET").arg(&key), "GET cursor")
                .await?;
            value
                .map(|text| {
                    ReplayId::parse(&text).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
                })
                .transpose()
        }
        .boxed()
    }

    fn set_cursor<'a>(
        &'a self,
        channel: &'a str,
        replay_id: Option<&'a ReplayId>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = cursor_key(channel);
            let cmd = match replay_id {
                Some(id) => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(id.to_string());
                    cmd
                }
                None => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(&key);
                    cmd
                }
            };
            let _: Value = self.query(&cmd, "write cursor").await?;
            Ok(())
        }
        .boxed()
    }

    fn request_backfill<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let _: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(self.keys(channel).backfill)
                        .arg(now_ms()),
                    "SET backfill",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn backfill_requested<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let n: i64 = self
                .query(
                    redis::cmd("EXISTS").arg(self.keys(channel).backfill),
                    "EXISTS backfill",
                )
                .await?;
            Ok(n > 0)
        }
        .boxed()
    }

    fn acquire_lease<'a>(
        &'a self,
        channel: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        async move {
            let keys = self.keys(channel);
            let epoch: i64 = self
                .invoke(
                    self.scripts
                        .acquire
                        .key(&keys.lease)
                        .key(&keys.epoch)
                        .arg(holder)
                        .arg(ttl_ms(ttl)),
                    "acquire lease",
                )
                .await?;
            Ok(u64::try_from(epoch).ok().map(|epoch| Lease {
                channel: channel.to_owned(),
                holder: holder.to_owned(),
                epoch,
                ttl_ms: ttl_ms(ttl),
            }))
        }
        .boxed()
    }

    fn renew_lease<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let renewed: i64 = self
                .invoke(
                    self.scripts
                        .renew
                        .key(&keys.lease)
                        .arg(&lease.holder)
                        .arg(lease.epoch)
                        .arg(ttl_ms(ttl)),
                    "renew lease",
                )
                .await?;
            if renewed == 1 {
                Ok(Lease {
                    ttl_ms: ttl_ms(ttl),
                    ..lease.clone()
                })
            } else {
                Err(StoreError::Fenced {
                    channel: lease.channel.clone(),
                    detail: format!(
                        "lease epoch {} of {} expired or was taken over",
                        lease.epoch, lease.holder
                    ),
                })
            }
        }
        .boxed()
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let _: i64 = self
                .invoke(
                    self.scripts
                        .release
                        .key(&keys.lease)
                        .arg(&lease.holder)
                        .arg(lease.epoch),
                    "release lease",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, StoreError>> {
        async move {
            let keys = self.keys(channel);
            let mut conn = self.conn();
            let (holder, epoch, pttl): (Option<String>, Option<u64>, i64) = redis::pipe()
                .cmd("HGET")
                .arg(&keys.lease)
                .arg("holder")
                .cmd("HGET")
                .arg(&keys.lease)
                .arg("epoch")
                .cmd("PTTL")
                .arg(&keys.lease)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read lease", e))?;
            Ok(match (holder, epoch) {
                (Some(holder), Some(epoch)) if pttl > 0 => Some(LeaseInfo {
                    holder,
                    epoch,
                    expires_in_ms: u64::try_from(pttl).unwrap_or(0),
                }),
                _ => None,
            })
        }
        .boxed()
    }

    fn ingest<'a>(
        &'a self,
        lease: &'a Lease,
        batch: IngestBatch,
    ) -> BoxFuture<'a, Result<IngestReport, StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let mut invocation = self.scripts.ingest.prepare_invoke();
            invocation
                .key(&keys.lease)
                .key(&keys.cursor)
                .key(&keys.jobs)
                .key(&keys.dead)
                .key(&keys.backfill);
            for job in &batch.jobs {
                invocation.key(format!("{}{}", keys.dedupe_prefix, job.event_uuid));
            }
            invocation
                .arg(&lease.holder)
                .arg(lease.epoch)
                .arg(batch.jobs.len())
                .arg(batch.dead_letters.len())
                .arg(
                    batch
                        .cursor
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                )
                .arg(DEDUPE_TTL.as_secs())
                .arg(now_ms())
                .arg(GROUP);
            for job in &batch.jobs {
                invocation
                    .arg(&job.event_uuid)
                    .arg(job.replay_id.to_string())
                    .arg(job.payload.as_slice());
            }
            for letter in &batch.dead_letters {
                invocation
                    .arg(&letter.event_uuid)
                    .arg(letter.replay_id.to_string())
                    .arg(letter.payload.as_slice())
                    .arg(&letter.reason);
            }
            let reply: Value = self.invoke(&invocation, "ingest").await?;
            let mut reply = array(reply).into_iter();
            let status = reply.next().map(text).unwrap_or_default();
            if status == "fenced" {
                let holder = reply.next().map(text).unwrap_or_default();
                let epoch = reply.next().map(text).unwrap_or_default();
                return Err(StoreError::Fenced {
                    channel: lease.channel.clone(),
                    detail: if holder.is_empty() {
                        format!("lease epoch {} expired", lease.epoch)
                    } else {
                        format!("lease now held by {holder} at epoch {epoch}")
                    },
                });
            }
            if status != "ok" {
                return Err(StoreError::Corrupt(format!(
                    "ingest script answered {status:?}"
                )));
            }
            let flags = reply.next().map(bytes).unwrap_or_default();
            let mut report = IngestReport {
                dead_lettered: batch.dead_letters.len(),
                ..IngestReport::default()
            };
            for (job, flag) in batch.jobs.into_iter().zip(flags) {
                if flag == b'1' {
                    report.enqueued.push(job.event_uuid);
                } else {
                    report.duplicates.push(job.event_uuid);
                }
            }
            Ok(report)
        }
        .boxed()
    }

    fn claim<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ClaimOptions,
    ) -> BoxFuture<'a, Result<Vec<Job>, StoreError>> {
        async move {
            if options.max == 0 {
                return Err(StoreError::Invalid(
                    "claim: max must be at least 1".to_owned(),
                ));
            }
            let keys = self.keys(channel);
            // A blocked read wakes up at least every `min_idle` to look for jobs that became
            // reclaimable meanwhile (XREADGROUP only sees new entries).
            let slice = options.min_idle.max(Duration::from_millis(50));
            let deadline = Instant::now() + options.block;
            loop {
                let mut jobs = self.reclaim(channel, &keys, options).await?;
                let remaining = deadline.saturating_duration_since(Instant::now());
                let block = if jobs.is_empty() {
                    remaining.min(slice)
                } else {
                    Duration::ZERO
                };
                if jobs.len() < options.max {
                    let fresh = self
                        .read_new(
                            channel,
                            &keys.jobs,
                            &options.consumer,
                            options.max - jobs.len(),
                            block,
                        )
                        .await?;
                    jobs.extend(fresh);
                }
                if !jobs.is_empty() || Instant::now() >= deadline {
                    return Ok(jobs);
                }
            }
        }
        .boxed()
    }

    fn touch<'a>(
        &'a self,
        job: &'a Job,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = self.keys(&job.channel);
            let touched: i64 = self
                .invoke(
                    self.scripts
                        .touch
                        .key(&keys.jobs)
                        .arg(&job.id)
                        .arg(consumer)
                        .arg(GROUP),
                    "touch job",
                )
                .await?;
            if touched == 1 {
                Ok(())
            } else {
                Err(StoreError::NotFound(format!(
                    "job {} of {} is no longer claimed by {consumer}",
                    job.id, job.channel
                )))
            }
        }
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        job: &'a Job,
        record: JobRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = self.keys(&job.channel);
            let json = serde_json::to_string(&record)
                .map_err(|e| StoreError::Invalid(format!("job record: {e}")))?;
            // The record first: a crash between the two leaves the job to be reclaimed and
            // re-run (the component resumes from what it recorded), never a lost outcome.
            let _: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(self.record_key(&record.event_uuid))
                        .arg(json)
                        .arg("EX")
                        .arg(DEDUPE_TTL.as_secs()),
                    "SET job record",
                )
                .await?;
            let _: i64 = self
                .invoke(
                    self.scripts.finish.key(&keys.jobs).arg(&job.id).arg(GROUP),
                    "ack job",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn dead_letter_job<'a>(
        &'a self,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = self.keys(&job.channel);
            let moved: i64 = self
                .invoke(
                    self.scripts
                        .dead_letter_job
                        .key(&keys.jobs)
                        .key(&keys.dead)
                        .arg(&job.id)
                        .arg(reason)
                        .arg(job.deliveries)
                        .arg(now_ms())
                        .arg(GROUP),
                    "dead-letter job",
                )
                .await?;
            if moved == 1 {
                Ok(())
            } else {
                Err(StoreError::NotFound(format!(
                    "job {} of {} is not in the queue",
                    job.id, job.channel
                )))
            }
        }
        .boxed()
    }

    fn job_record<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        async move {
            let key = self.record_key(event_uuid);
            let value: Option<String> = self
                .query(redis::cmd("GET").arg(&key), "GET job record")
                .await?;
            value
                .map(|json| {
                    serde_json::from_str(&json)
                        .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
                })
                .transpose()
        }
        .boxed()
    }

    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            let keys = self.keys(channel);
            let value: Value = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(&keys.dead)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit.max(1)),
                    "XRANGE dead letters",
                )
                .await?;
            array(value)
                .into_iter()
                .map(|entry| dead_letter_from_entry(channel, entry))
                .collect()
        }
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<DeadLetter, StoreError>> {
        async move {
            let not_found = || StoreError::NotFound(format!("dead letter {id} of {channel}"));
            if !is_stream_id(id) {
                return Err(not_found());
            }
            let keys = self.keys(channel);
            let value: Value = self
                .query(
                    redis::cmd("XRANGE").arg(&keys.dead).arg(id).arg(id),
                    "XRANGE dead letter",
                )
                .await?;
            match array(value).into_iter().next() {
                Some(entry) => dead_letter_from_entry(channel, entry),
                None => Err(not_found()),
            }
        }
        .boxed()
    }

    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let not_found = || StoreError::NotFound(format!("dead letter {id} of {channel}"));
            if !is_stream_id(id) {
                return Err(not_found());
            }
            let keys = self.keys(channel);
            let reply: Value = self
                .invoke(
                    self.scripts
                        .requeue
                        .key(&keys.dead)
                        .key(&keys.jobs)
                        .arg(id)
                        .arg(now_ms())
                        .arg(GROUP),
                    "requeue dead letter",
                )
                .await?;
            let mut reply = array(reply).into_iter();
            match reply.next().map(text).as_deref() {
                Some("ok") => Ok(reply.next().map(text).unwrap_or_default()),
                Some("undecodable") => Err(StoreError::Invalid(format!(
                    "dead letter {id} is an undecodable event (raw Avro): it cannot be requeued; \
                     fix the schema or the publisher and replay it from Salesforce"
                ))),
                _ => Err(not_found()),
            }
        }
        .boxed()
    }

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: u64 = self
                .query(
                    redis::cmd("XLEN").arg(self.keys(channel).dead),
                    "XLEN dead letters",
                )
                .await?;
            Ok(n)
        }
        .boxed()
    }

    fn queue_depth<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: u64 = self
                .query(redis::cmd("XLEN").arg(self.keys(channel).jobs), "XLEN jobs")
                .await?;
            Ok(n)
        }
        .boxed()
    }

    fn shares_components(&self) -> bool {
        true
    }

    fn share_component<'a>(
        &'a self,
        component: &'a SharedComponent,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = self.component_key(&component.sha256);
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key)
                .arg("meta")
                .arg(&component.meta_json)
                .arg("wasm")
                .arg(component.wasm.as_slice());
            if let Some(signature) = &component.signature {
                cmd.arg("signature").arg(signature);
            }
            let _: i64 = self.query(&cmd, "HSET component").await?;
            Ok(())
        }
        .boxed()
    }

    fn shared_component<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedComponent>, StoreError>> {
        async move {
            let key = self.component_key(sha256);
            let (meta, wasm, signature): (Option<String>, Option<Vec<u8>>, Option<String>) = self
                .query(
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("meta")
                        .arg("wasm")
                        .arg("signature"),
                    "HMGET component",
                )
                .await?;
            Ok(match (meta, wasm) {
                (Some(meta_json), Some(wasm)) => Some(SharedComponent {
                    sha256: sha256.to_owned(),
                    meta_json,
                    wasm,
                    signature,
                }),
                _ => None,
            })
        }
        .boxed()
    }

    fn set_shared_active<'a>(
        &'a self,
        active: &'a SharedActive,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(active)
                .map_err(|e| StoreError::Invalid(format!("active component: {e}")))?;
            let _: () = self
                .query(
                    redis::cmd("SET").arg(self.active_component_key()).arg(json),
                    "SET active component",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn shared_active(&self) -> BoxFuture<'_, Result<Option<SharedActive>, StoreError>> {
        async move {
            let key = self.active_component_key();
            let json: Option<String> = self
                .query(redis::cmd("GET").arg(&key), "GET active component")
                .await?;
            json.map(|text| {
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
            })
            .transpose()
        }
        .boxed()
    }
}

impl HoldBackend for RedisStore {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        async move {
            let (shared, exclusive) = self.hold_keys(name);
            let held: i64 = self
                .invoke(
                    self.scripts
                        .hold
                        .key(&shared)
                        .key(&exclusive)
                        .arg(holder)
                        .arg(mode.as_str())
                        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
                    "take a hold",
                )
                .await
                .map_err(HoldError::from)?;
            Ok(held == 1)
        }
        .boxed()
    }

    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>> {
        async move {
            let (shared, exclusive) = self.hold_keys(name);
            let _: i64 = self
                .invoke(
                    self.scripts.unhold.key(&shared).key(&exclusive).arg(holder),
                    "release a hold",
                )
                .await
                .map_err(HoldError::from)?;
            Ok(())
        }
        .boxed()
    }
}

// The scripts. Each touches only keys of one channel (one hash slot), or of one hold.

/// KEYS: shared (zset holder -> expiry ms), exclusive. ARGV: holder, mode, ttl_ms.
/// Returns 1 when held. An exclusive attempt registers the holder even when it returns 0, so
/// new shared holds wait for it. Time is Redis's own, so replicas' clocks do not matter.
const HOLD_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
if ARGV[2] == 'shared' then
  if owner then return 1 end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then others = others - 1 end
if others > 0 then return 0 end
return 1
"#;

/// KEYS: shared, exclusive. ARGV: holder.
const UNHOLD_LUA: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// KEYS: lease, epoch. ARGV: holder, ttl_ms. Returns the epoch, or -1 when another holds it.
const ACQUIRE_LUA: &str = r#"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'epoch'))
end
if holder then return -1 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return epoch
"#;

/// KEYS: lease. ARGV: holder, epoch, ttl_ms. 1 when renewed, 0 when the lease is not ours.
const RENEW_LUA: &str = r#"
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: lease. ARGV: holder, epoch. 1 when released.
const RELEASE_LUA: &str = r#"
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// KEYS: lease, cursor, jobs, dead, backfill, dedupe key per job.
/// ARGV: holder, epoch, njobs, ndead, cursor ('' for none), dedupe ttl s, now ms, group,
///       then uuid, replay, payload per job, then uuid, replay, payload, reason per dead letter.
/// Returns {'fenced', holder, epoch} or {'ok', '1'/'0' per job (enqueued or duplicate)}.
const INGEST_LUA: &str = r#"
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then
  return {'fenced', lease[1] or '', lease[2] or ''}
end
local njobs, ndead = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = ARGV[7]
if njobs > 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[8], '0', 'MKSTREAM')
end
local flags = {}
local a = 9
for i = 1, njobs do
  if redis.call('SET', KEYS[5 + i], now, 'NX', 'EX', ARGV[6]) then
    redis.call('XADD', KEYS[3], '*', 'uuid', ARGV[a], 'replay', ARGV[a + 1],
      'payload', ARGV[a + 2], 'enq', now)
    flags[i] = '1'
  else
    flags[i] = '0'
  end
  a = a + 3
end
for i = 1, ndead do
  redis.call('XADD', KEYS[4], '*', 'kind', 'undecodable', 'uuid', ARGV[a], 'replay', ARGV[a + 1],
    'payload', ARGV[a + 2], 'reason', ARGV[a + 3], 'deliveries', '0', 'dead', now)
  a = a + 4
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[5])
end
return {'ok', table.concat(flags)}
"#;

/// KEYS: jobs, dead. ARGV: consumer, min_idle_ms, max, max_deliveries, now ms, group, scan.
/// Hands this consumer the jobs idle past min_idle (dead-lettering those delivered max_deliveries
/// times already). Returns {{id, deliveries, {field, value, ...}}, ...}.
const RECLAIM_LUA: &str = r#"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[6], '0', 'MKSTREAM')
local max, maxd = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[6], 'IDLE', ARGV[2], '-', '+', ARGV[7])
for _, p in ipairs(pending) do
  local id, delivered = p[1], tonumber(p[4])
  if delivered >= maxd then
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
      local f = {}
      for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
      redis.call('XADD', KEYS[2], '*', 'kind', 'job', 'uuid', f['uuid'] or '',
        'replay', f['replay'] or '', 'payload', f['payload'] or '',
        'reason', 'delivered ' .. delivered .. ' times without finishing (max ' .. maxd ..
          '): its worker crashed or stalled each time',
        'deliveries', delivered, 'dead', ARGV[5])
    end
    redis.call('XACK', KEYS[1], ARGV[6], id)
    redis.call('XDEL', KEYS[1], id)
  elseif #out < max then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[6], ARGV[1], ARGV[2], id)
    if claimed[1] then
      out[#out + 1] = {claimed[1][1], delivered + 1, claimed[1][2]}
    end
  end
end
return out
"#;

/// KEYS: jobs. ARGV: id, consumer, group. 1 when the job is still this consumer's (idle reset).
const TOUCH_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"#;

/// KEYS: jobs. ARGV: id, group. Acks and removes the job.
const FINISH_LUA: &str = r#"
redis.pcall('XACK', KEYS[1], ARGV[2], ARGV[1])
return redis.call('XDEL', KEYS[1], ARGV[1])
"#;

/// KEYS: jobs, dead. ARGV: id, reason, deliveries, now ms, group. 1 when moved.
const DEAD_LETTER_JOB_LUA: &str = r#"
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return 0 end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
redis.call('XADD', KEYS[2], '*', 'kind', 'job', 'uuid', f['uuid'] or '',
  'replay', f['replay'] or '', 'payload', f['payload'] or '', 'reason', ARGV[2],
  'deliveries', ARGV[3], 'dead', ARGV[4])
redis.pcall('XACK', KEYS[1], ARGV[5], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: dead, jobs. ARGV: id, now ms, group.
/// Returns {'ok', new id}, {'undecodable'} or {'missing'}.
const REQUEUE_LUA: &str = r#"
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return {'missing'} end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
if f['kind'] ~= 'job' then return {'undecodable'} end
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[3], '0', 'MKSTREAM')
local id = redis.call('XADD', KEYS[2], '*', 'uuid', f['uuid'], 'replay', f['replay'],
  'payload', f['payload'], 'enq', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return {'ok', id}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the text between the first `{` and the next `}`
    /// when it is non-empty, else the whole key.
    fn hashed_part(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_of_a_channel_hashes_to_the_cursor_keys_slot() {
        let keys = ChannelKeys::new("fulfilld", "/event/OrderProvisionRequested__e");
        assert_eq!(
            keys.cursor,
            "sf:pe:replay:/event/OrderProvisionRequested__e"
        );
        let dedupe = format!("{}0f8fad5b-d9cb-469f-a165-70867728950e", keys.dedupe_prefix);
        for key in [
            &keys.lease,
            &keys.epoch,
            &keys.backfill,
            &keys.jobs,
            &keys.dead,
            &dedupe,
            &keys.cursor,
        ] {
            assert_eq!(hashed_part(key), keys.cursor, "{key}");
        }
        assert_eq!(
            keys.jobs,
            "fulfilld:{sf:pe:replay:/event/OrderProvisionRequested__e}:jobs"
        );
    }

    #[test]
    fn stream_ids_are_recognised() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(!is_stream_id("1700000000000"));
        assert!(!is_stream_id("abc-1"));
        assert!(!is_stream_id("-"));
    }
}
