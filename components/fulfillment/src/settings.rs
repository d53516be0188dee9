//! The default rules' WHMCS settings: component config keys, each declared with its default in
//! `component.toml` (`[config]`) and described in docs/component-authoring.md. An unset or
//! blank key reads as that default; a value that does not parse fails the attempt in
//! `validation` with [`CONFIG`], before anything is written to WHMCS.
//!
//! - `WHMCS_VERSION` (default `8.12`): the WHMCS installation's version. AddOrder's `qty[]`
//!   exists only from 8.12 (WHMCS API reference, AddOrder, version history); before it the
//!   rules send one AddOrder line of qty 1 per unit.
//! - `WHMCS_NOEMAIL`, `WHMCS_NOINVOICE`, `WHMCS_NOINVOICEEMAIL` (default `0` each): AddOrder's
//!   `noemail`, `noinvoice`, `noinvoiceemail`, always sent as `1` or `0`.
//! - `WHMCS_AUTOSETUP`, `WHMCS_SENDEMAIL` (default `1` each): AcceptOrder's `autosetup` and
//!   `sendemail`, always sent as `1` or `0` (they override the products' own settings).
//! - `WHMCS_DEFAULT_GATEWAY` (no default): the gateway module WHMCS's "Use Default" means (the
//!   first gateway under Setup > Payments > Payment Gateways). Used for a client whose only pay
//!   methods are stored locally and whose own default gateway is blank ("Use Default");
//!   unset, such a client fails 409.

use fulfillment_sdk::Host;
use fulfillment_sdk::serde_json::{Map, Value, json};

use crate::failure::{StepFailure, fail};
use crate::steps::VALIDATION;

/// Failure code of a config value the rules cannot read.
pub const CONFIG: &str = "CONFIG";

/// Config key: the WHMCS version (`major.minor`, e.g. `8.11`; further parts are ignored).
pub const WHMCS_VERSION: &str = "WHMCS_VERSION";
/// The version assumed when `WHMCS_VERSION` is unset.
pub const DEFAULT_WHMCS_VERSION: &str = "8.12";
/// The first WHMCS version whose AddOrder reads `qty[]`.
pub const QTY_SINCE: (u32, u32) = (8, 12);

/// Config keys of AddOrder's flags: `(config key, AddOrder parameter, default)`.
pub const ADD_ORDER_FLAGS: [(&str, &str, bool); 3] = [
    ("WHMCS_NOEMAIL", "noemail", false),
    ("WHMCS_NOINVOICE", "noinvoice", false),
    ("WHMCS_NOINVOICEEMAIL", "noinvoiceemail", false),
];

/// Config keys of AcceptOrder's flags: `(config key, AcceptOrder parameter, default)`.
pub const ACCEPT_ORDER_FLAGS: [(&str, &str, bool); 2] = [
    ("WHMCS_AUTOSETUP", "autosetup", true),
    ("WHMCS_SENDEMAIL", "sendemail", true),
];

/// Config key: the gateway module of WHMCS's "Use Default" (e.g. `offlinecc`).
pub const WHMCS_DEFAULT_GATEWAY: &str = "WHMCS_DEFAULT_GATEWAY";

/// The settings one attempt runs with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// `WHMCS_VERSION` as read (or the default), for the logs.
    pub whmcs_version: String,
    /// True from WHMCS 8.12: AddOrder reads `qty[]`.
    pub qty_supported: bool,
    /// `noemail`, `noinvoice`, `noinvoiceemail` as 1/0.
    pub add_order_flags: Map<String, Value>,
    /// `autosetup`, `sendemail` as 1/0.
    pub accept_order_flags: Map<String, Value>,
    /// `WHMCS_DEFAULT_GATEWAY`, when set: what a client on "Use Default" pays with.
    pub default_gateway: Option<String>,
}

/// Reads every setting; the first value that does not parse fails with [`CONFIG`].
pub(crate) fn read(host: &dyn Host) -> Result<Settings, StepFailure> {
    let version =
        configured(host, WHMCS_VERSION).unwrap_or_else(|| DEFAULT_WHMCS_VERSION.to_owned());
    let Some(parsed) = parse_version(&version) else {
        return Err(invalid(
            WHMCS_VERSION,
            "a version such as 8.11 or 8.12.1",
            &version,
        ));
    };
    Ok(Settings {
        qty_supported: parsed >= QTY_SINCE,
        whmcs_version: version,
        add_order_flags: flags(host, &ADD_ORDER_FLAGS)?,
        accept_order_flags: flags(host, &ACCEPT_ORDER_FLAGS)?,
        default_gateway: configured(host, WHMCS_DEFAULT_GATEWAY),
    })
}

/// The key's value, trimmed; `None` when unset or blank.
fn configured(host: &dyn Host, key: &str) -> Option<String> {
    host.config(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn flags(host: &dyn Host, keys: &[(&str, &str, bool)]) -> Result<Map<String, Value>, StepFailure> {
    let mut out = Map::new();
    for (key, param, default) in keys {
        let on = match configured(host, key) {
            None => *default,
            Some(text) => parse_flag(&text)
                .ok_or_else(|| invalid(key, "1, 0, true, false, yes or no", &text))?,
        };
        out.insert((*param).to_owned(), json!(u8::from(on)));
    }
    Ok(out)
}

fn invalid(key: &str, expected: &str, value: &str) -> StepFailure {
    let shown: String = value.chars().take(40).collect();
    let message = format!("Config {key} '{shown}' is not {expected}");
    fail(VALIDATION, CONFIG, message)
}

/// `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` (any case).
pub(crate) fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `major.minor` of a version such as `8.11`, `8.12.1` or `v8.13` (a missing minor is 0).
pub(crate) fn parse_version(text: &str) -> Option<(u32, u32)> {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    let mut parts = text.split('.');
    let number = |part: &str| {
        (!part.is_empty() && part.len() <= 6 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().ok())
            .flatten()
    };
    let major = number(parts.next()?)?;
    let minor = match parts.next() {
        None => 0,
        Some(part) => number(part)?,
    };
    // A patch or build part may carry a suffix (8.12.0-rc1); only major.minor matter.
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(parse_version("8.11"), Some((8, 11)));
        assert_eq!(parse_version("8.12.1"), Some((8, 12)));
        assert_eq!(parse_version("v8.13.0-rc1"), Some((8, 13)));
        assert_eq!(parse_version("9"), Some((9, 0)));
        assert!(parse_version("8.9").is_some_and(|v| v < QTY_SINCE));
        assert!(parse_version("8.11.9").is_some_and(|v| v < QTY_SINCE));
        assert!(parse_version("8.12").is_some_and(|v| v >= QTY_SINCE));
        assert!(parse_version("10.0").is_some_and(|v| v >= QTY_SINCE));
        for bad in ["", "latest", "8.x", ".12", "8..1", "-8.12"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn flags_read_as_one_or_zero() {
        for on in ["1", "true", "YES", "On"] {
            assert_eq!(parse_flag(on), Some(true));
        }
        for off in ["0", "False", "no", "off"] {
            assert_eq!(parse_flag(off), Some(false));
        }
        assert_eq!(parse_flag("2"), None);
    }
}
