//! The fleet test with real processes: four `axum_server` example servers
//! sharing one real `redis-server`, and a client firing concurrent
//! duplicates and retries of the same writes at all of them. Every logical
//! write must run exactly once across the fleet, and every answer to it must
//! carry the same status and bytes.
//!
//! Run with `cargo test --release --all-features --test fleet_http`; it
//! builds the example itself (with the features this test was built with)
//! and fails, saying what to install, when `redis-server` is missing.

#![cfg(all(feature = "http", feature = "redis"))]

#[allow(dead_code)]
#[path = "conformance/redis_server.rs"]
mod redis_server;

mod http_support;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use http_support::{call, client, Answer, Body};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use redis_server::RedisServer;

/// Server processes in the fleet.
const SERVERS: usize = 4;
/// Logical writes of the first tenant.
const WRITES: usize = 50;
/// Concurrent senders of each write index (shared by the two tenants when
/// the second one also writes that index).
const SENDERS: usize = 4;
/// The pause between retries of a 409 or a failed connection: the layer's
/// `Retry-After` (60 s) is meant for real clients, not for this test.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Each write takes this long in its handler, so duplicates arrive while
/// it is still in flight and get 409s.
const HANDLER_DELAY_MS: u64 = 40;

const FIRST_TENANT: &str = "fleet-alice";
const SECOND_TENANT: &str = "fleet-bob";

/// Whether the second tenant also writes index `i`, with the same key and
/// body: its write is another logical write, run once of its own.
fn second_tenant_writes(i: usize) -> bool {
    i.is_multiple_of(3)
}

#[test]
fn four_server_processes_on_one_redis_run_each_write_exactly_once() {
    let redis = RedisServer::start();
    let binary = build_example();
    let fleet = Fleet::start(&binary, &redis.url());
    let addrs: Vec<SocketAddr> = fleet.servers.iter().map(|s| s.addr).collect();

    let seed = seed();
    // Printed with the test's output when it fails, to replay a choice of
    // servers.
    eprintln!("fleet_http: servers {addrs:?}, seed {seed}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(45), fire(addrs.clone(), seed))
            .await
            .unwrap_or_else(|_| panic!("the load did not finish within 45 s (seed {seed})"))
    });
    let listings = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), list_all(&addrs))
            .await
            .unwrap_or_else(|_| panic!("listing the contacts did not finish within 10 s"))
    });
    check(&outcome, &listings, seed);
    drop(fleet);
}

// ---------------------------------------------------------------- the load

/// One logical write: a tenant and an index (key `write-<i>`, name `w<i>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Write {
    tenant: &'static str,
    index: usize,
}

/// An answer and the server that gave it.
#[derive(Debug)]
struct Served {
    server: usize,
    answer: Answer,
}

/// What one sender saw: its first answer, its extra retry's answer, and
/// the 409s and failed connections on the way.
#[derive(Debug)]
struct SenderLog {
    write: Write,
    answers: Vec<Served>,
    conflicts: usize,
    connection_errors: usize,
}

/// Every write index gets `SENDERS` concurrent senders; for some indexes
/// half of them write as the second tenant.
async fn fire(addrs: Vec<SocketAddr>, seed: u64) -> Vec<SenderLog> {
    let addrs = Arc::new(addrs);
    let client = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut tasks = Vec::new();
    for index in 0..WRITES {
        for sender in 0..SENDERS {
            let tenant = if second_tenant_writes(index) && sender >= SENDERS / 2 {
                SECOND_TENANT
            } else {
                FIRST_TENANT
            };
            let write = Write { tenant, index };
            let addrs = Arc::clone(&addrs);
            let client = client.clone();
            let stream = seed ^ mix((index * SENDERS + sender) as u64);
            tasks.push(tokio::spawn(async move {
                send(&client, &addrs, write, stream, deadline).await
            }));
        }
    }
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(log) => logs.push(log),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a sender was cancelled: {e}"),
        }
    }
    logs
}

/// Sends `write` until it is answered (not 409), then retries it once more.
async fn send(
    client: &Client<HttpConnector, Body>,
    addrs: &[SocketAddr],
    write: Write,
    stream: u64,
    deadline: tokio::time::Instant,
) -> SenderLog {
    let mut log = SenderLog {
        write,
        answers: Vec::new(),
        conflicts: 0,
        connection_errors: 0,
    };
    let mut attempt = 0u64;
    while log.answers.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{write:?} still unanswered at the deadline: {log:?}"
        );
        attempt += 1;
        let server = (mix(stream ^ attempt) % addrs.len() as u64) as usize;
        let request = call("POST", &format!("/contacts?delay_ms={HANDLER_DELAY_MS}"))
            .tenant(write.tenant)
            .key(&format!("write-{}", write.index))
            .json(&format!(r#"{{"name":"w{}"}}"#, write.index))
            .request(addrs[server]);
        match tokio::time::timeout(Duration::from_secs(10), exchange(client, request)).await {
            Ok(Ok(answer)) if answer.status == StatusCode::CONFLICT => {
                answer.assert_problem(409, "request-in-flight");
                log.conflicts += 1;
            }
            Ok(Ok(answer)) => {
                log.answers.push(Served { server, answer });
                continue;
            }
            // A lost connection or a stuck exchange: the write may or may
            // not have run; the retry finds out.
            Ok(Err(_)) | Err(_) => log.connection_errors += 1,
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    log
}

async fn exchange(
    client: &Client<HttpConnector, Body>,
    request: http::Request<Body>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Each server's contacts, per tenant: `listings[tenant][server]`.
async fn list_all(addrs: &[SocketAddr]) -> BTreeMap<&'static str, Vec<Vec<serde_json::Value>>> {
    let client = client();
    let mut listings = BTreeMap::new();
    for tenant in [FIRST_TENANT, SECOND_TENANT] {
        let mut per_server = Vec::new();
        for &addr in addrs {
            let request = call("GET", "/contacts").tenant(tenant).request(addr);
            let answer = exchange(&client, request)
                .await
                .unwrap_or_else(|e| panic!("GET /contacts on {addr} failed: {e}"));
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            match answer.json() {
                serde_json::Value::Array(contacts) => per_server.push(contacts),
                other => panic!("GET /contacts on {addr} is not a list: {other}"),
            }
        }
        listings.insert(tenant, per_server);
    }
    listings
}

// ---------------------------------------------------------------- checks

fn check(
    logs: &[SenderLog],
    listings: &BTreeMap<&'static str, Vec<Vec<serde_json::Value>>>,
    seed: u64,
) {
    let mut by_write: BTreeMap<Write, Vec<&SenderLog>> = BTreeMap::new();
    for log in logs {
        by_write.entry(log.write).or_default().push(log);
    }
    let expected: HashSet<Write> = (0..WRITES)
        .flat_map(|index| {
            let first = Write {
                tenant: FIRST_TENANT,
                index,
            };
            let second = second_tenant_writes(index).then_some(Write {
                tenant: SECOND_TENANT,
                index,
            });
            std::iter::once(first).chain(second)
        })
        .collect();
    assert_eq!(
        by_write.keys().copied().collect::<HashSet<_>>(),
        expected,
        "seed {seed}"
    );

    // Where each contact was created: (tenant, name) -> [(server, contact)].
    let mut created: BTreeMap<(&str, String), Vec<(usize, &serde_json::Value)>> = BTreeMap::new();
    for (&tenant, per_server) in listings {
        for (server, contacts) in per_server.iter().enumerate() {
            for contact in contacts {
                let name = contact["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a contact without a name: {contact}"))
                    .to_owned();
                created
                    .entry((tenant, name))
                    .or_default()
                    .push((server, contact));
            }
        }
    }
    // Exactly once: every write's contact on exactly one server, and nothing
    // else anywhere.
    let expected_names: HashSet<(&str, String)> = expected
        .iter()
        .map(|w| (w.tenant, format!("w{}", w.index)))
        .collect();
    let stray: Vec<_> = created
        .keys()
        .filter(|k| !expected_names.contains(*k))
        .collect();
    assert!(stray.is_empty(), "contacts nobody wrote: {stray:?}");
    for name in &expected_names {
        let copies = created.get(name).map_or(0, Vec::len);
        assert_eq!(
            copies,
            1,
            "{name:?} was executed {copies} times across the fleet (seed {seed}): {:?}",
            created.get(name)
        );
    }

    let mut conflicts = 0;
    let mut cross_server_replays = 0;
    for (write, senders) in &by_write {
        let answers: Vec<&Served> = senders.iter().flat_map(|s| &s.answers).collect();
        let connection_errors: usize = senders.iter().map(|s| s.connection_errors).sum();
        conflicts += senders.iter().map(|s| s.conflicts).sum::<usize>();
        let first = &answers[0].answer;
        assert_eq!(first.status, StatusCode::CREATED, "{write:?}: {first:?}");
        for served in &answers {
            let answer = &served.answer;
            assert_eq!(
                (answer.status, &answer.body, answer.headers.get("location")),
                (first.status, &first.body, first.headers.get("location")),
                "{write:?}: answers differ (seed {seed})"
            );
        }
        // The one execution answers without the replay header; every other
        // answer is a replay. Only a lost connection can hide the original.
        let originals = answers.iter().filter(|s| !s.answer.replayed()).count();
        assert!(
            originals == 1 || (originals == 0 && connection_errors > 0),
            "{write:?}: {originals} answers without `idempotent-replayed: true` among {} \
             ({connection_errors} lost connections, seed {seed})",
            answers.len()
        );
        // The answer is the contact the executing server stored.
        let body: serde_json::Value = first.json();
        let (executor, stored) = created[&(write.tenant, format!("w{}", write.index))][0];
        assert_eq!(
            &body, stored,
            "{write:?}: the answer is not the stored contact"
        );
        cross_server_replays += answers
            .iter()
            .filter(|s| s.answer.replayed() && s.server != executor)
            .count();
    }
    // The runs must have exercised what this test is for: duplicates in
    // flight, and replays served by a server that did not run the write.
    assert!(
        conflicts > 0,
        "no duplicate ever met an in-flight write (seed {seed}): the test did not test"
    );
    assert!(
        cross_server_replays > 0,
        "no replay came from another server than the executor (seed {seed})"
    );
    eprintln!(
        "fleet_http: {} logical writes, {} answers, {conflicts} 409s, {cross_server_replays} cross-server replays",
        by_write.len(),
        logs.iter().map(|l| l.answers.len()).sum::<usize>()
    );
}

// ---------------------------------------------------------------- processes

/// The example servers, killed and reaped when dropped (also on a panic).
struct Fleet {
    servers: Vec<ServerProcess>,
}

struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// Holds the `--data-dir` and the server's stderr log.
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fleet {
    fn start(binary: &Path, redis_url: &str) -> Fleet {
        let mut servers = Vec::with_capacity(SERVERS);
        for _ in 0..SERVERS {
            // Pushed one by one, so the ones already started are killed if
            // a later one fails.
            servers.push(ServerProcess::start(binary, redis_url));
        }
        Fleet { servers }
    }
}

impl ServerProcess {
    fn start(binary: &Path, redis_url: &str) -> ServerProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log_path = dir.path().join("stderr.log");
        let log = File::create(&log_path).expect("the server's log file");
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0", "--redis", redis_url, "--data-dir"])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _dir: dir,
        };
        // The first line names the bound address; the thread then drains
        // stdout until the process ends, so it never writes to a closed pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the server's stdout failed: {e}"),
            // `server` is dropped on the way out, which kills it.
            Err(_) => {
                panic!(
                    "the server did not print its address within 30 s; its stderr:\n{}",
                    read_log(&log_path)
                )
            }
        };
        let Some(addr) = line
            .trim()
            .strip_prefix("contacts API listening on http://")
            .and_then(|a| a.parse().ok())
        else {
            panic!(
                "expected `contacts API listening on http://ADDR`, the server printed {line:?}; its stderr:\n{}",
                read_log(&log_path)
            );
        };
        server.addr = addr;
        server
    }
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Builds the example with this test's features and profile (quick when it
/// is up to date) and returns its path.
fn build_example() -> PathBuf {
    // …/target/<profile>/deps/fleet_http-<hash>
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory is inside the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("unexpected test binary path {}", exe.display()),
    };
    // The same features as this test, so the library is not rebuilt.
    let features: Vec<&str> = [
        ("http", cfg!(feature = "http")),
        ("client", cfg!(feature = "client")),
        ("redis", cfg!(feature = "redis")),
        ("sled", cfg!(feature = "sled")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();

    let logs = tempfile::tempdir().expect("a temporary directory");
    let log_path = logs.path().join("cargo.log");
    let log = File::create(&log_path).expect("cargo's log file");
    let mut cargo = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "axum_server", "--no-default-features"])
        .args(["--features", &features.join(",")])
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cargo starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = cargo.try_wait().expect("waiting for cargo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = cargo.kill();
            let _ = cargo.wait();
            panic!(
                "building the example took over 600 s; cargo's output:\n{}",
                read_log(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "building the example failed ({status}); cargo's output:\n{}",
        read_log(&log_path)
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("axum_server{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "no example at {}", binary.display());
    binary
}

// ---------------------------------------------------------------- randomness

/// The seed of the servers' choice: `IDEMLOG_FLEET_SEED`, or the clock.
fn seed() -> u64 {
    if let Ok(seed) = std::env::var("IDEMLOG_FLEET_SEED") {
        return seed
            .parse()
            .unwrap_or_else(|e| panic!("IDEMLOG_FLEET_SEED={seed:?} is not a u64: {e}"));
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// splitmix64: a well-spread hash of a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
