//! Salesforce's Pub/Sub API: the generated protocol ([`proto`]), replay ids, Avro payloads and
//! the host's subscriber.
//!
//! The subscriber hands its consumer a stream of [`Delivery`] items: decoded events, events that
//! could not be decoded (with their raw bytes), cursor updates from keepalives and the loud notice
//! that a stored replay id was refused. The consumer tells it which cursor is durable
//! ([`subscriber::Subscription::commit`]); every reconnect resumes strictly after that cursor.

pub mod avro;
pub mod codes;
pub mod subscriber;

use crate::domain::ReplayId;
pub use subscriber::{
    ReplayFrom, SessionSource, SubscriberError, SubscriberOptions, Subscription, SubscriptionState,
    TopicCheck, get_topic, subscribe,
};

use crate::domain::Event;

/// The generated Pub/Sub API (`proto/eventbus/v1/pubsub_api.proto`): messages, the client and
/// the server trait.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("eventbus.v1");
}

/// Where a subscription starts when it has no cursor of its own, and where it falls back to when
/// a stored replay id is refused (`SF_EVENTS_REPLAY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Only events published from now on (`LATEST`).
    Latest,
    /// Every retained event (`ALL`, i.e. EARLIEST).
    Earliest,
}

/// One item of a subscription, in stream order.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// An event decoded with its own writer schema.
    Event(ReceivedEvent),
    /// An event whose payload could not be decoded. The stream goes on.
    Undecodable(UndecodableEvent),
    /// A keepalive's `latest_replay_id`: every event up to this position has been delivered.
    /// Storing it keeps a quiet channel's cursor inside the retention window.
    Cursor(ReplayId),
    /// Salesforce refused the replay id the subscription resumed from (older than retention, or
    /// corrupted). The subscriber has dropped it and resubscribed from `fallback`; events between
    /// the two positions may be missing and deserve an operator's attention.
    ReplayIdRejected {
        replay_id: ReplayId,
        fallback: Fallback,
        error_code: String,
        message: String,
    },
}

/// A decoded event and its position.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub replay_id: ReplayId,
    /// What the component receives: the record's fields plus EventUuid, replay id, schema id,
    /// channel and CreatedDate.
    pub event: Event,
}

/// An event that could not be decoded: everything needed to dead-letter it and look at it later.
#[derive(Debug, Clone)]
pub struct UndecodableEvent {
    pub replay_id: ReplayId,
    pub event_uuid: String,
    pub schema_id: String,
    pub channel: String,
    /// The Avro payload exactly as received.
    pub payload: Vec<u8>,
    /// Why it could not be decoded.
    pub reason: String,
}

impl Delivery {
    /// The position this item moves the stream to.
    pub fn replay_id(&self) -> &ReplayId {
        match self {
            Delivery::Event(event) => &event.replay_id,
            Delivery::Undecodable(event) => &event.replay_id,
            Delivery::Cursor(replay_id) => replay_id,
            Delivery::ReplayIdRejected { replay_id, .. } => replay_id,
        }
    }
}
