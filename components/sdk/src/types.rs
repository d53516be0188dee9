//! Plain Rust mirrors of the WIT `types` and `log` records. They carry no bindings, so rules,
//! the host's benchmark and its test kit use the same types natively and in Wasm.

use std::fmt;

use serde_json::{Map, Value};

/// One platform event, as decoded by the host (WIT `types.event`), with the payload parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// `EventUuid`: the deduplication key.
    pub event_uuid: String,
    /// Pub/Sub replay id, decimal text of its 8-byte big-endian value.
    pub replay_id: String,
    /// Avro writer schema id the payload was decoded with.
    pub schema_id: String,
    /// Channel it arrived on, e.g. `/event/OrderProvisionRequested__e`.
    pub channel: String,
    /// `CreatedDate`, milliseconds since the Unix epoch.
    pub created_date: i64,
    /// The event's fields. A payload that is not a JSON object becomes an empty map, so rules see
    /// "field missing" (and fail with their own code) rather than a decoding error.
    pub payload: Map<String, Value>,
}

impl Event {
    /// Payload field name of the Order id on `OrderProvisionRequested__e`.
    pub const ORDER_ID_FIELD: &'static str = "OrderId__c";

    /// Parses the WIT payload text; anything but a JSON object yields an empty map.
    pub fn parse_payload(payload: &str) -> Map<String, Value> {
        match serde_json::from_str::<Value>(payload) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// The payload field `name` when it is a string (Avro `null` and non-strings give `None`).
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.payload.get(name).and_then(Value::as_str)
    }

    /// `OrderId__c`, trimmed; `None` when missing, null or blank.
    pub fn order_id(&self) -> Option<&str> {
        self.field_str(Self::ORDER_ID_FIELD)
            .map(str::trim)
            .filter(|id| !id.is_empty())
    }
}

/// What a successful `fulfill` did (WIT `types.disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The order was provisioned by this call (or a resumed attempt was completed).
    Completed,
    /// Nothing needed doing; the component made no writes.
    Skipped,
}

/// WIT `types.outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub disposition: Disposition,
    /// One line for logs and job records, e.g. `WHMCS order 1042 accepted`.
    pub message: String,
}

impl Outcome {
    pub fn completed(message: impl Into<String>) -> Self {
        Self {
            disposition: Disposition::Completed,
            message: message.into(),
        }
    }

    pub fn skipped(message: impl Into<String>) -> Self {
        Self {
            disposition: Disposition::Skipped,
            message: message.into(),
        }
    }
}

/// A business failure the component has already recorded (WIT `types.failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Short stable code, e.g. `409`, `429`, `ETIMEOUT`, `MAPPING`.
    pub code: String,
    /// Short reason, e.g. `Payment method missing`.
    pub message: String,
}

impl Failure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

/// A host error becomes a failure with the host's `code` as is (e.g. `429`, `ETIMEOUT`).
impl From<HostError> for Failure {
    fn from(err: HostError) -> Self {
        Self {
            code: err.code,
            message: err.message,
        }
    }
}

/// Identity a component reports about itself (WIT `types.component-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// Semantic version of the rules.
    pub version: String,
}

/// Why a host call failed (WIT `types.error-kind`). See the WIT for what each kind promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The capability policy refused the call; nothing was sent. Code `FORBIDDEN`.
    Forbidden,
    /// Malformed input from the component; nothing was sent. Code `INVALID_INPUT`.
    InvalidInput,
    /// The service refused the request (Salesforce `errorCode`, or `WHMCS_ERROR`).
    Rejected,
    /// Infrastructure HTTP status, code is the status as text (`429`, `503`).
    HttpStatus,
    /// No answer in time; for a mutating call the outcome is unknown. Code `ETIMEOUT`.
    Timeout,
    /// Connection failed or broke. Code `ECONNREFUSED`, `ECONNRESET` or `ENETWORK`.
    Network,
    /// The answer could not be interpreted. Code `EBADRESPONSE`.
    BadResponse,
    /// The host could not authenticate. Code `EAUTH`.
    Auth,
}

impl ErrorKind {
    /// The WIT case name, e.g. `invalid-input`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::InvalidInput => "invalid-input",
            Self::Rejected => "rejected",
            Self::HttpStatus => "http-status",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::BadResponse => "bad-response",
            Self::Auth => "auth",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed host call (WIT `types.error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub kind: ErrorKind,
    /// Ready to copy into `Activation_Error_Code__c`, e.g. `429`, `ETIMEOUT`, `WHMCS_ERROR`.
    pub code: String,
    /// Short, human-readable, never contains secrets.
    pub message: String,
}

impl HostError {
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The error the SDK reports when a successful host answer does not have the shape it
    /// documents (kind `bad-response`, code `EBADRESPONSE`), so rules handle it like the host's own.
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadResponse, "EBADRESPONSE", message)
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.kind, self.message)
    }
}

impl std::error::Error for HostError {}

/// Mode of a hold (WIT `holds.hold-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldMode {
    /// Any number of holders at once.
    Shared,
    /// One holder, after every shared holder has released.
    Exclusive,
}

/// Log level (WIT `log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Event {
        Event {
            payload: Event::parse_payload(payload),
            ..Event::default()
        }
    }

    #[test]
    fn order_id_is_trimmed_and_blank_is_missing() {
        assert_eq!(event(r#"{"OrderId__c":" 801A "}"#).order_id(), Some("801A"));
        assert_eq!(event(r#"{"OrderId__c":"  "}"#).order_id(), None);
        assert_eq!(event(r#"{"OrderId__c":null}"#).order_id(), None);
        assert_eq!(event(r#"{"OrderId__c":42}"#).order_id(), None);
        assert_eq!(event(r#"{}"#).order_id(), None);
    }

    #[test]
    fn non_object_payload_is_empty() {
        assert!(event("[1,2]").payload.is_empty());
        assert!(event("not json").payload.is_empty());
    }

    #[test]
    fn host_error_becomes_failure_with_code_as_is() {
        let f: Failure = HostError::new(ErrorKind::HttpStatus, "429", "slow down").into();
        assert_eq!(f, Failure::new("429", "slow down"));
    }
}
