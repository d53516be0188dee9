//! The WHMCS API client: one form-encoded POST to `<root>/includes/api.php` per call.
//!
//! WHMCS does not document its HTTP status codes, so every answer is classified by status AND
//! body (see [`classify_response`]): a `result=error` JSON is a business refusal, anything that is
//! not JSON is an infrastructure problem.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::Instrument as _;
use url::Url;

use crate::error::CallError;
use crate::http::{classify_transport, reason, truncate};
use crate::secret::Secret;

const SERVICE: &str = "WHMCS";

/// Parameters the host sets itself; a component may not pass (or override) them.
const RESERVED_PARAMS: &[&str] = &[
    "identifier",
    "secret",
    "accesskey",
    "username",
    "password",
    "action",
    "responsetype",
];

/// How to reach WHMCS and authenticate to it.
#[derive(Clone)]
pub struct WhmcsConfig {
    /// The WHMCS root (e.g. `https://billing.example.com/`); calls go to
    /// `<root>/includes/api.php`.
    pub url: Url,
    /// API credential identifier.
    pub identifier: String,
    /// API credential secret.
    pub secret: Secret,
    /// Optional `accesskey` that lets the call past WHMCS's IP allowlist.
    pub access_key: Option<Secret>,
    /// Bound on one call, connect to last byte.
    pub timeout: Duration,
}

/// The identifier is half of a credential pair, so `Debug` hides it along with the secrets.
impl fmt::Debug for WhmcsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhmcsConfig")
            .field("url", &self.url.as_str())
            .field("identifier", &"[redacted]")
            .field("secret", &self.secret)
            .field("access_key", &self.access_key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A WHMCS API client. Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub struct WhmcsClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: WhmcsConfig,
    endpoint: Url,
    http: reqwest::Client,
}

impl WhmcsClient {
    pub fn new(cfg: WhmcsConfig, http: reqwest::Client) -> Self {
        let endpoint = api_endpoint(&cfg.url);
        WhmcsClient {
            inner: Arc::new(Inner {
                cfg,
                endpoint,
                http,
            }),
        }
    }

    /// The URL calls are posted to.
    pub fn endpoint(&self) -> &Url {
        &self.inner.endpoint
    }

    /// Calls `action` with `params` (see [`encode_params`]) and returns the response JSON when
    /// WHMCS answers `result=success`.
    pub async fn call(
        &self,
        action: &str,
        params: &Map<String, Value>,
    ) -> Result<Value, CallError> {
        if action.is_empty() || !action.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(CallError::invalid_input(
                "a WHMCS action name is a non-empty alphanumeric word",
            ));
        }
        let mut form = encode_params(params)?;
        let cfg = &self.inner.cfg;
        form.push(("action".into(), action.into()));
        form.push(("identifier".into(), cfg.identifier.clone()));
        form.push(("secret".into(), cfg.secret.expose().into()));
        if let Some(key) = &cfg.access_key {
            form.push(("accesskey".into(), key.expose().into()));
        }
        form.push(("responsetype".into(), "json".into()));

        let span = tracing::debug_span!(
            "whmcs.call",
            action,
            status = tracing::field::Empty,
            result = tracing::field::Empty,
        );
        async {
            let sent = self
                .inner
                .http
                .post(self.inner.endpoint.clone())
                .timeout(cfg.timeout)
                .form(&form)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(err) => {
                    let error = classify_transport(SERVICE, &err);
                    tracing::debug!(code = %error.code, "WHMCS transport failure");
                    return Err(error);
                }
            };
            let status = response.status().as_u16();
            tracing::Span::current().record("status", status);
            let body = crate::http::read_body(SERVICE, response).await?;
            let outcome = classify_response(status, &body);
            match &outcome {
                Ok(_) => tracing::Span::current().record("result", "success"),
                Err(err) => tracing::Span::current().record("result", err.code.as_str()),
            };
            tracing::debug!("WHMCS call finished");
            outcome
        }
        .instrument(span)
        .await
    }
}

/// `<root>/includes/api.php`, keeping any path the root has (WHMCS often lives under `/billing/`).
fn api_endpoint(root: &Url) -> Url {
    let mut endpoint = root.clone();
    endpoint.set_query(None);
    endpoint.set_fragment(None);
    let pushed = match endpoint.path_segments_mut() {
        Ok(mut segments) => {
            segments.pop_if_empty().push("includes").push("api.php");
            true
        }
        Err(()) => false,
    };
    if !pushed {
        // A cannot-be-a-base URL (`mailto:`...) is a configuration mistake; calls to it fail
        // with a network error, which names the problem well enough.
        tracing::warn!("the WHMCS URL cannot carry a path; using it as is");
    }
    endpoint
}

/// Encodes a JSON object as WHMCS form pairs: arrays PHP-style (`pid[0]=1&pid[1]=2`), nested
/// objects as `key[sub]=v`, booleans as `1`/`0`, numbers as text; `null` (and empty arrays or
/// objects, which PHP forms cannot express) are left out.
///
/// Refuses with `invalid-input` a top-level parameter the host sets itself (`action`,
/// credentials, `responsetype`), and keys that are empty or contain `[` or `]` (they would
/// change the meaning of the PHP array syntax).
pub fn encode_params(params: &Map<String, Value>) -> Result<Vec<(String, String)>, CallError> {
    let mut out = Vec::with_capacity(params.len());
    for (key, value) in params {
        check_key(key)?;
        if RESERVED_PARAMS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(key))
        {
            return Err(CallError::invalid_input(format!(
                "parameter '{key}' is set by the host and may not be passed"
            )));
        }
        encode_value(key.clone(), value, &check_key, &mut out)?;
    }
    Ok(out)
}

/// `value` as the PHP-style form pairs of parameter `name`, the way [`encode_params`] sends it,
/// without its checks: for comparing what was sent with what a test expects (where `qty[1]` may
/// name one line).
pub fn form_pairs(name: &str, value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The check accepts every key, so encoding cannot fail.
    let _ = encode_value(name.to_owned(), value, &|_| Ok(()), &mut out);
    out
}

fn check_key(key: &str) -> Result<(), CallError> {
    if key.is_empty() {
        return Err(CallError::invalid_input("a WHMCS parameter name is empty"));
    }
    if key.contains(['[', ']']) {
        return Err(CallError::invalid_input(format!(
            "WHMCS parameter name '{}' contains '[' or ']'",
            truncate(key)
        )));
    }
    Ok(())
}

/// Appends the form pairs of `value` under `name`, checking each nested object key.
fn encode_value(
    name: String,
    value: &Value,
    check: &dyn Fn(&str) -> Result<(), CallError>,
    out: &mut Vec<(String, String)>,
) -> Result<(), CallError> {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((name, if *b { "1" } else { "0" }.into())),
        Value::Number(n) => out.push((name, n.to_string())),
        Value::String(s) => out.push((name, s.clone())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                encode_value(format!("{name}[{index}]"), item, check, out)?;
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                check(key)?;
                encode_value(format!("{name}[{key}]"), item, check, out)?;
            }
        }
    }
    Ok(())
}

/// Classifies one WHMCS answer by status and body:
///
/// - JSON object with `result=success` and a 2xx status: `Ok` with the whole body.
/// - JSON with `result=error` and a 2xx status: `rejected`/`WHMCS_ERROR` with WHMCS's message.
/// - Any non-2xx status: `http-status` with the status as code and WHMCS's message if the body
///   is a JSON error (e.g. 403 from the IP allowlist), the reason phrase otherwise.
/// - A 2xx body that is not a JSON object with a `result` (an HTML maintenance page, truncated
///   JSON): `bad-response`.
pub fn classify_response(status: u16, body: &[u8]) -> Result<Value, CallError> {
    let json = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);
    if !(200..300).contains(&status) {
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(truncate)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("WHMCS answered HTTP {status} {}", reason(status)));
        return Err(CallError::http_status(status, message));
    }
    let Some(json) = json else {
        return Err(CallError::bad_response(format!(
            "WHMCS answered HTTP {status} with a body that is not a JSON object"
        )));
    };
    match json.get("result").and_then(Value::as_str) {
        Some(r) if r.eq_ignore_ascii_case("success") => Ok(json),
        Some(r) if r.eq_ignore_ascii_case("error") => {
            let message = json
                .get("message")
                .and_then(Value::as_str)
                .map(truncate)
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "WHMCS reported an error without a message".into());
            Err(CallError::whmcs(message))
        }
        _ => Err(CallError::bad_response(
            "WHMCS answer has no result=success|error",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn encodes_php_arrays_and_scalars() {
        let pairs = encode_params(&obj(json!({
            "clientid": 7,
            "pid": [1, 2],
            "noemail": true,
            "noinvoice": false,
            "promocode": null,
            "customfields": {"a": "x", "b": [3]},
            "price": 1.5,
        })))
        .unwrap();
        let expect: Vec<(String, String)> = [
            ("clientid", "7"),
            ("pid[0]", "1"),
            ("pid[1]", "2"),
            ("noemail", "1"),
            ("noinvoice", "0"),
            ("customfields[a]", "x"),
            ("customfields[b][0]", "3"),
            ("price", "1.5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expect);
    }

    #[test]
    fn refuses_reserved_and_bracketed_keys() {
        for key in RESERVED_PARAMS.iter().chain(&["Secret", "ACTION"]) {
            let err = encode_params(&obj(json!({ *key: "x" }))).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{key}");
            assert!(!err.message.contains("\"x\""));
        }
        let err = encode_params(&obj(json!({"pid[0]": 1}))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        // Only top-level names are the host's: a nested `password` is ordinary data.
        assert!(encode_params(&obj(json!({"customfields": {"password": "p"}}))).is_ok());
    }

    #[test]
    fn classifies_answers() {
        let ok = classify_response(200, br#"{"result":"success","orderid":5}"#).unwrap();
        assert_eq!(ok["orderid"], 5);

        let err = classify_response(
            200,
            br#"{"result":"error","message":"Client ID Not Found"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str(), err.message.as_str()),
            (ErrorKind::Rejected, "WHMCS_ERROR", "Client ID Not Found")
        );

        let err = classify_response(403, br#"{"result":"error","message":"Invalid IP 1.2.3.4"}"#)
            .unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "403")
        );
        assert_eq!(err.message, "Invalid IP 1.2.3.4");

        let err = classify_response(503, b"<html>down</html>").unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "503")
        );
        assert!(err.message.contains("Service Unavailable"));

        let err = classify_response(429, b"").unwrap_err();
        assert_eq!(err.code, "429");

        let err = classify_response(200, b"<html>Maintenance</html>").unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::BadResponse, "EBADRESPONSE")
        );

        let err = classify_response(200, br#"{"result":"succ"#).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse);

        let err = classify_response(200, br#"{"orderid":1}"#).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse);
    }

    #[test]
    fn endpoint_keeps_root_path() {
        let at = |root: &str| api_endpoint(&Url::parse(root).unwrap()).to_string();
        assert_eq!(
            at("https://b.example.com"),
            "https://b.example.com/includes/api.php"
        );
        assert_eq!(
            at("https://b.example.com/billing/"),
            "https://b.example.com/billing/includes/api.php"
        );
        assert_eq!(
            at("https://b.example.com/billing"),
            "https://b.example.com/billing/includes/api.php"
        );
    }

    #[test]
    fn config_debug_hides_credentials() {
        let cfg = WhmcsConfig {
            url: Url::parse("https://b.example.com/").unwrap(),
            identifier: "ident-XYZ".into(),
            secret: Secret::new("sec-XYZ"),
            access_key: Some(Secret::new("ak-XYZ")),
            timeout: Duration::from_secs(5),
        };
        let text = format!(
            "{cfg:?} {:?}",
            WhmcsClient::new(
                cfg.clone(),
                crate::http::http_client(Duration::from_secs(1)).unwrap()
            )
        );
        for secret in ["ident-XYZ", "sec-XYZ", "ak-XYZ"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
