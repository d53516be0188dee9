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
//!
//! This file is the runbook's steps, in order. The rest: `mapping.rs` (an OrderItem to a WHMCS
//! AddOrder line), `reconcile.rs` (resuming a WHMCS order, the client hold and adopting an
//! orphan), `settings.rs` (the WHMCS config keys: version, AddOrder and AcceptOrder flags),
//! `failure.rs` (a step's failure: `fail(STEP, code, message)` and
//! `.step_err(STEP, "<call>")` on a host call's result) and `extensions.rs` (the points where a
//! variant changes the rules without copying them: [`Extensions`], run by
//! [`fulfill_with_extensions`]).

mod extensions;
mod failure;
mod mapping;
mod reconcile;
mod settings;

pub use extensions::{
    ACCEPT_ORDER_OWN_PARAMS, ADD_ORDER_OWN_PARAMS, Extensions, default_map_item, split_quantity,
};
pub use settings::{
    ACCEPT_ORDER_FLAGS, ADD_ORDER_FLAGS, DEFAULT_WHMCS_VERSION, QTY_SINCE, WHMCS_VERSION,
};

use fulfillment_sdk::salesforce::order_fields as field;
use fulfillment_sdk::serde_json::{Map, Value, json};
use fulfillment_sdk::whmcs::is_order_not_pending;
use fulfillment_sdk::{
    ActivationStatus, AddOrder, AddOrderItem, ErrorKind, Event, Failure, Fulfillment, Host, Info,
    Log, Order, OrderItem, OrderStatus, Outcome, Salesforce, StepLog, Whmcs, json as lenient,
    truncate_field,
};

use crate::extensions::without;
use crate::failure::{StepErr, StepFailure, fail};
use crate::settings::Settings;

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
    /// A config value the rules cannot read (e.g. `WHMCS_VERSION = "latest"`).
    pub const CONFIG: &str = crate::settings::CONFIG;
    /// Before WHMCS 8.12 (one AddOrder line per unit), more units than [`MAX_UNIT_LINES`](crate::MAX_UNIT_LINES).
    pub const TOO_MANY_UNITS: &str = "TOO_MANY_UNITS";
}

/// Config key of the only pricebook the portal provisions from (optional).
pub const PORTAL_PRICEBOOK_ID: &str = "PORTAL_PRICEBOOK_ID";

const ORDER: &str = "Order";

/// Before WHMCS 8.12 every unit is its own AddOrder line: at most this many in one order.
pub const MAX_UNIT_LINES: u64 = 1000;

/// Pay method types WHMCS stores locally; GetPayMethods gives them an empty `gateway_name`.
const LOCAL_PAY_METHODS: [&str; 2] = ["CreditCard", "BankAccount"];

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

/// Variations of the default rules. `RuleOptions::default()` is the default component. For
/// anything beyond these, implement [`Extensions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Send an item of Quantity N > 1 as N AddOrder lines of qty 1 (same pid and billing
    /// cycle) instead of one line of qty N; the mapping log lines add `lines`.
    pub split_quantities: bool,
}

impl Extensions for RuleOptions {
    fn add_order_lines(&self, line: &AddOrderItem) -> Vec<AddOrderItem> {
        if self.split_quantities {
            split_quantity(line)
        } else {
            vec![line.clone()]
        }
    }

    fn log_line_counts(&self) -> bool {
        self.split_quantities
    }
}

/// The default rules with `options`: what [`Rules::fulfill`] runs with the default options.
pub fn fulfill_with(
    host: &dyn Host,
    event: Event,
    options: &RuleOptions,
) -> Result<Outcome, Failure> {
    fulfill_with_extensions(host, event, options)
}

/// The default rules, changed where `ext` overrides an [`Extensions`] method: every step,
/// log line, failure record and the reconciliation stay the default rules' own.
pub fn fulfill_with_extensions(
    host: &dyn Host,
    event: Event,
    ext: &dyn Extensions,
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
    let result = provision(&ctx, &order, ext, &mut attempt);
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

/// The runbook's steps after the guard, in order.
fn provision(
    ctx: &Ctx,
    order: &Order,
    ext: &dyn Extensions,
    attempt: &mut Attempt,
) -> Result<Outcome, StepFailure> {
    let settings = settings::read(ctx.host)?;
    let customer = validate_order(ctx, order, ext, &settings)?;
    mark_activating(ctx, order)?;
    let items = order_details(ctx, order)?;
    let lines = map_items(ctx, &items, ext)?;
    let whmcs_order = create_whmcs_order(ctx, order, &customer, lines, ext, &settings, attempt)?;
    accept_whmcs_order(ctx, order, &whmcs_order, ext, &settings)?;
    mark_activated(ctx, order, whmcs_order.order_id, ext)
}

/// `validation`, part 1: re-read the Order the event names (never trust the payload).
fn load_order(ctx: &Ctx, event: &Event) -> Result<Order, StepFailure> {
    let log = ctx.log.step(VALIDATION);
    log.info("started", &[]);

    let Some(order_id) = event.order_id() else {
        let message = format!("Event payload has no {}", Event::ORDER_ID_FIELD);
        return Err(fail(VALIDATION, codes::INVALID_EVENT, message));
    };
    let order = ctx.sf.order(order_id).step_err(VALIDATION, "Order query")?;
    let Some(order) = order else {
        let message = format!("Order {order_id} not found");
        return Err(fail(VALIDATION, codes::NOT_FOUND, message));
    };
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

/// `validation`, part 2: pricebook, linked WHMCS client, a payment method
/// ([`payment_method`]), then the variant's own checks ([`Extensions::validate`]).
fn validate_order(
    ctx: &Ctx,
    order: &Order,
    ext: &dyn Extensions,
    settings: &Settings,
) -> Result<Customer, StepFailure> {
    check_pricebook(ctx, order)?;
    let client_id = linked_client(order)?;
    let (payment_method, source) = payment_method(ctx, client_id, settings)?;
    ext.validate(ctx.host, order)
        .map_err(|f| fail(VALIDATION, f.code, f.message))?;

    ctx.log.step(VALIDATION).info(
        "finished",
        &[
            ("client_id", &client_id.to_string()),
            ("payment_method", &payment_method),
            ("payment_method_from", source),
        ],
    );
    Ok(Customer {
        client_id,
        payment_method,
    })
}

/// The gateway AddOrder's `paymentmethod` gets, and where it came from (`pay_method` or
/// `default_gateway`). From GetPayMethods, in WHMCS's order:
/// 1. the first pay method with a `gateway_name` (a remote card or bank account, e.g. `stripe`):
///    that gateway;
/// 2. otherwise, when the client has a locally stored `CreditCard` or `BankAccount` (WHMCS
///    reports those with an empty `gateway_name`): the client's default gateway
///    (GetClientsDetails `defaultgateway`); when that is blank (the client is on WHMCS's "Use
///    Default"), the `WHMCS_DEFAULT_GATEWAY` config (`system_default_gateway`); without either,
///    409 naming both;
/// 3. otherwise (no pay method at all): 409 "Payment method missing".
fn payment_method(
    ctx: &Ctx,
    client_id: u64,
    settings: &Settings,
) -> Result<(String, &'static str), StepFailure> {
    let methods = ctx
        .whmcs
        .get_pay_methods(client_id)
        .step_err(VALIDATION, "GetPayMethods")?;
    if let Some(remote) = methods.iter().find(|m| !m.gateway_name.trim().is_empty()) {
        return Ok((remote.gateway_name.trim().to_owned(), "pay_method"));
    }
    let has_local = methods.iter().any(|m| {
        LOCAL_PAY_METHODS
            .iter()
            .any(|kind| m.kind.eq_ignore_ascii_case(kind))
    });
    if !has_local {
        let message = "Payment method missing";
        return Err(fail(VALIDATION, codes::PAYMENT_METHOD_MISSING, message));
    }
    match ctx
        .whmcs
        .client_default_gateway(client_id)
        .step_err(VALIDATION, "GetClientsDetails")?
    {
        Some(gateway) => Ok((gateway, "default_gateway")),
        None => match &settings.default_gateway {
            Some(gateway) => Ok((gateway.clone(), "system_default_gateway")),
            None => {
                let message = "Payment method missing: the client's stored card or bank account \
                               has no gateway and the client has no default gateway (\"Use \
                               Default\" needs the WHMCS_DEFAULT_GATEWAY config)";
                Err(fail(VALIDATION, codes::PAYMENT_METHOD_MISSING, message))
            }
        },
    }
}

/// The Order's pricebook must be the `PORTAL_PRICEBOOK_ID` config, when that is set.
fn check_pricebook(ctx: &Ctx, order: &Order) -> Result<(), StepFailure> {
    let Some(portal) = ctx.host.config(PORTAL_PRICEBOOK_ID) else {
        return Ok(());
    };
    let portal = portal.trim();
    let actual = order.pricebook2_id.as_deref().unwrap_or("");
    if portal.is_empty() || same_sf_id(portal, actual) {
        return Ok(());
    }
    let actual = if actual.is_empty() { "(none)" } else { actual };
    let message = format!("Order pricebook {actual} is not the portal pricebook {portal}");
    Err(fail(VALIDATION, codes::PRICEBOOK_MISMATCH, message))
}

/// The WHMCS client id on the Order's Account (`Account.WHMCS_Client_ID__c`).
fn linked_client(order: &Order) -> Result<u64, StepFailure> {
    let account = order.account_id.as_deref().unwrap_or("(none)");
    let Some(text) = order.whmcs_client_id() else {
        let message = format!("Account {account} has no WHMCS_Client_ID__c");
        return Err(fail(VALIDATION, codes::CLIENT_NOT_LINKED, message));
    };
    lenient::u64_from_str(text).ok_or_else(|| {
        let message = format!("Account {account} has an invalid WHMCS_Client_ID__c '{text}'");
        fail(VALIDATION, codes::CLIENT_NOT_LINKED, message)
    })
}

/// `sf_status_update`: mark the attempt in progress and clear the last error.
fn mark_activating(ctx: &Ctx, order: &Order) -> Result<(), StepFailure> {
    let log = ctx.log.step(SF_STATUS_UPDATE);
    log.info("started", &[]);
    let fields = json!({
        field::ACTIVATION_STATUS: ActivationStatus::Activating.as_str(),
        field::ACTIVATION_ERROR_CODE: null,
        field::ACTIVATION_ERROR_MESSAGE: null,
    });
    ctx.sf
        .update(ORDER, &order.id, fields)
        .step_err(SF_STATUS_UPDATE, "Order update")?;
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
        .step_err(ORDER_DETAILS, "OrderItem query")?;
    if items.is_empty() {
        let message = format!("Order {} has no OrderItems", order.display_name());
        return Err(fail(ORDER_DETAILS, codes::NO_ITEMS, message));
    }
    log.info("finished", &[("items", &items.len().to_string())]);
    Ok(items)
}

/// `mapping`: every item to a WHMCS line ([`Extensions::map_item`]), with a log line per item
/// and a report. Any unmapped item fails the order, naming each one and why. The lines stay one
/// per item (reconciliation compares WHMCS orders with them); with
/// [`Extensions::log_line_counts`] the logs also count the AddOrder lines
/// ([`Extensions::add_order_lines`]) each item becomes.
fn map_items(
    ctx: &Ctx,
    items: &[OrderItem],
    ext: &dyn Extensions,
) -> Result<Vec<AddOrderItem>, StepFailure> {
    let log = ctx.log.step(MAPPING);
    log.info("started", &[]);

    let mut lines = Vec::with_capacity(items.len());
    let mut add_order_line_count = 0_usize;
    let mut unmapped = Vec::new();
    for item in items {
        match ext.map_item(item) {
            Ok(line) => {
                let item_lines = ext.add_order_lines(&line).len();
                add_order_line_count += item_lines;
                log_item_mapped(&log, item, &line, item_lines, ext.log_line_counts());
                lines.push(line);
            }
            Err(reason) => {
                log_item_unmapped(&log, item, &reason);
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
    if ext.log_line_counts() {
        report.push(("lines", lines_text.as_str()));
    }
    log.info("mapping report", &report);
    if !unmapped.is_empty() {
        let message = format!("Unmapped items: {}", unmapped.join(", "));
        return Err(fail(MAPPING, codes::MAPPING, message));
    }
    log.info("finished", &[]);
    Ok(lines)
}

/// `item mapped`: the item's WHMCS line; only with `log_line_counts` (the split rules) it adds
/// `lines` (the AddOrder lines it becomes), so the default rules' log lines stay as documented.
fn log_item_mapped(
    log: &StepLog,
    item: &OrderItem,
    line: &AddOrderItem,
    item_lines: usize,
    log_line_counts: bool,
) {
    let pid_text = line.pid.to_string();
    let qty_text = line.qty.to_string();
    let lines_text = item_lines.to_string();
    let mut fields = vec![
        ("item_id", item.id.as_str()),
        ("product", item.product_name().unwrap_or("")),
        ("pid", pid_text.as_str()),
        ("cycle", line.billing_cycle.as_whmcs()),
        ("qty", qty_text.as_str()),
        ("status", "mapped"),
    ];
    if log_line_counts {
        fields.push(("lines", lines_text.as_str()));
    }
    log.info("item mapped", &fields);
}

/// `item unmapped` (warn): the item's fields as Salesforce has them, and why it cannot be mapped.
fn log_item_unmapped(log: &StepLog, item: &OrderItem, reason: &str) {
    log.warn(
        "item unmapped",
        &[
            ("item_id", &item.id),
            ("product", item.product_name().unwrap_or("")),
            ("pid", item.wh_product_id().unwrap_or("")),
            ("cycle", item.billing_cycle.as_deref().unwrap_or("")),
            ("status", "unmapped"),
            ("reason", reason),
        ],
    );
}

/// `whmcs_create`: resume the WHMCS order an earlier attempt created, or AddOrder and persist
/// its id on the Order at once. AddOrder sends each mapped line as [`Extensions::add_order_lines`]
/// with [`Extensions::add_order_params`]; reconciliation compares orphans with those lines and
/// with the mapped `lines` (one per item or one per unit), so the default and the
/// `split_quantities` rules adopt each other's orphans.
fn create_whmcs_order(
    ctx: &Ctx,
    order: &Order,
    customer: &Customer,
    lines: Vec<AddOrderItem>,
    ext: &dyn Extensions,
    settings: &Settings,
    attempt: &mut Attempt,
) -> Result<WhmcsOrderRef, StepFailure> {
    let log = ctx.log.step(WHMCS_CREATE);
    log.info("started", &[]);

    if let Some(existing) = order.whmcs_order_id.as_deref() {
        return reconcile::resume_whmcs_order(ctx, existing);
    }

    // WHMCS has no idempotency key: hold the client until the id is saved (the hold is released
    // when this function returns), and a job delivered again adopts the Pending order a dead run
    // left instead of creating another (see `reconcile`).
    let add_order_lines = add_order_lines(ctx, &lines, ext, settings)?;
    let hold = reconcile::hold_client(ctx, customer)?;
    let sent = reconcile::Lines {
        mapped: &lines,
        add_order: &add_order_lines,
    };
    if let Some(adopted) = reconcile::adopt_orphan(ctx, &hold, order, customer, sent)? {
        attempt.created_whmcs_order = Some(adopted.order_id);
        return Ok(adopted);
    }

    let request = AddOrder {
        client_id: customer.client_id,
        payment_method: customer.payment_method.clone(),
        items: add_order_lines,
        extra: with_flags(
            &settings.add_order_flags,
            without(ext.add_order_params(ctx.host, order), &ADD_ORDER_OWN_PARAMS),
        ),
    };
    let created = match ctx.whmcs.add_order(&request) {
        Err(e) if e.kind == ErrorKind::Timeout => {
            let message =
                "AddOrder timed out: the WHMCS order may exist; reconcile in WHMCS before retry";
            return Err(fail(WHMCS_CREATE, e.code, message));
        }
        created => created.step_err(WHMCS_CREATE, "AddOrder")?,
    };
    attempt.created_whmcs_order = Some(created.order_id);
    let order_id = created.order_id.to_string();
    let invoice_id = created
        .invoice_id
        .map(|i| i.to_string())
        .unwrap_or_default();
    log.info(
        "WHMCS order created",
        &[
            ("whmcs_order_id", &order_id),
            ("service_ids", &join_ids(&created.service_ids)),
            ("invoice_id", &invoice_id),
        ],
    );

    // Persist the id before anything else can fail, so a retry resumes instead of re-ordering.
    save_whmcs_order_id(ctx, order, &order_id, "created")?;
    log.info("finished", &[("whmcs_order_id", &order_id)]);
    Ok(WhmcsOrderRef {
        order_id: created.order_id,
        needs_accept: true,
    })
}

/// The lines AddOrder sends: each mapped line as [`Extensions::add_order_lines`]; before WHMCS
/// 8.12 (config `WHMCS_VERSION`), which ignores `qty[]`, each of those as one line of qty 1 per
/// unit ([`split_quantity`]), at most [`MAX_UNIT_LINES`].
fn add_order_lines(
    ctx: &Ctx,
    lines: &[AddOrderItem],
    ext: &dyn Extensions,
    settings: &Settings,
) -> Result<Vec<AddOrderItem>, StepFailure> {
    let lines: Vec<AddOrderItem> = lines
        .iter()
        .flat_map(|line| ext.add_order_lines(line))
        .collect();
    if settings.qty_supported {
        return Ok(lines);
    }
    let units: u64 = lines.iter().map(|line| u64::from(line.qty.max(1))).sum();
    if units > MAX_UNIT_LINES {
        let message = format!(
            "{units} units need {units} AddOrder lines before WHMCS 8.12 (WHMCS_VERSION {}); \
             at most {MAX_UNIT_LINES}",
            settings.whmcs_version
        );
        return Err(fail(WHMCS_CREATE, codes::TOO_MANY_UNITS, message));
    }
    let split: Vec<AddOrderItem> = lines.iter().flat_map(split_quantity).collect();
    ctx.log.step(WHMCS_CREATE).info(
        "WHMCS before 8.12: one AddOrder line of qty 1 per unit",
        &[
            ("whmcs_version", &settings.whmcs_version),
            ("lines", &split.len().to_string()),
        ],
    );
    Ok(split)
}

/// The rules' flags (config), then `extra` (a variant's parameters win over a flag of the same
/// name).
fn with_flags(flags: &Map<String, Value>, extra: Map<String, Value>) -> Map<String, Value> {
    let mut params = flags.clone();
    params.extend(extra);
    params
}

/// `whmcs_create`'s save of `WHMCS_Order_ID__c` the moment a WHMCS order exists (`how`:
/// created, or adopted from a dead run). A failed save says the order exists, so an operator
/// reconciles before retrying.
pub(crate) fn save_whmcs_order_id(
    ctx: &Ctx,
    order: &Order,
    whmcs_order_id: &str,
    how: &str,
) -> Result<(), StepFailure> {
    ctx.sf
        .update(
            ORDER,
            &order.id,
            json!({ field::WHMCS_ORDER_ID: whmcs_order_id }),
        )
        .map_err(|e| {
            let message = format!(
                "WHMCS order {whmcs_order_id} {how} but WHMCS_Order_ID__c not saved ({}); \
                 reconcile before retry",
                e.message
            );
            fail(WHMCS_CREATE, e.code, message)
        })
}

/// `whmcs_accept`: AcceptOrder with `autosetup` and `sendemail` (config `WHMCS_AUTOSETUP`,
/// `WHMCS_SENDEMAIL`) and [`Extensions::accept_order_params`]; a "not Pending" rejection is
/// confirmed with GetOrders.
fn accept_whmcs_order(
    ctx: &Ctx,
    order: &Order,
    whmcs_order: &WhmcsOrderRef,
    ext: &dyn Extensions,
    settings: &Settings,
) -> Result<(), StepFailure> {
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

    let params = with_flags(
        &settings.accept_order_flags,
        without(
            ext.accept_order_params(ctx.host, order),
            &ACCEPT_ORDER_OWN_PARAMS,
        ),
    );
    match ctx.whmcs.accept_order_with(order_id, &params) {
        Err(e) if is_order_not_pending(&e) => {
            let status = ctx
                .whmcs
                .get_order(order_id)
                .step_err(WHMCS_ACCEPT, "AcceptOrder rejected; GetOrders")?
                .map(|o| o.status);
            if status != Some(OrderStatus::Active) {
                let seen = status.map_or_else(|| "not found".to_owned(), |s| s.to_string());
                let message = format!("AcceptOrder: {} (WHMCS order {order_id} {seen})", e.message);
                return Err(fail(WHMCS_ACCEPT, e.code, message));
            }
            log.info(
                "AcceptOrder rejected but GetOrders shows the order Active; treated as accepted",
                &[("whmcs_order_id", &id_text)],
            );
        }
        Err(e) if e.kind == ErrorKind::Timeout => {
            let message = format!(
                "AcceptOrder timed out: WHMCS order {order_id} may be accepted; \
                 a retry confirms with GetOrders"
            );
            return Err(fail(WHMCS_ACCEPT, e.code, message));
        }
        accepted => accepted.step_err(WHMCS_ACCEPT, "AcceptOrder")?,
    }
    log.info("finished", &[("whmcs_order_id", &id_text)]);
    Ok(())
}

/// `sf_success_update`: the Order is Activated with its WHMCS order id, plus the variant's
/// [`Extensions::success_fields`] in the same update (the default fields win).
fn mark_activated(
    ctx: &Ctx,
    order: &Order,
    whmcs_order_id: u64,
    ext: &dyn Extensions,
) -> Result<Outcome, StepFailure> {
    let log = ctx.log.step(SF_SUCCESS_UPDATE);
    log.info("started", &[]);
    let id_text = whmcs_order_id.to_string();
    let mut fields = ext.success_fields(ctx.host, order, whmcs_order_id);
    fields.insert(
        field::ACTIVATION_STATUS.into(),
        ActivationStatus::Activated.as_str().into(),
    );
    fields.insert(field::WHMCS_ORDER_ID.into(), id_text.clone().into());
    fields.insert(field::ACTIVATION_ERROR_CODE.into(), Value::Null);
    fields.insert(field::ACTIVATION_ERROR_MESSAGE.into(), Value::Null);
    ctx.sf
        .update(ORDER, &order.id, Value::Object(fields))
        .step_err(SF_SUCCESS_UPDATE, "Order update")?;
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

    #[test]
    fn sf_ids_match_across_15_and_18_chars() {
        assert!(same_sf_id("01s000000000001", "01s000000000001AAA"));
        assert!(!same_sf_id("01s000000000001", "01s000000000002AAA"));
        assert!(!same_sf_id("01s000000000001", ""));
    }
}
