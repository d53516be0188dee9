//! Mapping: an Order's item to a WHMCS AddOrder line. Pure functions; the `mapping` step
//! (`lib.rs`) logs what they return.
//!
//! An item maps when `Product2.WH_Product_ID__c` is a positive whole number (the WHMCS `pid`),
//! `Billing_Cycle__c` is a WHMCS billing cycle ([`BillingCycle::parse`]) and `Quantity` is a
//! positive whole number (the `qty`).

use fulfillment_sdk::serde_json::Value;
use fulfillment_sdk::{AddOrderItem, BillingCycle, OrderItem, json as lenient};

/// One item to a WHMCS line, or every reason it cannot be mapped (`; `-separated).
pub(crate) fn map_item(item: &OrderItem) -> Result<AddOrderItem, String> {
    let mut reasons = Vec::new();

    let pid = match item.wh_product_id() {
        None if item.product2.is_none() && item.product2_id.is_none() => {
            reasons.push("Product2 missing".to_owned());
            None
        }
        None => {
            reasons.push("Product2.WH_Product_ID__c missing".to_owned());
            None
        }
        Some(text) => {
            let pid = lenient::u64_from_str(text).filter(|pid| *pid > 0);
            if pid.is_none() {
                reasons.push(format!(
                    "Product2.WH_Product_ID__c '{text}' is not a product id"
                ));
            }
            pid
        }
    };

    let cycle = match item.billing_cycle.as_deref().map(str::trim) {
        None | Some("") => {
            reasons.push("Billing_Cycle__c missing".to_owned());
            None
        }
        Some(label) => {
            let cycle = BillingCycle::parse(label);
            if cycle.is_none() {
                reasons.push(format!(
                    "Billing_Cycle__c '{label}' is not a WHMCS billing cycle"
                ));
            }
            cycle
        }
    };

    let qty = match item.quantity {
        None => {
            reasons.push("Quantity missing".to_owned());
            None
        }
        Some(q) => {
            let qty = lenient::u64_from(&Value::from(q))
                .filter(|q| *q > 0)
                .and_then(|q| u32::try_from(q).ok());
            if qty.is_none() {
                reasons.push(format!("Quantity {q} is not a positive whole number"));
            }
            qty
        }
    };

    match (pid, cycle, qty) {
        (Some(pid), Some(billing_cycle), Some(qty)) => Ok(AddOrderItem {
            pid,
            billing_cycle,
            qty,
        }),
        _ => Err(reasons.join("; ")),
    }
}

/// A line of qty N > 1 as N lines of qty 1 (same pid and billing cycle); a line of qty 1 as is.
/// What [`RuleOptions::split_quantities`](crate::RuleOptions) sends to AddOrder.
pub(crate) fn split_line(line: &AddOrderItem) -> Vec<AddOrderItem> {
    if line.qty <= 1 {
        return vec![line.clone()];
    }
    let units = usize::try_from(line.qty).unwrap_or(1);
    std::iter::repeat_n(
        AddOrderItem {
            qty: 1,
            ..line.clone()
        },
        units,
    )
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pid: Option<&str>, cycle: Option<&str>, qty: Option<f64>) -> OrderItem {
        OrderItem {
            id: "802A".into(),
            quantity: qty,
            product2_id: Some("01t".into()),
            billing_cycle: cycle.map(Into::into),
            product2: Some(fulfillment_sdk::Product2Ref {
                name: Some("VPS".into()),
                wh_product_id: pid.map(Into::into),
            }),
            ..OrderItem::default()
        }
    }

    #[test]
    fn maps_a_complete_item() {
        let line = map_item(&item(Some("7"), Some("Semi-Annually"), Some(2.0)));
        assert_eq!(
            line,
            Ok(AddOrderItem {
                pid: 7,
                billing_cycle: BillingCycle::SemiAnnually,
                qty: 2
            })
        );
    }

    #[test]
    fn splits_a_quantity_into_units() {
        let line = AddOrderItem {
            pid: 7,
            billing_cycle: BillingCycle::Monthly,
            qty: 3,
        };
        let unit = AddOrderItem {
            qty: 1,
            ..line.clone()
        };
        assert_eq!(
            split_line(&line),
            [unit.clone(), unit.clone(), unit.clone()]
        );
        assert_eq!(split_line(&unit), vec![unit.clone()]);
    }

    #[test]
    fn names_every_reason() {
        let err = map_item(&item(None, Some("Weekly"), Some(1.5)));
        assert_eq!(
            err,
            Err(
                "Product2.WH_Product_ID__c missing; Billing_Cycle__c 'Weekly' is not a WHMCS \
                 billing cycle; Quantity 1.5 is not a positive whole number"
                    .into()
            )
        );
        let no_product = OrderItem {
            id: "802B".into(),
            quantity: Some(1.0),
            billing_cycle: Some("monthly".into()),
            ..OrderItem::default()
        };
        assert_eq!(map_item(&no_product), Err("Product2 missing".into()));
    }
}
