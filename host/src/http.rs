//! Outbound HTTP, in one place: the `reqwest::Client` every caller uses (the Salesforce and WHMCS
//! clients, the admin CLI), the process's rustls crypto provider, and the classification of
//! transport failures into [`CallError`]s, so both services report a refused connection or a
//! timeout the same way.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use crate::error::CallError;

/// The connection phase never gets more than this, even when a call's own timeout is longer:
/// a refused or black-holed connect should fail fast.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest service-provided text copied into a [`CallError`] message.
const MAX_MESSAGE_CHARS: usize = 300;

/// The largest answer body read from Salesforce or WHMCS (one HTTP answer). A bigger one is
/// not read further and the call fails with `EBADRESPONSE`: no service answer of ours comes near
/// it (a query page holds at most 2,000 records), so only a broken or hostile server sends one.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// Building the shared HTTP client failed (TLS setup, usually).
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client failed")]
pub struct HttpClientError(#[source] reqwest::Error);

/// Builds an HTTP client: the one the Salesforce and WHMCS clients share, and the admin CLI's.
///
/// reqwest is compiled with `rustls-no-provider`: it takes the process-wide rustls
/// `CryptoProvider` when building a client (and panics if none is installed). `main` installs it
/// at start; this installs it too, so library users and tests that never run `main` cannot hit
/// that panic. Certificates are checked by rustls-platform-verifier (the system trust store).
///
/// `timeout` bounds every request made with the client; each call may set a shorter one.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, HttpClientError> {
    http_client_trusting(timeout, None)
}

/// [`http_client`], trusting the CA certificates in `extra_ca_pem` (PEM, e.g. the sandbox's test
/// CA from `SF_CA_FILE`) in addition to the system trust store.
pub fn http_client_trusting(
    timeout: Duration,
    extra_ca_pem: Option<&str>,
) -> Result<reqwest::Client, HttpClientError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = extra_ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(HttpClientError)?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .user_agent(concat!("fulfilld/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(HttpClientError)
}

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`]: a bigger one fails with `EBADRESPONSE`
/// naming the limit, without holding more than the limit in memory.
pub(crate) async fn read_body(
    service: &str,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, CallError> {
    let too_large = || {
        CallError::bad_response(format!(
            "{service} answered with a body larger than {} MiB; the host does not read further",
            MAX_ANSWER_BYTES >> 20
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| classify_transport(service, &err))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Installs ring as the process-wide rustls provider unless one is installed already.
///
/// reqwest and tonic (the Pub/Sub client and the sandbox's TLS server) both take this default;
/// installing twice is harmless.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing a provider is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Classifies a transport failure (no HTTP answer) of a request to `service`.
///
/// The message is written here rather than taken from reqwest's `Display`, which includes the
/// request URL (and so a query string) and nested causes of varying length.
pub(crate) fn classify_transport(service: &str, err: &reqwest::Error) -> CallError {
    if err.is_timeout() {
        return CallError::timeout(format!("{service} did not answer in time"));
    }
    match io_kind(err) {
        Some(io::ErrorKind::ConnectionRefused) => {
            return CallError::network("ECONNREFUSED", format!("{service} refused the connection"));
        }
        Some(
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof,
        ) => {
            return CallError::network(
                "ECONNRESET",
                format!("{service} closed the connection before answering"),
            );
        }
        Some(io::ErrorKind::TimedOut) => {
            return CallError::timeout(format!("{service} did not answer in time"));
        }
        _ => {}
    }
    if closed_before_answer(err) {
        return CallError::network(
            "ECONNRESET",
            format!("{service} closed the connection before answering"),
        );
    }
    if err.is_dns() {
        return CallError::network("ENETWORK", format!("{service} host name did not resolve"));
    }
    if err.is_connect() {
        return CallError::network("ENETWORK", format!("could not connect to {service}"));
    }
    if err.is_body() || err.is_decode() {
        return CallError::network("ECONNRESET", format!("the answer from {service} broke off"));
    }
    CallError::network("ENETWORK", format!("request to {service} failed"))
}

/// The kind of the first `io::Error` in the cause chain.
fn io_kind(err: &reqwest::Error) -> Option<io::ErrorKind> {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            return Some(io_err.kind());
        }
        source = cause.source();
    }
    None
}

/// hyper reports a peer that closed the connection without answering as its own error type
/// ("connection closed before message completed") with no `io::Error` underneath. hyper is not a
/// direct dependency, so this recognises it by its text.
fn closed_before_answer(err: &reqwest::Error) -> bool {
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if text.contains("connection closed before message completed")
            || text.contains("connection reset")
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The standard reason phrase of an HTTP status, e.g. `Service Unavailable`.
pub(crate) fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown Status")
}

/// Shortens service-provided text for a [`CallError`] message.
pub(crate) fn truncate(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push('…');
    short
}
