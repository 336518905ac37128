//! The HTTP API: `fn app(state) -> Router`.
//!
//! Every outcome maps to an explicit response; nothing internal leaks into a
//! body. `/recommend` never answers 5xx once a model is loaded: an unknown
//! user or a failing model gets the routed model's popularity list.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::deploy::{Deployment, TOP_N};
use super::log::{LogEvent, RequestLog};
use super::metrics::Metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers share: the deployment (swapped whole on reload), the
/// metrics and the request log.
pub struct AppState {
    pub deployment: ArcSwapOption<Deployment>,
    pub metrics: Arc<Metrics>,
    pub log: Option<RequestLog>,
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
        AppState {
            deployment: ArcSwapOption::from(deployment.map(Arc::new)),
            metrics,
            log,
        }
    }

    /// Swap in a new deployment atomically: requests in flight finish on
    /// the one they started with.
    pub fn swap(&self, d: Deployment) {
        self.metrics.models_loaded.set(d.models.len() as i64);
        self.deployment.store(Some(Arc::new(d)));
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/recommend/{user}", get(recommend))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Why an answer is not a recommendation; each maps to one status.
enum ApiError {
    BadUser(String),
    NoModel,
}

impl ApiError {
    fn response(self, id: &HeaderValue, metrics: &Metrics) -> Response {
        let (status, msg) = match self {
            ApiError::BadUser(reason) => (StatusCode::BAD_REQUEST, reason),
            ApiError::NoModel => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no model is loaded yet".to_string(),
            ),
        };
        metrics.rejected(status.as_u16());
        (status, [(REQUEST_ID, id.clone())], text(format!("{msg}\n"))).into_response()
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

/// The incoming id when it is a well-formed UUID, else a new UUIDv7.
fn request_id(headers: &HeaderMap) -> uuid::Uuid {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
        .filter(|u| !u.is_nil())
        .unwrap_or_else(uuid::Uuid::now_v7)
}

/// A user id: decimal digits only, at most i64::MAX (lineage.db's range).
pub fn parse_user(raw: &str) -> Result<u64, String> {
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
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let id = request_id(&headers);
    // A hyphenated UUID is always a valid header value.
    let id_header = HeaderValue::from_str(&id.hyphenated().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let user = match parse_user(&raw) {
        Ok(u) => u,
        Err(reason) => return ApiError::BadUser(reason).response(&id_header, &st.metrics),
    };
    let Some(dep) = st.deployment.load_full() else {
        return ApiError::NoModel.response(&id_header, &st.metrics);
    };
    let attrs = dep.users.get(&user);
    // A checked config always routes; model 0 is the safe answer otherwise.
    let (mi, route) = match dep.router.route(user, attrs) {
        Some((m, r)) => (m, r.clone()),
        None => (0, Arc::from("unrouted")),
    };
    let Some(served) = dep.models.get(mi).cloned() else {
        return ApiError::NoModel.response(&id_header, &st.metrics);
    };
    let known = u32::try_from(user)
        .ok()
        .filter(|u| served.model.knows_user(*u));
    let (status, body): (&'static str, Bytes) = match known {
        None => {
            served.counters.fallback_unknown_user.inc();
            ("fallback_unknown_user", served.popular_body.clone())
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
    let exemplar = id_header
        .to_str()
        .ok()
        .map(|id| super::metrics::RequestIdLabel {
            request_id: id.to_string(),
        });
    st.metrics
        .latency
        .observe(elapsed.as_secs_f64(), exemplar, None);
    if let Some(log) = &st.log {
        log.log(LogEvent {
            id,
            time_ms: super::log::now_ms(),
            user,
            served: served.clone(),
            config: dep.config_hex.clone(),
            route,
            status,
            latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
            body: body.clone(),
        });
    }
    (StatusCode::OK, [(REQUEST_ID, id_header)], text(body)).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.deployment.load_full() {
        Some(d) => (
            StatusCode::OK,
            text(format!(
                "ok: config {} serving {}\n",
                d.config_digest.short(),
                d.model_names().join(", ")
            )),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            text("not ready: no model is loaded\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        text("not found: try GET /recommend/<userid>, /health or /metrics\n"),
    )
        .into_response()
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
