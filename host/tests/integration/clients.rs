//! The real Salesforce and WHMCS clients against the fake servers, over real HTTP on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulfilld::error::{CallError, ErrorKind};
use fulfilld::fake::{
    FakeClient, FakeOrg, FakePayMethod, FakeProduct, FakeSalesforce, FakeSalesforceOptions,
    FakeWhmcs, FakeWhmcsOptions, FakeWhmcsServer, decode_php_form, serve_fake_salesforce,
    serve_fake_whmcs,
};
use fulfilld::http::http_client;
use fulfilld::salesforce::{SalesforceClient, SalesforceConfig, SalesforceConfigError};
use fulfilld::secret::Secret;
use fulfilld::whmcs::{WhmcsClient, WhmcsConfig, encode_params};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use url::Url;

const PRIVATE_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/test_private.pem"
));
const PRIVATE_KEY_PKCS1: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/test_private_pkcs1.pem"
));
const PUBLIC_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/test_public.pem"
));
const WRONG_PRIVATE_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/wrong_private.pem"
));

const ORG_ID: &str = "00D8d0000000001EAA";
const INVALID_SESSION: &str =
    r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#;

const WHMCS_IDENTIFIER: &str = "whmcs-ident-Q7vX";
const WHMCS_SECRET: &str = "whmcs-secret-9pLm";
const WHMCS_ACCESS_KEY: &str = "whmcs-access-3kZr";

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A loopback port nothing listens on.
async fn closed_port_url() -> Url {
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    drop(l);
    Url::parse(&format!("http://{addr}/")).unwrap()
}

// ------------------------------------------------------------------------------------------------
// Salesforce

fn sf_options(page_size: usize) -> FakeSalesforceOptions {
    FakeSalesforceOptions {
        client_id: "3MVG9.test.consumer".into(),
        username: "integration@acme.example".into(),
        audience: "https://login.salesforce.com".into(),
        public_key_pem: PUBLIC_KEY.into(),
        org_id: ORG_ID.into(),
        page_size,
    }
}

fn sf_config(login_url: Url, key: &str) -> SalesforceConfig {
    SalesforceConfig {
        login_url,
        client_id: "3MVG9.test.consumer".into(),
        username: "integration@acme.example".into(),
        private_key_pem: Secret::new(key),
        audience: "https://login.salesforce.com".into(),
        api_version: "v66.0".into(),
        timeout: Duration::from_secs(5),
    }
}

fn sf_client(url: Url, key: &str) -> SalesforceClient {
    let http = http_client(Duration::from_secs(5)).unwrap();
    SalesforceClient::new(sf_config(url, key), http).unwrap()
}

struct Sf {
    server: FakeSalesforce,
    client: SalesforceClient,
    org: Arc<Mutex<FakeOrg>>,
}

async fn sf(page_size: usize) -> Sf {
    let org = Arc::new(Mutex::new(FakeOrg::new()));
    let server = serve_fake_salesforce(listener().await, sf_options(page_size), Arc::clone(&org))
        .await
        .unwrap();
    let client = sf_client(server.url(), PRIVATE_KEY);
    Sf {
        server,
        client,
        org,
    }
}

fn insert_order(org: &Arc<Mutex<FakeOrg>>, number: &str) -> String {
    org.lock()
        .unwrap()
        .insert(
            "Order",
            obj(json!({"OrderNumber": number, "Status": "Activated"})),
        )
        .unwrap()
}

fn rest_requests(server: &FakeSalesforce) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/services/data/"))
        .count()
}

#[tokio::test]
async fn sf_token_exchange_verifies_signature() {
    let sf = sf(2000).await;

    let session = sf.client.session().await.unwrap();
    assert_eq!(session.tenant_id, ORG_ID);
    assert_eq!(
        session.instance_url.as_str().trim_end_matches('/'),
        sf.server.url().as_str().trim_end_matches('/')
    );

    // A client signing with a key the connected app does not know is refused.
    let stranger = sf_client(sf.server.url(), WRONG_PRIVATE_KEY);
    let err = stranger.session().await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Auth, "EAUTH"),
        "{err}"
    );
    assert!(err.message.contains("invalid_grant"), "{err}");
    let err = stranger.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    // No REST request was made without a session.
    assert_eq!(rest_requests(&sf.server), 0);
}

#[tokio::test]
async fn sf_token_claims_are_checked() {
    let sf = sf(2000).await;
    for (change, expect) in [
        ("aud", "audience is invalid"),
        ("sub", "user hasn't approved this consumer"),
        ("iss", "invalid client credentials"),
    ] {
        let mut cfg = sf_config(sf.server.url(), PRIVATE_KEY);
        match change {
            "aud" => cfg.audience = "https://test.salesforce.com".into(),
            "sub" => cfg.username = "someone@else.example".into(),
            _ => cfg.client_id = "3MVG9.other".into(),
        }
        let client =
            SalesforceClient::new(cfg, http_client(Duration::from_secs(5)).unwrap()).unwrap();
        let err = client.session().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Auth, "{change}");
        assert!(err.message.contains(expect), "{change}: {err}");
    }
}

#[tokio::test]
async fn sf_pkcs1_private_key_works_too() {
    let sf = sf(2000).await;
    let client = sf_client(sf.server.url(), PRIVATE_KEY_PKCS1);
    client.session().await.unwrap();
}

#[tokio::test]
async fn sf_private_key_is_checked_at_construction() {
    let http = http_client(Duration::from_secs(5)).unwrap();
    let url = Url::parse("https://login.salesforce.com").unwrap();
    for pem in [
        PUBLIC_KEY,
        "not a pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        let err = SalesforceClient::new(sf_config(url.clone(), pem), http.clone()).unwrap_err();
        assert!(matches!(err, SalesforceConfigError::PrivateKey(_)), "{err}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("MII"), "key material in error: {text}");
    }
    let mut cfg = sf_config(url, PRIVATE_KEY);
    cfg.api_version = "66.0".into();
    assert!(matches!(
        SalesforceClient::new(cfg, http).unwrap_err(),
        SalesforceConfigError::ApiVersion(_)
    ));
}

#[tokio::test]
async fn sf_token_is_cached() {
    let sf = sf(2000).await;
    insert_order(&sf.org, "00000100");
    sf.client.query("SELECT Id FROM Order").await.unwrap();
    sf.client.query("SELECT Id FROM Order").await.unwrap();
    assert_eq!(sf.server.token_requests(), 1);
    // Clones share the cache.
    sf.client
        .clone()
        .query("SELECT Id FROM Order")
        .await
        .unwrap();
    assert_eq!(sf.server.token_requests(), 1);
}

#[tokio::test]
async fn sf_concurrent_callers_share_one_exchange() {
    let sf = sf(2000).await;
    insert_order(&sf.org, "00000100");
    let sessions = futures::future::join_all((0..8).map(|_| sf.client.session())).await;
    assert!(sessions.iter().all(Result::is_ok));
    assert_eq!(sf.server.token_requests(), 1);

    // Eight calls that all meet the expired session cause one re-authentication.
    sf.server.expire_sessions();
    let results =
        futures::future::join_all((0..8).map(|_| sf.client.query("SELECT Id FROM Order"))).await;
    for result in results {
        assert_eq!(result.unwrap()["totalSize"], 1);
    }
    assert_eq!(sf.server.token_requests(), 2);
}

#[tokio::test]
async fn sf_expired_session_reauthenticates_once() {
    let sf = sf(2000).await;
    let id = insert_order(&sf.org, "00000100");
    sf.client.query("SELECT Id FROM Order").await.unwrap();
    sf.server.expire_sessions();
    let out = sf.client.query("SELECT Id FROM Order").await.unwrap();
    assert_eq!(out["records"][0]["Id"], id);
    assert_eq!(sf.server.token_requests(), 2);
    // query, 401, retried query
    assert_eq!(rest_requests(&sf.server), 3);

    sf.server.expire_sessions();
    sf.client
        .update(
            "Order",
            &id,
            &obj(json!({"Activation_Status__c": "Activating"})),
        )
        .await
        .unwrap();
    assert_eq!(sf.server.token_requests(), 3);
}

#[tokio::test]
async fn sf_persistent_401_is_auth_error_after_one_retry() {
    let sf = sf(2000).await;
    insert_order(&sf.org, "00000100");
    sf.server.fail_next(2, 401, INVALID_SESSION.into());
    let err = sf.client.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Auth, "EAUTH"),
        "{err}"
    );
    assert_eq!(sf.server.token_requests(), 2);
    assert_eq!(rest_requests(&sf.server), 2);

    // The next call starts over with a new session and succeeds.
    sf.client.query("SELECT Id FROM Order").await.unwrap();
    assert_eq!(sf.server.token_requests(), 3);
}

#[tokio::test]
async fn sf_query_follows_pages() {
    let sf = sf(2).await;
    let ids: Vec<String> = (0..5)
        .map(|i| insert_order(&sf.org, &format!("0000010{i}")))
        .collect();
    let out = sf
        .client
        .query("SELECT Id, OrderNumber FROM Order ORDER BY OrderNumber")
        .await
        .unwrap();
    assert_eq!(out["totalSize"], 5);
    assert_eq!(out["done"], true);
    assert!(out.get("nextRecordsUrl").is_none());
    let got: Vec<&str> = out["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    let paths: Vec<String> = sf.server.requests().into_iter().map(|r| r.path).collect();
    let query_requests: Vec<&String> = paths.iter().filter(|p| p.contains("/query")).collect();
    assert_eq!(query_requests.len(), 3, "{paths:?}");
    assert!(query_requests[1].starts_with("/services/data/v66.0/query/"));
}

#[tokio::test]
async fn sf_query_keeps_salesforce_shape() {
    let sf = sf(2000).await;
    let (order, product) = {
        let mut org = sf.org.lock().unwrap();
        let account = org
            .insert(
                "Account",
                obj(json!({"Name": "Acme", "WHMCS_Client_ID__c": "42"})),
            )
            .unwrap();
        let product = org
            .insert(
                "Product2",
                obj(json!({"Name": "VPS", "WH_Product_ID__c": "7"})),
            )
            .unwrap();
        let order = org
            .insert(
                "Order",
                obj(json!({"Status": "Activated", "AccountId": account})),
            )
            .unwrap();
        org.insert(
            "OrderItem",
            obj(json!({"OrderId": order, "Product2Id": product, "Quantity": 1, "Billing_Cycle__c": "monthly"})),
        )
        .unwrap();
        (order, product)
    };
    let out = sf
        .client
        .query(&format!(
            "SELECT Id, Account.WHMCS_Client_ID__c, (SELECT Quantity, Product2Id, Product2.WH_Product_ID__c FROM OrderItems) FROM Order WHERE Id = '{order}'"
        ))
        .await
        .unwrap();
    let record = &out["records"][0];
    let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["attributes", "Id", "Account", "OrderItems"]);
    assert_eq!(record["Account"]["WHMCS_Client_ID__c"], "42");
    let item = &record["OrderItems"]["records"][0];
    assert_eq!(item["Product2Id"], product);
    assert_eq!(item["Product2"]["WH_Product_ID__c"], "7");
    assert_eq!(item["attributes"]["type"], "OrderItem");
}

#[tokio::test]
async fn sf_update_is_visible_in_the_org() {
    let sf = sf(2000).await;
    let id = insert_order(&sf.org, "00000100");
    sf.client
        .update(
            "Order",
            &id,
            &obj(json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042", "Activation_Error_Code__c": null})),
        )
        .await
        .unwrap();
    let org = sf.org.lock().unwrap();
    let record = org.get("Order", &id).unwrap();
    assert_eq!(record["Activation_Status__c"], "Activated");
    assert_eq!(record["WHMCS_Order_ID__c"], "1042");
    assert_eq!(record["Activation_Error_Code__c"], Value::Null);
}

#[tokio::test]
async fn sf_rejections_carry_salesforce_codes() {
    let sf = sf(2000).await;
    let id = insert_order(&sf.org, "00000100");

    let err = sf.client.query("SELECT Id FORM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Rejected, "MALFORMED_QUERY")
    );
    assert!(err.message.contains("FORM"), "{err}");

    let err = sf.client.query("SELECT Id FROM Nope__x").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Rejected, "INVALID_TYPE")
    );

    let err = sf
        .client
        .update(
            "Order",
            "801000000000000AAA",
            &obj(json!({"Status": "Draft"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Rejected, "NOT_FOUND")
    );

    let err = sf
        .client
        .update("Order", &id, &obj(json!({"Id": "801000000000000AAA"})))
        .await
        .unwrap_err();
    assert_eq!(err.code, "INVALID_FIELD_FOR_INSERT_UPDATE");

    // Bad names never leave the host.
    let before = rest_requests(&sf.server);
    for (sobject, record) in [
        ("Order/../Account", id.as_str()),
        ("Order", "x?y=1"),
        ("Order", ""),
    ] {
        let err = sf
            .client
            .update(sobject, record, &Map::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{sobject} {record}");
    }
    let err = sf.client.query("  ").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert_eq!(rest_requests(&sf.server), before);
}

#[tokio::test]
async fn sf_infrastructure_failures() {
    let sf = sf(2000).await;
    insert_order(&sf.org, "00000100");
    sf.client.session().await.unwrap();

    sf.server.fail_next(
        1,
        503,
        r#"[{"message":"down","errorCode":"SERVER_UNAVAILABLE"}]"#.into(),
    );
    let err = sf.client.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "503")
    );

    sf.server.fail_next(1, 429, "Too Many Requests".into());
    let err = sf.client.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "429")
    );

    sf.server
        .fail_next(1, 200, "<html><body>Maintenance</body></html>".into());
    let err = sf.client.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::BadResponse, "EBADRESPONSE")
    );

    sf.server.fail_next(1, 403, "<html>blocked</html>".into());
    let err = sf
        .client
        .update("Order", "801000000000000AAA", &Map::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "403")
    );

    sf.server.delay_next(1, Duration::from_secs(3));
    let mut cfg = sf_config(sf.server.url(), PRIVATE_KEY);
    cfg.timeout = Duration::from_millis(300);
    let impatient =
        SalesforceClient::new(cfg, http_client(Duration::from_secs(5)).unwrap()).unwrap();
    impatient.session().await.unwrap();
    let err = impatient.query("SELECT Id FROM Order").await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Timeout, "ETIMEOUT")
    );
}

#[tokio::test]
async fn sf_token_endpoint_failures() {
    let sf = sf(2000).await;
    sf.server
        .fail_token_next(1, 503, "<html>unavailable</html>".into());
    let err = sf.client.session().await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "503")
    );
    // Failures are not cached.
    sf.client.session().await.unwrap();
    assert_eq!(sf.server.token_requests(), 2);

    let nobody = sf_client(closed_port_url().await, PRIVATE_KEY);
    let err = nobody.session().await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Network, "ECONNREFUSED"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------------
// WHMCS

fn whmcs_state() -> Arc<Mutex<FakeWhmcs>> {
    let mut w = FakeWhmcs::new();
    w.add_client(FakeClient {
        id: 7,
        email: "billing@acme.example".into(),
        default_gateway: "stripe".into(),
        paymethods: vec![FakePayMethod {
            id: 1,
            kind: "RemoteCreditCard".into(),
            gateway_name: "stripe".into(),
            description: "Visa ending 4242".into(),
        }],
        ..FakeClient::default()
    });
    w.add_product(FakeProduct {
        pid: 1,
        name: "VPS".into(),
        cycles: vec!["monthly".into(), "annually".into()],
    });
    w.set_next_order_id(1042);
    Arc::new(Mutex::new(w))
}

fn whmcs_config(url: Url, timeout: Duration) -> WhmcsConfig {
    WhmcsConfig {
        url,
        identifier: WHMCS_IDENTIFIER.into(),
        secret: Secret::new(WHMCS_SECRET),
        access_key: Some(Secret::new(WHMCS_ACCESS_KEY)),
        timeout,
    }
}

fn whmcs_client(url: Url, timeout: Duration) -> WhmcsClient {
    WhmcsClient::new(
        whmcs_config(url, timeout),
        http_client(Duration::from_secs(5)).unwrap(),
    )
}

async fn whmcs() -> (FakeWhmcsServer, WhmcsClient) {
    let server = serve_fake_whmcs(
        listener().await,
        FakeWhmcsOptions {
            identifier: WHMCS_IDENTIFIER.into(),
            secret: WHMCS_SECRET.into(),
            access_key: Some(WHMCS_ACCESS_KEY.into()),
        },
        whmcs_state(),
    )
    .await
    .unwrap();
    let client = whmcs_client(server.url(), Duration::from_secs(5));
    (server, client)
}

fn add_order_params() -> Map<String, Value> {
    obj(json!({
        "clientid": 7,
        "paymentmethod": "stripe",
        "pid": [1],
        "billingcycle": ["monthly"],
        "qty": [1],
        "noemail": true,
    }))
}

/// No credential may appear in what a component or a log sees.
fn assert_no_credentials(err: &CallError) {
    let text = format!("{err} {err:?}");
    for secret in [
        WHMCS_IDENTIFIER,
        WHMCS_SECRET,
        WHMCS_ACCESS_KEY,
        "BEGIN",
        "MII",
    ] {
        assert!(!text.contains(secret), "credential in error: {text}");
    }
}

#[tokio::test]
async fn whmcs_success() {
    let (server, client) = whmcs().await;
    let added = client.call("AddOrder", &add_order_params()).await.unwrap();
    assert_eq!(added["result"], "success");
    assert_eq!(added["orderid"], 1042);
    client
        .call("AcceptOrder", &obj(json!({"orderid": 1042})))
        .await
        .unwrap();
    assert_eq!(
        server.whmcs().lock().unwrap().order(1042).unwrap().status,
        "Active"
    );

    let orders = client
        .call("GetOrders", &obj(json!({"userid": 7, "status": "Active"})))
        .await
        .unwrap();
    assert_eq!(orders["orders"]["order"][0]["id"], 1042);

    let methods = client
        .call("GetPayMethods", &obj(json!({"clientid": 7})))
        .await
        .unwrap();
    assert_eq!(methods["paymethods"][0]["gateway_name"], "stripe");

    // What arrived: PHP arrays, 1/0 flags, the host's credentials redacted in the log.
    let requests = server.requests();
    let first = &requests[0];
    let has = |k: &str, v: &str| first.iter().any(|(a, b)| a == k && b == v);
    assert!(has("pid[0]", "1") && has("billingcycle[0]", "monthly") && has("noemail", "1"));
    assert!(has("action", "AddOrder") && has("responsetype", "json"));
    assert!(
        has("identifier", "[redacted]")
            && has("secret", "[redacted]")
            && has("accesskey", "[redacted]")
    );
    let logged = format!("{requests:?}");
    assert!(!logged.contains(WHMCS_SECRET) && !logged.contains(WHMCS_IDENTIFIER));
}

#[tokio::test]
async fn whmcs_business_error_is_rejected() {
    let (_server, client) = whmcs().await;
    let mut params = add_order_params();
    params.insert("clientid".into(), json!(99));
    let err = client.call("AddOrder", &params).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str(), err.message.as_str()),
        (ErrorKind::Rejected, "WHMCS_ERROR", "Client ID Not Found")
    );
    let err = client
        .call("AcceptOrder", &obj(json!({"orderid": 5})))
        .await
        .unwrap_err();
    assert_eq!(err.message, "Order ID not found or Status not Pending");
    assert_no_credentials(&err);
}

#[tokio::test]
async fn whmcs_infrastructure_failures() {
    let (server, client) = whmcs().await;

    server.fail_next(
        1,
        429,
        r#"{"result":"error","message":"Too many requests"}"#.into(),
    );
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "429")
    );
    assert_no_credentials(&err);

    server.fail_next(1, 503, "<html>Service Unavailable</html>".into());
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "503")
    );
    assert_no_credentials(&err);

    server.fail_next(
        1,
        200,
        "<html><body>WHMCS is down for maintenance</body></html>".into(),
    );
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::BadResponse, "EBADRESPONSE")
    );
    assert_no_credentials(&err);

    // Everything injected is used up: the next call goes through.
    client.call("GetOrders", &Map::new()).await.unwrap();
}

#[tokio::test]
async fn whmcs_timeout_leaves_the_outcome_unknown() {
    let (server, _) = whmcs().await;
    let impatient = whmcs_client(server.url(), Duration::from_millis(300));
    server.delay_next(1, Duration::from_millis(1500));
    let err = impatient
        .call("AddOrder", &add_order_params())
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Timeout, "ETIMEOUT")
    );
    assert_no_credentials(&err);
    // The server still did the work (once its 1.5 s delay is over): reconciling with GetOrders
    // finds the order.
    let start = std::time::Instant::now();
    loop {
        let pending = impatient
            .call("GetOrders", &obj(json!({"userid": 7, "status": "Pending"})))
            .await
            .unwrap();
        if pending["totalresults"] == 1 {
            break;
        }
        assert_eq!(pending["totalresults"], 0, "{pending}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the order never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn whmcs_connection_refused() {
    let client = whmcs_client(closed_port_url().await, Duration::from_secs(2));
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Network, "ECONNREFUSED"),
        "{err}"
    );
    assert_no_credentials(&err);
}

#[tokio::test]
async fn whmcs_connection_reset() {
    // A server that reads the request and hangs up without answering.
    let l = listener().await;
    let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut socket, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.set_zero_linger();
            drop(socket);
        }
    });
    let client = whmcs_client(url, Duration::from_secs(2));
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::Network, "ECONNRESET"),
        "{err}"
    );
    assert_no_credentials(&err);
}

#[tokio::test]
async fn whmcs_wrong_credentials_are_http_403() {
    let (server, _) = whmcs().await;
    let mut cfg = whmcs_config(server.url(), Duration::from_secs(2));
    cfg.secret = Secret::new("not-the-secret");
    let client = WhmcsClient::new(cfg, http_client(Duration::from_secs(2)).unwrap());
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str(), err.message.as_str()),
        (ErrorKind::HttpStatus, "403", "Authentication Failed")
    );
    assert!(!format!("{err:?}").contains("not-the-secret"));

    let mut cfg = whmcs_config(server.url(), Duration::from_secs(2));
    cfg.access_key = None;
    let client = WhmcsClient::new(cfg, http_client(Duration::from_secs(2)).unwrap());
    let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (ErrorKind::HttpStatus, "403")
    );
    assert!(err.message.starts_with("Invalid IP"));
}

#[tokio::test]
async fn whmcs_refuses_overriding_host_params() {
    let (server, client) = whmcs().await;
    for key in [
        "secret",
        "identifier",
        "action",
        "accesskey",
        "responsetype",
        "password",
    ] {
        let err = client
            .call("GetOrders", &obj(json!({ key: "x" })))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{key}");
    }
    let err = client.call("Get Orders", &Map::new()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(server.requests().is_empty(), "nothing may be sent");
}

#[test]
fn php_encoding_round_trips_through_the_fake() {
    let params = obj(json!({
        "clientid": 7,
        "pid": [1, 2, 3],
        "billingcycle": ["monthly", "annually", "monthly"],
        "qty": [1, 2, 1],
        "priceoverride": [9.5, null, 0],
        "customfields": {"a": "x", "b": "y"},
        "noinvoice": true,
        "noemail": false,
        "promocode": null,
        "note": "a&b=c [d] ü",
    }));
    let pairs = encode_params(&params).unwrap();
    // As it travels: form-encoded and decoded again.
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let wire: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let decoded = Value::Object(decode_php_form(&wire));
    assert_eq!(
        decoded,
        json!({
            "clientid": "7",
            "pid": {"0": "1", "1": "2", "2": "3"},
            "billingcycle": {"0": "monthly", "1": "annually", "2": "monthly"},
            "qty": {"0": "1", "1": "2", "2": "1"},
            "priceoverride": {"0": "9.5", "2": "0"},
            "customfields": {"a": "x", "b": "y"},
            "noinvoice": "1",
            "noemail": "0",
            "note": "a&b=c [d] ü",
        })
    );

    // And the fake acts on it.
    let mut w = FakeWhmcs::new();
    w.add_client(FakeClient {
        id: 7,
        ..FakeClient::default()
    });
    for pid in 1..=3 {
        w.add_product(FakeProduct {
            pid,
            name: format!("P{pid}"),
            cycles: vec![],
        });
    }
    let mut add = obj(json!({"paymentmethod": "stripe"}));
    add.extend(params);
    add.remove("priceoverride");
    let mut wire = encode_params(&add).unwrap();
    wire.push(("action".into(), "AddOrder".into()));
    let answer = w.handle(&wire);
    assert_eq!(answer["result"], "success", "{answer}");
    assert_eq!(w.orders()[0].items.len(), 3);
    assert_eq!(w.orders()[0].items[1].billing_cycle, "annually");
    assert_eq!(w.orders()[0].items[1].qty, 2);
    assert_eq!(answer["invoiceid"], 0);
}

#[test]
fn config_debug_hides_credentials() {
    let whmcs = whmcs_config(
        Url::parse("https://billing.example/").unwrap(),
        Duration::from_secs(1),
    );
    let sf = sf_config(
        Url::parse("https://login.salesforce.com").unwrap(),
        PRIVATE_KEY,
    );
    let text = format!("{whmcs:?} {sf:?}");
    for secret in [
        WHMCS_IDENTIFIER,
        WHMCS_SECRET,
        WHMCS_ACCESS_KEY,
        "PRIVATE KEY",
        "MII",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let client = SalesforceClient::new(sf, http_client(Duration::from_secs(1)).unwrap()).unwrap();
    let text = format!("{client:?}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("MII"),
        "{text}"
    );
}

/// `GET .../sobjects/<SObject>/describe` answers the org's schema in Salesforce's shape (what
/// `fulfilld doctor` reads), behind the same bearer check as the other REST calls.
#[tokio::test]
async fn sf_describe_answers_the_schema() {
    let sf = sf(2000).await;
    let session = sf.client.session().await.unwrap();
    let http = reqwest::Client::new();
    let describe = |sobject: &str, token: Option<&str>| {
        let url = sf
            .server
            .url()
            .join(&format!("services/data/v66.0/sobjects/{sobject}/describe"))
            .unwrap();
        let mut request = http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let token = session.access_token.expose().to_owned();
    let answer = describe("Order", Some(&token)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["name"], "Order");
    assert_eq!(body["queryable"], true);
    assert_eq!(body["updateable"], true);
    let fields = body["fields"].as_array().unwrap();
    let status = fields
        .iter()
        .find(|f| f["name"] == "Activation_Status__c")
        .unwrap();
    assert_eq!(status["type"], "picklist");
    assert_eq!(status["updateable"], true);
    let values: Vec<&str> = status["picklistValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["Activating", "Activated", "Failed"]);
    assert_eq!(status["picklistValues"][0]["active"], true);
    let message = fields
        .iter()
        .find(|f| f["name"] == "Activation_Error_Message__c")
        .unwrap();
    assert_eq!(
        (message["type"].as_str(), message["length"].as_u64()),
        (Some("string"), Some(255))
    );
    let account = fields.iter().find(|f| f["name"] == "AccountId").unwrap();
    assert_eq!(account["referenceTo"], json!(["Account"]));
    assert_eq!(account["relationshipName"], "Account");
    assert!(
        body["childRelationships"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["childSObject"] == "OrderItem"
                && c["field"] == "OrderId"
                && c["relationshipName"] == "OrderItems")
    );
    let item: Value = describe("OrderItem", Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let quantity = item["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Quantity")
        .unwrap();
    assert_eq!(quantity["type"], "double");

    // Unknown sObject: 404 NOT_FOUND; no token: 401, as for every REST call.
    let answer = describe("Widget__c", Some(&token)).await.unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body,
        json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
    );
    assert_eq!(describe("Order", None).await.unwrap().status(), 401);
}

/// An answer over 32 MiB is not read further, whether it says its length up front or streams
/// without one: the call fails with `EBADRESPONSE` naming the limit.
#[tokio::test]
async fn answers_larger_than_32_mib_are_not_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for declared in [true, false] {
        let l = listener().await;
        let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = l.accept().await {
                let mut buf = [0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let head = if declared {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        40u64 << 20
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..40 {
                    if socket.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }
        });
        let client = whmcs_client(url, Duration::from_secs(30));
        let err = client.call("GetOrders", &Map::new()).await.unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::BadResponse, "EBADRESPONSE"),
            "declared={declared}: {err}"
        );
        assert!(err.message.contains("larger than 32 MiB"), "{err}");
    }
}
