//! The job journal and the listings of queued, running and failed jobs.

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{ReadableTable, ReadableTableMetadata as _, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::EmbeddedStore;
use super::rows::{StoredJob, load_job};
use super::tables::{
    CLAIMED, Context as _, FAILED, JOBS, JOURNAL, JOURNAL_EXPIRY, JOURNAL_JOBS, ORDER_JOBS,
    PENDING, channel_ids, decode, encode, ms, open_r, open_w,
};
use crate::domain::now_ms;
use crate::store::journal::{MAX_ENTRIES_PER_JOB, MAX_JOBS_PER_ORDER};
use crate::store::{Journal, JournalEntry, ListedJob, StoreError};

/// Expired journals one append purges (the rest go with later appends).
const PURGE_PER_APPEND: usize = 20;

/// Failed jobs the failed index keeps (newest), whatever their age.
const MAX_FAILED_INDEXED: u64 = 10_000;

/// What the store knows of one job's journal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JournalJob {
    /// Numbers of the oldest kept entry and of the next one.
    first: u64,
    next: u64,
    order_id: Option<String>,
    expires_at_ms: i64,
}

fn load_meta(txn: &WriteTransaction, uuid: &str) -> Result<Option<JournalJob>, StoreError> {
    let table = open_w(txn, JOURNAL_JOBS)?;
    let Some(bytes) = table
        .get(uuid)
        .context(|| format!("read the journal of {uuid}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || format!("the journal of {uuid}")).map(Some)
}

/// Removes the journal of `uuid`, its Order index entry and its expiry row `expiry` (also when
/// the journal's own row is missing or unreadable, so a damaged row never stalls the purge).
fn remove_journal(txn: &WriteTransaction, uuid: &str, expiry: i64) -> Result<(), StoreError> {
    open_w(txn, JOURNAL_EXPIRY)?
        .remove((expiry, uuid))
        .context(|| format!("unindex the journal of {uuid}"))?;
    let meta = match load_meta(txn, uuid) {
        Ok(meta) => meta,
        Err(err) => {
            tracing::warn!(event_uuid = uuid, error = %crate::error::chain(&err), "an unreadable journal row is removed with its journal");
            None
        }
    };
    let (first, next) = meta.as_ref().map_or((0, 0), |m| (m.first, m.next));
    let mut entries = open_w(txn, JOURNAL)?;
    if meta.is_some() {
        for n in first..next {
            entries
                .remove((uuid, n))
                .context(|| format!("remove the journal of {uuid}"))?;
        }
    } else {
        // Without its row the entry numbers are unknown: remove whatever is there.
        let numbers: Vec<u64> = entries
            .range((uuid, 0)..=(uuid, u64::MAX))
            .context(|| format!("list the journal of {uuid}"))?
            .filter_map(Result::ok)
            .map(|(key, _)| key.value().1)
            .collect();
        for n in numbers {
            entries
                .remove((uuid, n))
                .context(|| format!("remove the journal of {uuid}"))?;
        }
    }
    if let Some(order) = meta.as_ref().and_then(|m| m.order_id.as_deref()) {
        open_w(txn, ORDER_JOBS)?
            .remove((order, uuid))
            .context(|| format!("unindex the journal of {uuid}"))?;
    }
    open_w(txn, JOURNAL_JOBS)?
        .remove(uuid)
        .context(|| format!("remove the journal of {uuid}"))?;
    Ok(())
}

/// Removes up to [`PURGE_PER_APPEND`] journals whose retention has passed.
fn purge_expired(txn: &WriteTransaction, now: i64) -> Result<(), StoreError> {
    let expired: Vec<(i64, String)> = {
        let table = open_w(txn, JOURNAL_EXPIRY)?;
        let range = table
            .range((i64::MIN, "")..(now, ""))
            .context(|| "list expired journals".to_owned())?;
        let mut found = Vec::new();
        for entry in range.take(PURGE_PER_APPEND) {
            let (key, _) = entry.context(|| "list expired journals".to_owned())?;
            let (at, uuid) = key.value();
            found.push((at, uuid.to_owned()));
        }
        found
    };
    for (at, uuid) in expired {
        remove_journal(txn, &uuid, at)?;
    }
    Ok(())
}

/// The jobs indexed under `order`: (when its journal began, EventUuid), in key order.
fn order_jobs(
    table: &impl ReadableTable<(&'static str, &'static str), i64>,
    order: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut jobs = Vec::new();
    for entry in table
        .range((order, "")..)
        .context(|| format!("read the jobs of Order {order}"))?
    {
        let (key, value) = entry.context(|| format!("read the jobs of Order {order}"))?;
        let (o, u) = key.value();
        if o != order {
            break;
        }
        jobs.push((value.value(), u.to_owned()));
    }
    Ok(jobs)
}

/// Indexes `uuid` under `order`, keeping the Order's newest [`MAX_JOBS_PER_ORDER`].
fn index_order(txn: &WriteTransaction, order: &str, uuid: &str, at: i64) -> Result<(), StoreError> {
    let mut table = open_w(txn, ORDER_JOBS)?;
    if table
        .get((order, uuid))
        .context(|| format!("read the jobs of Order {order}"))?
        .is_some()
    {
        return Ok(());
    }
    table
        .insert((order, uuid), at)
        .context(|| format!("index job {uuid} under Order {order}"))?;
    let mut jobs = order_jobs(&table, order)?;
    if jobs.len() > MAX_JOBS_PER_ORDER {
        jobs.sort();
        for (_, old) in &jobs[..jobs.len() - MAX_JOBS_PER_ORDER] {
            table
                .remove((order, old.as_str()))
                .context(|| format!("trim the jobs of Order {order}"))?;
        }
    }
    Ok(())
}

/// Adds a failed job to the failed index, keeping the newest and none older than `keep`.
pub(super) fn index_failed(
    txn: &WriteTransaction,
    uuid: &str,
    finished_at_ms: i64,
    keep: Duration,
) -> Result<(), StoreError> {
    let mut table = open_w(txn, FAILED)?;
    table
        .insert((finished_at_ms, uuid), ())
        .context(|| format!("index failed job {uuid}"))?;
    let oldest = finished_at_ms.saturating_sub(ms(keep));
    let mut surplus = table
        .len()
        .context(|| "count failed jobs".to_owned())?
        .saturating_sub(MAX_FAILED_INDEXED);
    let mut drop: Vec<(i64, String)> = Vec::new();
    for entry in table
        .range::<(i64, &str)>(..)
        .context(|| "list failed jobs".to_owned())?
    {
        let (key, _) = entry.context(|| "list failed jobs".to_owned())?;
        let (at, u) = key.value();
        if at >= oldest && surplus == 0 {
            break;
        }
        surplus = surplus.saturating_sub(1);
        drop.push((at, u.to_owned()));
        if drop.len() >= PURGE_PER_APPEND * 5 {
            break;
        }
    }
    for (at, u) in drop {
        table
            .remove((at, u.as_str()))
            .context(|| "trim failed jobs".to_owned())?;
    }
    Ok(())
}

fn listed(channel: &str, id: u64, stored: &StoredJob) -> ListedJob {
    let mut line = ListedJob::from_job(&stored.to_job(channel, id));
    if stored.consumer.is_some() {
        line.worker = stored.consumer.clone();
        line.idle_ms =
            Some(u64::try_from(now_ms().saturating_sub(stored.touched_at_ms)).unwrap_or(0));
    }
    line
}

impl Journal for EmbeddedStore {
    fn append_journal<'a>(
        &'a self,
        event_uuid: &'a str,
        order_id: Option<&'a str>,
        entries: &'a [JournalEntry],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let uuid = event_uuid.to_owned();
        let order = order_id.map(str::to_owned);
        let encoded: Result<Vec<Vec<u8>>, StoreError> = entries
            .iter()
            .map(|entry| encode(entry, || format!("a journal entry of {event_uuid}")))
            .collect();
        let first_at = entries.first().map_or_else(now_ms, |e| e.at_ms);
        self.write("append to the job journal", move |txn| {
            let encoded = encoded?;
            if encoded.is_empty() {
                return Ok(());
            }
            let now = now_ms();
            purge_expired(txn, now)?;
            // An unreadable row starts the journal afresh rather than refusing every append.
            let mut meta = load_meta(txn, &uuid).ok().flatten().unwrap_or_default();
            {
                let mut table = open_w(txn, JOURNAL)?;
                for bytes in &encoded {
                    table
                        .insert((uuid.as_str(), meta.next), bytes.as_slice())
                        .context(|| format!("append to the journal of {uuid}"))?;
                    meta.next += 1;
                }
                while meta.next - meta.first > MAX_ENTRIES_PER_JOB as u64 {
                    table
                        .remove((uuid.as_str(), meta.first))
                        .context(|| format!("trim the journal of {uuid}"))?;
                    meta.first += 1;
                }
            }
            if let Some(order) = &order {
                index_order(txn, order, &uuid, first_at)?;
                meta.order_id.get_or_insert_with(|| order.clone());
            }
            let mut expiry = open_w(txn, JOURNAL_EXPIRY)?;
            expiry
                .remove((meta.expires_at_ms, uuid.as_str()))
                .context(|| format!("re-time the journal of {uuid}"))?;
            meta.expires_at_ms = now.saturating_add(ms(retention));
            expiry
                .insert((meta.expires_at_ms, uuid.as_str()), ())
                .context(|| format!("time the journal of {uuid}"))?;
            let bytes = encode(&meta, || format!("the journal of {uuid}"))?;
            open_w(txn, JOURNAL_JOBS)?
                .insert(uuid.as_str(), bytes.as_slice())
                .context(|| format!("write the journal of {uuid}"))?;
            Ok(())
        })
        .boxed()
    }

    fn journal<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>> {
        let uuid = event_uuid.to_owned();
        self.read("read a job journal", move |txn| {
            let table = open_r(txn, JOURNAL)?;
            let mut entries = Vec::new();
            for entry in table
                .range((uuid.as_str(), 0)..=(uuid.as_str(), u64::MAX))
                .context(|| format!("read the journal of {uuid}"))?
            {
                let (key, value) = entry.context(|| format!("read the journal of {uuid}"))?;
                let n = key.value().1;
                entries.push(JournalEntry::read_stored(
                    value.value(),
                    &format!("entry {n} of the journal of {uuid}"),
                ));
            }
            Ok(entries)
        })
        .boxed()
    }

    fn jobs_of_order<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let order = order_id.to_owned();
        self.read("read an Order's jobs", move |txn| {
            let mut jobs = order_jobs(&open_r(txn, ORDER_JOBS)?, &order)?;
            jobs.sort_by(|a, b| b.cmp(a));
            Ok(jobs.into_iter().map(|(_, uuid)| uuid).collect())
        })
        .boxed()
    }

    fn waiting_jobs<'a>(
        &'a self,
        channel: &'a str,
        running: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedJob>, StoreError>> {
        let channel = channel.to_owned();
        self.read("list jobs", move |txn| {
            let ids = if running {
                channel_ids(&open_r(txn, CLAIMED)?, &channel, limit)?
            } else {
                channel_ids(&open_r(txn, PENDING)?, &channel, limit)?
            };
            let jobs = open_r(txn, JOBS)?;
            let mut listed_jobs = Vec::new();
            for id in ids {
                if let Some(stored) = load_job(&jobs, &channel, id)? {
                    listed_jobs.push(listed(&channel, id, &stored));
                }
            }
            Ok(listed_jobs)
        })
        .boxed()
    }

    fn failed_jobs<'a>(&'a self, limit: usize) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.read("list failed jobs", move |txn| {
            let table = open_r(txn, FAILED)?;
            // A job that failed on two deliveries is indexed twice: listed once, at its latest.
            let mut uuids: Vec<String> = Vec::new();
            for entry in table
                .range::<(i64, &str)>(..)
                .context(|| "list failed jobs".to_owned())?
                .rev()
            {
                if uuids.len() >= limit {
                    break;
                }
                let (key, _) = entry.context(|| "list failed jobs".to_owned())?;
                let uuid = key.value().1;
                if !uuids.iter().any(|u| u == uuid) {
                    uuids.push(uuid.to_owned());
                }
            }
            Ok(uuids)
        })
        .boxed()
    }
}
