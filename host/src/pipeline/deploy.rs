//! One code path for every way a component version goes live: the admin API (and the CLI on
//! top of it), the watched deploy directory, a new `FULFILLD_COMPONENT` at start-up, and a
//! replica following the version another replica activated (Redis).
//!
//! Order of a deploy: the registry's gates (size, signature, world and WIT version, compile,
//! link, `info()`, scenario suites), then the version is stored and, with Redis, published for
//! the other replicas. Activation swaps the version new jobs run on (one atomic pointer store;
//! jobs in flight keep theirs) and records it as the replicas' shared active version, which every
//! replica polls every `FULFILLD_COMPONENT_POLL_MS`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::Shared;
use crate::error::chain;
use crate::registry::{ComponentMeta, DeployError, Extras, Registry, RegistryError};
use crate::runtime::LoadedComponent;
use crate::store::{ComponentShare, SharedActive, SharedComponent, StoreError};

/// A version submitted for deployment.
#[derive(Debug, Default)]
pub struct Submission {
    pub wasm: Vec<u8>,
    /// Base64 ed25519 signature of `wasm`.
    pub signature: Option<String>,
    /// The component's own scenario suite: (file name, contents); `_*.toml` seed files included.
    pub scenarios: Vec<(String, Vec<u8>)>,
    pub deployed_by: String,
    pub source: String,
    /// Make it live once it passes the gates.
    pub activate: bool,
}

/// Why a submission or an activation did not go through. Show it with [`crate::error::chain`]:
/// the variants wrapping another error leave it to `source()`.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no component registry configured (FULFILLD_REGISTRY_DIR)")]
    NoRegistry,
    /// The gates refused it; nothing changed.
    #[error(transparent)]
    Rejected(#[from] DeployError),
    #[error("{0}")]
    BadRequest(String),
    /// A file of the submission could not be read or written (`context` names it).
    #[error("{context}")]
    File {
        context: String,
        source: std::io::Error,
    },
    /// A version's metadata could not be encoded or decoded (`context` says which).
    #[error("{context}")]
    Metadata {
        context: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store could not be reached to publish or record a version for the other replicas.
    /// An activation went live on this replica only; it returns to the replicas' shared version
    /// once the store answers again.
    ///
    /// The store's error sits inside the sentence, so the message tells its whole chain itself.
    #[error(
        "the store could not record this for the other replicas: {}; an activation is live on \
         this replica only until the store answers again: then activate it again",
        crate::error::chain(.0)
    )]
    Share(StoreError),
}

fn registry(shared: &Shared) -> Result<&Registry, SubmitError> {
    shared.registry.as_deref().ok_or(SubmitError::NoRegistry)
}

/// Makes `component` the version new jobs run on.
fn go_live(shared: &Shared, meta: &ComponentMeta, component: LoadedComponent) {
    shared.component.store(Arc::new(component));
    tracing::info!(name = %meta.name, version = %meta.version, sha256 = %meta.sha256, "component live: new jobs run on it");
}

/// Runs the gates on a submission and stores it; activates it when asked. Returns the metadata
/// and whether it is now active.
pub async fn submit(
    shared: &Shared,
    submission: Submission,
) -> Result<(ComponentMeta, bool), SubmitError> {
    let registry = registry(shared)?;
    let suite = ShippedSuite::write(registry, &submission.scenarios)?;
    let extras = Extras {
        signature: submission.signature.as_deref(),
        scenarios: suite.as_ref().map(ShippedSuite::dir),
    };
    let deployed = registry
        .deploy_with(
            &submission.wasm,
            extras,
            &submission.deployed_by,
            &submission.source,
        )
        .await;
    drop(suite);
    let meta = match deployed {
        Ok(meta) => meta,
        Err(err) => {
            tracing::warn!(deployed_by = %submission.deployed_by, source = %submission.source, error = %chain(&err), "component deploy rejected; the active version is unchanged");
            return Err(err.into());
        }
    };
    if !submission.activate {
        if let Err(err) = share_version(shared, registry, &meta).await {
            tracing::warn!(sha256 = %meta.sha256, error = %chain(&err), "deployed here, but not published for the other replicas; activating it will try again");
        }
        return Ok((meta, false));
    }
    let meta = activate(shared, &meta.sha256).await?;
    Ok((meta, true))
}

/// Activates deployed version `sha256` here and records it for every replica.
pub async fn activate(shared: &Shared, sha256: &str) -> Result<ComponentMeta, SubmitError> {
    let registry = registry(shared)?;
    let (meta, component) = registry.activate(sha256).await?;
    go_live(shared, &meta, component);
    publish_active(shared, registry, &meta).await?;
    Ok(meta)
}

/// Returns to the previously active version here and records it for every replica.
pub async fn rollback(shared: &Shared) -> Result<ComponentMeta, SubmitError> {
    let registry = registry(shared)?;
    let (meta, component) = registry.rollback().await?;
    go_live(shared, &meta, component);
    publish_active(shared, registry, &meta).await?;
    Ok(meta)
}

/// Publishes a version's bytes for the other replicas (no-op on the embedded store).
async fn share_version(
    shared: &Shared,
    registry: &Registry,
    meta: &ComponentMeta,
) -> Result<(), SubmitError> {
    let Some(share) = shared.store.component_share() else {
        return Ok(());
    };
    let (wasm, signature) = registry.bytes(&meta.sha256)?;
    let meta_json = serde_json::to_string(meta).map_err(|source| SubmitError::Metadata {
        context: "cannot encode the metadata".into(),
        source,
    })?;
    let component = SharedComponent {
        sha256: meta.sha256.clone(),
        meta_json,
        wasm,
        signature,
    };
    share
        .share_component(&component)
        .await
        .map_err(SubmitError::Share)
}

/// Publishes `meta`'s bytes and makes it the replicas' shared active version.
pub async fn publish_active(
    shared: &Shared,
    registry: &Registry,
    meta: &ComponentMeta,
) -> Result<(), SubmitError> {
    let Some(share) = shared.store.component_share() else {
        return Ok(());
    };
    share_version(shared, registry, meta).await?;
    let active = SharedActive {
        sha256: meta.sha256.clone(),
        by: shared.serve.replica_id.clone(),
        at_ms: crate::domain::now_ms(),
    };
    share
        .set_shared_active(&active)
        .await
        .map_err(SubmitError::Share)?;
    tracing::info!(sha256 = %meta.sha256, "component recorded as the active version for every replica");
    Ok(())
}

/// A shipped scenario suite, written to a private directory for the length of the deploy.
struct ShippedSuite {
    dir: PathBuf,
}

impl ShippedSuite {
    fn write(
        registry: &Registry,
        files: &[(String, Vec<u8>)],
    ) -> Result<Option<ShippedSuite>, SubmitError> {
        if files.is_empty() {
            return Ok(None);
        }
        let dir = registry
            .dir()
            .join("incoming")
            .join(crate::domain::random_uuid());
        let suite = ShippedSuite { dir };
        std::fs::create_dir_all(&suite.dir).map_err(|source| SubmitError::File {
            context: format!("cannot create {}", suite.dir.display()),
            source,
        })?;
        for (name, contents) in files {
            let valid = name.ends_with(".toml")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !name.starts_with('.');
            if !valid {
                return Err(SubmitError::BadRequest(format!(
                    "scenario file name `{name}`: expected `<name>.toml` (letters, digits, `._-`)"
                )));
            }
            let path = suite.dir.join(name);
            std::fs::write(&path, contents).map_err(|source| SubmitError::File {
                context: format!("cannot write {}", path.display()),
                source,
            })?;
        }
        Ok(Some(suite))
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ShippedSuite {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %error, "cannot remove a shipped scenario suite");
        }
    }
}

/// Follows the replicas' shared active version: when another replica activated a version this
/// one does not run, fetch it (if needed), pass it through the gates and make it live here.
/// A version that fails here is reported once (log and `/health`) and not retried until the
/// shared version changes.
pub(crate) async fn follow_shared(shared: &Shared) {
    let Some(registry) = shared.registry.as_deref() else {
        return;
    };
    let Some(share) = shared.store.component_share() else {
        return;
    };
    let active = match share.shared_active().await {
        Ok(Some(active)) => active,
        Ok(None) => return,
        Err(err) => {
            tracing::debug!(error = %chain(&err), "cannot read the shared active component; retrying");
            return;
        }
    };
    let refused = shared.refused_shared();
    if active.sha256 == shared.component.load().digest() {
        // In step with the replicas (a refused version may since have been replaced).
        if refused.is_some() {
            shared.set_refused_shared(None);
        }
        return;
    }
    if refused.is_some_and(|refused| refused.sha256 == active.sha256) {
        return;
    }
    match adopt(shared, share, registry, &active).await {
        Ok(meta) => {
            shared.set_refused_shared(None);
            tracing::info!(name = %meta.name, version = %meta.version, sha256 = %meta.sha256, activated_by = %active.by, "following the component version another replica activated");
        }
        Err(err) => {
            let reason = chain(&err);
            tracing::error!(sha256 = %active.sha256, activated_by = %active.by, error = %reason, "cannot follow the component version another replica activated; this replica keeps its version");
            shared.set_refused_shared(Some(super::RefusedVersion {
                sha256: active.sha256,
                activated_by: active.by,
                reason,
            }));
        }
    }
}

async fn adopt(
    shared: &Shared,
    share: &dyn ComponentShare,
    registry: &Registry,
    active: &SharedActive,
) -> Result<ComponentMeta, SubmitError> {
    if !registry.contains(&active.sha256) {
        let component = share
            .shared_component(&active.sha256)
            .await
            .map_err(SubmitError::Share)?
            .ok_or_else(|| {
                SubmitError::BadRequest(format!("component {} is not in the store", active.sha256))
            })?;
        let meta: ComponentMeta =
            serde_json::from_str(&component.meta_json).map_err(|source| SubmitError::Metadata {
                context: format!("component {}: bad metadata", active.sha256),
                source,
            })?;
        let extras = Extras {
            signature: component.signature.as_deref(),
            scenarios: None,
        };
        let source = format!("replica {}", active.by);
        let stored = registry
            .deploy_with(&component.wasm, extras, &meta.deployed_by, &source)
            .await?;
        if stored.sha256 != active.sha256 {
            return Err(SubmitError::BadRequest(format!(
                "component {} in the store hashes to {}",
                active.sha256, stored.sha256
            )));
        }
    }
    let (meta, component) = registry.activate(&active.sha256).await?;
    go_live(shared, &meta, component);
    Ok(meta)
}

/// The watched deploy directory (`FULFILLD_DEPLOY_DIR`): a `<name>.wasm` file, with an optional
/// `<name>.wasm.sig` signature and `<name>.scenarios/` suite next to it, is deployed and
/// activated once its size and modification time stay the same for one poll (so a file still
/// being copied is not taken). Then it moves to `deployed/` or, with a `.error` file saying why,
/// to `rejected/`.
#[derive(Debug, Default)]
pub(crate) struct DeployDir {
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
}

impl DeployDir {
    pub(crate) async fn scan(&mut self, shared: &Shared, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), error = %error, "cannot read the deploy directory");
                return;
            }
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() || path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            present.push(path.clone());
            let stamp = (metadata.len(), metadata.modified().ok());
            if self.seen.insert(path.clone(), stamp) == Some(stamp) {
                self.seen.remove(&path);
                deploy_file(shared, dir, &path).await;
            }
        }
        self.seen.retain(|path, _| present.contains(path));
    }
}

async fn deploy_file(shared: &Shared, dir: &Path, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let signature_path = dir.join(format!("{name}.sig"));
    let stem = name.trim_end_matches(".wasm");
    let suite_dir = dir.join(format!("{stem}.scenarios"));
    let result = match read_submission(path, &signature_path, &suite_dir) {
        Ok(submission) => submit(shared, submission).await.map(|(meta, _)| meta),
        Err(err) => Err(err),
    };
    let stamp = crate::domain::now_ms();
    let (target, outcome) = match &result {
        Ok(meta) => {
            tracing::info!(file = %path.display(), sha256 = %meta.sha256, "deploy directory: component deployed and active");
            ("deployed", None)
        }
        Err(err) => {
            let reason = chain(err);
            tracing::error!(file = %path.display(), error = %reason, "deploy directory: component rejected; the active version is unchanged");
            ("rejected", Some(reason))
        }
    };
    let target_dir = dir.join(target);
    if let Err(error) = std::fs::create_dir_all(&target_dir) {
        tracing::error!(dir = %target_dir.display(), error = %error, "deploy directory: cannot create; the file stays where it is");
        return;
    }
    let moved_name = format!("{stamp}-{name}");
    for (from, to) in [
        (path.to_path_buf(), target_dir.join(&moved_name)),
        (signature_path, target_dir.join(format!("{moved_name}.sig"))),
        (
            suite_dir,
            target_dir.join(format!("{stamp}-{stem}.scenarios")),
        ),
    ] {
        if from.exists()
            && let Err(error) = std::fs::rename(&from, &to)
        {
            tracing::error!(from = %from.display(), to = %to.display(), error = %error, "deploy directory: cannot move");
        }
    }
    if let Some(message) = outcome {
        let error_path = target_dir.join(format!("{moved_name}.error"));
        if let Err(error) = std::fs::write(&error_path, format!("{message}\n")) {
            tracing::error!(file = %error_path.display(), error = %error, "deploy directory: cannot write the reason");
        }
    }
}

fn read_submission(
    path: &Path,
    signature_path: &Path,
    suite_dir: &Path,
) -> Result<Submission, SubmitError> {
    let unreadable = |path: &Path| {
        let context = format!("cannot read {}", path.display());
        move |source| SubmitError::File { context, source }
    };
    let wasm = std::fs::read(path).map_err(unreadable(path))?;
    let signature = match std::fs::read_to_string(signature_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(unreadable(signature_path)(e)),
    };
    let mut scenarios = Vec::new();
    if suite_dir.is_dir() {
        let entries = std::fs::read_dir(suite_dir).map_err(unreadable(suite_dir))?;
        for entry in entries.flatten() {
            let file = entry.path();
            if file.extension().is_some_and(|e| e == "toml") {
                // `file_type` does not follow links: a suite file must be the file itself, so a
                // link cannot pull a host file into the deploy.
                if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
                    return Err(SubmitError::BadRequest(format!(
                        "scenario file {} is not a plain file (links are refused)",
                        entry.file_name().to_string_lossy()
                    )));
                }
                let contents = std::fs::read(&file).map_err(unreadable(&file))?;
                scenarios.push((entry.file_name().to_string_lossy().into_owned(), contents));
            }
        }
    }
    Ok(Submission {
        wasm,
        signature,
        scenarios,
        deployed_by: "deploy-dir".into(),
        source: path.display().to_string(),
        activate: true,
    })
}

/// The background task: the deploy directory and the shared active version, every poll.
pub(crate) async fn watch(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut dir_state = DeployDir::default();
    let mut tick = tokio::time::interval(shared.serve.component_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        follow_shared(&shared).await;
        if let Some(dir) = shared.serve.deploy_dir.clone() {
            dir_state.scan(&shared, &dir).await;
        }
    }
}
