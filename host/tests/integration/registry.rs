//! The compiled-artifact cache and the component registry: deploy through the gates, activate,
//! roll back, reopen; every rejection names its problem and leaves the active version alone.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fulfilld::registry::{DeployError, Gates, Registry, RegistryError};
use fulfilld::runtime::policy::CapabilityPolicy;
use fulfilld::runtime::{CacheUse, Runtime, RuntimeConfig};

fn runtime() -> Runtime {
    runtime_under(CapabilityPolicy::default())
}

fn runtime_under(policy: CapabilityPolicy) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 4,
        policy,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// The default policy without AcceptOrder: narrower than the default rules' manifest.
fn without_accept_order() -> CapabilityPolicy {
    let mut policy = CapabilityPolicy::default();
    policy.billing_actions.remove("AcceptOrder");
    policy
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(common::component(name)).unwrap()
}

/// The same component with a custom section appended: another sha256, same name and version.
fn variant(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"fulfilld-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    assert!(payload.len() < 128, "one-byte LEB128 size");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn cache_second_load_is_a_hit_with_the_same_info_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bytes = wasm("fulfillment");
    let (first, use1) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    assert_eq!(use1, CacheUse::Miss);
    let files = cache_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        name,
        format!("{}-{}.cwasm", first.digest(), runtime.engine_hash())
    );

    let (second, use2) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    assert_eq!(use2, CacheUse::Hit);
    assert_eq!(second.info(), first.info());
    assert_eq!(second.digest(), first.digest());
    assert_eq!(runtime.probe(&second).await.unwrap(), *first.info());

    // A second runtime with the same configuration shares the artifacts.
    let (_, use3) = self::runtime()
        .load_cached(&bytes, dir.path())
        .await
        .unwrap();
    assert_eq!(use3, CacheUse::Hit);
}

#[tokio::test]
async fn cache_a_corrupted_artifact_is_deleted_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bytes = wasm("fulfillment");
    let (first, _) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    let artifact = runtime.artifact_path(dir.path(), first.digest());
    std::fs::write(&artifact, b"\x7fELF this is not an artifact").unwrap();

    let (again, used) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    assert_eq!(used, CacheUse::Miss);
    assert_eq!(again.info(), first.info());
    // Rewritten with a good artifact: the next load is a hit.
    let (_, used) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    assert_eq!(used, CacheUse::Hit);

    // Truncated to nothing: the same.
    std::fs::write(&artifact, b"").unwrap();
    let (_, used) = runtime.load_cached(&bytes, dir.path()).await.unwrap();
    assert_eq!(used, CacheUse::Miss);
}

#[tokio::test]
async fn cache_still_checks_the_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let error = runtime()
        .load_cached(&wasm("fixture-wrong-world"), dir.path())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing export"), "{error}");
    assert!(cache_files(dir.path()).is_empty());
}

/// Everything logged in this test binary. A global subscriber rather than a per-thread one:
/// tests running in parallel hit the same callsites, and a thread-scoped subscriber can miss
/// events whose interest another thread cached while no subscriber was listening.
fn global_logs() -> &'static common::LogCapture {
    static LOGS: OnceLock<common::LogCapture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = common::LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        capture
    })
}

async fn open_registry(dir: &Path, gates: Gates) -> Registry {
    Registry::open(dir, runtime(), gates).await.unwrap()
}

#[tokio::test]
async fn deploy_activate_list_and_show_the_default_component() {
    let logs = global_logs();
    let dir = tempfile::tempdir().unwrap();
    let registry = open_registry(dir.path(), Gates::default()).await;
    assert_eq!(registry.active().await.unwrap(), None);
    assert!(registry.load_active().await.unwrap().is_none());

    let bytes = wasm("fulfillment");
    let meta = registry
        .deploy(&bytes, "alice-logs", "target/fulfillment.wasm")
        .await
        .unwrap();
    assert_eq!(meta.name, "fulfillment");
    assert!(!meta.version.is_empty());
    assert_eq!(meta.size, bytes.len() as u64);
    assert_eq!(meta.deployed_by, "alice-logs");
    assert_eq!(meta.source, "target/fulfillment.wasm");
    assert_eq!(meta.sha256.len(), 64);
    // Deployed, not active.
    assert_eq!(registry.active().await.unwrap(), None);
    assert!(
        dir.path()
            .join(format!("components/{}.wasm", meta.sha256))
            .is_file()
    );

    let (active, loaded) = registry.activate(&meta.sha256).await.unwrap();
    assert_eq!(active, meta);
    assert_eq!(loaded.digest(), meta.sha256);
    assert_eq!(loaded.info().name, "fulfillment");
    assert_eq!(registry.active().await.unwrap(), Some(meta.clone()));
    assert_eq!(registry.list().unwrap(), vec![meta.clone()]);
    assert_eq!(registry.show(&meta.sha256).unwrap(), meta);

    // Deploying the same bytes again keeps the original record.
    let again = registry.deploy(&bytes, "bob", "elsewhere").await.unwrap();
    assert_eq!(again, meta);

    let text = logs.text();
    let line = |message: &str| {
        text.lines()
            .find(|l| l.contains(message) && l.contains("deployed_by=alice-logs"))
            .unwrap_or_else(|| panic!("no {message:?} line by alice-logs in {text}"))
            .to_owned()
    };
    for message in ["component deployed", "component activated"] {
        let line = line(message);
        for field in [
            format!("sha256={}", meta.sha256),
            "name=fulfillment".into(),
            format!("version={}", meta.version),
        ] {
            assert!(line.contains(&field), "{line} lacks {field}");
        }
    }

    let missing = "0".repeat(64);
    assert!(matches!(
        registry.show(&missing),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        registry.activate("../active").await,
        Err(RegistryError::InvalidId(_))
    ));
}

/// A registry with the default component deployed and active.
async fn with_active(dir: &Path, gates: Gates) -> (Registry, String) {
    let registry = open_registry(dir, gates).await;
    let meta = registry
        .deploy(&wasm("fulfillment"), "alice", "build")
        .await
        .unwrap();
    registry.activate(&meta.sha256).await.unwrap();
    (registry, meta.sha256)
}

/// Deploys `bytes`, expects a rejection whose message contains `needle`, and checks the
/// registry did not change.
async fn rejected(registry: &Registry, active: &str, bytes: &[u8], needle: &str) -> DeployError {
    let before = registry.list().unwrap();
    let error = registry
        .deploy(bytes, "mallory", "upload")
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert_eq!(registry.state().await.active.as_deref(), Some(active));
    assert_eq!(registry.list().unwrap(), before);
    error
}

#[tokio::test]
async fn rejects_what_it_cannot_run_and_keeps_the_active_version() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, active) = with_active(dir.path(), Gates::default()).await;

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let error = rejected(&registry, &active, &random, "not WebAssembly").await;
    assert!(matches!(error, DeployError::NotAComponent(_)), "{error:?}");

    let error = rejected(
        &registry,
        &active,
        &wasm("fixture-wrong-world"),
        "fulfilld:other/handler",
    )
    .await;
    assert!(matches!(error, DeployError::MissingExport(_)), "{error:?}");

    let error = rejected(
        &registry,
        &active,
        &wasm("fixture-future-major"),
        "incompatible WIT version",
    )
    .await;
    assert!(
        matches!(error, DeployError::IncompatibleVersion(_)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("2.0.0") && message.contains("fulfilld:fulfillment@1.1.0"),
        "{message}"
    );

    let error = rejected(
        &registry,
        &active,
        &wasm("fixture-unknown-import"),
        "fulfilld:fulfillment/secrets",
    )
    .await;
    assert!(matches!(error, DeployError::WrongWorld(_)), "{error:?}");
}

#[tokio::test]
async fn rejects_an_oversized_component() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    let registry = {
        drop(registry);
        Registry::open(
            dir.path(),
            runtime(),
            Gates {
                max_size: 1000,
                ..Gates::default()
            },
        )
        .await
        .unwrap()
    };
    let bytes = variant(&wasm("fulfillment"), "big");
    let error = rejected(&registry, &active, &bytes, "over the 1000-byte limit").await;
    assert!(
        matches!(error, DeployError::TooLarge { size, limit: 1000 } if size == bytes.len()),
        "{error:?}"
    );
}

/// A copy of the shipped happy-path scenario (and its seed) expecting a wrong WHMCS order id.
fn failing_suite(dir: &Path) -> PathBuf {
    let scenarios = common::scenarios_dir();
    let suite = dir.join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    std::fs::copy(scenarios.join("_seed.toml"), suite.join("_seed.toml")).unwrap();
    let happy = std::fs::read_to_string(scenarios.join("happy-path.toml")).unwrap();
    assert!(happy.contains("WHMCS_Order_ID__c = \"1000\""));
    let wrong = happy.replace(
        "WHMCS_Order_ID__c = \"1000\"",
        "WHMCS_Order_ID__c = \"4242\"",
    );
    std::fs::write(suite.join("happy-path-wrong.toml"), wrong).unwrap();
    std::fs::copy(
        scenarios.join("no-payment-method.toml"),
        suite.join("no-payment-method.toml"),
    )
    .unwrap();
    suite
}

#[tokio::test]
async fn a_failing_scenario_suite_rejects_and_names_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let suite_dir = tempfile::tempdir().unwrap();
    let suite = failing_suite(suite_dir.path());
    let gates = Gates {
        scenarios: vec![suite.clone()],
        ..Gates::default()
    };
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    drop(registry);
    let registry = Registry::open(dir.path(), runtime(), gates).await.unwrap();
    let bytes = variant(&wasm("fulfillment"), "candidate");
    let error = rejected(&registry, &active, &bytes, "happy path").await;
    match &error {
        DeployError::Scenarios { total, failed } => {
            assert_eq!(*total, 2, "{error}");
            assert_eq!(failed.len(), 1, "{error}");
            assert!(failed[0].contains("4242"), "{error}");
        }
        other => panic!("expected Scenarios, got {other:?}"),
    }
    assert!(
        error.to_string().contains("1 of 2 scenarios failed"),
        "{error}"
    );

    // With the expectation put right, the same candidate passes the suite.
    std::fs::remove_file(suite.join("happy-path-wrong.toml")).unwrap();
    std::fs::copy(
        common::scenarios_dir().join("happy-path.toml"),
        suite.join("happy-path.toml"),
    )
    .unwrap();
    let meta = registry.deploy(&bytes, "alice", "ci").await.unwrap();
    assert_ne!(meta.sha256, active);
}

#[tokio::test]
async fn rollback_returns_to_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, first) = with_active(dir.path(), Gates::default()).await;
    assert!(matches!(
        registry.rollback().await,
        Err(RegistryError::NothingToRollBack)
    ));

    let second = registry
        .deploy(&variant(&wasm("fulfillment"), "v2"), "bob", "build 2")
        .await
        .unwrap();
    let (meta, loaded) = registry.activate(&second.sha256).await.unwrap();
    assert_eq!(meta.sha256, second.sha256);
    assert_eq!(loaded.digest(), second.sha256);
    let state = registry.state().await;
    assert_eq!(state.active.as_deref(), Some(second.sha256.as_str()));
    assert_eq!(state.history, vec![first.clone()]);

    let (meta, loaded) = registry.rollback().await.unwrap();
    assert_eq!(meta.sha256, first);
    assert_eq!(loaded.digest(), first);
    let state = registry.state().await;
    assert_eq!(state.active.as_deref(), Some(first.as_str()));
    assert!(state.history.is_empty());
    // The version rolled back from stays deployed.
    assert_eq!(registry.show(&second.sha256).unwrap(), second);
    assert_eq!(registry.list().unwrap().len(), 2);
}

#[tokio::test]
async fn the_history_keeps_only_the_configured_number_of_versions() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_registry(dir.path(), Gates::default())
        .await
        .with_keep_previous(1);
    let base = wasm("fulfillment");
    let mut shas = Vec::new();
    for tag in ["a", "b", "c"] {
        let meta = registry
            .deploy(&variant(&base, tag), "ci", tag)
            .await
            .unwrap();
        registry.activate(&meta.sha256).await.unwrap();
        shas.push(meta.sha256);
    }
    let state = registry.state().await;
    assert_eq!(state.active.as_deref(), Some(shas[2].as_str()));
    assert_eq!(state.history, vec![shas[1].clone()]);
    // `a` fell off the history: its bytes, metadata and artifact are gone.
    assert!(matches!(
        registry.show(&shas[0]),
        Err(RegistryError::NotFound(_))
    ));
    assert!(
        !dir.path()
            .join(format!("components/{}.wasm", shas[0]))
            .exists()
    );
    let artifacts = cache_files(&registry.cache_dir());
    assert_eq!(artifacts.len(), 2, "{artifacts:?}");
    assert!(
        artifacts
            .iter()
            .all(|p| !p.to_string_lossy().contains(&shas[0]))
    );
}

#[tokio::test]
async fn reopening_keeps_the_active_version_and_loads_it_from_the_artifact_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    drop(registry);

    let reopened = open_registry(dir.path(), Gates::default()).await;
    assert_eq!(
        reopened.state().await.active.as_deref(),
        Some(active.as_str())
    );
    let (meta, loaded, cache) = reopened.load_active().await.unwrap().unwrap();
    assert_eq!(meta.sha256, active);
    assert_eq!(loaded.digest(), active);
    assert_eq!(cache, CacheUse::Hit, "compiled at deploy time, not again");
}

#[tokio::test]
async fn stored_bytes_that_no_longer_match_their_sha256_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    let other = registry
        .deploy(&variant(&wasm("fulfillment"), "tampered"), "ci", "build")
        .await
        .unwrap();
    let blob = dir.path().join(format!("components/{}.wasm", other.sha256));
    std::fs::write(&blob, wasm("fulfillment")).unwrap();
    let error = registry.activate(&other.sha256).await.unwrap_err();
    assert!(
        matches!(&error, RegistryError::Corrupt { sha256, actual } if *sha256 == other.sha256 && *actual == active),
        "{error:?}"
    );
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert_eq!(
        registry.state().await.active.as_deref(),
        Some(active.as_str())
    );
}

/// A key pair for the signature gate: the private key signs, the public key verifies.
fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

#[tokio::test]
async fn under_require_signed_a_missing_or_bad_signature_is_refused() {
    use fulfilld::registry::Extras;
    use fulfilld::registry::signature::{SignaturePolicy, sign};

    let dir = tempfile::tempdir().unwrap();
    let key = signing_key(7);
    let gates = Gates {
        signatures: SignaturePolicy {
            key: Some(key.verifying_key()),
            require: true,
        },
        ..Gates::default()
    };
    let registry = open_registry(dir.path(), gates).await;
    let v1 = wasm("fulfillment");
    let good = sign(&key, &v1);
    let meta = registry
        .deploy_with(
            &v1,
            Extras {
                signature: Some(&good),
                scenarios: None,
            },
            "alice",
            "ci",
        )
        .await
        .unwrap();
    assert!(meta.signed);
    registry.activate(&meta.sha256).await.unwrap();
    let active = meta.sha256;

    let candidate = variant(&v1, "unsigned");
    let error = rejected(&registry, &active, &candidate, "unsigned").await;
    assert!(matches!(error, DeployError::Signature(_)), "{error:?}");
    assert!(
        error.to_string().contains("FULFILLD_REQUIRE_SIGNED"),
        "{error}"
    );

    for (signature, needle) in [
        // Signed by someone else's key.
        (sign(&signing_key(9), &candidate), "bad signature"),
        // The right key, but over other bytes (v1's signature on the candidate).
        (good.clone(), "bad signature"),
        ("not base64!".to_owned(), "not base64"),
    ] {
        let before = registry.list().unwrap();
        let error = registry
            .deploy_with(
                &candidate,
                Extras {
                    signature: Some(&signature),
                    scenarios: None,
                },
                "mallory",
                "upload",
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
        assert_eq!(
            registry.state().await.active.as_deref(),
            Some(active.as_str())
        );
        assert_eq!(registry.list().unwrap(), before);
    }
}

#[tokio::test]
async fn a_scenario_suite_shipped_with_the_deploy_must_pass() {
    use fulfilld::registry::Extras;

    let dir = tempfile::tempdir().unwrap();
    let suite_dir = tempfile::tempdir().unwrap();
    let suite = failing_suite(suite_dir.path());
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    let candidate = variant(&wasm("fulfillment"), "shipped-suite");
    let before = registry.list().unwrap();
    let error = registry
        .deploy_with(
            &candidate,
            Extras {
                signature: None,
                scenarios: Some(&suite),
            },
            "alice",
            "ci",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, DeployError::Scenarios { failed, .. } if failed[0].contains("4242")),
        "{error}"
    );
    assert_eq!(
        registry.state().await.active.as_deref(),
        Some(active.as_str())
    );
    assert_eq!(registry.list().unwrap(), before);
}

/// A suite shipped with a deploy reaches only its own files: a seed named by an absolute path,
/// by `..`, or through a link (to a file or a directory outside) is refused, naming the seed,
/// and no answer quotes what the named file holds.
#[tokio::test]
async fn a_shipped_suite_cannot_read_host_files_through_its_seeds() {
    use fulfilld::registry::Extras;

    const SECRET: &str = "host-secret-7Qz9w2";
    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // Not TOML, so a loader that read it would quote it in its parse error.
    let secret_file = outside.path().join("secrets.toml");
    std::fs::write(&secret_file, format!("WHMCS_SECRET={SECRET}\n")).unwrap();
    let (registry, active) = with_active(dir.path(), Gates::default()).await;
    let happy = std::fs::read_to_string(common::scenarios_dir().join("happy-path.toml")).unwrap();

    // Each case writes what it needs into the suite directory and returns the seed to name.
    type SeedFor<'a> = Box<dyn Fn(&Path) -> String + 'a>;
    let cases: Vec<(&str, SeedFor)> = vec![
        ("absolute", Box::new(|_| secret_file.display().to_string())),
        ("environ", Box::new(|_| "/proc/self/environ".to_owned())),
        (
            "dotdot",
            Box::new(|suite: &Path| {
                let up = suite.components().count() + 2;
                format!("{}{}", "../".repeat(up), secret_file.display())
            }),
        ),
        (
            "file-link",
            Box::new(|suite: &Path| {
                std::os::unix::fs::symlink(&secret_file, suite.join("_seed.toml")).unwrap();
                "_seed.toml".to_owned()
            }),
        ),
        (
            "dir-link",
            Box::new(|suite: &Path| {
                std::os::unix::fs::symlink(outside.path(), suite.join("shared")).unwrap();
                "shared/secrets.toml".to_owned()
            }),
        ),
    ];
    for (case, seed_for) in cases {
        let suite_dir = tempfile::tempdir().unwrap();
        let suite = suite_dir.path().join("suite");
        std::fs::create_dir_all(&suite).unwrap();
        let seed = seed_for(&suite);
        std::fs::write(
            suite.join("happy-path.toml"),
            happy.replace("seed = \"_seed.toml\"", &format!("seed = {seed:?}")),
        )
        .unwrap();
        let before = registry.list().unwrap();
        let candidate = variant(&wasm("fulfillment"), case);
        let error = registry
            .deploy_with(
                &candidate,
                Extras {
                    signature: None,
                    scenarios: Some(&suite),
                },
                "mallory",
                "upload",
            )
            .await
            .unwrap_err();
        let message = fulfilld::error::chain(&error);
        assert!(
            matches!(&error, DeployError::Scenarios { .. }) && message.contains("seed"),
            "{case}: {message}"
        );
        assert!(!message.contains(SECRET), "{case}: {message}");
        assert!(!message.contains("PATH="), "{case}: {message}");
        assert_eq!(
            registry.state().await.active.as_deref(),
            Some(active.as_str()),
            "{case}"
        );
        assert_eq!(registry.list().unwrap(), before, "{case}");
    }
    assert!(!logs.text().contains(SECRET), "the secret reached the logs");
}

/// Require-signed holds on every way into the live slot, not only at deploy: a version stored
/// unsigned while signing was optional, or whose stored signature was replaced, can be neither
/// activated nor rolled back to, and a registry reopened on it does not load it.
#[tokio::test]
async fn under_require_signed_an_unsigned_stored_version_cannot_go_live() {
    use fulfilld::registry::Extras;
    use fulfilld::registry::signature::{SignaturePolicy, sign};

    let dir = tempfile::tempdir().unwrap();
    let key = signing_key(7);
    let policy = |require: bool| Gates {
        signatures: SignaturePolicy {
            key: Some(key.verifying_key()),
            require,
        },
        ..Gates::default()
    };
    // Signing optional: v1 goes in unsigned and is active, then a signed v2 replaces it.
    let v1 = wasm("fulfillment");
    let v2 = variant(&v1, "signed-v2");
    let (v1_sha, v2_sha) = {
        let registry = open_registry(dir.path(), policy(false)).await;
        let v1_meta = registry.deploy(&v1, "alice", "ci").await.unwrap();
        assert!(!v1_meta.signed);
        registry.activate(&v1_meta.sha256).await.unwrap();
        let v2_meta = registry
            .deploy_with(
                &v2,
                Extras {
                    signature: Some(&sign(&key, &v2)),
                    scenarios: None,
                },
                "alice",
                "ci",
            )
            .await
            .unwrap();
        registry.activate(&v2_meta.sha256).await.unwrap();
        (v1_meta.sha256, v2_meta.sha256)
    };

    // Signing required from now on.
    let registry = open_registry(dir.path(), policy(true)).await;
    let error = registry.rollback().await.unwrap_err();
    assert!(
        matches!(&error, RegistryError::NotSigned { sha256, .. } if *sha256 == v1_sha),
        "{error}"
    );
    assert!(error.to_string().contains("unsigned"), "{error}");
    let error = registry.activate(&v1_sha).await.unwrap_err();
    assert!(error.to_string().contains("unsigned"), "{error}");
    assert_eq!(
        registry.state().await.active.as_deref(),
        Some(v2_sha.as_str())
    );

    // A signature file put next to v1 by hand does not verify for its bytes: still refused.
    std::fs::write(
        dir.path().join("components").join(format!("{v1_sha}.sig")),
        sign(&key, &v2),
    )
    .unwrap();
    let error = registry.activate(&v1_sha).await.unwrap_err();
    assert!(error.to_string().contains("bad signature"), "{error}");
    // The signed version still goes live, and stays the one a reopened registry loads.
    registry.activate(&v2_sha).await.unwrap();
    drop(registry);
    let registry = open_registry(dir.path(), policy(true)).await;
    let (meta, _, _) = registry.load_active().await.unwrap().unwrap();
    assert_eq!(meta.sha256, v2_sha);

    // A registry whose active version is the unsigned one does not start on it.
    let unsigned_dir = tempfile::tempdir().unwrap();
    {
        let registry = open_registry(unsigned_dir.path(), policy(false)).await;
        let meta = registry.deploy(&v1, "alice", "ci").await.unwrap();
        registry.activate(&meta.sha256).await.unwrap();
    }
    let registry = open_registry(unsigned_dir.path(), policy(true)).await;
    let error = registry.load_active().await.unwrap_err();
    assert!(error.to_string().contains("unsigned"), "{error}");
}

/// The host's capability policy is a ceiling for manifests: a deploy whose manifest asks beyond
/// it is refused naming each excess, and nothing is stored; a component without a manifest still
/// deploys (it runs under the policy itself).
#[tokio::test]
async fn a_deploy_whose_manifest_asks_beyond_the_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = CapabilityPolicy {
        query: Some(["Order".to_owned()].into()),
        ..without_accept_order()
    };
    let registry = Registry::open(dir.path(), runtime_under(policy), Gates::default())
        .await
        .unwrap();
    let error = registry
        .deploy(&wasm("fulfillment"), "alice", "build")
        .await
        .unwrap_err();
    assert!(matches!(error, DeployError::Manifest(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "rejected: the manifest asks beyond the host's capability policy: query OrderItem, \
         billing AcceptOrder"
    );
    assert!(registry.list().unwrap().is_empty());
    registry
        .deploy(&wasm("fixture_rules_v2"), "alice", "build")
        .await
        .unwrap();
}

/// The deploy gate rehearses: the shipped scenarios fail orders on purpose (409, 429, 503,
/// timeouts), and none of that may look like production trouble. The component's ERROR entries
/// come out at DEBUG under `fulfilld::gate` in a `rehearsal` span, never as ERROR/WARN lines or in
/// a `job` span, and the runtime's call counters do not move. A real job on the same runtime,
/// run under the same capture, does show its ERROR line in its `job` span and does count.
#[tokio::test]
async fn the_deploy_gate_rehearses_without_job_logs_or_job_counts() {
    use fulfilld::runtime::{REHEARSAL_SPAN, REHEARSAL_TARGET};
    use fulfilld::testkit::scenario::Scenario;

    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = with_active(dir.path(), Gates::default()).await;
    drop(registry);
    let rt = runtime();
    let gates = Gates {
        scenarios: vec![common::scenarios_dir()],
        ..Gates::default()
    };
    let registry = Registry::open(dir.path(), rt.clone(), gates).await.unwrap();
    let counted = rt.call_counters().snapshot();
    let before = logs.text().len();
    let candidate = variant(&wasm("fulfillment"), "rehearsal");
    registry.deploy(&candidate, "alice", "ci").await.unwrap();
    let gate_text = logs.text()[before..].to_owned();

    assert_eq!(
        rt.call_counters().snapshot(),
        counted,
        "the gate counted as jobs"
    );
    common::assert_no_job_lines(&gate_text);
    // The entries are there for whoever turns on DEBUG for the target.
    let rehearsed = format!(" DEBUG {REHEARSAL_SPAN}{{");
    let failed = gate_text
        .lines()
        .find(|line| {
            line.contains(&rehearsed)
                && line.contains(&format!("{REHEARSAL_TARGET}: Fulfillment failed"))
        })
        .unwrap_or_else(|| panic!("no rehearsal DEBUG line of a failure:\n{gate_text}"));
    assert!(failed.contains("level=\"error\""), "{failed}");

    // The same failure as a job: an ERROR line from the component in its job span, counted.
    let scenario = Scenario::load(&common::scenarios_dir().join("no-payment-method.toml")).unwrap();
    let host = scenario.seed().unwrap();
    for (sobject, records) in &scenario.runs[0].set {
        for (id, fields) in records {
            host.with_org(|org| org.update(sobject, id, fields).unwrap());
        }
    }
    let component = rt.load(&wasm("fulfillment")).await.unwrap();
    let before = logs.text().len();
    let report = rt
        .run(
            &component,
            host,
            &fulfilld::testkit::order_event("801000000000001AAA"),
            false,
        )
        .await;
    assert_eq!(report.result.unwrap_err().code, "409");
    let job_text = logs.text()[before..].to_owned();
    assert!(
        job_text
            .lines()
            .any(|l| l.contains(" ERROR job{") && l.contains("component: Fulfillment failed")),
        "{job_text}"
    );
    assert_ne!(rt.call_counters().snapshot(), counted);
}

/// The ceiling holds when a stored version goes live, too: a version deployed while the policy
/// allowed its manifest cannot be activated by a host whose policy no longer does.
#[tokio::test]
async fn a_stored_version_beyond_a_narrowed_policy_cannot_be_activated() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_registry(dir.path(), Gates::default()).await;
    let meta = registry
        .deploy(&wasm("fulfillment"), "alice", "build")
        .await
        .unwrap();
    drop(registry);
    let narrow = runtime_under(without_accept_order());
    let registry = Registry::open(dir.path(), narrow, Gates::default())
        .await
        .unwrap();
    let error = registry.activate(&meta.sha256).await.unwrap_err();
    assert!(
        matches!(
            &error,
            fulfilld::registry::RegistryError::Load {
                source: fulfilld::runtime::LoadError::Manifest(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        fulfilld::error::chain(&error).contains("billing AcceptOrder"),
        "{}",
        fulfilld::error::chain(&error)
    );
    assert_eq!(registry.state().await.active, None);
}
