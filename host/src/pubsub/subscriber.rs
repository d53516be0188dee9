//! The subscriber (work in progress in this commit).

use super::ReplayId;

/// Where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    Latest,
    Earliest,
    After(ReplayId),
}

#[derive(Debug, Clone)]
pub struct SubscriberOptions;
#[derive(Debug)]
pub struct Subscription;
#[derive(Debug, Clone, Default)]
pub struct SubscriptionState;
#[derive(Debug, thiserror::Error)]
#[error("subscriber")]
pub struct SubscriberError;
pub fn subscribe() {}
