//! An in-memory WHMCS: clients, products and orders, answering API actions with WHMCS's JSON
//! shapes and error texts. Credentials are the HTTP layer's business ([`super::http`]); this
//! takes the form pairs as they arrive and dispatches on `action`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Billing cycle system names, in WHMCS's order, with the labels read endpoints return.
const CYCLES: &[(&str, &str)] = &[
    ("free", "Free Account"),
    ("onetime", "One Time"),
    ("monthly", "Monthly"),
    ("quarterly", "Quarterly"),
    ("semiannually", "Semi-Annually"),
    ("annually", "Annually"),
    ("biennially", "Biennially"),
    ("triennially", "Triennially"),
];

/// The version a fake WHMCS reports being when none is set: one that reads AddOrder's `qty[]`.
pub const DEFAULT_VERSION: &str = "8.13";

/// The first version whose AddOrder reads `qty[]` (developers.whmcs.com/api-reference/addorder/,
/// version history: "8.12 Added `qty` parameter"); older versions ignore it.
const QTY_SINCE: (u32, u32) = (8, 12);

const NO_ITEMS: &str = "No items added to cart so order cannot proceed";
const NOT_PENDING: &str = "Order ID not found or Status not Pending";

/// A client (customer account).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeClient {
    pub id: u64,
    pub email: String,
    /// `Active`, `Inactive` or `Closed`.
    pub status: String,
    pub currency_code: String,
    /// Gateway system name, e.g. `stripe`; empty when none is set.
    pub default_gateway: String,
    pub paymethods: Vec<FakePayMethod>,
}

impl Default for FakeClient {
    fn default() -> Self {
        FakeClient {
            id: 0,
            email: String::new(),
            status: "Active".into(),
            currency_code: "USD".into(),
            default_gateway: String::new(),
            paymethods: Vec::new(),
        }
    }
}

/// A stored payment method of a client (GetPayMethods,
/// developers.whmcs.com/api-reference/getpaymethods/). `gateway_name` is the gateway's system
/// name for a remote one (`RemoteCreditCard`, `RemoteBankAccount`) and the empty string for a
/// locally stored `CreditCard` or `BankAccount`, as in the reference's example answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakePayMethod {
    pub id: u64,
    /// `CreditCard`, `RemoteCreditCard`, `BankAccount` or `RemoteBankAccount`.
    #[serde(rename = "type")]
    pub kind: String,
    pub gateway_name: String,
    pub description: String,
}

/// A product that can be ordered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeProduct {
    pub pid: u64,
    pub name: String,
    /// Enabled billing cycles (system names such as `monthly`); empty means all.
    pub cycles: Vec<String>,
}

/// An order, as AddOrder created it (or as a scenario seeded it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeOrder {
    pub id: u64,
    pub client_id: u64,
    /// `Pending`, `Active` or `Cancelled`.
    pub status: String,
    pub payment_method: String,
    pub items: Vec<FakeOrderItem>,
    /// One service per item, in item order.
    pub service_ids: Vec<u64>,
    /// 0 when no invoice was created.
    pub invoice_id: u64,
}

impl Default for FakeOrder {
    fn default() -> Self {
        FakeOrder {
            id: 0,
            client_id: 0,
            status: "Pending".into(),
            payment_method: String::new(),
            items: Vec::new(),
            service_ids: Vec::new(),
            invoice_id: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeOrderItem {
    pub pid: u64,
    /// System name, e.g. `monthly`.
    pub billing_cycle: String,
    pub qty: u64,
}

impl Default for FakeOrderItem {
    fn default() -> Self {
        FakeOrderItem {
            pid: 0,
            billing_cycle: "monthly".into(),
            qty: 1,
        }
    }
}

/// An in-memory WHMCS installation.
#[derive(Debug, Clone)]
pub struct FakeWhmcs {
    clients: Vec<FakeClient>,
    products: Vec<FakeProduct>,
    orders: Vec<FakeOrder>,
    next_order_id: u64,
    next_service_id: u64,
    next_invoice_id: u64,
    /// Payment gateways (system names) AddOrder accepts.
    pub gateways: Vec<String>,
    /// The installation's version (`8.11`, `8.13.1`, ...); before 8.12 AddOrder ignores `qty[]`.
    version: String,
    actions: Vec<String>,
}

impl Default for FakeWhmcs {
    fn default() -> Self {
        FakeWhmcs {
            clients: Vec::new(),
            products: Vec::new(),
            orders: Vec::new(),
            next_order_id: 1,
            next_service_id: 1,
            next_invoice_id: 1,
            // `offlinecc` is WHMCS's module for locally stored cards.
            gateways: vec![
                "stripe".into(),
                "paypal".into(),
                "banktransfer".into(),
                "offlinecc".into(),
                "gocardless".into(),
            ],
            version: DEFAULT_VERSION.into(),
            actions: Vec::new(),
        }
    }
}

impl FakeWhmcs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client, replacing one with the same id.
    pub fn add_client(&mut self, client: FakeClient) {
        self.clients.retain(|c| c.id != client.id);
        self.clients.push(client);
    }

    /// Adds a product, replacing one with the same pid.
    pub fn add_product(&mut self, product: FakeProduct) {
        self.products.retain(|p| p.pid != product.pid);
        self.products.push(product);
    }

    /// Seeds an existing order (e.g. a Pending one left by an earlier, timed-out attempt).
    /// Later AddOrders get ids above it.
    pub fn add_order(&mut self, order: FakeOrder) {
        self.next_order_id = self.next_order_id.max(order.id + 1);
        if let Some(max) = order.service_ids.iter().max() {
            self.next_service_id = self.next_service_id.max(max + 1);
        }
        self.next_invoice_id = self.next_invoice_id.max(order.invoice_id + 1);
        self.orders.retain(|o| o.id != order.id);
        self.orders.push(order);
    }

    /// The id the next AddOrder gets.
    pub fn set_next_order_id(&mut self, id: u64) {
        self.next_order_id = id.max(1);
    }

    /// Sets the version this WHMCS behaves as (e.g. `8.11`: AddOrder ignores `qty[]`).
    pub fn set_version(&mut self, version: &str) {
        self.version = version.trim().to_owned();
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// True when AddOrder reads `qty[]` (8.12 and later; an unreadable version counts as older).
    fn reads_qty(&self) -> bool {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), minor) => (major, minor.unwrap_or(0)) >= QTY_SINCE,
            _ => false,
        }
    }

    pub fn set_gateways(&mut self, gateways: Vec<String>) {
        self.gateways = gateways;
    }

    pub fn clients(&self) -> &[FakeClient] {
        &self.clients
    }

    pub fn client(&self, id: u64) -> Option<&FakeClient> {
        self.clients.iter().find(|c| c.id == id)
    }

    pub fn products(&self) -> &[FakeProduct] {
        &self.products
    }

    pub fn orders(&self) -> &[FakeOrder] {
        &self.orders
    }

    pub fn order(&self, id: u64) -> Option<&FakeOrder> {
        self.orders.iter().find(|o| o.id == id)
    }

    /// Every action handled so far, in order (as sent, e.g. `AddOrder`).
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// Handles one API request given its form pairs as they arrive on the wire (PHP-style keys
    /// such as `pid[0]`) and returns the JSON WHMCS would answer.
    pub fn handle(&mut self, form: &[(String, String)]) -> Value {
        let params = decode_php_form(form);
        let action = params
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.actions.push(action.clone());
        match action.to_ascii_lowercase().as_str() {
            "getclientsdetails" => self.get_clients_details(&params),
            "getpaymethods" => self.get_pay_methods(&params),
            "addorder" => self.add_order_action(&params),
            "acceptorder" => self.set_pending_order_status(&params, "Active"),
            "cancelorder" => self.set_pending_order_status(&params, "Cancelled"),
            "getorders" => self.get_orders(&params),
            "getproducts" => self.get_products(&params),
            "whmcsdetails" => self.whmcs_details(),
            _ => error("Command Not Found"),
        }
    }

    fn get_clients_details(&self, params: &Map<String, Value>) -> Value {
        let client = match (number(params, "clientid"), text(params, "email")) {
            (Some(id), _) => self.client(id),
            (None, Some(email)) => self
                .clients
                .iter()
                .find(|c| c.email.eq_ignore_ascii_case(email)),
            (None, None) => None,
        };
        let Some(client) = client else {
            return error("Client Not Found");
        };
        let details = json!({
            "userid": client.id,
            "client_id": client.id,
            "id": client.id,
            "email": client.email,
            "status": client.status,
            "currency_code": client.currency_code,
            "defaultgateway": client.default_gateway,
        });
        let mut out = json!({"result": "success"});
        if let (Value::Object(out), Value::Object(fields)) = (&mut out, &details) {
            out.extend(fields.clone());
            out.insert("client".into(), details.clone());
        }
        out
    }

    fn get_pay_methods(&self, params: &Map<String, Value>) -> Value {
        let Some(client) = number(params, "clientid").and_then(|id| self.client(id)) else {
            return error("Client Not Found");
        };
        let methods: Vec<Value> = client
            .paymethods
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "type": m.kind,
                    "description": m.description,
                    "gateway_name": m.gateway_name,
                    "contact_type": "Client",
                    "contact_id": client.id,
                })
            })
            .collect();
        json!({"result": "success", "clientid": client.id, "paymethods": methods})
    }

    fn add_order_action(&mut self, params: &Map<String, Value>) -> Value {
        let Some(client_id) = number(params, "clientid").filter(|id| self.client(*id).is_some())
        else {
            return error("Client ID Not Found");
        };
        let payment_method = text(params, "paymentmethod").unwrap_or_default().to_owned();
        if !self.gateways.contains(&payment_method) {
            return error("Invalid Payment Method");
        }
        let pids = list(params.get("pid"));
        if pids.is_empty() {
            return error(NO_ITEMS);
        }
        let cycles = list(params.get("billingcycle"));
        // Before 8.12 AddOrder has no `qty[]`: every line is one unit, whatever was sent.
        let quantities = if self.reads_qty() {
            list(params.get("qty"))
        } else {
            Vec::new()
        };
        let mut items = Vec::with_capacity(pids.len());
        for (index, pid) in pids.iter().enumerate() {
            let Some(product) = pid
                .parse::<u64>()
                .ok()
                .and_then(|pid| self.products.iter().find(|p| p.pid == pid))
            else {
                return error(NO_ITEMS);
            };
            let cycle = match cycles.get(index) {
                Some(cycle) => cycle.to_ascii_lowercase(),
                None => product
                    .cycles
                    .first()
                    .map_or_else(|| "monthly".to_owned(), |c| c.to_ascii_lowercase()),
            };
            let known = CYCLES.iter().any(|(name, _)| *name == cycle);
            let enabled = product.cycles.is_empty()
                || product
                    .cycles
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&cycle));
            if !known || !enabled {
                return error(NO_ITEMS);
            }
            let qty = match quantities.get(index) {
                None => 1,
                Some(q) => match q.parse::<u64>() {
                    Ok(q) if q >= 1 => q,
                    _ => return error(NO_ITEMS),
                },
            };
            items.push(FakeOrderItem {
                pid: product.pid,
                billing_cycle: cycle,
                qty,
            });
        }
        let id = self.next_order_id;
        self.next_order_id += 1;
        let service_ids: Vec<u64> = items
            .iter()
            .map(|_| {
                let sid = self.next_service_id;
                self.next_service_id += 1;
                sid
            })
            .collect();
        let invoice_id = if truthy(params.get("noinvoice")) {
            0
        } else {
            let iid = self.next_invoice_id;
            self.next_invoice_id += 1;
            iid
        };
        let services = service_ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.orders.push(FakeOrder {
            id,
            client_id,
            status: "Pending".into(),
            payment_method,
            items,
            service_ids,
            invoice_id,
        });
        json!({
            "result": "success",
            "orderid": id,
            "serviceids": services,
            "productids": services,
            "addonids": "",
            "domainids": "",
            "invoiceid": invoice_id,
        })
    }

    /// AcceptOrder and CancelOrder: both act on Pending orders only.
    fn set_pending_order_status(&mut self, params: &Map<String, Value>, status: &str) -> Value {
        let order = number(params, "orderid")
            .and_then(|id| self.orders.iter_mut().find(|o| o.id == id))
            .filter(|o| o.status == "Pending");
        match order {
            Some(order) => {
                order.status = status.into();
                json!({"result": "success"})
            }
            None => error(NOT_PENDING),
        }
    }

    fn get_orders(&self, params: &Map<String, Value>) -> Value {
        let id = number(params, "id");
        let user = number(params, "userid");
        let status = text(params, "status");
        let start = number(params, "limitstart").unwrap_or(0);
        let limit = number(params, "limitnum").unwrap_or(25);
        let mut matching: Vec<&FakeOrder> = self
            .orders
            .iter()
            .filter(|o| id.is_none_or(|id| o.id == id))
            .filter(|o| user.is_none_or(|u| o.client_id == u))
            .filter(|o| status.is_none_or(|s| o.status.eq_ignore_ascii_case(s)))
            .collect();
        // WHMCS lists the newest order first.
        matching.sort_by_key(|o| std::cmp::Reverse(o.id));
        let total = matching.len();
        let page: Vec<Value> = matching
            .into_iter()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|o| self.order_json(o))
            .collect();
        json!({
            "result": "success",
            "totalresults": total,
            "startnumber": start,
            "numreturned": page.len(),
            "orders": {"order": page},
        })
    }

    fn order_json(&self, order: &FakeOrder) -> Value {
        let line_items: Vec<Value> = order
            .items
            .iter()
            .zip(
                order
                    .service_ids
                    .iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .map(|(item, service)| {
                let name = self
                    .products
                    .iter()
                    .find(|p| p.pid == item.pid)
                    .map_or("", |p| p.name.as_str());
                json!({
                    "type": "product",
                    "relid": service.copied().unwrap_or(0),
                    "producttype": "Other",
                    "product": name,
                    "domain": "",
                    "billingcycle": cycle_label(&item.billing_cycle),
                    "amount": "0.00",
                    "status": order.status,
                })
            })
            .collect();
        json!({
            "id": order.id,
            "ordernum": format!("{:010}", order.id),
            "userid": order.client_id,
            "contactid": 0,
            "status": order.status,
            "paymentmethod": order.payment_method,
            "invoiceid": order.invoice_id,
            "amount": "0.00",
            "lineitems": {"lineitem": line_items},
        })
    }

    /// `WhmcsDetails` (developers.whmcs.com/api-reference/whmcsdetails/): the installation's
    /// version, as `major.minor.patch` and as the canonical `major.minor.patch-release.N`.
    fn whmcs_details(&self) -> Value {
        let mut parts: Vec<&str> = self.version.split('.').take(3).collect();
        while parts.len() < 3 {
            parts.push("0");
        }
        let version = parts.join(".");
        json!({
            "result": "success",
            "whmcs": {"version": version, "canonicalversion": format!("{version}-release.1")},
        })
    }

    fn get_products(&self, params: &Map<String, Value>) -> Value {
        let pid = number(params, "pid");
        let products: Vec<Value> = self
            .products
            .iter()
            .filter(|p| pid.is_none_or(|pid| p.pid == pid))
            .map(|p| {
                let mut prices = Map::new();
                for (cycle, _) in CYCLES
                    .iter()
                    .filter(|(c, _)| !matches!(*c, "free" | "onetime"))
                {
                    let enabled = p.cycles.is_empty()
                        || p.cycles.iter().any(|c| c.eq_ignore_ascii_case(cycle));
                    prices.insert(
                        (*cycle).into(),
                        json!(if enabled { "0.00" } else { "-1.00" }),
                    );
                }
                json!({
                    "pid": p.pid,
                    "gid": 1,
                    "type": "other",
                    "name": p.name,
                    "description": "",
                    "module": "",
                    "paytype": "recurring",
                    "pricing": {"USD": prices},
                })
            })
            .collect();
        json!({
            "result": "success",
            "totalresults": products.len(),
            "products": {"product": products},
        })
    }
}

fn error(message: &str) -> Value {
    json!({"result": "error", "message": message})
}

/// The display label of a billing cycle (`monthly` -> `Monthly`).
fn cycle_label(cycle: &str) -> String {
    CYCLES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(cycle))
        .map_or_else(|| cycle.to_owned(), |(_, label)| (*label).to_owned())
}

fn text<'a>(params: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn number(params: &Map<String, Value>, name: &str) -> Option<u64> {
    text(params, name).and_then(|s| s.trim().parse().ok())
}

fn truthy(value: Option<&Value>) -> bool {
    value
        .and_then(Value::as_str)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes"))
}

/// The items of a PHP array parameter in index order; a scalar counts as a one-item list.
fn list(value: Option<&Value>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Object(items)) => {
            let mut entries: Vec<(&String, &Value)> = items.iter().collect();
            entries.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
            entries
                .into_iter()
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect()
        }
        Some(_) => Vec::new(),
    }
}

/// Decodes form pairs the way PHP fills `$_POST`: `pid[0]=1` and `pid[]=1` make arrays,
/// `a[b][c]=v` nested maps. Arrays become JSON objects keyed by index text (PHP arrays are
/// ordered maps); every leaf is a string. A later plain key overwrites an earlier one.
pub fn decode_php_form(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in pairs {
        let (base, path) = split_php_key(key);
        insert_php(&mut out, base, &path, value);
    }
    out
}

/// `a[b][]` -> (`a`, [`b`, ``]). A key with unbalanced brackets is taken literally.
fn split_php_key(key: &str) -> (&str, Vec<&str>) {
    let Some(open) = key.find('[') else {
        return (key, Vec::new());
    };
    if open == 0 {
        return (key, Vec::new());
    }
    let (base, mut rest) = key.split_at(open);
    let mut path = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return (key, Vec::new());
        };
        path.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    (base, path)
}

fn insert_php(map: &mut Map<String, Value>, key: &str, path: &[&str], value: &str) {
    let key = if key.is_empty() {
        map.len().to_string()
    } else {
        key.to_owned()
    };
    let Some((next, rest)) = path.split_first() else {
        map.insert(key, Value::String(value.to_owned()));
        return;
    };
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(inner) = slot {
        insert_php(inner, next, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn whmcs() -> FakeWhmcs {
        let mut w = FakeWhmcs::new();
        w.add_client(FakeClient {
            id: 7,
            email: "a@example.com".into(),
            default_gateway: "stripe".into(),
            paymethods: vec![FakePayMethod {
                id: 1,
                kind: "RemoteCreditCard".into(),
                gateway_name: "stripe".into(),
                description: "Visa".into(),
            }],
            ..FakeClient::default()
        });
        w.add_client(FakeClient {
            id: 8,
            ..FakeClient::default()
        });
        w.add_product(FakeProduct {
            pid: 1,
            name: "VPS".into(),
            cycles: vec![],
        });
        w.add_product(FakeProduct {
            pid: 2,
            name: "Backup".into(),
            cycles: vec!["annually".into()],
        });
        w
    }

    #[test]
    fn decodes_php_arrays() {
        let params = decode_php_form(&form(&[
            ("pid[0]", "1"),
            ("pid[1]", "2"),
            ("qty[]", "3"),
            ("qty[]", "4"),
            ("custom[a][b]", "x"),
            ("plain", "v"),
            ("odd[", "y"),
        ]));
        assert_eq!(list(params.get("pid")), ["1", "2"]);
        assert_eq!(list(params.get("qty")), ["3", "4"]);
        assert_eq!(params["custom"]["a"]["b"], "x");
        assert_eq!(params["plain"], "v");
        assert_eq!(params["odd["], "y");
    }

    #[test]
    fn add_accept_and_get_orders() {
        let mut w = whmcs();
        w.set_next_order_id(1042);
        let added = w.handle(&form(&[
            ("action", "AddOrder"),
            ("clientid", "7"),
            ("paymentmethod", "stripe"),
            ("pid[0]", "1"),
            ("pid[1]", "2"),
            ("billingcycle[0]", "monthly"),
            ("billingcycle[1]", "annually"),
            ("qty[0]", "1"),
            ("qty[1]", "2"),
        ]));
        assert_eq!(added["result"], "success", "{added}");
        assert_eq!(added["orderid"], 1042);
        assert_eq!(added["serviceids"], "1,2");
        assert_eq!(added["productids"], "1,2");
        assert_eq!(added["addonids"], "");
        assert_eq!(added["invoiceid"], 1);
        let order = w.order(1042).unwrap();
        assert_eq!(order.status, "Pending");
        assert_eq!(
            order.items[1],
            FakeOrderItem {
                pid: 2,
                billing_cycle: "annually".into(),
                qty: 2
            }
        );

        let pending = w.handle(&form(&[
            ("action", "GetOrders"),
            ("userid", "7"),
            ("status", "Pending"),
        ]));
        assert_eq!(pending["totalresults"], 1);
        let listed = &pending["orders"]["order"][0];
        assert_eq!(listed["id"], 1042);
        assert_eq!(listed["paymentmethod"], "stripe");
        assert_eq!(
            listed["lineitems"]["lineitem"][1]["billingcycle"],
            "Annually"
        );

        assert_eq!(
            w.handle(&form(&[("action", "AcceptOrder"), ("orderid", "1042")]))["result"],
            "success"
        );
        assert_eq!(w.order(1042).unwrap().status, "Active");
        let again = w.handle(&form(&[("action", "AcceptOrder"), ("orderid", "1042")]));
        assert_eq!(again["message"], NOT_PENDING);
        let cancel = w.handle(&form(&[("action", "CancelOrder"), ("orderid", "1042")]));
        assert_eq!(cancel["message"], NOT_PENDING);
        assert_eq!(
            w.handle(&form(&[
                ("action", "GetOrders"),
                ("userid", "7"),
                ("status", "Pending")
            ]))["totalresults"],
            0
        );
        assert_eq!(w.actions().len(), 6);
    }

    #[test]
    fn add_order_errors() {
        let mut w = whmcs();
        let add = |w: &mut FakeWhmcs, extra: &[(&str, &str)]| {
            let mut pairs = vec![("action", "AddOrder")];
            pairs.extend_from_slice(extra);
            w.handle(&form(&pairs))["message"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(
            add(&mut w, &[("paymentmethod", "stripe"), ("pid[0]", "1")]),
            "Client ID Not Found"
        );
        assert_eq!(
            add(
                &mut w,
                &[
                    ("clientid", "99"),
                    ("paymentmethod", "stripe"),
                    ("pid[0]", "1")
                ]
            ),
            "Client ID Not Found"
        );
        assert_eq!(
            add(
                &mut w,
                &[
                    ("clientid", "7"),
                    ("paymentmethod", "bitcoin"),
                    ("pid[0]", "1")
                ]
            ),
            "Invalid Payment Method"
        );
        assert_eq!(
            add(&mut w, &[("clientid", "7"), ("paymentmethod", "stripe")]),
            NO_ITEMS
        );
        assert_eq!(
            add(
                &mut w,
                &[
                    ("clientid", "7"),
                    ("paymentmethod", "stripe"),
                    ("pid[0]", "99")
                ]
            ),
            NO_ITEMS
        );
        assert_eq!(
            add(
                &mut w,
                &[
                    ("clientid", "7"),
                    ("paymentmethod", "stripe"),
                    ("pid[0]", "2"),
                    ("billingcycle[0]", "monthly")
                ]
            ),
            NO_ITEMS
        );
        assert_eq!(
            add(
                &mut w,
                &[
                    ("clientid", "7"),
                    ("paymentmethod", "stripe"),
                    ("pid[0]", "1"),
                    ("billingcycle[0]", "weekly")
                ]
            ),
            NO_ITEMS
        );
        assert!(w.orders().is_empty());
        // Scalar pid and a product's only cycle as the default.
        let ok = w.handle(&form(&[
            ("action", "AddOrder"),
            ("clientid", "7"),
            ("paymentmethod", "paypal"),
            ("pid", "2"),
            ("noinvoice", "1"),
        ]));
        assert_eq!(ok["result"], "success");
        assert_eq!(ok["invoiceid"], 0);
        assert_eq!(w.orders()[0].items[0].billing_cycle, "annually");
    }

    #[test]
    fn client_and_paymethod_lookups() {
        let mut w = whmcs();
        let details = w.handle(&form(&[("action", "GetClientsDetails"), ("clientid", "7")]));
        assert_eq!(details["client"]["defaultgateway"], "stripe");
        assert_eq!(details["client"]["currency_code"], "USD");
        assert_eq!(details["client"]["status"], "Active");
        let by_email = w.handle(&form(&[
            ("action", "GetClientsDetails"),
            ("email", "A@example.com"),
        ]));
        assert_eq!(by_email["userid"], 7);
        let missing = w.handle(&form(&[("action", "GetClientsDetails"), ("clientid", "1")]));
        assert_eq!(
            missing,
            json!({"result": "error", "message": "Client Not Found"})
        );

        let methods = w.handle(&form(&[("action", "GetPayMethods"), ("clientid", "7")]));
        assert_eq!(methods["paymethods"][0]["type"], "RemoteCreditCard");
        assert_eq!(methods["paymethods"][0]["gateway_name"], "stripe");
        let none = w.handle(&form(&[("action", "GetPayMethods"), ("clientid", "8")]));
        assert_eq!(none["paymethods"], json!([]));

        let products = w.handle(&form(&[("action", "GetProducts"), ("pid", "2")]));
        assert_eq!(products["totalresults"], 1);
        assert_eq!(
            products["products"]["product"][0]["pricing"]["USD"]["monthly"],
            "-1.00"
        );
        assert_eq!(
            products["products"]["product"][0]["pricing"]["USD"]["annually"],
            "0.00"
        );

        let unknown = w.handle(&form(&[("action", "DeleteClient")]));
        assert_eq!(unknown["message"], "Command Not Found");
    }

    #[test]
    fn get_orders_paging_and_seeding() {
        let mut w = whmcs();
        w.add_order(FakeOrder {
            id: 5,
            client_id: 7,
            status: "Pending".into(),
            ..FakeOrder::default()
        });
        w.add_order(FakeOrder {
            id: 6,
            client_id: 7,
            status: "Active".into(),
            ..FakeOrder::default()
        });
        w.add_order(FakeOrder {
            id: 9,
            client_id: 8,
            ..FakeOrder::default()
        });
        let page = w.handle(&form(&[
            ("action", "GetOrders"),
            ("userid", "7"),
            ("limitstart", "1"),
            ("limitnum", "1"),
        ]));
        assert_eq!(page["totalresults"], 2);
        assert_eq!(page["startnumber"], 1);
        assert_eq!(page["numreturned"], 1);
        assert_eq!(page["orders"]["order"][0]["id"], 5);
        let by_id = w.handle(&form(&[("action", "GetOrders"), ("id", "9")]));
        assert_eq!(by_id["orders"]["order"][0]["userid"], 8);
        let added = w.handle(&form(&[
            ("action", "AddOrder"),
            ("clientid", "8"),
            ("paymentmethod", "stripe"),
            ("pid[0]", "1"),
        ]));
        assert_eq!(added["orderid"], 10);
    }

    #[test]
    fn before_8_12_add_order_ignores_qty() {
        let add = |w: &mut FakeWhmcs| {
            w.handle(&form(&[
                ("action", "AddOrder"),
                ("clientid", "7"),
                ("paymentmethod", "stripe"),
                ("pid[0]", "1"),
                ("qty[0]", "3"),
            ]))
        };
        let mut old = whmcs();
        old.set_version("8.11.2");
        assert_eq!(add(&mut old)["result"], "success");
        assert_eq!(old.orders()[0].items[0].qty, 1);
        // Three lines of one unit each are three units.
        let three = old.handle(&form(&[
            ("action", "AddOrder"),
            ("clientid", "7"),
            ("paymentmethod", "stripe"),
            ("pid[0]", "1"),
            ("pid[1]", "1"),
            ("pid[2]", "1"),
        ]));
        assert_eq!(three["serviceids"], "2,3,4");
        let units: u64 = old.orders()[1].items.iter().map(|i| i.qty).sum();
        assert_eq!(units, 3);

        let details = old.handle(&form(&[("action", "WhmcsDetails")]));
        assert_eq!(details["whmcs"]["version"], "8.11.2");
        assert_eq!(details["whmcs"]["canonicalversion"], "8.11.2-release.1");
        for version in ["8.12", "8.13.1", DEFAULT_VERSION] {
            let mut new = whmcs();
            new.set_version(version);
            add(&mut new);
            assert_eq!(new.orders()[0].items[0].qty, 3, "{version}");
        }
        assert_eq!(whmcs().version(), DEFAULT_VERSION);
    }

    /// The four kinds of the reference's GetPayMethods example: the local ones have an empty
    /// `gateway_name`; AddOrder takes the client's default gateway for them.
    #[test]
    fn local_pay_methods_have_an_empty_gateway_name() {
        let mut w = whmcs();
        let method = |id, kind: &str, gateway: &str| FakePayMethod {
            id,
            kind: kind.into(),
            gateway_name: gateway.into(),
            description: String::new(),
        };
        w.add_client(FakeClient {
            id: 9,
            default_gateway: "offlinecc".into(),
            paymethods: vec![
                method(1, "CreditCard", ""),
                method(2, "BankAccount", ""),
                method(3, "RemoteCreditCard", "stripe"),
                method(4, "RemoteBankAccount", "gocardless"),
            ],
            ..FakeClient::default()
        });
        let methods = w.handle(&form(&[("action", "GetPayMethods"), ("clientid", "9")]));
        let kinds: Vec<(&str, &str)> = methods["paymethods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["type"].as_str().unwrap(),
                    m["gateway_name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("CreditCard", ""),
                ("BankAccount", ""),
                ("RemoteCreditCard", "stripe"),
                ("RemoteBankAccount", "gocardless")
            ]
        );
        let added = w.handle(&form(&[
            ("action", "AddOrder"),
            ("clientid", "9"),
            ("paymentmethod", "offlinecc"),
            ("pid[0]", "1"),
        ]));
        assert_eq!(added["result"], "success", "{added}");
    }

    #[test]
    fn seed_types_deserialize_with_defaults() {
        let client: FakeClient = serde_json::from_value(json!({
            "id": 3,
            "paymethods": [{"id": 1, "type": "CreditCard", "gateway_name": "stripe"}]
        }))
        .unwrap();
        assert_eq!(client.status, "Active");
        assert_eq!(client.currency_code, "USD");
        assert_eq!(client.paymethods[0].kind, "CreditCard");
        assert!(serde_json::from_value::<FakeClient>(json!({"id": 3, "bogus": 1})).is_err());
        let product: FakeProduct =
            serde_json::from_value(json!({"pid": 1, "name": "VPS"})).unwrap();
        assert!(product.cycles.is_empty());
    }
}
