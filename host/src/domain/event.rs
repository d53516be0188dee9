//! The platform event a job carries, as the component receives it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A platform event handed to `fulfill`: what the subscriber decodes, the store queues (as JSON)
/// and the runtime passes to the component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_uuid: String,
    /// Decimal text of the 8-byte big-endian replay id.
    pub replay_id: String,
    pub schema_id: String,
    pub channel: String,
    /// `CreatedDate`, ms since the Unix epoch.
    pub created_date: i64,
    pub payload: Map<String, Value>,
}

impl Event {
    /// The Order the event is about (`OrderId__c`), if present.
    pub fn order_id(&self) -> Option<&str> {
        self.payload.get("OrderId__c").and_then(Value::as_str)
    }
}
