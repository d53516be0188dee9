//! `ReplayId::parse` on arbitrary text. Whatever it accepts must round-trip through its text
//! form (the form the store keeps under the cursor key) to the same bytes.
#![no_main]
use fulfilld::domain::ReplayId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = ReplayId::parse(text) else {
        return;
    };
    let shown = id.to_string();
    let again = ReplayId::parse(&shown).expect("the text form of a parsed replay id parses");
    assert_eq!(again, id, "{text:?} -> {shown:?} does not round-trip");
    assert_eq!(again.to_string(), shown);
    // The serde form is the same text.
    let json = serde_json::to_string(&id).expect("a replay id serializes");
    let back: ReplayId = serde_json::from_str(&json).expect("its JSON form deserializes");
    assert_eq!(back, id);
});
