//! `fulfilld:fulfillment/holds` (since 1.1.0): named readers-writer holds kept in the store.

use std::time::{Duration, Instant};

use super::super::bindings::{holds, types};
use super::super::{JobContext, JobState};
use crate::error::CallError;
use crate::holds::{HoldMode, invalid_name};

/// First pause between attempts at a busy hold; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// How much longer than the hold TTL a job waits, so a dead holder's hold runs out first.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

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
            run_warn!(self.job.rehearsal(), hold = %name, "hold refused: {problem}");
            self.gate.count(OP, "invalid_input");
            return Ok(Err(CallError::invalid_input(problem).into()));
        }
        if self.job.held.contains(&name) {
            self.gate.count(OP, "ok");
            return Ok(Ok(()));
        }
        let started = Instant::now();
        let result = take(&self.job, &name, mode).await;
        self.gate.add_host_time(started.elapsed());
        match &result {
            Ok(()) => {
                tracing::debug!(hold = %name, mode = %mode, waited_ms = started.elapsed().as_millis() as u64, "hold taken");
                self.job.held.push(name.clone());
            }
            Err(error) => {
                run_warn!(self.job.rehearsal(), hold = %name, mode = %mode, code = %error.code, "hold not taken: {}", error.message);
            }
        }
        self.gate.count(
            OP,
            match &result {
                Ok(()) => "ok",
                Err(error) => error.kind.as_str(),
            },
        );
        Ok(result.map_err(Into::into))
    }

    async fn release(&mut self, name: String) -> wasmtime::Result<()> {
        const OP: &str = "holds.release";
        self.gate.admit(OP)?;
        self.gate.count_local(OP);
        if let Some(index) = self.job.held.iter().position(|held| *held == name) {
            self.job.held.swap_remove(index);
            drop_hold(&self.job, &name).await;
        }
        Ok(())
    }
}

/// Attempts the hold until it is granted or the wait (TTL + margin) is over; an attempt that
/// gives up withdraws its exclusive request.
async fn take(job: &JobContext, name: &str, mode: HoldMode) -> Result<(), CallError> {
    let wait = job.hold_ttl + WAIT_MARGIN;
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_PAUSE;
    loop {
        match job
            .holds
            .try_hold(name, &job.holder, mode, job.hold_ttl)
            .await
        {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => {
                drop_hold(job, name).await;
                return Err(CallError::network(
                    "ESTORE",
                    format!(
                        "hold {name:?}: the store is unavailable: {}",
                        crate::error::chain(&error)
                    ),
                ));
            }
        }
        if Instant::now() + pause > deadline {
            drop_hold(job, name).await;
            return Err(CallError::timeout(format!(
                "hold {name:?} ({mode}) still busy after {} ms",
                wait.as_millis()
            )));
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
    for name in std::mem::take(&mut job.held) {
        drop_hold(job, &name).await;
    }
}
