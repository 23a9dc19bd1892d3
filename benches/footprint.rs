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

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use idemlog::{Config, Durability, Fingerprint, Outcome, Store};

use common::{key_str, KeyGen, SCOPE};

/// A store to measure. `reopen` is `None` for stores with nothing to reopen.
struct Subject {
    name: &'static str,
    open: fn(&Path) -> idemlog::Result<Store>,
    reopen: Option<fn(&Path) -> idemlog::Result<Store>>,
}

/// The stores measured. The durable store loads with `Durability::None`
/// (one thread loading 1 M records with an fsync each would take hours; the
/// files are the same) and is reopened with the default `Sync`.
fn subjects() -> Vec<Subject> {
    vec![
        Subject {
            name: "idemlog in-memory",
            open: |_| Ok(Store::in_memory(Config::default())),
            reopen: None,
        },
        Subject {
            name: "idemlog durable",
            open: |dir| {
                let config = Config::builder().durability(Durability::None).build();
                Store::open(dir, config)
            },
            reopen: Some(|dir| Store::open(dir, Config::default())),
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
    }
}

struct Footprint {
    load_secs: f64,
    ram_bytes_per_record: Option<f64>,
    disk_bytes_per_record: f64,
    reopen_secs: Option<f64>,
    /// One maintenance pass over the loaded store with nothing expired: what
    /// the background thread costs every interval at this size.
    maintenance_secs: f64,
}

fn measure(subject: &Subject, opts: &Options) -> Result<Footprint, String> {
    let dir = common::scratch_dir("footprint-").map_err(|e| e.to_string())?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1200,"currency":"eur"}"#);
    let response: Vec<u8> = (0..opts.response_bytes).map(|i| i as u8).collect();
    let rss_before = common::rss_bytes();
    let store = (subject.open)(dir.path()).map_err(|e| e.to_string())?;
    let mut gen = KeyGen::new(0xF00D);
    let started = Instant::now();
    for _ in 0..opts.records {
        let key = store
            .key(SCOPE, key_str(&gen.next_key()))
            .map_err(|e| e.to_string())?;
        match store.reserve(&key, &fp).map_err(|e| e.to_string())? {
            Outcome::Acquired(r) => r.complete(response.clone()).map_err(|e| e.to_string())?,
            other => return Err(format!("a fresh key was not acquired: {other:?}")),
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
    drop(store);
    let reopen_secs = match subject.reopen {
        None => None,
        Some(reopen) => {
            let started = Instant::now();
            let store = reopen(dir.path()).map_err(|e| e.to_string())?;
            let secs = started.elapsed().as_secs_f64();
            let live = store.stats().live_records;
            if live != opts.records as u64 {
                return Err(format!(
                    "{live} live records after reopening, {} loaded",
                    opts.records
                ));
            }
            Some(secs)
        }
    };
    Ok(Footprint {
        load_secs,
        ram_bytes_per_record: ram,
        disk_bytes_per_record: disk,
        reopen_secs,
        maintenance_secs,
    })
}

/// Measures one subject in this process and prints its row. Each subject
/// runs in a process of its own, so memory freed by one cannot hide the
/// growth of the next.
fn measure_one(i: usize, opts: &Options, jsonl_path: &Path) {
    let Some(subject) = subjects().into_iter().nth(i) else {
        eprintln!("no subject {i}");
        std::process::exit(2);
    };
    match measure(&subject, opts) {
        Ok(f) => {
            println!(
                "{:<24} {:>10.2} {:>14} {:>15.0} {:>12} {:>16.1}",
                subject.name,
                f.load_secs,
                f.ram_bytes_per_record
                    .map_or("-".into(), |r| format!("{r:.0}")),
                f.disk_bytes_per_record,
                f.reopen_secs.map_or("n/a".into(), |s| format!("{s:.3}")),
                f.maintenance_secs * 1e3,
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
            });
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(jsonl_path)
                .and_then(|mut out| writeln!(out, "{line}"));
            if let Err(e) = appended {
                eprintln!("could not write {}: {e}", jsonl_path.display());
            }
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
    println!(
        "footprint: {} completed records, {} B responses, 32 B keys; machine: {}; files on {}",
        common::thousands(opts.records as f64),
        opts.response_bytes,
        common::machine(),
        common::filesystem_of(&root)
    );
    println!(
        "{:<24} {:>10} {:>14} {:>15} {:>12} {:>16}",
        "store", "load s", "RAM B/record", "disk B/record", "reopen s", "maintenance ms"
    );
    let _ = std::fs::File::create(&jsonl_path);
    let exe = std::env::current_exe().expect("the bench knows its own path");
    for (i, subject) in subjects().iter().enumerate() {
        if opts
            .only
            .as_ref()
            .is_some_and(|only| !subject.name.contains(only.as_str()))
        {
            continue;
        }
        let status = std::process::Command::new(&exe)
            .args(["--records", &opts.records.to_string()])
            .args(["--response-bytes", &opts.response_bytes.to_string()])
            .args(["--subject", &i.to_string()])
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            println!("subject {i}: child process failed ({status:?})");
        }
    }
    println!(
        "RAM B/record = growth of the measuring process's resident set (VmRSS) over the load / records; \
         the in-memory store keeps each response in RAM, so it includes the {} B response. \
         maintenance ms = one expiry pass with nothing expired (the background thread runs one per interval, default 1 s). \
         Framed log bytes per pair for these records: reserve 144 B + complete {} B.",
        opts.response_bytes,
        144 + opts.response_bytes
    );
}
