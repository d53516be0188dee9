//! Mapping: an Order's item to a WHMCS AddOrder line. Pure functions; the `mapping` step
//! (`lib.rs`) logs what they return.
//!
//! An item maps when `Product2.WH_Product_ID__c` is a positive whole number (the WHMCS `pid`),
//! `Billing_Cycle__c` is a WHMCS billing cycle ([`BillingCycle::parse`]) and `Quantity` is a
//! positive whole number (the `qty`).

use fulfillment_sdk::serde_json::Value;
use fulfillment_sdk::{AddOrderItem, BillingCycle, OrderItem, json as lenient};

use crate::RuleOptions;

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

/// The AddOrder lines for one mapped line: the line itself, or with `split_quantities` a line
/// of qty N > 1 as N lines of qty 1 (same pid and billing cycle).
pub(crate) fn split_line(line: AddOrderItem, options: &RuleOptions) -> Vec<AddOrderItem> {
    if !options.split_quantities || line.qty <= 1 {
        return vec![line];
    }
    let units = usize::try_from(line.qty).unwrap_or(1);
    std::iter::repeat_n(AddOrderItem { qty: 1, ..line }, units).collect()
}

/// The lines AddOrder sends for the mapped `lines`: as they are, or with `split_quantities`
/// each line of qty N > 1 as N lines of qty 1 (same pid and billing cycle).
pub(crate) fn add_order_lines(
    lines: Vec<AddOrderItem>,
    options: &RuleOptions,
) -> Vec<AddOrderItem> {
    if !options.split_quantities {
        return lines;
    }
    lines
        .into_iter()
        .flat_map(|line| split_line(line, options))
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
    fn splits_quantities_only_when_asked() {
        let line = AddOrderItem {
            pid: 7,
            billing_cycle: BillingCycle::Monthly,
            qty: 3,
        };
        assert_eq!(
            split_line(line.clone(), &RuleOptions::default()),
            vec![line.clone()]
        );

        let split = RuleOptions {
            split_quantities: true,
        };
        let unit = AddOrderItem {
            qty: 1,
            ..line.clone()
        };
        assert_eq!(
            split_line(line.clone(), &split),
            [unit.clone(), unit.clone(), unit.clone()]
        );
        assert_eq!(split_line(unit.clone(), &split), vec![unit.clone()]);

        let annual = AddOrderItem {
            pid: 8,
            billing_cycle: BillingCycle::Annually,
            qty: 2,
        };
        let lines = vec![line, annual.clone()];
        assert_eq!(
            add_order_lines(lines.clone(), &RuleOptions::default()),
            lines
        );
        let annual_unit = AddOrderItem { qty: 1, ..annual };
        assert_eq!(
            add_order_lines(lines, &split),
            [
                unit.clone(),
                unit.clone(),
                unit,
                annual_unit.clone(),
                annual_unit
            ]
        );
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
