//! The durable store: the replay cursor, the subscriber lease, the job queue, job records and dead
//! letters. One interface ([`Store`]), two backends: [`redis::RedisStore`] for production (several
//! replicas on one Redis) and [`embedded::EmbeddedStore`] for a single node (the default when no
//! Redis URL is configured). One conformance suite (`host/tests/integration/store.rs`) runs against both.
//!
//! [`Store`] is the sum of one trait per concern, each in its own module, and every backend is
//! split into files the same way:
//! - [`CursorLease`] (`cursor_lease`): the channel's cursor, backfill request, lease and ingest;
//! - [`JobQueue`] (`queue`): claiming, touching and completing jobs, and their records;
//! - [`DeadLetters`] (`dead_letters`): listing, showing, counting and requeueing dead letters;
//! - [`Journal`] (`journal`): each job's journal, found by EventUuid or Order, and the listings
//!   of queued, running and failed jobs;
//! - [`HoldBackend`] (`crate::holds`): the components' named holds;
//! - [`ComponentShare`] (`components`): component versions shared between replicas, offered only
//!   by a store replicas share ([`Store::component_share`]).
//!
//! Guarantees every backend gives:
//! - [`CursorLease::ingest`] is atomic and fenced: the jobs of a batch are enqueued (deduplicated
//!   by EventUuid), its undecodable events dead-lettered and the cursor moved in one step, and
//!   only while the caller's [`Lease`] (holder and epoch) is still the current one. A leader whose
//!   lease expired or was taken over gets [`StoreError::Fenced`] and writes nothing.
//! - The cursor only moves through `ingest` (and the operator's [`CursorLease::set_cursor`]), so
//!   it never runs ahead of what is durably enqueued.
//! - A dedupe entry outlives Salesforce's 72 h retention window ([`DEDUPE_TTL`]).
//! - A claimed job that is not completed within `min_idle` is handed to the next claimer; one
//!   claimed more than `max_deliveries` times is moved to the dead letters with the reason.

// The concerns' modules are private: their items are re-exported below, one path each.
mod components;
mod cursor_lease;
mod dead_letters;
pub mod embedded;
mod error;
pub mod journal;
mod queue;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use self::components::{ComponentShare, SharedActive, SharedComponent};
pub use self::cursor_lease::{
    CursorLease, DEDUPE_TTL, IngestBatch, IngestReport, Lease, LeaseInfo, NewDeadLetter, NewJob,
    cursor_key,
};
pub use self::dead_letters::{DeadLetter, DeadLetterKind, DeadLetters};
pub use self::error::{Detail, StoreError};
pub use self::journal::{JobState, Journal, JournalEntry, JournalEvent, ListedJob, list_jobs};
pub use self::queue::{ClaimJournal, ClaimOptions, Job, JobQueue, JobRecord};
use crate::holds::HoldBackend;

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Redis,
    Embedded,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Embedded => "embedded",
        })
    }
}

/// The store interface. Every method is cancel-safe in the sense that an abandoned call leaves
/// the store in a state one of the guarantees above covers. A store also keeps the components'
/// named holds ([`HoldBackend`]): Redis where every replica sees them, the embedded store in this
/// process (it is single-process).
///
/// The methods of the traits it is made of can be called on a `dyn Store` without importing them.
pub trait Store:
    CursorLease + JobQueue + DeadLetters + Journal + HoldBackend + Send + Sync + 'static
{
    fn backend(&self) -> Backend;

    /// A cheap round trip (Redis `PING`); `/health` reports its latency.
    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>>;

    /// Component sharing between replicas, when this store offers it (Redis). `None` for the
    /// embedded store: it serves one node, so each registry's own directory is the truth and
    /// nothing is published.
    fn component_share(&self) -> Option<&dyn ComponentShare>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;
