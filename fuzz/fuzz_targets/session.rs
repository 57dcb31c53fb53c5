//! Fuzz target for the `Session` state machine's input: bytes from the client, with the events
//! answered as a broker would, server-side publishes, timers on a fake clock, and session state
//! moved to a new connection (`take_state`/`restore_state`).
//!
//! Input layout (see fuzz/README.md, "Target `session`"):
//!
//! | byte | meaning                                                                              |
//! | ---- | ------------------------------------------------------------------------------------ |
//! | 0    | flags: max packet size set, outbound aliases, prepend a CONNECT, connect timeout     |
//! | 1    | Maximum Packet Size parameter                                                        |
//! | 2    | Max queued messages (1..=8)                                                          |
//! | 3..  | if the CONNECT flag is set, a CONNECT description (see `connect`); then steps        |
//!
//! Each step starts with an opcode byte (`op % 16`): 0-3 feed the next `1 + byte` input bytes as
//! raw client bytes; 4-5 feed one well-formed client packet built from the next bytes; 6 queue a
//! server-side publish; 7 acknowledge a held inbound publish; 8 answer a held SUBSCRIBE or
//! UNSUBSCRIBE; 9 answer a held CONNECT; 10 advance the clock and call `handle_timeout`; 11 call
//! `handle_timeout` at `poll_timeout()`; 12 new connection (`handle_close`, `take_state`, a new
//! `Session`, whose CONNECT may then resume the state); 13 `disconnect`; 14 `handle_close`;
//! 15 advance the clock. Events are answered as they come, or held, as the next byte says.
//!
//! After every step the output is drained and checked: every byte written decodes as complete,
//! valid MQTT 5 server-to-client packets no larger than the client's Maximum Packet Size; one
//! CONNACK per connection, and nothing but CONNACK/AUTH before a successful one; nothing after
//! DISCONNECT, a refusing CONNACK or a fatal error; a fatal error stays: `handle_bytes` returns
//! the same error; `poll_timeout()` is never before the last `now` given to `handle_timeout`; the
//! in-flight count stays within the client's Receive Maximum; a message id is not reused while in
//! flight and each delivery completes at most once.
#![no_main]

use std::collections::HashSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqttproto_core::codec::*;
use mqttproto_core::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

const TOPICS: [&str; 6] = ["a", "a/b", "sensors/1", "x/y/z", "$SYS/up", "t"];
const FILTERS: [&str; 8] = [
    "a",
    "a/#",
    "+/b",
    "#",
    "$share/g/a",
    "sensors/+",
    "x/y/z",
    "t",
];
/// Codes valid in both PUBACK and PUBREC.
const ACK_CODES: [ReasonCode; 9] = [
    ReasonCode::Success,
    ReasonCode::NoMatchingSubscribers,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
];
const SUBACK_CODES: [ReasonCode; 7] = [
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::QuotaExceeded,
];
const UNSUBACK_CODES: [ReasonCode; 4] = [
    ReasonCode::Success,
    ReasonCode::NoSubscriptionExisted,
    ReasonCode::UnspecifiedError,
    ReasonCode::NotAuthorized,
];
const CONNACK_ERRORS: [ReasonCode; 6] = [
    ReasonCode::UnspecifiedError,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerBusy,
    ReasonCode::QuotaExceeded,
    ReasonCode::UseAnotherServer,
];
const DISCONNECT_CODES: [ReasonCode; 6] = [
    ReasonCode::Success,
    ReasonCode::DisconnectWithWillMessage,
    ReasonCode::UnspecifiedError,
    ReasonCode::ServerShuttingDown,
    ReasonCode::SessionTakenOver,
    ReasonCode::KeepAliveTimeout,
];

/// `MQTTPROTO_FUZZ_TRACE=1` prints every step, packet written and event (to replay an input).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MQTTPROTO_FUZZ_TRACE").is_some())
}

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn u8(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

fn duration(b: u8) -> Duration {
    let v = u64::from(b & 0x3F);
    match b >> 6 {
        0 => Duration::from_millis(v * 17),
        1 => Duration::from_secs(v),
        2 => Duration::from_secs(v * 61),
        _ => Duration::ZERO,
    }
}

fn topic(inp: &mut Input) -> TopicName {
    TopicName::try_from(inp.pick(&TOPICS)).unwrap()
}

fn filter(inp: &mut Input) -> TopicFilter {
    TopicFilter::try_from(inp.pick(&FILTERS)).unwrap()
}

fn qos(b: u8) -> QoS {
    QoS::from_u8(b % 3).unwrap()
}

/// A CONNACK described by the input.
fn connack(inp: &mut Input) -> ConnAck {
    let f = inp.u8();
    let mut p = ConnAckProperties::default();
    if f & 0x01 != 0 {
        p.receive_maximum = NonZeroU16::new(u16::from(inp.u8() % 8) + 1);
    }
    if f & 0x02 != 0 {
        p.maximum_qos = QoS::from_u8(inp.u8() % 2);
    }
    if f & 0x04 != 0 {
        p.topic_alias_maximum = Some(u16::from(inp.u8() % 8));
    }
    if f & 0x08 != 0 {
        // Tiny sizes included: nothing but the smallest packets fit.
        p.maximum_packet_size = NonZeroU32::new(u32::from(inp.u8()) * 4 + 1);
    }
    if f & 0x10 != 0 {
        p.server_keep_alive = Some(u16::from(inp.u8()));
    }
    if f & 0x20 != 0 {
        let g = inp.u8();
        p.retain_available = Some(g & 1 != 0);
        p.wildcard_subscription_available = Some(g & 2 != 0);
        p.subscription_identifiers_available = Some(g & 4 != 0);
        p.shared_subscription_available = Some(g & 8 != 0);
        if g & 0x10 != 0 {
            p.reason_string = Some(MqttString::from_static("a fairly long reason string").unwrap());
        }
    }
    if f & 0x40 != 0 {
        p.assigned_client_identifier = Some(MqttString::from_static("assigned-id").unwrap());
    }
    let reason_code = if f & 0x80 != 0 {
        inp.pick(&CONNACK_ERRORS)
    } else {
        ReasonCode::Success
    };
    ConnAck {
        session_present: inp.u8() & 1 != 0 && !reason_code.is_error(),
        reason_code,
        properties: p,
    }
}

/// A CONNECT described by the input.
fn connect(inp: &mut Input) -> Connect {
    let f = inp.u8();
    let mut c = Connect {
        protocol_version: V5,
        clean_start: f & 0x01 != 0,
        keep_alive: u16::from(inp.u8()),
        client_id: MqttString::from_static("fuzz-client").unwrap(),
        ..Connect::default()
    };
    let p = &mut c.properties;
    if f & 0x02 != 0 {
        p.receive_maximum = NonZeroU16::new(u16::from(inp.u8() % 8) + 1);
    }
    if f & 0x04 != 0 {
        // Tiny sizes included.
        p.maximum_packet_size = NonZeroU32::new(u32::from(inp.u8()) * 4 + 1);
    }
    if f & 0x08 != 0 {
        p.topic_alias_maximum = Some(u16::from(inp.u8() % 8));
    }
    if f & 0x10 != 0 {
        p.session_expiry_interval = Some(u32::from(inp.u8()) * 10);
    }
    if f & 0x20 != 0 {
        p.authentication_method = Some(MqttString::from_static("m").unwrap());
    }
    if f & 0x40 != 0 {
        c.will = Some(Will {
            topic: TopicName::try_from("will/t").unwrap(),
            payload: Bytes::from_static(b"bye"),
            qos: qos(inp.u8()),
            retain: false,
            properties: Default::default(),
        });
    }
    if f & 0x80 != 0 {
        c.username = Some(MqttString::from_static("user").unwrap());
        c.password = Some(Bytes::from_static(b"pw"));
    }
    c
}

#[derive(Default)]
struct Conn {
    /// CONNACK written (success or not).
    connack: bool,
    /// A successful CONNACK written.
    accepted: bool,
    /// Nothing may follow: DISCONNECT or a refusing CONNACK was written.
    finished: bool,
    /// The CONNECT event waits for an answer.
    held_connect: bool,
}

struct State {
    session: Session,
    options: SessionOptions,
    now: Instant,
    start: Instant,
    last_timeout: Option<Instant>,
    /// A connection was established since the last handle_timeout.
    established: bool,
    sticky: Option<Error>,
    conn: Conn,
    /// A previous connection's session state, and its messages in flight.
    stash: Option<(SessionState, HashSet<u16>, HashSet<u16>)>,
    /// Server-to-client QoS 1/2 messages written and not yet delivered.
    outstanding: HashSet<u16>,
    /// Of those, the QoS 2 messages past PUBREC (PUBREL written).
    pubrel: HashSet<u16>,
    /// Inbound QoS 1/2 publishes not yet acknowledged.
    held_publishes: Vec<PacketId>,
    held_subscribes: Vec<Subscribe>,
    held_unsubscribes: Vec<Unsubscribe>,
    /// Packet ids the client used (for PUBREL) or the server used (for PUBACK…).
    inbound_ids: Vec<PacketId>,
}

impl State {
    fn new_connection(&mut self) {
        self.session.handle_close(self.now);
        self.drain_output(true);
        let state = self.session.take_state();
        let inflight = std::mem::take(&mut self.outstanding);
        let pubrel = std::mem::take(&mut self.pubrel);
        self.stash = Some((state, inflight, pubrel));
        self.session = Session::new(self.now, self.options.clone());
        self.sticky = None;
        self.conn = Conn::default();
        self.held_publishes.clear();
        self.held_subscribes.clear();
        self.held_unsubscribes.clear();
    }

    fn feed(&mut self, bytes: &[u8]) {
        let before = self.session.error().cloned();
        let r = self.session.handle_bytes(self.now, bytes);
        if trace() {
            eprintln!("  handle_bytes({bytes:02x?}) -> {r:?}");
        }
        if let Some(e) = &self.sticky {
            assert_eq!(r.as_ref(), Err(e), "a fatal error did not stay");
        }
        if let Some(e) = before {
            assert_eq!(r.as_ref(), Err(&e), "handle_bytes ignored the stored error");
        }
        if let Err(e) = r {
            if let Some(stored) = self.session.error() {
                assert_eq!(stored, &e, "returned error differs from the stored one");
            }
            self.sticky = Some(e);
        }
    }

    fn feed_packet(&mut self, packet: Packet) {
        if let Ok(bytes) = packet.to_bytes(V5) {
            self.feed(&bytes);
        }
    }

    fn out_id(&mut self, inp: &mut Input) -> PacketId {
        let b = inp.u8();
        let ids: Vec<u16> = self.outstanding.iter().copied().collect();
        if b < 0xC0 && !ids.is_empty() {
            let mut ids = ids;
            ids.sort_unstable();
            PacketId::new(ids[usize::from(b) % ids.len()]).unwrap()
        } else {
            PacketId::new(u16::from(b & 0x0F) + 1).unwrap()
        }
    }

    fn in_id(&mut self, inp: &mut Input) -> PacketId {
        let b = inp.u8();
        if b < 0xC0 && !self.inbound_ids.is_empty() {
            self.inbound_ids[usize::from(b) % self.inbound_ids.len()]
        } else {
            PacketId::new(u16::from(b & 0x0F) + 1).unwrap()
        }
    }

    /// One well-formed client-to-server packet described by the input.
    fn client_packet(&mut self, inp: &mut Input) -> Packet {
        match inp.u8() % 12 {
            0 => Packet::Connect(Box::new(connect(inp))),
            1..=3 => {
                let f = inp.u8();
                let mut p = Publish::new(topic(inp), Bytes::from_static(b"payload"));
                p.qos = qos(f);
                p.retain = f & 0x04 != 0;
                if p.qos != QoS::AtMostOnce {
                    let id = PacketId::new(u16::from(inp.u8() % 16) + 1).unwrap();
                    p.packet_id = Some(id);
                    p.dup = f & 0x08 != 0;
                    self.inbound_ids.push(id);
                }
                if f & 0x10 != 0 {
                    p.properties.topic_alias = NonZeroU16::new(u16::from(inp.u8() % 8));
                    if f & 0x20 != 0 && p.properties.topic_alias.is_some() {
                        p.topic = TopicName::empty();
                    }
                }
                if f & 0x40 != 0 {
                    p.properties.message_expiry_interval = Some(u32::from(inp.u8()));
                }
                if f & 0x80 != 0 {
                    // Not allowed from a client [MQTT-3.3.4-6].
                    p.properties.subscription_identifiers =
                        SubscriptionId::new(u32::from(inp.u8()) + 1)
                            .into_iter()
                            .collect();
                }
                Packet::Publish(p)
            }
            4 => Packet::PubAck(PublishAck::with_reason(
                self.out_id(inp),
                inp.pick(&ACK_CODES),
            )),
            5 => Packet::PubRec(PublishAck::with_reason(
                self.out_id(inp),
                inp.pick(&ACK_CODES),
            )),
            6 => Packet::PubComp(PublishAck::new(self.out_id(inp))),
            7 => Packet::PubRel(PublishAck::new(self.in_id(inp))),
            8 => {
                let f = inp.u8();
                let n = usize::from(f % 3) + 1;
                let subscriptions = (0..n)
                    .map(|_| {
                        let mut s = Subscription::new(filter(inp), qos(f >> 2));
                        s.options.retain_as_published = f & 0x10 != 0;
                        s
                    })
                    .collect();
                let mut properties = SubscribeProperties::default();
                if f & 0x20 != 0 {
                    properties.subscription_identifier = SubscriptionId::new(u32::from(f >> 6) + 1);
                }
                Packet::Subscribe(Subscribe {
                    packet_id: PacketId::new(u16::from(inp.u8() % 16) + 1).unwrap(),
                    properties,
                    subscriptions,
                })
            }
            9 => {
                let n = usize::from(inp.u8() % 3) + 1;
                let filters = (0..n).map(|_| filter(inp)).collect();
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: PacketId::new(u16::from(inp.u8() % 16) + 1).unwrap(),
                    properties: UnsubscribeProperties::default(),
                    filters,
                })
            }
            10 => Packet::PingReq,
            _ => {
                let b = inp.u8();
                if b & 1 == 0 {
                    let mut d = Disconnect::new(inp.pick(&DISCONNECT_CODES));
                    if b & 2 != 0 {
                        d.properties.session_expiry_interval = Some(u32::from(b >> 2));
                    }
                    Packet::Disconnect(d)
                } else {
                    let rc = if b & 2 != 0 {
                        ReasonCode::ReAuthenticate
                    } else {
                        ReasonCode::ContinueAuthentication
                    };
                    let mut a = Auth::new(rc);
                    a.properties.authentication_method =
                        Some(MqttString::from_static("m").unwrap());
                    Packet::Auth(a)
                }
            }
        }
    }

    fn answer_connect(&mut self, inp: &mut Input) {
        let c = connack(inp);
        let present = c.session_present;
        // As a broker does: the state moves only to a connection still waiting for its CONNACK.
        if present && self.session.phase() == SessionPhase::Authenticating {
            if let Some((state, inflight, pubrel)) = self.stash.take() {
                // The restored queue may hold expiries that passed while the state was moved:
                // the next handle_timeout drops them (no stale-deadline check until then).
                self.established = true;
                self.session.restore_state(state);
                self.outstanding = inflight;
                self.pubrel = pubrel;
            }
        }
        let ok = self
            .session
            .acknowledge_connect(self.now, c.reason_code, present, c.properties)
            .is_ok();
        if ok && c.reason_code == ReasonCode::Success {
            self.established = true;
        }
        if ok && !present && c.reason_code == ReasonCode::Success {
            // The session state starts afresh.
            self.outstanding.clear();
            self.pubrel.clear();
        }
        self.conn.held_connect = !ok && self.session.phase() == SessionPhase::Authenticating;
    }

    fn answer_subscribe(&mut self, s: &Subscribe, inp: &mut Input) {
        let codes = s
            .subscriptions
            .iter()
            .map(|_| inp.pick(&SUBACK_CODES))
            .collect();
        let _ = self.session.acknowledge_subscribe(
            self.now,
            s.packet_id,
            codes,
            AckProperties::default(),
        );
    }

    fn answer_unsubscribe(&mut self, u: &Unsubscribe, inp: &mut Input) {
        let codes = u
            .filters
            .iter()
            .map(|_| inp.pick(&UNSUBACK_CODES))
            .collect();
        let _ = self.session.acknowledge_unsubscribe(
            self.now,
            u.packet_id,
            codes,
            AckProperties::default(),
        );
    }

    fn step(&mut self, op: u8, inp: &mut Input) {
        if trace() {
            eprintln!("step op {} at +{:?}", op % 16, self.now - self.start);
        }
        match op % 16 {
            0..=3 => {
                let n = usize::from(inp.u8()) + 1;
                let bytes = inp.take(n);
                self.feed(bytes);
            }
            4 | 5 => {
                let p = self.client_packet(inp);
                self.feed_packet(p);
            }
            6 => {
                let f = inp.u8();
                let mut p =
                    Publish::new(topic(inp), Bytes::from(vec![0xA5; usize::from(f >> 4) * 9]));
                p.qos = qos(f);
                p.retain = f & 0x04 != 0;
                if f & 0x08 != 0 {
                    p.properties.subscription_identifiers =
                        SubscriptionId::new(u32::from(f >> 4) + 1)
                            .into_iter()
                            .collect();
                }
                let expires = match inp.u8() {
                    b if b & 0xC0 == 0xC0 => None,
                    b => Some(self.now + duration(b)),
                };
                let _ = self.session.publish(self.now, p, expires);
            }
            7 => {
                if !self.held_publishes.is_empty() {
                    let i = usize::from(inp.u8()) % self.held_publishes.len();
                    let id = self.held_publishes.remove(i);
                    let rc = inp.pick(&ACK_CODES);
                    let _ = self.session.acknowledge_publish(self.now, id, rc);
                }
            }
            8 => {
                if inp.u8() & 1 == 0 {
                    if let Some(s) = self.held_subscribes.pop() {
                        self.answer_subscribe(&s, inp);
                    }
                } else if let Some(u) = self.held_unsubscribes.pop() {
                    self.answer_unsubscribe(&u, inp);
                }
            }
            9 => {
                if self.conn.held_connect {
                    self.answer_connect(inp);
                }
            }
            10 => {
                self.now += duration(inp.u8());
                self.timeout();
            }
            11 => {
                if let Some(t) = self.session.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            12 => self.new_connection(),
            13 => {
                let rc = inp.pick(&DISCONNECT_CODES);
                let _ = self.session.disconnect(self.now, rc);
            }
            14 => self.session.handle_close(self.now),
            _ => self.now += duration(inp.u8()),
        }
        self.check(inp);
    }

    fn timeout(&mut self) {
        self.session.handle_timeout(self.now);
        self.last_timeout = Some(self.now);
        self.established = false;
        // What handle_timeout(now) leaves due must not be due before now already, or a driver
        // would be woken again at once, for ever.
        if let Some(t) = self.session.poll_timeout() {
            assert!(
                t >= self.now,
                "handle_timeout left poll_timeout() {:?} in the past",
                self.now - t
            );
        }
    }

    /// Drains and checks the output. `closing`: the transport is being dropped.
    fn drain_output(&mut self, _closing: bool) {
        let s = &mut self.session;
        let max = s
            .connect_packet()
            .and_then(|c| c.properties.maximum_packet_size)
            .map_or(u32::MAX, NonZeroU32::get);
        while let Some(out) = s.poll_transmit() {
            let mut buf = BytesMut::from(&out[..]);
            while !buf.is_empty() {
                let before = buf.len();
                let packet = match decode(&mut buf, V5, u32::MAX) {
                    Ok(Some(p)) => p,
                    Ok(None) => panic!("partial packet written: {out:02x?}"),
                    Err(e) => panic!("the session wrote invalid MQTT ({e:?}): {out:02x?}"),
                };
                let size = before - buf.len();
                if trace() {
                    eprintln!("  wrote {packet:?}");
                }
                assert!(
                    size <= max as usize,
                    "{size}-byte packet above the client's maximum {max}: {packet:?}"
                );
                assert!(!self.conn.finished, "packet after the end: {packet:?}");
                match &packet {
                    Packet::ConnAck(c) => {
                        assert!(!self.conn.connack, "second CONNACK: {packet:?}");
                        self.conn.connack = true;
                        if c.reason_code.is_error() {
                            self.conn.finished = true;
                        } else {
                            self.conn.accepted = true;
                        }
                    }
                    Packet::Auth(_) => {}
                    other => {
                        assert!(self.conn.accepted, "{other:?} before a successful CONNACK");
                        match other {
                            Packet::Publish(p) => {
                                if let Some(id) = p.packet_id {
                                    let new = self.outstanding.insert(id.get());
                                    assert!(
                                        new || p.dup,
                                        "packet id {id} reused while in flight: {p:?}"
                                    );
                                }
                            }
                            Packet::Disconnect(_) => self.conn.finished = true,
                            Packet::PubRel(r) if r.reason_code == ReasonCode::Success => {
                                self.pubrel.insert(r.packet_id.get());
                            }
                            Packet::PubAck(_)
                            | Packet::PubRec(_)
                            | Packet::PubRel(_)
                            | Packet::PubComp(_)
                            | Packet::SubAck(_)
                            | Packet::UnsubAck(_)
                            | Packet::PingResp => {}
                            other => panic!("the session wrote a client packet: {other:?}"),
                        }
                    }
                }
            }
        }
    }

    fn delivered(&mut self, packet_id: PacketId) {
        self.pubrel.remove(&packet_id.get());
        assert!(
            self.outstanding.remove(&packet_id.get()),
            "delivery {packet_id} completed twice or never sent"
        );
    }

    /// Takes the session's new events into `queued` and checks its output.
    ///
    /// The events and the output are two queues, and their relative order is not recorded.
    /// Deliveries of identifiers already sent are accounted for before the output is checked:
    /// the acknowledgement that completed one (a PUBACK, a PUBCOMP, a PUBREC of 0x80 or more; or
    /// a resent message discarded as too large) freed its identifier, which the same output may
    /// already give to a queued message (section 2.2.1; the id is "currently unused" again
    /// [MQTT-2.2.1-4]). A delivery of an identifier not seen sent yet is for a PUBLISH in this
    /// output (an acknowledgement buffered behind a held CONNECT, processed once the CONNECT is
    /// accepted and the queue sent): it is accounted for after. The price: a session that sent
    /// a PUBLISH with an identifier still in flight and freed that identifier later in the same
    /// call would not be caught; the order is not observable from here.
    fn settle(&mut self, queued: &mut std::collections::VecDeque<SessionEvent>) {
        let mut later = Vec::new();
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Delivered { packet_id, .. } => {
                    if trace() {
                        eprintln!("  event {event:?}");
                    }
                    if self.outstanding.contains(&packet_id.get()) {
                        self.delivered(packet_id);
                    } else {
                        later.push(packet_id);
                    }
                }
                other => queued.push_back(other),
            }
        }
        self.drain_output(false);
        for packet_id in later {
            self.delivered(packet_id);
        }
    }

    fn check(&mut self, inp: &mut Input) {
        let silent = self.session.error().is_some();
        let mut queued = std::collections::VecDeque::new();
        self.settle(&mut queued);
        while let Some(event) = queued.pop_front() {
            if trace() {
                eprintln!("  event {event:?}");
            }
            match event {
                SessionEvent::Connect(_) => {
                    if inp.u8() & 0x80 != 0 {
                        self.conn.held_connect = true;
                    } else {
                        self.answer_connect(inp);
                    }
                }
                SessionEvent::Auth(a) => {
                    if self.session.phase() == SessionPhase::Authenticating && inp.u8() & 1 != 0 {
                        self.answer_connect(inp);
                    } else {
                        let rc = if a.reason_code == ReasonCode::ReAuthenticate && inp.u8() & 1 != 0
                        {
                            ReasonCode::Success
                        } else {
                            ReasonCode::ContinueAuthentication
                        };
                        let _ = self.session.send_auth(self.now, rc, None);
                    }
                }
                SessionEvent::Publish(p) => {
                    if let Some(id) = p.packet_id {
                        if inp.u8() & 1 != 0 {
                            let rc = inp.pick(&ACK_CODES);
                            let _ = self.session.acknowledge_publish(self.now, id, rc);
                        } else {
                            self.held_publishes.push(id);
                        }
                    }
                }
                SessionEvent::Subscribe(s) => {
                    if inp.u8() & 1 != 0 {
                        self.answer_subscribe(&s, inp);
                    } else {
                        self.held_subscribes.push(s);
                    }
                }
                SessionEvent::Unsubscribe(u) => {
                    if inp.u8() & 1 != 0 {
                        self.answer_unsubscribe(&u, inp);
                    } else {
                        self.held_unsubscribes.push(u);
                    }
                }
                SessionEvent::Delivered { packet_id, .. } => self.delivered(packet_id),
                SessionEvent::Disconnected { .. } => {}
            }
            self.settle(&mut queued);
        }
        if silent {
            // Only what was written before the error may have come out; nothing new after.
            assert!(self.session.poll_transmit().is_none());
        }
        let s = &self.session;
        // A connection established since (CONNACK) may start with its keep-alive ping already
        // due, when CONNACK came later than Keep Alive after CONNECT: that is right, not stale.
        if let (false, Some(t), Some(last)) =
            (self.established, s.poll_timeout(), self.last_timeout)
        {
            assert!(
                t >= last,
                "poll_timeout() is {:?} before the last handle_timeout",
                last - t
            );
        }
        if s.phase() == SessionPhase::Connected {
            let rm = s
                .connect_packet()
                .and_then(|c| c.properties.receive_maximum)
                .map_or(u16::MAX, NonZeroU16::get);
            // PUBRELs of a resumed session may exceed a smaller new Receive Maximum (they are
            // not PUBLISHes, and must complete); PUBLISHes may not.
            let window = usize::from(rm).max(self.pubrel.len());
            assert!(
                s.inflight() <= window,
                "{} in flight, client's Receive Maximum is {rm}",
                s.inflight()
            );
        }
        if self.inbound_ids.len() > 64 {
            self.inbound_ids.drain(..32);
        }
        if self.held_publishes.len() > 64 {
            self.held_publishes.drain(..32);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data };
    let flags = inp.u8();
    let mps = inp.u8();
    let mq = inp.u8();
    let options = SessionOptions {
        maximum_packet_size: if flags & 0x01 != 0 {
            NonZeroU32::new(u32::from(mps) * 8 + 16)
        } else {
            None
        },
        outbound_topic_aliases: flags & 0x02 != 0,
        connect_timeout: if flags & 0x08 != 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        },
        max_queued_messages: usize::from(mq % 8) + 1,
    };
    let now = Instant::now();
    let mut st = State {
        session: Session::new(now, options.clone()),
        options,
        now,
        start: now,
        last_timeout: None,
        established: false,
        sticky: None,
        conn: Conn::default(),
        stash: None,
        outstanding: HashSet::new(),
        pubrel: HashSet::new(),
        held_publishes: Vec::new(),
        held_subscribes: Vec::new(),
        held_unsubscribes: Vec::new(),
        inbound_ids: Vec::new(),
    };
    if flags & 0x04 != 0 {
        let c = connect(&mut inp);
        st.feed_packet(Packet::Connect(Box::new(c)));
        st.check(&mut inp);
    }
    while let Some(op) = inp.next() {
        st.step(op, &mut inp);
    }
});
