//! The component manifest: what a component version is, which non-secret settings it reads and
//! which capabilities it needs. Written by the component's authors as `component.toml`,
//! embedded into the `.wasm` by `fulfilld component pack` as a top-level custom section named
//! [`SECTION`], so it travels with the bytes everywhere they go (registry, Redis, signatures:
//! the signature over the bytes covers it).
//!
//! ```toml
//! [component]
//! name = "acme-rules"       # what info() returns
//! version = "0.1.0"         # what info() returns
//! wit = "1.1"               # the fulfilld:fulfillment WIT it was built against
//!
//! [config]
//! PROVISIONING_NOTE = "standard"                      # a default value
//! PORTAL_PRICEBOOK_ID = { description = "optional" }  # no default: none unless the host sets it
//!
//! [capabilities]
//! query = ["Order", "OrderItem"]
//! billing = ["GetPayMethods", "GetClientsDetails", "AddOrder", "AcceptOrder", "GetOrders"]
//! [capabilities.update]
//! Order = ["Activation_Status__c", "WHMCS_Order_ID__c"]
//! [capabilities.read]      # optional: checked by `fulfilld doctor`, not enforced
//! Order = ["Id", "Status", "Account.WHMCS_Client_ID__c"]
//! ```
//!
//! The host's capability policy is a ceiling: a manifest asking beyond it is refused, naming each
//! excess; a component with a manifest gets exactly what it asks, and reads exactly the config
//! keys it lists (a host setting `FULFILLD_CONFIG_<KEY>`, or the runbook's own setting of that
//! name, overrides a value per environment). A component without a manifest runs under the
//! host's policy and reads the settings the host exposes, as before manifests existed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::check::Version;
use super::policy::CapabilityPolicy;

/// Name of the custom section the manifest is embedded in.
pub const SECTION: &str = "fulfilld-manifest";
/// Parts of a field path in `capabilities.read` (SOQL allows five levels of parent
/// relationships: `A.B.C.D.E.Field`).
const MAX_PATH_DEPTH: usize = 6;
/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// At most this many config keys, sObjects, fields per sObject, actions or queried objects.
const MAX_ENTRIES: usize = 256;
/// The longest config value, in bytes (a manifest's default or a host setting).
pub const MAX_VALUE_BYTES: usize = 4096;
/// The longest name (config key, sObject, field, action, component name or version).
const MAX_NAME: usize = 80;

/// A manifest that cannot be used. Messages name the key at fault; a manifest's text is never
/// quoted (a TOML error is told by line and the parser's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Invalid(String),
    #[error("the component's {SECTION} section: {0}")]
    Section(String),
    #[error(
        "manifest names {manifest_name} {manifest_version} but the component's info() says \
         {name} {version}: pack the manifest of this build"
    )]
    Identity {
        manifest_name: String,
        manifest_version: String,
        name: String,
        version: String,
    },
    #[error(
        "manifest says WIT {manifest} but the component was built against \
         fulfilld:fulfillment@{built}"
    )]
    Wit { manifest: String, built: String },
    /// The capabilities asked beyond the host's policy, each named (`update Order.Name`,
    /// `billing DeleteClient`, `query Account`).
    #[error("the manifest asks beyond the host's capability policy: {}", .0.join(", "))]
    BeyondCeiling(Vec<String>),
}

fn invalid(message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(message.into())
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub component: Identity,
    /// Config keys the component reads, with their defaults.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigEntry>,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Who the component is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    pub version: String,
    /// `major.minor` of the `fulfilld:fulfillment` WIT it was built against.
    pub wit: String,
}

/// One config key: a default value, or a table with an optional default and a description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigEntry {
    Default(String),
    Described {
        #[serde(default)]
        default: Option<String>,
        #[serde(default)]
        description: Option<String>,
    },
}

impl ConfigEntry {
    /// The value used when no host setting overrides it.
    pub fn default_value(&self) -> Option<&str> {
        match self {
            ConfigEntry::Default(value) => Some(value),
            ConfigEntry::Described { default, .. } => default.as_deref(),
        }
    }
}

/// What a component asks to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// sObjects named in the `FROM` of its queries (child relationships in a subquery of the
    /// field list, e.g. `(SELECT Id FROM OrderItems)`, are covered by the parent object).
    #[serde(default)]
    pub query: BTreeSet<String>,
    /// sObject -> fields it updates.
    #[serde(default)]
    pub update: BTreeMap<String, BTreeSet<String>>,
    /// WHMCS API actions it calls.
    #[serde(default)]
    pub billing: BTreeSet<String>,
    /// sObject -> fields its queries read, relationship paths included
    /// (`Account.WHMCS_Client_ID__c`). A declaration for `fulfilld doctor`, which checks that the
    /// org has them; not enforced at run time (`query` limits the objects, not their fields).
    #[serde(default)]
    pub read: BTreeMap<String, BTreeSet<String>>,
}

impl Manifest {
    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "{} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                text.len()
            )));
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| invalid(crate::error::toml_error(text, &e)))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let Identity { name, version, wit } = &self.component;
        check_text("component.name", name)?;
        check_text("component.version", version)?;
        if Version::parse(version).is_none() {
            return Err(invalid(format!(
                "component.version {version:?} is not a semantic version (major.minor.patch)"
            )));
        }
        wit_version(wit)?;
        limit("config", self.config.len())?;
        for (key, entry) in &self.config {
            if !is_config_key(key) {
                return Err(invalid(format!(
                    "config key {key:?}: use letters, digits and _ (starting with a letter), at \
                     most {MAX_NAME} characters"
                )));
            }
            let (value, description) = match entry {
                ConfigEntry::Default(value) => (Some(value), None),
                ConfigEntry::Described {
                    default,
                    description,
                } => (default.as_ref(), description.as_ref()),
            };
            for text in value.into_iter().chain(description) {
                if text.len() > MAX_VALUE_BYTES {
                    return Err(invalid(format!(
                        "config.{key}: {} bytes, over the {MAX_VALUE_BYTES}-byte limit",
                        text.len()
                    )));
                }
            }
        }
        let caps = &self.capabilities;
        limit("capabilities.query", caps.query.len())?;
        limit("capabilities.billing", caps.billing.len())?;
        limit("capabilities.update", caps.update.len())?;
        for object in &caps.query {
            check_identifier("capabilities.query", object)?;
        }
        for action in &caps.billing {
            check_identifier("capabilities.billing", action)?;
        }
        for (object, fields) in &caps.update {
            check_identifier("capabilities.update", object)?;
            limit(&format!("capabilities.update.{object}"), fields.len())?;
            for field in fields {
                check_identifier(&format!("capabilities.update.{object}"), field)?;
            }
        }
        limit("capabilities.read", caps.read.len())?;
        for (object, paths) in &caps.read {
            check_identifier("capabilities.read", object)?;
            let what = format!("capabilities.read.{object}");
            limit(&what, paths.len())?;
            for path in paths {
                if path.split('.').count() > MAX_PATH_DEPTH {
                    return Err(invalid(format!(
                        "{what}: {path:?} has more than {MAX_PATH_DEPTH} parts"
                    )));
                }
                for part in path.split('.') {
                    check_identifier(&what, part)?;
                }
            }
        }
        Ok(())
    }

    /// What the manifest asks beyond `ceiling`, one entry per excess; empty when within it.
    pub fn excess(&self, ceiling: &CapabilityPolicy) -> Vec<String> {
        let caps = &self.capabilities;
        let mut excess = Vec::new();
        excess.extend(
            caps.query
                .iter()
                .filter(|object| !ceiling.allows_query(object))
                .map(|object| format!("query {object}")),
        );
        for (object, fields) in &caps.update {
            let allowed = ceiling.update.get(object);
            excess.extend(
                fields
                    .iter()
                    .filter(|field| !allowed.is_some_and(|allowed| allowed.contains(*field)))
                    .map(|field| format!("update {object}.{field}")),
            );
        }
        excess.extend(
            caps.billing
                .iter()
                .filter(|action| !ceiling.billing_actions.contains(*action))
                .map(|action| format!("billing {action}")),
        );
        excess
    }

    /// The policy a component with this manifest runs under: exactly what it asks.
    pub fn policy(&self) -> CapabilityPolicy {
        let caps = &self.capabilities;
        CapabilityPolicy {
            update: caps.update.clone(),
            billing_actions: caps.billing.clone(),
            query: Some(caps.query.clone()),
            update_other_orders: false,
            redact: Default::default(),
        }
    }

    /// Checks the manifest against the component it came in: its `info()` and the WIT version it
    /// imports (`built`).
    pub fn check_component(
        &self,
        name: &str,
        version: &str,
        built: Option<Version>,
    ) -> Result<(), ManifestError> {
        if self.component.name != name || self.component.version != version {
            return Err(ManifestError::Identity {
                manifest_name: self.component.name.clone(),
                manifest_version: self.component.version.clone(),
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
        if let Some(built) = built {
            let (major, minor) = wit_version(&self.component.wit)?;
            if (major, minor) != (built.major, built.minor) {
                return Err(ManifestError::Wit {
                    manifest: self.component.wit.clone(),
                    built: format!("{}.{}.{}", built.major, built.minor, built.patch),
                });
            }
        }
        Ok(())
    }

    /// The value of config `key` for this component: none when the manifest does not list it;
    /// otherwise the host's setting (`host`) when there is one, else the manifest's default.
    pub fn config_value(&self, key: &str, host: Option<String>) -> Option<String> {
        let entry = self.config.get(key)?;
        host.or_else(|| entry.default_value().map(str::to_owned))
    }
}

fn limit(what: &str, count: usize) -> Result<(), ManifestError> {
    if count > MAX_ENTRIES {
        Err(invalid(format!(
            "{what}: {count} entries, over the limit of {MAX_ENTRIES}"
        )))
    } else {
        Ok(())
    }
}

fn check_text(what: &str, text: &str) -> Result<(), ManifestError> {
    if text.is_empty() || text.len() > MAX_NAME || text.chars().any(char::is_control) {
        Err(invalid(format!(
            "{what} must be 1 to {MAX_NAME} printable characters"
        )))
    } else {
        Ok(())
    }
}

/// A Salesforce API name or a WHMCS action: letters, digits and `_`, starting with a letter.
fn check_identifier(what: &str, name: &str) -> Result<(), ManifestError> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: {name:?} is not a name (letters, digits and _, starting with a letter, at \
             most {MAX_NAME} characters)"
        )))
    }
}

/// A config key: what [`check_identifier`] accepts; it also names the host setting
/// `FULFILLD_CONFIG_<KEY>`.
pub fn is_config_key(key: &str) -> bool {
    check_identifier("", key).is_ok()
}

/// `major.minor` (a patch is allowed and ignored).
fn wit_version(text: &str) -> Result<(u64, u64), ManifestError> {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor)), None | Some(Some(_)), None) => Ok((major, minor)),
        _ => Err(invalid(format!(
            "component.wit {text:?} is not a WIT version (major.minor, e.g. \"1.1\")"
        ))),
    }
}

// --- The custom section -----------------------------------------------------------------------

/// The 8-byte preamble of a component binary (magic, version 0x0d, layer 1).
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const CUSTOM_SECTION_ID: u8 = 0;

/// One top-level section: its id, where it starts (the id byte) and ends, and where its
/// contents start.
struct Section {
    id: u8,
    start: usize,
    contents: usize,
    end: usize,
}

fn read_leb_u32(bytes: &[u8], mut at: usize) -> Option<(u32, usize)> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v, at));
        }
    }
    None
}

fn write_leb_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Calls `visit` with each top-level section of a component binary, in order (nested modules
/// and components stay inside their section); nothing is collected, whatever the count.
fn walk(
    wasm: &[u8],
    mut visit: impl FnMut(&Section) -> Result<(), ManifestError>,
) -> Result<(), ManifestError> {
    if !wasm.starts_with(&COMPONENT_PREAMBLE) {
        return Err(ManifestError::Section(
            "not a WebAssembly component (wasm32-wasip2 builds are components)".into(),
        ));
    }
    let mut at = COMPONENT_PREAMBLE.len();
    while at < wasm.len() {
        let id = wasm[at];
        let truncated = || ManifestError::Section(format!("truncated section at offset {at}"));
        let (size, contents) = read_leb_u32(wasm, at + 1).ok_or_else(truncated)?;
        let end = contents
            .checked_add(size as usize)
            .filter(|end| *end <= wasm.len())
            .ok_or_else(truncated)?;
        visit(&Section {
            id,
            start: at,
            contents,
            end,
        })?;
        at = end;
    }
    Ok(())
}

/// The name and payload of a custom section.
fn custom<'a>(wasm: &'a [u8], section: &Section) -> Option<(&'a [u8], &'a [u8])> {
    if section.id != CUSTOM_SECTION_ID {
        return None;
    }
    let (len, name_start) = read_leb_u32(wasm, section.contents)?;
    let name_end = name_start.checked_add(len as usize)?;
    if name_end > section.end {
        return None;
    }
    Some((&wasm[name_start..name_end], &wasm[name_end..section.end]))
}

/// The manifest text embedded in `wasm`, if any. More than one manifest section, one over
/// [`MAX_MANIFEST_BYTES`] or one that is not UTF-8 is an error.
pub fn embedded(wasm: &[u8]) -> Result<Option<&str>, ManifestError> {
    let mut found = None;
    walk(wasm, |section| {
        let Some((name, payload)) = custom(wasm, section) else {
            return Ok(());
        };
        if name != SECTION.as_bytes() {
            return Ok(());
        }
        if found.is_some() {
            return Err(ManifestError::Section(
                "more than one manifest section".into(),
            ));
        }
        if payload.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Section(format!(
                "{} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                payload.len()
            )));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| ManifestError::Section("the manifest is not UTF-8 text".into()))?;
        found = Some(text);
        Ok(())
    })?;
    Ok(found)
}

/// The parsed manifest embedded in `wasm`, if any.
pub fn from_component(wasm: &[u8]) -> Result<Option<Manifest>, ManifestError> {
    embedded(wasm)?.map(Manifest::parse).transpose()
}

/// `wasm` with `manifest` embedded: the text is validated first, and a manifest the component
/// already carries is replaced.
pub fn embed(wasm: &[u8], manifest: &str) -> Result<Vec<u8>, ManifestError> {
    Manifest::parse(manifest)?;
    let mut out = Vec::with_capacity(wasm.len() + manifest.len() + 32);
    out.extend_from_slice(&COMPONENT_PREAMBLE);
    walk(wasm, |section| {
        let ours = custom(wasm, section).is_some_and(|(name, _)| name == SECTION.as_bytes());
        if !ours {
            out.extend_from_slice(&wasm[section.start..section.end]);
        }
        Ok(())
    })?;
    let mut contents = Vec::with_capacity(manifest.len() + SECTION.len() + 5);
    write_leb_u32(&mut contents, SECTION.len() as u32);
    contents.extend_from_slice(SECTION.as_bytes());
    contents.extend_from_slice(manifest.as_bytes());
    out.push(CUSTOM_SECTION_ID);
    // Bounded by MAX_MANIFEST_BYTES (checked by `parse`), so it fits a u32.
    write_leb_u32(&mut out, u32::try_from(contents.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&contents);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[component]
name = "acme-rules"
version = "0.2.0"
wit = "1.1"

[config]
PROVISIONING_NOTE = "standard"
PORTAL_PRICEBOOK_ID = { description = "optional" }

[capabilities]
query = ["Order", "OrderItem"]
billing = ["AddOrder", "AcceptOrder"]
[capabilities.update]
Order = ["Activation_Status__c", "Provisioning_Note__c"]
"#;

    fn component() -> Vec<u8> {
        // The smallest component: the preamble and one unrelated custom section.
        let mut wasm = COMPONENT_PREAMBLE.to_vec();
        wasm.extend_from_slice(&[0, 4, 3, b'a', b'b', b'c']);
        wasm
    }

    #[test]
    fn read_declarations_parse_with_relationship_paths() {
        let text = format!(
            "{MANIFEST}\n[capabilities.read]\nOrder = [\"Id\", \"Account.WHMCS_Client_ID__c\"]\n"
        );
        let manifest = Manifest::parse(&text).unwrap();
        let order = &manifest.capabilities.read["Order"];
        assert!(order.contains("Account.WHMCS_Client_ID__c") && order.contains("Id"));
        // A declaration only: no capability beyond the policy comes from it.
        assert!(
            manifest
                .excess(&CapabilityPolicy::default())
                .iter()
                .all(|e| !e.contains("read"))
        );
    }

    #[test]
    fn a_manifest_parses_and_round_trips_through_the_section() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        assert_eq!(manifest.component.name, "acme-rules");
        assert_eq!(manifest.config.len(), 2);
        let wasm = component();
        assert_eq!(embedded(&wasm).unwrap(), None);
        let packed = embed(&wasm, MANIFEST).unwrap();
        assert!(
            packed.starts_with(&wasm),
            "other sections are kept, in order"
        );
        assert_eq!(from_component(&packed).unwrap(), Some(manifest));
        // Packing again replaces the manifest instead of adding a second one.
        let other = MANIFEST.replace("0.2.0", "0.3.0");
        let repacked = embed(&packed, &other).unwrap();
        assert_eq!(embedded(&repacked).unwrap(), Some(other.as_str()));
    }

    #[test]
    fn config_values_come_from_the_host_then_the_default_and_only_for_listed_keys() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        assert_eq!(
            manifest.config_value("PROVISIONING_NOTE", None).as_deref(),
            Some("standard")
        );
        assert_eq!(
            manifest
                .config_value("PROVISIONING_NOTE", Some("rush".into()))
                .as_deref(),
            Some("rush")
        );
        assert_eq!(manifest.config_value("PORTAL_PRICEBOOK_ID", None), None);
        assert_eq!(
            manifest.config_value("UNLISTED", Some("x".into())),
            None,
            "a key the manifest does not list is none, whatever the host has"
        );
    }

    #[test]
    fn the_ceiling_names_each_excess() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let ceiling = CapabilityPolicy::default();
        assert_eq!(
            manifest.excess(&ceiling),
            vec!["update Order.Provisioning_Note__c".to_owned()]
        );
        let mut narrow = CapabilityPolicy {
            query: Some(["Order".to_owned()].into()),
            ..CapabilityPolicy::default()
        };
        narrow.billing_actions.remove("AcceptOrder");
        assert_eq!(
            manifest.excess(&narrow),
            vec![
                "query OrderItem".to_owned(),
                "update Order.Provisioning_Note__c".to_owned(),
                "billing AcceptOrder".to_owned(),
            ]
        );
        let policy = manifest.policy();
        assert!(policy.check_billing("GetPayMethods").is_err());
        assert!(policy.check_query("SELECT Id FROM Account").is_err());
        assert!(policy.check_query("SELECT Id FROM Order").is_ok());
    }

    #[test]
    fn identity_and_wit_must_match_the_component() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let built = Version::parse("1.1.0");
        assert!(
            manifest
                .check_component("acme-rules", "0.2.0", built)
                .is_ok()
        );
        let err = manifest
            .check_component("acme-rules", "0.1.0", built)
            .unwrap_err();
        assert!(err.to_string().contains("0.1.0"), "{err}");
        let err = manifest
            .check_component("acme-rules", "0.2.0", Version::parse("1.0.0"))
            .unwrap_err();
        assert!(err.to_string().contains("1.0.0"), "{err}");
    }

    #[test]
    fn bad_manifests_are_named_and_never_quoted() {
        let cases = [
            ("[component]\nname = \"x\"\n", "line"),
            (
                &MANIFEST.replace("PROVISIONING_NOTE", "\"bad key\""),
                "config key",
            ),
            (&MANIFEST.replace("\"1.1\"", "\"one\""), "component.wit"),
            (&MANIFEST.replace("0.2.0", "latest"), "component.version"),
            (
                &MANIFEST.replace("\"OrderItem\"", "\"Order Item\""),
                "query",
            ),
            (
                &format!("{MANIFEST}\n[extra]\nsecret = \"hunter2\"\n"),
                "line",
            ),
            (
                &format!("{MANIFEST}\n[capabilities.read]\nOrder = [\"Account.Bad Name\"]\n"),
                "capabilities.read.Order",
            ),
            (
                &format!("{MANIFEST}\n[capabilities.read]\nOrder = [\"A.B.C.D.E.F.G\"]\n"),
                "more than 6 parts",
            ),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn broken_sections_are_refused() {
        assert!(embedded(b"\0asm\x01\0\0\0").is_err(), "a core module");
        let mut truncated = component();
        truncated.extend_from_slice(&[0, 0x7f]);
        assert!(embedded(&truncated).is_err());
        let packed = embed(&component(), MANIFEST).unwrap();
        let mut twice = packed.clone();
        twice.extend_from_slice(&packed[component().len()..]);
        assert!(
            embedded(&twice)
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
        let mut not_utf8 = component();
        let mut contents = vec![SECTION.len() as u8];
        contents.extend_from_slice(SECTION.as_bytes());
        contents.extend_from_slice(&[0xff, 0xfe]);
        not_utf8.push(0);
        not_utf8.push(contents.len() as u8);
        not_utf8.extend_from_slice(&contents);
        assert!(embedded(&not_utf8).is_err());
    }
}
