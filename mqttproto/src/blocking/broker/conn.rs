//! The transports of one connection (TCP, Unix socket, TLS, WebSocket, WebSocket over TLS),
//! split between the connection's reader thread and its writer thread.
//!
//! Blocking TLS and WebSocket streams cannot be split into independent halves: both directions
//! share one protocol state. So the pieces are:
//!
//! * the socket, shared (`Arc<Stream>`, read and written through `&Stream`), not duplicated: the
//!   reader reads it, the writer writes it, the owner keeps a reference to shut the connection
//!   down ([`Stream::shutdown`] unblocks both threads). A connection therefore costs the process
//!   one file descriptor. Its read and write timeouts are the socket's own (as they would be for
//!   duplicated descriptors too): only the reader sets them, during the handshakes, before the
//!   writer exists, and clears them when the handshakes are done;
//! * for TLS, the rustls [`ServerConnection`] behind a mutex, locked only to move bytes in or
//!   out of it (never across socket I/O);
//! * a [`Sink`] behind a mutex: every byte written to the socket goes through it, in order. The
//!   writer thread writes MQTT bytes through it; the reader thread writes what the protocols
//!   answer on their own (TLS alerts and post-handshake messages, WebSocket pongs and close
//!   replies). A reader can therefore wait for a writer stuck on a stalled peer, which stalls
//!   only that peer's own connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::server::framing::{hold_read_size, Framer, Framing, HOLD_MIN};
use bytes::{Buf, Bytes, BytesMut};
use rustls::{ServerConfig, ServerConnection};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{Message, WebSocket};

/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK: usize = 4096;
/// The most one read of a large packet asks for (and zeroes first).
const READ_WINDOW: usize = 64 * 1024;
/// Pending writes one vectored write takes at most.
const WRITE_BATCH: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while holding the lock left consistent data behind for our uses
    // (byte buffers); the connection fails on its own if not.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connected socket the broker serves: accepted by a listener, or handed to
/// [`BrokerHandle::accept_stream`](super::BrokerHandle::accept_stream).
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(UnixStream),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

#[cfg(unix)]
impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl Stream {
    /// Shuts both directions down: blocked reads return end of stream, blocked writes fail.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Reads, failing with `TimedOut` once `deadline` (if any) has passed. The read timeout it
    /// sets is the socket's: only the reader reads, and it clears the timeout after the
    /// handshakes ([`open`]).
    fn read_by(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ));
            }
            self.set_read_timeout(Some(left))?;
        }
        (&mut &*self).read(buf)
    }
}

// Through a shared reference, as `&TcpStream` and `&UnixStream` allow: the reader and the
// writer use one socket (one file descriptor) at the same time.
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => (&mut &*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => (&mut &*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).write_vectored(bufs),
            #[cfg(unix)]
            Stream::Unix(s) => (&mut &*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every buffer, in order, with vectored writes.
pub(super) fn write_all_vectored(w: &mut impl Write, bufs: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = {
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            let mut count = 0;
            for (slot, b) in slices.iter_mut().zip(bufs.iter()) {
                *slot = IoSlice::new(b);
                count += 1;
            }
            match w.write_vectored(&slices[..count]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = bufs.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                bufs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        while bufs.front().is_some_and(Bytes::is_empty) {
            bufs.pop_front();
        }
    }
    Ok(())
}

// ---- writing ------------------------------------------------------------------------------

/// Where every byte bound for the socket goes (see the module documentation).
pub(super) struct Sink {
    sock: Arc<Stream>,
    tls: Option<Arc<Mutex<ServerConnection>>>,
    /// TLS records taken out of the connection, on their way to the socket.
    records: Vec<u8>,
}

impl Sink {
    /// Writes `bufs` (emptying it): as they are, or through TLS.
    fn write_bufs(&mut self, bufs: &mut VecDeque<Bytes>) -> io::Result<()> {
        match &self.tls {
            None => write_all_vectored(&mut &*self.sock, bufs),
            Some(tls) => {
                {
                    let mut conn = lock(tls);
                    for b in bufs.drain(..) {
                        conn.writer().write_all(&b)?;
                    }
                }
                self.flush_tls()
            }
        }
    }

    /// Writes out whatever TLS records the connection holds.
    fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        loop {
            self.records.clear();
            {
                let mut conn = lock(tls);
                while conn.wants_write() {
                    conn.write_tls(&mut self.records)?;
                }
            }
            if self.records.is_empty() {
                return Ok(());
            }
            (&*self.sock).write_all(&self.records)?;
            if self.records.capacity() > 64 * 1024 {
                self.records = Vec::new();
            }
        }
    }

    /// Ends the stream: TLS close_notify, then the socket's write side.
    fn close(&mut self) {
        if let Some(tls) = &self.tls {
            lock(tls).send_close_notify();
            let _ = self.flush_tls();
        }
        self.sock.shutdown_write();
    }
}

/// The writer thread's side of a connection.
pub(super) struct Writer {
    sink: Arc<Mutex<Sink>>,
    ws: bool,
    /// Set by the reader once the peer's WebSocket Close was answered (by tungstenite).
    ws_closed: Arc<AtomicBool>,
}

impl Writer {
    /// Writes a batch of MQTT bytes (emptying it). Over WebSocket, the batch goes out as one
    /// binary frame (a frame may hold several packets [MQTT-6.0.0-2]).
    pub(super) fn write_batch(&mut self, batch: &mut VecDeque<Bytes>) -> io::Result<()> {
        if self.ws {
            let len: usize = batch.iter().map(Bytes::len).sum();
            let mut payload = BytesMut::with_capacity(len);
            for b in batch.drain(..) {
                payload.extend_from_slice(&b);
            }
            let mut framed = Vec::with_capacity(len + 14);
            Frame::message(payload.freeze(), OpCode::Data(Data::Binary), true)
                .format(&mut framed)
                .map_err(io::Error::other)?;
            batch.push_back(Bytes::from(framed));
        }
        lock(&self.sink).write_bufs(batch)
    }

    /// Ends the stream: a WebSocket Close frame, TLS close_notify, the socket's write side.
    pub(super) fn close(&mut self) {
        let mut sink = lock(&self.sink);
        if self.ws && !self.ws_closed.load(Ordering::Acquire) {
            let mut framed = Vec::new();
            if Frame::close(None).format(&mut framed).is_ok() {
                let _ = sink.write_bufs(&mut VecDeque::from([Bytes::from(framed)]));
            }
        }
        sink.close();
    }
}

// ---- reading ------------------------------------------------------------------------------

/// The byte stream under WebSocket: the socket, or TLS over it.
pub(super) struct Source {
    sock: Arc<Stream>,
    tls: Option<TlsRead>,
    /// While handshaking: when to give up.
    deadline: Option<Instant>,
}

struct TlsRead {
    conn: Arc<Mutex<ServerConnection>>,
    sink: Arc<Mutex<Sink>>,
    /// Bytes read from the socket and not yet taken by rustls.
    cipher: Vec<u8>,
    pos: usize,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.sock.read_by(buf, self.deadline);
        };
        loop {
            {
                let mut conn = lock(&tls.conn);
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if tls.pos < tls.cipher.len() {
                    let mut rest = &tls.cipher[tls.pos..];
                    let taken = conn.read_tls(&mut rest)?;
                    if taken == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS input buffer full",
                        ));
                    }
                    tls.pos += taken;
                    let state = conn.process_new_packets();
                    let answer = conn.wants_write();
                    drop(conn);
                    if answer {
                        // An alert, a key update, session tickets.
                        lock(&tls.sink).flush_tls()?;
                    }
                    if let Err(e) = state {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    continue;
                }
            }
            tls.cipher.resize(READ_CHUNK.max(tls.cipher.capacity()), 0);
            let n = self.sock.read_by(&mut tls.cipher, self.deadline)?;
            tls.cipher.truncate(n);
            tls.pos = 0;
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

/// The WebSocket stream of the reader: reads from the [`Source`], writes (the handshake
/// response, pongs, close replies) through the [`Sink`].
pub(super) struct WsDuplex {
    source: Source,
    sink: Arc<Mutex<Sink>>,
}

impl Read for WsDuplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.source.read(buf)
    }
}

impl Write for WsDuplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut one = VecDeque::from([Bytes::copy_from_slice(buf)]);
        lock(&self.sink).write_bufs(&mut one)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reader thread's side of a connection.
pub(super) enum Reader {
    // The variants' contents stay private to this module.
    /// MQTT straight over the socket or TLS.
    Raw(Source, RawInput),
    /// MQTT in WebSocket binary frames; the flag tells the writer that the close handshake
    /// is done.
    Ws(Box<WebSocket<WsDuplex>>, Arc<AtomicBool>),
}

/// What the reader of a raw (not WebSocket) connection keeps between reads.
#[derive(Default)]
pub(super) struct RawInput {
    buf: BytesMut,
    /// Packet boundaries in what is read.
    framer: Framer,
    /// The size of the large packet `buf` holds the start of (0: none).
    held: usize,
}

impl Reader {
    /// Packets larger than `max` are not gathered (see `server::framing::Framer::new`).
    pub(super) fn limit_packet_size(&mut self, max: u32) {
        if let Reader::Raw(_, input) = self {
            input.framer = Framer::new(max);
        }
    }

    /// The next bytes from the peer, whole packets first (a packet over 64 KiB comes in one
    /// piece, see `server::framing`); `None` at the end of the stream (or a WebSocket close).
    pub(super) fn read_chunk(&mut self) -> io::Result<Option<BytesMut>> {
        match self {
            Reader::Raw(source, input) => loop {
                let start = input.buf.len();
                let ask = match input.held {
                    0 => READ_CHUNK,
                    total => hold_read_size(start, total),
                };
                // Room for what the packet needs, but zeroed (safe `Read` needs initialised
                // bytes) only for what one read can bring: a read returns a few KiB over TLS,
                // and a peer can trickle bytes, so zeroing all the room each time would cost
                // far more than the bytes.
                input.buf.reserve(ask);
                input.buf.resize(start + ask.min(READ_WINDOW), 0);
                let read = loop {
                    match source.read(&mut input.buf[start..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let n = match read {
                    Ok(n) => n,
                    Err(e) => {
                        input.buf.truncate(start);
                        return Err(e);
                    }
                };
                input.buf.truncate(start + n);
                if n == 0 {
                    return Ok(None);
                }
                match input.framer.scan(&input.buf) {
                    Framing::All => {
                        input.held = 0;
                        let bytes = input.buf.split();
                        if input.buf.capacity() > HOLD_MIN {
                            // What is left of a buffer grown for a large packet: later small
                            // packets read into it would keep it all alive.
                            input.buf = BytesMut::new();
                        }
                        return Ok(Some(bytes));
                    }
                    Framing::Hold { whole, total } => {
                        input.held = total;
                        if whole > 0 {
                            return Ok(Some(input.buf.split_to(whole)));
                        }
                    }
                }
            },
            Reader::Ws(ws, closed) => loop {
                let read = ws.read();
                if !ws.can_write() {
                    // The peer's Close was answered: no Close frame from the writer.
                    closed.store(true, Ordering::Release);
                }
                match read {
                    Ok(Message::Binary(data)) if data.is_empty() => {}
                    Ok(Message::Binary(data)) => return Ok(Some(BytesMut::from(data))),
                    Ok(Message::Text(_)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a WebSocket text frame: MQTT travels in binary frames \
                             [MQTT-6.0.0-1]",
                        ))
                    }
                    Ok(Message::Close(_)) => return Ok(None),
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                    Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    ) => return Ok(None),
                    Err(tungstenite::Error::Io(e)) => return Err(e),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            },
        }
    }
}

// ---- handshakes ---------------------------------------------------------------------------

/// What runs over an accepted socket before MQTT.
#[derive(Clone)]
pub(super) enum Wrap {
    Plain,
    Tls(Arc<ServerConfig>),
    Ws(Arc<str>),
    Wss(Arc<ServerConfig>, Arc<str>),
}

/// A connection after its handshakes.
pub(super) struct Opened {
    pub(super) reader: Reader,
    pub(super) writer: Writer,
    /// The socket, for the owner and the writer to shut it down (the same descriptor as the
    /// reader's and the writer's, not a duplicate).
    pub(super) killer: Arc<Stream>,
    /// The DER of the client's TLS certificate (the leaf), if it sent one.
    pub(super) client_cert: Option<Bytes>,
}

/// Runs the handshakes of `wrap` over `sock`, within `timeout`.
///
/// The socket's timeouts bound the handshakes' reads (to the deadline) and writes; they are
/// the socket's own, shared by every holder of `sock`, which is why they are set only here,
/// before the writer thread exists, and cleared before returning.
pub(super) fn open(sock: Arc<Stream>, wrap: &Wrap, timeout: Duration) -> io::Result<Opened> {
    let deadline = Instant::now() + timeout;
    let killer = sock.clone();
    let (tls_config, ws_path) = match wrap {
        Wrap::Plain => (None, None),
        Wrap::Tls(c) => (Some(c), None),
        Wrap::Ws(p) => (None, Some(p)),
        Wrap::Wss(c, p) => (Some(c), Some(p)),
    };
    let read_sock = sock;
    let mut client_cert = None;
    let tls = match tls_config {
        None => None,
        Some(config) => {
            read_sock.set_timeouts(Some(timeout))?;
            let mut conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
            tls_handshake(&mut conn, &read_sock, deadline)?;
            client_cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Bytes::copy_from_slice(c.as_ref()));
            // The writer encrypts whatever it is given; its queue is bounded elsewhere.
            conn.set_buffer_limit(None);
            Some(Arc::new(Mutex::new(conn)))
        }
    };
    let sink = Arc::new(Mutex::new(Sink {
        sock: read_sock.clone(),
        tls: tls.clone(),
        records: Vec::new(),
    }));
    let source = Source {
        sock: read_sock,
        tls: tls.map(|conn| TlsRead {
            conn,
            sink: sink.clone(),
            cipher: Vec::new(),
            pos: 0,
        }),
        deadline: Some(deadline),
    };
    let ws_closed = Arc::new(AtomicBool::new(false));
    let reader = match ws_path {
        None => Reader::Raw(source, RawInput::default()),
        Some(path) => {
            source.sock.set_timeouts(Some(timeout))?;
            let duplex = WsDuplex {
                source,
                sink: sink.clone(),
            };
            let path = path.clone();
            #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
            let ws = tungstenite::accept_hdr(duplex, move |req: &Request, resp: Response| {
                check_ws_request(&path, req, resp)
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            Reader::Ws(Box::new(ws), ws_closed.clone())
        }
    };
    let mut reader = reader;
    let source = match &mut reader {
        Reader::Raw(source, _) => source,
        Reader::Ws(ws, _) => &mut ws.get_mut().source,
    };
    source.deadline = None;
    source.sock.set_timeouts(None)?;
    let writer = Writer {
        sink,
        ws: ws_path.is_some(),
        ws_closed,
    };
    Ok(Opened {
        reader,
        writer,
        killer,
        client_cert,
    })
}

/// The server side of the TLS handshake, bounded by `deadline`.
fn tls_handshake(conn: &mut ServerConnection, sock: &Stream, deadline: Instant) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut &*sock)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        let n = sock.read_by(&mut buf, Some(deadline))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed during the TLS handshake",
            ));
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
            if let Err(e) = conn.process_new_packets() {
                // Send the alert, then give up.
                while conn.wants_write() {
                    if conn.write_tls(&mut &*sock).is_err() {
                        break;
                    }
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Serves `path` only (404 elsewhere), answering the `mqtt` subprotocol when the client offers
/// it [MQTT-6.0.0-4].
#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
fn check_ws_request(
    path: &str,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    if req.uri().path() != path {
        let mut e = ErrorResponse::new(Some("no MQTT here".to_string()));
        *e.status_mut() = StatusCode::NOT_FOUND;
        return Err(e);
    }
    let offers_mqtt = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
    if offers_mqtt {
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_handle_partial_progress() {
        /// Accepts at most 3 bytes per write.
        struct Short(Vec<u8>);
        impl Write for Short {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Short(Vec::new());
        let mut bufs: VecDeque<Bytes> = ["hello", "", " wor", "ld", "!"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        write_all_vectored(&mut out, &mut bufs).unwrap();
        assert_eq!(out.0, b"hello world!");
    }
}
