//! The capability policy: `CapabilityPolicy::from_toml` on the text before the first NUL byte
//! (a `FULFILLD_POLICY_FILE`), then `check_query` with the text after it (a component's SOQL),
//! under the parsed policy and under one that limits queries to `Order` and `OrderItem` (the
//! shipped component's), so the `FROM` scanner always runs. `check_update` and `check_billing`
//! get names taken from the query text.
#![no_main]
use std::collections::BTreeSet;

use fulfilld::error::ErrorKind;
use fulfilld::runtime::policy::CapabilityPolicy;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let (policy_bytes, soql_bytes) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let soql = String::from_utf8_lossy(soql_bytes);
    let limited = CapabilityPolicy {
        query: Some(BTreeSet::from(["Order".to_owned(), "OrderItem".to_owned()])),
        ..CapabilityPolicy::default()
    };
    if let Err(err) = limited.check_query(&soql) {
        assert_eq!(err.kind, ErrorKind::Forbidden, "{err:?}");
    }
    let Ok(text) = std::str::from_utf8(policy_bytes) else {
        return;
    };
    let Ok(policy) = CapabilityPolicy::from_toml(text) else {
        return;
    };
    if let Err(err) = policy.check_query(&soql) {
        assert_eq!(err.kind, ErrorKind::Forbidden, "{err:?}");
    }
    if policy.query.is_none() {
        assert!(policy.check_query(&soql).is_ok());
    }
    let mut words = soql.split_whitespace();
    let sobject = words.next().unwrap_or("Order");
    let fields: Map<String, Value> = words.map(|w| (w.to_owned(), Value::Null)).collect();
    let _ = policy.check_update(sobject, &fields);
    let _ = policy.check_billing(sobject);
    let _ = policy.allows_query(sobject);
});
