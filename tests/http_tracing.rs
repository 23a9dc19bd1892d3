//! The layer's events name keys by a hash, never in clear.

#![cfg(feature = "http")]

mod http_support;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use http_support::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event as "message field=value ..." lines.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() != "idemlog::http" {
            return;
        }
        let mut line = format!("{}:", event.metadata().level());
        event.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

// A current-thread runtime: the server's tasks run on this thread, where
// the recorder is the default subscriber.
#[tokio::test(flavor = "current_thread")]
async fn events_cover_each_decision_and_never_show_the_key() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let s = start(|l| l).await;
    let secret = "super-secret-key-4711";
    call("POST", "/contacts")
        .key(secret)
        .json("{}")
        .send(s.addr)
        .await;
    call("POST", "/contacts")
        .key(secret)
        .json("{}")
        .send(s.addr)
        .await;
    call("POST", "/contacts")
        .key(secret)
        .json(r#"{"a":1}"#)
        .send(s.addr)
        .await;
    call("POST", "/status/503")
        .key("other-secret-0815")
        .send(s.addr)
        .await;
    // In progress, then taken over once the lease ran out.
    let (mut entered, mut finished) = watch_slow(&s.probe).await;
    let addr = s.addr;
    let first =
        tokio::spawn(async move { call("POST", "/slow").key("slow-secret-42").send(addr).await });
    signal(&mut entered, "owner in the handler").await;
    call("POST", "/slow")
        .key("slow-secret-42")
        .send(s.addr)
        .await
        .assert_problem(409, "request-in-flight");
    s.clock.advance(std::time::Duration::from_secs(31));
    let second =
        tokio::spawn(async move { call("POST", "/slow").key("slow-secret-42").send(addr).await });
    signal(&mut entered, "takeover in the handler").await;
    s.probe.release.notify_waiters();
    signal(&mut finished, "one done").await;
    signal(&mut finished, "other done").await;
    first.await.unwrap();
    second.await.unwrap();

    let lines = recorder.0.lock().unwrap().clone();
    let all = lines.join("\n");
    for expected in [
        "idempotency key acquired",
        "idempotent response stored",
        "idempotent response replayed",
        "idempotency key reused for another request",
        "idempotency key released",
        "idempotent request still in progress",
        "idempotency key taken over after its lease ran out",
    ] {
        assert!(all.contains(expected), "no {expected:?} in:\n{all}");
    }
    assert!(!all.contains(secret), "the key leaked into the log:\n{all}");
    for clear in ["4711", "0815", "slow-secret"] {
        assert!(!all.contains(clear), "{clear} leaked:\n{all}");
    }
    // Every event names the identity by the same 16-hex-digit hash.
    let hashes: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.split("key_hash=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(!hashes.is_empty(), "{all}");
    for h in &hashes {
        assert_eq!(h.len(), 16, "{h}");
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()), "{h}");
    }
}
