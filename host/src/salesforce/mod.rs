//! The Salesforce client: OAuth 2.0 JWT bearer authentication ([`auth`]) and the two REST calls
//! the component may make ([`rest`]: query and update).
//!
//! One [`SalesforceClient`] holds one cached [`Session`] that every caller (REST calls here, the
//! Pub/Sub subscriber later) shares. A session has no expiry the client can know in advance
//! (Salesforce sends no `expires_in`); it is replaced when the service says it is invalid, and
//! [`SalesforceClient::invalidate`] makes sure many simultaneous "invalid session" answers lead to
//! exactly one new token exchange.

pub mod auth;
pub mod rest;

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::error::CallError;
use crate::secret::Secret;

pub use auth::Session;

/// How to authenticate to a Salesforce org and which REST API version to speak.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    /// Where the JWT bearer grant is exchanged, e.g. `https://login.salesforce.com` or a My
    /// Domain / community URL; the token endpoint is `<login_url>/services/oauth2/token`.
    pub login_url: Url,
    /// The connected app's consumer key: the JWT `iss`.
    pub client_id: String,
    /// The integration user's username: the JWT `sub`.
    pub username: String,
    /// PEM of the RSA private key whose certificate is uploaded to the connected app.
    pub private_key_pem: Secret,
    /// The JWT `aud`: `https://login.salesforce.com`, `https://test.salesforce.com` or the
    /// community URL.
    pub audience: String,
    /// REST API version with its `v`, e.g. `v66.0`.
    pub api_version: String,
    /// Bound on one HTTP request (token exchange or one REST request).
    pub timeout: Duration,
}

/// The configuration cannot work; found before any request is made.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceConfigError {
    /// The PEM is not an RSA private key (the key itself is never printed).
    #[error("the Salesforce private key is not a usable RSA private key PEM")]
    PrivateKey(#[source] PrivateKeyError),
    /// `api_version` is not of the form `v66.0`.
    #[error("the Salesforce API version {0:?} is not of the form vNN.0")]
    ApiVersion(String),
    /// `login_url` cannot be used as a base URL.
    #[error("the Salesforce login URL {0:?} is not an http(s) URL")]
    LoginUrl(String),
}

/// What is wrong with the private key. No variant holds key material: jsonwebtoken's errors name
/// the problem (format, ASN.1), never the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum PrivateKeyError {
    #[error("the PEM holds a public key or certificate, not the private key")]
    NotPrivate,
    #[error("no PEM private key block found")]
    NoPem,
    /// The PEM does not parse as an RSA key.
    #[error(transparent)]
    Unreadable(jsonwebtoken::errors::Error),
    /// It parses, but cannot sign (e.g. a PKCS#8 public key, which parsing accepts).
    #[error("signing the JWT assertion failed")]
    CannotSign(#[source] jsonwebtoken::errors::Error),
}

/// A Salesforce client. Cloning is cheap; clones share the session cache.
#[derive(Clone, Debug)]
pub struct SalesforceClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    auth: auth::Authenticator,
    /// `/services/data/v66.0`
    data_path: String,
    timeout: Duration,
    /// The current session. A tokio mutex because the token exchange happens while it is held:
    /// callers arriving during an exchange wait for it instead of starting their own.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl SalesforceClient {
    /// Checks the configuration (the private key above all) without contacting Salesforce.
    pub fn new(
        cfg: SalesforceConfig,
        http: reqwest::Client,
    ) -> Result<Self, SalesforceConfigError> {
        if !valid_api_version(&cfg.api_version) {
            return Err(SalesforceConfigError::ApiVersion(cfg.api_version));
        }
        let auth = auth::Authenticator::new(&cfg)?;
        Ok(SalesforceClient {
            inner: Arc::new(Inner {
                http,
                auth,
                data_path: format!("/services/data/{}", cfg.api_version),
                timeout: cfg.timeout,
                session: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The current session, exchanging a new JWT for one if there is none. Concurrent callers
    /// share a single exchange. A failed exchange is not cached: the next call tries again.
    pub async fn session(&self) -> Result<Arc<Session>, CallError> {
        let mut cached = self.inner.session.lock().await;
        if let Some(session) = cached.as_ref() {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(
            self.inner
                .auth
                .exchange(&self.inner.http, self.inner.timeout)
                .await?,
        );
        *cached = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Forgets `stale` after Salesforce called it invalid. Does nothing when the cache already
    /// holds a different session (another caller has replaced it), so N callers that saw the same
    /// stale session cause one new exchange, not N.
    pub async fn invalidate(&self, stale: &Session) {
        let mut cached = self.inner.session.lock().await;
        if cached
            .as_ref()
            .is_some_and(|current| current.access_token == stale.access_token)
        {
            tracing::debug!("dropping the invalid Salesforce session");
            *cached = None;
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn data_path(&self) -> &str {
        &self.inner.data_path
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

/// `v` followed by `major.minor` digits, e.g. `v66.0`.
fn valid_api_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let mut parts = rest.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(valid_api_version("v66.0"));
        assert!(valid_api_version("v100.1"));
        for bad in ["66.0", "v66", "v66.", "v66.0.1", "vx.0", "", "v66.0/../x"] {
            assert!(!valid_api_version(bad), "{bad}");
        }
    }
}
