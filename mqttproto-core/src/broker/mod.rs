//! The broker's state machine: the client registry with session takeover and expiry, the
//! subscription index, retained messages, shared subscriptions, wills, and routing.
//!
//! The driver owns sockets. For each accepted connection it calls [`Broker::accept`] and gets a
//! [`ConnectionHandle`]; it feeds that connection's bytes with [`Broker::handle_bytes`], writes
//! what [`Broker::poll_transmit`] returns to the connection it names, answers the decisions
//! raised by [`Broker::poll_event`] (authentication always; subscriptions and publishes when
//! [`BrokerOptions::authorize`] is on), closes the socket on [`BrokerEvent::Closed`], and calls
//! [`Broker::handle_timeout`] at [`Broker::poll_timeout`].
//!
//! Routing costs time proportional to the matching subscriptions (see [`index`]); the payload
//! of a message is shared, not copied, by every subscriber's copy.

pub mod index;
pub mod retained;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{
    AckProperties, Auth, ConnAckProperties, Connect, Packet, Publish, Subscribe, Will,
};
use crate::conn::SHARED_PAYLOAD_MIN;
use crate::error::{Error, StateError};
use crate::session::{
    Session, SessionEvent, SessionOptions, SessionPhase, SessionState, SharedForm,
};
use crate::string::MqttString;
use crate::types::{
    PacketId, QoS, ReasonCode, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use index::{Match, SubscriptionIndex};
use retained::RetainedStore;

/// Identifies one network connection of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    index: u32,
    generation: u32,
}

impl ConnectionHandle {
    /// A number unique among open connections (slots are reused after [`BrokerEvent::Closed`]).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Configuration of the broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Per-connection limits (connect timeout, queue bound, outbound topic aliases).
    pub session: SessionOptions,
    /// What CONNACK announces, and what the broker then enforces: Receive Maximum, Maximum QoS,
    /// Retain Available, Maximum Packet Size, Topic Alias Maximum, the wildcard, subscription
    /// identifier and shared subscription availability flags, Server Keep Alive. By default
    /// only the Receive Maximum is set, to [`DEFAULT_RECEIVE_MAXIMUM`].
    pub connack: ConnAckProperties,
    /// The longest Session Expiry Interval granted (a longer request is lowered and CONNACK says
    /// so).
    pub maximum_session_expiry_interval: u32,
    /// Raise [`BrokerEvent::Subscribe`] and [`BrokerEvent::Publish`] for the driver to authorize;
    /// off, the broker decides alone.
    pub authorize: bool,
    /// Prefix of the client identifiers assigned to clients that send an empty one.
    pub assigned_client_id_prefix: String,
}

/// The Receive Maximum announced by default. Absent, it would mean 65,535 (section 3.2.2.3.3):
/// a client with a backlog would put all of it in flight, and after every reconnect resend all
/// of it before anything new [MQTT-4.4.0-1]; on a link that breaks sooner than that, no
/// acknowledgement ever gets back and the client never gets past the head of its backlog.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 100;

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            session: SessionOptions::default(),
            connack: ConnAckProperties {
                receive_maximum: NonZeroU16::new(DEFAULT_RECEIVE_MAXIMUM),
                ..ConnAckProperties::default()
            },
            maximum_session_expiry_interval: u32::MAX,
            authorize: false,
            assigned_client_id_prefix: "mqttproto-".to_string(),
        }
    }
}

/// A decision the driver must make, or a connection to close.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// A client sent CONNECT: authenticate it, then [`Broker::acknowledge_connect`].
    Connect {
        /// The connection.
        handle: ConnectionHandle,
        /// The CONNECT (client id, credentials, will, properties).
        connect: Box<Connect>,
    },
    /// A client sent AUTH: answer with [`Broker::send_auth`] or [`Broker::acknowledge_connect`].
    Auth {
        /// The connection.
        handle: ConnectionHandle,
        /// The AUTH.
        auth: Auth,
    },
    /// With [`BrokerOptions::authorize`]: a SUBSCRIBE to authorize with
    /// [`Broker::acknowledge_subscribe`].
    Subscribe {
        /// The connection.
        handle: ConnectionHandle,
        /// The client's identifier.
        client_id: MqttString,
        /// The SUBSCRIBE.
        subscribe: Subscribe,
    },
    /// With [`BrokerOptions::authorize`]: a PUBLISH to authorize with
    /// [`Broker::acknowledge_publish`].
    Publish {
        /// The connection.
        handle: ConnectionHandle,
        /// The client's identifier.
        client_id: MqttString,
        /// The PUBLISH, its topic alias resolved.
        publish: Publish,
    },
    /// The connection is over: write out its last bytes, then close the socket. The handle is
    /// invalid from now on.
    Closed {
        /// The connection.
        handle: ConnectionHandle,
        /// Why.
        error: Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubData {
    options: SubscriptionOptions,
    id: Option<SubscriptionId>,
}

#[derive(Debug, Clone)]
struct Retained {
    publish: Publish,
    expires_at: Option<Instant>,
}

type SessionId = u32;

#[derive(Debug)]
struct Conn {
    generation: u32,
    session: Session,
    sid: Option<SessionId>,
    /// The earliest deadline of this connection in the timer heap.
    scheduled: Option<Instant>,
}

/// What a timer-heap entry is for. Entries are checked when they come due, so a stale one
/// (the deadline moved, the connection closed) costs one look and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Conn(ConnectionHandle),
    Slot(SessionId),
    Retained,
}

#[derive(Debug)]
struct Slot {
    client_id: MqttString,
    conn: Option<ConnectionHandle>,
    /// Boxed, like the will: most slots have neither, and a slot lives as long as its session.
    offline: Option<Box<SessionState>>,
    expiry_interval: u32,
    expires_at: Option<Instant>,
    will: Option<Box<Will>>,
    will_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Target {
    qos: QoS,
    ids: Vec<SubscriptionId>,
    retain_as_published: bool,
}

/// The broker's state machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Broker {
    options: BrokerOptions,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<u32>,
    generation: u32,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<SessionId>,
    by_client_id: HashMap<MqttString, SessionId>,
    index: SubscriptionIndex<SessionId, SubData>,
    retained: RetainedStore<Retained>,
    events: VecDeque<BrokerEvent>,
    dirty: VecDeque<ConnectionHandle>,
    /// Last bytes of connections that closed, to be written before their sockets close.
    closing: VecDeque<(ConnectionHandle, Bytes)>,
    assigned: u64,
    /// The sessions one message goes to (kept between messages for its allocation).
    scratch: Vec<(SessionId, Target)>,
    /// Per session slot: the number of the last routing that matched it, and its place in
    /// `scratch` then. A session matched by several subscriptions gets one message
    /// [MQTT-3.3.4-2], found without hashing.
    route_marks: Vec<(u32, u32)>,
    route_no: u32,
    /// Deadlines of connections, sessions (wills, expiry) and retained messages, soonest first.
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    open_conns: usize,
}

impl Broker {
    /// A broker with no connections.
    pub fn new(options: BrokerOptions) -> Broker {
        Broker {
            options,
            conns: Vec::new(),
            free_conns: Vec::new(),
            generation: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: HashMap::new(),
            index: SubscriptionIndex::new(),
            retained: RetainedStore::new(),
            events: VecDeque::new(),
            dirty: VecDeque::new(),
            closing: VecDeque::new(),
            assigned: 0,
            scratch: Vec::new(),
            route_marks: Vec::new(),
            route_no: 0,
            timers: BinaryHeap::new(),
            open_conns: 0,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// The options.
    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.open_conns
    }

    /// Sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.by_client_id.len()
    }

    /// Subscriptions in the index.
    pub fn subscription_count(&self) -> usize {
        self.index.len()
    }

    /// Retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// The session of an open connection.
    pub fn session(&self, handle: ConnectionHandle) -> Option<&Session> {
        self.conn(handle).map(|c| &c.session)
    }

    /// Whether a session exists for this client identifier.
    pub fn has_session(&self, client_id: &str) -> bool {
        MqttString::try_from(client_id).is_ok_and(|id| self.by_client_id.contains_key(&id))
    }

    /// Messages queued for a client's session (offline or beyond its Receive Maximum).
    pub fn queued_for(&self, client_id: &str) -> Option<usize> {
        let sid = *self
            .by_client_id
            .get(&MqttString::try_from(client_id).ok()?)?;
        let slot = self.slots.get(sid as usize)?.as_ref()?;
        match (&slot.offline, slot.conn) {
            (Some(state), _) => Some(state.queued()),
            (None, Some(h)) => self.session(h).map(|s| s.state().queued()),
            _ => None,
        }
    }

    // ---- connections --------------------------------------------------------------------

    /// A new network connection, waiting for CONNECT.
    pub fn accept(&mut self, now: Instant) -> ConnectionHandle {
        self.generation = self.generation.wrapping_add(1);
        let conn = Conn {
            generation: self.generation,
            session: Session::new(now, self.options.session.clone()).without_delivery_events(),
            sid: None,
            scheduled: None,
        };
        self.open_conns += 1;
        let index = match self.free_conns.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        let handle = ConnectionHandle {
            index,
            generation: self.generation,
        };
        self.schedule_conn(handle);
        handle
    }

    /// Feeds bytes received on a connection. A fatal error is returned (and the connection is
    /// reported [`BrokerEvent::Closed`]); the DISCONNECT or CONNACK reporting it is in
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        data: &[u8],
    ) -> Result<(), Error> {
        self.feed(now, handle, |session| session.handle_bytes(now, data))
    }

    /// [`handle_bytes`](Self::handle_bytes) for a read buffer the driver gives up: when the
    /// connection has no partial packet buffered, its packets are decoded in place instead of
    /// being copied (see [`Session::handle_input`]).
    pub fn handle_input(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        data: BytesMut,
    ) -> Result<(), Error> {
        self.feed(now, handle, |session| session.handle_input(now, data))
    }

    /// Gives a connection's session its input, then handles what it raised.
    fn feed(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        input: impl FnOnce(&mut Session) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Some(conn) = self.conn_mut(handle) else {
            return Err(Error::ConnectionClosed);
        };
        let result = input(&mut conn.session);
        self.process(now, handle);
        result
    }

    /// The connection's transport closed.
    pub fn handle_close(&mut self, now: Instant, handle: ConnectionHandle) {
        if let Some(conn) = self.conn_mut(handle) {
            conn.session.handle_close(now);
            self.process(now, handle);
        }
    }

    /// Advances every timer: connect timeouts, keep alive, will delays, session expiry, message
    /// expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            match key {
                TimerKey::Conn(h) => {
                    let Some(conn) = self.conn_mut(h) else {
                        continue;
                    };
                    conn.scheduled = None;
                    if conn.session.poll_timeout().is_some_and(|t| t <= now) {
                        conn.session.handle_timeout(now);
                        self.process(now, h);
                    } else {
                        self.schedule_conn(h);
                    }
                }
                TimerKey::Slot(sid) => self.slot_timeout(now, sid),
                TimerKey::Retained => {
                    self.retained
                        .retain(|_, m| m.expires_at.is_none_or(|t| t > now));
                }
            }
        }
    }

    fn slot_timeout(&mut self, now: Instant, sid: SessionId) {
        let Some(slot) = self.slots.get_mut(sid as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        if slot.will_at.is_some_and(|t| t <= now) {
            slot.will_at = None;
            if let Some(will) = slot.will.take() {
                self.publish_will(now, *will);
            }
        }
        let Some(slot) = self.slots.get(sid as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        if slot.conn.is_none() && slot.expires_at.is_some_and(|t| t <= now) {
            self.end_session(now, sid);
        } else {
            self.schedule_slot(sid);
        }
    }

    /// Puts a connection's next deadline in the timer heap if it is earlier than the one there.
    fn schedule_conn(&mut self, h: ConnectionHandle) {
        let Some(conn) = self.conn_mut(h) else { return };
        let Some(t) = conn.session.poll_timeout() else {
            return;
        };
        if conn.scheduled.is_none_or(|s| t < s) {
            conn.scheduled = Some(t);
            self.timers.push(Reverse((t, TimerKey::Conn(h))));
        }
    }

    /// Puts a session's will or expiry deadline in the timer heap.
    fn schedule_slot(&mut self, sid: SessionId) {
        let Some(slot) = self.slots.get(sid as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        let expiry = if slot.conn.is_none() {
            slot.expires_at
        } else {
            None
        };
        let next = match (slot.will_at, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = next {
            self.timers.push(Reverse((t, TimerKey::Slot(sid))));
        }
    }

    /// Disconnects every client with `reason_code` (0x8B Server shutting down for a graceful
    /// shutdown).
    pub fn disconnect_all(&mut self, now: Instant, reason_code: ReasonCode) {
        for i in 0..self.conns.len() {
            let Some(conn) = &mut self.conns[i] else {
                continue;
            };
            let handle = ConnectionHandle {
                index: i as u32,
                generation: conn.generation,
            };
            let _ = conn.session.disconnect(now, reason_code);
            self.process(now, handle);
        }
    }

    // ---- decisions ----------------------------------------------------------------------

    /// Answers [`BrokerEvent::Connect`]. On success the broker applies Clean Start or resumes
    /// the client's session [MQTT-3.1.2-4, MQTT-3.1.2-5], takes over a connection already using
    /// the client id (DISCONNECT 0x8E) [MQTT-3.1.4-3], assigns a client id if needed
    /// [MQTT-3.2.2-16], and sends CONNACK with [`BrokerOptions::connack`]. A failure code is
    /// sent in CONNACK and the connection closes.
    ///
    /// When the CONNECT carried an Authentication Method (enhanced authentication), a
    /// successful CONNACK carries the same method [MQTT-4.12.0-5]; otherwise CONNACK carries
    /// no Authentication Method nor Data, whatever [`BrokerOptions::connack`] says
    /// [MQTT-4.12.0-6]. To send final Authentication Data in CONNACK, use
    /// [`acknowledge_connect_with_auth_data`](Self::acknowledge_connect_with_auth_data).
    pub fn acknowledge_connect(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        reason_code: ReasonCode,
    ) -> Result<(), StateError> {
        self.acknowledge_connect_with_auth_data(now, handle, reason_code, None)
    }

    /// [`acknowledge_connect`](Self::acknowledge_connect) ending an enhanced authentication:
    /// a successful CONNACK carries the CONNECT's Authentication Method [MQTT-4.12.0-5] and
    /// `authentication_data` (the method's final data, if it has any). A refusal carries only
    /// its reason code (the data is not sent). Fails with [`StateError::NoAuthInProgress`]
    /// when `authentication_data` is given for a CONNECT without an Authentication Method
    /// [MQTT-4.12.0-6].
    pub fn acknowledge_connect_with_auth_data(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        reason_code: ReasonCode,
        authentication_data: Option<Bytes>,
    ) -> Result<(), StateError> {
        let connect = self
            .conn(handle)
            .and_then(|c| c.session.connect_packet().cloned())
            .ok_or(StateError::NotConnected)?;
        let method = connect.properties.authentication_method.clone();
        if method.is_none() && authentication_data.is_some() {
            return Err(StateError::NoAuthInProgress);
        }
        let limits = &self.options.connack;
        let mut reason_code = reason_code;
        if let Some(will) = &connect.will {
            if will.qos > limits.maximum_qos.unwrap_or(QoS::ExactlyOnce) {
                reason_code = ReasonCode::QoSNotSupported; // [MQTT-3.2.2-12]
            } else if will.retain && !limits.retain_available.unwrap_or(true) {
                reason_code = ReasonCode::RetainNotSupported; // [MQTT-3.2.2-13]
            }
        }
        if reason_code.is_error() {
            let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
            conn.session.acknowledge_connect(
                now,
                reason_code,
                false,
                ConnAckProperties::default(),
            )?;
            self.process(now, handle);
            return Ok(());
        }
        let mut props = self.options.connack.clone();
        // Enhanced authentication: the CONNECT's method and the final data, or neither
        // [MQTT-4.12.0-5, MQTT-4.12.0-6].
        props.authentication_method = method;
        props.authentication_data = authentication_data;
        let client_id = if connect.client_id.is_empty() {
            self.assigned += 1;
            let id = format!(
                "{}{}",
                self.options.assigned_client_id_prefix, self.assigned
            );
            let id = MqttString::try_from(id).map_err(|_| StateError::NotConnected)?;
            props.assigned_client_identifier = Some(id.clone());
            id
        } else {
            // A copy of its own: a slice would keep the whole CONNECT frame alive for as long
            // as the session lives.
            MqttString::try_from(connect.client_id.as_str())
                .map_err(|_| StateError::NotConnected)?
        };
        let requested = connect.properties.session_expiry_interval.unwrap_or(0);
        let expiry = requested.min(self.options.maximum_session_expiry_interval);
        if expiry != requested {
            props.session_expiry_interval = Some(expiry);
        }
        // An existing session for this client id.
        let mut resumed_state = None;
        if let Some(&sid) = self.by_client_id.get(&client_id) {
            let old_conn = self.slots[sid as usize].as_ref().and_then(|s| s.conn);
            if let Some(old) = old_conn {
                // Session takeover [MQTT-3.1.4-3]: the old connection's state moves here. Its
                // will is published as for any closed connection (section 3.1.2.5): at once
                // with a Will Delay of 0, or because the session ends with Clean Start;
                // otherwise the new connection cancels it [MQTT-3.1.3-9].
                let old_will = self.slots[sid as usize]
                    .as_mut()
                    .and_then(|s| s.will.take());
                if let Some(will) = old_will {
                    if will.properties.will_delay_interval.unwrap_or(0) == 0 || connect.clean_start
                    {
                        self.publish_will(now, *will);
                    }
                }
                if let Some(c) = self.conn_mut(old) {
                    let _ = c.session.disconnect(now, ReasonCode::SessionTakenOver);
                    let state = c.session.take_state();
                    c.sid = None;
                    if let Some(slot) = self.slots[sid as usize].as_mut() {
                        slot.offline = Some(Box::new(state));
                        slot.conn = None;
                    }
                }
                self.process(now, old);
            }
            if connect.clean_start {
                self.end_session(now, sid);
            } else if let Some(slot) = self.slots[sid as usize].as_mut() {
                // Resume: a pending will is cancelled [MQTT-3.1.3-9].
                slot.will_at = None;
                slot.will = None;
                resumed_state = slot.offline.take();
                slot.conn = Some(handle);
                slot.expires_at = None;
                slot.expiry_interval = expiry;
                slot.will = connect.will.clone().map(Box::new);
            }
        }
        let sid = match (self.by_client_id.get(&client_id), &resumed_state) {
            (Some(&sid), Some(_)) => sid,
            _ => {
                let slot = Slot {
                    client_id: client_id.clone(),
                    conn: Some(handle),
                    offline: None,
                    expiry_interval: expiry,
                    expires_at: None,
                    will: connect.will.clone().map(Box::new),
                    will_at: None,
                };
                let sid = match self.free_slots.pop() {
                    Some(s) => {
                        self.slots[s as usize] = Some(slot);
                        s
                    }
                    None => {
                        self.slots.push(Some(slot));
                        (self.slots.len() - 1) as SessionId
                    }
                };
                self.by_client_id.insert(client_id, sid);
                sid
            }
        };
        let session_present = resumed_state.is_some();
        let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
        conn.sid = Some(sid);
        if let Some(state) = resumed_state {
            conn.session.restore_state(*state);
        }
        conn.session
            .acknowledge_connect(now, ReasonCode::Success, session_present, props)?;
        self.process(now, handle);
        Ok(())
    }

    /// Ends one connection with `reason_code`: a connected client gets DISCONNECT with that
    /// code (for example 0x87 Not authorized when a re-authentication fails [MQTT-4.12.1-2],
    /// or 0x98 Administrative action), then the connection closes and
    /// [`BrokerEvent::Closed`] follows. As for any connection the server closes, the will is
    /// published and a persistent session lives on. A connection still waiting for its CONNACK
    /// is closed without a packet (no DISCONNECT before CONNACK [MQTT-3.14.0-1]); refuse it
    /// with [`acknowledge_connect`](Self::acknowledge_connect) instead to tell it why. Fails
    /// with [`StateError::NotConnected`] for a closed connection, and with
    /// [`EncodeError::InvalidReasonCode`](crate::error::EncodeError::InvalidReasonCode) for a
    /// code DISCONNECT cannot carry (the connection then stays open).
    pub fn disconnect(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        reason_code: ReasonCode,
    ) -> Result<(), StateError> {
        let packet = crate::types::PacketType::Disconnect;
        if !reason_code.is_valid_for(packet) {
            return Err(crate::error::EncodeError::InvalidReasonCode {
                packet,
                code: reason_code,
            }
            .into());
        }
        let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
        conn.session.disconnect(now, reason_code)?;
        self.process(now, handle);
        Ok(())
    }

    /// Sends AUTH on a connection (enhanced authentication).
    pub fn send_auth(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        reason_code: ReasonCode,
        data: Option<Bytes>,
    ) -> Result<(), StateError> {
        let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
        conn.session.send_auth(now, reason_code, data)?;
        self.mark(handle);
        Ok(())
    }

    /// Answers [`BrokerEvent::Subscribe`] with the driver's verdict per filter (for example 0x87
    /// Not authorized; any code below 0x80 means "allowed"). The broker then applies its own
    /// limits and grants.
    pub fn acknowledge_subscribe(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        subscribe: Subscribe,
        verdicts: Vec<ReasonCode>,
    ) -> Result<(), StateError> {
        self.subscribe(now, handle, subscribe, Some(verdicts))
    }

    /// Answers [`BrokerEvent::Publish`]: a code below 0x80 routes the message; otherwise it is
    /// refused with that code in PUBACK/PUBREC (QoS 0 messages are just dropped).
    pub fn acknowledge_publish(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        publish: Publish,
        verdict: ReasonCode,
    ) -> Result<(), StateError> {
        self.publish_from(now, handle, publish, verdict)
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Bytes to write to a connection. Call until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<(ConnectionHandle, Bytes)> {
        if let Some(last) = self.closing.pop_front() {
            return Some(last);
        }
        while let Some(&h) = self.dirty.front() {
            if let Some(conn) = self.conn_mut(h) {
                // A connection's output may come in several chunks: it stays at the front
                // until it has none left.
                if let Some(b) = conn.session.poll_transmit() {
                    return Some((h, b));
                }
            }
            self.dirty.pop_front();
        }
        None
    }

    /// Like [`poll_transmit`](Self::poll_transmit), but takes everything the next connection
    /// has to write at once: appends its chunks to `out`, in order, and returns the
    /// connection. Large payloads are chunks of their own (shared by every subscriber, not
    /// copied), so a driver that bounds a connection's pending output, or writes vectored,
    /// sees what one flush produced for it as one unit.
    pub fn poll_transmit_into(&mut self, out: &mut Vec<Bytes>) -> Option<ConnectionHandle> {
        if let Some((h, first)) = self.closing.pop_front() {
            out.push(first);
            while self.closing.front().is_some_and(|(next, _)| *next == h) {
                if let Some((_, b)) = self.closing.pop_front() {
                    out.push(b);
                }
            }
            return Some(h);
        }
        while let Some(h) = self.dirty.pop_front() {
            if let Some(conn) = self.conn_mut(h) {
                let mut any = false;
                while let Some(b) = conn.session.poll_transmit() {
                    out.push(b);
                    any = true;
                }
                if any {
                    return Some(h);
                }
            }
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    // ---- internals ----------------------------------------------------------------------

    fn conn(&self, h: ConnectionHandle) -> Option<&Conn> {
        self.conns
            .get(h.index as usize)?
            .as_ref()
            .filter(|c| c.generation == h.generation)
    }

    fn conn_mut(&mut self, h: ConnectionHandle) -> Option<&mut Conn> {
        self.conns
            .get_mut(h.index as usize)?
            .as_mut()
            .filter(|c| c.generation == h.generation)
    }

    fn mark(&mut self, h: ConnectionHandle) {
        self.dirty.push_back(h);
    }

    fn client_id_of(&self, h: ConnectionHandle) -> MqttString {
        self.conn(h)
            .and_then(|c| c.sid)
            .and_then(|sid| self.slots.get(sid as usize)?.as_ref())
            .map(|s| s.client_id.clone())
            .unwrap_or_default()
    }

    /// Handles what a connection's session raised, then keeps its deadline in the heap.
    fn process(&mut self, now: Instant, handle: ConnectionHandle) {
        self.process_events(now, handle);
        self.schedule_conn(handle);
    }

    fn process_events(&mut self, now: Instant, handle: ConnectionHandle) {
        self.mark(handle);
        loop {
            let Some(conn) = self.conn_mut(handle) else {
                return;
            };
            let Some(event) = conn.session.poll_event() else {
                return;
            };
            match event {
                SessionEvent::Connect(connect) => self
                    .events
                    .push_back(BrokerEvent::Connect { handle, connect }),
                SessionEvent::Auth(auth) => {
                    self.events.push_back(BrokerEvent::Auth { handle, auth })
                }
                SessionEvent::Publish(publish) => {
                    if self.options.authorize {
                        let client_id = self.client_id_of(handle);
                        self.events.push_back(BrokerEvent::Publish {
                            handle,
                            client_id,
                            publish,
                        });
                    } else {
                        let _ = self.publish_from(now, handle, publish, ReasonCode::Success);
                    }
                }
                SessionEvent::Subscribe(subscribe) => {
                    if self.options.authorize {
                        let client_id = self.client_id_of(handle);
                        self.events.push_back(BrokerEvent::Subscribe {
                            handle,
                            client_id,
                            subscribe,
                        });
                    } else {
                        let _ = self.subscribe(now, handle, subscribe, None);
                    }
                }
                SessionEvent::Unsubscribe(u) => {
                    let sid = self.conn(handle).and_then(|c| c.sid);
                    let codes = u
                        .filters
                        .iter()
                        .map(|f| match sid.and_then(|sid| self.index.remove(f, sid)) {
                            Some(_) => ReasonCode::Success,
                            None => ReasonCode::NoSubscriptionExisted,
                        })
                        .collect();
                    if let Some(conn) = self.conn_mut(handle) {
                        let _ = conn.session.acknowledge_unsubscribe(
                            now,
                            u.packet_id,
                            codes,
                            AckProperties::default(),
                        );
                    }
                }
                SessionEvent::Delivered { .. } => {}
                SessionEvent::Disconnected { error, disconnect } => {
                    self.on_closed(now, handle, error, disconnect);
                    return;
                }
            }
        }
    }

    fn on_closed(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        error: Error,
        disconnect: Option<crate::codec::Disconnect>,
    ) {
        let sid = self.conn(handle).and_then(|c| c.sid);
        if let Some(sid) = sid {
            let mut will_now = None;
            let mut end = false;
            if let Some(slot) = self.slots[sid as usize].as_mut() {
                if slot.conn == Some(handle) {
                    slot.conn = None;
                    if let Some(d) = &disconnect {
                        if d.reason_code == ReasonCode::Success {
                            slot.will = None; // [MQTT-3.14.4-3]
                        }
                        if let Some(sei) = d.properties.session_expiry_interval {
                            slot.expiry_interval =
                                sei.min(self.options.maximum_session_expiry_interval);
                        }
                    }
                    if let Some(will) = &slot.will {
                        let delay = will.properties.will_delay_interval.unwrap_or(0);
                        slot.will_at = Some(now + Duration::from_secs(u64::from(delay)));
                    }
                    if slot.expiry_interval == 0 {
                        end = true;
                    } else {
                        slot.expires_at = (slot.expiry_interval != u32::MAX)
                            .then(|| now + Duration::from_secs(u64::from(slot.expiry_interval)));
                    }
                    if slot.will_at.is_some_and(|t| t <= now) {
                        slot.will_at = None;
                        will_now = slot.will.take();
                    }
                }
            }
            if let Some(conn) = self.conn_mut(handle) {
                let state = conn.session.take_state();
                if let Some(slot) = self.slots[sid as usize].as_mut() {
                    if slot.conn.is_none() && slot.offline.is_none() {
                        slot.offline = Some(Box::new(state));
                    }
                }
            }
            if let Some(will) = will_now {
                self.publish_will(now, *will);
            }
            if end {
                self.end_session(now, sid);
            } else {
                self.schedule_slot(sid);
            }
        }
        self.events.push_back(BrokerEvent::Closed { handle, error });
        // The connection slot is kept until its last bytes are taken: free it lazily.
        if let Some(conn) = self.conn_mut(handle) {
            conn.sid = None;
        }
        while let Some(bytes) = self
            .conn_mut(handle)
            .and_then(|c| c.session.poll_transmit())
        {
            self.closing.push_back((handle, bytes));
        }
        if self.conns[handle.index as usize].take().is_some() {
            self.open_conns -= 1;
            self.free_conns.push(handle.index);
        }
    }

    /// The session ends: its will (if still pending) is published [MQTT-3.1.2-8], its
    /// subscriptions and state are dropped.
    fn end_session(&mut self, now: Instant, sid: SessionId) {
        let Some(slot) = self.slots[sid as usize].take() else {
            return;
        };
        self.by_client_id.remove(&slot.client_id);
        self.free_slots.push(sid);
        let filters: Vec<_> = slot
            .offline
            .as_ref()
            .map(|s| s.subscriptions().map(|(f, _, _)| f.clone()).collect())
            .unwrap_or_default();
        for f in filters {
            self.index.remove(&f, sid);
        }
        if let Some(h) = slot.conn {
            let filters: Vec<_> = self
                .session(h)
                .map(|s| {
                    s.state()
                        .subscriptions()
                        .map(|(f, _, _)| f.clone())
                        .collect()
                })
                .unwrap_or_default();
            for f in filters {
                self.index.remove(&f, sid);
            }
        }
        if let (Some(will), true) = (slot.will, slot.will_at.is_some()) {
            self.publish_will(now, *will);
        }
    }

    fn publish_will(&mut self, now: Instant, will: Will) {
        let p = &will.properties;
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: None,
            payload: will.payload,
            properties: crate::codec::PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                content_type: p.content_type.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
            }
            .into(),
        };
        self.route(now, None, publish);
    }

    fn publish_from(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        publish: Publish,
        verdict: ReasonCode,
    ) -> Result<(), StateError> {
        let sid = self.conn(handle).and_then(|c| c.sid);
        let packet_id = publish.packet_id;
        let reason = if verdict.is_error() {
            verdict
        } else if self.route(now, sid, publish) {
            ReasonCode::Success
        } else {
            ReasonCode::NoMatchingSubscribers
        };
        if let Some(id) = packet_id {
            self.acknowledge(now, handle, id, reason)?;
        }
        Ok(())
    }

    fn acknowledge(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        id: PacketId,
        reason: ReasonCode,
    ) -> Result<(), StateError> {
        let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
        conn.session.acknowledge_publish(now, id, reason)?;
        self.mark(handle);
        Ok(())
    }

    /// Routes an application message to every matching subscription; returns whether any
    /// matched.
    fn route(&mut self, now: Instant, from: Option<SessionId>, mut publish: Publish) -> bool {
        publish.dup = false;
        publish.packet_id = None;
        if let Some(props) = publish.properties.get_mut() {
            props.topic_alias = None;
            // Each subscriber gets its own (a message from the application may carry some).
            props.subscription_identifiers.clear();
        }
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        if publish.retain {
            if publish.payload.is_empty() {
                self.retained.remove(&publish.topic); // [MQTT-3.3.1-6, MQTT-3.3.1-7]
            } else {
                let kept = detached(&publish);
                self.retained.insert(
                    kept.topic.clone(),
                    Retained {
                        publish: kept,
                        expires_at,
                    },
                ); // [MQTT-3.3.1-5]
                if let Some(t) = expires_at {
                    self.timers.push(Reverse((t, TimerKey::Retained)));
                }
            }
        }
        let mut targets = std::mem::take(&mut self.scratch);
        self.route_no = self.route_no.wrapping_add(1);
        if self.route_no == 0 {
            self.route_marks.fill((0, 0));
            self.route_no = 1;
        }
        if self.route_marks.len() < self.slots.len() {
            self.route_marks.resize(self.slots.len(), (0, 0));
        }
        {
            let marks = &mut self.route_marks;
            let route_no = self.route_no;
            let slots = &self.slots;
            let conns = &self.conns;
            let online = |sid: SessionId| {
                slots
                    .get(sid as usize)
                    .and_then(|s| s.as_ref())
                    .and_then(|s| s.conn)
                    .is_some_and(|h| {
                        conns
                            .get(h.index as usize)
                            .and_then(|c| c.as_ref())
                            .is_some_and(|c| c.session.phase() == SessionPhase::Connected)
                    })
            };
            self.index.matches(&publish.topic, |m| {
                let (key, value) = match m {
                    Match::Subscription { key, value } => {
                        if value.options.no_local && Some(key) == from {
                            return; // [MQTT-3.8.3-3]
                        }
                        (key, value)
                    }
                    Match::Shared(group) => {
                        // One member per message, round robin, preferring connected ones.
                        match group
                            .next_member_where(|k, _| online(k))
                            .or_else(|| group.next_member())
                        {
                            Some(m) => m,
                            None => return,
                        }
                    }
                };
                let Some(mark) = marks.get_mut(key as usize) else {
                    return; // not a live session slot
                };
                let t = if mark.0 == route_no {
                    &mut targets[mark.1 as usize].1
                } else {
                    *mark = (route_no, targets.len() as u32);
                    targets.push((key, Target::default()));
                    &mut targets[mark.1 as usize].1
                };
                t.qos = t.qos.max(value.options.qos);
                t.retain_as_published |= value.options.retain_as_published;
                if let Some(id) = value.id {
                    t.ids.push(id);
                }
            });
        }
        let matched = !targets.is_empty();
        // Subscribers that get the message in the same form (QoS, RETAIN, no Subscription
        // Identifiers) and can be sent it now share one encoding of it, made on first use:
        // indexed by QoS and RETAIN; `Some(None)` when it could not be encoded.
        let mut forms: [Option<Option<SharedForm>>; 6] = Default::default();
        let shareable = expires_at.is_none_or(|t| t > now);
        let mut stored: Option<Publish> = None;
        for (sid, t) in targets.drain(..) {
            let qos = publish.qos.min(t.qos);
            let retain = publish.retain && t.retain_as_published; // [MQTT-3.3.1-12, -13]
            if shareable
                && t.ids.is_empty()
                && (qos == QoS::AtMostOnce || publish.payload.len() < SHARED_PAYLOAD_MIN)
            {
                let form = forms[qos as usize * 2 + usize::from(retain)].get_or_insert_with(|| {
                    let mut p = publish.clone();
                    p.qos = qos;
                    p.retain = retain;
                    SharedForm::new(p, expires_at, now)
                });
                if let Some(form) = form {
                    if self.deliver_shared(now, sid, form) {
                        continue;
                    }
                }
            }
            // A session that is offline may hold the message for long: it gets a copy detached
            // from the read buffer (made once for all of them), as the retained store does.
            let offline = self
                .slots
                .get(sid as usize)
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.conn.is_none());
            let mut out = if offline {
                stored.get_or_insert_with(|| detached(&publish)).clone()
            } else {
                publish.clone()
            };
            out.qos = qos;
            out.retain = retain;
            set_subscription_ids(&mut out, t.ids);
            self.deliver(now, sid, out, expires_at);
        }
        self.scratch = targets;
        matched
    }

    /// Sends a shared form of a message to a connected session that can take it now;
    /// false if it must go the regular way ([`deliver`](Self::deliver)).
    fn deliver_shared(&mut self, now: Instant, sid: SessionId, form: &SharedForm) -> bool {
        let Some(h) = self
            .slots
            .get(sid as usize)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.conn)
        else {
            return false;
        };
        let Some(conn) = self.conn_mut(h) else {
            return false;
        };
        if !conn.session.publish_shared(now, form) {
            return false;
        }
        self.dirty.push_back(h);
        true
    }

    fn deliver(
        &mut self,
        now: Instant,
        sid: SessionId,
        publish: Publish,
        expires_at: Option<Instant>,
    ) {
        let max = self.options.session.max_queued_messages;
        let Some(slot) = self.slots.get_mut(sid as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        let result = match (slot.conn, slot.offline.as_mut()) {
            (Some(h), _) => {
                let r = match self
                    .conns
                    .get_mut(h.index as usize)
                    .and_then(|c| c.as_mut())
                {
                    Some(c) => c.session.publish(now, publish, expires_at),
                    None => Ok(()),
                };
                self.dirty.push_back(h);
                if expires_at.is_some() {
                    self.schedule_conn(h);
                }
                r
            }
            (None, Some(state)) => state.enqueue(publish, expires_at, max),
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(target: "mqttproto::broker", error = %e, "message not queued for a session");
        }
    }

    fn subscribe(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        subscribe: Subscribe,
        verdicts: Option<Vec<ReasonCode>>,
    ) -> Result<(), StateError> {
        let sid = self
            .conn(handle)
            .and_then(|c| c.sid)
            .ok_or(StateError::NotConnected)?;
        let limits = &self.options.connack;
        let max_qos = limits.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        let wildcards = limits.wildcard_subscription_available.unwrap_or(true);
        let shared = limits.shared_subscription_available.unwrap_or(true);
        let sub_ids = limits.subscription_identifiers_available.unwrap_or(true);
        let id = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        for (i, s) in subscribe.subscriptions.iter().enumerate() {
            let verdict = verdicts
                .as_ref()
                .and_then(|v| v.get(i).copied())
                .unwrap_or(ReasonCode::Success);
            let code = if verdict.is_error() {
                verdict
            } else if id.is_some() && !sub_ids {
                ReasonCode::SubscriptionIdentifiersNotSupported
            } else if s.filter.has_wildcards() && !wildcards {
                ReasonCode::WildcardSubscriptionsNotSupported
            } else if s.filter.is_shared() && !shared {
                ReasonCode::SharedSubscriptionsNotSupported
            } else {
                ReasonCode::granted(s.options.qos.min(max_qos))
            };
            codes.push(code);
        }
        let conn = self.conn_mut(handle).ok_or(StateError::NotConnected)?;
        conn.session.acknowledge_subscribe(
            now,
            subscribe.packet_id,
            codes.clone(),
            AckProperties::default(),
        )?;
        self.mark(handle);
        for (s, code) in subscribe.subscriptions.iter().zip(codes) {
            let granted = match code {
                ReasonCode::Success => QoS::AtMostOnce,
                ReasonCode::GrantedQoS1 => QoS::AtLeastOnce,
                ReasonCode::GrantedQoS2 => QoS::ExactlyOnce,
                _ => continue,
            };
            let mut options = s.options;
            options.qos = granted;
            let existed = self
                .index
                .insert(&s.filter, sid, SubData { options, id })
                .is_some();
            // Retained messages at subscribe time [MQTT-3.3.1-9, -10, -11]; none for shared
            // subscriptions.
            let send = !s.filter.is_shared()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send {
                let mut out = Vec::new();
                self.retained.matching(&s.filter, |_, m| {
                    if m.expires_at.is_none_or(|t| t > now) {
                        out.push(m.clone());
                    }
                });
                for m in out {
                    let mut p = m.publish;
                    p.qos = p.qos.min(granted);
                    p.retain = true;
                    set_subscription_ids(&mut p, id.into_iter().collect());
                    self.deliver(now, sid, p, m.expires_at);
                }
            }
        }
        Ok(())
    }
}

/// Replaces the Subscription Identifiers of an outgoing message, without allocating properties
/// for a message that has none and gets none.
/// A copy of `publish` whose topic, payload and properties share one allocation of the
/// packet's own size. A decoded message's bytes are slices of the buffer it was read into (up
/// to 64 KiB, shared with the packets around it): a retained message can live for days, and
/// must not keep all of that alive.
fn detached(publish: &Publish) -> Publish {
    let mut wire_form = publish.clone();
    if wire_form.qos != QoS::AtMostOnce {
        wire_form.packet_id = crate::types::PacketId::new(1); // encoding needs one
    }
    let mut buf = BytesMut::new();
    let decoded = Packet::Publish(wire_form)
        .encode(&mut buf, crate::types::ProtocolVersion::V5)
        .ok()
        .and_then(|()| {
            crate::codec::decode_packet(buf.freeze(), crate::types::ProtocolVersion::V5).ok()
        });
    match decoded {
        Some(Packet::Publish(mut p)) => {
            p.packet_id = publish.packet_id;
            p
        }
        // It was decoded or built valid; should encoding ever refuse it, keep it as it is.
        _ => publish.clone(),
    }
}

fn set_subscription_ids(publish: &mut Publish, ids: Vec<SubscriptionId>) {
    match publish.properties.get_mut() {
        Some(props) => props.subscription_identifiers = ids,
        None if ids.is_empty() => {}
        None => publish.properties.subscription_identifiers = ids,
    }
}
