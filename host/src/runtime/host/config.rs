//! `fulfilld:fulfillment/config`: non-secret settings the host exposes.

use super::super::JobState;
use super::super::bindings::config;

impl config::Host for JobState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        const OP: &str = "config.get";
        self.gate.admit(OP)?;
        self.gate.count_local(OP);
        Ok(self.gate.config(&key))
    }
}
