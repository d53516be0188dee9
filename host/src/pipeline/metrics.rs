//! The host's counters and histograms, exported by `/metrics` in the OpenMetrics text format
//! through the `prometheus-client` crate.

use std::collections::BTreeMap;
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
    /// When this replica's jobs of the last [`RATE_WINDOW`] ended (at most [`MAX_RECENT`]), for
    /// the console's rates.
    recent_finishes: Mutex<std::collections::VecDeque<std::time::Instant>>,
}

/// How far back [`Metrics::finished_within`] can look.
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Job ends [`Metrics`] remembers for the rates.
const MAX_RECENT: usize = 100_000;

/// Values read at render time from elsewhere (the live subscription, the store).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub live_reconnects: u64,
    pub leader: bool,
    pub connected: bool,
    pub queue_depth: Option<u64>,
    pub dead_letters: Option<u64>,
    /// The runtime's host-call counters: operation, outcome, count.
    pub host_calls: Vec<(&'static str, &'static str, u64)>,
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
        drop(jobs);
        let now = std::time::Instant::now();
        let mut recent = lock(&self.recent_finishes);
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > RATE_WINDOW)
            || recent.len() >= MAX_RECENT
        {
            recent.pop_front();
        }
        recent.push_back(now);
    }

    /// Jobs this replica ended within `window` (at most [`RATE_WINDOW`] back).
    pub fn finished_within(&self, window: std::time::Duration) -> usize {
        let now = std::time::Instant::now();
        lock(&self.recent_finishes)
            .iter()
            .rev()
            .take_while(|at| now.duration_since(**at) <= window)
            .count()
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

    /// The exposition `/metrics` serves (OpenMetrics text, written by the `prometheus-client`
    /// crate from a snapshot of the counters).
    pub fn render(&self, gauges: &Gauges) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = vec![
            (
                "fulfilld_events_received",
                "Platform events received from the Pub/Sub stream (decoded or not).",
                load(&self.events_received),
            ),
            (
                "fulfilld_events_enqueued",
                "Events enqueued as new jobs.",
                load(&self.events_enqueued),
            ),
            (
                "fulfilld_events_duplicate",
                "Events whose EventUuid was already enqueued (not enqueued again).",
                load(&self.events_duplicate),
            ),
            (
                "fulfilld_events_dead_lettered",
                "Undecodable events written to the dead letters.",
                load(&self.events_dead_lettered),
            ),
            (
                "fulfilld_jobs_dead_lettered",
                "Jobs this replica moved to the dead letters (stopped by the sandbox).",
                load(&self.jobs_dead_lettered),
            ),
            (
                "fulfilld_replay_id_rejections",
                "Stored replay ids Salesforce refused (the subscription fell back per SF_EVENTS_REPLAY).",
                load(&self.replay_id_rejections),
            ),
            (
                "fulfilld_cursor_commits",
                "Cursor writes (after the events before them were durably enqueued).",
                load(&self.cursor_commits),
            ),
            (
                "fulfilld_ingest_retries",
                "Enqueue attempts retried because the store was unavailable.",
                load(&self.ingest_retries),
            ),
            (
                "fulfilld_subscription_reconnects",
                "Pub/Sub streams reopened after a failure.",
                load(&self.reconnects_closed) + gauges.live_reconnects,
            ),
            (
                "fulfilld_jobs_abandoned",
                "Jobs left unacknowledged (host failure or shutdown) for another worker to reclaim.",
                load(&self.jobs_abandoned),
            ),
        ];
        let mut gauge_values = vec![
            (
                "fulfilld_subscription_leader",
                "1 when this replica holds the subscriber lease.",
                i64::from(gauges.leader),
            ),
            (
                "fulfilld_subscription_connected",
                "1 when this replica's Pub/Sub stream is open.",
                i64::from(gauges.connected),
            ),
        ];
        if let Some(depth) = gauges.queue_depth {
            gauge_values.push((
                "fulfilld_queue_depth",
                "Jobs enqueued and not finished.",
                i64::try_from(depth).unwrap_or(i64::MAX),
            ));
        }
        if let Some(dead) = gauges.dead_letters {
            gauge_values.push((
                "fulfilld_dead_letters",
                "Entries in the dead-letter set.",
                i64::try_from(dead).unwrap_or(i64::MAX),
            ));
        }
        let snapshot = Snapshot {
            counters,
            lease_changes: [
                ("acquired", load(&self.leases_acquired)),
                ("lost", load(&self.leases_lost)),
            ],
            // prometheus-client writes label values as given: escape them (OpenMetrics' rules).
            jobs: lock(&self.jobs)
                .iter()
                .map(|(l, n)| {
                    let labels = JobLabels {
                        outcome: l.outcome,
                        code: escape(&l.code),
                        component: escape(&l.component),
                    };
                    (labels, *n)
                })
                .collect(),
            host_calls: gauges.host_calls.clone(),
            histograms: vec![
                (
                    "fulfilld_job_latency_seconds",
                    "From enqueue to the job's outcome being recorded.",
                    self.job_latency.snapshot(),
                ),
                (
                    "fulfilld_job_run_seconds",
                    "The component's run time per job (wall clock, host calls included).",
                    self.job_run_time.snapshot(),
                ),
                (
                    "fulfilld_job_cpu_seconds",
                    "CPU time of the component's own code per job (what FULFILLD_CPU_DEADLINE_MS limits).",
                    self.job_cpu_time.snapshot(),
                ),
            ],
            gauges: gauge_values,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::with_capacity(8192);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %err, "cannot encode the metrics");
        }
        out
    }
}

/// A label value escaped as OpenMetrics text requires (`\\`, `\"`, `\n`).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A histogram's buckets (non-cumulative, the last one up to +Inf), sum and count.
#[derive(Debug, Clone)]
struct HistogramSnapshot {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn snapshot(&self) -> HistogramSnapshot {
        let count = self.count();
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        let mut below = 0;
        for (bound, cumulative) in BUCKETS.iter().zip(&self.counts) {
            let cumulative = cumulative.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative.saturating_sub(below)));
            below = cumulative;
        }
        // prometheus-client writes the bucket bounded by f64::MAX as `+Inf`.
        buckets.push((f64::MAX, count.saturating_sub(below)));
        HistogramSnapshot {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        }
    }
}

/// Everything `/metrics` shows, read at one moment, as a `prometheus-client` collector.
#[derive(Debug)]
struct Snapshot {
    counters: Vec<(&'static str, &'static str, u64)>,
    lease_changes: [(&'static str, u64); 2],
    jobs: Vec<(JobLabels, u64)>,
    host_calls: Vec<(&'static str, &'static str, u64)>,
    histograms: Vec<(&'static str, &'static str, HistogramSnapshot)>,
    gauges: Vec<(&'static str, &'static str, i64)>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::{EncodeMetric as _, NoLabelSet};
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        for (name, help, value) in &self.counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "fulfilld_lease_changes",
            "Subscriber lease changes on this replica.",
            None,
            MetricType::Counter,
        )?;
        for (change, value) in &self.lease_changes {
            let set = [("change", *change)];
            let metric = family.encode_family(&set)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "fulfilld_jobs",
            "Finished jobs by outcome, failure code and component version.",
            None,
            MetricType::Counter,
        )?;
        for (labels, value) in &self.jobs {
            let set = [
                ("outcome", labels.outcome),
                ("code", labels.code.as_str()),
                ("component", labels.component.as_str()),
            ];
            let metric = family.encode_family(&set)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "fulfilld_host_calls",
            "Calls components made through the host, by operation and outcome (ok, or the error kind the component got).",
            None,
            MetricType::Counter,
        )?;
        for (op, outcome, value) in &self.host_calls {
            let set = [("op", *op), ("outcome", *outcome)];
            let metric = family.encode_family(&set)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        for (name, help, histogram) in &self.histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(
                histogram.sum,
                histogram.count,
                &histogram.buckets,
                None,
            )?;
        }
        for (name, help, value) in &self.gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(*value).encode(metric)?;
        }
        Ok(())
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
