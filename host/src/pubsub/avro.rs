//! Avro payloads of platform events: decoding with the event's own writer schema into JSON fields,
//! and the inverse (used by the sandbox and tests to publish).
//!
//! Payloads are single Avro binary datums with no container header. Every byte must be consumed:
//! decoding with the wrong schema often "succeeds" on a prefix, and the leftover bytes are what
//! give it away. And no read may run past the end: the Avro reader takes the end of input as a
//! zero (a union's null branch, an empty string), so a truncated payload would otherwise decode
//! with its missing fields as null.

use std::io::{Cursor, Read};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{RecordSchema, UnionSchema};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// A payload that cannot be read as one record of its writer schema. The Avro error is left to
/// `source()`: show it with [`crate::error::chain`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the Avro payload does not match its writer schema")]
    Malformed(#[source] apache_avro::Error),
    #[error(
        "the Avro payload has {trailing} bytes of trailing data after the record (wrong writer schema?)"
    )]
    TrailingData { trailing: usize },
    #[error(
        "the Avro payload ends before its record does ({len} bytes; truncated, or the wrong writer schema?)"
    )]
    Truncated { len: usize },
    #[error("the writer schema is not a record schema")]
    NotARecord,
}

/// Compared by variant, and a malformed payload by its message (the Avro error is not
/// comparable); tests compare decode results.
impl PartialEq for DecodeError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DecodeError::Malformed(a), DecodeError::Malformed(b)) => {
                a.to_string() == b.to_string()
            }
            (
                DecodeError::TrailingData { trailing: a },
                DecodeError::TrailingData { trailing: b },
            ) => a == b,
            (DecodeError::Truncated { len: a }, DecodeError::Truncated { len: b }) => a == b,
            (DecodeError::NotARecord, DecodeError::NotARecord) => true,
            _ => false,
        }
    }
}

/// A value that cannot be written with a schema.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// `reason` says how the value does not fit (a nested record's own `EncodeError` included).
    #[error("cannot encode field {field:?} with the schema: {reason}")]
    Field { field: String, reason: String },
    /// The Avro writer refused the record.
    #[error("cannot encode field \"\" with the schema")]
    Write(#[source] apache_avro::Error),
}

/// A schema text that is not a usable Avro record schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid Avro schema")]
    Parse(#[source] apache_avro::Error),
    #[error("invalid Avro schema: the schema is not a record")]
    NotARecord,
    /// A record that refers to itself, directly or through other types.
    #[error(
        "invalid Avro schema: record {0} refers to itself (recursive schemas are not supported)"
    )]
    Recursive(String),
}

/// Parses a schema as GetSchema returns it (`schema_json`).
pub fn parse_schema(json: &str) -> Result<Schema, SchemaError> {
    let schema = Schema::parse_str(json).map_err(SchemaError::Parse)?;
    if !matches!(schema, Schema::Record(_)) {
        return Err(SchemaError::NotARecord);
    }
    match recursive_record(&schema, &mut Vec::new()) {
        Some(name) => Err(SchemaError::Recursive(name)),
        None => Ok(schema),
    }
}

/// The full name of a record that refers to itself, directly or through other types. The
/// decoder follows a schema by recursion, and a record that must contain itself (a field of
/// type `R` inside `R`) never ends: it overflowed the stack (found by the `avro_schema` fuzz
/// target, docs/fuzzing.md). Platform event schemas are flat, so every recursive schema is
/// refused. `open` holds the records being walked.
fn recursive_record(schema: &Schema, open: &mut Vec<String>) -> Option<String> {
    match schema {
        Schema::Ref { name } => {
            let name = name.fullname(None);
            open.contains(&name).then_some(name)
        }
        Schema::Record(record) => {
            open.push(record.name.fullname(None));
            let found = record
                .fields
                .iter()
                .find_map(|field| recursive_record(&field.schema, open));
            open.pop();
            found
        }
        Schema::Array(array) => recursive_record(&array.items, open),
        Schema::Map(map) => recursive_record(&map.types, open),
        Schema::Union(union) => union
            .variants()
            .iter()
            .find_map(|branch| recursive_record(branch, open)),
        _ => None,
    }
}

/// Decodes one event payload into its fields, in schema order. Unions (`["null", T]`) become
/// their value or JSON null; longs stay integers; bytes and fixed become base64 text.
pub fn decode(schema: &Schema, payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let mut reader = EndGuard {
        inner: Cursor::new(payload),
        ran_out: false,
    };
    let value = GenericDatumReader::builder(schema)
        .build()
        .and_then(|datum| datum.read_value(&mut reader))
        .map_err(DecodeError::Malformed)?;
    // The reader "succeeded" only by reading past the end (an error it raised stands, with its
    // cause, above).
    if reader.ran_out {
        return Err(DecodeError::Truncated { len: payload.len() });
    }
    let consumed = usize::try_from(reader.inner.position()).unwrap_or(usize::MAX);
    if consumed < payload.len() {
        return Err(DecodeError::TrailingData {
            trailing: payload.len() - consumed,
        });
    }
    match to_json(value) {
        Value::Object(fields) => Ok(fields),
        _ => Err(DecodeError::NotARecord),
    }
}

/// The payload reader, noting any read that found nothing left (a read past the end).
struct EndGuard<'a> {
    inner: Cursor<&'a [u8]>,
    ran_out: bool,
}

impl Read for EndGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read < buf.len() {
            self.ran_out = true;
        }
        Ok(read)
    }
}

fn to_json(value: Avro) -> Value {
    match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => Value::from(n),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => Value::from(n),
        Avro::Float(x) => Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number),
        Avro::Double(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Uuid(uuid) => Value::String(uuid.to_string()),
        Avro::Union(_, inner) => to_json(*inner),
        Avro::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Avro::Map(entries) => {
            let mut sorted: Vec<_> = entries.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(sorted.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        Avro::Record(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        other => Value::String(format!("{other:?}")),
    }
}

/// Encodes JSON fields as one record of `schema`. Missing fields take the schema's default
/// (null for Salesforce's optional custom fields).
pub fn encode(schema: &Schema, fields: &Map<String, Value>) -> Result<Vec<u8>, EncodeError> {
    let Schema::Record(record) = schema else {
        return Err(EncodeError::Field {
            field: String::new(),
            reason: "the schema is not a record".into(),
        });
    };
    let value = record_value(record, fields)?;
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|datum| datum.write_value_to_vec(value))
        .map_err(EncodeError::Write)
}

fn record_value(record: &RecordSchema, fields: &Map<String, Value>) -> Result<Avro, EncodeError> {
    let mut out = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let json = match fields.get(&field.name) {
            Some(v) => v.clone(),
            None => field.default.clone().unwrap_or(Value::Null),
        };
        let value = json_to_avro(&field.schema, &json).map_err(|reason| EncodeError::Field {
            field: field.name.clone(),
            reason,
        })?;
        out.push((field.name.clone(), value));
    }
    Ok(Avro::Record(out))
}

fn json_to_avro(schema: &Schema, json: &Value) -> Result<Avro, String> {
    let mismatch = || format!("{json} does not fit {schema:?}");
    Ok(match schema {
        Schema::Null if json.is_null() => Avro::Null,
        Schema::Boolean => Avro::Boolean(json.as_bool().ok_or_else(mismatch)?),
        Schema::Int => Avro::Int(
            json.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(mismatch)?,
        ),
        Schema::Long => Avro::Long(json.as_i64().ok_or_else(mismatch)?),
        Schema::TimestampMillis => Avro::TimestampMillis(json.as_i64().ok_or_else(mismatch)?),
        Schema::Float => Avro::Float(json.as_f64().ok_or_else(mismatch)? as f32),
        Schema::Double => Avro::Double(json.as_f64().ok_or_else(mismatch)?),
        Schema::String => Avro::String(json.as_str().ok_or_else(mismatch)?.to_owned()),
        Schema::Union(union) => union_value(union, json)?,
        Schema::Record(record) => match json {
            Value::Object(fields) => record_value(record, fields).map_err(|e| e.to_string())?,
            _ => return Err(mismatch()),
        },
        Schema::Array(array) => match json {
            Value::Array(items) => Avro::Array(
                items
                    .iter()
                    .map(|item| json_to_avro(&array.items, item))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(mismatch()),
        },
        _ => return Err(mismatch()),
    })
}

fn union_value(union: &UnionSchema, json: &Value) -> Result<Avro, String> {
    let mut last_err = format!("{json} fits no branch of the union");
    for (index, branch) in union.variants().iter().enumerate() {
        let index = u32::try_from(index).map_err(|err| err.to_string())?;
        if json.is_null() != matches!(branch, Schema::Null) {
            continue;
        }
        match json_to_avro(branch, json) {
            Ok(value) => return Ok(Avro::Union(index, Box::new(value))),
            Err(err) => last_err = err,
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[
        {"name":"CreatedDate","type":"long"},
        {"name":"CreatedById","type":"string"},
        {"name":"OrderId__c","type":["null","string"],"default":null}]}"#;

    fn fields(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn round_trips_a_platform_event() {
        let schema = parse_schema(V1).unwrap();
        let event = fields(serde_json::json!({
            "CreatedDate": 1_764_000_000_000_i64,
            "CreatedById": "005xx0000012345AAA",
            "OrderId__c": "801xx000003DIloAAG"
        }));
        let bytes = encode(&schema, &event).unwrap();
        assert_eq!(decode(&schema, &bytes).unwrap(), event);
    }

    #[test]
    fn missing_optional_fields_decode_as_null() {
        let schema = parse_schema(V1).unwrap();
        let bytes = encode(
            &schema,
            &fields(serde_json::json!({"CreatedDate": 1, "CreatedById": "005"})),
        )
        .unwrap();
        assert_eq!(decode(&schema, &bytes).unwrap()["OrderId__c"], Value::Null);
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        let schema = parse_schema(V1).unwrap();
        let mut bytes = encode(
            &schema,
            &fields(serde_json::json!({"CreatedDate": 1, "CreatedById": "005"})),
        )
        .unwrap();
        bytes.push(0);
        assert_eq!(
            decode(&schema, &bytes),
            Err(DecodeError::TrailingData { trailing: 1 })
        );
        assert!(matches!(
            decode(&schema, &[0xff, 0xff, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_truncated_payload_is_an_error_at_every_length() {
        let schema = parse_schema(V1).unwrap();
        for event in [
            serde_json::json!({"CreatedDate": 1_764_000_000_000_i64, "CreatedById": "005xx0000012345AAA", "OrderId__c": "801xx000003DIloAAG"}),
            serde_json::json!({"CreatedDate": 1, "CreatedById": "005"}),
        ] {
            let bytes = encode(&schema, &fields(event)).unwrap();
            assert!(decode(&schema, &bytes).is_ok());
            for len in 0..bytes.len() {
                let result = decode(&schema, &bytes[..len]);
                assert!(
                    matches!(
                        result,
                        Err(DecodeError::Truncated { .. } | DecodeError::Malformed(_))
                    ),
                    "{len} of {} bytes decoded: {result:?}",
                    bytes.len()
                );
            }
        }
        // The reproduced case: the last field's union index cut off reads as null without the guard.
        let bytes = encode(
            &schema,
            &fields(
                serde_json::json!({"CreatedDate": 1, "CreatedById": "005", "OrderId__c": "801"}),
            ),
        )
        .unwrap();
        let cut = bytes.len() - 5; // the union index (1 byte), the length (1) and "801" (3)
        assert_eq!(
            decode(&schema, &bytes[..cut]),
            Err(DecodeError::Truncated { len: cut })
        );
    }

    #[test]
    fn the_avro_error_is_kept_as_the_cause() {
        let schema = parse_schema(V1).unwrap();
        let err = decode(&schema, &[0xff, 0xff, 0xff]).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(cause.is_some_and(|c| !c.is_empty()), "{err:?}");
        assert!(
            crate::error::chain(&err)
                .starts_with("the Avro payload does not match its writer schema: "),
            "{err:?}"
        );
    }

    /// Found by the `avro_schema` fuzz target: decoding with a record that must contain itself
    /// recursed until the stack overflowed (SIGSEGV), on any payload.
    #[test]
    fn recursive_schemas_are_refused() {
        for (schema, record) in [
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"R"}]}"#,
                "R",
            ),
            (
                r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":["null","R"]}]}"#,
                "n.R",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"record","name":"S","fields":[{"name":"r","type":{"type":"array","items":"R"}}]}}]}"#,
                "R",
            ),
        ] {
            match parse_schema(schema) {
                Err(SchemaError::Recursive(name)) => assert_eq!(name, record, "{schema}"),
                other => panic!("{schema}: {other:?}"),
            }
        }
        // A named type used twice is not recursion.
        let twice = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":{"type":"record","name":"S","fields":[{"name":"x","type":"long"}]}},
            {"name":"b","type":"S"}]}"#;
        assert!(parse_schema(twice).is_ok());
        assert!(parse_schema(V1).is_ok());
    }

    #[test]
    fn non_record_schemas_are_refused() {
        assert!(parse_schema(r#""string""#).is_err());
        assert!(parse_schema("{").is_err());
    }
}
