//! The admin API (`/admin/...`): deploy, list, show, activate and roll back component versions
//! in a running host (with `FULFILLD_REGISTRY_DIR`), requeue dead letters, and the console's
//! reads ([`super::console`]). On when `FULFILLD_ADMIN_TOKEN` is set; every call but a read
//! (`GET`) needs `Authorization: Bearer <FULFILLD_ADMIN_TOKEN>`.
//!
//! It listens on its own address (`FULFILLD_ADMIN_ADDR`, loopback by default), apart from
//! `/health` and `/metrics`, which load balancers and scrapers reach: what can change the live
//! component is not exposed wherever health is. Each request has a time limit and only a few run
//! at once, and the listener bounds its connections and how long request headers may take
//! ([`super::listener`]), so a slow or flooding client cannot hold the deploy path.
//!
//! A deploy passes the registry's gates (size, world and WIT version, compile, link, `info()`)
//! before anything changes; activation swaps the version new jobs run on atomically, while jobs
//! in flight finish on the version they started with.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::deploy::{self, Submission, SubmitError};
use super::listener::Limits;
use super::{Shared, console};
use crate::error::chain;
use crate::registry::RegistryError;
use crate::secret::Secret;

/// Bytes a deploy body may carry beyond the component: its signature and scenario suite.
const SUITE_ALLOWANCE: usize = 4 << 20;

/// Admin requests handled at once; more are answered 503 at once instead of queueing.
const MAX_IN_FLIGHT: usize = 4;

/// Serves the admin API on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router<Arc<Shared>>,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let timeout = shared.serve.admin_request_timeout;
    let limits = Limits {
        max_connections: shared.serve.admin_max_connections,
        header_read_timeout: shared.serve.header_read_timeout,
    };
    let app = router
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let in_flight = Arc::clone(&in_flight);
            async move { bounded(&in_flight, timeout, request, next).await }
        }))
        .with_state(shared);
    super::listener::serve("admin", listener, app, limits, shutdown).await;
}

/// At most [`MAX_IN_FLIGHT`] requests at once, each within `timeout`
/// (`FULFILLD_ADMIN_REQUEST_TIMEOUT_MS`).
async fn bounded(
    in_flight: &tokio::sync::Semaphore,
    timeout: Duration,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = in_flight.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the admin API is busy: {MAX_IN_FLIGHT} requests are running; retry shortly"),
        );
    };
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} ms (FULFILLD_ADMIN_REQUEST_TIMEOUT_MS)",
                timeout.as_millis()
            ),
        ),
    }
}

/// The admin routes (and the console), or `None` when the admin API is off (no
/// `FULFILLD_ADMIN_TOKEN`). Reads (`GET`) need no token; every other method does.
pub(crate) fn routes(shared: &Arc<Shared>) -> Option<Router<Arc<Shared>>> {
    let token = shared.serve.admin_token.clone()?;
    let token = Arc::new(token);
    let loopback = shared.serve.admin_addr.ip().is_loopback();
    Some(
        Router::new()
            .route("/", get(console::root))
            .route("/console", get(console::index))
            .route("/console/app.js", get(console::app_js))
            .route("/console/app.css", get(console::app_css))
            .route("/admin/overview", get(console::overview))
            .route("/admin/orders/{id}", get(console::order))
            .route("/admin/jobs", get(console::jobs))
            .route("/admin/dead-letters", get(console::dead_letters))
            .route("/admin/dead-letters/{id}/requeue", post(console::requeue))
            .route("/admin/components", get(list).post(deploy))
            .route("/admin/components/{sha256}", get(show))
            .route("/admin/components/{sha256}/activate", post(activate))
            .route("/admin/rollback", post(rollback))
            // Bodies one byte over the limit still reach the size gate and its clear message;
            // a multipart body may also carry a signature and a scenario suite.
            .layer(DefaultBodyLimit::max(
                shared
                    .serve
                    .component_max_bytes
                    .saturating_add(SUITE_ALLOWANCE),
            ))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                let token = Arc::clone(&token);
                async move { authorize(&token, loopback, request, next).await }
            })),
    )
}

/// Reads (`GET`, `HEAD`) without credentials pass; anything else, and any request that
/// presents credentials, needs the right token (a wrong token is refused even on a read, so a
/// client with a stale token finds out).
async fn authorize(token: &Secret, loopback: bool, request: Request, next: Next) -> Response {
    // On a loopback listener only loopback names are served: a page elsewhere that rebinds its
    // own host name to 127.0.0.1 (DNS rebinding) cannot read the console through a browser.
    if loopback && !is_loopback_host(request.headers()) {
        tracing::warn!(path = %request.uri().path(), "admin API call refused: Host is not a loopback name");
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this admin listener answers only to localhost, 127.0.0.1 or [::1] (it listens on \
             loopback; FULFILLD_ADMIN_ADDR)",
        );
    }
    let presented = request.headers().get(header::AUTHORIZATION);
    if presented.is_none() && matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let given = presented
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), token.expose().trim().as_bytes()) {
        next.run(request).await
    } else {
        tracing::warn!(path = %request.uri().path(), "admin API call refused: missing or wrong bearer token");
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <FULFILLD_ADMIN_TOKEN>)",
        )
    }
}

/// Whether the request's `Host` names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with or without a port). A request without `Host` (HTTP/1.0) is served.
fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares the sha256 digests of both sides with a branch-free fold, so neither the content nor
/// the length of the configured token leaks through timing.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest as _;
    let a = sha2::Sha256::digest(given);
    let b = sha2::Sha256::digest(expected);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn no_registry() -> Response {
    error(StatusCode::NOT_FOUND, "no component registry configured")
}

fn registry_error(err: RegistryError) -> Response {
    let status = match &err {
        RegistryError::InvalidId(_) => StatusCode::BAD_REQUEST,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::NothingToRollBack => StatusCode::CONFLICT,
        RegistryError::NotSigned { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        // A stored version whose manifest the host's policy no longer allows.
        RegistryError::Load {
            source: crate::runtime::LoadError::Manifest(_),
            ..
        } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, chain(&err))
}

fn submit_error(err: SubmitError) -> Response {
    match err {
        SubmitError::NoRegistry => no_registry(),
        SubmitError::Rejected(err) => error(StatusCode::UNPROCESSABLE_ENTITY, chain(&err)),
        SubmitError::BadRequest(message) => error(StatusCode::BAD_REQUEST, message),
        err @ (SubmitError::File { .. } | SubmitError::Metadata { .. }) => {
            error(StatusCode::BAD_REQUEST, chain(&err))
        }
        SubmitError::Registry(err) => registry_error(err),
        err @ SubmitError::Share(_) => error(StatusCode::SERVICE_UNAVAILABLE, chain(&err)),
    }
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let Some(registry) = shared.registry.as_ref() else {
        return no_registry();
    };
    let state = registry.state().await;
    match registry.list() {
        Ok(components) => axum::Json(json!({
            "active": state.active,
            "history": state.history,
            "running": shared.component.load().digest(),
            "components": components,
        }))
        .into_response(),
        Err(err) => registry_error(err),
    }
}

async fn show(State(shared): State<Arc<Shared>>, Path(sha256): Path<String>) -> Response {
    let Some(registry) = shared.registry.as_ref() else {
        return no_registry();
    };
    match registry.show(&sha256) {
        Ok(meta) => axum::Json(meta).into_response(),
        Err(err) => registry_error(err),
    }
}

#[derive(Deserialize)]
struct DeployQuery {
    /// Make it live right after it passes the gates.
    #[serde(default)]
    activate: bool,
}

/// `POST /admin/components[?activate=true]`. The body is either the `.wasm` itself (with an
/// optional `X-Component-Signature: <base64>` header), or `multipart/form-data` with a
/// `component` part (the `.wasm`), an optional `signature` part and any number of `scenario`
/// parts (the component's own scenario suite, `_*.toml` seed files included; each part's file
/// name is kept). `X-Deployed-By` names who deploys.
async fn deploy(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let deployed_by = header_text(&headers, "x-deployed-by").unwrap_or_else(|| "admin-api".into());
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut submission = Submission {
        deployed_by,
        source: "api".into(),
        activate: query.activate,
        signature: header_text(&headers, "x-component-signature"),
        ..Submission::default()
    };
    if is_multipart {
        let mut multipart = match Multipart::from_request(request, &()).await {
            Ok(multipart) => multipart,
            Err(err) => return error(StatusCode::BAD_REQUEST, err.body_text()),
        };
        if let Err(message) = read_parts(&mut multipart, &mut submission).await {
            return error(StatusCode::BAD_REQUEST, message);
        }
    } else {
        match Bytes::from_request(request, &()).await {
            Ok(body) => submission.wasm = body.to_vec(),
            Err(err) => return error(err.status(), err.body_text()),
        }
    }
    match deploy::submit(&shared, submission).await {
        Ok((meta, active)) => (
            StatusCode::CREATED,
            axum::Json(json!({ "deployed": meta, "active": active })),
        )
            .into_response(),
        Err(err) => submit_error(err),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

async fn read_parts(multipart: &mut Multipart, submission: &mut Submission) -> Result<(), String> {
    let mut component = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("unreadable multipart body: {}", e.body_text()))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("unreadable part `{name}`: {}", e.body_text()))?;
        match name.as_str() {
            "component" => component = Some(bytes.to_vec()),
            "signature" => {
                submission.signature = Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            "scenario" => {
                let file_name =
                    file_name.ok_or_else(|| "a `scenario` part needs a file name".to_owned())?;
                submission.scenarios.push((file_name, bytes.to_vec()));
            }
            other => {
                return Err(format!(
                    "unexpected part `{other}` (expected component, signature, scenario)"
                ));
            }
        }
    }
    submission.wasm = component.ok_or_else(|| "no `component` part".to_owned())?;
    Ok(())
}

/// The parts of a `multipart/form-data` deploy body with content type `content_type`, read the
/// way `POST /admin/components` reads them (`Multipart` and `read_parts`), into a submission with
/// nothing else set. The entry point of the `admin_upload` fuzz target (fuzz/, docs/fuzzing.md);
/// not an API.
#[doc(hidden)]
pub async fn read_upload(content_type: &str, body: Vec<u8>) -> Result<Submission, String> {
    let request = Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| format!("not a request: {e}"))?;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| e.body_text())?;
    let mut submission = Submission::default();
    read_parts(&mut multipart, &mut submission).await?;
    Ok(submission)
}

async fn activate(State(shared): State<Arc<Shared>>, Path(sha256): Path<String>) -> Response {
    match deploy::activate(&shared, &sha256).await {
        Ok(meta) => axum::Json(json!({ "active": meta })).into_response(),
        Err(err) => submit_error(err),
    }
}

async fn rollback(State(shared): State<Arc<Shared>>) -> Response {
    match deploy::rollback(&shared).await {
        Ok(meta) => axum::Json(json!({ "active": meta })).into_response(),
        Err(err) => submit_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_pass_on_a_loopback_listener() {
        use axum::http::HeaderValue;
        let with = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            is_loopback_host(&headers)
        };
        for host in [
            "localhost",
            "localhost:8081",
            "127.0.0.1:8081",
            "127.0.0.2",
            "[::1]:8081",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(with(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8081",
            "10.0.0.5:8081",
            "localhost.attacker.example",
            "[2001:db8::1]:8081",
        ] {
            assert!(!with(host), "{host}");
        }
        assert!(is_loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }
}
