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
/// billing_actions = ["GetPayMethods", "GetClientsDetails", "AddOrder", "AcceptOrder", "GetOrders"]
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
    /// Whether a job may update Orders other than the one its event names. Off by default: a
    /// job for one Order that writes another is refused (`forbidden`). Set by the operator in
    /// the host's policy file; it applies to every component version, manifest or not.
    #[serde(default)]
    pub update_other_orders: bool,
    /// Field names (any case, at any depth) whose values the job journal never keeps when it
    /// captures requests and answers (`FULFILLD_JOURNAL_CAPTURE`), beyond the ones it always
    /// hides ([`ALWAYS_REDACTED`]). Set by the operator; it applies to every component version.
    #[serde(default)]
    pub redact: BTreeSet<String>,
}

/// Field names the job journal never keeps the values of: credentials and card data. A name is
/// hidden when, lowercased and without `_` or `-`, it contains one of these fragments.
pub const ALWAYS_REDACTED: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "accesskey",
    "apikey",
    "token",
    "identifier",
    "cardnum",
    "cardnumber",
    "cardexp",
    "expdate",
    "cvv",
    "ccv",
    "cvc",
    "iban",
    "bankacct",
    "bankaccount",
    "bankcode",
    "routingnumber",
    "sortcode",
];

/// `name` lowercased without `_` and `-`, as [`ALWAYS_REDACTED`] is matched.
fn squashed(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl CapabilityPolicy {
    /// Replaces the values of redacted fields in `value` (see [`CapabilityPolicy::redact`]) with
    /// `"[redacted]"`, at any depth.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let name = squashed(key);
                    if ALWAYS_REDACTED.iter().any(|part| name.contains(part))
                        || self.redact.iter().any(|r| r.eq_ignore_ascii_case(key))
                    {
                        *item = Value::String("[redacted]".into());
                    } else {
                        self.redact_value(item);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_value(item)),
            _ => {}
        }
    }
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
        let actions = [
            "GetPayMethods",
            "GetClientsDetails",
            "AddOrder",
            "AcceptOrder",
            "GetOrders",
        ];
        CapabilityPolicy {
            update: BTreeMap::from([(
                "Order".to_owned(),
                order_fields.iter().map(|f| (*f).to_owned()).collect(),
            )]),
            billing_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            query: None,
            update_other_orders: false,
            redact: BTreeSet::new(),
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

    /// May a job whose event names `scope` (an Order id) write record `id` of `sobject`? An
    /// Order other than its own is refused unless [`Self::update_other_orders`]; ids compare as
    /// Salesforce's do (an 18-character id equals its 15-character form).
    pub fn check_record(
        &self,
        sobject: &str,
        id: &str,
        scope: Option<&str>,
    ) -> Result<(), CallError> {
        if sobject != "Order" || self.update_other_orders {
            return Ok(());
        }
        match scope {
            Some(own) if same_record_id(own, id) => Ok(()),
            Some(own) => Err(CallError::forbidden(format!(
                "a job may update only the Order its event names ({own}), not Order {}; the \
                 capability policy's update_other_orders = true widens this",
                crate::domain::clip(id, 40)
            ))),
            None => Err(CallError::forbidden(
                "the job's event names no Order, so it may update none; the capability policy's \
                 update_other_orders = true widens this",
            )),
        }
    }

    /// May the component run `soql`? Every sObject named in a `FROM` must be allowed: the
    /// query's own and those of semi-join subqueries (`WHERE Id IN (SELECT .. FROM X)`); a child
    /// relationship subquery in the field list (`(SELECT Id FROM OrderItems)`) is covered by
    /// its parent.
    pub fn check_query(&self, soql: &str) -> Result<(), CallError> {
        if self.query.is_none() {
            return Ok(());
        }
        let Ok(objects) = queried_objects(soql) else {
            return Err(CallError::forbidden(format!(
                "the query nests subqueries deeper than {MAX_SUBQUERY_DEPTH} levels, so the \
                 capability policy cannot allow it"
            )));
        };
        if objects.is_empty() {
            return Err(CallError::forbidden(
                "the query names no sObject after FROM, so the capability policy cannot allow it",
            ));
        }
        let mut refused: Vec<String> = objects
            .into_iter()
            .filter(|object| !self.allows_query(object))
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

    /// May the component name `object` after a `FROM`? Compared without regard to case, as SOQL
    /// does; any object when the policy lists none.
    pub fn allows_query(&self, object: &str) -> bool {
        self.query
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| a.eq_ignore_ascii_case(object)))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    Word(&'a str),
}

/// The tokens of `soql` that matter here: parentheses and words (string literals skipped).
fn tokens(soql: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let bytes = soql.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'(' => out.push(Token::Open),
            b')' => out.push(Token::Close),
            b'\'' => {
                // A string literal: skip it, escapes included.
                at += 1;
                while at < bytes.len() && bytes[at] != b'\'' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b if b.is_ascii_alphanumeric() || b == b'_' => {
                let start = at;
                while at < bytes.len()
                    && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_' || bytes[at] == b'.')
                {
                    at += 1;
                }
                out.push(Token::Word(&soql[start..at]));
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    out
}

fn is_keyword(token: Option<&Token<'_>>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

/// Subqueries nested deeper than this make a query one the policy cannot allow (SOQL itself
/// allows one level of child subquery and one of semi-join).
const MAX_SUBQUERY_DEPTH: usize = 4;

/// Why the objects of a query could not be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooDeep;

/// Whether two Salesforce record ids name the same record: a 15-character id is
/// case-sensitive; its 18-character form adds a checksum of the letters' case, which Salesforce
/// reads without regard to case. Both are compared in their 18-character form, so an
/// 18-character id with a wrong checksum names no record this matches.
pub fn same_record_id(a: &str, b: &str) -> bool {
    a == b
        || matches!((crate::domain::record_id_18(a), crate::domain::record_id_18(b)), (Some(x), Some(y)) if x == y)
}

/// The sObjects named in the `FROM` of `soql` and of its semi-join subqueries (child
/// relationship subqueries in a field list name relationships, not sObjects: they are skipped,
/// their own semi-joins are not).
pub(crate) fn queried_objects(soql: &str) -> Result<Vec<String>, TooDeep> {
    let tokens = tokens(soql);
    let mut objects = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        if is_keyword(tokens.get(at), "SELECT") {
            at = scan_query(&tokens, at + 1, false, 0, &mut objects)?;
        } else {
            at += 1;
        }
    }
    Ok(objects)
}

/// Scans one query from just after its `SELECT` to its end (the `)` closing a subquery, or the
/// end of the text); returns where it stopped. `child`: a relationship subquery, whose `FROM`
/// names a relationship.
fn scan_query(
    tokens: &[Token<'_>],
    mut at: usize,
    child: bool,
    nesting: usize,
    objects: &mut Vec<String>,
) -> Result<usize, TooDeep> {
    if nesting > MAX_SUBQUERY_DEPTH {
        return Err(TooDeep);
    }
    let mut from_seen = false;
    let mut depth = 0usize;
    while at < tokens.len() {
        match tokens[at] {
            Token::Open if is_keyword(tokens.get(at + 1), "SELECT") => {
                // Before FROM: a child relationship subquery; after: a semi-join.
                at = scan_query(tokens, at + 2, !from_seen, nesting + 1, objects)?;
                continue;
            }
            Token::Open => depth += 1,
            Token::Close if depth == 0 => return Ok(at + 1),
            Token::Close => depth -= 1,
            Token::Word(w) if !from_seen && depth == 0 && w.eq_ignore_ascii_case("FROM") => {
                from_seen = true;
                if let Some(Token::Word(object)) = tokens.get(at + 1) {
                    if !child {
                        objects.push((*object).to_owned());
                    }
                    at += 1;
                }
            }
            Token::Word(_) => {}
        }
        at += 1;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_compare_in_their_18_character_form() {
        // Salesforce's documented example pair: 001A0000006Vm9r and 001A0000006Vm9rIAC.
        assert!(same_record_id("001A0000006Vm9r", "001A0000006Vm9rIAC"));
        assert!(same_record_id("001A0000006Vm9rIAC", "001A0000006Vm9riac"));
        assert!(!same_record_id("001A0000006Vm9r", "001A0000006Vm9rAAA"));
        assert!(!same_record_id("001A0000006Vm9r", "001a0000006Vm9r"));
        assert!(same_record_id("801000000000001", "801000000000001AAA"));
        assert!(!same_record_id("801000000000001", "801000000000002AAA"));
        assert!(!same_record_id("not an id", "not an id!"));
    }
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
    fn child_subqueries_keep_their_semi_joins_and_deep_nesting_is_refused() {
        assert_eq!(
            queried_objects(
                "SELECT Id, (SELECT Id FROM OrderItems WHERE Product2Id IN \
                 (SELECT Id FROM Product2)) FROM Order"
            ),
            Ok(vec!["Product2".to_owned(), "Order".to_owned()])
        );
        let deep = format!(
            "SELECT Id FROM a{}",
            " WHERE Id IN (SELECT Id FROM a".repeat(50_000)
        );
        assert_eq!(queried_objects(&deep), Err(TooDeep));
        let policy = CapabilityPolicy {
            query: Some(["a".to_owned()].into()),
            ..CapabilityPolicy::default()
        };
        let err = policy.check_query(&deep).unwrap_err();
        assert!(err.message.contains("deeper than"), "{}", err.message);
    }

    #[test]
    fn queries_are_checked_by_the_objects_they_name() {
        assert_eq!(
            queried_objects(
                "SELECT Id, (SELECT Id FROM OrderItems WHERE Quantity > 0), COUNT(Id) FROM Order \
                 WHERE Name = 'from Account (x)' AND AccountId IN (SELECT Id FROM Account \
                 WHERE (Type = 'a' OR Id IN (SELECT AccountId FROM Contact))) LIMIT 1"
            ),
            Ok(vec![
                "Order".to_owned(),
                "Account".to_owned(),
                "Contact".to_owned()
            ])
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

    #[test]
    fn redaction_hides_credentials_and_the_policys_fields_at_any_depth() {
        let policy = CapabilityPolicy::from_toml("redact = [\"Phone\", \"email\"]").unwrap();
        let mut value = serde_json::json!({
            "clientid": 42,
            "Password2": "hunter2",
            "records": [{"Id": "801", "Phone": "+1 555", "Contact": {"Email": "a@b.c"}}],
            "paymethods": [{"card_last_four": "4242", "cardnum": "4111111111111111",
                "card_number": "4111", "bank_account": "DE89", "card-expiry": "12/30", "cardexp": "1230"}],
            "access_token": "00D!x",
        });
        policy.redact_value(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "clientid": 42,
                "Password2": "[redacted]",
                "records": [{"Id": "801", "Phone": "[redacted]", "Contact": {"Email": "[redacted]"}}],
                "paymethods": [{"card_last_four": "4242", "cardnum": "[redacted]",
                    "card_number": "[redacted]", "bank_account": "[redacted]", "card-expiry": "[redacted]", "cardexp": "[redacted]"}],
                "access_token": "[redacted]",
            })
        );
    }
}
