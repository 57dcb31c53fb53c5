//! The client's state machine: one MQTT 5 session with a broker, over successive network
//! connections.
//!
//! See the crate documentation for the driving loop. In short: call [`Client::connect`] when the
//! transport is up, feed received bytes to [`Client::handle_bytes`], write out whatever
//! [`Client::poll_transmit`] returns, act on [`Client::poll_event`], and call
//! [`Client::handle_timeout`] at [`Client::poll_timeout`]. When the transport ends, call
//! [`Client::handle_close`]; the session state (in-flight messages, subscriptions, QoS 2 receive
//! state) survives for the next [`Client::connect`].

use std::collections::{HashMap, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{
    AckProperties, Auth, AuthProperties, ConnAck, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, Packet, Publish, PublishAck, Subscribe, SubscribeProperties,
    Subscription, Unsubscribe, UnsubscribeProperties, Will,
};
use crate::conn::{
    AckOutcome, Inbound, InboundAliases, InboundVerdict, OutState, Outbound, OutboundAliases, Role,
    Wire,
};
use crate::error::{Error, ProtocolError, StateError};
use crate::string::MqttString;
use crate::topic::TopicFilter;
use crate::types::{
    PacketId, PacketType, QoS, ReasonCode, SubscriptionId, SubscriptionOptions, UserProperties,
};

/// How a client connects: everything CONNECT carries, plus local policy.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client Identifier. Empty asks the server to assign one; the assigned identifier is then
    /// used for later connections, so that the session can be resumed.
    pub client_id: MqttString,
    /// Clean Start for the first connection. Later connections always resume (Clean Start 0), so
    /// that in-flight messages and subscriptions survive a reconnect.
    pub clean_start: bool,
    /// Keep Alive in seconds (0: off). The server may override it [MQTT-3.1.2-21].
    pub keep_alive: u16,
    /// Session Expiry Interval in seconds (0: the session ends with the connection).
    pub session_expiry_interval: u32,
    /// The Will Message, with its properties (delay, expiry, …).
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttString>,
    /// Password.
    pub password: Option<Bytes>,
    /// How many QoS 1/2 messages we accept at once.
    pub receive_maximum: NonZeroU16,
    /// The largest packet we accept.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// How many topic aliases the server may set for us.
    pub topic_alias_maximum: u16,
    /// Request Response Information.
    pub request_response_information: bool,
    /// Request Problem Information (absent means 1).
    pub request_problem_information: bool,
    /// User Properties of CONNECT.
    pub user_properties: UserProperties,
    /// Authentication Method for enhanced authentication.
    pub authentication_method: Option<MqttString>,
    /// Initial Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// How long to wait for CONNACK before giving up.
    pub connect_timeout: Duration,
    /// How long to wait for PINGRESP before reporting the connection lost.
    pub ping_timeout: Duration,
    /// Leave acknowledging inbound QoS 1/2 messages to the application
    /// ([`Client::acknowledge`]). Off by default: they are acknowledged on delivery.
    pub manual_acks: bool,
    /// Use topic aliases on outbound PUBLISHes, up to the server's Topic Alias Maximum.
    pub outbound_topic_aliases: bool,
    /// Disconnect with 0x93 (Receive Maximum exceeded) when the server sends more QoS 1/2
    /// messages than [`receive_maximum`](Self::receive_maximum) allows [MQTT-3.3.4-9].
    ///
    /// Off by default: such messages are accepted, traced as a warning (target `mqttproto`) and
    /// counted in [`Client::receive_maximum_overruns`]. Mosquitto 2.0 has been seen sending a
    /// burst past the client's Receive Maximum when a session resumes after a cut connection (84
    /// unacknowledged messages against a Receive Maximum of 64, recorded on the wire); a strict
    /// client then disconnects on every resume and may never catch up. Accepting them costs only
    /// bookkeeping (at most one packet identifier per message, 65,535 at most); a driver bounds
    /// the memory of undelivered messages by no longer reading from the socket.
    pub strict_receive_maximum: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: MqttString::new(),
            clean_start: true,
            keep_alive: 60,
            session_expiry_interval: 0,
            will: None,
            username: None,
            password: None,
            receive_maximum: NonZeroU16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            request_response_information: false,
            request_problem_information: true,
            user_properties: UserProperties::new(),
            authentication_method: None,
            authentication_data: None,
            connect_timeout: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            manual_acks: false,
            outbound_topic_aliases: false,
            strict_receive_maximum: false,
        }
    }
}

/// Where the client is in its connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// No network connection (initially, and after the transport ended or failed).
    Disconnected,
    /// CONNECT sent; awaiting CONNACK (possibly through an AUTH exchange).
    Connecting,
    /// CONNACK accepted the connection.
    Connected,
}

/// Something the application should know or act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the connection. The CONNACK's properties are also reflected by the
    /// getters ([`Client::maximum_qos`], …).
    Connected(ConnAck),
    /// The server has no session for us although we had one: in-flight messages were resent as
    /// new messages, and active subscriptions were subscribed again [MQTT-3.2.2-5].
    SessionLost,
    /// The server refused the connection (CONNACK with a failure reason code).
    Refused(ConnAck),
    /// The server sent AUTH (a challenge, or the end of a re-authentication); answer a challenge
    /// with [`Client::authenticate`].
    Auth(Auth),
    /// An application message. With manual acknowledgement, QoS 1/2 messages must be
    /// acknowledged with [`Client::acknowledge`] and their packet id. Subscription identifiers
    /// are in `properties.subscription_identifiers`.
    Message(Publish),
    /// A QoS 1/2 publish finished: PUBACK, PUBCOMP, or PUBREC with an error code. Also, with
    /// 0x95 (Packet too large), a publish accepted earlier that can no longer be sent because
    /// the server's Maximum Packet Size, announced again on a new connection, is below it.
    PublishComplete {
        /// The publish's packet identifier.
        packet_id: PacketId,
        /// The server's reason code (0x95 for a publish that no longer fits).
        reason_code: ReasonCode,
        /// Reason String and User Properties.
        properties: AckProperties,
    },
    /// SUBACK for a [`Client::subscribe`].
    Subscribed {
        /// The SUBSCRIBE's packet identifier.
        packet_id: PacketId,
        /// One code per filter sent.
        reason_codes: Vec<ReasonCode>,
        /// Reason String and User Properties.
        properties: AckProperties,
    },
    /// UNSUBACK for a [`Client::unsubscribe`].
    Unsubscribed {
        /// The UNSUBSCRIBE's packet identifier.
        packet_id: PacketId,
        /// One code per filter sent.
        reason_codes: Vec<ReasonCode>,
        /// Reason String and User Properties.
        properties: AckProperties,
    },
    /// The connection ended; the reason says why. Call [`Client::connect`] on a new transport
    /// to resume.
    Disconnected {
        /// Why.
        error: Error,
        /// The server's DISCONNECT, if it sent one.
        disconnect: Option<Disconnect>,
    },
}

#[derive(Debug, Clone)]
struct SubEntry {
    refs: usize,
    options: SubscriptionOptions,
    id: Option<SubscriptionId>,
    granted: Option<ReasonCode>,
}

/// The server's limits from CONNACK.
#[derive(Debug, Clone)]
struct ServerLimits {
    maximum_qos: QoS,
    retain_available: bool,
    wildcard_available: bool,
    subscription_ids_available: bool,
    shared_available: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_available: true,
            subscription_ids_available: true,
            shared_available: true,
        }
    }
}

/// The client's MQTT 5 state machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Client {
    options: ClientOptions,
    client_id: MqttString,
    state: ClientState,
    wire: Wire,
    outbound: Outbound,
    inbound: Inbound,
    in_aliases: InboundAliases,
    out_aliases: OutboundAliases,
    events: VecDeque<ClientEvent>,
    limits: ServerLimits,
    connack: Option<ConnAck>,
    keep_alive: u16,
    connect_deadline: Option<Instant>,
    ping_deadline: Option<Instant>,
    subscriptions: HashMap<TopicFilter, SubEntry>,
    pending_subscribe: HashMap<u16, Vec<TopicFilter>>,
    pending_unsubscribe: HashMap<u16, usize>,
    /// Whether we hold session state the server should also hold.
    has_session: bool,
    connected_once: bool,
    sent_clean_start: bool,
    auth_in_progress: bool,
}

impl Client {
    /// A client that is not connected yet.
    pub fn new(options: ClientOptions) -> Client {
        let max_in = options
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        Client {
            client_id: options.client_id.clone(),
            state: ClientState::Disconnected,
            wire: Wire::new(Role::Client, max_in),
            outbound: Outbound::new(),
            inbound: Inbound {
                strict: options.strict_receive_maximum,
                ..Inbound::new(options.receive_maximum.get())
            },
            in_aliases: InboundAliases::new(options.topic_alias_maximum),
            out_aliases: OutboundAliases::new(options.outbound_topic_aliases),
            events: VecDeque::new(),
            limits: ServerLimits::default(),
            connack: None,
            keep_alive: options.keep_alive,
            connect_deadline: None,
            ping_deadline: None,
            subscriptions: HashMap::new(),
            pending_subscribe: HashMap::new(),
            pending_unsubscribe: HashMap::new(),
            has_session: false,
            connected_once: false,
            sent_clean_start: false,
            auth_in_progress: false,
            options,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// The connection state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The client identifier in use (the server's assigned one after it assigned one).
    pub fn client_id(&self) -> &MqttString {
        &self.client_id
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The last CONNACK that accepted the connection.
    pub fn connack(&self) -> Option<&ConnAck> {
        self.connack.as_ref()
    }

    /// The highest QoS the server accepts (2 until CONNACK says otherwise).
    pub fn maximum_qos(&self) -> QoS {
        self.limits.maximum_qos
    }

    /// Whether the server accepts retained messages.
    pub fn retain_available(&self) -> bool {
        self.limits.retain_available
    }

    /// How many QoS 1/2 messages the server sent past our Receive Maximum and were accepted
    /// (see [`ClientOptions::strict_receive_maximum`]), since the client was created.
    pub fn receive_maximum_overruns(&self) -> u64 {
        self.inbound.overruns
    }

    /// The server's Receive Maximum: how many QoS 1/2 publishes may be unacknowledged at once.
    pub fn server_receive_maximum(&self) -> u16 {
        self.outbound.quota
    }

    /// The server's Maximum Packet Size (`u32::MAX` if it set none).
    pub fn server_maximum_packet_size(&self) -> u32 {
        self.wire.max_out
    }

    /// The Keep Alive in force, in seconds (the server's if it set one).
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// QoS 1/2 publishes sent and not yet completed.
    pub fn inflight(&self) -> usize {
        self.outbound.inflight_len()
    }

    /// QoS 1/2 publishes waiting for room under the server's Receive Maximum.
    pub fn queued(&self) -> usize {
        self.outbound.waiting.len()
    }

    /// The reference count of an active subscription filter (0 if not subscribed).
    pub fn subscription_refs(&self, filter: &TopicFilter) -> usize {
        self.subscriptions.get(filter).map_or(0, |e| e.refs)
    }

    /// The reason code the server granted an active subscription filter, once its SUBACK came.
    pub fn subscription_granted(&self, filter: &TopicFilter) -> Option<ReasonCode> {
        self.subscriptions.get(filter).and_then(|e| e.granted)
    }

    /// The fatal error that stopped the current connection, if any.
    pub fn error(&self) -> Option<&Error> {
        self.wire.error.as_deref()
    }

    // ---- commands -----------------------------------------------------------------------

    /// Starts a connection on a new transport: queues CONNECT.
    pub fn connect(&mut self, now: Instant) -> Result<(), StateError> {
        if self.state != ClientState::Disconnected {
            return Err(StateError::AlreadyConnected);
        }
        self.wire.reset();
        self.wire.max_in = self
            .options
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        self.in_aliases.clear();
        self.out_aliases.reset(0);
        self.inbound.reconnect();
        self.limits = ServerLimits::default();
        self.outbound.quota = u16::MAX;
        self.keep_alive = self.options.keep_alive;
        self.ping_deadline = None;
        self.auth_in_progress = self.options.authentication_method.is_some();
        let o = &self.options;
        let connect = Connect {
            protocol_version: self.wire.version,
            clean_start: if self.connected_once {
                false
            } else {
                o.clean_start
            },
            keep_alive: o.keep_alive,
            client_id: self.client_id.clone(),
            will: o.will.clone(),
            username: o.username.clone(),
            password: o.password.clone(),
            properties: ConnectProperties {
                session_expiry_interval: (o.session_expiry_interval != 0)
                    .then_some(o.session_expiry_interval),
                receive_maximum: (o.receive_maximum.get() != u16::MAX).then_some(o.receive_maximum),
                maximum_packet_size: o.maximum_packet_size,
                topic_alias_maximum: (o.topic_alias_maximum != 0).then_some(o.topic_alias_maximum),
                request_response_information: o.request_response_information.then_some(true),
                request_problem_information: (!o.request_problem_information).then_some(false),
                authentication_method: o.authentication_method.clone(),
                authentication_data: o.authentication_data.clone(),
                user_properties: o.user_properties.clone(),
            },
        };
        self.sent_clean_start = connect.clean_start;
        if connect.clean_start {
            self.discard_session();
        }
        self.wire.send(now, Packet::Connect(Box::new(connect)))?;
        self.state = ClientState::Connecting;
        self.connect_deadline = Some(now + self.options.connect_timeout);
        Ok(())
    }

    /// Publishes a message. For QoS 1/2 a packet identifier is assigned and returned; completion
    /// is reported by [`ClientEvent::PublishComplete`]. If the server's Receive Maximum is
    /// reached, the message waits, in order, and is sent when an acknowledgement makes room.
    ///
    /// Refused, not altered: a QoS above the server's Maximum QoS, a retained message the server
    /// cannot retain, and a packet larger than the server's Maximum Packet Size.
    pub fn publish(
        &mut self,
        now: Instant,
        mut publish: Publish,
    ) -> Result<Option<PacketId>, StateError> {
        self.ready()?;
        if publish.qos > self.limits.maximum_qos {
            return Err(StateError::QoSNotSupported {
                requested: publish.qos,
                maximum: self.limits.maximum_qos,
            });
        }
        if publish.retain && !self.limits.retain_available {
            return Err(StateError::RetainNotSupported);
        }
        if publish.topic.is_empty() {
            return Err(StateError::Encode(
                crate::error::EncodeError::MissingTopicName,
            ));
        }
        // Subscription Identifiers are for the server to send [MQTT-3.3.4-6]; aliases are ours
        // to manage.
        if let Some(props) = publish.properties.get_mut() {
            props.subscription_identifiers.clear();
            props.topic_alias = None;
        }
        publish.dup = false;
        publish.packet_id = None;
        let size = Packet::Publish(publish.clone()).encoded_len(self.wire.version);
        if size > self.wire.max_out as usize {
            return Err(StateError::PacketTooLarge {
                size,
                max: self.wire.max_out,
            });
        }
        if publish.qos == QoS::AtMostOnce {
            self.send_publish(now, publish)?;
            return Ok(None);
        }
        let id = self.outbound.allocate()?;
        publish.packet_id = Some(id);
        if self.outbound.has_room() && self.outbound.waiting.is_empty() {
            self.send_publish(now, publish.clone())?;
            self.outbound.track(publish);
        } else {
            self.outbound.waiting.push_back(publish);
        }
        Ok(Some(id))
    }

    /// Whether a packet identifier is free for a QoS 1/2 [`publish`](Self::publish) (or a
    /// SUBSCRIBE/UNSUBSCRIBE): all 65,535 can be in use by messages in flight or waiting for
    /// the server's Receive Maximum, and `publish` then fails with
    /// [`StateError::NoPacketIdAvailable`]. A driver holds such messages back until
    /// acknowledgements free identifiers.
    pub fn has_free_packet_id(&self) -> bool {
        self.outbound.has_free_id()
    }

    /// Subscribes. Filters are reference-counted: a filter already subscribed with the same
    /// options only gains a reference, and no SUBSCRIBE is sent for it. Returns the packet id of
    /// the SUBSCRIBE sent, or `None` if every filter was already subscribed.
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<Option<PacketId>, StateError> {
        self.ready()?;
        for s in &subscriptions {
            if s.filter.has_wildcards() && !self.limits.wildcard_available {
                return Err(StateError::NotSupportedByServer("wildcard subscriptions"));
            }
            if s.filter.is_shared() && !self.limits.shared_available {
                return Err(StateError::NotSupportedByServer("shared subscriptions"));
            }
        }
        if properties.subscription_identifier.is_some() && !self.limits.subscription_ids_available {
            return Err(StateError::NotSupportedByServer("subscription identifiers"));
        }
        let mut to_send = Vec::new();
        for s in subscriptions {
            match self.subscriptions.get_mut(&s.filter) {
                Some(e)
                    if e.options == s.options
                        && e.id == properties.subscription_identifier
                        && e.granted.is_some_and(|g| !g.is_error()) =>
                {
                    e.refs += 1
                }
                _ => to_send.push(s),
            }
        }
        if to_send.is_empty() {
            return Ok(None);
        }
        let id = self.outbound.allocate()?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: properties.clone(),
            subscriptions: to_send.clone(),
        });
        if let Err(e) = self.wire.send(now, packet) {
            self.outbound.release(id);
            return Err(e);
        }
        for s in &to_send {
            let e = self
                .subscriptions
                .entry(s.filter.clone())
                .or_insert(SubEntry {
                    refs: 0,
                    options: s.options,
                    id: properties.subscription_identifier,
                    granted: None,
                });
            e.refs += 1;
            e.options = s.options;
            e.id = properties.subscription_identifier;
        }
        self.pending_subscribe
            .insert(id.get(), to_send.into_iter().map(|s| s.filter).collect());
        Ok(Some(id))
    }

    /// Drops one reference to each filter; filters left with none are unsubscribed. Returns the
    /// packet id of the UNSUBSCRIBE sent, or `None` if no filter lost its last reference.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: Vec<TopicFilter>,
        properties: UnsubscribeProperties,
    ) -> Result<Option<PacketId>, StateError> {
        self.ready()?;
        let mut to_send = Vec::new();
        for f in filters {
            if let Some(e) = self.subscriptions.get_mut(&f) {
                e.refs = e.refs.saturating_sub(1);
                if e.refs == 0 {
                    self.subscriptions.remove(&f);
                    to_send.push(f);
                }
            }
        }
        if to_send.is_empty() {
            return Ok(None);
        }
        let id = self.outbound.allocate()?;
        let n = to_send.len();
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties,
            filters: to_send,
        });
        if let Err(e) = self.wire.send(now, packet) {
            self.outbound.release(id);
            return Err(e);
        }
        self.pending_unsubscribe.insert(id.get(), n);
        Ok(Some(id))
    }

    /// Acknowledges an inbound QoS 1/2 message (with manual acknowledgement): sends PUBACK or
    /// PUBREC with `reason_code`.
    pub fn acknowledge(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason_code: ReasonCode,
    ) -> Result<(), StateError> {
        self.ready()?;
        match self.inbound.acknowledge(packet_id, reason_code) {
            Some(packet) => self.wire.send(now, packet),
            None => Err(StateError::UnknownPacketId(packet_id)),
        }
    }

    /// Answers an AUTH challenge (Continue authentication) with new Authentication Data.
    pub fn authenticate(&mut self, now: Instant, data: Option<Bytes>) -> Result<(), StateError> {
        if self.state == ClientState::Disconnected {
            return Err(StateError::NotConnected);
        }
        if !self.auth_in_progress {
            return Err(StateError::NoAuthInProgress);
        }
        self.send_auth(now, ReasonCode::ContinueAuthentication, data)
    }

    /// Starts re-authentication (AUTH 0x19) on an established connection (section 4.12.1).
    pub fn reauthenticate(&mut self, now: Instant, data: Option<Bytes>) -> Result<(), StateError> {
        self.ready()?;
        if self.options.authentication_method.is_none() {
            return Err(StateError::NoAuthInProgress);
        }
        self.auth_in_progress = true;
        self.send_auth(now, ReasonCode::ReAuthenticate, data)
    }

    /// Sends DISCONNECT and ends the connection. `session_expiry_interval` overrides the one of
    /// CONNECT (it cannot turn 0 into non-zero, section 3.14.2.2.2). Reason 0x04 asks the server
    /// to publish the will.
    pub fn disconnect(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        session_expiry_interval: Option<u32>,
    ) -> Result<(), StateError> {
        if self.state == ClientState::Disconnected {
            return Err(StateError::NotConnected);
        }
        if let Some(sei) = session_expiry_interval {
            if sei != 0 && self.options.session_expiry_interval == 0 {
                return Err(StateError::InvalidSessionExpiry);
            }
        }
        let d = Disconnect {
            reason_code,
            properties: DisconnectProperties {
                session_expiry_interval,
                ..Default::default()
            },
        };
        self.wire.send(now, Packet::Disconnect(d))?;
        if session_expiry_interval == Some(0) {
            self.has_session = false;
        }
        let err = self.wire.fail(now, Error::Disconnected(reason_code), None);
        self.end(err, None);
        Ok(())
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds bytes received from the transport. Complete packets are processed; a partial one
    /// stays buffered. A fatal error is returned now and by every later input until the next
    /// [`connect`](Self::connect); the DISCONNECT that reports it is in
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<(), Error> {
        self.wire.check()?;
        if self.state == ClientState::Disconnected {
            return Err(Error::ConnectionClosed);
        }
        self.wire.push_input(data);
        loop {
            match self.wire.next_packet(now) {
                Ok(Some(p)) => {
                    self.ping_deadline = None;
                    if let Err(e) = self.handle_packet(now, p) {
                        return Err(self.fail(now, e));
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(now, e)),
            }
        }
    }

    /// Advances timers: connect timeout, keep-alive PINGREQ and PINGRESP timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.wire.error.is_some() {
            return;
        }
        match self.state {
            ClientState::Connecting => {
                if self.connect_deadline.is_some_and(|d| now >= d) {
                    let err = self.wire.fail(now, Error::ConnectTimeout, None);
                    self.end(err, None);
                }
            }
            ClientState::Connected => {
                if self.ping_deadline.is_some_and(|d| now >= d) {
                    let err = self.wire.fail(now, Error::KeepAliveTimeout, None);
                    self.end(err, None);
                    return;
                }
                if let Some(due) = self.ping_due() {
                    if now >= due && self.ping_deadline.is_none() {
                        // Wait for PINGRESP even if PINGREQ did not fit the server's Maximum
                        // Packet Size: otherwise the keep-alive deadline stays in the past and
                        // the driver is woken again at once, for ever.
                        let _ = self.wire.send(now, Packet::PingReq);
                        self.ping_deadline = Some(now + self.options.ping_timeout);
                    }
                }
            }
            ClientState::Disconnected => {}
        }
    }

    /// The transport closed. The session state is kept for the next [`connect`](Self::connect).
    pub fn handle_close(&mut self, now: Instant) {
        if self.state == ClientState::Disconnected {
            return;
        }
        let err = self.wire.fail(now, Error::ConnectionClosed, None);
        self.end(err, None);
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Bytes to write to the transport, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.wire.poll_transmit()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Connecting => self.connect_deadline,
            ClientState::Connected => match self.ping_deadline {
                Some(d) => Some(d),
                None => self.ping_due(),
            },
            ClientState::Disconnected => None,
        }
    }

    // ---- internals ----------------------------------------------------------------------

    fn ready(&self) -> Result<(), StateError> {
        if let Some(e) = &self.wire.error {
            return Err(StateError::Failed((**e).clone()));
        }
        if self.state != ClientState::Connected {
            return Err(StateError::NotConnected);
        }
        Ok(())
    }

    fn ping_due(&self) -> Option<Instant> {
        if self.keep_alive == 0 {
            return None;
        }
        self.wire
            .last_sent
            .map(|t| t + Duration::from_secs(u64::from(self.keep_alive)))
    }

    fn send_publish(&mut self, now: Instant, mut publish: Publish) -> Result<(), StateError> {
        self.out_aliases.apply(&mut publish);
        self.wire.send(now, Packet::Publish(publish))
    }

    fn send_auth(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        data: Option<Bytes>,
    ) -> Result<(), StateError> {
        let auth = Auth {
            reason_code,
            properties: AuthProperties {
                authentication_method: self.options.authentication_method.clone(),
                authentication_data: data,
                ..Default::default()
            },
        };
        self.wire.send(now, Packet::Auth(auth))
    }

    /// Sends waiting publishes while the server's Receive Maximum leaves room.
    fn drain_waiting(&mut self, now: Instant) {
        while self.outbound.has_room() {
            let Some(p) = self.outbound.waiting.pop_front() else {
                break;
            };
            match self.send_publish(now, p.clone()) {
                Ok(()) => self.outbound.track(p),
                Err(StateError::PacketTooLarge { .. }) => {
                    if let Some(id) = p.packet_id {
                        self.abandon_unsendable(id);
                    }
                }
                Err(_) => {
                    self.outbound.waiting.push_front(p);
                    break;
                }
            }
        }
    }

    fn discard_session(&mut self) {
        self.outbound.clear();
        self.inbound.clear();
        self.pending_subscribe.clear();
        self.pending_unsubscribe.clear();
        self.has_session = false;
    }

    fn fail(&mut self, now: Instant, error: Error) -> Error {
        let reason = error.peer_violation_reason();
        let err = self.wire.fail(now, error, reason);
        self.end(err.clone(), None);
        err
    }

    fn end(&mut self, error: Error, disconnect: Option<Disconnect>) {
        if self.state == ClientState::Disconnected {
            return;
        }
        self.state = ClientState::Disconnected;
        self.connect_deadline = None;
        self.ping_deadline = None;
        // Subscribe/unsubscribe requests without an answer are void on a new connection: the
        // references they added are taken back, so that subscribing again sends a SUBSCRIBE.
        for (id, filters) in self.pending_subscribe.drain() {
            if let Some(id) = PacketId::new(id) {
                self.outbound.release(id);
            }
            for f in filters {
                if let Some(e) = self.subscriptions.get_mut(&f) {
                    e.refs = e.refs.saturating_sub(1);
                    if e.refs == 0 || e.granted.is_none() {
                        self.subscriptions.remove(&f);
                    }
                }
            }
        }
        for (id, _) in self.pending_unsubscribe.drain() {
            if let Some(id) = PacketId::new(id) {
                self.outbound.release(id);
            }
        }
        if self.options.session_expiry_interval == 0 {
            // The server ends the session with the connection.
            self.has_session = false;
        }
        self.events
            .push_back(ClientEvent::Disconnected { error, disconnect });
    }

    fn unexpected(&self, packet: PacketType) -> Error {
        let state = match self.state {
            ClientState::Connecting => "awaiting CONNACK",
            ClientState::Connected => "connected",
            ClientState::Disconnected => "disconnected",
        };
        Error::Protocol(ProtocolError::UnexpectedPacket { packet, state })
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), Error> {
        match (self.state, packet) {
            (ClientState::Connecting, Packet::ConnAck(c)) => self.on_connack(now, *c),
            (_, Packet::Auth(a)) => self.on_auth(a),
            (_, Packet::Disconnect(d)) => {
                let rc = d.reason_code;
                let err = self.wire.fail(now, Error::ClosedByPeer(rc), None);
                self.end(err, Some(d));
                Ok(())
            }
            (ClientState::Connected, Packet::Publish(p)) => self.on_publish(now, p),
            (ClientState::Connected, Packet::PubAck(a)) => {
                let outcome = self.outbound.on_puback(a);
                self.on_ack_outcome(now, outcome);
                Ok(())
            }
            (ClientState::Connected, Packet::PubRec(a)) => {
                let id = a.packet_id;
                match self.outbound.on_pubrec(a) {
                    AckOutcome::Unknown => {
                        let _ = self.wire.send(
                            now,
                            Packet::PubRel(PublishAck::with_reason(
                                id,
                                ReasonCode::PacketIdentifierNotFound,
                            )),
                        );
                    }
                    other => self.on_ack_outcome(now, other),
                }
                Ok(())
            }
            (ClientState::Connected, Packet::PubComp(mut a)) => {
                if a.reason_code == ReasonCode::PacketIdentifierNotFound {
                    // The server had already released the id: this PUBREL was sent again after
                    // its PUBCOMP was lost, "not an error during recovery" (section 3.7.2.1).
                    // PUBREL is only sent after a successful PUBREC, so the server accepted the
                    // message: the publish succeeded.
                    tracing::debug!(target: "mqttproto", packet_id = a.packet_id.get(), "PUBCOMP 0x92 for a resent PUBREL: completed");
                    a.reason_code = ReasonCode::Success;
                }
                let outcome = self.outbound.on_pubcomp(a);
                self.on_ack_outcome(now, outcome);
                Ok(())
            }
            (ClientState::Connected, Packet::PubRel(r)) => {
                let comp = self.inbound.on_pubrel(r.packet_id);
                let _ = self.wire.send(now, comp);
                Ok(())
            }
            (ClientState::Connected, Packet::SubAck(a)) => {
                let Some(filters) = self.pending_subscribe.remove(&a.packet_id.get()) else {
                    tracing::debug!(target: "mqttproto", packet_id = a.packet_id.get(), "SUBACK for unknown packet id ignored");
                    return Ok(());
                };
                self.outbound.release(a.packet_id);
                if filters.len() != a.reason_codes.len() {
                    return Err(ProtocolError::AckCountMismatch {
                        expected: filters.len(),
                    }
                    .into());
                }
                for (f, rc) in filters.iter().zip(&a.reason_codes) {
                    if rc.is_error() {
                        self.subscriptions.remove(f);
                    } else if let Some(e) = self.subscriptions.get_mut(f) {
                        e.granted = Some(*rc);
                    }
                }
                self.has_session |= self.options.session_expiry_interval != 0;
                self.events.push_back(ClientEvent::Subscribed {
                    packet_id: a.packet_id,
                    reason_codes: a.reason_codes,
                    properties: a.properties,
                });
                Ok(())
            }
            (ClientState::Connected, Packet::UnsubAck(a)) => {
                let Some(n) = self.pending_unsubscribe.remove(&a.packet_id.get()) else {
                    return Ok(());
                };
                self.outbound.release(a.packet_id);
                if n != a.reason_codes.len() {
                    return Err(ProtocolError::AckCountMismatch { expected: n }.into());
                }
                self.events.push_back(ClientEvent::Unsubscribed {
                    packet_id: a.packet_id,
                    reason_codes: a.reason_codes,
                    properties: a.properties,
                });
                Ok(())
            }
            (ClientState::Connected, Packet::PingResp) => Ok(()),
            (_, other) => Err(self.unexpected(other.packet_type())),
        }
    }

    fn on_ack_outcome(&mut self, now: Instant, outcome: AckOutcome) {
        match outcome {
            AckOutcome::Completed(packet_id, reason_code, properties) => {
                self.events.push_back(ClientEvent::PublishComplete {
                    packet_id,
                    reason_code,
                    properties,
                });
                self.drain_waiting(now);
            }
            AckOutcome::Released(id) => {
                let _ = self.wire.send(now, Packet::PubRel(PublishAck::new(id)));
            }
            AckOutcome::Unknown => {
                tracing::debug!(target: "mqttproto", "acknowledgement for an unknown packet id ignored");
            }
        }
    }

    fn on_auth(&mut self, auth: Auth) -> Result<(), Error> {
        let Some(method) = &self.options.authentication_method else {
            return Err(ProtocolError::BadAuthentication.into());
        };
        if auth.properties.authentication_method.as_ref() != Some(method) {
            return Err(ProtocolError::BadAuthentication.into());
        }
        match auth.reason_code {
            // Only inside an exchange: the one of CONNECT, or a re-authentication we started
            // [MQTT-4.12.1-1].
            ReasonCode::ContinueAuthentication if self.auth_in_progress => {}
            ReasonCode::Success
                if self.state == ClientState::Connected && self.auth_in_progress =>
            {
                self.auth_in_progress = false;
            }
            _ => return Err(self.unexpected(PacketType::Auth)),
        }
        self.events.push_back(ClientEvent::Auth(auth));
        Ok(())
    }

    fn on_connack(&mut self, now: Instant, connack: ConnAck) -> Result<(), Error> {
        if connack.reason_code.is_error() {
            let rc = connack.reason_code;
            self.events.push_back(ClientEvent::Refused(connack));
            let err = self.wire.fail(now, Error::ClosedByPeer(rc), None);
            self.end(err, None);
            return Ok(());
        }
        let p = &connack.properties;
        // A successful CONNACK carries our Authentication Method, and none if we sent none
        // [MQTT-4.12.0-5, MQTT-4.12.0-6].
        if p.authentication_method != self.options.authentication_method {
            return Err(ProtocolError::BadAuthentication.into());
        }
        if connack.session_present && self.sent_clean_start {
            // The server must not resume a session we asked to discard [MQTT-3.2.2-2]; we hold
            // no state for it [MQTT-3.2.2-4].
            return Err(ProtocolError::UnexpectedSessionPresent.into());
        }
        if let Some(id) = &p.assigned_client_identifier {
            self.client_id = id.clone();
        }
        self.wire.max_out = p.maximum_packet_size.map_or(u32::MAX, NonZeroU32::get);
        self.outbound.quota = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
        self.limits = ServerLimits {
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            wildcard_available: p.wildcard_subscription_available.unwrap_or(true),
            subscription_ids_available: p.subscription_identifiers_available.unwrap_or(true),
            shared_available: p.shared_subscription_available.unwrap_or(true),
        };
        if let Some(ka) = p.server_keep_alive {
            self.keep_alive = ka; // [MQTT-3.1.2-21]
        }
        self.out_aliases.reset(p.topic_alias_maximum.unwrap_or(0));
        self.auth_in_progress = false;
        self.connect_deadline = None;
        self.state = ClientState::Connected;
        self.connack = Some(connack.clone());
        let had_state = self.has_session
            || self.outbound.inflight_len() > 0
            || !self.subscriptions.is_empty()
            || !self.inbound.qos2.is_empty();
        self.events
            .push_back(ClientEvent::Connected(connack.clone()));
        if connack.session_present {
            self.outbound.fit_quota();
            self.resume(now);
        } else if self.connected_once && had_state {
            self.recover_lost_session(now);
            self.events.push_back(ClientEvent::SessionLost);
        }
        self.connected_once = true;
        self.has_session = self.options.session_expiry_interval != 0;
        self.drain_waiting(now);
        Ok(())
    }

    /// Session resumed: resend unacknowledged PUBLISHes with DUP, and PUBRELs, in their
    /// original order [MQTT-4.4.0-1, MQTT-4.4.0-2].
    fn resume(&mut self, now: Instant) {
        for (id, state) in self.outbound.in_order() {
            let packet = match state {
                OutState::AwaitPubAck(mut p) | OutState::AwaitPubRec(mut p) => {
                    p.dup = true;
                    Packet::Publish(p)
                }
                OutState::AwaitPubComp => Packet::PubRel(PublishAck::new(id)),
            };
            if let Err(StateError::PacketTooLarge { .. }) = self.wire.send(now, packet) {
                // Left in flight, it would hold a slot of the window for the whole connection.
                self.abandon_unsendable(id);
            }
        }
    }

    /// A publish accepted on an earlier connection that the server's Maximum Packet Size no
    /// longer admits [MQTT-3.2.2-15]: it cannot be sent, so its flow ends now with 0x95 (Packet
    /// too large) instead of blocking the messages behind it, and its identifier is free.
    fn abandon_unsendable(&mut self, id: PacketId) {
        tracing::warn!(target: "mqttproto", packet_id = id.get(), max = self.wire.max_out, "publish exceeds the server's new Maximum Packet Size; abandoned");
        self.outbound.release(id);
        self.events.push_back(ClientEvent::PublishComplete {
            packet_id: id,
            reason_code: ReasonCode::PacketTooLarge,
            properties: AckProperties::default(),
        });
    }

    /// The server lost our session [MQTT-3.2.2-5]: discard its state, but lose no message.
    /// Publishes not yet acknowledged are sent again as new messages; those past PUBREC were
    /// accepted by the server and complete now; active subscriptions are subscribed again.
    fn recover_lost_session(&mut self, now: Instant) {
        let mut resend = Vec::new();
        for (id, state) in self.outbound.in_order() {
            match state {
                OutState::AwaitPubAck(p) | OutState::AwaitPubRec(p) => resend.push(p),
                OutState::AwaitPubComp => {
                    self.outbound.release(id);
                    self.events.push_back(ClientEvent::PublishComplete {
                        packet_id: id,
                        reason_code: ReasonCode::Success,
                        properties: AckProperties::default(),
                    });
                }
            }
        }
        for p in resend.into_iter().rev() {
            if let Some(id) = p.packet_id {
                self.outbound.untrack(id);
            }
            self.outbound.waiting.push_front(p);
        }
        self.inbound.clear();
        // Subscribe again to every active filter, grouped by subscription identifier.
        let mut groups: HashMap<Option<SubscriptionId>, Vec<Subscription>> = HashMap::new();
        for (f, e) in &self.subscriptions {
            groups.entry(e.id).or_default().push(Subscription {
                filter: f.clone(),
                options: e.options,
            });
        }
        for (sid, subs) in groups {
            let Ok(id) = self.outbound.allocate() else {
                break;
            };
            let filters = subs.iter().map(|s| s.filter.clone()).collect();
            let packet = Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: SubscribeProperties {
                    subscription_identifier: sid,
                    user_properties: UserProperties::new(),
                },
                subscriptions: subs,
            });
            if self.wire.send(now, packet).is_ok() {
                self.pending_subscribe.insert(id.get(), filters);
            } else {
                self.outbound.release(id);
            }
        }
    }

    fn on_publish(&mut self, now: Instant, mut publish: Publish) -> Result<(), Error> {
        self.in_aliases.resolve(&mut publish)?;
        let verdict = self.inbound.on_publish(publish.qos, publish.packet_id)?;
        match verdict {
            InboundVerdict::Deliver => {
                let id = publish.packet_id;
                self.events.push_back(ClientEvent::Message(publish));
                if let Some(id) = id {
                    if !self.options.manual_acks {
                        if let Some(ack) = self.inbound.acknowledge(id, ReasonCode::Success) {
                            let _ = self.wire.send(now, ack);
                        }
                    }
                }
            }
            InboundVerdict::Duplicate { resend_pubrec } => {
                if let (true, Some(id)) = (resend_pubrec, publish.packet_id) {
                    let _ = self.wire.send(now, Packet::PubRec(PublishAck::new(id)));
                }
            }
        }
        Ok(())
    }
}
