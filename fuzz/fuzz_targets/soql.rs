//! The fake org's SOQL: `FakeOrg::query` parses arbitrary text with `fake::soql::parse` and runs
//! what parses against an org seeded with the shipped scenario data (tests/scenarios/_seed.toml:
//! orders, items, products, accounts), so both the parser and the evaluator (filters, `LIKE`,
//! relationship paths, subqueries, `ORDER BY`, `LIMIT`) see the input.
#![no_main]
use std::sync::OnceLock;

use fulfilld::fake::FakeOrg;
use fulfilld::testkit::scenario::{Scenario, apply_schema, seed_org};
use libfuzzer_sys::fuzz_target;

fn org() -> &'static FakeOrg {
    static ORG: OnceLock<FakeOrg> = OnceLock::new();
    ORG.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scenarios/happy-path.toml"
        );
        let scenario = Scenario::load(std::path::Path::new(path)).expect("the seed scenario loads");
        let mut org = FakeOrg::new();
        apply_schema(&scenario.schema, &mut org).expect("its schema applies");
        seed_org(&scenario.org, &mut org).expect("its records load");
        org
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(soql) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(answer) = org().query(soql) {
        assert!(
            answer.get("records").is_some_and(|r| r.is_array()),
            "{answer}"
        );
    }
});
