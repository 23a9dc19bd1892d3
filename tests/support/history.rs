//! A recorded history of concurrent store operations and a per-identity
//! checker for the promises of SPEC §3.
//!
//! Every operation is recorded with the global sequence numbers drawn just
//! before it was invoked and just after it returned (one `AtomicU64`
//! `fetch_add` shared by all threads), so `a.ret < b.invoke` means `a`
//! really finished before `b` started. The manual clock is read at the same
//! two instants; since only one thread moves it and only forward, the store's
//! `now` for an operation lies in `[clock_invoke, clock_ret]`.
//!
//! Responses and checkpoints are unique per call (each carries an id), so a
//! replayed response names the one `complete` that stored it.
//!
//! The checker does not search for a full linearization (that is NP-hard in
//! general); it checks necessary conditions that each follow from one rule
//! of the contract, using only facts the real-time order and the clock
//! bounds make certain. Every violation it reports is a real bug; it can miss
//! some bugs whose evidence is hidden by overlapping operations.
//!
//! Per identity:
//! * fencing tokens of acquisitions are unique and rise with real-time order
//!   (`tokens`);
//! * a `complete`/`release`/`extend`/`checkpoint` with token `t` succeeds only
//!   while `t` is current: not after an acquisition with a larger token
//!   returned, nor after `t`'s reservation was completed or released
//!   (`fencing`);
//! * S1: a new acquisition never starts while the previous holder's lease is
//!   certainly running and that holder never finished; a completed response is
//!   never replaced before it certainly expired (`exclusive`);
//! * a takeover follows an unfinished reservation of the same fingerprint and
//!   inherits only checkpoints stored under earlier tokens (`takeover`);
//! * S2/S4: a replay returns exactly the bytes of one successful `complete` of
//!   this identity and fingerprint, invoked before the replay returned, not
//!   expired, not superseded (`replay`);
//! * a conflict is answered only when a record with another fingerprint may
//!   be current (`conflict`); `InProgress` only when an unfinished
//!   reservation of the same fingerprint may be current (`in_progress`);
//! * a lookup shows only a current token and the bytes of a successful
//!   `complete` (`lookup`).

#![allow(dead_code)] // each test binary uses a part of this module

use std::collections::HashMap;

/// What a call to `reserve` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Acquired {
        token: u64,
        attempt: u32,
        lease_until: u64,
        /// Id of the recovered checkpoint (`u64::MAX`: bytes no call wrote).
        checkpoint: Option<u64>,
    },
    /// Id of the replayed response (`u64::MAX`: bytes no call wrote).
    Replay {
        response: u64,
    },
    InProgress,
    Conflict,
    Failed(String),
}

/// What an operation on a held token answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Ok,
    LeaseLost,
    Failed(String),
}

/// What `lookup` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Looked {
    Absent,
    InFlight {
        token: u64,
        fingerprint: u8,
    },
    Completed {
        token: u64,
        fingerprint: u8,
        response: u64,
    },
    Failed(String),
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Reserve {
        fingerprint: u8,
        result: Reserved,
    },
    Complete {
        token: u64,
        response: u64,
        result: Done,
    },
    Release {
        token: u64,
        result: Done,
    },
    Extend {
        token: u64,
        result: Done,
    },
    Checkpoint {
        token: u64,
        checkpoint: u64,
        result: Done,
    },
    Lookup {
        result: Looked,
    },
}

/// One operation with its real-time interval and clock bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub thread: u16,
    /// Index of the identity.
    pub identity: u32,
    pub invoke: u64,
    pub ret: u64,
    pub clock_invoke: u64,
    pub clock_ret: u64,
    pub op: Op,
}

/// The lease and TTL the workload used, in clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub lease_ms: u64,
    pub ttl_ms: u64,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub identities: usize,
    pub events: usize,
    pub acquisitions: usize,
    pub takeovers: usize,
    pub replays: usize,
    pub conflicts: usize,
    pub completes_ok: usize,
    pub stale_rejected: usize,
    pub violations: Vec<String>,
}

/// Encodes a unique response or checkpoint id as the bytes a thread stores,
/// with a length that varies with the id so bodies differ in size too.
pub fn payload(kind: &str, id: u64) -> Vec<u8> {
    let mut bytes = format!("{kind}:{id}:").into_bytes();
    bytes.resize(bytes.len() + (id % 7) as usize * 3, b'.');
    bytes
}

/// The id inside bytes made by [`payload`], or `u64::MAX` for bytes that no
/// call stored (invented or altered).
pub fn payload_id(kind: &str, bytes: &[u8]) -> u64 {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return u64::MAX,
    };
    let mut parts = text.splitn(3, ':');
    let (Some(k), Some(id), Some(pad)) = (parts.next(), parts.next(), parts.next()) else {
        return u64::MAX;
    };
    match id.parse::<u64>() {
        Ok(id)
            if k == kind
                && payload(kind, id).len() == bytes.len()
                && pad.bytes().all(|b| b == b'.') =>
        {
            id
        }
        _ => u64::MAX,
    }
}

/// Acquisitions sorted by return, with the running maximum token, to answer
/// "the largest token certainly handed out before instant `s`".
struct Returned {
    rets: Vec<u64>,
    max_token: Vec<u64>,
}

impl Returned {
    fn new(acquired: &[Acq<'_>]) -> Self {
        let mut by_ret: Vec<(u64, u64)> = acquired.iter().map(|a| (a.ev.ret, a.token)).collect();
        by_ret.sort_unstable();
        let mut max = 0;
        let mut rets = Vec::with_capacity(by_ret.len());
        let mut max_token = Vec::with_capacity(by_ret.len());
        for (ret, token) in by_ret {
            max = max.max(token);
            rets.push(ret);
            max_token.push(max);
        }
        Returned { rets, max_token }
    }

    /// Largest token of an acquisition that returned before `instant`.
    fn max_before(&self, instant: u64) -> Option<u64> {
        let n = self.rets.partition_point(|&r| r < instant);
        n.checked_sub(1).map(|i| self.max_token[i])
    }
}

#[derive(Clone, Copy)]
struct Acq<'a> {
    ev: &'a Event,
    fingerprint: u8,
    token: u64,
    attempt: u32,
    lease_until: u64,
    checkpoint: Option<u64>,
}

/// A successful `complete` or `release` of a token.
#[derive(Clone, Copy)]
struct End<'a> {
    ev: &'a Event,
    completed: bool,
}

/// Checks every identity of `events`.
pub fn check(events: &[Event], params: Params) -> Report {
    let mut report = Report {
        events: events.len(),
        ..Report::default()
    };
    let mut by_identity: HashMap<u32, Vec<&Event>> = HashMap::new();
    for e in events {
        by_identity.entry(e.identity).or_default().push(e);
        if e.ret <= e.invoke || e.clock_ret < e.clock_invoke {
            report
                .violations
                .push(format!("malformed interval in the recording: {e:?}"));
        }
    }
    report.identities = by_identity.len();
    let mut ids: Vec<_> = by_identity.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let mut evs = by_identity.remove(&id).unwrap_or_default();
        evs.sort_by_key(|e| e.invoke);
        check_identity(id, &evs, params, &mut report);
    }
    report
}

fn check_identity(id: u32, evs: &[&Event], p: Params, report: &mut Report) {
    let mut v = Vec::new();
    let mut acquired: Vec<Acq<'_>> = Vec::new();
    let mut completes: HashMap<u64, &Event> = HashMap::new();
    let mut checkpoints: HashMap<u64, (&Event, u64)> = HashMap::new();
    let mut ends: HashMap<u64, End<'_>> = HashMap::new();
    for &e in evs {
        match &e.op {
            Op::Reserve {
                fingerprint,
                result:
                    Reserved::Acquired {
                        token,
                        attempt,
                        lease_until,
                        checkpoint,
                    },
            } => acquired.push(Acq {
                ev: e,
                fingerprint: *fingerprint,
                token: *token,
                attempt: *attempt,
                lease_until: *lease_until,
                checkpoint: *checkpoint,
            }),
            Op::Complete {
                token,
                response,
                result,
            } => {
                if completes.insert(*response, e).is_some() {
                    v.push(format!(
                        "response id {response} stored twice by the workload"
                    ));
                }
                if *result == Done::Ok {
                    report.completes_ok += 1;
                    record_end(&mut ends, *token, e, true, &mut v);
                }
            }
            Op::Release {
                token,
                result: Done::Ok,
            } => record_end(&mut ends, *token, e, false, &mut v),
            Op::Checkpoint {
                token,
                checkpoint,
                result: Done::Ok,
            } => {
                checkpoints.insert(*checkpoint, (e, *token));
            }
            _ => {}
        }
    }
    report.acquisitions += acquired.len();
    let returned = Returned::new(&acquired);
    let mut by_token: HashMap<u64, Acq<'_>> = HashMap::new();
    for a in &acquired {
        if by_token.insert(a.token, *a).is_some() {
            v.push(format!("tokens: token {} handed out twice", a.token));
        }
        if let Some(m) = returned.max_before(a.ev.invoke) {
            if m >= a.token {
                v.push(format!(
                    "tokens: acquisition {:?} got token {} although token {m} was handed out before it started",
                    a.ev, a.token
                ));
            }
        }
    }

    // Acquisitions in the order their tokens say they happened.
    let mut chain = acquired.clone();
    chain.sort_by_key(|a| a.token);
    for pair in chain.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let b_now_max = b.ev.clock_ret;
        match ends.get(&a.token) {
            Some(End {
                ev: c,
                completed: true,
            }) => {
                if b_now_max < c.clock_invoke + p.ttl_ms {
                    v.push(format!(
                        "exclusive: token {} acquired at clock <= {b_now_max} while the response completed at clock >= {} under token {} still lived (ttl {})",
                        b.token, c.clock_invoke, a.token, p.ttl_ms
                    ));
                }
                if b.attempt != 1 {
                    v.push(format!(
                        "takeover: token {} took over (attempt {}) a record that was completed",
                        b.token, b.attempt
                    ));
                }
            }
            Some(End {
                completed: false, ..
            }) => {
                if b.attempt != 1 {
                    v.push(format!(
                        "takeover: token {} took over (attempt {}) a reservation that was released",
                        b.token, b.attempt
                    ));
                }
            }
            None => {
                if b_now_max < a.lease_until {
                    v.push(format!(
                        "exclusive: token {} acquired at clock <= {b_now_max} while token {}'s lease ran until {} and it never finished",
                        b.token, a.token, a.lease_until
                    ));
                }
                if b.attempt > 1 && (b.fingerprint != a.fingerprint || b.attempt != a.attempt + 1) {
                    v.push(format!(
                        "takeover: token {} (fingerprint {}, attempt {}) does not follow token {} (fingerprint {}, attempt {})",
                        b.token, b.fingerprint, b.attempt, a.token, a.fingerprint, a.attempt
                    ));
                }
            }
        }
    }
    for a in &acquired {
        if a.attempt > 1 {
            report.takeovers += 1;
        }
        match a.checkpoint {
            None => {}
            Some(_) if a.attempt == 1 => v.push(format!(
                "takeover: a fresh acquisition (token {}) was handed a checkpoint",
                a.token
            )),
            Some(c) => match checkpoints.get(&c) {
                Some((ce, ct)) if *ct < a.token && ce.invoke < a.ev.ret => {}
                _ => v.push(format!(
                    "takeover: token {} was handed checkpoint {c}, which no earlier holder stored",
                    a.token
                )),
            },
        }
    }
    if chain.first().is_some_and(|a| a.attempt != 1) {
        v.push(format!(
            "takeover: the first acquisition (token {}) claims attempt {}",
            chain[0].token, chain[0].attempt
        ));
    }

    let finished_before =
        |token: u64, instant: u64| ends.get(&token).is_some_and(|e| e.ev.ret < instant);
    // Acquisitions that may hold the record at some point during `e`: the
    // last one certainly before it, and every one overlapping it.
    let candidates = |e: &Event| -> Vec<Acq<'_>> {
        let last = returned.max_before(e.invoke);
        acquired
            .iter()
            .filter(|a| {
                Some(a.token) == last
                    || (a.ev.invoke < e.ret
                        && a.ev.ret > e.invoke
                        && last.is_none_or(|m| a.token > m))
            })
            .copied()
            .collect()
    };

    for &e in evs {
        match &e.op {
            Op::Reserve {
                fingerprint,
                result,
            } => match result {
                Reserved::Acquired { .. } => {}
                Reserved::Failed(why) => v.push(format!("reserve failed: {why} in {e:?}")),
                Reserved::Replay { response } => {
                    report.replays += 1;
                    check_replay(
                        e,
                        *fingerprint,
                        *response,
                        &completes,
                        &by_token,
                        &returned,
                        p,
                        &mut v,
                    );
                }
                Reserved::Conflict => {
                    report.conflicts += 1;
                    let ok = candidates(e).iter().any(|a| {
                        a.fingerprint != *fingerprint
                            && !(ends
                                .get(&a.token)
                                .is_some_and(|x| !x.completed && x.ev.ret < e.invoke))
                    });
                    if !ok {
                        v.push(format!(
                            "conflict: {e:?} answered Conflict but no record with another fingerprint could be current"
                        ));
                    }
                }
                Reserved::InProgress => {
                    let ok = candidates(e).iter().any(|a| {
                        a.fingerprint == *fingerprint && !finished_before(a.token, e.invoke)
                    });
                    if !ok {
                        v.push(format!(
                            "in_progress: {e:?} answered InProgress but no unfinished reservation of its fingerprint could be current"
                        ));
                    }
                }
            },
            Op::Complete { token, result, .. }
            | Op::Release { token, result }
            | Op::Extend { token, result }
            | Op::Checkpoint { token, result, .. } => match result {
                Done::Failed(why) => v.push(format!("operation failed: {why} in {e:?}")),
                Done::LeaseLost => report.stale_rejected += 1,
                Done::Ok => {
                    if !by_token.contains_key(token) {
                        v.push(format!(
                            "fencing: {e:?} succeeded with a token never handed out"
                        ));
                    }
                    if let Some(m) = returned.max_before(e.invoke) {
                        if m > *token {
                            v.push(format!(
                                "fencing: {e:?} succeeded with token {token} after token {m} was handed out"
                            ));
                        }
                    }
                    if let Some(end) = ends.get(token) {
                        if !std::ptr::eq(end.ev, e) && end.ev.ret < e.invoke {
                            v.push(format!(
                                "fencing: {e:?} succeeded after token {token}'s reservation was already finished by {:?}",
                                end.ev
                            ));
                        }
                    }
                }
            },
            Op::Lookup { result } => match result {
                Looked::Absent => {}
                Looked::Failed(why) => v.push(format!("lookup failed: {why}")),
                Looked::InFlight { token, fingerprint } => {
                    match by_token.get(token) {
                        Some(a) if a.ev.invoke < e.ret && a.fingerprint == *fingerprint => {}
                        _ => v.push(format!(
                            "lookup: {e:?} shows a token or fingerprint no acquisition had"
                        )),
                    }
                    if returned.max_before(e.invoke).is_some_and(|m| m > *token) {
                        v.push(format!("lookup: {e:?} shows a superseded token"));
                    }
                    if finished_before(*token, e.invoke) {
                        v.push(format!(
                            "lookup: {e:?} shows in flight a reservation already finished"
                        ));
                    }
                }
                Looked::Completed {
                    token,
                    fingerprint,
                    response,
                } => {
                    check_replay(
                        e,
                        *fingerprint,
                        *response,
                        &completes,
                        &by_token,
                        &returned,
                        p,
                        &mut v,
                    );
                    if completes.get(response).is_some_and(
                        |c| !matches!(&c.op, Op::Complete { token: t, .. } if t == token),
                    ) {
                        v.push(format!(
                            "lookup: {e:?} shows the response under another token"
                        ));
                    }
                }
            },
        }
    }
    for msg in v {
        report.violations.push(format!("identity {id}: {msg}"));
    }
}

fn record_end<'a>(
    ends: &mut HashMap<u64, End<'a>>,
    token: u64,
    e: &'a Event,
    completed: bool,
    v: &mut Vec<String>,
) {
    if let Some(prev) = ends.insert(token, End { ev: e, completed }) {
        v.push(format!(
            "fencing: token {token} finished twice: {:?} and {e:?}",
            prev.ev
        ));
    }
}

/// A replayed (or looked-up) response must be the bytes of one successful
/// `complete` of this identity, of the same fingerprint, invoked before `e`
/// returned, not expired when `e` started and not superseded by a newer
/// acquisition.
#[allow(clippy::too_many_arguments)]
fn check_replay(
    e: &Event,
    fingerprint: u8,
    response: u64,
    completes: &HashMap<u64, &Event>,
    by_token: &HashMap<u64, Acq<'_>>,
    returned: &Returned,
    p: Params,
    v: &mut Vec<String>,
) {
    let Some(c) = completes.get(&response) else {
        v.push(format!(
            "replay: {e:?} returned bytes that no complete of this identity stored"
        ));
        return;
    };
    let Op::Complete { token, result, .. } = &c.op else {
        return;
    };
    if *result != Done::Ok {
        v.push(format!(
            "replay: {e:?} returned the response of a complete that failed: {c:?}"
        ));
    }
    if c.invoke >= e.ret {
        v.push(format!(
            "replay: {e:?} returned a response before its complete was invoked: {c:?}"
        ));
    }
    if by_token
        .get(token)
        .is_none_or(|a| a.fingerprint != fingerprint)
    {
        v.push(format!(
            "replay: {e:?} returned the response of another fingerprint's request"
        ));
    }
    if e.clock_invoke >= c.clock_ret + p.ttl_ms {
        v.push(format!(
            "replay: {e:?} returned a response expired since clock {}",
            c.clock_ret + p.ttl_ms
        ));
    }
    if returned.max_before(e.invoke).is_some_and(|m| m > *token) {
        v.push(format!(
            "replay: {e:?} returned a response replaced by a newer acquisition"
        ));
    }
}
