//! Figures of the durable store: throughput per durability, RAM and disk per
//! record, reopen time. Run in release:
//!
//! ```text
//! cargo run --release --example durable_figures [DIR]
//! ```
//!
//! DIR (default: a fresh directory under the system temp dir) decides which
//! disk the Sync figures measure.

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

/// Records per second the raw disk takes with one write and one
/// fdatasync per batch of 64 records of `record` bytes.
fn raw_disk(dir: &Path, record: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    f.sync_all().unwrap();
    let batch = vec![0x5au8; record * 64];
    let mut at = 0u64;
    let start = Instant::now();
    let mut batches = 0;
    while start.elapsed() < Duration::from_secs(3) {
        f.write_all_at(&batch, at).unwrap();
        f.sync_data().unwrap();
        at = (at + batch.len() as u64) % (60 << 20);
        batches += 1;
    }
    let rate = (batches * 64) as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("idemlog-figures-{}", std::process::id()))
        });
    std::fs::create_dir_all(&base).unwrap();
    let small = vec![7u8; 64];
    let response = vec![7u8; 300];

    // Reference: the in-memory engine.
    let mem = Store::in_memory(config(Durability::None));
    let mem_rate = pairs(&mem, 2, 500_000, &small, "m");
    drop(mem);
    println!("in-memory reference, 2 threads: {mem_rate:>12.0} pairs/s");

    // 1 M pairs with 300-byte responses, Durability::None, 2 threads:
    // throughput, RAM and disk per record, reopen time.
    let dir = fresh(&base, "none");
    let rss0 = rss_bytes();
    let store = Store::open(&dir, config(Durability::None)).unwrap();
    let none_rate = pairs(&store, 2, 500_000, &response, "n");
    store.flush().unwrap();
    let rss1 = rss_bytes();
    let stats = store.stats();
    println!("None, 2 threads:                {none_rate:>12.0} pairs/s (300-byte responses)");
    println!(
        "RAM per live record at {} records: {:.1} B (RSS delta)",
        stats.live_records,
        (rss1.saturating_sub(rss0)) as f64 / stats.live_records as f64
    );
    println!(
        "disk per pair: {:.1} B ({} bytes in {} segments; live {} B)",
        stats.bytes_on_disk as f64 / stats.live_records as f64,
        stats.bytes_on_disk,
        stats.segments,
        stats.bytes_live
    );
    drop(store);
    let start = Instant::now();
    let store = Store::open(&dir, config(Durability::None)).unwrap();
    let reopen = start.elapsed();
    println!(
        "reopen at {} records: {:.3} s",
        store.stats().live_records,
        reopen.as_secs_f64()
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

    let dir = fresh(&base, "sync1");
    let store = Store::open(&dir, config(Durability::Sync)).unwrap();
    let rate = pairs(&store, 1, 300, &small, "s");
    let s = store.stats();
    println!(
        "Sync, 1 caller:                 {rate:>12.0} pairs/s (last sync {:?})",
        s.last_sync_latency.unwrap_or_default()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = fresh(&base, "sync64");
    let store = Arc::new(Store::open(&dir, config(Durability::Sync)).unwrap());
    let rate = pairs(&store, 64, 60, &small, "c");
    let s = store.stats();
    println!(
        "Sync, 64 callers:               {rate:>12.0} pairs/s = {:.0} records/s, {:.1} records per sync",
        rate * 2.0,
        s.records_synced as f64 / s.syncs.max(1) as f64
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let raw = raw_disk(&base.join("raw"), 180);
    println!(
        "raw disk, 1 write + fdatasync per 64 records: {raw:.0} records/s; Sync-64 reaches {:.2}x",
        rate * 2.0 / raw
    );
    let _ = std::fs::remove_dir_all(&base);
}
