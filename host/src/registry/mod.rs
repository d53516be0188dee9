//! The component registry: a content-addressed store of deployed component versions in one
//! directory, which of them is active, and the previously active ones for rollback.
//!
//! ```text
//! <dir>/components/<sha256>.wasm   the deployed bytes, named by their sha256
//! <dir>/components/<sha256>.json   ComponentMeta (written after the .wasm: its presence means a
//!                                  complete deployment)
//! <dir>/active.json                ActiveState: the active sha256 and the history, newest first
//! <dir>/cache/<sha256>-<engine>.cwasm  compiled artifacts (Runtime::load_cached)
//! ```
//!
//! Deploying runs the [`Gates`] and stores the version without activating it; activating makes it
//! the one `load_active` returns and pushes the previous one onto the history. The history keeps
//! at most `keep_previous` versions; a version falling off it is deleted (bytes, metadata and
//! artifacts) unless it is active again. Versions deployed but never activated are kept until an
//! operator removes them. Every file is written atomically (temporary file + rename), so a crash
//! leaves the old state or the new one.
//!
//! This slice does not swap the running host's component: callers take the `LoadedComponent`
//! that `activate`/`rollback`/`load_active` return and install it.

pub mod gates;
pub mod signature;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::runtime::cache::write_atomic;
use crate::runtime::check::CheckError;
use crate::runtime::{CacheUse, LoadError, LoadedComponent, Runtime};
pub use gates::{Extras, Gates};
use signature::SignatureCheck;

/// Previously active versions kept for rollback by default.
pub const DEFAULT_KEEP_PREVIOUS: usize = 5;

/// What the registry knows about one deployed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentMeta {
    /// sha256 of the `.wasm` bytes, lowercase hex: the version's identity.
    pub sha256: String,
    /// Name and version the component reported through `info()` when it was deployed.
    pub name: String,
    pub version: String,
    /// Size of the `.wasm`, bytes.
    pub size: u64,
    /// Who deployed it (an operator, a CI job), as the caller states it.
    pub deployed_by: String,
    /// When, ms since the Unix epoch.
    pub deployed_at_ms: i64,
    /// Where it came from (a path, a URL, a build id), as the caller states it.
    pub source: String,
    /// It came with a signature that verified against the configured public key (the
    /// signature is kept next to the bytes as `<sha256>.sig`).
    #[serde(default)]
    pub signed: bool,
}

/// The contents of `active.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveState {
    /// sha256 of the active version; none before the first activation.
    pub active: Option<String>,
    /// Previously active versions, newest first; `rollback` returns to the first.
    #[serde(default)]
    pub history: Vec<String>,
}

/// Why a deployment was refused. Every message names the problem; the variants holding wasmtime's
/// error leave it to `source()`, so show a rejection with [`crate::error::chain`].
#[derive(Debug, Error)]
pub enum DeployError {
    #[error("rejected: the component is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    NotAComponent(CheckRejection),
    #[error(transparent)]
    WrongWorld(CheckRejection),
    #[error(transparent)]
    MissingExport(CheckRejection),
    #[error(transparent)]
    IncompatibleVersion(CheckRejection),
    #[error("rejected: the component does not compile")]
    Compile(#[source] wasmtime::Error),
    #[error("rejected: the component does not satisfy the fulfillment world")]
    Link(#[source] wasmtime::Error),
    /// The source: see [`LoadError::Info`].
    #[error("rejected: the component's info() export failed")]
    InfoFailed(#[source] wasmtime::Error),
    /// What is wrong with the signature, for the deployer (see [`SignaturePolicy::check`]).
    ///
    /// [`SignaturePolicy::check`]: signature::SignaturePolicy::check
    #[error("rejected: {0}")]
    Signature(String),
    /// The manifest is unusable, does not match the component, or asks beyond the host's
    /// capability policy (each excess named).
    #[error("rejected: {0}")]
    Manifest(crate::runtime::manifest::ManifestError),
    #[error(
        "rejected: {} of {total} scenarios failed: {}",
        .failed.len(),
        .failed.join("; ")
    )]
    Scenarios { total: usize, failed: Vec<String> },
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// A failed world check as a deploy rejection: it reads `rejected: <what the check found>` and
/// passes the check's own cause (where the bytes do not parse) on as its source, so a chain
/// names each once.
#[derive(Debug)]
pub struct CheckRejection {
    /// Said before the check's message (`wrong world: `), or nothing.
    prefix: &'static str,
    check: CheckError,
}

impl CheckRejection {
    pub(crate) fn new(prefix: &'static str, check: CheckError) -> Self {
        CheckRejection { prefix, check }
    }

    /// What the world check found.
    pub fn check(&self) -> &CheckError {
        &self.check
    }
}

impl std::fmt::Display for CheckRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rejected: {}{}", self.prefix, self.check)
    }
}

impl std::error::Error for CheckRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.check.source()
    }
}

/// Why a registry operation other than a deployment failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("`{0}` is not a component id: expected a sha256 (64 lowercase hex digits)")]
    InvalidId(String),
    #[error("no component {0} in the registry")]
    NotFound(String),
    #[error("nothing to roll back to: no previously active version in the history")]
    NothingToRollBack,
    #[error("stored component {sha256} is corrupt: its bytes hash to {actual}")]
    Corrupt { sha256: String, actual: String },
    /// Under `FULFILLD_REQUIRE_SIGNED`, a stored version whose own signature does not verify now
    /// (deployed unsigned before, or its `.sig` replaced) cannot go live: not by activation,
    /// rollback, adoption from another replica or start-up.
    #[error("component {sha256} cannot go live: {reason}")]
    NotSigned { sha256: String, reason: String },
    #[error("cannot load component {sha256}")]
    Load { sha256: String, source: LoadError },
    #[error("{path}: unreadable registry metadata")]
    Metadata {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: unreadable registry metadata: `{sha256}` is not a sha256")]
    NotASha256 { path: String, sha256: String },
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let context = context.into();
    move |source| RegistryError::Io { context, source }
}

/// The registry id of `wasm`: its sha256, lowercase hex.
pub fn sha256_hex(wasm: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(wasm))
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(sha256: &str) -> Result<(), RegistryError> {
    if is_sha256(sha256) {
        Ok(())
    } else {
        Err(RegistryError::InvalidId(sha256.to_owned()))
    }
}

/// A content-addressed registry of component versions in one directory.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    runtime: Runtime,
    gates: Gates,
    keep_previous: usize,
    /// The in-memory copy of `active.json`; the lock also serializes every write.
    state: Mutex<ActiveState>,
}

impl Registry {
    /// Opens (creating if needed) the registry in `dir`. Versions are loaded into `runtime`.
    pub async fn open(
        dir: impl Into<PathBuf>,
        runtime: Runtime,
        gates: Gates,
    ) -> Result<Registry, RegistryError> {
        let dir = dir.into();
        for sub in [dir.join("components"), dir.join("cache")] {
            std::fs::create_dir_all(&sub)
                .map_err(io_error(format!("cannot create {}", sub.display())))?;
        }
        let path = dir.join("active.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: ActiveState =
                    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Metadata {
                        path: path.display().to_string(),
                        source,
                    })?;
                for sha in state.active.iter().chain(&state.history) {
                    if !is_sha256(sha) {
                        return Err(RegistryError::NotASha256 {
                            path: path.display().to_string(),
                            sha256: sha.clone(),
                        });
                    }
                }
                state
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => ActiveState::default(),
            Err(error) => {
                return Err(RegistryError::Io {
                    context: format!("cannot read {}", path.display()),
                    source: error,
                });
            }
        };
        Ok(Registry {
            dir,
            runtime,
            gates,
            keep_previous: DEFAULT_KEEP_PREVIOUS,
            state: Mutex::new(state),
        })
    }

    /// How many previously active versions to keep for rollback (default
    /// [`DEFAULT_KEEP_PREVIOUS`]). Applied at the next activation.
    pub fn with_keep_previous(mut self, keep_previous: usize) -> Self {
        self.keep_previous = keep_previous;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compiled-artifact cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("components").join(format!("{sha256}.wasm"))
    }

    fn meta_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("components").join(format!("{sha256}.json"))
    }

    fn signature_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("components").join(format!("{sha256}.sig"))
    }

    /// [`Registry::deploy_with`] without a signature or a shipped scenario suite.
    pub async fn deploy(
        &self,
        wasm: &[u8],
        deployed_by: &str,
        source: &str,
    ) -> Result<ComponentMeta, DeployError> {
        self.deploy_with(wasm, Extras::default(), deployed_by, source)
            .await
    }

    /// Runs the gates on `wasm` and stores it; does not activate it. Deploying bytes already in
    /// the registry re-runs the gates and returns the stored metadata unchanged.
    pub async fn deploy_with(
        &self,
        wasm: &[u8],
        extras: Extras<'_>,
        deployed_by: &str,
        source: &str,
    ) -> Result<ComponentMeta, DeployError> {
        let (candidate, signed) = self
            .gates
            .run(&self.runtime, wasm, extras, &self.cache_dir())
            .await?;
        let sha256 = candidate.digest().to_owned();
        let _writes = self.state.lock().await;
        let meta_path = self.meta_path(&sha256);
        if let Ok(existing) = read_meta(&meta_path) {
            tracing::info!(
                name = %existing.name,
                version = %existing.version,
                sha256 = %sha256,
                deployed_by = %existing.deployed_by,
                "component already deployed"
            );
            return Ok(existing);
        }
        let meta = ComponentMeta {
            sha256: sha256.clone(),
            name: candidate.info().name.clone(),
            version: candidate.info().version.clone(),
            size: wasm.len() as u64,
            deployed_by: deployed_by.to_owned(),
            deployed_at_ms: crate::domain::now_ms(),
            source: source.to_owned(),
            signed: signed == SignatureCheck::Verified,
        };
        let blob_path = self.blob_path(&sha256);
        write_atomic(&blob_path, wasm).map_err(|source| DeployError::Io {
            context: format!("cannot write {}", blob_path.display()),
            source,
        })?;
        if let (true, Some(text)) = (meta.signed, extras.signature) {
            let path = self.signature_path(&sha256);
            write_atomic(&path, text.trim().as_bytes()).map_err(|source| DeployError::Io {
                context: format!("cannot write {}", path.display()),
                source,
            })?;
        }
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| DeployError::Io {
            context: "cannot encode the component metadata".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&meta_path, &json).map_err(|source| DeployError::Io {
            context: format!("cannot write {}", meta_path.display()),
            source,
        })?;
        tracing::info!(
            name = %meta.name,
            version = %meta.version,
            sha256 = %meta.sha256,
            deployed_by = %meta.deployed_by,
            size = meta.size,
            source = %meta.source,
            signed = meta.signed,
            "component deployed"
        );
        Ok(meta)
    }

    /// Whether version `sha256` is deployed here.
    pub fn contains(&self, sha256: &str) -> bool {
        is_sha256(sha256) && self.meta_path(sha256).is_file()
    }

    /// The stored bytes and signature of a deployed version (to share it with other replicas).
    pub fn bytes(&self, sha256: &str) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        check_id(sha256)?;
        let path = self.blob_path(sha256);
        let wasm = std::fs::read(&path).map_err(io_error(format!(
            "cannot read the component {}",
            path.display()
        )))?;
        let signature = std::fs::read_to_string(self.signature_path(sha256)).ok();
        Ok((wasm, signature))
    }

    /// Makes the deployed version `sha256` the active one and returns it loaded (from the
    /// artifact cache when it is there). The previously active version goes to the history.
    pub async fn activate(
        &self,
        sha256: &str,
    ) -> Result<(ComponentMeta, LoadedComponent), RegistryError> {
        check_id(sha256)?;
        let mut state = self.state.lock().await;
        let (meta, loaded, _) = self.load_version(sha256).await?;
        let mut next = state.clone();
        if next.active.as_deref() != Some(sha256) {
            if let Some(previous) = next.active.take() {
                next.history.insert(0, previous);
            }
            next.history.retain(|sha| sha != sha256);
            next.active = Some(sha256.to_owned());
        }
        let dropped: Vec<String> = if next.history.len() > self.keep_previous {
            next.history.split_off(self.keep_previous)
        } else {
            Vec::new()
        };
        self.commit(&mut state, next)?;
        self.prune(&state, &dropped);
        log_activated(&meta, false);
        Ok((meta, loaded))
    }

    /// Makes the first version of the history the active one again. The version rolled back
    /// from stays deployed (it can be activated again) but is not put on the history.
    pub async fn rollback(&self) -> Result<(ComponentMeta, LoadedComponent), RegistryError> {
        let mut state = self.state.lock().await;
        let previous = state
            .history
            .first()
            .cloned()
            .ok_or(RegistryError::NothingToRollBack)?;
        let (meta, loaded, _) = self.load_version(&previous).await?;
        let next = ActiveState {
            active: Some(previous),
            history: state.history[1..].to_vec(),
        };
        self.commit(&mut state, next)?;
        log_activated(&meta, true);
        Ok((meta, loaded))
    }

    /// Every deployed version, newest deployment first.
    pub fn list(&self) -> Result<Vec<ComponentMeta>, RegistryError> {
        let dir = self.dir.join("components");
        let entries =
            std::fs::read_dir(&dir).map_err(io_error(format!("cannot list {}", dir.display())))?;
        let mut metas = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(io_error(format!("cannot list {}", dir.display())))?
                .path();
            let is_meta = path.extension().is_some_and(|e| e == "json")
                && path
                    .file_stem()
                    .is_some_and(|s| is_sha256(&s.to_string_lossy()));
            if is_meta {
                metas.push(read_meta(&path)?);
            }
        }
        metas.sort_by(|a, b| {
            b.deployed_at_ms
                .cmp(&a.deployed_at_ms)
                .then_with(|| a.sha256.cmp(&b.sha256))
        });
        Ok(metas)
    }

    /// The metadata of one deployed version.
    pub fn show(&self, sha256: &str) -> Result<ComponentMeta, RegistryError> {
        check_id(sha256)?;
        let path = self.meta_path(sha256);
        if !path.is_file() {
            return Err(RegistryError::NotFound(sha256.to_owned()));
        }
        read_meta(&path)
    }

    /// The active version's sha256 and the history.
    pub async fn state(&self) -> ActiveState {
        self.state.lock().await.clone()
    }

    /// The active version's metadata, if any version was activated.
    pub async fn active(&self) -> Result<Option<ComponentMeta>, RegistryError> {
        let active = self.state.lock().await.active.clone();
        active.map(|sha| self.show(&sha)).transpose()
    }

    /// Loads the active version (a host starting up), from the artifact cache when it is there.
    pub async fn load_active(
        &self,
    ) -> Result<Option<(ComponentMeta, LoadedComponent, CacheUse)>, RegistryError> {
        let state = self.state.lock().await;
        match state.active.clone() {
            Some(sha) => self.load_version(&sha).await.map(Some),
            None => Ok(None),
        }
    }

    /// Reads a stored version, checks its bytes still hash to its name, and loads it.
    async fn load_version(
        &self,
        sha256: &str,
    ) -> Result<(ComponentMeta, LoadedComponent, CacheUse), RegistryError> {
        let meta = self.show(sha256)?;
        let path = self.blob_path(sha256);
        let wasm = std::fs::read(&path).map_err(io_error(format!(
            "cannot read the component {}",
            path.display()
        )))?;
        let actual = hex::encode(Sha256::digest(&wasm));
        if actual != sha256 {
            return Err(RegistryError::Corrupt {
                sha256: sha256.to_owned(),
                actual,
            });
        }
        if self.gates.signatures.require {
            // Checked again on every way into the live slot, against the bytes themselves: the
            // metadata's `signed` flag is a file anyone with the directory could edit.
            let signature = std::fs::read_to_string(self.signature_path(sha256)).ok();
            self.gates
                .signatures
                .check(&wasm, signature.as_deref())
                .map_err(|reason| RegistryError::NotSigned {
                    sha256: sha256.to_owned(),
                    reason,
                })?;
        }
        let (loaded, cache) = self
            .runtime
            .load_cached(&wasm, &self.cache_dir())
            .await
            .map_err(|source| RegistryError::Load {
                sha256: sha256.to_owned(),
                source,
            })?;
        Ok((meta, loaded, cache))
    }

    /// Writes `next` to `active.json`, then adopts it in memory.
    fn commit(&self, state: &mut ActiveState, next: ActiveState) -> Result<(), RegistryError> {
        let path = self.dir.join("active.json");
        let json = serde_json::to_vec_pretty(&next).map_err(|e| RegistryError::Io {
            context: "cannot encode the active state".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &json).map_err(io_error(format!("cannot write {}", path.display())))?;
        *state = next;
        Ok(())
    }

    /// Deletes the bytes, metadata and artifacts of versions that fell off the history, unless
    /// they are active or on the history again. Failures are logged: a leftover file is harmless.
    fn prune(&self, state: &ActiveState, dropped: &[String]) {
        for sha in dropped {
            if state.active.as_ref() == Some(sha) || state.history.contains(sha) {
                continue;
            }
            let mut paths = vec![
                self.meta_path(sha),
                self.blob_path(sha),
                self.signature_path(sha),
            ];
            if let Ok(entries) = std::fs::read_dir(self.cache_dir()) {
                let prefix = format!("{sha}-");
                paths.extend(
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                        }),
                );
            }
            for path in paths {
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %error, "cannot prune an old component version");
                }
            }
            tracing::info!(sha256 = %sha, "old component version pruned");
        }
    }
}

fn read_meta(path: &Path) -> Result<ComponentMeta, RegistryError> {
    let bytes = std::fs::read(path).map_err(io_error(format!("cannot read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Metadata {
        path: path.display().to_string(),
        source,
    })
}

fn log_activated(meta: &ComponentMeta, rollback: bool) {
    tracing::info!(
        name = %meta.name,
        version = %meta.version,
        sha256 = %meta.sha256,
        deployed_by = %meta.deployed_by,
        rollback,
        "component activated"
    );
}
