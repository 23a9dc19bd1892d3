//! The HTTP layer over real HTTP: every row of SPEC §7.

#![cfg(feature = "http")]

mod http_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_support::*;
use idemlog::http::StoragePolicy;

#[tokio::test]
async fn first_write_runs_once_and_the_retry_replays_it() {
    let s = start(|l| l).await;
    let first = call("POST", "/contacts")
        .key("k-1")
        .json(r#"{"name":"Ada","email":"ada@example.com"}"#)
        .send(s.addr)
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(!first.replayed());
    assert_eq!(first.headers["set-cookie"], "session=abc");

    // The retry spells the same JSON differently: still the same request.
    let retry = call("POST", "/contacts")
        .key("k-1")
        .json(r#"{ "email": "ada@example.com", "name": "Ada" }"#)
        .send(s.addr)
        .await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, first.body, "the stored body is replayed");
    assert_eq!(retry.headers["location"], first.headers["location"]);
    assert_eq!(retry.headers["x-execution"], "1");
    assert_eq!(retry.headers["content-type"], "application/json");
    assert!(
        retry.headers.get("set-cookie").is_none(),
        "Set-Cookie is never replayed: {retry:?}"
    );
    assert_eq!(s.probe.executions(), 1);
}

#[tokio::test]
async fn handler_gets_the_body_unchanged() {
    let s = start(|l| l).await;
    let body = r#"{"b":1,  "a":[1.0, 2]}"#;
    let answer = call("POST", "/contacts")
        .key("echo")
        .json(body)
        .send(s.addr)
        .await;
    assert_eq!(answer.json()["echo"], body);
    // Also when the body arrives in chunks without a declared length.
    let chunks = vec![
        Bytes::from_static(b"part one, "),
        Bytes::from_static(b"part two"),
    ];
    let answer = call("POST", "/contacts")
        .key("echo-chunked")
        .body(chunked(chunks))
        .send(s.addr)
        .await;
    assert_eq!(answer.json()["echo"], "part one, part two");
}

#[tokio::test]
async fn missing_key_is_a_400_problem_and_nothing_runs() {
    let s = start(|l| l).await;
    let answer = call("POST", "/contacts").json("{}").send(s.addr).await;
    let doc = answer.assert_problem(400, "missing-key");
    assert!(
        doc["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{doc}"
    );
    assert_eq!(s.probe.executions(), 0);
}

#[tokio::test]
async fn malformed_keys_are_400_with_their_own_type() {
    let s = start(|l| l).await;
    let too_long = format!("\"{}\"", "k".repeat(256));
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        (vec![b"unquoted-key"], "quoted string"),
        (vec![b"\"unterminated"], "closing double quote"),
        (vec![b"\"bad\\escape\""], "backslash"),
        (vec![b"\"a\";param=1"], "after the closing quote"),
        (vec![b"\"\""], "empty"),
        (vec![too_long.as_bytes()], "over the limit of 255"),
        (vec![b"\"one\"", b"\"two\""], "more than once"),
    ];
    for (values, expected) in cases {
        let mut c = call("POST", "/contacts").json("{}");
        for v in &values {
            c = c.header("idempotency-key", v);
        }
        let answer = c.send(s.addr).await;
        let doc = answer.assert_problem(400, "invalid-key");
        let detail = doc["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{values:?}: {detail}");
    }
    // The longest allowed key is fine.
    let longest = call("POST", "/contacts")
        .key(&"k".repeat(255))
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!(longest.status, 201, "{longest:?}");
    assert_eq!(s.probe.executions(), 1);
}

#[tokio::test]
async fn escaped_keys_are_unescaped_and_unquoted_keys_can_be_allowed() {
    let s = start(|l| l.accept_unquoted_keys(true)).await;
    let quoted = call("POST", "/contacts")
        .header("idempotency-key", br#""a\"b""#)
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!(quoted.status, 201);
    let key = s.store.key("tenant:alice", "a\"b").unwrap();
    assert!(s.store.lookup(&key).unwrap().is_some(), "stored under a\"b");

    let bare = call("POST", "/contacts")
        .header("idempotency-key", "bare-123")
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!(bare.status, 201);
    // The bare and the quoted spelling of one key are the same record.
    let again = call("POST", "/contacts")
        .key("bare-123")
        .json("{}")
        .send(s.addr)
        .await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn key_limits_come_from_the_store() {
    let s = start_with_store_limits(16).await;
    let ok = call("POST", "/contacts")
        .key(&"a".repeat(16))
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!(ok.status, 201);
    let long = call("POST", "/contacts")
        .key(&"a".repeat(17))
        .json("{}")
        .send(s.addr)
        .await;
    let doc = long.assert_problem(400, "invalid-key");
    assert!(
        doc["detail"].as_str().unwrap().contains("limit of 16"),
        "{doc}"
    );
}

async fn start_with_store_limits(max_key_len: usize) -> TestServer {
    let clock = idemlog::ManualClock::new(idemlog::Timestamp::from_millis(1));
    let store = idemlog::Store::in_memory(
        idemlog::Config::builder()
            .clock(clock.clone())
            .max_key_len(max_key_len)
            .maintenance_interval(None)
            .build(),
    );
    start_with_store(store, clock, |l| l).await
}

#[tokio::test]
async fn same_key_with_another_payload_is_a_422() {
    let s = start(|l| l).await;
    let first = call("POST", "/contacts")
        .key("k")
        .json(r#"{"name":"Ada"}"#)
        .send(s.addr)
        .await;
    assert_eq!(first.status, 201);
    let other_body = call("POST", "/contacts")
        .key("k")
        .json(r#"{"name":"Bob"}"#)
        .send(s.addr)
        .await;
    let doc = other_body.assert_problem(422, "key-reused");
    assert_eq!(doc["idempotency_key"], "k");
    assert!(doc["detail"].as_str().unwrap().contains("\"k\""), "{doc}");
    // The route is in the fingerprint by default: another path is a reuse too.
    let other_route = call("PATCH", "/contacts/1")
        .key("k")
        .json(r#"{"name":"Ada"}"#)
        .send(s.addr)
        .await;
    other_route.assert_problem(422, "key-reused");
    assert_eq!(s.probe.executions(), 1);
    // The first response was never shadowed.
    let retry = call("POST", "/contacts")
        .key("k")
        .json(r#"{"name":"Ada"}"#)
        .send(s.addr)
        .await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
}

#[tokio::test]
async fn route_in_the_scope_makes_routes_separate_records() {
    let s = start(|l| l.route_placement(idemlog::RoutePlacement::Scope)).await;
    let a = call("POST", "/contacts")
        .key("k")
        .json("{}")
        .send(s.addr)
        .await;
    let b = call("PATCH", "/contacts/9")
        .key("k")
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 200));
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn in_flight_duplicate_is_a_409_with_retry_after_then_replays() {
    let s = start(|l| l).await;
    let (mut entered, mut finished) = watch_slow(&s.probe).await;
    let addr = s.addr;
    let first =
        tokio::spawn(async move { call("POST", "/slow").key("s").json("{}").send(addr).await });
    signal(&mut entered, "first request in the handler").await;

    // The store's clock stands still: the whole 30 s lease remains.
    let dup = call("POST", "/slow").key("s").json("{}").send(s.addr).await;
    let doc = dup.assert_problem(409, "request-in-flight");
    assert_eq!(dup.headers["retry-after"], "30");
    assert_eq!(doc["idempotency_key"], "s");
    // 12.5 s later, 17.5 s remain: rounded up.
    s.clock.advance(Duration::from_millis(12_500));
    let dup = call("POST", "/slow").key("s").json("{}").send(s.addr).await;
    dup.assert_problem(409, "request-in-flight");
    assert_eq!(dup.headers["retry-after"], "18");

    s.probe.release.notify_one();
    signal(&mut finished, "first request done").await;
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let retry = call("POST", "/slow").key("s").json("{}").send(s.addr).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, first.body);
    assert_eq!(s.probe.executions(), 1);
}

#[tokio::test]
async fn concurrent_duplicates_execute_exactly_once() {
    let s = start(|l| l).await;
    let (mut entered, _finished) = watch_slow(&s.probe).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let addr = s.addr;
        tasks.spawn(async move {
            call("POST", "/slow")
                .key("dup")
                .json(r#"{"n":1}"#)
                .send(addr)
                .await
        });
    }
    signal(&mut entered, "one request in the handler").await;
    // The seven others are answered while the one runs.
    for _ in 0..7 {
        let answer = tasks.join_next().await.unwrap().unwrap();
        answer.assert_problem(409, "request-in-flight");
    }
    s.probe.release.notify_one();
    let winner = tasks.join_next().await.unwrap().unwrap();
    assert_eq!(winner.status, 201, "{winner:?}");
    assert_eq!(s.probe.executions(), 1);

    // A burst on a fast handler: still one execution, everyone else gets a
    // 409 or the replay.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let addr = s.addr;
        tasks.spawn(async move {
            call("POST", "/contacts")
                .key("burst")
                .json("{}")
                .send(addr)
                .await
        });
    }
    let mut created = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        match answer.status.as_u16() {
            201 if !answer.replayed() => created += 1,
            201 => {}
            409 => {
                answer.assert_problem(409, "request-in-flight");
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn body_over_the_limit_is_a_413_declared_or_streamed() {
    let s = start(|l| l.body_limit(1024)).await;
    let at_limit = call("POST", "/contacts")
        .key("a")
        .body(full(vec![b'a'; 1024]))
        .send(s.addr)
        .await;
    assert_eq!(at_limit.status, 201);
    let over = call("POST", "/contacts")
        .key("b")
        .body(full(vec![b'a'; 1025]))
        .send(s.addr)
        .await;
    let doc = over.assert_problem(413, "body-too-large");
    assert!(
        doc["detail"].as_str().unwrap().contains("1024 bytes"),
        "{doc}"
    );
    let chunks = vec![Bytes::from(vec![b'x'; 700]), Bytes::from(vec![b'y'; 700])];
    let streamed = call("POST", "/contacts")
        .key("c")
        .body(chunked(chunks))
        .send(s.addr)
        .await;
    streamed.assert_problem(413, "body-too-large");
    assert_eq!(s.probe.executions(), 1);
}

#[tokio::test]
async fn two_tenants_with_the_same_key_both_execute() {
    let s = start(|l| l).await;
    let a = call("POST", "/contacts")
        .tenant("alice")
        .key("shared")
        .json("{}")
        .send(s.addr)
        .await;
    let b = call("POST", "/contacts")
        .tenant("bob")
        .key("shared")
        .json("{}")
        .send(s.addr)
        .await;
    assert!(!a.replayed() && !b.replayed());
    assert_eq!(a.json()["tenant"], "Bearer alice");
    assert_eq!(b.json()["tenant"], "Bearer bob");
    assert_eq!(s.probe.executions(), 2);
    // Each replays its own.
    let b2 = call("POST", "/contacts")
        .tenant("bob")
        .key("shared")
        .json("{}")
        .send(s.addr)
        .await;
    assert!(b2.replayed());
    assert_eq!(b2.body, b.body);
    // No token: the extractor's rejection is answered and nothing runs.
    let anon = call("POST", "/contacts")
        .anonymous()
        .key("shared")
        .json("{}")
        .send(s.addr)
        .await;
    assert_eq!(anon.status, 401);
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn methods_other_than_post_and_patch_pass_through() {
    let s = start(|l| l).await;
    let get = call("GET", "/contacts").send(s.addr).await;
    assert_eq!(get.status, 200);
    let put = call("PUT", "/contacts/3").send(s.addr).await;
    assert_eq!(put.status, 200, "PUT is not covered by default: {put:?}");
    let patch = call("PATCH", "/contacts/3").json("{}").send(s.addr).await;
    patch.assert_problem(400, "missing-key");

    let s = start(|l| l.methods([http::Method::PUT])).await;
    let put = call("PUT", "/contacts/3").json("{}").send(s.addr).await;
    put.assert_problem(400, "missing-key");
    let post = call("POST", "/contacts").json("{}").send(s.addr).await;
    assert_eq!(post.status, 201);
}

#[tokio::test]
async fn optional_key_lets_keyless_requests_through() {
    let s = start(|l| l.require_key(false)).await;
    for _ in 0..2 {
        let answer = call("POST", "/contacts").json("{}").send(s.addr).await;
        assert!(answer.status == 201 && !answer.replayed(), "{answer:?}");
    }
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn default_policy_releases_5xx_and_retry_statuses_and_stores_the_rest() {
    let s = start(|l| l).await;
    for code in [500, 503, 408, 409, 425, 429] {
        let path = format!("/status/{code}");
        let a = call("POST", &path)
            .key(&format!("k{code}"))
            .send(s.addr)
            .await;
        let b = call("POST", &path)
            .key(&format!("k{code}"))
            .send(s.addr)
            .await;
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (code, code));
        assert!(!b.replayed(), "{code} is not stored: the retry runs again");
        assert_ne!(a.body, b.body, "{code}: two executions");
    }
    for code in [200, 400, 404, 422] {
        let path = format!("/status/{code}");
        let a = call("POST", &path)
            .key(&format!("k{code}"))
            .send(s.addr)
            .await;
        let b = call("POST", &path)
            .key(&format!("k{code}"))
            .send(s.addr)
            .await;
        assert_eq!(b.status.as_u16(), code);
        assert!(b.replayed(), "{code} is stored");
        assert_eq!(a.body, b.body);
    }
    assert_eq!(s.probe.executions(), 6 * 2 + 4);
}

#[tokio::test]
async fn server_errors_can_be_stored_and_success_only_stores_2xx() {
    let s = start(|l| l.storage_policy(StoragePolicy::store_server_errors())).await;
    let a = call("POST", "/status/500").key("k").send(s.addr).await;
    let b = call("POST", "/status/500").key("k").send(s.addr).await;
    assert!(b.replayed() && a.body == b.body, "{b:?}");
    let c = call("POST", "/status/429").key("k2").send(s.addr).await;
    let d = call("POST", "/status/429").key("k2").send(s.addr).await;
    assert!(!d.replayed() && c.body != d.body);

    let s = start(|l| l.storage_policy(StoragePolicy::success_only())).await;
    call("POST", "/status/404").key("k").send(s.addr).await;
    let again = call("POST", "/status/404").key("k").send(s.addr).await;
    assert!(!again.replayed());
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn response_over_the_store_limit_is_answered_and_the_key_released() {
    let s = start_with_limit(1024, |l| l).await;
    let a = call("POST", "/big").key("big").send(s.addr).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 4002, "the client gets every byte");
    assert!(a.body.ends_with(b"#1"));
    let b = call("POST", "/big").key("big").send(s.addr).await;
    assert!(!b.replayed(), "not stored, so the retry runs again");
    assert!(b.body.ends_with(b"#2"));
    let key = s.store.key("tenant:alice", "big").unwrap();
    assert!(s.store.lookup(&key).unwrap().is_none(), "key released");
}

#[tokio::test]
async fn a_panicking_handler_releases_the_key() {
    let s = start(|l| l).await;
    s.probe.panics_left.store(1, Ordering::SeqCst);
    let a = call("POST", "/panic").key("p").send(s.addr).await;
    let doc = a.assert_problem(500, "handler-failed");
    assert_eq!(doc["idempotency_key"], "p");
    let b = call("POST", "/panic").key("p").send(s.addr).await;
    assert_eq!(b.status, 201, "the retry runs again: {b:?}");
    assert!(!b.replayed());
    let c = call("POST", "/panic").key("p").send(s.addr).await;
    assert!(c.replayed());
    assert_eq!(s.probe.executions(), 2);
}

#[tokio::test]
async fn invalid_json_falls_back_to_the_raw_fingerprint() {
    let s = start(|l| l).await;
    let a = call("POST", "/contacts")
        .key("j")
        .json("{not json")
        .send(s.addr)
        .await;
    assert_eq!(
        a.json()["echo"],
        "{not json",
        "the handler sees the body as sent"
    );
    let same = call("POST", "/contacts")
        .key("j")
        .json("{not json")
        .send(s.addr)
        .await;
    assert!(same.replayed());
    let other = call("POST", "/contacts")
        .key("j")
        .json("{not  json")
        .send(s.addr)
        .await;
    other.assert_problem(422, "key-reused");
}

#[tokio::test]
async fn lease_expiry_lets_a_retry_take_over() {
    let s = start(|l| l).await;
    let (mut entered, mut finished) = watch_slow(&s.probe).await;
    let addr = s.addr;
    let first = tokio::spawn(async move { call("POST", "/slow").key("t").send(addr).await });
    signal(&mut entered, "first owner in the handler").await;
    s.clock.advance(Duration::from_secs(31));
    let second = tokio::spawn(async move { call("POST", "/slow").key("t").send(addr).await });
    signal(&mut entered, "the takeover in the handler").await;
    let key = s.store.key("tenant:alice", "t").unwrap();
    let record = s.store.lookup(&key).unwrap().unwrap();
    assert_eq!(record.attempts(), 2);
    // Both finish; only the current owner's response is stored.
    s.probe.release.notify_waiters();
    signal(&mut finished, "one done").await;
    signal(&mut finished, "other done").await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (201, 201));
    let retry = call("POST", "/slow").key("t").send(s.addr).await;
    assert!(retry.replayed());
    assert_eq!(
        retry.body, second.body,
        "the takeover's response is the one stored"
    );
    assert_eq!(s.probe.executions(), 2);
}
