//! The blocking broker: [`Broker`] drives the sans-I/O [`proto::broker::Broker`](CoreBroker)
//! with `std::net` and threads, without an async runtime.
//!
//! It serves the same listeners as the async broker (TCP, TLS with rustls, WebSocket with
//! tungstenite, WebSocket over TLS, Unix sockets), reads the same [`BrokerConfig`] (the same
//! fields, the same password and ACL files), and runs the same timers: keep-alive, will delay,
//! session and message expiry and the connect timeout all live in the core, which the owner
//! thread wakes at [`poll_timeout`](CoreBroker::poll_timeout).
//!
//! # Threading model
//!
//! * One **owner thread** holds the core broker and is the only code that touches it. It waits
//!   on one bounded channel (`std::sync::mpsc::sync_channel`) for its inputs: opened
//!   connections, bytes read, closed sockets, authentication verdicts, finished writers, the
//!   shutdown request. It waits with a timeout that ends at the core's next deadline. After
//!   each input it drains the core's transmits and events. It never blocks on a client.
//! * One **acceptor thread** per listener. It refuses (closes at once) a socket beyond the
//!   connection limit ([`BrokerConfig::max_connections`], or fewer, see *Limits*) and starts a
//!   connection thread for the others.
//! * Per connection, a **reader thread** (the connection thread): it runs the TLS and WebSocket
//!   handshakes (bounded by the connect timeout), registers the connection with the owner, then
//!   reads and forwards `(connection, bytes)`. When the owner's channel is full, the reader
//!   waits: a busy owner slows readers down instead of buffering without bound.
//! * Per connection, a **writer thread** that drains the connection's bounded outbound queue,
//!   taking up to 64 pending writes at a time into one vectored write (one WebSocket frame, one
//!   run of TLS records).
//! * Per CONNECT, when an [`Authenticator`] is configured, a short-lived **authentication
//!   thread**, so that a slow check delays only the client it is about; likewise per step of
//!   an enhanced authentication ([`EnhancedAuthenticator`], see
//!   [`crate::server::enhanced`]), one at a time per connection.
//!
//! How the two threads of a connection share it without blocking each other: the socket is
//! shared, not duplicated (an `Arc<Stream>`; `&TcpStream` and `&UnixStream` read, write and
//! shut down): the reader reads it, the writer writes it, the owner shuts it down, and all of
//! them use its one file descriptor. Its timeouts, being the socket's, bound the handshakes
//! only: the reader sets them before the writer exists and clears them afterwards. The rustls
//! connection sits behind a mutex held only while bytes move in or out of it, never across
//! socket I/O; every byte bound for the socket passes through one per-connection writing lock,
//! so that what the reader must answer on its own (TLS alerts, WebSocket pongs and close
//! replies) is never interleaved within the writer's output.
//!
//! # Slow consumers
//!
//! As in the async broker: the owner hands bytes to a connection's writer with a non-blocking
//! send. When a writer falls behind (more than half of [`BrokerConfig::max_outbound_bytes`]
//! pending), the owner stops taking input for at most 100 ms, until the writer is down to a
//! quarter, so that a client reading slower than others publish slows the publishers down
//! (through TCP: the readers block on the owner's full channel) rather than overflowing. Each
//! connection may hold the others up this way for 1 s in all, then for a tenth of the time that
//! passes. When a connection's outbound queue is full (more than
//! [`BrokerConfig::outbound_queue_capacity`] pending writes, or more than
//! [`BrokerConfig::max_outbound_bytes`] pending bytes), the client is not keeping up and is
//! **disconnected**: its socket is shut down at once (no DISCONNECT can pass a full queue), and
//! it counts as a lost connection (its will is published; a persistent session lives on with its
//! QoS 1 and 2 messages, resent when the client resumes it; QoS 0 messages in the dropped queue
//! are lost). A stalled subscriber therefore holds the others up for at most 100 ms at a time
//! and a bounded share of the time, and otherwise blocks only its own writer thread.
//!
//! A closing connection (and every connection at shutdown) has
//! [`BrokerConfig::flush_timeout`] to write out its last bytes; then its socket is shut down
//! regardless.
//!
//! # Limits
//!
//! Per connection: one file descriptor, and two threads, each with a stack of
//! [`CONNECTION_STACK_SIZE`] (256 KiB of address space, of which a connection touches a few
//! pages), plus one thread per pending authentication (the platform's default stack, since it
//! runs the application's code). Authentication threads number at most one per connection at
//! a time (a client sends one CONNECT, and the steps of an enhanced authentication run one
//! after the other).
//!
//! On Linux the first ceiling is usually the number of memory mappings a process may have
//! (`/proc/sys/vm/max_map_count`, 65,530 by default): each thread the standard library starts
//! takes four (its stack and the stack's guard page, its signal stack and that stack's guard
//! page), so a connection takes eight (twelve with an [`Authenticator`] or
//! [`EnhancedAuthenticator`]: one authentication thread per connection at most). Past that
//! limit a new thread cannot set up its signal stack, and the standard library **aborts the
//! process** rather than failing the thread's start (measured before the broker guarded
//! against it: the 8,181st idle connection took the process down). So
//! [`Broker::bind`] reads the limit and the mappings in use (`/proc/self/maps`), keeps a tenth
//! of the limit (at least 2,000) in reserve for everything else, and when what is left holds
//! fewer connections than [`BrokerConfig::max_connections`], lowers the connection limit to
//! that many and logs a warning (target `mqttproto::broker`) that says how far to raise
//! `vm.max_map_count`. Connections beyond it are refused like those beyond
//! `max_connections` (closed at once, one warning each that names the mapping limit), and the
//! broker serves on. At the defaults that is about 7,360 connections (measured: 7,366 held at
//! 59,004 mappings; of 10,000 attempted, 2,634 refused, and those held still served). The
//! limit counts a connection from its accept, through its handshakes, until both its threads
//! have ended; authentication threads, which may outlast their connection, are limited to as
//! many (a CONNECT beyond that is refused with 0x89, Server busy). Where the files cannot be
//! read (not Linux) there is no such limit. Mappings the application makes after
//! [`Broker::bind`] come out of the reserve.
//!
//! The other ceilings are file descriptors (`ulimit -n`, one per connection) and threads
//! (`ulimit -u`, `/proc/sys/kernel/threads-max`, `/proc/sys/kernel/pid_max`: two per
//! connection). When a thread cannot be started the connection is refused and the broker serves
//! on. For ten thousand connections and more use the async broker (`mqttproto::tokio::Broker`);
//! both read the same configuration.
//!
//! A reader that must answer on its own (a WebSocket pong, a TLS alert or key update) waits
//! while its writer is blocked on a peer that does not read; it resumes when the writer does,
//! or when the connection is dropped as a slow consumer. Only that peer's connection waits.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use mqttproto::blocking::broker::{Broker, BrokerConfig, ListenAddr};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BrokerConfig::default()
//!     .listen("127.0.0.1:0".parse::<ListenAddr>()?)
//!     .with_max_connections(100);
//! let broker = Broker::bind(config)?;
//! let addr = broker.local_addrs()[0].socket_addr().expect("a TCP listener");
//! let handle = broker.spawn()?;
//!
//! // A CONNECT (MQTT 5, client id "c") on a raw socket; the broker answers with CONNACK.
//! let mut sock = std::net::TcpStream::connect(addr)?;
//! sock.write_all(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 1, b'c'])?;
//! let mut connack = [0u8; 2];
//! sock.read_exact(&mut connack)?;
//! assert_eq!(connack[0], 0x20);
//!
//! // Stop accepting, disconnect every client with 0x8B (Server shutting down), flush.
//! handle.shutdown();
//! # Ok(())
//! # }
//! ```

mod conn;
mod limits;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqttproto_core::broker::{Broker as CoreBroker, BrokerEvent, ConnectionHandle};
use mqttproto_core::{Error, ReasonCode};

pub use self::conn::Stream;
use self::conn::Wrap;
use crate::server::enhanced::{AuthJob, AuthJobResult, AuthTable, OnConnect};
use crate::server::framing::INBOUND_BATCH_BYTES;
use crate::server::pause::PauseCredit;
pub use crate::server::tls::{ClientCertificates, ServerTlsOptions};
use crate::server::{connack_code, publish_verdict, subscribe_verdicts};
pub use crate::server::{
    AclFile, AuthContext, AuthConversation, AuthStep, Authorizer, ClientInfo, ConnectRequest,
    EnhancedAuthenticator, ListenAddr, ListenAddrError, Listener, PasswordFile, PeerAddr,
};

const TARGET: &str = "mqttproto::broker";

/// The stack size of each connection's reader and writer threads.
pub const CONNECTION_STACK_SIZE: usize = 256 * 1024;
/// Inputs (chunks of bytes, closes, verdicts, …) buffered between the other threads and the
/// owner.
const INBOUND_CAPACITY: usize = 1024;
/// Inputs the owner processes before draining the core's output.
const INBOUND_BATCH: usize = 64;
/// Pending writes a writer takes at once.
const WRITE_BATCH: usize = 64;
/// How long stopping waits for acceptor and connection threads to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

// ---- authentication ---------------------------------------------------------------------

/// Decides whether a client may connect (the blocking counterpart of the async broker's
/// authenticator).
///
/// The verdict is a reason code: any code below 0x80 accepts the client; a failure code (for
/// example 0x86 Bad User Name or Password, or 0x87 Not authorized) is sent in CONNACK and the
/// connection is closed. A failure code that CONNACK cannot carry is replaced by 0x87.
///
/// Each call runs on its own thread, so a slow check (a database, a remote service) delays only
/// the client it is about. A check that takes longer than the connect timeout loses the client
/// (the broker closes the connection). A check that panics refuses the client with 0x83.
///
/// Closures `Fn(ConnectRequest) -> ReasonCode` implement the trait, and so does
/// [`PasswordFile`]:
///
/// ```
/// use mqttproto::proto::ReasonCode;
/// use mqttproto::blocking::broker::{BrokerConfig, ConnectRequest};
///
/// let config = BrokerConfig::default().with_authenticator(|req: ConnectRequest| {
///     match (req.username(), req.password()) {
///         (Some("alice"), Some(b"secret")) => ReasonCode::Success,
///         _ => ReasonCode::BadUserNameOrPassword,
///     }
/// });
/// # let _ = config;
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a CONNECT.
    fn authenticate(&self, request: ConnectRequest) -> ReasonCode;
}

impl<F> Authenticator for F
where
    F: Fn(ConnectRequest) -> ReasonCode + Send + Sync + 'static,
{
    fn authenticate(&self, request: ConnectRequest) -> ReasonCode {
        self(request)
    }
}

impl Authenticator for PasswordFile {
    fn authenticate(&self, request: ConnectRequest) -> ReasonCode {
        self.check(request.username(), request.password())
    }
}

/// Configuration of a [`Broker`]: the shared [`crate::server::BrokerConfig`] with a blocking
/// [`Authenticator`].
pub type BrokerConfig = crate::server::BrokerConfig<dyn Authenticator>;

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
    Unix(std::os::unix::net::UnixListener, SocketFile),
}

/// A Unix socket file the broker created: removed when this is dropped.
#[cfg(unix)]
struct SocketFile(PathBuf);

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the other threads tell the owner.
enum Inbound {
    /// A connection after its handshakes; the owner answers with its handle, or `None` to
    /// refuse it.
    Opened(Box<Opened>, SyncSender<Option<ConnectionHandle>>),
    Bytes(ConnectionHandle, BytesMut),
    Closed(ConnectionHandle),
    Verdict(ConnectionHandle, ReasonCode),
    /// A step of an enhanced authentication has run.
    AuthStep(AuthJobResult),
    /// A connection's writer thread has finished.
    WriterDone(ConnectionHandle),
    Shutdown,
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

struct Opened {
    tx: SyncSender<Chunks>,
    queued: Arc<AtomicUsize>,
    killer: Arc<Stream>,
    peer: PeerAddr,
    listener: Option<usize>,
    client_cert: Option<Bytes>,
}

/// A blocking MQTT 5 broker. See the [module documentation](self).
///
/// [`bind`](Self::bind) opens the listeners; [`run`](Self::run) serves them on the calling
/// thread, [`spawn`](Self::spawn) on a new one.
pub struct Broker {
    config: BrokerConfig,
    listeners: Vec<BoundListener>,
    local_addrs: Vec<ListenAddr>,
    inbound_tx: SyncSender<Inbound>,
    inbound_rx: Receiver<Inbound>,
    /// Set once the broker stops accepting.
    stop: Arc<AtomicBool>,
    /// Connections alive (any of their threads).
    live: Arc<AtomicUsize>,
    /// Sockets in their handshakes.
    handshaking: Arc<Handshaking>,
    /// The connection limit in force.
    limit: Limit,
}

/// The connection limit in force: [`BrokerConfig::max_connections`], or fewer when the memory
/// mappings left cannot take that many connection threads.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: usize,
    /// Whether the memory-mapping budget set `max` (below the configured maximum).
    by_maps: bool,
}

impl Limit {
    /// The limit for `config`, served by `listeners` acceptor threads and an owner thread.
    fn of(config: &BrokerConfig, listeners: usize) -> Limit {
        let configured = config.max_connections;
        // A reader and a writer, and an authentication thread while one runs: at most one at
        // a time per connection, and no more than the connections allowed in all (see
        // `AuthThreads`).
        let authenticating =
            config.authenticator.is_some() || config.enhanced_authenticator.is_some();
        let threads = 2 + usize::from(authenticating);
        let Some(budget) = limits::measure(threads, listeners + 1) else {
            return Limit {
                max: configured,
                by_maps: false,
            };
        };
        if budget.connections >= configured {
            return Limit {
                max: configured,
                by_maps: false,
            };
        }
        let suggested =
            limits::max_map_count_for(configured, budget.mappings, budget.per_connection);
        tracing::warn!(
            target: TARGET,
            max_connections = configured,
            limit = budget.connections,
            max_map_count = budget.max_map_count,
            mappings = budget.mappings,
            per_connection = budget.per_connection,
            reserve = budget.reserve,
            "at most {} connections, not {configured} (max_connections): each takes {threads} \
             threads, {} memory mappings, against a limit of {} (vm.max_map_count) with {} in \
             use and {} kept in reserve; connections beyond it are refused. For \
             {configured}, raise the limit (sysctl -w vm.max_map_count={suggested}) or use the \
             async broker",
            budget.connections,
            budget.per_connection,
            budget.max_map_count,
            budget.mappings,
            budget.reserve,
        );
        Limit {
            max: budget.connections,
            by_maps: true,
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("local_addrs", &self.local_addrs)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Asks a running [`Broker`] to shut down gracefully. Cheap to clone; usable from any thread
/// (a signal handler thread, for example).
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: SyncSender<Inbound>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShutdownHandle")
    }
}

impl ShutdownHandle {
    /// Asks the broker to shut down (see [`Broker::run`]); returns at once. Does nothing if it
    /// has stopped already.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Inbound::Shutdown);
    }
}

impl Broker {
    /// Opens every listener of `config` and loads TLS settings. Fails with the first listener
    /// that cannot be bound (the error names its address).
    pub fn bind(config: BrokerConfig) -> io::Result<Broker> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut local_addrs = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let addr = &listener.addr;
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("listening on {addr}: {e}"));
            #[cfg(unix)]
            if let ListenAddr::Unix(path) = addr {
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
            let wrap = wrap_of(listener).map_err(named)?;
            let l = TcpListener::bind(a).map_err(named)?;
            local_addrs.push(addr.with_socket_addr(l.local_addr().map_err(named)?));
            listeners.push(BoundListener::Tcp(l, wrap));
        }
        let (inbound_tx, inbound_rx) = mpsc::sync_channel(INBOUND_CAPACITY);
        let limit = Limit::of(&config, listeners.len());
        Ok(Broker {
            limit,
            config,
            listeners,
            local_addrs,
            inbound_tx,
            inbound_rx,
            stop: Arc::new(AtomicBool::new(false)),
            live: Arc::new(AtomicUsize::new(0)),
            handshaking: Arc::default(),
        })
    }

    /// The addresses listened on, in the order of [`BrokerConfig::listeners`], with the ports
    /// the system picked for port 0.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.local_addrs
    }

    /// A handle that shuts the broker down once it runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.inbound_tx.clone(),
        }
    }

    /// Serves on the calling thread until a [`ShutdownHandle`] asks it to stop, then shuts down
    /// gracefully: stops accepting (the listening sockets are closed, Unix socket files
    /// removed, TLS and WebSocket handshakes under way ended), disconnects every client with
    /// 0x8B (Server shutting down), waits up to
    /// [`BrokerConfig::flush_timeout`] for the last bytes to be written, closes the
    /// connections, and returns.
    pub fn run(self) {
        let Broker {
            config,
            listeners,
            local_addrs,
            inbound_tx,
            inbound_rx,
            stop,
            live,
            handshaking,
            limit,
        } = self;
        let mut acceptors = Vec::new();
        #[cfg(unix)]
        let mut socket_files = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            tracing::info!(target: TARGET, addr = %local_addrs[i], "listening");
            let ctx = AcceptCtx {
                index: Some(i),
                stop: stop.clone(),
                live: live.clone(),
                handshaking: handshaking.clone(),
                limit,
                timeout: config.options.session.connect_timeout,
                queue: config.outbound_queue_capacity.max(1),
                max_packet_size: config.max_inbound_packet_size(),
                inbound: inbound_tx.clone(),
            };
            let (wake, spawned) = match l {
                BoundListener::Tcp(l, wrap) => {
                    let wake = l.local_addr().ok().map(Wake::Tcp);
                    let spawned = std::thread::Builder::new()
                        .name("mqttproto-accept".into())
                        .spawn(move || accept_tcp(l, wrap, ctx));
                    (wake, spawned)
                }
                #[cfg(unix)]
                BoundListener::Unix(l, file) => {
                    let wake = Some(Wake::Unix(file.0.clone()));
                    socket_files.push(file);
                    let spawned = std::thread::Builder::new()
                        .name("mqttproto-accept".into())
                        .spawn(move || accept_unix(l, ctx));
                    (wake, spawned)
                }
            };
            match spawned {
                Ok(thread) => acceptors.push((thread, wake)),
                Err(error) => tracing::error!(
                    target: TARGET, addr = %local_addrs[i], %error,
                    "cannot start the acceptor thread: not listening there"
                ),
            }
        }
        let mut options = config.options.clone();
        options.authorize |= config.authorizer.is_some();
        let mut owner = Owner {
            core: CoreBroker::new(options),
            auth: AuthTable::new(config.enhanced_authenticator.clone()),
            conns: HashMap::new(),
            closing: HashMap::new(),
            inbound_tx,
            local_addrs,
            config,
            backlog: None,
            chunks: Vec::new(),
            auth_threads: AuthThreads {
                live: Arc::new(AtomicUsize::new(0)),
                max: limit.max,
            },
        };
        owner.run(&inbound_rx);

        // Stop accepting.
        stop.store(true, Ordering::SeqCst);
        for (_, wake) in &acceptors {
            if let Some(wake) = wake {
                wake.wake();
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        for (thread, _) in acceptors {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        #[cfg(unix)]
        drop(socket_files);
        // Connections still in their TLS or WebSocket handshakes fail them now.
        handshaking.stop_all();
        owner.shutdown(&inbound_rx, &live);
    }

    /// Serves on a new thread; the handle shuts it down. Dropping the handle leaves the broker
    /// running until the process ends.
    pub fn spawn(self) -> io::Result<BrokerHandle> {
        let shutdown = self.shutdown_handle();
        let local_addrs = self.local_addrs.clone();
        let streams = AcceptCtx {
            index: None,
            stop: self.stop.clone(),
            live: self.live.clone(),
            handshaking: self.handshaking.clone(),
            limit: self.limit,
            timeout: self.config.options.session.connect_timeout,
            queue: self.config.outbound_queue_capacity.max(1),
            max_packet_size: self.config.max_inbound_packet_size(),
            inbound: self.inbound_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mqttproto-broker".into())
            .spawn(move || self.run())?;
        Ok(BrokerHandle {
            shutdown,
            thread,
            local_addrs,
            streams,
        })
    }
}

/// Controls a [`Broker`] started with [`Broker::spawn`].
pub struct BrokerHandle {
    shutdown: ShutdownHandle,
    thread: JoinHandle<()>,
    local_addrs: Vec<ListenAddr>,
    /// For [`accept_stream`](Self::accept_stream).
    streams: AcceptCtx,
}

impl fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    /// The addresses listened on (see [`Broker::local_addrs`]).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.local_addrs
    }

    /// A handle that shuts the broker down, for another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Whether the broker has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Serves a connection that arrived some other way (a socket inherited from a service
    /// manager, one end of `UnixStream::pair`), as MQTT directly over it. It counts towards
    /// [`BrokerConfig::max_connections`]. Fails when the broker is full or has stopped (the
    /// stream is then closed).
    pub fn accept_stream(&self, stream: impl Into<Stream>, peer: PeerAddr) -> io::Result<()> {
        self.streams.admit(stream.into(), peer, &Wrap::Plain)
    }

    /// Shuts the broker down gracefully (see [`Broker::run`]) and waits until it is done.
    pub fn shutdown(self) {
        self.shutdown.shutdown();
        if self.thread.join().is_err() {
            tracing::error!(target: TARGET, "broker thread panicked");
        }
    }
}

// ---- listeners --------------------------------------------------------------------------

/// The transport of `listener`, its TLS configuration loaded.
fn wrap_of(listener: &Listener) -> io::Result<Wrap> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if listener.tls.is_some() && !listener.addr.is_tls() {
        return Err(invalid(format!(
            "TLS settings given for {}, which is not a TLS listener (use mqtts:// or wss://)",
            listener.addr
        )));
    }
    let tls = || -> io::Result<Arc<rustls::ServerConfig>> {
        let tls = listener.tls.as_ref().ok_or_else(|| {
            invalid(format!(
                "{} needs TLS settings (a certificate and a key)",
                listener.addr
            ))
        })?;
        Ok(Arc::new(tls.server_config()?))
    };
    Ok(match &listener.addr {
        ListenAddr::Tls(_) => Wrap::Tls(tls()?),
        ListenAddr::Ws { path, .. } => Wrap::Ws(path.as_str().into()),
        ListenAddr::Wss { path, .. } => Wrap::Wss(tls()?, path.as_str().into()),
        _ => Wrap::Plain,
    })
}

#[cfg(unix)]
fn bind_unix(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::net::UnixListener;
    match UnixListener::bind(path) {
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
            UnixListener::bind(path)
        }
        other => other,
    }
}

/// How to wake an acceptor blocked in `accept` once the broker stops: connect to it.
enum Wake {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(match a.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
            #[cfg(unix)]
            Wake::Unix(p) => {
                let _ = std::os::unix::net::UnixStream::connect(p);
            }
        }
    }
}

/// What an acceptor needs.
struct AcceptCtx {
    /// The listener (`None` for [`BrokerHandle::accept_stream`]).
    index: Option<usize>,
    stop: Arc<AtomicBool>,
    /// Connections alive (from accept to the end of both the reader and the writer).
    live: Arc<AtomicUsize>,
    handshaking: Arc<Handshaking>,
    limit: Limit,
    timeout: Duration,
    queue: usize,
    /// The broker's Maximum Packet Size (`u32::MAX`: none), for the readers' framing.
    max_packet_size: u32,
    inbound: SyncSender<Inbound>,
}

/// The sockets of connections not yet registered with the owner (in their handshakes), so
/// that stopping the broker can end them at once. It holds references to the connection
/// threads' sockets, not duplicated descriptors.
#[derive(Default)]
struct Handshaking {
    next: AtomicU64,
    socks: Mutex<HashMap<u64, Arc<Stream>>>,
}

impl Handshaking {
    /// Registers `sock` until the guard drops.
    fn register(self: &Arc<Self>, sock: &Arc<Stream>) -> HandshakeGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.socks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, sock.clone());
        HandshakeGuard {
            set: self.clone(),
            id,
        }
    }

    fn stop_all(&self) {
        for sock in self
            .socks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            sock.shutdown();
        }
    }
}

/// Unregisters a socket from [`Handshaking`] when dropped.
struct HandshakeGuard {
    set: Arc<Handshaking>,
    id: u64,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.set
            .socks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Counts a connection as alive until dropped (shared by its reader and writer).
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AcceptCtx {
    /// Starts a connection thread for `sock`, unless the broker stops or is full.
    fn admit(&self, sock: Stream, peer: PeerAddr, wrap: &Wrap) -> io::Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the broker has stopped",
            ));
        }
        // Counted from here until both of its threads end, handshakes included.
        let max = self.limit.max;
        if self.live.fetch_add(1, Ordering::AcqRel) >= max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            let why = if self.limit.by_maps {
                "too many connections for the memory-mapping limit (vm.max_map_count)"
            } else {
                "too many connections (max_connections)"
            };
            tracing::warn!(target: TARGET, %peer, max, "connection refused: {why}");
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{why}: at most {max}"),
            ));
        }
        let live = Live(self.live.clone());
        // One descriptor per connection: the reader, the writer, the owner and this registry
        // share the socket.
        let sock = Arc::new(sock);
        let handshake = self.handshaking.register(&sock);
        // Stopping sets the flag, then ends registered handshakes: one of the two catches this.
        if self.stop.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the broker has stopped",
            ));
        }
        let conn = ConnThread {
            live,
            handshake,
            peer,
            listener: self.index,
            wrap: wrap.clone(),
            timeout: self.timeout,
            queue: self.queue,
            max_packet_size: self.max_packet_size,
            inbound: self.inbound.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("mqttproto-conn".into())
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || conn.run(sock));
        if let Err(error) = &spawned {
            tracing::warn!(target: TARGET, %error, "connection refused: cannot start a thread");
        }
        spawned.map(drop)
    }

    fn accept_failed(&self, error: io::Error) {
        if !self.stop.load(Ordering::SeqCst) {
            // For example, out of file descriptors: back off.
            tracing::warn!(target: TARGET, %error, "accept failed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn accept_tcp(listener: TcpListener, wrap: Wrap, ctx: AcceptCtx) {
    while !ctx.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((sock, peer)) => {
                if let Err(error) = sock.set_nodelay(true) {
                    tracing::debug!(target: TARGET, %peer, %error, "TCP_NODELAY failed");
                }
                let _ = ctx.admit(Stream::Tcp(sock), PeerAddr::Tcp(peer), &wrap);
            }
            Err(e) => ctx.accept_failed(e),
        }
    }
}

#[cfg(unix)]
fn accept_unix(listener: std::os::unix::net::UnixListener, ctx: AcceptCtx) {
    while !ctx.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((sock, _)) => {
                let _ = ctx.admit(Stream::Unix(sock), PeerAddr::Unix, &Wrap::Plain);
            }
            Err(e) => ctx.accept_failed(e),
        }
    }
}

// ---- connection threads -----------------------------------------------------------------

struct ConnThread {
    live: Live,
    handshake: HandshakeGuard,
    peer: PeerAddr,
    listener: Option<usize>,
    wrap: Wrap,
    timeout: Duration,
    queue: usize,
    max_packet_size: u32,
    inbound: SyncSender<Inbound>,
}

impl ConnThread {
    /// The reader: handshakes, registers with the owner, starts the writer, then reads.
    fn run(self, sock: Arc<Stream>) {
        let ConnThread {
            live,
            handshake,
            peer,
            listener,
            wrap,
            timeout,
            queue,
            max_packet_size,
            inbound,
        } = self;
        let opened = match conn::open(sock, &wrap, timeout) {
            Ok(opened) => opened,
            Err(error) => {
                tracing::debug!(target: TARGET, %peer, %error, "handshake failed");
                return;
            }
        };
        let conn::Opened {
            mut reader,
            writer,
            killer,
            client_cert,
        } = opened;
        reader.limit_packet_size(max_packet_size);
        let owner_killer = killer.clone();
        let (tx, rx) = mpsc::sync_channel(queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let open = Opened {
            tx,
            queued: queued.clone(),
            killer: owner_killer,
            peer: peer.clone(),
            listener,
            client_cert,
        };
        if inbound
            .send(Inbound::Opened(Box::new(open), reply_tx))
            .is_err()
        {
            return; // the broker has stopped
        }
        let reply = reply_rx.recv();
        // Registered with the owner (or refused): the owner ends it from now on.
        drop(handshake);
        let Ok(Some(handle)) = reply else {
            return; // refused
        };
        let done = inbound.clone();
        // The connection counts until both threads have ended: the writer may outlast the
        // reader (flushing a closing connection).
        let live = Arc::new(live);
        let writer_live = live.clone();
        let spawned = std::thread::Builder::new()
            .name("mqttproto-write".into())
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || {
                let _live = writer_live;
                write_loop(handle, writer, rx, queued, killer);
                let _ = done.send(Inbound::WriterDone(handle));
            });
        if let Err(error) = spawned {
            tracing::warn!(target: TARGET, %peer, %error, "cannot start a writer thread");
            let _ = inbound.send(Inbound::Closed(handle));
            return;
        }
        loop {
            match reader.read_chunk() {
                Ok(Some(bytes)) => {
                    if inbound.send(Inbound::Bytes(handle, bytes)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(target: TARGET, conn = handle.index(), %error, "read failed");
                    break;
                }
            }
        }
        let _ = inbound.send(Inbound::Closed(handle));
    }
}

/// What one flush produced for a connection: one chunk (the usual case, no allocation), or
/// several (a large payload is a chunk of its own, shared with other subscribers).
enum Chunks {
    One(Bytes),
    Many(Vec<Bytes>),
}

/// The writer: drains the outbound queue until the owner drops its end, then ends the stream.
fn write_loop(
    handle: ConnectionHandle,
    mut writer: conn::Writer,
    rx: Receiver<Chunks>,
    queued: Arc<AtomicUsize>,
    killer: Arc<Stream>,
) {
    let mut batch = VecDeque::with_capacity(WRITE_BATCH);
    let add = |batch: &mut VecDeque<Bytes>, chunks: Chunks| match chunks {
        Chunks::One(b) => batch.push_back(b),
        Chunks::Many(v) => batch.extend(v),
    };
    while let Ok(first) = rx.recv() {
        add(&mut batch, first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(chunks) => add(&mut batch, chunks),
                Err(_) => break,
            }
        }
        let len: usize = batch.iter().map(Bytes::len).sum();
        if let Err(error) = writer.write_batch(&mut batch) {
            tracing::debug!(target: TARGET, conn = handle.index(), %error, "write failed");
            // The reader sees the end of the stream and reports it.
            killer.shutdown();
            return;
        }
        queued.fetch_sub(len, Ordering::AcqRel);
    }
    writer.close();
}

// ---- the owner --------------------------------------------------------------------------

struct Conn {
    /// The writer's queue; dropped when the connection closes.
    tx: SyncSender<Chunks>,
    /// Bytes in the writer's queue, not yet written.
    queued: Arc<AtomicUsize>,
    killer: Arc<Stream>,
    peer: PeerAddr,
    listener: Option<usize>,
    client_cert: Option<Bytes>,
    /// The outbound queue overflowed: the socket is shut down without flushing.
    overflowed: bool,
    /// How long the owner may still pause for this connection's writer, and when that was
    /// last brought up to date (see [`Owner::wait_for_backlog`]); set the first time it falls
    /// behind.
    pause_credit: Option<Box<PauseCredit>>,
}

/// A closed connection whose writer may still be flushing.
struct Closing {
    killer: Arc<Stream>,
    deadline: Instant,
}

struct Owner {
    core: CoreBroker,
    /// Enhanced authentication exchanges under way or done, per connection.
    auth: AuthTable,
    conns: HashMap<ConnectionHandle, Conn>,
    closing: HashMap<ConnectionHandle, Closing>,
    inbound_tx: SyncSender<Inbound>,
    local_addrs: Vec<ListenAddr>,
    config: BrokerConfig,
    /// A connection whose writer fell behind (over half of `max_outbound_bytes` pending).
    backlog: Option<ConnectionHandle>,
    /// One connection's transmits, taken from the core together (kept for its allocation).
    chunks: Vec<Bytes>,
    auth_threads: AuthThreads,
}

/// Authentication threads alive, at most as many as connections are allowed (so that the
/// memory-mapping budget, which counts one per connection, holds): a connection has one at a
/// time, but a slow check may outlast its connection.
struct AuthThreads {
    live: Arc<AtomicUsize>,
    max: usize,
}

impl AuthThreads {
    /// A slot for one more, given back when dropped; `None` when all are taken.
    fn acquire(&self) -> Option<Live> {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Live(self.live.clone()))
    }
}

/// Whether the owner loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl Owner {
    fn run(&mut self, inbound: &Receiver<Inbound>) {
        let mut fired_at: Option<Instant> = None;
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
            let closing_deadline = self.closing.values().map(|c| c.deadline).min();
            let wake = match (deadline, closing_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match wake {
                Some(at) => inbound.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => inbound.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(msg) => {
                    let mut taken = msg.len();
                    if self.on_inbound(msg) == Flow::Stop {
                        return;
                    }
                    for _ in 1..INBOUND_BATCH {
                        if taken >= INBOUND_BATCH_BYTES {
                            break;
                        }
                        match inbound.try_recv() {
                            Ok(msg) => {
                                taken += msg.len();
                                if self.on_inbound(msg) == Flow::Stop {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The owner holds a sender: never happens.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.wait_for_backlog();
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                self.core.handle_timeout(now);
                fired_at = Some(now);
            }
            if closing_deadline.is_some_and(|d| d <= now) {
                self.closing.retain(|handle, c| {
                    if c.deadline > now {
                        return true;
                    }
                    tracing::debug!(target: TARGET, conn = handle.index(), "flush timed out");
                    c.killer.shutdown();
                    false
                });
            }
            self.flush();
        }
    }

    fn on_inbound(&mut self, msg: Inbound) -> Flow {
        match msg {
            Inbound::Bytes(handle, bytes) => {
                if let Err(error) = self.core.handle_input(Instant::now(), handle, bytes) {
                    if !matches!(error, Error::ConnectionClosed) {
                        tracing::debug!(target: TARGET, conn = handle.index(), %error, "bad input");
                    }
                }
            }
            Inbound::Closed(handle) => self.core.handle_close(Instant::now(), handle),
            Inbound::Verdict(handle, verdict) => self.acknowledge_connect(handle, verdict),
            Inbound::AuthStep(result) => {
                if let Some((handle, code)) =
                    self.auth.finish(&mut self.core, Instant::now(), result)
                {
                    log_connack(handle, code, "enhanced authentication");
                }
            }
            Inbound::Opened(opened, reply) => self.on_open(*opened, reply),
            Inbound::WriterDone(handle) => {
                // The last bytes are out: end the reader too.
                if let Some(c) = self.closing.remove(&handle) {
                    c.killer.shutdown();
                }
            }
            Inbound::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    fn on_open(&mut self, opened: Opened, reply: SyncSender<Option<ConnectionHandle>>) {
        let handle = self.core.accept(Instant::now());
        tracing::debug!(
            target: TARGET, conn = handle.index(), peer = %opened.peer, "connection accepted"
        );
        if reply.try_send(Some(handle)).is_err() {
            // The connection thread is gone.
            self.core.handle_close(Instant::now(), handle);
            return;
        }
        self.conns.insert(
            handle,
            Conn {
                tx: opened.tx,
                queued: opened.queued,
                killer: opened.killer,
                peer: opened.peer,
                listener: opened.listener,
                client_cert: opened.client_cert,
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

    /// When a connection's writer has fallen behind (more than half of
    /// [`BrokerConfig::max_outbound_bytes`] pending), stops taking input for up to 100 ms, or
    /// until the writer is down to a quarter: readers then block on the
    /// full inbound channel, and TCP slows the publishers down, instead of the slow reader being
    /// disconnected as soon as a few large messages pile up. Each connection spends from a
    /// budget ([`PauseCredit`]: 1 s at first, then a tenth of the time that passes), so a reader that
    /// stays slow holds the others up for a bounded share of the time and is then left to
    /// overflow and be disconnected. The writer's progress is checked every millisecond.
    fn wait_for_backlog(&mut self) {
        let Some(handle) = self.backlog.take() else {
            return;
        };
        let Some((queued, limit)) = self.conns.get(&handle).and_then(|c| {
            let limit = c.pause_credit.as_ref()?.next_wait();
            Some((c.queued.clone(), limit))
        }) else {
            return;
        };
        let low = self.config.max_outbound_bytes / 4;
        let start = Instant::now();
        while queued.load(Ordering::Acquire) > low && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
        let waited = start.elapsed();
        if let Some(credit) = self
            .conns
            .get_mut(&handle)
            .and_then(|c| c.pause_credit.as_mut())
        {
            credit.spend(waited);
        }
    }

    /// Queues what one flush produced for `handle` (taken from `chunks`) for its writer.
    fn transmit(&mut self, handle: ConnectionHandle, chunks: &mut Vec<Bytes>) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        if conn.overflowed {
            return;
        }
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let pending = conn.queued.fetch_add(len, Ordering::AcqRel);
        let too_many_bytes = pending > 0 && pending + len > self.config.max_outbound_bytes;
        let result = if too_many_bytes {
            Err(TrySendError::Full(Chunks::Many(Vec::new())))
        } else if chunks.len() == 1 {
            let one = chunks.pop().map_or(Chunks::Many(Vec::new()), Chunks::One);
            conn.tx.try_send(one)
        } else {
            conn.tx.try_send(Chunks::Many(std::mem::take(chunks)))
        };
        match result {
            Ok(()) => {
                if pending + len > self.config.max_outbound_bytes / 2 {
                    let now = Instant::now();
                    let credit = conn
                        .pause_credit
                        .get_or_insert_with(|| Box::new(PauseCredit::new(now)));
                    credit.refill(now);
                    if !credit.left().is_zero() {
                        self.backlog = Some(handle);
                    }
                }
            }
            Err(TrySendError::Full(_)) => {
                conn.queued.fetch_sub(len, Ordering::AcqRel);
                conn.overflowed = true;
                tracing::warn!(
                    target: TARGET,
                    conn = handle.index(),
                    peer = %conn.peer,
                    pending_bytes = pending,
                    "client not keeping up (outbound queue full): disconnecting it"
                );
                self.core.handle_close(Instant::now(), handle);
            }
            Err(TrySendError::Disconnected(_)) => {
                // The writer failed (the peer is gone); the reader reports it too.
                conn.queued.fetch_sub(len, Ordering::AcqRel);
                self.core.handle_close(Instant::now(), handle);
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
                    listener: conn.listener.and_then(|i| self.local_addrs.get(i).cloned()),
                    client_cert: conn.client_cert.clone(),
                };
                let now = Instant::now();
                let request = match self.auth.on_connect(&mut self.core, now, handle, request) {
                    OnConnect::Regular(request) => request,
                    OnConnect::Done => return,
                    OnConnect::Run(job) => return self.run_auth_job(job),
                };
                let Some(auth) = self.config.authenticator.clone() else {
                    self.acknowledge_connect(handle, ReasonCode::Success);
                    return;
                };
                let Some(slot) = self.auth_threads.acquire() else {
                    tracing::warn!(
                        target: TARGET, conn = handle.index(), max = self.auth_threads.max,
                        "too many authentications under way: refusing the client"
                    );
                    self.acknowledge_connect(handle, ReasonCode::ServerBusy);
                    return;
                };
                let mut guard = VerdictGuard {
                    tx: Some(self.inbound_tx.clone()),
                    handle,
                };
                let spawned = std::thread::Builder::new()
                    .name("mqttproto-auth".into())
                    .spawn(move || {
                        let _slot = slot;
                        let verdict = auth.authenticate(request);
                        if let Some(tx) = guard.tx.take() {
                            let _ = tx.send(Inbound::Verdict(handle, verdict));
                        }
                    });
                if let Err(error) = spawned {
                    // The guard went down with the closure and refused the client (0x83).
                    tracing::warn!(target: TARGET, %error, "cannot start an authentication thread");
                }
            }
            BrokerEvent::Auth { handle, auth } => {
                let now = Instant::now();
                if let Some(job) = self.auth.on_auth(&mut self.core, now, handle, auth) {
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
                let _ =
                    self.core
                        .acknowledge_subscribe(Instant::now(), handle, subscribe, verdicts);
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
                    .acknowledge_publish(Instant::now(), handle, publish, verdict);
            }
            BrokerEvent::Closed { handle, error } => {
                self.auth.on_closed(handle);
                let Some(conn) = self.conns.remove(&handle) else {
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
                self.close(handle, conn);
            }
        }
    }

    /// Lets the writer flush (for up to the flush timeout), or shuts the socket down at once if
    /// its queue overflowed.
    fn close(&mut self, handle: ConnectionHandle, conn: Conn) {
        let Conn {
            tx,
            killer,
            overflowed,
            ..
        } = conn;
        drop(tx); // the writer ends once the queue is empty
        if overflowed {
            killer.shutdown();
        } else {
            let deadline = Instant::now() + self.config.flush_timeout;
            self.closing.insert(handle, Closing { killer, deadline });
        }
    }

    /// Runs a step of an enhanced authentication on a thread of its own (it may block); its
    /// result comes back as an input.
    fn run_auth_job(&mut self, job: AuthJob) {
        let handle = job.handle();
        let tx = self.inbound_tx.clone();
        let spawned = match self.auth_threads.acquire() {
            Some(slot) => std::thread::Builder::new()
                .name("mqttproto-auth".into())
                .spawn(move || {
                    let _slot = slot;
                    let _ = tx.send(Inbound::AuthStep(job.run()));
                })
                .map(drop),
            None => Err(io::Error::other(format!(
                "too many authentications under way (at most {})",
                self.auth_threads.max
            ))),
        };
        if let Err(error) = spawned {
            tracing::warn!(target: TARGET, %error, "cannot start an authentication thread");
            let failed = AuthJobResult::failed(handle);
            if let Some((handle, code)) = self.auth.finish(&mut self.core, Instant::now(), failed) {
                log_connack(handle, code, "enhanced authentication");
            }
        }
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
        let mut who = ClientInfo::new(client_id, username, &conn.peer);
        who.client_cert = conn.client_cert.as_deref();
        check(authorizer, &who)
    }

    fn acknowledge_connect(&mut self, handle: ConnectionHandle, verdict: ReasonCode) {
        let code = connack_code(verdict);
        // An error means that the connection closed while the verdict was pending.
        if self
            .core
            .acknowledge_connect(Instant::now(), handle, code)
            .is_ok()
        {
            log_connack(handle, code, "authenticator");
        }
    }

    /// Disconnects everyone with 0x8B, lets the writers flush (bounded by the flush timeout),
    /// then closes every socket and waits (briefly) for the connection threads to end.
    fn shutdown(&mut self, inbound: &Receiver<Inbound>, live: &AtomicUsize) {
        tracing::info!(target: TARGET, connections = self.conns.len(), "shutting down");
        self.core
            .disconnect_all(Instant::now(), ReasonCode::ServerShuttingDown);
        self.flush();
        // Connections the core did not close (those still waiting for CONNECT): close them.
        let handles: Vec<_> = self.conns.keys().copied().collect();
        for handle in handles {
            if let Some(conn) = self.conns.remove(&handle) {
                self.close(handle, conn);
            }
        }
        let deadline = Instant::now() + self.config.flush_timeout;
        while !self.closing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match inbound.recv_timeout(left) {
                Ok(Inbound::WriterDone(handle)) => {
                    if let Some(c) = self.closing.remove(&handle) {
                        c.killer.shutdown();
                    }
                }
                Ok(Inbound::Opened(opened, _)) => opened.killer.shutdown(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for (_, c) in self.closing.drain() {
            c.killer.shutdown();
        }
        // Every socket is shut down: the connection threads end; keep draining so that none
        // waits on a full channel meanwhile.
        let deadline = Instant::now() + STOP_WAIT;
        while live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            if let Ok(Inbound::Opened(opened, _)) = inbound.recv_timeout(Duration::from_millis(5)) {
                opened.killer.shutdown();
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

/// Refuses the client (0x83) if an authentication thread ends without a verdict (its
/// authenticator panicked), instead of leaving it to the connect timeout.
struct VerdictGuard {
    tx: Option<SyncSender<Inbound>>,
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
