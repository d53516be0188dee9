//! `fulfilld component new`: the crate it writes builds outside the workspace, passes
//! `component check` and its own scenarios; the embedded SDK, rules and template are every file
//! of their folders, and their pins follow the workspace's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fulfilld::authoring::{EmbeddedFile, RULES_FILES, SDK_FILES, TEMPLATE_FILES};

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) use crate::common::{fulfilld, text};

/// `fulfilld component new <name> --dir <dir>`, from the built binary.
pub(crate) fn component_new(name: &str, dir: &Path) -> Output {
    fulfilld(&[
        "component".as_ref(),
        "new".as_ref(),
        name.as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ])
}

/// Every file under `dir`, relative to it, with its content.
fn files_under(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    found
}

/// The embedded files under `prefix` (a crate path), relative to it.
fn embedded(files: &[EmbeddedFile], prefix: &str) -> BTreeMap<String, String> {
    files
        .iter()
        .filter_map(|f| {
            let relative = f.path.strip_prefix(prefix)?;
            Some((relative.to_owned(), f.content.to_owned()))
        })
        .collect()
}

#[test]
fn the_embedded_sdk_and_rules_are_every_file_of_their_folders() {
    let root = workspace();
    for (dir, files, prefix) in [
        (
            "components/sdk/src",
            SDK_FILES,
            "vendor/fulfillment-sdk/src/",
        ),
        (
            "components/sdk/wit",
            SDK_FILES,
            "vendor/fulfillment-sdk/wit/",
        ),
        (
            "components/fulfillment/src",
            RULES_FILES,
            "vendor/fulfillment/src/",
        ),
    ] {
        let on_disk = files_under(&root.join(dir));
        let embedded = embedded(files, prefix);
        assert_eq!(
            on_disk.keys().collect::<Vec<_>>(),
            embedded.keys().collect::<Vec<_>>(),
            "{dir}: add the new file to host/src/authoring.rs"
        );
        assert!(on_disk == embedded, "{dir}: content differs");
    }
    let count = SDK_FILES.len() + RULES_FILES.len();
    let listed: usize = [
        "components/sdk/src",
        "components/sdk/wit",
        "components/fulfillment/src",
    ]
    .iter()
    .map(|d| files_under(&root.join(d)).len())
    .sum();
    assert_eq!(count, listed);
}

#[test]
fn the_embedded_template_is_every_file_of_host_templates_component() {
    let on_disk = files_under(&workspace().join("host/templates/component"));
    let mut embedded: BTreeMap<String, String> = TEMPLATE_FILES
        .iter()
        .map(|f| (f.path.to_owned(), f.content.to_owned()))
        .collect();
    // Stored without its dot, so git and tools treat it as a plain file.
    let gitignore = embedded.remove(".gitignore").unwrap();
    embedded.insert("gitignore".into(), gitignore);
    assert_eq!(
        on_disk.keys().collect::<Vec<_>>(),
        embedded.keys().collect::<Vec<_>>()
    );
    assert!(on_disk == embedded);
}

#[test]
fn the_sdk_wit_copy_is_byte_identical_to_the_workspace_wit() {
    let root = workspace();
    let top = std::fs::read(root.join("wit/fulfillment.wit")).unwrap();
    let copy = std::fs::read(root.join("components/sdk/wit/fulfillment.wit")).unwrap();
    assert!(
        top == copy,
        "components/sdk/wit/fulfillment.wit differs from wit/fulfillment.wit: copy it over"
    );
    let copy = String::from_utf8(copy).unwrap();
    assert!(copy.contains("package fulfilld:fulfillment@1.1.0;"));
}

fn toml_file(path: &Path) -> toml::Table {
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

fn template_toml(path: &str) -> toml::Table {
    let file = TEMPLATE_FILES.iter().find(|f| f.path == path).unwrap();
    file.content.parse().unwrap()
}

#[test]
fn the_template_pins_follow_the_workspace() {
    let root = workspace();
    let cargo = toml_file(&root.join("Cargo.toml"));
    let deps = &cargo["workspace"]["dependencies"];

    // The vendored crates: the workspace's versions and features of their crates.io dependencies,
    // and the versions of the crates they copy.
    for (path, source, names) in [
        (
            "vendor/fulfillment-sdk/Cargo.toml",
            "components/sdk/Cargo.toml",
            &["serde", "serde_json", "wit-bindgen"][..],
        ),
        (
            "vendor/fulfillment/Cargo.toml",
            "components/fulfillment/Cargo.toml",
            &["serde", "serde_json"][..],
        ),
    ] {
        let vendored = template_toml(path);
        let text = TEMPLATE_FILES
            .iter()
            .find(|f| f.path == path)
            .unwrap()
            .content;
        assert!(
            !text.contains("workspace"),
            "{path} inherits from a workspace"
        );
        for name in names {
            let found = vendored["dependencies"].get(*name).or_else(|| {
                vendored["target"]["cfg(target_arch = \"wasm32\")"]["dependencies"].get(*name)
            });
            assert_eq!(found, Some(&deps[*name]), "{path}: {name}");
        }
        let original = toml_file(&root.join(source));
        assert_eq!(
            vendored["package"]["version"], original["package"]["version"],
            "{path}"
        );
        assert_eq!(vendored["package"]["name"], original["package"]["name"]);
    }

    // The crate's release profile is the workspace's `component` profile.
    let mut component = cargo["profile"]["component"].as_table().unwrap().clone();
    component.remove("inherits");
    let crate_toml = template_toml("Cargo.toml");
    assert_eq!(
        crate_toml["profile"]["release"].as_table().unwrap(),
        &component
    );
    assert!(crate_toml["workspace"].as_table().unwrap().is_empty());

    // The same toolchain pin.
    let toolchain = toml_file(&root.join("rust-toolchain.toml"));
    assert_eq!(
        template_toml("rust-toolchain.toml")["toolchain"],
        toolchain["toolchain"]
    );
}

#[test]
fn new_refuses_bad_names_and_existing_folders_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "",
        "Acme",
        "acme_rules",
        "1acme",
        "acme/../x",
        "fulfillment",
        "fn",
    ] {
        let output = component_new(name, dir.path());
        assert_eq!(output.status.code(), Some(2), "{name}: {}", text(&output));
        assert!(text(&output).contains("invalid component name"), "{name}");
    }
    let long = "a".repeat(65);
    let output = component_new(&long, dir.path());
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // An existing folder with a file in it, and a file by that name, are left alone.
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/Cargo.toml"), "mine").unwrap();
    std::fs::write(dir.path().join("a-file"), "mine").unwrap();
    for name in ["taken", "a-file"] {
        let output = component_new(name, dir.path());
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(
            text(&output).contains("already exists and is not an empty folder"),
            "{}",
            text(&output)
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/Cargo.toml")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        1
    );

    // An empty folder is used.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let output = component_new("empty", dir.path());
    assert!(output.status.success(), "{}", text(&output));
    assert!(dir.path().join("empty/component.toml").is_file());
}

/// `cargo build --release --target wasm32-wasip2` in `krate`, offline first (the workspace's
/// dependencies are in the local registry cache), online when offline resolution fails.
pub(crate) fn build(krate: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let run = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(krate)
            .env("CARGO_TARGET_DIR", target_dir);
        if offline {
            command.arg("--offline");
        }
        command.output().unwrap()
    };
    let mut output = run(true);
    if !output.status.success() {
        output = run(false);
    }
    assert!(output.status.success(), "cargo build: {}", text(&output));
}

#[test]
fn a_new_component_builds_outside_the_workspace_and_passes_check_and_its_scenarios() {
    // Outside the workspace (the system's temp folder): it must build on its own.
    let dir = tempfile::tempdir().unwrap();
    assert!(!dir.path().starts_with(workspace()));
    let output = component_new("acme-rules", dir.path());
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    let krate = dir.path().join("acme-rules");
    assert!(
        said.contains(&format!("created {}", krate.display())),
        "{said}"
    );
    for line in [
        "  component.toml",
        "  src/lib.rs",
        "  vendor/fulfillment-sdk/wit/fulfillment.wit",
        "  cargo build --release --target wasm32-wasip2",
        "  fulfilld component pack target/wasm32-wasip2/release/acme_rules.wasm --manifest component.toml",
        "  fulfilld component check target/wasm32-wasip2/release/acme_rules.wasm",
        "  fulfilld test target/wasm32-wasip2/release/acme_rules.wasm scenarios",
    ] {
        assert!(said.lines().any(|l| l == line), "{line:?} in {said}");
    }
    let manifest = std::fs::read_to_string(krate.join("component.toml")).unwrap();
    assert!(manifest.contains("name = \"acme-rules\""));
    let readme = std::fs::read_to_string(krate.join("README.md")).unwrap();
    assert!(readme.contains(
        "fulfilld component pack target/wasm32-wasip2/release/acme_rules.wasm --manifest component.toml"
    ));
    assert!(!readme.contains("{{"));

    // A second run refuses the folder it wrote.
    let again = component_new("acme-rules", dir.path());
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));

    // Its own target folder under the workspace's, so reruns are incremental (the workspace's
    // target folder itself is locked by the cargo running this test).
    let target_dir = workspace().join("target/authoring");
    build(&krate, &target_dir);
    let wasm = target_dir.join("wasm32-wasip2/release/acme_rules.wasm");
    // As the crate's README says: pack its manifest into the build, then check and test.
    let manifest_path = krate.join("component.toml");
    let pack = fulfilld(&[
        "component".as_ref(),
        "pack".as_ref(),
        wasm.as_os_str(),
        "--manifest".as_ref(),
        manifest_path.as_os_str(),
    ]);
    assert!(pack.status.success(), "{}", text(&pack));

    let check = fulfilld(&["component".as_ref(), "check".as_ref(), wasm.as_os_str()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("ok: acme-rules 0.1.0 implements fulfilld:fulfillment@1.1.0"),
        "{}",
        text(&check)
    );
    assert!(
        text(&check).contains("config: PORTAL_PRICEBOOK_ID, PROVISIONING_NOTE=\"standard\""),
        "{}",
        text(&check)
    );

    let scenarios = krate.join("scenarios");
    let test = fulfilld(&["test".as_ref(), wasm.as_os_str(), scenarios.as_os_str()]);
    let report = text(&test);
    assert!(test.status.success(), "{report}");
    // One PASS line per scenario file (`_seed.toml` is the seed, not a scenario).
    let passed = report.lines().filter(|l| l.starts_with("PASS ")).count();
    assert_eq!(passed, 4, "{report}");
    assert!(!report.contains("FAIL"), "{report}");
}
