//! Reserve + complete pairs per second through the `Backend` trait, for the
//! in-memory store, a sled-backed store and (given a URL) Redis.
//!
//! ```text
//! cargo run --release --features redis,sled --example backend_pairs -- [redis://127.0.0.1:6379/] [pairs] [tasks]
//! ```
//!
//! Each task reserves fresh keys and completes them with a 200-byte
//! response; the figure is total pairs over wall time. A rough comparison,
//! not a benchmark: the comparison bench has the careful numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idemlog::backend::redis::RedisBackend;
use idemlog::{
    Backend, Bytes, Config, Durability, Fingerprint, IdempotencyKey, Outcome, ReserveOptions, Store,
};

async fn run<B: Backend>(name: &str, backend: B, pairs: usize, tasks: usize) {
    let backend = Arc::new(backend);
    let response = Bytes::from(vec![b'x'; 200]);
    // Keys unique to this run, so runs against one Redis do not meet.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (backend, response, name) = (Arc::clone(&backend), response.clone(), name.to_owned());
        handles.push(tokio::spawn(async move {
            let fp = Fingerprint::of_bytes(b"body");
            for i in (t..pairs).step_by(tasks) {
                let key = IdempotencyKey::new(
                    format!("tenant-{}", i % 16),
                    format!("{name}-{run_id}-{i}"),
                )
                .expect("key");
                match backend.reserve(&key, &fp, ReserveOptions::default()).await {
                    Ok(Outcome::Acquired(lease)) => backend
                        .complete(&lease, response.clone())
                        .await
                        .expect("complete"),
                    other => panic!("fresh key: {other:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let took = start.elapsed();
    println!(
        "{name:<22} {pairs:>7} pairs, {tasks:>3} tasks: {:>9.0} pairs/s ({:.1} µs/pair)",
        pairs as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / pairs as f64
    );
}

#[tokio::main]
async fn main() -> idemlog::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().cloned();
    let pairs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let tasks: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let config = || {
        Config::builder()
            .maintenance_interval(Some(Duration::from_secs(1)))
            .build()
    };

    run("memory", Store::in_memory(config()), pairs, tasks).await;

    let dir = std::env::temp_dir().join(format!("idemlog-pairs-{}", std::process::id()));
    for (name, durability) in [
        ("sled (Durability::None)", Durability::None),
        ("sled (Durability::Sync)", Durability::Sync),
    ] {
        let db = sled::open(dir.join(name.replace([' ', ':', '(', ')'], ""))).map_err(|e| {
            idemlog::Error::Backend {
                backend: "sled",
                message: e.to_string(),
                source: None,
            }
        })?;
        let tree = db.open_tree("idempotency").expect("tree");
        let mut c = config();
        c.durability = durability;
        let n = if durability == Durability::Sync {
            pairs / 10
        } else {
            pairs
        };
        run(name, Store::with_sled_tree(tree, c)?, n, tasks).await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(url) = url {
        let backend = RedisBackend::connect(&url, config()).await?;
        run("redis", backend, pairs, tasks).await;
    }
    Ok(())
}
