//! Real HTTP servers over the in-memory fakes: a Salesforce org (JWT bearer token endpoint and the
//! REST query/update resources) and a WHMCS API endpoint. Tests bind a listener on
//! `127.0.0.1:0`, start a server on it and point the real clients at [`FakeSalesforce::url`] /
//! [`FakeWhmcsServer::url`]; the handles then inject failures and inspect what arrived.
//!
//! The servers stop when their handle is dropped.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

use super::org::{FakeOrg, sf_error_body, sf_status_for};
use super::whmcs::FakeWhmcs;

/// Starting a fake server failed. The cause is left to `source()` (anyhow's `{:#}` shows it).
#[derive(Debug, thiserror::Error)]
pub enum FakeServerError {
    #[error("reading the fake server's listen address failed")]
    Listener(#[from] std::io::Error),
    #[error("the fake server's base URL is invalid")]
    Url(#[from] url::ParseError),
    #[error("the fake Salesforce public key is not an RSA public key PEM")]
    PublicKey(#[source] jsonwebtoken::errors::Error),
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// A canned answer queued by `fail_next`.
#[derive(Debug, Clone)]
struct Canned {
    status: u16,
    body: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take every later request down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn base_url(addr: SocketAddr) -> Result<Url, url::ParseError> {
    Url::parse(&format!("http://{addr}/"))
}

/// Answers `canned` with a content type guessed from the body.
fn canned_response(canned: Canned) -> Response {
    let status = StatusCode::from_u16(canned.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let trimmed = canned.body.trim_start();
    let content_type = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "application/json;charset=UTF-8"
    } else {
        "text/html; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, content_type)], canned.body).into_response()
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An unguessable-enough token for a fake: 256 bits from std's randomly keyed hasher.
fn random_hex(counter: u64) -> String {
    (0..4)
        .map(|i| format!("{:016x}", RandomState::new().hash_one((counter, i))))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Salesforce

/// What the fake Salesforce accepts and how it pages.
#[derive(Debug, Clone)]
pub struct FakeSalesforceOptions {
    /// Expected JWT `iss`.
    pub client_id: String,
    /// Expected JWT `sub`.
    pub username: String,
    /// Expected JWT `aud`. The server's own base URL (its login URL, with or without the trailing
    /// slash) is accepted too: see [`verify_assertion`].
    pub audience: String,
    /// PEM of the RSA public key that verifies assertions.
    pub public_key_pem: String,
    /// The org id reported in the identity URL (the tenant id).
    pub org_id: String,
    /// Records per query page; 0 means Salesforce's default of 2000.
    pub page_size: usize,
}

impl Default for FakeSalesforceOptions {
    fn default() -> Self {
        FakeSalesforceOptions {
            client_id: "3MVG9fake.client.id".into(),
            username: "integration@example.com".into(),
            audience: "https://login.salesforce.com".into(),
            public_key_pem: String::new(),
            org_id: "00D8d0000000001EAA".into(),
            page_size: 2000,
        }
    }
}

struct SfState {
    opts: FakeSalesforceOptions,
    key: DecodingKey,
    base: Url,
    org: Arc<Mutex<FakeOrg>>,
    control: Mutex<SfControl>,
}

#[derive(Default)]
struct SfControl {
    tokens: HashSet<String>,
    /// Every token ever issued, so tests can check none leaked into logs.
    issued_tokens: Vec<String>,
    token_requests: usize,
    issued: u64,
    api_calls: u64,
    fail_rest: VecDeque<Canned>,
    fail_token: VecDeque<Canned>,
    delays: VecDeque<Duration>,
    requests: Vec<RecordedRequest>,
    /// Query cursors: the full result of a query being paged.
    cursors: Vec<(String, Vec<Value>)>,
}

/// A running fake Salesforce. Dropping it stops the server.
pub struct FakeSalesforce {
    state: Arc<SfState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeSalesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSalesforce")
            .field("url", &self.state.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeSalesforce {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves a fake Salesforce org on `listener`: `POST /services/oauth2/token` (JWT bearer, the
/// assertion verified with `opts.public_key_pem`), `GET /services/oauth2/userinfo`,
/// `GET /services/data/vNN.0/query?q=` (paged by `opts.page_size`), `GET .../query/<locator>`,
/// `PATCH .../sobjects/<SObject>/<Id>` and `GET .../sobjects/<SObject>/describe`.
pub async fn serve_fake_salesforce(
    listener: TcpListener,
    opts: FakeSalesforceOptions,
    org: Arc<Mutex<FakeOrg>>,
) -> Result<FakeSalesforce, FakeServerError> {
    let base = base_url(listener.local_addr()?)?;
    serve_fake_salesforce_on(listener, base, opts, org).await
}

/// [`serve_fake_salesforce`] on any listener axum serves (e.g. one that terminates TLS);
/// `base` is the URL clients reach it at (`https://...` over TLS), the login and instance URL.
pub async fn serve_fake_salesforce_on<L>(
    listener: L,
    base: Url,
    opts: FakeSalesforceOptions,
    org: Arc<Mutex<FakeOrg>>,
) -> Result<FakeSalesforce, FakeServerError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let key = DecodingKey::from_rsa_pem(opts.public_key_pem.as_bytes())
        .map_err(FakeServerError::PublicKey)?;
    let state = Arc::new(SfState {
        opts,
        key,
        base,
        org,
        control: Mutex::new(SfControl::default()),
    });
    let rest = Router::new()
        .route("/services/data/{version}/query", get(sf_query))
        .route(
            "/services/data/{version}/query/{locator}",
            get(sf_query_more),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/{id}",
            patch(sf_update),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/describe",
            get(sf_describe),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            sf_rest_gate,
        ));
    let app = Router::new()
        .route("/services/oauth2/token", post(sf_token))
        .route("/services/oauth2/userinfo", get(sf_userinfo))
        .merge(rest)
        .fallback(sf_not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            sf_record,
        ))
        .with_state(Arc::clone(&state));
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(error = %err, "fake Salesforce server stopped");
        }
    });
    Ok(FakeSalesforce { state, task })
}

impl FakeSalesforce {
    /// Base URL (`http://127.0.0.1:<port>/`, `https://` over TLS): the login URL and the instance
    /// URL.
    pub fn url(&self) -> Url {
        self.state.base.clone()
    }

    /// The org the server reads and writes.
    pub fn org(&self) -> Arc<Mutex<FakeOrg>> {
        Arc::clone(&self.state.org)
    }

    /// Invalidates every issued token: the next REST call gets 401 `INVALID_SESSION_ID`.
    pub fn expire_sessions(&self) {
        lock(&self.state.control).tokens.clear();
    }

    /// Every access token this server has issued (expired ones included).
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.control).issued_tokens.clone()
    }

    /// Whether `token` is a live session of this org (issued and not expired). The sandbox's
    /// Pub/Sub server checks its `accesstoken` metadata with this.
    pub fn token_is_valid(&self, token: &str) -> bool {
        lock(&self.state.control).tokens.contains(token)
    }

    /// The org id (the Pub/Sub `tenantid`).
    pub fn org_id(&self) -> &str {
        &self.state.opts.org_id
    }

    /// Token requests received so far (successful or not).
    pub fn token_requests(&self) -> usize {
        lock(&self.state.control).token_requests
    }

    /// REST requests that passed authentication so far (what `Sforce-Limit-Info` counts).
    pub fn api_calls(&self) -> u64 {
        lock(&self.state.control).api_calls
    }

    /// Answers the next `n` REST requests with `status` and `body` before anything else is
    /// checked (as a proxy or an outage would).
    pub fn fail_next(&self, n: usize, status: u16, body: String) {
        let mut control = lock(&self.state.control);
        control
            .fail_rest
            .extend(std::iter::repeat_n(Canned { status, body }, n));
    }

    /// Answers the next `n` token requests with `status` and `body`.
    pub fn fail_token_next(&self, n: usize, status: u16, body: String) {
        let mut control = lock(&self.state.control);
        control
            .fail_token
            .extend(std::iter::repeat_n(Canned { status, body }, n));
    }

    /// Holds the next `n` REST requests for `delay` before handling them.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        lock(&self.state.control)
            .delays
            .extend(std::iter::repeat_n(delay, n));
    }

    /// Every request received so far (token and REST), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.control).requests.clone()
    }
}

async fn sf_record(State(state): State<Arc<SfState>>, request: Request, next: Next) -> Response {
    lock(&state.control).requests.push(RecordedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    });
    next.run(request).await
}

/// The `Authorization: Bearer` (or `OAuth`) token of a request, empty when there is none.
fn bearer_token(request: &Request) -> String {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::trim)
        .unwrap_or_default()
        .to_owned()
}

fn invalid_session() -> Response {
    json_response(
        401,
        &json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
    )
}

/// In front of every REST resource: injected failures and delays, then the bearer token; adds
/// `Sforce-Limit-Info` to what passes.
async fn sf_rest_gate(State(state): State<Arc<SfState>>, request: Request, next: Next) -> Response {
    let delay = lock(&state.control).delays.pop_front();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(canned) = lock(&state.control).fail_rest.pop_front() {
        return canned_response(canned);
    }
    let token = bearer_token(&request);
    let usage = {
        let mut control = lock(&state.control);
        if !control.tokens.contains(&token) {
            return invalid_session();
        }
        control.api_calls += 1;
        control.api_calls
    };
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&format!("api-usage={usage}/15000")) {
        response.headers_mut().insert("sforce-limit-info", value);
    }
    response
}

async fn sf_not_found() -> Response {
    json_response(
        404,
        &json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
    )
}

#[derive(Deserialize)]
struct AssertionClaims {
    exp: u64,
}

fn invalid_grant(description: &str) -> Response {
    json_response(
        400,
        &json!({"error": "invalid_grant", "error_description": description}),
    )
}

async fn sf_token(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let canned = {
        let mut control = lock(&state.control);
        control.token_requests += 1;
        control.fail_token.pop_front()
    };
    if let Some(canned) = canned {
        return canned_response(canned);
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return json_response(
            400,
            &json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}),
        );
    }
    let Some(assertion) = field("assertion") else {
        return invalid_grant("invalid assertion");
    };
    if let Err(description) = verify_assertion(&state, assertion) {
        return invalid_grant(description);
    }
    let token = {
        let mut control = lock(&state.control);
        control.issued += 1;
        let org15 = state.opts.org_id.get(..15).unwrap_or(&state.opts.org_id);
        let token = format!("{org15}!{}", random_hex(control.issued));
        control.tokens.insert(token.clone());
        control.issued_tokens.push(token.clone());
        token
    };
    let base = state.base.as_str().trim_end_matches('/');
    json_response(
        200,
        &json!({
            "access_token": token,
            "instance_url": base,
            "id": identity_url(&state),
            "token_type": "Bearer",
            "scope": "api",
            "issued_at": (now_secs() * 1000).to_string(),
        }),
    )
}

/// The user the sessions belong to (the JWT `sub`).
const SESSION_USER_ID: &str = "0058d000000FAKEAAA";

/// The identity URL: the token response's `id` and the userinfo `sub`.
fn identity_url(state: &SfState) -> String {
    let base = state.base.as_str().trim_end_matches('/');
    format!("{base}/id/{}/{SESSION_USER_ID}", state.opts.org_id)
}

/// `GET /services/oauth2/userinfo`, Salesforce's OpenID Connect UserInfo endpoint
/// (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_using_userinfo_endpoint.htm):
/// the session's user and org, at the login URL and the instance URL alike. Clients written for
/// Salesforce call it right after the token exchange to learn the org id (`organization_id`).
async fn sf_userinfo(State(state): State<Arc<SfState>>, request: Request) -> Response {
    let token = bearer_token(&request);
    if !lock(&state.control).tokens.contains(&token) {
        // The identity service refuses a token it does not accept with 403 and the plain-text
        // body `Bad_OAuth_Token`, where the REST API answers 401 INVALID_SESSION_ID (jsforce's
        // `Connection` handles both codes as an expired session). Not in the help page above:
        // observed behaviour, as Salesforce clients handle it.
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
            "Bad_OAuth_Token",
        )
            .into_response();
    }
    let base = state.base.as_str().trim_end_matches('/');
    let org_id = &state.opts.org_id;
    let username = &state.opts.username;
    let nickname = username.split('@').next().unwrap_or(username);
    json_response(
        200,
        &json!({
            "sub": identity_url(&state),
            "user_id": SESSION_USER_ID,
            "organization_id": org_id,
            "preferred_username": username,
            "nickname": nickname,
            "name": "Integration User",
            "email": username,
            "email_verified": true,
            "zoneinfo": "Etc/UTC",
            "locale": "en_US",
            "language": "en_US",
            "user_type": "STANDARD",
            "active": true,
            "utcOffset": 0,
            "urls": {
                "rest": format!("{base}/services/data/v{{version}}/"),
                "sobjects": format!("{base}/services/data/v{{version}}/sobjects/"),
                "query": format!("{base}/services/data/v{{version}}/query/"),
                "profile": format!("{base}/{SESSION_USER_ID}"),
                "custom_domain": base,
            },
        }),
    )
}

/// Checks an assertion the way Salesforce does; the error is the `error_description`.
///
/// The audience: a real org accepts only `https://login.salesforce.com`,
/// `https://test.salesforce.com` or an Experience Cloud site URL
/// (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm). Clients
/// written for Salesforce put their login URL there, which for the fake is its own base URL, so
/// that is accepted too, with or without the trailing slash: a leniency of the fake.
fn verify_assertion(state: &SfState, assertion: &str) -> Result<(), &'static str> {
    use jsonwebtoken::errors::ErrorKind as JwtError;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[&state.opts.client_id]);
    let own_url = state.base.as_str();
    validation.set_audience(&[
        state.opts.audience.as_str(),
        own_url,
        own_url.trim_end_matches('/'),
    ]);
    validation.sub = Some(state.opts.username.clone());
    validation.leeway = 30;
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &state.key, &validation)
        .map_err(|err| match err.kind() {
            JwtError::InvalidSignature => "invalid assertion: signature verification failed",
            JwtError::InvalidIssuer => "invalid client credentials",
            JwtError::InvalidAudience => "audience is invalid",
            JwtError::InvalidSubject => "user hasn't approved this consumer",
            JwtError::ExpiredSignature => "expired authorization code",
            JwtError::InvalidAlgorithm => "invalid assertion: algorithm must be RS256",
            JwtError::MissingRequiredClaim(_) => "invalid assertion: a required claim is missing",
            _ => "invalid assertion",
        })?;
    // Salesforce allows at most 3 minutes; give clock skew a little room.
    if data.claims.exp > now_secs() + 300 {
        return Err("invalid assertion: expiration too far in the future");
    }
    Ok(())
}

fn page_size(state: &SfState) -> usize {
    if state.opts.page_size == 0 {
        2000
    } else {
        state.opts.page_size
    }
}

async fn sf_query(
    State(state): State<Arc<SfState>>,
    Path(version): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let soql = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.into_owned());
    let Some(soql) = soql else {
        return json_response(
            400,
            &json!([{"message": "A query string has to be specified", "errorCode": "MALFORMED_QUERY"}]),
        );
    };
    let result = lock(&state.org).query(&soql);
    let mut result = match result {
        Ok(result) => result,
        Err(err) => return json_response(sf_status_for(&err), &sf_error_body(&err)),
    };
    let records = match result.get_mut("records").map(Value::take) {
        Some(Value::Array(records)) => records,
        _ => Vec::new(),
    };
    let size = page_size(&state);
    if records.len() <= size {
        result["records"] = Value::Array(records);
        return json_response(200, &result);
    }
    let total = records.len();
    let first: Vec<Value> = records.iter().take(size).cloned().collect();
    let cursor = {
        let mut control = lock(&state.control);
        let cursor = format!("01g8d{:013}", control.cursors.len() + 1);
        control.cursors.push((cursor.clone(), records));
        cursor
    };
    json_response(
        200,
        &json!({
            "totalSize": total,
            "done": false,
            "nextRecordsUrl": format!("/services/data/{version}/query/{cursor}-{size}"),
            "records": first,
        }),
    )
}

async fn sf_query_more(
    State(state): State<Arc<SfState>>,
    Path((version, locator)): Path<(String, String)>,
) -> Response {
    let invalid = || {
        json_response(
            400,
            &json!([{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]),
        )
    };
    let Some((cursor, offset)) = locator.rsplit_once('-') else {
        return invalid();
    };
    let Ok(offset) = offset.parse::<usize>() else {
        return invalid();
    };
    let size = page_size(&state);
    let page = {
        let control = lock(&state.control);
        control
            .cursors
            .iter()
            .find(|(c, _)| c == cursor)
            .map(|(_, records)| {
                let page: Vec<Value> = records.iter().skip(offset).take(size).cloned().collect();
                (records.len(), page)
            })
    };
    let Some((total, records)) = page else {
        return invalid();
    };
    let mut body = json!({"totalSize": total, "done": offset + size >= total, "records": records});
    if offset + size < total {
        body["nextRecordsUrl"] = json!(format!(
            "/services/data/{version}/query/{cursor}-{}",
            offset + size
        ));
    }
    json_response(200, &body)
}

async fn sf_update(
    State(state): State<Arc<SfState>>,
    Path((_version, sobject, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            return json_response(
                400,
                &json!([{"message": "The request body is not a JSON object", "errorCode": "JSON_PARSER_ERROR"}]),
            );
        }
    };
    let result = lock(&state.org).update(&sobject, &id, &fields);
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => json_response(sf_status_for(&err), &sf_error_body(&err)),
    }
}

/// `GET .../sobjects/<SObject>/describe` from the org's schema (REST API Developer Guide: sObject
/// Describe); an sObject the org does not have answers 404 `NOT_FOUND`, as Salesforce does.
async fn sf_describe(
    State(state): State<Arc<SfState>>,
    Path((_version, sobject)): Path<(String, String)>,
) -> Response {
    let described = lock(&state.org).schema().describe(&sobject);
    match described {
        Some(body) => json_response(200, &body),
        None => sf_not_found().await,
    }
}

// ------------------------------------------------------------------------------------------------
// WHMCS

/// The API credentials the fake WHMCS accepts.
#[derive(Debug, Clone, Default)]
pub struct FakeWhmcsOptions {
    pub identifier: String,
    pub secret: String,
    /// When set, requests must carry this `accesskey` (standing in for the IP allowlist).
    pub access_key: Option<String>,
}

const CREDENTIAL_PARAMS: &[&str] = &["identifier", "secret", "accesskey", "username", "password"];

struct WhState {
    opts: FakeWhmcsOptions,
    base: Url,
    whmcs: Arc<Mutex<FakeWhmcs>>,
    control: Mutex<WhControl>,
}

#[derive(Default)]
struct WhControl {
    fail: VecDeque<Canned>,
    /// Failures for the next requests of one action (e.g. the next `AcceptOrder`).
    fail_actions: Vec<(String, Canned)>,
    delays: VecDeque<Duration>,
    requests: Vec<Vec<(String, String)>>,
}

/// A running fake WHMCS. Dropping it stops the server.
pub struct FakeWhmcsServer {
    state: Arc<WhState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeWhmcsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWhmcsServer")
            .field("url", &self.state.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeWhmcsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves a fake WHMCS on `listener`: `POST /includes/api.php`, credentials checked, then
/// [`FakeWhmcs::handle`].
pub async fn serve_fake_whmcs(
    listener: TcpListener,
    opts: FakeWhmcsOptions,
    whmcs: Arc<Mutex<FakeWhmcs>>,
) -> Result<FakeWhmcsServer, FakeServerError> {
    let base = base_url(listener.local_addr()?)?;
    let state = Arc::new(WhState {
        opts,
        base,
        whmcs,
        control: Mutex::new(WhControl::default()),
    });
    let app = Router::new()
        .route("/includes/api.php", post(whmcs_api))
        .fallback(whmcs_not_found)
        .with_state(Arc::clone(&state));
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(error = %err, "fake WHMCS server stopped");
        }
    });
    Ok(FakeWhmcsServer { state, task })
}

impl FakeWhmcsServer {
    /// The WHMCS root (`http://127.0.0.1:<port>/`).
    pub fn url(&self) -> Url {
        self.state.base.clone()
    }

    /// The installation the server operates on.
    pub fn whmcs(&self) -> Arc<Mutex<FakeWhmcs>> {
        Arc::clone(&self.state.whmcs)
    }

    /// Answers the next `n` requests with `status` and `body` instead of handling them (e.g. a
    /// 429 JSON from a proxy, a 503, or a 200 HTML maintenance page).
    pub fn fail_next(&self, n: usize, status: u16, body: String) {
        lock(&self.state.control)
            .fail
            .extend(std::iter::repeat_n(Canned { status, body }, n));
    }

    /// Answers the next `n` requests of `action` (e.g. `AcceptOrder`) with `status` and `body`,
    /// whatever comes between them.
    pub fn fail_action(&self, action: &str, n: usize, status: u16, body: String) {
        lock(&self.state.control)
            .fail_actions
            .extend(std::iter::repeat_n(
                (action.to_owned(), Canned { status, body }),
                n,
            ));
    }

    /// Holds the next `n` requests for `delay`. The request is still handled afterwards even if
    /// the client gave up, as a real server would: a timed-out AddOrder may have created an order.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        lock(&self.state.control)
            .delays
            .extend(std::iter::repeat_n(delay, n));
    }

    /// The form pairs of every request so far, credentials replaced by `[redacted]`.
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.state.control).requests.clone()
    }
}

async fn whmcs_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body><h1>404 Not Found</h1></body></html>",
    )
        .into_response()
}

async fn whmcs_api(State(state): State<Arc<WhState>>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (delay, canned) = {
        let mut control = lock(&state.control);
        control.requests.push(
            form.iter()
                .map(|(k, v)| {
                    let redact = CREDENTIAL_PARAMS.contains(&k.as_str());
                    (
                        k.clone(),
                        if redact {
                            "[redacted]".into()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect(),
        );
        let action = form
            .iter()
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let for_action = control
            .fail_actions
            .iter()
            .position(|(a, _)| a.eq_ignore_ascii_case(action))
            .map(|at| control.fail_actions.remove(at).1);
        (
            control.delays.pop_front(),
            control.fail.pop_front().or(for_action),
        )
    };
    // Handled in its own task so the work completes even when the client stops waiting.
    let work = tokio::spawn(async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(canned) = canned {
            return canned_response(canned);
        }
        if let Some(refusal) = whmcs_auth(&state.opts, &form) {
            return refusal;
        }
        let answer = lock(&state.whmcs).handle(&form);
        json_response(200, &answer)
    });
    work.await.unwrap_or_else(|_| {
        json_response(
            500,
            &json!({"result": "error", "message": "internal error"}),
        )
    })
}

/// The refusal WHMCS answers for bad credentials, or `None` when they are right.
fn whmcs_auth(opts: &FakeWhmcsOptions, form: &[(String, String)]) -> Option<Response> {
    let field = |names: &[&str]| {
        form.iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };
    let identifier = field(&["identifier", "username"]);
    let secret = field(&["secret", "password"]);
    if identifier != Some(opts.identifier.as_str()) || secret != Some(opts.secret.as_str()) {
        return Some(json_response(
            403,
            &json!({"result": "error", "message": "Authentication Failed"}),
        ));
    }
    if let Some(key) = &opts.access_key
        && field(&["accesskey"]) != Some(key.as_str())
    {
        return Some(json_response(
            403,
            &json!({"result": "error", "message": "Invalid IP 127.0.0.1"}),
        ));
    }
    None
}
