//! The parts of the brokers that do not depend on the I/O driver: listen addresses and
//! listeners, peer addresses, the CONNECT awaiting authentication ([`ConnectRequest`]), the
//! [`Authorizer`] trait and who it is asked about ([`ClientInfo`]), enhanced authentication
//! ([`EnhancedAuthenticator`], section 4.12; see [`enhanced`]), the configuration
//! ([`BrokerConfig`]), the password file ([`auth`]), the ACL file ([`acl`]) and the TLS settings
//! of listeners ([`tls`]).
//!
//! The async broker (`mqttproto::tokio::broker`, feature `tokio`) and the blocking broker
//! (`mqttproto::blocking::broker`, feature `blocking`) re-export these under their own paths, so
//! one configuration file, password file and ACL file serve either driver.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
#[cfg(unix)]
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqttproto_core::broker::BrokerOptions;
use mqttproto_core::codec::Connect;

pub mod acl;
pub mod auth;
pub mod enhanced;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) mod framing;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) mod pause;
pub mod tls;

pub use acl::AclFile;
pub use auth::PasswordFile;
pub use enhanced::{AuthContext, AuthConversation, AuthStep, EnhancedAuthenticator};
pub use tls::{ClientCertificates, ServerTlsOptions};

// ---- addresses --------------------------------------------------------------------------

/// Where the broker listens.
///
/// Parses from `IP:PORT` (`127.0.0.1:1883`, `[::1]:1883`), optionally prefixed with `mqtt://` or
/// `tcp://`; from `mqtts://IP:PORT` (or `ssl://`) for TLS; from `ws://IP:PORT/PATH` and
/// `wss://IP:PORT/PATH` for WebSocket (the path defaults to `/mqtt`); and from `unix:PATH` or
/// `unix://PATH` (on Unix). Displays as the same URLs (`mqtt://IP:PORT`, `mqtts://IP:PORT`,
/// `ws://IP:PORT/PATH`, `wss://IP:PORT/PATH`, `unix://PATH`), which our client accepts.
///
/// TLS listeners need [`ServerTlsOptions`]: see [`Listener`]. Every scheme
/// parses whatever the enabled features; a broker built without the transport (TLS: feature
/// `tls` for the async broker; WebSocket: feature `websocket`) refuses to bind it, with an error
/// that names the feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP socket address. Port 0 picks a free port; the broker's `local_addrs` tells which.
    Tcp(SocketAddr),
    /// TLS over TCP (`mqtts://`).
    Tls(SocketAddr),
    /// WebSocket (`ws://`), on a request path such as `/mqtt`.
    Ws {
        /// The TCP socket address.
        addr: SocketAddr,
        /// The request path served (other paths get 404).
        path: String,
    },
    /// WebSocket over TLS (`wss://`).
    Wss {
        /// The TCP socket address.
        addr: SocketAddr,
        /// The request path served (other paths get 404).
        path: String,
    },
    /// A Unix domain socket path. A stale socket file left by a previous run is replaced; the
    /// file is removed on shutdown.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "mqtt://{a}"),
            ListenAddr::Tls(a) => write!(f, "mqtts://{a}"),
            ListenAddr::Ws { addr, path } => write!(f, "ws://{addr}{path}"),
            ListenAddr::Wss { addr, path } => write!(f, "wss://{addr}{path}"),
            #[cfg(unix)]
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A listen address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listen address {input:?}: {reason}")]
pub struct ListenAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ListenAddrError {
            input: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            #[cfg(unix)]
            {
                let path = path.strip_prefix("//").unwrap_or(path);
                if path.is_empty() {
                    return Err(err("no socket path"));
                }
                return Ok(ListenAddr::Unix(PathBuf::from(path)));
            }
            #[cfg(not(unix))]
            {
                let _ = path;
                return Err(err("Unix sockets are not available on this platform"));
            }
        }
        let bad_addr = || err("expected IP:PORT, [IPv6]:PORT or unix:PATH");
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("mqtt".to_string(), s),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let addr = authority.parse::<SocketAddr>().map_err(|_| bad_addr())?;
        let ws_path = || -> Result<String, ListenAddrError> {
            if path.is_empty() || path == "/" {
                Ok("/mqtt".to_string())
            } else if path.contains(['?', '#', ' ']) {
                Err(err("a WebSocket path holds no query, fragment or space"))
            } else {
                Ok(path.to_string())
            }
        };
        let no_path = || {
            if path.is_empty() || path == "/" {
                Ok(())
            } else {
                Err(err("only WebSocket listeners have a path"))
            }
        };
        match scheme.as_str() {
            "mqtt" | "tcp" => no_path().map(|()| ListenAddr::Tcp(addr)),
            "mqtts" | "ssl" => no_path().map(|()| ListenAddr::Tls(addr)),
            "ws" => Ok(ListenAddr::Ws {
                addr,
                path: ws_path()?,
            }),
            "wss" => Ok(ListenAddr::Wss {
                addr,
                path: ws_path()?,
            }),
            _ => {
                let _ = ws_path;
                Err(err(
                    "unsupported scheme (expected mqtt, mqtts, ws, wss or unix)",
                ))
            }
        }
    }
}

impl ListenAddr {
    /// The TCP socket address, for every listener but Unix sockets.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Tls(a) => Some(*a),
            ListenAddr::Ws { addr, .. } => Some(*addr),
            ListenAddr::Wss { addr, .. } => Some(*addr),
            #[cfg(unix)]
            ListenAddr::Unix(_) => None,
        }
    }

    /// The same kind of listener on another socket address (a Unix socket gives TCP).
    pub fn with_socket_addr(&self, a: SocketAddr) -> ListenAddr {
        match self {
            ListenAddr::Tls(_) => ListenAddr::Tls(a),
            ListenAddr::Ws { path, .. } => ListenAddr::Ws {
                addr: a,
                path: path.clone(),
            },
            ListenAddr::Wss { path, .. } => ListenAddr::Wss {
                addr: a,
                path: path.clone(),
            },
            _ => ListenAddr::Tcp(a),
        }
    }

    /// Whether this listener runs TLS (`mqtts://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        matches!(self, ListenAddr::Tls(_) | ListenAddr::Wss { .. })
    }
}

/// A listener: an address and, for `mqtts://` and `wss://`, its TLS settings.
///
/// [`ListenAddr`] and [`SocketAddr`] convert into listeners without TLS settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Listener {
    /// Where to listen.
    pub addr: ListenAddr,
    /// The TLS settings, required by (and only allowed for) `mqtts://` and `wss://`.
    pub tls: Option<tls::ServerTlsOptions>,
}

impl Listener {
    /// A listener without TLS settings.
    pub fn new(addr: impl Into<ListenAddr>) -> Listener {
        Listener {
            addr: addr.into(),
            tls: None,
        }
    }

    /// Sets the TLS settings.
    pub fn with_tls(mut self, tls: tls::ServerTlsOptions) -> Listener {
        self.tls = Some(tls);
        self
    }
}

impl From<ListenAddr> for Listener {
    fn from(addr: ListenAddr) -> Self {
        Listener::new(addr)
    }
}

impl From<SocketAddr> for Listener {
    fn from(addr: SocketAddr) -> Self {
        Listener::new(addr)
    }
}

/// The address of a connected client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A peer on a Unix domain socket (such peers are usually unnamed).
    Unix,
    /// A stream handed to a broker's `BrokerHandle::accept_stream` without an address.
    Unknown,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix => f.write_str("unix"),
            PeerAddr::Unknown => f.write_str("unknown"),
        }
    }
}

// ---- authentication ---------------------------------------------------------------------

/// A CONNECT awaiting an authenticator's verdict (the async broker's
/// `tokio::broker::Authenticator`, the blocking broker's `blocking::broker::Authenticator`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The client's CONNECT packet (client id, credentials, will, properties).
    pub connect: Box<Connect>,
    /// Where the client connects from.
    pub peer: PeerAddr,
    /// The listener it connected to (`None` for a stream handed to `accept_stream`).
    pub listener: Option<ListenAddr>,
    /// The DER of the client's TLS certificate (the leaf), when it connected over TLS with one
    /// (which the listener's [`ClientCertificates`] setting
    /// verified).
    pub client_cert: Option<Bytes>,
}

impl ConnectRequest {
    /// The Client Identifier; empty when the client asks the broker to assign one.
    pub fn client_id(&self) -> &str {
        self.connect.client_id.as_str()
    }

    /// The User Name, if any.
    pub fn username(&self) -> Option<&str> {
        self.connect.username.as_ref().map(|u| u.as_str())
    }

    /// The Password, if any (binary data).
    pub fn password(&self) -> Option<&[u8]> {
        self.connect.password.as_deref()
    }
}

// ---- authorization ----------------------------------------------------------------------

/// Who is asking, for an [`Authorizer`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClientInfo<'a> {
    /// The Client Identifier (the assigned one, if the broker assigned it).
    pub client_id: &'a str,
    /// The User Name the client connected with.
    pub username: Option<&'a str>,
    /// Where the client connects from.
    pub peer: &'a PeerAddr,
    /// The DER of the client's TLS certificate (the leaf), if any.
    pub client_cert: Option<&'a [u8]>,
}

impl<'a> ClientInfo<'a> {
    /// A client without a TLS certificate.
    pub fn new(client_id: &'a str, username: Option<&'a str>, peer: &'a PeerAddr) -> Self {
        ClientInfo {
            client_id,
            username,
            peer,
            client_cert: None,
        }
    }
}

/// Decides what connected clients may publish and subscribe to.
///
/// A denied PUBLISH is answered with 0x87 Not authorized in PUBACK or PUBREC (a denied QoS 0
/// message is dropped silently); a denied filter gets 0x87 in its SUBACK slot. The methods run
/// on the broker's owner task, once per PUBLISH and per filter: they must be quick and must not
/// block (keep rules in memory; refresh them from elsewhere if needed).
///
/// The built-in implementation is [`AclFile`].
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `client` may publish to `topic`.
    fn authorize_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool;
    /// Whether `client` may subscribe to `filter` (for a shared subscription, the filter
    /// without its `$share/GROUP/` prefix).
    fn authorize_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool;
}

// ---- configuration ----------------------------------------------------------------------

/// Configuration of a broker, generic over the kind of authenticator `A`: the async broker uses
/// `BrokerConfig<dyn tokio::broker::Authenticator>` (named `tokio::broker::BrokerConfig`), the
/// blocking broker `BrokerConfig<dyn blocking::broker::Authenticator>` (named
/// `blocking::broker::BrokerConfig`). Both read the same fields the same way; each driver adds
/// `with_authenticator` for its kind of authenticator.
///
/// The defaults: no listener (add some with [`listen`](Self::listen)), the core's
/// [`BrokerOptions`] (a Receive Maximum of 100) with a Topic Alias Maximum of 10, at most
/// 10,000 connections, a connect timeout of 10 s, 1,000 queued messages per session, no Maximum
/// Packet Size beyond the protocol's, outbound queues of 1,024 writes and 8 MiB per connection,
/// and everyone allowed to connect.
#[non_exhaustive]
pub struct BrokerConfig<A: ?Sized> {
    /// Where to listen.
    pub listeners: Vec<Listener>,
    /// The core's options: what CONNACK announces and enforces (Receive Maximum, Maximum QoS,
    /// Retain Available, Maximum Packet Size, Topic Alias Maximum, …), the connect timeout and
    /// offline-queue bound (in [`BrokerOptions::session`]), the longest session expiry granted.
    /// The `with_*` methods set the fields for the common limits.
    pub options: BrokerOptions,
    /// The most connections open at once (including those still waiting for CONNECT). A
    /// socket beyond it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// The most writes pending for one connection. Beyond it the client is disconnected (see
    /// the driver's documentation, section *Slow consumers*).
    pub outbound_queue_capacity: usize,
    /// The most bytes pending for one connection. Beyond it the client is disconnected (see
    /// the driver's documentation, section *Slow consumers*). A single packet larger than this is
    /// still sent when nothing else is pending.
    pub max_outbound_bytes: usize,
    /// How long a closing connection (or a shutdown) may take to write out its last bytes
    /// before its socket is closed regardless.
    pub flush_timeout: Duration,
    /// Who may connect; `None` accepts everyone. Not consulted for a client that uses
    /// enhanced authentication (see [`enhanced_authenticator`](Self::enhanced_authenticator)).
    pub authenticator: Option<Arc<A>>,
    /// Enhanced authentication (section 4.12) for CONNECTs that carry an Authentication
    /// Method; `None` refuses them all with 0x8C Bad authentication method [MQTT-4.12.0-1].
    /// See [`enhanced`].
    pub enhanced_authenticator: Option<Arc<dyn EnhancedAuthenticator>>,
    /// What clients may publish and subscribe to; `None` allows everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

impl<A: ?Sized> Clone for BrokerConfig<A> {
    fn clone(&self) -> Self {
        BrokerConfig {
            listeners: self.listeners.clone(),
            options: self.options.clone(),
            max_connections: self.max_connections,
            outbound_queue_capacity: self.outbound_queue_capacity,
            max_outbound_bytes: self.max_outbound_bytes,
            flush_timeout: self.flush_timeout,
            authenticator: self.authenticator.clone(),
            enhanced_authenticator: self.enhanced_authenticator.clone(),
            authorizer: self.authorizer.clone(),
        }
    }
}

impl<A: ?Sized> Default for BrokerConfig<A> {
    fn default() -> Self {
        let mut options = BrokerOptions::default();
        options.connack.topic_alias_maximum = Some(10);
        BrokerConfig {
            listeners: Vec::new(),
            options,
            max_connections: 10_000,
            outbound_queue_capacity: 1024,
            max_outbound_bytes: 8 << 20,
            flush_timeout: Duration::from_secs(5),
            authenticator: None,
            enhanced_authenticator: None,
            authorizer: None,
        }
    }
}

impl<A: ?Sized> fmt::Debug for BrokerConfig<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("listeners", &self.listeners)
            .field("options", &self.options)
            .field("max_connections", &self.max_connections)
            .field("outbound_queue_capacity", &self.outbound_queue_capacity)
            .field("max_outbound_bytes", &self.max_outbound_bytes)
            .field("flush_timeout", &self.flush_timeout)
            .field("authenticator", &self.authenticator.as_ref().map(|_| ".."))
            .field(
                "enhanced_authenticator",
                &self.enhanced_authenticator.as_ref().map(|_| ".."),
            )
            .field("authorizer", &self.authorizer.as_ref().map(|_| ".."))
            .finish()
    }
}

impl<A: ?Sized> BrokerConfig<A> {
    /// The largest packet the broker accepts, as the core enforces it (the smaller of the
    /// session's and the CONNACK's Maximum Packet Size; `u32::MAX` when neither is set): what
    /// the readers' framing may gather.
    #[cfg(any(feature = "tokio", feature = "blocking"))]
    pub(crate) fn max_inbound_packet_size(&self) -> u32 {
        let session = self.options.session.maximum_packet_size;
        let connack = self.options.connack.maximum_packet_size;
        session
            .into_iter()
            .chain(connack)
            .map(|m| m.get())
            .min()
            .unwrap_or(u32::MAX)
    }

    /// Adds a listener: a [`ListenAddr`], a [`SocketAddr`], or a [`Listener`] with TLS
    /// settings.
    pub fn listen(mut self, addr: impl Into<Listener>) -> Self {
        self.listeners.push(addr.into());
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// The largest packet accepted from clients, before and after CONNACK (which announces it
    /// as Maximum Packet Size). A larger packet closes the connection with 0x95.
    pub fn with_max_packet_size(mut self, max: NonZeroU32) -> Self {
        self.options.session.maximum_packet_size = Some(max);
        self.options.connack.maximum_packet_size = Some(max);
        self
    }

    /// How long a new connection may take to send CONNECT (and to be authenticated) before it
    /// is closed.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.session.connect_timeout = timeout;
        self
    }

    /// How many messages may wait for a session (offline, or beyond the client's Receive
    /// Maximum). When full, the oldest QoS 0 message makes room; without one the new message is
    /// dropped.
    pub fn with_max_queued_messages(mut self, max: usize) -> Self {
        self.options.session.max_queued_messages = max;
        self
    }

    /// The Topic Alias Maximum announced to clients (0: clients may not use topic aliases).
    pub fn with_topic_alias_maximum(mut self, max: u16) -> Self {
        self.options.connack.topic_alias_maximum = (max > 0).then_some(max);
        self
    }

    /// Sets the [`EnhancedAuthenticator`]: CONNECTs with an Authentication Method it supports
    /// go through its challenge and response exchange (and may re-authenticate later); other
    /// methods are refused with 0x8C [MQTT-4.12.0-1]. See [`enhanced`].
    pub fn with_enhanced_authenticator(
        mut self,
        authenticator: impl EnhancedAuthenticator,
    ) -> Self {
        self.enhanced_authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Sets the [`Authorizer`] (and turns on the core's [`BrokerOptions::authorize`]).
    pub fn with_authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self.options.authorize = true;
        self
    }

    /// The Receive Maximum announced to clients: how many QoS 1 and 2 PUBLISH a client may
    /// have in flight towards the broker at once.
    pub fn with_receive_maximum(mut self, max: std::num::NonZeroU16) -> Self {
        self.options.connack.receive_maximum = Some(max);
        self
    }

    /// The same configuration for another kind of authenticator, without the authenticator
    /// (for example, to run the same listeners and limits on the other driver; set its
    /// authenticator afterwards). The enhanced authenticator and the authorizer, which both
    /// drivers share, stay.
    pub fn without_authenticator<B: ?Sized>(self) -> BrokerConfig<B> {
        BrokerConfig {
            listeners: self.listeners,
            options: self.options,
            max_connections: self.max_connections,
            outbound_queue_capacity: self.outbound_queue_capacity,
            max_outbound_bytes: self.max_outbound_bytes,
            flush_timeout: self.flush_timeout,
            authenticator: None,
            enhanced_authenticator: self.enhanced_authenticator,
            authorizer: self.authorizer,
        }
    }
}

/// The SUBACK verdicts for a SUBSCRIBE under authorization: 0x87 Not authorized for each
/// filter `allowed` refuses (logged on the broker's target), Success (the core grants the QoS)
/// for the others.
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) fn subscribe_verdicts(
    handle: mqttproto_core::broker::ConnectionHandle,
    client_id: &str,
    subscribe: &mqttproto_core::codec::Subscribe,
    mut allowed: impl FnMut(&str) -> bool,
) -> Vec<mqttproto_core::ReasonCode> {
    use mqttproto_core::ReasonCode;
    subscribe
        .subscriptions
        .iter()
        .map(|s| {
            if allowed(s.filter.filter_str()) {
                ReasonCode::Success
            } else {
                tracing::info!(
                    target: "mqttproto::broker", conn = handle.index(), client_id,
                    filter = s.filter.as_str(), "subscription not authorized"
                );
                ReasonCode::NotAuthorized
            }
        })
        .collect()
}

/// The PUBACK/PUBREC verdict for a PUBLISH under authorization: Success, or 0x87 Not
/// authorized (logged on the broker's target).
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) fn publish_verdict(
    handle: mqttproto_core::broker::ConnectionHandle,
    client_id: &str,
    topic: &str,
    allowed: bool,
) -> mqttproto_core::ReasonCode {
    if allowed {
        return mqttproto_core::ReasonCode::Success;
    }
    tracing::info!(
        target: "mqttproto::broker", conn = handle.index(), client_id, topic,
        "publish not authorized"
    );
    mqttproto_core::ReasonCode::NotAuthorized
}

/// The reason code CONNACK carries for an authenticator's verdict: Success for any code below
/// 0x80, the failure code itself when CONNACK can carry it, 0x87 Not authorized otherwise.
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) fn connack_code(verdict: mqttproto_core::ReasonCode) -> mqttproto_core::ReasonCode {
    use mqttproto_core::{PacketType, ReasonCode};
    if !verdict.is_error() {
        ReasonCode::Success
    } else if verdict.is_valid_for(PacketType::ConnAck) {
        verdict
    } else {
        ReasonCode::NotAuthorized
    }
}
