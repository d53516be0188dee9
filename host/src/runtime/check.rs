//! Static checks of a `.wasm` file against the `fulfillment` world, with errors that say exactly
//! what is wrong: not a component, a missing export, an import this host does not provide, or a
//! WIT version this host does not serve. Type-level mismatches are caught afterwards, when the
//! runtime links the component (`Runtime::load`).

use std::fmt;

use thiserror::Error;
use wasmtime::wasmparser::{BinaryReaderError, Parser, Payload};

/// The WIT package this host serves.
pub const WIT_PACKAGE: &str = "fulfilld:fulfillment";
/// Its version; components built against any `1.x` with `x <=` this minor load.
pub const WIT_VERSION: Version = Version {
    major: 1,
    minor: 1,
    patch: 0,
};
/// Interfaces of [`WIT_PACKAGE`] a component may import.
pub const HOST_INTERFACES: [&str; 8] = [
    "types",
    "salesforce",
    "billing",
    "log",
    "config",
    "clock",
    "job",
    "holds",
];
/// The interface a component must export.
pub const EXPORT_INTERFACE: &str = "handler";

/// A `major.minor.patch` WIT package version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let version = Version {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(version)
    }

    /// Semver compatibility as the component model's linker applies it.
    fn compatible_with(self, other: Version) -> bool {
        if self.major != other.major {
            return false;
        }
        self.major != 0 || self.minor == other.minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    #[error("not WebAssembly: the file does not start with the `\\0asm` header")]
    NotWasm,
    #[error(
        "not a component: this is a core WebAssembly module; build for `--target wasm32-wasip2`, \
         which produces a component"
    )]
    CoreModule,
    #[error("not a valid component: unknown WebAssembly header version")]
    UnknownHeader,
    #[error("not a valid component")]
    Malformed(#[source] ParseError),
    #[error(
        "missing export: the component does not export `{WIT_PACKAGE}/{EXPORT_INTERFACE}@{WIT_VERSION}` \
         (it exports: {exports})"
    )]
    MissingExport { exports: String },
    #[error(
        "unknown import `{name}`: this host provides {WIT_PACKAGE}/{{{provided}}}@{WIT_VERSION} \
         and WASI 0.2 only",
        provided = HOST_INTERFACES.join(",")
    )]
    UnknownImport { name: String },
    #[error(
        "incompatible WIT version: `{name}` is version {found}; this host serves \
         {WIT_PACKAGE}@{WIT_VERSION} (components built against {major}.x with x <= {minor})",
        major = WIT_VERSION.major,
        minor = WIT_VERSION.minor
    )]
    IncompatibleVersion { name: String, found: String },
}

impl CheckError {
    fn malformed(error: BinaryReaderError) -> Self {
        CheckError::Malformed(ParseError(error))
    }
}

/// Where the component binary does not parse. Compared by message and offset, which is what
/// keeps [`CheckError`] comparable (wasmparser's error is not).
#[derive(Debug, Clone, Error)]
#[error(transparent)]
pub struct ParseError(BinaryReaderError);

impl PartialEq for ParseError {
    fn eq(&self, other: &Self) -> bool {
        self.0.offset() == other.0.offset() && self.0.message() == other.0.message()
    }
}

impl Eq for ParseError {}

/// What a component imports and exports at its top level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// The `fulfilld:fulfillment` version a component was built against, as its `handler` export
/// names it (`fulfilld:fulfillment/handler@1.1.0`).
pub fn built_version(surface: &Surface) -> Option<Version> {
    let prefix = format!("{WIT_PACKAGE}/{EXPORT_INTERFACE}@");
    surface
        .exports
        .iter()
        .find_map(|name| name.strip_prefix(&prefix))
        .and_then(Version::parse)
}

/// Reads the top-level import and export names of a component.
pub fn surface(wasm: &[u8]) -> Result<Surface, CheckError> {
    if !wasm.starts_with(b"\0asm") {
        return Err(CheckError::NotWasm);
    }
    if Parser::is_core_wasm(wasm) {
        return Err(CheckError::CoreModule);
    }
    if !Parser::is_component(wasm) {
        return Err(CheckError::UnknownHeader);
    }
    let mut surface = Surface::default();
    // Nested modules and components report their own Version..End; only depth 1 is ours.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(CheckError::malformed)?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(CheckError::malformed)?;
                    surface
                        .imports
                        .push(full_name(import.name.name, import.name.version_suffix));
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(CheckError::malformed)?;
                    surface
                        .exports
                        .push(full_name(export.name.name, export.name.version_suffix));
                }
            }
            _ => {}
        }
    }
    Ok(surface)
}

/// A name with its optional version suffix (`a:b/c@0.2` + `.1`) re-attached.
fn full_name(name: &str, suffix: Option<&str>) -> String {
    match suffix {
        Some(suffix) => format!("{name}{suffix}"),
        None => name.to_owned(),
    }
}

/// Splits `ns:pkg/iface@1.2.3` into (`ns:pkg`, `iface`, version text).
fn split_name(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let (path, version) = match name.split_once('@') {
        Some((path, version)) => (path, Some(version)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/')?;
    Some((package, interface, version))
}

fn check_version(name: &str, version: Option<&str>) -> Result<(), CheckError> {
    let found = version.unwrap_or("none");
    match version.and_then(Version::parse) {
        // Additions bump the minor, so anything up to this host's minor links; patches never
        // change the contract.
        Some(v)
            if v.compatible_with(WIT_VERSION)
                && (v.major, v.minor) <= (WIT_VERSION.major, WIT_VERSION.minor) =>
        {
            Ok(())
        }
        _ => Err(CheckError::IncompatibleVersion {
            name: name.to_owned(),
            found: found.to_owned(),
        }),
    }
}

/// Checks a component's imports and exports against the world this host serves.
pub fn check_surface(surface: &Surface) -> Result<(), CheckError> {
    for name in &surface.imports {
        match split_name(name) {
            Some((package, interface, version)) if package == WIT_PACKAGE => {
                check_version(name, version)?;
                if !HOST_INTERFACES.contains(&interface) {
                    return Err(CheckError::UnknownImport { name: name.clone() });
                }
            }
            Some((package, _, Some(version))) if package.starts_with("wasi:") => {
                let supported =
                    Version::parse(version).is_some_and(|v| v.major == 0 && v.minor == 2);
                if !supported {
                    return Err(CheckError::UnknownImport { name: name.clone() });
                }
            }
            _ => return Err(CheckError::UnknownImport { name: name.clone() }),
        }
    }
    let handler = surface.exports.iter().find(|name| {
        split_name(name).is_some_and(|(package, interface, _)| {
            package == WIT_PACKAGE && interface == EXPORT_INTERFACE
        })
    });
    match handler {
        Some(name) => check_version(name, split_name(name).and_then(|(_, _, v)| v)),
        None => Err(CheckError::MissingExport {
            exports: if surface.exports.is_empty() {
                "nothing".into()
            } else {
                surface.exports.join(", ")
            },
        }),
    }
}

/// [`surface`] then [`check_surface`].
pub fn check_bytes(wasm: &[u8]) -> Result<Surface, CheckError> {
    let surface = surface(wasm)?;
    check_surface(&surface)?;
    Ok(surface)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn surface_of(imports: &[&str], exports: &[&str]) -> Surface {
        Surface {
            imports: imports.iter().map(|s| (*s).to_owned()).collect(),
            exports: exports.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_wit_file_declares_the_version_this_host_serves() {
        let wit = include_str!("../../../wit/fulfillment.wit");
        assert!(wit.contains(&format!("package {WIT_PACKAGE}@{WIT_VERSION};")));
    }

    #[test]
    fn accepts_the_world_and_older_minors() {
        let ok = surface_of(
            &[
                "wasi:io/streams@0.2.6",
                "fulfilld:fulfillment/salesforce@1.0.0",
            ],
            &["fulfilld:fulfillment/handler@1.0.0"],
        );
        assert_eq!(check_surface(&ok), Ok(()));
        let patch = surface_of(&[], &["fulfilld:fulfillment/handler@1.0.7"]);
        assert_eq!(check_surface(&patch), Ok(()));
        let current = surface_of(
            &["fulfilld:fulfillment/job@1.1.0"],
            &["fulfilld:fulfillment/handler@1.1.0"],
        );
        assert_eq!(check_surface(&current), Ok(()));
        let newer_minor = surface_of(&[], &["fulfilld:fulfillment/handler@1.2.0"]);
        assert!(check_surface(&newer_minor).is_err());
    }

    #[test]
    fn names_what_is_wrong() {
        let missing = surface_of(&[], &["fulfilld:other/handler@1.0.0"]);
        let err = check_surface(&missing).unwrap_err();
        assert!(
            err.to_string().contains("fulfilld:other/handler@1.0.0"),
            "{err}"
        );

        let unknown = surface_of(
            &["fulfilld:fulfillment/secrets@1.0.0"],
            &["fulfilld:fulfillment/handler@1.0.0"],
        );
        let err = check_surface(&unknown).unwrap_err();
        assert_eq!(
            err,
            CheckError::UnknownImport {
                name: "fulfilld:fulfillment/secrets@1.0.0".into()
            }
        );

        let future = surface_of(&[], &["fulfilld:fulfillment/handler@2.0.0"]);
        let err = check_surface(&future).unwrap_err();
        assert!(matches!(err, CheckError::IncompatibleVersion { .. }));
        assert!(
            err.to_string().contains("2.0.0") && err.to_string().contains("1.1.0"),
            "{err}"
        );

        assert_eq!(surface(b"hello"), Err(CheckError::NotWasm));
        assert_eq!(surface(b"\0asm\x01\0\0\0"), Err(CheckError::CoreModule));
    }

    #[test]
    fn a_parse_error_is_kept_as_the_cause() {
        // A component header, then a section running past the end of the file.
        let err = surface(b"\0asm\x0d\0\x01\0\x01\x05").unwrap_err();
        assert!(matches!(err, CheckError::Malformed(_)), "{err:?}");
        assert_eq!(err.to_string(), "not a valid component");
        let text = crate::error::chain(&err);
        assert!(
            text.starts_with("not a valid component: ") && text.contains("(at offset 0x"),
            "{text}"
        );
    }
}
