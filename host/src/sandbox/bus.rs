//! The sandbox's event log: topics, their schemas and retained events, with Salesforce's rules
//! for replay ids (8-byte big-endian, increasing) and retention.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::SandboxError;
use crate::domain::{ReplayId, random_uuid};
use crate::pubsub::avro;
use crate::pubsub::proto::{self, ProducerEvent, PublishResult};

/// Salesforce's limit on events per publish request.
pub const MAX_PUBLISH_BATCH: usize = 200;

/// The id Salesforce-style clients see for the user that published an event.
const SANDBOX_USER_ID: &str = "005SANDBOX0000001AAA";

/// Topics and their events. Clones share the same log.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

struct Inner {
    retention: Duration,
    state: Mutex<State>,
}

struct State {
    next_replay: u64,
    topics: HashMap<String, Topic>,
    schemas: HashMap<String, Arc<SchemaEntry>>,
}

struct SchemaEntry {
    json: String,
    parsed: Schema,
}

struct Topic {
    schema_id: String,
    events: VecDeque<Stored>,
    /// The newest replay id assigned on this topic: the topic's position.
    latest: u64,
    /// The newest replay id dropped by retention; ids at or before it are refused.
    expired_up_to: Option<u64>,
    /// Wakes streams when `latest` moves.
    notify: watch::Sender<u64>,
}

struct Stored {
    replay: u64,
    at: Instant,
    event: ProducerEvent,
}

/// Where a subscription starts, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Deliver events with a replay id greater than this.
    After(u64),
}

/// Why a requested replay id cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplayProblem {
    Malformed,
    Expired,
    Unknown,
}

impl EventBus {
    pub(crate) fn new(retention: Duration, first_replay_id: u64) -> Self {
        EventBus {
            inner: Arc::new(Inner {
                retention,
                state: Mutex::new(State {
                    next_replay: first_replay_id.max(1),
                    topics: HashMap::new(),
                    schemas: HashMap::new(),
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates `topic` with its first schema; returns the schema id.
    pub fn create_topic(&self, topic: &str, schema_json: &str) -> Result<String, SandboxError> {
        let mut state = self.state();
        if state.topics.contains_key(topic) {
            return Err(SandboxError::TopicExists(topic.to_owned()));
        }
        let schema_id = register_schema(&mut state, schema_json)?;
        // A new topic's position is just before the next id, so LATEST and keepalives have a
        // replay id to report even before the first event, as on Salesforce.
        let position = state.next_replay - 1;
        state.topics.insert(
            topic.to_owned(),
            Topic {
                schema_id: schema_id.clone(),
                events: VecDeque::new(),
                latest: position,
                expired_up_to: None,
                notify: watch::channel(position).0,
            },
        );
        Ok(schema_id)
    }

    /// Makes `schema_json` the topic's current schema. Events already published keep their
    /// schema id, which stays resolvable.
    pub fn evolve_schema(&self, topic: &str, schema_json: &str) -> Result<String, SandboxError> {
        let mut state = self.state();
        let schema_id = register_schema(&mut state, schema_json)?;
        let entry = state
            .topics
            .get_mut(topic)
            .ok_or_else(|| SandboxError::UnknownTopic(topic.to_owned()))?;
        entry.schema_id = schema_id.clone();
        Ok(schema_id)
    }

    /// Drops a schema as if the org had deleted it: GetSchema answers NOT_FOUND for it, while
    /// events stored under it stay, so a subscriber meets an event whose schema it cannot have.
    /// Returns whether the schema existed. A topic's current schema cannot be dropped.
    pub fn forget_schema(&self, schema_id: &str) -> bool {
        let mut state = self.state();
        if state.topics.values().any(|t| t.schema_id == schema_id) {
            return false;
        }
        state.schemas.remove(schema_id).is_some()
    }

    /// The topic's current schema id.
    pub fn schema_id(&self, topic: &str) -> Option<String> {
        self.state().topics.get(topic).map(|t| t.schema_id.clone())
    }

    /// The schema text for an id.
    pub fn schema_json(&self, schema_id: &str) -> Option<String> {
        self.state().schemas.get(schema_id).map(|s| s.json.clone())
    }

    /// Whether the topic exists.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.state().topics.contains_key(topic)
    }

    /// Publishes events as the Publish RPC does: one result per event, an error result for an
    /// event naming an unknown schema. Payloads are not validated, as on Salesforce.
    pub fn publish(
        &self,
        topic: &str,
        events: Vec<ProducerEvent>,
    ) -> Result<Vec<PublishResult>, SandboxError> {
        if events.len() > MAX_PUBLISH_BATCH {
            return Err(SandboxError::TooManyEvents(events.len()));
        }
        let retention = self.inner.retention;
        let mut state = self.state();
        let State {
            next_replay,
            topics,
            schemas,
        } = &mut *state;
        let entry = topics
            .get_mut(topic)
            .ok_or_else(|| SandboxError::UnknownTopic(topic.to_owned()))?;
        let now = Instant::now();
        let mut results = Vec::with_capacity(events.len());
        for mut event in events {
            if event.id.is_empty() {
                event.id = random_uuid();
            }
            let correlation_key = event.id.clone();
            if !schemas.contains_key(&event.schema_id) {
                results.push(PublishResult {
                    replay_id: Vec::new(),
                    error: Some(proto::Error {
                        code: proto::ErrorCode::Publish as i32,
                        msg: format!("unknown schema id {:?}", event.schema_id),
                    }),
                    correlation_key,
                });
                continue;
            }
            let replay = *next_replay;
            *next_replay += 1;
            entry.latest = replay;
            entry.events.push_back(Stored {
                replay,
                at: now,
                event,
            });
            results.push(PublishResult {
                replay_id: replay.to_be_bytes().to_vec(),
                error: None,
                correlation_key,
            });
        }
        prune(entry, retention);
        entry.notify.send_replace(entry.latest);
        Ok(results)
    }

    fn publish_one(&self, topic: &str, event: ProducerEvent) -> Result<ReplayId, SandboxError> {
        let result = self
            .publish(topic, vec![event])?
            .pop()
            .ok_or_else(|| SandboxError::Publish("no result".into()))?;
        match result.error {
            Some(error) => Err(SandboxError::Publish(error.msg)),
            None => Ok(ReplayId::from_bytes(result.replay_id)),
        }
    }

    /// Avro-encodes `fields` with the topic's current schema and publishes them.
    pub fn publish_fields(
        &self,
        topic: &str,
        event_uuid: &str,
        fields: &Map<String, Value>,
    ) -> Result<ReplayId, SandboxError> {
        let schema_id = self
            .schema_id(topic)
            .ok_or_else(|| SandboxError::UnknownTopic(topic.to_owned()))?;
        self.publish_fields_with_schema(topic, &schema_id, event_uuid, fields)
    }

    /// Avro-encodes `fields` with a given (possibly older) schema and publishes them.
    pub fn publish_fields_with_schema(
        &self,
        topic: &str,
        schema_id: &str,
        event_uuid: &str,
        fields: &Map<String, Value>,
    ) -> Result<ReplayId, SandboxError> {
        let schema = self
            .state()
            .schemas
            .get(schema_id)
            .cloned()
            .ok_or_else(|| SandboxError::UnknownSchema(schema_id.to_owned()))?;
        let payload = avro::encode(&schema.parsed, fields).map_err(SandboxError::Encode)?;
        self.publish_raw(topic, schema_id, event_uuid, payload)
    }

    /// Publishes an `OrderProvisionRequested__e` for `order_id`, stamped now.
    pub fn publish_order(
        &self,
        topic: &str,
        order_id: &str,
        event_uuid: &str,
    ) -> Result<ReplayId, SandboxError> {
        let mut fields = Map::new();
        fields.insert("CreatedDate".into(), Value::from(crate::domain::now_ms()));
        fields.insert("CreatedById".into(), Value::from(SANDBOX_USER_ID));
        fields.insert("OrderId__c".into(), Value::from(order_id));
        self.publish_fields(topic, event_uuid, &fields)
    }

    /// Publishes a payload as given: the server does not validate payloads.
    pub fn publish_raw(
        &self,
        topic: &str,
        schema_id: &str,
        event_uuid: &str,
        payload: Vec<u8>,
    ) -> Result<ReplayId, SandboxError> {
        self.publish_one(
            topic,
            ProducerEvent {
                id: event_uuid.to_owned(),
                schema_id: schema_id.to_owned(),
                payload,
                headers: Vec::new(),
            },
        )
    }

    /// The newest replay id of the topic.
    pub fn latest_replay_id(&self, topic: &str) -> Option<ReplayId> {
        self.state()
            .topics
            .get(topic)
            .map(|t| ReplayId::from_u64(t.latest))
    }

    /// Drops the topic's events up to and including `replay_id` now, as retention does once
    /// they are old enough: later subscriptions from them are refused as expired. Tests use it
    /// instead of waiting for a short retention to pass. Returns how many events were dropped.
    pub fn expire_through(&self, topic: &str, replay_id: &ReplayId) -> usize {
        let Some(through) = replay_id.as_u64() else {
            return 0;
        };
        let mut state = self.state();
        let Some(entry) = state.topics.get_mut(topic) else {
            return 0;
        };
        let mut dropped = 0;
        while let Some(front) = entry.events.front() {
            if front.replay > through {
                break;
            }
            entry.expired_up_to = Some(front.replay);
            entry.events.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// The retained events, oldest first.
    pub fn events(&self, topic: &str) -> Vec<(ReplayId, ProducerEvent)> {
        let retention = self.inner.retention;
        let mut state = self.state();
        let Some(entry) = state.topics.get_mut(topic) else {
            return Vec::new();
        };
        prune(entry, retention);
        entry
            .events
            .iter()
            .map(|s| (ReplayId::from_u64(s.replay), s.event.clone()))
            .collect()
    }

    /// Resolves where a new subscription starts.
    pub(crate) fn start(
        &self,
        topic: &str,
        preset: proto::ReplayPreset,
        replay_id: &[u8],
    ) -> Result<Start, ReplayProblem> {
        let retention = self.inner.retention;
        let mut state = self.state();
        let Some(entry) = state.topics.get_mut(topic) else {
            return Err(ReplayProblem::Unknown);
        };
        prune(entry, retention);
        match preset {
            proto::ReplayPreset::Latest => Ok(Start::After(entry.latest)),
            proto::ReplayPreset::Earliest => Ok(Start::After(
                entry
                    .events
                    .front()
                    .map_or(entry.latest, |first| first.replay - 1),
            )),
            proto::ReplayPreset::Custom => {
                let id = <[u8; 8]>::try_from(replay_id)
                    .map(u64::from_be_bytes)
                    .map_err(|_| ReplayProblem::Malformed)?;
                if id > entry.latest {
                    return Err(ReplayProblem::Unknown);
                }
                // The stream's own position (what keepalives report) is always valid; anything
                // at or before an event dropped by retention is not.
                if id != entry.latest && entry.expired_up_to.is_some_and(|expired| id <= expired) {
                    return Err(ReplayProblem::Expired);
                }
                Ok(Start::After(id))
            }
        }
    }

    /// Up to `max` events after `position`, and the topic's newest replay id.
    pub(crate) fn fetch(
        &self,
        topic: &str,
        position: u64,
        max: usize,
    ) -> (Vec<(u64, ProducerEvent)>, u64) {
        let state = self.state();
        let Some(entry) = state.topics.get(topic) else {
            return (Vec::new(), 0);
        };
        let from = entry.events.partition_point(|s| s.replay <= position);
        let events = entry
            .events
            .range(from..)
            .take(max)
            .map(|s| (s.replay, s.event.clone()))
            .collect();
        (events, entry.latest)
    }

    /// A receiver that changes whenever the topic gets an event.
    pub(crate) fn watch(&self, topic: &str) -> Option<watch::Receiver<u64>> {
        self.state().topics.get(topic).map(|t| t.notify.subscribe())
    }
}

fn prune(topic: &mut Topic, retention: Duration) {
    while let Some(front) = topic.events.front() {
        if front.at.elapsed() <= retention {
            break;
        }
        topic.expired_up_to = Some(front.replay);
        topic.events.pop_front();
    }
}

fn register_schema(state: &mut State, schema_json: &str) -> Result<String, SandboxError> {
    let parsed = avro::parse_schema(schema_json).map_err(SandboxError::Schema)?;
    let schema_id = schema_id_for(schema_json);
    state.schemas.entry(schema_id.clone()).or_insert_with(|| {
        Arc::new(SchemaEntry {
            json: schema_json.to_owned(),
            parsed,
        })
    });
    Ok(schema_id)
}

/// Schema ids look like Salesforce's (22 characters of URL-safe base64), derived from the text
/// so the same schema always gets the same id.
fn schema_id_for(schema_json: &str) -> String {
    let digest = Sha256::digest(schema_json.as_bytes());
    let mut id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    id.truncate(22);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{ORDER_EVENT_TOPIC, order_event_schema_v1};

    fn bus(retention: Duration) -> EventBus {
        let bus = EventBus::new(retention, 1);
        bus.create_topic(ORDER_EVENT_TOPIC, order_event_schema_v1())
            .unwrap();
        bus
    }

    fn custom(bus: &EventBus, id: &ReplayId) -> Result<Start, ReplayProblem> {
        bus.start(
            ORDER_EVENT_TOPIC,
            proto::ReplayPreset::Custom,
            id.as_bytes(),
        )
    }

    #[test]
    fn events_older_than_the_retention_are_dropped_and_their_ids_refused() {
        let bus = bus(Duration::ZERO);
        let old = bus.publish_order(ORDER_EVENT_TOPIC, "801A", "u1").unwrap();
        let newest = bus.publish_order(ORDER_EVENT_TOPIC, "801B", "u2").unwrap();
        // Any time at all is past a zero retention.
        std::thread::sleep(Duration::from_millis(2));
        assert!(bus.events(ORDER_EVENT_TOPIC).is_empty());
        assert_eq!(custom(&bus, &old), Err(ReplayProblem::Expired));
        // The topic's position (what keepalives report) stays valid.
        assert!(matches!(custom(&bus, &newest), Ok(Start::After(_))));
    }

    #[test]
    fn expire_through_drops_up_to_the_id_and_keeps_the_rest() {
        let bus = bus(Duration::from_secs(3600));
        let first = bus.publish_order(ORDER_EVENT_TOPIC, "801A", "u1").unwrap();
        let second = bus.publish_order(ORDER_EVENT_TOPIC, "801B", "u2").unwrap();
        let third = bus.publish_order(ORDER_EVENT_TOPIC, "801C", "u3").unwrap();
        assert_eq!(bus.expire_through(ORDER_EVENT_TOPIC, &second), 2);
        let kept: Vec<ReplayId> = bus
            .events(ORDER_EVENT_TOPIC)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(kept, vec![third.clone()]);
        assert_eq!(custom(&bus, &first), Err(ReplayProblem::Expired));
        assert_eq!(custom(&bus, &second), Err(ReplayProblem::Expired));
        assert!(matches!(custom(&bus, &third), Ok(Start::After(_))));
        assert_eq!(bus.expire_through("/event/Nope__e", &third), 0);
    }

    #[test]
    fn a_forgotten_schema_is_gone_but_the_current_one_stays() {
        let bus = bus(Duration::from_secs(3600));
        let current = bus.schema_id(ORDER_EVENT_TOPIC).unwrap();
        assert!(!bus.forget_schema(&current));
        let newer = bus
            .evolve_schema(ORDER_EVENT_TOPIC, crate::sandbox::order_event_schema_v2())
            .unwrap();
        assert!(bus.forget_schema(&current));
        assert!(bus.schema_json(&current).is_none());
        assert!(bus.schema_json(&newer).is_some());
        assert!(!bus.forget_schema(&current));
    }
}
