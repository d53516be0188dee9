//! Typed WHMCS calls over the `billing` import.

use std::fmt;

use serde_json::{Map, Value, json};

use crate::host::Host;
use crate::json;
use crate::types::{ErrorKind, HostError};

/// WHMCS's text for AcceptOrder on an order that is missing or no longer Pending (also what a
/// second AcceptOrder on an accepted order returns): confirm with GetOrders before failing.
pub const ORDER_NOT_PENDING: &str = "Order ID not found or Status not Pending";

/// True when `err` is WHMCS rejecting a call with [`ORDER_NOT_PENDING`].
pub fn is_order_not_pending(err: &HostError) -> bool {
    err.kind == ErrorKind::Rejected && err.message.contains(ORDER_NOT_PENDING)
}

/// A WHMCS billing cycle (the system names AddOrder accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillingCycle {
    Free,
    OneTime,
    Monthly,
    Quarterly,
    SemiAnnually,
    Annually,
    Biennially,
    Triennially,
}

impl BillingCycle {
    /// The WHMCS system name, e.g. `semiannually`.
    pub fn as_whmcs(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::OneTime => "onetime",
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
            Self::SemiAnnually => "semiannually",
            Self::Annually => "annually",
            Self::Biennially => "biennially",
            Self::Triennially => "triennially",
        }
    }

    /// Normalises a system name or display label: case, spaces, `-` and `_` are ignored, so
    /// `Monthly`, `Semi-Annually`, `One Time`, `Free Account` and `semiannually` all parse.
    /// Common adjective forms (`Annual`, `Yearly`, `Semi-Annual`, `Biennial`, `Triennial`) too.
    pub fn parse(label: &str) -> Option<Self> {
        let key: String = label
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '_'))
            .flat_map(char::to_lowercase)
            .collect();
        Some(match key.as_str() {
            "free" | "freeaccount" => Self::Free,
            "onetime" => Self::OneTime,
            "monthly" => Self::Monthly,
            "quarterly" => Self::Quarterly,
            "semiannually" | "semiannual" => Self::SemiAnnually,
            "annually" | "annual" | "yearly" => Self::Annually,
            "biennially" | "biennial" => Self::Biennially,
            "triennially" | "triennial" => Self::Triennially,
            _ => return None,
        })
    }
}

impl fmt::Display for BillingCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_whmcs())
    }
}

/// One stored payment method of a client (GetPayMethods `paymethods[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayMethod {
    pub id: Option<u64>,
    /// `CreditCard`, `RemoteCreditCard`, `BankAccount` or `RemoteBankAccount`.
    pub kind: String,
    /// The gateway's system name: what AddOrder's `paymentmethod` expects.
    pub gateway_name: String,
    pub description: String,
}

/// One line of an AddOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOrderItem {
    /// WHMCS product id.
    pub pid: u64,
    pub billing_cycle: BillingCycle,
    pub qty: u32,
}

/// An AddOrder request: all items go into one WHMCS order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddOrder {
    pub client_id: u64,
    /// Gateway system name, e.g. the first pay method's `gateway_name`.
    pub payment_method: String,
    pub items: Vec<AddOrderItem>,
    /// Further AddOrder parameters (`noemail`, `promocode`, ...), merged in as given.
    pub extra: Map<String, Value>,
}

impl AddOrder {
    /// The AddOrder parameters: `clientid`, `paymentmethod`, `pid[]`, `billingcycle[]`, `qty[]`
    /// (the host encodes arrays PHP-style), then `extra`.
    pub fn params(&self) -> Value {
        let mut params = Map::new();
        params.insert("clientid".into(), json!(self.client_id));
        params.insert("paymentmethod".into(), json!(self.payment_method));
        params.insert(
            "pid".into(),
            self.items.iter().map(|i| json!(i.pid)).collect(),
        );
        params.insert(
            "billingcycle".into(),
            self.items
                .iter()
                .map(|i| json!(i.billing_cycle.as_whmcs()))
                .collect(),
        );
        params.insert(
            "qty".into(),
            self.items.iter().map(|i| json!(i.qty)).collect(),
        );
        for (k, v) in &self.extra {
            params.insert(k.clone(), v.clone());
        }
        Value::Object(params)
    }
}

/// What AddOrder created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOrderResult {
    pub order_id: u64,
    /// `serviceids` (or the legacy `productids`), from a comma list or an array.
    pub service_ids: Vec<u64>,
    /// `None` when WHMCS created no invoice (missing, empty or `0`).
    pub invoice_id: Option<u64>,
}

impl AddOrderResult {
    /// Reads an AddOrder response, tolerating numbers as strings and comma lists.
    pub fn from_response(resp: &Value) -> Result<Self, HostError> {
        let order_id = resp
            .get("orderid")
            .and_then(json::u64_from)
            .ok_or_else(|| {
                HostError::bad_response("AddOrder answered success without a usable orderid")
            })?;
        let service_ids = resp
            .get("serviceids")
            .or_else(|| resp.get("productids"))
            .map(json::u64_list_from)
            .unwrap_or_default();
        let invoice_id = resp
            .get("invoiceid")
            .and_then(json::u64_from)
            .filter(|id| *id != 0);
        Ok(Self {
            order_id,
            service_ids,
            invoice_id,
        })
    }
}

/// A WHMCS order's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Active,
    Cancelled,
    Fraud,
    /// Any other (custom) status, as WHMCS spelled it.
    Other(String),
}

impl OrderStatus {
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "cancelled" | "canceled" => Self::Cancelled,
            "fraud" => Self::Fraud,
            _ => Self::Other(s.trim().to_owned()),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Cancelled => "Cancelled",
            Self::Fraud => "Fraud",
            Self::Other(s) => s,
        })
    }
}

/// One order as GetOrders reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhmcsOrder {
    pub id: u64,
    pub status: OrderStatus,
    pub payment_method: Option<String>,
    pub invoice_id: Option<u64>,
    /// `lineitems.lineitem[]`, in WHMCS's order.
    pub lines: Vec<WhmcsLineItem>,
}

/// One line of a [`WhmcsOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhmcsLineItem {
    /// `product`, the product's display name.
    pub product: String,
    /// `billingcycle` (a display label such as `Monthly`), parsed; `None` when unrecognised.
    pub billing_cycle: Option<BillingCycle>,
}

/// `orders.order[]` of a GetOrders response; an empty result may come as `"orders": ""` or a
/// single object instead of an array.
fn orders_in(resp: &Value) -> Vec<&Value> {
    match resp.get("orders").and_then(|o| o.get("order")) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => Vec::new(),
    }
}

impl WhmcsOrder {
    /// Finds order `id` in a GetOrders response.
    pub fn find_in(resp: &Value, id: u64) -> Option<Self> {
        orders_in(resp)
            .into_iter()
            .filter_map(Self::from_json)
            .find(|o| o.id == id)
    }

    /// Every order of a GetOrders response.
    pub fn all_in(resp: &Value) -> Vec<Self> {
        orders_in(resp)
            .into_iter()
            .filter_map(Self::from_json)
            .collect()
    }

    fn from_json(o: &Value) -> Option<Self> {
        let lines = match o.get("lineitems").and_then(|l| l.get("lineitem")) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(obj @ Value::Object(_)) => vec![obj],
            _ => Vec::new(),
        };
        Some(Self {
            id: o.get("id").and_then(json::u64_from)?,
            status: OrderStatus::parse(o.get("status").and_then(Value::as_str).unwrap_or("")),
            payment_method: o.get("paymentmethod").and_then(json::text_from),
            invoice_id: o
                .get("invoiceid")
                .and_then(json::u64_from)
                .filter(|i| *i != 0),
            lines: lines
                .into_iter()
                .map(|line| WhmcsLineItem {
                    product: text_field(line, "product"),
                    billing_cycle: line
                        .get("billingcycle")
                        .and_then(Value::as_str)
                        .and_then(BillingCycle::parse),
                })
                .collect(),
        })
    }
}

/// Orders GetOrders returns per page when [`Whmcs::client_orders`] pages through them.
const ORDERS_PAGE: u64 = 100;
/// Pages [`Whmcs::client_orders`] reads at most (a client with more orders in one status is
/// not one the rules should guess about).
const MAX_ORDER_PAGES: u64 = 20;

/// Typed WHMCS calls. Cheap to create; borrows the host.
#[derive(Clone, Copy)]
pub struct Whmcs<'h> {
    host: &'h dyn Host,
}

impl<'h> Whmcs<'h> {
    pub fn new(host: &'h dyn Host) -> Self {
        Self { host }
    }

    /// Calls any WHMCS action; `params` should be a JSON object. Returns the response JSON
    /// (`result=success`); a body that is not JSON is reported as `EBADRESPONSE`.
    pub fn call(&self, action: &str, params: Value) -> Result<Value, HostError> {
        let body = self.host.billing_call(action, &params.to_string())?;
        serde_json::from_str(&body)
            .map_err(|e| HostError::bad_response(format!("{action} answer is not JSON: {e}")))
    }

    /// GetPayMethods: the client's stored payment methods (possibly none).
    pub fn get_pay_methods(&self, client_id: u64) -> Result<Vec<PayMethod>, HostError> {
        let resp = self.call("GetPayMethods", json!({ "clientid": client_id }))?;
        let methods = match resp.get("paymethods") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|m| PayMethod {
                    id: m.get("id").and_then(json::u64_from),
                    kind: text_field(m, "type"),
                    gateway_name: text_field(m, "gateway_name"),
                    description: text_field(m, "description"),
                })
                .collect(),
            // WHMCS omits the list or sends "" when the client has none.
            _ => Vec::new(),
        };
        Ok(methods)
    }

    /// GetClientsDetails: the client's default payment gateway (`defaultgateway`, a gateway
    /// system name), or `None` when the client has none set.
    pub fn client_default_gateway(&self, client_id: u64) -> Result<Option<String>, HostError> {
        let resp = self.call("GetClientsDetails", json!({ "clientid": client_id }))?;
        // WHMCS answers the details both under `client` and at the top level.
        let gateway = resp
            .get("client")
            .map(|c| text_field(c, "defaultgateway"))
            .filter(|g| !g.trim().is_empty())
            .unwrap_or_else(|| text_field(&resp, "defaultgateway"));
        let gateway = gateway.trim();
        Ok((!gateway.is_empty()).then(|| gateway.to_owned()))
    }

    /// AddOrder: one WHMCS order holding every item. A timeout leaves the outcome unknown:
    /// reconcile (GetOrders) before any new attempt.
    pub fn add_order(&self, order: &AddOrder) -> Result<AddOrderResult, HostError> {
        let resp = self.call("AddOrder", order.params())?;
        AddOrderResult::from_response(&resp)
    }

    /// AcceptOrder `orderid`. See [`is_order_not_pending`] for the ambiguous rejection.
    pub fn accept_order(&self, order_id: u64) -> Result<(), HostError> {
        self.accept_order_with(order_id, &Map::new())
    }

    /// AcceptOrder `orderid` with further parameters (`autosetup`, `sendemail`, ...), merged in
    /// as given; `orderid` is always `order_id`.
    pub fn accept_order_with(
        &self,
        order_id: u64,
        extra: &Map<String, Value>,
    ) -> Result<(), HostError> {
        let mut params = extra.clone();
        params.insert("orderid".into(), json!(order_id));
        self.call("AcceptOrder", Value::Object(params)).map(drop)
    }

    /// GetOrders `id=`: the order, or `None` when WHMCS does not know it.
    pub fn get_order(&self, order_id: u64) -> Result<Option<WhmcsOrder>, HostError> {
        let resp = self.call("GetOrders", json!({ "id": order_id }))?;
        Ok(WhmcsOrder::find_in(&resp, order_id))
    }

    /// GetOrders for a client in one status (e.g. `Pending`), every page, newest first.
    pub fn client_orders(
        &self,
        client_id: u64,
        status: &str,
    ) -> Result<Vec<WhmcsOrder>, HostError> {
        let mut orders = Vec::new();
        for page in 0..MAX_ORDER_PAGES {
            let resp = self.call(
                "GetOrders",
                json!({
                    "userid": client_id,
                    "status": status,
                    "limitstart": page * ORDERS_PAGE,
                    "limitnum": ORDERS_PAGE,
                }),
            )?;
            let batch = WhmcsOrder::all_in(&resp);
            let total = resp.get("totalresults").and_then(json::u64_from);
            let done = (batch.len() as u64) < ORDERS_PAGE
                || total.is_some_and(|t| (orders.len() + batch.len()) as u64 >= t);
            orders.extend(batch);
            if done {
                return Ok(orders);
            }
        }
        Err(HostError::bad_response(format!(
            "GetOrders: client {client_id} has more than {} {status} orders",
            MAX_ORDER_PAGES * ORDERS_PAGE
        )))
    }
}

fn text_field(obj: &Value, key: &str) -> String {
    obj.get(key).and_then(json::text_from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_cycles_normalise_labels() {
        let cases = [
            ("monthly", BillingCycle::Monthly),
            ("Monthly", BillingCycle::Monthly),
            (" MONTHLY ", BillingCycle::Monthly),
            ("Semi-Annually", BillingCycle::SemiAnnually),
            ("semiannually", BillingCycle::SemiAnnually),
            ("Semi Annual", BillingCycle::SemiAnnually),
            ("One Time", BillingCycle::OneTime),
            ("one-time", BillingCycle::OneTime),
            ("onetime", BillingCycle::OneTime),
            ("Free Account", BillingCycle::Free),
            ("free", BillingCycle::Free),
            ("Quarterly", BillingCycle::Quarterly),
            ("Annually", BillingCycle::Annually),
            ("Yearly", BillingCycle::Annually),
            ("Biennially", BillingCycle::Biennially),
            ("Triennially", BillingCycle::Triennially),
        ];
        for (label, want) in cases {
            assert_eq!(BillingCycle::parse(label), Some(want), "{label}");
        }
        for bad in ["", "weekly", "month", "12"] {
            assert_eq!(BillingCycle::parse(bad), None, "{bad}");
        }
        assert_eq!(BillingCycle::SemiAnnually.as_whmcs(), "semiannually");
        assert_eq!(BillingCycle::OneTime.to_string(), "onetime");
    }

    #[test]
    fn add_order_params_are_parallel_arrays() {
        let order = AddOrder {
            client_id: 42,
            payment_method: "stripe".into(),
            items: vec![
                AddOrderItem {
                    pid: 7,
                    billing_cycle: BillingCycle::Monthly,
                    qty: 1,
                },
                AddOrderItem {
                    pid: 9,
                    billing_cycle: BillingCycle::Annually,
                    qty: 3,
                },
            ],
            extra: Map::new(),
        };
        assert_eq!(
            order.params(),
            json!({"clientid":42,"paymentmethod":"stripe","pid":[7,9],
                   "billingcycle":["monthly","annually"],"qty":[1,3]})
        );
    }

    #[test]
    fn add_order_result_tolerates_strings_and_lists() -> Result<(), HostError> {
        let r = AddOrderResult::from_response(&json!({
            "result":"success","orderid":"1042","serviceids":"7,8","invoiceid":"0"}))?;
        assert_eq!(r.order_id, 1042);
        assert_eq!(r.service_ids, vec![7, 8]);
        assert_eq!(r.invoice_id, None);
        let r = AddOrderResult::from_response(&json!({
            "orderid":1043,"productids":"9","invoiceid":55}))?;
        assert_eq!(
            (r.order_id, r.service_ids, r.invoice_id),
            (1043, vec![9], Some(55))
        );
        let err = AddOrderResult::from_response(&json!({"result":"success"}));
        assert_eq!(err.map_err(|e| e.code), Err("EBADRESPONSE".to_string()));
        Ok(())
    }

    #[test]
    fn get_orders_shapes() {
        let resp = json!({"orders":{"order":[
            {"id":"1041","status":"Pending"},{"id":1042,"status":"Active","invoiceid":"77"}]}});
        let found = WhmcsOrder::find_in(&resp, 1042);
        assert_eq!(
            found.as_ref().map(|o| &o.status),
            Some(&OrderStatus::Active)
        );
        assert_eq!(found.and_then(|o| o.invoice_id), Some(77));
        assert_eq!(WhmcsOrder::find_in(&resp, 9), None);
        assert_eq!(WhmcsOrder::find_in(&json!({"orders":""}), 1), None);
        assert_eq!(WhmcsOrder::find_in(&json!({"totalresults":0}), 1), None);
        let single = json!({"orders":{"order":{"id":"5","status":"Cancelled"}}});
        assert_eq!(
            WhmcsOrder::find_in(&single, 5).map(|o| o.status),
            Some(OrderStatus::Cancelled)
        );
        assert_eq!(
            OrderStatus::parse("In Progress"),
            OrderStatus::Other("In Progress".into())
        );
    }

    #[test]
    fn not_pending_detection_needs_a_rejection() {
        let e = HostError::new(ErrorKind::Rejected, "WHMCS_ERROR", ORDER_NOT_PENDING);
        assert!(is_order_not_pending(&e));
        let e = HostError::new(ErrorKind::Timeout, "ETIMEOUT", ORDER_NOT_PENDING);
        assert!(!is_order_not_pending(&e));
    }
}
