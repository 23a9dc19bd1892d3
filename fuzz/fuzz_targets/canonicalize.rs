//! `canonicalize` on arbitrary bytes: never panics, and its output is a fixed
//! point (canonical JSON canonicalizes to itself), so two spellings of one
//! JSON value always give one fingerprint.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(once) = idemlog::canonicalize(data) else {
        return;
    };
    let twice = idemlog::canonicalize(&once).unwrap_or_else(|e| {
        panic!(
            "canonical output {:?} is rejected when canonicalized again: {e}",
            String::from_utf8_lossy(&once)
        )
    });
    assert_eq!(
        once,
        twice,
        "not idempotent: {:?} -> {:?}",
        String::from_utf8_lossy(&once),
        String::from_utf8_lossy(&twice)
    );
    // The fingerprint of a value does not depend on its spelling.
    let a = idemlog::Fingerprint::of_json(data).expect("accepted by canonicalize");
    let b = idemlog::Fingerprint::of_json(&once).expect("canonical output is JSON");
    assert_eq!(a, b, "fingerprint changed after canonicalization");
});
