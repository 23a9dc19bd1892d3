//! Memory and disk footprint: loads completed records into a store and
//! reports RAM per record (growth of the resident set / records), disk bytes
//! per record, and how long reopening takes.
//!
//! `cargo bench --bench footprint` loads 1 M records;
//! `cargo bench --bench footprint -- --records 10000000` (or
//! `IDEMLOG_FOOTPRINT_RECORDS=10000000`) loads 10 M. `--response-bytes N`
//! changes the stored response (default 300 B); `--store durable` measures
//! only the stores whose name contains `durable`. Results are also written to
//! `target/idemlog-bench/footprint.jsonl`.
//!
//! Each load row also times lookups of loaded keys on one thread: on a
//! quiet store, while another thread runs maintenance passes back to back
//! with nothing due, and while those passes each expire a slice of the
//! records (the load spreads expiries over [`EXPIRY_TICKS`] clock ticks, and
//! each pass moves the clock one tick on), as in a server whose oldest
//! records are always coming due: how long a request can wait behind the
//! expiry sweep.
//!
//! Then, for each store, a burst (`--no-burst` skips it): a fresh store is
//! loaded with the same number of records, of which one in
//! [`BURST_SURVIVOR_EVERY`] outlives the rest, and one thread looks up the
//! survivors while another runs the pass that expires the rest and the pass
//! after it (which gives the burst's memory back): the latency a request
//! sees while a store takes a burst's expiry.
//!
//! Then (`--no-deletion` skips it) `Sync` writes beside segment deletion:
//! the durable store, loaded and reopened with `Sync`, takes fresh `Sync`
//! pairs from several threads, timed on a quiet store and then while one
//! pass expires every loaded record and deletes the segments they filled.
//!
//! After those it measures the durable store's disk in steady state
//! under TTL churn (`--no-steady` skips it): the same number of records stays
//! live while old ones expire and maintenance gives their space back, which
//! is what a long-running server's data directory looks like.
//!
//! Last, what fresh memory costs this machine (`--no-fresh` skips it,
//! `--fresh-gib N` sets how much, default 4, at most half of what the
//! machine has available): one process writes once to
//! every 4 KiB page of memory it keeps, 256 MiB at a time, and reports the
//! time per page of each step. A store that grows (the in-memory store, a
//! log's page cache) pays this per page it fills; under a hypervisor the
//! price can change with how much the process has already taken.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idemlog::{
    Clock, Config, Durability, Fingerprint, ManualClock, Outcome, ReserveOptions, Store, Timestamp,
};

use common::{key_str, KeyGen, SCOPE};

/// A store to measure, on the bench's clock. `reopen` is `None` for stores
/// with nothing to reopen.
struct Subject {
    name: &'static str,
    open: fn(&Path, &ManualClock) -> idemlog::Result<Store>,
    reopen: Option<fn(&Path, &ManualClock) -> idemlog::Result<Store>>,
}

/// The TTL of loaded records. The clock only moves as the bench moves it,
/// so nothing expires until the expiring probe sets it past this.
const LOAD_TTL: Duration = Duration::from_secs(3600);

/// The load moves the clock one [`EXPIRY_TICK`] per `records / EXPIRY_TICKS`
/// records, so the expiring probe's passes each find about that many due,
/// spread over every shard.
const EXPIRY_TICKS: usize = 2000;

/// A whole second: the durable index keeps expiries in whole seconds.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// The bench's configuration: its clock, [`LOAD_TTL`], and no background
/// maintenance (the bench runs every pass itself).
fn config(clock: &ManualClock) -> idemlog::ConfigBuilder {
    Config::builder()
        .clock(clock.clone())
        .ttl(LOAD_TTL)
        .maintenance_interval(None)
}

/// The stores measured. The durable store loads with `Durability::None`
/// (one thread loading 1 M records with an fsync each would take hours; the
/// files are the same) and is reopened with the default `Sync`.
fn subjects() -> Vec<Subject> {
    vec![
        Subject {
            name: "idemlog in-memory",
            open: |_, clock| Ok(Store::in_memory(config(clock).build())),
            reopen: None,
        },
        Subject {
            name: "idemlog durable",
            open: |dir, clock| Store::open(dir, config(clock).durability(Durability::None).build()),
            reopen: Some(|dir, clock| Store::open(dir, config(clock).build())),
        },
    ]
}

struct Options {
    records: usize,
    response_bytes: usize,
    /// Set in the child process that measures one subject.
    subject: Option<usize>,
    /// `--store TEXT`: only stores whose name contains TEXT.
    only: Option<String>,
    /// `--no-steady`: skip the steady-state churn measurement.
    steady: bool,
    /// Set in the child process that measures the steady state.
    steady_child: bool,
    /// `--no-burst`: skip the burst measurement.
    burst: bool,
    /// Set in the child process that measures one subject's burst.
    burst_subject: Option<usize>,
    /// `--no-deletion`: skip the writes beside a pass that deletes segments.
    deletion: bool,
    /// Set in the child process that measures them.
    deletion_child: bool,
    /// GiB of fresh memory the last probe writes to; 0 (`--no-fresh`)
    /// skips it.
    fresh_gib: usize,
    /// Set in the child process that probes fresh memory.
    fresh_child: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.replace('_', "").parse::<usize>().ok())
    };
    let env_records = std::env::var("IDEMLOG_FOOTPRINT_RECORDS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok());
    Options {
        records: flag("--records").or(env_records).unwrap_or(1_000_000),
        response_bytes: flag("--response-bytes").unwrap_or(common::RESPONSE_LEN),
        subject: flag("--subject"),
        only: args
            .iter()
            .position(|a| a == "--store")
            .and_then(|i| args.get(i + 1))
            .cloned(),
        steady: !args.iter().any(|a| a == "--no-steady"),
        steady_child: args.iter().any(|a| a == "--steady-child"),
        burst: !args.iter().any(|a| a == "--no-burst"),
        burst_subject: flag("--burst-subject"),
        deletion: !args.iter().any(|a| a == "--no-deletion"),
        deletion_child: args.iter().any(|a| a == "--deletion-child"),
        fresh_gib: if args.iter().any(|a| a == "--no-fresh") {
            0
        } else {
            flag("--fresh-gib").unwrap_or(4)
        },
        fresh_child: args.iter().any(|a| a == "--fresh-child"),
    }
}

/// The fresh-memory probe writes memory it keeps in steps of this size.
const FRESH_STEP: usize = 256 << 20;
/// The unit of a first write: the kernel zeroes (and a hypervisor may have
/// to back) one page at a time.
const PAGE: usize = 4096;
/// A step whose pages cost this many times the first step's marks where
/// fresh memory got dearer.
const DEARER: f64 = 3.0;

/// Time per page of each [`FRESH_STEP`] of fresh memory, in order.
fn measure_fresh_memory(gib: usize) -> Vec<f64> {
    let steps = gib * (1 << 30) / FRESH_STEP;
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(steps);
    let mut us_per_page = Vec::with_capacity(steps);
    for _ in 0..steps {
        // Uninitialised, so each page's first write is the one timed; large
        // enough that the allocator maps it fresh from the kernel.
        let mut block: Vec<u8> = Vec::with_capacity(FRESH_STEP);
        let started = Instant::now();
        for page in block.spare_capacity_mut().chunks_mut(PAGE) {
            page[0].write(1);
        }
        let elapsed = started.elapsed();
        // The writes must happen although nothing reads them back.
        std::hint::black_box(&mut block);
        us_per_page.push(elapsed.as_secs_f64() * 1e6 / (FRESH_STEP / PAGE) as f64);
        held.push(block);
    }
    us_per_page
}

/// How much fresh memory was taken before a step cost [`DEARER`] times the
/// first, if one did.
fn cheap_bytes(us_per_page: &[f64]) -> Option<usize> {
    let first = *us_per_page.first()?;
    us_per_page
        .iter()
        .position(|us| *us > DEARER * first)
        .map(|step| step * FRESH_STEP)
}

fn fresh_one(opts: &Options, jsonl_path: &Path) {
    // Kept memory is not given back until the probe ends: take at most half
    // of what the machine has free, so the probe cannot push it into
    // swapping or the OOM killer.
    let gib = match common::available_memory_bytes() {
        Some(free) => {
            let fits = usize::try_from((free / 2) >> 30).unwrap_or(usize::MAX);
            if fits < opts.fresh_gib {
                println!(
                    "\nfresh memory: {} GiB asked, {fits} GiB taken (half of the {:.1} GiB available)",
                    opts.fresh_gib,
                    free as f64 / f64::from(1u32 << 30)
                );
            }
            opts.fresh_gib.min(fits)
        }
        None => opts.fresh_gib,
    };
    if gib == 0 {
        println!("\nfresh memory: skipped, less than 2 GiB available");
        return;
    }
    let us = measure_fresh_memory(gib);
    let (Some(first), Some(last)) = (us.first(), us.last()) else {
        return;
    };
    let steps: Vec<String> = us.iter().map(|u| format!("{u:.1}")).collect();
    let in_gib = |bytes: usize| bytes as f64 / f64::from(1u32 << 30);
    let cheap = cheap_bytes(&us);
    println!(
        "\nfresh memory: µs per first write to a 4 KiB page the process keeps, by {} MiB step up to {} GiB: {}",
        FRESH_STEP >> 20,
        gib,
        steps.join(" ")
    );
    match cheap {
        Some(bytes) => println!(
            "  the first {:.2} GiB cost {first:.2} µs a page; past that, steps cost over {DEARER}× as much \
             (the last {last:.2} µs, {:.1}×): a store that grows that far pays the dearer price per page",
            in_gib(bytes),
            last / first
        ),
        None => println!(
            "  every step cost under {DEARER}× the first ({first:.2} µs a page; the last {last:.2} µs)"
        ),
    }
    println!(
        "  (memory another process freed moments before can make more of it cheap: \
         run it on a quiet machine to read the machine's own figure)"
    );
    append_line(
        jsonl_path,
        &serde_json::json!({
            "system": "machine: fresh memory kept",
            "step_bytes": FRESH_STEP,
            "us_per_page_by_step": us,
            "cheap_bytes": cheap,
        }),
    );
}

struct Footprint {
    load_secs: f64,
    ram_bytes_per_record: Option<f64>,
    disk_bytes_per_record: f64,
    reopen_secs: Option<f64>,
    /// One maintenance pass over the loaded store with nothing expired: what
    /// the background thread costs every interval at this size.
    maintenance_secs: f64,
    /// Lookups of loaded keys with nothing else running.
    lookups_quiet: Latencies,
    /// Lookups of loaded keys while maintenance passes with nothing due run
    /// back to back.
    lookups_sweeping: Latencies,
    /// One maintenance pass that expires the next `records / EXPIRY_TICKS`
    /// records, on a quiet store (median of [`EXPIRING_PASSES`]): what the
    /// background thread costs every interval once records keep coming due.
    expiring_pass_secs: f64,
    /// Lookups of loaded keys while back-to-back passes each expire about
    /// `records / EXPIRY_TICKS` records.
    lookups_expiring: Latencies,
    /// Once every record has expired: the pass that removes them, then one
    /// more. Bytes per loaded record that the in-memory store's own
    /// structures gave back (`MaintenanceReport::memory_released`; `None`
    /// for the durable store, which does not count them).
    released_bytes_per_record: Option<f64>,
    /// The resident set's growth over the load that is left after those two
    /// passes, per loaded record.
    ram_after_expiry_per_record: Option<f64>,
}

/// Quiet passes timed for [`Footprint::expiring_pass_secs`].
const EXPIRING_PASSES: usize = 9;

/// Tail latencies of one thread's lookups, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Latencies {
    p99_us: f64,
    p999_us: f64,
    /// Maintenance passes run meanwhile.
    passes: u64,
    /// Records those passes expired.
    expired: u64,
}

/// What runs beside the lookups.
#[derive(Clone, Copy, PartialEq)]
enum Beside {
    Nothing,
    /// Passes back to back, with the clock still.
    Sweeping,
    /// Passes back to back, each after moving the clock one tick, so each
    /// finds records due. Lookups may then miss expired keys.
    Expiring,
}

/// How long each lookup probe runs.
const LOOKUP_PROBE: Duration = Duration::from_millis(1500);

/// A loaded key the probes look up, and when its record expires.
type ProbeKey = (idemlog::IdempotencyKey, Timestamp);

/// Looks up `keys` in turn for [`LOOKUP_PROBE`], with `beside` running on
/// another thread. While expiring, the clock stops at `last_due`, when the
/// last loaded record is due.
fn lookup_latencies(
    store: &Store,
    clock: &ManualClock,
    keys: &[ProbeKey],
    beside: Beside,
    last_due: Timestamp,
) -> Result<Latencies, String> {
    let stop = AtomicBool::new(false);
    let mut nanos: Vec<u64> = Vec::with_capacity(4 << 20);
    let (passes, expired) = std::thread::scope(|s| {
        let sweeper = s.spawn(|| {
            let (mut passes, mut expired) = (0u64, 0u64);
            while beside != Beside::Nothing && !stop.load(Ordering::Relaxed) {
                if beside == Beside::Expiring && clock.now() < last_due {
                    clock.advance(EXPIRY_TICK);
                }
                expired += store.run_maintenance().map_err(|e| e.to_string())?.expired;
                passes += 1;
            }
            Ok::<(u64, u64), String>((passes, expired))
        });
        let started = Instant::now();
        let probed = (|| {
            for (key, expires_at) in keys.iter().cycle() {
                let t = Instant::now();
                let found = store.lookup(key).map_err(|e| e.to_string())?;
                nanos.push(t.elapsed().as_nanos() as u64);
                // The clock only moves forward: read after the lookup, a
                // time before the expiry was the time during it too.
                if found.is_none() && clock.now() < *expires_at {
                    return Err(format!("loaded key {key:?} not found before its expiry"));
                }
                if nanos.len().is_multiple_of(1024) && started.elapsed() >= LOOKUP_PROBE {
                    break;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let passes = sweeper
            .join()
            .map_err(|_| "the maintenance thread panicked")??;
        probed.map(|()| passes)
    })?;
    if beside == Beside::Expiring && passes > 0 && expired == 0 {
        return Err(format!("{passes} passes on a moving clock expired nothing"));
    }
    if beside == Beside::Expiring && clock.now() >= last_due {
        eprintln!(
            "note: every loaded record expired before the expiring probe ended ({passes} passes); \
             its later passes found nothing due"
        );
    }
    nanos.sort_unstable();
    let at = |q: f64| quantile_us(&nanos, q);
    Ok(Latencies {
        p99_us: at(0.99),
        p999_us: at(0.999),
        passes,
        expired,
    })
}

fn measure(subject: &Subject, opts: &Options) -> Result<Footprint, String> {
    let dir = common::scratch_dir("footprint-").map_err(|e| e.to_string())?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#);
    let response: Vec<u8> = (0..opts.response_bytes).map(|i| i as u8).collect();
    let loaded_at = Timestamp::from_millis(1_000_000_000);
    let clock = ManualClock::new(loaded_at);
    let rss_before = common::rss_bytes();
    let store = (subject.open)(dir.path(), &clock).map_err(|e| e.to_string())?;
    let mut gen = KeyGen::new(0xF00D);
    // At most EXPIRY_TICKS ticks, so the load ends before LOAD_TTL.
    let per_tick = opts.records.div_ceil(EXPIRY_TICKS).max(1);
    // Record `i` (from 0) is completed `i / per_tick` ticks in.
    let expiry_of = |i: usize| {
        let ticks = EXPIRY_TICK * u32::try_from(i / per_tick).unwrap_or(u32::MAX);
        loaded_at.saturating_add(ticks + LOAD_TTL)
    };
    let started = Instant::now();
    for i in 1..=opts.records {
        complete_fresh(&store, &gen.next_key(), &fp, &response)?;
        if i.is_multiple_of(per_tick) {
            clock.advance(EXPIRY_TICK);
        }
    }
    store.flush().map_err(|e| e.to_string())?;
    let load_secs = started.elapsed().as_secs_f64();
    let live = store.stats().live_records;
    if live != opts.records as u64 {
        return Err(format!(
            "{live} live records after loading {}",
            opts.records
        ));
    }
    let started = Instant::now();
    let report = store.run_maintenance().map_err(|e| e.to_string())?;
    let maintenance_secs = started.elapsed().as_secs_f64();
    if report.expired != 0 {
        return Err(format!(
            "maintenance expired {} fresh records",
            report.expired
        ));
    }
    let per_record = |bytes: u64| bytes as f64 / opts.records as f64;
    let ram = rss_before
        .zip(common::rss_bytes())
        .map(|(before, after)| per_record(after.saturating_sub(before)));
    let disk = per_record(common::disk_bytes(dir.path()));
    // The probe's keys are spread over the whole load (the RSS is measured
    // already, so what they take does not count).
    let mut gen = KeyGen::new(0xF00D);
    let stride = (opts.records / 4096).max(1);
    let mut keys = Vec::new();
    for i in 0..opts.records {
        let k = gen.next_key();
        if i.is_multiple_of(stride) {
            let key = store.key(SCOPE, key_str(&k)).map_err(|e| e.to_string())?;
            keys.push((key, expiry_of(i)));
        }
    }
    let last_due = expiry_of(opts.records - 1);
    let lookups_quiet = lookup_latencies(&store, &clock, &keys, Beside::Nothing, last_due)?;
    let lookups_sweeping = lookup_latencies(&store, &clock, &keys, Beside::Sweeping, last_due)?;
    let (store, reopen_secs) = match subject.reopen {
        None => (store, None),
        Some(reopen) => {
            drop(store);
            let started = Instant::now();
            let store = reopen(dir.path(), &clock).map_err(|e| e.to_string())?;
            let secs = started.elapsed().as_secs_f64();
            let live = store.stats().live_records;
            if live != opts.records as u64 {
                return Err(format!(
                    "{live} live records after reopening, {} loaded",
                    opts.records
                ));
            }
            (store, Some(secs))
        }
    };
    // The first records loaded are due at the first tick.
    clock.set(loaded_at.saturating_add(LOAD_TTL));
    let mut pass_secs = Vec::with_capacity(EXPIRING_PASSES);
    for _ in 0..EXPIRING_PASSES {
        clock.advance(EXPIRY_TICK);
        let started = Instant::now();
        let report = store.run_maintenance().map_err(|e| e.to_string())?;
        pass_secs.push(started.elapsed().as_secs_f64());
        if report.expired == 0 {
            return Err("a pass a tick later expired nothing".into());
        }
    }
    pass_secs.sort_by(f64::total_cmp);
    let expiring_pass_secs = pass_secs[EXPIRING_PASSES / 2];
    let lookups_expiring = lookup_latencies(&store, &clock, &keys, Beside::Expiring, last_due)?;
    drop(keys);
    // Everything comes due. The pass that removes it keeps the memory (a
    // store that fills again at once reuses it); the next one gives back
    // what is left unused.
    clock.set(last_due.saturating_add(EXPIRY_TICK));
    let mut released = 0;
    for _ in 0..2 {
        released += store
            .run_maintenance()
            .map_err(|e| e.to_string())?
            .memory_released;
        clock.advance(EXPIRY_TICK);
    }
    let live = store.stats().live_records;
    if live != 0 {
        return Err(format!("{live} records left after all expired"));
    }
    let released_bytes_per_record = subject.reopen.is_none().then(|| per_record(released));
    let ram_after_expiry_per_record = rss_before
        .zip(common::rss_bytes())
        .map(|(before, after)| per_record(after.saturating_sub(before)));
    Ok(Footprint {
        load_secs,
        ram_bytes_per_record: ram,
        disk_bytes_per_record: disk,
        reopen_secs,
        maintenance_secs,
        lookups_quiet,
        lookups_sweeping,
        expiring_pass_secs,
        lookups_expiring,
        released_bytes_per_record,
        ram_after_expiry_per_record,
    })
}

/// One request on a fresh key: reserve, then complete with `response`.
fn complete_fresh(
    store: &Store,
    key: &[u8; common::KEY_LEN],
    fp: &Fingerprint,
    response: &[u8],
) -> Result<(), String> {
    let key = store.key(SCOPE, key_str(key)).map_err(|e| e.to_string())?;
    match store.reserve(&key, fp).map_err(|e| e.to_string())? {
        Outcome::Acquired(r) => r.complete(response.to_vec()).map_err(|e| e.to_string()),
        other => Err(format!("a fresh key was not acquired: {other:?}")),
    }
}

/// Appends one JSON object to the results file (a failure is reported, not
/// fatal: the table is already printed).
fn append_line(jsonl_path: &Path, line: &serde_json::Value) {
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(jsonl_path)
        .and_then(|mut out| writeln!(out, "{line}"));
    if let Err(e) = appended {
        eprintln!("could not write {}: {e}", jsonl_path.display());
    }
}

/// In the burst probe, one loaded record in this many outlives the rest.
const BURST_SURVIVOR_EVERY: usize = 25;

/// The TTL of the burst probe's other records.
const BURST_TTL: Duration = Duration::from_secs(60);

/// A burst's expiry, measured on a fresh store ([`measure_burst`]).
struct Burst {
    /// The pass that expires the burst, and the pass after it.
    pass_secs: [f64; 2],
    expired: u64,
    /// Records the passes moved, and bytes they gave back per loaded
    /// record (`None` for the durable store, which does not count them).
    moved: u64,
    released_bytes_per_record: Option<f64>,
    /// Lookups of the survivors meanwhile: p99, p99.9 and the longest, µs.
    lookups_us: [f64; 3],
    lookups: usize,
}

/// Loads `opts.records` records, one in [`BURST_SURVIVOR_EVERY`] with
/// [`LOAD_TTL`] and the rest with [`BURST_TTL`], moves the clock past the
/// shorter TTL, and looks the survivors up on this thread while another
/// runs two maintenance passes.
fn measure_burst(subject: &Subject, opts: &Options) -> Result<Burst, String> {
    let dir = common::scratch_dir("footprint-burst-").map_err(|e| e.to_string())?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#);
    let response: Vec<u8> = (0..opts.response_bytes).map(|i| i as u8).collect();
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000_000));
    let store = (subject.open)(dir.path(), &clock).map_err(|e| e.to_string())?;
    let mut gen = KeyGen::new(0xB0057);
    let mut survivors = Vec::with_capacity(opts.records / BURST_SURVIVOR_EVERY + 1);
    for i in 0..opts.records {
        let key = store
            .key(SCOPE, key_str(&gen.next_key()))
            .map_err(|e| e.to_string())?;
        let survives = i % BURST_SURVIVOR_EVERY == 0;
        let ttl = if survives { LOAD_TTL } else { BURST_TTL };
        match store
            .reserve_with(&key, &fp, ReserveOptions::default().ttl(ttl))
            .map_err(|e| e.to_string())?
        {
            Outcome::Acquired(r) => r.complete(response.clone()).map_err(|e| e.to_string())?,
            other => return Err(format!("a fresh key was not acquired: {other:?}")),
        }
        if survives {
            survivors.push(key);
        }
    }
    store.flush().map_err(|e| e.to_string())?;
    clock.advance(2 * BURST_TTL);
    let done = AtomicBool::new(false);
    let mut nanos: Vec<u64> = Vec::with_capacity(4 << 20);
    let passes = std::thread::scope(|s| {
        let sweeper = s.spawn(|| {
            let passes: Result<Vec<_>, String> = (0..2)
                .map(|_| {
                    let started = Instant::now();
                    let report = store.run_maintenance().map_err(|e| e.to_string())?;
                    Ok((started.elapsed().as_secs_f64(), report))
                })
                .collect();
            done.store(true, Ordering::Relaxed);
            passes
        });
        let probed = (|| {
            for key in survivors.iter().cycle() {
                let t = Instant::now();
                let found = store.lookup(key).map_err(|e| e.to_string())?;
                nanos.push(t.elapsed().as_nanos() as u64);
                if found.is_none() {
                    return Err(format!("surviving key {key:?} not found"));
                }
                if nanos.len().is_multiple_of(256) && done.load(Ordering::Relaxed) {
                    break;
                }
            }
            Ok(())
        })();
        // Stops the sweeper's passes being timed against a failed probe.
        let passes = sweeper
            .join()
            .map_err(|_| "the maintenance thread panicked".to_string())?;
        probed.and(passes)
    })?;
    let live = store.stats().live_records;
    if live != survivors.len() as u64 {
        return Err(format!(
            "{live} live records after the burst, {} survivors",
            survivors.len()
        ));
    }
    nanos.sort_unstable();
    let at = |q: f64| quantile_us(&nanos, q);
    let released: u64 = passes.iter().map(|(_, r)| r.memory_released).sum();
    Ok(Burst {
        pass_secs: [passes[0].0, passes[1].0],
        expired: passes.iter().map(|(_, r)| r.expired).sum(),
        moved: passes.iter().map(|(_, r)| r.records_moved).sum(),
        released_bytes_per_record: subject
            .reopen
            .is_none()
            .then(|| released as f64 / opts.records as f64),
        lookups_us: [at(0.99), at(0.999), at(1.0)],
        lookups: nanos.len(),
    })
}

/// The `q` quantile of `sorted` nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64 / 1e3
}

/// Subject `i` of [`subjects`]; exits the (child) process if there is none.
fn subject_at(i: usize) -> Subject {
    subjects().into_iter().nth(i).unwrap_or_else(|| {
        eprintln!("no subject {i}");
        std::process::exit(2)
    })
}

/// Measures one subject's burst in this process and prints its row.
fn burst_one(i: usize, opts: &Options, jsonl_path: &Path) {
    let subject = subject_at(i);
    match measure_burst(&subject, opts) {
        Ok(b) => {
            println!(
                "{:<24} {:>24} {:>12} {:>10} {:>14} {:>28} {:>10}",
                subject.name,
                format!("{:.1} / {:.1}", b.pass_secs[0] * 1e3, b.pass_secs[1] * 1e3),
                common::thousands(b.expired as f64),
                common::thousands(b.moved as f64),
                b.released_bytes_per_record
                    .map_or("-".into(), |r| format!("{r:.0}")),
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    b.lookups_us[0], b.lookups_us[1], b.lookups_us[2]
                ),
                common::thousands(b.lookups as f64),
            );
            let line = serde_json::json!({
                "system": subject.name,
                "probe": "burst",
                "records": opts.records,
                "survivor_every": BURST_SURVIVOR_EVERY,
                "response_bytes": opts.response_bytes,
                "expiring_pass_s": b.pass_secs[0],
                "next_pass_s": b.pass_secs[1],
                "expired": b.expired,
                "records_moved": b.moved,
                "released_bytes_per_record": b.released_bytes_per_record.map(f64::round),
                "lookup_p99_us": b.lookups_us[0],
                "lookup_p999_us": b.lookups_us[1],
                "lookup_max_us": b.lookups_us[2],
                "lookups": b.lookups,
            });
            append_line(jsonl_path, &line);
        }
        Err(e) => println!("{:<24} failed: {e}", subject.name),
    }
}

/// Writer threads in the deletion probe: enough to keep a group commit
/// gathering, few enough for two cores.
const DELETION_WRITERS: usize = 8;

/// How long the deletion probe's writers run before they are timed, and
/// then on a quiet store.
const DELETION_WARMUP: Duration = Duration::from_millis(200);
const DELETION_QUIET: Duration = Duration::from_millis(500);

/// `Sync` writes on a quiet store and beside a pass that deletes segments.
struct Deletion {
    segments_deleted: u64,
    /// Of those, freed whole on close rather than cut down in steps.
    segments_freed_whole: u64,
    pass_secs: f64,
    /// Of the pass, time spent resting between cuts.
    rested_secs: f64,
    /// Pairs per second, quiet and during the pass.
    pairs_per_s: [f64; 2],
    /// Pair latency p99 and longest, µs, quiet and during the pass.
    p99_us: [f64; 2],
    max_us: [f64; 2],
    pairs_during: usize,
}

/// Loads `opts.records` records into a durable store (with `None`, as the
/// load rows do), reopens it with `Sync`, and has [`DELETION_WRITERS`]
/// threads make fresh `Sync` pairs: timed on a quiet store, then while one
/// pass expires every loaded record and deletes their segments. Deleting a
/// segment is file-system work a sync can wait behind.
fn measure_deletion(subject: &Subject, opts: &Options) -> Result<Deletion, String> {
    let reopen = subject
        .reopen
        .ok_or("the deletion probe needs a store with files")?;
    let dir = common::scratch_dir("footprint-deletion-").map_err(|e| e.to_string())?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#);
    let response: Vec<u8> = (0..opts.response_bytes).map(|i| i as u8).collect();
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000_000));
    {
        let store = (subject.open)(dir.path(), &clock).map_err(|e| e.to_string())?;
        let mut gen = KeyGen::new(0xDE1E7E);
        for _ in 0..opts.records {
            complete_fresh(&store, &gen.next_key(), &fp, &response)?;
        }
        store.flush().map_err(|e| e.to_string())?;
    }
    // On disk, as a server's old segments are by the time they expire, not
    // still being written back.
    for entry in std::fs::read_dir(dir.path()).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    }
    let store = reopen(dir.path(), &clock).map_err(|e| e.to_string())?;
    clock.advance(2 * LOAD_TTL);
    // 0: warming up, 1: quiet, 2: the pass runs, 3: after it.
    let phase = std::sync::atomic::AtomicU8::new(0);
    let (timed, quiet_secs, pass) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..DELETION_WRITERS as u64)
            .map(|w| {
                let (store, phase, fp, response) = (&store, &phase, &fp, &response);
                s.spawn(move || -> Result<Vec<(u8, u64)>, String> {
                    let mut gen = KeyGen::new(0x5EC0_0000 + w);
                    let mut timed = Vec::with_capacity(1 << 16);
                    loop {
                        let at = phase.load(Ordering::Relaxed);
                        if at == 3 {
                            return Ok(timed);
                        }
                        let t = Instant::now();
                        complete_fresh(store, &gen.next_key(), fp, response)?;
                        if at > 0 {
                            timed.push((at, t.elapsed().as_nanos() as u64));
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(DELETION_WARMUP);
        phase.store(1, Ordering::Relaxed);
        let quiet = Instant::now();
        std::thread::sleep(DELETION_QUIET);
        let quiet_secs = quiet.elapsed().as_secs_f64();
        phase.store(2, Ordering::Relaxed);
        let started = Instant::now();
        let report = store.run_maintenance();
        let pass_secs = started.elapsed().as_secs_f64();
        phase.store(3, Ordering::Relaxed);
        let mut timed = Vec::new();
        for w in writers {
            timed.extend(w.join().map_err(|_| "a writer panicked".to_string())??);
        }
        let report = report.map_err(|e| e.to_string())?;
        Ok::<_, String>((timed, quiet_secs, (pass_secs, report)))
    })?;
    let (pass_secs, report) = pass;
    if report.segments_deleted == 0 {
        return Err("the pass deleted no segment".into());
    }
    let sorted = |phase: u8| {
        let mut v: Vec<u64> = timed
            .iter()
            .filter(|&&(at, _)| at == phase)
            .map(|&(_, ns)| ns)
            .collect();
        v.sort_unstable();
        v
    };
    let (quiet, during) = (sorted(1), sorted(2));
    if quiet.is_empty() || during.is_empty() {
        return Err(format!(
            "{} quiet pairs and {} during the pass: nothing to time",
            quiet.len(),
            during.len()
        ));
    }
    Ok(Deletion {
        segments_deleted: report.segments_deleted,
        segments_freed_whole: report.segments_freed_whole,
        pass_secs,
        rested_secs: report.rested.as_secs_f64(),
        pairs_per_s: [
            quiet.len() as f64 / quiet_secs,
            during.len() as f64 / pass_secs,
        ],
        p99_us: [quantile_us(&quiet, 0.99), quantile_us(&during, 0.99)],
        max_us: [quantile_us(&quiet, 1.0), quantile_us(&during, 1.0)],
        pairs_during: during.len(),
    })
}

/// Measures the deletion probe in this process and prints its row.
fn deletion_one(opts: &Options, jsonl_path: &Path) {
    let Some(subject) = subjects().into_iter().find(|s| s.reopen.is_some()) else {
        return;
    };
    match measure_deletion(&subject, opts) {
        Ok(d) => {
            println!(
                "{:<24} {:>9} {:>9.1} {:>11.1} {:>22} {:>22} {:>26}",
                subject.name,
                d.segments_deleted,
                d.pass_secs * 1e3,
                d.rested_secs * 1e3,
                format!(
                    "{} / {}",
                    common::thousands(d.pairs_per_s[0]),
                    common::thousands(d.pairs_per_s[1])
                ),
                format!("{:.0} / {:.0}", d.p99_us[0], d.p99_us[1]),
                format!("{:.0} / {:.0}", d.max_us[0], d.max_us[1]),
            );
            let line = serde_json::json!({
                "system": subject.name,
                "probe": "sync writes beside segment deletion",
                "records": opts.records,
                "writers": DELETION_WRITERS,
                "segments_deleted": d.segments_deleted,
                "segments_freed_whole": d.segments_freed_whole,
                "pass_s": d.pass_secs,
                "rested_s": d.rested_secs,
                "quiet_pairs_per_s": d.pairs_per_s[0].round(),
                "pass_pairs_per_s": d.pairs_per_s[1].round(),
                "quiet_p99_us": d.p99_us[0],
                "pass_p99_us": d.p99_us[1],
                "quiet_max_us": d.max_us[0],
                "pass_max_us": d.max_us[1],
                "pairs_during_pass": d.pairs_during,
            });
            append_line(jsonl_path, &line);
        }
        Err(e) => println!("{:<24} failed: {e}", subject.name),
    }
}

/// Disk use of the durable store once TTL churn has reached steady state.
struct Steady {
    /// Live records at the samples (about `records`).
    live_records: u64,
    /// Allocated bytes of the data directory per live record: mean and
    /// largest over the samples.
    disk_per_live_mean: f64,
    disk_per_live_max: f64,
    /// Maintenance totals over the whole run.
    segments_deleted: u64,
    records_copied: u64,
    pairs: u64,
}

/// Requests whose records all live for the TTL, with the store's clock
/// advanced 1 ms per request and a TTL of `records` ms, so `records` pairs
/// are live at any moment. Maintenance runs every 1 % of the TTL. After two
/// TTLs of warm-up, the directory's allocated bytes are sampled after each
/// maintenance pass for one more TTL.
fn measure_steady(opts: &Options) -> Result<Steady, String> {
    let dir = common::scratch_dir("footprint-steady-").map_err(|e| e.to_string())?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#);
    let response: Vec<u8> = (0..opts.response_bytes).map(|i| i as u8).collect();
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000_000));
    let live_target = opts.records as u64;
    let config = Config::builder()
        .durability(Durability::None)
        .ttl(Duration::from_millis(live_target))
        .clock(clock.clone())
        .maintenance_interval(None)
        .build();
    let store = Store::open(dir.path(), config).map_err(|e| e.to_string())?;
    let every = (live_target / 100).max(1);
    let pairs = live_target * 3;
    let mut gen = KeyGen::new(0x57EAD);
    let (mut samples, mut sum, mut max) = (0u64, 0f64, 0f64);
    let (mut live_seen, mut deleted, mut copied) = (0u64, 0u64, 0u64);
    for i in 1..=pairs {
        complete_fresh(&store, &gen.next_key(), &fp, &response)?;
        clock.advance(Duration::from_millis(1));
        if i % every == 0 {
            loop {
                let report = store.run_maintenance().map_err(|e| e.to_string())?;
                deleted += report.segments_deleted;
                copied += report.records_copied;
                if !report.more_work {
                    break;
                }
            }
            if i > live_target * 2 {
                store.flush().map_err(|e| e.to_string())?;
                let live = store.stats().live_records;
                let per_live = common::disk_bytes(dir.path()) as f64 / live.max(1) as f64;
                samples += 1;
                sum += per_live;
                max = max.max(per_live);
                live_seen = live;
            }
        }
    }
    if samples == 0 {
        return Err("no samples (records too few)".into());
    }
    Ok(Steady {
        live_records: live_seen,
        disk_per_live_mean: sum / samples as f64,
        disk_per_live_max: max,
        segments_deleted: deleted,
        records_copied: copied,
        pairs,
    })
}

fn steady_one(opts: &Options, jsonl_path: &Path) {
    let framed =
        (common::RESERVE_FRAME_LEN + common::complete_frame_len(opts.response_bytes)) as f64;
    match measure_steady(opts) {
        Ok(s) => {
            println!(
                "steady state, durable: {} live records after {} requests with TTL churn; \
                 disk per live pair {:.0} B mean, {:.0} B largest = {:.2}× / {:.2}× the {:.0} framed bytes \
                 of a pair; {} segments deleted, {} records copied forward",
                common::thousands(s.live_records as f64),
                common::thousands(s.pairs as f64),
                s.disk_per_live_mean,
                s.disk_per_live_max,
                s.disk_per_live_mean / framed,
                s.disk_per_live_max / framed,
                framed,
                s.segments_deleted,
                s.records_copied,
            );
            let line = serde_json::json!({
                "system": "idemlog durable, steady TTL churn",
                "records": opts.records,
                "response_bytes": opts.response_bytes,
                "requests": s.pairs,
                "live_records": s.live_records,
                "disk_bytes_per_live_pair_mean": s.disk_per_live_mean.round(),
                "disk_bytes_per_live_pair_max": s.disk_per_live_max.round(),
                "framed_bytes_per_pair": framed,
                "segments_deleted": s.segments_deleted,
                "records_copied": s.records_copied,
            });
            append_line(jsonl_path, &line);
        }
        Err(e) => println!("steady state, durable: failed: {e}"),
    }
}

/// Measures one subject in this process and prints its row. Each subject
/// runs in a process of its own, so memory freed by one cannot hide the
/// growth of the next.
fn measure_one(i: usize, opts: &Options, jsonl_path: &Path) {
    let subject = subject_at(i);
    match measure(&subject, opts) {
        Ok(f) => {
            let tail = |l: Latencies| format!("{:.1} / {:.1}", l.p99_us, l.p999_us);
            let bytes = |b: Option<f64>| b.map_or("-".into(), |b| format!("{b:.0}"));
            println!(
                "{:<24} {:>10.2} {:>14} {:>15.0} {:>12} {:>22} {:>20} {:>22} {:>22} {:>20}",
                subject.name,
                f.load_secs,
                f.ram_bytes_per_record
                    .map_or("-".into(), |r| format!("{r:.0}")),
                f.disk_bytes_per_record,
                f.reopen_secs.map_or("n/a".into(), |s| format!("{s:.3}")),
                format!(
                    "{:.1} / {:.1}",
                    f.maintenance_secs * 1e3,
                    f.expiring_pass_secs * 1e3
                ),
                tail(f.lookups_quiet),
                tail(f.lookups_sweeping),
                tail(f.lookups_expiring),
                format!(
                    "{} / {}",
                    bytes(f.released_bytes_per_record),
                    bytes(f.ram_after_expiry_per_record)
                ),
            );
            let line = serde_json::json!({
                "system": subject.name,
                "records": opts.records,
                "response_bytes": opts.response_bytes,
                "load_s": f.load_secs,
                "ram_bytes_per_record": f.ram_bytes_per_record.map(f64::round),
                "disk_bytes_per_record": f.disk_bytes_per_record.round(),
                "reopen_s": f.reopen_secs,
                "maintenance_pass_s": f.maintenance_secs,
                "maintenance_expiring_pass_s": f.expiring_pass_secs,
                "lookup_p99_us": f.lookups_quiet.p99_us,
                "lookup_p999_us": f.lookups_quiet.p999_us,
                "lookup_sweeping_p99_us": f.lookups_sweeping.p99_us,
                "lookup_sweeping_p999_us": f.lookups_sweeping.p999_us,
                "sweeping_passes": f.lookups_sweeping.passes,
                "lookup_expiring_p99_us": f.lookups_expiring.p99_us,
                "lookup_expiring_p999_us": f.lookups_expiring.p999_us,
                "expiring_passes": f.lookups_expiring.passes,
                "expiring_records_expired": f.lookups_expiring.expired,
                "released_bytes_per_record": f.released_bytes_per_record.map(f64::round),
                "ram_after_expiry_bytes_per_record": f.ram_after_expiry_per_record.map(f64::round),
            });
            append_line(jsonl_path, &line);
        }
        Err(e) => println!("{:<24} failed: {e}", subject.name),
    }
}

fn main() {
    let opts = options();
    let root = common::bench_root().expect("target/idemlog-bench can be created");
    let jsonl_path = root.join("footprint.jsonl");
    if let Some(i) = opts.subject {
        measure_one(i, &opts, &jsonl_path);
        return;
    }
    if opts.steady_child {
        steady_one(&opts, &jsonl_path);
        return;
    }
    if let Some(i) = opts.burst_subject {
        burst_one(i, &opts, &jsonl_path);
        return;
    }
    if opts.deletion_child {
        deletion_one(&opts, &jsonl_path);
        return;
    }
    if opts.fresh_child {
        fresh_one(&opts, &jsonl_path);
        return;
    }
    println!(
        "footprint: {} completed records, {} B responses, 32 B keys; machine: {}; files on {}",
        common::thousands(opts.records as f64),
        opts.response_bytes,
        common::machine(),
        common::filesystem_of(&root)
    );
    println!(
        "{:<24} {:>10} {:>14} {:>15} {:>12} {:>22} {:>20} {:>22} {:>22} {:>20}",
        "store",
        "load s",
        "RAM B/record",
        "disk B/record",
        "reopen s",
        "pass ms idle/expiring",
        "lookup p99/p99.9 µs",
        "same, while sweeping",
        "same, while expiring",
        "expired: freed/kept B"
    );
    let _ = std::fs::File::create(&jsonl_path);
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let chosen: Vec<usize> = subjects()
        .iter()
        .enumerate()
        .filter(|(_, subject)| {
            opts.only
                .as_ref()
                .is_none_or(|only| subject.name.contains(only.as_str()))
        })
        .map(|(i, _)| i)
        .collect();
    // Each in a process of its own (see `measure_one`).
    let child = |what: &str, arg: &[&str]| {
        let status = std::process::Command::new(&exe)
            .args(["--records", &opts.records.to_string()])
            .args(["--response-bytes", &opts.response_bytes.to_string()])
            .args(arg)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            println!("{what}: child process failed ({status:?})");
        }
    };
    for &i in &chosen {
        child(&format!("subject {i}"), &["--subject", &i.to_string()]);
    }
    if opts.burst && !chosen.is_empty() {
        println!(
            "\nburst: {} records, 1 in {BURST_SURVIVOR_EVERY} with a TTL of {} s and the rest {} s, \
             on a fresh store; the clock moves past the shorter TTL, then one thread looks up the \
             survivors while another runs the pass that expires the rest and the next",
            common::thousands(opts.records as f64),
            LOAD_TTL.as_secs(),
            BURST_TTL.as_secs(),
        );
        println!(
            "{:<24} {:>24} {:>12} {:>10} {:>14} {:>28} {:>10}",
            "store",
            "pass ms expiring/next",
            "expired",
            "moved",
            "freed B/record",
            "lookup p99/p99.9/max µs",
            "lookups"
        );
        for &i in &chosen {
            child(&format!("burst {i}"), &["--burst-subject", &i.to_string()]);
        }
    }
    let durable_chosen = opts
        .only
        .as_ref()
        .is_none_or(|only| "idemlog durable".contains(only.as_str()));
    if opts.deletion && durable_chosen {
        println!(
            "\nsync writes beside segment deletion: {} records loaded, the store reopened with Sync; \
             {DELETION_WRITERS} threads make fresh Sync pairs, timed for {:.1} s on a quiet store, \
             then while one pass expires every loaded record and deletes their segments \
             (resting between the cuts that give a deleted segment's blocks back: rested ms)",
            common::thousands(opts.records as f64),
            DELETION_QUIET.as_secs_f64(),
        );
        println!(
            "{:<24} {:>9} {:>9} {:>11} {:>22} {:>22} {:>26}",
            "store",
            "deleted",
            "pass ms",
            "rested ms",
            "pairs/s quiet / pass",
            "p99 µs quiet / pass",
            "max µs quiet / pass"
        );
        child("deletion", &["--deletion-child"]);
    }
    if opts.steady && durable_chosen {
        child("steady state", &["--steady-child"]);
    }
    if opts.fresh_gib > 0 {
        child(
            "fresh memory",
            &["--fresh-child", "--fresh-gib", &opts.fresh_gib.to_string()],
        );
    }
    println!(
        "RAM B/record = growth of the measuring process's resident set (VmRSS) over the load / records; \
         the in-memory store keeps each response in RAM, so it includes the {} B response. \
         pass ms = one maintenance pass with nothing due, then the median of {} quiet passes each expiring the next 1/{} of the records \
         (the durable store's on its reopened store, with the default Sync durability: a pass that deletes segments syncs first) \
         (the background thread runs one per interval, default 1 s, or after 15 times the last pass if that is longer). \
         lookup p99/p99.9 = one thread looking up loaded keys for {:.1} s, on a quiet store, then while another thread runs maintenance passes back to back (far more often than the background thread does) with nothing due, \
         then with each pass expiring the next 1/{} of the records (the durable store's on its reopened store). \
         expired: freed/kept B = once every record has expired, after the pass that removes them and one more: \
         bytes per loaded record the in-memory store's own structures gave back to the allocator (record slots, tables; \
         the responses are freed with their records), and the resident set's growth over the load still left \
         (an allocator may keep freed memory for reuse rather than return it: glibc does, until malloc_trim). \
         burst: expired = records both passes removed, moved = records the second moved together to free chunks, \
         freed B/record = what both gave back, as above, per loaded record; lookups = how many the probe made. \
         Framed log bytes per pair for these records: reserve {} B + complete {} B.",
        opts.response_bytes,
        EXPIRING_PASSES,
        EXPIRY_TICKS,
        LOOKUP_PROBE.as_secs_f64(),
        EXPIRY_TICKS,
        common::RESERVE_FRAME_LEN,
        common::complete_frame_len(opts.response_bytes)
    );
}
