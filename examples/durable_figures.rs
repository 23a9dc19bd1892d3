//! Figures of the durable store: throughput per durability, RAM and disk per
//! record, reopen time. Run in release:
//!
//! ```text
//! cargo run --release --example durable_figures [DIR] [--ten-million]
//! ```
//!
//! DIR (default: a fresh directory under the system temp dir) decides which
//! disk the Sync figures and the raw-disk limits measure. The RAM and reopen
//! figures run in child processes of their own (`--load N DIR` and
//! `--reopen DIR`), so that no earlier allocation hides in the RSS delta;
//! `--ten-million` adds the 10 M-record probe (about 5 GB of disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idemlog::{Config, Durability, Fingerprint, IdempotencyKey, Outcome, Store};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn config(durability: Durability) -> Config {
    Config::builder()
        .durability(durability)
        .maintenance_interval(None)
        .build()
}

/// `threads` threads each run `per_thread` reserve+complete pairs on keys of
/// their own; returns pairs per second.
fn pairs(store: &Store, threads: usize, per_thread: usize, response: &[u8], tag: &str) -> f64 {
    let fp = Fingerprint::of_bytes(b"{\"amount\":1200}");
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                // Keys are made on the fly, so the RSS figure counts only
                // what the store keeps.
                let mut name = String::with_capacity(32);
                for i in 0..per_thread {
                    use std::fmt::Write;
                    name.clear();
                    let _ = write!(name, "{tag}-{t}-{i:08}");
                    let key = IdempotencyKey::new("tenant-1", &name).unwrap();
                    match store.reserve(&key, &fp).unwrap() {
                        Outcome::Acquired(r) => r.complete(response.to_vec()).unwrap(),
                        other => panic!("got {other:?}"),
                    }
                }
            });
        }
    });
    (threads * per_thread) as f64 / start.elapsed().as_secs_f64()
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Framed bytes of one record: frame overhead, fixed part, scope, key,
/// response (docs/FORMAT.md).
fn framed(scope: &str, key: &str, response: usize) -> usize {
    12 + 88 + scope.len() + key.len() + response
}

/// A preallocated file appended to with one write and one fdatasync per
/// batch of records: what a perfect engine would cost.
struct RawDisk {
    path: PathBuf,
    file: std::fs::File,
    record: usize,
    at: std::cell::Cell<u64>,
}

impl RawDisk {
    const SIZE: u64 = 64 << 20;

    fn new(dir: &Path, record: usize) -> RawDisk {
        use std::os::unix::fs::FileExt;
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("raw");
        let _ = std::fs::remove_file(&path);
        let file = std::fs::File::create(&path).unwrap();
        // Really allocated and written (set_len alone makes a sparse file).
        file.write_all_at(&vec![0u8; Self::SIZE as usize], 0)
            .unwrap();
        file.sync_all().unwrap();
        RawDisk {
            path,
            file,
            record,
            at: std::cell::Cell::new(0),
        }
    }

    /// Writes and syncs `count` batches of `batch` records; returns the
    /// time taken.
    fn batches(&self, batch: usize, count: usize) -> Duration {
        use std::os::unix::fs::FileExt;
        let bytes = vec![0x5au8; self.record * batch];
        let start = Instant::now();
        for _ in 0..count {
            let mut at = self.at.get();
            if at + bytes.len() as u64 > Self::SIZE {
                at = 0;
            }
            self.file.write_all_at(&bytes, at).unwrap();
            self.file.sync_data().unwrap();
            self.at.set(at + bytes.len() as u64);
        }
        start.elapsed()
    }
}

impl Drop for RawDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Child: loads `n` completed records (300-byte responses, 2 threads,
/// `None`) into a fresh store at `dir`; prints RSS per record (steady and
/// peak) and disk per record.
fn load(n: usize, dir: &Path) {
    let response = vec![7u8; 300];
    let _ = std::fs::remove_dir_all(dir);
    let rss0 = rss_bytes();
    let store = Store::open(dir, config(Durability::None)).unwrap();
    let rate = pairs(&store, 2, n / 2, &response, "p");
    store.flush().unwrap();
    let rss1 = rss_bytes();
    let peak = proc_status_kib("VmHWM:") * 1024;
    let stats = store.stats();
    let live = stats.live_records as f64;
    println!(
        "  load {n}: {rate:.0} pairs/s (None, 2 threads); RAM per live record {:.1} B (peak {:.1} B); disk per pair {:.1} B (live {:.1} B, framed complete record {} B)",
        rss1.saturating_sub(rss0) as f64 / live,
        peak.saturating_sub(rss0) as f64 / live,
        stats.bytes_on_disk as f64 / live,
        stats.bytes_live as f64 / live,
        framed("tenant-1", "p-0-00000000", 300),
    );
    drop(store);
}

/// CPU time of the calling thread (the machine may be shared: wall-clock
/// alone overstates the cost).
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// Child: reopens `dir`; prints the time and RSS per record.
fn reopen(dir: &Path) {
    let rss0 = rss_bytes();
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let store = Store::open(dir, config(Durability::None)).unwrap();
    let took = start.elapsed();
    let cpu = thread_cpu() - cpu0;
    let rss1 = rss_bytes();
    let peak = proc_status_kib("VmHWM:") * 1024;
    let live = store.stats().live_records;
    println!(
        "  reopen at {live} records: {:.3} s (opening thread's CPU {:.3} s); RAM per live record after reopen {:.1} B (peak {:.1} B)",
        took.as_secs_f64(),
        cpu.as_secs_f64(),
        rss1.saturating_sub(rss0) as f64 / live as f64,
        peak.saturating_sub(rss0) as f64 / live as f64,
    );
    drop(store);
}

fn child(args: &[&str]) {
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new(exe).args(args).status().unwrap();
    assert!(status.success(), "child {args:?} failed: {status}");
}

fn probe(base: &Path, n: usize) {
    let dir = fresh(base, &format!("probe-{n}"));
    let d = dir.to_str().unwrap();
    child(&["--load", &n.to_string(), d]);
    child(&["--reopen", d]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--load") => return load(args[1].parse().unwrap(), Path::new(&args[2])),
        Some("--reopen") => return reopen(Path::new(&args[1])),
        // For profilers: `--pairs memory|none|sync1|sync64 N DIR` runs N pairs
        // (on 2 threads, or 1 or 64 callers) and nothing else.
        Some("--pairs") => {
            let n: usize = args[2].parse().unwrap();
            let small = vec![7u8; 64];
            let (store, threads) = match args[1].as_str() {
                "memory" => (Store::in_memory(config(Durability::None)), 2),
                "sync1" => {
                    let dir = fresh(Path::new(&args[3]), "pairs");
                    (Store::open(&dir, config(Durability::Sync)).unwrap(), 1)
                }
                "sync64" => {
                    let dir = fresh(Path::new(&args[3]), "pairs");
                    (Store::open(&dir, config(Durability::Sync)).unwrap(), 64)
                }
                _ => {
                    let dir = fresh(Path::new(&args[3]), "pairs");
                    (Store::open(&dir, config(Durability::None)).unwrap(), 2)
                }
            };
            let rate = pairs(&store, threads, n / threads, &small, "q");
            println!("{} pairs/s: {rate:.0}", args[1]);
            return;
        }
        _ => {}
    }
    let ten_million = args.iter().any(|a| a == "--ten-million");
    let base = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("idemlog-figures-{}", std::process::id()))
        });
    std::fs::create_dir_all(&base).unwrap();
    let small = vec![7u8; 64];

    // Reference: the in-memory engine.
    let mem = Store::in_memory(config(Durability::None));
    let mem_rate = pairs(&mem, 2, 500_000, &small, "m");
    drop(mem);
    println!("in-memory reference, 2 threads: {mem_rate:>12.0} pairs/s (64-byte responses)");

    let dir = fresh(&base, "none");
    let store = Store::open(&dir, config(Durability::None)).unwrap();
    let none_rate = pairs(&store, 2, 500_000, &small, "n");
    println!(
        "None, 2 threads:                {none_rate:>12.0} pairs/s ({:.2}x in-memory)",
        none_rate / mem_rate
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = fresh(&base, "buffered");
    let store = Store::open(
        &dir,
        config(Durability::Buffered {
            max_delay: Duration::from_millis(10),
        }),
    )
    .unwrap();
    let rate = pairs(&store, 2, 200_000, &small, "b");
    println!("Buffered(10 ms), 2 threads:     {rate:>12.0} pairs/s");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    // Average framed record of a Sync pair: reserve (no response) and
    // complete (64 bytes), keys like "s-0-00000001". The disk's latency
    // drifts from second to second with other work on the machine, so the
    // raw disk and the store take turns: pair by pair for one caller, in
    // 100 ms rounds for 64; each side's rate is its work over its own time.
    let record = framed("tenant-1", "s-0-00000000", 32);
    let raw = RawDisk::new(&base.join("raw"), record);
    let dir = fresh(&base, "sync1");
    let store = Store::open(&dir, config(Durability::Sync)).unwrap();
    let fp = Fingerprint::of_bytes(b"{\"amount\":1200}");
    let (mut raw_time, mut store_time, mut n) = (Duration::ZERO, Duration::ZERO, 0u32);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        raw_time += raw.batches(1, 2);
        let t = Instant::now();
        let key = IdempotencyKey::new("tenant-1", format!("s-0-{n:08}")).unwrap();
        match store.reserve(&key, &fp).unwrap() {
            Outcome::Acquired(r) => r.complete(small.clone()).unwrap(),
            other => panic!("got {other:?}"),
        }
        store_time += t.elapsed();
        n += 1;
    }
    let s = store.stats();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let raw1 = f64::from(n) / raw_time.as_secs_f64();
    let rate1 = f64::from(n) / store_time.as_secs_f64();
    println!(
        "raw disk, 1 write + fdatasync per {record}-byte record, 2 per pair: {raw1:>8.0} pairs/s"
    );
    println!(
        "Sync, 1 caller:                 {rate1:>12.0} pairs/s = {:.2}x raw batch-1 (taking turns pair by pair; last sync {:?}, {:.2} records per sync)",
        rate1 / raw1,
        s.last_sync_latency.unwrap_or_default(),
        s.records_synced as f64 / s.syncs.max(1) as f64
    );

    let dir = fresh(&base, "sync64");
    let store = Arc::new(Store::open(&dir, config(Durability::Sync)).unwrap());
    let (mut raw_time, mut raw_records) = (Duration::ZERO, 0u64);
    let (mut store_time, mut store_pairs) = (Duration::ZERO, 0u64);
    let mut per_caller = 4;
    for round in 0..30 {
        // About 100 ms of each.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            raw_time += raw.batches(64, 1);
            raw_records += 64;
        }
        let t = Instant::now();
        pairs(&store, 64, per_caller, &small, &format!("c{round}"));
        let took = t.elapsed();
        store_time += took;
        store_pairs += 64 * per_caller as u64;
        per_caller = ((per_caller as f64 * 0.1 / took.as_secs_f64()) as usize).clamp(1, 200);
    }
    let s = store.stats();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let raw64 = raw_records as f64 / raw_time.as_secs_f64();
    let rate64 = store_pairs as f64 / store_time.as_secs_f64();
    println!("raw disk, 1 write + fdatasync per 64 records: {raw64:>8.0} records/s");
    println!(
        "Sync, 64 callers:               {rate64:>12.0} pairs/s = {:.0} records/s = {:.2}x raw batch-64 (taking turns in 100 ms rounds; {:.1} records per sync)",
        rate64 * 2.0,
        rate64 * 2.0 / raw64,
        s.records_synced as f64 / s.syncs.max(1) as f64
    );
    drop(raw);

    println!("RAM, disk and reopen, each in a fresh process (300-byte responses):");
    probe(&base, 1_000_000);
    if ten_million {
        probe(&base, 10_000_000);
    }
    let _ = std::fs::remove_dir_all(&base);
}
