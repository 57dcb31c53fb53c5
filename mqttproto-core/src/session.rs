//! The server's view of one client connection: its protocol state, and the MQTT session state it
//! carries (subscriptions, in-flight and queued messages, QoS 2 receive state), which can be
//! moved to a later connection of the same client ([`Session::take_state`],
//! [`Session::restore_state`]).
//!
//! Decisions are the driver's (or the [`Broker`](crate::broker::Broker)'s): a CONNECT raises
//! [`SessionEvent::Connect`], answered by [`Session::acknowledge_connect`]; SUBSCRIBE and
//! UNSUBSCRIBE are answered by [`Session::acknowledge_subscribe`] and
//! [`Session::acknowledge_unsubscribe`]; inbound QoS 1/2 PUBLISHes by
//! [`Session::acknowledge_publish`]. PINGRESP and the QoS 2 PUBREL/PUBCOMP steps are automatic.

use std::collections::{HashMap, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{
    self, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, Disconnect,
    Packet, Publish, PublishAck, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::conn::{
    AckOutcome, Inbound, InboundAliases, InboundVerdict, OutState, Outbound, OutboundAliases, Role,
    Wire,
};
use crate::error::{Error, ProtocolError, StateError};
use crate::topic::TopicFilter;
use crate::types::{PacketId, PacketType, QoS, ReasonCode, SubscriptionId, SubscriptionOptions};
use crate::MqttString;

/// Limits of a server-side connection that apply before CONNACK.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The largest packet accepted before CONNACK announces a Maximum Packet Size.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// How many messages may wait for delivery (while offline, or beyond the client's Receive
    /// Maximum). When the queue is full, the oldest QoS 0 message is dropped to make room; if
    /// there is none, the new message is refused with [`StateError::QueueFull`] and the caller
    /// decides (the broker counts it as dropped).
    pub max_queued_messages: usize,
    /// Use topic aliases on PUBLISHes to the client, up to its Topic Alias Maximum.
    pub outbound_topic_aliases: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            maximum_packet_size: None,
            connect_timeout: Duration::from_secs(10),
            max_queued_messages: 1000,
            outbound_topic_aliases: false,
        }
    }
}

/// Where a server-side connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPhase {
    /// Waiting for CONNECT.
    AwaitingConnect,
    /// CONNECT received; waiting for [`Session::acknowledge_connect`] (and any AUTH exchange).
    Authenticating,
    /// CONNACK sent with success.
    Connected,
    /// The connection ended; the session state may live on.
    Closed,
}

/// Something the driver must decide or know.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A valid CONNECT: decide, then [`Session::acknowledge_connect`].
    Connect(Box<Connect>),
    /// An AUTH from the client (enhanced authentication or re-authentication): answer with
    /// [`Session::send_auth`] or [`Session::acknowledge_connect`].
    Auth(Auth),
    /// An application message from the client, its topic alias resolved. QoS 1/2 messages must
    /// be answered with [`Session::acknowledge_publish`].
    Publish(Publish),
    /// A SUBSCRIBE: answer with [`Session::acknowledge_subscribe`].
    Subscribe(Subscribe),
    /// An UNSUBSCRIBE: answer with [`Session::acknowledge_unsubscribe`].
    Unsubscribe(Unsubscribe),
    /// A QoS 1/2 message to the client completed (PUBACK, PUBCOMP, or PUBREC with an error), or
    /// a message sent on an earlier connection of the session was discarded because it exceeds
    /// the client's new Maximum Packet Size (as if delivered [MQTT-3.1.2-25]; reason code 0x95).
    Delivered {
        /// Its packet identifier.
        packet_id: PacketId,
        /// The client's reason code (0x95, Packet too large, for a discarded message).
        reason_code: ReasonCode,
    },
    /// The connection ended. `disconnect` is the client's DISCONNECT, if it sent one: a will is
    /// published unless it carried reason code 0x00 [MQTT-3.14.4-3].
    Disconnected {
        /// Why.
        error: Error,
        /// The client's DISCONNECT.
        disconnect: Option<Disconnect>,
    },
}

/// A message waiting for delivery.
#[derive(Debug, Clone)]
struct Queued {
    publish: Publish,
    expires_at: Option<Instant>,
}

/// The MQTT session state that outlives one network connection.
#[derive(Debug)]
pub struct SessionState {
    subscriptions: HashMap<TopicFilter, (SubscriptionOptions, Option<SubscriptionId>)>,
    outbound: Outbound,
    inbound: Inbound,
    queue: MessageQueue,
    dropped: u64,
}

/// A session's queued messages, with counts that spare a scan of the whole queue on every
/// packet: how many expire (for [`Session::poll_timeout`]) and how many are QoS 0 (the ones a
/// full queue drops first).
#[derive(Debug, Default)]
struct MessageQueue {
    items: VecDeque<Queued>,
    expiring: usize,
    qos0: usize,
}

impl MessageQueue {
    fn count(&mut self, q: &Queued, added: bool) {
        let (e, z) = (
            usize::from(q.expires_at.is_some()),
            usize::from(q.publish.qos == QoS::AtMostOnce),
        );
        if added {
            self.expiring += e;
            self.qos0 += z;
        } else {
            self.expiring -= e;
            self.qos0 -= z;
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    fn push_back(&mut self, q: Queued) {
        self.count(&q, true);
        self.items.push_back(q);
    }

    fn push_front(&mut self, q: Queued) {
        self.count(&q, true);
        self.items.push_front(q);
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let q = self.items.pop_front()?;
        self.count(&q, false);
        Some(q)
    }

    /// Drops the oldest QoS 0 message; false if there is none.
    fn drop_oldest_qos0(&mut self) -> bool {
        if self.qos0 == 0 {
            return false;
        }
        let Some(i) = self
            .items
            .iter()
            .position(|q| q.publish.qos == QoS::AtMostOnce)
        else {
            return false;
        };
        if let Some(q) = self.items.remove(i) {
            self.count(&q, false);
        }
        true
    }

    /// Drops the messages expired at `now`; returns how many.
    fn expire(&mut self, now: Instant) -> usize {
        if self.expiring == 0 {
            return 0;
        }
        let before = self.items.len();
        self.items.retain(|q| q.expires_at.is_none_or(|t| t > now));
        self.expiring = self.items.iter().filter(|q| q.expires_at.is_some()).count();
        self.qos0 = self
            .items
            .iter()
            .filter(|q| q.publish.qos == QoS::AtMostOnce)
            .count();
        before - self.items.len()
    }

    /// The earliest expiry of a queued message.
    fn earliest_expiry(&self) -> Option<Instant> {
        if self.expiring == 0 {
            return None;
        }
        self.items.iter().filter_map(|q| q.expires_at).min()
    }
}

impl SessionState {
    fn new() -> Self {
        SessionState {
            subscriptions: HashMap::new(),
            outbound: Outbound::new(),
            inbound: Inbound::new(u16::MAX),
            queue: MessageQueue::default(),
            dropped: 0,
        }
    }

    /// The subscriptions: filter, options and subscription identifier.
    pub fn subscriptions(
        &self,
    ) -> impl Iterator<Item = (&TopicFilter, SubscriptionOptions, Option<SubscriptionId>)> {
        self.subscriptions.iter().map(|(f, (o, i))| (f, *o, *i))
    }

    /// Messages queued for delivery.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages dropped because the queue was full or they expired.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues a message for a session, connected or not, within `max` messages. When the queue
    /// is full, the oldest QoS 0 message is dropped to make room; a QoS 0 message that finds no
    /// room is dropped; a QoS 1/2 message that finds no room is refused with
    /// [`StateError::QueueFull`].
    pub fn enqueue(
        &mut self,
        publish: Publish,
        expires_at: Option<Instant>,
        max: usize,
    ) -> Result<(), StateError> {
        if self.queue.len() >= max {
            if self.queue.drop_oldest_qos0() {
                self.dropped += 1;
            } else if publish.qos == QoS::AtMostOnce {
                self.dropped += 1;
                return Ok(());
            } else {
                self.dropped += 1;
                return Err(StateError::QueueFull);
            }
        }
        self.queue.push_back(Queued {
            publish,
            expires_at,
        });
        Ok(())
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for the application's answer.
#[derive(Debug)]
enum Pending {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

/// A message encoded once for every subscriber that gets it in the same form: the same QoS,
/// RETAIN and expiry, and no Subscription Identifiers (see `Broker::route`).
#[derive(Debug)]
pub(crate) struct SharedForm {
    /// The whole PUBLISH; at QoS 1 and 2 its packet identifier is a placeholder, replaced in
    /// each connection's copy.
    pub bytes: Bytes,
    /// Where the packet identifier is in `bytes` (QoS 1 and 2).
    pub id_at: Option<usize>,
    /// The message as encoded, without a packet identifier: what a QoS 1/2 flow keeps in
    /// flight for a resend.
    pub publish: Publish,
}

impl SharedForm {
    /// Encodes `publish` (shaped for its subscribers, with no packet identifier) as it is sent
    /// at `now`. `None` if it cannot be encoded; the regular path then reports why.
    pub fn new(mut publish: Publish, expires_at: Option<Instant>, now: Instant) -> Option<Self> {
        publish.dup = false;
        publish.packet_id = None;
        if let Some(t) = expires_at {
            publish.properties.message_expiry_interval = Some(remaining_expiry(t, now));
        }
        if publish.qos != QoS::AtMostOnce {
            publish.packet_id = PacketId::new(1); // a placeholder, for the encoder
        }
        let mut buf = BytesMut::new();
        let encoded = publish.encode(&mut buf);
        publish.packet_id = None;
        encoded.ok()?;
        let id_at = match publish.qos {
            QoS::AtMostOnce => None,
            _ => {
                let header = codec::decode_fixed_header(&buf).ok()??;
                Some(header.header_len + 2 + publish.topic.len())
            }
        };
        Some(SharedForm {
            bytes: buf.freeze(),
            id_at,
            publish,
        })
    }
}

/// A Message Expiry Interval's remaining seconds at `now`, rounded up [MQTT-3.3.2-6].
fn remaining_expiry(expires_at: Instant, now: Instant) -> u32 {
    let left = expires_at.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The parts of a CONNECT a connection keeps after CONNACK.
#[derive(Debug)]
struct Identity {
    username: Option<MqttString>,
    authentication_method: Option<MqttString>,
}

/// The server's state machine for one client connection. See the [module documentation](self).
#[derive(Debug)]
pub struct Session {
    options: SessionOptions,
    phase: SessionPhase,
    wire: Wire,
    state: SessionState,
    in_aliases: InboundAliases,
    out_aliases: OutboundAliases,
    events: VecDeque<SessionEvent>,
    /// The CONNECT, until it is acknowledged.
    connect: Option<Box<Connect>>,
    /// What outlives the CONNECT: user name and Authentication Method (boxed: most clients
    /// have neither).
    identity: Option<Box<Identity>>,
    /// The CONNECT's Session Expiry Interval: a DISCONNECT may not raise it from 0
    /// [MQTT-3.14.2-2].
    connect_session_expiry: u32,
    keep_alive: u16,
    connect_deadline: Option<Instant>,
    /// A re-authentication is under way: the client sent AUTH 0x19, the server has not yet
    /// answered with AUTH 0x00 (section 4.12.1).
    reauthenticating: bool,
    maximum_qos: QoS,
    retain_available: bool,
    /// Whether a completed outbound flow raises [`SessionEvent::Delivered`]. The broker turns it
    /// off: it has no use for them, and a burst of PUBACKs would fill the event queue.
    report_deliveries: bool,
    /// SUBSCRIBEs and UNSUBSCRIBEs waiting for the application's answer: rarely more than
    /// one, and no allocation kept once answered.
    pending: Vec<Pending>,
    created: Instant,
}

impl Session {
    /// A new connection, waiting for CONNECT.
    pub fn new(now: Instant, options: SessionOptions) -> Session {
        let max_in = options
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        Session {
            phase: SessionPhase::AwaitingConnect,
            wire: Wire::new(Role::Server, max_in),
            state: SessionState::new(),
            in_aliases: InboundAliases::new(0),
            out_aliases: OutboundAliases::new(options.outbound_topic_aliases),
            events: VecDeque::new(),
            connect: None,
            identity: None,
            connect_session_expiry: 0,
            keep_alive: 0,
            connect_deadline: Some(now + options.connect_timeout),
            reauthenticating: false,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            report_deliveries: true,
            pending: Vec::new(),
            created: now,
            options,
        }
    }

    /// Stops [`SessionEvent::Delivered`] events (see `report_deliveries`).
    pub(crate) fn without_delivery_events(mut self) -> Session {
        self.report_deliveries = false;
        self
    }

    // ---- getters ------------------------------------------------------------------------

    /// The phase of the connection.
    pub fn phase(&self) -> SessionPhase {
        self.phase
    }

    /// The CONNECT received, until it is acknowledged
    /// ([`acknowledge_connect`](Self::acknowledge_connect)). It is not kept after that: what
    /// a connection needs of it later is [`username`](Self::username) and
    /// [`authentication_method`](Self::authentication_method).
    pub fn connect_packet(&self) -> Option<&Connect> {
        self.connect.as_deref()
    }

    /// The User Name of the CONNECT, if it had one.
    pub fn username(&self) -> Option<&MqttString> {
        self.identity.as_ref()?.username.as_ref()
    }

    /// The Authentication Method of the CONNECT (enhanced authentication), if it had one.
    pub fn authentication_method(&self) -> Option<&MqttString> {
        self.identity.as_ref()?.authentication_method.as_ref()
    }

    /// The session state.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The Keep Alive in force, in seconds.
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// QoS 1/2 messages sent to the client and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.state.outbound.inflight_len()
    }

    /// Messages dropped because the queue was full or they expired.
    pub fn dropped(&self) -> u64 {
        self.state.dropped
    }

    /// The fatal error that stopped the connection, if any.
    pub fn error(&self) -> Option<&Error> {
        self.wire.error.as_deref()
    }

    /// When the connection was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    // ---- session state ------------------------------------------------------------------

    /// Takes the session state out (to move it to a new connection of the same client), leaving
    /// an empty one.
    pub fn take_state(&mut self) -> SessionState {
        std::mem::replace(&mut self.state, SessionState::new())
    }

    /// Installs a previous connection's session state (before
    /// [`acknowledge_connect`](Self::acknowledge_connect) with `session_present`).
    pub fn restore_state(&mut self, state: SessionState) {
        self.state = state;
    }

    // ---- commands -----------------------------------------------------------------------

    /// Answers CONNECT. On success, `properties` are the limits the server announces (Receive
    /// Maximum, Maximum QoS, Retain Available, Maximum Packet Size, Topic Alias Maximum, Server
    /// Keep Alive, …) and are enforced on the client from now on; the session's in-flight
    /// messages are resent, and queued ones delivered. On failure the CONNACK is sent and the
    /// connection ends [MQTT-3.2.2-7]. The CONNACK is bound by the client's Maximum Packet Size
    /// (Reason String and User Properties are dropped to fit); if not even the bare CONNACK fits,
    /// nothing is sent and the connection ends with
    /// `Error::Disconnected(ReasonCode::PacketTooLarge)`.
    pub fn acknowledge_connect(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        session_present: bool,
        properties: ConnAckProperties,
    ) -> Result<(), StateError> {
        if self.phase != SessionPhase::Authenticating {
            return Err(StateError::NotConnected);
        }
        let connack = ConnAck {
            session_present: session_present && !reason_code.is_error(),
            reason_code,
            properties,
        };
        let p = connack.properties.clone();
        match self.wire.send(now, Packet::ConnAck(Box::new(connack))) {
            Ok(()) => {}
            Err(StateError::PacketTooLarge { .. }) => {
                // Not even a bare CONNACK fits the client's Maximum Packet Size
                // [MQTT-3.1.2-24]: nothing can be sent, so the connection ends.
                let err =
                    self.wire
                        .fail(now, Error::Disconnected(ReasonCode::PacketTooLarge), None);
                self.end(err, None);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if reason_code.is_error() {
            let err = self.wire.fail(now, Error::Disconnected(reason_code), None);
            self.end(err, None);
            return Ok(());
        }
        if !session_present {
            self.state = SessionState::new();
        }
        // The CONNECT is not needed past this point (see `connect_packet`).
        let client_props = self
            .connect
            .take()
            .map(|c| c.properties)
            .unwrap_or_default();
        self.state.inbound.receive_maximum = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
        self.state.inbound.reconnect();
        self.wire.max_in = p
            .maximum_packet_size
            .map_or(self.wire.max_in, NonZeroU32::get);
        self.wire.max_out = client_props
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        self.state.outbound.quota = client_props
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        self.in_aliases = InboundAliases::new(p.topic_alias_maximum.unwrap_or(0));
        self.out_aliases
            .reset(client_props.topic_alias_maximum.unwrap_or(0));
        self.maximum_qos = p.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        self.retain_available = p.retain_available.unwrap_or(true);
        if let Some(ka) = p.server_keep_alive {
            self.keep_alive = ka;
        }
        self.phase = SessionPhase::Connected;
        self.connect_deadline = None;
        // Resend what was in flight, in order, with DUP [MQTT-4.4.0-1, MQTT-4.4.0-2], within the
        // client's Receive Maximum: the rest is sent as acknowledgements make room.
        self.state.outbound.fit_quota();
        for (id, st) in self.state.outbound.in_order() {
            let packet = match st {
                OutState::AwaitPubAck(mut p) | OutState::AwaitPubRec(mut p) => {
                    p.dup = true;
                    Packet::Publish(p)
                }
                OutState::AwaitPubComp => Packet::PubRel(PublishAck::new(id)),
            };
            if let Err(StateError::PacketTooLarge { .. }) = self.wire.send(now, packet) {
                // The client's new Maximum Packet Size is below it. Left in flight, it would hold
                // a slot of the window for the whole connection (with Receive Maximum 1, every
                // message after it).
                self.discard_resent(id);
            }
        }
        self.drain_queue(now);
        // Packets the client pipelined after CONNECT.
        if let Err(e) = self.process_input(now) {
            tracing::debug!(target: "mqttproto", error = %e, "pipelined input failed");
        }
        self.wire.release_empty_input();
        Ok(())
    }

    /// Sends AUTH (Continue authentication, or Success to end a re-authentication) with the
    /// connection's Authentication Method. Once connected, only while a re-authentication the
    /// client started (AUTH 0x19) is under way; otherwise, and without an Authentication
    /// Method, fails with [`StateError::NoAuthInProgress`] [MQTT-4.12.0-6].
    pub fn send_auth(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        data: Option<Bytes>,
    ) -> Result<(), StateError> {
        let method = self
            .authentication_method()
            .cloned()
            .ok_or(StateError::NoAuthInProgress)?;
        match self.phase {
            SessionPhase::Authenticating => {}
            SessionPhase::Connected if self.reauthenticating => {}
            SessionPhase::Connected => return Err(StateError::NoAuthInProgress),
            _ => return Err(StateError::NotConnected),
        }
        let auth = Auth {
            reason_code,
            properties: AuthProperties {
                authentication_method: Some(method),
                authentication_data: data,
                ..Default::default()
            },
        };
        self.wire.send(now, Packet::Auth(auth))?;
        if self.phase == SessionPhase::Connected && reason_code == ReasonCode::Success {
            self.reauthenticating = false;
        }
        Ok(())
    }

    /// Answers an inbound QoS 1/2 PUBLISH with PUBACK or PUBREC carrying `reason_code`
    /// (0x00, 0x10 No matching subscribers, 0x87 Not authorized, …).
    pub fn acknowledge_publish(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_code: ReasonCode,
    ) -> Result<(), StateError> {
        self.ready()?;
        match self.state.inbound.acknowledge(packet_id, reason_code) {
            Some(p) => self.wire.send(now, p),
            None => Err(StateError::UnknownPacketId(packet_id)),
        }
    }

    /// Answers SUBSCRIBE with one reason code per filter. Filters granted (code below 0x80) are
    /// recorded in the session with the granted QoS.
    pub fn acknowledge_subscribe(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_codes: Vec<ReasonCode>,
        properties: AckProperties,
    ) -> Result<(), StateError> {
        self.ready()?;
        let Some(Pending::Subscribe(sub)) = self.take_pending(packet_id, true) else {
            return Err(StateError::UnknownPacketId(packet_id));
        };
        if reason_codes.len() != sub.subscriptions.len() {
            self.pending.push(Pending::Subscribe(sub));
            return Err(StateError::Encode(crate::error::EncodeError::NoFilters(
                PacketType::SubAck,
            )));
        }
        for (s, rc) in sub.subscriptions.iter().zip(&reason_codes) {
            let granted = match rc {
                ReasonCode::Success => QoS::AtMostOnce,
                ReasonCode::GrantedQoS1 => QoS::AtLeastOnce,
                ReasonCode::GrantedQoS2 => QoS::ExactlyOnce,
                _ => continue,
            };
            let mut options = s.options;
            options.qos = granted.min(s.options.qos);
            self.state.subscriptions.insert(
                s.filter.clone(),
                (options, sub.properties.subscription_identifier),
            );
        }
        self.wire.send(
            now,
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            }),
        )
    }

    /// Takes the pending SUBSCRIBE (`subscribe`) or UNSUBSCRIBE with `packet_id`; the list lets
    /// its allocation go when it empties.
    fn take_pending(&mut self, packet_id: PacketId, subscribe: bool) -> Option<Pending> {
        let i = self.pending.iter().position(|p| match p {
            Pending::Subscribe(s) => subscribe && s.packet_id == packet_id,
            Pending::Unsubscribe(u) => !subscribe && u.packet_id == packet_id,
        })?;
        let taken = self.pending.remove(i);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        Some(taken)
    }

    /// Answers UNSUBSCRIBE with one reason code per filter; filters answered 0x00 are removed
    /// from the session.
    pub fn acknowledge_unsubscribe(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_codes: Vec<ReasonCode>,
        properties: AckProperties,
    ) -> Result<(), StateError> {
        self.ready()?;
        let Some(Pending::Unsubscribe(unsub)) = self.take_pending(packet_id, false) else {
            return Err(StateError::UnknownPacketId(packet_id));
        };
        if reason_codes.len() != unsub.filters.len() {
            self.pending.push(Pending::Unsubscribe(unsub));
            return Err(StateError::Encode(crate::error::EncodeError::NoFilters(
                PacketType::UnsubAck,
            )));
        }
        for (f, rc) in unsub.filters.iter().zip(&reason_codes) {
            if *rc == ReasonCode::Success {
                self.state.subscriptions.remove(f);
            }
        }
        self.wire.send(
            now,
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            }),
        )
    }

    /// Queues an application message for the client, already shaped for it (QoS downgraded to
    /// the subscription's, RETAIN per Retain As Published, Subscription Identifiers set). The
    /// session assigns the packet id and sends it now if the client is connected and its
    /// Receive Maximum allows; otherwise the message waits (bounded, see [`SessionOptions`]).
    /// `expires_at` is when its Message Expiry Interval runs out: an expired message is dropped
    /// [MQTT-3.3.2-5] and a sent one carries the remaining interval [MQTT-3.3.2-6].
    pub fn publish(
        &mut self,
        now: Instant,
        publish: Publish,
        expires_at: Option<Instant>,
    ) -> Result<(), StateError> {
        // Fast path: nothing waits ahead of it and the window has room, so send it now instead
        // of moving it through the queue.
        if self.phase == SessionPhase::Connected
            && self.state.queue.is_empty()
            && self.options.max_queued_messages > 0
            && (publish.qos == QoS::AtMostOnce || self.state.outbound.has_room())
        {
            self.send_one(now, publish, expires_at);
            return Ok(());
        }
        self.state
            .enqueue(publish, expires_at, self.options.max_queued_messages)?;
        if self.phase == SessionPhase::Connected {
            self.drain_queue(now);
        }
        Ok(())
    }

    /// Sends `form` as [`publish`](Self::publish) would send its message now, without encoding
    /// it again. Returns false, having done nothing, when the message must take the regular
    /// path: the client is not connected, messages wait ahead of it, its Receive Maximum is
    /// reached, or topic aliases change what it is sent.
    pub(crate) fn publish_shared(&mut self, now: Instant, form: &SharedForm) -> bool {
        if self.phase != SessionPhase::Connected
            || !self.state.queue.is_empty()
            || self.options.max_queued_messages == 0
            || self.out_aliases.active()
        {
            return false;
        }
        let id = match form.publish.qos {
            QoS::AtMostOnce => None,
            _ if !self.state.outbound.has_room() => return false,
            _ => match self.state.outbound.allocate() {
                Ok(id) => Some(id),
                Err(_) => return false,
            },
        };
        let at = form.id_at.unwrap_or(0);
        match self
            .wire
            .send_encoded(now, &form.bytes, id.map(|id| (at, id)))
        {
            Ok(()) => {
                if let Some(id) = id {
                    let mut publish = form.publish.clone();
                    publish.packet_id = Some(id);
                    self.state.outbound.track(publish);
                }
                true
            }
            Err(e) => {
                if let Some(id) = id {
                    self.state.outbound.release(id);
                }
                match e {
                    StateError::PacketTooLarge { size, max } => {
                        // Discarded as if delivered [MQTT-3.1.2-25].
                        tracing::debug!(target: "mqttproto", size, max, "PUBLISH exceeds the client's Maximum Packet Size; discarded");
                        self.state.dropped += 1;
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// Sends DISCONNECT with `reason_code` (for example 0x8E Session taken over, 0x8B Server
    /// shutting down) and ends the connection. The session state stays.
    pub fn disconnect(&mut self, now: Instant, reason_code: ReasonCode) -> Result<(), StateError> {
        match self.phase {
            SessionPhase::Connected => {
                self.wire
                    .send(now, Packet::Disconnect(Disconnect::new(reason_code)))?;
            }
            // No DISCONNECT before a successful CONNACK [MQTT-3.14.0-1].
            SessionPhase::AwaitingConnect | SessionPhase::Authenticating => {}
            SessionPhase::Closed => return Err(StateError::NotConnected),
        }
        let err = self.wire.fail(now, Error::Disconnected(reason_code), None);
        self.end(err, None);
        Ok(())
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds bytes received from the client. A fatal error is returned now and by every later
    /// input; the DISCONNECT (or CONNACK) reporting it is in [`poll_transmit`](Self::poll_transmit).
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<(), Error> {
        self.accepting_input()?;
        self.wire.push_input(data);
        self.process_input(now)
    }

    /// Whether input may still be fed: not after a fatal error or the end of the connection.
    fn accepting_input(&self) -> Result<(), Error> {
        self.wire.check()?;
        if self.phase == SessionPhase::Closed {
            return Err(Error::ConnectionClosed);
        }
        Ok(())
    }

    /// [`handle_bytes`](Self::handle_bytes) for a buffer the caller gives up: when no partial
    /// packet is buffered, its packets are decoded in place, without copying them (the
    /// payloads of PUBLISH packets become slices of it). A driver that reads a large packet
    /// whole into one buffer hands it over this way.
    pub fn handle_input(&mut self, now: Instant, data: BytesMut) -> Result<(), Error> {
        self.accepting_input()?;
        self.wire.push_input_owned(data);
        let result = self.process_input(now);
        // The buffer's allocation stays alive only through the packets taken from it.
        self.wire.release_empty_input();
        result
    }

    /// Advances timers: the connect timeout and the keep-alive allowance of 1.5 × Keep Alive
    /// [MQTT-3.1.2-22].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.wire.error.is_some() {
            // A closed connection's queue still expires: poll_timeout() reports its expiry.
            self.expire_queue(now);
            return;
        }
        match self.phase {
            SessionPhase::AwaitingConnect | SessionPhase::Authenticating => {
                if self.connect_deadline.is_some_and(|d| now >= d) {
                    let err = self.wire.fail(now, Error::ConnectTimeout, None);
                    self.end(err, None);
                }
                // poll_timeout() covers the queue in every phase, so expire it in every phase.
                self.expire_queue(now);
            }
            SessionPhase::Connected => {
                if self.keep_alive_deadline().is_some_and(|d| now >= d) {
                    let err = self.wire.fail(
                        now,
                        Error::KeepAliveTimeout,
                        Some(ReasonCode::KeepAliveTimeout),
                    );
                    self.end(err, None);
                }
                self.expire_queue(now);
            }
            SessionPhase::Closed => self.expire_queue(now),
        }
    }

    /// The transport closed.
    pub fn handle_close(&mut self, now: Instant) {
        if self.phase == SessionPhase::Closed {
            return;
        }
        let err = self.wire.fail(now, Error::ConnectionClosed, None);
        self.end(err, None);
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Bytes to write to the client, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.wire.poll_transmit()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let event = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            // An idle connection keeps no event buffer (four events' room is 576 bytes).
            self.events = VecDeque::new();
        }
        event
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.state.queue.earliest_expiry();
        let conn = match self.phase {
            SessionPhase::AwaitingConnect | SessionPhase::Authenticating => self.connect_deadline,
            SessionPhase::Connected => self.keep_alive_deadline(),
            SessionPhase::Closed => None,
        };
        match (conn, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----------------------------------------------------------------------

    fn ready(&self) -> Result<(), StateError> {
        if let Some(e) = &self.wire.error {
            return Err(StateError::Failed((**e).clone()));
        }
        if self.phase != SessionPhase::Connected {
            return Err(StateError::NotConnected);
        }
        Ok(())
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        if self.keep_alive == 0 {
            return None;
        }
        let allowance = Duration::from_millis(u64::from(self.keep_alive) * 1500);
        Some(self.wire.last_received.unwrap_or(self.created) + allowance)
    }

    /// A message sent on an earlier connection that no longer fits the client's Maximum Packet
    /// Size: discarded as if its delivery had completed [MQTT-3.1.2-25]. Its packet identifier
    /// is free again, and [`SessionEvent::Delivered`] reports it with 0x95 (Packet too large).
    fn discard_resent(&mut self, id: PacketId) {
        tracing::debug!(target: "mqttproto", packet_id = id.get(), "resent packet exceeds the client's Maximum Packet Size; discarded");
        self.state.outbound.release(id);
        self.state.dropped += 1;
        if self.report_deliveries {
            self.events.push_back(SessionEvent::Delivered {
                packet_id: id,
                reason_code: ReasonCode::PacketTooLarge,
            });
        }
    }

    fn expire_queue(&mut self, now: Instant) {
        let expired = self.state.queue.expire(now);
        self.state.dropped += expired as u64;
    }

    /// Sends queued messages while the client's Receive Maximum leaves room.
    fn drain_queue(&mut self, now: Instant) {
        // First the resumed publishes that did not fit the client's Receive Maximum
        // (`Outbound::fit_quota`), with their original packet ids.
        while self.state.outbound.has_room() {
            let Some(p) = self.state.outbound.waiting.pop_front() else {
                break;
            };
            let mut wire_form = p.clone();
            self.out_aliases.apply(&mut wire_form);
            match self.wire.send(now, Packet::Publish(wire_form)) {
                Ok(()) => self.state.outbound.track(p),
                Err(StateError::PacketTooLarge { .. }) => {
                    if let Some(id) = p.packet_id {
                        self.discard_resent(id);
                    }
                }
                Err(_) => {
                    self.state.outbound.waiting.push_front(p);
                    return;
                }
            }
        }
        while let Some(front) = self.state.queue.front() {
            if front.expires_at.is_some_and(|t| t <= now) {
                self.state.queue.pop_front();
                self.state.dropped += 1;
                continue;
            }
            if front.publish.qos != QoS::AtMostOnce && !self.state.outbound.has_room() {
                break;
            }
            let Some(Queued {
                publish,
                expires_at,
            }) = self.state.queue.pop_front()
            else {
                break;
            };
            if !self.send_one(now, publish, expires_at) {
                break;
            }
        }
    }

    /// Sends one message (not expired, with room in the window if QoS > 0). Returns false if it
    /// could not be sent and went back to the front of the queue.
    fn send_one(
        &mut self,
        now: Instant,
        mut publish: Publish,
        expires_at: Option<Instant>,
    ) -> bool {
        if expires_at.is_some_and(|t| t <= now) {
            self.state.dropped += 1;
            return true;
        }
        if let Some(t) = expires_at {
            // The remaining interval, rounded up [MQTT-3.3.2-6].
            publish.properties.message_expiry_interval = Some(remaining_expiry(t, now));
        }
        publish.dup = false;
        publish.packet_id = None;
        if publish.qos != QoS::AtMostOnce {
            match self.state.outbound.allocate() {
                Ok(id) => publish.packet_id = Some(id),
                Err(_) => {
                    self.state.queue.push_front(Queued {
                        publish,
                        expires_at,
                    });
                    return false;
                }
            }
        }
        // Encode the message itself unless an alias rewrites it: no clone.
        let (wire_form, original) = if self.out_aliases.active() {
            let mut w = publish.clone();
            self.out_aliases.apply(&mut w);
            (w, Some(publish))
        } else {
            (publish, None)
        };
        let mut packet = Packet::Publish(wire_form);
        let result = self.wire.send_mut(now, &mut packet);
        let Packet::Publish(wire_form) = packet else {
            unreachable!("a PUBLISH stays a PUBLISH");
        };
        let publish = original.unwrap_or(wire_form);
        match result {
            Ok(()) => {
                self.state.outbound.track(publish);
                true
            }
            Err(StateError::PacketTooLarge { size, max }) => {
                // Discarded as if delivered [MQTT-3.1.2-25].
                tracing::debug!(target: "mqttproto", size, max, "PUBLISH exceeds the client's Maximum Packet Size; discarded");
                if let Some(id) = publish.packet_id {
                    self.state.outbound.release(id);
                }
                self.state.dropped += 1;
                true
            }
            Err(_) => {
                if let Some(id) = publish.packet_id {
                    self.state.outbound.release(id);
                }
                self.state.queue.push_front(Queued {
                    publish,
                    expires_at,
                });
                false
            }
        }
    }

    fn process_input(&mut self, now: Instant) -> Result<(), Error> {
        loop {
            if self.phase == SessionPhase::Authenticating {
                // Hold pipelined packets until the CONNECT is decided; only AUTH and
                // DISCONNECT are read meanwhile.
                // A malformed fixed header is fatal here too, like any decode error.
                let header = match codec::decode_fixed_header(self.wire_input()) {
                    Ok(h) => h,
                    Err(e) => return Err(self.fail(now, Error::Decode(e))),
                };
                match header {
                    Some(h)
                        if matches!(h.packet_type, PacketType::Auth | PacketType::Disconnect) => {}
                    _ => return Ok(()),
                }
            }
            match self.wire.next_packet(now) {
                Ok(Some(p)) => {
                    if let Err(e) = self.handle_packet(now, p) {
                        return Err(self.fail(now, e));
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(now, e)),
            }
            if self.phase == SessionPhase::Closed {
                return Ok(());
            }
        }
    }

    fn wire_input(&self) -> &[u8] {
        self.wire.input()
    }

    fn fail(&mut self, now: Instant, error: Error) -> Error {
        let reason = error.peer_violation_reason();
        let err = if self.phase == SessionPhase::Connected {
            self.wire.fail(now, error, reason)
        } else {
            // Before a successful CONNACK, errors are reported in CONNACK, not DISCONNECT
            // [MQTT-3.14.0-1]; a non-CONNECT first packet just closes [MQTT-3.1.4-1].
            if let Some(rc) = reason.filter(|rc| rc.is_valid_for(PacketType::ConnAck)) {
                let _ = self.wire.send(
                    now,
                    Packet::ConnAck(Box::new(ConnAck {
                        session_present: false,
                        reason_code: rc,
                        properties: ConnAckProperties::default(),
                    })),
                );
            } else if reason.is_some() {
                let _ = self.wire.send(
                    now,
                    Packet::ConnAck(Box::new(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::ProtocolError,
                        properties: ConnAckProperties::default(),
                    })),
                );
            }
            self.wire.fail(now, error, None)
        };
        self.end(err.clone(), None);
        err
    }

    fn end(&mut self, error: Error, disconnect: Option<Disconnect>) {
        if self.phase == SessionPhase::Closed {
            return;
        }
        self.phase = SessionPhase::Closed;
        self.pending = Vec::new();
        self.events
            .push_back(SessionEvent::Disconnected { error, disconnect });
    }

    fn unexpected(&self, packet: PacketType) -> Error {
        let state = match self.phase {
            SessionPhase::AwaitingConnect => "awaiting CONNECT",
            SessionPhase::Authenticating => "authenticating",
            SessionPhase::Connected => "connected",
            SessionPhase::Closed => "closed",
        };
        Error::Protocol(ProtocolError::UnexpectedPacket { packet, state })
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), Error> {
        match (self.phase, packet) {
            (SessionPhase::AwaitingConnect, Packet::Connect(c)) => {
                self.keep_alive = c.keep_alive;
                // CONNACK, and any error CONNACK, is bound by the client's Maximum Packet Size
                // too: its Reason String and User Properties are dropped to fit
                // [MQTT-3.1.2-24, MQTT-3.2.2-19, MQTT-3.2.2-20].
                self.wire.max_out = c
                    .properties
                    .maximum_packet_size
                    .map_or(u32::MAX, NonZeroU32::get);
                if c.username.is_some() || c.properties.authentication_method.is_some() {
                    self.identity = Some(Box::new(Identity {
                        username: c.username.clone(),
                        authentication_method: c.properties.authentication_method.clone(),
                    }));
                }
                self.connect_session_expiry = c.properties.session_expiry_interval.unwrap_or(0);
                self.connect = Some(c.clone());
                self.phase = SessionPhase::Authenticating;
                self.events.push_back(SessionEvent::Connect(c));
                Ok(())
            }
            (SessionPhase::Authenticating | SessionPhase::Connected, Packet::Auth(a)) => {
                let method = self.authentication_method();
                if method.is_none() || a.properties.authentication_method.as_ref() != method {
                    return Err(ProtocolError::BadAuthentication.into());
                }
                // Once connected: AUTH 0x19 starts a re-authentication [MQTT-4.12.1-1] (not
                // while one is under way), and AUTH 0x18 answers the server's challenges in it.
                let ok = match (self.phase, a.reason_code) {
                    (SessionPhase::Connected, ReasonCode::ReAuthenticate) => {
                        !std::mem::replace(&mut self.reauthenticating, true)
                    }
                    (SessionPhase::Connected, ReasonCode::ContinueAuthentication) => {
                        self.reauthenticating
                    }
                    (SessionPhase::Authenticating, ReasonCode::ContinueAuthentication) => true,
                    _ => false,
                };
                if !ok {
                    return Err(self.unexpected(PacketType::Auth));
                }
                self.events.push_back(SessionEvent::Auth(a));
                Ok(())
            }
            (SessionPhase::Authenticating | SessionPhase::Connected, Packet::Disconnect(d)) => {
                if self.connect_session_expiry == 0
                    && d.properties.session_expiry_interval.is_some_and(|s| s != 0)
                {
                    return Err(ProtocolError::InvalidSessionExpiryOnDisconnect.into());
                }
                let err = self
                    .wire
                    .fail(now, Error::ClosedByPeer(d.reason_code), None);
                self.end(err, Some(d));
                Ok(())
            }
            (SessionPhase::Connected, Packet::Publish(p)) => self.on_publish(now, p),
            (SessionPhase::Connected, Packet::PubAck(a)) => {
                let o = self.state.outbound.on_puback(a);
                self.on_ack_outcome(now, o);
                Ok(())
            }
            (SessionPhase::Connected, Packet::PubRec(a)) => {
                let id = a.packet_id;
                match self.state.outbound.on_pubrec(a) {
                    AckOutcome::Unknown => {
                        let _ = self.wire.send(
                            now,
                            Packet::PubRel(PublishAck::with_reason(
                                id,
                                ReasonCode::PacketIdentifierNotFound,
                            )),
                        );
                    }
                    o => self.on_ack_outcome(now, o),
                }
                Ok(())
            }
            (SessionPhase::Connected, Packet::PubComp(a)) => {
                let o = self.state.outbound.on_pubcomp(a);
                self.on_ack_outcome(now, o);
                Ok(())
            }
            (SessionPhase::Connected, Packet::PubRel(r)) => {
                let comp = self.state.inbound.on_pubrel(r.packet_id);
                let _ = self.wire.send(now, comp);
                Ok(())
            }
            (SessionPhase::Connected, Packet::Subscribe(s)) => {
                self.pending.push(Pending::Subscribe(s.clone()));
                self.events.push_back(SessionEvent::Subscribe(s));
                Ok(())
            }
            (SessionPhase::Connected, Packet::Unsubscribe(u)) => {
                self.pending.push(Pending::Unsubscribe(u.clone()));
                self.events.push_back(SessionEvent::Unsubscribe(u));
                Ok(())
            }
            (SessionPhase::Connected, Packet::PingReq) => {
                let _ = self.wire.send(now, Packet::PingResp);
                Ok(())
            }
            (_, other) => Err(self.unexpected(other.packet_type())),
        }
    }

    fn on_ack_outcome(&mut self, now: Instant, outcome: AckOutcome) {
        match outcome {
            AckOutcome::Completed(packet_id, reason_code, _) => {
                if self.report_deliveries {
                    self.events.push_back(SessionEvent::Delivered {
                        packet_id,
                        reason_code,
                    });
                }
                self.drain_queue(now);
            }
            AckOutcome::Released(id) => {
                let _ = self.wire.send(now, Packet::PubRel(PublishAck::new(id)));
            }
            AckOutcome::Unknown => {}
        }
    }

    fn on_publish(&mut self, now: Instant, mut publish: Publish) -> Result<(), Error> {
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(ProtocolError::SubscriptionIdFromClient.into());
        }
        if publish.qos > self.maximum_qos {
            return Err(ProtocolError::QoSNotSupported(publish.qos as u8).into());
        }
        if publish.retain && !self.retain_available {
            return Err(ProtocolError::RetainNotSupported.into());
        }
        self.in_aliases.resolve(&mut publish)?;
        match self
            .state
            .inbound
            .on_publish(publish.qos, publish.packet_id)?
        {
            InboundVerdict::Deliver => self.events.push_back(SessionEvent::Publish(publish)),
            InboundVerdict::Duplicate { resend_pubrec } => {
                if let (true, Some(id)) = (resend_pubrec, publish.packet_id) {
                    let _ = self.wire.send(now, Packet::PubRec(PublishAck::new(id)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicName;

    fn message(qos: QoS) -> Publish {
        let mut p = Publish::new(TopicName::try_from("t").unwrap(), Bytes::from_static(b"x"));
        p.qos = qos;
        p
    }

    /// The queue's counts follow every change, so that the expiry deadline and the QoS 0
    /// message a full queue drops are found without scanning it (or found absent at once).
    #[test]
    #[allow(clippy::disallowed_methods)] // one Instant::now() as the fake clock's origin
    fn queue_counts_follow_enqueue_drop_expiry_and_drain() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut s = SessionState::new();
        s.enqueue(message(QoS::AtLeastOnce), None, 3).unwrap();
        s.enqueue(message(QoS::AtMostOnce), Some(later), 3).unwrap();
        s.enqueue(message(QoS::AtLeastOnce), None, 3).unwrap();
        assert_eq!((s.queue.expiring, s.queue.qos0), (1, 1));
        assert_eq!(s.queue.earliest_expiry(), Some(later));
        // Full: the QoS 0 message makes room for a QoS 1 one.
        s.enqueue(message(QoS::AtLeastOnce), None, 3).unwrap();
        assert_eq!((s.queue.expiring, s.queue.qos0, s.dropped), (0, 0, 1));
        assert_eq!(s.queue.earliest_expiry(), None);
        // Full of QoS 1: a QoS 0 message is dropped, a QoS 1 message refused.
        s.enqueue(message(QoS::AtMostOnce), None, 3).unwrap();
        assert_eq!(
            s.enqueue(message(QoS::AtLeastOnce), None, 3),
            Err(StateError::QueueFull)
        );
        assert_eq!((s.queued(), s.dropped), (3, 3));
        // Expiry drops only what has expired, and recounts.
        let mut s = SessionState::new();
        s.enqueue(message(QoS::AtMostOnce), Some(t0), 10).unwrap();
        s.enqueue(message(QoS::AtMostOnce), Some(later), 10)
            .unwrap();
        s.enqueue(message(QoS::AtLeastOnce), None, 10).unwrap();
        assert_eq!(s.queue.expire(t0), 1);
        assert_eq!((s.queue.expiring, s.queue.qos0, s.queued()), (1, 1, 2));
        assert!(s.queue.pop_front().is_some());
        assert_eq!((s.queue.expiring, s.queue.qos0), (0, 0));
        s.queue
            .push_front(message_queued(QoS::AtMostOnce, Some(later)));
        assert_eq!((s.queue.expiring, s.queue.qos0), (1, 1));
    }

    fn message_queued(qos: QoS, expires_at: Option<Instant>) -> Queued {
        Queued {
            publish: message(qos),
            expires_at,
        }
    }
}
