//! The HTTP edge: our own accept loop over hyper's HTTP/1 connections,
//! with the limits a production service needs and `axum::serve` lacks.
//!
//! - **Header-read timeout**: a request head (from accept, or from the
//!   first byte after an idle keep-alive) must arrive whole within it.
//! - **Idle timeout**: a keep-alive connection may sit silent that long.
//! - **Request timeout**: from a complete head to the answer written to
//!   the socket (a client that stops reading its answers is closed).
//! - **A connection cap**. At the cap, a new connection takes the place of
//!   the connection that has waited longest without a request in progress
//!   (never sent a whole head, or idle keep-alive) if it has waited at
//!   least [`MIN_EVICT_AGE`], as nginx reuses its idle connections; when
//!   every connection is busy the newcomer gets a `503` with `Retry-After`
//!   and is closed at once. So connections held open idle or half-sent
//!   cannot lock other clients out.
//! - **File-descriptor exhaustion** (`EMFILE`/`ENFILE` on accept) never
//!   ends the accept loop: an idle connection is evicted to make room, or
//!   the loop backs off (10 ms doubling to 1 s) and tries again.
//! - **Graceful shutdown, bounded**: stop accepting, close connections with
//!   nothing in progress, let requests in flight finish for at most the
//!   grace period, then drop whatever is left.
//!
//! Every decision is counted in `/metrics` (`recsys_connections_*`,
//! `recsys_accept_errors_total`). hyper's own answers to requests it cannot
//! parse get our `X-Request-Id` and message too (see [`Watched`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::metrics::{CloseReason, Metrics};
use super::request_id::IdMint;

/// The limits of `recsys serve` (each a flag; these are the defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time for a whole request head to arrive.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit with no request.
    pub idle_timeout: Duration,
    /// Time from a complete request head to its answer written.
    pub request_timeout: Duration,
    /// Time requests in flight get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A connection younger than this is not evicted to make room for another
/// at the cap (a real client needs a moment to send its request); under
/// file-descriptor exhaustion any idle connection may be.
pub(crate) const MIN_EVICT_AGE: Duration = Duration::from_millis(250);

/// Largest request head, in bytes (hyper answers a larger one with 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Refused connections being answered and drained at once; beyond this a
/// refused connection is closed without an answer.
const MAX_LINGERING: usize = 64;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What one connection is doing, as far as its limits go.
#[derive(Debug)]
struct TrackState {
    /// Requests handed to the app whose answers are not yet complete.
    in_flight: u32,
    /// A write to the socket did not complete (the client is not reading).
    write_pending: bool,
    /// Bytes of a next request arrived (so the connection is not idle).
    head_started: bool,
    /// Start of the request in progress.
    request_since: Instant,
    /// Since when no request has been in progress (accept, or the end of
    /// the last answer).
    waiting_since: Instant,
    /// Start of the current request head's bytes.
    head_since: Instant,
    evicted: bool,
}

enum Phase {
    Busy(Instant),
    Head(Instant),
    Idle(Instant),
}

struct Track {
    id: u64,
    state: Mutex<TrackState>,
    wake: Notify,
}

impl Track {
    fn new(id: u64) -> Track {
        let now = Instant::now();
        Track {
            id,
            state: Mutex::new(TrackState {
                in_flight: 0,
                write_pending: false,
                // A new connection owes us a request head right away.
                head_started: true,
                request_since: now,
                waiting_since: now,
                head_since: now,
                evicted: false,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrackState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // flags and instants: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(st: &TrackState) -> Phase {
        if st.in_flight > 0 || st.write_pending {
            Phase::Busy(st.request_since)
        } else if st.head_started {
            Phase::Head(st.head_since)
        } else {
            Phase::Idle(st.waiting_since)
        }
    }

    /// When this connection is closed unless something happens first.
    fn deadline(&self, l: &Limits) -> (Instant, CloseReason) {
        let st = self.lock();
        if st.evicted {
            return (Instant::now(), CloseReason::Evicted);
        }
        match Track::phase(&st) {
            Phase::Busy(t) => (t + l.request_timeout, CloseReason::RequestTimeout),
            Phase::Head(t) => (t + l.header_read_timeout, CloseReason::HeaderTimeout),
            Phase::Idle(t) => (t + l.idle_timeout, CloseReason::IdleTimeout),
        }
    }

    fn busy(&self) -> bool {
        matches!(Track::phase(&self.lock()), Phase::Busy(_))
    }

    /// Since when it has waited with no request in progress, if it has.
    fn waiting(&self) -> Option<Instant> {
        let st = self.lock();
        match Track::phase(&st) {
            Phase::Busy(_) => None,
            Phase::Head(_) | Phase::Idle(_) => Some(st.waiting_since),
        }
    }

    fn evict(&self) {
        self.lock().evicted = true;
        self.wake.notify_one();
    }

    fn bytes_read(&self) {
        let mut st = self.lock();
        if !st.head_started && st.in_flight == 0 && !st.write_pending {
            st.head_started = true;
            st.head_since = Instant::now();
            drop(st);
            self.wake.notify_one();
        } else if st.in_flight > 0 {
            // Pipelined: the next head is (partly) here already.
            st.head_started = true;
            st.head_since = Instant::now();
        }
    }

    fn request_started(&self) {
        let mut st = self.lock();
        if st.in_flight == 0 {
            st.request_since = Instant::now();
        }
        st.in_flight += 1;
        st.head_started = false;
        drop(st);
        self.wake.notify_one();
    }

    fn response_done(&self) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 && !st.write_pending {
            st.waiting_since = Instant::now();
            if st.head_started {
                st.head_since = st.waiting_since;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    fn write_result<T>(&self, r: &Poll<T>) {
        let pending = r.is_pending();
        let mut st = self.lock();
        if st.write_pending == pending {
            return;
        }
        st.write_pending = pending;
        if !pending && st.in_flight == 0 {
            st.waiting_since = Instant::now();
            if st.head_started {
                st.head_since = st.waiting_since;
            }
        }
        drop(st);
        self.wake.notify_one();
    }
}

/// A socket that tells its [`Track`] about reads and stalled writes, and
/// puts our `X-Request-Id` and message on the answers hyper writes by
/// itself (a malformed request line or header, 400; a head too large,
/// 431; a URI too long, 414), which never reach the app's layer.
struct Watched {
    io: TcpStream,
    track: Arc<Track>,
    /// Makes the id of a rewritten answer.
    ids: Arc<IdMint>,
    /// The rest of a rewritten answer, written before anything else.
    pending: Vec<u8>,
}

/// hyper's own answer to a request it could not parse: a head with no
/// `x-request-id` (every answer of the app has one).
fn automatic_answer(buf: &[u8]) -> Option<(u16, &str)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status_line = head.lines().next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ")?;
    let code: u16 = rest.get(..3)?.parse().ok()?;
    let has_id = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("x-request-id:"));
    (!has_id).then_some((code, rest.get(4..).unwrap_or("")))
}

fn rewritten(code: u16, reason: &str, id: uuid::Uuid) -> Vec<u8> {
    let body = match code {
        431 => "request head too large\n",
        414 => "request URI too long\n",
        _ => "bad request: malformed request line or headers\n",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        id.hyphenated(),
        body.len()
    )
    .into_bytes()
}

impl Watched {
    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Take `buf` as written when it is hyper's own answer, sending ours.
    fn rewrite(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let (code, reason) = automatic_answer(buf)?;
        self.pending = rewritten(code, reason, self.ids.other());
        Some(match self.drain_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Taken; the rest goes out at the next write or flush.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.track.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = match this.drain_pending(cx) {
            Poll::Ready(Ok(())) => match this.rewrite(cx, buf) {
                Some(r) => r,
                None => Pin::new(&mut this.io).poll_write(cx, buf),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        this.track.write_result(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = match this.drain_pending(cx) {
            Poll::Ready(Ok(())) => {
                let first = bufs.iter().find(|b| !b.is_empty());
                match first.and_then(|b| this.rewrite(cx, b)) {
                    Some(r) => r,
                    None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        this.track.write_result(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = match this.drain_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        };
        this.track.write_result(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.drain_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Ends the request in progress when hyper has taken the whole answer.
struct Answering(Arc<Track>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// The app's response body, holding the request open until hyper drops it.
struct TrackedBody {
    inner: axum::body::Body,
    _answering: Answering,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The open connections, for the cap and for eviction.
struct Conns {
    max: usize,
    open: Mutex<HashMap<u64, Arc<Track>>>,
    metrics: Arc<Metrics>,
    ids: Arc<IdMint>,
}

impl Conns {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Track>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `t` in, evicting the longest-waiting idle connection at the
    /// cap; false when every connection is busy (or too young to evict).
    fn admit(&self, t: &Arc<Track>) -> bool {
        let mut open = self.lock();
        if open.len() >= self.max && !self.evict_locked(&mut open, MIN_EVICT_AGE) {
            return false;
        }
        open.insert(t.id, t.clone());
        self.metrics.connections_open.set(open.len() as i64);
        true
    }

    /// Evict the longest-waiting idle connection (for a file descriptor).
    fn evict_one(&self) -> bool {
        let mut open = self.lock();
        let evicted = self.evict_locked(&mut open, Duration::ZERO);
        self.metrics.connections_open.set(open.len() as i64);
        evicted
    }

    fn evict_locked(&self, open: &mut HashMap<u64, Arc<Track>>, min_age: Duration) -> bool {
        let now = Instant::now();
        let victim = open
            .values()
            .filter_map(|t| t.waiting().map(|w| (w, t)))
            .filter(|(w, _)| now.saturating_duration_since(*w) >= min_age)
            .min_by_key(|(w, _)| *w)
            .map(|(_, t)| t.clone());
        match victim {
            Some(v) => {
                open.remove(&v.id);
                v.evict();
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        self.metrics.connections_open.set(open.len() as i64);
    }
}

/// Accept and serve connections with `app` until `shutdown` resolves;
/// then drain (bounded by `limits.shutdown_grace`) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    ids: Arc<IdMint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let conns = Arc::new(Conns {
        max: limits.max_connections.max(1),
        open: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        ids,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut streak = 0u64;
    let mut backoff = MIN_BACKOFF;
    tokio::pin!(shutdown);
    'accept: loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if streak > 0 {
                        tracing::info!("accepting connections again after {streak} failed accept(s)");
                        streak = 0;
                        backoff = MIN_BACKOFF;
                    }
                    let _ = stream.set_nodelay(true);
                    metrics.connections_accepted.inc();
                    next_id += 1;
                    let track = Arc::new(Track::new(next_id));
                    if conns.admit(&track) {
                        tasks.spawn(connection(
                            stream,
                            track,
                            app.clone(),
                            limits.clone(),
                            metrics.clone(),
                            stop_rx.clone(),
                            conns.clone(),
                        ));
                    } else {
                        refuse(stream, &lingering, &metrics, &conns.ids);
                    }
                }
                Err(e) => {
                    let kind = accept_error_kind(&e);
                    metrics.accept_error(kind);
                    if streak == 0 {
                        tracing::warn!("accept failed ({e}): backing off and retrying");
                    }
                    streak += 1;
                    let pause = match kind {
                        // The peer gave up before we took it: next one.
                        "aborted" => continue 'accept,
                        // Room is made by closing the longest-idle
                        // connection; give its task a moment to run.
                        "fd_exhausted" if conns.evict_one() => Duration::from_millis(1),
                        _ => {
                            let b = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            b
                        }
                    };
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connection(s) still busy after the {:?} shutdown grace period: closed",
            tasks.len(),
            limits.shutdown_grace
        );
        for _ in 0..tasks.len() {
            metrics.connection_closed(CloseReason::Shutdown);
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

fn accept_error_kind(e: &io::Error) -> &'static str {
    use rustix::io::Errno;
    match Errno::from_io_error(e) {
        Some(Errno::MFILE | Errno::NFILE) => "fd_exhausted",
        Some(Errno::NOBUFS | Errno::NOMEM) => "no_memory",
        Some(Errno::CONNABORTED | Errno::PROTO | Errno::CONNRESET | Errno::PERM) => "aborted",
        _ => "other",
    }
}

/// Answer 503 with `Retry-After` and close. The answer is one small write
/// that a fresh socket's buffer always takes; the connection is then
/// drained briefly (at most [`MAX_LINGERING`] at once) so that closing it
/// with the client's request unread does not reset the answer away.
fn refuse(stream: TcpStream, lingering: &Arc<Semaphore>, metrics: &Metrics, ids: &IdMint) {
    metrics.connection_rejected();
    let body = "server busy: too many connections; retry in a second\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nx-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        ids.other().hyphenated(),
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut s = stream;
        // FIN after the answer, then read what the client sent until it
        // closes (or 1 s, or 64 KiB) so that our close is not a reset.
        let _ = std::future::poll_fn(|cx| Pin::new(&mut s).poll_shutdown(cx)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut buf = [0u8; 4096];
            let mut total = 0usize;
            while s.readable().await.is_ok() {
                match s.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        total += n;
                        if total > 64 * 1024 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    });
}

/// Serve one connection, closing it at its deadline, when evicted, or at
/// shutdown once nothing is in progress.
async fn connection(
    stream: TcpStream,
    track: Arc<Track>,
    app: Router,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    conns: Arc<Conns>,
) {
    let io = TokioIo::new(Watched {
        io: stream,
        track: track.clone(),
        ids: conns.ids.clone(),
        pending: Vec::new(),
    });
    let tower = TowerToHyperService::new(app);
    let svc_track = track.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        svc_track.request_started();
        let answering = Answering(svc_track.clone());
        let fut = hyper::service::Service::call(&tower, req);
        async move {
            let res = fut.await?;
            Ok::<_, std::convert::Infallible>(res.map(|inner| TrackedBody {
                inner,
                _answering: answering,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Ours (the watchdog below) also covers idle keep-alive and
        // stalled answers; hyper's would start at the previous answer.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    let closed = loop {
        let (deadline, reason) = track.deadline(&limits);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("connection: {e}");
                }
                break None;
            }
            _ = tokio::time::sleep_until(deadline) => {
                // The deadline may have moved since it was read.
                let (now_deadline, now_reason) = track.deadline(&limits);
                if now_deadline <= Instant::now() && now_reason == reason {
                    break Some(reason);
                }
            }
            _ = track.wake.notified() => {
                if track.deadline(&limits).1 == CloseReason::Evicted {
                    break Some(CloseReason::Evicted);
                }
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                if !track.busy() {
                    break None;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(reason) = closed {
        tracing::debug!("connection closed: {}", reason.label());
        metrics.connection_closed(reason);
    }
    conns.remove(track.id);
}
