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

/// Records per second the raw disk takes with one write and one fdatasync
/// per batch of `batch` records of `record` bytes, appended to a
/// preallocated file.
fn raw_disk(dir: &Path, record: usize, batch: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("raw");
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create(&path).unwrap();
    let size = 256u64 << 20;
    f.set_len(size).unwrap();
    // Really allocated (set_len alone makes a sparse file).
    f.write_all_at(&vec![0u8; size as usize], 0).unwrap();
    f.sync_all().unwrap();
    let bytes = vec![0x5au8; record * batch];
    let mut at = 0u64;
    let start = Instant::now();
    let mut batches = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if at + bytes.len() as u64 > size {
            at = 0;
        }
        f.write_all_at(&bytes, at).unwrap();
        f.sync_data().unwrap();
        at += bytes.len() as u64;
        batches += 1;
    }
    let rate = (batches * batch) as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
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
        // For profilers: `--pairs memory|none N DIR` runs N pairs on 2
        // threads and nothing else.
        Some("--pairs") => {
            let n: usize = args[2].parse().unwrap();
            let small = vec![7u8; 64];
            let store = match args[1].as_str() {
                "memory" => Store::in_memory(config(Durability::None)),
                _ => {
                    let dir = fresh(Path::new(&args[3]), "pairs");
                    Store::open(&dir, config(Durability::None)).unwrap()
                }
            };
            let rate = pairs(&store, 2, n / 2, &small, "q");
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
    // complete (64 bytes), keys like "s-0-00000001".
    let record = framed("tenant-1", "s-0-00000000", 32);
    let raw1 = raw_disk(&base.join("raw"), record, 1);
    let raw64 = raw_disk(&base.join("raw"), record, 64);
    println!(
        "raw disk, {record}-byte records: batch 1 {raw1:.0} records/s ({:.0} pairs/s at 2 syncs a pair); batch 64 {raw64:.0} records/s",
        raw1 / 2.0
    );

    let dir = fresh(&base, "sync1");
    let store = Store::open(&dir, config(Durability::Sync)).unwrap();
    let rate = pairs(&store, 1, 1_000, &small, "s");
    let s = store.stats();
    println!(
        "Sync, 1 caller:                 {rate:>12.0} pairs/s = {:.2}x raw batch-1 (last sync {:?}, {:.2} records per sync)",
        rate / (raw1 / 2.0),
        s.last_sync_latency.unwrap_or_default(),
        s.records_synced as f64 / s.syncs.max(1) as f64
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = fresh(&base, "sync64");
    let store = Arc::new(Store::open(&dir, config(Durability::Sync)).unwrap());
    let rate = pairs(&store, 64, 150, &small, "c");
    let s = store.stats();
    println!(
        "Sync, 64 callers:               {rate:>12.0} pairs/s = {:.0} records/s = {:.2}x raw batch-64 ({:.1} records per sync)",
        rate * 2.0,
        rate * 2.0 / raw64,
        s.records_synced as f64 / s.syncs.max(1) as f64
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    println!("RAM, disk and reopen, each in a fresh process (300-byte responses):");
    probe(&base, 1_000_000);
    if ten_million {
        probe(&base, 10_000_000);
    }
    let _ = std::fs::remove_dir_all(&base);
}
