//! The names of the keys (the layout in the [module docs](super)).

use super::RedisStore;
use crate::store::cursor_key;

/// The consumer group every worker of every replica reads jobs through.
pub(super) const GROUP: &str = "workers";

/// The keys of one channel.
pub(super) struct ChannelKeys {
    pub cursor: String,
    pub lease: String,
    pub epoch: String,
    pub backfill: String,
    pub jobs: String,
    pub dead: String,
    pub dedupe_prefix: String,
}

impl ChannelKeys {
    fn new(namespace: &str, channel: &str) -> ChannelKeys {
        let cursor = cursor_key(channel);
        let base = format!("{namespace}:{{{cursor}}}");
        ChannelKeys {
            lease: format!("{base}:lease"),
            epoch: format!("{base}:epoch"),
            backfill: format!("{base}:backfill"),
            jobs: format!("{base}:jobs"),
            dead: format!("{base}:dead"),
            dedupe_prefix: format!("{base}:dedupe:"),
            cursor,
        }
    }
}

impl RedisStore {
    pub(super) fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.namespace, channel)
    }

    /// A shared component version: hash of `meta` (JSON), `wasm` and `signature`.
    pub(super) fn component_key(&self, sha256: &str) -> String {
        format!("{}:component:{sha256}", self.namespace)
    }

    /// The version every replica should run (JSON [`crate::store::SharedActive`]).
    pub(super) fn active_component_key(&self) -> String {
        format!("{}:component:active", self.namespace)
    }

    /// The two keys of a hold, in one hash slot: holders in shared mode (a sorted set scored by
    /// expiry) and the exclusive holder (a string with a TTL).
    pub(super) fn hold_keys(&self, name: &str) -> (String, String) {
        hold_keys_of(&self.namespace, name)
    }

    /// The journal of a job (a list of JSON entries).
    pub(super) fn journal_key(&self, event_uuid: &str) -> String {
        format!("{}:journal:{event_uuid}", self.namespace)
    }

    /// The jobs of an Order (a sorted set of EventUuids scored by their first entry's time).
    pub(super) fn order_key(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.namespace)
    }

    /// The failed jobs (a sorted set of EventUuids scored by when they finished).
    pub(super) fn failed_key(&self) -> String {
        format!("{}:failed", self.namespace)
    }

    pub(super) fn record_key(&self, event_uuid: &str) -> String {
        format!("{}:record:{event_uuid}", self.namespace)
    }
}

fn hold_keys_of(namespace: &str, name: &str) -> (String, String) {
    let base = format!("{namespace}:{{hold:{name}}}");
    (format!("{base}:shared"), format!("{base}:exclusive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the text between the first `{` and the next `}`
    /// when it is non-empty, else the whole key.
    fn hashed_part(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_of_a_channel_hashes_to_the_cursor_keys_slot() {
        let keys = ChannelKeys::new("fulfilld", "/event/OrderProvisionRequested__e");
        assert_eq!(
            keys.cursor,
            "sf:pe:replay:/event/OrderProvisionRequested__e"
        );
        let dedupe = format!("{}0f8fad5b-d9cb-469f-a165-70867728950e", keys.dedupe_prefix);
        for key in [
            &keys.lease,
            &keys.epoch,
            &keys.backfill,
            &keys.jobs,
            &keys.dead,
            &dedupe,
            &keys.cursor,
        ] {
            assert_eq!(hashed_part(key), keys.cursor, "{key}");
        }
        assert_eq!(
            keys.jobs,
            "fulfilld:{sf:pe:replay:/event/OrderProvisionRequested__e}:jobs"
        );
    }

    #[test]
    fn a_holds_two_keys_share_a_slot_and_keys_used_alone_have_no_tag() {
        let (shared, exclusive) = hold_keys_of("fulfilld", "whmcs-client:42");
        assert_eq!(hashed_part(&shared), "hold:whmcs-client:42");
        assert_eq!(hashed_part(&shared), hashed_part(&exclusive));
        // Read and written alone: hashed whole, spread over the cluster.
        for key in [
            "fulfilld:record:0f8fad5b-d9cb-469f-a165-70867728950e",
            "fulfilld:journal:0f8fad5b-d9cb-469f-a165-70867728950e",
            "fulfilld:order:801000000000001AAA",
            "fulfilld:failed",
            "fulfilld:component:active",
        ] {
            assert_eq!(hashed_part(key), key);
        }
    }
}
