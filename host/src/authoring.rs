//! `fulfilld component new`: writes a standalone component crate built on the default rules
//! through their extension points, with the guest SDK (and its WIT copy) and the default rules
//! vendored. Every file is embedded in the binary: the template from `host/templates/component`,
//! the SDK and the rules from `components/` as this build of fulfilld has them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest component name accepted.
pub const NAME_MAX: usize = 64;

/// Names a new crate cannot take: the vendored crates' and names Cargo or Rust refuse.
const RESERVED: &[&str] = &[
    "fulfillment",
    "fulfillment-sdk",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
    "self",
    "super",
    "crate",
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "static",
    "struct",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
];

/// One embedded file: its path inside the new crate and its content.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedFile {
    pub path: &'static str,
    pub content: &'static str,
}

macro_rules! embed {
    ($($path:literal => $source:literal),* $(,)?) => {
        &[$(EmbeddedFile { path: $path, content: include_str!($source) }),*]
    };
}

/// The vendored guest SDK, from `components/sdk` (`src/`, `wit/`); its Cargo.toml is the
/// template's (no workspace inheritance).
pub const SDK_FILES: &[EmbeddedFile] = embed![
    "vendor/fulfillment-sdk/src/host.rs" => "../../components/sdk/src/host.rs",
    "vendor/fulfillment-sdk/src/json.rs" => "../../components/sdk/src/json.rs",
    "vendor/fulfillment-sdk/src/lib.rs" => "../../components/sdk/src/lib.rs",
    "vendor/fulfillment-sdk/src/log.rs" => "../../components/sdk/src/log.rs",
    "vendor/fulfillment-sdk/src/salesforce.rs" => "../../components/sdk/src/salesforce.rs",
    "vendor/fulfillment-sdk/src/text.rs" => "../../components/sdk/src/text.rs",
    "vendor/fulfillment-sdk/src/types.rs" => "../../components/sdk/src/types.rs",
    "vendor/fulfillment-sdk/src/whmcs.rs" => "../../components/sdk/src/whmcs.rs",
    "vendor/fulfillment-sdk/src/wit.rs" => "../../components/sdk/src/wit.rs",
    "vendor/fulfillment-sdk/wit/fulfillment.wit" => "../../components/sdk/wit/fulfillment.wit",
];

/// The vendored default rules, from `components/fulfillment/src`.
pub const RULES_FILES: &[EmbeddedFile] = embed![
    "vendor/fulfillment/src/extensions.rs" => "../../components/fulfillment/src/extensions.rs",
    "vendor/fulfillment/src/failure.rs" => "../../components/fulfillment/src/failure.rs",
    "vendor/fulfillment/src/lib.rs" => "../../components/fulfillment/src/lib.rs",
    "vendor/fulfillment/src/mapping.rs" => "../../components/fulfillment/src/mapping.rs",
    "vendor/fulfillment/src/reconcile.rs" => "../../components/fulfillment/src/reconcile.rs",
    "vendor/fulfillment/src/settings.rs" => "../../components/fulfillment/src/settings.rs",
];

/// The crate's own files (`host/templates/component`); `{{name}}` and `{{crate_name}}` are
/// replaced by the component name and the Rust crate name.
pub const TEMPLATE_FILES: &[EmbeddedFile] = embed![
    "Cargo.toml" => "../templates/component/Cargo.toml",
    "rust-toolchain.toml" => "../templates/component/rust-toolchain.toml",
    ".gitignore" => "../templates/component/gitignore",
    "README.md" => "../templates/component/README.md",
    "component.toml" => "../templates/component/component.toml",
    "src/lib.rs" => "../templates/component/src/lib.rs",
    "scenarios/_seed.toml" => "../templates/component/scenarios/_seed.toml",
    "scenarios/happy-path.toml" => "../templates/component/scenarios/happy-path.toml",
    "scenarios/not-activating.toml" => "../templates/component/scenarios/not-activating.toml",
    "scenarios/addorder-business-error.toml" => "../templates/component/scenarios/addorder-business-error.toml",
    "scenarios/no-payment-method.toml" => "../templates/component/scenarios/no-payment-method.toml",
    "vendor/fulfillment-sdk/Cargo.toml" => "../templates/component/vendor/fulfillment-sdk/Cargo.toml",
    "vendor/fulfillment/Cargo.toml" => "../templates/component/vendor/fulfillment/Cargo.toml",
];

/// Why `component new` wrote nothing (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    #[error(
        "invalid component name: {0}; use 1 to {NAME_MAX} lowercase letters, digits and '-', \
         starting with a letter"
    )]
    InvalidName(&'static str),
    #[error("{} already exists and is not an empty folder; nothing was written", .0.display())]
    NotEmpty(PathBuf),
    #[error("cannot write {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `component new` wrote.
#[derive(Debug, Clone)]
pub struct NewComponent {
    /// The crate's folder.
    pub root: PathBuf,
    /// Every file written, relative to `root`, in the order written.
    pub files: Vec<PathBuf>,
    /// The Rust crate name (`-` as `_`): the Wasm is `target/wasm32-wasip2/release/<it>.wasm`.
    pub crate_name: String,
}

impl NewComponent {
    /// Where `cargo build --release --target wasm32-wasip2` puts the component, relative to
    /// `root`.
    pub fn wasm_path(&self) -> PathBuf {
        Path::new("target/wasm32-wasip2/release").join(format!("{}.wasm", self.crate_name))
    }
}

/// Checks a component name: 1..=[`NAME_MAX`] lowercase ASCII letters, digits and `-`, starting
/// with a letter, not a reserved name.
pub fn validate_name(name: &str) -> Result<(), AuthoringError> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(AuthoringError::InvalidName("wrong length"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(AuthoringError::InvalidName(
            "a character that is not allowed",
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(AuthoringError::InvalidName(
            "it does not start with a letter",
        ));
    }
    if RESERVED.contains(&name) {
        return Err(AuthoringError::InvalidName(
            "a name Rust, Cargo or the vendored crates reserve",
        ));
    }
    Ok(())
}

/// Every file of a new crate named `name`: path inside the crate and content.
pub fn files(name: &str) -> Vec<(&'static str, String)> {
    let crate_name = name.replace('-', "_");
    let template = TEMPLATE_FILES.iter().map(|f| {
        let content = f
            .content
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &crate_name);
        (f.path, content)
    });
    let vendored = SDK_FILES
        .iter()
        .chain(RULES_FILES)
        .map(|f| (f.path, f.content.to_owned()));
    template.chain(vendored).collect()
}

/// Writes the crate `name` into `<parent>/<name>`. Refuses a name [`validate_name`] refuses and
/// an existing path that is not an empty folder (a link included); never overwrites a file.
pub fn new_component(name: &str, parent: &Path) -> Result<NewComponent, AuthoringError> {
    validate_name(name)?;
    let root = parent.join(name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuthoringError::Io { path, source }
    };
    match std::fs::symlink_metadata(&root) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(&root).map_err(io(&root))?;
            if entries.next().is_some() {
                return Err(AuthoringError::NotEmpty(root));
            }
        }
        Ok(_) => return Err(AuthoringError::NotEmpty(root)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&root)(e)),
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;

    let mut written = Vec::new();
    for (relative, content) in files(name) {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(content.as_bytes()).map_err(io(&path))?;
        written.push(PathBuf::from(relative));
    }
    tracing::debug!(root = %root.display(), files = written.len(), "component crate written");
    Ok(NewComponent {
        root,
        files: written,
        crate_name: name.replace('-', "_"),
    })
}
