//! The failure of one host call, as the component sees it.
//!
//! Every backend (the real Salesforce and WHMCS clients, the in-memory fakes of the test kit)
//! classifies its failures into a [`CallError`]; the runtime hands it to the guest as the WIT
//! `types.error` record. The classification lives with the clients so the test kit's injected
//! failures look exactly like real ones.

use std::fmt;

/// Mirror of the WIT `types.error-kind` enum; see `wit/fulfillment.wit` for the meaning of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Forbidden,
    InvalidInput,
    Rejected,
    HttpStatus,
    Timeout,
    Network,
    BadResponse,
    Auth,
}

impl ErrorKind {
    /// The kebab-case name used in the WIT, scenario files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::Rejected => "rejected",
            ErrorKind::HttpStatus => "http-status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::BadResponse => "bad-response",
            ErrorKind::Auth => "auth",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure of a host call. `code` is what an operator sees in
/// `Activation_Error_Code__c` (e.g. `429`, `503`, `ETIMEOUT`); `message` is short and never holds
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl CallError {
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        CallError {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The capability policy refused the call; nothing was sent.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "FORBIDDEN", message)
    }

    /// The component passed malformed input; nothing was sent.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, "INVALID_INPUT", message)
    }

    /// The service refused the request (Salesforce `errorCode`, or WHMCS `result=error`).
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, code, message)
    }

    /// A WHMCS `result=error` answer.
    pub fn whmcs(message: impl Into<String>) -> Self {
        Self::rejected("WHMCS_ERROR", message)
    }

    /// An infrastructure HTTP status (403, 429, 5xx, ...); the code is the status number.
    pub fn http_status(status: u16, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::HttpStatus, status.to_string(), message)
    }

    /// No answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, "ETIMEOUT", message)
    }

    /// The connection failed; `code` is `ECONNREFUSED`, `ECONNRESET` or `ENETWORK`.
    pub fn network(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, code, message)
    }

    /// An answer that could not be interpreted (non-JSON, truncated).
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadResponse, "EBADRESPONSE", message)
    }

    /// Authentication to the service failed.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Auth, "EAUTH", message)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.code, self.message)
    }
}

impl std::error::Error for CallError {}
