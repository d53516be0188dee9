//! The compiled-artifact cache: a component is compiled once per engine configuration and the
//! machine code kept on disk, so a restart or a re-activation deserializes it in about a
//! millisecond instead of recompiling it (tens of milliseconds to seconds).
//!
//! An artifact is named `<sha256 of the .wasm>-<engine hash>.cwasm`: the content hash ties it to
//! the exact bytes that passed [`check::check_bytes`](super::check::check_bytes), and the engine
//! hash (wasmtime's `precompile_compatibility_hash`, over the compiler settings and the
//! `Config`) ties it to an engine that can run it. A new wasmtime or a changed `RuntimeConfig`
//! gets new names, so an old artifact is never loaded into an engine it was not built for.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::{LoadError, LoadedComponent, Runtime};

/// Whether [`Runtime::load_cached`] found a usable compiled artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Deserialized from the cache; nothing was compiled.
    Hit,
    /// Compiled now (no artifact, or an unusable one) and written to the cache.
    Miss,
}

/// Feeds everything a `Hash` impl writes into sha256, so the engine's compatibility hash has a
/// stable, collision-resistant text form (std's `DefaultHasher` is only 64 bits and its
/// algorithm may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Unused: the digest is read with `finalize`. Still a meaningful value.
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to
/// disk, then renamed over `path`. A reader sees the old file or the new one, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

impl Runtime {
    /// Hex text identifying this engine's compiled-code compatibility (wasmtime version, target,
    /// compiler flags, engine `Config`): artifacts are only shared between equal hashes.
    pub fn engine_hash(&self) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        // 16 bytes are plenty to tell engine configurations apart.
        hex::encode(&hasher.0.finalize()[..16])
    }

    /// Where [`Runtime::load_cached`] keeps the artifact of a component with this sha256.
    pub fn artifact_path(&self, cache_dir: &Path, sha256: &str) -> PathBuf {
        cache_dir.join(format!("{sha256}-{}.cwasm", self.engine_hash()))
    }

    /// [`Runtime::load`] through a compiled-artifact cache in `cache_dir` (created if missing).
    ///
    /// The `.wasm` is always checked against the world first (cheap: a parse). On a hit the
    /// artifact is deserialized; on a miss the component is compiled and its artifact written
    /// atomically. An artifact that cannot be deserialized (corrupt, truncated, from another
    /// engine) is logged, deleted and replaced: a bad cache never fails a load. Failing to write
    /// the cache is logged too, and the freshly compiled component is used anyway.
    ///
    /// `cache_dir` must belong to this host alone (its state directory): the artifacts in it are
    /// native code this process maps and runs.
    pub async fn load_cached(
        &self,
        wasm: &[u8],
        cache_dir: &Path,
    ) -> Result<(LoadedComponent, CacheUse), LoadError> {
        let declared = super::declared(wasm)?;
        let digest = hex::encode(Sha256::digest(wasm));
        let path = self.artifact_path(cache_dir, &digest);

        if path.is_file() {
            match self.deserialize_artifact(&path).await {
                Ok(component) => {
                    let loaded = self.link(component, digest.clone(), declared).await?;
                    tracing::debug!(digest = %digest, path = %path.display(), "component artifact cache hit");
                    return Ok((loaded, CacheUse::Hit));
                }
                Err(error) => {
                    tracing::warn!(
                        digest = %digest,
                        path = %path.display(),
                        error = %format!("{error:#}"),
                        "unusable compiled artifact: deleting it and recompiling"
                    );
                    if let Err(error) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %error, "cannot delete the unusable compiled artifact");
                    }
                }
            }
        }

        let component = self.compile(wasm).await?;
        match component.serialize() {
            Ok(artifact) => {
                let written = std::fs::create_dir_all(cache_dir)
                    .and_then(|()| write_atomic(&path, &artifact));
                if let Err(error) = written {
                    tracing::warn!(path = %path.display(), error = %error, "cannot write the compiled artifact; the component is loaded uncached");
                }
            }
            Err(error) => {
                tracing::warn!(digest = %digest, error = %format!("{error:#}"), "cannot serialize the compiled component; the component is loaded uncached");
            }
        }
        let loaded = self.link(component, digest, declared).await?;
        Ok((loaded, CacheUse::Miss))
    }

    async fn deserialize_artifact(&self, path: &Path) -> Result<Component, wasmtime::Error> {
        let engine = self.inner.engine.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            // SAFETY: `Component::deserialize_file` trusts its input to be machine code wasmtime
            // produced. This file is only ever one this host wrote itself: `load_cached` writes
            // it (atomically, so never half-written) from `Component::serialize` of bytes that
            // passed the world check and compiled, into the host's own cache directory, under
            // the sha256 of those `.wasm` bytes and this engine's compatibility hash. Nothing
            // from outside (an upload, a registry deploy) is ever written under such a name:
            // deployments carry `.wasm` only and are compiled here. wasmtime still checks the
            // header, target and engine settings and refuses a mismatch, which we treat as a
            // miss.
            #[allow(unsafe_code)]
            let component = unsafe { Component::deserialize_file(&engine, &path) };
            component
        })
        .await
        .map_err(|e| wasmtime::Error::new(e).context("deserialize task failed"))?
    }
}
