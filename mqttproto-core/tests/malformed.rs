//! One malformed-input test per validation rule. Each names the statement it checks and asserts
//! the error and the reason code the receiver must answer with.

mod common;

use bytes::BytesMut;
use common::{reject_hex, V5};
use mqttproto_core::codec::decode;
use mqttproto_core::*;

#[track_caller]
fn rejects(hex: &str, reason: ReasonCode) -> DecodeError {
    let e = reject_hex(hex);
    assert_eq!(e.reason_code(), reason, "{hex}: {e}");
    // Every error can be sent back in a DISCONNECT or a CONNACK.
    assert!(
        e.reason_code().is_valid_for(PacketType::Disconnect)
            || e.reason_code().is_valid_for(PacketType::ConnAck)
    );
    e
}

// ---- Fixed header -------------------------------------------------------------------------

#[test]
fn reserved_fixed_header_flags_mqtt_2_1_3_1() {
    for hex in [
        "11 10 0004 4d515454 05 02 003c 00 0003 616263", // CONNECT with flags 0001
        "21 03 00 00 00",                                // CONNACK
        "41 02 0001",                                    // PUBACK
        "60 02 0001",                                    // PUBREL needs 0010
        "80 06 0001 00 0001 61 00",                      // SUBSCRIBE needs 0010
        "a0 05 0001 00 0001 61",                         // UNSUBSCRIBE needs 0010
        "c8 00",                                         // PINGREQ
        "d1 00",                                         // PINGRESP
        "e2 00",                                         // DISCONNECT
    ] {
        let e = rejects(hex, ReasonCode::MalformedPacket);
        assert!(
            matches!(e, DecodeError::InvalidFixedHeaderFlags { .. }),
            "{hex}"
        );
        assert_eq!(e.statement(), Some("MQTT-2.1.3-1"));
    }
}

#[test]
fn auth_reserved_flags_mqtt_3_15_1_1() {
    let e = rejects("f1 00", ReasonCode::MalformedPacket);
    assert!(matches!(
        e,
        DecodeError::InvalidFixedHeaderFlags {
            packet: PacketType::Auth,
            flags: 1
        }
    ));
}

#[test]
fn reserved_flags_rejected_before_the_body_arrives() {
    // Only the first byte of a PUBREL with bad flags: rejected at once.
    let mut buf = BytesMut::from(&[0x60u8][..]);
    assert!(matches!(
        decode(&mut buf, V5, u32::MAX),
        Err(DecodeError::InvalidFixedHeaderFlags { .. })
    ));
}

#[test]
fn packet_type_zero_is_reserved() {
    assert_eq!(
        rejects("00 00", ReasonCode::MalformedPacket),
        DecodeError::InvalidPacketType
    );
}

#[test]
fn remaining_length_at_most_four_bytes() {
    assert_eq!(
        rejects("30 ff ff ff ff 7f", ReasonCode::MalformedPacket),
        DecodeError::VarintTooLong
    );
    // Rejected as soon as the fourth length byte has its continuation bit set.
    assert_eq!(
        rejects("30 80 80 80 80", ReasonCode::MalformedPacket),
        DecodeError::VarintTooLong
    );
}

#[test]
fn remaining_length_minimal_form_mqtt_1_5_5_1() {
    let e = rejects("c0 80 00", ReasonCode::MalformedPacket);
    assert_eq!(e, DecodeError::NonMinimalVarint);
    assert_eq!(e.statement(), Some("MQTT-1.5.5-1"));
}

#[test]
fn property_length_minimal_form_mqtt_1_5_5_1() {
    // PUBLISH whose Property Length 0 is written as 80 00.
    assert_eq!(
        rejects("30 05 0001 74 80 00", ReasonCode::MalformedPacket),
        DecodeError::NonMinimalVarint
    );
}

#[test]
fn subscription_identifier_minimal_form_mqtt_1_5_5_1() {
    // SUBSCRIBE with Subscription Identifier 1 written as 81 00.
    assert_eq!(
        rejects(
            "82 09 0001 03 0b 8100 0001 61 00",
            ReasonCode::MalformedPacket
        ),
        DecodeError::NonMinimalVarint
    );
}

#[test]
fn packet_too_large_rejected_from_fixed_header() {
    // A PUBLISH declaring 1,000 bytes against a limit of 100: rejected with only its first two
    // header bytes buffered, before the body arrives [MQTT-3.2.2-15, MQTT-3.1.2-24].
    let mut buf = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]);
    let e = decode(&mut buf, V5, 100).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn packet_exactly_at_the_limit_is_accepted() {
    let mut buf = BytesMut::from(&common::hex("30 06 0001 74 00 41 42")[..]);
    assert!(decode(&mut buf, V5, 8).unwrap().is_some());
    let mut buf = BytesMut::from(&common::hex("30 06 0001 74 00 41 42")[..]);
    assert!(decode(&mut buf, V5, 7).is_err());
}

#[test]
fn truncated_and_trailing_bytes() {
    // Topic length 5 in a 4-byte body.
    assert!(matches!(
        rejects("30 04 0005 6162", ReasonCode::MalformedPacket),
        DecodeError::Truncated { .. }
    ));
    // PINGREQ with a body.
    assert!(matches!(
        rejects("c0 01 00", ReasonCode::MalformedPacket),
        DecodeError::TrailingBytes { .. }
    ));
    // CONNACK with a byte after its properties.
    assert!(matches!(
        rejects("20 04 00 00 00 00", ReasonCode::MalformedPacket),
        DecodeError::TrailingBytes { .. }
    ));
}

// ---- UTF-8 strings ------------------------------------------------------------------------

#[test]
fn ill_formed_utf8_mqtt_1_5_4_1() {
    // Client Identifier holding an encoded surrogate U+D800 (ED A0 80).
    let e = rejects(
        "10 10 0004 4d515454 05 02 003c 00 0003 eda080",
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(
        e,
        DecodeError::InvalidString {
            error: StringError::InvalidUtf8,
            ..
        }
    ));
    assert_eq!(e.statement(), Some("MQTT-1.5.4-1"));
    // A topic name that is not UTF-8 at all.
    let e = rejects("30 05 0002 ff fe 00", ReasonCode::MalformedPacket);
    assert!(matches!(e, DecodeError::InvalidTopicName { .. }));
}

#[test]
fn null_character_mqtt_1_5_4_2() {
    // User Property name "a\0".
    let e = rejects(
        "30 0c 0001 74 08 26 0002 6100 0001 62",
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(
        e,
        DecodeError::InvalidString {
            error: StringError::NullCharacter,
            ..
        }
    ));
    assert_eq!(e.statement(), Some("MQTT-1.5.4-2"));
    // In a topic name [MQTT-4.7.3-2].
    let e = rejects("30 04 0001 00 00", ReasonCode::MalformedPacket);
    assert_eq!(e.statement(), Some("MQTT-4.7.3-2"));
}

// ---- Properties ---------------------------------------------------------------------------

#[test]
fn property_not_allowed_in_packet_is_malformed() {
    // PUBLISH carrying Session Expiry Interval (a CONNECT/CONNACK/DISCONNECT property).
    let e = rejects("30 09 0001 74 05 11 0000003c", ReasonCode::MalformedPacket);
    assert!(matches!(
        e,
        DecodeError::PropertyNotAllowed {
            name: "Session Expiry Interval",
            ..
        }
    ));
    // SUBSCRIBE carrying a Topic Alias.
    assert!(matches!(
        rejects(
            "82 0a 0001 03 23 0001 0001 61 00",
            ReasonCode::MalformedPacket
        ),
        DecodeError::PropertyNotAllowed { .. }
    ));
    // Will Properties carrying a Topic Alias.
    assert!(matches!(
        rejects(
            "10 17 0004 4d515454 05 06 003c 00 0001 63 03 23 0001 0001 77 0000",
            ReasonCode::MalformedPacket
        ),
        DecodeError::PropertyNotAllowed {
            context: "Will Properties",
            ..
        }
    ));
}

#[test]
fn unknown_property_is_malformed() {
    assert!(matches!(
        rejects("30 06 0001 74 02 7f 00", ReasonCode::MalformedPacket),
        DecodeError::UnknownProperty { id: 0x7f, .. }
    ));
}

#[test]
fn duplicate_property_is_a_protocol_error() {
    // Two Message Expiry Intervals in a PUBLISH.
    assert!(matches!(
        rejects(
            "30 0e 0001 74 0a 02 00000001 02 00000002",
            ReasonCode::ProtocolError
        ),
        DecodeError::DuplicateProperty {
            name: "Message Expiry Interval",
            ..
        }
    ));
    // Two Receive Maximums in a CONNECT.
    assert!(matches!(
        rejects(
            "10 12 0004 4d515454 05 02 003c 06 21 0001 21 0002 0000",
            ReasonCode::ProtocolError
        ),
        DecodeError::DuplicateProperty { .. }
    ));
}

#[test]
fn user_property_and_subscription_identifier_may_repeat() {
    // PUBLISH with two User Properties and two Subscription Identifiers.
    let p =
        common::decode_hex("30 16 0001 74 12 26 0001 61 0001 62 26 0001 61 0001 63 0b 01 0b 02");
    let codec::Packet::Publish(p) = p else {
        panic!()
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers.len(), 2);
}

#[test]
fn user_property_strings_are_checked_mqtt_1_5_7_1() {
    // Both strings of a pair must be UTF-8 Encoded Strings: the value here is not UTF-8.
    let e = rejects(
        "30 0c 0001 74 08 26 0001 61 0002 ff61",
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(
        e,
        DecodeError::InvalidString {
            field: "User Property value",
            error: StringError::InvalidUtf8,
            ..
        }
    ));
    // A value whose length runs past the property block.
    let e = rejects(
        "30 0b 0001 74 07 26 0001 61 0003 62",
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e:?}");
}

#[test]
fn user_properties_between_other_properties_keep_their_order_mqtt_3_3_2_18() {
    // PUBLISH whose User Properties are separated by a Message Expiry Interval and a Content
    // Type: ("a", "b"), expiry 5, ("a", "c"), content type "x", ("d", "e").
    let wire = common::hex(
        "30 22 0001 74 1e 26 0001 61 0001 62 02 00000005 26 0001 61 0001 63 03 0001 78 \
         26 0001 64 0001 65",
    );
    let codec::Packet::Publish(p) = codec::decode_packet(wire.clone(), V5).unwrap() else {
        panic!()
    };
    let pair = |n: &'static str, v: &'static str| {
        UserProperty::new(
            MqttString::from_static(n).unwrap(),
            MqttString::from_static(v).unwrap(),
        )
    };
    let users = UserProperties::from([pair("a", "b"), pair("a", "c"), pair("d", "e")]);
    assert_eq!(p.properties.user_properties, users);
    assert_eq!(p.properties.message_expiry_interval, Some(5));
    assert_eq!(
        p.properties.content_type.as_ref().map(|s| s.as_str()),
        Some("x")
    );
    // Encoding writes the pairs together, still in order; the size is unchanged.
    let packet = codec::Packet::Publish(p);
    let again = packet.to_bytes(V5).unwrap();
    assert_eq!(again.len(), wire.len());
    assert_eq!(codec::decode_packet(again, V5).unwrap(), packet);
}

#[test]
fn pushing_to_decoded_user_properties_leaves_the_packet_alone() {
    // PUBLISH with User Properties ("a", "b") and ("a", "c"): the set is a slice of the packet.
    let wire = common::hex("30 13 0001 74 0e 26 0001 61 0001 62 26 0001 61 0001 63 6d");
    let codec::Packet::Publish(p) = codec::decode_packet(wire.clone(), V5).unwrap() else {
        panic!()
    };
    let mut users = p.properties.user_properties.clone();
    users.try_push("d", "e").unwrap();
    assert_eq!(
        users.iter().collect::<Vec<_>>(),
        [("a", "b"), ("a", "c"), ("d", "e")]
    );
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(codec::Packet::Publish(p).to_bytes(V5).unwrap(), wire);
}

#[test]
fn invalid_property_values_are_protocol_errors() {
    for (hex, name) in [
        // Receive Maximum 0 in CONNECT.
        (
            "10 10 0004 4d515454 05 02 003c 03 21 0000 0000",
            "Receive Maximum",
        ),
        // Maximum Packet Size 0 in CONNECT.
        (
            "10 12 0004 4d515454 05 02 003c 05 27 00000000 0000",
            "Maximum Packet Size",
        ),
        // Request Problem Information 2.
        (
            "10 0f 0004 4d515454 05 02 003c 02 17 02 0000",
            "Request Problem Information",
        ),
        // Maximum QoS 2 in CONNACK.
        ("20 05 00 00 02 24 02", "Maximum QoS"),
        // Retain Available 7 in CONNACK.
        ("20 05 00 00 02 25 07", "Retain Available"),
        // Payload Format Indicator 2 in PUBLISH.
        ("30 06 0001 74 02 01 02", "Payload Format Indicator"),
        // Subscription Identifier 0 in SUBSCRIBE.
        ("82 08 0001 02 0b 00 0001 61 00", "Subscription Identifier"),
    ] {
        let e = rejects(hex, ReasonCode::ProtocolError);
        assert!(
            matches!(e, DecodeError::InvalidPropertyValue { name: n, .. } if n == name),
            "{hex}: {e}"
        );
    }
}

#[test]
fn response_topic_without_wildcards_mqtt_3_3_2_14() {
    let e = rejects("30 09 0001 74 05 08 0002 612b", ReasonCode::ProtocolError);
    assert!(matches!(e, DecodeError::InvalidResponseTopic(_)));
    assert_eq!(e.statement(), Some("MQTT-3.3.2-14"));
}

// ---- PUBLISH ------------------------------------------------------------------------------

#[test]
fn qos_3_mqtt_3_3_1_4() {
    let e = rejects("36 06 0001 74 0001 00", ReasonCode::MalformedPacket);
    assert_eq!(e, DecodeError::InvalidQoS);
    assert_eq!(e.statement(), Some("MQTT-3.3.1-4"));
}

#[test]
fn will_qos_3_is_malformed() {
    // Connect flags 0x1E: Will Flag with Will QoS 3.
    assert_eq!(
        rejects(
            "10 14 0004 4d515454 05 1e 003c 00 0001 63 00 0001 77 0000",
            ReasonCode::MalformedPacket
        ),
        DecodeError::InvalidQoS
    );
}

#[test]
fn dup_on_qos0_mqtt_3_3_1_2() {
    assert_eq!(
        rejects("38 04 0001 74 00", ReasonCode::MalformedPacket),
        DecodeError::DupOnQoS0
    );
}

#[test]
fn packet_id_zero_mqtt_2_2_1_3() {
    for hex in [
        "32 06 0001 74 0000 00", // PUBLISH QoS 1
        "40 02 0000",            // PUBACK
        "50 02 0000",            // PUBREC
        "62 02 0000",            // PUBREL
        "70 02 0000",            // PUBCOMP
        "82 06 0000 00 0001 61 00",
        "90 04 0000 00 00",
        "a2 05 0000 00 0001 61",
        "b0 04 0000 00 00",
    ] {
        let e = rejects(hex, ReasonCode::ProtocolError);
        assert!(matches!(e, DecodeError::ZeroPacketId { .. }), "{hex}");
        assert_eq!(e.statement(), Some("MQTT-2.2.1-3"));
    }
}

#[test]
fn topic_alias_zero_mqtt_3_3_2_8() {
    let e = rejects("30 07 0001 74 03 23 0000", ReasonCode::TopicAliasInvalid);
    assert_eq!(e, DecodeError::TopicAliasZero);
    assert_eq!(e.statement(), Some("MQTT-3.3.2-8"));
}

#[test]
fn wildcards_in_topic_name_mqtt_3_3_2_2() {
    for hex in [
        "30 06 0003 612f2b 00",
        "30 06 0003 612f23 00",
        "30 04 0001 23 00",
    ] {
        let e = rejects(hex, ReasonCode::TopicNameInvalid);
        assert!(matches!(
            e,
            DecodeError::InvalidTopicName {
                error: TopicError::WildcardInName,
                ..
            }
        ));
        assert_eq!(e.statement(), Some("MQTT-3.3.2-2"));
    }
    // A will topic is a topic name too.
    assert!(matches!(
        rejects(
            "10 14 0004 4d515454 05 06 003c 00 0001 63 00 0001 2b 0000",
            ReasonCode::TopicNameInvalid
        ),
        DecodeError::InvalidTopicName { .. }
    ));
}

#[test]
fn empty_topic_needs_a_topic_alias() {
    assert_eq!(
        rejects("30 03 0000 00", ReasonCode::ProtocolError),
        DecodeError::MissingTopicName
    );
}

#[test]
fn payload_format_indicator_utf8_with_invalid_payload() {
    // QoS 1 PUBLISH, packet id 9, Payload Format Indicator 1, payload FF.
    let e = rejects(
        "32 09 0001 74 0009 02 01 01 ff",
        ReasonCode::PayloadFormatInvalid,
    );
    assert_eq!(
        e,
        DecodeError::PayloadFormatInvalid {
            packet: PacketType::Publish,
            packet_id: PacketId::new(9),
        }
    );
    // The receiver can answer with PUBACK 0x99 for that packet id rather than disconnect.
    assert!(e.reason_code().is_valid_for(PacketType::PubAck));
    // In a will: CONNACK 0x99.
    let e = rejects(
        "10 17 0004 4d515454 05 06 003c 00 0001 63 02 01 01 0001 77 0001 ff",
        ReasonCode::PayloadFormatInvalid,
    );
    assert_eq!(
        e,
        DecodeError::PayloadFormatInvalid {
            packet: PacketType::Connect,
            packet_id: None,
        }
    );
    // Without the indicator, any payload is fine.
    common::decode_hex("32 07 0001 74 0009 00 ff");
}

/// Builds a QoS 0 PUBLISH with the given topic bytes, no properties and payload "x".
fn publish_with_topic(topic: &[u8]) -> String {
    let len = 2 + topic.len() + 1 + 1;
    assert!(len < 128);
    let mut s = format!("30 {len:02x} {:04x} ", topic.len());
    for b in topic {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(" 00 78");
    s
}

/// The PUBLISH parser reads the body's bytes directly: every way the body can end early is
/// `Truncated`, never a panic or a misread field.
#[test]
fn publish_truncated_at_every_field() {
    for hex in [
        "30 00",                  // no topic length
        "30 01 00",               // half a topic length
        "30 02 0003",             // topic length, no topic
        "30 03 0001 74",          // no Property Length
        "32 03 0001 74",          // QoS 1: no packet id
        "32 04 0001 74 00",       // QoS 1: half a packet id
        "32 05 0001 74 0001",     // QoS 1: no Property Length
        "30 05 0001 74 05 01",    // Property Length beyond the body
        "30 06 0001 74 03 02 00", // Message Expiry Interval cut short
    ] {
        assert!(
            matches!(
                rejects(hex, ReasonCode::MalformedPacket),
                DecodeError::Truncated {
                    packet: PacketType::Publish
                }
            ),
            "{hex}"
        );
    }
}

/// The checks keep their order: a bad topic is reported before a bad packet id, and a packet id
/// of 0 before a bad property.
#[test]
fn publish_errors_in_field_order() {
    // Topic "+" and packet id 0.
    assert!(matches!(
        rejects("32 06 0001 2b 0000 00", ReasonCode::TopicNameInvalid),
        DecodeError::InvalidTopicName { .. }
    ));
    // Packet id 0 and an unknown property.
    assert!(matches!(
        rejects("32 07 0001 74 0000 01 7f", ReasonCode::ProtocolError),
        DecodeError::ZeroPacketId { .. }
    ));
}

/// The topic check works 8 bytes at a time with an overlapping last word: a wildcard or U+0000 is
/// found at every position of topics of every length up to 40 bytes, and bytes below the fast
/// path's range (space, `!`, `$`, `*`, `,`) or non-ASCII characters are still accepted.
#[test]
fn topic_name_checked_at_every_position() {
    for len in 1..=40usize {
        for pos in 0..len {
            for (bad, statement) in [
                (b'+', "MQTT-3.3.2-2"),
                (b'#', "MQTT-3.3.2-2"),
                (0u8, "MQTT-4.7.3-2"),
            ] {
                let mut topic = vec![b'a'; len];
                topic[pos] = bad;
                let e = reject_hex(&publish_with_topic(&topic));
                assert!(
                    matches!(e, DecodeError::InvalidTopicName { .. }),
                    "len {len} pos {pos} byte {bad:#x}: {e:?}"
                );
                assert_eq!(e.statement(), Some(statement));
            }
            for ok in [b' ', b'!', b'$', b'*', b',', b'/', 0x7f] {
                let mut topic = vec![b'a'; len];
                topic[pos] = ok;
                common::decode_hex(&publish_with_topic(&topic));
            }
        }
        // A two-byte character (U+00E9) ending at the last byte, and an ill-formed lone
        // continuation byte.
        let mut topic = vec![b'a'; len + 1];
        topic[len - 1..].copy_from_slice(&[0xc3, 0xa9]);
        common::decode_hex(&publish_with_topic(&topic));
        let mut topic = vec![b'a'; len];
        topic[len - 1] = 0xa9;
        assert!(matches!(
            rejects(&publish_with_topic(&topic), ReasonCode::MalformedPacket),
            DecodeError::InvalidTopicName {
                error: TopicError::String(StringError::InvalidUtf8),
                ..
            }
        ));
    }
}

// ---- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

#[test]
fn subscribe_without_filters_mqtt_3_8_3_2() {
    let e = rejects("82 03 0001 00", ReasonCode::ProtocolError);
    assert_eq!(e, DecodeError::EmptySubscribe);
    assert_eq!(e.statement(), Some("MQTT-3.8.3-2"));
}

#[test]
fn unsubscribe_without_filters_mqtt_3_10_3_2() {
    let e = rejects("a2 03 0001 00", ReasonCode::ProtocolError);
    assert_eq!(e, DecodeError::EmptyUnsubscribe);
    assert_eq!(e.statement(), Some("MQTT-3.10.3-2"));
}

#[test]
fn reserved_subscription_option_bits_mqtt_3_8_3_5() {
    for opts in ["40", "80", "c1"] {
        let e = rejects(
            &format!("82 07 0001 00 0001 61 {opts}"),
            ReasonCode::MalformedPacket,
        );
        assert!(matches!(e, DecodeError::ReservedSubscriptionOptions(_)));
        assert_eq!(e.statement(), Some("MQTT-3.8.3-5"));
    }
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    assert_eq!(
        rejects("82 07 0001 00 0001 61 30", ReasonCode::ProtocolError),
        DecodeError::InvalidRetainHandling
    );
}

#[test]
fn subscription_qos_3_is_a_protocol_error() {
    assert_eq!(
        rejects("82 07 0001 00 0001 61 03", ReasonCode::ProtocolError),
        DecodeError::InvalidSubscriptionQoS
    );
}

#[test]
fn no_local_on_shared_subscription_mqtt_3_8_3_4() {
    // "$share/g/a" with No Local.
    let e = rejects(
        "82 10 0001 00 000a 2473686172652f672f61 04",
        ReasonCode::ProtocolError,
    );
    assert_eq!(e, DecodeError::NoLocalOnSharedSubscription);
    assert_eq!(e.statement(), Some("MQTT-3.8.3-4"));
}

#[test]
fn invalid_topic_filters_mqtt_4_7_1_1_and_4_7_1_2_and_4_8_2() {
    for (filter_hex, statement) in [
        ("0003 23 2f 61", "MQTT-4.7.1-1"),         // "#/a"
        ("0002 61 2b", "MQTT-4.7.1-2"),            // "a+"
        ("0000", "MQTT-4.7.3-1"),                  // ""
        ("0008 2473686172652f2f", "MQTT-4.8.2-1"), // "$share//"
        ("0008 2473686172652f67", "MQTT-4.8.2-2"), // "$share/g"
    ] {
        let body = common::hex(&format!("0001 00 {filter_hex} 00"));
        let hex = format!(
            "82 {:02x} {}",
            body.len(),
            body.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let e = rejects(&hex, ReasonCode::TopicFilterInvalid);
        assert!(matches!(e, DecodeError::InvalidTopicFilter { .. }), "{hex}");
        assert_eq!(e.statement(), Some(statement), "{hex}");
    }
    // In UNSUBSCRIBE too.
    assert!(matches!(
        rejects("a2 07 0001 00 0002 612b", ReasonCode::TopicFilterInvalid),
        DecodeError::InvalidTopicFilter {
            packet: PacketType::Unsubscribe,
            ..
        }
    ));
}

// ---- CONNECT ------------------------------------------------------------------------------

#[test]
fn connect_reserved_flag_mqtt_3_1_2_3() {
    let e = rejects(
        "10 10 0004 4d515454 05 03 003c 00 0003 616263",
        ReasonCode::MalformedPacket,
    );
    assert_eq!(e, DecodeError::ConnectReservedFlag);
    assert_eq!(e.statement(), Some("MQTT-3.1.2-3"));
}

#[test]
fn will_qos_without_will_flag_mqtt_3_1_2_11() {
    assert_eq!(
        rejects(
            "10 10 0004 4d515454 05 0a 003c 00 0003 616263",
            ReasonCode::MalformedPacket
        ),
        DecodeError::WillFlagsWithoutWill
    );
}

#[test]
fn will_retain_without_will_flag_mqtt_3_1_2_13() {
    assert_eq!(
        rejects(
            "10 10 0004 4d515454 05 22 003c 00 0003 616263",
            ReasonCode::MalformedPacket
        ),
        DecodeError::WillFlagsWithoutWill
    );
}

#[test]
fn will_flag_without_will_fields_mqtt_3_1_2_9() {
    // Will Flag set but the payload ends after the Client Identifier.
    assert!(matches!(
        rejects(
            "10 10 0004 4d515454 05 06 003c 00 0003 616263",
            ReasonCode::MalformedPacket
        ),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn username_flag_without_username_mqtt_3_1_2_17() {
    assert!(matches!(
        rejects(
            "10 10 0004 4d515454 05 82 003c 00 0003 616263",
            ReasonCode::MalformedPacket
        ),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn unsupported_protocol_name_mqtt_3_1_2_1() {
    // "MQIsdp", the MQTT 3.1 name.
    let e = rejects(
        "10 12 0006 4d5149736470 03 02 003c 00 0003 616263",
        ReasonCode::UnsupportedProtocolVersion,
    );
    assert_eq!(e, DecodeError::UnsupportedProtocolName);
    assert!(e.reason_code().is_valid_for(PacketType::ConnAck));
}

#[test]
fn unsupported_protocol_level_mqtt_3_1_2_2() {
    for level in [3u8, 4, 6] {
        let e = rejects(
            &format!("10 10 0004 4d515454 {level:02x} 02 003c 00 0003 616263"),
            ReasonCode::UnsupportedProtocolVersion,
        );
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion(level));
        assert_eq!(e.statement(), Some("MQTT-3.1.2-2"));
    }
}

// ---- CONNACK ------------------------------------------------------------------------------

#[test]
fn connack_reserved_flags_mqtt_3_2_2_1() {
    assert_eq!(
        rejects("20 03 02 00 00", ReasonCode::MalformedPacket),
        DecodeError::ConnAckReservedFlags
    );
}

#[test]
fn connack_session_present_with_failure_mqtt_3_2_2_6() {
    assert_eq!(
        rejects("20 03 01 80 00", ReasonCode::ProtocolError),
        DecodeError::SessionPresentOnFailure
    );
}

// ---- Reason codes -------------------------------------------------------------------------

#[test]
fn reason_codes_not_valid_for_the_packet_type() {
    for hex in [
        "20 03 00 04 00",   // CONNACK with Disconnect with Will Message
        "20 03 00 01 00",   // CONNACK with Granted QoS 1
        "40 03 0001 92",    // PUBACK with Packet Identifier not found
        "50 03 0001 8b",    // PUBREC with Server shutting down
        "62 03 0001 10",    // PUBREL with No matching subscribers
        "70 03 0001 80",    // PUBCOMP with Unspecified error
        "90 04 0001 00 11", // SUBACK with No subscription existed
        "b0 04 0001 00 01", // UNSUBACK with Granted QoS 1
        "e0 01 84",         // DISCONNECT with Unsupported Protocol Version
        "e0 01 03",         // DISCONNECT with an undefined code
        "f0 02 80 00",      // AUTH with Unspecified error
    ] {
        let e = rejects(hex, ReasonCode::MalformedPacket);
        assert!(
            matches!(e, DecodeError::InvalidReasonCode { .. }),
            "{hex}: {e}"
        );
    }
}

#[test]
fn errors_never_consume_a_following_valid_packet_silently() {
    // After a partial packet, nothing is consumed: the bytes stay buffered.
    let mut buf = BytesMut::from(&common::hex("32 08 0001 74")[..]);
    assert_eq!(decode(&mut buf, V5, u32::MAX).unwrap(), None);
    assert_eq!(buf.len(), 5);
}

#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    // CONNECT with Authentication Data (0x16) and no Authentication Method.
    assert_eq!(
        rejects(
            "10 14 0004 4d515454 05 02 003c 04 16 0001 61 0003 616263",
            ReasonCode::ProtocolError
        ),
        DecodeError::AuthenticationDataWithoutMethod
    );
    // The same in CONNACK.
    assert_eq!(
        rejects("20 07 00 00 04 16 0001 61", ReasonCode::ProtocolError),
        DecodeError::AuthenticationDataWithoutMethod
    );
}

/// The streaming decoder reads PUBACK, PUBREC, PUBREL and PUBCOMP without properties, PINGREQ and
/// PINGRESP in place, without making a frame of them; `decode_packet` takes the general path.
/// Every such packet (each type, bodies of 0 to 3 bytes, packet ids 0, 1 and 65,535, every
/// reason code byte) gives the same packet or the same error on both paths, and the streaming
/// decoder consumes the packet either way (packet ids: section 2.2.1; reason codes: section 2.4).
#[test]
fn short_acknowledgements_decode_alike_in_place_and_as_a_frame() {
    let mut bodies: Vec<Vec<u8>> = vec![vec![], vec![0x00]];
    for id in [0u16, 1, 0xFFFF] {
        let [h, l] = id.to_be_bytes();
        bodies.push(vec![h, l]);
        for code in 0..=255u8 {
            bodies.push(vec![h, l, code]);
        }
    }
    let mut checked = 0;
    for first in [0x40u8, 0x50, 0x62, 0x70, 0xC0, 0xD0] {
        for body in &bodies {
            let mut wire = vec![first, body.len() as u8];
            wire.extend_from_slice(body);
            let frame = codec::decode_packet(bytes::Bytes::from(wire.clone()), V5);
            let mut buf = BytesMut::from(&wire[..]);
            buf.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ after it
            let streamed = decode(&mut buf, V5, u32::MAX).map(|p| p.expect("a whole packet"));
            assert_eq!(streamed, frame, "{wire:02x?}");
            assert_eq!(&buf[..], &[0xC0, 0x00], "{wire:02x?} consumed exactly");
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * (2 + 3 * 257));
}

/// `Packet::encode` writes PUBACK, PUBREC, PUBREL and PUBCOMP without properties in one append.
/// For each type, packet ids 1 and 65,535 and every reason code: a code the packet may carry
/// gives the 4-byte form for Success and the 5-byte form otherwise, `encoded_len` agrees, and
/// the general decoder reads the packet back; any other code is refused with nothing written
/// (section 2.4).
#[test]
fn short_acknowledgements_encode_in_one_append_as_the_general_path_reads_them() {
    let mut written = 0;
    for ty in [
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
    ] {
        for id in [1u16, 0xFFFF] {
            for rc in (0..=255u8).filter_map(ReasonCode::from_u8) {
                let ack = codec::PublishAck::with_reason(PacketId::new(id).unwrap(), rc);
                let packet = match ty {
                    PacketType::PubAck => codec::Packet::PubAck(ack),
                    PacketType::PubRec => codec::Packet::PubRec(ack),
                    PacketType::PubRel => codec::Packet::PubRel(ack),
                    _ => codec::Packet::PubComp(ack),
                };
                let mut buf = BytesMut::new();
                match packet.encode(&mut buf, V5) {
                    Ok(()) => {
                        assert!(rc.is_valid_for(ty), "{packet:?}");
                        let len = if rc == ReasonCode::Success { 4 } else { 5 };
                        assert_eq!(buf.len(), len, "{packet:?}");
                        assert_eq!(packet.encoded_len(V5), len);
                        assert_eq!(codec::decode_packet(buf.freeze(), V5).unwrap(), packet);
                        written += 1;
                    }
                    Err(e) => {
                        assert!(!rc.is_valid_for(ty), "{packet:?}: {e:?}");
                        assert_eq!(
                            e,
                            EncodeError::InvalidReasonCode {
                                packet: ty,
                                code: rc
                            }
                        );
                        assert!(buf.is_empty());
                    }
                }
            }
        }
    }
    assert!(written > 40, "{written}");
}
