//! The default provisioning rules: an approved Salesforce Order becomes one WHMCS order
//! (AddOrder + AcceptOrder), and the outcome is written back to the Order.
//!
//! Steps, each logged under its name (see the operations runbook):
//! `validation` -> `sf_status_update` -> `order_details` -> `mapping` -> `whmcs_create` ->
//! `whmcs_accept` -> `sf_success_update`.
//!
//! Rules of thumb this file follows, and that a copy of it should keep:
//! - Re-read the Order; never trust the event payload (it can arrive before the commit).
//! - Act only when `Activation_Status__c = Activating`; anything else is skipped without writes.
//! - Once the Order is read and the guard passed, every failure is recorded on the Order
//!   (`Failed` + error code + short message) before it is returned. Nothing is retried here:
//!   operators retry from Salesforce, which publishes a new event.
//! - Persist the WHMCS order id the moment AddOrder succeeds, so a retry resumes at AcceptOrder
//!   instead of creating a second WHMCS order.
//! - Hold the WHMCS client (`whmcs-client:<id>`) from AddOrder to that save; a job delivered
//!   again (`job.delivery > 1`) holds it exclusively and adopts the Pending order a dead run left
//!   instead of creating another (docs/component-authoring.md, section 4.3a).

use fulfillment_sdk::salesforce::order_fields as field;
use fulfillment_sdk::serde_json::{Value, json};
use fulfillment_sdk::whmcs::is_order_not_pending;
use fulfillment_sdk::{
    ActivationStatus, AddOrder, AddOrderItem, BillingCycle, ErrorKind, Event, Failure, Fulfillment,
    Hold, HoldMode, Host, HostError, Info, Log, Order, OrderItem, OrderStatus, Outcome, Salesforce,
    Whmcs, WhmcsOrder, json as lenient, truncate_field,
};

/// Step names, as the runbook's logging cheatsheet lists them.
pub mod steps {
    pub const ORCHESTRATOR: &str = "orchestrator";
    pub const VALIDATION: &str = "validation";
    pub const SF_STATUS_UPDATE: &str = "sf_status_update";
    pub const ORDER_DETAILS: &str = "order_details";
    pub const MAPPING: &str = "mapping";
    pub const WHMCS_CREATE: &str = "whmcs_create";
    pub const WHMCS_ACCEPT: &str = "whmcs_accept";
    pub const SF_SUCCESS_UPDATE: &str = "sf_success_update";
}
use steps::*;

/// Failure codes of the rules themselves (host errors keep the host's code, e.g. `429`).
pub mod codes {
    pub const INVALID_EVENT: &str = "INVALID_EVENT";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const PRICEBOOK_MISMATCH: &str = "PRICEBOOK_MISMATCH";
    pub const CLIENT_NOT_LINKED: &str = "CLIENT_NOT_LINKED";
    pub const PAYMENT_METHOD_MISSING: &str = "409";
    pub const NO_ITEMS: &str = "NO_ITEMS";
    pub const MAPPING: &str = "MAPPING";
    pub const WHMCS_ORDER_STATE: &str = "WHMCS_ORDER_STATE";
}

/// Config key of the only pricebook the portal provisions from (optional).
pub const PORTAL_PRICEBOOK_ID: &str = "PORTAL_PRICEBOOK_ID";

const ORDER: &str = "Order";

/// The default rules.
pub struct Rules;

impl Fulfillment for Rules {
    fn info() -> Info {
        Info {
            name: "fulfillment".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn fulfill(host: &dyn Host, event: Event) -> Result<Outcome, Failure> {
        fulfill_with(host, event, &RuleOptions::default())
    }
}

// The Wasm export of the default rules. Off (`default-features = false`) for crates that reuse
// these rules under their own export, such as the `rules-v2` test fixture.
#[cfg(feature = "component")]
fulfillment_sdk::export_component!(Rules);

/// Variations of the default rules. `RuleOptions::default()` is the default component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Send an item of Quantity N > 1 as N AddOrder lines of qty 1 (same pid and billing
    /// cycle) instead of one line of qty N.
    pub split_quantities: bool,
}

/// The default rules with `options`: what [`Rules::fulfill`] runs with the default options.
pub fn fulfill_with(
    host: &dyn Host,
    event: Event,
    options: &RuleOptions,
) -> Result<Outcome, Failure> {
    let ctx = Ctx::new(host);
    let started_ms = host.now_ms();
    ctx.log.step(ORCHESTRATOR).info(
        "Starting fulfillment orchestration",
        &[
            ("event_uuid", &event.event_uuid),
            ("replay_id", &event.replay_id),
            ("channel", &event.channel),
        ],
    );

    // Until the Order is read and the guard passes there is nothing to record a failure on.
    let order = match load_order(&ctx, &event) {
        Ok(order) => order,
        Err(failure) => {
            ctx.log.step(failure.step).error(
                "Fulfillment failed before the Order could be updated",
                &[("code", &failure.code), ("message", &failure.message)],
            );
            return Err(failure.into_failure());
        }
    };
    if let Some(skipped) = guard(&ctx, &order) {
        return Ok(skipped);
    }

    let mut attempt = Attempt::default();
    let result = provision(&ctx, &order, options, &mut attempt);
    let elapsed_ms = (host.now_ms() - started_ms).to_string();
    match result {
        Ok(outcome) => {
            ctx.log.step(ORCHESTRATOR).info(
                "Fulfillment completed",
                &[("outcome", &outcome.message), ("elapsed_ms", &elapsed_ms)],
            );
            Ok(outcome)
        }
        Err(failure) => Err(record_failure(&ctx, &order, &attempt, failure)),
    }
}

/// The typed host layers every step uses.
struct Ctx<'h> {
    host: &'h dyn Host,
    sf: Salesforce<'h>,
    whmcs: Whmcs<'h>,
    log: Log<'h>,
}

impl<'h> Ctx<'h> {
    fn new(host: &'h dyn Host) -> Self {
        Self {
            host,
            sf: Salesforce::new(host),
            whmcs: Whmcs::new(host),
            log: Log::new(host),
        }
    }
}

/// A failure of one step; `code` goes to `Activation_Error_Code__c` as is.
#[derive(Debug)]
struct StepFailure {
    step: &'static str,
    code: String,
    message: String,
}

impl StepFailure {
    fn new(step: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            step,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// A failed host call: the host's code as is, the message prefixed with what was called.
    fn host(step: &'static str, call: &str, err: HostError) -> Self {
        Self {
            step,
            code: err.code,
            message: format!("{call}: {}", err.message),
        }
    }

    fn into_failure(self) -> Failure {
        Failure::new(self.code, truncate_field(&self.message))
    }
}

/// State of this attempt that the failure record needs.
#[derive(Default)]
struct Attempt {
    /// A WHMCS order this attempt created; written again with the failure in case the
    /// immediate write after AddOrder is what failed.
    created_whmcs_order: Option<u64>,
}

/// What `validation` established about the customer.
struct Customer {
    client_id: u64,
    payment_method: String,
}

/// The WHMCS order this attempt works on.
struct WhmcsOrderRef {
    order_id: u64,
    /// False when a resumed order is already Active.
    needs_accept: bool,
}

fn provision(
    ctx: &Ctx,
    order: &Order,
    options: &RuleOptions,
    attempt: &mut Attempt,
) -> Result<Outcome, StepFailure> {
    let customer = validate_order(ctx, order)?;
    mark_activating(ctx, order)?;
    let items = order_details(ctx, order)?;
    let lines = map_items(ctx, &items, options)?;
    let whmcs_order = create_whmcs_order(ctx, order, &customer, lines, options, attempt)?;
    accept_whmcs_order(ctx, &whmcs_order)?;
    mark_activated(ctx, order, whmcs_order.order_id)
}

/// `validation`, part 1: re-read the Order the event names (never trust the payload).
fn load_order(ctx: &Ctx, event: &Event) -> Result<Order, StepFailure> {
    let log = ctx.log.step(VALIDATION);
    log.info("started", &[]);

    let Some(order_id) = event.order_id() else {
        return Err(StepFailure::new(
            VALIDATION,
            codes::INVALID_EVENT,
            format!("Event payload has no {}", Event::ORDER_ID_FIELD),
        ));
    };
    let order = ctx
        .sf
        .order(order_id)
        .map_err(|e| StepFailure::host(VALIDATION, "Order query", e))?
        .ok_or_else(|| {
            StepFailure::new(
                VALIDATION,
                codes::NOT_FOUND,
                format!("Order {order_id} not found"),
            )
        })?;
    log.info(
        "Order re-read",
        &[
            ("order_id", &order.id),
            ("order_number", order.order_number.as_deref().unwrap_or("")),
            (
                "activation_status",
                order.activation_status.as_deref().unwrap_or(""),
            ),
            (
                "whmcs_order_id",
                order.whmcs_order_id.as_deref().unwrap_or(""),
            ),
        ],
    );
    Ok(order)
}

/// `validation`, the guard: act only on `Activating`; anything else (Activated: already
/// provisioned; Failed or blank: not approved for a new attempt) is skipped without writes.
fn guard(ctx: &Ctx, order: &Order) -> Option<Outcome> {
    if order.activation() == Some(ActivationStatus::Activating) {
        return None;
    }
    let status = match order.activation_status.as_deref() {
        None | Some("") => "blank",
        Some(status) => status,
    };
    let message = format!(
        "Order {} is {status}, not Activating: skipped",
        order.display_name()
    );
    ctx.log
        .step(VALIDATION)
        .info(&message, &[("order_id", &order.id)]);
    Some(Outcome::skipped(message))
}

/// `validation`, part 2: pricebook, linked WHMCS client and a payment method.
fn validate_order(ctx: &Ctx, order: &Order) -> Result<Customer, StepFailure> {
    let log = ctx.log.step(VALIDATION);

    if let Some(portal) = ctx.host.config(PORTAL_PRICEBOOK_ID) {
        let portal = portal.trim();
        let actual = order.pricebook2_id.as_deref().unwrap_or("");
        if !portal.is_empty() && !same_sf_id(portal, actual) {
            return Err(StepFailure::new(
                VALIDATION,
                codes::PRICEBOOK_MISMATCH,
                format!(
                    "Order pricebook {} is not the portal pricebook {portal}",
                    if actual.is_empty() { "(none)" } else { actual }
                ),
            ));
        }
    }

    let account = order.account_id.as_deref().unwrap_or("(none)");
    let client_id = match order.whmcs_client_id() {
        None => {
            return Err(StepFailure::new(
                VALIDATION,
                codes::CLIENT_NOT_LINKED,
                format!("Account {account} has no WHMCS_Client_ID__c"),
            ));
        }
        Some(text) => lenient::u64_from_str(text).ok_or_else(|| {
            StepFailure::new(
                VALIDATION,
                codes::CLIENT_NOT_LINKED,
                format!("Account {account} has an invalid WHMCS_Client_ID__c '{text}'"),
            )
        })?,
    };

    let methods = ctx
        .whmcs
        .get_pay_methods(client_id)
        .map_err(|e| StepFailure::host(VALIDATION, "GetPayMethods", e))?;
    let Some(method) = methods.iter().find(|m| !m.gateway_name.is_empty()) else {
        return Err(StepFailure::new(
            VALIDATION,
            codes::PAYMENT_METHOD_MISSING,
            "Payment method missing",
        ));
    };

    log.info(
        "finished",
        &[
            ("client_id", &client_id.to_string()),
            ("payment_method", &method.gateway_name),
        ],
    );
    Ok(Customer {
        client_id,
        payment_method: method.gateway_name.clone(),
    })
}

/// `sf_status_update`: mark the attempt in progress and clear the last error.
fn mark_activating(ctx: &Ctx, order: &Order) -> Result<(), StepFailure> {
    let log = ctx.log.step(SF_STATUS_UPDATE);
    log.info("started", &[]);
    ctx.sf
        .update(
            ORDER,
            &order.id,
            json!({
                field::ACTIVATION_STATUS: ActivationStatus::Activating.as_str(),
                field::ACTIVATION_ERROR_CODE: null,
                field::ACTIVATION_ERROR_MESSAGE: null,
            }),
        )
        .map_err(|e| StepFailure::host(SF_STATUS_UPDATE, "Order update", e))?;
    log.info("finished", &[]);
    Ok(())
}

/// `order_details`: the Order's items with their product mapping fields.
fn order_details(ctx: &Ctx, order: &Order) -> Result<Vec<OrderItem>, StepFailure> {
    let log = ctx.log.step(ORDER_DETAILS);
    log.info("started", &[]);
    let items = ctx
        .sf
        .order_items(&order.id)
        .map_err(|e| StepFailure::host(ORDER_DETAILS, "OrderItem query", e))?;
    if items.is_empty() {
        return Err(StepFailure::new(
            ORDER_DETAILS,
            codes::NO_ITEMS,
            format!("Order {} has no OrderItems", order.display_name()),
        ));
    }
    log.info("finished", &[("items", &items.len().to_string())]);
    Ok(items)
}

/// `mapping`: every item to a WHMCS line, with a report line per item. Any unmapped item fails
/// the order, naming each one and why. The lines stay one per item (reconciliation compares
/// WHMCS orders with them); with `split_quantities` the logs also count the AddOrder lines
/// ([`add_order_lines`]) each item becomes.
fn map_items(
    ctx: &Ctx,
    items: &[OrderItem],
    options: &RuleOptions,
) -> Result<Vec<AddOrderItem>, StepFailure> {
    let log = ctx.log.step(MAPPING);
    log.info("started", &[]);

    let mut lines = Vec::with_capacity(items.len());
    let mut add_order_line_count = 0_usize;
    let mut unmapped = Vec::new();
    for item in items {
        let product = item.product_name().unwrap_or("");
        let pid = item.wh_product_id().unwrap_or("");
        let cycle = item.billing_cycle.as_deref().unwrap_or("");
        match map_item(item) {
            Ok(line) => {
                let pid_text = line.pid.to_string();
                let qty_text = line.qty.to_string();
                let mut fields = vec![
                    ("item_id", item.id.as_str()),
                    ("product", product),
                    ("pid", pid_text.as_str()),
                    ("cycle", line.billing_cycle.as_whmcs()),
                    ("qty", qty_text.as_str()),
                    ("status", "mapped"),
                ];
                let item_lines = split_line(line.clone(), options).len();
                add_order_line_count += item_lines;
                // Only the split rules add `lines`: the default rules' log lines stay as documented.
                let lines_text = item_lines.to_string();
                if options.split_quantities {
                    fields.push(("lines", lines_text.as_str()));
                }
                log.info("item mapped", &fields);
                lines.push(line);
            }
            Err(reason) => {
                log.warn(
                    "item unmapped",
                    &[
                        ("item_id", &item.id),
                        ("product", product),
                        ("pid", pid),
                        ("cycle", cycle),
                        ("status", "unmapped"),
                        ("reason", &reason),
                    ],
                );
                unmapped.push(format!("{} ({reason})", item.id));
            }
        }
    }

    let items_text = items.len().to_string();
    let mapped_text = lines.len().to_string();
    let unmapped_text = unmapped.len().to_string();
    let lines_text = add_order_line_count.to_string();
    let mut report = vec![
        ("items", items_text.as_str()),
        ("mapped", mapped_text.as_str()),
        ("unmapped", unmapped_text.as_str()),
    ];
    if options.split_quantities {
        report.push(("lines", lines_text.as_str()));
    }
    log.info("mapping report", &report);
    if !unmapped.is_empty() {
        return Err(StepFailure::new(
            MAPPING,
            codes::MAPPING,
            format!("Unmapped items: {}", unmapped.join(", ")),
        ));
    }
    log.info("finished", &[]);
    Ok(lines)
}

/// The lines AddOrder sends for the mapped `lines`: as they are, or with `split_quantities`
/// each line of qty N > 1 as N lines of qty 1 (same pid and billing cycle).
fn add_order_lines(lines: Vec<AddOrderItem>, options: &RuleOptions) -> Vec<AddOrderItem> {
    if !options.split_quantities {
        return lines;
    }
    lines
        .into_iter()
        .flat_map(|line| split_line(line, options))
        .collect()
}

/// The AddOrder lines for one mapped line: the line itself, or with `split_quantities` a line
/// of qty N > 1 as N lines of qty 1 (same pid and billing cycle).
fn split_line(line: AddOrderItem, options: &RuleOptions) -> Vec<AddOrderItem> {
    if !options.split_quantities || line.qty <= 1 {
        return vec![line];
    }
    let units = usize::try_from(line.qty).unwrap_or(1);
    std::iter::repeat_n(AddOrderItem { qty: 1, ..line }, units).collect()
}

/// One item to a WHMCS line, or every reason it cannot be mapped (`; `-separated).
fn map_item(item: &OrderItem) -> Result<AddOrderItem, String> {
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

/// `whmcs_create`: resume the WHMCS order an earlier attempt created, or AddOrder and persist
/// its id on the Order at once. AddOrder sends [`add_order_lines`]; reconciliation compares
/// orphans with the mapped `lines` (one per item or one per unit), so the default and the
/// `split_quantities` rules adopt each other's orphans.
fn create_whmcs_order(
    ctx: &Ctx,
    order: &Order,
    customer: &Customer,
    lines: Vec<AddOrderItem>,
    options: &RuleOptions,
    attempt: &mut Attempt,
) -> Result<WhmcsOrderRef, StepFailure> {
    let log = ctx.log.step(WHMCS_CREATE);
    log.info("started", &[]);

    if let Some(existing) = order.whmcs_order_id.as_deref() {
        return resume_whmcs_order(ctx, existing);
    }

    // WHMCS has no idempotency key. Every AddOrder for a client happens under a shared hold on
    // the client and keeps it until WHMCS_Order_ID__c is saved; a re-delivered job (an earlier
    // run died, perhaps right after AddOrder) takes the hold exclusively, so while it looks,
    // every Pending order of the client that no Order claims is an orphan of a dead run.
    let delivery = ctx.host.delivery();
    let mode = if delivery > 1 {
        HoldMode::Exclusive
    } else {
        HoldMode::Shared
    };
    let hold_name = format!("whmcs-client:{}", customer.client_id);
    let _hold = Hold::take(ctx.host, &hold_name, mode).map_err(|e| {
        StepFailure::new(
            WHMCS_CREATE,
            &e.code,
            format!("hold {hold_name}: {}; nothing was sent to WHMCS", e.message),
        )
    })?;
    if delivery > 1
        && let Some(adopted) = adopt_orphan(ctx, order, customer, &lines, delivery)?
    {
        attempt.created_whmcs_order = Some(adopted.order_id);
        return Ok(adopted);
    }

    let request = AddOrder {
        client_id: customer.client_id,
        payment_method: customer.payment_method.clone(),
        items: add_order_lines(lines, options),
        ..AddOrder::default()
    };
    let created = ctx.whmcs.add_order(&request).map_err(|e| {
        if e.kind == ErrorKind::Timeout {
            StepFailure::new(
                WHMCS_CREATE,
                &e.code,
                "AddOrder timed out: the WHMCS order may exist; reconcile in WHMCS before retry",
            )
        } else {
            StepFailure::host(WHMCS_CREATE, "AddOrder", e)
        }
    })?;
    attempt.created_whmcs_order = Some(created.order_id);
    let order_id = created.order_id.to_string();
    log.info(
        "WHMCS order created",
        &[
            ("whmcs_order_id", &order_id),
            ("service_ids", &join_ids(&created.service_ids)),
            (
                "invoice_id",
                &created
                    .invoice_id
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
            ),
        ],
    );

    // Persist the id before anything else can fail, so a retry resumes instead of re-ordering.
    ctx.sf
        .update(ORDER, &order.id, json!({ field::WHMCS_ORDER_ID: order_id }))
        .map_err(|e| {
            StepFailure::new(
                WHMCS_CREATE,
                &e.code,
                format!(
                    "WHMCS order {order_id} created but WHMCS_Order_ID__c not saved ({}); \
                     reconcile before retry",
                    e.message
                ),
            )
        })?;
    log.info("finished", &[("whmcs_order_id", &order_id)]);
    Ok(WhmcsOrderRef {
        order_id: created.order_id,
        needs_accept: true,
    })
}

/// A re-delivered job (an earlier run died) reconciles before AddOrder, holding the client's
/// hold exclusively: a Pending WHMCS order of this client, with this payment method and these
/// lines, that no Salesforce Order claims was left by a dead run between AddOrder and the save
/// of its id. The oldest such order is adopted (saved on this Order) instead of creating another.
/// `None` when there is nothing to adopt.
fn adopt_orphan(
    ctx: &Ctx,
    order: &Order,
    customer: &Customer,
    lines: &[AddOrderItem],
    delivery: u32,
) -> Result<Option<WhmcsOrderRef>, StepFailure> {
    let log = ctx.log.step(WHMCS_CREATE);
    log.info(
        "Job delivered again: reconciling with WHMCS before AddOrder",
        &[
            ("delivery", &delivery.to_string()),
            ("client_id", &customer.client_id.to_string()),
        ],
    );
    let pending = ctx
        .whmcs
        .client_orders(customer.client_id, "Pending")
        .map_err(|e| StepFailure::host(WHMCS_CREATE, "GetOrders (reconcile)", e))?;
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
        .map_err(|e| StepFailure::host(WHMCS_CREATE, "Order query (reconcile)", e))?;
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
    ctx.sf
        .update(ORDER, &order.id, json!({ field::WHMCS_ORDER_ID: id_text }))
        .map_err(|e| {
            StepFailure::new(
                WHMCS_CREATE,
                &e.code,
                format!(
                    "WHMCS order {orphan} adopted but WHMCS_Order_ID__c not saved ({}); \
                     reconcile before retry",
                    e.message
                ),
            )
        })?;
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
/// per item, or one per unit) with the same billing cycles.
fn same_lines(order: &WhmcsOrder, lines: &[AddOrderItem]) -> bool {
    let mut have: Vec<Option<BillingCycle>> = order.lines.iter().map(|l| l.billing_cycle).collect();
    have.sort_unstable_by_key(|c| c.map(BillingCycle::as_whmcs));
    let per_item = || lines.iter().map(|l| Some(l.billing_cycle));
    let per_unit = || {
        lines.iter().flat_map(|l| {
            std::iter::repeat_n(Some(l.billing_cycle), usize::try_from(l.qty).unwrap_or(0))
        })
    };
    [per_item().collect::<Vec<_>>(), per_unit().collect()]
        .into_iter()
        .any(|mut want| {
            want.sort_unstable_by_key(|c| c.map(BillingCycle::as_whmcs));
            want == have
        })
}

/// An earlier attempt got past AddOrder: continue from the WHMCS order's current state.
fn resume_whmcs_order(ctx: &Ctx, existing: &str) -> Result<WhmcsOrderRef, StepFailure> {
    let log = ctx.log.step(WHMCS_CREATE);
    let order_id = lenient::u64_from_str(existing).ok_or_else(|| {
        StepFailure::new(
            WHMCS_CREATE,
            codes::WHMCS_ORDER_STATE,
            format!("WHMCS_Order_ID__c '{existing}' is not a WHMCS order id"),
        )
    })?;
    log.info(
        "Order already has a WHMCS order; resuming without AddOrder",
        &[("whmcs_order_id", &order_id.to_string())],
    );
    let found = ctx
        .whmcs
        .get_order(order_id)
        .map_err(|e| StepFailure::host(WHMCS_CREATE, "GetOrders", e))?;
    let needs_accept = match found.map(|o| o.status) {
        Some(OrderStatus::Pending) => true,
        Some(OrderStatus::Active) => false,
        Some(other) => {
            return Err(StepFailure::new(
                WHMCS_CREATE,
                codes::WHMCS_ORDER_STATE,
                format!("WHMCS order {order_id} is {other}; reconcile before retry"),
            ));
        }
        None => {
            return Err(StepFailure::new(
                WHMCS_CREATE,
                codes::WHMCS_ORDER_STATE,
                format!("WHMCS order {order_id} not found; reconcile before retry"),
            ));
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

/// `whmcs_accept`: AcceptOrder; a "not Pending" rejection is confirmed with GetOrders.
fn accept_whmcs_order(ctx: &Ctx, whmcs_order: &WhmcsOrderRef) -> Result<(), StepFailure> {
    let log = ctx.log.step(WHMCS_ACCEPT);
    let order_id = whmcs_order.order_id;
    let id_text = order_id.to_string();
    if !whmcs_order.needs_accept {
        log.info(
            "WHMCS order already Active; AcceptOrder skipped",
            &[("whmcs_order_id", &id_text)],
        );
        return Ok(());
    }
    log.info("started", &[("whmcs_order_id", &id_text)]);

    match ctx.whmcs.accept_order(order_id) {
        Ok(()) => {}
        Err(e) if is_order_not_pending(&e) => {
            let status = ctx
                .whmcs
                .get_order(order_id)
                .map_err(|g| StepFailure::host(WHMCS_ACCEPT, "AcceptOrder rejected; GetOrders", g))?
                .map(|o| o.status);
            if status != Some(OrderStatus::Active) {
                let seen = status.map_or_else(|| "not found".to_owned(), |s| s.to_string());
                return Err(StepFailure::new(
                    WHMCS_ACCEPT,
                    &e.code,
                    format!("AcceptOrder: {} (WHMCS order {order_id} {seen})", e.message),
                ));
            }
            log.info(
                "AcceptOrder rejected but GetOrders shows the order Active; treated as accepted",
                &[("whmcs_order_id", &id_text)],
            );
        }
        Err(e) if e.kind == ErrorKind::Timeout => {
            return Err(StepFailure::new(
                WHMCS_ACCEPT,
                &e.code,
                format!(
                    "AcceptOrder timed out: WHMCS order {order_id} may be accepted; \
                     a retry confirms with GetOrders"
                ),
            ));
        }
        Err(e) => return Err(StepFailure::host(WHMCS_ACCEPT, "AcceptOrder", e)),
    }
    log.info("finished", &[("whmcs_order_id", &id_text)]);
    Ok(())
}

/// `sf_success_update`: the Order is Activated with its WHMCS order id.
fn mark_activated(ctx: &Ctx, order: &Order, whmcs_order_id: u64) -> Result<Outcome, StepFailure> {
    let log = ctx.log.step(SF_SUCCESS_UPDATE);
    log.info("started", &[]);
    let id_text = whmcs_order_id.to_string();
    ctx.sf
        .update(
            ORDER,
            &order.id,
            json!({
                field::ACTIVATION_STATUS: ActivationStatus::Activated.as_str(),
                field::WHMCS_ORDER_ID: id_text,
                field::ACTIVATION_ERROR_CODE: null,
                field::ACTIVATION_ERROR_MESSAGE: null,
            }),
        )
        .map_err(|e| StepFailure::host(SF_SUCCESS_UPDATE, "Order update", e))?;
    log.info("finished", &[("whmcs_order_id", &id_text)]);
    Ok(Outcome::completed(format!(
        "WHMCS order {whmcs_order_id} accepted"
    )))
}

/// Records a failure on the Order (`Failed`, code, short message), logs it under its step and
/// returns it. A failing write is logged; the original failure is still returned.
fn record_failure(ctx: &Ctx, order: &Order, attempt: &Attempt, failure: StepFailure) -> Failure {
    let log = ctx.log.step(failure.step);
    let failure = StepFailure {
        message: truncate_field(&failure.message),
        code: truncate_field(&failure.code),
        ..failure
    };
    log.error(
        "Fulfillment failed",
        &[("code", &failure.code), ("message", &failure.message)],
    );

    let mut fields = json!({
        field::ACTIVATION_STATUS: ActivationStatus::Failed.as_str(),
        field::ACTIVATION_ERROR_CODE: failure.code,
        field::ACTIVATION_ERROR_MESSAGE: failure.message,
    });
    if let (Some(created), Value::Object(map)) = (attempt.created_whmcs_order, &mut fields) {
        map.insert(field::WHMCS_ORDER_ID.into(), created.to_string().into());
    }
    if let Err(e) = ctx.sf.update(ORDER, &order.id, fields) {
        log.error(
            "Could not record the failure on the Order",
            &[
                ("write_code", &e.code),
                ("write_message", &e.message),
                ("code", &failure.code),
            ],
        );
    }
    failure.into_failure()
}

/// Salesforce ids compare case-sensitively on their 15-char form; an 18-char id adds a
/// checksum suffix, so `01s...A` (15) and `01s...AAAQ` (18) name the same record.
fn same_sf_id(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let valid = |s: &str| matches!(s.len(), 15 | 18) && s.is_ascii();
    valid(a) && valid(b) && a.get(..15) == b.get(..15)
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
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

    #[test]
    fn sf_ids_match_across_15_and_18_chars() {
        assert!(same_sf_id("01s000000000001", "01s000000000001AAA"));
        assert!(!same_sf_id("01s000000000001", "01s000000000002AAA"));
        assert!(!same_sf_id("01s000000000001", ""));
    }
}
