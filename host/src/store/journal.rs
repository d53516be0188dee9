//! The job journal: what happened to each job, in order (enqueued, claimed, each host call, how
//! it ended, dead-lettered, requeued), kept for a retention and found by EventUuid or by Order.
//! What `fulfilld orders show`, `fulfilld jobs list` and the console read.
//!
//! The journal is for people: a write that fails is logged and the job goes on (the queue's own
//! guarantees do not rest on it). Every size is bounded: entries per job
//! ([`MAX_ENTRIES_PER_JOB`]), jobs indexed per Order ([`MAX_JOBS_PER_ORDER`]), and the text and
//! bodies of one entry ([`JournalEntry::bounded`]).

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::queue::{Job, JobRecord};
use super::{DeadLetter, Store, StoreError};
use crate::domain::Event;
use crate::domain::clip_marked;

/// Entries kept per job: past it the oldest are dropped, the newest kept (a job that is handed
/// out this often is dead-lettered long before).
pub const MAX_ENTRIES_PER_JOB: usize = 1000;

/// Jobs an Order's index keeps, newest first.
pub const MAX_JOBS_PER_ORDER: usize = 100;

/// Longest text field of an entry (a message, a target, a reason), in bytes.
pub const MAX_ENTRY_TEXT: usize = 4096;

/// Largest captured request or answer of one call, in bytes of JSON; a larger one is replaced by
/// a note of its size.
pub const MAX_CAPTURED_BODY: usize = 64 * 1024;

/// One step in a job's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The replica that wrote it (`FULFILLD_REPLICA_ID`).
    pub replica: String,
    #[serde(flatten)]
    pub event: JournalEvent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalEvent {
    /// The leader put the event on the queue.
    Enqueued { replay_id: String },
    /// A worker took the job (`delivery` 1 the first time).
    Claimed { worker: String, delivery: u32 },
    /// One call the component made through the host.
    Call {
        /// `salesforce` or `billing`.
        interface: String,
        /// `query`, `update` or the WHMCS action.
        action: String,
        /// The SOQL text, `Order/801...`, or the WHMCS action.
        target: String,
        duration_ms: u64,
        /// `ok`, or the error kind the component received (`forbidden`, `timeout`, ...).
        outcome: String,
        /// The error's code (`409`, `503`, ...), when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// The request (update fields, WHMCS params), when capture is on; redacted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Value>,
        /// The answer, when capture is on and the call succeeded; redacted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<Value>,
        /// The delivery whose run made the call (0: not known).
        #[serde(default)]
        delivery: u32,
    },
    /// The run ended with an outcome the host recorded (`completed`, `skipped`, `failed`), or
    /// without one (`abandoned`: the host could not run it or the claim was lost; it is handed
    /// out again).
    Finished {
        delivery: u32,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        message: String,
        /// `name@version` of the component.
        component: String,
        elapsed_ms: u64,
    },
    /// Moved to the dead letters.
    DeadLettered { reason: String },
    /// Put back on the queue from the dead letters.
    Requeued { dead_letter_id: String },
    /// A stored entry the host could not read (written by something else, or damaged): kept
    /// in the listing, as found (cut to [`MAX_ENTRY_TEXT`]), with what is wrong.
    Damaged { problem: String, found: String },
}

impl JournalEvent {
    /// Where the event comes in a job's life, for ordering entries written in the same
    /// millisecond by different writers.
    pub fn rank(&self) -> u8 {
        match self {
            JournalEvent::Enqueued { .. } | JournalEvent::Requeued { .. } => 0,
            JournalEvent::Claimed { .. } => 1,
            JournalEvent::Call { .. } => 2,
            JournalEvent::Finished { .. } => 3,
            JournalEvent::DeadLettered { .. } => 4,
            JournalEvent::Damaged { .. } => 5,
        }
    }
}

impl JournalEntry {
    /// A stored entry as read back: one the host cannot read is a [`JournalEvent::Damaged`]
    /// entry (time 0, unknown writer) instead of an error, so one bad entry does not hide a
    /// job's story.
    pub fn read_stored(bytes: &[u8], at: &str) -> JournalEntry {
        match serde_json::from_slice::<JournalEntry>(bytes) {
            Ok(entry) => entry,
            Err(err) => JournalEntry {
                at_ms: 0,
                replica: String::new(),
                event: JournalEvent::Damaged {
                    problem: format!("{at}: not a journal entry: {err}"),
                    found: String::from_utf8_lossy(bytes).into_owned(),
                },
            }
            .bounded(),
        }
    }

    pub fn new(replica: &str, event: JournalEvent) -> JournalEntry {
        JournalEntry {
            at_ms: crate::domain::now_ms(),
            replica: replica.to_owned(),
            event,
        }
    }

    /// The entry with its text fields and bodies cut to the journal's bounds.
    pub fn bounded(mut self) -> JournalEntry {
        let clip = |text: &mut String| {
            if text.len() > MAX_ENTRY_TEXT {
                *text = clip_marked(text, MAX_ENTRY_TEXT);
            }
        };
        clip(&mut self.replica);
        match &mut self.event {
            JournalEvent::Enqueued { replay_id } => clip(replay_id),
            JournalEvent::Claimed { worker, .. } => clip(worker),
            JournalEvent::Call {
                interface,
                action,
                target,
                outcome,
                code,
                request,
                answer,
                ..
            } => {
                for text in [interface, action, target, outcome] {
                    clip(text);
                }
                if let Some(code) = code {
                    clip(code);
                }
                for body in [request, answer].into_iter().flatten() {
                    let size = serde_json::to_string(body).map_or(usize::MAX, |t| t.len());
                    if size > MAX_CAPTURED_BODY {
                        *body = Value::String(format!(
                            "[not kept: {size} bytes of JSON, over the journal's {MAX_CAPTURED_BODY}]"
                        ));
                    }
                }
            }
            JournalEvent::Finished {
                outcome,
                code,
                message,
                component,
                ..
            } => {
                for text in [outcome, message, component] {
                    clip(text);
                }
                if let Some(code) = code {
                    clip(code);
                }
            }
            JournalEvent::DeadLettered { reason } => clip(reason),
            JournalEvent::Requeued { dead_letter_id } => clip(dead_letter_id),
            JournalEvent::Damaged { problem, found } => {
                clip(problem);
                clip(found);
            }
        }
        self
    }

    /// What a job's last lifecycle entry says about where it is: `queued`, `running`, `dead`,
    /// or the recorded outcome. `None` when the journal has no lifecycle entry.
    pub fn state_of(entries: &[JournalEntry]) -> Option<&str> {
        entries.iter().rev().find_map(|entry| match &entry.event {
            JournalEvent::Enqueued { .. } | JournalEvent::Requeued { .. } => Some("queued"),
            JournalEvent::Claimed { .. } => Some("running"),
            JournalEvent::DeadLettered { .. } => Some("dead"),
            JournalEvent::Finished { outcome, .. } if outcome == "abandoned" => Some("queued"),
            JournalEvent::Finished { outcome, .. } => Some(outcome.as_str()),
            JournalEvent::Call { .. } | JournalEvent::Damaged { .. } => None,
        })
    }
}

/// Which jobs [`list_jobs`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Enqueued and not yet handed to a worker.
    Queued,
    /// Handed to a worker and not yet completed (claimed; a dead worker's job stays here until
    /// it is reclaimed).
    Running,
    /// Completed with a failure recorded (within the records' retention).
    Failed,
    /// In the dead letters.
    Dead,
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            "failed" => Ok(JobState::Failed),
            "dead" => Ok(JobState::Dead),
            other => Err(format!(
                "unknown job state '{}': one of queued, running, failed, dead",
                crate::domain::clip(other, 40)
            )),
        }
    }
}

/// One job in a [`list_jobs`] listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedJob {
    pub event_uuid: String,
    pub order_id: Option<String>,
    pub replay_id: String,
    pub deliveries: u32,
    /// When it was enqueued (queued and running jobs).
    pub enqueued_at_ms: Option<i64>,
    /// The worker that holds it (running jobs).
    pub worker: Option<String>,
    /// How long since its claim was last refreshed (running jobs).
    pub idle_ms: Option<u64>,
    /// Failure code and message (failed jobs), or the dead letter's reason.
    pub code: Option<String>,
    pub message: Option<String>,
    pub finished_at_ms: Option<i64>,
    /// The dead letter's id (dead jobs), for `dead-letters show|requeue`.
    pub dead_letter_id: Option<String>,
}

/// The form an Order id is indexed and looked up in: its 18-character form when it is a record
/// id, else as given; `None` for an empty or over-long one.
pub fn order_key(order_id: &str) -> Option<String> {
    let id = order_id.trim();
    if id.is_empty() || id.len() > 64 {
        return None;
    }
    Some(crate::domain::record_id_18(id).unwrap_or_else(|| id.to_owned()))
}

/// How long a journal write may take before it is given up (logged) so the job goes on.
const WRITE_LIMIT: Duration = Duration::from_secs(2);

/// Appends `entries` (stamped by the caller) to the journal of `event_uuid`, indexed under
/// `order_id` (in its [`order_key`] form), cut to the journal's bounds. Best effort: a write the
/// store refuses or that takes longer than 2 s is logged at WARN, never returned.
pub async fn append_entries(
    store: &dyn Journal,
    event_uuid: &str,
    order_id: Option<&str>,
    entries: Vec<JournalEntry>,
    retention: Duration,
) {
    if event_uuid.is_empty() || entries.is_empty() {
        return;
    }
    let entries: Vec<JournalEntry> = entries.into_iter().map(JournalEntry::bounded).collect();
    let order = order_id.and_then(order_key);
    let write = store.append_journal(event_uuid, order.as_deref(), &entries, retention);
    match tokio::time::timeout(WRITE_LIMIT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(event_uuid, error = %crate::error::chain(&err), "cannot write the job journal; the job goes on without these entries");
        }
        Err(_) => {
            tracing::warn!(
                event_uuid,
                limit_ms = WRITE_LIMIT.as_millis() as u64,
                "the job journal write took too long; the job goes on without these entries"
            );
        }
    }
}

/// Notes in its journal a job a claim moved to the dead letters (a job handed out too often).
pub(crate) async fn note_dead_lettered(
    store: &dyn Journal,
    journal: &super::ClaimJournal,
    event_uuid: &str,
    payload: &[u8],
    reason: &str,
) {
    let entry = JournalEntry::new(
        &journal.replica,
        JournalEvent::DeadLettered {
            reason: reason.to_owned(),
        },
    );
    let order = order_id_of(payload);
    append_entries(
        store,
        event_uuid,
        order.as_deref(),
        vec![entry],
        journal.retention,
    )
    .await;
}

/// The Order a job's payload names, when the payload is an event that names one.
fn order_id_of(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Event>(payload)
        .ok()
        .and_then(|event| event.order_id().map(str::to_owned))
}

impl ListedJob {
    /// A queued or running job's line (its worker and idle time are the caller's to add).
    pub fn from_job(job: &Job) -> ListedJob {
        ListedJob {
            event_uuid: job.event_uuid.clone(),
            order_id: order_id_of(&job.payload),
            replay_id: job.replay_id.to_string(),
            deliveries: job.deliveries,
            enqueued_at_ms: Some(job.enqueued_at_ms),
            worker: None,
            idle_ms: None,
            code: None,
            message: None,
            finished_at_ms: None,
            dead_letter_id: None,
        }
    }

    /// A dead job's line, from its dead letter (the Order id read from the payload when it is an
    /// event).
    pub fn from_dead_letter(letter: &DeadLetter) -> ListedJob {
        let order_id = order_id_of(&letter.payload);
        ListedJob {
            event_uuid: letter.event_uuid.clone(),
            order_id,
            replay_id: letter.replay_id.to_string(),
            deliveries: letter.deliveries,
            enqueued_at_ms: None,
            worker: None,
            idle_ms: None,
            code: None,
            message: Some(letter.reason.clone()),
            finished_at_ms: Some(letter.dead_at_ms),
            dead_letter_id: Some(letter.id.clone()),
        }
    }

    /// A failed job's line, from its record.
    pub fn from_record(record: &JobRecord) -> ListedJob {
        ListedJob {
            event_uuid: record.event_uuid.clone(),
            order_id: record.order_id.clone(),
            replay_id: record.replay_id.clone(),
            deliveries: record.deliveries,
            enqueued_at_ms: None,
            worker: None,
            idle_ms: None,
            code: record.code.clone(),
            message: Some(record.message.clone()),
            finished_at_ms: Some(record.finished_at_ms),
            dead_letter_id: None,
        }
    }
}

/// The job journal and the listings built on the queue (see the [module docs](self)).
///
/// Guarantees every backend gives: entries of a job come back in the order they were appended;
/// an Order's jobs come back newest first (by their first entry); a job's journal and its place
/// in the Order's index are kept at least `retention` after its last entry; the bounds above hold.
pub trait Journal: Send + Sync {
    /// Appends `entries` to the journal of job `event_uuid`, and indexes the job under
    /// `order_id` (its 18-character form) when given.
    fn append_journal<'a>(
        &'a self,
        event_uuid: &'a str,
        order_id: Option<&'a str>,
        entries: &'a [JournalEntry],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The journal of a job, oldest entry first (empty when none is kept).
    fn journal<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>>;

    /// The EventUuids of an Order's jobs, newest first (`order_id` in its 18-character form).
    fn jobs_of_order<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Jobs of `channel` still in the queue, oldest first, at most `limit`: those not yet handed
    /// out (`running` false), or those handed out and not yet completed (`running` true, with
    /// their worker and idle time).
    fn waiting_jobs<'a>(
        &'a self,
        channel: &'a str,
        running: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedJob>, StoreError>>;

    /// EventUuids of the jobs completed as failed, newest first, at most `limit` (indexed by
    /// [`super::JobQueue::complete`] for as long as their records are kept).
    fn failed_jobs<'a>(&'a self, limit: usize) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// Jobs of `channel` in `state`, at most `limit` (oldest first while queued or running, newest
/// first once failed or dead): `fulfilld jobs list` and `GET /admin/jobs`.
pub async fn list_jobs(
    store: &dyn Store,
    channel: &str,
    state: JobState,
    limit: usize,
) -> Result<Vec<ListedJob>, StoreError> {
    match state {
        JobState::Queued => store.waiting_jobs(channel, false, limit).await,
        JobState::Running => store.waiting_jobs(channel, true, limit).await,
        JobState::Failed => {
            let mut jobs = Vec::new();
            for uuid in store.failed_jobs(limit).await? {
                if let Some(record) = store.job_record(&uuid).await? {
                    jobs.push(ListedJob::from_record(&record));
                }
            }
            Ok(jobs)
        }
        JobState::Dead => Ok(store
            .recent_dead_letters(channel, limit)
            .await?
            .iter()
            .map(ListedJob::from_dead_letter)
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: JournalEvent) -> JournalEntry {
        JournalEntry {
            at_ms: 1,
            replica: "r1".into(),
            event,
        }
    }

    #[test]
    fn entries_serialize_flat_with_their_event_name() {
        let json = serde_json::to_value(entry(JournalEvent::Claimed {
            worker: "r1-w0".into(),
            delivery: 2,
        }))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at_ms": 1, "replica": "r1", "event": "claimed", "worker": "r1-w0", "delivery": 2})
        );
        let back: JournalEntry = serde_json::from_value(json).unwrap();
        assert!(matches!(
            back.event,
            JournalEvent::Claimed { delivery: 2, .. }
        ));
    }

    #[test]
    fn the_last_lifecycle_entry_gives_the_state() {
        let enqueued = entry(JournalEvent::Enqueued {
            replay_id: "1".into(),
        });
        let claimed = entry(JournalEvent::Claimed {
            worker: "w".into(),
            delivery: 1,
        });
        let call = entry(JournalEvent::Call {
            interface: "billing".into(),
            action: "AddOrder".into(),
            target: "AddOrder".into(),
            duration_ms: 3,
            outcome: "ok".into(),
            code: None,
            request: None,
            answer: None,
            delivery: 1,
        });
        let finished = |outcome: &str| {
            entry(JournalEvent::Finished {
                delivery: 1,
                outcome: outcome.into(),
                code: None,
                message: String::new(),
                component: "c@1".into(),
                elapsed_ms: 1,
            })
        };
        assert_eq!(JournalEntry::state_of(&[]), None);
        assert_eq!(
            JournalEntry::state_of(&[enqueued.clone(), claimed.clone(), call.clone()]),
            Some("running")
        );
        assert_eq!(
            JournalEntry::state_of(&[enqueued.clone(), claimed.clone(), finished("abandoned")]),
            Some("queued")
        );
        assert_eq!(
            JournalEntry::state_of(&[enqueued, claimed, call, finished("failed")]),
            Some("failed")
        );
    }

    #[test]
    fn big_text_and_bodies_are_cut_to_the_bounds() {
        let big = "x".repeat(MAX_ENTRY_TEXT * 3);
        let bounded = entry(JournalEvent::Call {
            interface: "salesforce".into(),
            action: "query".into(),
            target: big.clone(),
            duration_ms: 1,
            outcome: "ok".into(),
            code: Some(big.clone()),
            request: Some(Value::String(big.repeat(10))),
            answer: Some(serde_json::json!({"ok": true})),
            delivery: 1,
        })
        .bounded();
        let JournalEvent::Call {
            target,
            code,
            request,
            answer,
            ..
        } = bounded.event
        else {
            panic!("not a call");
        };
        assert!(target.len() <= MAX_ENTRY_TEXT + 64, "{}", target.len());
        assert!(code.unwrap().len() <= MAX_ENTRY_TEXT + 64);
        assert!(
            request
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("[not kept: "),
            "a body over the bound is replaced by its size"
        );
        assert_eq!(answer, Some(serde_json::json!({"ok": true})));
    }
}
