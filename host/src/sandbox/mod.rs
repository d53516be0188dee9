//! The sandbox: a stand-in for Salesforce and WHMCS that the host's real clients talk to over
//! real protocols. It carries the tests, the benchmarks and the demo.
//!
//! - [`pubsub`]: the Pub/Sub API over gRPC (plaintext or TLS with a test CA), following
//!   Salesforce's semantics, with fault injection;
//! - [`bus`]: its event log (topics, schemas, replay ids, retention);
//! - the fake org (OAuth token endpoint and REST) and fake WHMCS from [`crate::fake`];
//! - [`server`]: all of them in one process with a small admin API (`fulfilld sandbox`).

pub mod bus;
pub mod pubsub;
pub mod server;
mod tls;

pub use bus::EventBus;
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

/// What the sandbox refuses to do, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("the topic {0:?} exists already")]
    TopicExists(String),
    #[error("the schema id {0:?} is unknown")]
    UnknownSchema(String),
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("a publish request holds at most 200 events, this one {0}")]
    TooManyEvents(usize),
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("sandbox I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}
