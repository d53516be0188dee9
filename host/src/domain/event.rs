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
    /// The W3C `traceparent` of the leader's `ingest_event` span, stored with the job so its run
    /// joins the Order's trace (`telemetry`). Only when traces are exported; never handed to the
    /// component. Read back from the store, so it is checked before use, never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl Event {
    /// An event no stream delivered: `fulfilld fulfill --order-id` provisioning one Order now. It
    /// has what the stream's events have for the component (`OrderId__c`, the channel), a fresh
    /// `manual-<uuid>` EventUuid, and no replay id or schema to report.
    pub fn manual(order_id: &str, channel: &str, now_ms: i64) -> Event {
        let mut payload = Map::new();
        payload.insert("OrderId__c".into(), Value::String(order_id.to_owned()));
        Event {
            event_uuid: format!("manual-{}", super::random_uuid()),
            replay_id: String::new(),
            schema_id: "manual".into(),
            channel: channel.to_owned(),
            created_date: now_ms,
            payload,
            trace_parent: None,
        }
    }

    /// The Order the event is about (`OrderId__c`), if present.
    pub fn order_id(&self) -> Option<&str> {
        self.payload.get("OrderId__c").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_event_names_its_order_and_is_marked_manual() {
        let event = Event::manual("801000000000001", "/event/X__e", 42);
        assert_eq!(event.order_id(), Some("801000000000001"));
        assert_eq!(event.payload.len(), 1);
        assert_eq!(event.channel, "/event/X__e");
        assert_eq!(event.created_date, 42);
        assert_eq!(event.replay_id, "");
        assert_eq!(event.schema_id, "manual");
        let uuid = event.event_uuid.strip_prefix("manual-").unwrap_or_default();
        assert_eq!(uuid.len(), 36, "{}", event.event_uuid);
        assert_ne!(
            event.event_uuid,
            Event::manual("801000000000001", "/event/X__e", 42).event_uuid
        );
    }
}
