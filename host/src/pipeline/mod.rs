//! `fulfilld serve`: the host's main job. The subscriber (one leader per channel across replicas)
//! moves Salesforce's events into the store; workers on every replica run the active component on
//! each job; `/health` and `/metrics` report on both.
//!
//! ```text
//! Pub/Sub stream -> ingest (lease, fenced) -> store: jobs (dedupe by EventUuid), dead letters, cursor
//!                                              store -> workers -> component -> record + ack
//! ```

mod admin;
mod console;
pub mod deploy;
pub mod failed;
pub mod http;
mod ingest;
pub mod journal;
mod listener;
pub mod metrics;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ServeConfig, StoreConfig};
use crate::domain::ReplayId;
use crate::holds::SharedHolds;
use crate::pubsub::{Fallback, SessionSource, SubscriptionState};
use crate::registry::Registry;
use crate::registry::gates::Gates;
use crate::runtime::{LoadedComponent, Runtime};
use crate::services::Services;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{SharedStore, StoreError};

#[doc(hidden)]
pub use admin::read_upload;
pub use ingest::OptionsFor;
pub use metrics::Metrics;

/// This replica's part in reading the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `SF_EVENTS_ENABLED=false`: workers only.
    Disabled,
    /// Waiting for the lease (another replica reads, or none can right now).
    Follower,
    /// Holding the lease with this fencing epoch.
    Leader { epoch: u64 },
}

/// What the subscriber side reports, for `/health`.
#[derive(Debug, Clone)]
pub struct SubscriberStatus {
    pub role: Role,
    pub subscription: Option<watch::Receiver<SubscriptionState>>,
    /// The last cursor this replica wrote.
    pub cursor: Option<ReplayId>,
    /// The last store error seen by the subscriber or workers, cleared on success.
    pub store_error: Option<String>,
    /// The version the replicas share, when this replica refused to run it (e.g. under
    /// `FULFILLD_REQUIRE_SIGNED` its signature does not verify); cleared once it follows again.
    pub refused_shared: Option<RefusedVersion>,
    /// Why this replica last stopped reading the channel, while no replica has taken the lease
    /// since (cleared when this or another replica holds it again).
    pub lease_lost: Option<String>,
}

/// A shared component version this replica would not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedVersion {
    pub sha256: String,
    /// The replica that activated it.
    pub activated_by: String,
    pub reason: String,
}

/// State shared by the subscriber, the workers and the HTTP endpoint.
pub struct Shared {
    pub channel: String,
    pub fallback: Fallback,
    pub serve: ServeConfig,
    pub store: SharedStore,
    /// The store's holds, for the components' `holds` import.
    pub holds: SharedHolds,
    pub runtime: Runtime,
    pub services: Arc<dyn Services>,
    /// The version new jobs run on; swapped atomically (a job keeps the version it started
    /// with).
    pub component: ArcSwap<LoadedComponent>,
    /// The component registry, when `FULFILLD_REGISTRY_DIR` is set.
    pub registry: Option<Arc<Registry>>,
    pub metrics: Arc<Metrics>,
    pub events_enabled: bool,
    status: Mutex<SubscriberStatus>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn status_mut(&self) -> std::sync::MutexGuard<'_, SubscriberStatus> {
        match self.status.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A snapshot of the subscriber side.
    pub fn status(&self) -> SubscriberStatus {
        self.status_mut().clone()
    }

    pub(crate) fn refused_shared(&self) -> Option<RefusedVersion> {
        self.status_mut().refused_shared.clone()
    }

    pub(crate) fn set_refused_shared(&self, refused: Option<RefusedVersion>) {
        self.status_mut().refused_shared = refused;
    }

    fn set_role(&self, role: Role) {
        self.status_mut().role = role;
    }

    /// Records why this replica stopped reading the channel (`None` once a replica reads it).
    fn set_lease_lost(&self, reason: Option<String>) {
        self.status_mut().lease_lost = reason;
    }

    fn attach_subscription(&self, state: watch::Receiver<SubscriptionState>) {
        self.status_mut().subscription = Some(state);
    }

    fn detach_subscription(&self) {
        self.status_mut().subscription = None;
    }

    fn set_cursor(&self, cursor: ReplayId) {
        self.status_mut().cursor = Some(cursor);
    }

    fn store_ok(&self) {
        self.status_mut().store_error = None;
    }

    fn store_failed(&self, err: &StoreError) {
        if matches!(err, StoreError::Unavailable(_)) {
            self.status_mut().store_error = Some(crate::error::chain(err));
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Opens the configured store: Redis when `REDIS_URL` is set, else the embedded one.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<SharedStore> {
    match config {
        StoreConfig::Redis {
            url,
            namespace,
            topology,
            tls,
        } => {
            let target = crate::store::redis::RedisTarget {
                url: url.expose().to_owned(),
                topology: topology.clone(),
                tls: tls.clone(),
            };
            let store = RedisStore::connect_to(&target, namespace)
                .await
                .context("REDIS_URL: cannot use the Redis store")?;
            Ok(Arc::new(store))
        }
        StoreConfig::Embedded { path } => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
                .await
                .context("opening the embedded store")?
                .context("FULFILLD_STATE_DIR: cannot open the embedded store")?;
            Ok(Arc::new(store))
        }
    }
}

/// Opens the registry and picks the version to start on. A `FULFILLD_COMPONENT` file the
/// registry has never seen counts as a deploy and goes live (it passes the same gates as any
/// deploy); otherwise the registry's active version wins, so a version deployed or rolled back
/// through the admin API survives a restart.
async fn component_from_registry(
    dir: &std::path::Path,
    runtime: &Runtime,
    serve: &ServeConfig,
    path: &std::path::Path,
    wasm: &[u8],
) -> anyhow::Result<(LoadedComponent, Registry, bool)> {
    let gates = Gates {
        max_size: serve.component_max_bytes,
        scenarios: Vec::new(),
        signatures: serve.signatures.clone(),
    };
    let registry = Registry::open(dir, runtime.clone(), gates)
        .await
        .with_context(|| format!("FULFILLD_REGISTRY_DIR: cannot open {}", dir.display()))?;
    let sha = crate::registry::sha256_hex(wasm);
    if !registry.contains(&sha) {
        // A signature next to the file (`<file>.sig`) goes through the signature gate.
        let signature = crate::registry::signature::shipped_with(path);
        let extras = crate::registry::Extras {
            signature: signature.as_deref(),
            scenarios: None,
        };
        let meta = registry
            .deploy_with(
                wasm,
                extras,
                "FULFILLD_COMPONENT",
                &path.display().to_string(),
            )
            .await
            .with_context(|| format!("FULFILLD_COMPONENT: {} was refused", path.display()))?;
        let (_, component) = registry
            .activate(&meta.sha256)
            .await
            .context("FULFILLD_COMPONENT: cannot activate")?;
        return Ok((component, registry, true));
    }
    match registry
        .load_active()
        .await
        .context("FULFILLD_REGISTRY_DIR: cannot load the active version")?
    {
        Some((meta, component, cache)) => {
            tracing::info!(name = %meta.name, version = %meta.version, sha256 = %meta.sha256, cache = ?cache, "starting on the registry's active component");
            Ok((component, registry, false))
        }
        None => {
            let (_, component) = registry
                .activate(&sha)
                .await
                .context("FULFILLD_COMPONENT: cannot activate")?;
            Ok((component, registry, true))
        }
    }
}

/// A running host. [`Host::shutdown`] stops it gracefully.
pub struct Host {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    ingest: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// The deploy directory and shared-version watcher (with a registry).
    watcher: Option<JoinHandle<()>>,
    http: JoinHandle<()>,
    admin_addr: Option<SocketAddr>,
    admin: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Everything [`Host::start`] needs beyond the configuration; tests swap parts.
pub struct HostParts {
    pub store: SharedStore,
    pub runtime: Runtime,
    pub component: LoadedComponent,
    pub services: Arc<dyn Services>,
    pub session: Arc<dyn SessionSource>,
    /// The registry `component` came from, if any: enables the admin API's deploys.
    pub registry: Option<Registry>,
    /// `component` was deployed from `FULFILLD_COMPONENT` at this start-up (a file the registry
    /// had not seen): it becomes the replicas' shared active version instead of following it.
    pub fresh_component: bool,
}

impl Host {
    /// Builds every part from the configuration and starts. The component comes from
    /// `FULFILLD_COMPONENT`.
    pub async fn from_config(config: &Config) -> anyhow::Result<Host> {
        let path = config.component.clone().ok_or_else(|| {
            anyhow::anyhow!("FULFILLD_COMPONENT: is required by `serve` but not set")
        })?;
        let live = config.live_services()?;
        // The subscriber authenticates with the same Salesforce session the services use.
        let session: Arc<dyn SessionSource> = Arc::new(live.salesforce().clone());
        let services: Arc<dyn Services> = Arc::new(live);
        let runtime = Runtime::new(config.runtime.clone())?;
        let wasm = std::fs::read(&path)
            .with_context(|| format!("FULFILLD_COMPONENT: cannot read {}", path.display()))?;
        let (component, registry, fresh_component) = match &config.serve.registry_dir {
            None => {
                // Without a registry there is no gate: FULFILLD_REQUIRE_SIGNED is checked here,
                // against `<file>.sig`, so it holds on this way into the live slot too.
                config
                    .serve
                    .signatures
                    .check(
                        &wasm,
                        crate::registry::signature::shipped_with(&path).as_deref(),
                    )
                    .map_err(|reason| {
                        anyhow::anyhow!(
                            "FULFILLD_COMPONENT: {} was refused: {reason}",
                            path.display()
                        )
                    })?;
                let component = runtime.load(&wasm).await.with_context(|| {
                    format!("FULFILLD_COMPONENT: cannot load {}", path.display())
                })?;
                (component, None, false)
            }
            Some(dir) => {
                let (component, registry, fresh) =
                    component_from_registry(dir, &runtime, &config.serve, &path, &wasm).await?;
                (component, Some(registry), fresh)
            }
        };
        let store = open_store(&config.serve.store).await?;
        Host::start(
            config,
            HostParts {
                store,
                runtime,
                component,
                services,
                session,
                registry,
                fresh_component,
            },
        )
        .await
    }

    /// Starts the HTTP endpoint, the workers and (when events are enabled) the subscriber.
    pub async fn start(config: &Config, parts: HostParts) -> anyhow::Result<Host> {
        let serve = config.serve.clone();
        let listener = tokio::net::TcpListener::bind(serve.http_addr)
            .await
            .with_context(|| format!("FULFILLD_HTTP_ADDR: cannot listen on {}", serve.http_addr))?;
        let http_addr = listener
            .local_addr()
            .context("cannot read the HTTP endpoint's address")?;
        let info = parts.component.info().clone();
        let shared = Arc::new(Shared {
            channel: config.channel.clone(),
            fallback: config.replay,
            serve: serve.clone(),
            holds: Arc::clone(&parts.store) as SharedHolds,
            store: parts.store,
            runtime: parts.runtime,
            services: parts.services,
            component: ArcSwap::from_pointee(parts.component),
            registry: parts.registry.map(Arc::new),
            metrics: Arc::new(Metrics::default()),
            events_enabled: config.events_enabled,
            status: Mutex::new(SubscriberStatus {
                role: if config.events_enabled {
                    Role::Follower
                } else {
                    Role::Disabled
                },
                subscription: None,
                cursor: None,
                store_error: None,
                refused_shared: None,
                lease_lost: None,
            }),
            stopping: AtomicBool::new(false),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Start on the version the replicas share (Redis), before any job runs; or, when
        // FULFILLD_COMPONENT was deployed at this start-up, make it the shared version.
        if let Some(registry) = shared.registry.as_deref() {
            if parts.fresh_component {
                let published = match registry.show(shared.component.load().digest()) {
                    Ok(meta) => deploy::publish_active(&shared, registry, &meta).await,
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = published {
                    tracing::warn!(error = %crate::error::chain(&err), "FULFILLD_COMPONENT is active here but not recorded for the other replicas");
                }
            } else {
                deploy::follow_shared(&shared).await;
            }
        }
        let watcher = shared
            .registry
            .is_some()
            .then(|| tokio::spawn(deploy::watch(Arc::clone(&shared), shutdown_rx.clone())));
        let http = tokio::spawn(http::serve(
            listener,
            Arc::clone(&shared),
            shutdown_rx.clone(),
        ));
        let (admin_addr, admin) = match admin::routes(&shared) {
            Some(router) => {
                let listener = tokio::net::TcpListener::bind(serve.admin_addr)
                    .await
                    .with_context(|| {
                        format!("FULFILLD_ADMIN_ADDR: cannot listen on {}", serve.admin_addr)
                    })?;
                let addr = listener
                    .local_addr()
                    .context("cannot read the admin API's address")?;
                let task = tokio::spawn(admin::serve(
                    listener,
                    router,
                    Arc::clone(&shared),
                    shutdown_rx.clone(),
                ));
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let workers = (0..serve.workers)
            .map(|i| tokio::spawn(worker::run(Arc::clone(&shared), i, shutdown_rx.clone())))
            .collect();
        let ingest = if config.events_enabled {
            let cfg = config.clone();
            let options_for: OptionsFor = Arc::new(move |start| {
                let mut opts = cfg.subscriber_options(None);
                opts.start = start;
                opts
            });
            Some(tokio::spawn(
                ingest::Ingestor {
                    shared: Arc::clone(&shared),
                    options_for,
                    session: parts.session,
                    shutdown: shutdown_rx,
                }
                .run(),
            ))
        } else {
            None
        };
        tracing::info!(
            channel = %config.channel,
            events_enabled = config.events_enabled,
            store = %shared.store.backend(),
            workers = serve.workers,
            http = %http_addr,
            admin = %admin_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
            component = %format!("{}@{}", info.name, info.version),
            replica = %serve.replica_id,
            "fulfilld serving"
        );
        Ok(Host {
            shared,
            http_addr,
            admin_addr,
            shutdown,
            ingest,
            workers,
            watcher,
            http,
            admin,
        })
    }

    /// The address `/health` and `/metrics` are served on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the admin API listens on; `None` when it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops reading the stream (the lease is released), lets jobs in flight finish within the
    /// shutdown grace (the rest are reclaimed by another replica or after a restart), then stops
    /// the HTTP endpoint.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: no new events or jobs");
        self.shared.stopping.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        if let Some(ingest) = self.ingest.take() {
            let _ = ingest.await;
        }
        let grace = self.shared.serve.shutdown_grace;
        let workers = std::mem::take(&mut self.workers);
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(workers))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "jobs still running after the shutdown grace; they will be reclaimed"
            );
            for abort in aborts {
                abort.abort();
            }
        }
        let _ = (&mut self.http).await;
        if let Some(admin) = &mut self.admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(ingest) = &self.ingest {
            ingest.abort();
        }
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        for worker in &self.workers {
            worker.abort();
        }
        self.http.abort();
        if let Some(admin) = &self.admin {
            admin.abort();
        }
    }
}

/// Seconds since the Unix epoch as RFC 3339 text, for `/health`.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Milliseconds since the Unix epoch as RFC 3339 text.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(at), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
