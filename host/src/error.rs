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

/// An error and every cause under it on one line, `outer: cause: root cause`, for the places that
/// hand an error to a person as text (API answers, job records, CLI output). Errors keep their
/// cause as [`std::error::Error::source`] instead of copying its text into their own message, so
/// this is how the whole story is told once.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // A wrapper that displays its cause already (`#[error(transparent)]`, or a message that
        // quotes it after a colon, as `StoreError` does for /health) would otherwise repeat it.
        if text != next && !text.contains(&format!(": {next}")) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the component")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("it does not compile")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_chain_reads_outer_to_root() {
        let error = Outer(Inner(std::io::Error::other("bad magic")));
        assert_eq!(
            chain(&error),
            "cannot load the component: it does not compile: bad magic"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("store unavailable: {0}")]
        struct Shows(#[source] std::io::Error);
        let error = Shows(std::io::Error::other("connection refused"));
        assert_eq!(chain(&error), "store unavailable: connection refused");

        #[derive(Debug, thiserror::Error)]
        #[error("embedded store: cannot open: {0} (/var/lib/f.redb)")]
        struct QuotesThenPath(#[source] std::io::Error);
        let error = QuotesThenPath(std::io::Error::other("Database already open"));
        assert_eq!(
            chain(&error),
            "embedded store: cannot open: Database already open (/var/lib/f.redb)"
        );
    }

    #[test]
    fn a_cause_that_only_ends_the_same_way_is_kept() {
        #[derive(Debug, thiserror::Error)]
        #[error("no answer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("answer"));
        assert_eq!(chain(&error), "no answer: answer");
    }
}

/// Where a TOML document failed and the parser's message, never the offending line itself
/// (`line 3: unknown field ...`): for files whose content must not be echoed.
pub fn toml_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(1, |before| before.matches('\n').count() + 1);
            format!("line {line}: {}", error.message())
        }
        None => error.message().to_owned(),
    }
}

#[cfg(test)]
mod toml_error_tests {
    use super::toml_error;

    #[test]
    fn the_line_is_counted_from_one_and_the_text_is_not_quoted() {
        let text = "a = 1\nb = \"secret-7Kq\nc = 3\n";
        let error = toml::from_str::<toml::Table>(text).unwrap_err();
        let said = toml_error(text, &error);
        assert!(said.starts_with("line 2: "), "{said}");
        assert!(!said.contains("secret-7Kq"), "{said}");
        let text = "a = 1\n[[b]]\nx = 1\n[b]\n";
        let error = toml::from_str::<toml::Table>(text).unwrap_err();
        assert!(
            toml_error(text, &error).starts_with("line 4: "),
            "{}",
            toml_error(text, &error)
        );
    }
}
