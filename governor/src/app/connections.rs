//! The accept side of the gRPC listeners: a cap on open connections and
//! timers that close the ones that hold memory without using it.
//!
//! - **Cap** (`server.max_connections`): one permit per connection, shared
//!   by every gRPC listener (TCP and the Unix socket together, because they
//!   share one memory limit). A connection accepted over the cap is closed
//!   at once, counted in `governor_connections_refused_total` and logged at
//!   most once per [`REFUSAL_LOG_EVERY`] with the number refused meanwhile.
//! - **Handshake timeout** (`server.handshake_timeout`): a connection that
//!   has not sent the 24-byte HTTP/2 preface by then is closed.
//! - **Idle timeout** (`server.idle_connection_timeout`): a connection with
//!   no open stream for that long gets a GOAWAY (NO_ERROR, naming the last
//!   stream it had) and is closed.
//!
//! # Why at the byte level
//!
//! tonic's server owns the HTTP/2 connection and offers no per-connection
//! idle timeout or shutdown, so [`Tracked`] wraps the socket and follows
//! the frame headers (9 bytes each; payloads are skipped) in both
//! directions: a client HEADERS frame on a new stream opens it, an
//! END_STREAM from the server or an RST_STREAM either way closes it. The
//! GOAWAY is written only between two of the server's frames, so it never
//! lands inside one; the read side then reports end of stream, and hyper
//! closes the connection as it would for a client that hung up.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::telemetry::{ConnectionMetrics, ReasonLabels};

/// How often a refused connection is logged, at most.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// The connection limits of the gRPC listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections over every gRPC listener together.
    pub max_connections: usize,
    /// Time a connection may take to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no stream open.
    pub idle_timeout: Duration,
}

/// The gates of the gRPC listeners: one for the data and control plane
/// (TCP and the Unix socket together), and one of its own for the health
/// listener, so that probes still connect when the data plane is full.
#[derive(Clone, Debug)]
pub struct Gates {
    pub serving: Arc<Gate>,
    pub health: Arc<Gate>,
}

/// Connections the health listener takes at once: the kubelet opens one per
/// probe, and a few operators may look too.
pub const HEALTH_MAX_CONNECTIONS: usize = 64;

impl Gates {
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Gates {
        let health = ConnectionLimits {
            max_connections: HEALTH_MAX_CONNECTIONS,
            ..limits
        };
        Gates {
            serving: Gate::new(limits, metrics.clone()),
            health: Gate::new(health, metrics),
        }
    }
}

/// Hands out one permit per connection, for every gRPC listener.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    metrics: ConnectionMetrics,
    /// Refusals not yet logged, and when the last log line was written
    /// (milliseconds since `started`).
    unlogged: AtomicU64,
    last_log_ms: AtomicU64,
    started: Instant,
}

impl Gate {
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
            unlogged: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Wraps a listener's stream of accepted sockets: over the cap, a socket
    /// is dropped (closed) and the next one awaited; the rest come out as
    /// [`Tracked`]. Accept errors pass through (tonic logs and goes on).
    pub fn incoming<S, IO>(self: &Arc<Gate>, accepted: S) -> Incoming<S>
    where
        S: Stream<Item = io::Result<IO>>,
    {
        Incoming {
            inner: accepted,
            gate: self.clone(),
        }
    }

    fn admit<IO>(self: &Arc<Gate>, io: IO) -> Option<Tracked<IO>> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.open.inc();
                Some(Tracked::new(io, self.clone(), permit))
            }
            Err(_) => {
                self.metrics.refused.inc();
                self.refused();
                None
            }
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Logs refusals, at most once per [`REFUSAL_LOG_EVERY`], with the
    /// number refused since the last line.
    fn refused(&self) {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        // Milliseconds since `started`, plus one so that 0 means "never".
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now - last.min(now) >= REFUSAL_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                refused,
                max_connections = self.limits.max_connections,
                "connections refused: server.max_connections reached"
            );
        }
    }
}

/// The stream [`Gate::incoming`] returns.
#[derive(Debug)]
pub struct Incoming<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, IO> Stream for Incoming<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
{
    type Item = io::Result<Tracked<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                Some(Ok(io)) => {
                    if let Some(tracked) = this.gate.admit(io) {
                        return Poll::Ready(Some(Ok(tracked)));
                    }
                }
            }
        }
    }
}

/// Where a frame parser is in one direction's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Inside the client preface, this many bytes into it.
    Preface(usize),
    /// Inside a frame header, this many bytes into it.
    Header(usize),
    /// Inside a payload, this many bytes left.
    Payload(usize),
}

/// Follows the frame headers of one direction.
#[derive(Debug)]
struct Frames {
    position: Position,
    header: [u8; FRAME_HEADER],
}

/// A frame header, as far as stream bookkeeping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Frames {
    fn client() -> Frames {
        Frames {
            position: Position::Preface(0),
            header: [0; FRAME_HEADER],
        }
    }

    fn server() -> Frames {
        Frames {
            position: Position::Header(0),
            header: [0; FRAME_HEADER],
        }
    }

    fn preface_done(&self) -> bool {
        !matches!(self.position, Position::Preface(_))
    }

    /// Between two frames (or before the first).
    fn at_boundary(&self) -> bool {
        self.position == Position::Header(0)
    }

    /// Reads `bytes`, calling `on_frame` for each complete frame header.
    /// A preface that does not match is an error.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(FrameHead)) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.position {
                Position::Preface(done) => {
                    let take = (PREFACE.len() - done).min(bytes.len());
                    if bytes[..take] != PREFACE[done..done + take] {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not an HTTP/2 connection preface",
                        ));
                    }
                    bytes = &bytes[take..];
                    self.position = if done + take == PREFACE.len() {
                        Position::Header(0)
                    } else {
                        Position::Preface(done + take)
                    };
                }
                Position::Header(done) => {
                    let take = (FRAME_HEADER - done).min(bytes.len());
                    self.header[done..done + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if done + take < FRAME_HEADER {
                        self.position = Position::Header(done + take);
                        continue;
                    }
                    let h = &self.header;
                    let length = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on_frame(FrameHead {
                        kind: h[3],
                        flags: h[4],
                        stream,
                    });
                    self.position = if length == 0 {
                        Position::Header(0)
                    } else {
                        Position::Payload(length)
                    };
                }
                Position::Payload(left) => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    self.position = if take == left {
                        Position::Header(0)
                    } else {
                        Position::Payload(left - take)
                    };
                }
            }
        }
        Ok(())
    }
}

/// The streams of one connection, from its frame headers.
#[derive(Debug, Default)]
struct Streams {
    open: HashSet<u32>,
    /// The highest stream id the client has opened.
    last_opened: u32,
}

impl Streams {
    fn client_frame(&mut self, frame: FrameHead) {
        match frame.kind {
            HEADERS if frame.stream % 2 == 1 && frame.stream > self.last_opened => {
                self.last_opened = frame.stream;
                self.open.insert(frame.stream);
            }
            RST_STREAM => {
                self.open.remove(&frame.stream);
            }
            _ => {}
        }
    }

    fn server_frame(&mut self, frame: FrameHead) {
        let ends = matches!(frame.kind, DATA | HEADERS) && frame.flags & END_STREAM != 0;
        if ends || frame.kind == RST_STREAM {
            self.open.remove(&frame.stream);
        }
    }
}

/// What a [`Tracked`] connection is doing about its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Writing a GOAWAY, this many bytes of it written.
    GoAway(usize),
    /// Done: reads see end of stream, writes fail.
    Closed,
}

/// An accepted socket with its connection permit and timers.
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
    inbound: Frames,
    outbound: Frames,
    streams: Streams,
    /// The handshake deadline until the preface is in, then the idle one
    /// (armed while no stream is open).
    timer: Pin<Box<Sleep>>,
    idle_armed: bool,
    closing: Closing,
    goaway: [u8; FRAME_HEADER + 8],
    read_waker: Option<Waker>,
}

impl<IO> Tracked<IO> {
    fn new(io: IO, gate: Arc<Gate>, permit: OwnedSemaphorePermit) -> Tracked<IO> {
        let deadline = Instant::now() + gate.limits.handshake_timeout;
        Tracked {
            io,
            gate,
            _permit: permit,
            inbound: Frames::client(),
            outbound: Frames::server(),
            streams: Streams::default(),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            idle_armed: false,
            closing: Closing::No,
            goaway: [0; FRAME_HEADER + 8],
            read_waker: None,
        }
    }

    /// After the streams changed: arms the idle timer when the last one
    /// closed, disarms it when one opened.
    fn streams_changed(&mut self) {
        if !self.inbound.preface_done() {
            return;
        }
        let idle = self.streams.open.is_empty();
        if idle && !self.idle_armed {
            self.idle_armed = true;
            let deadline = Instant::now() + self.gate.limits.idle_timeout;
            self.timer.as_mut().reset(deadline);
            // The read side polls the timer: have it register the new one.
            if let Some(waker) = self.read_waker.take() {
                waker.wake();
            }
        } else if !idle {
            self.idle_armed = false;
        }
    }

    fn start_goaway(&mut self) {
        let last = self.streams.last_opened.to_be_bytes();
        self.goaway = [
            0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
            last[0], last[1], last[2], last[3], // last stream id
            0, 0, 0, 0, // NO_ERROR
        ];
        self.closing = Closing::GoAway(0);
        self.gate.closed("idle");
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.gate.metrics.open.dec();
    }
}

impl<IO: AsyncWrite + Unpin> Tracked<IO> {
    /// Writes what is left of the GOAWAY, then marks the connection closed.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Closing::GoAway(written) = self.closing {
            if written == self.goaway.len() {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                self.closing = Closing::Closed;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.goaway[written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.closing = Closing::GoAway(written + n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing == Closing::No {
            // Bytes that are there win over a timer that fired meanwhile (a
            // busy server may come back to a connection late).
            let before = buf.filled().len();
            if let Poll::Ready(read) = Pin::new(&mut this.io).poll_read(cx, buf) {
                read?;
                let Tracked {
                    inbound, streams, ..
                } = this;
                inbound.feed(&buf.filled()[before..], |frame| streams.client_frame(frame))?;
                this.streams_changed();
                return Poll::Ready(Ok(()));
            }
            let handshaking = !this.inbound.preface_done();
            if (handshaking || this.idle_armed) && this.timer.as_mut().poll(cx).is_ready() {
                if handshaking {
                    this.gate.closed("handshake");
                    this.closing = Closing::Closed;
                } else if this.outbound.at_boundary() {
                    this.start_goaway();
                }
                // Otherwise a server frame is half written: the write that
                // finishes it comes back here through the waker.
            }
            this.read_waker = Some(cx.waker().clone());
        }
        match this.closing {
            Closing::No => Poll::Pending,
            Closing::GoAway(_) => {
                // A write error here means the peer is gone: close all the same.
                if ready!(this.poll_goaway(cx)).is_err() {
                    this.closing = Closing::Closed;
                }
                Poll::Ready(Ok(()))
            }
            Closing::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.closing {
            Closing::No => {}
            Closing::GoAway(_) => {
                ready!(this.poll_goaway(cx))?;
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            Closing::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, bytes))?;
        let Tracked {
            outbound, streams, ..
        } = this;
        outbound.feed(&bytes[..n], |frame| streams.server_frame(frame))?;
        this.streams_changed();
        // An idle timer that fired mid-frame waits for this boundary.
        if this.idle_armed && this.outbound.at_boundary() && this.timer.is_elapsed() {
            if let Some(waker) = this.read_waker.take() {
                waker.wake();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Tracked<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests;
