//! Step-scoped structured logging over the `log` import.

use crate::host::Host;
use crate::types::Level;

/// Logging entry point: `Log::new(host).step("mapping").info("msg", &[("k", "v")])`.
#[derive(Clone, Copy)]
pub struct Log<'h> {
    host: &'h dyn Host,
}

impl<'h> Log<'h> {
    pub fn new(host: &'h dyn Host) -> Self {
        Self { host }
    }

    /// A logger whose entries carry `step` (e.g. `validation`, `whmcs_create`).
    pub fn step<'s>(&self, step: &'s str) -> StepLog<'h, 's> {
        StepLog {
            host: self.host,
            step,
        }
    }
}

/// Logs for one named provisioning step. Never fails: the host may drop entries over its budget.
#[derive(Clone, Copy)]
pub struct StepLog<'h, 's> {
    host: &'h dyn Host,
    step: &'s str,
}

impl StepLog<'_, '_> {
    /// The step name every entry carries.
    pub fn name(&self) -> &str {
        self.step
    }

    pub fn emit(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.host.log(level, self.step, message, &fields);
    }

    pub fn trace(&self, message: &str, fields: &[(&str, &str)]) {
        self.emit(Level::Trace, message, fields);
    }

    pub fn debug(&self, message: &str, fields: &[(&str, &str)]) {
        self.emit(Level::Debug, message, fields);
    }

    pub fn info(&self, message: &str, fields: &[(&str, &str)]) {
        self.emit(Level::Info, message, fields);
    }

    pub fn warn(&self, message: &str, fields: &[(&str, &str)]) {
        self.emit(Level::Warn, message, fields);
    }

    pub fn error(&self, message: &str, fields: &[(&str, &str)]) {
        self.emit(Level::Error, message, fields);
    }
}
