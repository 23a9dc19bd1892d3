//! Redis / Valkey: one shared store for a fleet of servers (feature `redis`).
//!
//! Every operation is **one Lua script**, run atomically by the server, that
//! mirrors [`crate::decision`] rule by rule. The scripts are loaded once at
//! connect and called by SHA (`EVALSHA`); a server that forgot them
//! (`NOSCRIPT`, after a restart or `SCRIPT FLUSH`) gets them again on the
//! next call.
//!
//! * **Time** comes from the server (`TIME` inside the script), so clock
//!   skew between application servers cannot shorten or stretch a lease.
//!   Timestamps in leases and records are the server's milliseconds.
//! * **One key per identity**: `<namespace>:{<hash>}` is a hash with the
//!   record's fields, the full identity among them. The hash is blake3 over
//!   the length-prefixed scope and key; the script compares the stored
//!   identity with the requested one, so a collision is an error and never
//!   another identity's record. Beside it, `<namespace>:{<hash>}:t` keeps the
//!   identity's highest fencing token; the braces are a hash tag, so both
//!   keys live in one slot and the scripts run on Redis Cluster.
//! * **Expiry** is the server's own: every write sets `PEXPIREAT` to the
//!   record's `expires_at`, and the scripts also treat a record as absent
//!   from exactly that millisecond, as the embedded engines do.
//! * **Fencing tokens** are `max(server time in µs, highest token + 1)`: they
//!   rise strictly per identity, across release and expiry too, while the
//!   token key lives (as long as the identity's last record); after that
//!   they rest on the server's clock not stepping back. They stay below
//!   2^53, exact in Lua's numbers, for two centuries.
//! * **Limits** are checked here, before anything is sent.
//!
//! Needs Redis 6.2+ (for `SET .. PXAT`) or Valkey. The store's
//! [`Config::clock`](crate::Config::clock) is not used: the server's clock is.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Script, Value};
use bytes::Bytes;

use crate::backend::Backend;
use crate::clock::{duration_millis, Timestamp};
use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, FingerprintAlgorithm, StoredFingerprint};
use crate::identity::IdempotencyKey;
use crate::record::{Record, RecordState};
use crate::store::{Lease, Outcome, Replay, ReserveOptions};

const BACKEND: &str = "redis";

/// Leases and TTLs are capped at this many milliseconds (about 31,000
/// years) so that `now + lease + ttl` stays exact in Lua's doubles.
const MAX_DURATION_MS: u64 = 1_000_000_000_000_000;
// A server's now in ms (until year 2200) + lease + ttl stays below 2^53.
const _: () = assert!(7_300_000_000_000 + 2 * MAX_DURATION_MS < 1 << 53);

/// Connection settings of a [`RedisBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key idemlog writes (default `"idemlog"`). Servers that
    /// share records must use the same namespace; it must not contain `{`
    /// or `}`, which would break the Cluster hash tag.
    pub namespace: String,
    /// Longest wait for a connection to the server (default 5 s).
    pub connect_timeout: Duration,
    /// Longest wait for the answer to one operation (default 5 s).
    pub response_timeout: Duration,
    /// How often a lost connection is retried, with exponential backoff,
    /// before operations fail (default 3).
    pub reconnect_retries: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            namespace: "idemlog".to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            reconnect_retries: 3,
        }
    }
}

impl RedisOptions {
    /// Sets the key prefix.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets the per-operation timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
    /// Sets the number of reconnect attempts.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }
}

/// A [`Backend`] on a Redis or Valkey server shared by many application
/// servers. Cheap to clone: clones share one multiplexed, reconnecting
/// connection.
///
/// ```no_run
/// # async fn run() -> idemlog::Result<()> {
/// use idemlog::backend::redis::RedisBackend;
/// use idemlog::{Backend, Config, Fingerprint, IdempotencyKey, Outcome, ReserveOptions};
///
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379", Config::default()).await?;
/// let key = IdempotencyKey::new("tenant-1", "order-7f3a")?;
/// let fp = Fingerprint::of_json(br#"{"amount": 1200}"#)?;
/// match backend.reserve(&key, &fp, ReserveOptions::default()).await? {
///     Outcome::Acquired(lease) => backend.complete(&lease, "201 created".into()).await?,
///     Outcome::Replay(replay) => println!("replay {:?}", replay.response),
///     other => println!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    scripts: &'static Scripts,
    namespace: String,
    config: Config,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server at `url` (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` with TLS when the `redis` crate is built with it), with
    /// default [`RedisOptions`]. `config` gives the default lease and TTL
    /// and the limits.
    pub async fn connect(url: &str, config: Config) -> Result<Self> {
        Self::connect_with(url, config, RedisOptions::default()).await
    }

    /// Connects with explicit options, and loads the scripts so that a
    /// server that cannot run them fails here rather than on the first
    /// request.
    pub async fn connect_with(url: &str, config: Config, options: RedisOptions) -> Result<Self> {
        if options.namespace.contains(['{', '}']) {
            return Err(backend_error(
                format!(
                    "the namespace {:?} contains a brace, which would break the Redis Cluster hash tag: choose one without '{{' and '}}'",
                    options.namespace
                ),
                None,
            ));
        }
        let client = ::redis::Client::open(url).map_err(|e| {
            backend_error(
                format!("{url:?} is not a valid Redis URL ({e}): use redis://host:port/db"),
                Some(e),
            )
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_retries)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| map_error("connecting", e))?;
        let scripts = scripts();
        for script in scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| map_error("loading the idemlog scripts", e))?;
        }
        Ok(RedisBackend {
            conn,
            scripts,
            namespace: options.namespace,
            config,
        })
    }

    /// The server's current time: the clock that leases and TTLs run on.
    pub async fn server_time(&self) -> Result<Timestamp> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_error("reading the server's time", e))?;
        Ok(Timestamp::from_millis(
            secs.saturating_mul(1000).saturating_add(micros / 1000),
        ))
    }

    /// The Redis key that holds the record of `key`, for operators looking
    /// at the server (`HGETALL`, `PTTL`). Its fencing-token key is the same
    /// name followed by `:t`.
    pub fn redis_key(&self, key: &IdempotencyKey) -> String {
        self.keys(key).0
    }

    /// The record key and the token key of `key`.
    fn keys(&self, key: &IdempotencyKey) -> (String, String) {
        let hash = key.digest("idemlog 2026-11 redis identity key").to_hex();
        let record = format!("{}:{{{}}}", self.namespace, hash);
        let token = format!("{record}:t");
        (record, token)
    }

    async fn run(&self, script: &Script, key: &IdempotencyKey, args: &[&[u8]]) -> Result<Value> {
        let (record_key, token_key) = self.keys(key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(record_key)
            .key(token_key)
            .arg(key.scope())
            .arg(key.key().as_bytes());
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_error("running the idemlog script", e))
    }

    async fn held(&self, script: &Script, lease: &Lease, args: &[&[u8]]) -> Result<Vec<Value>> {
        lease.key.check(&self.config.limits)?;
        let token = lease.token.to_string();
        let mut all: Vec<&[u8]> = vec![token.as_bytes()];
        all.extend_from_slice(args);
        let reply = array(self.run(script, &lease.key, &all).await?)?;
        match tag(&reply)? {
            b"K" => Ok(reply),
            b"L" => {
                let current = int(field(&reply, 1)?)?;
                Err(Error::LeaseLost {
                    held: lease.token,
                    current: u64::try_from(current).ok(),
                })
            }
            other => Err(unexpected(format!("operation tag {:?}", lossy(other)))),
        }
    }
}

impl Backend for RedisBackend {
    async fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Result<Outcome<Lease>> {
        key.check(&self.config.limits)?;
        let lease_for = options.lease.unwrap_or(self.config.lease);
        let ttl = options.ttl.unwrap_or(self.config.ttl);
        let alg = fingerprint.algorithm().id().to_string();
        let (fallback_alg, fallback_digest) = match fingerprint.fallback() {
            Some(f) => (f.algorithm().id().to_string(), f.digest().to_vec()),
            None => (String::new(), Vec::new()),
        };
        let lease_ms = millis(lease_for).to_string();
        let ttl_ms = millis(ttl).to_string();
        let reply = array(
            self.run(
                &self.scripts.reserve,
                key,
                &[
                    alg.as_bytes(),
                    fingerprint.digest(),
                    fallback_alg.as_bytes(),
                    &fallback_digest,
                    lease_ms.as_bytes(),
                    ttl_ms.as_bytes(),
                ],
            )
            .await?,
        )?;
        match tag(&reply)? {
            b"A" => {
                let checkpoint = match int(field(&reply, 4)?)? {
                    0 => None,
                    _ => Some(bytes(field(&reply, 5)?)?),
                };
                Ok(Outcome::Acquired(Lease::new(
                    key.clone(),
                    uint(field(&reply, 1)?)?,
                    attempts(field(&reply, 2)?)?,
                    timestamp(field(&reply, 3)?)?,
                    ttl,
                    checkpoint,
                )))
            }
            b"R" => Ok(Outcome::Replay(Replay {
                response: bytes(field(&reply, 1)?)?,
                completed_at: timestamp(field(&reply, 2)?)?,
                expires_at: timestamp(field(&reply, 3)?)?,
                attempts: attempts(field(&reply, 4)?)?,
            })),
            b"P" => Ok(Outcome::InProgress {
                retry_after: Duration::from_millis(uint(field(&reply, 1)?)?),
                attempt: attempts(field(&reply, 2)?)?,
            }),
            b"C" => Ok(Outcome::Conflict {
                in_flight: int(field(&reply, 1)?)? != 0,
            }),
            other => Err(unexpected(format!("reserve tag {:?}", lossy(other)))),
        }
    }

    async fn complete(&self, lease: &Lease, response: Bytes) -> Result<()> {
        let limit = self.config.limits.max_response_len;
        if response.len() > limit {
            return Err(Error::ResponseTooLarge {
                len: response.len(),
                limit,
            });
        }
        let ttl_ms = millis(lease.ttl).to_string();
        self.held(
            &self.scripts.complete,
            lease,
            &[&response, ttl_ms.as_bytes()],
        )
        .await
        .map(drop)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.held(&self.scripts.release, lease, &[]).await.map(drop)
    }

    async fn extend(&self, lease: &mut Lease, lease_for: Duration) -> Result<()> {
        let lease_ms = millis(lease_for).to_string();
        let ttl_ms = millis(lease.ttl).to_string();
        let reply = self
            .held(
                &self.scripts.extend,
                lease,
                &[lease_ms.as_bytes(), ttl_ms.as_bytes()],
            )
            .await?;
        lease.lease_until = timestamp(field(&reply, 1)?)?;
        Ok(())
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Bytes) -> Result<()> {
        let limit = self.config.limits.max_checkpoint_len;
        if checkpoint.len() > limit {
            return Err(Error::CheckpointTooLarge {
                len: checkpoint.len(),
                limit,
            });
        }
        self.held(&self.scripts.checkpoint, lease, &[&checkpoint])
            .await
            .map(drop)
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<Record>> {
        key.check(&self.config.limits)?;
        match self.run(&self.scripts.lookup, key, &[]).await? {
            Value::Nil => Ok(None),
            reply => decode_record(key, &array(reply)?).map(Some),
        }
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    fn default_lease(&self) -> Duration {
        self.config.lease
    }
}

/// The fields of a lookup reply, in the script's order.
fn decode_record(key: &IdempotencyKey, v: &[Value]) -> Result<Record> {
    // 0 alg, 1 digest, 2 state, 3 lease_until, 4 created_at, 5 expires_at,
    // 6 token, 7 attempts, 8 replays, 9 checkpoint, 10 completed_at, 11 response
    let alg_id = uint(field(v, 0)?)?;
    let algorithm = u8::try_from(alg_id)
        .ok()
        .and_then(FingerprintAlgorithm::from_id)
        .ok_or_else(|| {
            backend_error(
                format!("a record was stored with fingerprint algorithm {alg_id}, unknown to this build: upgrade idemlog on this server"),
                None,
            )
        })?;
    let digest: [u8; 32] = bytes(field(v, 1)?)?
        .as_ref()
        .try_into()
        .map_err(|_| unexpected("a fingerprint digest that is not 32 bytes".into()))?;
    let state = match bytes(field(v, 2)?)?.as_ref() {
        b"f" => RecordState::InFlight {
            lease_until: timestamp(field(v, 3)?)?,
        },
        b"c" => RecordState::Completed {
            completed_at: timestamp(field(v, 10)?)?,
            response: bytes(field(v, 11)?)?,
        },
        other => return Err(unexpected(format!("record state {:?}", lossy(other)))),
    };
    let checkpoint = match field(v, 9)? {
        Value::Nil => None,
        cp => Some(bytes(cp)?),
    };
    Ok(Record {
        key: key.clone(),
        fingerprint: StoredFingerprint::from_parts(algorithm, digest),
        state,
        created_at: timestamp(field(v, 4)?)?,
        expires_at: timestamp(field(v, 5)?)?,
        token: uint(field(v, 6)?)?,
        attempts: attempts(field(v, 7)?)?,
        replays: uint(field(v, 8)?)?,
        checkpoint: checkpoint.map(Box::new),
    })
}

fn millis(d: Duration) -> u64 {
    duration_millis(d).min(MAX_DURATION_MS)
}

fn backend_error(message: String, source: Option<RedisError>) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
        source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    }
}

/// Sorts a client error into what the operator has to do about it.
fn map_error(doing: &str, e: RedisError) -> Error {
    let message = if e.is_timeout() {
        format!("{doing}: the server did not answer in time ({e}); check its load and the network, or raise RedisOptions::response_timeout")
    } else if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
        format!("{doing}: cannot reach the Redis server ({e}); check that it runs and that the URL is right — operations fail until it is back")
    } else if e.code() == Some("IDEMLOG_COLLISION") {
        format!("{doing}: two identities hash to the same Redis key ({e}); this is never expected from blake3 — report it, and use another namespace meanwhile")
    } else if e.kind() == ::redis::ErrorKind::AuthenticationFailed {
        format!("{doing}: the server refused the credentials ({e}); check the user and password in the URL")
    } else if e.code().is_some() {
        format!("{doing}: the server answered with an error ({e}); the server must be Redis 6.2+ or Valkey with Lua scripting enabled, and keys under the namespace must be written only by idemlog")
    } else {
        format!("{doing}: {e}")
    };
    backend_error(message, Some(e))
}

fn unexpected(what: String) -> Error {
    backend_error(
        format!("the idemlog script answered with an unexpected {what}: keys under the namespace must be written only by this version of idemlog"),
        None,
    )
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(format!("reply {other:?}"))),
    }
}

fn field(v: &[Value], i: usize) -> Result<&Value> {
    v.get(i)
        .ok_or_else(|| unexpected(format!("reply with {} fields", v.len())))
}

fn tag(v: &[Value]) -> Result<&[u8]> {
    match field(v, 0)? {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(unexpected(format!("tag {other:?}"))),
    }
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(format!("number {:?}", lossy(b)))),
        other => Err(unexpected(format!("number {other:?}"))),
    }
}

fn uint(v: &Value) -> Result<u64> {
    let n = int(v)?;
    u64::try_from(n).map_err(|_| unexpected(format!("negative number {n}")))
}

fn attempts(v: &Value) -> Result<u32> {
    let n = uint(v)?;
    u32::try_from(n).map_err(|_| unexpected(format!("attempt count {n}")))
}

fn timestamp(v: &Value) -> Result<Timestamp> {
    uint(v).map(Timestamp::from_millis)
}

fn bytes(v: &Value) -> Result<Bytes> {
    match v {
        Value::BulkString(b) => Ok(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        other => Err(unexpected(format!("byte string {other:?}"))),
    }
}

/// The scripts, built once per process.
struct Scripts {
    reserve: Script,
    complete: Script,
    release: Script,
    extend: Script,
    checkpoint: Script,
    lookup: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 6] {
        [
            &self.reserve,
            &self.complete,
            &self.release,
            &self.extend,
            &self.checkpoint,
            &self.lookup,
        ]
    }
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            reserve: with_prelude(RESERVE),
            complete: with_prelude(COMPLETE),
            release: with_prelude(RELEASE),
            extend: with_prelude(EXTEND),
            checkpoint: with_prelude(CHECKPOINT),
            lookup: with_prelude(LOOKUP),
        }
    })
}

// The scripts. KEYS[1] is the record (a hash), KEYS[2] the identity's
// highest fencing token; ARGV[1] and ARGV[2] the scope and key. Record
// fields: s scope, k key, fa/fd fingerprint algorithm id and digest, st
// state ('f' in flight, 'c' completed), lu lease_until, ca created_at, ea
// expires_at, tk token, at attempts, rp replays, cp checkpoint, co
// completed_at, rs response. Numbers are written with '%.0f': Lua's default
// formatting would round 16-digit tokens.
const PRELUDE: &str = r#"
local now, now_us
do
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  now = math.floor(now_us / 1000)
end

local function num(n) return string.format('%.0f', n) end

-- The record of KEYS[1], or nil; `true` as second value when the key holds
-- another identity (a hash collision: never hand out its record).
local function load()
  local v = redis.call('HMGET', KEYS[1], 's', 'k', 'fa', 'fd', 'st', 'lu', 'ca',
                       'ea', 'tk', 'at', 'rp', 'cp', 'co')
  if not v[1] then return nil, false end
  if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return nil, true end
  return { fa = v[3], fd = v[4], st = v[5], lu = tonumber(v[6]),
           ca = tonumber(v[7]), ea = tonumber(v[8]), tk = v[9],
           at = tonumber(v[10]), cp = v[12], co = tonumber(v[13]) }, false
end

local function collision()
  return redis.error_reply('IDEMLOG_COLLISION the key ' .. KEYS[1] ..
                           ' holds the record of another identity')
end

-- Keeps the token key at least until `t`, so tokens keep rising for as
-- long as any record of the identity can exist.
local function keep_tokens_until(t)
  local pttl = redis.call('PTTL', KEYS[2])
  if pttl >= 0 and now + pttl < t then
    redis.call('PEXPIREAT', KEYS[2], num(t))
  end
end

-- decision::authorize: only the current token of an in-flight record
-- may change it. Returns the record, or the LeaseLost reply.
local function held()
  local rec, clash = load()
  if clash then return nil, collision() end
  if not rec then return nil, { 'L', -1 } end
  if rec.tk ~= ARGV[3] or rec.st ~= 'f' then return nil, { 'L', tonumber(rec.tk) } end
  return rec, nil
end
"#;

/// ARGV[3..8]: algorithm id, digest, fallback algorithm id ('' for none),
/// fallback digest, lease ms, TTL ms.
const RESERVE: &str = r#"
local lease, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local found, clash = load()
if clash then return collision() end

-- Fingerprint::matches: same algorithm and digest, or the request's
-- fallback digest under the record's algorithm.
local function same(r)
  return (r.fa == ARGV[3] and r.fd == ARGV[4])
      or (ARGV[5] ~= '' and r.fa == ARGV[5] and r.fd == ARGV[6])
end

-- decision::acquired_record: a new in-flight record; on takeover the
-- attempt count rises and the checkpoint and creation time carry over.
local function acquire(prev)
  local lu = now + lease
  local ea = lu + ttl
  local highest = tonumber(redis.call('GET', KEYS[2]) or '0')
  local token = math.max(now_us, highest + 1)
  if found then token = math.max(token, tonumber(found.tk) + 1) end
  local attempts, created, cp = 1, now, false
  if prev then
    attempts, created, cp = math.min(prev.at + 1, 4294967295), prev.ca, prev.cp
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'k', ARGV[2], 'fa', ARGV[3], 'fd', ARGV[4],
             'st', 'f', 'lu', num(lu), 'ca', num(created), 'ea', num(ea),
             'tk', num(token), 'at', num(attempts), 'rp', '0')
  if cp then redis.call('HSET', KEYS[1], 'cp', cp) end
  redis.call('PEXPIREAT', KEYS[1], num(ea))
  redis.call('SET', KEYS[2], num(token), 'PXAT', num(math.max(ea, now + 1)))
  if cp then return { 'A', token, attempts, lu, 1, cp } end
  return { 'A', token, attempts, lu, 0, '' }
end

local rec = found
-- Table row 1: an expired record counts as absent.
if rec and now >= rec.ea then rec = nil end
-- Row 1: none (or expired) → Acquired.
if not rec then return acquire(nil) end
if rec.st == 'f' then
  -- Row 2: in flight, different fingerprint → Conflict, whatever the lease.
  if not same(rec) then return { 'C', 1 } end
  -- Row 3: in flight, same fingerprint, lease running → InProgress.
  if now < rec.lu then return { 'P', rec.lu - now, rec.at } end
  -- Row 4: in flight, same fingerprint, lease over → Acquired (takeover).
  return acquire(rec)
end
-- Row 6: completed, same fingerprint, not expired → Replay.
if same(rec) then
  redis.call('HINCRBY', KEYS[1], 'rp', 1)
  return { 'R', redis.call('HGET', KEYS[1], 'rs'), rec.co, rec.ea, rec.at }
end
-- Row 5: completed, different fingerprint → Conflict.
return { 'C', 0 }
"#;

/// ARGV\[3\] token, ARGV\[4\] response, ARGV\[5\] TTL ms.
/// decision::completed_record: state completed, TTL from now, checkpoint
/// dropped.
const COMPLETE: &str = r#"
local rec, lost = held()
if not rec then return lost end
local ea = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'st', 'c', 'co', num(now), 'ea', num(ea), 'rs', ARGV[4])
redis.call('HDEL', KEYS[1], 'cp', 'lu')
redis.call('PEXPIREAT', KEYS[1], num(ea))
keep_tokens_until(ea)
return { 'K' }
"#;

/// ARGV\[3\] token. Deletes the in-flight record; the token key stays, so
/// the next holder's token is higher.
const RELEASE: &str = r#"
local rec, lost = held()
if not rec then return lost end
redis.call('DEL', KEYS[1])
return { 'K' }
"#;

/// ARGV\[3\] token, ARGV\[4\] lease ms, ARGV\[5\] TTL ms.
/// decision::extended_record: a new lease from now.
const EXTEND: &str = r#"
local rec, lost = held()
if not rec then return lost end
local lu = now + tonumber(ARGV[4])
local ea = lu + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'lu', num(lu), 'ea', num(ea))
redis.call('PEXPIREAT', KEYS[1], num(ea))
keep_tokens_until(ea)
return { 'K', lu }
"#;

/// ARGV\[3\] token, ARGV\[4\] checkpoint. decision::checkpointed_record.
const CHECKPOINT: &str = r#"
local rec, lost = held()
if not rec then return lost end
redis.call('HSET', KEYS[1], 'cp', ARGV[4])
return { 'K' }
"#;

/// The record unless absent or expired, in `decode_record`'s order.
const LOOKUP: &str = r#"
local rec, clash = load()
if clash then return collision() end
if not rec or now >= rec.ea then return false end
return redis.call('HMGET', KEYS[1], 'fa', 'fd', 'st', 'lu', 'ca', 'ea', 'tk', 'at',
                  'rp', 'cp', 'co', 'rs')
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_capped_to_stay_exact_in_lua() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::MAX), MAX_DURATION_MS);
    }

    #[test]
    fn every_script_mirrors_the_table_rows() {
        for row in 1..=6 {
            assert!(RESERVE.contains(&format!("Row {row}:")), "row {row}");
        }
    }
}
