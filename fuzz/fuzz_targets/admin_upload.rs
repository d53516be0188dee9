//! The admin API's deploy upload: `pipeline::read_upload` reads a `multipart/form-data` body the
//! way `POST /admin/components` does (axum's `Multipart`, then the `component`, `signature` and
//! `scenario` parts). The first line of the input is the `Content-Type` header, the rest the
//! body. What an accepted upload holds came from the body, so it is never larger than it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return;
    };
    let upload = futures::executor::block_on(fulfilld::pipeline::read_upload(
        content_type.trim_end_matches('\r'),
        body.to_vec(),
    ));
    if let Ok(submission) = upload {
        let scenarios: usize = submission.scenarios.iter().map(|(_, s)| s.len()).sum();
        let signature = submission.signature.as_ref().map_or(0, String::len);
        assert!(submission.wasm.len() + scenarios <= body.len());
        assert!(
            signature <= body.len() * 3,
            "lossy UTF-8 at most triples the bytes"
        );
    }
});
