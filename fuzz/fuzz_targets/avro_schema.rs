//! `pubsub::avro::parse_schema` on arbitrary text (the `schema_json` GetSchema returns), and
//! `decode` with each schema it accepts over a few small fixed payloads.
#![no_main]
use fulfilld::pubsub::avro;
use libfuzzer_sys::fuzz_target;

const PAYLOADS: [&[u8]; 3] = [b"", &[0; 16], &[2; 16]];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(schema) = avro::parse_schema(text) else {
        return;
    };
    for payload in PAYLOADS {
        let _ = avro::decode(&schema, payload);
    }
});
