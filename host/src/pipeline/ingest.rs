//! The subscriber side of the pipeline: one leader per channel reads the Pub/Sub stream and moves
//! each batch into the store (jobs, dead letters, then the cursor) under its lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Role, Shared};
use crate::domain::ReplayId;
use crate::error::chain;
use crate::pubsub::{
    Delivery, Fallback, ReplayFrom, SessionSource, SubscriberOptions, Subscription, subscribe,
};
use crate::store::{
    IngestBatch, JournalEntry, JournalEvent, Lease, NewDeadLetter, NewJob, StoreError,
};

/// The span the leader opens for each event it enqueues: the root of the Order's trace.
const INGEST_SPAN: &str = "ingest_event";

/// At most this many stream items go into one store write.
const MAX_INGEST_BATCH: usize = 100;

/// Builds subscriber options for a start position (the configuration's endpoint, fallback, TLS).
pub type OptionsFor = Arc<dyn Fn(ReplayFrom) -> SubscriberOptions + Send + Sync>;

/// Why a leadership term ended.
enum Ending {
    Shutdown,
    Lost(String),
}

pub(crate) struct Ingestor {
    pub shared: Arc<Shared>,
    pub options_for: OptionsFor,
    pub session: Arc<dyn SessionSource>,
    pub shutdown: watch::Receiver<bool>,
}

impl Ingestor {
    /// Competes for the channel's lease until shutdown; reads the stream while holding it.
    pub async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let channel = shared.channel.clone();
        let ttl = shared.serve.lease_ttl;
        let mut logged_follower = false;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let asked = Instant::now();
            match shared
                .store
                .acquire_lease(&channel, &shared.serve.replica_id, ttl)
                .await
            {
                Ok(Some(lease)) => {
                    // `lease_lost` stays until another replica is seen holding the lease: while
                    // this one leads, /health reports the stream instead.
                    shared.store_ok();
                    logged_follower = false;
                    shared
                        .metrics
                        .leases_acquired
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        channel = %channel,
                        epoch = lease.epoch,
                        replica = %lease.holder,
                        "subscriber lease acquired: this replica reads the channel"
                    );
                    shared.set_role(Role::Leader { epoch: lease.epoch });
                    let ending = self.lead(lease, asked).await;
                    shared.set_role(Role::Follower);
                    match ending {
                        Ending::Shutdown => {
                            shared.set_lease_lost(None);
                            break;
                        }
                        Ending::Lost(reason) => {
                            shared.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
                            shared.set_lease_lost(Some(reason.clone()));
                            tracing::warn!(channel = %channel, reason = %reason, "stopped reading the channel");
                        }
                    }
                }
                Ok(None) => {
                    shared.store_ok();
                    shared.set_lease_lost(None);
                    shared.set_role(Role::Follower);
                    if !logged_follower {
                        logged_follower = true;
                        let holder = shared.store.lease(&channel).await.ok().flatten();
                        tracing::info!(
                            channel = %channel,
                            holder = holder.as_ref().map_or("unknown", |h| h.holder.as_str()),
                            "another replica holds the subscriber lease; this one runs workers only"
                        );
                    }
                }
                Err(err) => {
                    shared.set_role(Role::Follower);
                    shared.store_failed(&err);
                    tracing::warn!(channel = %channel, error = %chain(&err), "cannot reach the store to take the subscriber lease");
                }
            }
            let pause = (ttl / 3).min(Duration::from_secs(2));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// One leadership term: subscribe from the stored cursor and ingest until the lease is lost
    /// or the host shuts down. `acquired` is when the lease request was sent, so the lease is
    /// never assumed to last longer than the store granted it.
    async fn lead(&mut self, mut lease: Lease, acquired: Instant) -> Ending {
        let shared = Arc::clone(&self.shared);
        let channel = shared.channel.clone();
        let ttl = shared.serve.lease_ttl;
        // Stop reading a safety margin before the lease would expire without a renewal.
        let margin = ttl / 5;
        let mut valid_until = acquired + ttl - margin;

        let start = match self.start_position().await {
            Ok(start) => start,
            Err(err) => return Ending::Lost(format!("cannot read the cursor: {}", chain(&err))),
        };
        tracing::info!(channel = %channel, from = %describe(&start), epoch = lease.epoch, "subscription starting");
        let mut subscription = match subscribe((self.options_for)(start), Arc::clone(&self.session))
        {
            Ok(subscription) => subscription,
            Err(err) => {
                tracing::error!(channel = %channel, error = %chain(&err), "cannot subscribe");
                return Ending::Lost(format!("cannot subscribe: {}", chain(&err)));
            }
        };
        shared.attach_subscription(subscription.state());
        let mut renew = tokio::time::interval(ttl / 3);
        renew.tick().await;

        let ending = loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break Ending::Shutdown,
                () = tokio::time::sleep_until(valid_until) => {
                    break Ending::Lost("the lease could not be renewed in time".into());
                }
                _ = renew.tick() => {
                    match renew_lease(&shared, &mut lease, &mut valid_until, margin).await {
                        Ok(()) => {}
                        Err(ending) => break ending,
                    }
                }
                delivery = subscription.next() => {
                    let Some(first) = delivery else {
                        break Ending::Lost("the subscription ended".into());
                    };
                    let mut items = vec![first];
                    while items.len() < MAX_INGEST_BATCH {
                        match subscription.next().now_or_never() {
                            Some(Some(item)) => items.push(item),
                            _ => break,
                        }
                    }
                    match self.ingest(&mut lease, &mut valid_until, margin, items).await {
                        Ok(Some(cursor)) => subscription.commit(cursor),
                        Ok(None) => {}
                        Err(ending) => break ending,
                    }
                }
            }
        };
        self.finish(subscription, &lease).await;
        ending
    }

    async fn finish(&self, subscription: Subscription, lease: &Lease) {
        let reconnects = subscription.state().borrow().reconnects;
        self.shared
            .metrics
            .reconnects_closed
            .fetch_add(reconnects, Ordering::Relaxed);
        self.shared.detach_subscription();
        subscription.close().await;
        if let Err(err) = self.shared.store.release_lease(lease).await {
            tracing::debug!(error = %chain(&err), "could not release the lease; it expires by itself");
        }
    }

    /// A pending backfill, else `SF_EVENTS_REPLAY=ALL` (the runbook's backfill: EARLIEST even
    /// with a stored cursor), else the stored cursor, else `SF_EVENTS_REPLAY`.
    async fn start_position(&self) -> Result<ReplayFrom, StoreError> {
        let shared = &self.shared;
        if shared.store.backfill_requested(&shared.channel).await? {
            tracing::warn!(channel = %shared.channel, "backfill requested: subscribing from EARLIEST once");
            return Ok(ReplayFrom::Earliest);
        }
        Ok(match shared.store.cursor(&shared.channel).await? {
            Some(cursor) if shared.fallback == Fallback::Earliest => {
                // The runbook: "set SF_EVENTS_REPLAY=ALL for a one-time backfill, then revert to
                // LATEST". Every leadership term started with ALL replays again; EventUuid
                // deduplication keeps each Order to one job.
                tracing::warn!(
                    channel = %shared.channel,
                    cursor = %cursor,
                    "SF_EVENTS_REPLAY=ALL: backfill from EARLIEST although a replay cursor is stored; \
                     revert SF_EVENTS_REPLAY to LATEST once the backfill is done (until then every \
                     restart or failover replays again; events already enqueued are skipped by EventUuid)"
                );
                ReplayFrom::Earliest
            }
            Some(cursor) => ReplayFrom::After(cursor),
            None => ReplayFrom::from(shared.fallback),
        })
    }

    /// Writes one batch, retrying while the store is unavailable and the lease still holds.
    /// Returns the cursor now durable.
    async fn ingest(
        &mut self,
        lease: &mut Lease,
        valid_until: &mut Instant,
        margin: Duration,
        items: Vec<Delivery>,
    ) -> Result<Option<ReplayId>, Ending> {
        let shared = Arc::clone(&self.shared);
        let mut batch = IngestBatch::default();
        let mut orders: HashMap<String, (String, String)> = HashMap::new();
        // One `ingest_event` span per EventUuid, the root of that Order's trace: it lasts until
        // the batch is written, and its `traceparent` travels in the job (`domain::Event`).
        let mut spans: HashMap<String, tracing::Span> = HashMap::new();
        for item in items {
            match item {
                Delivery::Event(mut received) => {
                    shared
                        .metrics
                        .events_received
                        .fetch_add(1, Ordering::Relaxed);
                    if !received.event.event_uuid.trim().is_empty() {
                        let event = &received.event;
                        let span = spans.entry(event.event_uuid.clone()).or_insert_with(|| {
                            tracing::info_span!(
                                parent: None,
                                INGEST_SPAN,
                                order_id = event.order_id().unwrap_or(""),
                                event_uuid = %event.event_uuid,
                                replay_id = %received.replay_id,
                                channel = %shared.channel,
                                outcome = tracing::field::Empty,
                            )
                        });
                        received.event.trace_parent = crate::telemetry::traceparent(span);
                    }
                    let payload = match serde_json::to_vec(&received.event) {
                        Ok(payload) => payload,
                        Err(err) => {
                            // Cannot happen for a decoded event; keep it rather than lose it.
                            batch.dead_letters.push(NewDeadLetter {
                                event_uuid: received.event.event_uuid.clone(),
                                replay_id: received.replay_id.clone(),
                                payload: Vec::new(),
                                reason: format!(
                                    "cannot serialize the decoded event: {}",
                                    chain(&err)
                                ),
                            });
                            continue;
                        }
                    };
                    if received.event.event_uuid.trim().is_empty() {
                        // Without an EventUuid it cannot be deduplicated; never let it shadow
                        // other such events under one empty key.
                        tracing::error!(channel = %shared.channel, replay_id = %received.replay_id, "Platform Event without an EventUuid dead-lettered");
                        batch.cursor = Some(received.replay_id.clone());
                        batch.dead_letters.push(NewDeadLetter {
                            event_uuid: String::new(),
                            replay_id: received.replay_id,
                            payload,
                            reason: "the event has no EventUuid, so it cannot be deduplicated"
                                .to_owned(),
                        });
                        continue;
                    }
                    // The first of a repeated EventUuid is the one enqueued: log its replay id.
                    orders
                        .entry(received.event.event_uuid.clone())
                        .or_insert_with(|| {
                            (
                                received.event.order_id().unwrap_or("").to_owned(),
                                received.replay_id.to_string(),
                            )
                        });
                    batch.cursor = Some(received.replay_id.clone());
                    batch.jobs.push(NewJob {
                        event_uuid: received.event.event_uuid,
                        replay_id: received.replay_id,
                        payload,
                    });
                }
                Delivery::Undecodable(event) => {
                    shared
                        .metrics
                        .events_received
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel = %shared.channel,
                        event_uuid = %event.event_uuid,
                        replay_id = %event.replay_id,
                        schema_id = %event.schema_id,
                        reason = %event.reason,
                        "undecodable Platform Event: dead-lettered with its raw payload"
                    );
                    batch.cursor = Some(event.replay_id.clone());
                    batch.dead_letters.push(NewDeadLetter {
                        event_uuid: event.event_uuid,
                        replay_id: event.replay_id,
                        payload: event.payload,
                        reason: format!(
                            "undecodable (schema {}): {}",
                            event.schema_id, event.reason
                        ),
                    });
                }
                Delivery::Cursor(replay_id) => batch.cursor = Some(replay_id),
                Delivery::ReplayIdRejected {
                    replay_id,
                    fallback,
                    error_code,
                    message,
                } => {
                    shared
                        .metrics
                        .replay_id_rejections
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel = %shared.channel,
                        replay_id = %replay_id,
                        fallback = ?fallback,
                        error_code = %error_code,
                        message = %message,
                        "Salesforce refused the stored replay id; events between it and the fallback position may need a backfill"
                    );
                }
            }
        }
        if batch.jobs.is_empty() && batch.dead_letters.is_empty() && batch.cursor.is_none() {
            return Ok(None);
        }
        let cursor = batch.cursor.clone();
        let mut delay = Duration::from_millis(100);
        loop {
            // Before the write: no job of the batch can be claimed before this time.
            let enqueued_at = crate::domain::now_ms();
            match shared.store.ingest(lease, batch.clone()).await {
                Ok(report) => {
                    shared.store_ok();
                    let m = &shared.metrics;
                    m.events_enqueued
                        .fetch_add(report.enqueued.len() as u64, Ordering::Relaxed);
                    m.events_duplicate
                        .fetch_add(report.duplicates.len() as u64, Ordering::Relaxed);
                    m.events_dead_lettered
                        .fetch_add(report.dead_lettered as u64, Ordering::Relaxed);
                    if cursor.is_some() {
                        m.cursor_commits.fetch_add(1, Ordering::Relaxed);
                    }
                    for uuid in &report.enqueued {
                        if let Some(span) = spans.get(uuid) {
                            span.record("outcome", "enqueued");
                        }
                        let (order_id, replay_id) = orders
                            .get(uuid)
                            .map_or(("", ""), |(o, r)| (o.as_str(), r.as_str()));
                        tracing::info!(
                            order_id,
                            event_uuid = %uuid,
                            replay_id,
                            channel = %shared.channel,
                            "Platform Event enqueued for provisioning"
                        );
                    }
                    for uuid in &report.duplicates {
                        if let Some(span) = spans.get(uuid) {
                            span.record("outcome", "duplicate");
                        }
                        let (order_id, replay_id) = orders
                            .get(uuid)
                            .map_or(("", ""), |(o, r)| (o.as_str(), r.as_str()));
                        tracing::info!(
                            order_id,
                            event_uuid = %uuid,
                            replay_id,
                            "duplicate Platform Event ignored (EventUuid already enqueued)"
                        );
                    }
                    // The journal is written beside the stream, not in its way.
                    if !report.enqueued.is_empty() {
                        let journaled: Vec<(String, String, JournalEntry)> = report
                            .enqueued
                            .iter()
                            .map(|uuid| {
                                let (order_id, replay_id) =
                                    orders.get(uuid).cloned().unwrap_or_default();
                                let entry = JournalEntry {
                                    at_ms: enqueued_at,
                                    replica: shared.serve.replica_id.clone(),
                                    event: JournalEvent::Enqueued { replay_id },
                                };
                                (uuid.clone(), order_id, entry)
                            })
                            .collect();
                        let journal_shared = Arc::clone(&shared);
                        tokio::spawn(async move {
                            for (uuid, order_id, entry) in journaled {
                                super::journal::append_entries(
                                    journal_shared.store.as_ref(),
                                    &uuid,
                                    Some(order_id.as_str()),
                                    vec![entry],
                                    journal_shared.serve.journal_retention,
                                )
                                .await;
                            }
                        });
                    }
                    if let Some(cursor) = &cursor {
                        shared.set_cursor(cursor.clone());
                    }
                    return Ok(cursor);
                }
                Err(StoreError::Fenced { detail, .. }) => {
                    return Err(Ending::Lost(format!("fenced by the store: {detail}")));
                }
                Err(err) => {
                    shared.store_failed(&err);
                    shared
                        .metrics
                        .ingest_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(channel = %shared.channel, error = %chain(&err), "cannot enqueue; holding the batch and retrying (the cursor does not move)");
                    if Instant::now() + delay >= *valid_until {
                        return Err(Ending::Lost(format!(
                            "the store stayed unavailable past the lease: {}",
                            chain(&err)
                        )));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.changed() => return Err(Ending::Shutdown),
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                    renew_lease(&shared, lease, valid_until, margin).await?;
                }
            }
        }
    }
}

/// Renews the lease; a store error is tolerated until `valid_until`.
async fn renew_lease(
    shared: &Shared,
    lease: &mut Lease,
    valid_until: &mut Instant,
    margin: Duration,
) -> Result<(), Ending> {
    let ttl = shared.serve.lease_ttl;
    let sent = Instant::now();
    match shared.store.renew_lease(lease, ttl).await {
        Ok(renewed) => {
            shared.store_ok();
            *lease = renewed;
            *valid_until = sent + ttl - margin;
            Ok(())
        }
        Err(StoreError::Fenced { detail, .. }) => {
            Err(Ending::Lost(format!("the lease was lost: {detail}")))
        }
        Err(err) => {
            shared.store_failed(&err);
            tracing::warn!(channel = %shared.channel, error = %chain(&err), "cannot renew the subscriber lease");
            if Instant::now() >= *valid_until {
                Err(Ending::Lost(format!(
                    "cannot renew the lease: {}",
                    chain(&err)
                )))
            } else {
                Ok(())
            }
        }
    }
}

fn describe(start: &ReplayFrom) -> String {
    match start {
        ReplayFrom::Latest => "LATEST".into(),
        ReplayFrom::Earliest => "EARLIEST".into(),
        ReplayFrom::After(cursor) => format!("after replay id {cursor}"),
    }
}
