//! The conformance suite, Redis-only checks and a fleet test, each against a
//! real `redis-server` started for the test on a free loopback port.
//!
//! Run with `cargo test --features redis --test conformance_redis`; the
//! tests fail (and say what to install) when `redis-server` is missing.

#![cfg(feature = "redis")]

mod conformance;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::redis_server::RedisServer;
use conformance::{acquire, fp, key, Harness, LONG};
use idemlog::backend::redis::{RedisBackend, RedisOptions};
use idemlog::{
    Backend, Bytes, Config, Error, IdempotencyKey, ManualClock, Outcome, ReserveOptions, Timestamp,
};
use tokio::sync::{mpsc, oneshot};

struct RedisHarness {
    server: RedisServer,
    opened: AtomicU32,
    last: Mutex<Option<(Config, String)>>,
}

impl RedisHarness {
    fn start() -> Self {
        RedisHarness {
            server: RedisServer::start(),
            opened: AtomicU32::new(0),
            last: Mutex::new(None),
        }
    }

    async fn connect(&self, config: Config, namespace: &str) -> RedisBackend {
        let options = RedisOptions::default().namespace(namespace);
        RedisBackend::connect_with(&self.server.url(), config, options)
            .await
            .expect("connect to the test server")
    }
}

impl Harness for RedisHarness {
    type B = RedisBackend;

    async fn open(&self, config: Config) -> RedisBackend {
        let namespace = format!("test-{}", self.opened.fetch_add(1, Ordering::Relaxed));
        *self.last.lock().unwrap() = Some((config.clone(), namespace.clone()));
        self.connect(config, &namespace).await
    }

    async fn reopen(&self, backend: RedisBackend) -> Option<RedisBackend> {
        drop(backend);
        let (config, namespace) = self.last.lock().unwrap().clone().expect("opened before");
        Some(self.connect(config, &namespace).await)
    }

    async fn now(&self, backend: &RedisBackend) -> Timestamp {
        backend.server_time().await.expect("server time")
    }

    fn manual_clock(&self) -> Option<&ManualClock> {
        None
    }
}

conformance::suite!(RedisHarness::start());

async fn raw_connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

// ---------------------------------------------------------------------------
// Redis-only behaviour.

#[tokio::test]
async fn unreachable_server_is_a_typed_error() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let options = RedisOptions::default()
        .connect_timeout(Duration::from_millis(500))
        .reconnect_retries(0);
    let got = RedisBackend::connect_with(&url, Config::default(), options).await;
    match got {
        Err(Error::Backend {
            backend: "redis",
            message,
            ..
        }) => assert!(message.contains("cannot reach"), "{message}"),
        other => panic!("expected a redis backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn server_lost_mid_use_is_a_typed_error() {
    let mut server = RedisServer::start();
    let options = RedisOptions::default()
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
        .reconnect_retries(0);
    let b = RedisBackend::connect_with(&server.url(), Config::default(), options)
        .await
        .expect("connect");
    let k = key("t", "k");
    let _ = acquire(&b, &k, &fp("x"), ReserveOptions::default()).await;
    server.stop();
    let got = b.reserve(&k, &fp("x"), ReserveOptions::default()).await;
    assert!(
        matches!(
            got,
            Err(Error::Backend {
                backend: "redis",
                ..
            })
        ),
        "got {got:?}"
    );
    let got = b.lookup(&k).await;
    assert!(
        matches!(
            got,
            Err(Error::Backend {
                backend: "redis",
                ..
            })
        ),
        "got {got:?}"
    );
}

#[tokio::test]
async fn bad_url_and_namespace_are_typed_errors() {
    let got = RedisBackend::connect("not a url", Config::default()).await;
    assert!(
        matches!(&got, Err(Error::Backend { backend: "redis", message, .. }) if message.contains("not a valid Redis URL")),
        "got {got:?}"
    );
    let options = RedisOptions::default().namespace("app{1}");
    let got = RedisBackend::connect_with("redis://127.0.0.1:1/", Config::default(), options).await;
    assert!(
        matches!(&got, Err(Error::Backend { backend: "redis", message, .. }) if message.contains("brace")),
        "got {got:?}"
    );
}

/// After `SCRIPT FLUSH` (or a server restart) the scripts are loaded again.
#[tokio::test]
async fn scripts_are_reloaded_after_noscript() {
    let h = RedisHarness::start();
    let b = h.open(conformance::config()).await;
    let k = key("t", "noscript");
    let lease = acquire(&b, &k, &fp("x"), ReserveOptions::default()).await;
    let mut raw = raw_connection(&h.server).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .expect("flush");
    b.complete(&lease, Bytes::from_static(b"ok"))
        .await
        .expect("complete reloads the script");
    let got = b.reserve(&k, &fp("x"), ReserveOptions::default()).await;
    assert!(matches!(got, Ok(Outcome::Replay(_))), "got {got:?}");
}

/// Leases run on the server's clock: an application server whose clock is
/// decades off still gets leases from the server's now.
#[tokio::test]
async fn leases_use_the_server_clock_not_the_app_clock() {
    let h = RedisHarness::start();
    let skewed = ManualClock::new(Timestamp::from_millis(4_102_444_800_000)); // year 2100
    let config = Config::builder()
        .clock(skewed)
        .lease(LONG)
        .maintenance_interval(None)
        .build();
    let b = h.open(config).await;
    let server_now = b.server_time().await.expect("time");
    let lease = acquire(&b, &key("t", "skew"), &fp("x"), ReserveOptions::default()).await;
    let until = lease.lease_until.as_millis();
    assert!(
        until >= server_now.as_millis() + 60_000 && until < server_now.as_millis() + 70_000,
        "lease_until {until} must be the server's now {server_now:?} + 60 s"
    );
}

/// Expiry is the server's own: every record key and token key carries a
/// PEXPIRE, and the records vanish from the server once expired.
#[tokio::test]
async fn keys_carry_server_side_expiry() {
    let h = RedisHarness::start();
    let b = h.open(conformance::config()).await;
    let mut raw = raw_connection(&h.server).await;
    let k = key("t", "ttl");
    let name = b.redis_key(&k);
    let ttl = Duration::from_millis(500);
    let lease = acquire(&b, &k, &fp("x"), ReserveOptions::default().ttl(ttl)).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(
        pttl > 60_000 && pttl <= 60_500,
        "in flight: lease + ttl, got {pttl}"
    );
    let token_pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{name}:t"))
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(
        token_pttl > 0,
        "the token key expires too, got {token_pttl}"
    );
    b.complete(&lease, Bytes::from_static(b"ok"))
        .await
        .expect("complete");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(pttl > 0 && pttl <= 500, "completed: ttl, got {pttl}");
    let expires = b.server_time().await.expect("time").saturating_add(ttl);
    // Redis drops a key once its clock is past the expiry time (idemlog's
    // scripts already treat it as absent at that very millisecond).
    conformance::advance_to(&h, &b, expires.saturating_add(Duration::from_millis(2))).await;
    // Redis removes the key itself (lazily on access, or by its sweeper).
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "the server dropped the expired record");
}

/// A key that holds another identity's record (a hash collision, or a
/// foreign write) is an error, never that identity's record.
#[tokio::test]
async fn a_record_of_another_identity_is_never_returned() {
    let h = RedisHarness::start();
    let b = h.open(conformance::config()).await;
    let mut raw = raw_connection(&h.server).await;
    let k = key("tenant-a", "order-1");
    let lease = acquire(&b, &k, &fp("x"), ReserveOptions::default()).await;
    b.complete(&lease, Bytes::from_static(b"secret of tenant-a"))
        .await
        .expect("complete");
    // Pretend tenant-b's identity hashed to tenant-a's key.
    let other = key("tenant-b", "order-1");
    let _: () = redis::cmd("RENAME")
        .arg(b.redis_key(&k))
        .arg(b.redis_key(&other))
        .query_async(&mut raw)
        .await
        .expect("rename");
    for got in [
        b.lookup(&other).await.map(|r| format!("{r:?}")),
        b.reserve(&other, &fp("x"), ReserveOptions::default())
            .await
            .map(|o| format!("{o:?}")),
    ] {
        match got {
            Err(Error::Backend {
                backend: "redis",
                message,
                ..
            }) => assert!(message.contains("same Redis key"), "{message}"),
            other => panic!("expected a collision error, got {other:?}"),
        }
    }
}

/// Two backends with different namespaces on one server do not share
/// records; with the same namespace they do.
#[tokio::test]
async fn namespaces_separate_and_share() {
    let h = RedisHarness::start();
    let a = h.connect(conformance::config(), "app-a").await;
    let a2 = h.connect(conformance::config(), "app-a").await;
    let other = h.connect(conformance::config(), "app-b").await;
    let k = key("t", "k");
    let lease = acquire(&a, &k, &fp("x"), ReserveOptions::default()).await;
    a.complete(&lease, Bytes::from_static(b"a"))
        .await
        .expect("complete");
    let got = a2.reserve(&k, &fp("x"), ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::Replay(_))),
        "same namespace: {got:?}"
    );
    let got = other.reserve(&k, &fp("x"), ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::Acquired(_))),
        "other namespace: {got:?}"
    );
}

// ---------------------------------------------------------------------------
// The fleet: four application servers, each with its own connection, share
// one Redis; a client fires concurrent duplicates and retries of 50 logical
// writes at random servers.

struct Request {
    key: IdempotencyKey,
    body: String,
    answer: oneshot::Sender<Answer>,
}

#[derive(Debug)]
enum Answer {
    Ok(Bytes),
    /// 409 or 503: the client retries.
    RetryLater,
}

/// One application server: decides each request through its own backend.
/// A tenth of first attempts fail before doing the work and release the key
/// (an uncached failure), so retries must run the write.
async fn app_server(
    id: usize,
    backend: RedisBackend,
    mut requests: mpsc::Receiver<Request>,
    executions: Arc<Mutex<HashMap<String, u32>>>,
    served: Arc<AtomicUsize>,
) {
    let mut handled = 0u64;
    while let Some(req) = requests.recv().await {
        handled += 1;
        let backend = backend.clone();
        let executions = Arc::clone(&executions);
        served.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let answer = match backend
                .reserve(&req.key, &fp(&req.body), ReserveOptions::default())
                .await
                .expect("reserve")
            {
                Outcome::Acquired(lease) => {
                    if lease.attempt == 1 && handled % 10 == 3 {
                        backend.release(&lease).await.expect("release");
                        Answer::RetryLater
                    } else {
                        *executions
                            .lock()
                            .unwrap()
                            .entry(req.key.key().to_owned())
                            .or_default() += 1;
                        tokio::task::yield_now().await;
                        let response = Bytes::from(format!(
                            "201 {} by server {id} token {}",
                            req.body, lease.token
                        ));
                        backend
                            .complete(&lease, response.clone())
                            .await
                            .expect("complete");
                        Answer::Ok(response)
                    }
                }
                Outcome::Replay(replay) => Answer::Ok(replay.response),
                Outcome::InProgress { .. } => Answer::RetryLater,
                Outcome::Conflict { .. } => panic!("no request reuses a key with another body"),
            };
            let _ = req.answer.send(answer);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_of_four_servers_executes_each_write_once() {
    const SERVERS: usize = 4;
    const WRITES: usize = 50;
    const DUPLICATES: usize = 4;
    let redis = RedisServer::start();
    let executions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let served = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for id in 0..SERVERS {
        let backend = RedisBackend::connect(&redis.url(), conformance::config())
            .await
            .expect("each server connects on its own");
        let (tx, rx) = mpsc::channel::<Request>(64);
        tokio::spawn(app_server(
            id,
            backend,
            rx,
            Arc::clone(&executions),
            Arc::clone(&served),
        ));
        servers.push(tx);
    }
    let servers = Arc::new(servers);

    // Each logical write: DUPLICATES concurrent senders, each retrying at a
    // random server until it gets an answer, then once more (a retry after
    // a lost response) which must replay.
    let mut clients = Vec::new();
    for w in 0..WRITES {
        for d in 0..DUPLICATES {
            let servers = Arc::clone(&servers);
            clients.push(tokio::spawn(async move {
                let k = key("fleet-tenant", &format!("write-{w}"));
                let body = format!("order {w}");
                let mut rng = XorShift((w * 7919 + d * 104_729 + 1) as u64);
                let mut answers = Vec::new();
                for _ in 0..2 {
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(tries < 10_000, "write {w} never answered");
                        let (answer, rx) = oneshot::channel();
                        let server = &servers[rng.next() as usize % SERVERS];
                        server
                            .send(Request {
                                key: k.clone(),
                                body: body.clone(),
                                answer,
                            })
                            .await
                            .expect("server up");
                        match rx.await.expect("answered") {
                            Answer::Ok(bytes) => {
                                answers.push(bytes);
                                break;
                            }
                            Answer::RetryLater => tokio::task::yield_now().await,
                        }
                    }
                }
                (w, answers)
            }));
        }
    }
    let mut by_write: HashMap<usize, Vec<Bytes>> = HashMap::new();
    for client in clients {
        let (w, answers) = client.await.expect("client panicked");
        by_write.entry(w).or_default().extend(answers);
    }

    let executions = executions.lock().unwrap();
    for w in 0..WRITES {
        let name = format!("write-{w}");
        assert_eq!(
            executions.get(&name),
            Some(&1),
            "{name} executed exactly once"
        );
        let answers = &by_write[&w];
        assert_eq!(answers.len(), DUPLICATES * 2);
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "{name}: every retry gets the same bytes: {answers:?}"
        );
    }
    assert!(served.load(Ordering::Relaxed) >= WRITES * DUPLICATES * 2);
}

/// A tiny deterministic generator for picking servers.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
