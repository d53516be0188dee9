//! Typed Salesforce access over the `salesforce` import: SOQL into serde records, updates from
//! `serde_json::Value`, and the Order / OrderItem shapes of the provisioning flow.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::host::Host;
use crate::json;
use crate::types::HostError;

/// Escapes `s` for use inside a single-quoted SOQL string literal (backslash, quotes and the
/// control characters SOQL has escapes for). Always escape values interpolated into SOQL.
pub fn soql_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a complete SOQL string literal: `'...'`, escaped.
pub fn soql_quote(s: &str) -> String {
    format!("'{}'", soql_escape(s))
}

/// The `salesforce.query` answer: `{"totalSize","done","records":[..]}` (all pages merged).
#[derive(Debug, Clone, Deserialize)]
pub struct QueryResult<T> {
    #[serde(rename = "totalSize", default)]
    pub total_size: u64,
    #[serde(default = "default_true")]
    pub done: bool,
    #[serde(default = "Vec::new")]
    pub records: Vec<T>,
}

fn default_true() -> bool {
    true
}

/// Typed Salesforce calls. Cheap to create; borrows the host.
#[derive(Clone, Copy)]
pub struct Salesforce<'h> {
    host: &'h dyn Host,
}

impl<'h> Salesforce<'h> {
    pub fn new(host: &'h dyn Host) -> Self {
        Self { host }
    }

    /// Runs `soql` and decodes every record into `T` (unknown fields such as `attributes` are
    /// ignored). A body that does not decode is reported as `bad-response` / `EBADRESPONSE`.
    pub fn query<T: DeserializeOwned>(&self, soql: &str) -> Result<Vec<T>, HostError> {
        let body = self.host.sf_query(soql)?;
        serde_json::from_str::<QueryResult<T>>(&body)
            .map(|r| r.records)
            .map_err(|e| HostError::bad_response(format!("query result did not decode: {e}")))
    }

    /// The first record of [`query`](Self::query), if any.
    pub fn query_first<T: DeserializeOwned>(&self, soql: &str) -> Result<Option<T>, HostError> {
        Ok(self.query(soql)?.into_iter().next())
    }

    /// Updates one record; `fields` is a JSON object, `null` clears a field.
    pub fn update(&self, sobject: &str, id: &str, fields: Value) -> Result<(), HostError> {
        self.host.sf_update(sobject, id, &fields.to_string())
    }

    /// Re-reads an Order (with its Account's WHMCS client id) by id.
    pub fn order(&self, id: &str) -> Result<Option<Order>, HostError> {
        self.query_first(&Order::soql_by_id(id))
    }

    /// The items of an Order, with their Product2 name and WHMCS product id.
    pub fn order_items(&self, order_id: &str) -> Result<Vec<OrderItem>, HostError> {
        self.query(&OrderItem::soql_by_order(order_id))
    }
}

/// Values of `Order.Activation_Status__c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationStatus {
    /// Approved and waiting for (or undergoing) provisioning: the only state the rules act on.
    Activating,
    /// Provisioned.
    Activated,
    /// The last attempt failed; operators retry by setting `Activating` again.
    Failed,
}

impl ActivationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activating => "Activating",
            Self::Activated => "Activated",
            Self::Failed => "Failed",
        }
    }

    /// Exact picklist value; anything else (including blank) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Activating" => Some(Self::Activating),
            "Activated" => Some(Self::Activated),
            "Failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Field names of the Order custom fields the flow writes.
pub mod order_fields {
    pub const ACTIVATION_STATUS: &str = "Activation_Status__c";
    pub const WHMCS_ORDER_ID: &str = "WHMCS_Order_ID__c";
    pub const ACTIVATION_ERROR_CODE: &str = "Activation_Error_Code__c";
    pub const ACTIVATION_ERROR_MESSAGE: &str = "Activation_Error_Message__c";
}

/// An Order as the provisioning flow reads it. Every field but `Id` is optional because a
/// query may not select it and Salesforce returns blanks as `null`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Order {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "OrderNumber", default)]
    pub order_number: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "AccountId", default)]
    pub account_id: Option<String>,
    #[serde(rename = "Pricebook2Id", default)]
    pub pricebook2_id: Option<String>,
    #[serde(rename = "EffectiveDate", default)]
    pub effective_date: Option<String>,
    /// Raw picklist value; see [`Order::activation_status`].
    #[serde(rename = "Activation_Status__c", default)]
    pub activation_status: Option<String>,
    /// Set as soon as WHMCS AddOrder succeeded (Text or Number field: both read as text).
    #[serde(
        rename = "WHMCS_Order_ID__c",
        default,
        deserialize_with = "json::opt_text"
    )]
    pub whmcs_order_id: Option<String>,
    #[serde(rename = "Activation_Error_Code__c", default)]
    pub activation_error_code: Option<String>,
    #[serde(rename = "Activation_Error_Message__c", default)]
    pub activation_error_message: Option<String>,
    /// The `Account` relationship (`null` when the Order has no Account).
    #[serde(rename = "Account", default)]
    pub account: Option<AccountRef>,
}

impl Order {
    /// The fields [`Salesforce::order`] selects.
    pub const FIELDS: &'static str = "Id, OrderNumber, Status, AccountId, Pricebook2Id, \
        Activation_Status__c, WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c";

    /// `SELECT <FIELDS> FROM Order WHERE Id = '<escaped id>'`.
    pub fn soql_by_id(id: &str) -> String {
        format!(
            "SELECT {} FROM Order WHERE Id = {}",
            Self::FIELDS,
            soql_quote(id)
        )
    }

    /// `Activation_Status__c` as a known value.
    pub fn activation(&self) -> Option<ActivationStatus> {
        self.activation_status
            .as_deref()
            .and_then(ActivationStatus::parse)
    }

    /// `Account.WHMCS_Client_ID__c` as text (a Number field's `42.0` reads as `42`).
    pub fn whmcs_client_id(&self) -> Option<&str> {
        self.account.as_ref()?.whmcs_client_id.as_deref()
    }

    /// A name for messages: the OrderNumber if known, else the Id.
    pub fn display_name(&self) -> &str {
        self.order_number.as_deref().unwrap_or(&self.id)
    }
}

/// The Order's `Account` relationship as selected through the Order.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AccountRef {
    #[serde(rename = "Id", default)]
    pub id: Option<String>,
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// The WHMCS client the Account is linked to.
    #[serde(
        rename = "WHMCS_Client_ID__c",
        default,
        deserialize_with = "json::opt_text"
    )]
    pub whmcs_client_id: Option<String>,
}

/// An OrderItem with its product mapping fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OrderItem {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Quantity", default, deserialize_with = "json::opt_f64")]
    pub quantity: Option<f64>,
    #[serde(rename = "UnitPrice", default, deserialize_with = "json::opt_f64")]
    pub unit_price: Option<f64>,
    #[serde(rename = "Product2Id", default)]
    pub product2_id: Option<String>,
    #[serde(rename = "PricebookEntryId", default)]
    pub pricebook_entry_id: Option<String>,
    /// Raw value (WHMCS system name or a display label); see [`BillingCycle::parse`](crate::BillingCycle::parse).
    #[serde(rename = "Billing_Cycle__c", default)]
    pub billing_cycle: Option<String>,
    /// The `Product2` relationship (`null` when the item has no product).
    #[serde(rename = "Product2", default)]
    pub product2: Option<Product2Ref>,
}

impl OrderItem {
    /// The fields [`Salesforce::order_items`] selects.
    pub const FIELDS: &'static str = "Id, Quantity, UnitPrice, Product2Id, PricebookEntryId, \
        Billing_Cycle__c, Product2.Name, Product2.WH_Product_ID__c";

    /// `SELECT <FIELDS> FROM OrderItem WHERE OrderId = '<escaped id>'`.
    pub fn soql_by_order(order_id: &str) -> String {
        format!(
            "SELECT {} FROM OrderItem WHERE OrderId = {}",
            Self::FIELDS,
            soql_quote(order_id)
        )
    }

    /// `Product2.Name`, if selected and set.
    pub fn product_name(&self) -> Option<&str> {
        self.product2.as_ref()?.name.as_deref()
    }

    /// `Product2.WH_Product_ID__c` as text, if set.
    pub fn wh_product_id(&self) -> Option<&str> {
        self.product2.as_ref()?.wh_product_id.as_deref()
    }
}

/// The OrderItem's `Product2` relationship.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Product2Ref {
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// The WHMCS product id (`pid`) this product provisions as.
    #[serde(
        rename = "WH_Product_ID__c",
        default,
        deserialize_with = "json::opt_text"
    )]
    pub wh_product_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_escape_neutralises_quotes_and_backslashes() {
        assert_eq!(soql_escape("801ABC"), "801ABC");
        assert_eq!(soql_escape("a'b"), "a\\'b");
        assert_eq!(soql_escape("a\\'b"), "a\\\\\\'b");
        assert_eq!(soql_escape("x\"y\nz\r\t"), "x\\\"y\\nz\\r\\t");
        assert_eq!(soql_quote("' OR Id != '"), "'\\' OR Id != \\''");
    }

    #[test]
    fn order_soql_is_exact() {
        assert_eq!(
            Order::soql_by_id("801x'"),
            "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, \
             WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c FROM Order WHERE Id = '801x\\''"
        );
        assert_eq!(
            OrderItem::soql_by_order("801"),
            "SELECT Id, Quantity, UnitPrice, Product2Id, PricebookEntryId, Billing_Cycle__c, \
             Product2.Name, Product2.WH_Product_ID__c FROM OrderItem WHERE OrderId = '801'"
        );
    }

    #[test]
    fn order_decodes_salesforce_shape() -> Result<(), serde_json::Error> {
        let body = r#"{"totalSize":1,"done":true,"records":[{
            "attributes":{"type":"Order","url":"/services/data/v66.0/sobjects/Order/801"},
            "Id":"801","OrderNumber":"00000100","Status":"Activated","AccountId":"001",
            "Pricebook2Id":"01s","Activation_Status__c":"Activating","WHMCS_Order_ID__c":1042.0,
            "Account":{"attributes":{"type":"Account"},"WHMCS_Client_ID__c":"42"}}]}"#;
        let r: QueryResult<Order> = serde_json::from_str(body)?;
        let order = &r.records[0];
        assert_eq!(order.activation(), Some(ActivationStatus::Activating));
        assert_eq!(order.whmcs_order_id.as_deref(), Some("1042"));
        assert_eq!(order.whmcs_client_id(), Some("42"));
        assert_eq!(order.display_name(), "00000100");
        Ok(())
    }

    #[test]
    fn order_item_decodes_nulls() -> Result<(), serde_json::Error> {
        let body = r#"{"totalSize":1,"done":true,"records":[{"Id":"802","Quantity":2.0,
            "Billing_Cycle__c":null,"Product2":null}]}"#;
        let r: QueryResult<OrderItem> = serde_json::from_str(body)?;
        let item = &r.records[0];
        assert_eq!(item.quantity, Some(2.0));
        assert_eq!(item.wh_product_id(), None);
        assert_eq!(item.product_name(), None);
        Ok(())
    }
}
