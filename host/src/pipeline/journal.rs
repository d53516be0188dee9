//! Writing the job journal ([`crate::store::Journal`]) from the pipeline, and reading it back by
//! Order or EventUuid for `fulfilld orders show`, the admin API and the console.
//!
//! Writes are best effort: the journal is for people, so a write the store refuses is logged at
//! WARN and the job goes on. Entries are cut to the journal's bounds before they are written;
//! request and answer bodies are kept only with `FULFILLD_JOURNAL_CAPTURE`, redacted by the
//! policy ([`CapabilityPolicy::redact_value`]).

use std::time::Duration;

use serde::Serialize;

use super::Shared;
use crate::runtime::CallRecord;
use crate::runtime::policy::CapabilityPolicy;
use crate::store::{JobRecord, JournalEntry, JournalEvent, Store, StoreError};

pub use crate::store::journal::{append_entries, order_key};

/// Appends `events` (written now, by `replica`) to the journal of `event_uuid` (indexed under
/// `order_id`), logging a failure instead of returning it.
pub async fn append(
    store: &dyn Store,
    replica: &str,
    event_uuid: &str,
    order_id: Option<&str>,
    events: Vec<JournalEvent>,
    retention: Duration,
) {
    let entries = events
        .into_iter()
        .map(|event| JournalEntry::new(replica, event))
        .collect();
    append_entries(store, event_uuid, order_id, entries, retention).await;
}

impl Shared {
    /// [`append`] with this replica's name and retention.
    pub(crate) async fn journal(
        &self,
        event_uuid: &str,
        order_id: Option<&str>,
        events: Vec<JournalEvent>,
    ) {
        append(
            self.store.as_ref(),
            &self.serve.replica_id,
            event_uuid,
            order_id,
            events,
            self.serve.journal_retention,
        )
        .await;
    }
}

/// Puts dead letter `id` back on the queue and notes it in the job's journal (written as
/// `replica`); returns the new job's id. The operator's `dead-letters requeue` and the admin API
/// both requeue through here.
pub async fn requeue(
    store: &dyn Store,
    replica: &str,
    channel: &str,
    id: &str,
    retention: Duration,
) -> Result<String, StoreError> {
    let letter = store.dead_letter(channel, id).await?;
    let job = store.requeue(channel, id).await?;
    let order_id = serde_json::from_slice::<crate::domain::Event>(&letter.payload)
        .ok()
        .and_then(|event| event.order_id().map(str::to_owned));
    append(
        store,
        replica,
        &letter.event_uuid,
        order_id.as_deref(),
        vec![JournalEvent::Requeued {
            dead_letter_id: id.to_owned(),
        }],
        retention,
    )
    .await;
    Ok(job)
}

/// A call the component made on `delivery`, as a journal entry: bodies only when `capture`,
/// redacted by `policy`.
pub fn call_event(
    call: &CallRecord,
    delivery: u32,
    capture: bool,
    policy: &CapabilityPolicy,
) -> JournalEvent {
    let (interface, action) = match call.op {
        "billing.call" => ("billing", call.target.as_str()),
        op => match op.split_once('.') {
            Some((interface, action)) => (interface, action),
            None => (op, op),
        },
    };
    let (outcome, code) = match &call.result {
        Ok(_) => ("ok".to_owned(), None),
        Err(error) => (
            error.kind.as_str().to_owned(),
            (!error.code.is_empty()).then(|| error.code.clone()),
        ),
    };
    let keep = |value: Option<&serde_json::Value>| {
        value.filter(|_| capture).map(|value| {
            let mut value = value.clone();
            policy.redact_value(&mut value);
            value
        })
    };
    JournalEvent::Call {
        interface: interface.to_owned(),
        action: crate::domain::clip(action, 80),
        target: call.target.clone(),
        duration_ms: call.duration_ms,
        outcome,
        code,
        request: keep(call.request.as_ref()),
        answer: keep(call.result.as_ref().ok().filter(|v| !v.is_null())),
        delivery,
    }
}

/// One job of an Order as `orders show` and the console show it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub event_uuid: String,
    pub replay_id: String,
    pub order_id: Option<String>,
    /// `queued`, `running`, `completed`, `skipped`, `failed`, `dead`, or `unknown` (a record
    /// without a journal, e.g. from before the journal existed).
    pub state: String,
    pub record: Option<JobRecord>,
    /// Oldest first.
    pub journal: Vec<JournalEntry>,
}

/// What is known about an Order (or one EventUuid): its jobs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub query: String,
    pub order_id: Option<String>,
    pub jobs: Vec<JobView>,
}

/// What `orders show`, `orders export` and the console say when nothing is known about `id`.
pub fn nothing_known(id: &str) -> String {
    format!(
        "no job is known for Order or EventUuid '{}' (the journal keeps jobs for \
         FULFILLD_JOURNAL_RETENTION_HOURS after their last step)",
        crate::domain::clip(id, 128)
    )
}

impl OrderView {
    /// Drops every captured request and answer (for a caller without the admin token).
    pub fn strip_bodies(&mut self) {
        for job in &mut self.jobs {
            for entry in &mut job.journal {
                if let JournalEvent::Call {
                    request, answer, ..
                } = &mut entry.event
                {
                    *request = None;
                    *answer = None;
                }
            }
        }
    }
}

/// The jobs of the Order `id` names, or of the job whose EventUuid it is. `None` when nothing
/// is known about it.
pub async fn order_view(store: &dyn Store, id: &str) -> Result<Option<OrderView>, StoreError> {
    let id = id.trim();
    if id.is_empty() || id.len() > 128 {
        return Ok(None);
    }
    let mut uuids = match order_key(id) {
        Some(key) => store.jobs_of_order(&key).await?,
        None => Vec::new(),
    };
    let by_order = !uuids.is_empty();
    if !by_order {
        uuids.push(id.to_owned());
    }
    let mut jobs = Vec::new();
    for uuid in uuids {
        let mut journal = store.journal(&uuid).await?;
        // Entries of different writers (the leader, workers) are shown in time order; within
        // one millisecond, in the order a job's life goes.
        journal.sort_by_key(|entry| (entry.at_ms, entry.event.rank()));
        let record = store.job_record(&uuid).await?;
        if journal.is_empty() && record.is_none() {
            continue;
        }
        let state = JournalEntry::state_of(&journal)
            .map(str::to_owned)
            .or_else(|| record.as_ref().map(|r| r.outcome.clone()))
            .unwrap_or_else(|| "unknown".to_owned());
        let replay_id = journal
            .iter()
            .find_map(|entry| match &entry.event {
                JournalEvent::Enqueued { replay_id } => Some(replay_id.clone()),
                _ => None,
            })
            .or_else(|| record.as_ref().map(|r| r.replay_id.clone()))
            .unwrap_or_default();
        let order_id = record
            .as_ref()
            .and_then(|r| r.order_id.clone())
            .or_else(|| by_order.then(|| id.to_owned()));
        jobs.push(JobView {
            event_uuid: uuid,
            replay_id,
            order_id,
            state,
            record,
            journal,
        });
    }
    if jobs.is_empty() {
        return Ok(None);
    }
    let order_id = jobs.iter().find_map(|job| job.order_id.clone());
    Ok(Some(OrderView {
        query: id.to_owned(),
        order_id,
        jobs,
    }))
}
