//! `StoredResponse::decode` on arbitrary bytes never panics, and whatever it
//! accepts encodes back to the same bytes; a response built from the input
//! survives encode → decode unchanged.

#![no_main]

use arbitrary::Arbitrary;
use idemlog::StoredResponse;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    raw: Vec<u8>,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Ok(decoded) = StoredResponse::decode(&input.raw) {
        assert_eq!(
            &decoded.encode()[..],
            &input.raw[..],
            "decode accepted bytes that do not encode back to themselves"
        );
    }
    let built = StoredResponse {
        status: input.status,
        headers: input.headers,
        body: input.body,
    };
    let bytes = built.encode();
    let back = StoredResponse::decode(&bytes).expect("encoded responses decode");
    assert_eq!(back, built);
});
