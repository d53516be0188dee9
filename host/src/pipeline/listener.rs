//! Serves a router on a TCP listener with connection-level bounds, for both of the host's
//! listeners (`/health` + `/metrics`, and the admin API):
//!
//! - at most `max_connections` connections are open at once; a connection beyond that is closed
//!   as soon as it is accepted (the client sees it closed without an answer and retries), so a
//!   flood costs neither a task nor a buffer per connection;
//! - a connection that has not sent a request's complete headers within `header_read_timeout`
//!   is closed (slowloris), and so is one idle that long between requests.
//!
//! HTTP/1.1 only: no client of these endpoints speaks HTTP/2 without TLS, and HTTP/1's header
//! deadline starts the moment a connection is accepted.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long accepting pauses after the listener fails (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Per-listener connection bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` until `shutdown`; then stops accepting, lets the
/// requests in flight finish and returns. `name` names the listener in logs.
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        // Reap finished connection tasks so the set does not grow with the connections served.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(listener = name, error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                listener = name,
                %peer,
                max_connections = limits.max_connections,
                "connection closed: the listener's connection limit is reached"
            );
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => Some(result),
                () = stopping => None,
            };
            let result = match result {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                // A client that timed out, reset or sent garbage: its business, not an error here.
                tracing::debug!(listener = name, %peer, error = %err, "connection ended");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
