//! The layer: where the settings live and how a service is wrapped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{request, Method, Response};
use tower_layer::Layer;

use super::policy::StoragePolicy;
use super::problem::Problem;
use super::service::IdempotencyService;
use super::wait::Waiters;
use crate::backend::Backend;
use crate::identity::RoutePlacement;
use crate::store::ReserveOptions;

/// The header the layer reads by default.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The default `type` URI prefix of the layer's problem documents. These URNs
/// are stable names, not links; point [`IdempotencyLayer::problem_type_base`]
/// at your API's documentation to make them links.
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:idemlog:problem:";

/// What a scope extractor answers instead of a scope: the response the
/// client gets, typically a 401 built from a [`Problem`].
///
/// ```
/// use idemlog::http::{Problem, ScopeRejection};
/// use http::StatusCode;
///
/// let rejection: ScopeRejection = Problem::new(StatusCode::UNAUTHORIZED, "Bearer token required").into();
/// assert_eq!(rejection.into_response().status(), StatusCode::UNAUTHORIZED);
/// ```
#[derive(Debug)]
pub struct ScopeRejection(Box<Response<Bytes>>);

impl ScopeRejection {
    /// The response to answer.
    pub fn into_response(self) -> Response<Bytes> {
        *self.0
    }
}

impl From<Response<Bytes>> for ScopeRejection {
    fn from(response: Response<Bytes>) -> Self {
        ScopeRejection(Box::new(response))
    }
}

impl From<Problem> for ScopeRejection {
    fn from(problem: Problem) -> Self {
        problem.into_response().into()
    }
}

pub(crate) type ScopeFn =
    Arc<dyn Fn(&request::Parts) -> Result<Vec<u8>, ScopeRejection> + Send + Sync>;
pub(crate) type SkipFn = Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>;

/// A request extension that makes the layer pass the request through
/// untouched; an inner middleware or route-specific layer can insert it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipIdempotency;

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) header: HeaderName,
    /// The header's name as shown in problem details.
    pub(crate) header_label: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) accept_unquoted: bool,
    pub(crate) placement: RoutePlacement,
    pub(crate) body_limit: usize,
    pub(crate) json_fingerprint: bool,
    pub(crate) policy: StoragePolicy,
    pub(crate) problem_type_base: String,
    pub(crate) skip: Option<SkipFn>,
    /// Longest wait for an in-flight duplicate; `None` answers 409 at once.
    pub(crate) wait: Option<Duration>,
    pub(crate) wait_poll: Duration,
    pub(crate) reserve: ReserveOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header: IDEMPOTENCY_KEY,
            header_label: "Idempotency-Key".to_owned(),
            methods: vec![Method::POST, Method::PATCH],
            require_key: true,
            accept_unquoted: false,
            placement: RoutePlacement::Fingerprint,
            body_limit: 1 << 20,
            json_fingerprint: true,
            policy: StoragePolicy::default(),
            problem_type_base: DEFAULT_PROBLEM_TYPE_BASE.to_owned(),
            skip: None,
            wait: None,
            wait_poll: Duration::from_millis(100),
            reserve: ReserveOptions::default(),
        }
    }
}

/// A tower [`Layer`] that makes the wrapped service idempotent per
/// draft-ietf-httpapi-idempotency-key-header-07, on any [`Backend`].
///
/// Build it with the store and a scope extractor (whose records a request
/// may see: a tenant, an account, an API key id), then tune it with the
/// builder methods. See the [module docs](super) for the behaviour.
pub struct IdempotencyLayer<B> {
    backend: Arc<B>,
    scope: ScopeFn,
    settings: Arc<Settings>,
    waiters: Arc<Waiters>,
}

impl<B> Clone for IdempotencyLayer<B> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            backend: Arc::clone(&self.backend),
            scope: Arc::clone(&self.scope),
            settings: Arc::clone(&self.settings),
            waiters: Arc::clone(&self.waiters),
        }
    }
}

impl<B> fmt::Debug for IdempotencyLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("IdempotencyLayer")
            .field("header", &s.header)
            .field("methods", &s.methods)
            .field("require_key", &s.require_key)
            .field("placement", &s.placement)
            .field("body_limit", &s.body_limit)
            .field("policy", &s.policy)
            .field("wait", &s.wait)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> IdempotencyLayer<B> {
    /// A layer over `backend` whose records are scoped by `scope`.
    ///
    /// `scope` sees the request head (headers, URI, extensions set by an
    /// authentication layer) and returns the scope bytes, or the response to
    /// answer instead, such as a 401. Records of two scopes never meet, so
    /// derive the scope from who the caller is, never from what it claims.
    pub fn new<F, S>(backend: impl Into<Arc<B>>, scope: F) -> Self
    where
        F: Fn(&request::Parts) -> Result<S, ScopeRejection> + Send + Sync + 'static,
        S: Into<Vec<u8>>,
    {
        IdempotencyLayer {
            backend: backend.into(),
            scope: Arc::new(move |parts| scope(parts).map(Into::into)),
            settings: Arc::new(Settings::default()),
            waiters: Arc::new(Waiters::default()),
        }
    }

    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// Reads the key from this header instead of `Idempotency-Key`.
    pub fn header_name(mut self, name: HeaderName) -> Self {
        let settings = self.settings();
        settings.header_label = name.as_str().to_owned();
        settings.header = name;
        self
    }

    /// The methods the layer covers (default POST and PATCH); requests with
    /// other methods pass through untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings().methods = methods.into_iter().collect();
        self
    }

    /// Whether a covered request without a key is refused with 400 (default
    /// `true`) or passed through without idempotency.
    pub fn require_key(mut self, require: bool) -> Self {
        self.settings().require_key = require;
        self
    }

    /// Also accept a bare, unquoted key (`Idempotency-Key: abc-123`, as many
    /// existing clients send it) besides the draft's sf-string
    /// (`Idempotency-Key: "abc-123"`). Default `false`: strict.
    pub fn accept_unquoted_keys(mut self, accept: bool) -> Self {
        self.settings().accept_unquoted = accept;
        self
    }

    /// Where the route (method, path and query) counts: in the fingerprint
    /// (default; the same key on another route is a 422) or in the scope (the
    /// same key on another route is another record).
    pub fn route_placement(mut self, placement: RoutePlacement) -> Self {
        self.settings().placement = placement;
        self
    }

    /// Largest request body buffered and fingerprinted (default 1 MiB);
    /// larger bodies get a 413 problem.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.settings().body_limit = bytes;
        self
    }

    /// Fingerprint bodies whose content type is JSON (`application/json`,
    /// `application/*+json`) in RFC 8785 canonical form, so key order,
    /// whitespace and number spelling do not cause false conflicts (default
    /// `true`). A JSON-typed body that is not valid JSON is fingerprinted as
    /// raw bytes and handed to the handler, which rejects it as it would
    /// without the layer.
    pub fn json_fingerprint(mut self, canonical: bool) -> Self {
        self.settings().json_fingerprint = canonical;
        self
    }

    /// Which responses are stored (default [`StoragePolicy::new`]).
    pub fn storage_policy(mut self, policy: StoragePolicy) -> Self {
        self.settings().policy = policy;
        self
    }

    /// Prefix of the problem documents' `type` URIs, such as
    /// `https://api.example.com/docs/problems#`; each case appends its
    /// [slug](super::ProblemKind::slug).
    pub fn problem_type_base(mut self, base: impl Into<String>) -> Self {
        self.settings().problem_type_base = base.into();
        self
    }

    /// Passes requests for which `skip` returns true through untouched (an
    /// opt-out by path, header or extension; with axum, the extension
    /// `axum::extract::MatchedPath` names the route).
    pub fn skip_if(
        mut self,
        skip: impl Fn(&request::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings().skip = Some(Arc::new(skip));
        self
    }

    /// A duplicate that finds its key in flight waits up to `max` for the
    /// first request to finish and gets its replay, instead of a 409. The
    /// first request's end in this process wakes it at once; an owner in
    /// another process is noticed by polling every 100 ms (see
    /// [`wait_poll_interval`](Self::wait_poll_interval)). Default: no wait.
    pub fn wait_for_in_flight(mut self, max: Duration) -> Self {
        self.settings().wait = (!max.is_zero()).then_some(max);
        self
    }

    /// How often a waiting duplicate asks the store again (default 100 ms).
    pub fn wait_poll_interval(mut self, every: Duration) -> Self {
        self.settings().wait_poll = every.max(Duration::from_millis(1));
        self
    }

    /// Lease of each reservation instead of the store's default. While a
    /// handler runs the layer extends its lease every third of this, so a
    /// short lease does not let a retry take over a slow handler; it bounds
    /// how long a retry waits after this process dies mid-request.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings().reserve.lease = Some(lease);
        self
    }

    /// How long stored responses replay, instead of the store's default TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings().reserve.ttl = Some(ttl);
        self
    }
}

impl<S, B> Layer<S> for IdempotencyLayer<B> {
    type Service = IdempotencyService<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(
            inner,
            Arc::clone(&self.backend),
            Arc::clone(&self.scope),
            Arc::clone(&self.settings),
            Arc::clone(&self.waiters),
        )
    }
}
