//! Reconciliation with WHMCS in `whmcs_create`, so that one Salesforce Order never gets two WHMCS
//! orders (docs/component-authoring.md, sections 4.3 and 4.3a).
//!
//! - An Order that already names a WHMCS order (an earlier attempt got past AddOrder) resumes it
//!   instead of calling AddOrder again: [`resume_whmcs_order`].
//! - WHMCS has no idempotency key, so saving the id right after AddOrder leaves one window open: a
//!   host killed after WHMCS created the order and before `WHMCS_Order_ID__c` was saved. The job
//!   is delivered again (`job.delivery > 1`) and the Order names no WHMCS order. To close it,
//!   every AddOrder for a client runs under the hold `whmcs-client:<id>`, kept until the id is
//!   saved ([`hold_client`]): shared on a first delivery, exclusive on a job delivered again.
//!   While a re-delivered job holds the client exclusively, no live job is between AddOrder and
//!   its Salesforce write for that client, so a Pending order of the client that no Order claims
//!   was left by a dead run, and is adopted instead of creating another ([`adopt_orphan`]).

use fulfillment_sdk::salesforce::order_fields as field;
use fulfillment_sdk::serde_json::Value;
use fulfillment_sdk::{
    AddOrderItem, BillingCycle, Hold, HoldMode, Order, OrderStatus, WhmcsOrder, json as lenient,
};

use crate::failure::{StepErr, StepFailure, fail};
use crate::steps::WHMCS_CREATE;
use crate::{Ctx, Customer, WhmcsOrderRef, codes};

/// The lines of this attempt that reconciliation recognises an orphan by: the mapped lines (one
/// per item) and the lines AddOrder would send ([`Extensions::add_order_lines`](crate::Extensions)).
#[derive(Clone, Copy)]
pub(crate) struct Lines<'a> {
    pub(crate) mapped: &'a [AddOrderItem],
    pub(crate) add_order: &'a [AddOrderItem],
}

/// The client's hold `whmcs-client:<id>`, released when dropped: keep it until
/// `WHMCS_Order_ID__c` is saved.
pub(crate) struct ClientHold<'h> {
    /// `job.delivery`: above 1 when an earlier run of this job died.
    delivery: u32,
    _hold: Hold<'h>,
}

/// Takes the client's hold before AddOrder: shared on a first delivery (first deliveries for one
/// client run side by side), exclusive on a job delivered again (it looks for orphans).
pub(crate) fn hold_client<'h>(
    ctx: &Ctx<'h>,
    customer: &Customer,
) -> Result<ClientHold<'h>, StepFailure> {
    let delivery = ctx.host.delivery();
    let mode = if delivery > 1 {
        HoldMode::Exclusive
    } else {
        HoldMode::Shared
    };
    let hold_name = format!("whmcs-client:{}", customer.client_id);
    let hold = Hold::take(ctx.host, &hold_name, mode).map_err(|e| {
        let message = format!("hold {hold_name}: {}; nothing was sent to WHMCS", e.message);
        fail(WHMCS_CREATE, e.code, message)
    })?;
    Ok(ClientHold {
        delivery,
        _hold: hold,
    })
}

/// A re-delivered job (an earlier run died) reconciles before AddOrder, holding the client's
/// hold exclusively: a Pending WHMCS order of this client, with this payment method and these
/// lines, that no Salesforce Order claims was left by a dead run between AddOrder and the save
/// of its id. The oldest such order is adopted (saved on this Order) instead of creating another.
/// `None` on a first delivery or when there is nothing to adopt.
pub(crate) fn adopt_orphan(
    ctx: &Ctx,
    hold: &ClientHold,
    order: &Order,
    customer: &Customer,
    lines: Lines,
) -> Result<Option<WhmcsOrderRef>, StepFailure> {
    if hold.delivery <= 1 {
        return Ok(None);
    }
    let log = ctx.log.step(WHMCS_CREATE);
    log.info(
        "Job delivered again: reconciling with WHMCS before AddOrder",
        &[
            ("delivery", &hold.delivery.to_string()),
            ("client_id", &customer.client_id.to_string()),
        ],
    );
    let pending = ctx
        .whmcs
        .client_orders(customer.client_id, "Pending")
        .step_err(WHMCS_CREATE, "GetOrders (reconcile)")?;
    let mut candidates: Vec<u64> = pending
        .iter()
        .filter(|o| {
            o.payment_method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&customer.payment_method))
                && same_lines(o, lines)
        })
        .map(|o| o.id)
        .collect();
    if candidates.is_empty() {
        log.info("No orphan WHMCS order found; creating one", &[]);
        return Ok(None);
    }
    candidates.sort_unstable();
    let quoted: Vec<String> = candidates.iter().map(|id| format!("'{id}'")).collect();
    let soql = format!(
        "SELECT Id, {} FROM Order WHERE {} IN ({})",
        field::WHMCS_ORDER_ID,
        field::WHMCS_ORDER_ID,
        quoted.join(", ")
    );
    let claimed: Vec<Value> = ctx
        .sf
        .query(&soql)
        .step_err(WHMCS_CREATE, "Order query (reconcile)")?;
    let claimed: Vec<u64> = claimed
        .iter()
        .filter_map(|r| r.get(field::WHMCS_ORDER_ID))
        .filter_map(lenient::u64_from)
        .collect();
    let Some(orphan) = candidates.into_iter().find(|id| !claimed.contains(id)) else {
        log.info(
            "Every matching Pending WHMCS order belongs to another Order; creating one",
            &[],
        );
        return Ok(None);
    };
    let id_text = orphan.to_string();
    crate::save_whmcs_order_id(ctx, order, &id_text, "adopted")?;
    log.info(
        "Adopted the WHMCS order an earlier delivery created; AddOrder skipped",
        &[("whmcs_order_id", &id_text)],
    );
    Ok(Some(WhmcsOrderRef {
        order_id: orphan,
        needs_accept: true,
    }))
}

/// Whether a WHMCS order has the lines AddOrder would create for `lines`: as many lines (one
/// per item, one per unit, or the AddOrder lines of this attempt) with the same billing cycles.
fn same_lines(order: &WhmcsOrder, lines: Lines) -> bool {
    let mut have: Vec<Option<BillingCycle>> = order.lines.iter().map(|l| l.billing_cycle).collect();
    have.sort_unstable_by_key(|c| c.map(BillingCycle::as_whmcs));
    let cycles = |lines: &[AddOrderItem]| -> Vec<Option<BillingCycle>> {
        lines.iter().map(|l| Some(l.billing_cycle)).collect()
    };
    let per_unit = lines
        .mapped
        .iter()
        .flat_map(|l| {
            std::iter::repeat_n(Some(l.billing_cycle), usize::try_from(l.qty).unwrap_or(0))
        })
        .collect();
    [cycles(lines.mapped), per_unit, cycles(lines.add_order)]
        .into_iter()
        .any(|mut want| {
            want.sort_unstable_by_key(|c| c.map(BillingCycle::as_whmcs));
            want == have
        })
}

/// An earlier attempt got past AddOrder: continue from the WHMCS order's current state (Pending:
/// accept it; Active: skip AcceptOrder; anything else or not found: `WHMCS_ORDER_STATE`).
pub(crate) fn resume_whmcs_order(ctx: &Ctx, existing: &str) -> Result<WhmcsOrderRef, StepFailure> {
    let log = ctx.log.step(WHMCS_CREATE);
    let order_id = lenient::u64_from_str(existing).ok_or_else(|| {
        let message = format!("WHMCS_Order_ID__c '{existing}' is not a WHMCS order id");
        fail(WHMCS_CREATE, codes::WHMCS_ORDER_STATE, message)
    })?;
    log.info(
        "Order already has a WHMCS order; resuming without AddOrder",
        &[("whmcs_order_id", &order_id.to_string())],
    );
    let found = ctx
        .whmcs
        .get_order(order_id)
        .step_err(WHMCS_CREATE, "GetOrders")?;
    let needs_accept = match found.map(|o| o.status) {
        Some(OrderStatus::Pending) => true,
        Some(OrderStatus::Active) => false,
        Some(other) => {
            let message = format!("WHMCS order {order_id} is {other}; reconcile before retry");
            return Err(fail(WHMCS_CREATE, codes::WHMCS_ORDER_STATE, message));
        }
        None => {
            let message = format!("WHMCS order {order_id} not found; reconcile before retry");
            return Err(fail(WHMCS_CREATE, codes::WHMCS_ORDER_STATE, message));
        }
    };
    log.info(
        "finished",
        &[
            ("whmcs_order_id", &order_id.to_string()),
            ("status", if needs_accept { "Pending" } else { "Active" }),
        ],
    );
    Ok(WhmcsOrderRef {
        order_id,
        needs_accept,
    })
}
