//! Single-operation costs (criterion): each outcome of `reserve`, a full
//! reserve+complete, and fingerprints of raw and canonical-JSON bodies.
//!
//! `cargo bench --bench ops` (add a filter, e.g. `-- fingerprint`, to run a
//! subset). Every store in [`STORES`] runs the store benchmarks.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use idemlog::{Config, Durability, Fingerprint, IdempotencyKey, Lease, Outcome, Store};

use common::{key_str, KeyGen, SCOPE};

/// A store to measure: its name in the report and how to build one in an
/// empty directory (ignored by the in-memory store). Maintenance is off so
/// it never lands inside a sample.
type MakeStore = fn(&std::path::Path) -> Store;

fn config(durability: Durability) -> Config {
    Config::builder()
        .durability(durability)
        .maintenance_interval(None)
        .build()
}

const STORES: &[(&str, MakeStore)] = &[
    ("in-memory", |_| Store::in_memory(config(Durability::None))),
    ("durable-none", |dir| {
        Store::open(dir, config(Durability::None)).expect("open the durable store")
    }),
    ("durable-sync", |dir| {
        Store::open(dir, config(Durability::Sync)).expect("open the durable store")
    }),
];

/// A fresh store in a fresh scratch directory (kept until the store is
/// dropped).
fn fresh(make: MakeStore) -> (tempfile::TempDir, Store) {
    let dir = common::scratch_dir("ops-").expect("scratch directory under target/");
    let store = make(dir.path());
    (dir, store)
}

/// Records loaded before the hit/conflict/in-progress benchmarks.
const LOADED: usize = 100_000;

fn keys(store: &Store, seed: u64, n: usize) -> Vec<IdempotencyKey> {
    let mut gen = KeyGen::new(seed);
    (0..n)
        .map(|_| {
            store
                .key(SCOPE, key_str(&gen.next_key()))
                .expect("benchmark keys are valid")
        })
        .collect()
}

fn fingerprint() -> Fingerprint {
    Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#)
}

fn other_fingerprint() -> Fingerprint {
    Fingerprint::of_bytes(br#"{"amount":9999,"currency":"eur"}"#)
}

fn configure(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("store");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    g
}

fn store_ops(c: &mut Criterion) {
    let response = common::response();
    for &(name, make) in STORES {
        let mut g = configure(c);

        // reserve on a fresh key: the hash-table insert of an in-flight
        // record. Reservations are kept until the timing stops, so their
        // release on drop is not measured.
        g.bench_function(BenchmarkId::new("reserve_miss", name), |b| {
            b.iter_custom(|iters| {
                let (_dir, store) = fresh(make);
                let ks = keys(&store, iters, iters as usize);
                let fp = fingerprint();
                let mut held = Vec::with_capacity(ks.len());
                let start = Instant::now();
                for k in &ks {
                    held.push(store.reserve(k, &fp).expect("reserve"));
                }
                let elapsed = start.elapsed();
                let first = held.first();
                assert!(
                    matches!(first, None | Some(Outcome::Acquired(_))),
                    "got {first:?}"
                );
                elapsed
            })
        });

        g.bench_function(BenchmarkId::new("reserve_complete", name), |b| {
            b.iter_custom(|iters| {
                let (_dir, store) = fresh(make);
                let ks = keys(&store, iters + 1, iters as usize);
                let fp = fingerprint();
                let start = Instant::now();
                for k in &ks {
                    match store.reserve(k, &fp).expect("reserve") {
                        Outcome::Acquired(r) => r.complete(response.clone()).expect("complete"),
                        other => panic!("fresh key not acquired: {other:?}"),
                    }
                }
                start.elapsed()
            })
        });

        // One loaded store for the three answers that find a record. A
        // durable store is loaded without syncs and reopened with its own
        // durability; the held reservations are made by the measured store
        // (fewer for Sync, where each one waits for an fsync).
        let dir = common::scratch_dir("ops-").expect("scratch directory under target/");
        let loader = if name.starts_with("durable") {
            |dir: &std::path::Path| {
                Store::open(dir, config(Durability::None)).expect("open the durable store")
            }
        } else {
            make
        };
        let mut store = loader(dir.path());
        let completed = keys(&store, 1, LOADED);
        let fp = fingerprint();
        for k in &completed {
            let Outcome::Acquired(r) = store.reserve(k, &fp).expect("reserve") else {
                panic!("fresh key not acquired")
            };
            r.complete(response.clone()).expect("complete");
        }
        if name.starts_with("durable") {
            drop(store);
            store = make(dir.path());
        }
        let held = if name.ends_with("sync") {
            1_000
        } else {
            LOADED
        };
        let running = keys(&store, 2, held);
        let _leases: Vec<Lease> = running
            .iter()
            .map(|k| match store.reserve(k, &fp).expect("reserve") {
                Outcome::Acquired(r) => r.into_lease(),
                other => panic!("fresh key not acquired: {other:?}"),
            })
            .collect();

        let mut i = 0;
        g.bench_function(BenchmarkId::new("replay_hit", name), |b| {
            b.iter(|| {
                i = (i + 1) % LOADED;
                let out = store.reserve(&completed[i], &fp).expect("reserve");
                assert!(matches!(out, Outcome::Replay(_)), "got {out:?}");
            })
        });

        let other = other_fingerprint();
        g.bench_function(BenchmarkId::new("conflict", name), |b| {
            b.iter(|| {
                i = (i + 1) % LOADED;
                let out = store.reserve(&completed[i], &other).expect("reserve");
                assert!(
                    matches!(out, Outcome::Conflict { in_flight: false }),
                    "got {out:?}"
                );
            })
        });

        g.bench_function(BenchmarkId::new("in_progress", name), |b| {
            b.iter(|| {
                i = (i + 1) % running.len();
                let out = store.reserve(&running[i], &fp).expect("reserve");
                assert!(matches!(out, Outcome::InProgress { .. }), "got {out:?}");
            })
        });
        g.finish();
    }
}

/// A JSON object of about `size` bytes: an order with line items.
fn json_body(size: usize) -> Vec<u8> {
    let mut body = String::from(r#"{"currency":"eur","customer":"cus_8e03978e","items":["#);
    let mut n = 0;
    while body.len() + 80 < size {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"sku":"sku-{n:05}","qty":{},"price":{}.{:02},"gift":false}}"#,
            n % 7 + 1,
            n * 13 % 500,
            n % 100
        ));
        n += 1;
    }
    body.push_str(r#"],"note":null}"#);
    body.into_bytes()
}

fn fingerprints(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let json = json_body(size);
        let raw = json.clone();
        g.throughput(Throughput::Bytes(json.len() as u64));
        g.bench_function(BenchmarkId::new("of_bytes", label), |b| {
            b.iter(|| Fingerprint::of_bytes(std::hint::black_box(&raw)))
        });
        g.bench_function(BenchmarkId::new("of_json", label), |b| {
            b.iter(|| Fingerprint::of_json(std::hint::black_box(&json)).expect("valid JSON"))
        });
    }
    g.finish();
}

criterion_group!(benches, store_ops, fingerprints);
criterion_main!(benches);
