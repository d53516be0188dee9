//! The tables, and the redb plumbing every concern uses: opening tables, errors with context,
//! JSON values, sequences and per-channel ranges.

use std::error::Error;
use std::fmt::Display;
use std::time::Duration;

use redb::{
    Database, ReadTransaction, ReadableTable, TableDefinition, TableHandle as _, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Detail, StoreError};

/// Version of the layout (in the module docs of [`super`]), stored under `meta`.
const LAYOUT_VERSION: u64 = 1;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("cursors");
pub(super) const BACKFILL: TableDefinition<&str, i64> = TableDefinition::new("backfill");
pub(super) const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
pub(super) const JOBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("jobs");
pub(super) const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("jobs_pending");
pub(super) const CLAIMED: TableDefinition<(&str, u64), ()> = TableDefinition::new("jobs_claimed");
pub(super) const DEDUPE: TableDefinition<(&str, &str), i64> = TableDefinition::new("dedupe");
pub(super) const DEDUPE_BY_TIME: TableDefinition<(i64, &str, &str), ()> =
    TableDefinition::new("dedupe_by_time");
pub(super) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_records");
pub(super) const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead_letters");
pub(super) const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
pub(super) const JOURNAL_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_jobs");
pub(super) const JOURNAL_EXPIRY: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("journal_expiry");
pub(super) const ORDER_JOBS: TableDefinition<(&str, &str), i64> =
    TableDefinition::new("order_jobs");
pub(super) const FAILED: TableDefinition<(i64, &str), ()> = TableDefinition::new("failed_jobs");

pub(super) const JOB_SEQ: &str = "job_seq";
pub(super) const DEAD_SEQ: &str = "dead_seq";
pub(super) const VERSION_KEY: &str = "layout_version";

/// Creates the tables and checks the layout version.
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
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
                return Err(StoreError::Corrupt(
                    format!(
                        "the embedded store has layout version {other}; this host reads version {LAYOUT_VERSION}"
                    )
                    .into(),
                ));
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
        open_w(&txn, JOURNAL)?;
        open_w(&txn, JOURNAL_JOBS)?;
        open_w(&txn, JOURNAL_EXPIRY)?;
        open_w(&txn, ORDER_JOBS)?;
        open_w(&txn, FAILED)?;
    }
    txn.commit()
        .map_err(|err| unavailable("commit the initial tables", err))
}

pub(super) fn unavailable(
    what: impl Display,
    err: impl Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Unavailable(Detail::caused_by(
        format_args!("embedded store: cannot {what}"),
        err,
    ))
}

/// Maps a redb error to [`StoreError::Unavailable`] naming what was being done.
pub(super) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|err| unavailable(what(), err))
    }
}

pub(super) fn open_w<'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'txn WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::Table<'txn, K, V>, StoreError> {
    txn.open_table(table)
        .map_err(|err| unavailable(format_args!("open table {}", table.name()), err))
}

pub(super) fn open_r<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
    txn.open_table(table)
        .map_err(|err| unavailable(format_args!("open table {}", table.name()), err))
}

pub(super) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt(Detail::caused_by(what(), err)))
}

pub(super) fn encode<T: Serialize>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|err| StoreError::Invalid(format!("cannot serialize {}: {err}", what())))
}

pub(super) fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Job and dead-letter ids are decimal sequence numbers; anything else names nothing.
pub(super) fn parse_id(id: &str) -> Option<u64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

pub(super) fn next_seq(
    meta: &mut redb::Table<'_, &'static str, u64>,
    key: &str,
) -> Result<u64, StoreError> {
    let current = meta
        .get(key)
        .context(|| format!("read the sequence {key}"))?
        .map_or(0, |v| v.value());
    let next = current.checked_add(1).ok_or_else(|| {
        StoreError::Corrupt(format!("the sequence {key} is exhausted ({current})").into())
    })?;
    meta.insert(key, next)
        .context(|| format!("advance the sequence {key}"))?;
    Ok(next)
}

/// Ids of a channel's entries in a `(channel, id)` table, in order, at most `limit`.
pub(super) fn channel_ids<V: redb::Value + 'static>(
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

/// Ids of a channel's entries in a `(channel, id)` table, newest (highest) first, at most `limit`.
pub(super) fn recent_channel_ids<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    channel: &str,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let range = table
        .range((channel, 0)..=(channel, u64::MAX))
        .context(|| format!("list the entries of channel {channel}"))?;
    let mut ids = Vec::new();
    for entry in range.rev().take(limit) {
        let (key, _) = entry.context(|| format!("list the entries of channel {channel}"))?;
        ids.push(key.value().1);
    }
    Ok(ids)
}

pub(super) fn count_channel<V: redb::Value + 'static>(
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
