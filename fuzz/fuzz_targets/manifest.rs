//! The component manifest: `Manifest::parse` on the input as text, and the custom-section
//! reader on the input as a `.wasm` (`manifest::embedded`, `manifest::from_component`).
//! Round trips: a manifest that parses, embedded into a bare component, reads back as the same
//! text; a known-good manifest embedded into the input (when the input is walkable) reads back
//! too, whatever sections the input carried.
#![no_main]
use fulfilld::runtime::manifest::{self, Manifest};
use fulfilld::runtime::policy::CapabilityPolicy;
use libfuzzer_sys::fuzz_target;

/// The component-model preamble: a component with no sections.
const BARE_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

const SHIPPED: &str = include_str!("../../components/fulfillment/component.toml");

fuzz_target!(|data: &[u8]| {
    let _ = manifest::from_component(data);
    if let Ok(Some(text)) = manifest::embedded(data) {
        let _ = Manifest::parse(text);
    }
    if let Ok(wasm) = manifest::embed(data, SHIPPED) {
        assert_eq!(manifest::embedded(&wasm).ok().flatten(), Some(SHIPPED));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = Manifest::parse(text) else {
        return;
    };
    let _ = parsed.excess(&CapabilityPolicy::default());
    let _ = parsed.policy();
    for key in parsed.config.keys() {
        let _ = parsed.config_value(key, None);
    }
    let wasm = manifest::embed(BARE_COMPONENT, text).expect("a parsed manifest embeds");
    assert_eq!(manifest::embedded(&wasm).ok().flatten(), Some(text));
    let again = manifest::from_component(&wasm).expect("the embedded manifest reads back");
    assert!(again.is_some());
});
