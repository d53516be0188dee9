//! The capability policy: which Salesforce records and fields a component may update and which
//! WHMCS actions it may call. Anything not listed is refused with a `forbidden` error (nothing is
//! sent) and logged; it is never a silent success.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::CallError;

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

/// Loaded from TOML (see `docs/operations.md`), e.g.
///
/// ```toml
/// billing_actions = ["GetPayMethods", "AddOrder", "AcceptOrder", "GetOrders"]
/// [update]
/// Order = ["Activation_Status__c", "WHMCS_Order_ID__c"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityPolicy {
    /// sObject name -> the fields a component may write on it.
    #[serde(default)]
    pub update: BTreeMap<String, BTreeSet<String>>,
    /// WHMCS API actions a component may call.
    #[serde(default)]
    pub billing_actions: BTreeSet<String>,
}

impl Default for CapabilityPolicy {
    /// What the default `fulfillment` rules need, and nothing more.
    fn default() -> Self {
        let order_fields = [
            "Activation_Status__c",
            "WHMCS_Order_ID__c",
            "Activation_Error_Code__c",
            "Activation_Error_Message__c",
        ];
        let actions = ["GetPayMethods", "AddOrder", "AcceptOrder", "GetOrders"];
        CapabilityPolicy {
            update: BTreeMap::from([(
                "Order".to_owned(),
                order_fields.iter().map(|f| (*f).to_owned()).collect(),
            )]),
            billing_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl CapabilityPolicy {
    /// Parses a policy file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a policy file; the error names the file.
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| PolicyFileError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// May the component write `fields` on a record of `sobject`?
    pub fn check_update(
        &self,
        sobject: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), CallError> {
        let Some(allowed) = self.update.get(sobject) else {
            return Err(CallError::forbidden(format!(
                "updating {sobject} records is not allowed by the capability policy"
            )));
        };
        let mut refused: Vec<&str> = fields
            .keys()
            .filter(|field| !allowed.contains(field.as_str()))
            .map(String::as_str)
            .collect();
        refused.sort_unstable();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(CallError::forbidden(format!(
                "the capability policy does not allow updating {sobject}.{}",
                refused.join(format!(", {sobject}.").as_str())
            )))
        }
    }

    /// May the component call WHMCS `action`?
    pub fn check_billing(&self, action: &str) -> Result<(), CallError> {
        if self.billing_actions.contains(action) {
            Ok(())
        } else {
            Err(CallError::forbidden(format!(
                "the WHMCS action {action} is not allowed by the capability policy"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn fields(names: &[&str]) -> Map<String, Value> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), Value::Null))
            .collect()
    }

    #[test]
    fn default_policy_allows_the_default_rules() {
        let policy = CapabilityPolicy::default();
        assert!(
            policy
                .check_update(
                    "Order",
                    &fields(&["Activation_Status__c", "WHMCS_Order_ID__c"])
                )
                .is_ok()
        );
        assert!(policy.check_billing("AddOrder").is_ok());
    }

    #[test]
    fn refusals_name_what_was_refused() {
        let policy = CapabilityPolicy::default();
        let err = policy
            .check_update(
                "Order",
                &fields(&["Status", "Activation_Status__c", "Name"]),
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert_eq!(err.code, "FORBIDDEN");
        assert!(
            err.message.contains("Order.Name, Order.Status"),
            "{}",
            err.message
        );
        let err = policy
            .check_update("Account", &fields(&["Name"]))
            .unwrap_err();
        assert!(err.message.contains("Account"));
        let err = policy.check_billing("DeleteClient").unwrap_err();
        assert!(err.message.contains("DeleteClient"));
    }

    #[test]
    fn policy_file_rejects_unknown_keys() {
        let err = CapabilityPolicy::from_toml("billing_action = [\"AddOrder\"]").unwrap_err();
        assert!(err.to_string().contains("billing_action"), "{err}");
        let policy = CapabilityPolicy::from_toml(
            "billing_actions = [\"GetOrders\"]\n[update]\nOrder = [\"Status\"]\n",
        )
        .unwrap();
        assert!(policy.check_billing("GetOrders").is_ok());
        assert!(policy.check_billing("AddOrder").is_err());
    }
}
