//! The admin API (`/admin/...`): deploy, list, show, activate and roll back component versions
//! in a running host. Mounted only when both `FULFILLD_ADMIN_TOKEN` and `FULFILLD_REGISTRY_DIR`
//! are set; every call needs `Authorization: Bearer <FULFILLD_ADMIN_TOKEN>`.
//!
//! A deploy passes the registry's gates (size, world and WIT version, compile, link, `info()`)
//! before anything changes; activation swaps the version new jobs run on atomically, while jobs
//! in flight finish on the version they started with.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use crate::registry::{ComponentMeta, RegistryError};
use crate::runtime::LoadedComponent;
use crate::secret::Secret;

/// The admin routes, or `None` when the admin API is off.
pub(crate) fn routes(shared: &Arc<Shared>) -> Option<Router<Arc<Shared>>> {
    let token = shared.serve.admin_token.clone()?;
    shared.registry.as_ref()?;
    let token = Arc::new(token);
    Some(
        Router::new()
            .route("/admin/components", get(list).post(deploy))
            .route("/admin/components/{sha256}", get(show))
            .route("/admin/components/{sha256}/activate", post(activate))
            .route("/admin/rollback", post(rollback))
            // Bodies one byte over the limit still reach the size gate and its clear message.
            .layer(DefaultBodyLimit::max(
                shared.serve.component_max_bytes.saturating_add(1),
            ))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                let token = Arc::clone(&token);
                async move { authorize(&token, request, next).await }
            })),
    )
}

async fn authorize(token: &Secret, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
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
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err)
}

/// Makes `component` the version new jobs run on.
fn go_live(shared: &Shared, meta: &ComponentMeta, component: LoadedComponent) {
    shared.component.store(Arc::new(component));
    tracing::info!(name = %meta.name, version = %meta.version, sha256 = %meta.sha256, "component live: new jobs run on it");
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

/// `POST /admin/components[?activate=true]` with the `.wasm` as the body; `X-Deployed-By`
/// names who deploys (recorded with the version).
async fn deploy(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(registry) = shared.registry.as_ref() else {
        return no_registry();
    };
    let deployed_by = headers
        .get("x-deployed-by")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or("admin-api")
        .to_owned();
    let meta = match registry.deploy(&body, &deployed_by, "api").await {
        Ok(meta) => meta,
        Err(err) => {
            tracing::warn!(deployed_by = %deployed_by, error = %err, "component deploy rejected; the active version is unchanged");
            return error(StatusCode::UNPROCESSABLE_ENTITY, err);
        }
    };
    if !query.activate {
        return (
            StatusCode::CREATED,
            axum::Json(json!({ "deployed": meta, "active": false })),
        )
            .into_response();
    }
    match registry.activate(&meta.sha256).await {
        Ok((meta, component)) => {
            go_live(&shared, &meta, component);
            (
                StatusCode::CREATED,
                axum::Json(json!({ "deployed": meta, "active": true })),
            )
                .into_response()
        }
        Err(err) => registry_error(err),
    }
}

async fn activate(State(shared): State<Arc<Shared>>, Path(sha256): Path<String>) -> Response {
    let Some(registry) = shared.registry.as_ref() else {
        return no_registry();
    };
    match registry.activate(&sha256).await {
        Ok((meta, component)) => {
            go_live(&shared, &meta, component);
            axum::Json(json!({ "active": meta })).into_response()
        }
        Err(err) => registry_error(err),
    }
}

async fn rollback(State(shared): State<Arc<Shared>>) -> Response {
    let Some(registry) = shared.registry.as_ref() else {
        return no_registry();
    };
    match registry.rollback().await {
        Ok((meta, component)) => {
            go_live(&shared, &meta, component);
            axum::Json(json!({ "active": meta })).into_response()
        }
        Err(err) => registry_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }
}
