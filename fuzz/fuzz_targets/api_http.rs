//! The API socket's HTTP parser on any bytes, whole or cut anywhere: what a local client
//! sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::http::{parse, parse_response, Parsed, MAX_HEAD};

const MAX_BODY: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data, MAX_BODY);
    // A prefix of a complete request is never a different request.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let (Parsed::Request(a), Parsed::Request(b)) = (&whole, parse(&data[..cut], MAX_BODY)) {
            assert_eq!(a, &b);
        }
    }
    match whole {
        Parsed::Request(r) => {
            assert!(r.body.len() <= MAX_BODY);
            assert!(r.path.starts_with('/'));
            assert!(!r.method.is_empty());
        }
        // Refusals are whole HTTP answers with a JSON error.
        Parsed::Refused(resp) => {
            let (status, body) = parse_response(&resp.to_bytes()).unwrap();
            assert!((400..600).contains(&status));
            assert!(body.starts_with("{\"error\":"));
        }
        // More bytes could still make a request only while the head is short enough.
        Parsed::Incomplete => assert!(data.len() <= MAX_HEAD + 4 + MAX_BODY),
    }
});
