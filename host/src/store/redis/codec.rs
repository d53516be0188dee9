//! Reading Redis replies and stream entries into the store's types.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::domain::ReplayId;
use crate::store::{DeadLetter, DeadLetterKind, Detail, Job, StoreError};

/// The elements of an array reply (empty for `Nil` or anything else).
pub(super) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        _ => Vec::new(),
    }
}

pub(super) fn text(value: Value) -> String {
    String::from_utf8_lossy(&bytes(value)).into_owned()
}

pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A stream entry's `[field, value, ...]` as a map.
pub(super) fn fields(value: Value) -> HashMap<String, Vec<u8>> {
    let mut map = HashMap::new();
    let mut items = array(value).into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        map.insert(text(k), bytes(v));
    }
    map
}

fn field_text(
    fields: &HashMap<String, Vec<u8>>,
    name: &str,
    entry: &str,
) -> Result<String, StoreError> {
    let raw = fields.get(name).ok_or_else(|| {
        StoreError::Corrupt(format!("stream entry {entry}: no field {name:?}").into())
    })?;
    String::from_utf8(raw.clone()).map_err(|e| {
        StoreError::Corrupt(
            Detail::new(format!("stream entry {entry}: field {name:?} is not UTF-8")).with_cause(e),
        )
    })
}

fn field_int(
    fields: &HashMap<String, Vec<u8>>,
    name: &str,
    entry: &str,
) -> Result<i64, StoreError> {
    field_text(fields, name, entry)?.parse().map_err(|e| {
        StoreError::Corrupt(
            Detail::new(format!(
                "stream entry {entry}: field {name:?} is not a number"
            ))
            .with_cause(e),
        )
    })
}

fn field_replay(fields: &HashMap<String, Vec<u8>>, entry: &str) -> Result<ReplayId, StoreError> {
    ReplayId::parse(&field_text(fields, "replay", entry)?).map_err(|e| {
        StoreError::Corrupt(Detail::caused_by(
            format_args!("stream entry {entry}: field \"replay\""),
            e,
        ))
    })
}

pub(super) fn job_from_fields(
    channel: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    deliveries: u32,
) -> Result<Job, StoreError> {
    Ok(Job {
        id: id.to_owned(),
        channel: channel.to_owned(),
        event_uuid: field_text(fields, "uuid", id)?,
        replay_id: field_replay(fields, id)?,
        payload: fields.get("payload").cloned().unwrap_or_default(),
        deliveries,
        enqueued_at_ms: field_int(fields, "enq", id)?,
    })
}

/// A dead-letter stream entry. Never fails: an entry whose fields cannot be read (something
/// other than the host wrote it) is listed as [`DeadLetterKind::Damaged`] with what is wrong, so
/// one bad entry never hides the others from `dead-letters list`.
pub(super) fn dead_letter_from_entry(channel: &str, entry: Value) -> DeadLetter {
    let mut entry = array(entry).into_iter();
    let id = entry.next().map(text).unwrap_or_default();
    let fields = fields(entry.next().unwrap_or(Value::Nil));
    match readable_dead_letter(channel, &id, &fields) {
        Ok(letter) => letter,
        Err(e) => damaged_dead_letter(channel, id, &fields, &e),
    }
}

fn readable_dead_letter(
    channel: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
) -> Result<DeadLetter, StoreError> {
    let kind = match field_text(fields, "kind", id)?.as_str() {
        "undecodable" => DeadLetterKind::Undecodable,
        "job" => DeadLetterKind::Job,
        "damaged" => {
            return Err(StoreError::Corrupt(Detail::new(
                "a queue entry the host could not read",
            )));
        }
        other => {
            return Err(StoreError::Corrupt(
                format!("unknown kind {:?}", bounded(other.as_bytes())).into(),
            ));
        }
    };
    Ok(DeadLetter {
        channel: channel.to_owned(),
        event_uuid: field_text(fields, "uuid", id)?,
        replay_id: field_replay(fields, id)?,
        payload: fields.get("payload").cloned().unwrap_or_default(),
        kind,
        reason: field_text(fields, "reason", id)?,
        deliveries: u32::try_from(field_int(fields, "deliveries", id)?).unwrap_or(u32::MAX),
        dead_at_ms: field_int(fields, "dead", id)?,
        id: id.to_owned(),
    })
}

/// What can be read of a damaged entry; the payload holds every field as found (JSON, values
/// as lossy text, each bounded) so an operator can see it with `dead-letters show`.
fn damaged_dead_letter(
    channel: &str,
    id: String,
    fields: &HashMap<String, Vec<u8>>,
    problem: &StoreError,
) -> DeadLetter {
    // A damaged queue entry's own fields are kept as `raw:<name>` (its uuid, its replay id).
    let field = |name: &str| {
        fields
            .get(name)
            .or_else(|| fields.get(&format!("raw:{name}")))
    };
    let get = |name: &str| field(name).map(|v| bounded(v)).unwrap_or_default();
    let number = |name: &str| -> i64 {
        fields
            .get(name)
            .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
            .unwrap_or(0)
    };
    let kept_reason = get("reason");
    let problem = crate::domain::clip(&problem.to_string(), 512);
    let reason = if get("kind") == "damaged" && !kept_reason.is_empty() {
        kept_reason
    } else if kept_reason.is_empty() {
        format!("damaged dead-letter entry: {problem}")
    } else {
        format!("damaged dead-letter entry ({problem}); its reason field: {kept_reason}")
    };
    let mut names: Vec<&String> = fields.keys().collect();
    names.sort();
    let found: serde_json::Map<String, serde_json::Value> = names
        .into_iter()
        .map(|name| (bounded(name.as_bytes()), bounded(&fields[name]).into()))
        .collect();
    DeadLetter {
        channel: channel.to_owned(),
        event_uuid: get("uuid"),
        replay_id: field("replay")
            .and_then(|r| ReplayId::parse(&String::from_utf8_lossy(r)).ok())
            .unwrap_or_else(|| ReplayId::from_bytes(Vec::new())),
        payload: serde_json::Value::Object(found).to_string().into_bytes(),
        kind: DeadLetterKind::Damaged,
        reason,
        deliveries: u32::try_from(number("deliveries")).unwrap_or(0),
        dead_at_ms: number("dead"),
        id,
    }
}

/// Text of a store value as shown to operators: lossy UTF-8, at most [`SHOWN_BYTES`] bytes.
fn bounded(raw: &[u8]) -> String {
    crate::domain::clip_marked(&String::from_utf8_lossy(raw), SHOWN_BYTES)
}

/// How much of one damaged field is shown.
const SHOWN_BYTES: usize = 4096;

/// A stream id as Redis writes them (`<ms>-<seq>`); anything else is no dead letter of ours.
pub(super) fn is_stream_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => {
            !ms.is_empty()
                && !seq.is_empty()
                && ms.bytes().all(|b| b.is_ascii_digit())
                && seq.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// A time to live as a script argument: whole milliseconds, at least 1.
pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_recognised() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(!is_stream_id("1700000000000"));
        assert!(!is_stream_id("abc-1"));
        assert!(!is_stream_id("-"));
    }
}
