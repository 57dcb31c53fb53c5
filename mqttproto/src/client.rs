//! What the async (`tokio::client`) and blocking (`blocking::client`)
//! clients share: errors, connection events, the reconnection policy, the enhanced
//! authentication trait, and the options their builders take (the same methods on both
//! `ClientBuilder`s). None of it depends on an async runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::proto::codec::Publish;
use crate::proto::{self, ClientOptions, ReasonCode, StateError};
use crate::transport::{Target, TransportOptions};

/// An application message received from the broker.
pub type Message = Publish;

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request is invalid for the connection (QoS above the server's maximum, retain not
    /// available, packet too large, …).
    #[error(transparent)]
    State(#[from] StateError),
    /// A topic name or filter is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] proto::TopicError),
    /// The offline queue is full (see the builder's `offline_queue`).
    #[error("offline queue full")]
    QueueFull,
    /// The client stopped: `disconnect` was called, or reconnecting is off and the connection
    /// ended.
    #[error("client closed")]
    Closed,
    /// The blocking client's wait for an outcome ran out (see
    /// `blocking::ClientBuilder::request_timeout`). The request itself goes on: a publish is
    /// still delivered per its QoS, a subscription is still made (and then dropped).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A change in the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Connected (again).
    Connected {
        /// Whether the broker resumed the session.
        session_present: bool,
    },
    /// The broker had lost the session after a reconnect; the client subscribed again and resent
    /// unacknowledged messages.
    SessionLost,
    /// The connection ended or could not be made.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// The broker's reason code, if it sent DISCONNECT or refused in CONNACK.
        reason_code: Option<ReasonCode>,
    },
}

/// Reconnection policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconnect {
    /// Do not reconnect: when the connection ends, the client closes.
    Off,
    /// Reconnect after `initial`, doubling up to `max`, each delay drawn at random between half
    /// and all of it (jitter).
    Backoff {
        /// First delay.
        initial: Duration,
        /// Largest delay.
        max: Duration,
    },
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// The delay before attempt number `attempt` (0 for the first retry), or `None` when the
    /// policy is off. `rng` is the state of a xorshift generator (any non-zero seed).
    pub(crate) fn delay(&self, attempt: u32, rng: &mut u64) -> Option<Duration> {
        match self {
            Reconnect::Off => None,
            Reconnect::Backoff { initial, max } => {
                let base = initial.saturating_mul(1u32 << attempt.min(16)).min(*max);
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let half = base / 2;
                let extra = half.mul_f64((*rng % 10_000) as f64 / 10_000.0);
                Some(half + extra)
            }
        }
    }
}

/// Answers the server's AUTH challenges during enhanced authentication (section 4.12).
///
/// Called on the client's background task or thread; it should answer promptly.
pub trait Authenticator: Send + 'static {
    /// The server sent AUTH with Continue authentication and this Authentication Data: return
    /// the next Authentication Data to send, or an error to give up (the client then sends
    /// DISCONNECT 0x8C Bad authentication method).
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String>;
    /// The server accepted (re-)authentication with this final Authentication Data.
    fn success(&mut self, _data: Option<&[u8]>) {}
}

/// A shared, lockable authenticator.
pub(crate) type SharedAuthenticator = Arc<std::sync::Mutex<dyn Authenticator>>;

/// Asks `authenticator` about an AUTH packet from the server and answers through `core`.
pub(crate) fn answer_auth(
    authenticator: Option<&SharedAuthenticator>,
    core: &mut proto::Client,
    now: std::time::Instant,
    auth: proto::codec::Auth,
) {
    let Some(authenticator) = authenticator else {
        return;
    };
    let Ok(mut a) = authenticator.lock() else {
        return;
    };
    let data = auth.properties.authentication_data.as_deref();
    if auth.reason_code == ReasonCode::Success {
        a.success(data);
        return;
    }
    match a.challenge(data) {
        Ok(next) => {
            let _ = core.authenticate(now, next);
        }
        Err(reason) => {
            tracing::info!(target: "mqttproto::client", %reason, "authentication abandoned");
            let _ = core.disconnect(now, ReasonCode::BadAuthenticationMethod, None);
        }
    }
}

/// Tells `authenticator` that the server accepted the connection: a successful CONNACK ends
/// the enhanced-authentication exchange, with the server's final Authentication Data if any.
pub(crate) fn connack_auth(
    authenticator: Option<&SharedAuthenticator>,
    connack: &proto::codec::ConnAck,
) {
    let (Some(authenticator), Some(_)) = (authenticator, &connack.properties.authentication_method)
    else {
        return;
    };
    if let Ok(mut a) = authenticator.lock() {
        a.success(connack.properties.authentication_data.as_deref());
    }
}

/// Whether `msg` is the broker's resend (after a reconnect) of a QoS 1 message still `waiting`
/// here from an earlier connection. It is one message, now registered on this connection, so
/// the waiting copy's acknowledgement goes out on this connection once it is delivered; keeping
/// both would put the acknowledgement behind every older waiting message (after a cut, onto a
/// dead connection, again and again). The broker cannot reuse a packet id we have not
/// acknowledged, and a waiting message is not acknowledged yet, so the same id is the same
/// message.
pub(crate) fn resent_while_waiting<'a>(
    mut waiting: impl Iterator<Item = &'a Message>,
    msg: &Message,
) -> bool {
    msg.qos == proto::QoS::AtLeastOnce
        && msg.dup
        && msg.packet_id.is_some()
        && waiting.any(|m| m.qos == proto::QoS::AtLeastOnce && m.packet_id == msg.packet_id)
}

/// Where a publish's outcome goes: the tokio client's oneshot, the blocking client's channel.
pub(crate) trait PublishReply {
    fn reply(self, outcome: Result<ReasonCode, ClientError>);
}

#[cfg(feature = "tokio")]
impl PublishReply for tokio::sync::oneshot::Sender<Result<ReasonCode, ClientError>> {
    fn reply(self, outcome: Result<ReasonCode, ClientError>) {
        let _ = self.send(outcome);
    }
}

#[cfg(feature = "blocking")]
impl PublishReply for std::sync::mpsc::SyncSender<Result<ReasonCode, ClientError>> {
    fn reply(self, outcome: Result<ReasonCode, ClientError>) {
        let _ = self.try_send(outcome);
    }
}

/// The publishing side of a client's connection, shared by both clients: replies awaited by
/// packet id (QoS 1/2) or by write (QoS 0), and the publishes waiting for a free packet id.
pub(crate) struct Publishing<R> {
    /// QoS 1/2 publishes awaiting PUBACK/PUBCOMP, by packet id.
    pub(crate) pending: std::collections::HashMap<proto::PacketId, R>,
    /// QoS 0 publishes to resolve once written.
    pub(crate) written: Vec<R>,
    /// QoS 1/2 publishes (and every publish behind them, to keep the order) waiting for a free
    /// packet identifier: all 65,535 are taken by messages in flight or waiting for the
    /// server's Receive Maximum. Acknowledgements free them.
    pub(crate) stalled: std::collections::VecDeque<(Publish, Option<R>)>,
}

impl<R: PublishReply> Publishing<R> {
    pub(crate) fn new() -> Self {
        Publishing {
            pending: Default::default(),
            written: Vec::new(),
            stalled: Default::default(),
        }
    }

    /// Publishes now, or holds the message back behind earlier ones when it needs a packet
    /// identifier and none is free (or earlier ones are held back). The core must be connected.
    pub(crate) fn publish(
        &mut self,
        core: &mut proto::Client,
        now: std::time::Instant,
        p: Publish,
        reply: Option<R>,
    ) {
        if !self.stalled.is_empty()
            || (p.qos != proto::QoS::AtMostOnce && !core.has_free_packet_id())
        {
            self.stalled.push_back((p, reply));
            return;
        }
        self.publish_now(core, now, p, reply);
    }

    fn publish_now(
        &mut self,
        core: &mut proto::Client,
        now: std::time::Instant,
        p: Publish,
        reply: Option<R>,
    ) {
        let qos = p.qos;
        match core.publish(now, p) {
            Ok(Some(id)) => {
                if let Some(r) = reply {
                    self.pending.insert(id, r);
                }
            }
            Ok(None) => {
                if let Some(r) = reply {
                    self.written.push(r);
                }
            }
            Err(e) => match reply {
                Some(r) => r.reply(Err(e.into())),
                None => tracing::warn!(
                    target: "mqttproto::client", error = %e, ?qos, "try_publish: message refused"
                ),
            },
        }
    }

    /// Publishes what waited for packet identifiers, in order, as far as identifiers are free.
    pub(crate) fn retry_stalled(&mut self, core: &mut proto::Client, now: std::time::Instant) {
        while let Some((p, _)) = self.stalled.front() {
            if core.state() != proto::ClientState::Connected
                || (p.qos != proto::QoS::AtMostOnce && !core.has_free_packet_id())
            {
                return;
            }
            if let Some((p, reply)) = self.stalled.pop_front() {
                self.publish_now(core, now, p, reply);
            }
        }
    }

    /// Every reply fails with `error` (the client is closing); the held-back publishes go.
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> ClientError) {
        for (_, r) in self.pending.drain() {
            r.reply(Err(error()));
        }
        for (_, r) in self.stalled.drain(..) {
            if let Some(r) = r {
                r.reply(Err(error()));
            }
        }
    }
}

/// Acknowledges a message the application now has (it reached every subscription it matches).
/// A QoS 2 acknowledgement that cannot go out now (no connection) waits in `unacked` for the
/// next one: the core keeps QoS 2 state across a reconnect and recognises the broker's resend
/// as a duplicate, so nothing else would acknowledge it. A QoS 1 acknowledgement that cannot go
/// out is dropped: the broker resends the message on the next connection and that copy is
/// acknowledged; keeping the id could acknowledge a different message that reuses it.
pub(crate) fn acknowledge_delivered(
    core: &mut proto::Client,
    now: std::time::Instant,
    msg: &Message,
    unacked: &mut Vec<proto::PacketId>,
) {
    let Some(id) = msg.packet_id else {
        return;
    };
    match core.acknowledge(now, id, ReasonCode::Success) {
        Ok(()) => {}
        Err(StateError::NotConnected | StateError::Failed(_))
            if msg.qos == proto::QoS::ExactlyOnce =>
        {
            unacked.push(id)
        }
        Err(e) => {
            tracing::debug!(target: "mqttproto::client", packet_id = id.get(), error = %e, "acknowledgement not sent")
        }
    }
}

/// On a new connection, sends the QoS 2 acknowledgements [`acknowledge_delivered`] kept. Those
/// that still cannot go out (the connection failed again right after its CONNACK) stay for the
/// next one: a QoS 2 message left "delivered, not acknowledged" would never complete, and the
/// broker would resend it for ever.
pub(crate) fn retry_unacked(
    core: &mut proto::Client,
    now: std::time::Instant,
    unacked: &mut Vec<proto::PacketId>,
) {
    unacked.retain(|&id| {
        matches!(
            core.acknowledge(now, id, ReasonCode::Success),
            Err(StateError::NotConnected | StateError::Failed(_))
        )
    });
}

/// The options both client builders take.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) target: Target,
    pub(crate) transport: TransportOptions,
    pub(crate) authenticator: Option<SharedAuthenticator>,
    pub(crate) options: ClientOptions,
    pub(crate) reconnect: Reconnect,
    pub(crate) offline_queue: usize,
    pub(crate) subscription_capacity: usize,
    /// The first builder input that is not a valid MQTT string (a client identifier, user
    /// name, User Property or Authentication Method with U+0000, say). The client then makes
    /// no connection: it reports this and closes, rather than connect with the value dropped.
    pub(crate) invalid: Option<String>,
}

impl Settings {
    /// Converts a builder input to an MQTT string, recording the first one that is invalid.
    pub(crate) fn mqtt_string(
        &mut self,
        what: &str,
        value: &str,
    ) -> Option<crate::proto::MqttString> {
        match crate::proto::MqttString::try_from(value) {
            Ok(s) => Some(s),
            Err(e) => {
                self.invalid
                    .get_or_insert_with(|| format!("invalid {what} {value:?}: {e}"));
                None
            }
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("options", &self.options)
            .field("reconnect", &self.reconnect)
            .field("offline_queue", &self.offline_queue)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn new(target: Target) -> Settings {
        Settings {
            target,
            transport: TransportOptions::default(),
            authenticator: None,
            options: ClientOptions {
                // Bounds the QoS 1/2 messages that can wait for a slow consumer.
                receive_maximum: std::num::NonZeroU16::new(1024)
                    .unwrap_or(std::num::NonZeroU16::MIN),
                ..ClientOptions::default()
            },
            reconnect: Reconnect::default(),
            offline_queue: 10_000,
            subscription_capacity: 1024,
            invalid: None,
        }
    }

    /// The core options the drivers run with: inbound QoS 1/2 messages are acknowledged once
    /// they are in their subscriptions' buffers, so that the broker's window (our Receive
    /// Maximum) bounds what waits in memory.
    pub(crate) fn core_options(&self) -> ClientOptions {
        let mut options = self.options.clone();
        options.manual_acks = true;
        options
    }
}

/// The builder methods both clients share; the builder has a `settings: Settings` field.
macro_rules! common_builder_methods {
    () => {
        /// TLS settings for `mqtts://` and `wss://` (custom CA, client certificate, server
        /// name).
        #[cfg(any(feature = "tls", feature = "blocking"))]
        pub fn tls(mut self, tls: crate::transport::TlsOptions) -> Self {
            self.settings.transport.tls = tls;
            self
        }

        /// Client identifier (empty: the broker assigns one, which is then reused on
        /// reconnects).
        ///
        /// This and the other builder methods that take a string need a valid MQTT string
        /// (UTF-8 without U+0000, at most 65,535 bytes [MQTT-1.5.4-1, MQTT-1.5.4-2]). With an
        /// invalid one the client makes no connection: it reports the input in a
        /// `ConnectionEvent::Disconnected` and closes, and every request fails with
        /// `ClientError::Closed`.
        pub fn client_id(mut self, id: &str) -> Self {
            if let Some(id) = self.settings.mqtt_string("client identifier", id) {
                self.settings.options.client_id = id;
            }
            self
        }

        /// User name and password.
        pub fn credentials(mut self, username: &str, password: impl Into<bytes::Bytes>) -> Self {
            self.settings.options.username = self.settings.mqtt_string("user name", username);
            self.settings.options.password = Some(password.into());
            self
        }

        /// Clean Start on the first connection (reconnects always resume).
        pub fn clean_start(mut self, clean: bool) -> Self {
            self.settings.options.clean_start = clean;
            self
        }

        /// Session Expiry Interval in seconds.
        pub fn session_expiry(mut self, seconds: u32) -> Self {
            self.settings.options.session_expiry_interval = seconds;
            self
        }

        /// Keep Alive (whole seconds; zero turns keep alive off).
        pub fn keep_alive(mut self, keep_alive: std::time::Duration) -> Self {
            self.settings.options.keep_alive =
                u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
            self
        }

        /// The Will Message.
        pub fn will(mut self, will: crate::proto::codec::Will) -> Self {
            self.settings.options.will = Some(will);
            self
        }

        /// Receive Maximum (how many QoS 1/2 messages the broker may send before we
        /// acknowledge).
        pub fn receive_maximum(mut self, n: u16) -> Self {
            if let Some(n) = std::num::NonZeroU16::new(n) {
                self.settings.options.receive_maximum = n;
            }
            self
        }

        /// Maximum Packet Size we accept.
        pub fn maximum_packet_size(mut self, n: u32) -> Self {
            self.settings.options.maximum_packet_size = std::num::NonZeroU32::new(n);
            self
        }

        /// Topic Alias Maximum we accept.
        pub fn topic_alias_maximum(mut self, n: u16) -> Self {
            self.settings.options.topic_alias_maximum = n;
            self
        }

        /// Use topic aliases for outbound messages.
        pub fn outbound_topic_aliases(mut self, on: bool) -> Self {
            self.settings.options.outbound_topic_aliases = on;
            self
        }

        /// User Properties of CONNECT.
        pub fn user_property(mut self, name: &str, value: &str) -> Self {
            let n = self.settings.mqtt_string("User Property name", name);
            let v = self.settings.mqtt_string("User Property value", value);
            if let (Some(n), Some(v)) = (n, v) {
                self.settings
                    .options
                    .user_properties
                    .push(crate::proto::UserProperty::new(n, v));
            }
            self
        }

        /// The reconnection policy.
        pub fn reconnect(mut self, policy: crate::client::Reconnect) -> Self {
            self.settings.reconnect = policy;
            self
        }

        /// How many publishes may wait while disconnected. When full, publishing fails with
        /// [`ClientError::QueueFull`](crate::client::ClientError::QueueFull); nothing already
        /// queued is dropped.
        pub fn offline_queue(mut self, n: usize) -> Self {
            self.settings.offline_queue = n;
            self
        }

        /// How many messages each subscription buffers before the client stops reading from
        /// the socket.
        pub fn subscription_capacity(mut self, n: usize) -> Self {
            self.settings.subscription_capacity = n.max(1);
            self
        }

        /// How long to wait for PINGRESP before the connection is considered lost.
        pub fn ping_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.options.ping_timeout = timeout;
            self
        }

        /// How long to wait for CONNACK (and, in the blocking client, for the TCP connection,
        /// TLS and WebSocket handshakes).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.options.connect_timeout = timeout;
            self
        }

        /// Enhanced authentication: the Authentication Method, the initial Authentication
        /// Data, and the [`Authenticator`](crate::client::Authenticator) that answers the
        /// server's challenges.
        pub fn authentication(
            mut self,
            method: &str,
            initial_data: Option<bytes::Bytes>,
            authenticator: impl crate::client::Authenticator,
        ) -> Self {
            self.settings.options.authentication_method =
                self.settings.mqtt_string("Authentication Method", method);
            self.settings.options.authentication_data = initial_data;
            self.settings.authenticator =
                Some(std::sync::Arc::new(std::sync::Mutex::new(authenticator)));
            self
        }

        /// All core options at once (advanced).
        pub fn options(mut self, options: crate::proto::ClientOptions) -> Self {
            self.settings.options = options;
            self
        }
    };
}
pub(crate) use common_builder_methods;
