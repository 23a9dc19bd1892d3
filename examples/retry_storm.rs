//! A retry storm against one store: concurrent clients send every logical
//! write several times (duplicate delivery), servers fail before the work,
//! lose responses after it, and stall past their lease; clients retry with
//! the same key and body. The downstream "ledger" counts executions: every
//! logical write must run exactly once and every client must get the same
//! answer.
//!
//! ```text
//! cargo run --release --example retry_storm [-- --writes 5000 --threads 8]
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idemlog::{Config, Error, Fingerprint, Outcome, Store};

/// The system the writes change: it counts how often each write ran.
#[derive(Default)]
struct Ledger {
    executions: Mutex<HashMap<u64, u32>>,
}

impl Ledger {
    fn charge(&self, write: u64) -> String {
        *self.executions.lock().unwrap().entry(write).or_default() += 1;
        format!("ch_{write:06}")
    }
}

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    replays: AtomicU64,
    in_progress: AtomicU64,
    conflicts: AtomicU64,
    failed_before_work: AtomicU64,
    lost_responses: AtomicU64,
    stalls_fenced: AtomicU64,
    resumed_from_checkpoint: AtomicU64,
}

/// Deterministic per-attempt dice, so a run can be repeated.
fn dice(write: u64, attempt: u64, salt: u64) -> u64 {
    let mut x = write.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ salt;
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

enum Reply {
    Final(Vec<u8>),
    RetryAfter(Duration),
    Conflict,
}

/// The server's handler for `POST /charges` with an idempotency key.
fn serve(
    store: &Store,
    ledger: &Ledger,
    tally: &Tally,
    write: u64,
    body: &[u8],
    attempt: u64,
) -> Reply {
    tally.attempts.fetch_add(1, Ordering::Relaxed);
    let key = store
        .key("tenant-1", format!("charge-{write}"))
        .expect("valid key");
    let fingerprint = Fingerprint::of_json(body).expect("valid JSON");
    let roll = dice(write, attempt, 1) % 100;
    match store.reserve(&key, &fingerprint).expect("store works") {
        Outcome::Acquired(mut reservation) => {
            let charge = match reservation.recovered_checkpoint() {
                // A previous holder charged and then died or stalled: resume.
                Some(done) => {
                    tally
                        .resumed_from_checkpoint
                        .fetch_add(1, Ordering::Relaxed);
                    String::from_utf8_lossy(done).into_owned()
                }
                None if roll < 10 => {
                    // Fails before doing anything: not cached, the retry runs it.
                    tally.failed_before_work.fetch_add(1, Ordering::Relaxed);
                    drop(reservation);
                    return Reply::RetryAfter(Duration::from_millis(1));
                }
                None => {
                    let charge = ledger.charge(write);
                    reservation
                        .checkpoint(charge.clone().into_bytes())
                        .expect("checkpoint");
                    charge
                }
            };
            if roll >= 98 {
                // Stalls past its lease: a retry takes over, and this holder's
                // late completion is fenced off.
                std::thread::sleep(store.config().lease * 2);
                match reservation.complete(format!("201 {charge} (late)").into_bytes()) {
                    Err(Error::LeaseLost { .. }) => {
                        tally.stalls_fenced.fetch_add(1, Ordering::Relaxed);
                        return Reply::RetryAfter(Duration::from_millis(1));
                    }
                    Ok(()) => return Reply::Final(format!("201 {charge} (late)").into_bytes()),
                    Err(e) => panic!("store failed: {e}"),
                }
            }
            let response = format!("201 {{\"charge\":\"{charge}\"}}").into_bytes();
            reservation.complete(response.clone()).expect("complete");
            if roll < 25 {
                // The response is lost on the way back: the client retries.
                tally.lost_responses.fetch_add(1, Ordering::Relaxed);
                return Reply::RetryAfter(Duration::from_millis(1));
            }
            Reply::Final(response)
        }
        Outcome::Replay(replay) => {
            tally.replays.fetch_add(1, Ordering::Relaxed);
            Reply::Final(replay.response.to_vec())
        }
        Outcome::InProgress { retry_after, .. } => {
            tally.in_progress.fetch_add(1, Ordering::Relaxed);
            Reply::RetryAfter(retry_after.min(Duration::from_millis(20)))
        }
        Outcome::Conflict { .. } => {
            tally.conflicts.fetch_add(1, Ordering::Relaxed);
            Reply::Conflict
        }
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let writes = arg("--writes", 3_000);
    let threads = arg("--threads", 8) as usize;
    const COPIES: u64 = 3; // every write is delivered three times, concurrently
    let store = Store::in_memory(Config::builder().lease(Duration::from_millis(100)).build());
    let ledger = Ledger::default();
    let tally = Tally::default();
    let answers: Mutex<HashMap<u64, Vec<Vec<u8>>>> = Mutex::default();
    let next = AtomicU64::new(0);
    let started = Instant::now();

    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= writes * COPIES {
                    return;
                }
                let (write, copy) = (job / COPIES, job % COPIES);
                let body = format!("{{\"amount\": {}, \"currency\": \"eur\"}}", 100 + write);
                let mut attempt = copy * 100;
                let answer = loop {
                    match serve(&store, &ledger, &tally, write, body.as_bytes(), attempt) {
                        Reply::Final(bytes) => break bytes,
                        Reply::RetryAfter(d) => std::thread::sleep(d),
                        Reply::Conflict => break b"conflict".to_vec(),
                    }
                    attempt += 1;
                };
                answers
                    .lock()
                    .unwrap()
                    .entry(write)
                    .or_default()
                    .push(answer);
                // Every tenth write also meets a buggy client reusing its key
                // with another amount afterwards: that one must be refused.
                if copy == 0 && write % 10 == 0 {
                    let wrong = format!("{{\"amount\": {}, \"currency\": \"eur\"}}", 999_999);
                    let mut attempt = 1_000;
                    loop {
                        match serve(&store, &ledger, &tally, write, wrong.as_bytes(), attempt) {
                            Reply::Conflict => break,
                            Reply::Final(_) => panic!("a reused key must never run another body"),
                            Reply::RetryAfter(d) => std::thread::sleep(d),
                        }
                        attempt += 1;
                    }
                }
            });
        }
    });

    let executions = ledger.executions.into_inner().unwrap();
    let answers = answers.into_inner().unwrap();
    let duplicates: u64 = executions
        .values()
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    let never_ran = (0..writes).filter(|w| !executions.contains_key(w)).count();
    let disagreeing = answers
        .values()
        .filter(|a| a.windows(2).any(|w| w[0] != w[1]))
        .count();
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);

    println!("idemlog retry storm: {writes} logical writes × {COPIES} concurrent deliveries, {threads} threads, {:.2?}", started.elapsed());
    println!("  logical writes executed        {:>8}", executions.len());
    println!("  requests (attempts)            {:>8}", t(&tally.attempts));
    println!("  replays of a stored response   {:>8}", t(&tally.replays));
    println!(
        "  answered in progress (409)     {:>8}",
        t(&tally.in_progress)
    );
    println!(
        "  conflicts (key reused, 422)    {:>8}",
        t(&tally.conflicts)
    );
    println!(
        "  injected: failed before work   {:>8}",
        t(&tally.failed_before_work)
    );
    println!(
        "  injected: responses lost       {:>8}",
        t(&tally.lost_responses)
    );
    println!(
        "  injected: stalls fenced off    {:>8}",
        t(&tally.stalls_fenced)
    );
    println!(
        "  takeovers resumed from checkpt {:>8}",
        t(&tally.resumed_from_checkpoint)
    );
    println!("  clients with differing answers {:>8}", disagreeing);
    println!("  writes never executed          {:>8}", never_ran);
    println!("  DUPLICATES EXECUTED            {:>8}", duplicates);
    let stats = store.stats();
    println!(
        "  store: {} records, {} acquired, {} takeovers, {} released",
        stats.live_records, stats.acquired, stats.takeovers, stats.released
    );
    if duplicates != 0 || never_ran != 0 || disagreeing != 0 {
        eprintln!("FAILED: every logical write must run exactly once with one answer");
        std::process::exit(1);
    }
}
