//! `fulfilld:fulfillment/log`: the component's step logs become `tracing` events, inside the
//! job's span (which carries the order id, EventUuid, replay id and component version). A
//! rehearsal's entries go to [`REHEARSAL_TARGET`] at DEBUG instead (see `RunKind`).

use super::super::JobState;
use super::super::REHEARSAL_TARGET;
use super::super::bindings::log;
use super::super::gate::LogRecord;

/// Longest message or field value kept; a component cannot flood the host's logs.
const MAX_TEXT: usize = 2048;
const MAX_FIELDS: usize = 32;

impl log::Host for JobState {
    async fn emit(
        &mut self,
        level: log::Level,
        step: String,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.gate.admit("log.emit")?;
        let message = clip(message);
        let step = clip(step);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (clip(k), clip(v)))
            .collect();
        let size = step.len()
            + message.len()
            + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if !self.gate.spend_log(size) {
            return Ok(());
        }
        // Rendered only if a subscriber records the event.
        let rendered = Fields(&fields);
        if self.job.rehearsal() {
            // A rehearsal's ERROR is a scenario doing its job, not an incident: DEBUG, apart.
            tracing::debug!(
                target: REHEARSAL_TARGET,
                level = level_name(level),
                step = %step,
                fields = %rendered,
                "{message}"
            );
        } else {
            emit_job_log(level, &step, &message, &rendered);
        }
        self.gate.record_log(|| LogRecord {
            level: level_name(level).to_owned(),
            step,
            message,
            fields,
        });
        Ok(())
    }
}

/// A job's log entry: at the component's level, under the target `component`.
fn emit_job_log(level: log::Level, step: &str, message: &str, rendered: &Fields<'_>) {
    match level {
        log::Level::Trace => {
            tracing::trace!(target: "component", step = %step, fields = %rendered, "{message}")
        }
        log::Level::Debug => {
            tracing::debug!(target: "component", step = %step, fields = %rendered, "{message}")
        }
        log::Level::Info => {
            tracing::info!(target: "component", step = %step, fields = %rendered, "{message}")
        }
        log::Level::Warn => {
            tracing::warn!(target: "component", step = %step, fields = %rendered, "{message}")
        }
        log::Level::Error => {
            tracing::error!(target: "component", step = %step, fields = %rendered, "{message}")
        }
    }
}

/// `k=v k2=v2`, formatted on demand.
struct Fields<'a>(&'a [(String, String)]);

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Trace => "trace",
        log::Level::Debug => "debug",
        log::Level::Info => "info",
        log::Level::Warn => "warn",
        log::Level::Error => "error",
    }
}

fn clip(text: String) -> String {
    if text.len() > MAX_TEXT {
        crate::domain::clip(&text, MAX_TEXT)
    } else {
        text
    }
}
