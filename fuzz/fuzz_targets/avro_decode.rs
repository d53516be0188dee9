//! `pubsub::avro::decode` of arbitrary payloads against the event schemas the project ships
//! (`OrderProvisionRequested__e` v1 and v2, `sandbox::order_event_schema_v*`) and a wider schema
//! with every type the decoder converts. The first byte picks the schema; the rest is the
//! payload. Whatever decodes must re-encode with `avro::encode` and decode again to the same
//! fields.
#![no_main]
use std::sync::OnceLock;

use apache_avro::Schema;
use fulfilld::pubsub::avro;
use libfuzzer_sys::fuzz_target;

/// Every Avro type `decode` turns into JSON, nested; not a shipped schema.
const WIDE: &str = r#"{"type":"record","name":"Wide","namespace":"fuzz","fields":[
  {"name":"b","type":"boolean"},
  {"name":"i","type":"int"},
  {"name":"l","type":"long"},
  {"name":"f","type":"float"},
  {"name":"d","type":"double"},
  {"name":"s","type":"string"},
  {"name":"by","type":"bytes"},
  {"name":"fx","type":{"type":"fixed","name":"F4","size":4}},
  {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}},
  {"name":"a","type":{"type":"array","items":"long"}},
  {"name":"m","type":{"type":"map","values":["null","string"]}},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"u","type":["null","string","long"],"default":null},
  {"name":"r","type":{"type":"record","name":"Inner","fields":[
    {"name":"x","type":["null","double"],"default":null},
    {"name":"ys","type":{"type":"array","items":"string"}}]}}
]}"#;

fn schemas() -> &'static [(Schema, bool)] {
    static SCHEMAS: OnceLock<Vec<(Schema, bool)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        [
            (fulfilld::sandbox::order_event_schema_v1(), true),
            (fulfilld::sandbox::order_event_schema_v2(), true),
            (WIDE, false),
        ]
        .into_iter()
        .map(|(text, shipped)| (avro::parse_schema(text).expect("schema parses"), shipped))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let schemas = schemas();
    let (schema, shipped) = &schemas[usize::from(pick) % schemas.len()];
    let Ok(fields) = avro::decode(schema, payload) else {
        return;
    };
    match avro::encode(schema, &fields) {
        Ok(bytes) => {
            let again = avro::decode(schema, &bytes).expect("re-encoded fields decode");
            assert_eq!(again, fields, "decode(encode(decode(x))) != decode(x)");
        }
        // The shipped schemas use only types `encode` writes: what decoded must encode.
        Err(err) => assert!(!shipped, "decoded fields do not re-encode: {err}"),
    }
});
