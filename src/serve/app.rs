//! The HTTP API: `fn app(state) -> Router`.
//!
//! Every outcome maps to an explicit response; nothing internal leaks into a
//! body. `/recommend` never answers 5xx once a model is loaded: an unknown
//! user or a failing model gets the routed model's popularity list.
//!
//! One layer around every route and the fallback gives each answer its
//! `X-Request-Id` and replaces any response the framework made itself (a
//! rejection such as a path that is not UTF-8 once percent-decoded, or a
//! method not allowed) with our own plain-text message: nothing reaches a
//! client without passing through it.
//!
//! Every id is ours ([`super::request_id`]: it names the config and the
//! model that answered). A caller's `X-Request-Id` is never reused as the
//! answer's id: a reused id could name two answers, or none that this
//! server made, and would not say what answered. It comes back unchanged
//! as `X-Client-Request-Id` (when it is at most 128 visible ASCII bytes),
//! so a caller can still correlate; it is not logged.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use super::deploy::{Deployment, TOP_N};
use super::log::{LogEvent, RequestLog};
use super::metrics::Metrics;
use super::request_id::IdMint;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A caller's own `X-Request-Id`, echoed back.
pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// Longest caller id echoed back.
const MAX_CLIENT_ID: usize = 128;

/// What handlers share: the deployment (swapped whole on reload), the
/// outcome of the last config load, the metrics and the request log.
pub struct AppState {
    pub deployment: ArcSwapOption<Deployment>,
    pub reload: ArcSwap<ReloadStatus>,
    pub metrics: Arc<Metrics>,
    pub log: Option<RequestLog>,
    /// Makes every request id (the listener's own answers' too).
    pub ids: Arc<IdMint>,
}

/// The last attempt to load config.json, for `/health`: a failing reload
/// leaves the last good config serving, and this says so.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// The config file watched.
    pub config: std::path::PathBuf,
    pub ok: bool,
    pub at: SystemTime,
    /// Why the last attempt failed (one line, cut to 500 bytes).
    pub error: Option<String>,
    /// When a config was last loaded (at start, or a reload).
    pub last_good: SystemTime,
    /// Failed attempts in a row since then.
    pub failures: u64,
}

/// Longest error text `/health` shows.
const MAX_ERROR_SHOWN: usize = 500;

fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.len() <= MAX_ERROR_SHOWN {
        return flat;
    }
    let mut end = MAX_ERROR_SHOWN;
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &flat[..end])
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl AppState {
    pub fn new(
        deployment: Option<Deployment>,
        metrics: Arc<Metrics>,
        log: Option<RequestLog>,
    ) -> AppState {
        if let Some(d) = &deployment {
            metrics.models_loaded.set(d.models.len() as i64);
        }
        let now = SystemTime::now();
        let loaded = deployment.is_some();
        if loaded {
            metrics.reload(Ok(()), unix_seconds(now), false);
        }
        let ids = Arc::new(IdMint::new());
        if let Some(d) = &deployment {
            ids.deployed(&d.config_digest);
        }
        AppState {
            deployment: ArcSwapOption::from(deployment.map(Arc::new)),
            reload: ArcSwap::from_pointee(ReloadStatus {
                config: std::path::PathBuf::new(),
                ok: loaded,
                at: now,
                error: None,
                last_good: now,
                failures: 0,
            }),
            metrics,
            log,
            ids,
        }
    }

    /// Name the config file `/health` reports on.
    pub(crate) fn watching(&self, config: &std::path::Path) {
        let mut st = ReloadStatus::clone(&self.reload.load());
        st.config = config.to_path_buf();
        self.reload.store(Arc::new(st));
    }

    /// Record the outcome of a reload attempt (metrics and `/health`).
    pub(crate) fn record_reload(&self, outcome: Result<(), &super::deploy::DeployError>) {
        let now = SystemTime::now();
        let prev = self.reload.load_full();
        self.metrics
            .reload(outcome.map_err(|e| e.kind()), unix_seconds(now), true);
        let st = match outcome {
            Ok(()) => ReloadStatus {
                config: prev.config.clone(),
                ok: true,
                at: now,
                error: None,
                last_good: now,
                failures: 0,
            },
            Err(e) => ReloadStatus {
                config: prev.config.clone(),
                ok: false,
                at: now,
                error: Some(one_line(&e.to_string())),
                last_good: prev.last_good,
                failures: prev.failures + 1,
            },
        };
        self.reload.store(Arc::new(st));
    }

    /// Swap in a new deployment atomically: requests in flight finish on
    /// the one they started with.
    pub(crate) fn swap(&self, d: Deployment) {
        self.metrics.models_loaded.set(d.models.len() as i64);
        let digest = d.config_digest;
        self.deployment.store(Some(Arc::new(d)));
        self.ids.deployed(&digest);
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/recommend/{user}", get(recommend))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        // Last, so it wraps every route and both fallbacks.
        .layer(axum::middleware::from_fn_with_state(state, with_request_id))
}

/// The id of an answer a model made, put in the response's extensions by
/// the handler (it knows which model answered); [`with_request_id`] puts
/// it on the answer, and makes one for every other answer.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub uuid::Uuid);

/// Marks a response this module wrote; any other is the framework's own.
#[derive(Debug, Clone, Copy)]
struct Ours;

/// A response of ours: status, plain-text body, marked.
fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response {
    (status, Extension(Ours), text(body)).into_response()
}

/// The header form of a request id.
pub(crate) fn id_header(id: uuid::Uuid) -> HeaderValue {
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(&id.hyphenated().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Answer, and put our id on the answer, whatever produced it: the one
/// the handler made (naming the model that answered), else a new one
/// naming the config deployed now. The caller's `X-Request-Id` comes back
/// as `X-Client-Request-Id`. A response the framework made itself is
/// replaced by our own message.
async fn with_request_id(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let client = client_id(req.headers());
    let mut res = next.run(req).await;
    if res.extensions().get::<Ours>().is_none() {
        let allow = res.headers().get(header::ALLOW).cloned();
        res = framework_rejection(res.status());
        if let Some(a) = allow {
            res.headers_mut().insert(header::ALLOW, a);
        }
    }
    let id = match res.extensions().get::<RequestId>() {
        Some(RequestId(id)) => *id,
        None => st.ids.other(),
    };
    res.headers_mut().insert(REQUEST_ID, id_header(id));
    if let Some(c) = client {
        res.headers_mut().insert(CLIENT_REQUEST_ID, c);
    }
    res
}

/// Our message for a status the framework answered with.
fn framework_rejection(status: StatusCode) -> Response {
    let msg = match status {
        StatusCode::NOT_FOUND => NOT_FOUND.to_string(),
        StatusCode::METHOD_NOT_ALLOWED => METHOD_NOT_ALLOWED.to_string(),
        s if s.is_client_error() => format!(
            "bad request ({}): try GET /recommend/<userid>, /health or /metrics\n",
            s.as_u16()
        ),
        s => format!(
            "{} {}\n",
            s.as_u16(),
            s.canonical_reason().unwrap_or("error")
        ),
    };
    answer(status, msg)
}

const NOT_FOUND: &str = "not found: try GET /recommend/<userid>, /health or /metrics\n";
const METHOD_NOT_ALLOWED: &str = "method not allowed: only GET (and HEAD) are served: try GET /recommend/<userid>, /health or /metrics\n";

async fn method_not_allowed() -> Response {
    answer(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED)
}

/// Why an answer is not a recommendation; each maps to one status.
enum ApiError {
    BadUser(String),
    NoModel,
}

impl ApiError {
    fn response(self, metrics: &Metrics) -> Response {
        let (status, msg) = match self {
            ApiError::BadUser(reason) => (StatusCode::BAD_REQUEST, reason),
            ApiError::NoModel => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no model is loaded yet".to_string(),
            ),
        };
        metrics.rejected(status.as_u16());
        answer(status, format!("{msg}\n"))
    }
}

fn text(body: impl Into<Bytes>) -> ([(HeaderName, HeaderValue); 1], Bytes) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body.into(),
    )
}

/// The caller's `X-Request-Id`, to echo back: at most 128 bytes of
/// visible ASCII (anything else is dropped, not echoed).
fn client_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get(&REQUEST_ID)?;
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= MAX_CLIENT_ID && b.iter().all(|c| c.is_ascii_graphic()))
        .then(|| v.clone())
}

/// A user id: decimal digits only, at most i64::MAX (lineage.db's range).
pub(crate) fn parse_user(raw: &str) -> Result<u64, String> {
    let shown: String = raw.chars().take(40).collect();
    if raw.is_empty() {
        return Err("bad user id: empty (expected a non-negative integer)".into());
    }
    if let Some(rest) = raw.strip_prefix('-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "bad user id {shown:?}: negative (expected a non-negative integer)"
        ));
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "bad user id {shown:?}: not a number (expected a non-negative integer)"
        ));
    }
    match raw.parse::<u64>() {
        Ok(u) if u <= i64::MAX as u64 => Ok(u),
        _ => Err(format!(
            "bad user id {shown:?}: out of range (largest is {})",
            i64::MAX
        )),
    }
}

async fn recommend(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let start = Instant::now();
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(rejection) => {
            let reason = match rejection {
                PathRejection::FailedToDeserializePathParams(e)
                    if matches!(
                        e.kind(),
                        axum::extract::path::ErrorKind::InvalidUtf8InPathParam { .. }
                    ) =>
                {
                    "bad user id: not UTF-8 once percent-decoded (expected a non-negative integer)"
                }
                _ => "bad user id: unreadable path (expected /recommend/<non-negative integer>)",
            };
            return ApiError::BadUser(reason.into()).response(&st.metrics);
        }
    };
    let user = match parse_user(&raw) {
        Ok(u) => u,
        Err(reason) => return ApiError::BadUser(reason).response(&st.metrics),
    };
    let Some(dep) = st.deployment.load_full() else {
        return ApiError::NoModel.response(&st.metrics);
    };
    let attrs = dep.users.get(&user);
    // A checked config always routes; model 0 is the safe answer otherwise.
    let (mi, route) = match dep.router.route(user, attrs) {
        Some((m, r)) => (m, r.clone()),
        None => (0, Arc::from("unrouted")),
    };
    let Some(served) = dep.models.get(mi).cloned() else {
        return ApiError::NoModel.response(&st.metrics);
    };
    // Names the config (stored before it was deployed) and the model.
    let id = st.ids.answer(&dep.config_digest, mi);
    let known = u32::try_from(user)
        .ok()
        .filter(|u| served.model.knows_user(*u));
    let (status, body): (&'static str, Bytes) = match known {
        None => {
            served.counters.fallback_unknown_user.inc();
            ("fallback_unknown_user", served.cold_body(attrs))
        }
        Some(u) => {
            let model = &served.model;
            match std::panic::catch_unwind(AssertUnwindSafe(|| model.recommend(u, TOP_N, true))) {
                Ok(items) => ("ok", Bytes::from(served.body(&items))),
                Err(_) => {
                    served.counters.fallback_error.inc();
                    tracing::error!(
                        "{}: recommend({u}) failed; answered with the popularity list",
                        served.name
                    );
                    ("fallback_error", served.popular_body.clone())
                }
            }
        }
    };
    let elapsed = start.elapsed();
    served.counters.answered.inc();
    let exemplar = Some(super::metrics::RequestIdLabel {
        request_id: id.hyphenated().to_string(),
    });
    st.metrics
        .latency
        .observe(elapsed.as_secs_f64(), exemplar, None);
    if let Some(log) = &st.log {
        log.log(LogEvent {
            id,
            time_ms: super::warn::now_ms(),
            user,
            served: served.clone(),
            config: dep.config_hex.clone(),
            route,
            status,
            latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
            body: body.clone(),
        });
    }
    let mut res = answer(StatusCode::OK, body);
    res.extensions_mut().insert(RequestId(id));
    res
}

/// `ok` (or `stale` while config.json fails to load: the last good config
/// is served) and what serves, then `key: value` lines about the last
/// config load. 503 only when nothing is loaded at all.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    let r = st.reload.load_full();
    let at = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let mut details = format!(
        "config: {}\nlast_reload: {}\nlast_reload_at: {}\nlast_good_reload_at: {}\nfailed_attempts: {}\n",
        r.config.display(),
        if r.ok { "ok" } else { "failed" },
        at(r.at),
        at(r.last_good),
        r.failures
    );
    if let Some(e) = &r.error {
        details.push_str(&format!("last_reload_error: {e}\n"));
    }
    match st.deployment.load_full() {
        Some(d) => {
            let head = if r.ok {
                "ok".to_string()
            } else {
                format!(
                    "stale (config.json has failed to load {} time(s); the last good config is served)",
                    r.failures
                )
            };
            answer(
                StatusCode::OK,
                format!(
                    "{head}: config {} serving {}\n{details}",
                    d.config_digest.short(),
                    d.model_names().join(", ")
                ),
            )
        }
        None => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no model is loaded\n{details}"),
        ),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        Extension(Ours),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    answer(StatusCode::NOT_FOUND, NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::parse_user;

    #[test]
    fn user_ids() {
        assert_eq!(parse_user("42"), Ok(42));
        assert_eq!(parse_user("007"), Ok(7));
        assert!(parse_user("-3").unwrap_err().contains("negative"));
        assert!(parse_user("abc").unwrap_err().contains("not a number"));
        assert!(parse_user("1.5").unwrap_err().contains("not a number"));
        assert!(parse_user("+4").unwrap_err().contains("not a number"));
        assert!(
            parse_user("99999999999999999999")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_user("").is_err());
    }
}
