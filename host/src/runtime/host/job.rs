//! `fulfilld:fulfillment/job` (since 1.1.0): what the run knows about its job.

use super::super::JobState;
use super::super::bindings::job;

impl job::Host for JobState {
    async fn delivery(&mut self) -> wasmtime::Result<u32> {
        const OP: &str = "job.delivery";
        self.gate.admit(OP)?;
        self.gate.count_local(OP);
        Ok(self.job.delivery)
    }
}
