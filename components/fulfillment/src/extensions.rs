//! Extension points of the default rules: a variant implements [`Extensions`], overriding only
//! what it changes, and runs [`fulfill_with_extensions`](crate::fulfill_with_extensions). Every
//! method has a default that does what the default rules do, so `impl Extensions for MyRules {}`
//! is the default component. The steps, their log lines, the failure record and the
//! reconciliation stay the default rules' own.
//!
//! | Point | Method | Runs in step |
//! |---|---|---|
//! | An OrderItem to a WHMCS line | [`Extensions::map_item`] | `mapping` |
//! | A mapped line to the AddOrder lines sent | [`Extensions::add_order_lines`] | `whmcs_create` |
//! | Extra validation of the Order, before anything is written | [`Extensions::validate`] | `validation` |
//! | Extra AddOrder parameters | [`Extensions::add_order_params`] | `whmcs_create` |
//! | Extra AcceptOrder parameters | [`Extensions::accept_order_params`] | `whmcs_accept` |
//! | Extra Order fields written with the success update | [`Extensions::success_fields`] | `sf_success_update` |

use fulfillment_sdk::serde_json::{Map, Value};
use fulfillment_sdk::{AddOrderItem, Failure, Host, Order, OrderItem};

use crate::mapping;

/// AddOrder parameters the default rules set themselves; [`Extensions::add_order_params`] cannot
/// replace them (a key of this list it returns is dropped).
pub const ADD_ORDER_OWN_PARAMS: [&str; 5] =
    ["clientid", "paymentmethod", "pid", "billingcycle", "qty"];

/// AcceptOrder parameter the default rules set themselves (the WHMCS order id).
pub const ACCEPT_ORDER_OWN_PARAMS: [&str; 1] = ["orderid"];

/// How a variant differs from the default rules. Each method's default is the default rules'
/// behaviour. `host` gives access to `config` (e.g. `host.config("PROVISIONING_NOTE")`); the
/// methods should not call Salesforce or WHMCS themselves (the steps do, and log it).
pub trait Extensions {
    /// `mapping`: one OrderItem to its WHMCS line, or why it cannot be mapped (the reason goes
    /// into the `item unmapped` log line and the `MAPPING` failure message). Default:
    /// [`default_map_item`].
    fn map_item(&self, item: &OrderItem) -> Result<AddOrderItem, String> {
        default_map_item(item)
    }

    /// `whmcs_create`: the AddOrder lines one mapped line becomes. Default: the line itself.
    /// [`split_quantity`] sends a line of qty N as N lines of qty 1. Reconciliation of a job
    /// delivered again recognises an orphan WHMCS order by these lines, by one line per item or
    /// by one line per unit.
    fn add_order_lines(&self, line: &AddOrderItem) -> Vec<AddOrderItem> {
        vec![line.clone()]
    }

    /// `mapping`: add `lines` (the AddOrder lines an item becomes, and their total) to the
    /// `item mapped` and `mapping report` log lines. Default: false (the log lines the runbook
    /// documents).
    fn log_line_counts(&self) -> bool {
        false
    }

    /// `validation`: checks of the Order after the default ones (pricebook, linked WHMCS client,
    /// payment method) and before the first write. An `Err` fails the attempt with its code and
    /// message, recorded on the Order like any validation failure. Default: accept.
    fn validate(&self, host: &dyn Host, order: &Order) -> Result<(), Failure> {
        let _ = (host, order);
        Ok(())
    }

    /// `whmcs_create`: further AddOrder parameters (`promocode`, `notes`, ...), sent after the
    /// rules' config flags `noemail`, `noinvoice` and `noinvoiceemail` (a key of the same name
    /// replaces the flag). Keys of [`ADD_ORDER_OWN_PARAMS`] are dropped. Default: none.
    fn add_order_params(&self, host: &dyn Host, order: &Order) -> Map<String, Value> {
        let _ = (host, order);
        Map::new()
    }

    /// `whmcs_accept`: further AcceptOrder parameters (`serverid`, ...), sent after the rules'
    /// config flags `autosetup` and `sendemail` (a key of the same name replaces the flag).
    /// `orderid` is dropped. Default: none.
    fn accept_order_params(&self, host: &dyn Host, order: &Order) -> Map<String, Value> {
        let _ = (host, order);
        Map::new()
    }

    /// `sf_success_update`: further Order fields written in the same update that marks the Order
    /// Activated. The default rules' fields (`Activation_Status__c`, `WHMCS_Order_ID__c`, the
    /// error code and message) win over a field of the same name. Each field must be allowed by
    /// the component's update capability (`[capabilities.update]` in its manifest). Default: none.
    fn success_fields(
        &self,
        host: &dyn Host,
        order: &Order,
        whmcs_order_id: u64,
    ) -> Map<String, Value> {
        let _ = (host, order, whmcs_order_id);
        Map::new()
    }
}

/// The default rules' mapping: `Product2.WH_Product_ID__c` a positive whole number (the `pid`),
/// `Billing_Cycle__c` a WHMCS billing cycle, `Quantity` a positive whole number (the `qty`);
/// otherwise every reason, `; `-separated.
pub fn default_map_item(item: &OrderItem) -> Result<AddOrderItem, String> {
    mapping::map_item(item)
}

/// A line of qty N > 1 as N lines of qty 1 (same pid and billing cycle); a line of qty 1 as is.
pub fn split_quantity(line: &AddOrderItem) -> Vec<AddOrderItem> {
    mapping::split_line(line)
}

/// `extra` without the `own` keys, in any of their PHP-style forms (`pid`, `pid[2]`, `pid[]`):
/// an extension cannot add, change or remove the lines the rules send.
pub(crate) fn without(mut extra: Map<String, Value>, own: &[&str]) -> Map<String, Value> {
    extra.retain(|key, _| {
        let base = key.split('[').next().unwrap_or(key);
        !own.contains(&base)
    });
    extra
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fulfillment_sdk::serde_json::json;

    #[test]
    fn extra_params_cannot_touch_the_rules_own_in_any_php_form() {
        let extra = json!({
            "pid": [9], "pid[2]": 99, "qty[0]": 5, "billingcycle[]": "monthly",
            "promocode": "WELCOME", "clientid": 1
        });
        let Value::Object(extra) = extra else {
            unreachable!()
        };
        let kept = without(extra, &["pid", "qty", "billingcycle", "clientid"]);
        assert_eq!(Value::Object(kept), json!({ "promocode": "WELCOME" }));
    }
}
