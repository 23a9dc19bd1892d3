//! The durable record decoder on arbitrary bytes: a segment with a valid
//! header followed by the fuzzer's bytes, each chunk optionally wrapped in a
//! frame with correct checksums (so the payload decoder, not only the
//! checksum, is exercised). Recovery must never panic and must either
//! refuse with an error or open a store that answers sanely.

#![no_main]

#[path = "common/durable.rs"]
mod durable;
#[path = "../../tests/support/rng.rs"]
mod rng;
#[path = "../../tests/support/simfs.rs"]
mod simfs;

use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Chunk {
    framed: bool,
    bytes: Vec<u8>,
}

fuzz_target!(|chunks: Vec<Chunk>| {
    let mut seg = durable::segment_header(1);
    for c in &chunks {
        if c.framed {
            seg.extend_from_slice(&durable::frame(&c.bytes));
        } else {
            seg.extend_from_slice(&c.bytes);
        }
    }
    seg.resize(seg.len().max(4096), 0);
    let mut image = simfs::Image::default();
    image.dirs.insert(PathBuf::from("/"));
    image.dirs.insert(PathBuf::from(durable::DIR));
    image.files.insert(PathBuf::from("/data/00000001.seg"), seg);
    durable::open_and_probe(Arc::new(simfs::SimFs::from_image(&image)));
});
