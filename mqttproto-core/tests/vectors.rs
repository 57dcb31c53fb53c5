//! Byte vectors for every packet type, written out field by field from the specification
//! (chapter 3). Each vector is decoded, its fields checked, and re-encoded to the same bytes.
//! Vectors captured from Mosquitto are in `captured.rs`.

mod common;

use std::num::{NonZeroU16, NonZeroU32};

use common::decode_hex;
use mqttproto_core::codec::*;
use mqttproto_core::*;

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

#[test]
fn connect_minimal() {
    // Fixed header 0x10, remaining length 16.
    // Protocol name "MQTT", level 5, flags 0x02 (Clean Start), Keep Alive 60, no properties,
    // Client Identifier "abc".
    let p = decode_hex("10 10  0004 4d515454  05  02  003c  00  0003 616263");
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(c.protocol_version, ProtocolVersion::V5);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "abc");
    assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
    assert!(c.properties.is_empty());
}

#[test]
fn connect_with_will_credentials_and_properties() {
    // Flags 0xEE: User Name, Password, Will Retain, Will QoS 1, Will Flag, Clean Start.
    // Properties (8): Session Expiry Interval 60, Receive Maximum 10.
    // Payload: Client Identifier "c1"; Will Properties (7): Will Delay Interval 5, Payload Format
    // Indicator 1; Will Topic "w"; Will Payload "bye"; User Name "u"; Password 0x70.
    let p = decode_hex(
        "10 2d  0004 4d515454 05 ee 001e
         08 11 0000003c 21 000a
         0002 6331
         07 18 00000005 01 01
         0001 77  0003 627965
         0001 75  0001 70",
    );
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(c.keep_alive, 30);
    assert_eq!(c.properties.session_expiry_interval, Some(60));
    assert_eq!(c.properties.receive_maximum, NonZeroU16::new(10));
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.topic.as_str(), "w");
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(
        will.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
    assert_eq!(c.username.as_ref().unwrap(), "u");
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn connack_success() {
    let p = decode_hex("20 03 00 00 00");
    assert_eq!(
        p,
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        }))
    );
}

#[test]
fn connack_with_server_limits() {
    // Session Present; Maximum QoS 1, Retain Available 0, Topic Alias Maximum 10.
    let p = decode_hex("20 0a 01 00 07 24 01 25 00 22 000a");
    let Packet::ConnAck(c) = p else { panic!() };
    assert!(c.session_present);
    assert_eq!(c.properties.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(c.properties.retain_available, Some(false));
    assert_eq!(c.properties.topic_alias_maximum, Some(10));
}

#[test]
fn connack_refused() {
    let p = decode_hex("20 03 00 86 00");
    let Packet::ConnAck(c) = p else { panic!() };
    assert_eq!(c.reason_code, ReasonCode::BadUserNameOrPassword);
}

#[test]
fn publish_qos0() {
    let p = decode_hex("30 0a 0003 612f62 00 68 69 21 21");
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(p.topic.as_str(), "a/b");
    assert_eq!(p.packet_id, None);
    assert_eq!(&p.payload[..], b"hi!!");
}

#[test]
fn publish_qos1_with_properties() {
    // Topic "t", Packet Identifier 7; Message Expiry Interval 30, User Property ("k", "v").
    let p = decode_hex("32 13 0001 74 0007 0c 02 0000001e 26 0001 6b 0001 76 78");
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.packet_id, PacketId::new(7));
    assert_eq!(p.properties.message_expiry_interval, Some(30));
    assert_eq!(
        p.properties.user_properties,
        UserProperties::from([UserProperty::new(s("k"), s("v"))])
    );
    assert_eq!(&p.payload[..], b"x");
}

#[test]
fn publish_qos2_dup_retain_empty_payload() {
    // First byte 0x3D: DUP, QoS 2, RETAIN.
    let p = decode_hex("3d 06 0001 74 0001 00");
    let Packet::Publish(p) = p else { panic!() };
    assert!(p.dup && p.retain);
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(p.payload.is_empty());
}

#[test]
fn publish_with_topic_alias_and_empty_topic() {
    // Empty Topic Name and Topic Alias 3; two Subscription Identifiers (2 and 300).
    let p = decode_hex("30 0c 0000 08 23 0003 0b 02 0b ac02 41");
    let Packet::Publish(p) = p else { panic!() };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias, NonZeroU16::new(3));
    assert_eq!(
        p.properties.subscription_identifiers,
        vec![
            SubscriptionId::new(2).unwrap(),
            SubscriptionId::new(300).unwrap()
        ]
    );
}

#[test]
fn puback_short_and_with_reason() {
    assert_eq!(
        decode_hex("40 02 0007"),
        Packet::PubAck(PublishAck::new(PacketId::new(7).unwrap()))
    );
    assert_eq!(
        decode_hex("40 03 0007 10"),
        Packet::PubAck(PublishAck::with_reason(
            PacketId::new(7).unwrap(),
            ReasonCode::NoMatchingSubscribers
        ))
    );
}

#[test]
fn puback_two_byte_form_with_reason_code_and_no_property_length() {
    // Remaining Length 3: a reason code and no Property Length (section 3.4.2.2).
    let p = decode_hex("40 03 0007 87");
    let Packet::PubAck(a) = p else { panic!() };
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
    // A zero Property Length is accepted too; it re-encodes in the shorter form.
    let q = decode_packet(common::hex("40 04 0007 87 00"), common::V5).unwrap();
    assert_eq!(q, Packet::PubAck(a));
}

#[test]
fn pubrec_with_reason_string() {
    let p = decode_hex("50 08 0007 80 04 1f 0001 65");
    let Packet::PubRec(a) = p else { panic!() };
    assert_eq!(a.reason_code, ReasonCode::UnspecifiedError);
    assert_eq!(a.properties.reason_string, Some(s("e")));
}

#[test]
fn pubrel_and_pubcomp() {
    assert_eq!(
        decode_hex("62 02 0007"),
        Packet::PubRel(PublishAck::new(PacketId::new(7).unwrap()))
    );
    let Packet::PubRel(r) = decode_hex("62 03 0007 92") else {
        panic!()
    };
    assert_eq!(r.reason_code, ReasonCode::PacketIdentifierNotFound);
    assert_eq!(
        decode_hex("70 02 0007"),
        Packet::PubComp(PublishAck::new(PacketId::new(7).unwrap()))
    );
}

#[test]
fn subscribe_with_options_and_identifier() {
    // Packet Identifier 10; Subscription Identifier 5; "a/+" with QoS 1, No Local,
    // Retain As Published, Retain Handling 2; "#" with QoS 0.
    let p = decode_hex("82 0f 000a 02 0b 05 0003 612f2b 2d 0001 23 00");
    let Packet::Subscribe(sub) = p else { panic!() };
    assert_eq!(sub.packet_id.get(), 10);
    assert_eq!(
        sub.properties.subscription_identifier,
        SubscriptionId::new(5)
    );
    assert_eq!(sub.subscriptions.len(), 2);
    let o = sub.subscriptions[0].options;
    assert_eq!(sub.subscriptions[0].filter.as_str(), "a/+");
    assert_eq!(o.qos, QoS::AtLeastOnce);
    assert!(o.no_local && o.retain_as_published);
    assert_eq!(o.retain_handling, RetainHandling::DoNotSend);
    assert_eq!(
        sub.subscriptions[1].options,
        SubscriptionOptions::with_qos(QoS::AtMostOnce)
    );
}

#[test]
fn subscribe_shared() {
    let p = decode_hex("82 12 0001 00 000c 2473686172652f672f612f23 01");
    let Packet::Subscribe(sub) = p else { panic!() };
    let f = &sub.subscriptions[0].filter;
    assert_eq!(f.share_name(), Some("g"));
    assert_eq!(f.filter_str(), "a/#");
}

#[test]
fn suback() {
    let Packet::SubAck(a) = decode_hex("90 05 000a 00 01 80") else {
        panic!()
    };
    assert_eq!(
        a.reason_codes,
        vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let Packet::Unsubscribe(u) = decode_hex("a2 08 000b 00 0003 612f2b") else {
        panic!()
    };
    assert_eq!(u.filters[0].as_str(), "a/+");
    let Packet::UnsubAck(a) = decode_hex("b0 04 000b 00 11") else {
        panic!()
    };
    assert_eq!(a.reason_codes, vec![ReasonCode::NoSubscriptionExisted]);
}

#[test]
fn pingreq_and_pingresp() {
    assert_eq!(decode_hex("c0 00"), Packet::PingReq);
    assert_eq!(decode_hex("d0 00"), Packet::PingResp);
}

#[test]
fn disconnect_forms() {
    assert_eq!(
        decode_hex("e0 00"),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        decode_hex("e0 01 04"),
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage))
    );
    let Packet::Disconnect(d) = decode_hex("e0 07 00 05 11 00000000") else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::NORMAL_DISCONNECTION);
    assert_eq!(d.properties.session_expiry_interval, Some(0));
}

#[test]
fn auth_forms() {
    assert_eq!(decode_hex("f0 00"), Packet::Auth(Auth::default()));
    // Continue authentication, method "SCRAM", data 01 02.
    let Packet::Auth(a) = decode_hex("f0 0f 18 0d 15 0005 534352414d 16 0002 0102") else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(a.properties.authentication_method, Some(s("SCRAM")));
    assert_eq!(
        a.properties.authentication_data.as_deref(),
        Some(&[1u8, 2][..])
    );
}

#[test]
fn remaining_length_of_four_bytes() {
    // A PUBLISH whose remaining length, 2,097,152, takes four bytes.
    let mut p = Publish::new(TopicName::try_from("t").unwrap(), vec![7u8; 2_097_152 - 4]);
    p.qos = QoS::AtMostOnce;
    let packet = Packet::Publish(p);
    let bytes = packet.to_bytes(common::V5).unwrap();
    assert_eq!(&bytes[..5], &[0x30, 0x80, 0x80, 0x80, 0x01]);
    assert_eq!(decode_packet(bytes, common::V5).unwrap(), packet);
}

#[test]
fn connect_properties_all_present() {
    let mut c = Connect {
        client_id: s("id"),
        ..Connect::default()
    };
    c.properties = ConnectProperties {
        session_expiry_interval: Some(1),
        receive_maximum: NonZeroU16::new(2),
        maximum_packet_size: NonZeroU32::new(3),
        topic_alias_maximum: Some(4),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: Some(s("m")),
        authentication_data: Some(bytes::Bytes::from_static(b"d")),
        user_properties: vec![
            UserProperty::new(s("a"), s("1")),
            UserProperty::new(s("a"), s("2")),
        ]
        .into(),
    };
    let packet = Packet::Connect(Box::new(c));
    let bytes = packet.to_bytes(common::V5).unwrap();
    assert_eq!(decode_packet(bytes, common::V5).unwrap(), packet);
}
