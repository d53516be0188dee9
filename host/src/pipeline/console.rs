//! The operators' console and the read side of the admin API, on the admin listener
//! (`FULFILLD_ADMIN_ADDR`): `/console` (one page; its assets are embedded in the binary and it
//! fetches nothing from elsewhere), and the JSON it reads: `GET /admin/overview`,
//! `GET /admin/orders/<Order Id | EventUuid>`, `GET /admin/jobs?state=..`,
//! `GET /admin/dead-letters`. Reads need no token (captured call bodies are shown only with it);
//! the one write here,
//! `POST /admin/dead-letters/<id>/requeue`, needs the admin token like every other write
//! ([`super::admin`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::metrics::RATE_WINDOW;
use crate::error::chain;
use crate::store::{JobState, ListedJob, StoreError};

/// Longest a console read may wait for the store.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// Most jobs or dead letters one listing returns.
const MAX_LIST: usize = 500;

/// What the console's page may load: only its own assets and its own API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn root() -> Redirect {
    Redirect::to("/console")
}

pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(crate) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn store_error(err: &StoreError) -> Response {
    let status = match err {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, chain(err))
}

/// Runs a store read within [`READ_LIMIT`].
async fn bounded<T>(
    read: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Response> {
    match tokio::time::timeout(READ_LIMIT, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(store_error(&err)),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store gave no answer within {} s", READ_LIMIT.as_secs()),
        )),
    }
}

/// `GET /admin/overview`: the health report, the lease holder, rates and the active component.
pub(crate) async fn overview(State(shared): State<Arc<Shared>>) -> Response {
    let (healthy, health) = super::http::health_report(&shared).await;
    let lease = tokio::time::timeout(READ_LIMIT, shared.store.lease(&shared.channel))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let minute = shared.metrics.finished_within(Duration::from_secs(60));
    let five = shared.metrics.finished_within(RATE_WINDOW);
    axum::Json(json!({
        "replica": health["replica"],
        "environment": health["environment"],
        "version": health["version"],
        "health": {
            "status": if healthy { "ok" } else { "degraded" },
            "problems": health["problems"],
        },
        "subscription": health["subscription"],
        "lease": {
            "holder": lease.as_ref().map(|l| l.holder.clone()),
            "epoch": lease.as_ref().map(|l| l.epoch),
            "expires_in_ms": lease.as_ref().map(|l| l.expires_in_ms),
        },
        "queue": health["queue"],
        "rates": {"jobs_last_minute": minute, "jobs_last_5_minutes": five},
        "component": health["component"],
        "store": health["store"],
        "admin": {"writable": true, "registry": shared.registry.is_some()},
    }))
    .into_response()
}

/// `GET /admin/orders/<id>`: every job of the Order (or of one EventUuid), newest first.
/// Captured request and answer bodies only for a caller that gave the token (the middleware has
/// refused a wrong one): without it, the timeline without the bodies.
pub(crate) async fn order(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers.contains_key(header::AUTHORIZATION);
    match bounded(super::journal::order_view(shared.store.as_ref(), &id)).await {
        Ok(Some(mut view)) => {
            if !authorized {
                view.strip_bodies();
            }
            axum::Json(view).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, super::journal::nothing_known(&id)),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/jobs?state=queued|running|failed|dead&limit=N`.
pub(crate) async fn jobs(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let state: JobState = match query.state.as_deref().unwrap_or("queued").parse() {
        Ok(state) => state,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    match bounded(crate::store::list_jobs(
        shared.store.as_ref(),
        &shared.channel,
        state,
        limit,
    ))
    .await
    {
        Ok(jobs) => axum::Json(json!({ "state": state, "jobs": jobs })).into_response(),
        Err(response) => response,
    }
}

/// `GET /admin/dead-letters?limit=N`: newest first, without their payloads.
pub(crate) async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    match bounded(shared.store.recent_dead_letters(&shared.channel, limit)).await {
        Ok(letters) => {
            let listed: Vec<_> = letters
                .iter()
                .map(|letter| {
                    let line = ListedJob::from_dead_letter(letter);
                    json!({
                        "id": letter.id,
                        "event_uuid": letter.event_uuid,
                        "order_id": line.order_id,
                        "replay_id": letter.replay_id.to_string(),
                        "kind": letter.kind,
                        "reason": letter.reason,
                        "deliveries": letter.deliveries,
                        "dead_at_ms": letter.dead_at_ms,
                    })
                })
                .collect();
            axum::Json(json!({ "dead_letters": listed })).into_response()
        }
        Err(response) => response,
    }
}

/// `POST /admin/dead-letters/<id>/requeue` (token): a fresh job, noted in its journal.
pub(crate) async fn requeue(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let requeue = super::journal::requeue(
        shared.store.as_ref(),
        &shared.serve.replica_id,
        &shared.channel,
        &id,
        shared.serve.journal_retention,
    );
    match bounded(requeue).await {
        Ok(job) => {
            tracing::info!(dead_letter = %id, job = %job, "dead letter requeued through the admin API");
            axum::Json(json!({ "requeued": id, "job_id": job })).into_response()
        }
        Err(response) => response,
    }
}
