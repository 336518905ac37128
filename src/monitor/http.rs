//! `recsys monitor --http`: a dashboard page for users without Prometheus
//! and Grafana, and Slack-format alert webhooks (`--alert-webhook`).
//!
//! The page is one self-contained HTML document (no external scripts or
//! fonts) that polls `/api/minutes` and `/api/report` and draws the charts
//! on canvases, one line per model version. The server reads the database
//! through its own sink connection, on the blocking pool.
//!
//! Alerts are evaluated from the same figures every few seconds; a
//! notification is posted when an alert starts firing and when it
//! resolves, never again while it keeps firing ([`AlertState`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::report::{self, By};
use super::sink::Sink;

/// The dashboard page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

pub type SharedSink = Arc<Mutex<Box<dyn Sink + Send>>>;

#[derive(Clone)]
struct AppState {
    sink: SharedSink,
    alerts: Arc<Mutex<BTreeMap<String, bool>>>,
}

/// `?minutes=N`: minutes back from the newest data.
fn minutes_param(uri: &Uri) -> Option<i64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("minutes="))
        .and_then(|v| v.parse().ok())
}

/// The dashboard's router.
pub fn app(sink: SharedSink, alerts: Arc<Mutex<BTreeMap<String, bool>>>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/report", get(api_report))
        .route("/api/minutes", get(api_minutes))
        .route("/api/alerts", get(api_alerts))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /, /api/report, /api/minutes, /api/alerts or /metrics\n",
            )
        })
        .with_state(AppState { sink, alerts })
}

async fn page() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        PAGE,
    )
        .into_response()
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            b,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// A database error: logged in full, answered without internals.
fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!("monitor http: {e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the monitoring database cannot be read right now\n",
    )
        .into_response()
}

async fn with_sink<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&mut dyn Sink) -> Result<T, super::MonitorError> + Send + 'static,
) -> Result<T, String> {
    let sink = st.sink.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = sink.lock().map_err(|_| "sink lock poisoned".to_string())?;
        f(s.as_mut()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn api_report(State(st): State<AppState>, uri: Uri) -> Response {
    let since = minutes_param(&uri)
        .unwrap_or(24 * 60)
        .clamp(1, 60 * 24 * 31)
        * 60_000;
    match with_sink(&st, move |s| report::report(s, since, By::Model)).await {
        Ok(r) => json(&r),
        Err(e) => unavailable(e),
    }
}

async fn api_minutes(State(st): State<AppState>, uri: Uri) -> Response {
    let since = minutes_param(&uri).unwrap_or(180).clamp(1, 60 * 24 * 31) * 60_000;
    match with_sink(&st, move |s| report::minutes(s, since)).await {
        Ok(r) => json(&r),
        Err(e) => unavailable(e),
    }
}

async fn api_alerts(State(st): State<AppState>) -> Response {
    let a = st.alerts.lock().map(|a| a.clone()).unwrap_or_default();
    json(&a)
}

/// Serve the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: SharedSink,
    alerts: Arc<Mutex<BTreeMap<String, bool>>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(sink, alerts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Prometheus text exposition of the monitor's figures: what
/// monitoring/alerts.yml's online-quality rule reads.
pub(crate) fn metrics_text(sink: &mut dyn Sink) -> Result<String, super::MonitorError> {
    use std::fmt::Write as _;
    let hour = report::report(sink, 3_600_000, By::Model)?;
    let recent = report::report(sink, 6 * 3_600_000, By::Model)?;
    let day = report::report(sink, 86_400_000, By::Model)?;
    let mut out = String::new();
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        out,
        "# HELP recsys_monitor_conversion_rate Share of the closed answers of the last 6 h with a top-k item watched within the window.\n# TYPE recsys_monitor_conversion_rate gauge"
    );
    for g in recent.by_model.iter().filter(|g| g.closed > 0) {
        for (k, c) in [("10", g.converted_10), ("20", g.converted_20)] {
            let _ = writeln!(
                out,
                "recsys_monitor_conversion_rate{{model=\"{}\",k=\"{k}\"}} {}",
                esc(&g.model),
                c as f64 / g.closed as f64
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP recsys_monitor_online_quality Users with a converted answer / users answered, last 24 h.\n# TYPE recsys_monitor_online_quality gauge"
    );
    for g in &day.by_model {
        if let Some(q) = g.online_quality {
            let _ = writeln!(
                out,
                "recsys_monitor_online_quality{{model=\"{}\"}} {q}",
                esc(&g.model)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP recsys_monitor_open_windows Answers whose feedback window is still open.\n# TYPE recsys_monitor_open_windows gauge"
    );
    for g in &day.by_model {
        let _ = writeln!(
            out,
            "recsys_monitor_open_windows{{model=\"{}\"}} {}",
            esc(&g.model),
            g.provisional
        );
    }
    if let Some(a) = hour.stream.availability {
        let _ = writeln!(
            out,
            "# HELP recsys_monitor_stream_availability Share of the last hour's stream requests answered 200 within 600 ms.\n# TYPE recsys_monitor_stream_availability gauge\nrecsys_monitor_stream_availability {a}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP recsys_monitor_late_events Events that arrived below the watermark, last 24 h.\n# TYPE recsys_monitor_late_events gauge\nrecsys_monitor_late_events {}",
        day.late_events + day.late_answers
    );
    Ok(out)
}

async fn metrics(State(st): State<AppState>) -> Response {
    match with_sink(&st, metrics_text).await {
        Ok(t) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            t,
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

// ---------------------------------------------------------------------------
// Alerts

/// Thresholds of the built-in alert rules (the same as monitoring/'s
/// Prometheus rules, evaluated on the monitor's own figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertRules {
    /// Server p95 latency over the last `latency_minutes` above this fires.
    pub latency_p95_ms: f64,
    pub latency_minutes: i64,
    /// Stream availability over the last `availability_minutes` below this.
    pub availability: f64,
    pub availability_minutes: i64,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            latency_p95_ms: 400.0,
            latency_minutes: 2,
            availability: 0.99,
            availability_minutes: 5,
        }
    }
}

/// One alert's evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub firing: bool,
    pub summary: String,
}

/// A notification to post.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub name: &'static str,
    pub firing: bool,
    pub summary: String,
}

/// Firing state per alert: notify on changes only.
#[derive(Debug, Default, Clone)]
pub struct AlertState {
    firing: BTreeMap<&'static str, bool>,
}

impl AlertState {
    /// The notifications `checks` call for (pure).
    pub fn update(&mut self, checks: &[Check]) -> Vec<Notification> {
        let mut out = Vec::new();
        for c in checks {
            let was = self.firing.get(c.name).copied().unwrap_or(false);
            if was != c.firing {
                out.push(Notification {
                    name: c.name,
                    firing: c.firing,
                    summary: c.summary.clone(),
                });
            }
            self.firing.insert(c.name, c.firing);
        }
        out
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, bool> {
        self.firing
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// Evaluate the rules on the database's newest minutes.
pub fn evaluate(
    sink: &mut dyn Sink,
    rules: &AlertRules,
) -> Result<Vec<Check>, super::MonitorError> {
    let lat = report::report(sink, rules.latency_minutes * 60_000, By::Model)?;
    let mut worst: Option<(String, f64)> = None;
    for g in &lat.by_model {
        if let Some(p) = g.latency_p95_ms
            && worst.as_ref().is_none_or(|(_, w)| p > *w)
        {
            worst = Some((g.model.clone(), p));
        }
    }
    let latency = match &worst {
        Some((m, p)) if *p > rules.latency_p95_ms => Check {
            name: "RecsysLatencyP95High",
            firing: true,
            summary: format!(
                "p95 latency of {m} is {p:.0} ms over the last {} min (threshold {:.0} ms)",
                rules.latency_minutes, rules.latency_p95_ms
            ),
        },
        _ => Check {
            name: "RecsysLatencyP95High",
            firing: false,
            summary: format!(
                "p95 latency is back under {:.0} ms{}",
                rules.latency_p95_ms,
                worst
                    .map(|(m, p)| format!(" (worst: {m}, {p:.0} ms)"))
                    .unwrap_or_default()
            ),
        },
    };
    let av = report::report(sink, rules.availability_minutes * 60_000, By::Model)?;
    let availability = match av.stream.availability {
        Some(a) if a < rules.availability => Check {
            name: "RecsysAvailabilityLow",
            firing: true,
            summary: format!(
                "availability {:.2}% over the last {} min ({} requests; threshold {:.2}%)",
                a * 100.0,
                rules.availability_minutes,
                av.stream.requests,
                rules.availability * 100.0
            ),
        },
        a => Check {
            name: "RecsysAvailabilityLow",
            firing: false,
            summary: format!(
                "availability is {} over the last {} min",
                a.map(|a| format!("{:.2}%", a * 100.0))
                    .unwrap_or_else(|| "unknown (no requests)".into()),
                rules.availability_minutes
            ),
        },
    };
    Ok(vec![latency, availability])
}

/// The Slack incoming-webhook body of a notification.
pub(crate) fn slack_body(n: &Notification) -> serde_json::Value {
    let (state, color) = if n.firing {
        ("FIRING", "danger")
    } else {
        ("RESOLVED", "good")
    };
    serde_json::json!({
        "text": format!("[{state}] {}: {}", n.name, n.summary),
        "attachments": [{
            "color": color,
            "title": format!("[{state}] {}", n.name),
            "text": n.summary,
            "footer": "recsys monitor",
        }],
    })
}

/// Post a notification; an error names the URL (never blocks forever).
pub(crate) fn post(url: &str, n: &Notification) -> Result<(), String> {
    post_json(url, &slack_body(n)).map_err(|e| format!("alert {e}"))
}

/// POST a JSON body (a Slack-format message) to a webhook.
pub(crate) fn post_json(url: &str, body: &serde_json::Value) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .map(|_| ())
        .map_err(|e| format!("webhook {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_notify_on_firing_and_resolving_only() {
        let mut s = AlertState::default();
        let c = |firing| Check {
            name: "RecsysLatencyP95High",
            firing,
            summary: "x".into(),
        };
        assert!(s.update(&[c(false)]).is_empty());
        let n = s.update(&[c(true)]);
        assert_eq!(n.len(), 1);
        assert!(n[0].firing);
        assert!(s.update(&[c(true)]).is_empty(), "no repeats while firing");
        let n = s.update(&[c(false)]);
        assert_eq!((n.len(), n[0].firing), (1, false));
        let body = slack_body(&n[0]);
        assert!(
            body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("[RESOLVED]"))
        );
        assert_eq!(body["attachments"][0]["color"], "good");
    }
}
