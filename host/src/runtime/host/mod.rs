//! One module per imported WIT interface. Each holds just that interface's `Host` impl: it
//! translates WIT values to the gate's terms and back; policy, limits and I/O live in the gate.

mod billing;
mod clock;
mod config;
mod holds;
mod job;
mod log;
mod salesforce;

pub(crate) use holds::{Held, release_all_holds};

use super::JobState;
use super::bindings::types;
use crate::error::{CallError, ErrorKind};

impl types::Host for JobState {}

impl From<CallError> for types::Error {
    fn from(error: CallError) -> Self {
        let kind = match error.kind {
            ErrorKind::Forbidden => types::ErrorKind::Forbidden,
            ErrorKind::InvalidInput => types::ErrorKind::InvalidInput,
            ErrorKind::Rejected => types::ErrorKind::Rejected,
            ErrorKind::HttpStatus => types::ErrorKind::HttpStatus,
            ErrorKind::Timeout => types::ErrorKind::Timeout,
            ErrorKind::Network => types::ErrorKind::Network,
            ErrorKind::BadResponse => types::ErrorKind::BadResponse,
            ErrorKind::Auth => types::ErrorKind::Auth,
        };
        types::Error {
            kind,
            code: error.code,
            message: error.message,
        }
    }
}

/// Parses a JSON object argument from the guest.
fn json_object(
    what: &str,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, CallError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(CallError::invalid_input(format!(
            "{what} must be a JSON object, got {}",
            json_type(&other)
        ))),
        Err(err) => Err(CallError::invalid_input(format!(
            "{what} is not valid JSON: {err}"
        ))),
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
