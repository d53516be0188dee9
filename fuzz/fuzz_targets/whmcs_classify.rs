//! `whmcs::classify_response(status, body)`: the first two bytes are the HTTP status (big
//! endian), the rest the body. Checks the documented contract: only a 2xx JSON object with
//! `result=success` is `Ok`, and every non-2xx status is an `http-status` error carrying it.
#![no_main]
use fulfilld::error::ErrorKind;
use fulfilld::whmcs::classify_response;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status);
    match classify_response(status, body) {
        Ok(json) => {
            assert!((200..300).contains(&status), "Ok for HTTP {status}");
            let result = json.get("result").and_then(Value::as_str);
            assert!(
                result.is_some_and(|r| r.eq_ignore_ascii_case("success")),
                "Ok without result=success: {json}"
            );
        }
        Err(err) if !(200..300).contains(&status) => {
            assert_eq!(err.kind, ErrorKind::HttpStatus, "HTTP {status}: {err:?}");
            assert_eq!(err.code, status.to_string());
        }
        Err(err) => assert!(
            matches!(err.kind, ErrorKind::Rejected | ErrorKind::BadResponse),
            "HTTP {status}: {err:?}"
        ),
    }
});
