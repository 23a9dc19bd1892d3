//! The kill -9 loop (`harness = false`): this binary re-executes itself as
//! a child that runs a concurrent workload on a `Durability::Sync` store
//! and reports every acknowledgement on stdout, one line each, printed
//! after the call returned:
//!
//! * `A <key> <token>` — acquired;
//! * `C <key>` — completed (the response is derived from the key);
//! * `R <key>` — released.
//!
//! The parent kills the child (SIGKILL through `Child::kill`) at a random
//! moment — while it opens and recovers the directory, while it writes,
//! syncs, rolls or reclaims segments — then reopens the directory itself
//! and checks: every acknowledged completion replays exactly its bytes (S2,
//! S4), every acknowledged acquisition is still there, in flight or
//! completed (S3), every acknowledged release stays gone (S5), records the
//! child may have written without acknowledging are well-formed (S4), a
//! retry takes over each in-flight record with a larger token (S1), and the
//! recovered store works. The same directory is used by every cycle, so
//! records expire and segments are reclaimed across cycles.
//!
//! `IDEMLOG_KILL_CYCLES` sets the number of cycles (default 300); the run
//! ends with the line `N passed, M failed`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idemlog::{Config, Durability, Fingerprint, IdempotencyKey, Outcome, RecordState, Store};

#[path = "support/rng.rs"]
mod rng;

const CHILD_DIR: &str = "IDEMLOG_KILL9_CHILD_DIR";
const CHILD_CYCLE: &str = "IDEMLOG_KILL9_CHILD_CYCLE";
const THREADS: usize = 4;
const TTL: Duration = Duration::from_secs(3);

fn config() -> Config {
    Config::builder()
        .durability(Durability::Sync)
        .segment_size(64 << 10)
        .ttl(TTL)
        .maintenance_interval(Some(Duration::from_millis(5)))
        .build()
}

fn key(cycle: u64, thread: usize, i: u64) -> IdempotencyKey {
    IdempotencyKey::new("kill9", format!("c{cycle}-t{thread}-{i}")).expect("valid key")
}

fn fingerprint() -> Fingerprint {
    Fingerprint::of_bytes(b"the request")
}

/// Whether the child releases this key instead of completing it (a pure
/// function of the key, so the parent knows what an unacknowledged last
/// step was going to be).
fn released(key: &str) -> bool {
    blake3::hash(key.as_bytes()).as_bytes()[2].is_multiple_of(5)
}

/// The response stored for a key: derived from it, 10..=600 bytes.
fn response(key: &str) -> Vec<u8> {
    let digest = blake3::hash(key.as_bytes());
    let len =
        10 + (u16::from_le_bytes([digest.as_bytes()[0], digest.as_bytes()[1]]) % 591) as usize;
    let mut out = format!("{key}:").into_bytes();
    while out.len() < len {
        out.extend_from_slice(digest.as_bytes());
    }
    out.truncate(len);
    out
}

fn child(dir: &str, cycle: u64) {
    let store = match Store::open(dir, config()) {
        Ok(s) => s,
        Err(e) => {
            println!("BAD open failed: {e}");
            std::process::exit(3);
        }
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: String| {
        let mut o = out.lock().expect("stdout lock");
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (store, out) = (store.clone(), Arc::clone(&out));
            s.spawn(move || {
                for i in 0.. {
                    let k = key(cycle, t, i);
                    match store.reserve(&k, &fingerprint()) {
                        Ok(Outcome::Acquired(r)) => {
                            say(&out, format!("A {} {}", k.key(), r.fencing_token()));
                            if released(k.key()) {
                                if r.release().is_ok() {
                                    say(&out, format!("R {}", k.key()));
                                }
                            } else if r.complete(response(k.key())).is_ok() {
                                say(&out, format!("C {}", k.key()));
                                // A retry right away replays the same bytes.
                                match store.reserve(&k, &fingerprint()) {
                                    Ok(Outcome::Replay(p))
                                        if p.response[..] == response(k.key())[..] => {}
                                    other => {
                                        say(&out, format!("BAD replay of {}: {other:?}", k.key()))
                                    }
                                }
                            }
                        }
                        other => say(&out, format!("BAD reserve of fresh {}: {other:?}", k.key())),
                    }
                }
            });
        }
    });
}

/// What one child acknowledged.
#[derive(Debug, Default)]
struct Acks {
    acquired: BTreeMap<String, u64>,
    completed: Vec<String>,
    released: Vec<String>,
    /// Highest key index reported per thread.
    last: [Option<u64>; THREADS],
    bad: Vec<String>,
}

fn parse(lines: &[String]) -> Acks {
    let mut a = Acks::default();
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if kind == "BAD" {
            a.bad.push(line.clone());
            continue;
        }
        if let Some((t, i)) = thread_and_index(name) {
            a.last[t] = Some(a.last[t].map_or(i, |l| l.max(i)));
        }
        match kind {
            "A" => {
                let token = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                a.acquired.insert(name.to_string(), token);
            }
            "C" => a.completed.push(name.to_string()),
            "R" => a.released.push(name.to_string()),
            _ => a.bad.push(format!("unreadable line {line:?}")),
        }
    }
    a
}

fn thread_and_index(name: &str) -> Option<(usize, u64)> {
    let mut parts = name.split('-');
    let (_, t, i) = (parts.next()?, parts.next()?, parts.next()?);
    Some((t.strip_prefix('t')?.parse().ok()?, i.parse().ok()?))
}

/// Reopens the directory and checks it against what the child acknowledged.
fn check(dir: &Path, cycle: u64, acks: &Acks, fresh: bool) -> Result<(), Vec<String>> {
    let mut bad = acks.bad.clone();
    // No background maintenance while checking: a copy-forward can roll a
    // segment, whose creation shows a temporary file for a moment, and S6
    // below would take it for one that recovery left (seen once in 300
    // cycles).
    let mut cfg = config();
    cfg.maintenance_interval = None;
    let store = match Store::open(dir, cfg) {
        Ok(s) => s,
        Err(e) => return Err(vec![format!("reopen failed: {e}")]),
    };
    let k = |name: &str| IdempotencyKey::new("kill9", name).expect("valid key");
    for name in &acks.completed {
        match store.lookup(&k(name)) {
            Ok(Some(r)) if r.response().map(|b| &b[..]) == Some(&response(name)[..]) => {}
            // Expired since: only possible once the TTL has run out.
            Ok(None) if !fresh => {}
            other => bad.push(format!(
                "S2: acknowledged completion {name} came back as {other:?}"
            )),
        }
    }
    for name in &acks.released {
        match store.lookup(&k(name)) {
            Ok(None) => {}
            other => bad.push(format!("S5: released {name} came back as {other:?}")),
        }
    }
    for (name, token) in &acks.acquired {
        if acks.completed.contains(name) || acks.released.contains(name) {
            continue;
        }
        match store.lookup(&k(name)) {
            Ok(Some(r)) => match r.state() {
                RecordState::InFlight { .. } if r.fencing_token() == *token => {
                    // S1 across the crash: a retry takes over with a larger token.
                    match store.reserve(&k(name), &fingerprint()) {
                        Ok(Outcome::Acquired(n)) if n.fencing_token() > *token => {
                            let _ = n.complete(response(name));
                        }
                        other => bad.push(format!("S1: retry of in-flight {name} got {other:?}")),
                    }
                }
                RecordState::Completed { response: b, .. }
                    if !released(name) && b[..] == response(name)[..] => {}
                state => bad.push(format!(
                    "S3/S4: acquired {name} (token {token}) came back as {state:?} token {}",
                    r.fencing_token()
                )),
            },
            // Released after the acknowledgement, before the child could say so.
            Ok(None) if released(name) || !fresh => {}
            other => bad.push(format!(
                "S3: acknowledged acquisition {name} came back as {other:?}"
            )),
        }
    }
    // Keys the child may have touched without acknowledging: anything
    // there must be well-formed.
    for t in 0..THREADS {
        let next = acks.last[t].map_or(0, |l| l + 1);
        for i in next..next + 2 {
            let name = format!("c{cycle}-t{t}-{i}");
            match store.lookup(&k(&name)) {
                Ok(None) => {}
                Ok(Some(r)) => match r.state() {
                    RecordState::InFlight { .. } => {}
                    RecordState::Completed { response: b, .. }
                        if !released(&name) && b[..] == response(&name)[..] => {}
                    state => bad.push(format!("S4: unacknowledged {name} holds {state:?}")),
                },
                Err(e) => bad.push(format!("lookup of {name} failed: {e}")),
            }
        }
    }
    // S6: recovery leaves no half-created segment behind.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                bad.push(format!("S6: recovery left the temporary file {name}"));
            }
        }
    }
    let probe = k(&format!("probe-{cycle}"));
    match store.reserve(&probe, &fingerprint()) {
        Ok(Outcome::Acquired(r)) => {
            if let Err(e) = r.complete(&b"probe"[..]) {
                bad.push(format!("S6: the recovered store cannot complete: {e}"));
            }
        }
        other => bad.push(format!(
            "S6: the recovered store answered {other:?} for a fresh key"
        )),
    }
    drop(store);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Threads of this process (Linux), to catch threads a store leaves behind.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn main() {
    if let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) {
        child(&dir, cycle.parse().expect("cycle number"));
        return;
    }
    // `cargo test -- --list` and filters: this binary has one "test".
    if std::env::args().any(|a| a == "--list") {
        println!("kill9_loop: test");
        return;
    }
    let cycles: u64 = std::env::var("IDEMLOG_KILL_CYCLES")
        .ok()
        .map(|n| n.parse().expect("IDEMLOG_KILL_CYCLES must be a number"))
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own path");
    let mut rng = rng::Rng::new(0x4B1_119);
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut acks_completed, mut acks_acquired, mut acks_released) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    let threads_before = threads();
    for cycle in 0..cycles {
        let spawned = Instant::now();
        let mut child = Command::new(&exe)
            .env(CHILD_DIR, dir.path())
            .env(CHILD_CYCLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            // Only whole lines count: a line cut by the kill was never
            // acknowledged.
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if line.ends_with('\n') {
                    lines.push(line.trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        // Kill at a random moment: often during startup and recovery,
        // mostly while the workload runs.
        std::thread::sleep(Duration::from_micros(rng.below(80_000)));
        let _ = child.kill();
        let _ = child.wait();
        let lines = reader.join().expect("reader thread");
        let acks = parse(&lines);
        acks_completed += acks.completed.len();
        acks_acquired += acks.acquired.len();
        acks_released += acks.released.len();
        // Records cannot have expired if the TTL has not run out since the
        // child started.
        let fresh = spawned.elapsed() < TTL - Duration::from_millis(500);
        match check(dir.path(), cycle, &acks, fresh) {
            Ok(()) => passed += 1,
            Err(problems) => {
                failed += 1;
                println!("cycle {cycle} FAILED:");
                for p in problems.iter().take(10) {
                    println!("  {p}");
                }
            }
        }
    }
    let files = std::fs::read_dir(dir.path())
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "kill -9 loop: {cycles} cycles in {:.1}s: {acks_acquired} acquisitions, {acks_completed} completions, {acks_released} releases acknowledged and checked; {files} files left in the directory",
        started.elapsed().as_secs_f64()
    );
    // S6: every store the parent opened joined its threads on drop.
    let threads_after = threads();
    if threads_after != threads_before {
        println!("S6: {threads_before:?} threads before the loop, {threads_after:?} after");
        failed += 1;
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
