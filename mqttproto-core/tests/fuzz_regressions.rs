//! Regression tests from fuzzing the decoder (`fuzz/fuzz_targets/decode.rs`), and a replay of the
//! fuzzer's committed seed corpus (`fuzz/seeds/`).
//!
//! A fuzz input starts with a 4-byte harness header (max packet size, split pattern, shrink
//! target); the MQTT bytes follow. The tests below keep only the MQTT bytes.
//!
//! The seed files are written by the ignored test `write_seed_corpus`:
//! `MQTTPROTO_WRITE_SEEDS=1 cargo test -p mqttproto-core --test fuzz_regressions -- --ignored`.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use mqttproto_core::codec::*;
use mqttproto_core::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
/// Length of the fuzz harness's configuration prefix.
const HARNESS_HEADER: usize = 4;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Decodes every packet in `wire`, fed one byte at a time, until an error or the end.
/// Returns the packets, the error if any, and how many bytes were left buffered.
fn decode_stream(wire: &[u8], max: u32) -> (Vec<Packet>, Option<DecodeError>, usize) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for &b in wire {
        buf.extend_from_slice(&[b]);
        loop {
            let before = buf.len();
            match decode(&mut buf, V5, max) {
                Ok(Some(p)) => {
                    assert!(buf.len() < before, "a decoded packet consumed nothing");
                    packets.push(p);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => return (packets, Some(e), buf.len()),
            }
        }
    }
    let left = buf.len();
    (packets, None, left)
}

/// What the fuzz target checks for a decoded packet: it encodes to `encoded_len` bytes and those
/// decode back to an equal packet.
fn assert_roundtrip(p: &Packet) {
    let bytes = p
        .to_bytes(V5)
        .unwrap_or_else(|e| panic!("decoded packet does not encode: {e:?}\n{p:?}"));
    assert_eq!(bytes.len(), p.encoded_len(V5), "{p:?}");
    assert_eq!(decode_packet(bytes.clone(), V5).as_ref(), Ok(p));
}

/// What the fuzz target checks for an error: a reason code DISCONNECT or CONNACK can carry, and a
/// message.
fn assert_sensible_error(e: &DecodeError) {
    let rc = e.reason_code();
    assert!(
        rc.is_valid_for(PacketType::Disconnect) || rc.is_valid_for(PacketType::ConnAck),
        "{e:?} -> {rc:?}"
    );
    assert!(rc.is_error());
    assert!(!e.to_string().is_empty());
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

fn user(k: &str, v: &str) -> UserProperty {
    UserProperty::new(s(k), s(v))
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// Sample packets for the seed corpus: every packet type, with and without properties.
fn seed_packets() -> Vec<(&'static str, Vec<Packet>)> {
    let minimal_connect = Connect {
        clean_start: true,
        keep_alive: 60,
        client_id: s("client-1"),
        ..Connect::default()
    };
    let full_connect = Connect {
        protocol_version: V5,
        clean_start: false,
        keep_alive: 30,
        client_id: s("c"),
        will: Some(Will {
            topic: TopicName::try_from("last/will").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(3600),
                content_type: Some(s("text/plain")),
                response_topic: Some(TopicName::try_from("reply/here").unwrap()),
                correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
                user_properties: vec![user("w", "1")].into(),
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: ConnectProperties {
            session_expiry_interval: Some(120),
            receive_maximum: NonZeroU16::new(20),
            maximum_packet_size: NonZeroU32::new(65_536),
            topic_alias_maximum: Some(10),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"client-first")),
            user_properties: vec![user("a", "b"), user("a", "c")].into(),
        },
    };
    let connack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(10),
            receive_maximum: NonZeroU16::new(100),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(1024),
            assigned_client_identifier: Some(s("auto-1")),
            topic_alias_maximum: Some(5),
            reason_string: Some(s("welcome")),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(false),
            server_keep_alive: Some(15),
            response_information: Some(s("resp/")),
            server_reference: Some(s("other:1883")),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"server-first")),
            user_properties: vec![user("x", "y")].into(),
        },
    };
    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode::BadUserNameOrPassword,
        properties: ConnAckProperties::default(),
    };
    let qos0 = Publish::new(TopicName::try_from("a/b").unwrap(), &b"hello"[..]);
    let qos1 = Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid(1)),
        properties: PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(60),
            topic_alias: NonZeroU16::new(3),
            response_topic: Some(TopicName::try_from("r").unwrap()),
            correlation_data: Some(Bytes::from_static(b"id")),
            content_type: Some(s("json")),
            user_properties: vec![user("k", "v")].into(),
            subscription_identifiers: vec![
                SubscriptionId::new(1).unwrap(),
                SubscriptionId::new(268_435_455).unwrap(),
            ],
        }
        .into(),
        ..Publish::new(TopicName::try_from("sensors/1/temp").unwrap(), &b"{}"[..])
    };
    let qos2 = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        packet_id: Some(pid(65_535)),
        ..Publish::new(TopicName::try_from("$SYS/x").unwrap(), Bytes::new())
    };
    let alias_only = Publish {
        properties: PublishProperties {
            topic_alias: NonZeroU16::new(1),
            ..PublishProperties::default()
        }
        .into(),
        ..Publish::new(TopicName::empty(), &b"x"[..])
    };
    let ack_props = AckProperties {
        reason_string: Some(s("because")),
        user_properties: vec![user("u", "1"), user("u", "2")].into(),
    };
    let subscribe = Subscribe {
        packet_id: pid(10),
        properties: SubscribeProperties {
            subscription_identifier: SubscriptionId::new(300),
            user_properties: vec![user("s", "1")].into(),
        },
        subscriptions: vec![
            Subscription::new(TopicFilter::try_from("a/+/c").unwrap(), QoS::AtMostOnce),
            Subscription {
                filter: TopicFilter::try_from("sport/#").unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription::new(
                TopicFilter::try_from("$share/group/x/#").unwrap(),
                QoS::AtLeastOnce,
            ),
        ],
    };
    let suback = SubAck {
        packet_id: pid(10),
        properties: ack_props.clone(),
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::SharedSubscriptionsNotSupported,
        ],
    };
    let unsubscribe = Unsubscribe {
        packet_id: pid(11),
        properties: UnsubscribeProperties {
            user_properties: vec![user("u", "x")].into(),
        },
        filters: vec![
            TopicFilter::try_from("a/+/c").unwrap(),
            TopicFilter::try_from("#").unwrap(),
        ],
    };
    let unsuback = UnsubAck {
        packet_id: pid(11),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    };
    let disconnect = Disconnect {
        reason_code: ReasonCode::ServerMoved,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("moving")),
            server_reference: Some(s("elsewhere")),
            user_properties: vec![user("d", "1")].into(),
        },
    };
    let auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"more")),
            reason_string: Some(s("step 2")),
            user_properties: vec![user("a", "1")].into(),
        },
    };

    vec![
        (
            "connect_minimal",
            vec![Packet::Connect(Box::new(minimal_connect))],
        ),
        (
            "connect_full",
            vec![Packet::Connect(Box::new(full_connect))],
        ),
        ("connack_full", vec![Packet::ConnAck(connack.into())]),
        ("connack_refused", vec![Packet::ConnAck(refused.into())]),
        ("publish_qos0", vec![Packet::Publish(qos0.clone())]),
        ("publish_qos1_props", vec![Packet::Publish(qos1.clone())]),
        ("publish_qos2_dup_retain", vec![Packet::Publish(qos2)]),
        ("publish_alias_only", vec![Packet::Publish(alias_only)]),
        ("puback_short", vec![Packet::PubAck(PubAck::new(pid(1)))]),
        (
            "puback_props",
            vec![Packet::PubAck(PubAck {
                packet_id: pid(1),
                reason_code: ReasonCode::NoMatchingSubscribers,
                properties: ack_props.clone(),
            })],
        ),
        (
            "pubrec_reason",
            vec![Packet::PubRec(PubRec::with_reason(
                pid(2),
                ReasonCode::QuotaExceeded,
            ))],
        ),
        ("pubrel", vec![Packet::PubRel(PubRel::new(pid(2)))]),
        (
            "pubcomp_props",
            vec![Packet::PubComp(PubComp {
                packet_id: pid(2),
                reason_code: ReasonCode::PacketIdentifierNotFound,
                properties: ack_props.clone(),
            })],
        ),
        ("subscribe", vec![Packet::Subscribe(subscribe)]),
        ("suback", vec![Packet::SubAck(suback)]),
        ("unsubscribe", vec![Packet::Unsubscribe(unsubscribe)]),
        ("unsuback", vec![Packet::UnsubAck(unsuback)]),
        ("pingreq", vec![Packet::PingReq]),
        ("pingresp", vec![Packet::PingResp]),
        (
            "disconnect_short",
            vec![Packet::Disconnect(Disconnect::default())],
        ),
        ("disconnect_props", vec![Packet::Disconnect(disconnect)]),
        ("auth", vec![Packet::Auth(auth)]),
        (
            "stream_session",
            vec![
                Packet::Publish(qos1),
                Packet::PubAck(PubAck::new(pid(1))),
                Packet::Publish(qos0),
                Packet::PingReq,
                Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
            ],
        ),
    ]
}

/// Hand-written seeds in non-canonical but valid forms, which the encoder never produces.
fn seed_hex() -> Vec<(&'static str, &'static str)> {
    vec![
        // PUBACK with reason code 0 and an empty property block (4 bytes instead of 2).
        ("puback_long_success", "40 04 0001 00 00"),
        // DISCONNECT with reason code 0 and no property block.
        ("disconnect_rc0", "e0 01 00"),
        // AUTH with no body.
        ("auth_empty", "f0 00"),
        // PUBLISH QoS 0 with a two-byte remaining length (132).
        (
            "publish_varint2",
            "30 84 01 0001 61 00
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
             202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
             404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
             606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f",
        ),
    ]
}

/// The harness header of a seed: no size limit, the whole input at once, no shrinking; or, for
/// the `_split` variant, one byte at a time.
const SEED_HEADER: [u8; HARNESS_HEADER] = [0x00, 0x00, 0x00, 0xFF];
const SEED_HEADER_SPLIT: [u8; HARNESS_HEADER] = [0x10, 0x00, 0x00, 0x05];

#[test]
#[ignore = "writes fuzz/seeds; run with MQTTPROTO_WRITE_SEEDS=1"]
fn write_seed_corpus() {
    if std::env::var_os("MQTTPROTO_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = seeds_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, packets) in seed_packets() {
        let mut wire = BytesMut::new();
        for p in &packets {
            p.encode(&mut wire, V5).unwrap();
        }
        files.push((name.to_string(), wire.to_vec()));
    }
    for (name, h) in seed_hex() {
        files.push((name.to_string(), hex(h)));
    }
    for (name, wire) in files {
        for (suffix, header) in [("", SEED_HEADER), ("_split", SEED_HEADER_SPLIT)] {
            let mut data = header.to_vec();
            data.extend_from_slice(&wire);
            std::fs::write(dir.join(format!("{name}{suffix}.bin")), data).unwrap();
        }
    }
}

#[test]
fn seed_corpus_replays() {
    let dir = seeds_dir();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    entries.sort();
    let expected = 2 * (seed_packets().len() + seed_hex().len());
    assert_eq!(entries.len(), expected, "seed files in {}", dir.display());
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let wire = &data[HARNESS_HEADER..];
        let (packets, error, left) = decode_stream(wire, u32::MAX);
        let name = path.display();
        assert_eq!(error, None, "{name}");
        assert_eq!(left, 0, "{name}: partial packet left over");
        assert!(!packets.is_empty(), "{name}");
        for p in &packets {
            assert_roundtrip(p);
        }
    }
    // The encoded seeds are exactly the sample packets.
    for (name, want) in seed_packets() {
        let data = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let (got, _, _) = decode_stream(&data[HARNESS_HEADER..], u32::MAX);
        assert_eq!(got, want, "{name}");
    }
}

/// Every sample packet, streamed one byte at a time under a limit one byte too small, is refused
/// from its fixed header with Packet too large.
#[test]
fn seeds_above_the_limit_are_refused() {
    for (name, packets) in seed_packets() {
        let bytes = packets[0].to_bytes(V5).unwrap();
        let (got, error, _) = decode_stream(&bytes, bytes.len() as u32 - 1);
        assert!(got.is_empty(), "{name}");
        let e = error.unwrap_or_else(|| panic!("{name}: no error"));
        assert_sensible_error(&e);
        assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge, "{name}");
    }
}

/// A property whose value runs past the end of its property block (but not past the packet) is
/// Malformed: the property reader must stay inside the block.
#[test]
fn property_value_crossing_the_property_block_is_malformed() {
    // PUBLISH QoS 0, topic "a", Property Length 2, Content Type "hello" (8 bytes of property).
    let wire = hex("30 0c 0001 61 02 03 0005 68656c6c6f");
    let (packets, error, _) = decode_stream(&wire, u32::MAX);
    assert!(packets.is_empty());
    let e = error.expect("accepted a property that crosses its block");
    assert_sensible_error(&e);
    assert_eq!(
        e,
        DecodeError::Truncated {
            packet: PacketType::Publish
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);

    // The same in a SUBACK: Reason String of 3 bytes in a 2-byte block; the bytes after the
    // block would otherwise be read as the string.
    let wire = hex("90 09 0001 02 1f 0003 00 00 00");
    let (packets, error, _) = decode_stream(&wire, u32::MAX);
    assert!(packets.is_empty());
    let e = error.expect("accepted a property that crosses its block");
    assert_sensible_error(&e);
    assert_eq!(
        e,
        DecodeError::Truncated {
            packet: PacketType::SubAck
        }
    );
}

/// Non-canonical but valid forms decode, and re-encode to the shorter canonical form.
#[test]
fn non_canonical_forms_reencode_shorter() {
    for (wire, canonical) in [
        // PUBACK, reason 0x00, empty property block -> the 2-byte form.
        ("40 04 0001 00 00", "40 02 0001"),
        // PUBREL, reason 0x00, no property block.
        ("62 03 0005 00", "62 02 0005"),
        // DISCONNECT and AUTH with reason 0x00 and an empty property block -> no body.
        ("e0 02 00 00", "e0 00"),
        ("f0 02 00 00", "f0 00"),
    ] {
        let wire = hex(wire);
        let (packets, error, left) = decode_stream(&wire, u32::MAX);
        assert_eq!((error, left, packets.len()), (None, 0, 1));
        assert_roundtrip(&packets[0]);
        assert_eq!(&packets[0].to_bytes(V5).unwrap()[..], &hex(canonical)[..]);
    }
}

// ---- Regressions from fuzzing the `Client` and the `Session` --------------------------------
//
// `fuzz/fuzz_targets/client.rs` and `fuzz/fuzz_targets/session.rs` drive a machine with an
// input-chosen sequence of steps. Each test below replays one minimized crashing input: its bytes
// are quoted, and the test makes the same calls the target made for them, in order (the target
// prints them with `MQTTPROTO_FUZZ_TRACE=1`), then checks what the target checked.

/// The fuzz targets' fake clock: one fixed origin, advanced by hand.
#[allow(clippy::disallowed_methods)]
fn fake_clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// Everything the machine wrote, decoded; our own output must always be valid MQTT.
fn written(out: impl FnMut() -> Option<Bytes>) -> Vec<(usize, Packet)> {
    let mut packets = Vec::new();
    for chunk in std::iter::from_fn(out) {
        let mut buf = BytesMut::from(&chunk[..]);
        while !buf.is_empty() {
            let before = buf.len();
            let p = decode(&mut buf, V5, u32::MAX)
                .unwrap_or_else(|e| panic!("invalid output {chunk:02x?}: {e:?}"))
                .expect("partial packet written");
            packets.push((before - buf.len(), p));
        }
    }
    packets
}

fn session_connect(s: &mut Session, now: std::time::Instant, connect: Connect) -> Connect {
    let bytes = Packet::Connect(Box::new(connect)).to_bytes(V5).unwrap();
    s.handle_bytes(now, &bytes).unwrap();
    match s.poll_event() {
        Some(SessionEvent::Connect(c)) => *c,
        other => panic!("expected the CONNECT event, got {other:?}"),
    }
}

/// A successful CONNACK for a client, encoded: Session Present, the server's Receive Maximum and
/// Maximum Packet Size.
fn connack(present: bool, receive_maximum: u16, maximum_packet_size: Option<u32>) -> Bytes {
    let mut c = ConnAck {
        session_present: present,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    c.properties.receive_maximum = NonZeroU16::new(receive_maximum);
    c.properties.maximum_packet_size = maximum_packet_size.and_then(NonZeroU32::new);
    Packet::ConnAck(c.into()).to_bytes(V5).unwrap()
}

/// The session state of a connection that closed, moved to a new connection whose CONNECT is
/// accepted with Session Present.
fn resumed_session(now: std::time::Instant, mut old: Session, connect: Connect) -> Session {
    old.handle_close(now);
    let state = old.take_state();
    let mut session = Session::new(now, SessionOptions::default());
    session_connect(&mut session, now, connect);
    session.restore_state(state);
    session
        .acknowledge_connect(now, ReasonCode::Success, true, ConnAckProperties::default())
        .unwrap();
    session
}

/// A session whose CONNECT was accepted (clean, no session present).
fn connected_session(now: std::time::Instant, connect: Connect) -> Session {
    let mut session = Session::new(now, SessionOptions::default());
    session_connect(&mut session, now, connect);
    session
        .acknowledge_connect(
            now,
            ReasonCode::Success,
            false,
            ConnAckProperties::default(),
        )
        .unwrap();
    session
}

fn fuzz_connect(receive_maximum: u16, maximum_packet_size: u32) -> Connect {
    let mut c = Connect {
        protocol_version: V5,
        keep_alive: 38,
        client_id: s("fuzz-client"),
        ..Connect::default()
    };
    c.properties.receive_maximum = NonZeroU16::new(receive_maximum);
    c.properties.maximum_packet_size = NonZeroU32::new(maximum_packet_size);
    c
}

/// Session input `54 05 00 ff`: a CONNECT announcing Maximum Packet Size 1 (with Receive Maximum
/// 1, an Authentication Method, a will and a user name), accepted at once with an empty CONNACK.
/// The 5-byte CONNACK was written although the client accepts nothing above 1 byte: the
/// client's Maximum Packet Size was applied only after the CONNACK [MQTT-3.1.2-24]. Now it applies
/// from the CONNECT on; a CONNACK that cannot fit at all ends the connection, unsent.
#[test]
fn fuzz_session_connack_within_client_maximum_packet_size() {
    let now = fake_clock();
    let mut session = Session::new(now, SessionOptions::default());
    let mut c = fuzz_connect(1, 1);
    c.clean_start = true;
    c.keep_alive = 0;
    c.properties.authentication_method = Some(s("m"));
    c.will = Some(Will {
        topic: TopicName::try_from("will/t").unwrap(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    c.username = Some(s("user"));
    c.password = Some(Bytes::from_static(b"pw"));
    session_connect(&mut session, now, c);
    session
        .acknowledge_connect(
            now,
            ReasonCode::Success,
            false,
            ConnAckProperties::default(),
        )
        .unwrap();
    assert_eq!(written(|| session.poll_transmit()), vec![]);
    assert_eq!(session.phase(), SessionPhase::Closed);
    assert_eq!(
        session.error(),
        Some(&Error::Disconnected(ReasonCode::PacketTooLarge))
    );

    // A CONNACK that fits once its Reason String and User Properties are dropped is sent without
    // them [MQTT-3.2.2-19, MQTT-3.2.2-20].
    let mut session = Session::new(now, SessionOptions::default());
    session_connect(&mut session, now, fuzz_connect(1, 12));
    let props = ConnAckProperties {
        topic_alias_maximum: Some(6),
        reason_string: Some(s("a fairly long reason string")),
        user_properties: vec![user("k", "v")].into(),
        ..Default::default()
    };
    session
        .acknowledge_connect(now, ReasonCode::Success, false, props)
        .unwrap();
    let out = written(|| session.poll_transmit());
    assert_eq!(out.len(), 1);
    let (size, Packet::ConnAck(ack)) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(*size <= 12, "{size}-byte CONNACK");
    assert_eq!(ack.properties.topic_alias_maximum, Some(6));
    assert_eq!(ack.properties.reason_string, None);
    assert_eq!(session.phase(), SessionPhase::Connected);
}

/// Session input `54 05 00 01 43 81 00 00 0d 0b 43 ff ff ff`: a CONNECT held for a decision
/// (Authenticating), then the bytes `0b 43 ff ff ff` (packet type 0). The decode error of the
/// fixed-header check for pipelined packets was returned with `?`, bypassing the fatal-error
/// path: no CONNACK 0x81, the connection stayed open, the error was not stored, and a later input
/// returned another error (the target saw `ConnectTimeout` after `InvalidPacketType`).
#[test]
fn fuzz_session_malformed_header_while_authenticating_is_fatal() {
    let now = fake_clock();
    let mut session = Session::new(now, SessionOptions::default());
    let mut c = fuzz_connect(0, 0);
    c.clean_start = true;
    c.keep_alive = 0x43;
    session_connect(&mut session, now, c);
    assert_eq!(written(|| session.poll_transmit()), vec![]);
    let err = session
        .handle_bytes(now, &hex("0b 43 ff ff ff"))
        .unwrap_err();
    assert_eq!(err, Error::Decode(DecodeError::InvalidPacketType));
    assert_eq!(session.error(), Some(&err));
    assert_eq!(session.phase(), SessionPhase::Closed);
    let out = written(|| session.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::ConnAck(a))] if a.reason_code == ReasonCode::MalformedPacket),
        "{out:?}"
    );
    // The error stays.
    session.handle_timeout(now + std::time::Duration::from_secs(60));
    assert_eq!(session.handle_bytes(now, &[]), Err(err.clone()));
    assert_eq!(session.handle_bytes(now, &hex("c0 00")), Err(err));
    assert_eq!(written(|| session.poll_transmit()), vec![]);
}

/// Client input `73 f1 1e 04 73 1e 04 03 00 01 ca 9a 3b`: a CONNACK with Maximum Packet Size 1
/// and Server Keep Alive 1, then `handle_timeout` 1.003 s later. PINGREQ (2 bytes) did not fit,
/// so no PINGRESP wait started, and `poll_timeout()` stayed at the past keep-alive instant: a
/// driver would call `handle_timeout` again at once, for ever. Now the PINGRESP wait starts
/// anyway, and ends the connection if nothing arrives.
#[test]
fn fuzz_client_unsendable_pingreq_does_not_spin() {
    let t0 = fake_clock();
    let options = ClientOptions {
        manual_acks: true,
        session_expiry_interval: u32::MAX,
        keep_alive: 241,
        receive_maximum: NonZeroU16::new(15).unwrap(),
        topic_alias_maximum: 4,
        maximum_packet_size: NonZeroU32::new(0x73 * 8 + 16),
        ..ClientOptions::default()
    };
    let mut client = Client::new(options);
    client.connect(t0).unwrap();
    assert!(matches!(
        &written(|| client.poll_transmit())[..],
        [(_, Packet::Connect(_))]
    ));
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::AtMostOnce),
            topic_alias_maximum: Some(3),
            maximum_packet_size: NonZeroU32::new(1),
            server_keep_alive: Some(1),
            ..Default::default()
        },
    };
    client
        .handle_bytes(t0, &Packet::ConnAck(connack.into()).to_bytes(V5).unwrap())
        .unwrap();
    assert_eq!(client.state(), ClientState::Connected);
    let now = t0 + std::time::Duration::from_millis(1003);
    client.handle_timeout(now);
    assert_eq!(written(|| client.poll_transmit()), vec![]);
    let next = client.poll_timeout().expect("a PINGRESP deadline");
    assert!(next > now, "poll_timeout() is {:?} in the past", now - next);
    // Nothing arrives: the keep-alive wait ends the connection.
    client.handle_timeout(next);
    assert_eq!(client.error(), Some(&Error::KeepAliveTimeout));
    assert_eq!(client.poll_timeout(), None);
}

/// Session input `30 43 41 0b 06 0b 43 0b 0f 43 0b`: `handle_timeout` at the connect deadline
/// (the connection closes), a QoS 2 message queued for the closed session expiring 187 ms later,
/// 3 s on, `handle_timeout` at `poll_timeout()`. A closed (or not yet connected) session never
/// expired its queue in `handle_timeout`, yet `poll_timeout()` reported the expiry: it stayed in
/// the past, for ever.
#[test]
fn fuzz_session_queue_expires_in_every_phase() {
    let t0 = fake_clock();
    let options = SessionOptions {
        max_queued_messages: 2,
        ..SessionOptions::default()
    };
    let mut session = Session::new(t0, options.clone());
    let mut now = session.poll_timeout().unwrap();
    session.handle_timeout(now);
    assert_eq!(session.error(), Some(&Error::ConnectTimeout));
    let mut msg = Publish::new(TopicName::try_from("a/b").unwrap(), vec![0xA5; 0]);
    msg.qos = QoS::ExactlyOnce;
    msg.properties.subscription_identifiers = vec![SubscriptionId::new(1).unwrap()];
    session
        .publish(
            now,
            msg.clone(),
            Some(now + std::time::Duration::from_millis(187)),
        )
        .unwrap();
    now += std::time::Duration::from_secs(3);
    let due = session.poll_timeout().unwrap();
    now = now.max(due);
    session.handle_timeout(now);
    assert_eq!(session.poll_timeout(), None);
    assert_eq!((session.state().queued(), session.dropped()), (0, 1));

    // The same before CONNECT.
    let mut session = Session::new(t0, options);
    session
        .publish(t0, msg, Some(t0 + std::time::Duration::from_secs(1)))
        .unwrap();
    let now = t0 + std::time::Duration::from_secs(2);
    session.handle_timeout(now);
    assert!(session.poll_timeout().unwrap() >= now);
    assert_eq!((session.state().queued(), session.dropped()), (0, 1));
}

/// Session input `26 26 26 26 26 26 30 26 …` (35 bytes): a connection with Receive Maximum 7
/// gets two QoS 2 messages (ids 1 and 2), the transport closes, the state moves to a new
/// connection whose CONNECT has Receive Maximum 1 and is accepted with Session Present. Both
/// PUBLISHes were resent at once: 2 in flight against the client's Receive Maximum of 1
/// [MQTT-3.3.4-9]. Now the newest ones wait, with their ids and DUP, until there is room.
#[test]
fn fuzz_session_resume_within_new_receive_maximum() {
    let now = fake_clock();
    let mut session = connected_session(now, fuzz_connect(7, 193));
    for topic in ["a", "x/y/z"] {
        let mut msg = Publish::new(TopicName::try_from(topic).unwrap(), &b"m"[..]);
        msg.qos = QoS::ExactlyOnce;
        session.publish(now, msg, None).unwrap();
    }
    assert_eq!(written(|| session.poll_transmit()).len(), 3);
    assert_eq!(session.inflight(), 2);
    let mut session = resumed_session(now, session, fuzz_connect(1, 321));
    let out = written(|| session.poll_transmit());
    let resent: Vec<_> = out
        .iter()
        .filter_map(|(_, p)| match p {
            Packet::Publish(p) => Some((p.packet_id.unwrap().get(), p.dup)),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![(1, true)]);
    assert_eq!(session.inflight(), 1);
    // PUBREC and PUBCOMP for id 1 make room for id 2, resent with its own id and DUP.
    let rec = Packet::PubRec(PublishAck::new(pid(1)))
        .to_bytes(V5)
        .unwrap();
    session.handle_bytes(now, &rec).unwrap();
    let comp = Packet::PubComp(PublishAck::new(pid(1)))
        .to_bytes(V5)
        .unwrap();
    session.handle_bytes(now, &comp).unwrap();
    let out = written(|| session.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::PubRel(_)), (_, Packet::Publish(p))]
            if p.packet_id == Some(pid(2)) && p.dup),
        "{out:?}"
    );
    assert_eq!(session.inflight(), 1);
}

/// The client side of the same flaw (the same fix, in `Outbound::fit_quota`): publishes in
/// flight when the connection drops, and a resumed session whose CONNACK has a smaller Receive
/// Maximum [MQTT-3.3.4-7].
#[test]
fn fuzz_client_resume_within_new_receive_maximum() {
    let now = fake_clock();
    let mut client = Client::new(ClientOptions {
        session_expiry_interval: 300,
        ..ClientOptions::default()
    });
    client.connect(now).unwrap();
    client.handle_bytes(now, &connack(false, 8, None)).unwrap();
    for _ in 0..3 {
        let mut msg = Publish::new(TopicName::try_from("a").unwrap(), &b"m"[..]);
        msg.qos = QoS::AtLeastOnce;
        client.publish(now, msg).unwrap();
    }
    assert_eq!(client.inflight(), 3);
    client.handle_close(now);
    let _ = written(|| client.poll_transmit());
    client.connect(now).unwrap();
    client.handle_bytes(now, &connack(true, 1, None)).unwrap();
    let ids = |out: Vec<(usize, Packet)>| -> Vec<(u16, bool)> {
        out.into_iter()
            .filter_map(|(_, p)| match p {
                Packet::Publish(p) => Some((p.packet_id.unwrap().get(), p.dup)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ids(written(|| client.poll_transmit())), vec![(1, true)]);
    assert!(client.inflight() <= 1);
    let ack = |id| {
        Packet::PubAck(PublishAck::new(pid(id)))
            .to_bytes(V5)
            .unwrap()
    };
    client.handle_bytes(now, &ack(1)).unwrap();
    assert_eq!(ids(written(|| client.poll_transmit())), vec![(2, true)]);
    client.handle_bytes(now, &ack(2)).unwrap();
    assert_eq!(ids(written(|| client.poll_transmit())), vec![(3, true)]);
    client.handle_bytes(now, &ack(3)).unwrap();
    assert_eq!((client.inflight(), client.queued()), (0, 0));
}

/// Session input `26 26 26 26 08 11 26 01 00 26 …`: Receive Maximum 2, three QoS 2 messages
/// (ids 1 and 2 sent, the third queued), then PUBREC for id 2 with 0x90. A PUBREC of 0x80 or more
/// ends the flow and frees the identifier (section 2.2.1), and the session sent the queued message
/// with id 2 in the same step. That was right; the fuzz target's bookkeeping checked the output
/// before the `Delivered` event that frees the id, and reported a reuse. The target now accounts
/// for deliveries first. This test pins the session's side: the freed id is "currently unused"
/// [MQTT-2.2.1-4] and goes to the queued message, and the window stays within Receive Maximum.
#[test]
fn fuzz_session_pubrec_error_frees_the_id_for_the_queued_message() {
    let now = fake_clock();
    let mut session = connected_session(now, fuzz_connect(2, 153));
    for payload in [&b"first"[..], b"second", b"third"] {
        let mut msg = Publish::new(TopicName::try_from("sensors/1").unwrap(), payload);
        msg.qos = QoS::ExactlyOnce;
        session.publish(now, msg, None).unwrap();
    }
    let sent: Vec<_> = written(|| session.poll_transmit())
        .into_iter()
        .filter_map(|(_, p)| match p {
            Packet::Publish(p) => Some(p.packet_id.unwrap().get()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [1, 2], "the third waits for room in the window");
    while session.poll_event().is_some() {}

    let rec = Packet::PubRec(PublishAck::with_reason(
        pid(2),
        ReasonCode::TopicNameInvalid,
    ))
    .to_bytes(V5)
    .unwrap();
    session.handle_bytes(now, &rec).unwrap();
    let out = written(|| session.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::Publish(p))]
            if p.packet_id == Some(pid(2)) && !p.dup && &p.payload[..] == b"third"),
        "no PUBREL after an error PUBREC; the queued message goes out with the freed id: {out:?}"
    );
    assert!(matches!(
        session.poll_event(),
        Some(SessionEvent::Delivered { packet_id, reason_code: ReasonCode::TopicNameInvalid })
            if packet_id == pid(2)
    ));
    assert_eq!(session.inflight(), 2);
}

/// Found by the session fuzz target: a session resumed by a client whose new Maximum Packet
/// Size is below a message still in flight from the earlier connection. The resend failed and
/// was ignored, so the message stayed in flight, unsent, for the whole connection: with Receive
/// Maximum 1 nothing else was ever sent. Such a message is now discarded as if delivered
/// [MQTT-3.1.2-25] (its id freed, `Delivered` with 0x95), and the window moves on.
#[test]
fn fuzz_session_resent_publish_above_the_new_maximum_packet_size_is_discarded() {
    let now = fake_clock();
    let mut session = connected_session(now, fuzz_connect(1, 10_000));
    let mut big = Publish::new(TopicName::try_from("t").unwrap(), vec![0xA5u8; 200]);
    big.qos = QoS::AtLeastOnce;
    session.publish(now, big, None).unwrap();
    assert_eq!(
        written(|| session.poll_transmit()).len(),
        2,
        "CONNACK and PUBLISH"
    );
    let mut session = resumed_session(now, session, fuzz_connect(1, 100));
    let out = written(|| session.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::ConnAck(c))] if c.session_present),
        "the 200-byte message is not resent to a client that accepts 100: {out:?}"
    );
    let delivered: Vec<_> = std::iter::from_fn(|| session.poll_event())
        .filter_map(|e| match e {
            SessionEvent::Delivered {
                packet_id,
                reason_code,
            } => Some((packet_id.get(), reason_code)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [(1, ReasonCode::PacketTooLarge)]);
    assert_eq!(session.inflight(), 0);
    // The window of one is free: the next message goes out.
    let mut small = Publish::new(TopicName::try_from("t").unwrap(), &b"ok"[..]);
    small.qos = QoS::AtLeastOnce;
    session.publish(now, small, None).unwrap();
    let out = written(|| session.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::Publish(p))] if &p.payload[..] == b"ok"),
        "{out:?}"
    );
}

/// The client side of the same flaw: a publish in flight (and one waiting behind it) when the
/// connection drops, and a resumed session whose CONNACK announces a Maximum Packet Size below
/// them [MQTT-3.2.2-15]. The resend was ignored and the waiting one pushed back for ever: with
/// Receive Maximum 1 nothing was sent again and neither publish completed. Both now complete
/// with 0x95 (Packet too large), and a later publish goes out.
#[test]
fn fuzz_client_resumed_publish_above_the_new_maximum_packet_size_completes_with_0x95() {
    let now = fake_clock();
    let mut client = Client::new(ClientOptions {
        session_expiry_interval: 300,
        ..ClientOptions::default()
    });
    client.connect(now).unwrap();
    client
        .handle_bytes(now, &connack(false, 1, Some(10_000)))
        .unwrap();
    for _ in 0..2 {
        let mut big = Publish::new(TopicName::try_from("t").unwrap(), vec![0xA5u8; 200]);
        big.qos = QoS::AtLeastOnce;
        client.publish(now, big).unwrap();
    }
    assert_eq!((client.inflight(), client.queued()), (1, 1));
    client.handle_close(now);
    let _ = written(|| client.poll_transmit());
    while client.poll_event().is_some() {}

    client.connect(now).unwrap();
    client
        .handle_bytes(now, &connack(true, 1, Some(100)))
        .unwrap();
    let out = written(|| client.poll_transmit());
    assert!(
        out.iter().all(|(_, p)| !matches!(p, Packet::Publish(_))),
        "nothing above 100 bytes is sent: {out:?}"
    );
    let completed: Vec<_> = std::iter::from_fn(|| client.poll_event())
        .filter_map(|e| match e {
            ClientEvent::PublishComplete {
                packet_id,
                reason_code,
                ..
            } => Some((packet_id.get(), reason_code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        completed,
        [
            (1, ReasonCode::PacketTooLarge),
            (2, ReasonCode::PacketTooLarge)
        ]
    );
    assert_eq!((client.inflight(), client.queued()), (0, 0));
    let mut small = Publish::new(TopicName::try_from("t").unwrap(), &b"ok"[..]);
    small.qos = QoS::AtLeastOnce;
    client.publish(now, small).unwrap();
    let out = written(|| client.poll_transmit());
    assert!(
        matches!(&out[..], [(_, Packet::Publish(p))] if &p.payload[..] == b"ok"),
        "{out:?}"
    );
}
