//! The gates a candidate component version passes before the registry stores it: a size limit,
//! the world check, compile + link + `info()` (through the artifact cache, so an accepted version
//! is already compiled when it is activated), and optionally a scenario suite run against the
//! candidate on the test kit's mocked host.

use std::path::{Path, PathBuf};

use crate::runtime::check::CheckError;
use crate::runtime::{LoadError, LoadedComponent, Runtime};
use crate::testkit::TestKit;
use crate::testkit::scenario::{Scenario, run_scenario};

use super::signature::{SignatureCheck, SignaturePolicy};
use super::{CheckRejection, DeployError};

/// Default largest `.wasm` accepted: rules components are tens to hundreds of KB in release
/// builds and a few MB in debug builds.
pub const DEFAULT_MAX_SIZE: usize = 16 << 20;

/// What a candidate must pass to be deployed.
#[derive(Debug, Clone)]
pub struct Gates {
    /// Largest `.wasm` accepted, in bytes.
    pub max_size: usize,
    /// Scenario files, or directories standing for their `*.toml` files except `_*.toml`
    /// (shared seed data), every one of which must pass. Empty: no suite.
    pub scenarios: Vec<PathBuf>,
    /// Signature verification and whether unsigned components are refused.
    pub signatures: SignaturePolicy,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_size: DEFAULT_MAX_SIZE,
            scenarios: Vec::new(),
            signatures: SignaturePolicy::default(),
        }
    }
}

/// What a deploy brings besides the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Base64 ed25519 signature of the bytes.
    pub signature: Option<&'a str>,
    /// The component's own scenario suite (a directory of scenario files), run in addition to
    /// the host's configured suite.
    pub scenarios: Option<&'a Path>,
}

impl From<CheckError> for DeployError {
    fn from(error: CheckError) -> Self {
        match error {
            CheckError::NotWasm
            | CheckError::CoreModule
            | CheckError::UnknownHeader
            | CheckError::Malformed(_) => {
                DeployError::NotAComponent(CheckRejection::new("", error))
            }
            CheckError::MissingExport { .. } => {
                DeployError::MissingExport(CheckRejection::new("", error))
            }
            CheckError::UnknownImport { .. } => {
                DeployError::WrongWorld(CheckRejection::new("wrong world: ", error))
            }
            CheckError::IncompatibleVersion { .. } => {
                DeployError::IncompatibleVersion(CheckRejection::new("", error))
            }
        }
    }
}

impl From<LoadError> for DeployError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Check(check) => check.into(),
            LoadError::Compile(source) => DeployError::Compile(source),
            LoadError::Link(source) => DeployError::Link(source),
            LoadError::Info(source) => DeployError::InfoFailed(source),
            LoadError::Manifest(error) => DeployError::Manifest(error),
        }
    }
}

impl Gates {
    /// Runs every gate on `wasm`: size, signature (cheap checks first), then the world check,
    /// compile, link and `info()`, then the scenario suites. The loaded candidate on success.
    pub async fn run(
        &self,
        runtime: &Runtime,
        wasm: &[u8],
        extras: Extras<'_>,
        cache_dir: &Path,
    ) -> Result<(LoadedComponent, SignatureCheck), DeployError> {
        if wasm.len() > self.max_size {
            return Err(DeployError::TooLarge {
                size: wasm.len(),
                limit: self.max_size,
            });
        }
        let signed = self
            .signatures
            .check(wasm, extras.signature)
            .map_err(DeployError::Signature)?;
        let (component, _) = runtime.load_cached(wasm, cache_dir).await?;
        if !self.scenarios.is_empty() {
            run_scenarios(&self.scenarios, runtime, &component, None).await?;
        }
        if let Some(shipped) = extras.scenarios {
            // A suite that came with the deploy is confined to itself (its seeds cannot name host
            // files); the operator's own suites above are trusted like the rest of the config.
            run_scenarios(&[shipped.to_path_buf()], runtime, &component, Some(shipped)).await?;
        }
        Ok((component, signed))
    }
}

async fn run_scenarios(
    paths: &[PathBuf],
    runtime: &Runtime,
    component: &LoadedComponent,
    confined_to: Option<&Path>,
) -> Result<(), DeployError> {
    let files = scenario_files(paths)?;
    if files.is_empty() {
        // A suite that was asked for but finds nothing is a misconfiguration, not a pass.
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(DeployError::Scenarios {
            total: 0,
            failed: vec![format!("no scenario files in {}", paths.join(", "))],
        });
    }
    let kit = TestKit::from_parts(runtime.clone(), component.clone());
    let mut failed = Vec::new();
    for file in &files {
        let loaded = match confined_to {
            Some(root) => Scenario::load_within(file, root),
            None => Scenario::load(file),
        };
        match loaded {
            Ok(scenario) => {
                let result = run_scenario(&kit, &scenario).await;
                if !result.passed() {
                    let difference = result.first_difference().unwrap_or_default();
                    failed.push(format!("{} ({difference})", result.name));
                }
            }
            // A confined load names the file inside its suite already.
            Err(error) if confined_to.is_some() => failed.push(error.to_string()),
            Err(error) => failed.push(format!("{}: {error}", file.display())),
        }
    }
    if failed.is_empty() {
        tracing::debug!(scenarios = files.len(), "scenario suite passed");
        Ok(())
    } else {
        Err(DeployError::Scenarios {
            total: files.len(),
            failed,
        })
    }
}

/// The scenario files `paths` stand for (see [`crate::testkit::scenario::scenario_files`]).
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DeployError> {
    crate::testkit::scenario::scenario_files(paths).map_err(|(dir, source)| DeployError::Io {
        context: format!("cannot list the scenario directory {}", dir.display()),
        source,
    })
}
