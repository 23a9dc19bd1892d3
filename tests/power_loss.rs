//! Simulated power loss through `SimFs` (tests/support/simfs.rs).
//!
//! A scripted workload (tests/support/script.rs) runs once on a durable
//! store over `SimFs`, which takes a crash snapshot before every sync (and,
//! in the second test, before every step: write, allocate, sync, create,
//! rename, remove, directory sync). Each snapshot is turned into many disks
//! (unsynced writes kept / dropped / garbage at 512 B or 4 KiB, a prefix of
//! unsynced namespace changes kept), each disk is reopened, and the
//! recovered view must be the view after the acknowledged operations or
//! after the one that was running (S2–S5). Every recovered store must then
//! work: a retry takes over each in-flight record with a higher token, and
//! fresh tokens are above every token handed out before (S1 across restarts).
//! Some recoveries are crashed again at each of their own steps.
//!
//! `IDEMLOG_CRASH_VARIANTS` sets the damage variants per crash point
//! (default 800: about 100,000 crash states in ~35 s of a debug build).

#[path = "support/rng.rs"]
mod rng;
#[path = "support/script.rs"]
mod script;
#[path = "support/simfs.rs"]
mod simfs;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use idemlog::{Error, ManualClock, Outcome, Timestamp};
use script::{allowed, reopen, Recording, Seen, View};
use simfs::{Damage, Image, SimFs, Snapshot, SnapshotAt};

const DIR: &str = "/data";
const OPS: usize = 500;

fn variants() -> usize {
    if let Ok(n) = std::env::var("IDEMLOG_CRASH_VARIANTS") {
        return n.parse().expect("IDEMLOG_CRASH_VARIANTS must be a number");
    }
    800
}

/// Runs the script on a fresh `SimFs` taking snapshots at `at`, and closes
/// the store cleanly at the end (more snapshots).
fn record(at: SnapshotAt, seed: u64) -> (Recording, Vec<Snapshot>) {
    record_with_segment(at, seed, script::SEGMENT)
}

/// [`record`] with segments of `segment` bytes.
fn record_with_segment(at: SnapshotAt, seed: u64, segment: u64) -> (Recording, Vec<Snapshot>) {
    let fs = SimFs::new();
    let clock = ManualClock::new(Timestamp::from_millis(10_000));
    fs.snapshot_at(at);
    let config = script::config_with_segment(&clock, segment);
    let store = idemlog::Store::open_with_fs(DIR, config, Arc::new(fs.clone()))
        .expect("open a fresh directory");
    let rec = script::run(&store, &clock, &fs.mark, OPS, seed);
    drop(store);
    let snaps = fs.take_snapshots();
    (rec, snaps)
}

fn image_hash(image: &Image) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (path, bytes) in &image.files {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    *h.finalize().as_bytes()
}

#[derive(Debug, Default)]
struct Tally {
    crash_points: usize,
    crash_states: usize,
    distinct_images: usize,
    recovery_crash_states: usize,
    takeovers_checked: usize,
    violations: Vec<String>,
}

/// Opens one crash image, checks the recovered view, and (if `exercise`)
/// that the store works afterwards. Returns the snapshots of the recovery
/// when `crash_recovery` is set.
fn check_image(
    rec: &Recording,
    acked: usize,
    image: &Image,
    what: &str,
    exercise: bool,
    crash_recovery: bool,
    tally: &mut Tally,
) -> Vec<Snapshot> {
    let now = rec.clocks[acked.min(rec.clocks.len() - 1)];
    let fs = SimFs::from_image(image);
    if crash_recovery {
        fs.snapshot_at(SnapshotAt::EveryStep);
    }
    let (store, _clock, got) = match reopen(Path::new(DIR), Arc::new(fs.clone()), now) {
        Ok(x) => x,
        Err(e) => {
            tally.violations.push(format!(
                "{what}: recovery after {acked} acknowledged ops failed: {e}"
            ));
            return Vec::new();
        }
    };
    if !allowed(rec, acked, &got, now) {
        tally.violations.push(format!(
            "{what}: recovered view after {acked} acknowledged ops is neither view {acked} nor {}:\n got  {got:?}\n want {:?}",
            acked + 1,
            rec.views.get(acked)
        ));
        return Vec::new();
    }
    let snaps = if crash_recovery {
        fs.snapshot_at(SnapshotAt::Never);
        fs.take_snapshots()
    } else {
        Vec::new()
    };
    if exercise {
        exercise_recovered(&store, rec, acked, &got, what, tally);
    }
    // A crash, not a clean close: nothing more reaches this disk.
    fs.freeze();
    drop(store);
    snaps
}

/// S1 across restarts: every in-flight record is taken over by a retry
/// with its checkpoint and a token above every token that identity had;
/// an absent identity is acquired with a token above every token it had, so
/// a holder from before the crash stays fenced out. Then the store works.
fn exercise_recovered(
    store: &idemlog::Store,
    rec: &Recording,
    acked: usize,
    got: &View,
    what: &str,
    tally: &mut Tally,
) {
    let floor = rec.tokens[acked.min(rec.tokens.len() - 1)];
    for i in 0..script::IDENTITIES {
        let before = floor[i as usize];
        let key = script::key(i);
        match got.get(&i) {
            Some(Seen::InFlight {
                token,
                fingerprint,
                attempts,
                checkpoint,
                ..

            }) => match store.reserve(&key, fingerprint) {
                Ok(Outcome::Acquired(r)) => {
                    tally.takeovers_checked += 1;
                    if r.fencing_token() <= (*token).max(before)
                        || r.attempt() != attempts + 1
                        || r.recovered_checkpoint() != checkpoint.as_ref()
                    {
                        tally.violations.push(format!(
                            "{what}: takeover of {i} got token {} attempt {} checkpoint {:?}; before: token {token} (max {before}) attempt {attempts} checkpoint {checkpoint:?}",
                            r.fencing_token(),
                            r.attempt(),
                            r.recovered_checkpoint()
                        ));
                    }
                    let _ = r.into_lease();
                }
                other => tally
                    .violations
                    .push(format!("{what}: retry of in-flight {i} after reopen got {other:?}")),
            },
            Some(Seen::Completed { .. }) => {}
            None => match store.reserve(&key, &script::fingerprint(0)) {
                Ok(Outcome::Acquired(r)) if r.fencing_token() > before => {
                    let _ = r.complete(&b"after recovery"[..]);
                }
                other => tally.violations.push(format!(
                    "{what}: reserve of absent {i} after reopen got {other:?}, want a token above {before}"
                )),
            },
        }
    }
}

fn crash_all(
    rec: &Recording,
    snaps: &[Snapshot],
    per_point: usize,
    recovery_every: usize,
    tally: &mut Tally,
) {
    let mut seen = HashSet::new();
    for (p, snap) in snaps.iter().enumerate() {
        tally.crash_points += 1;
        let acked = snap.mark as usize;
        for (v, damage) in Damage::variants(per_point, p as u64).iter().enumerate() {
            let image = snap.damage(damage);
            tally.crash_states += 1;
            if !seen.insert(image_hash(&image)) {
                continue;
            }
            tally.distinct_images += 1;
            let what = format!("crash point {p} ({:?}), damage {v} {damage:?}", snap.step);
            let exercise = v % 4 == 0;
            let again = recovery_every > 0 && tally.distinct_images.is_multiple_of(recovery_every);
            let recovery_snaps = check_image(rec, acked, &image, &what, exercise, again, tally);
            // A second crash at each step of the recovery.
            for (q, rsnap) in recovery_snaps.iter().enumerate() {
                for (w, d) in Damage::variants(3, (p * 1000 + q) as u64)
                    .iter()
                    .enumerate()
                {
                    let image = rsnap.damage(d);
                    tally.crash_states += 1;
                    tally.recovery_crash_states += 1;
                    let what = format!(
                        "{what}, then recovery step {q} ({:?}) damage {w}",
                        rsnap.step
                    );
                    check_image(rec, acked, &image, &what, false, false, tally);
                }
            }
            if tally.violations.len() > 20 {
                return;
            }
        }
    }
}

fn report(name: &str, t: &Tally) {
    println!(
        "{name}: {} crash points, {} crash states checked ({} distinct images, {} during recovery), {} takeovers checked, {} violations",
        t.crash_points,
        t.crash_states,
        t.distinct_images,
        t.recovery_crash_states,
        t.takeovers_checked,
        t.violations.len()
    );
    for v in t.violations.iter().take(10) {
        println!("  VIOLATION {v}");
    }
}

#[test]
fn power_loss_at_every_sync_recovers_every_acknowledged_operation() {
    let (rec, snaps) = record(SnapshotAt::Syncs, 0xC0FFEE);
    assert!(snaps.len() > OPS / 4, "only {} syncs", snaps.len());
    let mut tally = Tally::default();
    crash_all(&rec, &snaps, variants(), 50, &mut tally);
    report("power loss at every sync", &tally);
    assert!(
        tally.violations.is_empty(),
        "{} violations",
        tally.violations.len()
    );
    assert!(tally.recovery_crash_states > 0);
}

/// With segments larger than a block, the syncing thread writes zeros
/// ahead of the log before its syncs; power loss at any sync loses nothing
/// acknowledged.
#[test]
fn power_loss_with_prefilled_segments_recovers_every_acknowledged_operation() {
    let (rec, snaps) = record_with_segment(SnapshotAt::Syncs, 0xF111, 64 << 10);
    // Fewer rolls than with 4 KiB segments, so fewer syncs.
    assert!(snaps.len() > OPS / 8, "only {} syncs", snaps.len());
    let mut tally = Tally::default();
    crash_all(&rec, &snaps, variants() / 4, 100, &mut tally);
    report("power loss with prefilled segments", &tally);
    assert!(
        tally.violations.is_empty(),
        "{} violations",
        tally.violations.len()
    );
}

#[test]
fn crash_at_every_step_of_writes_rolls_and_reclamation() {
    let (rec, snaps) = record(SnapshotAt::EveryStep, 0xBADD1E);
    let steps: HashSet<_> = snaps.iter().map(|s| format!("{:?}", s.step)).collect();
    for step in [
        "Write", "Sync", "Create", "Rename", "Remove", "SyncDir", "Allocate",
    ] {
        assert!(
            steps.contains(step),
            "the workload never reached a {step} step: {steps:?}"
        );
    }
    let mut tally = Tally::default();
    crash_all(&rec, &snaps, 12, 25, &mut tally);
    report("crash at every step", &tally);
    assert!(
        tally.violations.is_empty(),
        "{} violations",
        tally.violations.len()
    );
}

#[test]
fn simfs_damage_is_what_it_claims() {
    use idemlog::fs::FileSystem;
    let fs = SimFs::new();
    fs.create_dir_all(Path::new("/d")).unwrap();
    let f = fs.create(Path::new("/d/a")).unwrap();
    f.write_all_at(b"synced", 0).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(Path::new("/d")).unwrap();
    f.write_all_at(&[7u8; 1000], 6).unwrap();
    fs.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap();
    let snap = fs.snapshot_now(simfs::Step::Sync);
    assert_eq!(snap.pending(), (1, 1));
    let keep = snap.damage(&Damage {
        block: 512,
        keep: 100,
        garbage: 0,
        namespace_prefix: Some(9),
        seed: 1,
    });
    assert_eq!(keep.files.len(), 1);
    let b = &keep.files[Path::new("/d/b")];
    assert_eq!((&b[..6], b.len()), (&b"synced"[..], 1006));
    let lose = snap.damage(&Damage {
        block: 512,
        keep: 0,
        garbage: 0,
        namespace_prefix: Some(0),
        seed: 1,
    });
    assert_eq!(lose.files[Path::new("/d/a")], b"synced");
    let junk = snap.damage(&Damage {
        block: 512,
        keep: 0,
        garbage: 100,
        namespace_prefix: Some(0),
        seed: 1,
    });
    let a = &junk.files[Path::new("/d/a")];
    assert_eq!(
        &a[..6],
        b"synced",
        "garbage never touches synced bytes outside the write"
    );
    assert_ne!(&a[6..], &[7u8; 1000][..]);
    // Faults: the 2nd counted operation fails once.
    fs.set_fault(Some(simfs::Fault {
        nth: 2,
        errno: 28,
        persistent: false,
        syncs_only: false,
    }));
    assert!(f.write_all_at(b"x", 0).is_ok());
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(28));
    assert!(f.sync_data().is_ok());
    fs.freeze();
    assert!(f.write_all_at(b"x", 0).is_err());
    let _ = Error::Poisoned {
        cause: String::new(),
    };
}
