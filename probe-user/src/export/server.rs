//! The HTTP side of `/metrics`, `/healthz` and `/readyz`, on a thread of its own: a slow or
//! idle client, or a large scrape being encoded, holds up this thread and never the run loop,
//! which only fills a `Snapshot` when a scrape asks (a bounded channel; a full one is refused).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Snapshot, families::Format};

/// How long a scrape waits for the loop, and a client for its headers.
const WAIT: Duration = Duration::from_secs(5);
/// The loop beats every 10 ms; this much silence is a stall.
const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Scrapes waiting for the loop at once; more are refused with 503.
const QUEUED_SCRAPES: usize = 4;

/// What the HTTP thread knows of the run loop.
#[derive(Debug)]
pub struct State {
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds from `started` at the loop's last beat.
    beat_ms: AtomicU64,
    /// Why not ready, while not.
    waiting_for: std::sync::Mutex<&'static str>,
    /// What hopprobe looked for and could not attach (ready all the same).
    missing: std::sync::Mutex<Vec<String>>,
}

impl State {
    fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            waiting_for: std::sync::Mutex::new("attaching"),
            missing: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn set_ready(&self, ready: bool, waiting_for: &'static str) {
        if let Ok(mut w) = self.waiting_for.lock() {
            *w = waiting_for;
        }
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_missing(&self, missing: Vec<String>) {
        if let Ok(mut m) = self.missing.lock() {
            *m = missing;
        }
    }

    /// `/readyz`'s answer once ready: measuring, and what it measures without.
    fn ready_text(&self) -> String {
        match self.missing.lock().map(|m| m.join("; ")) {
            Ok(m) if !m.is_empty() => format!("ready; missing: {m}"),
            _ => "ready".into(),
        }
    }

    /// The loop is alive.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    fn stalled(&self) -> bool {
        let last = Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) > STALLED_AFTER
    }
}

/// A scrape waiting for the loop's snapshot.
pub struct Scrape {
    pub reply: oneshot::Sender<Snapshot>,
}

/// The running server; stopping it (or dropping it) closes the port.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    scrapes: Option<mpsc::Receiver<Scrape>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves on an already bound listener (bound before anything is attached, so a port in
    /// use fails the run early).
    pub fn start(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new());
        state.beat();
        let (tx, rx) = mpsc::channel(QUEUED_SCRAPES);
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("hopprobe-http".into())
            .spawn(move || runtime.block_on(serve(listener, shared, tx, stopped)))?;
        Ok(Self {
            addr,
            state,
            scrapes: Some(rx),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The next scrape waiting for a snapshot; never resolves once shutting down.
    pub async fn next_scrape(&mut self) -> Scrape {
        match self.scrapes.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(s) => s,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Scrapes from now on get 503 ("shutting down") instead of waiting for a loop that is
    /// gone; the port stays open until `stop`.
    pub fn shutting_down(&mut self) {
        self.state.set_ready(false, "shutting down");
        self.scrapes = None;
    }

    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.scrapes = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("the metrics server's thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    scrapes: mpsc::Sender<Scrape>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "metrics server: registering the listener");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "metrics server: accept");
                    continue;
                }
            },
        };
        let (state, scrapes) = (state.clone(), scrapes.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, state.clone(), scrapes.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(WAIT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics server: connection");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into() + "\n")
}

async fn respond(
    req: Request<Incoming>,
    state: Arc<State>,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET only"));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            metrics(Format::from_accept(accept), &scrapes).await
        }
        "/healthz" if state.stalled() => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the measuring loop has not run for 5 s",
        ),
        "/healthz" => plain(StatusCode::OK, "ok"),
        "/readyz" if state.ready.load(Ordering::Acquire) => {
            plain(StatusCode::OK, state.ready_text())
        }
        "/readyz" => {
            let why = state.waiting_for.lock().map(|w| *w).unwrap_or("unknown");
            plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"))
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served",
        ),
    })
}

async fn metrics(format: Format, scrapes: &mpsc::Sender<Scrape>) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    match scrapes.try_send(Scrape { reply: tx }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many scrapes waiting",
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
    }
    let snapshot = match tokio::time::timeout(WAIT, rx).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the measuring loop did not answer within 5 s",
            );
        }
    };
    match format.encode(snapshot) {
        Ok(body) => reply(StatusCode::OK, format.content_type(), body),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// One request over a fresh connection; the status line and the body.
    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    fn server() -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Server::start(listener).expect("start")
    }

    /// Answers scrapes the way the run loop does, on a thread of its own.
    fn answer_scrapes(mut server: Server) -> (SocketAddr, Arc<State>, std::thread::JoinHandle<()>) {
        let (addr, state) = (server.addr, server.state.clone());
        let loop_ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for _ in 0..2 {
                    let scrape = server.next_scrape().await;
                    let mut s = Snapshot::default();
                    s.events.insert("exchanges_sent", 7);
                    let _ = scrape.reply.send(s);
                }
                server.shutting_down();
                // The port stays open a moment while the run finishes.
                tokio::time::sleep(Duration::from_millis(500)).await;
            });
        });
        (addr, state, loop_)
    }

    #[test]
    fn scrapes_are_answered_by_the_loop_and_refused_once_it_is_gone() {
        let (addr, state, loop_) = answer_scrapes(server());
        assert_eq!(get(addr, "/readyz").0, "HTTP/1.1 503 Service Unavailable");
        state.set_ready(true, "");
        assert_eq!(get(addr, "/readyz").0, "HTTP/1.1 200 OK");
        assert_eq!(get(addr, "/healthz").0, "HTTP/1.1 200 OK");
        // A client that connects and says nothing holds up neither the server nor the loop.
        let _idle = std::net::TcpStream::connect(addr).expect("connect");
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains("hopprobe_probe_events_total{event=\"exchanges_sent\"} 7"),
            "{body}"
        );
        assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
        std::thread::sleep(Duration::from_millis(100));
        let (status, body) = get(addr, "/metrics");
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", "shutting down\n")
        );
        assert_eq!(get(addr, "/readyz").1, "not ready: shutting down\n");
        assert_eq!(get(addr, "/nothing").0, "HTTP/1.1 404 Not Found");
        loop_.join().expect("loop");
    }

    #[test]
    fn a_loop_that_stops_beating_is_unhealthy() {
        let Some(long_ago) = Instant::now().checked_sub(2 * STALLED_AFTER) else {
            return;
        };
        let state = State {
            started: long_ago,
            ..State::new()
        };
        assert!(state.stalled());
        state.beat();
        assert!(!state.stalled());
    }
}
