//! Recovery of an arbitrary directory image: files with fuzzed names
//! (segment-like, temporary, lock, other) and fuzzed contents, some starting
//! with a valid segment header. Opening never panics; it refuses with an
//! error or opens a store that answers sanely and keeps a new write.

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
enum Name {
    Segment(u8),
    Temp(u8),
    Lock,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
struct File {
    name: Name,
    header: bool,
    bytes: Vec<u8>,
}

fuzz_target!(|files: Vec<File>| {
    let mut image = simfs::Image::default();
    image.dirs.insert(PathBuf::from("/"));
    image.dirs.insert(PathBuf::from(durable::DIR));
    for f in files.iter().take(6) {
        let (name, id) = match f.name {
            Name::Segment(i) => (format!("{:08x}.seg", u32::from(i % 4)), u32::from(i % 4)),
            Name::Temp(i) => (
                format!("{:08x}.seg.tmp", u32::from(i % 4)),
                u32::from(i % 4),
            ),
            Name::Lock => ("LOCK".to_string(), 0),
            Name::Other(i) => (format!("other-{i}"), 0),
        };
        let mut bytes = if f.header {
            durable::segment_header(id)
        } else {
            Vec::new()
        };
        bytes.extend_from_slice(&f.bytes);
        image
            .files
            .insert(PathBuf::from(durable::DIR).join(name), bytes);
    }
    durable::open_and_probe(Arc::new(simfs::SimFs::from_image(&image)));
});
