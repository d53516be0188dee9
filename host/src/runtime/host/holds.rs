//! `fulfilld:fulfillment/holds` (since 1.1.0): named readers-writer holds kept in the store.
//!
//! A hold is the run's (see [`crate::holds`]): renewed in the background while held, released
//! when the run ends. When the store cannot be reached, taking a hold is retried until the store
//! answers again or the job's time runs out; the component never sees the store's outage as an
//! error (it is the host's fault, not a business failure): past the job's time the run stops
//! with [`HostFault`] and the job is handed out again later.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use super::super::bindings::{holds, types};
use super::super::{HostFault, JobContext, JobState};
use crate::error::CallError;
use crate::holds::{HoldMode, SharedHolds, invalid_name};

/// First pause between attempts at a busy hold; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between attempts while the store cannot be reached.
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(1);
/// How much longer than the hold TTL a job waits, so a dead holder's hold runs out first.
const WAIT_MARGIN: Duration = Duration::from_secs(1);
/// A hold is never waited for past this long before the job's deadline: the run stops as the
/// host's fault ([`HostFault`]) with time left to record it, rather than being cut off by the
/// deadline (which would count against the component).
const OUTAGE_MARGIN: Duration = Duration::from_secs(2);

/// The names a run holds, renewed every third of the hold TTL by a task that lives as long as
/// any is held. A run dropped before its end (its claim passed to another worker, the host
/// shutting down) releases nothing: a call it made may still land (an AddOrder in flight), so
/// its holds run out after their TTL, not renewed any more.
#[derive(Default)]
pub(crate) struct Held {
    names: Arc<Mutex<Vec<String>>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// Set by the renewal task when a hold ran out before it could be renewed: the run no
    /// longer has what it took, so it stops at its next call to Salesforce or WHMCS.
    lost: Arc<Mutex<Option<String>>>,
}

/// Whether `name` is among `names`.
fn holds_name(names: &Mutex<Vec<String>>, name: &str) -> bool {
    names
        .lock()
        .map(|names| names.iter().any(|n| n == name))
        .unwrap_or(false)
}

impl Held {
    fn contains(&self, name: &str) -> bool {
        holds_name(&self.names, name)
    }

    fn remove(&mut self, name: &str) -> bool {
        let Ok(mut names) = self.names.lock() else {
            return false;
        };
        let Some(index) = names.iter().position(|n| n == name) else {
            return false;
        };
        names.swap_remove(index);
        true
    }

    fn take_all(&mut self) -> Vec<String> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.names
            .lock()
            .map(|mut names| std::mem::take(&mut *names))
            .unwrap_or_default()
    }

    /// Fails when a hold of this run ran out while held ([`HostFault`]): going on could let
    /// two runs provision one Order.
    pub(crate) fn check(&self) -> wasmtime::Result<()> {
        let lost = self.lost.lock().ok().and_then(|lost| lost.clone());
        match lost {
            Some(name) => Err(wasmtime::Error::new(HostFault(format!(
                "hold {name:?} ran out while this run held it (the store was unreachable for \
                 longer than FULFILLD_HOLD_TTL_MS); the run stops here and the job runs again"
            )))),
            None => Ok(()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl JobContext {
    /// Records `name` as held and starts the renewal task if it is not running.
    fn add_held(&mut self, name: String) {
        if let Ok(mut names) = self.held.names.lock() {
            names.push(name);
        }
        if self.held.renewer.is_none() {
            let task = renew(
                Arc::clone(&self.holds),
                self.holder.clone(),
                self.hold_ttl,
                Arc::clone(&self.held.names),
                Arc::clone(&self.held.lost),
                self.rehearsal(),
            )
            .instrument(tracing::Span::current());
            self.held.renewer = Some(tokio::spawn(task));
        }
    }
}

/// Renews every name in `names` every third of `ttl`, for as long as it runs; a name that ran
/// out (and is still held as far as the run knows) is recorded in `lost`.
async fn renew(
    holds: SharedHolds,
    holder: String,
    ttl: Duration,
    names: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    rehearsal: bool,
) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let current = names.lock().map(|n| n.clone()).unwrap_or_default();
        for name in current {
            match holds.renew_hold(&name, &holder, ttl).await {
                Ok(true) => tracing::trace!(hold = %name, "hold renewed"),
                // Released meanwhile: nothing was lost.
                Ok(false) if !holds_name(&names, &name) => {}
                Ok(false) => {
                    run_warn!(rehearsal, hold = %name, "a hold of this job ran out before it could be renewed (the store was unreachable for longer than the hold TTL); the run stops at its next call");
                    if let Ok(mut lost) = lost.lock() {
                        lost.get_or_insert(name);
                    }
                }
                Err(error) => {
                    run_warn!(rehearsal, hold = %name, error = %crate::error::chain(&error), "cannot renew a hold; retrying");
                }
            }
        }
    }
}

impl holds::Host for JobState {
    async fn acquire(
        &mut self,
        name: String,
        mode: holds::HoldMode,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        const OP: &str = "holds.acquire";
        self.gate.admit(OP)?;
        let mode = match mode {
            holds::HoldMode::Shared => HoldMode::Shared,
            holds::HoldMode::Exclusive => HoldMode::Exclusive,
        };
        if let Some(problem) = invalid_name(&name) {
            run_warn!(self.job.rehearsal(), hold = %crate::domain::clip(&name, 200), "hold refused: {problem}");
            self.gate.count(OP, "invalid_input");
            return Ok(Err(CallError::invalid_input(problem).into()));
        }
        if self.job.held.contains(&name) {
            self.gate.count(OP, "ok");
            return Ok(Ok(()));
        }
        let started = Instant::now();
        let result = take(&self.job, &name, mode).await;
        match result {
            Ok(()) => {
                tracing::debug!(hold = %name, mode = %mode, waited_ms = started.elapsed().as_millis() as u64, "hold taken");
                self.job.add_held(name);
                self.gate.count(OP, "ok");
                Ok(Ok(()))
            }
            Err(Taken::Busy(error)) => {
                run_warn!(self.job.rehearsal(), hold = %name, mode = %mode, code = %error.code, "hold not taken: {}", error.message);
                self.gate.count(OP, error.kind.as_str());
                Ok(Err(error.into()))
            }
            Err(Taken::HostFault(fault)) => {
                run_warn!(self.job.rehearsal(), hold = %name, mode = %mode, "{fault}");
                self.gate.count(OP, "host_fault");
                Err(wasmtime::Error::new(fault))
            }
        }
    }

    async fn release(&mut self, name: String) -> wasmtime::Result<()> {
        const OP: &str = "holds.release";
        self.gate.admit(OP)?;
        self.gate.count_local(OP);
        if self.job.held.remove(&name) {
            drop_hold(&self.job, &name).await;
        }
        Ok(())
    }
}

/// Why a hold was not taken.
enum Taken {
    /// Still busy after the wait: the component's to handle.
    Busy(CallError),
    /// The store could not be reached for as long as the job may run: the host's fault.
    HostFault(HostFault),
}

/// Attempts the hold until it is granted or the wait (TTL + margin) is over; an attempt that
/// gives up withdraws its exclusive request. While the store cannot be reached the attempts go
/// on (the wait does not run meanwhile) until [`OUTAGE_MARGIN`] before the job's deadline. No
/// attempt and no wait runs past that point, so the job's deadline never cuts a hold short.
async fn take(job: &JobContext, name: &str, mode: HoldMode) -> Result<(), Taken> {
    let wait = job.hold_ttl + WAIT_MARGIN;
    let patience = job
        .deadline
        .checked_sub(OUTAGE_MARGIN)
        .unwrap_or_else(Instant::now);
    let mut deadline = (Instant::now() + wait).min(patience);
    let mut pause = FIRST_PAUSE;
    // Since when the store has not answered, while it does not.
    let mut outage: Option<Instant> = None;
    loop {
        let left = patience.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(
            left,
            job.holds.try_hold(name, &job.holder, mode, job.hold_ttl),
        )
        .await;
        let attempt = match attempt {
            Ok(result) => result.map_err(|e| crate::error::chain(&e)),
            Err(_) => Err(format!("no answer within {} ms", left.as_millis())),
        };
        match attempt {
            Ok(true) => {
                if let Some(since) = outage {
                    tracing::info!(hold = %name, waited_ms = since.elapsed().as_millis() as u64, "the store answers again; hold taken");
                }
                return Ok(());
            }
            Ok(false) => {
                if let Some(since) = outage.take() {
                    deadline = (deadline + since.elapsed()).min(patience);
                    pause = FIRST_PAUSE;
                }
            }
            Err(error) => {
                let now = Instant::now();
                let since = *outage.get_or_insert_with(|| {
                    run_warn!(job.rehearsal(), hold = %name, error = %error, "cannot reach the store to take a hold; the job waits for it");
                    now
                });
                if now + pause >= patience {
                    // No release: the store does not answer (a registration it may have kept
                    // runs out with its TTL).
                    return Err(Taken::HostFault(HostFault(format!(
                        "hold {name:?}: the store was unreachable for {} ms, until the job's \
                         deadline: {}",
                        since.elapsed().as_millis(),
                        crate::domain::clip(&error, 300)
                    ))));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_OUTAGE_PAUSE);
                continue;
            }
        }
        if Instant::now() + pause > deadline {
            drop_hold(job, name).await;
            return Err(Taken::Busy(CallError::timeout(format!(
                "hold {name:?} ({mode}) still busy after {} ms",
                wait.as_millis()
            ))));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

async fn drop_hold(job: &JobContext, name: &str) {
    if let Err(error) = job.holds.release_hold(name, &job.holder).await {
        run_warn!(job.rehearsal(), hold = %name, error = %error, "could not release a hold; it expires on its own");
    }
}

/// Releases every hold the job still has (at the end of the job, however it ended).
pub(crate) async fn release_all_holds(job: &mut JobContext) {
    for name in job.held.take_all() {
        drop_hold(job, &name).await;
    }
}
