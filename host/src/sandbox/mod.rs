//! The sandbox: a stand-in for Salesforce and WHMCS that the host's real clients talk to over
//! real protocols. It carries the tests, the benchmarks and the demo.
//!
//! - [`pubsub`]: the Pub/Sub API over gRPC (plaintext or TLS with a test CA), following
//!   Salesforce's semantics, with fault injection;
//! - [`bus`]: its event log (topics, schemas, replay ids, retention);
//! - the fake org (OAuth token endpoint and REST) and fake WHMCS from [`crate::fake`];
//! - [`server`]: all of them in one process with a small admin API (`fulfilld sandbox`).

pub mod bus;
mod ping_policy;
pub mod pubsub;
pub mod server;
mod tls;

pub use bus::EventBus;
pub use ping_policy::PingPolicy;
pub use pubsub::{
    Fault, PubSubControl, PubSubOptions, PubSubSandbox, PubSubStats, StaticToken, TokenCheck,
};
pub use server::{DEFAULT_SEED, Sandbox, SandboxConfig, run};

/// The platform event this project consumes.
pub const ORDER_EVENT_TOPIC: &str = "/event/OrderProvisionRequested__e";

/// The first schema of `OrderProvisionRequested__e`, shaped as Salesforce generates platform
/// event schemas: `CreatedDate` (epoch ms), `CreatedById`, custom fields as nullable unions.
pub fn order_event_schema_v1() -> &'static str {
    r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[{"name":"CreatedDate","type":"long","doc":"CreatedDate:DateTime"},{"name":"CreatedById","type":"string","doc":"CreatedBy:EntityId"},{"name":"OrderId__c","type":["null","string"],"doc":"Data:Text:00N","default":null}]}"#
}

/// A later version of the schema with one more custom field, for schema-evolution tests and
/// demos.
pub fn order_event_schema_v2() -> &'static str {
    r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[{"name":"CreatedDate","type":"long","doc":"CreatedDate:DateTime"},{"name":"CreatedById","type":"string","doc":"CreatedBy:EntityId"},{"name":"OrderId__c","type":["null","string"],"doc":"Data:Text:00N","default":null},{"name":"Source__c","type":["null","string"],"doc":"Data:Text:00N","default":null}]}"#
}

/// What the sandbox refuses to do, or could not start. The variants wrapping another error leave
/// it to `source()`: show them with [`crate::error::chain`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("the topic {0:?} exists already")]
    TopicExists(String),
    #[error("the schema id {0:?} is unknown")]
    UnknownSchema(String),
    #[error("invalid schema")]
    Schema(#[source] crate::pubsub::avro::SchemaError),
    #[error("a publish request holds at most 200 events, this one {0}")]
    TooManyEvents(usize),
    /// The bus refused the event; the text is the bus's own error message for it.
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("publish failed")]
    Encode(#[source] crate::pubsub::avro::EncodeError),
    #[error("TLS setup failed")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("sandbox I/O")]
    Io(#[from] std::io::Error),
}

/// The seed's paying customer (WHMCS client 42, a card on file).
pub const ACME_ACCOUNT: &str = "001000000000001AAA";
/// The seed's customer without a payment method (WHMCS client 43).
pub const NO_CARD_ACCOUNT: &str = "001000000000002AAA";

/// Adds `count` Orders for `account_id` to the fake org, each approved (`Activating`) with one
/// item mapped to the seed's "VPS Small" (WHMCS product 11, monthly). Ids are
/// `8019<11 digits>AAA` from `first`; returns them. Used by the demo, tests and benchmarks.
pub fn add_orders(
    org: &mut crate::fake::org::FakeOrg,
    account_id: &str,
    first: u64,
    count: u64,
) -> Result<Vec<String>, crate::error::CallError> {
    use serde_json::{Map, Value, json};
    let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for n in first..first.saturating_add(count) {
        let order_id = format!("8019{n:011}AAA");
        let order = json!({
            "Id": order_id,
            "OrderNumber": format!("9{n:07}"),
            "Status": "Activated",
            "AccountId": account_id,
            "Pricebook2Id": "01s000000000001AAA",
            "EffectiveDate": "2026-01-01",
            "Activation_Status__c": "Activating",
        });
        let item = json!({
            "Id": format!("8029{n:011}AAA"),
            "OrderId": order_id,
            "Product2Id": "01t000000000001AAA",
            "PricebookEntryId": "01u000000000001AAA",
            "Quantity": 1,
            "UnitPrice": 20.0,
            "Billing_Cycle__c": "Monthly",
        });
        let as_map = |v: Value| -> Map<String, Value> {
            match v {
                Value::Object(map) => map,
                _ => Map::new(),
            }
        };
        org.insert("Order", as_map(order))?;
        org.insert("OrderItem", as_map(item))?;
        ids.push(order_id);
    }
    Ok(ids)
}
