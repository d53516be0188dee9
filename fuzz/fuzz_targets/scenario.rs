//! `testkit::scenario::Scenario::parse` on arbitrary text (a scenario file, as `fulfilld test`
//! and a deploy's shipped suite read it); what parses is loaded the way `Scenario::seed` loads
//! it: its `[schema]` declarations into the shipped schema, its records into a fake org, its
//! WHMCS data into a fake WHMCS, and its injections validated.
#![no_main]
use std::sync::OnceLock;

use fulfilld::fake::{FakeOrg, FakeWhmcs};
use fulfilld::testkit::scenario::{Scenario, apply_schema, seed_org, seed_whmcs};
use libfuzzer_sys::fuzz_target;

/// The shipped schema, parsed once (`FakeOrg::new` reads the package's metadata XML).
fn empty_org() -> &'static FakeOrg {
    static ORG: OnceLock<FakeOrg> = OnceLock::new();
    ORG.get_or_init(FakeOrg::new)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scenario) = Scenario::parse(text) else {
        return;
    };
    assert!(!scenario.runs.is_empty());
    let mut org = empty_org().clone();
    if apply_schema(&scenario.schema, &mut org).is_ok() {
        let _ = seed_org(&scenario.org, &mut org);
    }
    let mut whmcs = FakeWhmcs::new();
    seed_whmcs(&scenario.whmcs, &mut whmcs);
});
