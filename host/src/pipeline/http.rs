//! The host's own HTTP endpoint: `GET /health` (JSON; 200 healthy, 503 degraded), the probes
//! `GET /livez` (the process answers) and `GET /readyz` (it can take work: the store answers, a
//! component is loaded, it is not shutting down), and `GET /metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::listener::Limits;
use super::metrics::Gauges;
use super::{Role, Shared, rfc3339};
use crate::error::chain;
use crate::store::Backend;

/// How long `/health` waits for the store before calling it unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&shared));
    let limits = Limits {
        max_connections: shared.serve.http_max_connections,
        header_read_timeout: shared.serve.header_read_timeout,
    };
    super::listener::serve("http", listener, app, limits, shutdown).await;
}

/// A store ping within [`PROBE_TIMEOUT`]: its latency, or why the store did not answer.
async fn probe_store(shared: &Shared) -> Result<Duration, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, shared.store.ping()).await {
        Ok(Ok(latency)) => Ok(latency),
        Ok(Err(err)) => Err(chain(&err)),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// The problem `/health` and `/readyz` report when the store does not answer.
fn unavailable_problem(shared: &Shared) -> String {
    format!("the {} store is unavailable", shared.store.backend())
}

/// The health report and whether it is healthy.
pub async fn health_report(shared: &Shared) -> (bool, Value) {
    let mut problems: Vec<String> = Vec::new();
    let store = &shared.store;
    let (store_ok, store_json) = match probe_store(shared).await {
        Ok(latency) => (
            true,
            json!({
                "status": "connected",
                "latency_ms": (latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            }),
        ),
        Err(error) => {
            problems.push(unavailable_problem(shared));
            (false, json!({"status": "unavailable", "error": error}))
        }
    };
    let (depth, dead) = if store_ok {
        let channel = shared.channel.as_str();
        let depth = tokio::time::timeout(PROBE_TIMEOUT, store.queue_depth(channel))
            .await
            .ok()
            .and_then(Result::ok);
        let dead = tokio::time::timeout(PROBE_TIMEOUT, store.dead_letter_count(channel))
            .await
            .ok()
            .and_then(Result::ok);
        (depth, dead)
    } else {
        (None, None)
    };

    let status = shared.status();
    let state = status.subscription.as_ref().map(|s| s.borrow().clone());
    let connected = state.as_ref().is_some_and(|s| s.connected);
    let (role, epoch) = match status.role {
        Role::Disabled => ("disabled", None),
        Role::Follower => ("follower", None),
        Role::Leader { epoch } => ("leader", Some(epoch)),
    };
    if matches!(status.role, Role::Leader { .. }) && !connected {
        let why = state
            .as_ref()
            .and_then(|s| s.last_error.as_deref())
            .map(|e| format!(": {}", crate::domain::clip(e, 300)))
            .unwrap_or_default();
        problems.push(format!(
            "this replica holds the lease but its Pub/Sub stream is not connected{why}"
        ));
    }
    if let Some(reason) = &status.lease_lost
        && !matches!(status.role, Role::Leader { .. })
    {
        problems.push(format!(
            "ingestion has stopped: this replica stopped reading the channel ({}) and no \
             replica has taken the subscriber lease since",
            crate::domain::clip(reason, 300)
        ));
    }
    // Every worker busy (none looking for work) and none taking or ending a job for the stall
    // time, while jobs wait: the queue is not moving here.
    if let (Some(waiting), Some(idle)) = (depth.filter(|d| *d > 0), shared.metrics.since_progress())
        && shared.serve.workers > 0
        && idle > shared.serve.queue_stall
    {
        problems.push(format!(
            "the queue is not moving: {waiting} job(s) wait and this replica's workers have \
             neither taken nor ended one for {} s (FULFILLD_QUEUE_STALL_MS = {} ms)",
            idle.as_secs(),
            shared.serve.queue_stall.as_millis()
        ));
    }
    if let Some(err) = &status.store_error
        && store_ok
    {
        // The probe works but a recent write failed; the next success clears it.
        problems.push(format!("a recent store write failed: {err}"));
    }
    if let Some(refused) = &status.refused_shared {
        problems.push(format!(
            "this replica refuses the component version {} that {} activated for the replicas: {}",
            refused.sha256, refused.activated_by, refused.reason
        ));
    }
    let stored_cursor = if store_ok {
        match tokio::time::timeout(PROBE_TIMEOUT, store.cursor(&shared.channel)).await {
            Ok(Ok(cursor)) => cursor.map(|c| c.to_string()),
            Ok(Err(err @ crate::store::StoreError::Corrupt(_))) => {
                // Ingestion stops safely on it (no replica subscribes from a guess), which
                // nothing else on this page would show.
                problems.push(format!(
                    "the stored replay cursor cannot be read, so no replica subscribes: {}; store \
                     a good one with `fulfilld cursor reset <replay id>` or remove it with \
                     `fulfilld cursor clear`",
                    chain(&err)
                ));
                None
            }
            _ => None,
        }
    } else {
        None
    };
    let component = shared.component.load();
    let info = component.info();
    let healthy = problems.is_empty();
    let mut integrations = serde_json::Map::new();
    let store_key = match store.backend() {
        Backend::Redis => "redis",
        Backend::Embedded => "embedded_store",
    };
    integrations.insert(store_key.into(), store_json.clone());
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "environment": shared.serve.environment,
        "version": env!("CARGO_PKG_VERSION"),
        "replica": shared.serve.replica_id,
        "store": {"backend": store.backend(), "status": store_json["status"]},
        "integrations": integrations,
        "subscription": {
            "enabled": shared.events_enabled,
            "channel": shared.channel,
            "role": role,
            "lease_epoch": epoch,
            "connected": connected,
            "last_event_at": state.as_ref().and_then(|s| s.last_event_at).map(rfc3339),
            "latest_replay_id": state.as_ref().and_then(|s| s.latest_replay_id.as_ref()).map(ToString::to_string),
            "cursor": stored_cursor,
            "reconnects": state.as_ref().map_or(0, |s| s.reconnects),
            "last_error": state.as_ref().and_then(|s| s.last_error.clone()),
        },
        "component": {
            "name": info.name,
            "version": info.version,
            "sha256": component.digest(),
            "refused_shared": status.refused_shared.as_ref().map(|refused| json!({
                "sha256": refused.sha256,
                "activated_by": refused.activated_by,
                "reason": refused.reason,
            })),
        },
        "queue": {"depth": depth, "dead_letters": dead},
        "problems": problems,
    });
    (healthy, body)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let (healthy, body) = health_report(&shared).await;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /livez`: the process answers (its HTTP task runs). Nothing else is checked, so an
/// outage of Redis or Salesforce never gets a replica restarted.
async fn livez() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

/// Whether this replica can take work now, and why not: the store answers, a component is
/// loaded, and it is not shutting down.
pub async fn readiness(shared: &Shared) -> (bool, Value) {
    let mut problems = Vec::new();
    let store = match probe_store(shared).await {
        Ok(_) => "reachable".to_owned(),
        Err(error) => {
            problems.push(unavailable_problem(shared));
            format!("unavailable: {error}")
        }
    };
    if shared.stopping() {
        problems.push("this replica is shutting down".to_owned());
    }
    let component = shared.component.load();
    let info = component.info();
    let ready = problems.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "replica": shared.serve.replica_id,
        "store": store,
        "component": format!("{}@{}", info.name, info.version),
        "workers": shared.serve.workers,
        "problems": problems,
    });
    (ready, body)
}

/// `GET /readyz`: 200 when [`readiness`] holds, else 503 with the reasons.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let (ready, body) = readiness(&shared).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.status();
    let state = status.subscription.as_ref().map(|s| s.borrow().clone());
    let channel = shared.channel.as_str();
    let depth = tokio::time::timeout(PROBE_TIMEOUT, shared.store.queue_depth(channel))
        .await
        .ok()
        .and_then(Result::ok);
    let dead = tokio::time::timeout(PROBE_TIMEOUT, shared.store.dead_letter_count(channel))
        .await
        .ok()
        .and_then(Result::ok);
    let gauges = Gauges {
        live_reconnects: state.as_ref().map_or(0, |s| s.reconnects),
        leader: matches!(status.role, Role::Leader { .. }),
        connected: state.as_ref().is_some_and(|s| s.connected),
        queue_depth: depth,
        dead_letters: dead,
        host_calls: shared
            .runtime
            .call_counters()
            .snapshot()
            .into_iter()
            .map(|((op, outcome), n)| (op, outcome, n))
            .collect(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(&gauges),
    )
        .into_response()
}
