//! OAuth 2.0 JWT bearer flow: sign a short-lived RS256 assertion with the connected app's key and
//! exchange it at `<login_url>/services/oauth2/token` for an access token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument as _;
use url::Url;

use super::{PrivateKeyError, SalesforceConfig, SalesforceConfigError};
use crate::error::CallError;
use crate::http::{classify_transport, reason, truncate};
use crate::secret::Secret;

const SERVICE: &str = "Salesforce login";

/// Lifetime of an assertion. Salesforce accepts at most 3 minutes; staying below leaves room for
/// clock skew between us and Salesforce.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(170);

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An authenticated Salesforce session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Bearer token for REST (and the Pub/Sub `accesstoken` metadata).
    pub access_token: Secret,
    /// The org's instance, e.g. `https://acme.my.salesforce.com`.
    pub instance_url: Url,
    /// The 18-character org id (Pub/Sub `tenantid`), taken from the identity URL.
    pub tenant_id: String,
}

/// Claims of the JWT bearer assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

/// Signs assertions and exchanges them for sessions.
pub(crate) struct Authenticator {
    token_url: Url,
    key: EncodingKey,
    client_id: String,
    username: String,
    audience: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub(crate) fn new(cfg: &SalesforceConfig) -> Result<Self, SalesforceConfigError> {
        let token_url = token_url(&cfg.login_url)
            .ok_or_else(|| SalesforceConfigError::LoginUrl(cfg.login_url.to_string()))?;
        let pem = cfg.private_key_pem.expose();
        if !pem.contains("PRIVATE KEY-----") {
            let what = if pem.contains("PUBLIC KEY-----") || pem.contains("CERTIFICATE-----") {
                PrivateKeyError::NotPrivate
            } else {
                PrivateKeyError::NoPem
            };
            return Err(SalesforceConfigError::PrivateKey(what));
        }
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|err| SalesforceConfigError::PrivateKey(PrivateKeyError::Unreadable(err)))?;
        let auth = Authenticator {
            token_url,
            key,
            client_id: cfg.client_id.clone(),
            username: cfg.username.clone(),
            audience: cfg.audience.clone(),
        };
        // `from_rsa_pem` also accepts a PKCS#8 *public* key and defers parsing; one trial
        // signature proves the key can sign before the first exchange needs it.
        auth.sign(ASSERTION_LIFETIME.as_secs())
            .map_err(|err| SalesforceConfigError::PrivateKey(PrivateKeyError::CannotSign(err)))?;
        Ok(auth)
    }

    /// A fresh signed assertion.
    fn assertion(&self) -> Result<String, CallError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CallError::auth("the system clock is before 1970"))?;
        self.sign((now + ASSERTION_LIFETIME).as_secs())
            .map_err(|err| CallError::auth(format!("signing the JWT assertion failed: {err}")))
    }

    /// The assertion expiring at `exp` (seconds since the Unix epoch), signed.
    fn sign(&self, exp: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: &self.client_id,
            sub: &self.username,
            aud: &self.audience,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }

    /// Exchanges a new assertion for a session.
    pub(crate) async fn exchange(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Session, CallError> {
        let span = tracing::debug_span!(
            "salesforce.token",
            path = self.token_url.path(),
            status = tracing::field::Empty,
        );
        async {
            let assertion = self.assertion()?;
            let form = [("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())];
            let response = http
                .post(self.token_url.clone())
                .timeout(timeout)
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form)
                .send()
                .await
                .map_err(|err| classify_transport(SERVICE, &err))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("status", status);
            let body = crate::http::read_body(SERVICE, response).await?;
            let session = parse_token_response(status, &body);
            match &session {
                Ok(s) => tracing::debug!(instance = %s.instance_url, tenant = %s.tenant_id, "new Salesforce session"),
                Err(err) => tracing::warn!(error = %err, "Salesforce token exchange failed"),
            }
            session
        }
        .instrument(span)
        .await
    }
}

/// `<login_url>/services/oauth2/token`, keeping a community URL's path.
fn token_url(login: &Url) -> Option<Url> {
    if !matches!(login.scheme(), "http" | "https") {
        return None;
    }
    let mut url = login.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["services", "oauth2", "token"]);
    Some(url)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
    id: String,
}

/// Interprets the token endpoint's answer.
pub(crate) fn parse_token_response(status: u16, body: &[u8]) -> Result<Session, CallError> {
    if !(200..300).contains(&status) {
        let json = serde_json::from_slice::<Value>(body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(Value::as_str)
                .map(truncate)
        };
        return match (status, field("error")) {
            // OAuth errors (invalid_grant, invalid_client, ...) come as 400 (sometimes 401).
            (400 | 401, Some(error)) => {
                let description = field("error_description").unwrap_or_default();
                Err(CallError::auth(format!(
                    "Salesforce refused the JWT bearer grant: {error}: {description}"
                )))
            }
            _ => Err(CallError::http_status(
                status,
                format!("Salesforce login answered HTTP {status} {}", reason(status)),
            )),
        };
    }
    let token: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        CallError::bad_response("Salesforce token response is not the expected JSON")
    })?;
    let instance_url = Url::parse(&token.instance_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            CallError::bad_response("Salesforce token response has a bad instance_url")
        })?;
    let tenant_id = org_id_from_identity(&token.id).ok_or_else(|| {
        CallError::bad_response("Salesforce token response has no org id in its identity URL")
    })?;
    if token.access_token.is_empty() {
        return Err(CallError::bad_response(
            "Salesforce token response has an empty access_token",
        ));
    }
    Ok(Session {
        access_token: Secret::new(token.access_token),
        instance_url,
        tenant_id,
    })
}

/// The org id from an identity URL `https://login.salesforce.com/id/<orgId>/<userId>`.
fn org_id_from_identity(id: &str) -> Option<String> {
    let url = Url::parse(id).ok()?;
    let segments: Vec<&str> = url.path_segments()?.collect();
    let at = segments.iter().rposition(|s| *s == "id")?;
    let org = *segments.get(at + 1)?;
    segments.get(at + 2)?;
    (!org.is_empty() && org.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| org.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn token_url_keeps_community_path() {
        let at = |u: &str| token_url(&Url::parse(u).unwrap()).unwrap().to_string();
        assert_eq!(
            at("https://login.salesforce.com"),
            "https://login.salesforce.com/services/oauth2/token"
        );
        assert_eq!(
            at("https://x.my.site.com/shop/"),
            "https://x.my.site.com/shop/services/oauth2/token"
        );
        // The Experience Cloud login URL of the issue: the token request keeps `/customers`.
        assert_eq!(
            at("https://mysite.my.site.com/customers"),
            "https://mysite.my.site.com/customers/services/oauth2/token"
        );
        assert!(token_url(&Url::parse("mailto:a@b").unwrap()).is_none());
    }

    #[test]
    fn parses_token_answers() {
        let ok = parse_token_response(
            200,
            br#"{"access_token":"00D!tok","instance_url":"https://acme.my.salesforce.com","id":"https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS","token_type":"Bearer","scope":"api"}"#,
        )
        .unwrap();
        assert_eq!(ok.tenant_id, "00Dxx0000001gPLEAY");
        assert_eq!(ok.access_token.expose(), "00D!tok");

        let err = parse_token_response(
            400,
            br#"{"error":"invalid_grant","error_description":"audience is invalid"}"#,
        )
        .unwrap_err();
        assert_eq!((err.kind, err.code.as_str()), (ErrorKind::Auth, "EAUTH"));
        assert!(err.message.contains("audience is invalid"));

        let err = parse_token_response(503, b"<html/>").unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "503")
        );

        let err = parse_token_response(200, b"<html/>").unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse);

        let err = parse_token_response(
            200,
            br#"{"access_token":"t","instance_url":"https://a","id":"https://login/x"}"#,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse);
    }
}
