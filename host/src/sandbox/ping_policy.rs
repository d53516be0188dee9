//! The sandbox Pub/Sub server's HTTP/2 ping policy, as gRPC servers enforce it.
//!
//! gRPC servers limit how often a client may send HTTP/2 PING frames while the server sends it
//! nothing (shared/docs/salesforce.md, "gRPC servers commonly enforce a minimum interval between
//! client HTTP/2 keepalive pings"; grpc-core's `GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS`,
//! default 300000, and `GRPC_ARG_HTTP2_MAX_PING_STRIKES`, default 2, doc/keepalive.md): a ping
//! that arrives sooner than the minimum interval after the previous one, with no DATA or HEADERS
//! frame sent by the server in between, is a strike; one strike more than the maximum and the
//! server sends GOAWAY with ENHANCE_YOUR_CALM and the debug data `too_many_pings`, then closes the
//! connection. Sending DATA or HEADERS clears the strikes and the ping clock.
//!
//! The server stack (tonic on hyper's h2) answers pings itself and cannot count them, so the
//! policy sits in the connection the sandbox hands to tonic: [`Policed`] wraps the byte stream
//! (inside TLS in `--tls` mode), reads the 9-byte header of every HTTP/2 frame both ways, and
//! writes the GOAWAY frame itself between two of the server's frames.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113, section 3.4) that precedes the client's frames.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
/// RFC 9113, section 7.
const ENHANCE_YOUR_CALM: u32 = 0xb;
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// How often clients may ping while the server sends nothing; the defaults are grpc-core's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPolicy {
    /// A ping sooner than this after the previous one, with no data sent in between, is a strike.
    pub min_interval: Duration,
    /// Strikes tolerated; one more closes the connection with GOAWAY `too_many_pings`. As in
    /// grpc-core (`GRPC_ARG_HTTP2_MAX_PING_STRIKES`), 0 tolerates any number.
    pub max_strikes: u32,
}

impl Default for PingPolicy {
    fn default() -> Self {
        PingPolicy {
            min_interval: Duration::from_secs(300),
            max_strikes: 2,
        }
    }
}

/// Where a frame boundary is in one direction of the byte stream.
#[derive(Debug, Default)]
struct FrameScanner {
    /// Bytes still to pass before the next frame header (the preface, or a frame's payload).
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    filled: usize,
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    kind: u8,
    flags: u8,
    stream: u32,
}

fn payload_len(header: &[u8]) -> usize {
    (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2])
}

impl FrameScanner {
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.filled == 0
    }

    /// How many bytes of `buf` can go out without passing the end of the current frame.
    fn frame_limit(&self, buf: &[u8]) -> usize {
        if self.skip > 0 {
            self.skip.min(buf.len())
        } else if self.filled > 0 {
            (FRAME_HEADER_LEN - self.filled).min(buf.len())
        } else if buf.len() >= FRAME_HEADER_LEN {
            (FRAME_HEADER_LEN + payload_len(buf)).min(buf.len())
        } else {
            buf.len()
        }
    }

    /// Moves past `bytes`, calling `on_header` for every complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == FRAME_HEADER_LEN {
                self.filled = 0;
                self.skip = payload_len(&self.header);
                let h = &self.header;
                on_header(FrameHeader {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                });
            }
        }
    }
}

/// A server-side HTTP/2 connection with the ping policy applied.
pub(crate) struct Policed<IO> {
    io: IO,
    policy: PingPolicy,
    /// Connections closed for pinging too often, for the sandbox's stats.
    closed_count: Arc<AtomicU64>,
    read: FrameScanner,
    write: FrameScanner,
    strikes: u32,
    last_ping: Option<Instant>,
    last_client_stream: u32,
    /// The GOAWAY frame waiting for a frame boundary, and how much of it is written.
    goaway: Option<(Vec<u8>, usize)>,
    closed: bool,
    peer: Option<std::net::SocketAddr>,
}

impl<IO> Policed<IO> {
    pub(crate) fn new(
        io: IO,
        policy: PingPolicy,
        closed_count: Arc<AtomicU64>,
        peer: Option<std::net::SocketAddr>,
    ) -> Self {
        Policed {
            io,
            policy,
            closed_count,
            read: FrameScanner {
                skip: PREFACE_LEN,
                ..FrameScanner::default()
            },
            write: FrameScanner::default(),
            strikes: 0,
            last_ping: None,
            last_client_stream: 0,
            goaway: None,
            closed: false,
            peer,
        }
    }

    fn on_client_frame(&mut self, header: FrameHeader) {
        match header.kind {
            TYPE_HEADERS => self.last_client_stream = self.last_client_stream.max(header.stream),
            TYPE_PING if header.flags & FLAG_ACK == 0 => {
                let now = Instant::now();
                if self
                    .last_ping
                    .is_some_and(|last| now.duration_since(last) < self.policy.min_interval)
                {
                    self.strikes = self.strikes.saturating_add(1);
                }
                self.last_ping = Some(now);
                if self.policy.max_strikes > 0
                    && self.strikes > self.policy.max_strikes
                    && self.goaway.is_none()
                {
                    tracing::warn!(
                        peer = ?self.peer,
                        strikes = self.strikes,
                        min_interval_ms = self.policy.min_interval.as_millis() as u64,
                        "sandbox Pub/Sub: the client pings too often; closing the connection with GOAWAY too_many_pings"
                    );
                    self.goaway = Some((goaway_frame(self.last_client_stream), 0));
                }
            }
            _ => {}
        }
    }
}

/// GOAWAY (RFC 9113, section 6.8): last stream id, ENHANCE_YOUR_CALM, debug data.
fn goaway_frame(last_stream: u32) -> Vec<u8> {
    let len = 8 + TOO_MANY_PINGS.len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + len);
    frame.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    frame.extend_from_slice(&[TYPE_GOAWAY, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame.extend_from_slice(TOO_MANY_PINGS);
    frame
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed by the ping policy (GOAWAY too_many_pings)",
    )
}

impl<IO: AsyncWrite + Unpin> Policed<IO> {
    /// Writes a pending GOAWAY once the server is between two frames. Ready(true) once the
    /// connection is closed by the policy.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.closed {
            return Poll::Ready(Ok(true));
        }
        if !self.write.at_boundary() {
            return Poll::Ready(Ok(false));
        }
        let Some((frame, written)) = self.goaway.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        while *written < frame.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &frame[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.closed = true;
        self.closed_count.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(true))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Policed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            // End of stream: the server stack closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let mut headers = Vec::new();
        this.read.feed(&buf.filled()[before..], |h| headers.push(h));
        for header in headers {
            this.on_client_frame(header);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Policed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if ready!(this.poll_goaway(cx))? {
            return Poll::Ready(Err(closed_error()));
        }
        // Never past the end of a frame, so a GOAWAY can always go in between two.
        let limit = this.write.frame_limit(buf);
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..limit]))?;
        let Policed {
            write,
            strikes,
            last_ping,
            ..
        } = this;
        write.feed(&buf[..n], |h| {
            if h.kind == TYPE_DATA || h.kind == TYPE_HEADERS {
                *strikes = 0;
                *last_ping = None;
            }
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if ready!(this.poll_goaway(cx))? {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> tonic::transport::server::Connected for Policed<IO> {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_scanner_finds_headers_split_across_reads_and_limits_writes_to_one_frame() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(TYPE_HEADERS, 4, 3, &[1, 2, 3]));
        bytes.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
        let mut scanner = FrameScanner {
            skip: PREFACE_LEN,
            ..FrameScanner::default()
        };
        let mut seen = Vec::new();
        for chunk in bytes.chunks(5) {
            scanner.feed(chunk, |h| seen.push((h.kind, h.stream)));
        }
        assert_eq!(seen, vec![(TYPE_HEADERS, 3), (TYPE_PING, 0)]);
        assert!(scanner.at_boundary());

        let two = [
            frame(TYPE_DATA, 0, 1, &[9; 4]),
            frame(TYPE_DATA, 0, 1, &[9; 2]),
        ]
        .concat();
        assert_eq!(FrameScanner::default().frame_limit(&two), 13);
    }

    #[test]
    fn the_goaway_frame_says_enhance_your_calm_too_many_pings() {
        let f = goaway_frame(5);
        assert_eq!(payload_len(&f), f.len() - FRAME_HEADER_LEN);
        assert_eq!(f[3], TYPE_GOAWAY);
        assert_eq!(&f[9..13], &5u32.to_be_bytes());
        assert_eq!(&f[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&f[17..], TOO_MANY_PINGS);
    }
}
