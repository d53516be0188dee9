//! The job queue (pending and claimed indexes over the `jobs` table) and the job records.

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::WriteTransaction;

use super::EmbeddedStore;
use super::rows::{StoredDeadLetter, add_dead, load_job, remove_job, save_job};
use super::tables::{
    CLAIMED, Context as _, JOBS, PENDING, RECORDS, channel_ids, count_channel, decode, encode, ms,
    open_r, open_w, parse_id,
};
use crate::domain::now_ms;
use crate::store::journal::note_dead_lettered;
use crate::store::{
    ClaimOptions, DEDUPE_TTL, DeadLetterKind, Job, JobQueue, JobRecord, StoreError,
};

impl EmbeddedStore {
    /// One claim attempt: the jobs handed out, and how long until a claimed job could be
    /// reclaimed (when one is claimed and none was handed out).
    async fn claim_once(
        &self,
        channel: &str,
        options: &ClaimOptions,
    ) -> Result<(Vec<Job>, Option<Duration>), StoreError> {
        let channel = channel.to_owned();
        let claim_options = options.clone();
        let (jobs, next_idle, dead) = self
            .write("claim jobs", move |txn| {
                claim_in(txn, &channel, &claim_options)
            })
            .await?;
        if let Some(journal) = &options.journal {
            for (uuid, payload, reason) in dead {
                note_dead_lettered(self, journal, &uuid, &payload, &reason).await;
            }
        }
        Ok((jobs, next_idle))
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

/// The jobs a claim dead-lettered: EventUuid, payload, reason.
type DeadLettered = Vec<(String, Vec<u8>, String)>;

fn claim_in(
    txn: &WriteTransaction,
    channel: &str,
    options: &ClaimOptions,
) -> Result<(Vec<Job>, Option<Duration>, DeadLettered), StoreError> {
    let now = now_ms();
    let min_idle = ms(options.min_idle);
    let mut out = Vec::new();
    let mut dead = Vec::new();
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
            dead.push((job.event_uuid.clone(), job.payload.clone(), reason.clone()));
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
    Ok((out, next_idle, dead))
}

impl JobQueue for EmbeddedStore {
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
            if record.outcome == "failed" {
                super::journal::index_failed(txn, &uuid, record.finished_at_ms, DEDUPE_TTL)?;
            }
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

    fn queue_depth<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let channel = channel.to_owned();
        self.read("measure the queue", move |txn| {
            count_channel(&open_r(txn, JOBS)?, &channel)
        })
        .boxed()
    }
}
