//! Replay ids: opaque positions in a Pub/Sub stream (the cursor the store keeps, the position of a job).

use std::fmt;

/// A replay id as Salesforce sends it: opaque bytes, in practice an 8-byte big-endian unsigned
/// integer. The host never does arithmetic on it; it stores it and hands it back.
///
/// Its text form ([`fmt::Display`], [`ReplayId::parse`]) is the decimal value of the 8 bytes,
/// as the previous portal stored it under `sf:pe:replay:<channel>`; an id that is not 8 bytes
/// long (never seen in practice) is written as `hex:<bytes>` so it still round-trips.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayId(Vec<u8>);

/// Text that is not a replay id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a replay id (expected the decimal value of an 8-byte replay id)")]
pub struct ReplayIdParseError {
    text: String,
}

impl ReplayId {
    /// Wraps the bytes of a `replay_id` / `latest_replay_id` field.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        ReplayId(bytes.into())
    }

    /// The 8-byte big-endian form of `value`.
    pub fn from_u64(value: u64) -> Self {
        ReplayId(value.to_be_bytes().to_vec())
    }

    /// The bytes to put on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id's value when it has the usual 8-byte form.
    pub fn as_u64(&self) -> Option<u64> {
        <[u8; 8]>::try_from(self.0.as_slice())
            .ok()
            .map(u64::from_be_bytes)
    }

    /// Reads the text form written by [`fmt::Display`].
    pub fn parse(text: &str) -> Result<Self, ReplayIdParseError> {
        let trimmed = text.trim();
        let err = || ReplayIdParseError {
            text: text.to_owned(),
        };
        if let Some(hex) = trimmed.strip_prefix("hex:") {
            return hex::decode(hex).map(ReplayId).map_err(|_| err());
        }
        if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        trimmed
            .parse::<u64>()
            .map(Self::from_u64)
            .map_err(|_| err())
    }
}

impl fmt::Display for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_u64() {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "hex:{}", hex::encode(&self.0)),
        }
    }
}

/// Serialized as its text form (the decimal value), like the cursor key holds it.
impl serde::Serialize for ReplayId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ReplayId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ReplayId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_of_the_eight_bytes_round_trips() {
        let id = ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0x01, 0xe2, 0x40]);
        assert_eq!(id.to_string(), "123456");
        assert_eq!(ReplayId::parse("123456"), Ok(id));
        assert_eq!(
            ReplayId::parse(&u64::MAX.to_string()),
            Ok(ReplayId::from_u64(u64::MAX))
        );
    }

    #[test]
    fn other_lengths_round_trip_as_hex() {
        let id = ReplayId::from_bytes(vec![1, 2, 3]);
        assert_eq!(id.to_string(), "hex:010203");
        assert_eq!(ReplayId::parse("hex:010203"), Ok(id));
    }

    #[test]
    fn junk_is_refused() {
        for text in ["", "-1", "12a", "18446744073709551616", "hex:zz", " "] {
            assert!(ReplayId::parse(text).is_err(), "{text:?} parsed");
        }
    }
}
