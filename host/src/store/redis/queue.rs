//! The job queue (a stream with one consumer group) and the job records.

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Value;

use super::codec::{array, bytes, fields, int, job_from_fields, text, ttl_ms};
use super::keys::{ChannelKeys, GROUP};
use super::{RedisStore, unavailable};
use crate::domain::now_ms;
use crate::store::journal::note_dead_lettered;
use crate::store::{ClaimOptions, DEDUPE_TTL, Detail, Job, JobQueue, JobRecord, StoreError};

/// How many idle pending jobs one claim looks at (those past their delivery limit are all
/// dead-lettered; at most `max` of the others are handed out).
const RECLAIM_SCAN: usize = 1000;

/// Extra time a blocking read gets on top of its `BLOCK` before it counts as failed.
const BLOCK_GRACE: Duration = Duration::from_secs(2);

impl RedisStore {
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
        // [claimed, dead]: claimed = [[id, deliveries, [field, value, ...]], ...], dead =
        // [[uuid, payload, reason], ...].
        let mut parts = array(reply).into_iter();
        let claimed = parts.next().map(array).unwrap_or_default();
        if let Some(journal) = &options.journal {
            for item in parts.next().map(array).unwrap_or_default() {
                let mut dead = array(item).into_iter();
                let uuid = dead.next().map(text).unwrap_or_default();
                let payload = dead.next().map(bytes).unwrap_or_default();
                let reason = dead.next().map(text).unwrap_or_default();
                note_dead_lettered(self, journal, &uuid, &payload, &reason).await;
            }
        }
        if !claimed.is_empty() {
            self.replicated(&mut self.conn(), &keys.jobs).await;
        }
        let mut jobs = Vec::new();
        for item in claimed {
            let mut parts = array(item).into_iter();
            let id = parts.next().map(text).unwrap_or_default();
            let deliveries = parts.next().as_ref().and_then(int).unwrap_or(1);
            let fields = fields(parts.next().unwrap_or(Value::Nil));
            let deliveries = u32::try_from(deliveries).unwrap_or(u32::MAX);
            let job = job_from_fields(channel, &id, &fields, deliveries);
            if let Some(job) = self.readable(keys, &id, deliveries, job).await? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// A queue entry that is not a job the host can read (missing or malformed fields: something
    /// other than the host wrote it) goes to the dead letters as it was found, with what is
    /// wrong, so it neither blocks nor fails the claims of the jobs around it.
    async fn readable(
        &self,
        keys: &ChannelKeys,
        id: &str,
        deliveries: u32,
        job: Result<Job, StoreError>,
    ) -> Result<Option<Job>, StoreError> {
        let problem = match job {
            Ok(job) => return Ok(Some(job)),
            Err(e) => e,
        };
        // The problem quotes what it could not read: bounded, the entry keeps the rest.
        let reason = format!(
            "damaged queue entry {id}: {}; kept as found, it cannot run or be requeued",
            crate::domain::clip(&problem.to_string(), 512)
        );
        let _: i64 = self
            .invoke(
                self.scripts
                    .dead_letter_job
                    .key(&keys.jobs)
                    .key(&keys.dead)
                    .arg(id)
                    .arg(&reason)
                    .arg(deliveries)
                    .arg(now_ms())
                    .arg(GROUP)
                    .arg("damaged"),
                "dead-letter damaged queue entry",
            )
            .await?;
        tracing::warn!(stream = %keys.jobs, entry = %id, reason = %reason, "job dead-lettered");
        Ok(None)
    }

    /// `XREADGROUP` of new jobs, blocking up to `block` on a connection of its own.
    async fn read_new(
        &self,
        channel: &str,
        keys: &ChannelKeys,
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
        let jobs_key = &keys.jobs;
        cmd.arg("STREAMS").arg(jobs_key).arg(">");
        let value: Value = if block_ms > 0 {
            let mut conn = self.blocking_conn().await?;
            match tokio::time::timeout(block + BLOCK_GRACE, cmd.query_async(&mut conn)).await {
                Ok(Ok(value)) => {
                    if value != Value::Nil {
                        self.replicated(&mut conn, jobs_key).await;
                    }
                    self.return_blocking_conn(conn);
                    value
                }
                Ok(Err(e)) => return Err(unavailable("XREADGROUP", e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(Detail::new(format!(
                        "XREADGROUP on {jobs_key}: no answer within {} ms",
                        (block + BLOCK_GRACE).as_millis()
                    ))));
                }
            }
        } else {
            let value: Value = self.query(&cmd, "XREADGROUP").await?;
            if value != Value::Nil {
                self.replicated(&mut self.conn(), jobs_key).await;
            }
            value
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
                let job = job_from_fields(channel, &id, &fields, 1);
                if let Some(job) = self.readable(keys, &id, 1, job).await? {
                    jobs.push(job);
                }
            }
        }
        Ok(jobs)
    }
}

impl JobQueue for RedisStore {
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
                            &keys,
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
            if record.outcome == "failed" {
                self.index_failed(&record.event_uuid, record.finished_at_ms, DEDUPE_TTL)
                    .await?;
            }
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
                        .map_err(|e| StoreError::Corrupt(Detail::caused_by(&key, e)))
                })
                .transpose()
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
}
