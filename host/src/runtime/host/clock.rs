//! `fulfilld:fulfillment/clock`: wall-clock time as the host (or the test kit) says it is.

use super::super::JobState;
use super::super::bindings::clock;

impl clock::Host for JobState {
    async fn now_ms(&mut self) -> wasmtime::Result<i64> {
        const OP: &str = "clock.now-ms";
        self.gate.admit(OP)?;
        self.gate.count_local(OP);
        Ok(self.gate.services().now_ms())
    }
}
