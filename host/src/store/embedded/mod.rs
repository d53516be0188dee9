//! Embedded backend: one redb database file, for a single node (the default when no Redis URL is
//! configured).
//!
//! Every operation is one redb transaction, run on the blocking thread pool; writes use redb's
//! default durable commit, so whatever an operation reported as done survives a crash or restart.
//!
//! Layout (all keys carry the channel, so channels never see each other's data):
//! - `meta`: sequences (`job_seq`, `dead_seq`) and the layout version. Ids are never reused.
//! - `cursors`: channel -> the replay id's text; `backfill`: channel -> when it was requested.
//! - `leases`: channel -> holder, epoch and expiry (a released or expired lease keeps its epoch, so
//!   the next one is always higher).
//! - `jobs`: (channel, id) -> the job; `jobs_pending` / `jobs_claimed`: (channel, id) indexes of
//!   the jobs not yet handed out and of those handed out (claimed).
//! - `dedupe`: (channel, EventUuid) -> when it was enqueued; `dedupe_by_time`: the same entries
//!   ordered by time, so expired ones are purged a few at a time by `ingest`.
//! - `job_records`: EventUuid -> [`JobRecord`]; `dead_letters`: (channel, id) -> the dead letter.
//! - `journal`: (EventUuid, n) -> the job's n-th journal entry; `journal_jobs`: EventUuid -> its
//!   Order, entry numbers and expiry; `journal_expiry`: (expiry, EventUuid), purged a few at a
//!   time by each append; `order_jobs`: (Order id, EventUuid) -> when the job's journal began;
//!   `failed_jobs`: (finish time, EventUuid) of the jobs completed as failed.
//!
//! Files: `tables` defines the tables and the redb plumbing, `rows` the stored forms of jobs and
//! dead letters; one file per concern of the [`Store`] (`cursor_lease`, `queue`, `dead_letters`,
//! `holds`). It offers no component sharing: one node, so each registry's own directory is the
//! truth.
//!
//! [`JobRecord`]: crate::store::JobRecord

mod cursor_lease;
mod dead_letters;
mod holds;
mod journal;
mod queue;
mod rows;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{Database, ReadTransaction, ReadableDatabase as _, WriteTransaction};
use tokio::sync::Notify;

use self::tables::{Context as _, META, VERSION_KEY, init, open_r, unavailable};
use crate::holds::HoldTable;
use crate::store::{Backend, ComponentShare, Detail, Store, StoreError};

/// The single-node store: a redb database file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Signalled when jobs are enqueued, so blocked claims look again.
    jobs_added: Arc<Notify>,
    /// Holds live in memory: the embedded store belongs to one process, and a hold dies with
    /// the process that took it.
    holds: Arc<HoldTable>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating it (and its parent directories) when missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                StoreError::Unavailable(Detail::caused_by(
                    format_args!(
                        "cannot create the directory {} of the embedded store",
                        parent.display()
                    ),
                    err,
                ))
            })?;
        }
        // redb panics on some damaged files (e.g. "entered unreachable code" for scrambled
        // pages) instead of answering an error: caught here, so the operator reads which file
        // and what to do rather than "task panicked".
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = Database::create(path).map_err(|err| {
                StoreError::Unavailable(Detail::caused_by(
                    format_args!("cannot open the embedded store {}", path.display()),
                    err,
                ))
            })?;
            let at_path =
                |detail: Detail| detail.map_text(|text| format!("{text} ({})", path.display()));
            init(&db).map_err(|err| match err {
                StoreError::Unavailable(detail) => StoreError::Unavailable(at_path(detail)),
                StoreError::Corrupt(detail) => StoreError::Corrupt(at_path(detail)),
                other => other,
            })?;
            Ok(db)
        }));
        let db = opened.unwrap_or_else(|panic| Err(damaged(path, "opening it", &*panic)))?;
        tracing::info!(path = %path.display(), "embedded store opened");
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: path.to_owned(),
            jobs_added: Arc::new(Notify::new()),
            holds: Arc::new(HoldTable::new()),
        })
    }

    /// Runs `work` in one write transaction on the blocking pool and commits it (durably) when it
    /// returns `Ok`; an `Err` aborts the transaction, so nothing of it is written.
    async fn write<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        let file = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(|err| {
                unavailable(
                    format_args!("begin a write transaction on {} to {what}", path.display()),
                    err,
                )
            })?;
            let out = work(&txn)?;
            txn.commit().map_err(|err| {
                unavailable(
                    format_args!("commit to {} (to {what})", path.display()),
                    err,
                )
            })?;
            Ok(out)
        })
        .await
        .map_err(|err| task_failed(&file, what, err))?
    }

    /// Runs `work` in one read transaction on the blocking pool.
    async fn read<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        let file = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|err| {
                unavailable(
                    format_args!("begin a read transaction on {} to {what}", path.display()),
                    err,
                )
            })?;
            work(&txn)
        })
        .await
        .map_err(|err| task_failed(&file, what, err))?
    }
}

/// A blocking task of the store that did not finish: a panic inside redb is a damaged file
/// (named, with what to do); a cancelled task is the store being unavailable.
fn task_failed(path: &Path, what: &str, err: tokio::task::JoinError) -> StoreError {
    match err.try_into_panic() {
        Ok(panic) => damaged(path, &format!("trying to {what}"), &*panic),
        Err(err) => StoreError::Unavailable(Detail::caused_by(
            format_args!("embedded store: the task to {what} failed"),
            err,
        )),
    }
}

/// The error for a file redb could not read without panicking.
fn damaged(path: &Path, doing: &str, panic: &(dyn std::any::Any + Send)) -> StoreError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    StoreError::Corrupt(Detail::new(format!(
        "the embedded store {} is damaged: redb failed ({}) while {doing}; stop fulfilld, move \
         the file aside (keep it for support) and restore it from a backup, or start with an \
         empty store: the cursor, queued jobs and dead letters in it are then lost (docs/operations.md)",
        path.display(),
        crate::domain::clip(&message, 200),
    )))
}

impl Store for EmbeddedStore {
    fn backend(&self) -> Backend {
        Backend::Embedded
    }

    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>> {
        async move {
            let started = std::time::Instant::now();
            self.read("ping", |txn| {
                open_r(txn, META)?
                    .get(VERSION_KEY)
                    .context(|| "read the layout version".to_owned())?;
                Ok(())
            })
            .await?;
            Ok(started.elapsed())
        }
        .boxed()
    }

    fn component_share(&self) -> Option<&dyn ComponentShare> {
        None
    }
}
