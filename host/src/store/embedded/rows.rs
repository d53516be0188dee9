//! The stored forms of jobs and dead letters, and the row operations ingest, the queue and the
//! dead letters share (ids come from the `meta` sequences, so they are never reused).

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    CLAIMED, Context as _, DEAD, DEAD_SEQ, JOB_SEQ, JOBS, META, PENDING, decode, encode, next_seq,
    open_w,
};
use crate::domain::ReplayId;
use crate::store::{DeadLetter, DeadLetterKind, Job, StoreError};

/// Payload bytes as base64 text inside the JSON values.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::Deserialize as _;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredJob {
    pub(super) event_uuid: String,
    pub(super) replay_id: ReplayId,
    #[serde(with = "b64")]
    pub(super) payload: Vec<u8>,
    pub(super) enqueued_at_ms: i64,
    pub(super) deliveries: u32,
    /// The consumer it was last handed to (`None` while pending).
    pub(super) consumer: Option<String>,
    /// When it was last handed out or touched.
    pub(super) touched_at_ms: i64,
}

impl StoredJob {
    pub(super) fn to_job(&self, channel: &str, id: u64) -> Job {
        Job {
            id: id.to_string(),
            channel: channel.to_owned(),
            event_uuid: self.event_uuid.clone(),
            replay_id: self.replay_id.clone(),
            payload: self.payload.clone(),
            deliveries: self.deliveries,
            enqueued_at_ms: self.enqueued_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredDeadLetter {
    pub(super) event_uuid: String,
    pub(super) replay_id: ReplayId,
    #[serde(with = "b64")]
    pub(super) payload: Vec<u8>,
    pub(super) kind: DeadLetterKind,
    pub(super) reason: String,
    pub(super) deliveries: u32,
    pub(super) dead_at_ms: i64,
}

impl StoredDeadLetter {
    pub(super) fn into_dead_letter(self, channel: &str, id: u64) -> DeadLetter {
        DeadLetter {
            id: id.to_string(),
            channel: channel.to_owned(),
            event_uuid: self.event_uuid,
            replay_id: self.replay_id,
            payload: self.payload,
            kind: self.kind,
            reason: self.reason,
            deliveries: self.deliveries,
            dead_at_ms: self.dead_at_ms,
        }
    }
}

pub(super) fn load_job(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
) -> Result<Option<StoredJob>, StoreError> {
    let Some(bytes) = table
        .get((channel, id))
        .context(|| format!("read job {id} of channel {channel}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || format!("job {id} of channel {channel}")).map(Some)
}

pub(super) fn save_job(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
    job: &StoredJob,
) -> Result<(), StoreError> {
    let bytes = encode(job, || format!("job {id} of channel {channel}"))?;
    table
        .insert((channel, id), bytes.as_slice())
        .context(|| format!("write job {id} of channel {channel}"))?;
    Ok(())
}

pub(super) fn load_dead(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    channel: &str,
    id: u64,
) -> Result<Option<StoredDeadLetter>, StoreError> {
    let Some(bytes) = table
        .get((channel, id))
        .context(|| format!("read dead letter {id} of channel {channel}"))?
    else {
        return Ok(None);
    };
    decode(bytes.value(), || {
        format!("dead letter {id} of channel {channel}")
    })
    .map(Some)
}

/// Adds a dead letter with a fresh id; returns the id.
pub(super) fn add_dead(
    txn: &WriteTransaction,
    channel: &str,
    dead: &StoredDeadLetter,
) -> Result<u64, StoreError> {
    let id = next_seq(&mut open_w(txn, META)?, DEAD_SEQ)?;
    let bytes = encode(dead, || format!("dead letter {id} of channel {channel}"))?;
    open_w(txn, DEAD)?
        .insert((channel, id), bytes.as_slice())
        .context(|| format!("write dead letter {id} of channel {channel}"))?;
    Ok(id)
}

/// Adds a pending job with a fresh id; returns the id.
pub(super) fn add_job(
    txn: &WriteTransaction,
    channel: &str,
    job: &StoredJob,
) -> Result<u64, StoreError> {
    let id = next_seq(&mut open_w(txn, META)?, JOB_SEQ)?;
    save_job(&mut open_w(txn, JOBS)?, channel, id, job)?;
    open_w(txn, PENDING)?
        .insert((channel, id), ())
        .context(|| format!("queue job {id} of channel {channel}"))?;
    Ok(id)
}

/// Removes a job and its index entries; returns it when it was there.
pub(super) fn remove_job(
    txn: &WriteTransaction,
    channel: &str,
    id: u64,
) -> Result<Option<StoredJob>, StoreError> {
    let mut jobs = open_w(txn, JOBS)?;
    let job = load_job(&jobs, channel, id)?;
    jobs.remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel}"))?;
    open_w(txn, PENDING)?
        .remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel} from the pending index"))?;
    open_w(txn, CLAIMED)?
        .remove((channel, id))
        .context(|| format!("remove job {id} of channel {channel} from the claimed index"))?;
    Ok(job)
}
