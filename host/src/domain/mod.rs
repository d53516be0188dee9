//! Plain domain types every layer shares: the [`Event`] a job carries, the [`ReplayId`] that
//! positions it in its stream, and the system clock and id source.
//!
//! This module is the bottom layer: it depends on nothing else in the crate, so the subscriber,
//! the store and the runtime can all speak of events and positions without depending on each
//! other (docs/architecture.md, "The host's modules, bottom layer first").

mod event;
mod replay;

use std::time::{SystemTime, UNIX_EPOCH};

pub use event::Event;
pub use replay::{ReplayId, ReplayIdParseError};

/// `text` cut to at most `max` bytes at a character boundary, with `…` when it was cut: for
/// logs and answers that quote something from outside.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// [`clip`], saying how long the text was when it was cut: `…[cut: N bytes in all]`. For text
/// kept from outside where a reader must see that it is not whole (records, dead letters).
pub fn clip_marked(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    format!("{} [cut: {} bytes in all]", clip(text, max), text.len())
}

/// The 18-character form of a Salesforce record id (a 15-character one gains its checksum, an
/// 18-character one gets its checksum's canonical case), `None` for anything that is not a record
/// id or an 18-character id with a wrong checksum. Ids are compared and indexed in this form.
pub fn record_id_18(id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(format!("{id}{}", record_id_checksum(id))),
        18 => {
            let (head, tail) = id.split_at(15);
            let sum = record_id_checksum(head);
            tail.eq_ignore_ascii_case(&sum)
                .then(|| format!("{head}{sum}"))
        }
        _ => None,
    }
}

/// The three characters Salesforce appends to a 15-character record id to make its
/// case-insensitive 18-character form: for each group of five characters, which of them are
/// upper-case letters, as one of 32 characters (`001A0000006Vm9r` → `IAC`).
pub fn record_id_checksum(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            char::from(ALPHABET[bits & 31])
        })
        .collect()
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random UUID (v4 layout): `x-client-trace-id` values, and ids the sandbox makes up.
pub fn random_uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
