//! The blocking client's transports: TCP, TLS (rustls' [`StreamOwned`]), WebSocket
//! (tungstenite, subprotocol `mqtt`) and WebSocket over TLS, and Unix domain sockets.
//!
//! A connection is made and its handshakes (TLS, WebSocket) run with blocking reads bounded by
//! the connect timeout. Then the socket is cloned: a reader thread does the blocking reads of
//! raw bytes and hands them to the client's I/O thread, which feeds them into the layers above
//! the socket (TLS records, WebSocket frames) through [`Wire`], and writes through the same
//! layers straight to the socket. So the I/O thread never blocks in a read, and waits for one
//! channel only: commands from the application and bytes from the reader alike.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls::{ClientConnection, StreamOwned};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message as WsMessage;

use crate::transport::{Target, TransportError, TransportOptions};

/// How long one blocking write may take before the connection is considered lost (a broker
/// that stopped reading).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the reader thread wakes up from a read to check whether it should stop.
const READER_TICK: Duration = Duration::from_millis(500);

/// A connected byte stream of the application's own, for
/// [`ClientBuilder::custom_transport`](super::ClientBuilder::custom_transport) (a stream
/// through a SOCKS proxy, an already connected socket, …). It carries MQTT bytes as they are:
/// the client adds no TLS or WebSocket layer over it.
///
/// The client writes to it on its I/O thread and reads from a second handle on a reader
/// thread, as it does with its own sockets.
pub trait Transport: Read + Write + Send + 'static {
    /// A handle that reads the same stream, used by another thread (`TcpStream::try_clone`).
    fn try_clone_reader(&self) -> io::Result<Box<dyn Read + Send>>;
    /// Shuts the stream down in both directions; a read blocked on the reader handle must then
    /// end (otherwise the reader thread lingers until the stream ends by itself).
    fn shutdown(&self) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn try_clone_reader(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.try_clone()?))
    }

    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, std::net::Shutdown::Both)
    }
}

#[cfg(unix)]
impl Transport for UnixStream {
    fn try_clone_reader(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.try_clone()?))
    }

    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, std::net::Shutdown::Both)
    }
}

/// A connected socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    Custom(Box<dyn Transport>),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            #[cfg(unix)]
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
            Socket::Custom(_) => return Err(io::ErrorKind::Unsupported.into()),
        })
    }

    /// Shuts both directions down (unblocks a reader blocked on a clone).
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            #[cfg(unix)]
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Custom(s) => s.shutdown(),
        };
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(t),
            #[cfg(unix)]
            Socket::Unix(s) => s.set_read_timeout(t),
            Socket::Custom(_) => Ok(()),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(t),
            #[cfg(unix)]
            Socket::Unix(s) => s.set_write_timeout(t),
            Socket::Custom(_) => Ok(()),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.read(buf),
            Socket::Custom(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.write(buf),
            Socket::Custom(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Socket::Unix(s) => s.flush(),
            Socket::Custom(s) => s.flush(),
        }
    }
}

/// The bottom of a connection's layers. During the handshakes it reads from the socket
/// (blocking, bounded by the socket's read timeout); afterwards it reads only what the reader
/// thread handed over, and reports [`io::ErrorKind::WouldBlock`] when that is used up. Writes
/// always go to the socket.
pub(crate) struct Wire {
    sock: Socket,
    inbox: BytesMut,
    eof: bool,
    direct: bool,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.direct {
            return self.sock.read(buf);
        }
        if self.inbox.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = self.inbox.len().min(buf.len());
        buf[..n].copy_from_slice(&self.inbox[..n]);
        self.inbox.advance(n);
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

type Tls<S> = StreamOwned<ClientConnection, S>;

/// A connected byte stream: the layers over the socket.
pub(crate) enum Stream {
    Plain(Wire),
    Tls(Box<Tls<Wire>>),
    Ws(Box<WebSocket<Wire>>),
    Wss(Box<WebSocket<Tls<Wire>>>),
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Stream {
    fn wire(&mut self) -> &mut Wire {
        match self {
            Stream::Plain(w) => w,
            Stream::Tls(s) => &mut s.sock,
            Stream::Ws(ws) => ws.get_mut(),
            Stream::Wss(ws) => &mut ws.get_mut().sock,
        }
    }

    /// Bytes the reader thread read from the socket.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.wire().inbox.extend_from_slice(bytes);
    }

    /// The reader thread saw the end of the stream.
    pub(crate) fn set_eof(&mut self) {
        self.wire().eof = true;
    }

    /// Appends the MQTT bytes available so far to `out`; `Ok(true)` when the stream ended.
    pub(crate) fn read_available(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        match self {
            Stream::Plain(_) | Stream::Tls(_) => loop {
                let r = match self {
                    Stream::Plain(w) => w.read(&mut chunk),
                    Stream::Tls(s) => s.read(&mut chunk),
                    _ => return Ok(false),
                };
                match r {
                    Ok(0) => return Ok(true),
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Stream::Ws(ws) => ws_read(ws, out),
            Stream::Wss(ws) => ws_read(ws, out),
        }
    }

    /// Writes `data` and flushes.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(w) => {
                w.write_all(data)?;
                w.flush()
            }
            Stream::Tls(s) => {
                s.write_all(data)?;
                s.flush()
            }
            Stream::Ws(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .map_err(io::Error::other),
            Stream::Wss(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .map_err(io::Error::other),
        }
    }

    /// Closes the layers (TLS close_notify, WebSocket close frame) as far as possible without
    /// waiting for the peer, then the socket.
    pub(crate) fn close(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Stream::Ws(ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
            }
            Stream::Wss(ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                let tls = ws.get_mut();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
        self.wire().sock.shutdown();
    }
}

fn ws_read<S: Read + Write>(ws: &mut WebSocket<S>, out: &mut BytesMut) -> io::Result<bool> {
    loop {
        match ws.read() {
            Ok(WsMessage::Binary(data)) => out.extend_from_slice(&data),
            Ok(WsMessage::Close(_)) => return Ok(true),
            Ok(WsMessage::Text(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a WebSocket text frame: MQTT travels in binary frames [MQTT-6.0.0-1]",
                ))
            }
            // Pings are answered by tungstenite (on the next flush, below).
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if would_block(&e) => {
                let _ = ws.flush();
                return Ok(false);
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(true)
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(true)
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// A connection made by [`connect`]: the layered stream for the I/O thread and a clone of the
/// socket for the reader thread.
pub(crate) struct Connection {
    pub(crate) stream: Stream,
    pub(crate) reader: Box<dyn Read + Send>,
}

/// A connection over the application's own transport (MQTT bytes as they are).
pub(crate) fn custom(transport: Box<dyn Transport>) -> io::Result<Connection> {
    let reader = transport.try_clone_reader()?;
    Ok(Connection {
        stream: Stream::Plain(Wire {
            sock: Socket::Custom(transport),
            inbox: BytesMut::new(),
            eof: false,
            direct: false,
        }),
        reader,
    })
}

fn tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host name has no address")))
}

fn tls_over(
    host: &str,
    wire: Wire,
    options: &TransportOptions,
    websocket: bool,
) -> Result<Tls<Wire>, TransportError> {
    let config_err = |e: crate::transport::tls::Error| match e {
        crate::transport::tls::Error::Config(m) => TransportError::TlsConfig(m),
        crate::transport::tls::Error::Io(e) => TransportError::TlsConfig(e.to_string()),
    };
    let config = options.tls.client_config(websocket).map_err(config_err)?;
    let name = options.tls.server_name(host).map_err(config_err)?;
    let conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let mut s = StreamOwned::new(conn, wire);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| {
            let e = if would_block(&e) {
                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
            } else {
                e
            };
            TransportError::Connect {
                target: host.to_string(),
                source: e,
            }
        })?;
    }
    Ok(s)
}

fn ws_over<S: Read + Write>(url: &str, stream: S) -> Result<WebSocket<S>, TransportError> {
    let ws_err = |reason: String| TransportError::WebSocket {
        target: url.to_string(),
        reason,
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| ws_err(e.to_string()))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    match tungstenite::client::client(request, stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(ws_err("timed out".into())),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(ws_err(e.to_string())),
    }
}

/// Connects to `target` and runs the TLS and WebSocket handshakes, every step bounded by
/// `timeout`. TCP connections have Nagle's algorithm off (`TCP_NODELAY`).
pub(crate) fn connect(
    target: &Target,
    options: &TransportOptions,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    let err = |source| TransportError::Connect {
        target: target.to_string(),
        source,
    };
    let timeout = timeout.max(Duration::from_millis(1));
    let sock = match target {
        Target::Tcp { host, port } | Target::Tls { host, port } => {
            Socket::Tcp(tcp(host, *port, timeout).map_err(err)?)
        }
        Target::WebSocket { host, port, .. } => {
            Socket::Tcp(tcp(host, *port, timeout).map_err(err)?)
        }
        #[cfg(unix)]
        Target::Unix(path) => Socket::Unix(UnixStream::connect(path).map_err(err)?),
    };
    sock.set_read_timeout(Some(timeout)).map_err(err)?;
    sock.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(err)?;
    let reader = sock.try_clone().map_err(err)?;
    let wire = Wire {
        sock,
        inbox: BytesMut::new(),
        eof: false,
        direct: true,
    };
    let mut stream = match target {
        Target::Tcp { .. } => Stream::Plain(wire),
        #[cfg(unix)]
        Target::Unix(_) => Stream::Plain(wire),
        Target::Tls { host, .. } => Stream::Tls(Box::new(tls_over(host, wire, options, false)?)),
        Target::WebSocket { host, tls, .. } => {
            let url = target.to_string();
            if *tls {
                let s = tls_over(host, wire, options, true)?;
                Stream::Wss(Box::new(ws_over(&url, s)?))
            } else {
                Stream::Ws(Box::new(ws_over(&url, wire)?))
            }
        }
    };
    // From now on the reader thread reads; its reads wake up regularly to check for the end.
    reader.set_read_timeout(Some(READER_TICK)).map_err(err)?;
    stream.wire().direct = false;
    Ok(Connection {
        stream,
        reader: Box::new(reader),
    })
}
