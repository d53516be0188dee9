//! The REST calls: SOQL query (all pages merged) and single-record update.
//!
//! Every request carries the shared session. A 401 means the session died (Salesforce answers
//! `INVALID_SESSION_ID`; proxies sometimes strip the body, so any 401 counts): the client drops
//! that session, exchanges a new JWT and repeats the request exactly once. A second 401 is an
//! `auth` error: retrying further would only hammer the login endpoint.

use reqwest::Method;
use serde_json::{Map, Value, json};
use tracing::Instrument as _;
use url::Url;

use super::{SalesforceClient, Session};
use crate::error::CallError;
use crate::http::{classify_transport, reason, truncate};

const SERVICE: &str = "Salesforce";

/// `nextRecordsUrl` is followed at most this many times; more means a server looping on us.
const MAX_PAGES: usize = 10_000;

/// An answer with its status, body already read.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl SalesforceClient {
    /// Runs `soql` and returns every record, following `nextRecordsUrl` until `done`:
    /// `{"totalSize": N, "done": true, "records": [...]}`.
    pub async fn query(&self, soql: &str) -> Result<Value, CallError> {
        if soql.trim().is_empty() {
            return Err(CallError::invalid_input("the SOQL query is empty"));
        }
        let path = format!("{}/query", self.data_path());
        let (first, mut read) = self.get_json_sized(&path, Some(("q", soql))).await?;
        let total = first.get("totalSize").and_then(Value::as_u64);
        let mut page = first;
        let mut records = Vec::new();
        for _ in 0..MAX_PAGES {
            if read > crate::http::MAX_ANSWER_BYTES {
                return Err(CallError::bad_response(format!(
                    "Salesforce query answers add up to more than {} MiB; the host does not read \
                     further (select fewer fields or records)",
                    crate::http::MAX_ANSWER_BYTES >> 20
                )));
            }
            let Some(Value::Array(batch)) = page.get_mut("records").map(Value::take) else {
                return Err(CallError::bad_response(
                    "Salesforce query answer has no records array",
                ));
            };
            records.extend(batch);
            let done = page.get("done").and_then(Value::as_bool).unwrap_or(true);
            if done {
                let total = total.unwrap_or(records.len() as u64);
                return Ok(json!({"totalSize": total, "done": true, "records": records}));
            }
            let next = page
                .get("nextRecordsUrl")
                .and_then(Value::as_str)
                // A path on the same instance; never send the token anywhere else.
                .filter(|next| next.starts_with("/services/data/"))
                .ok_or_else(|| {
                    CallError::bad_response(
                        "Salesforce query answer is not done but has no usable nextRecordsUrl",
                    )
                })?
                .to_owned();
            let (next_page, size) = self.get_json_sized(&next, None).await?;
            page = next_page;
            read += size;
        }
        Err(CallError::bad_response(format!(
            "Salesforce query did not finish within {MAX_PAGES} pages"
        )))
    }

    /// Updates `fields` of record `id` of `sobject` (`PATCH .../sobjects/<SObject>/<Id>`).
    pub async fn update(
        &self,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), CallError> {
        check_name("sObject name", sobject)?;
        check_name("record id", id)?;
        let path = format!("{}/sobjects/{sobject}/{id}", self.data_path());
        let body = Value::Object(fields.clone());
        let answer = self
            .send(Method::PATCH, &path, None, Some(&body), &path)
            .await?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(classify_error(answer.status, &answer.body))
        }
    }

    /// The describe of `sobject` (`GET .../sobjects/<SObject>/describe`, REST API Developer
    /// Guide, "sObject Describe"): its `fields` (`name`, `type`, `updateable`, `referenceTo`,
    /// `relationshipName`, ...). An sObject the org does not have is 404 `NOT_FOUND`.
    pub async fn describe(&self, sobject: &str) -> Result<Value, CallError> {
        check_name("sObject name", sobject)?;
        let path = format!("{}/sobjects/{sobject}/describe", self.data_path());
        self.get_json(&path, None).await
    }

    /// The session user's OpenID Connect user info (`GET /services/oauth2/userinfo` on the
    /// instance): `preferred_username`, `organization_id`, `user_id`.
    pub async fn userinfo(&self) -> Result<Value, CallError> {
        self.get_json("/services/oauth2/userinfo", None).await
    }

    /// GETs `path` (optionally with one query parameter) and parses a 2xx JSON object.
    async fn get_json(&self, path: &str, query: Option<(&str, &str)>) -> Result<Value, CallError> {
        self.get_json_sized(path, query).await.map(|(json, _)| json)
    }

    /// [`Self::get_json`] with the size in bytes of the body it was read from.
    async fn get_json_sized(
        &self,
        path: &str,
        query: Option<(&str, &str)>,
    ) -> Result<(Value, usize), CallError> {
        let answer = self.send(Method::GET, path, query, None, path).await?;
        if !(200..300).contains(&answer.status) {
            return Err(classify_error(answer.status, &answer.body));
        }
        serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .filter(Value::is_object)
            .map(|json| (json, answer.body.len()))
            .ok_or_else(|| {
                CallError::bad_response(format!(
                    "Salesforce answered HTTP {} with a body that is not a JSON object",
                    answer.status
                ))
            })
    }

    /// Sends one request with the current session; on 401 renews the session and repeats it
    /// once. Returns any other answer as is (the caller classifies it).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<(&str, &str)>,
        body: Option<&Value>,
        log_path: &str,
    ) -> Result<Answer, CallError> {
        let session = self.session().await?;
        let first = self
            .send_once(&session, method.clone(), path, query, body, log_path)
            .await?;
        if first.status != 401 {
            return Ok(first);
        }
        tracing::debug!(
            path = log_path,
            "Salesforce session rejected; renewing it once"
        );
        self.invalidate(&session).await;
        let fresh = self.session().await?;
        let second = self
            .send_once(&fresh, method, path, query, body, log_path)
            .await?;
        if second.status != 401 {
            return Ok(second);
        }
        // The new session is no better; drop it so the next call starts from a clean exchange.
        self.invalidate(&fresh).await;
        let detail = sf_error(&second.body)
            .map(|(_, message)| message)
            .unwrap_or_else(|| "HTTP 401".into());
        Err(CallError::auth(format!(
            "Salesforce refused a freshly issued session: {detail}"
        )))
    }

    async fn send_once(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        query: Option<(&str, &str)>,
        body: Option<&Value>,
        log_path: &str,
    ) -> Result<Answer, CallError> {
        let url = instance_endpoint(&session.instance_url, path, query)?;
        let span = tracing::debug_span!(
            "salesforce.request",
            method = %method,
            path = log_path,
            status = tracing::field::Empty,
            api_usage = tracing::field::Empty,
        );
        async {
            let mut request = self
                .http()
                .request(method, url)
                .timeout(self.timeout())
                .bearer_auth(session.access_token.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|err| {
                let error = classify_transport(SERVICE, &err);
                tracing::debug!(code = %error.code, "Salesforce transport failure");
                error
            })?;
            let status = response.status().as_u16();
            let span = tracing::Span::current();
            span.record("status", status);
            if let Some(usage) = response
                .headers()
                .get("sforce-limit-info")
                .and_then(|v| v.to_str().ok())
            {
                span.record("api_usage", usage);
            }
            let body = crate::http::read_body(SERVICE, response).await?;
            tracing::debug!("Salesforce request finished");
            Ok(Answer { status, body })
        }
        .instrument(span)
        .await
    }
}

/// `instance + path`, plus one query parameter.
fn instance_endpoint(
    instance: &Url,
    path: &str,
    query: Option<(&str, &str)>,
) -> Result<Url, CallError> {
    let mut url = Url::parse(&format!(
        "{}{path}",
        instance.as_str().trim_end_matches('/')
    ))
    .map_err(|_| {
        CallError::bad_response("Salesforce instance URL cannot be combined with a path")
    })?;
    if let Some((name, value)) = query {
        url.query_pairs_mut().append_pair(name, value);
    }
    Ok(url)
}

/// sObject names and record ids are letters, digits and `_`; anything else would change the path.
fn check_name(what: &str, value: &str) -> Result<(), CallError> {
    if value.is_empty() {
        return Err(CallError::invalid_input(format!("the {what} is empty")));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(CallError::invalid_input(format!(
            "the {what} '{}' may only contain letters, digits and '_'",
            truncate(value)
        )));
    }
    Ok(())
}

/// `(errorCode, message)` of a Salesforce error body: a JSON array of
/// `{message, errorCode, fields}` (a lone object is accepted too).
fn sf_error(body: &[u8]) -> Option<(String, String)> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let first = match &json {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let code = first.get("errorCode")?.as_str()?;
    let message = first
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some((truncate(code), truncate(message)))
}

/// Classifies a non-2xx answer (other than the 401 handled by `send`). Public only for the
/// `salesforce_classify` fuzz target (fuzz/, docs/fuzzing.md); not an API.
#[doc(hidden)]
pub fn classify_error(status: u16, body: &[u8]) -> CallError {
    let parsed = sf_error(body);
    if status == 429 || status >= 500 {
        let message = parsed
            .map(|(code, message)| format!("{code}: {message}"))
            .unwrap_or_else(|| format!("Salesforce answered HTTP {status} {}", reason(status)));
        return CallError::http_status(status, message);
    }
    match parsed {
        Some((code, message)) if status == 401 => CallError::auth(format!("{code}: {message}")),
        Some((code, message)) if (400..500).contains(&status) => CallError::rejected(code, message),
        // A 4xx without Salesforce's error shape came from something in front of Salesforce
        // (a proxy, an allowlist); that is infrastructure, not a refusal by Salesforce.
        _ => CallError::http_status(
            status,
            format!("Salesforce answered HTTP {status} {}", reason(status)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn classifies_error_answers() {
        let err = classify_error(
            400,
            br#"[{"message":"unexpected token: 'FORM'","errorCode":"MALFORMED_QUERY","fields":[]}]"#,
        );
        assert_eq!(
            (err.kind, err.code.as_str(), err.message.as_str()),
            (
                ErrorKind::Rejected,
                "MALFORMED_QUERY",
                "unexpected token: 'FORM'"
            )
        );
        let err = classify_error(404, br#"[{"message":"gone","errorCode":"NOT_FOUND"}]"#);
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::Rejected, "NOT_FOUND")
        );
        let err = classify_error(
            503,
            br#"[{"message":"down","errorCode":"SERVER_UNAVAILABLE"}]"#,
        );
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "503")
        );
        let err = classify_error(429, b"");
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "429")
        );
        let err = classify_error(403, b"<html>blocked</html>");
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::HttpStatus, "403")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("id", "801xx000003DIloAAG").is_ok());
        assert!(check_name("sObject", "Custom__c").is_ok());
        for bad in ["", "a/b", "a?b", "../x", "a b", "a%2F"] {
            assert_eq!(
                check_name("id", bad).unwrap_err().kind,
                ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn endpoint_joins_path_and_query() {
        let base = Url::parse("https://acme.my.salesforce.com").unwrap();
        let url = instance_endpoint(
            &base,
            "/services/data/v66.0/query",
            Some(("q", "SELECT Id FROM Order WHERE Name = 'a&b'")),
        )
        .unwrap();
        assert_eq!(url.path(), "/services/data/v66.0/query");
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q,
            vec![(
                "q".to_string(),
                "SELECT Id FROM Order WHERE Name = 'a&b'".to_string()
            )]
        );
    }
}
