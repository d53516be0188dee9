//! A channel's cursor, backfill request and lease, and the fenced ingest (one transaction).

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::EmbeddedStore;
use super::rows::{StoredDeadLetter, StoredJob, add_dead, add_job};
use super::tables::{
    BACKFILL, CURSORS, Context as _, DEDUPE, DEDUPE_BY_TIME, LEASES, decode, encode, ms, open_r,
    open_w,
};
use crate::domain::ReplayId;
use crate::domain::now_ms;
use crate::store::{
    CursorLease, DEDUPE_TTL, DeadLetterKind, Detail, IngestBatch, IngestReport, Lease, LeaseInfo,
    StoreError,
};

/// At most this many expired dedupe entries are purged by one ingest.
const PURGE_PER_INGEST: usize = 256;

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

impl CursorLease for EmbeddedStore {
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
                StoreError::Corrupt(Detail::caused_by(
                    format_args!("the cursor of channel {channel}"),
                    err,
                ))
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
                        StoreError::Corrupt(
                            format!("the lease epoch of channel {channel} is exhausted").into(),
                        )
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
}
