//! Side-by-side throughput: idemlog against the disk's own limit, sled and
//! Redis, measured in one run on one machine.
//!
//! `cargo bench --bench compare [-- --quick] [-- --no-redis] [-- --runs N]
//! [-- --only ID,...] [-- --in-process]`
//!
//! One request = reserve (insert-if-absent of an in-flight record) then
//! complete (a 300-byte response), on a fresh random 32-byte key. Prints one
//! table, then the issue's target ratios, and writes the same rows as JSON
//! lines to `target/idemlog-bench/compare.jsonl`. docs/BENCHMARKS.md says
//! what each row means.
//!
//! Each run of each row is made by a fresh child process of this bench (see
//! "One process per run" below); `--in-process` makes every run in one
//! process instead, for a profiler that does not follow children.

mod common;
mod floor;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use idemlog::{
    Backend, Bytes, Clock, Config, Durability, Fingerprint, ManualClock, Outcome, ReserveOptions,
    Stats, Store, SystemClock, Timestamp,
};

use common::{key_str, KeyGen, KEY_LEN, SCOPE};

// ---------------------------------------------------------------------------
// Options and budgets

struct Options {
    quick: bool,
    runs: usize,
    redis: bool,
    /// Wall-clock budget of one run of one row.
    secs: f64,
    /// Most requests one thread makes in one run (bounds memory of the
    /// in-memory rows, which keep every record).
    max_calls: u64,
    /// Completed records loaded before the replay row.
    replay_keys: usize,
    /// Row ids to run (`--only mem-1,disk-64`); empty runs every row.
    only: Vec<String>,
    /// Every run in this process (`--in-process`), instead of each in a
    /// child process of its own.
    in_process: bool,
    /// Set in a child process: the one row whose one run it makes.
    child_row: Option<String>,
}

impl Options {
    fn from_args() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let runs = args
            .iter()
            .position(|a| a == "--runs")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 });
        Options {
            quick,
            runs: usize::max(runs, 1),
            redis: !args.iter().any(|a| a == "--no-redis"),
            secs: if quick { 1.0 } else { 3.0 },
            max_calls: if quick { 1_000_000 } else { 2_000_000 },
            replay_keys: if quick { 200_000 } else { 1_000_000 },
            only: args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .map(|ids| ids.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            in_process: args.iter().any(|a| a == "--in-process"),
            child_row: args
                .iter()
                .position(|a| a == CHILD_FLAG)
                .and_then(|i| args.get(i + 1))
                .cloned(),
        }
    }
}

// ---------------------------------------------------------------------------
// The driver: N threads, each calling one request function in a loop

/// Where a thread's keys come from.
#[derive(Clone)]
enum Keys {
    /// Fresh random keys (distinct in practice: 192 random bits each).
    Fresh { seed: u64 },
    /// Keys picked at random from a loaded set (replays).
    Existing(Arc<Vec<[u8; KEY_LEN]>>),
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Measured {
    /// Operations per second over the whole run (all threads).
    ops_per_s: f64,
    /// Operations done.
    ops: u64,
    p50_us: f64,
    p99_us: f64,
    /// Latency of the reserve step alone, where the request has one.
    reserve_p50_us: Option<f64>,
    reserve_p99_us: Option<f64>,
    /// Memory growth per operation (RSS delta of the process holding the
    /// data) over the run.
    rss_bytes_per_op: Option<f64>,
    /// Disk space per operation at the end of the run (allocated blocks).
    disk_bytes_per_op: Option<f64>,
    /// CPU time the bench threads used per operation (user + system). For
    /// in-process systems it is the cost of an operation regardless of what
    /// else the machine runs; for Redis it is the client side only.
    cpu_us_per_op: Option<f64>,
    /// CPU time of the whole bench process per operation: the callers plus
    /// the threads the system under test runs itself (idemlog's writer and
    /// maintenance threads, sled's flusher, an async runtime's workers),
    /// which compete for the same cores. Redis: the client side only.
    process_cpu_us_per_op: Option<f64>,
    /// Records each fdatasync made durable, on average over the run: how
    /// well the group commit gathered (idemlog durable rows that sync).
    records_per_sync: Option<f64>,
}

/// One request function: does the request for `key` and returns the instant
/// its reserve step finished, if it has one, so reserve latency can be
/// reported on its own.
type Request<'a> = Box<dyn FnMut(&[u8; KEY_LEN]) -> Result<Option<Instant>, String> + 'a>;

/// Runs `threads` threads for one run. `make` builds each thread's request
/// function before the clock starts (connections, buffers). Every call counts
/// as `ops_per_call` operations (a batch of pairs).
fn drive<'env, F>(
    threads: usize,
    opts: &Options,
    keys: &Keys,
    ops_per_call: u64,
    make: F,
) -> Result<Measured, String>
where
    F: Fn(usize) -> Result<Request<'env>, String> + Sync,
{
    let barrier = Barrier::new(threads);
    let budget = Duration::from_secs_f64(opts.secs);
    type ThreadResult = Result<
        (
            Instant,
            Instant,
            u64,
            Option<f64>,
            Histogram<u64>,
            Histogram<u64>,
        ),
        String,
    >;
    let process_cpu_start = common::process_cpu_secs();
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (barrier, make, keys) = (&barrier, &make, keys);
                s.spawn(move || -> ThreadResult {
                    let made = make(i);
                    // Every thread reaches the barrier, even one whose setup
                    // failed, so the others are not left waiting.
                    barrier.wait();
                    let mut request = made?;
                    let mut gen = match keys {
                        Keys::Fresh { seed } => {
                            KeyGen::new(seed.wrapping_mul(1_000_003) + i as u64)
                        }
                        Keys::Existing(_) => KeyGen::new(0xA11CE + i as u64),
                    };
                    let mut total = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)
                        .map_err(|e| e.to_string())?;
                    let mut reserve = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)
                        .map_err(|e| e.to_string())?;
                    let cpu_start = common::thread_cpu_secs();
                    let start = Instant::now();
                    let deadline = start + budget;
                    let mut calls = 0u64;
                    loop {
                        let key = match keys {
                            Keys::Fresh { .. } => gen.next_key(),
                            Keys::Existing(set) => set[gen.below(set.len())],
                        };
                        let t0 = Instant::now();
                        let reserved = request(&key)?;
                        let t1 = Instant::now();
                        total.saturating_record(nanos(t1 - t0));
                        if let Some(r) = reserved {
                            reserve.saturating_record(nanos(r - t0));
                        }
                        calls += 1;
                        if calls >= opts.max_calls || t1 >= deadline {
                            let cpu = common::thread_cpu_secs()
                                .zip(cpu_start)
                                .map(|(end, start)| end - start);
                            return Ok((start, t1, calls, cpu, total, reserve));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".into()))
            })
            .collect()
    });
    let process_cpu = common::process_cpu_secs()
        .zip(process_cpu_start)
        .map(|(end, start)| end - start);
    let mut total =
        Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut reserve =
        Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut first, mut last, mut calls) = (None::<Instant>, None::<Instant>, 0u64);
    let mut cpu = Some(0.0);
    for r in results {
        let (start, end, n, thread_cpu, t, rsv) = r?;
        cpu = cpu.zip(thread_cpu).map(|(sum, c)| sum + c);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        calls += n;
        total.add(&t).map_err(|e| e.to_string())?;
        reserve.add(&rsv).map_err(|e| e.to_string())?;
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err("no thread ran".into());
    };
    let secs = (last - first).as_secs_f64().max(1e-9);
    let ops = calls * ops_per_call;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let has_reserve = !reserve.is_empty();
    Ok(Measured {
        ops_per_s: ops as f64 / secs,
        ops,
        p50_us: us(&total, 0.5),
        p99_us: us(&total, 0.99),
        reserve_p50_us: has_reserve.then(|| us(&reserve, 0.5)),
        reserve_p99_us: has_reserve.then(|| us(&reserve, 0.99)),
        rss_bytes_per_op: None,
        disk_bytes_per_op: None,
        cpu_us_per_op: cpu.map(|c| c * 1e6 / ops.max(1) as f64),
        process_cpu_us_per_op: process_cpu.map(|c| c * 1e6 / ops.max(1) as f64),
        records_per_sync: None,
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------------------
// Rows

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    /// Stable handle the ratio section looks rows up by.
    id: &'static str,
    workload: &'static str,
    system: String,
    threads: usize,
    /// The median run by throughput, or why the row was not measured.
    result: Result<Measured, String>,
    runs: usize,
    /// Every run's ops/s in the order made, so the spread around the
    /// median can be read from compare.jsonl.
    ops_per_s_runs: Vec<f64>,
}

/// A row to measure: its label and a function doing one run. Runs are
/// interleaved (every row's first run, then every row's second run, ...), so
/// a slow spell of the shared machine spreads over all rows instead of
/// skewing the ratios between two of them.
struct Planned<'a> {
    id: &'static str,
    workload: &'static str,
    system: String,
    threads: usize,
    run: Box<dyn FnMut() -> Result<Measured, String> + 'a>,
    done: Vec<Measured>,
    /// Why the row is not measured (set at planning or by a failed run).
    not_measured: Option<String>,
}

fn plan<'a>(
    id: &'static str,
    workload: &'static str,
    system: impl Into<String>,
    threads: usize,
    run: impl FnMut() -> Result<Measured, String> + 'a,
) -> Planned<'a> {
    Planned {
        id,
        workload,
        system: system.into(),
        threads,
        run: Box::new(run),
        done: Vec::new(),
        not_measured: None,
    }
}

fn skipped<'a>(
    id: &'static str,
    workload: &'static str,
    system: &str,
    threads: usize,
    why: &str,
) -> Planned<'a> {
    let mut p = plan(id, workload, system, threads, || Err("skipped".into()));
    p.not_measured = Some(why.into());
    p
}

impl Planned<'_> {
    /// One run: in a fresh child process of this bench ([`child_main`],
    /// which plans the rows again and runs only this one), or with
    /// `--in-process` here.
    fn run_once(&mut self, run: usize, runs: usize, opts: &Options) {
        if self.not_measured.is_some() {
            return;
        }
        eprintln!(
            "  run {}/{runs}: {} / {} / {} thread(s){}",
            run + 1,
            self.system,
            self.workload,
            self.threads,
            if opts.in_process { "" } else { ", own process" }
        );
        let measured = if opts.in_process {
            (self.run)()
        } else {
            measure_in_child(self.id, opts)
        };
        match measured {
            Ok(m) => self.done.push(m),
            Err(e) => self.not_measured = Some(format!("failed: {e}")),
        }
    }

    /// The row, with the median run by throughput.
    fn finish(mut self) -> Row {
        let runs = self.done.len();
        let ops_per_s_runs = self.done.iter().map(|m| m.ops_per_s.round()).collect();
        let result = match self.not_measured {
            Some(why) => Err(why),
            None if self.done.is_empty() => Err("no run".into()),
            None => {
                self.done
                    .sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
                Ok(self.done.swap_remove(runs / 2))
            }
        };
        Row {
            id: self.id,
            workload: self.workload,
            system: self.system,
            threads: self.threads,
            result,
            runs,
            ops_per_s_runs,
        }
    }
}

const PAIR: &str = "reserve+complete";
const REPLAY: &str = "replay hit (warm)";
const LEASE_TTL_MS: u64 = 86_400_000;

// ---------------------------------------------------------------------------
// idemlog

/// Builds the store an idemlog row runs against, in the row's scratch
/// directory (ignored by the in-memory store).
type StoreFactory = Box<dyn Fn(&Path) -> Result<Store, String>>;

/// An idemlog configuration to measure: a name for the table and how to
/// build a fresh store.
struct IdemlogSystem {
    name: String,
    make: StoreFactory,
    /// For stores whose data outlives them: the store that loads records
    /// before a replay row (then dropped, and `make` reopens the directory),
    /// so loading a Sync store does not take two fsyncs per record.
    loader: Option<StoreFactory>,
}

impl IdemlogSystem {
    fn in_memory() -> IdemlogSystem {
        IdemlogSystem {
            name: "idemlog in-memory".into(),
            make: Box::new(|_| Ok(Store::in_memory(Config::default()))),
            loader: None,
        }
    }
}

impl IdemlogSystem {
    /// The durable store in the row's scratch directory, with `durability`
    /// and otherwise the default configuration.
    fn durable(name: &str, durability: Durability) -> IdemlogSystem {
        IdemlogSystem {
            name: name.into(),
            make: Box::new(move |dir| {
                let config = Config::builder().durability(durability).build();
                Store::open(dir, config).map_err(|e| e.to_string())
            }),
            loader: Some(Box::new(|dir| {
                let config = Config::builder().durability(Durability::None).build();
                Store::open(dir, config).map_err(|e| e.to_string())
            })),
        }
    }
}

/// The durable store's rows: `(row id, system, threads)`.
fn durable_rows() -> Vec<(&'static str, IdemlogSystem, usize)> {
    let none = || IdemlogSystem::durable("idemlog durable None", Durability::None);
    let buffered = IdemlogSystem::durable(
        "idemlog durable Buffered 5 ms",
        Durability::Buffered {
            max_delay: Duration::from_millis(5),
        },
    );
    let sync = || IdemlogSystem::durable("idemlog durable Sync", Durability::Sync);
    vec![
        ("none-1", none(), 1),
        ("none-2", none(), 2),
        ("buffered-2", buffered, 2),
        ("sync-1", sync(), 1),
        ("sync-64", sync(), 64),
    ]
}

/// The fingerprint every benchmark request carries (what the store compares
/// on replay; its cost is measured separately in benches/ops.rs).
fn bench_fingerprint() -> Fingerprint {
    Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#)
}

/// The request as an application makes it: build the key from the header,
/// reserve, complete with a freshly produced 300-byte response.
fn idemlog_pair(store: Store) -> Request<'static> {
    let fp = bench_fingerprint();
    let response = common::response();
    Box::new(move |k| {
        let key = store.key(SCOPE, key_str(k)).map_err(|e| e.to_string())?;
        match store.reserve(&key, &fp).map_err(|e| e.to_string())? {
            Outcome::Acquired(reservation) => {
                let reserved = Instant::now();
                reservation
                    .complete(response.clone())
                    .map_err(|e| e.to_string())?;
                Ok(Some(reserved))
            }
            other => Err(format!("a fresh key was not acquired: {other:?}")),
        }
    })
}

/// Records per fdatasync between two readings of a store's figures; `None`
/// when it made no sync (in memory, `None` durability).
fn records_per_sync(before: &Stats, after: &Stats) -> Option<f64> {
    per_sync(
        after.records_synced.saturating_sub(before.records_synced),
        after.syncs.saturating_sub(before.syncs),
    )
}

/// `records / syncs`, `None` without a sync.
fn per_sync(records: u64, syncs: u64) -> Option<f64> {
    (syncs > 0).then(|| records as f64 / syncs as f64)
}

fn idemlog_pairs_row<'a>(
    id: &'static str,
    system: &'a IdemlogSystem,
    threads: usize,
    opts: &'a Options,
) -> Planned<'a> {
    let mut seed = 0;
    plan(id, PAIR, system.name.clone(), threads, move || {
        seed += 1;
        let dir = common::scratch_dir("idemlog-").map_err(|e| e.to_string())?;
        let store = (system.make)(dir.path())?;
        let rss_before = common::rss_bytes();
        let stats_before = store.stats();
        let mut m = drive(threads, opts, &Keys::Fresh { seed }, 1, |_| {
            Ok(idemlog_pair(store.clone()))
        })?;
        // Before the flush, whose sync the requests did not wait for.
        m.records_per_sync = records_per_sync(&stats_before, &store.stats());
        store.flush().map_err(|e| e.to_string())?;
        m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
        let disk = common::disk_bytes(dir.path());
        m.disk_bytes_per_op = (disk > 0).then(|| disk as f64 / m.ops as f64);
        drop(store);
        Ok(m)
    })
}

/// The in-memory store in its steady state, where records expire and the
/// next ones reuse their memory, as in a server that has run longer than
/// its TTL. A fill pass (half as long again as the measured one) makes
/// records; the store's clock then moves past their TTL and one
/// maintenance pass removes them all; the measured pass makes fresh
/// records in the freed memory. Its gap to the growing row above is what
/// first writes to new pages cost (the `first-touch` row).
fn idemlog_recycled_row<'a>(id: &'static str, threads: usize, opts: &'a Options) -> Planned<'a> {
    let mut seed = 2_000;
    let name = "idemlog in-memory, memory recycled";
    plan(id, PAIR, name, threads, move || {
        seed += 2;
        let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let config = Config::builder()
            .clock(clock.clone())
            .maintenance_interval(None)
            .build();
        let store = Store::in_memory(config);
        let filled = fill_and_age(&store, &clock, threads, opts, seed)?;
        let removed = store.run_maintenance().map_err(|e| e.to_string())?;
        if removed.expired != filled || store.stats().live_records != 0 {
            return Err(format!(
                "the fill pass made {filled} records but maintenance removed {} ({} left)",
                removed.expired,
                store.stats().live_records
            ));
        }
        let rss_before = common::rss_bytes();
        let mut m = drive(threads, opts, &Keys::Fresh { seed: seed + 1 }, 1, |_| {
            Ok(idemlog_pair(store.clone()))
        })?;
        m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
        Ok(m)
    })
}

/// The fill pass of a recycled row: requests for half as long again as the
/// measured pass, flushed, then the store's clock moved past every
/// record's lease and TTL. Returns the requests made.
fn fill_and_age(
    store: &Store,
    clock: &ManualClock,
    threads: usize,
    opts: &Options,
    seed: u64,
) -> Result<u64, String> {
    let fill = Options {
        secs: opts.secs * 1.5,
        only: Vec::new(),
        child_row: None,
        ..*opts
    };
    let filled = drive(threads, &fill, &Keys::Fresh { seed }, 1, |_| {
        Ok(idemlog_pair(store.clone()))
    })?;
    store.flush().map_err(|e| e.to_string())?;
    let config = store.config();
    clock.advance(config.ttl + config.lease + Duration::from_secs(1));
    Ok(filled.ops)
}

/// The durable `None` store in its steady state, where the log's oldest
/// segments expire and are deleted, as in a server that has run longer than
/// its TTL. A fill pass (half as long again as the measured one) writes
/// records; the store's clock moves past their TTL and maintenance removes
/// them and deletes every segment but the head; the measured pass appends
/// fresh records. The deleted segments' page-cache pages are freed, so the
/// measured pass's writes land in memory the machine has used before. On a
/// freshly booted VM the growing row's writes are the first touch of guest
/// memory, which costs the hypervisor several times the copy (see
/// docs/BENCHMARKS.md, eleventh session); its gap to this row is that.
fn idemlog_none_recycled_row<'a>(
    id: &'static str,
    threads: usize,
    opts: &'a Options,
) -> Planned<'a> {
    let mut seed = 4_000;
    let name = "idemlog durable None, log recycled";
    plan(id, PAIR, name, threads, move || {
        seed += 2;
        let dir = common::scratch_dir("idemlog-").map_err(|e| e.to_string())?;
        let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let config = Config::builder()
            .durability(Durability::None)
            .clock(clock.clone())
            .maintenance_interval(None)
            .build();
        let store = Store::open(dir.path(), config).map_err(|e| e.to_string())?;
        let filled = fill_and_age(&store, &clock, threads, opts, seed)?;
        let disk_filled = common::disk_bytes(dir.path());
        let (mut expired, mut deleted) = (0, 0);
        for passes in 1.. {
            let pass = store.run_maintenance().map_err(|e| e.to_string())?;
            expired += pass.expired;
            deleted += pass.segments_deleted;
            if !pass.more_work && pass.segments_deleted == 0 {
                break;
            }
            if passes == 1_000 {
                return Err(format!(
                    "maintenance still had work after {passes} passes ({deleted} segments deleted)"
                ));
            }
        }
        let disk_left = common::disk_bytes(dir.path());
        if expired != filled || store.stats().live_records != 0 || deleted == 0 {
            return Err(format!(
                "the fill pass made {filled} records but maintenance expired {expired} ({} left) and deleted {deleted} segments",
                store.stats().live_records
            ));
        }
        if disk_left * 2 > disk_filled {
            return Err(format!(
                "maintenance left {disk_left} of the fill pass's {disk_filled} bytes on disk"
            ));
        }
        let rss_before = common::rss_bytes();
        let mut m = drive(threads, opts, &Keys::Fresh { seed: seed + 1 }, 1, |_| {
            Ok(idemlog_pair(store.clone()))
        })?;
        store.flush().map_err(|e| e.to_string())?;
        m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
        let disk = common::disk_bytes(dir.path()).saturating_sub(disk_left);
        m.disk_bytes_per_op = (disk > 0).then(|| disk as f64 / m.ops as f64);
        drop(store);
        Ok(m)
    })
}

/// `tasks` async callers: tokio tasks on a runtime with one worker thread
/// per core, each making requests through the [`Backend`] trait, as the HTTP
/// layer does. With `Sync` a task's wait for its fdatasync is a future, so
/// no thread per caller blocks; the figure to hold against the blocking
/// callers of the row above it. CPU µs/op here is the whole process's.
fn idemlog_async_row<'a>(
    id: &'static str,
    system: &'a IdemlogSystem,
    tasks: usize,
    opts: &'a Options,
) -> Planned<'a> {
    let mut seed = 1_000;
    let name = format!("{}, async tasks", system.name);
    plan(id, PAIR, name, tasks, move || {
        seed += 1;
        let dir = common::scratch_dir("idemlog-async-").map_err(|e| e.to_string())?;
        let store = (system.make)(dir.path())?;
        let stats_before = store.stats();
        let pairs = (0..tasks)
            .map(|_| IdemlogPairs {
                store: store.clone(),
                fingerprint: bench_fingerprint(),
                response: Bytes::from(common::response()),
            })
            .collect();
        let mut m = drive_async(pairs, opts, seed)?;
        m.records_per_sync = records_per_sync(&stats_before, &store.stats());
        store.flush().map_err(|e| e.to_string())?;
        let disk = common::disk_bytes(dir.path());
        m.disk_bytes_per_op = (disk > 0).then(|| disk as f64 / m.ops.max(1) as f64);
        Ok(m)
    })
}

/// The group-commit floor (benches/floor/group_commit.rs): the async row's tasks, timing
/// and runtime around a log that only appends, writes and syncs, on a file
/// prepared like the disk rows'. Its gap to the disk's batch-64 row is what
/// 64 tasks' turnaround between two syncs costs on this machine whatever
/// the store; the async row's gap to it is the store's own work.
fn group_commit_floor_row(tasks: usize, opts: &Options) -> Planned<'_> {
    let mut seed = 2_000;
    plan(
        "floor-async-64",
        PAIR,
        "group-commit floor, async tasks",
        tasks,
        move || {
            seed += 1;
            let dir = common::scratch_dir("floor-").map_err(|e| e.to_string())?;
            let file = preallocated_file(dir.path()).map_err(|e| e.to_string())?;
            let log = Arc::new(floor::group_commit::FloorLog::new());
            let (reserve, complete) = (
                record_bytes(RESERVE_RECORD_BYTES, 0x5A),
                record_bytes(COMPLETE_RECORD_BYTES, 0xC3),
            );
            // Every task's membership exists before the syncer starts, and
            // goes with its task or, if the run fails before the task
            // starts, with the unused pairs: the syncer always stops.
            let pairs: Vec<FloorPairs> = (0..tasks)
                .map(|_| FloorPairs {
                    log: floor::group_commit::FloorLog::member(&log),
                    reserve: reserve.clone(),
                    complete: complete.clone(),
                })
                .collect();
            let syncer = {
                let log = Arc::clone(&log);
                std::thread::spawn(move || log.run_syncer(&file, DISK_FILE_BYTES))
            };
            let measured = drive_async(pairs, opts, seed);
            let synced = syncer
                .join()
                .map_err(|_| "the syncing thread panicked".to_string())?
                .map_err(|e| format!("the syncing thread: {e}"))?;
            let mut m = measured?;
            m.disk_bytes_per_op = Some(PAIR_BYTES as f64);
            m.records_per_sync = per_sync(synced.records, synced.syncs);
            Ok(m)
        },
    )
}

/// One async task's requests, for [`drive_async`].
trait AsyncPairs: Send + 'static {
    /// Makes the request for `key` (reserve, then complete) and returns
    /// when its reserve step finished.
    fn pair(
        &mut self,
        key: [u8; KEY_LEN],
    ) -> impl std::future::Future<Output = Result<Instant, String>> + Send + '_;
}

/// idemlog through the `Backend` trait, as the HTTP layer calls it.
struct IdemlogPairs {
    store: Store,
    fingerprint: Fingerprint,
    response: Bytes,
}

impl AsyncPairs for IdemlogPairs {
    async fn pair(&mut self, k: [u8; KEY_LEN]) -> Result<Instant, String> {
        let store = &self.store;
        let key = store.key(SCOPE, key_str(&k)).map_err(|e| e.to_string())?;
        let options = ReserveOptions::default();
        let lease = match Backend::reserve(store, &key, &self.fingerprint, options)
            .await
            .map_err(|e| e.to_string())?
        {
            Outcome::Acquired(lease) => lease,
            other => return Err(format!("a fresh key was not acquired: {other:?}")),
        };
        let reserved = Instant::now();
        Backend::complete(store, &lease, self.response.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(reserved)
    }
}

/// The floor's log: each record's bytes appended, then the wait for its
/// sync.
struct FloorPairs {
    log: floor::group_commit::Member,
    reserve: Vec<u8>,
    complete: Vec<u8>,
}

impl AsyncPairs for FloorPairs {
    async fn pair(&mut self, k: [u8; KEY_LEN]) -> Result<Instant, String> {
        let log = &self.log;
        log.durable(log.append(&self.reserve, &k)).await?;
        let reserved = Instant::now();
        log.durable(log.append(&self.complete, &k)).await?;
        Ok(reserved)
    }
}

/// Runs one tokio task per element of `pairs` on a multi-threaded runtime
/// with one worker per core, each making requests on fresh keys until the
/// run's time or request budget is spent. CPU µs/op is the whole process's
/// (the runtime's workers and any thread of the system under test), for
/// both columns.
fn drive_async<P: AsyncPairs>(
    pairs: Vec<P>,
    opts: &Options,
    seed: u64,
) -> Result<Measured, String> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let budget = Duration::from_secs_f64(opts.secs);
    let max_calls = opts.max_calls;
    let cpu_start = common::process_cpu_secs();
    let started = Instant::now();
    // Per task: requests made, whole-request and reserve latencies.
    type TaskResult = Result<(u64, Histogram<u64>, Histogram<u64>), String>;
    let outcomes: Vec<TaskResult> = runtime.block_on(async {
        let handles: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, mut pairs)| {
                tokio::spawn(async move {
                    let mut gen = KeyGen::new(seed * 1_000_003 + i as u64);
                    let (mut total, mut reserve) = (histogram()?, histogram()?);
                    let deadline = Instant::now() + budget;
                    let mut calls = 0u64;
                    loop {
                        let k = gen.next_key();
                        let t0 = Instant::now();
                        let reserved = pairs.pair(k).await?;
                        let t1 = Instant::now();
                        total.saturating_record(nanos(t1 - t0));
                        reserve.saturating_record(nanos(reserved - t0));
                        calls += 1;
                        if calls >= max_calls || t1 >= deadline {
                            return Ok((calls, total, reserve));
                        }
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(
                h.await
                    .unwrap_or_else(|e| Err(format!("a task failed: {e}"))),
            );
        }
        outcomes
    });
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let cpu = common::process_cpu_secs()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    drop(runtime);
    let (mut total, mut reserve, mut calls) = (histogram()?, histogram()?, 0u64);
    for outcome in outcomes {
        let (n, t, r) = outcome?;
        calls += n;
        total.add(&t).map_err(|e| e.to_string())?;
        reserve.add(&r).map_err(|e| e.to_string())?;
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let process_cpu_us = cpu.map(|c| c * 1e6 / calls.max(1) as f64);
    Ok(Measured {
        ops_per_s: calls as f64 / secs,
        ops: calls,
        p50_us: us(&total, 0.5),
        p99_us: us(&total, 0.99),
        reserve_p50_us: Some(us(&reserve, 0.5)),
        reserve_p99_us: Some(us(&reserve, 0.99)),
        rss_bytes_per_op: None,
        disk_bytes_per_op: None,
        cpu_us_per_op: process_cpu_us,
        process_cpu_us_per_op: process_cpu_us,
        records_per_sync: None,
    })
}

/// An empty latency histogram (1 ns to 10 min, 3 significant digits).
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| e.to_string())
}

/// The in-memory floor (benches/floor/memory.rs): the in-memory row's
/// requests, clock readings and 300-byte responses on a map that does only
/// what any store shared by threads must. Its figure is what any in-memory
/// store can reach with this harness on this machine.
fn memory_floor_row<'a>(id: &'static str, threads: usize, opts: &'a Options) -> Planned<'a> {
    let mut seed = 3_000;
    plan(
        id,
        PAIR,
        "in-memory floor: sharded map, no store",
        threads,
        move || {
            seed += 1;
            let map = Arc::new(floor::memory::FloorMap::default());
            floor_pairs(&map, threads, opts, seed)
        },
    )
}

/// The in-memory row's requests, clock readings and 300-byte responses on a
/// floor (benches/floor/): what the floor rows run. The row fails unless the
/// floor holds one entry per pair made.
fn floor_pairs<F: floor::Floor>(
    floor: &Arc<F>,
    threads: usize,
    opts: &Options,
    seed: u64,
) -> Result<Measured, String> {
    let fingerprint = *bench_fingerprint().digest();
    let rss_before = common::rss_bytes();
    let mut m = drive(threads, opts, &Keys::Fresh { seed }, 1, |_| {
        let floor = Arc::clone(floor);
        let response = common::response();
        let mut token = 0u64;
        // The wall clock read as idemlog's default clock reads it.
        let expiry = |ttl: Duration| SystemClock.now().saturating_add(ttl).as_millis();
        let config = Config::default();
        let (lease, ttl) = (config.lease, config.ttl);
        Ok(Box::new(move |k: &[u8; KEY_LEN]| {
            let identity = floor::memory::Identity::new(SCOPE.as_bytes(), k)?;
            token += 1;
            let ticket = floor.reserve(&identity, &fingerprint, token, expiry(lease + ttl))?;
            let reserved = Instant::now();
            // The response as the application hands it over, as in the
            // idemlog rows.
            floor.complete(&identity, &ticket, response.clone(), expiry(ttl))?;
            Ok(Some(reserved))
        }) as Request<'_>)
    })?;
    if floor.len() as u64 != m.ops {
        return Err(format!(
            "the floor made {} pairs but holds {} entries",
            m.ops,
            floor.len()
        ));
    }
    m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
    Ok(m)
}

/// The `None` floor (benches/floor/log.rs): the in-memory floor's map with
/// every record also written, behind a length and a checksum, to a log file
/// by a writer thread, as any log-structured store without syncs must. Its
/// figure is what any such store can reach with this harness on this
/// machine, the target the `None` rows are held to.
fn none_floor_row(threads: usize, opts: &Options) -> Planned<'_> {
    let mut seed = 3_500;
    plan(
        "floor-none-2",
        PAIR,
        "None floor: sharded map + log file, no store",
        threads,
        move || {
            seed += 1;
            let dir = common::scratch_dir("floor-none-").map_err(|e| e.to_string())?;
            let path = dir.path().join("log");
            let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            let (log, writer) = floor::log::LogFloor::start(file).map_err(|e| e.to_string())?;
            let measured = floor_pairs(&log, threads, opts, seed);
            // Stopped whether or not the run failed.
            let logged = log.close(writer)?;
            let mut m = measured?;
            let file_len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
            if file_len != logged {
                return Err(format!(
                    "the None floor logged {logged} bytes but its file holds {file_len}"
                ));
            }
            let on_disk = common::disk_bytes(dir.path());
            m.disk_bytes_per_op = Some(on_disk as f64 / m.ops.max(1) as f64);
            Ok(m)
        },
    )
}

/// The page the first-touch row writes to once: the unit its CPU per
/// operation is for.
const FRESH_PAGE: usize = 4096;

/// What touching memory the process has never used costs here: the first
/// write to each 4 KiB page of a fresh 256 MiB allocation (the kernel
/// zeroes a page, and under a hypervisor the host may have to back it).
/// One call is one page; every row that keeps growing memory pays this per
/// page it fills (the in-memory rows ~640 B per pair, i.e. a page per ~6).
fn first_touch_row(opts: &Options) -> Planned<'_> {
    plan(
        "first-touch",
        "first write to a fresh 4 KiB page",
        "machine: page fault + zeroing",
        1,
        move || {
            const PAGE: usize = FRESH_PAGE;
            const BYTES: usize = 256 << 20;
            drive(1, opts, &Keys::Fresh { seed: 5 }, 1, |_| {
                let mut memory: Vec<u8> = Vec::with_capacity(BYTES);
                let mut page = 0usize;
                Ok(Box::new(move |_: &[u8; KEY_LEN]| {
                    if (page + 1) * PAGE > memory.capacity() {
                        // A fresh mapping; the old one goes back to the OS.
                        memory = Vec::with_capacity(BYTES);
                        page = 0;
                    }
                    memory.spare_capacity_mut()[page * PAGE].write(1);
                    page += 1;
                    Ok(None)
                }) as Request<'static>)
            })
        },
    )
}

fn per_op(before: Option<u64>, after: Option<u64>, ops: u64) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / ops.max(1) as f64)
}

/// A store loaded with completed records, and their keys.
struct Loaded {
    /// Kept so the scratch directory lives as long as the store.
    _dir: tempfile::TempDir,
    store: Store,
    keys: Arc<Vec<[u8; KEY_LEN]>>,
}

fn load_completed(system: &IdemlogSystem, n: usize) -> Result<Loaded, String> {
    let dir = common::scratch_dir("idemlog-replay-").map_err(|e| e.to_string())?;
    let loader = system.loader.as_ref().unwrap_or(&system.make);
    let mut store = loader(dir.path())?;
    let mut gen = KeyGen::new(0x5EED);
    let keys: Vec<[u8; KEY_LEN]> = (0..n).map(|_| gen.next_key()).collect();
    let mut load = idemlog_pair(store.clone());
    for k in &keys {
        load(k)?;
    }
    drop(load);
    store.flush().map_err(|e| e.to_string())?;
    if system.loader.is_some() {
        drop(store);
        store = (system.make)(dir.path())?;
    }
    Ok(Loaded {
        _dir: dir,
        store,
        keys: Arc::new(keys),
    })
}

/// Loads `opts.replay_keys` completed records, then measures reserves that
/// replay them (random keys from the loaded set, same fingerprint).
fn idemlog_replay_row<'a>(
    id: &'static str,
    system: &'a IdemlogSystem,
    threads: usize,
    opts: &'a Options,
) -> Planned<'a> {
    let fp = bench_fingerprint();
    // Loaded on the row's first run, so rows left out by `--only` cost
    // nothing.
    let mut loaded: Option<Loaded> = None;
    plan(id, REPLAY, system.name.clone(), threads, move || {
        if loaded.is_none() {
            loaded = Some(
                load_completed(system, opts.replay_keys)
                    .map_err(|e| format!("load failed: {e}"))?,
            );
        }
        let Some(Loaded { store, keys, .. }) = loaded.as_ref() else {
            unreachable!("loaded just above")
        };
        drive(threads, opts, &Keys::Existing(Arc::clone(keys)), 1, |_| {
            let store = store.clone();
            Ok(Box::new(move |k: &[u8; KEY_LEN]| {
                let key = store.key(SCOPE, key_str(k)).map_err(|e| e.to_string())?;
                match store.reserve(&key, &fp).map_err(|e| e.to_string())? {
                    Outcome::Replay(replay) if replay.response.len() == common::RESPONSE_LEN => {
                        Ok(None)
                    }
                    other => Err(format!("a loaded key did not replay: {other:?}")),
                }
            }) as Request<'static>)
        })
    })
}

/// The bench's own cost per request (key generation, three clock reads,
/// two histogram records) with a request that only touches its key: what
/// every other row pays on top of the system it measures.
fn harness_row(opts: &Options) -> Planned<'_> {
    plan(
        "harness",
        "empty request",
        "bench harness only",
        2,
        move || {
            drive(2, opts, &Keys::Fresh { seed: 3 }, 1, |_| {
                Ok(Box::new(|k: &[u8; KEY_LEN]| {
                    std::hint::black_box(k);
                    Ok(Some(Instant::now()))
                }) as Request<'static>)
            })
        },
    )
}

// ---------------------------------------------------------------------------
// The disk's own limit

/// Framed size of the durable log's reserve record for these requests.
const RESERVE_RECORD_BYTES: usize = common::RESERVE_FRAME_LEN;
/// Framed size of the complete record with the 300-byte response.
const COMPLETE_RECORD_BYTES: usize = common::complete_frame_len(common::RESPONSE_LEN);
const PAIR_BYTES: usize = RESERVE_RECORD_BYTES + COMPLETE_RECORD_BYTES;
/// Size of the preallocated file the disk rows overwrite from offset 0.
const DISK_FILE_BYTES: u64 = 64 << 20;

/// A zero-filled, synced file: later writes overwrite allocated blocks, so
/// each fdatasync flushes data only (no block allocation, no size change).
fn preallocated_file(dir: &Path) -> std::io::Result<File> {
    let path = dir.join("disk-limit.log");
    let mut file = File::create(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(DISK_FILE_BYTES >> 20) {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    fs::OpenOptions::new().write(true).open(&path)
}

/// Record-shaped bytes (not zeros, so nothing can elide them).
fn record_bytes(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

/// How the file under a disk row starts out.
#[derive(Clone, Copy, PartialEq)]
enum DiskLayout {
    /// Zero-filled and synced first: each fdatasync flushes data only.
    Written,
    /// Preallocated with `fallocate` and never written ("unwritten"
    /// extents): each fdatasync must also record blocks as written.
    Unwritten,
    /// Preallocated, with a second thread writing zeros ahead of the
    /// appender the way idemlog's `Sync` prefill thread did until
    /// 2026-11-30 (it now writes them in steps before a sync, see
    /// src/log/prefill.rs): 128 KiB at a time, up to 8 MiB ahead, synced
    /// every MiB and whenever it catches up.
    ZeroedAhead,
}

/// Size of the preallocated file of the `Unwritten` and `ZeroedAhead`
/// rows: never wrapped within a run, so their blocks stay as the layout
/// says.
const FALLOCATED_FILE_BYTES: u64 = 1 << 30;

fn fallocated_file(dir: &Path) -> std::io::Result<File> {
    let path = dir.join("disk-limit.log");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        FALLOCATED_FILE_BYTES,
    )?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Whether the scratch directory's file system preallocates (not every
/// one does: ZFS before 2.2, NFS); the rows that need it are skipped if not.
fn fallocate_works() -> std::io::Result<()> {
    let dir = common::scratch_dir("fallocate-probe-")?;
    let file = File::create(dir.path().join("probe"))?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 4096)?;
    Ok(())
}

/// The former prefill thread's pattern, against the appender whose end is
/// `written`.
fn zero_ahead(file: &File, written: &AtomicU64, stop: &AtomicBool) -> Result<(), String> {
    const CHUNK: usize = 128 << 10;
    const AHEAD: u64 = 8 << 20;
    const SYNC_EVERY: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let (mut frontier, mut pending) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let first_free = written.load(Ordering::Acquire).next_multiple_of(4096);
        frontier = frontier.max(first_free);
        if frontier < (first_free + AHEAD).min(FALLOCATED_FILE_BYTES) {
            file.write_all_at(&zeros, frontier)
                .map_err(|e| e.to_string())?;
            frontier += CHUNK as u64;
            pending += CHUNK as u64;
            if pending < SYNC_EVERY {
                continue;
            }
        } else if pending == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        file.sync_data().map_err(|e| e.to_string())?;
        pending = 0;
    }
    Ok(())
}

/// One writer appending the records of whole pairs, `records` per
/// `fdatasync` (1, or an even number: `records / 2` pairs per call). With
/// one record per call each pair is two records, each followed by its own
/// fdatasync (reserve must be durable before the work runs, complete before
/// the response is acknowledged); with 64, the 64 records of 32 pairs go
/// out in one write and one fdatasync.
fn disk_limit_row<'a>(
    id: &'static str,
    records: usize,
    layout: DiskLayout,
    opts: &'a Options,
) -> Planned<'a> {
    // At most 38 characters: the table's system column.
    let system = match (layout, records) {
        (DiskLayout::Written, 1) => "disk limit: fdatasync per record".to_string(),
        (DiskLayout::Written, _) => format!("disk limit: fdatasync per {records} records"),
        (DiskLayout::Unwritten, _) => format!("disk limit: per {records} records, fallocated"),
        (DiskLayout::ZeroedAhead, _) => format!("disk limit: per {records} records, zeroing"),
    };
    if layout != DiskLayout::Written {
        if let Err(e) = fallocate_works() {
            let why = format!("no fallocate on this file system ({e})");
            return skipped(id, PAIR, &system, 1, &why);
        }
    }
    let batch = (records / 2).max(1);
    plan(id, PAIR, system, 1, move || {
        let dir = common::scratch_dir("disk-limit-").map_err(|e| e.to_string())?;
        let (file, file_bytes) = match layout {
            DiskLayout::Written => (preallocated_file(dir.path()), DISK_FILE_BYTES),
            _ => (fallocated_file(dir.path()), FALLOCATED_FILE_BYTES),
        };
        let file = file.map_err(|e| e.to_string())?;
        let reserve = record_bytes(RESERVE_RECORD_BYTES, 0x5A);
        let complete = record_bytes(COMPLETE_RECORD_BYTES, 0xC3);
        let batch_buf: Vec<u8> = (0..batch)
            .flat_map(|_| reserve.iter().chain(&complete).copied())
            .collect();
        let written = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let mut m = std::thread::scope(|s| {
            let neighbour = (layout == DiskLayout::ZeroedAhead)
                .then(|| s.spawn(|| zero_ahead(&file, &written, &stop)));
            let measured = drive(1, opts, &Keys::Fresh { seed: 1 }, batch as u64, |_| {
                let (file, written) = (&file, &written);
                let (reserve, complete, batch_buf) = (&reserve, &complete, &batch_buf);
                let mut offset = 0u64;
                let mut append = move |bytes: &[u8]| -> Result<(), String> {
                    if offset + bytes.len() as u64 > file_bytes {
                        offset = 0;
                    }
                    file.write_all_at(bytes, offset)
                        .map_err(|e| e.to_string())?;
                    offset += bytes.len() as u64;
                    written.store(offset, Ordering::Release);
                    file.sync_data().map_err(|e| e.to_string())
                };
                Ok(Box::new(move |_: &[u8; KEY_LEN]| {
                    if records == 1 {
                        append(reserve)?;
                        let reserved = Instant::now();
                        append(complete)?;
                        Ok(Some(reserved))
                    } else {
                        append(batch_buf)?;
                        Ok(None)
                    }
                }) as Request<'_>)
            });
            stop.store(true, Ordering::Relaxed);
            match neighbour.map(|n| n.join()) {
                Some(Ok(Err(e))) => Err(format!("zero-filling thread: {e}")),
                Some(Err(_)) => Err("zero-filling thread panicked".to_string()),
                _ => measured,
            }
        })?;
        m.disk_bytes_per_op = Some(PAIR_BYTES as f64);
        Ok(m)
    })
}

// ---------------------------------------------------------------------------
// sled

/// The in-flight value the non-idemlog stores keep: fingerprint (32 B),
/// token and lease-until (8 B each).
fn in_flight_value() -> Vec<u8> {
    let mut v = bench_fingerprint().digest().to_vec();
    v.extend_from_slice(&7u64.to_le_bytes());
    v.extend_from_slice(&LEASE_TTL_MS.to_le_bytes());
    v
}

fn sled_row<'a>(id: &'static str, flush: bool, threads: usize, opts: &'a Options) -> Planned<'a> {
    let system = if flush {
        "sled 0.34 + flush() per complete"
    } else {
        "sled 0.34 default"
    };
    plan(id, PAIR, system, threads, move || {
        let dir = common::scratch_dir("sled-").map_err(|e| e.to_string())?;
        let db = sled::open(dir.path()).map_err(|e| e.to_string())?;
        let rss_before = common::rss_bytes();
        let mut m = drive(threads, opts, &Keys::Fresh { seed: 7 }, 1, |_| {
            Ok(sled_pair(db.clone(), flush))
        })?;
        m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
        db.flush().map_err(|e| e.to_string())?;
        m.disk_bytes_per_op = Some(common::disk_bytes(dir.path()) as f64 / m.ops as f64);
        Ok(m)
    })
}

/// sled in the steady state of the idemlog recycled rows: a fill pass (half
/// as long again as the measured one) makes records, all of them are
/// removed, and the measured pass makes fresh records in the memory the
/// removed ones held, as a server does that deletes keys older than its
/// TTL. What the recycled idemlog rows compare with.
fn sled_recycled_row<'a>(id: &'static str, threads: usize, opts: &'a Options) -> Planned<'a> {
    plan(
        id,
        PAIR,
        "sled 0.34 default, memory recycled",
        threads,
        move || {
            let dir = common::scratch_dir("sled-").map_err(|e| e.to_string())?;
            let db = sled::open(dir.path()).map_err(|e| e.to_string())?;
            let fill = Options {
                secs: opts.secs * 1.5,
                only: Vec::new(),
                child_row: None,
                ..*opts
            };
            let filled = drive(threads, &fill, &Keys::Fresh { seed: 9 }, 1, |_| {
                Ok(sled_pair(db.clone(), false))
            })?;
            db.clear().map_err(|e| e.to_string())?;
            db.flush().map_err(|e| e.to_string())?;
            if !db.is_empty() {
                return Err(format!(
                    "{} of the fill pass's {} records left after clear()",
                    db.len(),
                    filled.ops
                ));
            }
            let rss_before = common::rss_bytes();
            let mut m = drive(threads, opts, &Keys::Fresh { seed: 10 }, 1, |_| {
                Ok(sled_pair(db.clone(), false))
            })?;
            m.rss_bytes_per_op = per_op(rss_before, common::rss_bytes(), m.ops);
            Ok(m)
        },
    )
}

/// One request on sled: `compare_and_swap` from nothing to an in-flight
/// value (reserve), then `insert` of the response (complete), and
/// `flush()` after it if asked.
fn sled_pair(db: sled::Db, flush: bool) -> Request<'static> {
    let in_flight = in_flight_value();
    let response = common::response();
    Box::new(move |k: &[u8; KEY_LEN]| {
        match db.compare_and_swap(&k[..], None::<&[u8]>, Some(&in_flight[..])) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("compare_and_swap found the fresh key".into()),
            Err(e) => return Err(e.to_string()),
        }
        let reserved = Instant::now();
        db.insert(&k[..], &response[..])
            .map_err(|e| e.to_string())?;
        if flush {
            db.flush().map_err(|e| e.to_string())?;
        }
        Ok(Some(reserved))
    })
}

// ---------------------------------------------------------------------------
// Redis

/// A redis-server this bench started on a free loopback port, in a scratch
/// directory; stopped by its pid on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(appendfsync_always: bool) -> Result<RedisServer, String> {
        let dir = common::scratch_dir("redis-").map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        if appendfsync_always {
            // No AOF rewrite during a run: it forks in the background and
            // would make the disk-growth figure meaningless.
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--auto-aof-rewrite-percentage", "0"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start redis-server: {e}"))?;
        let server = RedisServer { child, port, dir };
        // Bounded wait for the server to answer PING.
        for _ in 0..200 {
            if let Ok(mut con) = server.connect() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return Ok(server);
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "redis-server did not answer on port {port} within 5 s"
        ))
    }

    fn connect(&self) -> Result<redis::Connection, String> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .and_then(|c| c.get_connection())
            .map_err(|e| e.to_string())
    }

    /// The server's resident memory.
    fn rss_bytes(&self) -> Option<u64> {
        common::proc_kib_field(&format!("/proc/{}/status", self.child.id()), "VmRSS:")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const REDIS_CONNECTIONS: usize = 64;

fn redis_row<'a>(id: &'static str, appendfsync_always: bool, opts: &'a Options) -> Planned<'a> {
    let system = if appendfsync_always {
        "Redis appendfsync always"
    } else {
        "Redis no persistence"
    };
    // Started by the row's first run, so that only the process that runs
    // the row starts a server (each run's own child process, by default).
    let mut started: Option<RedisServer> = None;
    let mut seed = 100;
    plan(id, PAIR, system, REDIS_CONNECTIONS, move || {
        seed += 1;
        let server = match &mut started {
            Some(server) => server,
            None => started.insert(RedisServer::start(appendfsync_always)?),
        };
        let server = &*server;
        let mut admin = server.connect()?;
        redis::cmd("FLUSHALL")
            .query::<String>(&mut admin)
            .map_err(|e| e.to_string())?;
        let rss_before = server.rss_bytes();
        let disk_before = common::disk_bytes(server.dir.path());
        let mut m = drive(REDIS_CONNECTIONS, opts, &Keys::Fresh { seed }, 1, |_| {
            let mut con = server.connect()?;
            let in_flight = in_flight_value();
            let response = common::response();
            Ok(Box::new(move |k: &[u8; KEY_LEN]| {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&k[..])
                    .arg(&in_flight[..])
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE_TTL_MS)
                    .query(&mut con)
                    .map_err(|e| e.to_string())?;
                if set.is_none() {
                    return Err("SET NX found the fresh key".into());
                }
                let reserved = Instant::now();
                let set: Option<String> = redis::cmd("SET")
                    .arg(&k[..])
                    .arg(&response[..])
                    .arg("XX")
                    .query(&mut con)
                    .map_err(|e| e.to_string())?;
                if set.is_none() {
                    return Err("SET XX found no key".into());
                }
                Ok(Some(reserved))
            }) as Request<'static>)
        })?;
        m.rss_bytes_per_op = per_op(rss_before, server.rss_bytes(), m.ops);
        if appendfsync_always {
            let grown = common::disk_bytes(server.dir.path()).saturating_sub(disk_before);
            m.disk_bytes_per_op = Some(grown as f64 / m.ops as f64);
        }
        Ok(m)
    })
}

// ---------------------------------------------------------------------------
// One process per run
//
// A row run after others in one process inherits what they left: memory
// they freed, which spares a growing row page faults, fragmented free
// lists, and other systems' threads (sled's I/O pool outlives its
// database). On the nineteenth session's VM, two alternating pairs of
// `--only sled-2,mem-2,floor-mem-2 --runs 3` made 1.32-1.45 M pairs/s for
// idemlog's in-memory row and 83-85 k for sled's in one process, and
// 1.56-1.57 M and 75-76 k with a process per run (docs/BENCHMARKS.md). So by
// default each run of each row is made by a fresh child process of this
// bench, as each system would run in a server of its own; the runs stay
// interleaved across rows.

/// The argument that makes this bench a child that runs one row once.
const CHILD_FLAG: &str = "--child-row";

/// The longest one child may take for its run: many times any row's
/// budget (a few seconds, after loading or filling for a few more), so only
/// a hung run reaches it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The prefix of the child's stdout line that carries its result as JSON.
const CHILD_RESULT: &str = "idemlog-compare-result ";

/// What a child reports of its one run.
#[derive(serde::Serialize, serde::Deserialize)]
enum ChildResult {
    Measured(Measured),
    Failed(String),
}

/// Runs row `id` once in a fresh child process and reads back what it
/// measured.
fn measure_in_child(id: &str, opts: &Options) -> Result<Measured, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this bench's own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([CHILD_FLAG, id]);
    if opts.quick {
        cmd.arg("--quick");
    }
    if !opts.redis {
        cmd.arg("--no-redis");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not start a child process for row {id}: {e}"))?;
    // A watchdog kills a child that outlives CHILD_TIMEOUT, so a hung run
    // fails its row within minutes instead of holding the bench (and CI)
    // until something else gives up.
    let pid = child.id().to_string();
    let (finished, finished_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = matches!(
            finished_rx.recv_timeout(CHILD_TIMEOUT),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        timed_out
    });
    let out = child.wait_with_output();
    drop(finished);
    let timed_out = watchdog.join().unwrap_or(false);
    let out = out.map_err(|e| format!("row {id}'s child process could not be waited for: {e}"))?;
    if timed_out {
        return Err(format!(
            "row {id}'s run did not finish within {} s; its process was killed",
            CHILD_TIMEOUT.as_secs()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(json) = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(CHILD_RESULT))
    else {
        return Err(format!(
            "row {id}'s child process ended ({}) without reporting a result",
            out.status
        ));
    };
    match serde_json::from_str(json) {
        Ok(ChildResult::Measured(m)) => Ok(m),
        Ok(ChildResult::Failed(why)) => Err(why),
        Err(e) => Err(format!(
            "row {id}'s child process reported {json:?}, which is not a result: {e}"
        )),
    }
}

/// The child's whole work: run row `id` once, report on stdout, exit.
fn child_main(mut planned: Vec<Planned<'_>>, id: &str) -> ! {
    planned.retain(|row| row.id == id);
    let result = match planned.first_mut() {
        None => ChildResult::Failed(format!("no row has the id {id}")),
        Some(row) => match &row.not_measured {
            Some(why) => ChildResult::Failed(format!("the row cannot run here: {why}")),
            None => match (row.run)() {
                Ok(m) => ChildResult::Measured(m),
                Err(e) => ChildResult::Failed(e),
            },
        },
    };
    // Servers and scratch directories go before the process does.
    drop(planned);
    match serde_json::to_string(&result) {
        Ok(json) => {
            println!("{CHILD_RESULT}{json}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("row {id}: the result could not be written as JSON: {e}");
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------------------
// Output

fn print_table(rows: &[Row]) {
    println!(
        "{:<18} {:<38} {:>7} {:>13} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "workload",
        "system",
        "threads",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "rsv p50",
        "rsv p99",
        "CPU µs/op",
        "proc µs/op",
        "RAM B/op",
        "disk B/op"
    );
    println!("{}", "-".repeat(163));
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in rows {
        match &r.result {
            Ok(m) => println!(
                "{:<18} {:<38} {:>7} {:>13} {:>9.2} {:>9.2} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
                r.workload,
                r.system,
                r.threads,
                common::thousands(m.ops_per_s),
                m.p50_us,
                m.p99_us,
                opt(m.reserve_p50_us, 2),
                opt(m.reserve_p99_us, 2),
                opt(m.cpu_us_per_op, 2),
                opt(m.process_cpu_us_per_op, 2),
                opt(m.rss_bytes_per_op, 0),
                opt(m.disk_bytes_per_op, 0),
            ),
            Err(why) => println!(
                "{:<18} {:<38} {:>7} not measured: {why}",
                r.workload, r.system, r.threads
            ),
        }
    }
}

/// One note line: how many records each fdatasync carried in the rows
/// that sync (the group commit at work).
fn print_records_per_sync(rows: &[Row]) {
    let figures: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let per_sync = r.result.as_ref().ok()?.records_per_sync?;
            Some(format!("{} × {}: {per_sync:.1}", r.system, r.threads))
        })
        .collect();
    if !figures.is_empty() {
        println!(
            "  * records per fdatasync (rows that sync through a group commit; a pair is 2 records): {}.",
            figures.join("; ")
        );
    }
}

fn write_jsonl(
    rows: &[Row],
    opts: &Options,
    context: &serde_json::Value,
) -> std::io::Result<std::path::PathBuf> {
    let path = common::bench_root()?.join("compare.jsonl");
    let mut out = File::create(&path)?;
    for r in rows {
        let mut line = serde_json::json!({
            "id": r.id,
            "workload": r.workload,
            "system": r.system,
            "threads": r.threads,
            "runs": r.runs,
            "ops_per_s_runs": r.ops_per_s_runs,
            "quick": opts.quick,
            "context": context,
        });
        match &r.result {
            Ok(m) => {
                let fields = serde_json::json!({
                    "ops_per_s": m.ops_per_s.round(),
                    "ops": m.ops,
                    "p50_us": m.p50_us,
                    "p99_us": m.p99_us,
                    "reserve_p50_us": m.reserve_p50_us,
                    "reserve_p99_us": m.reserve_p99_us,
                    "cpu_us_per_op": m.cpu_us_per_op,
                    "process_cpu_us_per_op": m.process_cpu_us_per_op,
                    "records_per_sync": m.records_per_sync,
                    "rss_bytes_per_op": m.rss_bytes_per_op.map(f64::round),
                    "disk_bytes_per_op": m.disk_bytes_per_op.map(f64::round),
                });
                if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
                    l.extend(f);
                }
            }
            Err(why) => line["not_measured"] = why.clone().into(),
        }
        writeln!(out, "{line}")?;
    }
    Ok(path)
}

/// A target's verdict: met, missed, or not measured.
fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "-",
    }
}

/// The issue's targets, each as a measured figure against a threshold.
fn print_targets(rows: &[Row]) {
    let get = |id: &str| {
        rows.iter()
            .find(|r| r.id == id)
            .and_then(|r| r.result.as_ref().ok())
    };
    let ops = |id: &str| get(id).map(|m| m.ops_per_s);
    let ratio = |a: &str, b: &str| Some(ops(a)? / ops(b)?);
    enum Goal {
        AtLeast(f64),
        Below(f64),
    }
    let lines: Vec<(&str, Option<f64>, Goal, &str)> = vec![
        (
            "in-memory, 2 threads, pairs/s",
            ops("mem-2"),
            Goal::AtLeast(1e6),
            "",
        ),
        (
            "durable None, 2 threads, pairs/s",
            ops("none-2"),
            Goal::AtLeast(1e6),
            "",
        ),
        (
            "in-memory 2 thr / sled default 2 thr",
            ratio("mem-2", "sled-2"),
            Goal::AtLeast(15.0),
            "×",
        ),
        (
            "None 2 thr / sled default 2 thr",
            ratio("none-2", "sled-2"),
            Goal::AtLeast(15.0),
            "×",
        ),
        (
            "in-memory 2 thr / Redis no persistence",
            ratio("mem-2", "redis-none"),
            Goal::AtLeast(15.0),
            "×",
        ),
        (
            "None 2 thr / Redis no persistence",
            ratio("none-2", "redis-none"),
            Goal::AtLeast(15.0),
            "×",
        ),
        (
            "Sync 64 threads / disk batch-64 (64 records)",
            ratio("sync-64", "disk-64"),
            Goal::AtLeast(0.7),
            "×",
        ),
        (
            "Sync 64 async tasks / disk batch-64",
            ratio("sync-64-async", "disk-64"),
            Goal::AtLeast(0.7),
            "×",
        ),
        (
            "Sync 64 threads / Redis appendfsync always",
            ratio("sync-64", "redis-always"),
            Goal::AtLeast(4.0),
            "×",
        ),
        (
            "Sync 64 async tasks / Redis appendfsync always",
            ratio("sync-64-async", "redis-always"),
            Goal::AtLeast(4.0),
            "×",
        ),
        (
            "Sync 1 caller / disk batch-1",
            ratio("sync-1", "disk-1"),
            Goal::AtLeast(0.85),
            "×",
        ),
        (
            "replay hits, 2 threads, /s",
            ops("replay-2"),
            Goal::AtLeast(5e5),
            "",
        ),
        (
            "reserve p99 in-memory, 1 thread, µs",
            get("mem-1").and_then(|m| m.reserve_p99_us),
            Goal::Below(5.0),
            " µs",
        ),
        (
            "reserve p99 in-memory, 2 threads, µs",
            get("mem-2").and_then(|m| m.reserve_p99_us),
            Goal::Below(5.0),
            " µs",
        ),
    ];
    let passes = |value: Option<f64>, goal: &Goal| match *goal {
        Goal::AtLeast(t) => value.map(|v| v >= t),
        Goal::Below(t) => value.map(|v| v < t),
    };
    println!();
    println!("Targets (issue #4; ratios within this run):");
    for (name, value, goal, unit) in lines {
        let want = match goal {
            Goal::AtLeast(t) => format!("≥ {}{unit}", fmt_num(t)),
            Goal::Below(t) => format!("< {}{unit}", fmt_num(t)),
        };
        let pass = passes(value, &goal);
        let got = value.map_or("not measured".to_string(), |v| {
            format!("{}{unit}", fmt_num(v))
        });
        let verdict = verdict(pass);
        println!("  {name:<45} {want:>14}   measured {got:>14}   {verdict}");
    }
    // Two of the issue's rows name alternatives: "in-memory or `None`" and
    // "`Sync`, 64 concurrent callers", which threads or async tasks can be.
    // Such a row is met when one alternative meets every figure of it that
    // this run measured; the lines above judge each figure alone.
    let at_least = |id: &str, of: &str, t: f64| (ratio(id, of), Goal::AtLeast(t));
    let whole = [
        (
            "in-memory or None, 2 threads",
            [
                (
                    "in-memory",
                    vec![
                        (ops("mem-2"), Goal::AtLeast(1e6)),
                        at_least("mem-2", "sled-2", 15.0),
                        at_least("mem-2", "redis-none", 15.0),
                    ],
                ),
                (
                    "None",
                    vec![
                        (ops("none-2"), Goal::AtLeast(1e6)),
                        at_least("none-2", "sled-2", 15.0),
                        at_least("none-2", "redis-none", 15.0),
                    ],
                ),
            ],
        ),
        (
            "Sync, 64 concurrent callers",
            [
                (
                    "threads",
                    vec![
                        at_least("sync-64", "disk-64", 0.7),
                        at_least("sync-64", "redis-always", 4.0),
                    ],
                ),
                (
                    "async tasks",
                    vec![
                        at_least("sync-64-async", "disk-64", 0.7),
                        at_least("sync-64-async", "redis-always", 4.0),
                    ],
                ),
            ],
        ),
    ];
    println!(
        "Issue rows with alternatives (met when one alternative meets all its measured figures):"
    );
    for (row, alternatives) in whole {
        let mut parts = Vec::new();
        let mut met = None;
        for (name, figures) in &alternatives {
            let judged: Vec<bool> = figures.iter().filter_map(|(v, g)| passes(*v, g)).collect();
            if judged.is_empty() {
                parts.push(format!("{name} not measured"));
                continue;
            }
            let passed = judged.iter().filter(|p| **p).count();
            let unmeasured = figures.len() - judged.len();
            parts.push(format!(
                "{name} meets {passed}/{}{}",
                judged.len(),
                if unmeasured > 0 {
                    format!(" ({unmeasured} not measured)")
                } else {
                    String::new()
                }
            ));
            met = Some(met.unwrap_or(false) || passed == judged.len());
        }
        let verdict = verdict(met);
        println!("  {row:<30} {:<66} {verdict}", parts.join("; "));
    }
    // What bounds the Sync-64 target on this machine: the same tasks around
    // a log with no store (benches/floor/group_commit.rs), against the disk and against
    // idemlog.
    let bounds = [
        (
            "group-commit floor / disk batch-64",
            ratio("floor-async-64", "disk-64"),
        ),
        (
            "Sync 64 async tasks / group-commit floor",
            ratio("sync-64-async", "floor-async-64"),
        ),
    ];
    if bounds.iter().any(|(_, v)| v.is_some()) {
        println!("Bounds (64 async tasks, no store; not targets):");
        for (name, value) in bounds {
            print_bound(name, value, "×");
        }
    }
    // What bounds the in-memory target: the floor (the same requests on a
    // map that does only what any store must) is what a store can reach
    // here at all. The rows keep both cores busy, so their CPU per pair
    // caps them, and first writes to fresh pages (the first-touch row's
    // cost per page, times the pages a growing row takes per pair) are a
    // share of that CPU only the machine sets.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = |id: &str| {
        let row = rows.iter().find(|r| r.id == id)?;
        let cpu = row.result.as_ref().ok()?.process_cpu_us_per_op?;
        Some(row.threads.min(cores) as f64 * 1e6 / cpu)
    };
    let fresh_share = || {
        let grown = get("mem-2")?;
        let per_page = get("first-touch")?.cpu_us_per_op?;
        let fresh_us = grown.rss_bytes_per_op? / FRESH_PAGE as f64 * per_page;
        Some(100.0 * fresh_us / grown.process_cpu_us_per_op?)
    };
    let memory_bounds = [
        (
            "in-memory floor (no store), 2 thr, pairs/s",
            ops("floor-mem-2"),
            "",
        ),
        (
            "in-memory 2 thr / in-memory floor",
            ratio("mem-2", "floor-mem-2"),
            "×",
        ),
        (
            "in-memory 2 thr: cores / CPU per pair",
            ceiling("mem-2"),
            "",
        ),
        (
            "  of that, fresh pages at first-touch price",
            fresh_share(),
            " %",
        ),
        (
            "in-memory recycled: cores / CPU per pair",
            ceiling("mem-2-recycled"),
            "",
        ),
        (
            "in-memory floor / sled default 2 thr",
            ratio("floor-mem-2", "sled-2"),
            "×",
        ),
        (
            "None floor (map + log file, no store), 2 thr",
            ops("floor-none-2"),
            "",
        ),
        (
            "None 2 thr / None floor",
            ratio("none-2", "floor-none-2"),
            "×",
        ),
        (
            "None floor / sled default 2 thr",
            ratio("floor-none-2", "sled-2"),
            "×",
        ),
        ("None recycled, 2 thr, pairs/s", ops("none-2-recycled"), ""),
        (
            "None recycled / sled default 2 thr",
            ratio("none-2-recycled", "sled-2"),
            "×",
        ),
        (
            "in-memory recycled / sled recycled",
            ratio("mem-2-recycled", "sled-2-recycled"),
            "×",
        ),
        (
            "None recycled / sled recycled",
            ratio("none-2-recycled", "sled-2-recycled"),
            "×",
        ),
    ];
    if memory_bounds.iter().any(|(_, v, _)| v.is_some()) {
        println!("Bounds (pairs/s on {cores} cores; not targets):");
        for (name, value, unit) in memory_bounds {
            print_bound(name, value, unit);
        }
    }
}

/// One line of a "Bounds" block, aligned with the targets above it.
fn print_bound(name: &str, value: Option<f64>, unit: &str) {
    let got = value.map_or("not measured".to_string(), |v| {
        format!("{}{unit}", fmt_num(v))
    });
    println!("  {name:<45} {:>14}   measured {got:>14}", "");
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        common::thousands(v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

// ---------------------------------------------------------------------------

fn main() {
    let opts = Options::from_args();
    let root = match common::bench_root() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot create target/idemlog-bench: {e}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();

    let memory = IdemlogSystem::in_memory();
    let durable = durable_rows();
    let durable_sync = IdemlogSystem::durable("idemlog durable Sync", Durability::Sync);
    let mut planned = vec![
        idemlog_pairs_row("mem-1", &memory, 1, &opts),
        idemlog_pairs_row("mem-2", &memory, 2, &opts),
        idemlog_recycled_row("mem-2-recycled", 2, &opts),
        // After the recycled row, whose freed memory the allocator may hand
        // it with `--in-process`: the floor can only gain from that, so it
        // stays a bound.
        memory_floor_row("floor-mem-2", 2, &opts),
        idemlog_replay_row("replay-2", &memory, 2, &opts),
        idemlog_replay_row("replay-durable-2", &durable_sync, 2, &opts),
        harness_row(&opts),
        first_touch_row(&opts),
    ];

    for (id, system, threads) in &durable {
        planned.push(idemlog_pairs_row(id, system, *threads, &opts));
        if *id == "none-2" {
            planned.push(idemlog_none_recycled_row("none-2-recycled", 2, &opts));
            // After the recycled row, as the in-memory floor runs after
            // its own: whatever memory that leaves can only help the floor.
            planned.push(none_floor_row(2, &opts));
        }
    }
    planned.push(idemlog_async_row("sync-64-async", &durable_sync, 64, &opts));
    planned.push(group_commit_floor_row(64, &opts));

    planned.push(disk_limit_row("disk-1", 1, DiskLayout::Written, &opts));
    planned.push(disk_limit_row("disk-64", 64, DiskLayout::Written, &opts));
    planned.push(disk_limit_row("disk-128", 128, DiskLayout::Written, &opts));
    planned.push(disk_limit_row(
        "disk-64-unwritten",
        64,
        DiskLayout::Unwritten,
        &opts,
    ));
    planned.push(disk_limit_row(
        "disk-64-zeroing",
        64,
        DiskLayout::ZeroedAhead,
        &opts,
    ));

    planned.push(sled_row("sled-1", false, 1, &opts));
    planned.push(sled_row("sled-2", false, 2, &opts));
    planned.push(sled_recycled_row("sled-2-recycled", 2, &opts));
    planned.push(sled_row("sled-flush-2", true, 2, &opts));

    let redis_missing = "redis-server not installed; install it with `apt-get install -y redis-server` (Debian package redis-server)";
    for (id, always) in [("redis-none", false), ("redis-always", true)] {
        let system = if always {
            "Redis appendfsync always"
        } else {
            "Redis no persistence"
        };
        if !opts.redis {
            planned.push(skipped(
                id,
                PAIR,
                system,
                REDIS_CONNECTIONS,
                "skipped by --no-redis",
            ));
        } else if !redis_installed() {
            planned.push(skipped(id, PAIR, system, REDIS_CONNECTIONS, redis_missing));
        } else {
            planned.push(redis_row(id, always, &opts));
        }
    }
    if let Some(id) = &opts.child_row {
        child_main(planned, id);
    }
    let filesystem = common::filesystem_of(&root);
    let machine = common::machine();
    eprintln!(
        "compare: {} mode, {} run(s) per row, {:.0} s or {} requests per thread per run, {}",
        if opts.quick { "quick" } else { "full" },
        opts.runs,
        opts.secs,
        common::thousands(opts.max_calls as f64),
        if opts.in_process {
            "every run in this process"
        } else {
            "each run in a child process of its own"
        }
    );
    if opts.redis && !redis_installed() {
        eprintln!("{redis_missing}: Redis rows skipped");
    }

    if !opts.only.is_empty() {
        planned.retain(|row| opts.only.iter().any(|id| id == row.id));
        if planned.is_empty() {
            eprintln!(
                "--only {}: no such row; row ids are listed in docs/BENCHMARKS.md",
                opts.only.join(",")
            );
            std::process::exit(2);
        }
    }
    for run in 0..opts.runs {
        for row in planned.iter_mut() {
            row.run_once(run, opts.runs, &opts);
        }
    }
    let rows: Vec<Row> = planned.into_iter().map(Planned::finish).collect();

    println!();
    println!(
        "idemlog compare — {} mode, {} run(s) per row, interleaved across rows (median run shown), {:.0} s per run",
        if opts.quick { "quick" } else { "full" },
        opts.runs,
        opts.secs
    );
    println!("machine: {machine}; scratch files on {filesystem}");
    println!();
    print_table(&rows);
    println!();
    println!("Notes:");
    println!("  * One request = reserve (insert-if-absent of an in-flight record) + complete (300-byte response), fresh 32-byte random key; ops/s for those rows are pairs/s.");
    println!("  * Latency columns: whole request (p50/p99) and its reserve step alone (rsv); for the batched disk rows one call is one batch (one write + one fdatasync).");
    println!("  * first write to a fresh 4 KiB page: what each page of new memory costs this machine (page fault + zeroing; under a hypervisor possibly a host fault too). Rows that keep every record in memory grow by ~640 B per pair (in-memory) and the page cache by ~600 B per pair (durable): their throughput and p99 include this cost. The row maps 256 MiB at a time and unmaps it when full, so it prices pages the process has just given back; memory a process keeps can cost more once it has taken a lot (`cargo bench --bench footprint` ends with a probe of memory kept, by 256 MiB step), and then the growing rows pay more per page than this row and the share below says.");
    println!("  * in-memory, memory recycled: the 2-thread in-memory row in its steady state. A fill pass makes records, the store's clock moves past their TTL, one maintenance pass removes them, and the measured pass makes fresh records in the freed memory (RAM B/op ≈ 0), as in a server that has run longer than its TTL.");
    println!(
        "  * Disk limit: one writer overwriting a preallocated, zero-filled {} MiB file from offset 0; reserve record {RESERVE_RECORD_BYTES} B + complete record {COMPLETE_RECORD_BYTES} B = {PAIR_BYTES} B per pair. \
         Batch 1 = each record followed by its own fdatasync (2 syncs per pair, reported as pairs/s); batch 64 = 64 records (32 pairs) per write + fdatasync, the most 64 Sync callers can hand one sync (each waits for its reserve before it completes); batch 128 = 64 pairs per sync, for context. \
         \"fallocated\": the 64-record batches appended into preallocated, never-written blocks; \"zeroing\": the same while a second thread writes zeros ahead the way idemlog's Sync prefill thread did until 2026-11-30.",
        DISK_FILE_BYTES >> 20
    );
    println!("  * sled default, memory recycled: the 2-thread sled row in the steady state of the recycled idemlog rows. A fill pass makes records, clear() removes them all, and the measured pass makes fresh records in the memory they held, as a server does that deletes keys older than its TTL.");
    println!("  * sled's flush() uses sync_file_range (plus fsync of its own metadata only when needed), which is weaker than fdatasync: it does not flush the disk's write cache or file metadata.");
    println!("  * idemlog durable rows: disk B/op includes the preallocated 64 MiB segment, so rows with few operations (Sync 1) show large figures; footprint.rs measures bytes per record.");
    println!("  * Sync, async tasks: 64 tokio tasks on a runtime with one worker per core, requests through the Backend trait (as the HTTP layer makes them); a task's fdatasync wait is a future, so no OS thread per caller. Its CPU µs/op is the whole process's (workers and the writer thread).");
    println!("  * durable None, log recycled: the 2-thread None row in its steady state. A fill pass writes records, the store's clock moves past their TTL, maintenance removes them and deletes their segments, and the measured pass appends fresh records to a log whose freed page-cache memory the machine has used before, as in a server that has run longer than its TTL. On a freshly booted VM the growing row pays the hypervisor for every first-touched page of page cache.");
    println!("  * in-memory floor: the 2-thread in-memory row's requests, clock readings and responses on a map that does only what any store shared by threads must (benches/floor/memory.rs): a keyed SipHash per identity, 64 mutex-guarded shards, an entry with the identity, fingerprint, token, expiry and response; no leases, takeovers, expiry pass or counters. The most any in-memory store can reach with this harness on this machine.{}", if opts.in_process { " It runs after the recycled row and may reuse its freed memory (its RAM B/op shows how much), which can only help it." } else { "" });
    println!("  * group-commit floor: the same 64 tasks, runtime and timing around a log with no store (benches/floor/group_commit.rs): each task appends its record's bytes and waits; one thread gathers them as idemlog's Sync log does, writes them to a file prepared like the disk rows' and syncs. The most any store can reach with 64 async tasks on this machine.");
    print_records_per_sync(&rows);
    println!("  * Redis: {REDIS_CONNECTIONS} client threads, one connection each, one request at a time per connection (no pipelining); SET key v NX PX {LEASE_TTL_MS} then SET key v XX. Client and server share the machine's cores.");
    println!("  * None floor: the in-memory floor's map with every reserve and complete also written as a whole record (identity, fingerprint, token, expiry, response) behind a length and a CRC-32C to one log file, through a shared buffer that a writer thread writes at 1 MiB or every 10 ms and a caller past 4 MiB, as idemlog's None log does (benches/floor/log.rs); a completed entry keeps its record's offset, not the response. No segments, read-backs or side tables: the most any log-structured store without syncs can reach with this harness on this machine.");
    println!("  * CPU µs/op = CPU time (user + system) of the bench threads per operation: what an operation costs whatever else the machine runs (Redis rows: the client side only). proc µs/op = the whole process's, which adds the threads the system runs itself (idemlog's writer and maintenance threads, sled's flusher) competing for the same cores; for the async row both are the process's.");
    println!("  * RAM B/op = growth of the resident set of the process holding the data (Redis: the server) per request; allocator reuse makes it approximate — benches/footprint.rs measures it carefully.");
    if !opts.in_process {
        println!("  * Each run of each row was made by a fresh process of this bench (runs still interleaved across rows), so no row inherits another's freed memory or leftover threads.");
    }
    println!("  * The machine's cores are shared with other work: figures are noisy, ratios within one run are what count.");
    print_targets(&rows);

    let context = serde_json::json!({
        "machine": machine,
        "filesystem": filesystem,
        "reserve_record_bytes": RESERVE_RECORD_BYTES,
        "complete_record_bytes": COMPLETE_RECORD_BYTES,
        "secs_per_run": opts.secs,
    });
    match write_jsonl(&rows, &opts, &context) {
        Ok(path) => println!("\nrows written to {}", path.display()),
        Err(e) => eprintln!("could not write compare.jsonl: {e}"),
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    // A row that ran and failed is a bug (a missed target is not): fail the
    // run, so CI's smoke run of `--quick` catches it.
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(&r.result, Err(why) if why.starts_with("failed")))
        .map(|r| r.id)
        .collect();
    if !failed.is_empty() {
        eprintln!("rows that failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
