//! `salesforce::rest::classify_error(status, body)`, which turns a non-2xx Salesforce REST
//! answer into a `CallError`: the first two bytes are the HTTP status (big endian), the rest the
//! body. 429 and 5xx must stay `http-status` (retried), with the status as the code.
#![no_main]
use fulfilld::error::ErrorKind;
use fulfilld::salesforce::rest::classify_error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status);
    let err = classify_error(status, body);
    if status == 429 || status >= 500 {
        assert_eq!(err.kind, ErrorKind::HttpStatus, "HTTP {status}: {err:?}");
    }
    if err.kind == ErrorKind::HttpStatus {
        assert_eq!(err.code, status.to_string());
    }
    assert!(
        !err.message.is_empty() || err.kind == ErrorKind::Rejected,
        "{err:?}"
    );
});
