//! Byte vectors captured from a real MQTT 5 peer: Eclipse Mosquitto.
//!
//! # How the vectors were produced
//!
//! Peer: Debian's `mosquitto` 2.0.11 (`mosquitto -h | head -1`: "mosquitto version 2.0.11") and
//! `mosquitto-clients` 2.0.11 ("mosquitto_pub version 2.0.11 running on libmosquitto 2.0.11", same
//! for `mosquitto_sub`). The broker ran on a free loopback port with the generated configuration
//!
//! ```text
//! listener BROKER_PORT 127.0.0.1
//! allow_anonymous true
//! ```
//!
//! and a recording TCP proxy (a small Python script) sat between the clients and the broker,
//! logging every chunk of each direction. The recorded streams were then split into packets by
//! their fixed headers. The clients, in this order (`-p` is the proxy's port; each line is one
//! TCP connection, referred to below by its name):
//!
//! * `sub1`: `mosquitto_sub -V 5 -h 127.0.0.1 -p P -i sub1 -u alice -P secret -k 5 -q 2
//!   -t 'a/+' -t 'b/#' -U 'old/#' -C 4 -v
//!   -D connect session-expiry-interval 60 -D connect user-property k v
//!   -D connect user-property k2 v2 -D subscribe subscription-identifier 7
//!   -D subscribe user-property sk sv -D unsubscribe user-property uk uv
//!   -D disconnect session-expiry-interval 0 -D disconnect user-property dk dv
//!   --will-topic w/t --will-payload bye --will-qos 1 --will-retain
//!   -D will will-delay-interval 5 -D will content-type text/plain
//!   -D will message-expiry-interval 120 -D will user-property wk wv`,
//!   left idle for 7 s (longer than its 5 s keep alive, hence PINGREQ/PINGRESP), then it received
//!   the four messages below and disconnected.
//! * `pub1`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub1 -t a/x -m hello -q 1 -r
//!   -D publish message-expiry-interval 30 -D publish content-type text/plain
//!   -D publish response-topic r/t -D publish correlation-data 0a0b -D publish user-property a b
//!   -D publish user-property a c -D publish payload-format-indicator 1`
//!   (`mosquitto_pub` sends correlation data as the bytes of the string, here ASCII "0a0b").
//! * `pub2`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub2 -t b/y/z -m world -q 2
//!   -D publish user-property x y -D publish correlation-data cd -D disconnect user-property bye now`
//! * `anon`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -t a/y -m q0` (no `-i`: an MQTT 5 client sends
//!   an empty client identifier and the broker assigns one).
//! * `pub6`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub6 -t a/z -m aliased -D publish topic-alias 1`
//! * `pub4`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub4 -t nobody/here -m x -q 1`
//! * `pub5`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub5 -t nobody/here -m x -q 2`
//! * `pub7`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub7 -t c/d -m bad -D publish topic-alias 11`
//!   (11 is above the broker's Topic Alias Maximum of 10: the broker answers with DISCONNECT).
//! * `pub8`: `mosquitto_pub -V 5 -h 127.0.0.1 -p P -i pub8 -t c/d -m x
//!   -D connect authentication-method SCRAM-SHA-1 -D connect authentication-data abc`
//!   (no authentication plugin is loaded: CONNACK 0x8C).
//! * `sub2`: `mosquitto_sub -V 5 -h 127.0.0.1 -p P -i sub2 -t 'a/#' -q 1 -C 1 -v` (receives the
//!   message retained by `pub1`).
//! * `dup2`: `mosquitto_sub -V 5 -h 127.0.0.1 -p P -i dup -t z -W 1` (its `-W` timeout makes it
//!   disconnect with reason code 0x04).
//!
//! Mosquitto produced 14 of the 15 packet types. It never sends AUTH: without an authentication
//! plugin it answers an Authentication Method with CONNACK 0x8C (vector `PUB8_CONNACK`).
//!
//! # What each test checks
//!
//! Every vector is decoded with [`decode_packet`] and its fields are asserted one by one. Then it
//! is re-encoded. Mosquitto writes properties in its own order (for example CONNACK carries Topic
//! Alias Maximum before Receive Maximum), while this codec writes them in one fixed order (the
//! order of the fields of each properties struct). The specification does not fix the order of
//! properties (only the relative order of User Properties is significant [MQTT-3.3.2-18], and that
//! is kept), so for those vectors the test checks instead that the re-encoding has the same length
//! and the same bytes in another order, and decodes back to the same packet
//! ([`assert_reencodes_reordered`]). Every other vector must re-encode to identical bytes
//! ([`assert_reencodes_identically`]).

use bytes::{Bytes, BytesMut};
use mqttproto_core::codec::{decode, decode_packet, Packet};
use mqttproto_core::{
    MqttString, PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS, ReasonCode,
    RetainHandling, SubscriptionId, SubscriptionOptions, UserProperties,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------------------------------------
// The captured vectors. Spaces only group the fields for the reader; `hex` ignores them.
// ---------------------------------------------------------------------------------------------

/// sub1 -> broker. Flags 0xEE: user name, password, will retain, will QoS 1, will, clean start.
const SUB1_CONNECT: &str = "10 63 0004 4d515454 05 ee 0005
    18 11 0000003c 26 0001 6b 0001 76 26 0002 6b32 0002 7632 21 0004
    0004 73756231
    20 18 00000005 03 000a 746578742f706c61696e 02 00000078 26 0002 776b 0002 7776
    0003 772f74 0003 627965
    0005 616c696365 0006 736563726574";
const SUB1_SUBSCRIBE: &str =
    "82 1a 0001 0b 0b 07 26 0002 736b 0002 7376 0003 612f2b 02 0003 622f23 02";
const SUB1_UNSUBSCRIBE: &str = "a2 13 0002 09 26 0002 756b 0002 7576 0005 6f6c642f23";
const SUB1_PINGREQ: &str = "c0 00";
const SUB1_PUBACK: &str = "40 02 0001";
const SUB1_PUBREC: &str = "50 02 0002";
const SUB1_PUBCOMP: &str = "70 02 0002";
const SUB1_DISCONNECT: &str = "e0 10 00 0e 11 00000000 26 0002 646b 0002 6476";

/// broker -> sub1.
const SUB1_CONNACK: &str = "20 09 00 00 06 22 000a 21 0014";
const SUB1_SUBACK: &str = "90 05 0001 00 02 02";
const SUB1_UNSUBACK: &str = "b0 04 0002 00 11";
const SUB1_PINGRESP: &str = "d0 00";
/// pub1's message forwarded to sub1, QoS 1, with Subscription Identifier 7 first.
const SUB1_PUBLISH_A_X: &str = "32 3e 0003 612f78 0001
    31 0b 07 03 000a 746578742f706c61696e 08 0003 722f74 09 0004 30613062
    26 0001 61 0001 62 26 0001 61 0001 63 01 01 02 0000001e
    68656c6c6f";
/// pub2's message forwarded to sub1, QoS 2.
const SUB1_PUBLISH_B_Y_Z: &str =
    "34 1d 0005 622f792f7a 0002 0e 0b 07 26 0001 78 0001 79 09 0002 6364 776f726c64";
const SUB1_PUBREL: &str = "62 02 0002";
/// anon's QoS 0 message forwarded to sub1.
const SUB1_PUBLISH_A_Y: &str = "30 0a 0003 612f79 02 0b 07 7130";
/// pub6's message forwarded to sub1: the broker resolved the alias and does not send one.
const SUB1_PUBLISH_A_Z: &str = "30 0f 0003 612f7a 02 0b 07 616c6961736564";

/// Everything sub1 sent, exactly as recorded.
const SUB1_CLIENT_STREAM: &str =
    "106300044d51545405ee000518110000003c2600016b0001762600026b32000276\
    3221000400047375623120180000000503000a746578742f706c61696e0200000078260002776b0002777600037\
    72f7400036279650005616c6963650006736563726574821a00010b0b07260002736b000273760003612f2b0200\
    03622f2302a213000209260002756b0002757600056f6c642f23c000400200015002000270020002e010000e110\
    0000000260002646b00026476";
/// Everything the broker sent to sub1, exactly as recorded.
const SUB1_BROKER_STREAM: &str =
    "200900000622000a21001490050001000202b00400020011d000323e0003612f78\
    0001310b0703000a746578742f706c61696e080003722f7409000430613062260001610001622600016100016301\
    01020000001e68656c6c6f341d0005622f792f7a00020e0b07260001780001790900026364776f726c6462020002\
    300a0003612f79020b077130300f0003612f7a020b07616c6961736564";

/// pub1 -> broker: QoS 1, RETAIN, every publish property mosquitto_pub can set except the alias.
const PUB1_CONNECT: &str = "10 14 0004 4d515454 05 02 003c 03 21 0014 0004 70756231";
const PUB1_PUBLISH: &str = "33 3c 0003 612f78 0001
    2f 02 0000001e 03 000a 746578742f706c61696e 08 0003 722f74 09 0004 30613062
    26 0001 61 0001 62 26 0001 61 0001 63 01 01
    68656c6c6f";
const PUB1_DISCONNECT: &str = "e0 00";
const PUB1_PUBACK: &str = "40 02 0001";

/// pub2 -> broker: QoS 2.
const PUB2_PUBLISH: &str =
    "34 1b 0005 622f792f7a 0001 0c 26 0001 78 0001 79 09 0002 6364 776f726c64";
const PUB2_PUBREL: &str = "62 02 0001";
const PUB2_DISCONNECT: &str = "e0 0d 00 0b 26 0003 627965 0003 6e6f77";
/// broker -> pub2.
const PUB2_PUBREC: &str = "50 02 0001";
const PUB2_PUBCOMP: &str = "70 02 0001";

/// anon -> broker: empty client identifier.
const ANON_CONNECT: &str = "10 10 0004 4d515454 05 02 003c 03 21 0014 0000";
const ANON_PUBLISH: &str = "30 08 0003 612f79 00 7130";
/// broker -> anon: with an Assigned Client Identifier between its other two properties.
const ANON_CONNACK: &str = "20 35 00 00 32 22 000a
    12 0029 6175746f2d37333641414533352d343935452d364436432d313731332d463443324233353745463839
    21 0014";

/// pub6 -> broker: a topic name and Topic Alias 1 (establishing the alias).
const PUB6_PUBLISH: &str = "30 10 0003 612f7a 03 23 0001 616c6961736564";
/// pub4 -> broker: QoS 1 to a topic nobody subscribes to, and the broker's answer.
const PUB4_PUBLISH: &str = "32 11 000b 6e6f626f64792f68657265 0001 00 78";
const PUB4_PUBACK: &str = "40 03 0001 10";
/// pub5 -> broker: the same at QoS 2; mosquitto answers PUBREC Success (short form).
const PUB5_PUBLISH: &str = "34 11 000b 6e6f626f64792f68657265 0001 00 78";
const PUB5_PUBREC: &str = "50 02 0001";
/// pub7 -> broker: Topic Alias 11, above the broker's maximum of 10, and the broker's answer.
const PUB7_PUBLISH: &str = "30 0c 0003 632f64 03 23 000b 626164";
const PUB7_BROKER_DISCONNECT: &str = "e0 01 94";
/// pub8 -> broker: an Authentication Method and Data; the broker refuses it.
const PUB8_CONNECT: &str = "10 28 0004 4d515454 05 02 003c
    17 15 000b 534352414d2d5348412d31 16 0003 616263 21 0014
    0004 70756238";
const PUB8_CONNACK: &str = "20 03 00 8c 00";

/// sub2 -> broker, and the retained message the broker delivers on subscription.
const SUB2_SUBSCRIBE: &str = "82 09 0001 00 0003 612f23 01";
const SUB2_SUBACK: &str = "90 04 0001 00 01";
/// Retained, so RETAIN is set; the Message Expiry Interval has counted down from 30 to 27.
const SUB2_PUBLISH_RETAINED: &str = "33 3c 0003 612f78 0001
    2f 03 000a 746578742f706c61696e 08 0003 722f74 09 0004 30613062
    26 0001 61 0001 62 26 0001 61 0001 63 01 01 02 0000001b
    68656c6c6f";
/// dup2 -> broker after its `-W 1` timeout.
const DUP2_DISCONNECT: &str = "e0 01 04";

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Parses hex digits, ignoring ASCII whitespace.
fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    let nibble = |c: u8| -> u8 {
        (c as char)
            .to_digit(16)
            .unwrap_or_else(|| panic!("not a hex digit: {:?}", c as char)) as u8
    };
    digits
        .chunks(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect::<Vec<u8>>()
        .into()
}

/// Decodes one whole captured packet.
fn decode_hex(vector: &str) -> (Bytes, Packet) {
    let wire = hex(vector);
    let packet = decode_packet(wire.clone(), V5)
        .unwrap_or_else(|e| panic!("captured packet {vector:?} failed to decode: {e}"));
    (wire, packet)
}

/// The re-encoding is byte-for-byte the captured packet.
fn assert_reencodes_identically(wire: &[u8], packet: &Packet) {
    assert_eq!(packet.encoded_len(V5), wire.len(), "encoded_len");
    let encoded = packet.to_bytes(V5).expect("encode");
    assert_eq!(
        encoded.as_ref(),
        wire,
        "re-encoding differs from the captured bytes"
    );
}

/// The captured packet lists its properties in another order than this codec writes them: the
/// re-encoding must have the same length, the same fixed header, the same bytes in another order
/// (a permutation of whole properties permutes bytes), and decode back to the same packet.
fn assert_reencodes_reordered(wire: &[u8], packet: &Packet) {
    assert_eq!(packet.encoded_len(V5), wire.len(), "encoded_len");
    let encoded = packet.to_bytes(V5).expect("encode");
    assert_eq!(encoded.len(), wire.len(), "re-encoded length");
    let header = wire.len() - packet.remaining_len(V5);
    assert_eq!(&encoded[..header], &wire[..header], "fixed header");
    let mut a = encoded.to_vec();
    let mut b = wire.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(
        a, b,
        "re-encoding is not a reordering of the captured bytes"
    );
    let again = decode_packet(encoded.clone(), V5).expect("decode the re-encoding");
    assert_eq!(&again, packet, "decode(encode(p)) != p");
    assert_eq!(
        again.to_bytes(V5).expect("encode"),
        encoded,
        "encoding is stable"
    );
}

fn s(v: &Option<MqttString>) -> Option<&str> {
    v.as_ref().map(MqttString::as_str)
}

fn pairs(props: &UserProperties) -> Vec<(&str, &str)> {
    props.iter().collect()
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn sub_id(v: u32) -> SubscriptionId {
    SubscriptionId::new(v).unwrap()
}

macro_rules! expect {
    ($packet:expr, $variant:ident) => {
        match $packet {
            Packet::$variant(p) => p,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_from_mosquitto_sub_with_will_credentials_and_properties() {
    let (wire, packet) = decode_hex(SUB1_CONNECT);
    let c = expect!(&packet, Connect);
    assert_eq!(c.protocol_version, V5);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 5);
    assert_eq!(c.client_id, "sub1");
    assert_eq!(s(&c.username), Some("alice"));
    assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));

    let p = &c.properties;
    assert_eq!(p.session_expiry_interval, Some(60));
    assert_eq!(p.receive_maximum.map(|v| v.get()), Some(4)); // mosquitto_sub: -C 4
    assert_eq!(pairs(&p.user_properties), [("k", "v"), ("k2", "v2")]);
    assert_eq!(p.maximum_packet_size, None);
    assert_eq!(p.topic_alias_maximum, None);
    assert_eq!(p.request_response_information, None);
    assert_eq!(p.request_problem_information, None);
    assert_eq!(p.authentication_method, None);
    assert_eq!(p.authentication_data, None);

    let will = c.will.as_ref().expect("will");
    assert_eq!(will.topic.as_str(), "w/t");
    assert_eq!(will.payload.as_ref(), b"bye");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    let w = &will.properties;
    assert_eq!(w.will_delay_interval, Some(5));
    assert_eq!(s(&w.content_type), Some("text/plain"));
    assert_eq!(w.message_expiry_interval, Some(120));
    assert_eq!(pairs(&w.user_properties), [("wk", "wv")]);
    assert_eq!(w.payload_format_indicator, None);
    assert_eq!(w.response_topic, None);
    assert_eq!(w.correlation_data, None);

    // Mosquitto: CONNECT properties 0x11, 0x26, 0x26, 0x21 and Will properties 0x18, 0x03, 0x02,
    // 0x26; this codec writes 0x11, 0x21, 0x26, 0x26 and 0x18, 0x02, 0x03, 0x26.
    assert_reencodes_reordered(&wire, &packet);
}

#[test]
fn connect_with_empty_client_identifier() {
    let (wire, packet) = decode_hex(ANON_CONNECT);
    let c = expect!(&packet, Connect);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert!(c.client_id.is_empty());
    assert!(c.will.is_none());
    assert_eq!(c.username, None);
    assert_eq!(c.password, None);
    assert_eq!(c.properties.receive_maximum.map(|v| v.get()), Some(20));
    assert_eq!(c.properties.session_expiry_interval, None);
    assert!(c.properties.user_properties.is_empty());
    assert_reencodes_identically(&wire, &packet);

    // pub1's CONNECT only differs by its client identifier.
    let (wire, packet) = decode_hex(PUB1_CONNECT);
    assert_eq!(expect!(&packet, Connect).client_id, "pub1");
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn connect_with_authentication_method_and_data() {
    let (wire, packet) = decode_hex(PUB8_CONNECT);
    let c = expect!(&packet, Connect);
    assert_eq!(c.client_id, "pub8");
    assert_eq!(s(&c.properties.authentication_method), Some("SCRAM-SHA-1"));
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"abc"[..])
    );
    assert_eq!(c.properties.receive_maximum.map(|v| v.get()), Some(20));
    // Mosquitto: 0x15, 0x16, 0x21; this codec writes 0x21, 0x15, 0x16.
    assert_reencodes_reordered(&wire, &packet);
}

// ---------------------------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------------------------

#[test]
fn connack_success_with_broker_limits() {
    let (wire, packet) = decode_hex(SUB1_CONNACK);
    let c = expect!(&packet, ConnAck);
    assert!(!c.session_present);
    assert_eq!(c.reason_code, ReasonCode::Success);
    let p = &c.properties;
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.receive_maximum.map(|v| v.get()), Some(20));
    assert_eq!(p.assigned_client_identifier, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.maximum_packet_size, None);
    assert_eq!(p.server_keep_alive, None);
    assert!(p.user_properties.is_empty());
    // Mosquitto: 0x22, 0x21; this codec writes 0x21, 0x22.
    assert_reencodes_reordered(&wire, &packet);
}

#[test]
fn connack_with_assigned_client_identifier() {
    let (wire, packet) = decode_hex(ANON_CONNACK);
    let c = expect!(&packet, ConnAck);
    assert!(!c.session_present);
    assert_eq!(c.reason_code, ReasonCode::Success);
    let p = &c.properties;
    assert_eq!(
        s(&p.assigned_client_identifier),
        Some("auto-736AAE35-495E-6D6C-1713-F4C2B357EF89")
    );
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.receive_maximum.map(|v| v.get()), Some(20));
    // Mosquitto: 0x22, 0x12, 0x21; this codec writes 0x21, 0x12, 0x22.
    assert_reencodes_reordered(&wire, &packet);
}

#[test]
fn connack_bad_authentication_method() {
    let (wire, packet) = decode_hex(PUB8_CONNACK);
    let c = expect!(&packet, ConnAck);
    assert!(!c.session_present);
    assert_eq!(c.reason_code, ReasonCode::BadAuthenticationMethod);
    assert!(c.properties.is_empty());
    assert_reencodes_identically(&wire, &packet);
}

// ---------------------------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------------------------

#[test]
fn publish_qos1_retained_with_every_property_from_mosquitto_pub() {
    let (wire, packet) = decode_hex(PUB1_PUBLISH);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "a/x");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.retain);
    assert!(!p.dup);
    assert_eq!(p.packet_id, Some(pid(1)));
    assert_eq!(p.payload.as_ref(), b"hello");
    let q = &p.properties;
    assert_eq!(q.message_expiry_interval, Some(30));
    assert_eq!(s(&q.content_type), Some("text/plain"));
    assert_eq!(q.response_topic.as_ref().map(|t| t.as_str()), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"0a0b"[..]));
    // Order and repetition of User Properties are kept [MQTT-3.3.2-18].
    assert_eq!(pairs(&q.user_properties), [("a", "b"), ("a", "c")]);
    assert_eq!(q.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert_eq!(q.topic_alias, None);
    assert!(q.subscription_identifiers.is_empty());
    // Mosquitto: 0x02, 0x03, 0x08, 0x09, 0x26, 0x26, 0x01; this codec writes 0x01, 0x02, 0x08,
    // 0x09, 0x03, 0x26, 0x26.
    assert_reencodes_reordered(&wire, &packet);
}

#[test]
fn publish_forwarded_to_subscriber_with_subscription_identifier() {
    let (wire, packet) = decode_hex(SUB1_PUBLISH_A_X);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "a/x");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    // A message published to a matching subscription keeps RETAIN 0 [MQTT-3.3.1-9].
    assert!(!p.retain);
    assert!(!p.dup);
    assert_eq!(p.packet_id, Some(pid(1)));
    assert_eq!(p.payload.as_ref(), b"hello");
    let q = &p.properties;
    assert_eq!(q.subscription_identifiers, [sub_id(7)]);
    assert_eq!(q.message_expiry_interval, Some(30));
    assert_eq!(s(&q.content_type), Some("text/plain"));
    assert_eq!(q.response_topic.as_ref().map(|t| t.as_str()), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"0a0b"[..]));
    assert_eq!(pairs(&q.user_properties), [("a", "b"), ("a", "c")]);
    assert_eq!(q.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert_eq!(q.topic_alias, None);
    // Mosquitto: 0x0B, 0x03, 0x08, 0x09, 0x26, 0x26, 0x01, 0x02; this codec writes 0x01, 0x02,
    // 0x08, 0x09, 0x03, 0x26, 0x26, 0x0B.
    assert_reencodes_reordered(&wire, &packet);

    // QoS 0 and an alias-free forward of pub6's aliased message: only the identifier.
    for (vector, topic, payload) in [
        (SUB1_PUBLISH_A_Y, "a/y", &b"q0"[..]),
        (SUB1_PUBLISH_A_Z, "a/z", &b"aliased"[..]),
    ] {
        let (wire, packet) = decode_hex(vector);
        let p = expect!(&packet, Publish);
        assert_eq!(p.topic.as_str(), topic);
        assert_eq!(p.qos, QoS::AtMostOnce);
        assert!(!p.retain && !p.dup);
        assert_eq!(p.packet_id, None);
        assert_eq!(p.payload.as_ref(), payload);
        assert_eq!(p.properties.subscription_identifiers, [sub_id(7)]);
        assert_eq!(p.properties.topic_alias, None);
        assert!(p.properties.user_properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
}

#[test]
fn publish_qos2_both_directions() {
    let (wire, packet) = decode_hex(PUB2_PUBLISH);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "b/y/z");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(!p.retain && !p.dup);
    assert_eq!(p.packet_id, Some(pid(1)));
    assert_eq!(p.payload.as_ref(), b"world");
    assert_eq!(pairs(&p.properties.user_properties), [("x", "y")]);
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"cd"[..]));
    assert!(p.properties.subscription_identifiers.is_empty());
    // Mosquitto: 0x26, 0x09; this codec writes 0x09, 0x26.
    assert_reencodes_reordered(&wire, &packet);

    let (wire, packet) = decode_hex(SUB1_PUBLISH_B_Y_Z);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "b/y/z");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(!p.retain && !p.dup);
    assert_eq!(p.packet_id, Some(pid(2)));
    assert_eq!(p.payload.as_ref(), b"world");
    assert_eq!(p.properties.subscription_identifiers, [sub_id(7)]);
    assert_eq!(pairs(&p.properties.user_properties), [("x", "y")]);
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"cd"[..]));
    // Mosquitto: 0x0B, 0x26, 0x09; this codec writes 0x09, 0x26, 0x0B.
    assert_reencodes_reordered(&wire, &packet);
}

#[test]
fn publish_without_properties() {
    for (vector, topic, qos, id, payload) in [
        (ANON_PUBLISH, "a/y", QoS::AtMostOnce, None, &b"q0"[..]),
        (
            PUB4_PUBLISH,
            "nobody/here",
            QoS::AtLeastOnce,
            Some(pid(1)),
            &b"x"[..],
        ),
        (
            PUB5_PUBLISH,
            "nobody/here",
            QoS::ExactlyOnce,
            Some(pid(1)),
            &b"x"[..],
        ),
    ] {
        let (wire, packet) = decode_hex(vector);
        let p = expect!(&packet, Publish);
        assert_eq!(p.topic.as_str(), topic);
        assert_eq!(p.qos, qos);
        assert!(!p.retain && !p.dup);
        assert_eq!(p.packet_id, id);
        assert_eq!(p.payload.as_ref(), payload);
        assert!(p.properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
}

#[test]
fn publish_with_topic_alias() {
    // Topic name plus alias: establishes the mapping.
    let (wire, packet) = decode_hex(PUB6_PUBLISH);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "a/z");
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(p.packet_id, None);
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(1));
    assert_eq!(p.payload.as_ref(), b"aliased");
    assert_reencodes_identically(&wire, &packet);

    // Alias 11 is syntactically valid; exceeding the broker's Topic Alias Maximum is a protocol
    // error the broker reports (PUB7_BROKER_DISCONNECT), not a decoding error.
    let (wire, packet) = decode_hex(PUB7_PUBLISH);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "c/d");
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(11));
    assert_eq!(p.payload.as_ref(), b"bad");
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn publish_retained_message_delivered_on_subscribe() {
    let (wire, packet) = decode_hex(SUB2_PUBLISH_RETAINED);
    let p = expect!(&packet, Publish);
    assert_eq!(p.topic.as_str(), "a/x");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(
        p.retain,
        "a retained message sent on subscription has RETAIN 1"
    );
    assert!(!p.dup);
    assert_eq!(p.packet_id, Some(pid(1)));
    assert_eq!(p.payload.as_ref(), b"hello");
    let q = &p.properties;
    assert_eq!(q.message_expiry_interval, Some(27));
    assert_eq!(s(&q.content_type), Some("text/plain"));
    assert_eq!(q.response_topic.as_ref().map(|t| t.as_str()), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"0a0b"[..]));
    assert_eq!(pairs(&q.user_properties), [("a", "b"), ("a", "c")]);
    assert_eq!(q.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert!(q.subscription_identifiers.is_empty());
    // Mosquitto: 0x03, 0x08, 0x09, 0x26, 0x26, 0x01, 0x02; this codec writes 0x01, 0x02, 0x08,
    // 0x09, 0x03, 0x26, 0x26.
    assert_reencodes_reordered(&wire, &packet);
}

// ---------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP
// ---------------------------------------------------------------------------------------------

#[test]
fn puback_short_form_and_no_matching_subscribers() {
    for vector in [SUB1_PUBACK, PUB1_PUBACK] {
        let (wire, packet) = decode_hex(vector);
        let a = expect!(&packet, PubAck);
        assert_eq!(a.packet_id, pid(1));
        assert_eq!(a.reason_code, ReasonCode::Success);
        assert!(a.properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
    let (wire, packet) = decode_hex(PUB4_PUBACK);
    let a = expect!(&packet, PubAck);
    assert_eq!(a.packet_id, pid(1));
    assert_eq!(a.reason_code, ReasonCode::NoMatchingSubscribers);
    assert!(a.properties.is_empty());
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn pubrec_short_form() {
    for (vector, id) in [(SUB1_PUBREC, 2), (PUB2_PUBREC, 1), (PUB5_PUBREC, 1)] {
        let (wire, packet) = decode_hex(vector);
        let a = expect!(&packet, PubRec);
        assert_eq!(a.packet_id, pid(id));
        assert_eq!(a.reason_code, ReasonCode::Success);
        assert!(a.properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
}

#[test]
fn pubrel_short_form() {
    for (vector, id) in [(SUB1_PUBREL, 2), (PUB2_PUBREL, 1)] {
        let (wire, packet) = decode_hex(vector);
        assert_eq!(wire[0], 0x62, "PUBREL carries fixed-header flags 0b0010");
        let a = expect!(&packet, PubRel);
        assert_eq!(a.packet_id, pid(id));
        assert_eq!(a.reason_code, ReasonCode::Success);
        assert!(a.properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
}

#[test]
fn pubcomp_short_form() {
    for (vector, id) in [(SUB1_PUBCOMP, 2), (PUB2_PUBCOMP, 1)] {
        let (wire, packet) = decode_hex(vector);
        let a = expect!(&packet, PubComp);
        assert_eq!(a.packet_id, pid(id));
        assert_eq!(a.reason_code, ReasonCode::Success);
        assert!(a.properties.is_empty());
        assert_reencodes_identically(&wire, &packet);
    }
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK
// ---------------------------------------------------------------------------------------------

#[test]
fn subscribe_two_filters_with_subscription_identifier() {
    let (wire, packet) = decode_hex(SUB1_SUBSCRIBE);
    let sub = expect!(&packet, Subscribe);
    assert_eq!(sub.packet_id, pid(1));
    assert_eq!(sub.properties.subscription_identifier, Some(sub_id(7)));
    assert_eq!(pairs(&sub.properties.user_properties), [("sk", "sv")]);
    let filters: Vec<&str> = sub
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["a/+", "b/#"]);
    for entry in &sub.subscriptions {
        assert_eq!(
            entry.options,
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            }
        );
        assert!(!entry.filter.is_shared());
    }
    assert_reencodes_identically(&wire, &packet);

    let (wire, packet) = decode_hex(SUB2_SUBSCRIBE);
    let sub = expect!(&packet, Subscribe);
    assert_eq!(sub.packet_id, pid(1));
    assert!(sub.properties.is_empty());
    assert_eq!(sub.subscriptions.len(), 1);
    assert_eq!(sub.subscriptions[0].filter.as_str(), "a/#");
    assert_eq!(
        sub.subscriptions[0].options,
        SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    );
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn suback_granted_qos() {
    let (wire, packet) = decode_hex(SUB1_SUBACK);
    let a = expect!(&packet, SubAck);
    assert_eq!(a.packet_id, pid(1));
    assert!(a.properties.is_empty());
    assert_eq!(
        a.reason_codes,
        [ReasonCode::GrantedQoS2, ReasonCode::GrantedQoS2]
    );
    assert_reencodes_identically(&wire, &packet);

    let (wire, packet) = decode_hex(SUB2_SUBACK);
    let a = expect!(&packet, SubAck);
    assert_eq!(a.packet_id, pid(1));
    assert_eq!(a.reason_codes, [ReasonCode::GrantedQoS1]);
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn unsubscribe_with_user_property() {
    let (wire, packet) = decode_hex(SUB1_UNSUBSCRIBE);
    let u = expect!(&packet, Unsubscribe);
    assert_eq!(u.packet_id, pid(2));
    assert_eq!(pairs(&u.properties.user_properties), [("uk", "uv")]);
    let filters: Vec<&str> = u.filters.iter().map(|f| f.as_str()).collect();
    assert_eq!(filters, ["old/#"]);
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn unsuback_no_subscription_existed() {
    let (wire, packet) = decode_hex(SUB1_UNSUBACK);
    let a = expect!(&packet, UnsubAck);
    assert_eq!(a.packet_id, pid(2));
    assert!(a.properties.is_empty());
    assert_eq!(a.reason_codes, [ReasonCode::NoSubscriptionExisted]);
    assert_reencodes_identically(&wire, &packet);
}

// ---------------------------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn pingreq() {
    let (wire, packet) = decode_hex(SUB1_PINGREQ);
    assert_eq!(packet, Packet::PingReq);
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn pingresp() {
    let (wire, packet) = decode_hex(SUB1_PINGRESP);
    assert_eq!(packet, Packet::PingResp);
    assert_reencodes_identically(&wire, &packet);
}

#[test]
fn disconnect_from_clients_and_broker() {
    // Normal disconnection, Remaining Length 0.
    let (wire, packet) = decode_hex(PUB1_DISCONNECT);
    let d = expect!(&packet, Disconnect);
    assert_eq!(d.reason_code, ReasonCode::NORMAL_DISCONNECTION);
    assert!(d.properties.is_empty());
    assert_reencodes_identically(&wire, &packet);

    // Normal disconnection with Session Expiry Interval and a User Property.
    let (wire, packet) = decode_hex(SUB1_DISCONNECT);
    let d = expect!(&packet, Disconnect);
    assert_eq!(d.reason_code, ReasonCode::NORMAL_DISCONNECTION);
    assert_eq!(d.properties.session_expiry_interval, Some(0));
    assert_eq!(pairs(&d.properties.user_properties), [("dk", "dv")]);
    assert_eq!(d.properties.reason_string, None);
    assert_eq!(d.properties.server_reference, None);
    assert_reencodes_identically(&wire, &packet);

    // Normal disconnection with only a User Property.
    let (wire, packet) = decode_hex(PUB2_DISCONNECT);
    let d = expect!(&packet, Disconnect);
    assert_eq!(d.reason_code, ReasonCode::NORMAL_DISCONNECTION);
    assert_eq!(d.properties.session_expiry_interval, None);
    assert_eq!(pairs(&d.properties.user_properties), [("bye", "now")]);
    assert_reencodes_identically(&wire, &packet);

    // A lone reason code, from a client.
    let (wire, packet) = decode_hex(DUP2_DISCONNECT);
    let d = expect!(&packet, Disconnect);
    assert_eq!(d.reason_code, ReasonCode::DisconnectWithWillMessage);
    assert!(d.properties.is_empty());
    assert_reencodes_identically(&wire, &packet);

    // A lone reason code, from the broker.
    let (wire, packet) = decode_hex(PUB7_BROKER_DISCONNECT);
    let d = expect!(&packet, Disconnect);
    assert_eq!(d.reason_code, ReasonCode::TopicAliasInvalid);
    assert!(d.properties.is_empty());
    assert_reencodes_identically(&wire, &packet);
}

// ---------------------------------------------------------------------------------------------
// Whole streams through the streaming decoder.
// ---------------------------------------------------------------------------------------------

/// Feeds `stream` to [`decode`] one byte at a time and returns the packets in order.
fn decode_byte_by_byte(stream: &[u8]) -> Vec<Packet> {
    let mut input = BytesMut::new();
    let mut packets = Vec::new();
    for (i, &byte) in stream.iter().enumerate() {
        input.extend_from_slice(&[byte]);
        while let Some(packet) = decode(&mut input, V5, u32::MAX)
            .unwrap_or_else(|e| panic!("decode failed after byte {i}: {e}"))
        {
            packets.push(packet);
        }
    }
    assert!(input.is_empty(), "{} bytes left undecoded", input.len());
    packets
}

fn check_stream(stream: &str, vectors: &[&str], types: &[PacketType]) {
    let stream = hex(stream);
    // The per-packet vectors are exactly the recorded stream, split.
    let joined: Vec<u8> = vectors.iter().flat_map(|v| hex(v).to_vec()).collect();
    assert_eq!(
        joined,
        stream.as_ref(),
        "the vectors do not tile the stream"
    );

    let streamed = decode_byte_by_byte(&stream);
    let whole: Vec<Packet> = vectors.iter().map(|v| decode_hex(v).1).collect();
    assert_eq!(streamed, whole);
    let got: Vec<PacketType> = streamed.iter().map(Packet::packet_type).collect();
    assert_eq!(got, types);

    // The same stream in one piece decodes to the same sequence.
    let mut input = BytesMut::from(stream.as_ref());
    let mut at_once = Vec::new();
    while let Some(p) = decode(&mut input, V5, u32::MAX).expect("decode") {
        at_once.push(p);
    }
    assert!(input.is_empty());
    assert_eq!(at_once, whole);
}

#[test]
fn client_stream_byte_by_byte() {
    use PacketType::*;
    check_stream(
        SUB1_CLIENT_STREAM,
        &[
            SUB1_CONNECT,
            SUB1_SUBSCRIBE,
            SUB1_UNSUBSCRIBE,
            SUB1_PINGREQ,
            SUB1_PUBACK,
            SUB1_PUBREC,
            SUB1_PUBCOMP,
            SUB1_DISCONNECT,
        ],
        &[
            Connect,
            Subscribe,
            Unsubscribe,
            PingReq,
            PubAck,
            PubRec,
            PubComp,
            Disconnect,
        ],
    );
}

#[test]
fn broker_stream_byte_by_byte() {
    use PacketType::*;
    check_stream(
        SUB1_BROKER_STREAM,
        &[
            SUB1_CONNACK,
            SUB1_SUBACK,
            SUB1_UNSUBACK,
            SUB1_PINGRESP,
            SUB1_PUBLISH_A_X,
            SUB1_PUBLISH_B_Y_Z,
            SUB1_PUBREL,
            SUB1_PUBLISH_A_Y,
            SUB1_PUBLISH_A_Z,
        ],
        &[
            ConnAck, SubAck, UnsubAck, PingResp, Publish, Publish, PubRel, Publish, Publish,
        ],
    );
}
