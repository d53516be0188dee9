//! What can go wrong talking to the store, with the error underneath kept as the cause.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::holds::HoldError;

/// What can go wrong talking to the store.
///
/// Comparing two errors compares what they say, not their causes (a Redis or redb error cannot be
/// compared), so tests can still assert `Err(StoreError::Fenced { .. })` and the like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed the operation (Redis down, disk error). Retry later.
    // The message repeats the cause's text because `/health`, logs and the CLI show it as is;
    // `crate::error::chain` does not print a cause the message already ends with.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Detail),
    /// The caller's lease is no longer the current one: it must stop writing for this channel.
    #[error("lease lost for channel {channel}: {detail}")]
    Fenced { channel: String, detail: String },
    /// No such job, dead letter or record.
    #[error("not found: {0}")]
    NotFound(String),
    /// Data in the store that this host cannot read (names the key and the problem).
    #[error("corrupt store data: {0}")]
    Corrupt(#[source] Detail),
    /// A bad argument (names it).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// A store failure as operators read it (what was being done and what went wrong), and the
/// backend's error that caused it, when there is one.
#[derive(Clone)]
pub struct Detail {
    text: String,
    cause: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl Detail {
    /// A failure with no error underneath (an unexpected reply, a timeout the host measured).
    pub fn new(text: impl Into<String>) -> Self {
        Detail {
            text: text.into(),
            cause: None,
        }
    }

    /// `<context>: <cause>`, keeping `cause` as the source.
    pub fn caused_by(
        context: impl fmt::Display,
        cause: impl Error + Send + Sync + 'static,
    ) -> Self {
        Detail {
            text: format!("{context}: {cause}"),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The same text, with `cause` kept as the source: the text says in the host's words what is
    /// wrong (it is what `Display` shows), and [`crate::error::chain`] adds the cause's own
    /// message after it.
    pub fn with_cause(self, cause: impl Error + Send + Sync + 'static) -> Self {
        Detail {
            text: self.text,
            cause: Some(Arc::new(cause)),
        }
    }

    /// The same failure, its text rewritten by `rewrite` (e.g. to name the file it concerns).
    pub fn map_text(self, rewrite: impl FnOnce(String) -> String) -> Self {
        Detail {
            text: rewrite(self.text),
            cause: self.cause,
        }
    }
}

impl From<String> for Detail {
    fn from(text: String) -> Self {
        Detail::new(text)
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Shows the text only, as `Debug` of the plain `String` these variants held before.
impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl Error for Detail {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

impl PartialEq for Detail {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Detail {}

/// A store that keeps holds reports its own failure as the hold's cause.
impl From<StoreError> for HoldError {
    fn from(error: StoreError) -> Self {
        HoldError::Backend(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_printed_once() {
        let error = StoreError::Unavailable(Detail::caused_by(
            "redis PING",
            std::io::Error::other("connection refused"),
        ));
        assert_eq!(
            error.to_string(),
            "store unavailable: redis PING: connection refused"
        );
        let root = error.source().and_then(Error::source);
        assert_eq!(
            root.map(ToString::to_string).as_deref(),
            Some("connection refused")
        );
        assert_eq!(crate::error::chain(&error), error.to_string());
    }

    #[test]
    fn errors_compare_by_what_they_say() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(
            StoreError::Corrupt(Detail::caused_by("key", io())),
            StoreError::Corrupt(Detail::caused_by("key", io()))
        );
        assert_ne!(
            StoreError::Corrupt(Detail::new("a")),
            StoreError::Unavailable(Detail::new("a"))
        );
    }
}
