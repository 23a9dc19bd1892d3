//! Torn and corrupted files. A small store (one 4 KiB segment, closed
//! cleanly so everything was synced) is damaged in every way below and
//! reopened; the recovered store must either
//! * refuse with a typed error (`Corrupt`, `NotIdemlogFile`,
//!   `UnsupportedFormatVersion`) — the damage was detected, or
//! * hold exactly the records it held before — the damage was harmless
//!   (in never-written space, or a torn tail that lost nothing), or
//! * for a truncation only, opened with `Config::repair`: hold the records
//!   of a prefix of the history, the longer the file the longer the prefix
//!   (without `repair` every truncation is detected: segments are created
//!   at full length, so a shorter one was cut by something else).
//!
//! Anything else — a record with other bytes, an invented record, a hole —
//! is served corruption and fails the test. Damage: truncation at every
//! byte offset, appended zeros and garbage, every single-bit flip in the
//! segment's written part (and its first never-written bytes), and random
//! overwrites in the middle of the file.

#[path = "support/rng.rs"]
mod rng;
#[path = "support/script.rs"]
mod script;
#[path = "support/simfs.rs"]
mod simfs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use idemlog::{Error, ManualClock, Timestamp};
use rng::Rng;
use script::{live_at, reopen, Recording, View};
use simfs::{Image, SimFs};

const DIR: &str = "/data";
/// Bytes of a sync-mark frame: 8 of length and checksum, 24 of payload, 4 of
/// checksum (docs/FORMAT.md).
const MARK_FRAME: usize = 36;

/// A cleanly closed one-segment store, its history and the segment path.
fn small_store() -> (Recording, Image, PathBuf, u64) {
    let fs = SimFs::new();
    let clock = ManualClock::new(Timestamp::from_millis(10_000));
    let store = idemlog::Store::open_with_fs(DIR, script::config(&clock), Arc::new(fs.clone()))
        .expect("open");
    let rec = script::run(&store, &clock, &fs.mark, 40, 0x5EED);
    drop(store);
    let image = fs.current_image();
    let segs: Vec<_> = image
        .files
        .keys()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .cloned()
        .collect();
    assert_eq!(segs.len(), 1, "the history must fit one segment: {segs:?}");
    let now = *rec.clocks.last().expect("clock");
    (rec, image, segs[0].clone(), now)
}

#[derive(Debug)]
enum Verdict {
    Detected,
    Same,
    Prefix(usize),
    Served(String),
}

fn judge(rec: &Recording, image: &Image, now: u64) -> Verdict {
    judge_with(rec, image, now, false)
}

/// [`judge`], opening with `Config::repair` when `repair`.
fn judge_with(rec: &Recording, image: &Image, now: u64, repair: bool) -> Verdict {
    let full = live_at(rec.views.last().expect("views"), now);
    let fs = Arc::new(SimFs::from_image(image));
    let opened = if repair {
        let clock = ManualClock::new(Timestamp::from_millis(now));
        let mut config = script::config(&clock);
        config.repair = true;
        idemlog::Store::open_with_fs(Path::new(DIR), config, fs)
            .and_then(|store| script::view(&store))
    } else {
        reopen(Path::new(DIR), fs, now).map(|(_, _, got)| got)
    };
    match opened {
        Err(
            Error::Corrupt { .. }
            | Error::NotIdemlogFile { .. }
            | Error::UnsupportedFormatVersion { .. },
        ) => Verdict::Detected,
        Err(e) => Verdict::Served(format!("an untyped failure: {e}")),
        Ok(got) if got == full => Verdict::Same,
        Ok(got) => match (0..rec.views.len())
            .rev()
            .find(|&m| live_at(&rec.views[m], now) == got)
        {
            Some(m) => Verdict::Prefix(m),
            None => Verdict::Served(format!("a view that never existed: {got:?}")),
        },
    }
}

fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

#[derive(Default, Debug)]
struct Count {
    cases: usize,
    detected: usize,
    harmless: usize,
    prefix: usize,
}

fn tally(c: &mut Count, v: &Verdict, what: &str, prefix_ok: bool, problems: &mut Vec<String>) {
    c.cases += 1;
    match v {
        Verdict::Detected => c.detected += 1,
        Verdict::Same => c.harmless += 1,
        Verdict::Prefix(_) if prefix_ok => c.prefix += 1,
        Verdict::Prefix(m) => {
            problems.push(format!("{what}: silently lost everything after op {m}"))
        }
        Verdict::Served(s) => problems.push(format!("{what}: served {s}")),
    }
}

#[test]
fn truncation_at_every_offset_is_detected_and_repair_keeps_a_prefix() {
    let (rec, image, seg, now) = small_store();
    let bytes = image.files[&seg].clone();
    let end = data_end(&bytes);
    let (mut c, mut problems) = (Count::default(), Vec::new());
    let (mut repaired, mut last_prefix) = (Count::default(), 0);
    for cut in 0..=bytes.len() {
        let mut damaged = image.clone();
        damaged.files.insert(seg.clone(), bytes[..cut].to_vec());
        let v = judge(&rec, &damaged, now);
        let whole = cut == bytes.len();
        if whole != matches!(v, Verdict::Same) || !whole && !matches!(v, Verdict::Detected) {
            problems.push(format!("cut at {cut} of {}: {v:?}", bytes.len()));
        }
        tally(&mut c, &v, &format!("cut at {cut}"), false, &mut problems);

        // With repair the records before the cut are kept.
        let v = judge_with(&rec, &damaged, now, true);
        if let Verdict::Prefix(m) = v {
            if m < last_prefix {
                problems.push(format!(
                    "repair, cut at {cut}: prefix {m} shorter than at a shorter cut ({last_prefix})"
                ));
            }
            last_prefix = m;
        }
        if cut >= end && !matches!(v, Verdict::Same) {
            problems.push(format!(
                "repair, cut at {cut}, past every written byte ({end}): {v:?}"
            ));
        }
        tally(
            &mut repaired,
            &v,
            &format!("repair, cut at {cut}"),
            true,
            &mut problems,
        );
    }
    println!(
        "truncation: {c:?}; with repair: {repaired:?} (data ends at {end} of {})",
        bytes.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(c.detected, bytes.len());
    assert!(repaired.prefix > 0);
}

#[test]
fn appended_zeros_and_garbage_are_harmless_or_detected() {
    let (rec, image, seg, now) = small_store();
    let bytes = image.files[&seg].clone();
    let mut rng = Rng::new(7);
    let (mut c, mut problems) = (Count::default(), Vec::new());
    for n in [1usize, 7, 8, 12, 512, 4096] {
        for garbage in [false, true] {
            let mut tail = vec![0u8; n];
            if garbage {
                rng.fill(&mut tail);
            }
            let mut damaged = image.clone();
            let mut b = bytes.clone();
            b.extend_from_slice(&tail);
            damaged.files.insert(seg.clone(), b);
            let v = judge(&rec, &damaged, now);
            tally(
                &mut c,
                &v,
                &format!("{n} appended bytes (garbage {garbage})"),
                false,
                &mut problems,
            );
        }
    }
    println!("appended bytes: {c:?}");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_single_bit_flip_is_detected_or_harmless() {
    let (rec, image, seg, now) = small_store();
    let bytes = image.files[&seg].clone();
    let end = (data_end(&bytes) + 16).min(bytes.len());
    let (mut c, mut problems) = (Count::default(), Vec::new());
    for at in 0..end {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            let mut damaged = image.clone();
            damaged.files.insert(seg.clone(), b);
            let v = judge(&rec, &damaged, now);
            tally(
                &mut c,
                &v,
                &format!("bit {bit} of byte {at}"),
                false,
                &mut problems,
            );
        }
    }
    println!("single-bit flips: {c:?} over {end} bytes");
    assert!(
        problems.is_empty(),
        "{} problems: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert!(c.detected > c.cases / 2, "{c:?}");
}

#[test]
fn random_overwrites_mid_file_are_detected_or_harmless() {
    let (rec, image, seg, now) = small_store();
    let bytes = image.files[&seg].clone();
    let end = data_end(&bytes);
    let mut rng = Rng::new(11);
    let (mut c, mut problems) = (Count::default(), Vec::new());
    for trial in 0..3_000 {
        let mut b = bytes.clone();
        let len = 1 + rng.below(64) as usize;
        let at = rng.below((end - len) as u64) as usize;
        if trial % 2 == 0 {
            rng.fill(&mut b[at..at + len]);
        } else {
            b[at..at + len].fill(0);
        }
        let mut damaged = image.clone();
        damaged.files.insert(seg.clone(), b);
        let v = judge(&rec, &damaged, now);
        // Damage that also destroys the final sync mark (the last
        // MARK_FRAME bytes written) looks exactly like a torn tail: the
        // frames it covered are cut. Anywhere else a cut is a failure.
        let hits_last_mark = at + len > end - MARK_FRAME;
        tally(
            &mut c,
            &v,
            &format!("trial {trial}: {len} bytes at {at}"),
            hits_last_mark,
            &mut problems,
        );
    }
    println!("random overwrites: {c:?}");
    assert!(
        problems.is_empty(),
        "{} problems: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

#[test]
fn a_damaged_view_check_would_catch_served_corruption() {
    // The oracle itself: a view that differs from every recorded one is
    // reported as served corruption.
    let (rec, _, _, now) = small_store();
    let mut forged: View = live_at(rec.views.last().expect("views"), now);
    let Some(seen) = forged.values_mut().next() else {
        panic!("the history left no record")
    };
    if let script::Seen::Completed { response, .. } = seen {
        *response = idemlog::Bytes::from_static(b"forged");
    } else if let script::Seen::InFlight { token, .. } = seen {
        *token += 1;
    }
    assert!((0..rec.views.len()).all(|m| live_at(&rec.views[m], now) != forged));
}
