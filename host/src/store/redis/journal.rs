//! The job journal (a list per job, a sorted set per Order) and the listings of queued, running
//! and failed jobs.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Value;

use super::RedisStore;
use super::codec::{array, fields, int, job_from_fields, text, ttl_ms};
use super::keys::GROUP;
use crate::store::journal::{MAX_ENTRIES_PER_JOB, MAX_JOBS_PER_ORDER};
use crate::store::{Journal, JournalEntry, ListedJob, StoreError};

/// Failed jobs the failed index keeps (newest), whatever their age.
pub(super) const MAX_FAILED_INDEXED: usize = 10_000;

impl RedisStore {
    /// Adds a failed job to the failed index (newest kept, at most [`MAX_FAILED_INDEXED`], none
    /// older than `keep`).
    pub(super) async fn index_failed(
        &self,
        event_uuid: &str,
        finished_at_ms: i64,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let key = self.failed_key();
        let oldest = finished_at_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(0));
        let _: Value = self
            .query_pipe(
                redis::pipe()
                    .atomic()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(finished_at_ms)
                    .arg(event_uuid)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(format!("({oldest}"))
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(&key)
                    .arg(0)
                    .arg(-(MAX_FAILED_INDEXED as i64) - 1)
                    .ignore(),
                "index a failed job",
            )
            .await?;
        Ok(())
    }

    /// A queue entry as a listing line (`None` for an entry the host cannot read: the next claim
    /// dead-letters it).
    fn listed(
        channel: &str,
        id: &str,
        entry_fields: &std::collections::HashMap<String, Vec<u8>>,
        deliveries: u32,
    ) -> Option<ListedJob> {
        job_from_fields(channel, id, entry_fields, deliveries)
            .ok()
            .map(|job| ListedJob::from_job(&job))
    }

    /// Entries the consumer group has not handed out yet.
    async fn queued(&self, channel: &str, limit: usize) -> Result<Vec<ListedJob>, StoreError> {
        let keys = self.keys(channel);
        let groups: Value = match self
            .query(
                redis::cmd("XINFO").arg("GROUPS").arg(&keys.jobs),
                "XINFO GROUPS",
            )
            .await
        {
            Ok(groups) => groups,
            // No stream yet: nothing was ever enqueued.
            Err(_) if !self.exists(&keys.jobs).await? => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut last_delivered = "0-0".to_owned();
        for group in array(groups) {
            let mut items = array(group).into_iter();
            let mut name = String::new();
            let mut last = String::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                match text(k).as_str() {
                    "name" => name = text(v),
                    "last-delivered-id" => last = text(v),
                    _ => {}
                }
            }
            if name == GROUP && !last.is_empty() {
                last_delivered = last;
            }
        }
        let value: Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(&keys.jobs)
                    .arg(format!("({last_delivered}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit.max(1)),
                "XRANGE queued jobs",
            )
            .await?;
        Ok(array(value)
            .into_iter()
            .filter_map(|entry| {
                let mut parts = array(entry).into_iter();
                let id = parts.next().map(text).unwrap_or_default();
                let entry_fields = fields(parts.next().unwrap_or(Value::Nil));
                Self::listed(channel, &id, &entry_fields, 0)
            })
            .collect())
    }

    /// Entries handed out and not yet acknowledged, with their holder and idle time.
    async fn running(&self, channel: &str, limit: usize) -> Result<Vec<ListedJob>, StoreError> {
        let keys = self.keys(channel);
        if !self.exists(&keys.jobs).await? {
            return Ok(Vec::new());
        }
        let pending: Value = self
            .query(
                redis::cmd("XPENDING")
                    .arg(&keys.jobs)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(limit.max(1)),
                "XPENDING",
            )
            .await?;
        let mut jobs = Vec::new();
        for item in array(pending) {
            // [id, consumer, idle ms, deliveries]
            let mut parts = array(item).into_iter();
            let id = parts.next().map(text).unwrap_or_default();
            let worker = parts.next().map(text);
            let idle = parts.next().as_ref().and_then(int);
            let deliveries = parts.next().as_ref().and_then(int).unwrap_or(1);
            let entry: Value = self
                .query(
                    redis::cmd("XRANGE").arg(&keys.jobs).arg(&id).arg(&id),
                    "XRANGE running job",
                )
                .await?;
            let Some(entry) = array(entry).into_iter().next() else {
                continue;
            };
            let mut parts = array(entry).into_iter();
            let _id = parts.next();
            let entry_fields = fields(parts.next().unwrap_or(Value::Nil));
            let deliveries = u32::try_from(deliveries).unwrap_or(u32::MAX);
            if let Some(mut job) = Self::listed(channel, &id, &entry_fields, deliveries) {
                job.worker = worker;
                job.idle_ms = idle.and_then(|ms| u64::try_from(ms).ok());
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self.query(redis::cmd("EXISTS").arg(key), "EXISTS").await?;
        Ok(n == 1)
    }
}

impl Journal for RedisStore {
    fn append_journal<'a>(
        &'a self,
        event_uuid: &'a str,
        order_id: Option<&'a str>,
        entries: &'a [JournalEntry],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if entries.is_empty() {
                return Ok(());
            }
            let key = self.journal_key(event_uuid);
            let keep = ttl_ms(retention);
            // Two pipelines, sent together: the journal key and the Order's index live in
            // different hash slots (Redis Cluster sends a pipeline to one node). Neither is a
            // MULTI: each command is idempotent enough for a journal (a retry may add an entry
            // twice, never lose the Order's index).
            let mut pipe = redis::pipe();
            for entry in entries {
                let json = serde_json::to_string(entry)
                    .map_err(|e| StoreError::Invalid(format!("journal entry: {e}")))?;
                pipe.cmd("RPUSH").arg(&key).arg(json).ignore();
            }
            pipe.cmd("LTRIM")
                .arg(&key)
                .arg(-(MAX_ENTRIES_PER_JOB as i64))
                .arg(-1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(keep)
                .ignore();
            let index_pipe = order_id.map(|order| {
                let index = self.order_key(order);
                let first = entries.first().map_or(0, |e| e.at_ms);
                let mut pipe = redis::pipe();
                pipe.cmd("ZADD")
                    .arg(&index)
                    .arg("NX")
                    .arg(first)
                    .arg(event_uuid)
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(&index)
                    .arg(0)
                    .arg(-(MAX_JOBS_PER_ORDER as i64) - 1)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&index)
                    .arg(keep)
                    .ignore();
                pipe
            });
            let journal = self.query_pipe::<Value>(&pipe, "append to the job journal");
            match &index_pipe {
                Some(index) => {
                    let (journal, index) = futures::join!(
                        journal,
                        self.query_pipe::<Value>(index, "index the job by its Order")
                    );
                    journal?;
                    index?;
                }
                None => {
                    journal.await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn journal<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>> {
        async move {
            let key = self.journal_key(event_uuid);
            let items: Vec<Vec<u8>> = self
                .query(
                    redis::cmd("LRANGE").arg(&key).arg(0).arg(-1),
                    "LRANGE job journal",
                )
                .await?;
            Ok(items
                .iter()
                .enumerate()
                .map(|(i, bytes)| JournalEntry::read_stored(bytes, &format!("{key}[{i}]")))
                .collect())
        }
        .boxed()
    }

    fn jobs_of_order<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            self.query(
                redis::cmd("ZREVRANGE")
                    .arg(self.order_key(order_id))
                    .arg(0)
                    .arg(MAX_JOBS_PER_ORDER - 1),
                "ZREVRANGE Order's jobs",
            )
            .await
        }
        .boxed()
    }

    fn waiting_jobs<'a>(
        &'a self,
        channel: &'a str,
        running: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedJob>, StoreError>> {
        async move {
            if running {
                self.running(channel, limit).await
            } else {
                self.queued(channel, limit).await
            }
        }
        .boxed()
    }

    fn failed_jobs<'a>(&'a self, limit: usize) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            self.query(
                redis::cmd("ZREVRANGE")
                    .arg(self.failed_key())
                    .arg(0)
                    .arg(limit.max(1) - 1),
                "ZREVRANGE failed jobs",
            )
            .await
        }
        .boxed()
    }
}
