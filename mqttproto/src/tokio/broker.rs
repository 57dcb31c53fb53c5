//! The async broker: [`Broker`] drives the sans-I/O [`proto::broker::Broker`](CoreBroker) on
//! tokio.
//!
//! # Architecture
//!
//! One **owner task** holds the core broker and is the only code that touches it. Around it:
//!
//! * one **acceptor task** per listener (TCP with `TCP_NODELAY`, or a Unix socket), which hands
//!   new sockets to the owner;
//! * per connection, a **reader task** that forwards `(connection, bytes)` to the owner over a
//!   bounded channel (so a busy owner slows readers down instead of buffering without bound);
//!   a TCP or Unix-socket reader holds no buffer while its socket is idle;
//!   and a **writer task** that drains a bounded per-connection queue (an outbox that allocates
//!   nothing while empty), taking everything pending into vectored writes;
//! * per CONNECT, when an [`Authenticator`] is configured, a short task that awaits its verdict
//!   and sends it back to the owner, which then answers the client. The owner never awaits an
//!   authenticator;
//! * per step of an enhanced authentication ([`EnhancedAuthenticator`], section 4.12; see
//!   [`crate::server::enhanced`]), a job on tokio's blocking pool, one at a time per
//!   connection, whose decision (a challenge, CONNACK, AUTH Success, DISCONNECT) the owner
//!   then sends.
//!
//! The owner loop waits for the next of: bytes or a closed socket from a reader, a new
//! connection, a verdict, the core's next deadline (`poll_timeout`, on tokio's clock, so tests
//! can use the paused clock), and shutdown. After each input it drains the core's transmits and
//! events.
//!
//! # Slow consumers
//!
//! The owner never blocks on a connection: it hands bytes to the connection's writer without
//! waiting. When a writer falls behind (more than half of [`BrokerConfig::max_outbound_bytes`]
//! pending), the owner stops taking input for at most 100 ms, until the writer is down to a
//! quarter, so that a client reading slower than others publish slows the publishers down
//! (through TCP) rather than overflowing. When a connection's outbound queue is full (more than
//! [`BrokerConfig::outbound_queue_capacity`] pending writes, or more than
//! [`BrokerConfig::max_outbound_bytes`] pending bytes), the client is not keeping up and is
//! **disconnected** (its socket is closed, as the specification allows a server to do at any
//! time; no DISCONNECT can be sent through a full queue). It is treated as a lost connection:
//! its will is published, and if its session is persistent (Session Expiry Interval above 0)
//! the session lives on. QoS 1 and 2 messages that were in flight stay in the session and are
//! resent when the client resumes it; new messages are queued for the offline session up to
//! the offline-queue bound ([`BrokerConfig::with_max_queued_messages`]). QoS 0 messages in the
//! dropped queue are lost. One slow or stalled subscriber therefore holds up the others for at
//! most 100 ms at a time and 1 s in all, after which it earns at most a tenth of the time
//! that passes (a reader that stays slow gets disconnected instead of pacing everyone).
//!
//! # Example
//!
//! A broker on a free port, and our async [`Client`](crate::tokio::Client) talking to it:
//!
//! ```
//! use mqttproto::proto::QoS;
//! use mqttproto::tokio::broker::{Broker, BrokerConfig, ListenAddr};
//! use mqttproto::tokio::Client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BrokerConfig::default()
//!     .listen("127.0.0.1:0".parse::<ListenAddr>()?)
//!     .with_max_connections(100);
//! let broker = Broker::bind(config).await?;
//! let url = broker.local_addrs()[0].to_string(); // mqtt://127.0.0.1:<the port picked>
//! let handle = broker.spawn();
//!
//! let client = Client::builder(&url)?.client_id("demo").build();
//! let mut greetings = client.subscribe("greetings/#", QoS::AtLeastOnce).await?;
//! client.publish("greetings/world", "hello", QoS::AtLeastOnce).await?;
//! let message = greetings.recv().await.expect("a message");
//! assert_eq!(&message.payload[..], b"hello");
//! client.disconnect().await?;
//!
//! // Stop accepting, disconnect every client with 0x8B (Server shutting down), flush.
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttproto_core::broker::{Broker as CoreBroker, BrokerEvent, ConnectionHandle};
use mqttproto_core::{Error, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::server::enhanced::{AuthJob, AuthJobResult, AuthTable, OnConnect};
use crate::server::framing::{hold_read_size, Framer, Framing, INBOUND_BATCH_BYTES};
use crate::server::pause::PauseCredit;
pub use crate::server::tls::{ClientCertificates, ServerTlsOptions};
use crate::server::{publish_verdict, subscribe_verdicts};
pub use crate::server::{
    AuthContext, AuthConversation, AuthStep, Authorizer, ClientInfo, ConnectRequest,
    EnhancedAuthenticator, ListenAddr, ListenAddrError, Listener, PeerAddr,
};

/// Configuration of a [`Broker`]: the shared [`crate::server::BrokerConfig`] with an async
/// [`Authenticator`].
pub type BrokerConfig = crate::server::BrokerConfig<dyn Authenticator>;

const TARGET: &str = "mqttproto::broker";

/// Bytes asked of the socket per read at first; the size adapts between this and
/// [`READ_CHUNK_MAX`] (doubled when a read fills the space offered, halved when it uses under a
/// quarter), so that large messages cross to the owner in few chunks.
const READ_CHUNK_MIN: usize = 4096;
/// The most bytes asked of the socket per read (below glibc's mmap threshold, so that a
/// reader's buffer is never a fresh mapping).
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Inputs (chunks of bytes, closes, verdicts) buffered between readers and the owner.
const INBOUND_CAPACITY: usize = 1024;
/// Inputs the owner processes before draining the core's output.
const INBOUND_BATCH: usize = 64;
/// Pending writes one vectored write takes at most.
const WRITE_BATCH: usize = 64;
/// New sockets buffered between acceptors and the owner.
const ACCEPT_CAPACITY: usize = 64;

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = ReasonCode> + Send + 'a>>;

/// Decides whether a client may connect.
///
/// The verdict is a reason code: any code below 0x80 accepts the client; a failure code (for
/// example 0x86 Bad User Name or Password, or 0x87 Not authorized) is sent in CONNACK and the
/// connection is closed. A failure code that CONNACK cannot carry is replaced by 0x87.
///
/// Each call runs in its own task, so a slow check (a database, a remote service) delays only
/// the client it is about; the broker keeps serving everyone else meanwhile. A check that takes
/// longer than the connect timeout loses the client (the broker closes the connection).
///
/// Closures `Fn(ConnectRequest) -> impl Future<Output = ReasonCode>` implement the trait:
///
/// ```
/// use mqttproto::proto::ReasonCode;
/// use mqttproto::tokio::broker::{BrokerConfig, ConnectRequest};
///
/// let config = BrokerConfig::default().with_authenticator(|req: ConnectRequest| async move {
///     match (req.username(), req.password()) {
///         (Some("alice"), Some(b"secret")) => ReasonCode::Success,
///         _ => ReasonCode::BadUserNameOrPassword,
///     }
/// });
/// # let _ = config;
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a CONNECT.
    fn authenticate(&self, request: ConnectRequest) -> AuthFuture<'_>;
}

impl<F, Fut> Authenticator for F
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ReasonCode> + Send + 'static,
{
    fn authenticate(&self, request: ConnectRequest) -> AuthFuture<'_> {
        Box::pin(self(request))
    }
}

impl crate::server::BrokerConfig<dyn Authenticator> {
    /// Sets the [`Authenticator`].
    pub fn with_authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }
}

// ---- the broker -------------------------------------------------------------------------

enum BoundListener {
    Tcp(TcpListener, Wrap),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, SocketFile),
}

/// A Unix socket file the broker created: removed when this is dropped (the broker stopped,
/// or was never run).
#[cfg(unix)]
struct SocketFile(PathBuf);

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What runs over an accepted TCP socket before MQTT.
#[derive(Clone)]
enum Wrap {
    Plain,
    #[cfg(feature = "tls")]
    Tls(tokio_rustls::TlsAcceptor),
    #[cfg(feature = "websocket")]
    Ws(Arc<str>),
    #[cfg(all(feature = "websocket", feature = "tls"))]
    Wss(tokio_rustls::TlsAcceptor, Arc<str>),
}

impl Wrap {
    /// The transport of `listener`, its TLS configuration loaded.
    fn of(listener: &Listener) -> io::Result<Wrap> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        #[cfg(feature = "tls")]
        let acceptor = || -> io::Result<tokio_rustls::TlsAcceptor> {
            let tls = listener.tls.as_ref().ok_or_else(|| {
                invalid(format!(
                    "{} needs TLS settings (a certificate and a key)",
                    listener.addr
                ))
            })?;
            Ok(tokio_rustls::TlsAcceptor::from(Arc::new(
                tls.server_config()?,
            )))
        };
        if listener.tls.is_some() && !listener.addr.is_tls() {
            return Err(invalid(format!(
                "TLS settings given for {}, which is not a TLS listener (use mqtts:// or wss://)",
                listener.addr
            )));
        }
        #[allow(unused_variables)]
        let unavailable = |feature: &str| {
            invalid(format!(
                "{} needs mqttproto's `{feature}` feature, which this build lacks",
                listener.addr
            ))
        };
        Ok(match &listener.addr {
            #[cfg(feature = "tls")]
            ListenAddr::Tls(_) => Wrap::Tls(acceptor()?),
            #[cfg(not(feature = "tls"))]
            ListenAddr::Tls(_) => return Err(unavailable("tls")),
            #[cfg(feature = "websocket")]
            ListenAddr::Ws { path, .. } => Wrap::Ws(path.as_str().into()),
            #[cfg(not(feature = "websocket"))]
            ListenAddr::Ws { .. } => return Err(unavailable("websocket")),
            #[cfg(all(feature = "websocket", feature = "tls"))]
            ListenAddr::Wss { path, .. } => Wrap::Wss(acceptor()?, path.as_str().into()),
            #[cfg(not(all(feature = "websocket", feature = "tls")))]
            ListenAddr::Wss { .. } => return Err(unavailable("websocket` and `tls")),
            _ => Wrap::Plain,
        })
    }

    /// Runs the handshakes over `sock`.
    async fn handshake(self, sock: TcpStream) -> io::Result<(Box<dyn DynStream>, Option<Bytes>)> {
        match self {
            Wrap::Plain => Ok((Box::new(sock), None)),
            #[cfg(feature = "tls")]
            Wrap::Tls(acceptor) => {
                let (tls, cert) = super::listen::tls_accept(&acceptor, sock).await?;
                Ok((Box::new(tls), cert))
            }
            #[cfg(feature = "websocket")]
            Wrap::Ws(path) => Ok((Box::new(super::listen::ws_accept(sock, &path).await?), None)),
            #[cfg(all(feature = "websocket", feature = "tls"))]
            Wrap::Wss(acceptor, path) => {
                let (tls, cert) = super::listen::tls_accept(&acceptor, sock).await?;
                let ws = super::listen::ws_accept(tls, &path).await?;
                Ok((Box::new(ws), cert))
            }
        }
    }
}

/// A new connection for the owner.
enum NewConn {
    Tcp(TcpStream, SocketAddr, usize),
    /// A TCP connection after its TLS and/or WebSocket handshakes.
    Wrapped {
        stream: Box<dyn DynStream>,
        peer: SocketAddr,
        listener: usize,
        client_cert: Option<Bytes>,
    },
    #[cfg(unix)]
    Unix(tokio::net::UnixStream, usize),
    Other(Box<dyn DynStream>, PeerAddr),
}

impl fmt::Debug for NewConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewConn")
    }
}

/// A stream handed in through [`BrokerHandle::accept_stream`].
trait DynStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DynStream for T {}

/// What readers and authentication tasks tell the owner.
enum Inbound {
    /// Bytes read, whole packets first: a large packet comes in one piece (see
    /// [`Framer`]).
    Bytes(ConnectionHandle, BytesMut),
    Closed(ConnectionHandle),
    Verdict(ConnectionHandle, ReasonCode),
    /// A step of an enhanced authentication has run.
    AuthStep(AuthJobResult),
}

impl Inbound {
    /// The bytes it carries.
    fn len(&self) -> usize {
        match self {
            Inbound::Bytes(_, b) => b.len(),
            _ => 0,
        }
    }
}

/// An async MQTT 5 broker on tokio. See the [module documentation](self).
///
/// [`bind`](Self::bind) opens the listeners; [`run`](Self::run),
/// [`run_until`](Self::run_until) or [`spawn`](Self::spawn) serves them.
pub struct Broker {
    config: BrokerConfig,
    listeners: Vec<BoundListener>,
    local_addrs: Vec<ListenAddr>,
    accept_tx: mpsc::Sender<NewConn>,
    accept_rx: mpsc::Receiver<NewConn>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("local_addrs", &self.local_addrs)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens every listener of `config`. Fails with the first listener that cannot be bound
    /// (the error names its address).
    pub async fn bind(config: BrokerConfig) -> io::Result<Broker> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut local_addrs = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let addr = &listener.addr;
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("listening on {addr}: {e}"));
            #[cfg(unix)]
            if let ListenAddr::Unix(path) = addr {
                #[cfg(feature = "tls")]
                if listener.tls.is_some() {
                    return Err(named(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "TLS settings given for a Unix socket",
                    )));
                }
                let l = bind_unix(path).map_err(named)?;
                local_addrs.push(ListenAddr::Unix(path.clone()));
                listeners.push(BoundListener::Unix(l, SocketFile(path.clone())));
                continue;
            }
            let Some(a) = addr.socket_addr() else {
                continue;
            };
            let wrap = Wrap::of(listener).map_err(named)?;
            let l = TcpListener::bind(a).await.map_err(named)?;
            local_addrs.push(addr.with_socket_addr(l.local_addr().map_err(named)?));
            listeners.push(BoundListener::Tcp(l, wrap));
        }
        if listeners.is_empty() {
            tracing::debug!(target: TARGET, "no listener: only streams from accept_stream");
        }
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_CAPACITY);
        Ok(Broker {
            config,
            listeners,
            local_addrs,
            accept_tx,
            accept_rx,
        })
    }

    /// The addresses listened on, in the order of [`BrokerConfig::listeners`], with the ports
    /// the system picked for port 0.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.local_addrs
    }

    /// Serves until the future is dropped, which stops the broker abruptly: the listeners close,
    /// and so do the connections, without DISCONNECT. Prefer [`run_until`](Self::run_until) or
    /// [`spawn`](Self::spawn) for a graceful shutdown.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stops accepting,
    /// disconnects every client with 0x8B (Server shutting down), waits up to
    /// [`BrokerConfig::flush_timeout`] for the last bytes to be written, and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        let Broker {
            config,
            listeners,
            local_addrs,
            accept_tx,
            accept_rx,
        } = self;
        let mut listening = Listening::default();
        let handshakes = Handshakes {
            pending: Arc::new(AtomicUsize::new(0)),
            max: config.max_connections,
            timeout: config.options.session.connect_timeout,
        };
        for (i, l) in listeners.into_iter().enumerate() {
            tracing::info!(target: TARGET, addr = %local_addrs[i], "listening");
            let tx = accept_tx.clone();
            let task = match l {
                BoundListener::Tcp(l, wrap) => {
                    tokio::spawn(accept_tcp(l, i, tx, wrap, handshakes.clone()))
                }
                #[cfg(unix)]
                BoundListener::Unix(l, file) => {
                    listening.socket_files.push(file);
                    tokio::spawn(accept_unix(l, i, tx))
                }
            };
            listening.acceptors.push(task);
        }
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let mut options = config.options.clone();
        options.authorize |= config.authorizer.is_some();
        let mut owner = Owner {
            core: CoreBroker::new(options),
            auth: AuthTable::new(config.enhanced_authenticator.clone()),
            conns: ConnTable::default(),
            inbound_tx,
            local_addrs,
            shutting_down: false,
            closing_writers: Vec::new(),
            backlog: None,
            chunks: Vec::new(),
            config,
        };
        owner.run(inbound_rx, accept_rx, shutdown).await;
        listening.stop().await;
        owner.shutdown().await;
        drop(accept_tx);
    }

    /// Serves in a new task; the handle shuts it down. Dropping the handle leaves the broker
    /// running until the runtime stops.
    pub fn spawn(self) -> BrokerHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let local_addrs = self.local_addrs.clone();
        let accept_tx = self.accept_tx.clone();
        let signal = async move {
            if rx.await.is_err() {
                // The handle was dropped without asking for a shutdown: serve on.
                std::future::pending::<()>().await;
            }
        };
        let task = tokio::spawn(self.run_until(signal));
        BrokerHandle {
            shutdown: tx,
            task,
            local_addrs,
            accept_tx,
        }
    }
}

/// The acceptor tasks and the Unix socket files of a running broker. Dropped (the broker's
/// future was cancelled), it stops them too.
#[derive(Default)]
struct Listening {
    acceptors: Vec<JoinHandle<()>>,
    #[cfg(unix)]
    socket_files: Vec<SocketFile>,
}

impl Listening {
    /// Stops accepting: when this returns, the listening sockets are closed and their socket
    /// files removed.
    async fn stop(&mut self) {
        for a in &self.acceptors {
            a.abort();
        }
        for a in self.acceptors.drain(..) {
            let _ = a.await;
        }
        #[cfg(unix)]
        self.socket_files.clear();
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        for a in &self.acceptors {
            a.abort();
        }
    }
}

/// Controls a [`Broker`] started with [`Broker::spawn`].
#[derive(Debug)]
pub struct BrokerHandle {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    local_addrs: Vec<ListenAddr>,
    accept_tx: mpsc::Sender<NewConn>,
}

impl BrokerHandle {
    /// The addresses listened on (see [`Broker::local_addrs`]).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.local_addrs
    }

    /// Serves a connection that arrived some other way (an in-memory pipe, a transport the
    /// broker has no listener for). It counts towards [`BrokerConfig::max_connections`]. Fails
    /// when the broker has stopped.
    pub async fn accept_stream<S>(&self, stream: S, peer: PeerAddr) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.accept_tx
            .send(NewConn::Other(Box::new(stream), peer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the broker has stopped"))
    }

    /// Whether the broker has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts the broker down gracefully (see [`Broker::run_until`]) and waits until it is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        if let Err(e) = self.task.await {
            tracing::error!(target: TARGET, error = %e, "broker task failed");
        }
    }
}

// ---- listeners --------------------------------------------------------------------------

#[cfg(unix)]
fn bind_unix(path: &std::path::Path) -> io::Result<tokio::net::UnixListener> {
    match tokio::net::UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // A socket file left behind by a process that is gone: nobody answers on it.
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let stale = is_socket
                && matches!(
                    std::os::unix::net::UnixStream::connect(path),
                    Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused
                );
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            tokio::net::UnixListener::bind(path)
        }
        other => other,
    }
}

/// Backs off after an accept error (for example, out of file descriptors).
async fn accept_failed(error: io::Error) {
    tracing::warn!(target: TARGET, %error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The TLS and WebSocket handshakes under way, bounded in number and in time.
#[derive(Clone)]
struct Handshakes {
    pending: Arc<AtomicUsize>,
    max: usize,
    timeout: Duration,
}

/// Decrements the count of pending handshakes when the handshake task ends, however it ends.
struct PendingHandshake(Arc<AtomicUsize>);

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_tcp(
    listener: TcpListener,
    index: usize,
    tx: mpsc::Sender<NewConn>,
    wrap: Wrap,
    handshakes: Handshakes,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (sock, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if let Err(error) = sock.set_nodelay(true) {
            tracing::debug!(target: TARGET, %peer, %error, "TCP_NODELAY failed");
        }
        if matches!(wrap, Wrap::Plain) {
            if tx.send(NewConn::Tcp(sock, peer, index)).await.is_err() {
                return;
            }
            continue;
        }
        // Handshakes run in their own tasks (aborted with this one), so that a slow client
        // does not hold up the others; each has the connect timeout to finish.
        if handshakes.pending.fetch_add(1, Ordering::AcqRel) >= handshakes.max {
            handshakes.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(target: TARGET, %peer, "connection refused: too many handshakes");
            continue;
        }
        let guard = PendingHandshake(handshakes.pending.clone());
        let (wrap, tx, timeout) = (wrap.clone(), tx.clone(), handshakes.timeout);
        tasks.spawn(async move {
            let _guard = guard;
            match tokio::time::timeout(timeout, wrap.handshake(sock)).await {
                Ok(Ok((stream, client_cert))) => {
                    let conn = NewConn::Wrapped {
                        stream,
                        peer,
                        listener: index,
                        client_cert,
                    };
                    let _ = tx.send(conn).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(target: TARGET, %peer, %error, "handshake failed");
                }
                Err(_) => tracing::debug!(target: TARGET, %peer, "handshake timed out"),
            }
        });
    }
}

#[cfg(unix)]
async fn accept_unix(listener: tokio::net::UnixListener, index: usize, tx: mpsc::Sender<NewConn>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                if tx.send(NewConn::Unix(sock, index)).await.is_err() {
                    return;
                }
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

// ---- the owner --------------------------------------------------------------------------

struct Conn {
    /// The writer's queue; closed when the connection is dropped: the writer then has
    /// `flush_timeout` to finish.
    outbox: Arc<Outbox>,
    /// The connection's I/O task ([`ConnIo`]); taken when the connection closes.
    writer: Option<JoinHandle<()>>,
    peer: PeerAddr,
    listener: Option<u32>,
    /// The DER of the client's TLS certificate.
    client_cert: Option<Box<Bytes>>,
    /// The outbound queue overflowed: the socket is closed without flushing.
    overflowed: bool,
    /// How long the owner may still pause for this connection's writer (see
    /// [`Owner::wait_for_backlog`]); allocated the first time it falls behind.
    pause_credit: Option<Box<PauseCredit>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The I/O task reads no more, writes what is queued and ends (see `ConnIo`).
        self.outbox.close();
    }
}

/// The owner's connections, indexed like the core's (which reuses the indices of closed
/// connections): denser than a hash map, which matters with many idle connections.
#[derive(Default)]
struct ConnTable {
    slots: Vec<Option<(ConnectionHandle, Conn)>>,
    len: usize,
}

impl ConnTable {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, handle: &ConnectionHandle) -> Option<&Conn> {
        match self.slots.get(handle.index())? {
            Some((h, c)) if h == handle => Some(c),
            _ => None,
        }
    }

    fn get_mut(&mut self, handle: &ConnectionHandle) -> Option<&mut Conn> {
        match self.slots.get_mut(handle.index())? {
            Some((h, c)) if h == handle => Some(c),
            _ => None,
        }
    }

    fn insert(&mut self, handle: ConnectionHandle, conn: Conn) {
        let i = handle.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace((handle, conn)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, handle: &ConnectionHandle) -> Option<Conn> {
        let slot = self.slots.get_mut(handle.index())?;
        if slot.as_ref().is_some_and(|(h, _)| h == handle) {
            self.len -= 1;
            slot.take().map(|(_, c)| c)
        } else {
            None
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Conn> + '_ {
        self.len = 0;
        self.slots.drain(..).flatten().map(|(_, c)| c)
    }
}

struct Owner {
    core: CoreBroker,
    /// Enhanced authentication exchanges under way or done, per connection.
    auth: AuthTable,
    conns: ConnTable,
    inbound_tx: mpsc::Sender<Inbound>,
    local_addrs: Vec<ListenAddr>,
    config: BrokerConfig,
    shutting_down: bool,
    closing_writers: Vec<JoinHandle<()>>,
    /// A writer with more than half of [`BrokerConfig::max_outbound_bytes`] pending.
    backlog: Option<ConnectionHandle>,
    /// One connection's transmits, taken from the core together (kept for its allocation).
    chunks: Vec<Bytes>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Owner {
    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut accepted: mpsc::Receiver<NewConn>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let mut armed: Option<std::time::Instant> = None;
        let mut fired_at: Option<std::time::Instant> = None;
        loop {
            let mut deadline = self.core.poll_timeout();
            if let (Some(d), Some(f)) = (deadline, fired_at) {
                if d <= f {
                    // The core still wants a timeout it was just given: do not spin on it.
                    tracing::debug!(target: TARGET, "timeout still due after handle_timeout");
                    deadline = Some(f + Duration::from_millis(1));
                }
            }
            fired_at = None;
            if deadline != armed {
                armed = deadline;
                timer
                    .as_mut()
                    .reset(deadline.map_or(far, Instant::from_std));
            }
            tokio::select! {
                () = &mut shutdown => return,
                msg = inbound.recv() => {
                    // The owner holds a sender, so the channel never closes.
                    let Some(msg) = msg else { return };
                    let mut taken = msg.len();
                    self.on_inbound(msg);
                    for _ in 1..INBOUND_BATCH {
                        if taken >= INBOUND_BATCH_BYTES {
                            break;
                        }
                        match inbound.try_recv() {
                            Ok(msg) => {
                                taken += msg.len();
                                self.on_inbound(msg);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(conn) = accepted.recv() => self.on_accept(conn),
                () = &mut timer, if armed.is_some() => {
                    let now = now();
                    self.core.handle_timeout(now);
                    fired_at = Some(now);
                    // Re-arm from the core's next deadline.
                    armed = None;
                    timer.as_mut().reset(far);
                }
            }
            self.flush();
            self.wait_for_backlog().await;
        }
    }

    /// When a connection's writer has fallen behind (more than half of
    /// [`BrokerConfig::max_outbound_bytes`] pending), stops taking input for up to 100 ms or
    /// until the writer is down to a quarter. A client that reads slower
    /// than others publish then slows the publishers down (through TCP) instead of being
    /// disconnected as soon as a few large messages pile up; one that stays behind still
    /// overflows and is disconnected, after holding the others up for a bounded time.
    ///
    /// Each connection spends from its [`PauseCredit`]: a reader that stays slow holds the
    /// others up for at most 1 s at first and a tenth of the time after that;
    /// without credit it is left to overflow and be disconnected.
    async fn wait_for_backlog(&mut self) {
        let Some(handle) = self.backlog.take() else {
            return;
        };
        let Some((outbox, wait)) = self.conns.get(&handle).and_then(|c| {
            let wait = c.pause_credit.as_ref()?.next_wait();
            Some((c.outbox.clone(), wait))
        }) else {
            return;
        };
        let low = self.config.max_outbound_bytes / 4;
        let start = Instant::now();
        let deadline = start + wait;
        let caught_up = std::future::poll_fn(|cx| outbox.poll_caught_up(cx, low));
        let _ = tokio::time::timeout_at(deadline, caught_up).await;
        let waited = start.elapsed();
        if let Some(credit) = self
            .conns
            .get_mut(&handle)
            .and_then(|c| c.pause_credit.as_mut())
        {
            credit.spend(waited);
        }
    }

    fn on_inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Bytes(handle, bytes) => {
                if let Err(error) = self.core.handle_input(now(), handle, bytes) {
                    if !matches!(error, Error::ConnectionClosed) {
                        tracing::debug!(target: TARGET, conn = handle.index(), %error, "bad input");
                    }
                }
            }
            Inbound::Closed(handle) => self.core.handle_close(now(), handle),
            Inbound::Verdict(handle, verdict) => self.acknowledge_connect(handle, verdict),
            Inbound::AuthStep(result) => {
                if let Some((handle, code)) = self.auth.finish(&mut self.core, now(), result) {
                    log_connack(handle, code, "enhanced authentication");
                }
            }
        }
    }

    fn on_accept(&mut self, conn: NewConn) {
        let (peer, listener) = match &conn {
            NewConn::Tcp(_, peer, i) => (PeerAddr::Tcp(*peer), Some(*i as u32)),
            NewConn::Wrapped { peer, listener, .. } => {
                (PeerAddr::Tcp(*peer), Some(*listener as u32))
            }
            #[cfg(unix)]
            NewConn::Unix(_, i) => (PeerAddr::Unix, Some(*i as u32)),
            NewConn::Other(_, peer) => (peer.clone(), None),
        };
        if self.shutting_down {
            return;
        }
        if self.conns.len() >= self.config.max_connections {
            tracing::warn!(
                target: TARGET,
                %peer,
                max = self.config.max_connections,
                "connection refused: too many connections"
            );
            return; // dropping the socket closes it
        }
        let handle = self.core.accept(now());
        let outbox = Arc::new(Outbox::default());
        let inbound = self.inbound_tx.clone();
        let linger = self.config.flush_timeout;
        let max_in = self.config.max_inbound_packet_size();
        let q = outbox.clone();
        let mut client_cert = None;
        let writer = match conn {
            NewConn::Wrapped {
                stream,
                client_cert: cert,
                ..
            } => {
                client_cert = cert.map(Box::new);
                tokio::spawn(ConnIo::new(
                    handle,
                    Buffered(stream),
                    q,
                    inbound,
                    linger,
                    max_in,
                ))
            }
            NewConn::Tcp(sock, _, _) => {
                tokio::spawn(ConnIo::new(handle, sock, q, inbound, linger, max_in))
            }
            #[cfg(unix)]
            NewConn::Unix(sock, _) => {
                tokio::spawn(ConnIo::new(handle, sock, q, inbound, linger, max_in))
            }
            NewConn::Other(stream, _) => tokio::spawn(ConnIo::new(
                handle,
                Buffered(stream),
                q,
                inbound,
                linger,
                max_in,
            )),
        };
        tracing::debug!(target: TARGET, conn = handle.index(), %peer, "connection accepted");
        self.conns.insert(
            handle,
            Conn {
                outbox,
                writer: Some(writer),
                peer,
                listener,
                client_cert,
                overflowed: false,
                pause_credit: None,
            },
        );
    }

    /// Drains the core's transmits and events until both are empty.
    fn flush(&mut self) {
        loop {
            // Transmits first: a connection's last bytes come before its Closed event.
            let mut chunks = std::mem::take(&mut self.chunks);
            while let Some(handle) = self.core.poll_transmit_into(&mut chunks) {
                self.transmit(handle, &mut chunks);
                chunks.clear();
            }
            self.chunks = chunks;
            match self.core.poll_event() {
                Some(event) => self.on_event(event),
                None => return,
            }
        }
    }

    /// Queues what one flush produced for `handle` (taken from `chunks`).
    fn transmit(&mut self, handle: ConnectionHandle, chunks: &mut Vec<Bytes>) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        if conn.overflowed {
            return;
        }
        let result = conn.outbox.push(
            chunks,
            self.config.outbound_queue_capacity.max(1),
            self.config.max_outbound_bytes,
        );
        match result {
            Ok(pending) => {
                if pending > self.config.max_outbound_bytes / 2 {
                    let now = Instant::now().into_std();
                    let credit = conn
                        .pause_credit
                        .get_or_insert_with(|| Box::new(PauseCredit::new(now)));
                    credit.refill(now);
                    if !credit.left().is_zero() {
                        self.backlog = Some(handle);
                    }
                }
            }
            Err(Refused::Full { pending }) => {
                conn.overflowed = true;
                tracing::warn!(
                    target: TARGET,
                    conn = handle.index(),
                    peer = %conn.peer,
                    pending_bytes = pending,
                    "client not keeping up (outbound queue full): disconnecting it"
                );
                self.core.handle_close(now(), handle);
            }
            Err(Refused::WriterGone) => {
                // The writer failed (the peer is gone); the reader reports it too.
                self.core.handle_close(now(), handle);
            }
        }
    }

    fn on_event(&mut self, event: BrokerEvent) {
        match event {
            BrokerEvent::Connect { handle, connect } => {
                let Some(conn) = self.conns.get(&handle) else {
                    return;
                };
                let request = ConnectRequest {
                    connect,
                    peer: conn.peer.clone(),
                    listener: conn
                        .listener
                        .and_then(|i| self.local_addrs.get(i as usize).cloned()),
                    client_cert: conn.client_cert.as_deref().cloned(),
                };
                let request = match self.auth.on_connect(&mut self.core, now(), handle, request) {
                    OnConnect::Regular(request) => request,
                    OnConnect::Done => return,
                    OnConnect::Run(job) => return self.run_auth_job(job),
                };
                let Some(auth) = self.config.authenticator.clone() else {
                    self.acknowledge_connect(handle, ReasonCode::Success);
                    return;
                };
                let mut guard = VerdictGuard {
                    tx: Some(self.inbound_tx.clone()),
                    handle,
                };
                tokio::spawn(async move {
                    let verdict = auth.authenticate(request).await;
                    if let Some(tx) = guard.tx.take() {
                        let _ = tx.send(Inbound::Verdict(handle, verdict)).await;
                    }
                });
            }
            BrokerEvent::Auth { handle, auth } => {
                if let Some(job) = self.auth.on_auth(&mut self.core, now(), handle, auth) {
                    self.run_auth_job(job);
                }
            }
            BrokerEvent::Subscribe {
                handle,
                client_id,
                subscribe,
            } => {
                let verdicts = subscribe_verdicts(handle, client_id.as_str(), &subscribe, |f| {
                    self.authorize(handle, client_id.as_str(), |a, who| {
                        a.authorize_subscribe(who, f)
                    })
                });
                let _ = self
                    .core
                    .acknowledge_subscribe(now(), handle, subscribe, verdicts);
            }
            BrokerEvent::Publish {
                handle,
                client_id,
                publish,
            } => {
                let allowed = self.authorize(handle, client_id.as_str(), |a, who| {
                    a.authorize_publish(who, publish.topic.as_str())
                });
                let verdict =
                    publish_verdict(handle, client_id.as_str(), publish.topic.as_str(), allowed);
                let _ = self
                    .core
                    .acknowledge_publish(now(), handle, publish, verdict);
            }
            BrokerEvent::Closed { handle, error } => {
                self.auth.on_closed(handle);
                let Some(mut conn) = self.conns.remove(&handle) else {
                    return;
                };
                match &error {
                    Error::Decode(_) | Error::Protocol(_) => tracing::info!(
                        target: TARGET, conn = handle.index(), peer = %conn.peer, %error,
                        "connection closed"
                    ),
                    _ => tracing::debug!(
                        target: TARGET, conn = handle.index(), peer = %conn.peer, %error,
                        "connection closed"
                    ),
                }
                if let Some(writer) = conn.writer.take() {
                    if conn.overflowed {
                        writer.abort();
                    } else if self.shutting_down {
                        self.closing_writers.push(writer);
                    }
                }
                // Dropping the connection aborts its reader and closes its outbox: the writer
                // flushes, then closes the socket.
            }
        }
    }

    /// Runs a step of an enhanced authentication on tokio's blocking pool (it may block); its
    /// result comes back as an input.
    fn run_auth_job(&self, job: AuthJob) {
        let tx = self.inbound_tx.clone();
        let handle = job.handle();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|_| AuthJobResult::failed(handle));
            let _ = tx.send(Inbound::AuthStep(result)).await;
        });
    }

    /// Asks the [`Authorizer`] (everything is allowed without one).
    fn authorize(
        &self,
        handle: ConnectionHandle,
        client_id: &str,
        check: impl FnOnce(&dyn Authorizer, &ClientInfo<'_>) -> bool,
    ) -> bool {
        let Some(authorizer) = self.config.authorizer.as_deref() else {
            return true;
        };
        let Some(conn) = self.conns.get(&handle) else {
            return false;
        };
        let username = self
            .core
            .session(handle)
            .and_then(|s| s.username())
            .map(|u| u.as_str());
        let who = ClientInfo {
            client_id,
            username,
            peer: &conn.peer,
            client_cert: conn.client_cert.as_deref().map(|c| &c[..]),
        };
        check(authorizer, &who)
    }

    fn acknowledge_connect(&mut self, handle: ConnectionHandle, verdict: ReasonCode) {
        let code = crate::server::connack_code(verdict);
        // An error means that the connection closed while the verdict was pending.
        if self.core.acknowledge_connect(now(), handle, code).is_ok() {
            log_connack(handle, code, "authenticator");
        }
    }

    async fn shutdown(&mut self) {
        tracing::info!(target: TARGET, connections = self.conns.len(), "shutting down");
        self.shutting_down = true;
        self.core
            .disconnect_all(now(), ReasonCode::ServerShuttingDown);
        self.flush();
        // Connections the core did not close (those still waiting for CONNECT): close them.
        for mut conn in self.conns.drain() {
            self.closing_writers.extend(conn.writer.take());
        }
        let deadline = Instant::now() + self.config.flush_timeout;
        for mut writer in std::mem::take(&mut self.closing_writers) {
            if tokio::time::timeout_at(deadline, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
        tracing::info!(target: TARGET, "shut down");
    }
}

/// Logs the outcome of a CONNECT.
fn log_connack(handle: ConnectionHandle, code: ReasonCode, by: &'static str) {
    if code.is_error() {
        tracing::info!(target: TARGET, conn = handle.index(), reason = %code, by, "connection refused");
    } else {
        tracing::debug!(target: TARGET, conn = handle.index(), by, "client connected");
    }
}

/// Refuses the client (0x83) if an authentication task ends without a verdict (its
/// authenticator panicked), instead of leaving it to the connect timeout.
struct VerdictGuard {
    tx: Option<mpsc::Sender<Inbound>>,
    handle: ConnectionHandle,
}

impl Drop for VerdictGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            tracing::error!(target: TARGET, conn = self.handle.index(), "authenticator failed");
            let code = ReasonCode::ImplementationSpecificError;
            let _ = tx.try_send(Inbound::Verdict(self.handle, code));
        }
    }
}

// ---- connection tasks -------------------------------------------------------------------

/// The next read size after a read of `got` bytes into `offered` bytes of space.
fn next_chunk(chunk: usize, offered: usize, got: usize) -> usize {
    if got >= offered {
        (chunk * 2).min(READ_CHUNK_MAX)
    } else if got < chunk / 4 {
        (chunk / 2).max(READ_CHUNK_MIN)
    } else {
        chunk
    }
}

/// Makes room for a read of `chunk` bytes; returns the space offered.
fn make_room(buf: &mut BytesMut, chunk: usize) -> usize {
    if buf.capacity() - buf.len() < chunk {
        buf.reserve(chunk);
    }
    buf.capacity() - buf.len()
}

/// A connection's byte stream as its I/O task uses it: reads into a buffer it sizes, writes.
trait ConnStream: AsyncWrite + Unpin + Send + 'static {
    /// Reads what is there into `buf` (made room for `chunk` bytes first), or registers the
    /// task for readiness. Returns the bytes read (0 at end of stream) and the room offered.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<(usize, usize)>>;
}

/// TCP and Unix sockets wait for readability before a buffer is made: when the socket runs
/// dry the buffer is let go, so an idle connection holds no read buffer.
macro_rules! ready_read_stream {
    ($t:ty) => {
        impl ConnStream for $t {
            fn poll_read_into(
                &mut self,
                cx: &mut Context<'_>,
                buf: &mut BytesMut,
                chunk: usize,
            ) -> Poll<io::Result<(usize, usize)>> {
                loop {
                    std::task::ready!(self.poll_read_ready(cx))?;
                    let offered = make_room(buf, chunk);
                    match self.try_read_buf(buf) {
                        Ok(n) => return Poll::Ready(Ok((n, offered))),
                        // Going idle: keep no buffer while waiting (polling readiness again
                        // registers the task), unless it holds the start of a packet.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if buf.is_empty() {
                                *buf = BytesMut::new();
                            }
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
        }
    };
}

ready_read_stream!(TcpStream);
#[cfg(unix)]
ready_read_stream!(tokio::net::UnixStream);

/// Any other stream (TLS, WebSocket, streams handed to [`BrokerHandle::accept_stream`]).
struct Buffered(Box<dyn DynStream>);

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl ConnStream for Buffered {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<(usize, usize)>> {
        let offered = make_room(buf, chunk);
        // `read_buf` holds no state between polls: polling a fresh one each time loses nothing.
        let read = self.0.read_buf(buf);
        tokio::pin!(read);
        read.poll(cx).map_ok(|n| (n, offered))
    }
}

/// Why [`Outbox::push`] refused bytes.
enum Refused {
    /// The queue holds too many writes or bytes: the client is not keeping up.
    Full {
        /// Bytes queued or being written.
        pending: usize,
    },
    /// The writer has ended (its socket failed).
    WriterGone,
}

/// A connection's outbound queue, between the owner and the connection's I/O task.
///
/// Lighter than a bounded channel: it allocates nothing until bytes are queued, and the task
/// takes the whole queue at once (one lock per batch), so an idle connection's queue holds no
/// buffer.
#[derive(Default)]
struct Outbox {
    state: std::sync::Mutex<OutboxState>,
    /// Whether the I/O task has something to take (bytes, or the close): lets it skip the lock
    /// when it has not, as on every read.
    ready: AtomicBool,
    /// The connection is closed: the task writes what is queued, then shuts the socket. Set
    /// under the state's lock, so that `take` sees it in order with the queue.
    closed: AtomicBool,
}

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Bytes>,
    /// Bytes queued or being written.
    pending: usize,
    /// The I/O task has ended: nothing more can be written.
    writer_gone: bool,
    /// The I/O task, waiting for bytes to write (or for the close).
    waker: Option<Waker>,
    /// The owner, waiting for the writer to catch up (woken when bytes were written or the
    /// writer ended).
    owner: Option<Waker>,
}

/// What the I/O task takes from its [`Outbox`].
enum Take {
    /// Bytes to write, in order.
    Batch(VecDeque<Bytes>),
    /// Nothing yet: the task is woken when there is.
    Empty,
    /// Closed, and everything was taken.
    Closed,
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        // The lock is never held across a panic point that could leave the state half-changed.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `chunks` (one flush's output for the connection, taken whole) unless
    /// `max_writes` chunks are already pending, or (when anything is pending) more than
    /// `max_bytes` bytes would be. Returns the bytes now pending.
    fn push(
        &self,
        chunks: &mut Vec<Bytes>,
        max_writes: usize,
        max_bytes: usize,
    ) -> Result<usize, Refused> {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let mut state = self.state();
        if state.writer_gone {
            return Err(Refused::WriterGone);
        }
        let pending = state.pending;
        if state.queue.len() >= max_writes || (pending > 0 && pending + len > max_bytes) {
            return Err(Refused::Full { pending });
        }
        state.pending += len;
        let pending = state.pending;
        state.queue.extend(chunks.drain(..));
        self.ready.store(true, Ordering::Release);
        // The task's waker stays registered (see `take`).
        if let Some(w) = &state.waker {
            w.wake_by_ref();
        }
        Ok(pending)
    }

    /// Closes the outbox: what is queued still goes out; nothing more is read.
    fn close(&self) {
        let state = self.state();
        self.closed.store(true, Ordering::Release);
        self.ready.store(true, Ordering::Release);
        if let Some(w) = &state.waker {
            w.wake_by_ref();
        }
    }

    /// Whether the outbox was closed.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether [`take`](Self::take) may find something, without taking the lock.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Takes everything queued; when there is nothing, registers `waker` for the next push or
    /// the close.
    /// The waker stays registered until the task ends: pushes wake it without taking it.
    fn take(&self, waker: &Waker) -> Take {
        let mut state = self.state();
        match &mut state.waker {
            Some(w) => w.clone_from(waker),
            slot @ None => *slot = Some(waker.clone()),
        }
        // Only the closed flag can be left once the queue is taken.
        let closed = self.closed.load(Ordering::Acquire);
        self.ready.store(closed, Ordering::Release);
        if !state.queue.is_empty() {
            Take::Batch(std::mem::take(&mut state.queue))
        } else if closed {
            Take::Closed
        } else {
            Take::Empty
        }
    }

    /// `len` bytes taken earlier were written.
    fn written(&self, len: usize) {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(len);
        let owner = state.owner.take();
        drop(state);
        if let Some(w) = owner {
            w.wake();
        }
    }

    /// Ready once at most `low` bytes are pending or the writer has ended; otherwise the
    /// owner is woken on the next progress.
    fn poll_caught_up(&self, cx: &mut Context<'_>, low: usize) -> Poll<()> {
        let mut state = self.state();
        if state.pending <= low || state.writer_gone {
            return Poll::Ready(());
        }
        state.owner = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OutboxWriter {
    fn drop(&mut self) {
        self.gone();
    }
}

impl OutboxWriter {
    /// Marks the writer gone (pushes are refused from now on) and wakes a waiting owner.
    fn gone(&self) {
        let mut state = self.0.state();
        state.writer_gone = true;
        state.waker = None;
        let owner = state.owner.take();
        drop(state);
        if let Some(w) = owner {
            w.wake();
        }
    }
}

/// The I/O task's hold on its outbox: marks the writer gone when the task ends in any way.
struct OutboxWriter(Arc<Outbox>);

/// Where the write side of a connection's I/O task is.
enum Writing {
    /// Waiting for bytes in the outbox.
    Idle,
    /// Writing a batch of `len` bytes.
    Batch(VecDeque<Bytes>, usize),
    /// The batch of `len` bytes is written; flushing (WebSocket frames and TLS records go out
    /// on flush; a no-op for TCP).
    Flush(usize),
    /// The outbox is closed and drained: shutting the socket down.
    Shutdown,
    /// A write failed: nothing more is written; the task ends once the owner, told through the
    /// read side, closes the outbox.
    Failed,
}

/// Where the read side of a connection's I/O task is.
enum Reading {
    /// Reading the socket.
    Read,
    /// Handing bytes read (or the end of the stream) to the owner, whose channel is full: the
    /// reservation is boxed, as it is rare.
    Forward(Inbound, Option<Pin<Box<ReserveFuture>>>),
    /// The stream ended and the owner knows, or the connection is closed.
    Done,
}

type ReserveFuture =
    dyn Future<Output = Result<mpsc::OwnedPermit<Inbound>, mpsc::error::SendError<()>>> + Send;

/// One connection's I/O, in one task: it reads the socket and hands what it reads to the
/// owner, and it writes what the owner queues in the connection's [`Outbox`]. When the outbox
/// closes, reading stops and what is queued has `linger` to go out before the socket closes.
///
/// A hand-written future rather than an `async fn`: its state is only what an idle
/// connection needs (no read buffer, no pending futures), which keeps the broker's memory per
/// idle connection low.
struct ConnIo<S> {
    handle: ConnectionHandle,
    stream: S,
    outbox: OutboxWriter,
    inbound: mpsc::Sender<Inbound>,
    buf: BytesMut,
    chunk: usize,
    /// Packet boundaries in what is read.
    framer: Framer,
    /// The size of the large packet `buf` holds the start of (0: none; at most 256 MiB).
    held: u32,
    reading: Reading,
    writing: Writing,
    linger: Duration,
    /// Set when the outbox closes: the last bytes' deadline.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker the outbox holds, once it holds one.
    waker: Option<Waker>,
}

/// Steps one poll of a connection's I/O task takes at most before yielding to others.
const IO_STEPS_PER_POLL: usize = 64;

impl<S: ConnStream> ConnIo<S> {
    fn new(
        handle: ConnectionHandle,
        stream: S,
        outbox: Arc<Outbox>,
        inbound: mpsc::Sender<Inbound>,
        linger: Duration,
        max_packet_size: u32,
    ) -> Self {
        ConnIo {
            handle,
            stream,
            outbox: OutboxWriter(outbox),
            inbound,
            buf: BytesMut::new(),
            chunk: READ_CHUNK_MIN,
            framer: Framer::new(max_packet_size),
            held: 0,
            reading: Reading::Read,
            writing: Writing::Idle,
            linger,
            deadline: None,
            waker: None,
        }
    }

    /// Whether the outbox holds this task's waker (a task's waker does not change in practice,
    /// but nothing promises it).
    fn registered(&self, cx: &Context<'_>) -> bool {
        self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Takes from the outbox, registering the task's waker.
    fn take(&mut self, cx: &Context<'_>) -> Take {
        let take = self.outbox.0.take(cx.waker());
        if !self.registered(cx) {
            self.waker = Some(cx.waker().clone());
        }
        take
    }

    /// Advances the write side. `Ready(true)`: progress; `Ready(false)`: the task is done
    /// (socket shut down, or failed); `Pending`: waiting.
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let idle = matches!(self.writing, Writing::Idle);
        if idle && !self.outbox.0.is_ready() && self.registered(cx) {
            // Nothing queued, and the outbox will wake this task: no lock needed.
            return Poll::Pending;
        }
        match &mut self.writing {
            Writing::Idle => match self.take(cx) {
                Take::Batch(batch) => {
                    let len = batch.iter().map(Bytes::len).sum();
                    self.writing = Writing::Batch(batch, len);
                    Poll::Ready(true)
                }
                Take::Empty => Poll::Pending,
                Take::Closed => {
                    self.writing = Writing::Shutdown;
                    Poll::Ready(true)
                }
            },
            Writing::Batch(batch, len) => match poll_write_batch(&mut self.stream, cx, batch) {
                Poll::Ready(Ok(())) => {
                    self.writing = Writing::Flush(*len);
                    Poll::Ready(true)
                }
                Poll::Ready(Err(error)) => self.write_failed(error),
                Poll::Pending => Poll::Pending,
            },
            Writing::Flush(len) => match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.outbox.0.written(*len);
                    self.writing = Writing::Idle;
                    Poll::Ready(true)
                }
                Poll::Ready(Err(error)) => self.write_failed(error),
                Poll::Pending => Poll::Pending,
            },
            Writing::Shutdown => match Pin::new(&mut self.stream).poll_shutdown(cx) {
                Poll::Ready(_) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            },
            // What is queued now cannot be written: dropped.
            Writing::Failed => match self.take(cx) {
                Take::Closed => Poll::Ready(false),
                Take::Batch(_) | Take::Empty => Poll::Pending,
            },
        }
    }

    /// A write failed: the owner must learn that the connection is gone even if the socket
    /// still reads (or never will), so the read side reports the close now.
    fn write_failed(&mut self, error: io::Error) -> Poll<bool> {
        tracing::debug!(target: TARGET, conn = self.handle.index(), %error, "write failed");
        self.writing = Writing::Failed;
        self.outbox.gone();
        if matches!(self.reading, Reading::Read) {
            self.reading = Reading::Forward(Inbound::Closed(self.handle), None);
        }
        Poll::Ready(true)
    }

    /// Advances the read side; `true` on progress.
    fn poll_read_side(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.reading {
            Reading::Read => {
                let ask = match self.held {
                    0 => self.chunk,
                    total => hold_read_size(self.buf.len(), total as usize),
                };
                let message = match self.stream.poll_read_into(cx, &mut self.buf, ask) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok((0, _))) => Inbound::Closed(self.handle),
                    Poll::Ready(Ok((n, offered))) => match self.framer.scan(&self.buf) {
                        Framing::All => {
                            if self.held == 0 {
                                self.chunk = next_chunk(self.chunk, offered, n);
                            }
                            self.held = 0;
                            let bytes = self.buf.split();
                            if self.buf.capacity() > READ_CHUNK_MAX {
                                // What is left of a buffer grown for a large packet: later
                                // small packets read into it would keep it all alive.
                                self.buf = BytesMut::new();
                            }
                            Inbound::Bytes(self.handle, bytes)
                        }
                        Framing::Hold { whole, total } => {
                            self.held = u32::try_from(total).unwrap_or(u32::MAX);
                            if whole == 0 {
                                return true; // the start of a packet: read on
                            }
                            Inbound::Bytes(self.handle, self.buf.split_to(whole))
                        }
                    },
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(target: TARGET, conn = self.handle.index(), %error, "read failed");
                        Inbound::Closed(self.handle)
                    }
                };
                self.reading = Reading::Forward(message, None);
                true
            }
            Reading::Forward(message, reserve) => {
                let last = matches!(message, Inbound::Closed(_));
                if reserve.is_none() {
                    let msg = std::mem::replace(message, Inbound::Closed(self.handle));
                    match self.inbound.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(msg)) => {
                            *message = msg;
                            *reserve = Some(Box::pin(self.inbound.clone().reserve_owned()));
                            return self.poll_read_side(cx);
                        }
                        // The owner is gone: the broker is stopping.
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.reading = Reading::Done;
                            return true;
                        }
                    }
                } else if let Some(r) = reserve {
                    match r.as_mut().poll(cx) {
                        Poll::Pending => return false,
                        Poll::Ready(Ok(permit)) => {
                            let msg = std::mem::replace(message, Inbound::Closed(self.handle));
                            permit.send(msg);
                        }
                        Poll::Ready(Err(_)) => {
                            self.reading = Reading::Done;
                            return true;
                        }
                    }
                }
                self.reading = if last { Reading::Done } else { Reading::Read };
                true
            }
            Reading::Done => false,
        }
    }
}

impl<S: ConnStream> Future for ConnIo<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..IO_STEPS_PER_POLL {
            let mut progress = match this.poll_write_side(cx) {
                Poll::Ready(false) => return Poll::Ready(()),
                Poll::Ready(true) => true,
                Poll::Pending => false,
            };
            if this.deadline.is_none() && this.outbox.0.is_closed() {
                // Closed: read no more; the last bytes have `linger` to go out.
                this.reading = Reading::Done;
                this.deadline = Some(Box::pin(tokio::time::sleep(this.linger)));
            }
            if let Some(deadline) = &mut this.deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!(target: TARGET, conn = this.handle.index(), "flush timed out");
                    return Poll::Ready(());
                }
            }
            progress |= this.poll_read_side(cx);
            if !progress {
                return Poll::Pending;
            }
        }
        // Busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Writes `bufs` (vectored), advancing past what was written; `Ready(Ok)` once all is written.
fn poll_write_batch<W: AsyncWrite + Unpin>(
    write: &mut W,
    cx: &mut Context<'_>,
    bufs: &mut VecDeque<Bytes>,
) -> Poll<io::Result<()>> {
    while !bufs.is_empty() {
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
        let mut count = 0;
        for (slot, b) in slices.iter_mut().zip(bufs.iter()) {
            *slot = IoSlice::new(b);
            count += 1;
        }
        let n = std::task::ready!(Pin::new(&mut *write).poll_write_vectored(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
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
                bytes::Buf::advance(front, left);
                left = 0;
            }
        }
        while bufs.front().is_some_and(Bytes::is_empty) {
            bufs.pop_front();
        }
    }
    Poll::Ready(Ok(()))
}

#[cfg(test)]
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    write: &mut W,
    bufs: &mut VecDeque<Bytes>,
) -> io::Result<()> {
    std::future::poll_fn(|cx| poll_write_batch(write, cx, bufs)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqttproto_core::codec::Connect;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn listen_addrs_parse_and_display() {
        let a: ListenAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(a, ListenAddr::Tcp("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(a.to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!("mqtt://127.0.0.1:1883".parse::<ListenAddr>().unwrap(), a);
        assert_eq!("tcp://127.0.0.1:1883/".parse::<ListenAddr>().unwrap(), a);
        let v6: ListenAddr = "[::1]:0".parse().unwrap();
        assert_eq!(v6.to_string(), "mqtt://[::1]:0");
        #[cfg(unix)]
        {
            let u: ListenAddr = "unix:/tmp/x.sock".parse().unwrap();
            assert_eq!(u, ListenAddr::Unix("/tmp/x.sock".into()));
            assert_eq!(u.to_string(), "unix:///tmp/x.sock");
            assert_eq!("unix:///tmp/x.sock".parse::<ListenAddr>().unwrap(), u);
            assert!("unix:".parse::<ListenAddr>().is_err());
        }
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!("1.2.3.4".parse::<ListenAddr>().is_err());
    }

    #[tokio::test]
    async fn vectored_writes_handle_partial_progress() {
        // A pipe with a tiny buffer forces short writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut bufs: VecDeque<Bytes> = ["hello", "", " wor", "ld", "!"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        write_all_vectored(&mut a, &mut bufs).await.unwrap();
        a.shutdown().await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), b"hello world!");
    }

    /// One end of an in-memory connection to the broker, speaking MQTT 5 through the codec.
    struct Pipe {
        stream: tokio::io::DuplexStream,
        buf: BytesMut,
    }

    impl Pipe {
        async fn open(broker: &BrokerHandle, client_id: &str, capacity: usize) -> Pipe {
            use mqttproto_core::codec::{ConnectProperties, Packet};
            let (client, server) = tokio::io::duplex(capacity);
            broker
                .accept_stream(server, PeerAddr::Unknown)
                .await
                .unwrap();
            let mut pipe = Pipe {
                stream: client,
                buf: BytesMut::new(),
            };
            let connect = Connect {
                clean_start: true,
                client_id: client_id.try_into().unwrap(),
                properties: ConnectProperties {
                    receive_maximum: std::num::NonZeroU16::new(u16::MAX),
                    ..ConnectProperties::default()
                },
                ..Connect::default()
            };
            pipe.send(Packet::Connect(Box::new(connect))).await;
            match pipe.recv().await {
                Packet::ConnAck(ack) => assert_eq!(ack.reason_code, ReasonCode::Success),
                other => panic!("expected CONNACK, got {other:?}"),
            }
            pipe
        }

        /// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
        async fn subscribe(&mut self, filter: &str) {
            use mqttproto_core::codec::{Packet, Subscribe, Subscription};
            use mqttproto_core::{PacketId, QoS, TopicFilter};
            self.send(Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                properties: Default::default(),
                subscriptions: vec![Subscription::new(
                    TopicFilter::try_from(filter).unwrap(),
                    QoS::AtLeastOnce,
                )],
            }))
            .await;
            assert!(matches!(self.recv().await, Packet::SubAck(_)));
        }

        async fn send(&mut self, packet: mqttproto_core::codec::Packet) {
            let bytes = packet
                .to_bytes(mqttproto_core::ProtocolVersion::V5)
                .unwrap();
            self.stream.write_all(&bytes).await.unwrap();
        }

        async fn recv(&mut self) -> mqttproto_core::codec::Packet {
            use mqttproto_core::codec::decode;
            loop {
                let decoded = decode(&mut self.buf, mqttproto_core::ProtocolVersion::V5, u32::MAX);
                if let Some(packet) = decoded.unwrap() {
                    return packet;
                }
                self.buf.reserve(64 * 1024);
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the broker closed the connection");
            }
        }
    }

    /// A subscriber that reads slower than the publisher writes (its pipe holds 4 KiB) is not
    /// disconnected as a slow consumer when more than `max_outbound_bytes` is published at
    /// once: the broker stops taking the publisher's input while the subscriber's writer is
    /// behind, and every QoS 1 message arrives. In-memory pipes and the paused clock: the
    /// broker's bounded wait only ends early when nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_throttles_the_publisher_instead_of_being_disconnected() {
        use mqttproto_core::codec::{Packet, Publish, PublishAck};
        use mqttproto_core::{PacketId, QoS, TopicName};
        const MESSAGES: u16 = 60;
        const SIZE: usize = 32 * 1024;
        let config = BrokerConfig {
            max_outbound_bytes: 256 * 1024,
            ..BrokerConfig::default()
        };
        let broker = Broker::bind(config).await.unwrap().spawn();

        let mut sub = Pipe::open(&broker, "slow-reader", 4 * 1024).await;
        sub.subscribe("big").await;

        // 60 messages of 32 KiB (1.9 MiB, more than 7 times the subscriber's outbound limit),
        // all within the broker's Receive Maximum of 100, written as fast as the broker reads.
        let mut publisher = Pipe::open(&broker, "fast-writer", 1 << 20).await;
        let publishing = tokio::spawn(async move {
            for i in 1..=MESSAGES {
                let mut payload = vec![0u8; SIZE];
                payload[..2].copy_from_slice(&i.to_be_bytes());
                let mut publish = Publish::new(TopicName::try_from("big").unwrap(), payload);
                publish.qos = QoS::AtLeastOnce;
                publish.packet_id = PacketId::new(i);
                publisher.send(Packet::Publish(publish)).await;
            }
            let mut acked = 0;
            while acked < MESSAGES {
                if let Packet::PubAck(ack) = publisher.recv().await {
                    assert_eq!(ack.reason_code, ReasonCode::Success);
                    acked += 1;
                }
            }
            publisher
        });

        let mut received = Vec::new();
        while received.len() < usize::from(MESSAGES) {
            match sub.recv().await {
                Packet::Publish(p) => {
                    assert_eq!(p.payload.len(), SIZE);
                    received.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                    let id = p.packet_id.unwrap();
                    sub.send(Packet::PubAck(PublishAck::new(id))).await;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        assert_eq!(received, (1..=MESSAGES).collect::<Vec<_>>());
        publishing.await.unwrap();
        broker.shutdown().await;
    }

    /// Large packets are kept together by the reader and handed to the core whole (see
    /// `server::framing`), small ones as they come: through a 3 KiB pipe (every packet
    /// arrives in many reads), large and small PUBLISHes, interleaved, arrive intact and in
    /// order, acknowledged in order, and a PINGREQ pipelined behind them is answered.
    #[tokio::test(start_paused = true)]
    async fn large_packets_read_in_many_pieces_arrive_whole_and_in_order() {
        use mqttproto_core::codec::{Packet, Publish, PublishAck};
        use mqttproto_core::{PacketId, QoS, TopicName};
        let broker = Broker::bind(BrokerConfig::default()).await.unwrap().spawn();
        let mut sub = Pipe::open(&broker, "sub", 1 << 20).await;
        sub.subscribe("t").await;

        let sizes = [
            300 * 1024,
            10,
            40_000,
            65 * 1024,
            64 * 1024,
            1,
            5_000,
            200 * 1024,
            70_000,
        ];
        let mut publisher = Pipe::open(&broker, "pub", 3 * 1024).await;
        let publishing = tokio::spawn(async move {
            for (i, &size) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
                let mut publish = Publish::new(TopicName::try_from("t").unwrap(), payload);
                publish.qos = QoS::AtLeastOnce;
                publish.packet_id = PacketId::new(i as u16 + 1);
                publisher.send(Packet::Publish(publish)).await;
            }
            publisher.send(Packet::PingReq).await;
            // PUBACKs in the order of the PUBLISHes [MQTT-4.6.0-2]; the PINGRESP anywhere.
            let (mut acked, mut ponged) = (Vec::new(), false);
            while acked.len() < sizes.len() || !ponged {
                match publisher.recv().await {
                    Packet::PubAck(a) => acked.push(a.packet_id.get()),
                    Packet::PingResp => ponged = true,
                    other => panic!("expected PUBACK or PINGRESP, got {other:?}"),
                }
            }
            assert_eq!(acked, (1..=sizes.len() as u16).collect::<Vec<_>>());
        });
        // Bounded: a lost piece would leave the subscriber waiting (the paused clock runs
        // ahead to the deadline once nothing else can run).
        let receiving = async {
            for (i, &size) in sizes.iter().enumerate() {
                match sub.recv().await {
                    Packet::Publish(p) => {
                        let want: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
                        assert!(p.payload == want, "message {i} ({size} bytes) altered");
                        sub.send(Packet::PubAck(PublishAck::new(p.packet_id.unwrap())))
                            .await;
                    }
                    other => panic!("expected PUBLISH, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), receiving)
            .await
            .expect("every message arrives");
        publishing.await.unwrap();
        broker.shutdown().await;
    }
}
