//! HTTP serving shared by the hook and admin ports: HTTP/1.1 and HTTP/2
//! (cleartext), bounded in what connections may hold and for how long, and
//! graceful shutdown.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::Instant,
};
use tower::ServiceExt;

/// What one server lets its connections hold, and for how long.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers (HTTP/1). hyper starts
    /// it as soon as a connection waits for its next request, so it is also
    /// how long an idle HTTP/1 keep-alive connection stays open.
    pub header_timeout: Duration,
    /// A connection that has no request in flight and has neither sent nor
    /// received a byte for this long is closed (HTTP/2 sends GOAWAY first).
    pub idle_timeout: Duration,
    /// Connections open at once. Beyond, new connections are not accepted
    /// but wait in the listen backlog until one closes: every open one is
    /// bounded in time by the timeouts, so a burst is served late rather
    /// than refused, and nothing is spent on connections that cannot be served.
    pub max_connections: usize,
    /// HTTP/2 streams (requests) at once on one connection.
    pub http2_max_streams: u32,
    /// An HTTP/2 connection is pinged this often, and closed when a ping is
    /// not answered within as long: a vanished peer does not hold its slot.
    pub http2_keep_alive: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            http2_max_streams: 32,
            http2_keep_alive: Duration::from_secs(20),
        }
    }
}

/// Largest read buffer of an HTTP/1 connection (hyper's default is ~400 KiB):
/// the bound on request headers, and what each connection reading a body
/// may hold on top of it.
const HTTP1_MAX_BUFFER: usize = 64 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the handler
/// reads it (hyper's defaults are 1 MiB each).
const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 512 * 1024;
/// Time open connections get to finish once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes, then lets open
/// requests finish (up to 10 seconds).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(HTTP1_MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = hyper::service::service_fn({
            let (router, activity) = (router.clone(), activity.clone());
            move |request: hyper::Request<hyper::body::Incoming>| {
                let in_flight = activity.request();
                let response = router.clone().oneshot(request);
                async move {
                    let response = response.await;
                    drop(in_flight);
                    response
                }
            }
        });
        let io = TokioIo::new(Tracked { stream, activity: activity.clone() });
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        let (mut stopping, idle_timeout) = (stopping.clone(), limits.idle_timeout);
        tokio::spawn(async move {
            // Once idle for `idle_timeout`, or when the server stops, the
            // connection is shut down gracefully (requests in flight finish),
            // and dropped if it has not ended after as long again.
            tokio::pin!(connection);
            let mut check_at = activity.idle_deadline(idle_timeout);
            let ended = loop {
                tokio::select! {
                    ended = connection.as_mut() => break Some(ended),
                    () = tokio::time::sleep_until(check_at) => {
                        if activity.is_idle(idle_timeout) {
                            break None;
                        }
                        // A request in flight moves no byte while it is handled.
                        let deadline = activity.idle_deadline(idle_timeout);
                        check_at = if deadline > Instant::now() { deadline } else { Instant::now() + idle_timeout };
                    }
                    _ = stopping.wait_for(|stop| *stop) => break None,
                }
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(idle_timeout.max(SHUTDOWN_GRACE), connection).await.unwrap_or(Ok(()))
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    stop.send_replace(true);
    // Every open connection holds a slot: all slots back means all closed.
    let closed = slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX));
    if tokio::time::timeout(SHUTDOWN_GRACE, closed).await.is_err() {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// When a connection last moved a byte, and how many of its requests are
/// being handled.
struct Activity {
    started: Instant,
    /// Milliseconds after `started`.
    last: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self { started: Instant::now(), last: AtomicU64::new(0), requests: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle_timeout
    }

    fn is_idle(&self, idle_timeout: Duration) -> bool {
        self.requests.load(Ordering::Acquire) == 0 && Instant::now() >= self.idle_deadline(idle_timeout)
    }

    /// Counts a request in flight until the guard is dropped.
    fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that records when it last read or wrote a byte.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, routing::get};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::oneshot,
    };

    use super::{ConnectionLimits, serve};

    /// A server of `/` (answers at once) and `/slow` (after 500 ms) with
    /// `limits`; stops when the sender is dropped.
    async fn server(limits: ConnectionLimits) -> anyhow::Result<(String, oneshot::Sender<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        Ok((address, stop))
    }

    async fn get_on(stream: &mut TcpStream, path: &str) -> anyhow::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = vec![0; 1024];
        let read = stream.read(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer[..read]).into_owned())
    }

    /// Whether the server closed `stream` (a read returns end of stream, or a reset).
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut byte = [0; 1];
        matches!(tokio::time::timeout(wait, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn beyond_the_connection_cap_a_connection_waits_for_a_free_slot() -> anyhow::Result<()> {
        let limits = ConnectionLimits { max_connections: 2, ..ConnectionLimits::default() };
        let (address, _stop) = server(limits).await?;
        let mut first = TcpStream::connect(&address).await?;
        let _second = TcpStream::connect(&address).await?;
        assert!(get_on(&mut first, "/").await?.starts_with("HTTP/1.1 200"));
        let mut third = TcpStream::connect(&address).await?;
        let waiting = tokio::spawn(async move { get_on(&mut third, "/").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the third connection is not served while two are open");
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_but_a_request_in_flight_is_not_cut() -> anyhow::Result<()> {
        let limits = ConnectionLimits { idle_timeout: Duration::from_millis(200), ..ConnectionLimits::default() };
        let (address, _stop) = server(limits).await?;
        let mut silent = TcpStream::connect(&address).await?;
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a silent connection is closed");
        // Handled for 500 ms without a byte moving: not idle, so answered
        // without being told the connection closes.
        let mut slow = TcpStream::connect(&address).await?;
        let answer = get_on(&mut slow, "/slow").await?;
        assert!(answer.starts_with("HTTP/1.1 200") && !answer.contains("connection: close"), "{answer}");
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await, "then idle, and closed");
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_http1_keep_alive_connection_is_closed_after_the_header_timeout() -> anyhow::Result<()> {
        let limits = ConnectionLimits { header_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
        let (address, _stop) = server(limits).await?;
        let mut stream = TcpStream::connect(&address).await?;
        let answer = get_on(&mut stream, "/").await?;
        assert!(answer.starts_with("HTTP/1.1 200") && !answer.contains("connection: close"), "{answer}");
        assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "kept alive, then closed");
        Ok(())
    }

    /// HTTP/2 (cleartext, prior knowledge) is served, with its stream limit
    /// announced in the server's first SETTINGS frame.
    #[tokio::test]
    async fn http2_announces_its_stream_limit() -> anyhow::Result<()> {
        let limits = ConnectionLimits { http2_max_streams: 7, ..ConnectionLimits::default() };
        let (address, _stop) = server(limits).await?;
        let mut stream = TcpStream::connect(&address).await?;
        // The client preface, then an empty SETTINGS frame.
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await?;
        let mut header = [0; 9];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header)).await??;
        assert_eq!(header[3], 0x4, "the server starts with SETTINGS");
        let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut settings = vec![0; length];
        stream.read_exact(&mut settings).await?;
        let max_streams = settings
            .chunks_exact(6)
            .find(|setting| setting[..2] == [0x0, 0x3])
            .map(|setting| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
        assert_eq!(max_streams, Some(7));
        Ok(())
    }
}
