//! The host's counters and histograms, rendered in the Prometheus text format by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (integer, so it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The metric's data behind `mutex`, also after a panic elsewhere poisoned it (counts stay
/// usable: a half-done increment is still a count).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Most label sets `fulfilld_jobs_total` keeps (outcome × code × component version).
pub const MAX_JOB_SERIES: usize = 500;
/// The code label of jobs past [`MAX_JOB_SERIES`].
const OTHER_CODE: &str = "other";

/// Labels of a finished job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct JobLabels {
    outcome: &'static str,
    code: String,
    component: String,
}

/// Every metric the host exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    pub events_enqueued: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    pub replay_id_rejections: AtomicU64,
    pub cursor_commits: AtomicU64,
    pub ingest_retries: AtomicU64,
    pub leases_acquired: AtomicU64,
    pub leases_lost: AtomicU64,
    /// Reconnects of subscriptions that have ended; the live one's are added at render time.
    pub reconnects_closed: AtomicU64,
    pub jobs_dead_lettered: AtomicU64,
    pub jobs_abandoned: AtomicU64,
    jobs: Mutex<BTreeMap<JobLabels, u64>>,
    /// From enqueue to the job's record being written.
    pub job_latency: Histogram,
    /// The component's run time per job (wall clock, host calls included).
    pub job_run_time: Histogram,
    /// CPU time of the component's own code per job (what the CPU deadline measures).
    pub job_cpu_time: Histogram,
    /// When a worker of this replica last took, ended or looked for a job in vain (a
    /// monotonic clock); what `/health` reads to tell a queue that is not moving.
    last_progress: Mutex<Option<std::time::Instant>>,
}

/// Values read at render time from elsewhere (the live subscription, the store).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub live_reconnects: u64,
    pub leader: bool,
    pub connected: bool,
    pub queue_depth: Option<u64>,
    pub dead_letters: Option<u64>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one finished job. `outcome`: completed, skipped, failed, dead_lettered.
    ///
    /// The code and the component come from components, so the series are bounded: past
    /// [`MAX_JOB_SERIES`] label sets a new code is counted as `other` (and a code longer than
    /// [`crate::runtime::MAX_CODE_BYTES`] always is).
    pub fn job_finished(&self, outcome: &'static str, code: &str, component: &str) {
        self.progressed();
        let mut labels = JobLabels {
            outcome,
            code: if code.len() <= crate::runtime::MAX_CODE_BYTES {
                code.to_owned()
            } else {
                OTHER_CODE.to_owned()
            },
            component: crate::domain::clip(component, 200),
        };
        let mut jobs = lock(&self.jobs);
        if jobs.len() >= MAX_JOB_SERIES && !jobs.contains_key(&labels) {
            labels.code = OTHER_CODE.to_owned();
        }
        *jobs.entry(labels).or_default() += 1;
    }

    /// Records that a worker of this replica got on with the queue: it took or ended a job, or
    /// found none to take (an idle worker is not a stuck one).
    pub fn progressed(&self) {
        let mut last = lock(&self.last_progress);
        *last = Some(std::time::Instant::now());
    }

    /// How long ago a worker of this replica last got on with the queue (`None`: never).
    pub fn since_progress(&self) -> Option<Duration> {
        let last = lock(&self.last_progress);
        last.map(|at| at.elapsed())
    }

    /// Jobs counted with `outcome`, any code and component.
    pub fn jobs_with_outcome(&self, outcome: &str) -> u64 {
        let jobs = lock(&self.jobs);
        jobs.iter()
            .filter(|(labels, _)| labels.outcome == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "fulfilld_events_received_total",
            "Platform events received from the Pub/Sub stream (decoded or not).",
            load(&self.events_received),
        );
        counter(
            &mut out,
            "fulfilld_events_enqueued_total",
            "Events enqueued as new jobs.",
            load(&self.events_enqueued),
        );
        counter(
            &mut out,
            "fulfilld_events_duplicate_total",
            "Events whose EventUuid was already enqueued (not enqueued again).",
            load(&self.events_duplicate),
        );
        counter(
            &mut out,
            "fulfilld_events_dead_lettered_total",
            "Undecodable events written to the dead letters.",
            load(&self.events_dead_lettered),
        );
        counter(
            &mut out,
            "fulfilld_jobs_dead_lettered_total",
            "Jobs this replica moved to the dead letters (stopped by the sandbox).",
            load(&self.jobs_dead_lettered),
        );
        counter(
            &mut out,
            "fulfilld_replay_id_rejections_total",
            "Stored replay ids Salesforce refused (the subscription fell back per SF_EVENTS_REPLAY).",
            load(&self.replay_id_rejections),
        );
        counter(
            &mut out,
            "fulfilld_cursor_commits_total",
            "Cursor writes (after the events before them were durably enqueued).",
            load(&self.cursor_commits),
        );
        counter(
            &mut out,
            "fulfilld_ingest_retries_total",
            "Enqueue attempts retried because the store was unavailable.",
            load(&self.ingest_retries),
        );
        counter(
            &mut out,
            "fulfilld_subscription_reconnects_total",
            "Pub/Sub streams reopened after a failure.",
            load(&self.reconnects_closed) + gauges.live_reconnects,
        );
        let _ = writeln!(
            out,
            "# HELP fulfilld_lease_changes_total Subscriber lease changes on this replica."
        );
        let _ = writeln!(out, "# TYPE fulfilld_lease_changes_total counter");
        let _ = writeln!(
            out,
            "fulfilld_lease_changes_total{{change=\"acquired\"}} {}",
            load(&self.leases_acquired)
        );
        let _ = writeln!(
            out,
            "fulfilld_lease_changes_total{{change=\"lost\"}} {}",
            load(&self.leases_lost)
        );
        let _ = writeln!(
            out,
            "# HELP fulfilld_jobs_total Finished jobs by outcome, failure code and component version."
        );
        let _ = writeln!(out, "# TYPE fulfilld_jobs_total counter");
        {
            let jobs = lock(&self.jobs);
            for (labels, value) in jobs.iter() {
                let _ = writeln!(
                    out,
                    "fulfilld_jobs_total{{outcome=\"{}\",code=\"{}\",component=\"{}\"}} {value}",
                    labels.outcome,
                    escape(&labels.code),
                    escape(&labels.component)
                );
            }
        }
        counter(
            &mut out,
            "fulfilld_jobs_abandoned_total",
            "Jobs left unacknowledged (host failure or shutdown) for another worker to reclaim.",
            load(&self.jobs_abandoned),
        );
        self.job_latency.render(
            &mut out,
            "fulfilld_job_latency_seconds",
            "From enqueue to the job's outcome being recorded.",
        );
        self.job_run_time.render(
            &mut out,
            "fulfilld_job_run_seconds",
            "The component's run time per job (wall clock, host calls included).",
        );
        self.job_cpu_time.render(
            &mut out,
            "fulfilld_job_cpu_seconds",
            "CPU time of the component's own code per job (what FULFILLD_CPU_DEADLINE_MS limits).",
        );
        gauge(
            &mut out,
            "fulfilld_subscription_leader",
            "1 when this replica holds the subscriber lease.",
            u64::from(gauges.leader),
        );
        gauge(
            &mut out,
            "fulfilld_subscription_connected",
            "1 when this replica's Pub/Sub stream is open.",
            u64::from(gauges.connected),
        );
        if let Some(depth) = gauges.queue_depth {
            gauge(
                &mut out,
                "fulfilld_queue_depth",
                "Jobs enqueued and not finished.",
                depth,
            );
        }
        if let Some(dead) = gauges.dead_letters {
            gauge(
                &mut out,
                "fulfilld_dead_letters",
                "Entries in the dead-letter set.",
                dead,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_series_are_bounded() {
        let metrics = Metrics::default();
        for n in 0..MAX_JOB_SERIES + 100 {
            metrics.job_finished("failed", &format!("CODE_{n}"), "fulfillment@1.0.0");
        }
        metrics.job_finished("failed", &"X".repeat(1000), "fulfillment@1.0.0");
        let text = metrics.render(&Gauges::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("fulfilld_jobs_total{"))
            .count();
        assert!(series <= MAX_JOB_SERIES + 1, "{series}");
        assert!(text.contains("code=\"other\""), "{text}");
        assert!(!text.contains(&"X".repeat(100)));
        assert_eq!(
            metrics.jobs_with_outcome("failed"),
            (MAX_JOB_SERIES + 101) as u64
        );
    }

    #[test]
    fn renders_counters_labels_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.events_received.fetch_add(3, Ordering::Relaxed);
        metrics.job_finished("failed", "409", "fulfillment@1.0.0");
        metrics.job_finished("completed", "", "fulfillment@1.0.0");
        metrics.job_finished("completed", "", "fulfillment@1.0.0");
        metrics.job_latency.observe(Duration::from_millis(30));
        metrics.job_latency.observe(Duration::from_secs(2));
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("fulfilld_events_received_total 3"), "{text}");
        assert!(text.contains(
            "fulfilld_jobs_total{outcome=\"completed\",code=\"\",component=\"fulfillment@1.0.0\"} 2"
        ));
        assert!(text.contains("fulfilld_jobs_total{outcome=\"failed\",code=\"409\""));
        assert!(text.contains("fulfilld_job_latency_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("fulfilld_job_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("fulfilld_job_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("fulfilld_job_latency_seconds_count 2"));
        assert_eq!(metrics.jobs_with_outcome("completed"), 2);
    }
}
