//! Workers: claim a job, run the active component on it, record the outcome and ack it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;

use super::Shared;
use crate::domain::Event;
use crate::error::chain;
use crate::runtime::{Disposition, FailureSource, LoadedComponent, Recording, RunKind, RunOptions};
use crate::store::{
    ClaimJournal, ClaimOptions, Job, JobRecord, JournalEntry, JournalEvent, StoreError,
};

/// How long a claim waits for work before checking for shutdown.
const CLAIM_BLOCK: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, index: usize, mut shutdown: watch::Receiver<bool>) {
    let consumer = format!("{}-w{index}", shared.serve.replica_id);
    let options = ClaimOptions {
        consumer: consumer.clone(),
        max: 1,
        block: CLAIM_BLOCK,
        min_idle: shared.serve.reclaim_after,
        max_deliveries: shared.serve.max_deliveries,
        journal: Some(ClaimJournal {
            replica: shared.serve.replica_id.clone(),
            retention: shared.serve.journal_retention,
        }),
    };
    let mut failing = false;
    shared.metrics.progressed();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let jobs = match shared.store.claim(&shared.channel, &options).await {
            Ok(jobs) => {
                shared.store_ok();
                if failing {
                    failing = false;
                    tracing::info!(worker = %consumer, "the store is reachable again; claiming jobs");
                }
                jobs
            }
            Err(err) => {
                shared.store_failed(&err);
                if !failing {
                    failing = true;
                    tracing::warn!(worker = %consumer, error = %chain(&err), "cannot claim jobs; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        // Taking a job (one per claim), or finding none (an idle worker is not a stuck one), is
        // progress.
        shared.metrics.progressed();
        for job in jobs {
            process(&shared, &consumer, job).await;
        }
    }
}

/// How long a worker pauses after the host could not run a job (e.g. no free instance).
const HOST_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Runs one job to its recorded end. Never gives up on writing the outcome while the host runs:
/// an unrecorded job would be reclaimed and run again (harmless, the component is idempotent,
/// but wasted work).
async fn process(shared: &Arc<Shared>, consumer: &str, job: Job) {
    let event: Event = match serde_json::from_slice(&job.payload) {
        Ok(event) => event,
        Err(err) => {
            let reason = format!("the job's payload is not an event: {}", chain(&err));
            tracing::error!(event_uuid = %job.event_uuid, replay_id = %job.replay_id, reason = %reason, "job dead-lettered");
            dead_letter(shared, &job, &reason, "BAD_PAYLOAD", "").await;
            shared
                .journal(
                    &job.event_uuid,
                    None,
                    vec![JournalEvent::DeadLettered { reason }],
                )
                .await;
            return;
        }
    };
    let component: Arc<LoadedComponent> = shared.component.load_full();
    let version = format!("{}@{}", component.info().name, component.info().version);
    let order_id = event.order_id().unwrap_or("").to_owned();
    // The job's one span: the runtime runs the component inside it rather than opening another.
    let span = tracing::info_span!(
        crate::runtime::JOB_SPAN,
        order_id = %order_id,
        event_uuid = %job.event_uuid,
        replay_id = %job.replay_id,
        component = %version,
        delivery = job.deliveries,
    );
    // The Order's trace: the leader's `ingest_event` span is the parent (a reclaimed or requeued
    // job carries the same one); none, or a malformed one, and the job is a trace of its own.
    crate::telemetry::adopt_parent(&span, event.trace_parent.as_deref());
    let run_span = span.clone();
    let order = (!order_id.is_empty()).then_some(order_id.as_str());
    async {
        shared
            .journal(
                &job.event_uuid,
                order,
                vec![JournalEvent::Claimed {
                    worker: consumer.to_owned(),
                    delivery: job.deliveries,
                }],
            )
            .await;
        tracing::info!("Starting fulfillment orchestration");
        // Keep the claim fresh while the component runs so the job is not reclaimed. The
        // heartbeat lives in this future, so a worker that dies takes its heartbeat with it.
        let every = (shared.serve.reclaim_after / 3).max(Duration::from_millis(100));
        let options = RunOptions {
            kind: RunKind::Job,
            record: if shared.serve.journal_capture {
                Recording::Full
            } else {
                Recording::Calls
            },
            delivery: job.deliveries,
            holds: Some(Arc::clone(&shared.holds)),
            span: Some(run_span.clone()),
        };
        let run =
            shared
                .runtime
                .run_with(&component, Arc::clone(&shared.services), &event, options);
        tokio::pin!(run);
        // A failed refresh is retried every `RETRY`; once the claim is known to be another
        // worker's (it was reclaimed while this one could not reach the store), the run is
        // dropped at its next host call so two workers never go on provisioning one Order.
        const RETRY: Duration = Duration::from_millis(500);
        let mut wait = every;
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                () = tokio::time::sleep(wait) => {
                    match shared.store.touch(&job, consumer).await {
                        Ok(()) => wait = every,
                        Err(StoreError::NotFound(detail)) => {
                            tracing::warn!(detail = %detail, "the job was handed to another worker while this one could not reach the store; run stopped here, the other worker carries on");
                            shared.metrics.jobs_abandoned.fetch_add(1, Ordering::Relaxed);
                            let finished = JournalEvent::Finished {
                                delivery: job.deliveries,
                                outcome: "abandoned".into(),
                                code: None,
                                message: "the job was handed to another worker while this one could not reach the store; run stopped".into(),
                                component: version.clone(),
                                elapsed_ms: 0,
                            };
                            shared.journal(&job.event_uuid, order, vec![finished]).await;
                            return;
                        }
                        Err(err) => {
                            tracing::debug!(error = %chain(&err), "cannot refresh the job's claim; retrying");
                            wait = RETRY;
                        }
                    }
                }
            }
        };
        shared.metrics.job_run_time.observe(report.elapsed);
        shared.metrics.job_cpu_time.observe(report.cpu);
        let policy = component.policy();
        // Each call at the time it ended; the run's end (below) at the time it is written.
        let calls: Vec<JournalEntry> = report
            .journal
            .iter()
            .flat_map(|journal| &journal.calls)
            .map(|call| JournalEntry {
                at_ms: call.at_ms,
                replica: shared.serve.replica_id.clone(),
                event: super::journal::call_event(
                    call,
                    job.deliveries,
                    shared.serve.journal_capture,
                    policy,
                ),
            })
            .collect();
        let mut entries: Vec<JournalEvent> = Vec::new();
        let elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
        let mut finished = |outcome: &str, code: Option<&str>, message: &str| {
            entries.push(JournalEvent::Finished {
                delivery: job.deliveries,
                outcome: outcome.to_owned(),
                code: code.map(str::to_owned),
                message: message.to_owned(),
                component: version.clone(),
                elapsed_ms,
            });
        };
        let (outcome, code, message) = match &report.result {
            Ok(outcome) => {
                let name = match outcome.disposition {
                    Disposition::Completed => "completed",
                    Disposition::Skipped => "skipped",
                };
                tracing::info!(outcome = name, detail = %outcome.message, elapsed_ms = report.elapsed.as_millis() as u64, cpu_ms = report.cpu.as_millis() as u64, "fulfillment finished");
                (name, None, outcome.message.clone())
            }
            Err(failure) if failure.source == FailureSource::Component => {
                tracing::warn!(code = %failure.code, detail = %failure.message, "fulfillment failed; the Order is marked Failed in Salesforce");
                // After the guard the component has written Failed itself; before it (the Order
                // could not be read) the Order is still Activating and the host writes it.
                mark_failed(shared, &order_id, failure).await;
                ("failed", Some(failure.code.clone()), failure.message.clone())
            }
            Err(failure) if failure.source == FailureSource::Sandbox => {
                let reason = format!("{}: {}", failure.code, failure.message);
                tracing::error!(code = %failure.code, detail = %failure.message, "the component was stopped by the sandbox; job dead-lettered");
                finished("failed", Some(&failure.code), &failure.message);
                mark_failed(shared, &order_id, failure).await;
                dead_letter(shared, &job, &reason, &failure.code, &version).await;
                entries.push(JournalEvent::DeadLettered { reason });
                journal_run(shared, &job, order, calls, entries).await;
                return;
            }
            Err(failure) => {
                // The host could not run the job (e.g. no free instance): leave it claimed so it
                // is handed out again after the reclaim time.
                tracing::warn!(code = %failure.code, detail = %failure.message, "job not run; it will be retried after the reclaim time");
                shared.metrics.jobs_abandoned.fetch_add(1, Ordering::Relaxed);
                finished("abandoned", Some(&failure.code), &failure.message);
                journal_run(shared, &job, order, calls, entries).await;
                // Do not race through the queue while the host cannot run jobs: each job taken
                // now would only use up one of its deliveries.
                let pause = HOST_FAILURE_PAUSE.min(shared.serve.reclaim_after);
                tokio::time::sleep(pause).await;
                return;
            }
        };
        let record = JobRecord {
            event_uuid: job.event_uuid.clone(),
            replay_id: job.replay_id.to_string(),
            order_id: (!order_id.is_empty()).then(|| order_id.clone()),
            outcome: outcome.to_owned(),
            code: code.clone(),
            message,
            component: version.clone(),
            component_sha256: component.digest().to_owned(),
            deliveries: job.deliveries,
            finished_at_ms: crate::domain::now_ms(),
        };
        let recorded = write_with_retry(shared, "record the job's outcome", || {
            shared.store.complete(&job, record.clone())
        })
        .await;
        // The journal says what was recorded: an outcome the store never took (shutdown, or
        // the job was reclaimed meanwhile) is no outcome; the job runs again.
        if recorded {
            finished(outcome, code.as_deref(), &record.message);
        } else {
            let message = format!(
                "ended {outcome} but the outcome could not be recorded (shutdown, or the job was \
                 handed to another worker): {}",
                record.message
            );
            finished("abandoned", code.as_deref(), &message);
        }
        journal_run(shared, &job, order, calls, entries).await;
        if recorded {
            shared
                .metrics
                .job_finished(outcome, code.as_deref().unwrap_or(""), &version);
            observe_latency(shared, &job);
        }
    }
    .instrument(span)
    .await;
}

/// Journals a run: its calls (each stamped when it ended), then how it ended (stamped now).
async fn journal_run(
    shared: &Shared,
    job: &Job,
    order: Option<&str>,
    mut calls: Vec<JournalEntry>,
    end: Vec<JournalEvent>,
) {
    calls.extend(
        end.into_iter()
            .map(|event| JournalEntry::new(&shared.serve.replica_id, event)),
    );
    super::journal::append_entries(
        shared.store.as_ref(),
        &job.event_uuid,
        order,
        calls,
        shared.serve.journal_retention,
    )
    .await;
}

async fn dead_letter(shared: &Arc<Shared>, job: &Job, reason: &str, code: &str, version: &str) {
    if write_with_retry(shared, "dead-letter the job", || {
        shared.store.dead_letter_job(job, reason)
    })
    .await
    {
        shared
            .metrics
            .jobs_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        shared.metrics.job_finished("dead_lettered", code, version);
        observe_latency(shared, job);
    }
}

fn observe_latency(shared: &Shared, job: &Job) {
    let waited = crate::domain::now_ms().saturating_sub(job.enqueued_at_ms);
    shared
        .metrics
        .job_latency
        .observe(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
}

/// Retries a store write while the store is unavailable. False when it could not be written
/// (the job will be reclaimed): on shutdown, or when the job is gone (another worker reclaimed
/// and finished it).
async fn write_with_retry<'a, F>(
    shared: &'a Shared,
    what: &str,
    mut write: impl FnMut() -> F,
) -> bool
where
    F: std::future::Future<Output = Result<(), StoreError>> + 'a,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return true,
            Err(StoreError::NotFound(detail)) => {
                tracing::warn!(detail = %detail, "cannot {what}: the job was reclaimed by another worker");
                return false;
            }
            Err(err) => {
                shared.store_failed(&err);
                if shared.stopping() && delay >= Duration::from_secs(1) {
                    tracing::warn!(error = %chain(&err), "shutting down before being able to {what}; the job will be reclaimed");
                    shared
                        .metrics
                        .jobs_abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                tracing::warn!(error = %chain(&err), "cannot {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The host's `Failed` write for a job that ended without the component recording its failure
/// ([`super::failed`]), bounded by a third of the reclaim time: the claim is not refreshed
/// meanwhile, and a slow org must not let another worker take the job and run it again.
async fn mark_failed(shared: &Shared, order_id: &str, failure: &crate::runtime::JobFailure) {
    let limit = (shared.serve.reclaim_after / 3).max(Duration::from_millis(100));
    let mark = super::failed::mark_failed_logged(shared.services.as_ref(), order_id, failure);
    if tokio::time::timeout(limit, mark).await.is_err() {
        tracing::warn!(
            code = %failure.code,
            limit_ms = limit.as_millis() as u64,
            "could not mark the Order Failed in time; it stays as it was (not retried)"
        );
    }
}
