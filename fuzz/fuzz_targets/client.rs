//! Fuzz target for the `Client` state machine's input: bytes from the server, interleaved with
//! application commands and timer calls on a fake clock.
//!
//! Input layout (see fuzz/README.md, "Target `client`"):
//!
//! | byte | meaning                                                                             |
//! | ---- | ----------------------------------------------------------------------------------- |
//! | 0    | flags: manual acks, session expiry, clean start, outbound aliases, max packet size,  |
//! |      | prepend a CONNACK, large session expiry, authentication method                      |
//! | 1    | Keep Alive (seconds)                                                                |
//! | 2    | Receive Maximum (`0xFF`: 65,535, else 1..=16)                                       |
//! | 3    | Topic Alias Maximum (0..=7)                                                         |
//! | 4    | Maximum Packet Size parameter (when the flag is set)                                |
//! | 5..  | if the CONNACK flag is set, a CONNACK description (see `connack`); then steps       |
//!
//! Each step starts with an opcode byte (`op % 16`): 0-4 feed the next `1 + byte` input bytes
//! as raw server bytes; 5 feeds one well-formed server packet built from the next bytes; 6
//! publish; 7 subscribe; 8 unsubscribe; 9 acknowledge; 10 advance the clock and call
//! `handle_timeout`; 11 call `handle_timeout` at `poll_timeout()`; 12 `handle_close` (and
//! `connect` again if the next byte is odd); 13 `disconnect`; 14 `connect`; 15 advance the clock.
//!
//! After every step the output is drained and checked: every byte written decodes as complete,
//! valid MQTT 5 client-to-server packets no larger than the server's Maximum Packet Size, CONNECT
//! comes first on a connection and only there, nothing follows DISCONNECT or a fatal error;
//! a fatal error stays: `handle_bytes` returns the same error until the next `connect`;
//! `poll_timeout()` is never before the last `now` given to `handle_timeout`; the in-flight count
//! stays within the server's Receive Maximum; each publish completes at most once.
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

struct State {
    client: Client,
    now: Instant,
    start: Instant,
    last_timeout: Option<Instant>,
    /// A connection was established, or a packet received, since the last handle_timeout: the
    /// keep-alive ping may then be due already (see `check`).
    established: bool,
    /// The error the last failed `handle_bytes` returned, until the next `connect`.
    sticky: Option<Error>,
    /// CONNECT is expected as the next packet written.
    expect_connect: bool,
    /// DISCONNECT was written on this connection.
    sent_disconnect: bool,
    /// Publishes returned by `publish` and not yet completed.
    outstanding: HashSet<u16>,
    /// QoS 2 publishes past PUBREC (PUBREL written), not yet completed.
    pubrel: HashSet<u16>,
    /// Packet ids used in requests (for acknowledgements).
    ids: Vec<PacketId>,
    /// Packet ids of received QoS 1/2 messages (for `acknowledge`).
    received: Vec<PacketId>,
}

impl State {
    fn connect(&mut self) {
        if self.client.connect(self.now).is_ok() {
            self.sticky = None;
            self.expect_connect = true;
            self.sent_disconnect = false;
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.established = true;
        let before = self.client.error().cloned();
        let r = self.client.handle_bytes(self.now, bytes);
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
            if let Some(stored) = self.client.error() {
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

    fn id(&mut self, inp: &mut Input) -> PacketId {
        let b = inp.u8();
        if b < 0xC0 && !self.ids.is_empty() {
            self.ids[usize::from(b) % self.ids.len()]
        } else {
            PacketId::new(u16::from(b & 0x0F) + 1).unwrap()
        }
    }

    /// One well-formed server-to-client packet described by the input.
    fn server_packet(&mut self, inp: &mut Input) -> Packet {
        match inp.u8() % 12 {
            0 => Packet::ConnAck(Box::new(connack(inp))),
            1..=3 => {
                let f = inp.u8();
                let mut p = Publish::new(topic(inp), Bytes::from_static(b"payload"));
                p.qos = qos(f);
                p.retain = f & 0x04 != 0;
                if p.qos != QoS::AtMostOnce {
                    p.packet_id = PacketId::new(u16::from(inp.u8() % 16) + 1);
                    p.dup = f & 0x08 != 0;
                }
                if f & 0x10 != 0 {
                    p.properties.topic_alias = NonZeroU16::new(u16::from(inp.u8() % 8));
                    if f & 0x20 != 0 && p.properties.topic_alias.is_some() {
                        p.topic = TopicName::empty();
                    }
                }
                if f & 0x40 != 0 {
                    p.properties.subscription_identifiers =
                        SubscriptionId::new(u32::from(inp.u8()) + 1)
                            .into_iter()
                            .collect();
                }
                if f & 0x80 != 0 {
                    p.properties.message_expiry_interval = Some(u32::from(inp.u8()));
                }
                Packet::Publish(p)
            }
            4 => Packet::PubAck(PublishAck::with_reason(self.id(inp), inp.pick(&ACK_CODES))),
            5 => Packet::PubRec(PublishAck::with_reason(self.id(inp), inp.pick(&ACK_CODES))),
            6 => Packet::PubComp(PublishAck::new(self.id(inp))),
            7 => Packet::PubRel(PublishAck::new(self.id(inp))),
            8 => {
                let id = self.id(inp);
                let n = usize::from(inp.u8() % 3) + 1;
                let reason_codes = (0..n).map(|_| inp.pick(&SUBACK_CODES)).collect();
                Packet::SubAck(SubAck {
                    packet_id: id,
                    properties: AckProperties::default(),
                    reason_codes,
                })
            }
            9 => {
                let id = self.id(inp);
                let n = usize::from(inp.u8() % 3) + 1;
                let reason_codes = (0..n).map(|_| inp.pick(&UNSUBACK_CODES)).collect();
                Packet::UnsubAck(UnsubAck {
                    packet_id: id,
                    properties: AckProperties::default(),
                    reason_codes,
                })
            }
            10 => Packet::PingResp,
            _ => {
                if inp.u8() & 1 == 0 {
                    Packet::Disconnect(Disconnect::new(inp.pick(&DISCONNECT_CODES)))
                } else {
                    let mut a = Auth::new(ReasonCode::ContinueAuthentication);
                    a.properties.authentication_method =
                        Some(MqttString::from_static("m").unwrap());
                    Packet::Auth(a)
                }
            }
        }
    }

    fn step(&mut self, op: u8, inp: &mut Input) {
        if trace() {
            eprintln!("step op {} at +{:?}", op % 16, self.now - self.start);
        }
        let closed_before = self.client.error().is_some();
        let mut reconnected = false;
        match op % 16 {
            0..=4 => {
                let n = usize::from(inp.u8()) + 1;
                let bytes = inp.take(n);
                self.feed(bytes);
            }
            5 => {
                let p = self.server_packet(inp);
                self.feed_packet(p);
            }
            6 => {
                let f = inp.u8();
                let mut p =
                    Publish::new(topic(inp), Bytes::from(vec![0x5A; usize::from(f >> 4) * 9]));
                p.qos = qos(f);
                p.retain = f & 0x04 != 0;
                if f & 0x08 != 0 {
                    p.properties.message_expiry_interval = Some(60);
                    p.properties.user_properties.push(UserProperty::new(
                        MqttString::from_static("k").unwrap(),
                        MqttString::from_static("v").unwrap(),
                    ));
                }
                if let Ok(Some(id)) = self.client.publish(self.now, p) {
                    assert!(self.outstanding.insert(id.get()), "publish id {id} reused");
                    self.ids.push(id);
                }
            }
            7 => {
                let f = inp.u8();
                let n = usize::from(f % 3) + 1;
                let subs = (0..n)
                    .map(|_| {
                        let mut s = Subscription::new(filter(inp), qos(f >> 2));
                        s.options.no_local = f & 0x10 != 0;
                        s
                    })
                    .collect();
                let mut props = SubscribeProperties::default();
                if f & 0x20 != 0 {
                    props.subscription_identifier = SubscriptionId::new(u32::from(f >> 6) + 1);
                }
                if let Ok(Some(id)) = self.client.subscribe(self.now, subs, props) {
                    self.ids.push(id);
                }
            }
            8 => {
                let n = usize::from(inp.u8() % 3) + 1;
                let filters = (0..n).map(|_| filter(inp)).collect();
                if let Ok(Some(id)) =
                    self.client
                        .unsubscribe(self.now, filters, UnsubscribeProperties::default())
                {
                    self.ids.push(id);
                }
            }
            9 => {
                let b = inp.u8();
                let id = if !self.received.is_empty() && b < 0xE0 {
                    self.received.remove(usize::from(b) % self.received.len())
                } else {
                    PacketId::new(u16::from(b & 0x0F) + 1).unwrap()
                };
                let rc = inp.pick(&ACK_CODES);
                let _ = self.client.acknowledge(self.now, id, rc);
            }
            10 => {
                self.now += duration(inp.u8());
                self.timeout();
            }
            11 => {
                if let Some(t) = self.client.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            12 => {
                self.client.handle_close(self.now);
                if inp.u8() & 1 != 0 {
                    self.connect();
                    reconnected = true;
                }
            }
            13 => {
                let b = inp.u8();
                let rc = DISCONNECT_CODES[usize::from(b) % DISCONNECT_CODES.len()];
                let sei = match b >> 6 {
                    0 | 1 => None,
                    2 => Some(0),
                    _ => Some(120),
                };
                let _ = self.client.disconnect(self.now, rc, sei);
            }
            14 => {
                self.connect();
                reconnected = true;
            }
            _ => self.now += duration(inp.u8()),
        }
        self.check(closed_before && !reconnected);
    }

    fn timeout(&mut self) {
        self.client.handle_timeout(self.now);
        self.last_timeout = Some(self.now);
        self.established = false;
        // What handle_timeout(now) leaves due must not be due before now already, or a driver
        // would be woken again at once, for ever.
        if let Some(t) = self.client.poll_timeout() {
            assert!(
                t >= self.now,
                "handle_timeout left poll_timeout() {:?} in the past",
                self.now - t
            );
        }
    }

    fn check(&mut self, silent: bool) {
        let max = self.client.server_maximum_packet_size();
        while let Some(out) = self.client.poll_transmit() {
            assert!(!silent, "output after a fatal error: {out:02x?}");
            let mut buf = BytesMut::from(&out[..]);
            while !buf.is_empty() {
                let before = buf.len();
                let packet = match decode(&mut buf, V5, u32::MAX) {
                    Ok(Some(p)) => p,
                    Ok(None) => panic!("partial packet written: {out:02x?}"),
                    Err(e) => panic!("the client wrote invalid MQTT ({e:?}): {out:02x?}"),
                };
                let size = before - buf.len();
                if trace() {
                    eprintln!("  wrote {packet:?}");
                }
                assert!(
                    size <= max as usize,
                    "{size}-byte packet above the server's maximum {max}: {packet:?}"
                );
                assert!(!self.sent_disconnect, "packet after DISCONNECT: {packet:?}");
                let is_connect = matches!(packet, Packet::Connect(_));
                assert_eq!(
                    is_connect, self.expect_connect,
                    "CONNECT not first, or not only first: {packet:?}"
                );
                self.expect_connect = false;
                match &packet {
                    Packet::Connect(_)
                    | Packet::Publish(_)
                    | Packet::PubAck(_)
                    | Packet::PubRec(_)
                    | Packet::PubComp(_)
                    | Packet::Subscribe(_)
                    | Packet::Unsubscribe(_)
                    | Packet::PingReq
                    | Packet::Auth(_) => {}
                    Packet::Disconnect(_) => self.sent_disconnect = true,
                    Packet::PubRel(r) if r.reason_code == ReasonCode::Success => {
                        self.pubrel.insert(r.packet_id.get());
                    }
                    Packet::PubRel(_) => {}
                    other => panic!("the client wrote a server packet: {other:?}"),
                }
            }
        }
        while let Some(event) = self.client.poll_event() {
            if trace() {
                eprintln!("  event {event:?}");
            }
            match event {
                ClientEvent::Message(m) => {
                    if let Some(id) = m.packet_id {
                        self.received.push(id);
                    }
                }
                ClientEvent::Connected(_) => self.established = true,
                ClientEvent::PublishComplete { packet_id, .. } => {
                    self.pubrel.remove(&packet_id.get());
                    assert!(
                        self.outstanding.remove(&packet_id.get()),
                        "publish {packet_id} completed twice or never sent"
                    );
                }
                _ => {}
            }
        }
        let c = &self.client;
        // The keep-alive ping may legitimately be overdue after input: a CONNACK that came later
        // than Keep Alive after CONNECT, or any packet that ended the wait for a PINGRESP (with a
        // PINGREQ timeout longer than Keep Alive). The next handle_timeout sends PINGREQ at once.
        // Without input, nothing may fall due before the last handle_timeout.
        if let (false, Some(t), Some(last)) =
            (self.established, c.poll_timeout(), self.last_timeout)
        {
            assert!(
                t >= last,
                "poll_timeout() is {:?} before the last handle_timeout",
                last - t
            );
        }
        // PUBRELs of a resumed session may exceed a smaller new Receive Maximum (they are not
        // PUBLISHes, and must complete); PUBLISHes may not.
        let window = usize::from(c.server_receive_maximum()).max(self.pubrel.len());
        assert!(
            c.inflight() <= window,
            "{} in flight, server's Receive Maximum is {}",
            c.inflight(),
            c.server_receive_maximum()
        );
        if self.received.len() > 64 {
            self.received.drain(..32);
        }
        if self.ids.len() > 64 {
            self.ids.drain(..32);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data };
    let flags = inp.u8();
    let keep_alive = u16::from(inp.u8());
    let rm = inp.u8();
    let tam = inp.u8();
    let mps = inp.u8();
    let options = ClientOptions {
        manual_acks: flags & 0x01 != 0,
        session_expiry_interval: match (flags & 0x02 != 0, flags & 0x40 != 0) {
            (false, _) => 0,
            (true, false) => 300,
            (true, true) => u32::MAX,
        },
        clean_start: flags & 0x04 == 0,
        outbound_topic_aliases: flags & 0x08 != 0,
        maximum_packet_size: if flags & 0x10 != 0 {
            NonZeroU32::new(u32::from(mps) * 8 + 16)
        } else {
            None
        },
        keep_alive,
        receive_maximum: if rm == 0xFF {
            NonZeroU16::MAX
        } else {
            NonZeroU16::new(u16::from(rm % 16) + 1).unwrap()
        },
        topic_alias_maximum: u16::from(tam % 8),
        authentication_method: (flags & 0x80 != 0).then(|| MqttString::from_static("m").unwrap()),
        ..ClientOptions::default()
    };
    let now = Instant::now();
    let mut st = State {
        client: Client::new(options),
        now,
        start: now,
        last_timeout: None,
        established: false,
        sticky: None,
        expect_connect: false,
        sent_disconnect: false,
        outstanding: HashSet::new(),
        pubrel: HashSet::new(),
        ids: Vec::new(),
        received: Vec::new(),
    };
    st.connect();
    assert!(st.expect_connect, "connect failed on a new client");
    st.check(false);
    if flags & 0x20 != 0 {
        let c = connack(&mut inp);
        st.feed_packet(Packet::ConnAck(Box::new(c)));
        st.check(false);
    }
    while let Some(op) = inp.next() {
        st.step(op, &mut inp);
    }
});
