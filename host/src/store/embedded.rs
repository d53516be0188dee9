//! Embedded backend: one redb database file, for a single node (the default when no Redis URL is
//! configured).
//!
//! Every operation is one redb transaction, run on the blocking thread pool; writes use redb's
//! default durable commit, so whatever an operation reported as done survives a crash or restart.
//!
//! Layout (all keys carry the channel, so channels never see each other's data):
//! - `meta`: sequences (`job_seq`, `dead_seq`) and the layout version. Ids are never reused.
//! - `cursors`: channel -> the replay id's text; `backfill`: channel -> when it was requested.
//! - `leases`: channel -> holder, epoch and expiry (a released or expired lease keeps its epoch, so
//!   the next one is always higher).
//! - `jobs`: (channel, id) -> the job; `jobs_pending` / `jobs_claimed`: (channel, id) indexes of
//!   the jobs not yet handed out and of those handed out (claimed).
//! - `dedupe`: (channel, EventUuid) -> when it was enqueued; `dedupe_by_time`: the same entries
//!   ordered by time, so expired ones are purged a few at a time by `ingest`.
//! - `job_records`: EventUuid -> [`JobRecord`]; `dead_letters`: (channel, id) -> the dead letter.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable, TableDefinition,
    TableHandle as _, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    Backend, ClaimOptions, DEDUPE_TTL, DeadLetter, DeadLetterKind, IngestBatch, IngestReport, Job,
    JobRecord, Lease, LeaseInfo, Store, StoreError, now_ms,
};
use crate::domain::ReplayId;
use crate::holds::{HoldBackend, HoldError, HoldMode, HoldTable};

/// Version of the layout below, stored under `meta`.
const LAYOUT_VERSION: u64 = 1;
/// At most this many expired dedupe entries are purged by one ingest.
const PURGE_PER_INGEST: usize = 256;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("cursors");
const BACKFILL: TableDefinition<&str, i64> = TableDefinition::new("backfill");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const JOBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("jobs");
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("jobs_pending");
const CLAIMED: TableDefinition<(&str, u64), ()> = TableDefinition::new("jobs_claimed");
const DEDUPE: TableDefinition<(&str, &str), i64> = TableDefinition::new("dedupe");
const DEDUPE_BY_TIME: TableDefinition<(i64, &str, &str), ()> =
    TableDefinition::new("dedupe_by_time");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_records");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead_letters");

const JOB_SEQ: &str = "job_seq";
const DEAD_SEQ: &str = "dead_seq";
const VERSION_KEY: &str = "layout_version";

/// The single-node store: a redb database file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Signalled when jobs are enqueued, so blocked claims look again.
    jobs_added: Arc<Notify>,
    /// Holds live in memory: the embedded store belongs to one process, and a hold dies with
    /// the process that took it.
    holds: Arc<HoldTable>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating it (and its parent directories) when missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                StoreError::Unavailable(format!(
                    "cannot create the directory {} of the embedded store: {err}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot open the embedded store {}: {err}",
                path.display()
            ))
        })?;
        init(&db).map_err(|err| match err {
            StoreError::Unavailable(detail) => {
                StoreError::Unavailable(format!("{} ({})", detail, path.display()))
            }
            StoreError::Corrupt(detail) => {
                StoreError::Corrupt(format!("{} ({})", detail, path.display()))
            }
            other => other,
        })?;
        tracing::info!(path = %path.display(), "embedded store opened");
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: path.to_owned(),
            jobs_added: Arc::new(Notify::new()),
            holds: Arc::new(HoldTable::new()),
        })
    }

    /// Runs `work` in one write transaction on the blocking pool and commits it (durably) when it
    /// returns `Ok`; an `Err` aborts the transaction, so nothing of it is written.
    async fn write<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(|err| {
                unavailable(
                    format_args!("begin a write transaction on {} to {what}", path.display()),
                    err,
                )
            })?;
            let out = work(&txn)?;
            txn.commit().map_err(|err| {
                unavailable(
                    format_args!("commit to {} (to {what})", path.display()),
                    err,
                )
            })?;
            Ok(out)
        })
        .await
        .map_err(|err| {
            StoreError::Unavailable(format!("embedded store: the task to {what} failed: {err}"))
        })?
    }

    /// Runs `work` in one read transaction on the blocking pool.
    async fn read<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|err| {
                unavailable(
                    format_args!("begin a read transaction on {} to {what}", path.display()),
                    err,
                )
            })?;
            work(&txn)
        })
        .await
        .map_err(|err| {
            StoreError::Unavailable(format!("embedded store: the task to {what} failed: {err}"))
        })?
    }

    /// One claim attempt: the jobs handed out, and how long until a claimed job could be
    /// reclaimed (when one is claimed and none was handed out).
    async fn claim_once(
        &self,
        channel: &str,
        options: &ClaimOptions,
    ) -> Result<(Vec<Job>, Option<Duration>), StoreError> {
        let channel = channel.to_owned();
        let options = options.clone();
        self.write("claim jobs", move |txn| claim_in(txn, &channel, &options))
            .await
    }

    async fn claim_impl(
        &self,
        channel: &str,
        options: &ClaimOptions,
    ) -> Result<Vec<Job>, StoreError> {
        if options.max == 0 {
            return Err(StoreError::Invalid(
                "claim options: max must be at least 1".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + options.block;
        loop {
            // Registered before looking, so an ingest between the look and the wait wakes us.
            let added = self.jobs_added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let (jobs, next_idle) = self.claim_once(channel, options).await?;
            let now = tokio::time::Instant::now();
            if !jobs.is_empty() || now >= deadline {
                return Ok(jobs);
            }
            // Look again when jobs are added or a claimed job becomes reclaimable; at the end of
            // `block` give up without another look, like a Redis blocking read that times out.
            let wake = next_idle.map_or(deadline, |idle| deadline.min(now + idle));
            let timed_out = tokio::select! {
                () = &mut added => false,
                () = tokio::time::sleep_until(wake) => wake >= deadline,
            };
            if timed_out {
                return Ok(Vec::new());
            }
        }
    }
}

/// Creates the tables and checks the layout version.
fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db
        .begin_write()
        .map_err(|err| unavailable("begin the initial write transaction", err))?;
    {
        let mut meta = open_w(&txn, META)?;
        let version = meta
            .get(VERSION_KEY)
            .map_err(|err| unavailable("read the layout version", err))?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert(VERSION_KEY, LAYOUT_VERSION)
                    .map_err(|err| unavailable("write the layout version", err))?;
            }
            Some(LAYOUT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "the embedded store has layout version {other}; this host reads version {LAYOUT_VERSION}"
                )));
            }
        }
        open_w(&txn, CURSORS)?;
        open_w(&txn, BACKFILL)?;
        open_w(&txn, LEASES)?;
        open_w(&txn, JOBS)?;
        open_w(&txn, PENDING)?;
        open_w(&txn, CLAIMED)?;
        open_w(&txn, DEDUPE)?;
        open_w(&txn, DEDUPE_BY_TIME)?;
        open_w(&txn, RECORDS)?;
        open_w(&txn, DEAD)?;
    }
    txn.commit()
        .map_err(|err| unavailable("commit the initial tables", err))
}

fn unavailable(what: impl Display, err: impl Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: cannot {what}: {err}"))
}

/// Maps a redb error to [`StoreError::Unavailable`] naming what was being done.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|err| unavailable(what(), err))
    }
}

fn open_w<'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'txn WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::Table<'txn, K, V>, StoreError> {
    txn.open_table(table)
        .map_err(|err| unavailable(format_args!("open table {}", table.name()), err))
}

fn open_r<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
    txn.open_table(table)
        .map_err(|err| unavailable(format_args!("open table {}", table.name()), err))
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt(format!("{}: {err}", what())))
}

fn encode<T: Serialize>(value: &T, what: impl FnOnce() -> String) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|err| StoreError::Invalid(format!("cannot serialize {}: {err}", what())))
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Job and dead-letter ids are decimal sequence numbers; anything else names nothing.
fn parse_id(id: &str) -> Option<u64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

fn next_seq(meta: &mut redb::Table<'_, &'static str, u64>, key: &str) -> Result<u64, StoreError> {
    let current = meta
        .get(key)
        .context(|| format!("read the sequence {key}"))?
        .map_or(0, |v| v.value());
    let next = current.checked_add(1).ok_or_else(|| {
        StoreError::Corrupt(format!("the sequence {key} is exhausted ({current})"))
    })?;
    meta.insert(key, next)
        .context(|| format!("advance the sequence {key}"))?;
    Ok(next)
}

/// Payload bytes as base64 text inside the JSON values.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::Deserialize as _;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// `None` once released (the epoch stays, so the next lease gets a higher one).
    holder: Option<String>,
    epoch: u64,
    expires_at_ms: i64,
}

impl LeaseRecord {
    fn live_holder(&self, now: i64) -> Option<&str> {
        self.holder.as_deref().filter(|_| self.expires_at_ms > now)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredJob {
    event_uuid: String,
    replay_id: ReplayId,
    #[serde(with = "b64")]
    payload: Vec<u8>,
    enqueued_at_ms: i64,
    deliveries: u32,
    /// The consumer it was last handed to (`None` while pending).
    consumer: Option<String>,
    /// When it was last handed out or touched.
    touched_at_ms: i64,
}

impl StoredJob {
    fn to_job(&self, channel: &str, id: u64) -> Job {
        Job {
            id: id.to_string(),
            channel: channel.to_owned(),
            event_uuid: self.event_uuid.clone(),
            replay_id: self.replay_id.clone(),
            payload: self.payload.clone(),
            deliveries: self.deliveries,
            enqueued_at_ms: self.enqueued_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredDeadLetter {
    event_uuid: String,
    replay_id: ReplayId,
    #[serde(with = "b64")]
    payload: Vec<u8>,
    kind: DeadLetterKind,
    reason: String,
    deliveries: u32,
    dead_at_ms: i64,
}

impl StoredDeadLetter {
    fn into_dead_letter(self, channel: &str, id: u64) -> DeadLetter {
        DeadLetter {
            id: id.to_string(),
            channel: channel.to_owned(),
            event_uuid: self.event_uuid,
            replay_id: self.replay_id,
            payload: self.payload,
            kind: self.kind,
            reason: self.reason,
            deliveries: self.deliveries,
            dead_at_ms: self.dead_at_ms,
        }
    }
}

fn load_lease(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    channel: &str,
) -> Result<Option<LeaseRecord>, StoreError> {
    let Some(bytes) = table
        .get(channel)
        .context(|| format!("read the lease of channel {channel}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || format!("the lease of channel {channel}")).map(Some)
}

fn save_lease(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    channel: &str,
    record: &LeaseRecord,
) -> Result<(), StoreError> {
    let bytes = encode(record, || format!("the lease of channel {channel}"))?;
    table
        .insert(channel, bytes.as_slice())
        .context(|| format!("write the lease of channel {channel}"))?;
    Ok(())
}

/// `Ok` when `lease` is the channel's current, unexpired lease; [`StoreError::Fenced`] otherwise.
fn check_lease(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    lease: &Lease,
    now: i64,
) -> Result<LeaseRecord, StoreError> {
    let fenced = |detail: String| StoreError::Fenced {
        channel: lease.channel.clone(),
        detail,
    };
    let Some(record) = load_lease(table, &lease.channel)? else {
        return Err(fenced(format!(
            "no lease is held (this holder {} had epoch {})",
            lease.holder, lease.epoch
        )));
    };
    match record.holder.as_deref() {
        Some(holder) if holder == lease.holder && record.epoch == lease.epoch => {
            if record.expires_at_ms > now {
                Ok(record)
            } else {
                Err(fenced(format!(
                    "the lease of {} at epoch {} expired {} ms ago",
                    lease.holder,
                    lease.epoch,
                    now.saturating_sub(record.expires_at_ms)
                )))
            }
        }
        Some(holder) => Err(fenced(format!(
            "the lease is now held by {holder} at epoch {} (this holder {} had epoch {})",
            record.epoch, lease.holder, lease.epoch
        ))),
        None => Err(fenced(format!(
            "the lease was released at epoch {} (this holder {} had epoch {})",
            record.epoch, lease.holder, lease.epoch
        ))),
    }
}

fn load_job(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
) -> Result<Option<StoredJob>, StoreError> {
    let Some(bytes) = table
        .get((channel, id))
        .context(|| format!("read job {id} of channel {channel}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || format!("job {id} of channel {channel}")).map(Some)
}

fn save_job(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
    job: &StoredJob,
) -> Result<(), StoreError> {
    let bytes = encode(job, || format!("job {id} of channel {channel}"))?;
    table
        .insert((channel, id), bytes.as_slice())
        .context(|| format!("write job {id} of channel {channel}"))?;
    Ok(())
}

fn load_dead(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
) -> Result<Option<StoredDeadLetter>, StoreError> {
    let Some(bytes) = table
        .get((channel, id))
        .context(|| format!("read dead letter {id} of channel {channel}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || {
        format!("dead letter {id} of channel {channel}")
    })
    .map(Some)
}

/// Adds a dead letter with a fresh id; returns the id.
fn add_dead(
    txn: &WriteTransaction,
    channel: &str,
    dead: &StoredDeadLetter,
) -> Result<u64, StoreError> {
    let id = next_seq(&mut open_w(txn, META)?, DEAD_SEQ)?;
    let bytes = encode(dead, || format!("dead letter {id} of channel {channel}"))?;
    open_w(txn, DEAD)?
        .insert((channel, id), bytes.as_slice())
        .context(|| format!("write dead letter {id} of channel {channel}"))?;
    Ok(id)
}

/// Adds a pending job with a fresh id; returns the id.
fn add_job(txn: &WriteTransaction, channel: &str, job: &StoredJob) -> Result<u64, StoreError> {
    let id = next_seq(&mut open_w(txn, META)?, JOB_SEQ)?;
    save_job(&mut open_w(txn, JOBS)?, channel, id, job)?;
    open_w(txn, PENDING)?
        .insert((channel, id), ())
        .context(|| format!("queue job {id} of channel {channel}"))?;
    Ok(id)
}

/// Removes a job and its index entries; returns it when it was there.
fn remove_job(
    txn: &WriteTransaction,
    channel: &str,
    id: u64,
) -> Result<Option<StoredJob>, StoreError> {
    let mut jobs = open_w(txn, JOBS)?;
    let job = load_job(&jobs, channel, id)?;
    jobs.remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel}"))?;
    open_w(txn, PENDING)?
        .remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel} from the pending index"))?;
    open_w(txn, CLAIMED)?
        .remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel} from the claimed index"))?;
    Ok(job)
}

/// Ids of a channel's entries in a `(channel, id)` table, in order, at most `limit`.
fn channel_ids<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    channel: &str,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let range = table
        .range((channel, 0)..=(channel, u64::MAX))
        .context(|| format!("list the entries of channel {channel}"))?;
    let mut ids = Vec::new();
    for entry in range.take(limit) {
        let (key, _) = entry.context(|| format!("list the entries of channel {channel}"))?;
        ids.push(key.value().1);
    }
    Ok(ids)
}

fn count_channel<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    channel: &str,
) -> Result<u64, StoreError> {
    let range = table
        .range((channel, 0)..=(channel, u64::MAX))
        .context(|| format!("count the entries of channel {channel}"))?;
    let mut count = 0;
    for entry in range {
        entry.context(|| format!("count the entries of channel {channel}"))?;
        count += 1;
    }
    Ok(count)
}

/// Forgets up to [`PURGE_PER_INGEST`] EventUuids older than [`DEDUPE_TTL`].
fn purge_dedupe(txn: &WriteTransaction, now: i64) -> Result<(), StoreError> {
    let cutoff = now.saturating_sub(ms(DEDUPE_TTL));
    let mut by_time = open_w(txn, DEDUPE_BY_TIME)?;
    let mut expired: Vec<(i64, String, String)> = Vec::new();
    {
        let range = by_time
            .range(..(cutoff, "", ""))
            .context(|| "list expired dedupe entries".to_owned())?;
        for entry in range.take(PURGE_PER_INGEST) {
            let (key, _) = entry.context(|| "list expired dedupe entries".to_owned())?;
            let (at, channel, uuid) = key.value();
            expired.push((at, channel.to_owned(), uuid.to_owned()));
        }
    }
    if expired.is_empty() {
        return Ok(());
    }
    let mut dedupe = open_w(txn, DEDUPE)?;
    for (at, channel, uuid) in &expired {
        by_time
            .remove((*at, channel.as_str(), uuid.as_str()))
            .context(|| format!("purge the dedupe index entry of {uuid} (channel {channel})"))?;
        let current = dedupe
            .get((channel.as_str(), uuid.as_str()))
            .context(|| format!("read the dedupe entry of {uuid} (channel {channel})"))?
            .map(|v| v.value());
        // A later enqueue of the same EventUuid has its own, newer entry.
        if current == Some(*at) {
            dedupe
                .remove((channel.as_str(), uuid.as_str()))
                .context(|| format!("purge the dedupe entry of {uuid} (channel {channel})"))?;
        }
    }
    tracing::debug!(purged = expired.len(), "expired dedupe entries purged");
    Ok(())
}

fn ingest_in(
    txn: &WriteTransaction,
    lease: &Lease,
    batch: IngestBatch,
) -> Result<IngestReport, StoreError> {
    let now = now_ms();
    let channel = lease.channel.as_str();
    check_lease(&open_w(txn, LEASES)?, lease, now)?;
    purge_dedupe(txn, now)?;
    let ttl = ms(DEDUPE_TTL);
    let mut report = IngestReport::default();
    for job in batch.jobs {
        let uuid = job.event_uuid.as_str();
        {
            let mut dedupe = open_w(txn, DEDUPE)?;
            let seen = dedupe
                .get((channel, uuid))
                .context(|| format!("read the dedupe entry of {uuid} (channel {channel})"))?
                .map(|v| v.value());
            if seen.is_some_and(|at| at.saturating_add(ttl) > now) {
                report.duplicates.push(job.event_uuid);
                continue;
            }
            dedupe
                .insert((channel, uuid), now)
                .context(|| format!("write the dedupe entry of {uuid} (channel {channel})"))?;
            open_w(txn, DEDUPE_BY_TIME)?
                .insert((now, channel, uuid), ())
                .context(|| {
                    format!("write the dedupe index entry of {uuid} (channel {channel})")
                })?;
        }
        add_job(
            txn,
            channel,
            &StoredJob {
                event_uuid: job.event_uuid.clone(),
                replay_id: job.replay_id,
                payload: job.payload,
                enqueued_at_ms: now,
                deliveries: 0,
                consumer: None,
                touched_at_ms: now,
            },
        )?;
        report.enqueued.push(job.event_uuid);
    }
    for dead in batch.dead_letters {
        add_dead(
            txn,
            channel,
            &StoredDeadLetter {
                event_uuid: dead.event_uuid,
                replay_id: dead.replay_id,
                payload: dead.payload,
                kind: DeadLetterKind::Undecodable,
                reason: dead.reason,
                deliveries: 0,
                dead_at_ms: now,
            },
        )?;
        report.dead_lettered += 1;
    }
    if let Some(cursor) = batch.cursor {
        let text = cursor.to_string();
        open_w(txn, CURSORS)?
            .insert(channel, text.as_str())
            .context(|| format!("write the cursor of channel {channel}"))?;
        open_w(txn, BACKFILL)?
            .remove(channel)
            .context(|| format!("clear the backfill request of channel {channel}"))?;
    }
    Ok(report)
}

fn claim_in(
    txn: &WriteTransaction,
    channel: &str,
    options: &ClaimOptions,
) -> Result<(Vec<Job>, Option<Duration>), StoreError> {
    let now = now_ms();
    let min_idle = ms(options.min_idle);
    let mut out = Vec::new();
    let mut next_idle: Option<i64> = None;

    // Claimed jobs idle for `min_idle`: dead letters past `max_deliveries`, else handed out again.
    let claimed = channel_ids(&open_w(txn, CLAIMED)?, channel, usize::MAX)?;
    for id in claimed {
        let Some(mut job) = load_job(&open_w(txn, JOBS)?, channel, id)? else {
            open_w(txn, CLAIMED)?
                .remove((channel, id))
                .context(|| format!("drop job {id} of channel {channel} from the claimed index"))?;
            continue;
        };
        let idle = now.saturating_sub(job.touched_at_ms);
        if idle < min_idle {
            let left = min_idle - idle;
            next_idle = Some(next_idle.map_or(left, |n| n.min(left)));
            continue;
        }
        if job.deliveries >= options.max_deliveries {
            let reason = format!(
                "delivered {} times without finishing (max {})",
                job.deliveries, options.max_deliveries
            );
            remove_job(txn, channel, id)?;
            let dead_id = add_dead(
                txn,
                channel,
                &StoredDeadLetter {
                    event_uuid: job.event_uuid.clone(),
                    replay_id: job.replay_id.clone(),
                    payload: job.payload,
                    kind: DeadLetterKind::Job,
                    reason: reason.clone(),
                    deliveries: job.deliveries,
                    dead_at_ms: now,
                },
            )?;
            tracing::warn!(
                channel = %channel,
                job = id,
                dead_letter = dead_id,
                event_uuid = %job.event_uuid,
                replay_id = %job.replay_id,
                reason = %reason,
                "job dead-lettered"
            );
            continue;
        }
        if out.len() >= options.max {
            continue;
        }
        job.deliveries = job.deliveries.saturating_add(1);
        job.consumer = Some(options.consumer.clone());
        job.touched_at_ms = now;
        save_job(&mut open_w(txn, JOBS)?, channel, id, &job)?;
        out.push(job.to_job(channel, id));
    }

    // Then new jobs, oldest first.
    if out.len() < options.max {
        let pending = channel_ids(&open_w(txn, PENDING)?, channel, options.max - out.len())?;
        for id in pending {
            open_w(txn, PENDING)?
                .remove((channel, id))
                .context(|| format!("take job {id} of channel {channel} off the pending index"))?;
            let Some(mut job) = load_job(&open_w(txn, JOBS)?, channel, id)? else {
                continue;
            };
            job.deliveries = 1;
            job.consumer = Some(options.consumer.clone());
            job.touched_at_ms = now;
            save_job(&mut open_w(txn, JOBS)?, channel, id, &job)?;
            open_w(txn, CLAIMED)?
                .insert((channel, id), ())
                .context(|| format!("mark job {id} of channel {channel} claimed"))?;
            out.push(job.to_job(channel, id));
        }
    }

    // Wake a millisecond after the first claimed job becomes reclaimable.
    let next_idle =
        next_idle.map(|left| Duration::from_millis(u64::try_from(left).unwrap_or(0) + 1));
    Ok((out, next_idle))
}

impl Store for EmbeddedStore {
    fn backend(&self) -> Backend {
        Backend::Embedded
    }

    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>> {
        async move {
            let started = std::time::Instant::now();
            self.read("ping", |txn| {
                open_r(txn, META)?
                    .get(VERSION_KEY)
                    .context(|| "read the layout version".to_owned())?;
                Ok(())
            })
            .await?;
            Ok(started.elapsed())
        }
        .boxed()
    }

    fn cursor<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReplayId>, StoreError>> {
        let channel = channel.to_owned();
        self.read("read a cursor", move |txn| {
            let table = open_r(txn, CURSORS)?;
            let Some(text) = table
                .get(channel.as_str())
                .context(|| format!("read the cursor of channel {channel}"))?
            else {
                return Ok(None);
            };
            ReplayId::parse(text.value()).map(Some).map_err(|err| {
                StoreError::Corrupt(format!("the cursor of channel {channel}: {err}"))
            })
        })
        .boxed()
    }

    fn set_cursor<'a>(
        &'a self,
        channel: &'a str,
        replay_id: Option<&'a ReplayId>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let channel = channel.to_owned();
        let text = replay_id.map(ToString::to_string);
        self.write("set a cursor", move |txn| {
            let mut table = open_w(txn, CURSORS)?;
            match text {
                Some(text) => table
                    .insert(channel.as_str(), text.as_str())
                    .context(|| format!("write the cursor of channel {channel}"))?,
                None => table
                    .remove(channel.as_str())
                    .context(|| format!("remove the cursor of channel {channel}"))?,
            };
            Ok(())
        })
        .boxed()
    }

    fn request_backfill<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let channel = channel.to_owned();
        self.write("request a backfill", move |txn| {
            open_w(txn, BACKFILL)?
                .insert(channel.as_str(), now_ms())
                .context(|| format!("write the backfill request of channel {channel}"))?;
            Ok(())
        })
        .boxed()
    }

    fn backfill_requested<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let channel = channel.to_owned();
        self.read("read a backfill request", move |txn| {
            Ok(open_r(txn, BACKFILL)?
                .get(channel.as_str())
                .context(|| format!("read the backfill request of channel {channel}"))?
                .is_some())
        })
        .boxed()
    }

    fn acquire_lease<'a>(
        &'a self,
        channel: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let channel = channel.to_owned();
        let holder = holder.to_owned();
        self.write("acquire a lease", move |txn| {
            let now = now_ms();
            let mut table = open_w(txn, LEASES)?;
            let current = load_lease(&table, &channel)?;
            let epoch = match current.as_ref() {
                Some(record) => match record.live_holder(now) {
                    Some(live) if live == holder => record.epoch,
                    Some(_) => return Ok(None),
                    None => record.epoch.checked_add(1).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "the lease epoch of channel {channel} is exhausted"
                        ))
                    })?,
                },
                None => 1,
            };
            let record = LeaseRecord {
                holder: Some(holder.clone()),
                epoch,
                expires_at_ms: now.saturating_add(ms(ttl)),
            };
            save_lease(&mut table, &channel, &record)?;
            Ok(Some(Lease {
                channel,
                holder,
                epoch,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            }))
        })
        .boxed()
    }

    fn renew_lease<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        let lease = lease.clone();
        self.write("renew a lease", move |txn| {
            let now = now_ms();
            let mut table = open_w(txn, LEASES)?;
            let mut record = check_lease(&table, &lease, now)?;
            record.expires_at_ms = now.saturating_add(ms(ttl));
            save_lease(&mut table, &lease.channel, &record)?;
            Ok(Lease {
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                ..lease
            })
        })
        .boxed()
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        let lease = lease.clone();
        self.write("release a lease", move |txn| {
            let mut table = open_w(txn, LEASES)?;
            let Some(mut record) = load_lease(&table, &lease.channel)? else {
                return Ok(());
            };
            if record.holder.as_deref() == Some(lease.holder.as_str())
                && record.epoch == lease.epoch
            {
                record.holder = None;
                record.expires_at_ms = 0;
                save_lease(&mut table, &lease.channel, &record)?;
            }
            Ok(())
        })
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, StoreError>> {
        let channel = channel.to_owned();
        self.read("read a lease", move |txn| {
            let now = now_ms();
            let Some(record) = load_lease(&open_r(txn, LEASES)?, &channel)? else {
                return Ok(None);
            };
            Ok(record.live_holder(now).map(|holder| LeaseInfo {
                holder: holder.to_owned(),
                epoch: record.epoch,
                expires_in_ms: u64::try_from(record.expires_at_ms.saturating_sub(now)).unwrap_or(0),
            }))
        })
        .boxed()
    }

    fn ingest<'a>(
        &'a self,
        lease: &'a Lease,
        batch: IngestBatch,
    ) -> BoxFuture<'a, Result<IngestReport, StoreError>> {
        let owned = lease.clone();
        async move {
            let report = self
                .write("ingest a batch", move |txn| ingest_in(txn, &owned, batch))
                .await?;
            if !report.enqueued.is_empty() {
                self.jobs_added.notify_waiters();
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
        self.claim_impl(channel, options).boxed()
    }

    fn touch<'a>(
        &'a self,
        job: &'a Job,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let channel = job.channel.clone();
        let job_id = job.id.clone();
        let consumer = consumer.to_owned();
        self.write("touch a job", move |txn| {
            let not_found = || {
                StoreError::NotFound(format!(
                    "job {job_id} of channel {channel} is not claimed by {consumer}"
                ))
            };
            let id = parse_id(&job_id).ok_or_else(not_found)?;
            let mut jobs = open_w(txn, JOBS)?;
            let Some(mut stored) = load_job(&jobs, &channel, id)? else {
                return Err(not_found());
            };
            if stored.consumer.as_deref() != Some(consumer.as_str()) {
                return Err(not_found());
            }
            stored.touched_at_ms = now_ms();
            save_job(&mut jobs, &channel, id, &stored)
        })
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        job: &'a Job,
        record: JobRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let channel = job.channel.clone();
        let job_id = job.id.clone();
        self.write("complete a job", move |txn| {
            let uuid = record.event_uuid.clone();
            let bytes = encode(&record, || format!("the record of {uuid}"))?;
            open_w(txn, RECORDS)?
                .insert(uuid.as_str(), bytes.as_slice())
                .context(|| format!("write the record of {uuid}"))?;
            if let Some(id) = parse_id(&job_id) {
                remove_job(txn, &channel, id)?;
            }
            Ok(())
        })
        .boxed()
    }

    fn dead_letter_job<'a>(
        &'a self,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let channel = job.channel.clone();
        let job_id = job.id.clone();
        let deliveries = job.deliveries;
        let reason = reason.to_owned();
        self.write("dead-letter a job", move |txn| {
            let not_found =
                || StoreError::NotFound(format!("job {job_id} of channel {channel} is not queued"));
            let id = parse_id(&job_id).ok_or_else(not_found)?;
            let stored = remove_job(txn, &channel, id)?.ok_or_else(not_found)?;
            add_dead(
                txn,
                &channel,
                &StoredDeadLetter {
                    event_uuid: stored.event_uuid,
                    replay_id: stored.replay_id,
                    payload: stored.payload,
                    kind: DeadLetterKind::Job,
                    reason,
                    deliveries,
                    dead_at_ms: now_ms(),
                },
            )?;
            Ok(())
        })
        .boxed()
    }

    fn job_record<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>> {
        let uuid = event_uuid.to_owned();
        self.read("read a job record", move |txn| {
            let table = open_r(txn, RECORDS)?;
            let Some(bytes) = table
                .get(uuid.as_str())
                .context(|| format!("read the record of {uuid}"))?
            else {
                return Ok(None);
            };
            decode(bytes.value(), || format!("the record of {uuid}")).map(Some)
        })
        .boxed()
    }

    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        let channel = channel.to_owned();
        self.read("list dead letters", move |txn| {
            let table = open_r(txn, DEAD)?;
            let mut out = Vec::new();
            for id in channel_ids(&table, &channel, limit)? {
                if let Some(dead) = load_dead(&table, &channel, id)? {
                    out.push(dead.into_dead_letter(&channel, id));
                }
            }
            Ok(out)
        })
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<DeadLetter, StoreError>> {
        let channel = channel.to_owned();
        let text = id.to_owned();
        self.read("read a dead letter", move |txn| {
            let not_found =
                || StoreError::NotFound(format!("dead letter {text:?} of channel {channel}"));
            let id = parse_id(&text).ok_or_else(not_found)?;
            let dead = load_dead(&open_r(txn, DEAD)?, &channel, id)?.ok_or_else(not_found)?;
            Ok(dead.into_dead_letter(&channel, id))
        })
        .boxed()
    }

    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        let channel = channel.to_owned();
        let text = id.to_owned();
        async move {
            let new_id = self
                .write("requeue a dead letter", move |txn| {
                    let not_found = || {
                        StoreError::NotFound(format!("dead letter {text:?} of channel {channel}"))
                    };
                    let id = parse_id(&text).ok_or_else(not_found)?;
                    let mut dead_table = open_w(txn, DEAD)?;
                    let dead = load_dead(&dead_table, &channel, id)?.ok_or_else(not_found)?;
                    if dead.kind == DeadLetterKind::Undecodable {
                        return Err(StoreError::Invalid(format!(
                            "dead letter {id} of channel {channel} is an undecodable event (raw \
                             Avro bytes, not a serialized event): it cannot be requeued as a job"
                        )));
                    }
                    dead_table
                        .remove((channel.as_str(), id))
                        .context(|| format!("remove dead letter {id} of channel {channel}"))?;
                    drop(dead_table);
                    let now = now_ms();
                    let new_id = add_job(
                        txn,
                        &channel,
                        &StoredJob {
                            event_uuid: dead.event_uuid.clone(),
                            replay_id: dead.replay_id,
                            payload: dead.payload,
                            enqueued_at_ms: now,
                            deliveries: 0,
                            consumer: None,
                            touched_at_ms: now,
                        },
                    )?;
                    tracing::info!(
                        channel = %channel,
                        dead_letter = id,
                        job = new_id,
                        event_uuid = %dead.event_uuid,
                        "dead letter requeued"
                    );
                    Ok(new_id)
                })
                .await?;
            self.jobs_added.notify_waiters();
            Ok(new_id.to_string())
        }
        .boxed()
    }

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let channel = channel.to_owned();
        self.read("count dead letters", move |txn| {
            count_channel(&open_r(txn, DEAD)?, &channel)
        })
        .boxed()
    }

    fn queue_depth<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let channel = channel.to_owned();
        self.read("measure the queue", move |txn| {
            count_channel(&open_r(txn, JOBS)?, &channel)
        })
        .boxed()
    }
}

impl HoldBackend for EmbeddedStore {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        self.holds.try_hold(name, holder, mode, ttl)
    }

    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>> {
        self.holds.release_hold(name, holder)
    }
}
