//! The default rules run natively against a scripted in-memory host: Salesforce is one Order
//! (updated in place) plus its items, WHMCS answers from per-action queues.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use fulfillment::Rules;
use fulfillment_sdk::serde_json::{self, Map, Value, json};
use fulfillment_sdk::{
    Disposition, ErrorKind, Event, Failure, Fulfillment, Host, HostError, Level, Outcome,
};

const ORDER_ID: &str = "801000000000001AAA";

/// `(level, step, message, fields)` of one `log.emit`.
type LogEntry = (Level, String, String, Vec<(String, String)>);

#[derive(Default)]
struct Mock {
    order: RefCell<Option<Map<String, Value>>>,
    items: Vec<Value>,
    config: HashMap<String, String>,
    billing: RefCell<HashMap<String, VecDeque<Result<Value, HostError>>>>,
    update_errors: RefCell<VecDeque<Option<HostError>>>,
    updates: RefCell<Vec<(String, String, Value)>>,
    calls: RefCell<Vec<(String, Value)>>,
    logs: RefCell<Vec<LogEntry>>,
}

impl Host for Mock {
    fn sf_query(&self, soql: &str) -> Result<String, HostError> {
        let records: Vec<Value> = if soql.contains(" FROM OrderItem ") {
            assert!(
                soql.ends_with(&format!("WHERE OrderId = '{ORDER_ID}'")),
                "{soql}"
            );
            self.items.clone()
        } else {
            assert!(soql.starts_with(
                "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, \
                 WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c FROM Order WHERE Id = '"
            ));
            self.order
                .borrow()
                .iter()
                .filter(|o| soql.ends_with(&format!("'{}'", o["Id"].as_str().unwrap_or(""))))
                .map(|o| Value::Object(o.clone()))
                .collect()
        };
        Ok(json!({"totalSize": records.len(), "done": true, "records": records}).to_string())
    }

    fn sf_update(&self, sobject: &str, id: &str, fields_json: &str) -> Result<(), HostError> {
        let fields: Value = serde_json::from_str(fields_json).map_err(invalid_input)?;
        self.updates
            .borrow_mut()
            .push((sobject.into(), id.into(), fields.clone()));
        if let Some(Some(err)) = self.update_errors.borrow_mut().pop_front() {
            return Err(err);
        }
        if let (Some(order), Value::Object(f)) = (self.order.borrow_mut().as_mut(), fields) {
            order.extend(f);
        }
        Ok(())
    }

    fn billing_call(&self, action: &str, params_json: &str) -> Result<String, HostError> {
        let params: Value = serde_json::from_str(params_json).map_err(invalid_input)?;
        self.calls.borrow_mut().push((action.into(), params));
        self.billing
            .borrow_mut()
            .get_mut(action)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("unscripted WHMCS call {action}"))
            .map(|v| v.to_string())
    }

    fn log(&self, level: Level, step: &str, message: &str, fields: &[(String, String)]) {
        self.logs
            .borrow_mut()
            .push((level, step.into(), message.into(), fields.to_vec()));
    }

    fn config(&self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }

    fn now_ms(&self) -> i64 {
        1_700_000_000_000
    }
}

impl Mock {
    fn new() -> Self {
        let order = json!({
            "attributes": {"type": "Order"},
            "Id": ORDER_ID, "OrderNumber": "00000100", "Status": "Activated",
            "AccountId": "001000000000001AAA", "Pricebook2Id": "01s000000000001AAA",
            "Activation_Status__c": "Activating", "WHMCS_Order_ID__c": null,
            "Account": {"attributes": {"type": "Account"}, "WHMCS_Client_ID__c": "42"}
        });
        let mock = Self {
            order: RefCell::new(order.as_object().cloned()),
            items: vec![
                item("802000000000001AAA", json!("7"), json!("Monthly"), 1.0),
                item(
                    "802000000000002AAA",
                    json!(9.0),
                    json!("Semi-Annually"),
                    2.0,
                ),
            ],
            ..Self::default()
        };
        mock.whmcs(
            "GetPayMethods",
            Ok(
                json!({"result": "success", "clientid": "42", "paymethods": [
                {"id": 1, "type": "RemoteCreditCard", "gateway_name": "stripe", "description": ""}]}),
            ),
        );
        mock
    }

    fn whmcs(&self, action: &str, answer: Result<Value, HostError>) -> &Self {
        self.billing
            .borrow_mut()
            .entry(action.into())
            .or_default()
            .push_back(answer);
        self
    }

    fn set(&self, field: &str, value: Value) {
        if let Some(o) = self.order.borrow_mut().as_mut() {
            o.insert(field.into(), value);
        }
    }

    fn field(&self, field: &str) -> Value {
        self.order
            .borrow()
            .as_ref()
            .and_then(|o| o.get(field).cloned())
            .unwrap_or(Value::Null)
    }

    fn actions(&self) -> Vec<String> {
        self.calls.borrow().iter().map(|(a, _)| a.clone()).collect()
    }

    fn steps(&self) -> Vec<String> {
        let mut steps: Vec<String> = Vec::new();
        for (_, step, _, _) in self.logs.borrow().iter() {
            if steps.last() != Some(step) {
                steps.push(step.clone());
            }
        }
        steps
    }

    fn run(&self) -> Result<Outcome, Failure> {
        Rules::fulfill(self, event(json!({"OrderId__c": ORDER_ID})))
    }
}

/// What the real host answers for JSON it cannot parse.
fn invalid_input(e: serde_json::Error) -> HostError {
    HostError::new(ErrorKind::InvalidInput, "INVALID_INPUT", e.to_string())
}

fn item(id: &str, pid: Value, cycle: Value, qty: f64) -> Value {
    json!({"attributes": {"type": "OrderItem"}, "Id": id, "Quantity": qty, "UnitPrice": 10.0,
           "Product2Id": "01t", "PricebookEntryId": "01u", "Billing_Cycle__c": cycle,
           "Product2": {"Name": "VPS", "WH_Product_ID__c": pid}})
}

fn event(payload: Value) -> Event {
    Event {
        event_uuid: "uuid-1".into(),
        replay_id: "42".into(),
        channel: "/event/OrderProvisionRequested__e".into(),
        payload: payload.as_object().cloned().unwrap_or_default(),
        ..Event::default()
    }
}

fn err(kind: ErrorKind, code: &str, message: &str) -> HostError {
    HostError::new(kind, code, message)
}

fn add_order_ok() -> Result<Value, HostError> {
    Ok(json!({"result": "success", "orderid": "1042", "serviceids": "7,8", "invoiceid": "55"}))
}

fn success() -> Result<Value, HostError> {
    Ok(json!({"result": "success"}))
}

#[test]
fn provisions_an_activating_order() {
    let mock = Mock::new();
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());

    let outcome = mock.run().expect("completed");
    assert_eq!(outcome.disposition, Disposition::Completed);
    assert_eq!(outcome.message, "WHMCS order 1042 accepted");

    assert_eq!(mock.actions(), ["GetPayMethods", "AddOrder", "AcceptOrder"]);
    assert_eq!(
        mock.calls.borrow()[1].1,
        json!({"clientid": 42, "paymentmethod": "stripe", "pid": [7, 9],
               "billingcycle": ["monthly", "semiannually"], "qty": [1, 2],
               "noemail": 0, "noinvoice": 0, "noinvoiceemail": 0})
    );
    assert_eq!(
        mock.calls.borrow()[2].1,
        json!({"orderid": 1042, "autosetup": 1, "sendemail": 1})
    );

    let updates: Vec<Value> = mock.updates.borrow().iter().map(|u| u.2.clone()).collect();
    assert_eq!(
        updates,
        [
            json!({"Activation_Status__c": "Activating", "Activation_Error_Code__c": null,
                   "Activation_Error_Message__c": null}),
            json!({"WHMCS_Order_ID__c": "1042"}),
            json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042",
                   "Activation_Error_Code__c": null, "Activation_Error_Message__c": null}),
        ]
    );
    assert!(
        mock.updates
            .borrow()
            .iter()
            .all(|u| u.0 == "Order" && u.1 == ORDER_ID)
    );

    assert_eq!(
        mock.steps(),
        [
            "orchestrator",
            "validation",
            "sf_status_update",
            "order_details",
            "mapping",
            "whmcs_create",
            "whmcs_accept",
            "sf_success_update",
            "orchestrator"
        ]
    );
    assert_eq!(
        mock.logs.borrow()[0].2,
        "Starting fulfillment orchestration"
    );
    let report = mock
        .logs
        .borrow()
        .iter()
        .filter(|l| l.2 == "item mapped")
        .count();
    assert_eq!(report, 2);
}

#[test]
fn skips_orders_that_are_not_activating() {
    for status in [json!("Activated"), json!("Failed"), json!(null)] {
        let mock = Mock::new();
        mock.set("Activation_Status__c", status.clone());
        mock.set("WHMCS_Order_ID__c", json!("1042"));
        let outcome = mock.run().expect("skipped");
        assert_eq!(outcome.disposition, Disposition::Skipped, "{status}");
        assert!(mock.updates.borrow().is_empty());
        assert!(mock.calls.borrow().is_empty());
    }
}

#[test]
fn invalid_event_and_missing_order_write_nothing() {
    let mock = Mock::new();
    for payload in [
        json!({}),
        json!({"OrderId__c": "  "}),
        json!({"OrderId__c": null}),
    ] {
        let failure = Rules::fulfill(&mock, event(payload)).expect_err("invalid");
        assert_eq!(failure.code, "INVALID_EVENT");
    }
    let failure = Rules::fulfill(&mock, event(json!({"OrderId__c": "801x' OR Id != '"})))
        .expect_err("not found");
    assert_eq!(failure.code, "NOT_FOUND");
    assert!(mock.updates.borrow().is_empty());
    assert!(mock.calls.borrow().is_empty());
}

#[test]
fn query_failure_before_the_guard_writes_nothing() {
    struct Down;
    impl Host for Down {
        fn sf_query(&self, _: &str) -> Result<String, HostError> {
            Err(err(ErrorKind::HttpStatus, "503", "Service Unavailable"))
        }
        fn sf_update(&self, _: &str, _: &str, _: &str) -> Result<(), HostError> {
            panic!("no writes expected")
        }
        fn billing_call(&self, _: &str, _: &str) -> Result<String, HostError> {
            panic!("no WHMCS calls expected")
        }
        fn log(&self, _: Level, _: &str, _: &str, _: &[(String, String)]) {}
        fn config(&self, _: &str) -> Option<String> {
            None
        }
        fn now_ms(&self) -> i64 {
            0
        }
    }
    let failure = Rules::fulfill(&Down, event(json!({"OrderId__c": ORDER_ID}))).expect_err("503");
    assert_eq!(
        failure,
        Failure::new("503", "Order query: Service Unavailable")
    );
}

fn assert_recorded(mock: &Mock, failure: &Failure, code: &str) {
    assert_eq!(failure.code, code);
    assert_eq!(mock.field("Activation_Status__c"), json!("Failed"));
    assert_eq!(mock.field("Activation_Error_Code__c"), json!(code));
    assert_eq!(
        mock.field("Activation_Error_Message__c"),
        json!(failure.message)
    );
    assert!(failure.message.len() <= 255);
    assert!(
        mock.logs
            .borrow()
            .iter()
            .any(|l| l.0 == Level::Error && l.2 == "Fulfillment failed")
    );
}

#[test]
fn no_payment_method_is_409() {
    let mock = Mock::new();
    mock.billing.borrow_mut().clear();
    mock.whmcs(
        "GetPayMethods",
        Ok(json!({"result": "success", "clientid": "42", "paymethods": []})),
    );
    let failure = mock.run().expect_err("409");
    assert_recorded(&mock, &failure, "409");
    assert_eq!(failure.message, "Payment method missing");
    assert_eq!(mock.actions(), ["GetPayMethods"]);
}

/// GetPayMethods as the WHMCS API reference shows it: a locally stored card or bank account has
/// an empty `gateway_name`.
fn local_pay_methods() -> Result<Value, HostError> {
    Ok(
        json!({"result": "success", "clientid": "42", "paymethods": [
            {"id": 1, "type": "CreditCard", "description": "", "gateway_name": "",
             "contact_type": "Client", "contact_id": 42, "card_last_four": "4444"},
            {"id": 2, "type": "BankAccount", "description": "", "gateway_name": "",
             "contact_type": "Client", "contact_id": 42, "bank_name": "Test Bank"}
        ]}),
    )
}

fn client_details(default_gateway: &str) -> Result<Value, HostError> {
    let client = json!({"userid": 42, "status": "Active", "defaultgateway": default_gateway});
    Ok(
        json!({"result": "success", "userid": 42, "defaultgateway": default_gateway,
              "client": client}),
    )
}

#[test]
fn a_local_card_orders_with_the_clients_default_gateway() {
    let mock = Mock::new();
    mock.billing.borrow_mut().clear();
    mock.whmcs("GetPayMethods", local_pay_methods())
        .whmcs("GetClientsDetails", client_details("offlinecc"))
        .whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    mock.run().expect("completed");
    assert_eq!(
        mock.actions(),
        [
            "GetPayMethods",
            "GetClientsDetails",
            "AddOrder",
            "AcceptOrder"
        ]
    );
    assert_eq!(mock.calls.borrow()[1].1, json!({"clientid": 42}));
    assert_eq!(mock.calls.borrow()[2].1["paymentmethod"], "offlinecc");
    let logged = mock.logs.borrow().iter().any(|l| {
        l.2 == "finished"
            && l.3
                .contains(&("payment_method_from".into(), "default_gateway".into()))
    });
    assert!(logged);
}

#[test]
fn a_remote_method_wins_over_local_ones_without_reading_the_client() {
    let mock = Mock::new();
    mock.billing.borrow_mut().clear();
    let methods = json!({"result": "success", "paymethods": [
        {"id": 1, "type": "CreditCard", "gateway_name": ""},
        {"id": 4, "type": "RemoteBankAccount", "gateway_name": "gocardless"}
    ]});
    mock.whmcs("GetPayMethods", Ok(methods))
        .whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    mock.run().expect("completed");
    assert_eq!(mock.actions(), ["GetPayMethods", "AddOrder", "AcceptOrder"]);
    assert_eq!(mock.calls.borrow()[1].1["paymentmethod"], "gocardless");
}

#[test]
fn a_local_card_without_a_default_gateway_is_409() {
    let mock = Mock::new();
    mock.billing.borrow_mut().clear();
    mock.whmcs("GetPayMethods", local_pay_methods())
        .whmcs("GetClientsDetails", client_details(""));
    let failure = mock.run().expect_err("409");
    assert_recorded(&mock, &failure, "409");
    assert!(
        failure.message.starts_with("Payment method missing: ")
            && failure.message.contains("no default gateway"),
        "{}",
        failure.message
    );
    assert_eq!(mock.actions(), ["GetPayMethods", "GetClientsDetails"]);
}

/// A client on WHMCS's "Use Default" (blank `defaultgateway`) with a local card pays with the
/// gateway `WHMCS_DEFAULT_GATEWAY` names.
#[test]
fn a_local_card_on_use_default_orders_with_the_configured_system_gateway() {
    let mut mock = Mock::new();
    mock.config
        .insert("WHMCS_DEFAULT_GATEWAY".into(), " offlinecc ".into());
    mock.billing.borrow_mut().clear();
    mock.whmcs("GetPayMethods", local_pay_methods())
        .whmcs("GetClientsDetails", client_details(""))
        .whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    mock.run().expect("completed");
    assert_eq!(mock.calls.borrow()[2].1["paymentmethod"], "offlinecc");
    let logged = mock.logs.borrow().iter().any(|l| {
        l.2 == "finished"
            && l.3.contains(&(
                "payment_method_from".into(),
                "system_default_gateway".into(),
            ))
    });
    assert!(logged);
}

#[test]
fn a_remote_type_without_a_gateway_name_is_not_usable() {
    let mock = Mock::new();
    mock.billing.borrow_mut().clear();
    let methods = json!({"result": "success", "paymethods": [
        {"id": 3, "type": "RemoteCreditCard", "gateway_name": ""}
    ]});
    mock.whmcs("GetPayMethods", Ok(methods));
    let failure = mock.run().expect_err("409");
    assert_eq!(failure.message, "Payment method missing");
    assert_eq!(mock.actions(), ["GetPayMethods"]);
}

#[test]
fn before_whmcs_8_12_every_unit_is_its_own_line() {
    let mut mock = Mock::new();
    mock.config.insert("WHMCS_VERSION".into(), "8.11.2".into());
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    mock.run().expect("completed");
    let sent = mock.calls.borrow()[1].1.clone();
    assert_eq!(sent["pid"], json!([7, 9, 9]));
    assert_eq!(
        sent["billingcycle"],
        json!(["monthly", "semiannually", "semiannually"])
    );
    assert_eq!(sent["qty"], json!([1, 1, 1]));

    for version in ["8.12", "8.13.1", " "] {
        let mut mock = Mock::new();
        mock.config.insert("WHMCS_VERSION".into(), version.into());
        mock.whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        mock.run().expect("completed");
        let sent = mock.calls.borrow()[1].1.clone();
        assert_eq!(sent["qty"], json!([1, 2]), "{version:?}");
    }
}

#[test]
fn before_whmcs_8_12_too_many_units_fail_before_add_order() {
    let mut mock = Mock::new();
    mock.config.insert("WHMCS_VERSION".into(), "8.11".into());
    mock.items[1] = item("802000000000002AAA", json!(9), json!("Monthly"), 1000.0);
    let failure = mock.run().expect_err("too many");
    assert_recorded(&mock, &failure, "TOO_MANY_UNITS");
    assert!(!mock.actions().contains(&"AddOrder".to_owned()));
}

#[test]
fn whmcs_flags_follow_config_and_a_bad_value_fails_before_whmcs() {
    let mut mock = Mock::new();
    for (key, value) in [
        ("WHMCS_NOEMAIL", "yes"),
        ("WHMCS_NOINVOICE", "true"),
        ("WHMCS_NOINVOICEEMAIL", "1"),
        ("WHMCS_AUTOSETUP", "no"),
        ("WHMCS_SENDEMAIL", "0"),
    ] {
        mock.config.insert(key.into(), value.into());
    }
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    mock.run().expect("completed");
    let calls = mock.calls.borrow();
    assert_eq!(calls[1].1["noemail"], 1);
    assert_eq!(calls[1].1["noinvoice"], 1);
    assert_eq!(calls[1].1["noinvoiceemail"], 1);
    assert_eq!(
        calls[2].1,
        json!({"orderid": 1042, "autosetup": 0, "sendemail": 0})
    );
    drop(calls);

    for (key, value) in [("WHMCS_SENDEMAIL", "maybe"), ("WHMCS_VERSION", "latest")] {
        let mut mock = Mock::new();
        mock.billing.borrow_mut().clear();
        mock.config.insert(key.into(), value.into());
        let failure = mock.run().expect_err("config");
        assert_recorded(&mock, &failure, "CONFIG");
        assert!(failure.message.contains(key), "{}", failure.message);
        assert!(mock.actions().is_empty());
    }
}

/// The defaults the rules use when a key is unset are the ones the manifest declares.
#[test]
fn manifest_declares_the_rules_defaults() {
    let manifest = include_str!("../component.toml");
    let declared = |key: &str| {
        manifest
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} not in component.toml"))
            .to_owned()
    };
    assert!(declared(fulfillment::WHMCS_VERSION).contains(&format!(
        "default = \"{}\"",
        fulfillment::DEFAULT_WHMCS_VERSION
    )));
    for (key, _, default) in fulfillment::ADD_ORDER_FLAGS
        .iter()
        .chain(fulfillment::ACCEPT_ORDER_FLAGS.iter())
    {
        let want = format!("default = \"{}\"", u8::from(*default));
        assert!(declared(key).contains(&want), "{key}: {want}");
    }
}

#[test]
fn pricebook_and_client_checks() {
    let mut mock = Mock::new();
    mock.config
        .insert("PORTAL_PRICEBOOK_ID".into(), "01s000000000001".into());
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", success());
    assert!(
        mock.run().is_ok(),
        "15-char config id matches the 18-char id"
    );

    let mut mock = Mock::new();
    mock.config
        .insert("PORTAL_PRICEBOOK_ID".into(), "01s000000000009AAA".into());
    let failure = mock.run().expect_err("mismatch");
    assert_recorded(&mock, &failure, "PRICEBOOK_MISMATCH");
    assert!(mock.calls.borrow().is_empty());

    let mock = Mock::new();
    mock.set("Account", json!({"WHMCS_Client_ID__c": null}));
    let failure = mock.run().expect_err("not linked");
    assert_recorded(&mock, &failure, "CLIENT_NOT_LINKED");
    assert!(
        failure.message.contains("001000000000001AAA"),
        "{}",
        failure.message
    );
}

#[test]
fn unmapped_items_are_each_named() {
    let mut mock = Mock::new();
    mock.items = vec![
        item("802000000000001AAA", json!("7"), json!("Monthly"), 1.0),
        item("802000000000002AAA", json!(null), json!("Monthly"), 1.0),
        item("802000000000003AAA", json!("9"), json!("Weekly"), 1.0),
    ];
    let failure = mock.run().expect_err("mapping");
    assert_recorded(&mock, &failure, "MAPPING");
    assert_eq!(
        failure.message,
        "Unmapped items: 802000000000002AAA (Product2.WH_Product_ID__c missing), \
         802000000000003AAA (Billing_Cycle__c 'Weekly' is not a WHMCS billing cycle)"
    );
    assert_eq!(mock.actions(), ["GetPayMethods"]);
    let unmapped = mock
        .logs
        .borrow()
        .iter()
        .filter(|l| l.2 == "item unmapped")
        .count();
    assert_eq!(unmapped, 2);
}

#[test]
fn many_unmapped_items_stay_within_255() {
    let mut mock = Mock::new();
    mock.items = (0..20)
        .map(|i| {
            item(
                &format!("80200000000{i:04}AAA"),
                json!(null),
                json!("é"),
                1.0,
            )
        })
        .collect();
    let failure = mock.run().expect_err("mapping");
    assert_recorded(&mock, &failure, "MAPPING");
    assert!(failure.message.ends_with("..."));
}

#[test]
fn no_items_fails() {
    let mut mock = Mock::new();
    mock.items.clear();
    let failure = mock.run().expect_err("no items");
    assert_recorded(&mock, &failure, "NO_ITEMS");
}

#[test]
fn add_order_timeout_asks_for_reconciliation() {
    let mock = Mock::new();
    mock.whmcs(
        "AddOrder",
        Err(err(ErrorKind::Timeout, "ETIMEOUT", "no answer in 30s")),
    );
    let failure = mock.run().expect_err("timeout");
    assert_recorded(&mock, &failure, "ETIMEOUT");
    assert!(failure.message.contains("may exist"), "{}", failure.message);
    assert!(failure.message.contains("reconcile"), "{}", failure.message);
    assert_eq!(mock.field("WHMCS_Order_ID__c"), Value::Null);
}

#[test]
fn add_order_rejection_keeps_whmcs_text() {
    let mock = Mock::new();
    mock.whmcs(
        "AddOrder",
        Err(err(
            ErrorKind::Rejected,
            "WHMCS_ERROR",
            "Invalid Payment Method",
        )),
    );
    let failure = mock.run().expect_err("rejected");
    assert_recorded(&mock, &failure, "WHMCS_ERROR");
    assert_eq!(failure.message, "AddOrder: Invalid Payment Method");
}

#[test]
fn accept_failure_persists_the_order_id_and_a_retry_resumes() {
    let mock = Mock::new();
    mock.whmcs("AddOrder", add_order_ok()).whmcs(
        "AcceptOrder",
        Err(err(ErrorKind::HttpStatus, "503", "Service Unavailable")),
    );
    let failure = mock.run().expect_err("503");
    assert_recorded(&mock, &failure, "503");
    assert_eq!(failure.message, "AcceptOrder: Service Unavailable");
    assert_eq!(mock.field("WHMCS_Order_ID__c"), json!("1042"));

    // Operator retry: status back to Activating, a new event.
    mock.set("Activation_Status__c", json!("Activating"));
    mock.calls.borrow_mut().clear();
    mock.whmcs(
        "GetPayMethods",
        Ok(json!({"paymethods": [{"gateway_name": "stripe"}]})),
    )
    .whmcs(
        "GetOrders",
        Ok(json!({"result": "success", "orders": {"order": [{"id": "1042", "status": "Pending"}]}})),
    )
    .whmcs("AcceptOrder", success());
    let outcome = mock.run().expect("resumed");
    assert_eq!(outcome.message, "WHMCS order 1042 accepted");
    assert_eq!(
        mock.actions(),
        ["GetPayMethods", "GetOrders", "AcceptOrder"]
    );
    assert_eq!(mock.field("Activation_Status__c"), json!("Activated"));
    assert_eq!(mock.field("Activation_Error_Code__c"), Value::Null);
}

#[test]
fn resume_of_an_active_order_skips_accept() {
    let mock = Mock::new();
    mock.set("WHMCS_Order_ID__c", json!(1042.0));
    mock.whmcs(
        "GetOrders",
        Ok(json!({"orders": {"order": [{"id": 1042, "status": "Active"}]}})),
    );
    let outcome = mock.run().expect("completed");
    assert_eq!(outcome.disposition, Disposition::Completed);
    assert_eq!(mock.actions(), ["GetPayMethods", "GetOrders"]);
}

#[test]
fn resume_of_a_cancelled_or_missing_order_fails() {
    for answer in [
        json!({"orders": {"order": [{"id": "1042", "status": "Cancelled"}]}}),
        json!({"totalresults": 0, "orders": ""}),
    ] {
        let mock = Mock::new();
        mock.set("WHMCS_Order_ID__c", json!("1042"));
        mock.whmcs("GetOrders", Ok(answer));
        let failure = mock.run().expect_err("state");
        assert_recorded(&mock, &failure, "WHMCS_ORDER_STATE");
        assert!(!mock.actions().contains(&"AddOrder".to_string()));
    }
}

#[test]
fn not_pending_rejection_is_confirmed_with_get_orders() {
    let mock = Mock::new();
    let not_pending = || {
        Err(err(
            ErrorKind::Rejected,
            "WHMCS_ERROR",
            "Order ID not found or Status not Pending",
        ))
    };
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", not_pending())
        .whmcs(
            "GetOrders",
            Ok(json!({"orders": {"order": [{"id": "1042", "status": "Active"}]}})),
        );
    assert!(mock.run().is_ok());

    let mock = Mock::new();
    mock.whmcs("AddOrder", add_order_ok())
        .whmcs("AcceptOrder", not_pending())
        .whmcs(
            "GetOrders",
            Ok(json!({"orders": {"order": [{"id": "1042", "status": "Cancelled"}]}})),
        );
    let failure = mock.run().expect_err("cancelled");
    assert_recorded(&mock, &failure, "WHMCS_ERROR");
}

#[test]
fn a_failing_failure_write_still_returns_the_original_failure() {
    let mock = Mock::new();
    mock.whmcs("AddOrder", add_order_ok()).whmcs(
        "AcceptOrder",
        Err(err(ErrorKind::Timeout, "ETIMEOUT", "slow")),
    );
    // Updates: Activating ok, WHMCS_Order_ID__c ok, Failed -> 503.
    mock.update_errors.borrow_mut().extend([
        None,
        None,
        Some(err(ErrorKind::HttpStatus, "503", "down")),
    ]);
    let failure = mock.run().expect_err("timeout");
    assert_eq!(failure.code, "ETIMEOUT");
    assert!(
        mock.logs
            .borrow()
            .iter()
            .any(|l| l.2 == "Could not record the failure on the Order")
    );
}

#[test]
fn unsaved_whmcs_order_id_is_retried_with_the_failure_record() {
    let mock = Mock::new();
    mock.whmcs("AddOrder", add_order_ok());
    mock.update_errors
        .borrow_mut()
        .extend([None, Some(err(ErrorKind::Timeout, "ETIMEOUT", "slow"))]);
    let failure = mock.run().expect_err("not saved");
    assert_recorded(&mock, &failure, "ETIMEOUT");
    assert!(failure.message.contains("1042"), "{}", failure.message);
    assert_eq!(mock.field("WHMCS_Order_ID__c"), json!("1042"));
    assert_eq!(mock.actions(), ["GetPayMethods", "AddOrder"]);
}

#[test]
fn info_reports_name_and_version() {
    let info = Rules::info();
    assert_eq!(info.name, "fulfillment");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
}

// ---- Extension points (`fulfillment::Extensions`, run by `fulfill_with_extensions`) ----

mod extensions {
    use super::*;
    use fulfillment::{Extensions, fulfill_with_extensions};
    use fulfillment_sdk::{AddOrderItem, BillingCycle, Order, OrderItem};

    fn run_with(mock: &Mock, ext: &dyn Extensions) -> Result<Outcome, Failure> {
        fulfill_with_extensions(mock, event(json!({"OrderId__c": ORDER_ID})), ext)
    }

    fn updates(mock: &Mock) -> Vec<Value> {
        mock.updates.borrow().iter().map(|u| u.2.clone()).collect()
    }

    #[test]
    fn no_overrides_are_the_default_rules() {
        struct Plain;
        impl Extensions for Plain {}

        let default = Mock::new();
        default
            .whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        let expected = default.run();

        let variant = Mock::new();
        variant
            .whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        assert_eq!(run_with(&variant, &Plain), expected);
        assert_eq!(*variant.calls.borrow(), *default.calls.borrow());
        assert_eq!(updates(&variant), updates(&default));
        assert_eq!(*variant.logs.borrow(), *default.logs.borrow());
    }

    /// (1) How an OrderItem becomes AddOrder lines: a variant maps items without a WHMCS
    /// product id to a fallback pid from config, and sends each unit as its own line.
    #[test]
    fn map_item_and_add_order_lines_shape_the_add_order_request() {
        struct Fallback;
        impl Extensions for Fallback {
            fn map_item(&self, item: &OrderItem) -> Result<AddOrderItem, String> {
                if item.wh_product_id().is_none() {
                    return Ok(AddOrderItem {
                        pid: 99,
                        billing_cycle: BillingCycle::Monthly,
                        qty: 1,
                    });
                }
                fulfillment::default_map_item(item)
            }
            fn add_order_lines(&self, line: &AddOrderItem) -> Vec<AddOrderItem> {
                fulfillment::split_quantity(line)
            }
        }

        let mut mock = Mock::new();
        mock.items[0] = item("802000000000001AAA", Value::Null, json!("Monthly"), 1.0);
        mock.whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        run_with(&mock, &Fallback).expect("completed");
        assert_eq!(
            mock.calls.borrow()[1].1,
            json!({"clientid": 42, "paymentmethod": "stripe", "pid": [99, 9, 9],
                   "billingcycle": ["monthly", "semiannually", "semiannually"],
                   "qty": [1, 1, 1], "noemail": 0, "noinvoice": 0, "noinvoiceemail": 0})
        );

        // The default rules refuse the same item, naming why.
        let mut mock = Mock::new();
        mock.items[0] = item("802000000000001AAA", Value::Null, json!("Monthly"), 1.0);
        let failure = mock.run().expect_err("unmapped");
        assert_eq!(failure.code, "MAPPING");
        assert!(failure.message.contains("WH_Product_ID__c missing"));
    }

    /// (2) Extra validation: runs after the default checks and before the first write; its
    /// failure is recorded on the Order under `validation`.
    #[test]
    fn validate_refuses_before_anything_is_written() {
        struct NumberedOnly;
        impl Extensions for NumberedOnly {
            fn validate(&self, host: &dyn Host, order: &Order) -> Result<(), Failure> {
                let blocked = host.config("BLOCKED_ORDER_NUMBER");
                if order.order_number.as_deref() == blocked.as_deref() {
                    return Err(Failure::new("ORDER_BLOCKED", "Order number is blocked"));
                }
                Ok(())
            }
        }

        let mut mock = Mock::new();
        mock.config
            .insert("BLOCKED_ORDER_NUMBER".into(), "00000100".into());
        let failure = run_with(&mock, &NumberedOnly).expect_err("blocked");
        assert_recorded(&mock, &failure, "ORDER_BLOCKED");
        assert_eq!(failure.message, "Order number is blocked");
        // The only write is the failure record; WHMCS saw only the default check.
        assert_eq!(
            updates(&mock),
            [json!({"Activation_Status__c": "Failed",
                    "Activation_Error_Code__c": "ORDER_BLOCKED",
                    "Activation_Error_Message__c": "Order number is blocked"})]
        );
        assert_eq!(mock.actions(), ["GetPayMethods"]);
        assert!(
            mock.logs
                .borrow()
                .iter()
                .any(|l| l.1 == "validation" && l.2 == "Fulfillment failed")
        );

        // Another Order number passes.
        let mut mock = Mock::new();
        mock.config
            .insert("BLOCKED_ORDER_NUMBER".into(), "00000999".into());
        mock.whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        run_with(&mock, &NumberedOnly).expect("completed");
    }

    /// (3) AddOrder and AcceptOrder options: merged into the calls; the parameters the rules
    /// own (`clientid`, `pid`, ..., `orderid`) cannot be replaced.
    #[test]
    fn add_order_and_accept_order_params_are_sent() {
        struct Quiet;
        impl Extensions for Quiet {
            fn add_order_params(&self, host: &dyn Host, order: &Order) -> Map<String, Value> {
                let mut params = Map::new();
                params.insert("noemail".into(), json!(true));
                params.insert("promocode".into(), json!(host.config("PROMO")));
                params.insert("notes".into(), json!(order.display_name()));
                params.insert("clientid".into(), json!(1));
                params
            }
            fn accept_order_params(&self, _: &dyn Host, _: &Order) -> Map<String, Value> {
                let mut params = Map::new();
                params.insert("autosetup".into(), json!(true));
                params.insert("orderid".into(), json!(1));
                params
            }
        }

        let mut mock = Mock::new();
        mock.config.insert("PROMO".into(), "SPRING".into());
        mock.whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        run_with(&mock, &Quiet).expect("completed");
        let calls = mock.calls.borrow();
        assert_eq!(calls[1].0, "AddOrder");
        assert_eq!(
            calls[1].1,
            json!({"clientid": 42, "paymentmethod": "stripe", "pid": [7, 9],
                   "billingcycle": ["monthly", "semiannually"], "qty": [1, 2],
                   "noemail": true, "noinvoice": 0, "noinvoiceemail": 0,
                   "promocode": "SPRING", "notes": "00000100"})
        );
        assert_eq!(
            calls[2],
            (
                "AcceptOrder".into(),
                json!({"orderid": 1042, "autosetup": true, "sendemail": 1})
            )
        );
    }

    /// (4) Extra Order fields, written in the success update together with the default ones
    /// (which win over a field of the same name).
    #[test]
    fn success_fields_are_written_with_the_success_update() {
        struct Noted;
        impl Extensions for Noted {
            fn success_fields(&self, host: &dyn Host, _: &Order, id: u64) -> Map<String, Value> {
                let mut fields = Map::new();
                let note = host.config("PROVISIONING_NOTE").unwrap_or_default();
                fields.insert(
                    "Provisioning_Note__c".into(),
                    json!(format!("{note} #{id}")),
                );
                fields.insert("Activation_Status__c".into(), json!("Draft"));
                fields
            }
        }

        let mut mock = Mock::new();
        mock.config
            .insert("PROVISIONING_NOTE".into(), "express".into());
        mock.whmcs("AddOrder", add_order_ok())
            .whmcs("AcceptOrder", success());
        run_with(&mock, &Noted).expect("completed");
        let updates = updates(&mock);
        assert_eq!(updates.len(), 3);
        assert_eq!(
            updates[2],
            json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042",
                   "Activation_Error_Code__c": null, "Activation_Error_Message__c": null,
                   "Provisioning_Note__c": "express #1042"})
        );
        assert_eq!(
            mock.steps().iter().rev().nth(1).map(String::as_str),
            Some("sf_success_update")
        );
    }
}

/// `fulfilld doctor` checks the org for the fields the manifest declares under
/// `[capabilities.read]`: the declaration must name every field the rules' queries select.
#[test]
fn the_manifest_declares_every_field_the_rules_select() {
    let manifest = include_str!("../component.toml");
    let read = manifest
        .split("[capabilities.read]")
        .nth(1)
        .expect("component.toml has a [capabilities.read] table");
    let declared = |object: &str| -> Vec<String> {
        let start = read
            .find(&format!("\n{object} = ["))
            .unwrap_or_else(|| panic!("no {object} in [capabilities.read]"));
        let list = &read[start..];
        let list = &list[list.find('[').unwrap_or(0)..list.find(']').unwrap_or(0)];
        list.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    for (object, fields) in [
        ("Order", fulfillment_sdk::salesforce::Order::FIELDS),
        ("OrderItem", fulfillment_sdk::salesforce::OrderItem::FIELDS),
    ] {
        let declared = declared(object);
        for field in fields.split(',').map(str::trim) {
            assert!(
                declared.iter().any(|d| d == field),
                "{object}.{field} is selected but not declared: {declared:?}"
            );
        }
    }
}
