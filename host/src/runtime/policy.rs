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
    /// sObjects a component may name in the `FROM` of a query; none listed (the default) means
    /// any. A component with a manifest gets the objects its manifest lists.
    #[serde(default)]
    pub query: Option<BTreeSet<String>>,
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
            query: None,
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

    /// May the component run `soql`? Every sObject named in a `FROM` must be allowed: the
    /// query's own and those of semi-join subqueries (`WHERE Id IN (SELECT .. FROM X)`); a child
    /// relationship subquery in the field list (`(SELECT Id FROM OrderItems)`) is covered by
    /// its parent.
    pub fn check_query(&self, soql: &str) -> Result<(), CallError> {
        let Some(allowed) = &self.query else {
            return Ok(());
        };
        let objects = queried_objects(soql);
        if objects.is_empty() {
            return Err(CallError::forbidden(
                "the query names no sObject after FROM, so the capability policy cannot allow it",
            ));
        }
        let mut refused: Vec<String> = objects
            .into_iter()
            .filter(|object| !allowed.iter().any(|a| a.eq_ignore_ascii_case(object)))
            .collect();
        refused.sort_unstable();
        refused.dedup();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(CallError::forbidden(format!(
                "the capability policy does not allow querying {}",
                refused.join(", ")
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

/// A SOQL token that matters for finding the queried objects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Word(String),
}

fn tokens(soql: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '\'' => {
                // A string literal: skip it, escapes included.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '\'' => break,
                        _ => {}
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '.' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(word));
            }
            _ => {}
        }
    }
    out
}

fn is_keyword(token: Option<&Token>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

/// The sObjects named in the `FROM` of `soql` and of its semi-join subqueries.
pub(crate) fn queried_objects(soql: &str) -> Vec<String> {
    let tokens = tokens(soql);
    let mut objects = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        if is_keyword(tokens.get(at), "SELECT") {
            at = scan_query(&tokens, at + 1, &mut objects);
        } else {
            at += 1;
        }
    }
    objects
}

/// Scans one query from just after its `SELECT` to its end (the `)` closing a subquery, or the
/// end of the text); returns where it stopped.
fn scan_query(tokens: &[Token], mut at: usize, objects: &mut Vec<String>) -> usize {
    // The field list: parentheses here are child relationship subqueries or functions.
    let mut depth = 0usize;
    while at < tokens.len() {
        match &tokens[at] {
            Token::Open => depth += 1,
            Token::Close if depth == 0 => return at + 1,
            Token::Close => depth -= 1,
            Token::Word(w) if depth == 0 && w.eq_ignore_ascii_case("FROM") => break,
            Token::Word(_) => {}
        }
        at += 1;
    }
    if let Some(Token::Word(object)) = tokens.get(at + 1) {
        objects.push(object.clone());
        at += 2;
    }
    // The rest: semi-join subqueries name objects of their own.
    let mut depth = 0usize;
    while at < tokens.len() {
        match &tokens[at] {
            Token::Open if is_keyword(tokens.get(at + 1), "SELECT") => {
                at = scan_query(tokens, at + 2, objects);
                continue;
            }
            Token::Open => depth += 1,
            Token::Close if depth == 0 => return at + 1,
            Token::Close => depth -= 1,
            Token::Word(_) => {}
        }
        at += 1;
    }
    at
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
    fn queries_are_checked_by_the_objects_they_name() {
        assert_eq!(
            queried_objects(
                "SELECT Id, (SELECT Id FROM OrderItems WHERE Quantity > 0), COUNT(Id) FROM Order \
                 WHERE Name = 'from Account (x)' AND AccountId IN (SELECT Id FROM Account \
                 WHERE (Type = 'a' OR Id IN (SELECT AccountId FROM Contact))) LIMIT 1"
            ),
            vec!["Order", "Account", "Contact"]
        );
        let mut policy = CapabilityPolicy::default();
        assert!(policy.check_query("SELECT Id FROM Anything").is_ok());
        policy.query = Some(["Order".to_owned(), "OrderItem".to_owned()].into());
        assert!(policy.check_query("select Id from order").is_ok());
        assert!(
            policy
                .check_query("SELECT Id, (SELECT Id FROM OrderItems) FROM Order")
                .is_ok()
        );
        let err = policy
            .check_query("SELECT Id FROM Order WHERE AccountId IN (SELECT Id FROM Account)")
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(err.message.contains("querying Account"), "{}", err.message);
        assert!(policy.check_query("SELECT Id").is_err());
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
