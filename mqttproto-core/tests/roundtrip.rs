//! Property tests: `decode(encode(p)) == p` for arbitrary packets of all 15 kinds, `encoded_len`
//! agrees with the bytes written, and decoding does not depend on how the input is split.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqttproto_core::codec::*;
use mqttproto_core::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn mqtt_string() -> impl Strategy<Value = MqttString> {
    "\\PC{0,12}".prop_map(|s| MqttString::try_from(s).unwrap())
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-zA-Z0-9/$ é✓_-]{1,16}".prop_map(|s| TopicName::try_from(s).unwrap())
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    (
        vec(prop_oneof!["[a-z0-9$]{0,5}", Just("+".to_string())], 1..4),
        any::<bool>(),
        option::of("[a-z0-9]{1,6}"),
    )
        .prop_map(|(levels, hash, share)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('+');
            }
            if hash {
                f.push_str("/#");
            }
            if let Some(share) = share {
                f = format!("$share/{share}/{f}");
            }
            TopicFilter::try_from(f).unwrap()
        })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|v| PacketId::new(v).unwrap())
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec(
        (mqtt_string(), mqtt_string()).prop_map(|(n, v)| UserProperty::new(n, v)),
        0..3,
    )
    .prop_map(UserProperties::from)
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1u16..).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1u32..).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)]
}

fn sub_id() -> impl Strategy<Value = SubscriptionId> {
    (1u32..=SubscriptionId::MAX).prop_map(|v| SubscriptionId::new(v).unwrap())
}

fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let valid: Vec<ReasonCode> = (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|rc| rc.is_valid_for(packet))
        .collect();
    proptest::sample::select(valid)
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(mqtt_string()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn will() -> impl Strategy<Value = Will> {
    (
        topic_name(),
        "\\PC{0,20}",
        qos(),
        any::<bool>(),
        (
            option::of(any::<u32>()),
            option::of(payload_format()),
            option::of(any::<u32>()),
            option::of(mqtt_string()),
            option::of(topic_name()),
            option::of(binary()),
            user_properties(),
        ),
    )
        .prop_map(|(topic, payload, qos, retain, p)| Will {
            topic,
            // A UTF-8 payload, so that any Payload Format Indicator is honest.
            payload: Bytes::from(payload),
            qos,
            retain,
            properties: WillProperties {
                will_delay_interval: p.0,
                payload_format_indicator: p.1,
                message_expiry_interval: p.2,
                content_type: p.3,
                response_topic: p.4,
                correlation_data: p.5,
                user_properties: p.6,
            },
        })
}

fn connect() -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_string(),
        option::of(will()),
        option::of(mqtt_string()),
        option::of(binary()),
        (
            option::of(any::<u32>()),
            option::of(nz16()),
            option::of(nz32()),
            option::of(any::<u16>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(mqtt_string()),
            option::of(binary()),
            user_properties(),
        ),
    )
        .prop_map(
            |(clean_start, keep_alive, client_id, will, username, password, p)| {
                // Authentication Data needs an Authentication Method (section 3.1.2.11.10).
                let has_method = p.6.is_some();
                Packet::Connect(Box::new(Connect {
                    protocol_version: V5,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: ConnectProperties {
                        session_expiry_interval: p.0,
                        receive_maximum: p.1,
                        maximum_packet_size: p.2,
                        topic_alias_maximum: p.3,
                        request_response_information: p.4,
                        request_problem_information: p.5,
                        authentication_method: p.6,
                        authentication_data: p.7.filter(|_| has_method),
                        user_properties: p.8,
                    },
                }))
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        reason(PacketType::ConnAck),
        (
            option::of(any::<u32>()),
            option::of(nz16()),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(nz32()),
            option::of(mqtt_string()),
            option::of(any::<u16>()),
            option::of(mqtt_string()),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(mqtt_string()),
            option::of(mqtt_string()),
            option::of(mqtt_string()),
            option::of(binary()),
            user_properties(),
        ),
    )
        .prop_map(|(session_present, reason_code, a, b)| {
            let has_method = b.6.is_some();
            Packet::ConnAck(Box::new(ConnAck {
                session_present: session_present && reason_code == ReasonCode::Success,
                reason_code,
                properties: ConnAckProperties {
                    session_expiry_interval: a.0,
                    receive_maximum: a.1,
                    maximum_qos: a.2,
                    retain_available: a.3,
                    maximum_packet_size: a.4,
                    assigned_client_identifier: a.5,
                    topic_alias_maximum: a.6,
                    reason_string: a.7,
                    wildcard_subscription_available: b.0,
                    subscription_identifiers_available: b.1,
                    shared_subscription_available: b.2,
                    server_keep_alive: b.3,
                    response_information: b.4,
                    server_reference: b.5,
                    authentication_method: b.6,
                    authentication_data: b.7.filter(|_| has_method),
                    user_properties: b.8,
                },
            }))
        })
}

fn publish() -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        vec(any::<u8>(), 0..64),
        (
            option::of(any::<u32>()),
            option::of(nz16()),
            any::<bool>(),
            option::of(topic_name()),
            option::of(binary()),
            option::of(mqtt_string()),
            user_properties(),
            vec(sub_id(), 0..3),
            any::<bool>(),
        ),
    )
        .prop_map(|(dup, qos, retain, topic, pid, payload, p)| {
            let aliased = p.1.is_some() && p.2;
            let utf8 = p.8 && std::str::from_utf8(&payload).is_ok();
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic: if aliased { TopicName::empty() } else { topic },
                packet_id: (qos != QoS::AtMostOnce).then_some(pid),
                payload: Bytes::from(payload),
                properties: PublishProperties {
                    payload_format_indicator: utf8.then_some(PayloadFormat::Utf8),
                    message_expiry_interval: p.0,
                    topic_alias: p.1,
                    response_topic: p.3,
                    correlation_data: p.4,
                    content_type: p.5,
                    user_properties: p.6,
                    subscription_identifiers: p.7,
                }
                .into(),
            })
        })
}

fn publish_ack() -> impl Strategy<Value = Packet> {
    (0..4usize, packet_id(), ack_properties(), any::<u8>()).prop_flat_map(
        |(kind, packet_id, properties, _)| {
            let ty = [
                PacketType::PubAck,
                PacketType::PubRec,
                PacketType::PubRel,
                PacketType::PubComp,
            ][kind];
            reason(ty).prop_map(move |reason_code| {
                let ack = PublishAck {
                    packet_id,
                    reason_code,
                    properties: properties.clone(),
                };
                match kind {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                }
            })
        },
    )
}

fn subscription_options() -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        })
}

fn subscribe() -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        option::of(sub_id()),
        user_properties(),
        vec((topic_filter(), subscription_options()), 1..5),
    )
        .prop_map(
            |(packet_id, subscription_identifier, user_properties, subs)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: SubscribeProperties {
                        subscription_identifier,
                        user_properties,
                    },
                    subscriptions: subs
                        .into_iter()
                        .map(|(filter, mut options)| {
                            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                            options.no_local &= !filter.is_shared();
                            Subscription { filter, options }
                        })
                        .collect(),
                })
            },
        )
}

fn suback() -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        ack_properties(),
        vec(reason(PacketType::SubAck), 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
}

fn unsubscribe() -> impl Strategy<Value = Packet> {
    (packet_id(), user_properties(), vec(topic_filter(), 1..5)).prop_map(
        |(packet_id, user_properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: UnsubscribeProperties { user_properties },
                filters,
            })
        },
    )
}

fn unsuback() -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        ack_properties(),
        vec(reason(PacketType::UnsubAck), 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
}

fn disconnect() -> impl Strategy<Value = Packet> {
    (
        reason(PacketType::Disconnect),
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(reason_code, sei, rs, sr, up)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties: DisconnectProperties {
                    session_expiry_interval: sei,
                    reason_string: rs,
                    server_reference: sr,
                    user_properties: up,
                },
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(PacketType::Auth),
        option::of(mqtt_string()),
        option::of(binary()),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(reason_code, m, d, rs, up)| {
            Packet::Auth(Auth {
                reason_code,
                properties: AuthProperties {
                    authentication_method: m,
                    authentication_data: d,
                    reason_string: rs,
                    user_properties: up,
                },
            })
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish(),
        publish_ack(),
        subscribe(),
        suback(),
        unsubscribe(),
        unsuback(),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(),
        auth(),
    ]
}

fn decode_all(input: &[u8], chunks: &[usize]) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (pos + n).min(input.len());
        buf.extend_from_slice(&input[pos..end]);
        pos = end;
        i += 1;
        while let Some(p) = decode(&mut buf, V5, u32::MAX).expect("valid input") {
            out.push(p);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_inverts_encode(p in packet()) {
        let bytes = p.to_bytes(V5).expect("encodable");
        prop_assert_eq!(bytes.len(), p.encoded_len(V5));
        let decoded = decode_packet(bytes.clone(), V5).expect("decodable");
        prop_assert_eq!(&decoded, &p);
        // And the encoding is canonical: re-encoding gives the same bytes.
        prop_assert_eq!(decoded.to_bytes(V5).unwrap(), bytes);
    }

    #[test]
    fn decoding_does_not_depend_on_chunking(
        packets in vec(packet(), 1..6),
        chunks in vec(1usize..40, 1..8),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            p.encode(&mut wire, V5).unwrap();
        }
        let whole = decode_all(&wire, &[wire.len()]);
        let one_byte = decode_all(&wire, &[1]);
        let random = decode_all(&wire, &chunks);
        prop_assert_eq!(&whole, &packets);
        prop_assert_eq!(&one_byte, &packets);
        prop_assert_eq!(&random, &packets);
    }

    #[test]
    fn shrink_to_never_exceeds_and_keeps_application_properties(p in packet(), cut in 0usize..64) {
        let mut q = p.clone();
        let max = p.encoded_len(V5).saturating_sub(cut) as u32;
        let fits = q.shrink_to(max, V5);
        prop_assert_eq!(fits, q.encoded_len(V5) <= max as usize);
        if let (Packet::Publish(a), Packet::Publish(b)) = (&p, &q) {
            // PUBLISH properties belong to the application message [MQTT-3.3.2-17].
            prop_assert_eq!(a, b);
        }
        if fits {
            let bytes = q.to_bytes(V5).unwrap();
            prop_assert!(bytes.len() <= max as usize);
        }
    }
}
