//! Deterministic scenarios: a `Client` talking to a `Session` over an in-memory pipe, on a fake
//! clock. Every scenario runs three times: bytes delivered whole, one byte at a time, and in
//! pseudo-random splits. Each test names the statements it checks.
#![allow(clippy::disallowed_methods)] // one Instant::now() as the fake clock's origin

use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttproto_core::codec::*;
use mqttproto_core::*;

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    OneByte,
    Random(u64),
}

const SPLITS: [Split; 3] = [Split::Whole, Split::OneByte, Split::Random(0x5eed)];

/// A minimal server around one `Session`: accepts CONNECT (resuming a stored session state),
/// grants subscriptions, and acknowledges publishes with success. Everything it saw is recorded.
struct Harness {
    now: Instant,
    split: Split,
    rng: u64,
    client: Client,
    session: Session,
    session_options: SessionOptions,
    connack: ConnAckProperties,
    stored: Option<SessionState>,
    auto_ack_publish: bool,
    client_events: Vec<ClientEvent>,
    session_events: Vec<SessionEvent>,
    client_errors: Vec<Error>,
    session_errors: Vec<Error>,
}

impl Harness {
    fn new(split: Split, options: ClientOptions) -> Harness {
        let now = Instant::now();
        let session_options = SessionOptions::default();
        Harness {
            now,
            split,
            rng: match split {
                Split::Random(seed) => seed,
                _ => 1,
            },
            client: Client::new(options),
            session: Session::new(now, session_options.clone()),
            session_options,
            connack: ConnAckProperties::default(),
            stored: None,
            auto_ack_publish: true,
            client_events: Vec::new(),
            session_events: Vec::new(),
            client_errors: Vec::new(),
            session_errors: Vec::new(),
        }
    }

    fn chunks(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        match self.split {
            Split::Whole => vec![data.to_vec()],
            Split::OneByte => data.iter().map(|b| vec![*b]).collect(),
            Split::Random(_) => {
                let mut out = Vec::new();
                let mut i = 0;
                while i < data.len() {
                    self.rng ^= self.rng << 13;
                    self.rng ^= self.rng >> 7;
                    self.rng ^= self.rng << 17;
                    let n = 1 + (self.rng % 17) as usize;
                    let end = (i + n).min(data.len());
                    out.push(data[i..end].to_vec());
                    i = end;
                }
                out
            }
        }
    }

    /// Moves bytes both ways and lets the server decide, until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                moved = true;
                for c in self.chunks(&b) {
                    if let Err(e) = self.session.handle_bytes(self.now, &c) {
                        self.session_errors.push(e);
                        break;
                    }
                }
            }
            moved |= self.server_decide();
            while let Some(b) = self.session.poll_transmit() {
                moved = true;
                for c in self.chunks(&b) {
                    if let Err(e) = self.client.handle_bytes(self.now, &c) {
                        self.client_errors.push(e);
                        break;
                    }
                }
            }
            while let Some(e) = self.client.poll_event() {
                moved = true;
                self.client_events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn server_decide(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.session.poll_event() {
            any = true;
            match &ev {
                SessionEvent::Connect(c) => {
                    let resume = !c.clean_start && self.stored.is_some();
                    if let Some(state) = self.stored.take() {
                        if resume {
                            self.session.restore_state(state);
                        }
                    }
                    self.session
                        .acknowledge_connect(
                            self.now,
                            ReasonCode::Success,
                            resume,
                            self.connack.clone(),
                        )
                        .unwrap();
                }
                SessionEvent::Subscribe(s) => {
                    let codes = s
                        .subscriptions
                        .iter()
                        .map(|s| ReasonCode::granted(s.options.qos))
                        .collect();
                    self.session
                        .acknowledge_subscribe(
                            self.now,
                            s.packet_id,
                            codes,
                            AckProperties::default(),
                        )
                        .unwrap();
                }
                SessionEvent::Unsubscribe(u) => {
                    let codes = vec![ReasonCode::Success; u.filters.len()];
                    self.session
                        .acknowledge_unsubscribe(
                            self.now,
                            u.packet_id,
                            codes,
                            AckProperties::default(),
                        )
                        .unwrap();
                }
                SessionEvent::Publish(p) => {
                    if let (true, Some(id)) = (self.auto_ack_publish, p.packet_id) {
                        self.session
                            .acknowledge_publish(self.now, id, ReasonCode::Success)
                            .unwrap();
                    }
                }
                _ => {}
            }
            self.session_events.push(ev);
        }
        any
    }

    fn connect(&mut self) {
        self.client.connect(self.now).unwrap();
        self.pump();
        assert_eq!(
            self.client.state(),
            ClientState::Connected,
            "{:?}",
            self.client_events
        );
    }

    /// The transport breaks: both sides see the close; the server keeps the session state.
    fn break_connection(&mut self) {
        self.client.handle_close(self.now);
        self.session.handle_close(self.now);
        while self.session.poll_event().is_some() {}
        self.stored = Some(self.session.take_state());
        self.session = Session::new(self.now, self.session_options.clone());
        // Drop whatever was in flight on the broken transport.
        while self.client.poll_transmit().is_some() {}
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
        self.session.handle_timeout(self.now);
        self.pump();
    }

    fn take_client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }

    fn received_publishes(&self) -> Vec<&Publish> {
        self.session_events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

fn msg(t: &str, payload: &'static [u8], qos: QoS) -> Publish {
    let mut p = Publish::new(topic(t), Bytes::from_static(payload));
    p.qos = qos;
    p
}

fn persistent() -> ClientOptions {
    ClientOptions {
        client_id: MqttString::try_from("c1").unwrap(),
        session_expiry_interval: 300,
        ..Default::default()
    }
}

#[test]
fn connect_and_connack_properties_mqtt_3_1_2_21() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connack = ConnAckProperties {
            assigned_client_identifier: Some(MqttString::try_from("auto-1").unwrap()),
            server_keep_alive: Some(20),
            receive_maximum: NonZeroU16::new(5),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(512),
            ..Default::default()
        };
        h.connect();
        assert_eq!(h.client.client_id(), "auto-1");
        assert_eq!(h.client.keep_alive(), 20, "{split:?}");
        assert_eq!(h.client.server_receive_maximum(), 5);
        assert_eq!(h.client.maximum_qos(), QoS::AtLeastOnce);
        assert!(!h.client.retain_available());
        assert_eq!(h.client.server_maximum_packet_size(), 512);
        assert!(matches!(
            h.take_client_events()[0],
            ClientEvent::Connected(_)
        ));
        // Refused, not silently changed [MQTT-3.2.2-11, MQTT-3.2.2-14, MQTT-3.2.2-15].
        assert!(matches!(
            h.client.publish(h.now, msg("a", b"x", QoS::ExactlyOnce)),
            Err(StateError::QoSNotSupported { .. })
        ));
        let mut r = msg("a", b"x", QoS::AtMostOnce);
        r.retain = true;
        assert_eq!(
            h.client.publish(h.now, r),
            Err(StateError::RetainNotSupported)
        );
        let big = Publish::new(topic("a"), Bytes::from(vec![0u8; 600]));
        assert!(matches!(
            h.client.publish(h.now, big),
            Err(StateError::PacketTooLarge { max: 512, .. })
        ));
    }
}

#[test]
fn qos_0_1_2_publish_flows_client_to_server() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connect();
        h.take_client_events();
        assert_eq!(
            h.client
                .publish(h.now, msg("a/0", b"zero", QoS::AtMostOnce))
                .unwrap(),
            None
        );
        let id1 = h
            .client
            .publish(h.now, msg("a/1", b"one", QoS::AtLeastOnce))
            .unwrap()
            .unwrap();
        let id2 = h
            .client
            .publish(h.now, msg("a/2", b"two", QoS::ExactlyOnce))
            .unwrap()
            .unwrap();
        assert_ne!(id1, id2);
        h.pump();
        let got: Vec<_> = h
            .received_publishes()
            .iter()
            .map(|p| p.payload.clone())
            .collect();
        assert_eq!(got, vec![&b"zero"[..], b"one", b"two"]);
        let completions: Vec<_> = h
            .take_client_events()
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::PublishComplete {
                    packet_id,
                    reason_code,
                    ..
                } => Some((packet_id, reason_code)),
                _ => None,
            })
            .collect();
        assert_eq!(
            completions,
            vec![(id1, ReasonCode::Success), (id2, ReasonCode::Success)],
            "{split:?}"
        );
        assert_eq!(h.client.inflight(), 0);
    }
}

#[test]
fn server_to_client_delivery_with_subscription_identifier() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connect();
        let filter = TopicFilter::try_from("s/#").unwrap();
        let props = SubscribeProperties {
            subscription_identifier: SubscriptionId::new(9),
            ..Default::default()
        };
        h.client
            .subscribe(
                h.now,
                vec![Subscription::new(filter.clone(), QoS::ExactlyOnce)],
                props,
            )
            .unwrap()
            .unwrap();
        h.pump();
        assert!(h.take_client_events().iter().any(|e| matches!(e, ClientEvent::Subscribed { reason_codes, .. } if reason_codes == &vec![ReasonCode::GrantedQoS2])));
        let subs: Vec<_> = h
            .session
            .state()
            .subscriptions()
            .map(|(f, o, id)| (f.clone(), o.qos, id))
            .collect();
        assert_eq!(
            subs,
            vec![(filter, QoS::ExactlyOnce, SubscriptionId::new(9))]
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut p = msg("s/x", b"hi", qos);
            p.properties.subscription_identifiers = vec![SubscriptionId::new(9).unwrap()];
            h.session.publish(h.now, p, None).unwrap();
        }
        h.pump();
        let msgs: Vec<_> = h
            .take_client_events()
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(
            |p| p.properties.subscription_identifiers == vec![SubscriptionId::new(9).unwrap()]
        ));
        let delivered = h
            .session_events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Delivered { .. }))
            .count();
        assert_eq!(delivered, 2, "{split:?}");
        assert_eq!(h.session.inflight(), 0);
    }
}

#[test]
fn receive_maximum_backpressure_client_side_mqtt_4_9_0() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connack.receive_maximum = NonZeroU16::new(2);
        h.auto_ack_publish = false;
        h.connect();
        let ids: Vec<_> = (0..5)
            .map(|_| {
                h.client
                    .publish(h.now, msg("q", b"m", QoS::AtLeastOnce))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        h.pump();
        // Only two are on the wire; three wait in order.
        assert_eq!(h.received_publishes().len(), 2);
        assert_eq!(h.client.inflight(), 2);
        assert_eq!(h.client.queued(), 3);
        for expected_total in [3, 4, 5] {
            let first = h.received_publishes()[expected_total - 3]
                .packet_id
                .unwrap();
            h.session
                .acknowledge_publish(h.now, first, ReasonCode::Success)
                .unwrap();
            h.pump();
            assert_eq!(h.received_publishes().len(), expected_total, "{split:?}");
        }
        let order: Vec<_> = h
            .received_publishes()
            .iter()
            .map(|p| p.packet_id.unwrap())
            .collect();
        assert_eq!(order, ids);
    }
}

#[test]
fn receive_maximum_exceeded_by_peer_is_disconnect_0x93() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connack.receive_maximum = NonZeroU16::new(1);
        h.auto_ack_publish = false;
        h.connect();
        // A misbehaving client: bypass its own window by writing raw PUBLISHes.
        for id in [1u16, 2] {
            let mut p = msg("q", b"m", QoS::AtLeastOnce);
            p.packet_id = PacketId::new(id);
            let bytes = Packet::Publish(p).to_bytes(ProtocolVersion::V5).unwrap();
            let _ = h.session.handle_bytes(h.now, &bytes);
        }
        assert_eq!(
            h.session.error(),
            Some(&Error::Protocol(ProtocolError::ReceiveMaximumExceeded(1)))
        );
        let out = h.session.poll_transmit().unwrap();
        assert_eq!(&out[out.len() - 3..], &[0xE0, 0x01, 0x93]);
    }
}

/// A server that sends more QoS 1/2 messages than the client's Receive Maximum
/// [MQTT-3.3.4-9]: with `strict_receive_maximum` the client disconnects with 0x93; by default it
/// accepts them, delivers each once and counts the overrun.
#[test]
fn server_exceeding_the_clients_receive_maximum_mqtt_3_3_4_9() {
    for strict in [true, false] {
        {
            let split = SPLITS[0];
            let opts = ClientOptions {
                receive_maximum: NonZeroU16::new(2).unwrap(),
                manual_acks: true,
                strict_receive_maximum: strict,
                ..Default::default()
            };
            let mut h = Harness::new(split, opts);
            h.connect();
            // A misbehaving server: raw PUBLISHes past the client's window.
            let mut bytes = Vec::new();
            for id in 1u16..=4 {
                let mut p = msg("q", b"m", QoS::AtLeastOnce);
                p.packet_id = PacketId::new(id);
                bytes.extend_from_slice(&Packet::Publish(p).to_bytes(ProtocolVersion::V5).unwrap());
            }
            let result = h.client.handle_bytes(h.now, &bytes);
            let delivered: Vec<PacketId> = std::iter::from_fn(|| h.client.poll_event())
                .filter_map(|e| match e {
                    ClientEvent::Message(p) => p.packet_id,
                    _ => None,
                })
                .collect();
            if strict {
                assert!(result.is_err(), "{split:?}");
                assert_eq!(delivered.len(), 2, "the first two are delivered");
                let mut out = Vec::new();
                while let Some(b) = h.client.poll_transmit() {
                    out.extend_from_slice(&b);
                }
                assert_eq!(
                    &out[out.len() - 3..],
                    &[0xE0, 0x01, 0x93],
                    "DISCONNECT 0x93"
                );
                assert_eq!(h.client.state(), ClientState::Disconnected);
            } else {
                assert!(result.is_ok(), "{split:?}: {result:?}");
                assert_eq!(delivered.len(), 4, "all four delivered");
                assert_eq!(h.client.receive_maximum_overruns(), 2);
                assert_eq!(h.client.state(), ClientState::Connected);
                // Each is acknowledged once.
                for id in delivered {
                    h.client
                        .acknowledge(h.now, id, ReasonCode::Success)
                        .unwrap();
                    assert!(h
                        .client
                        .acknowledge(h.now, id, ReasonCode::Success)
                        .is_err());
                }
            }
        }
    }
}

#[test]
fn session_receive_maximum_backpressure_server_side() {
    for split in SPLITS {
        let opts = ClientOptions {
            receive_maximum: NonZeroU16::new(2).unwrap(),
            manual_acks: true,
            ..Default::default()
        };
        let mut h = Harness::new(split, opts);
        h.connect();
        for _ in 0..4 {
            h.session
                .publish(h.now, msg("d", b"x", QoS::AtLeastOnce), None)
                .unwrap();
        }
        h.pump();
        let got: Vec<PacketId> = h
            .take_client_events()
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message(p) => p.packet_id,
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(h.session.inflight(), 2);
        h.client
            .acknowledge(h.now, got[0], ReasonCode::Success)
            .unwrap();
        h.pump();
        assert_eq!(h.session.inflight(), 2);
        assert_eq!(h.session.state().queued(), 1, "{split:?}");
    }
}

#[test]
fn session_resume_resends_with_dup_in_order_mqtt_4_4_0_1_and_4_4_0_2() {
    for split in SPLITS {
        let mut h = Harness::new(split, persistent());
        h.auto_ack_publish = false;
        h.connect();
        let a = h
            .client
            .publish(h.now, msg("r", b"a", QoS::AtLeastOnce))
            .unwrap()
            .unwrap();
        let b = h
            .client
            .publish(h.now, msg("r", b"b", QoS::ExactlyOnce))
            .unwrap()
            .unwrap();
        h.pump();
        assert_eq!(h.received_publishes().len(), 2);
        h.break_connection();
        assert_eq!(h.client.state(), ClientState::Disconnected);
        h.session_events.clear();
        h.auto_ack_publish = true;
        h.connect();
        // Both were resent with DUP, same ids, in order. The QoS 1 message is delivered again
        // (at least once); the QoS 2 one is recognised as a duplicate of the message the server
        // application already has and is not delivered twice: it completes when that first
        // delivery is acknowledged.
        let again: Vec<_> = h
            .received_publishes()
            .iter()
            .map(|p| (p.packet_id.unwrap(), p.dup))
            .collect();
        assert_eq!(again, vec![(a, true)], "{split:?}");
        h.session
            .acknowledge_publish(h.now, b, ReasonCode::Success)
            .unwrap();
        h.pump();
        let done = h
            .take_client_events()
            .into_iter()
            .filter(|e| matches!(e, ClientEvent::PublishComplete { .. }))
            .count();
        assert_eq!(done, 2);
    }
}

#[test]
fn qos2_exactly_once_across_disconnect_in_each_state() {
    // The server (receiver) breaks at each point of the QoS 2 flow; the message reaches the
    // application exactly once.
    for split in SPLITS {
        for break_after in ["publish", "pubrec", "pubrel"] {
            let mut h = Harness::new(split, persistent());
            h.connect();
            h.client
                .publish(h.now, msg("x", b"once", QoS::ExactlyOnce))
                .unwrap();
            // Deliver the PUBLISH only.
            let publish_bytes = h.client.poll_transmit().unwrap();
            h.session.handle_bytes(h.now, &publish_bytes).unwrap();
            h.server_decide();
            let pubrec = h.session.poll_transmit().unwrap();
            if break_after != "publish" {
                h.client.handle_bytes(h.now, &pubrec).unwrap();
                let pubrel = h.client.poll_transmit().unwrap();
                if break_after == "pubrel" {
                    h.session.handle_bytes(h.now, &pubrel).unwrap();
                    // PUBCOMP is lost with the connection.
                    let _ = h.session.poll_transmit();
                }
            }
            h.break_connection();
            h.connect();
            h.pump();
            let n = h.received_publishes().len();
            assert_eq!(n, 1, "{split:?} {break_after}");
            assert_eq!(h.client.inflight(), 0, "{split:?} {break_after}");
            // One completion, successful. When only the PUBCOMP was lost, the server already
            // forgot the id and answers the resent PUBREL with 0x92, "not an error during
            // recovery" (section 3.7.2.1): the message was accepted at PUBREC and delivered
            // once, so the publish reports success.
            let done: Vec<_> = h
                .take_client_events()
                .into_iter()
                .filter_map(|e| match e {
                    ClientEvent::PublishComplete { reason_code, .. } => Some(reason_code),
                    _ => None,
                })
                .collect();
            assert_eq!(done, vec![ReasonCode::Success], "{split:?} {break_after}");
        }
    }
}

#[test]
fn qos2_duplicate_publish_while_pubrec_outstanding_is_delivered_once() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.connect();
    h.take_client_events();
    let mut p = msg("d", b"dup", QoS::ExactlyOnce);
    p.packet_id = PacketId::new(77);
    h.session
        .publish(h.now, msg("d", b"dup", QoS::ExactlyOnce), None)
        .unwrap();
    let wire = h.session.poll_transmit().unwrap();
    h.client.handle_bytes(h.now, &wire).unwrap();
    // The same PUBLISH again, with DUP, before PUBREL.
    let mut dup = wire.to_vec();
    dup[0] |= 0x08;
    h.client.handle_bytes(h.now, &dup).unwrap();
    let msgs = std::iter::from_fn(|| h.client.poll_event())
        .filter(|e| matches!(e, ClientEvent::Message(_)))
        .count();
    assert_eq!(msgs, 1);
    // Both PUBLISHes were answered with PUBREC.
    let out = h.client.poll_transmit().unwrap();
    assert_eq!(out.len(), 8);
}

#[test]
fn pubrel_for_unknown_id_is_answered_with_0x92() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.connect();
    h.client
        .handle_bytes(h.now, &[0x62, 0x02, 0x00, 0x05])
        .unwrap();
    let out = h.client.poll_transmit().unwrap();
    assert_eq!(&out[..], &[0x70, 0x03, 0x00, 0x05, 0x92]);
}

#[test]
fn session_lost_resubscribes_and_resends_mqtt_3_2_2_5() {
    for split in SPLITS {
        let mut h = Harness::new(split, persistent());
        h.auto_ack_publish = false;
        h.connect();
        let f = TopicFilter::try_from("t/+").unwrap();
        h.client
            .subscribe(
                h.now,
                vec![Subscription::new(f.clone(), QoS::AtLeastOnce)],
                Default::default(),
            )
            .unwrap();
        h.pump();
        let id = h
            .client
            .publish(h.now, msg("t/1", b"keep", QoS::AtLeastOnce))
            .unwrap()
            .unwrap();
        h.pump();
        h.break_connection();
        h.stored = None; // the server lost the session
        h.session_events.clear();
        h.auto_ack_publish = true;
        h.take_client_events();
        h.connect();
        let evs = h.take_client_events();
        assert!(
            evs.iter().any(|e| matches!(e, ClientEvent::SessionLost)),
            "{split:?}"
        );
        // Re-subscribed by itself, and the unacknowledged message was sent again.
        assert!(h
            .session_events
            .iter()
            .any(|e| matches!(e, SessionEvent::Subscribe(s) if s.subscriptions[0].filter == f)));
        let again: Vec<_> = h
            .received_publishes()
            .iter()
            .map(|p| (p.packet_id.unwrap(), p.dup))
            .collect();
        assert_eq!(again, vec![(id, false)]);
        assert!(evs.iter().any(
            |e| matches!(e, ClientEvent::PublishComplete { packet_id, .. } if *packet_id == id)
        ));
        assert_eq!(h.client.subscription_refs(&f), 1);
    }
}

#[test]
fn subscriptions_are_reference_counted() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.connect();
    let f = TopicFilter::try_from("rc/#").unwrap();
    let sub = || {
        vec![Subscription::new(
            TopicFilter::try_from("rc/#").unwrap(),
            QoS::AtLeastOnce,
        )]
    };
    assert!(h
        .client
        .subscribe(h.now, sub(), Default::default())
        .unwrap()
        .is_some());
    h.pump();
    assert!(h
        .client
        .subscribe(h.now, sub(), Default::default())
        .unwrap()
        .is_none());
    assert_eq!(h.client.subscription_refs(&f), 2);
    assert!(h
        .client
        .unsubscribe(h.now, vec![f.clone()], Default::default())
        .unwrap()
        .is_none());
    assert!(h
        .client
        .unsubscribe(h.now, vec![f.clone()], Default::default())
        .unwrap()
        .is_some());
    h.pump();
    let subs = h
        .session_events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Subscribe(_)))
        .count();
    let unsubs = h
        .session_events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Unsubscribe(_)))
        .count();
    assert_eq!((subs, unsubs), (1, 1));
    assert_eq!(h.session.state().subscriptions().count(), 0);
}

#[test]
fn client_keep_alive_pings_and_detects_silence_mqtt_3_1_2_20() {
    for split in SPLITS {
        let opts = ClientOptions {
            keep_alive: 10,
            ping_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let mut h = Harness::new(split, opts);
        h.connect();
        let t = h.client.poll_timeout().unwrap();
        assert_eq!(t - h.now, Duration::from_secs(10));
        h.advance(Duration::from_secs(10));
        // PINGREQ went out and PINGRESP came back: still connected.
        assert_eq!(h.client.state(), ClientState::Connected);
        // Now the server goes silent: the next PINGREQ gets no answer.
        h.now += Duration::from_secs(10);
        h.client.handle_timeout(h.now);
        assert_eq!(&h.client.poll_transmit().unwrap()[..], &[0xC0, 0x00]); // never delivered
        assert_eq!(
            h.client.poll_timeout(),
            Some(h.now + Duration::from_secs(5))
        );
        h.now += Duration::from_secs(5);
        h.client.handle_timeout(h.now);
        assert_eq!(h.client.state(), ClientState::Disconnected, "{split:?}");
        assert_eq!(h.client.error(), Some(&Error::KeepAliveTimeout));
    }
}

#[test]
fn server_keep_alive_closes_after_one_and_a_half_periods_mqtt_3_1_2_22() {
    let opts = ClientOptions {
        keep_alive: 10,
        ..Default::default()
    };
    let mut h = Harness::new(Split::Whole, opts);
    h.connect();
    assert_eq!(
        h.session.poll_timeout().unwrap() - h.now,
        Duration::from_secs(15)
    );
    h.now += Duration::from_secs(14);
    h.session.handle_timeout(h.now);
    assert_eq!(h.session.phase(), SessionPhase::Connected);
    h.now += Duration::from_secs(1);
    h.session.handle_timeout(h.now);
    assert_eq!(h.session.phase(), SessionPhase::Closed);
    assert_eq!(h.session.error(), Some(&Error::KeepAliveTimeout));
    assert_eq!(&h.session.poll_transmit().unwrap()[..], &[0xE0, 0x01, 0x8D]);
}

#[test]
fn connect_timeout_closes_a_silent_socket() {
    let now = Instant::now();
    let mut s = Session::new(now, SessionOptions::default());
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(s.phase(), SessionPhase::Closed);
    assert_eq!(s.error(), Some(&Error::ConnectTimeout));
    // No DISCONNECT before CONNACK [MQTT-3.14.0-1].
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn malformed_input_gets_disconnect_and_a_sticky_error() {
    for split in SPLITS {
        let mut h = Harness::new(split, ClientOptions::default());
        h.connect();
        // PUBLISH with QoS 3 from the server.
        let e = h
            .client
            .handle_bytes(h.now, &[0x36, 0x04, 0x00, 0x01, 0x74, 0x00])
            .unwrap_err();
        assert_eq!(e, Error::Decode(DecodeError::InvalidQoS));
        assert_eq!(&h.client.poll_transmit().unwrap()[..], &[0xE0, 0x01, 0x81]);
        // Sticky: later input gets the same error.
        assert_eq!(h.client.handle_bytes(h.now, &[0xD0, 0x00]).unwrap_err(), e);
        assert!(matches!(
            h.client.publish(h.now, msg("a", b"", QoS::AtMostOnce)),
            Err(StateError::Failed(_))
        ));
    }
}

#[test]
fn unsupported_protocol_version_gets_connack_0x84_mqtt_3_1_2_2() {
    let now = Instant::now();
    let mut s = Session::new(now, SessionOptions::default());
    // CONNECT with protocol level 4.
    let e = s
        .handle_bytes(
            now,
            &[
                0x10, 0x0f, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'a', b'b', b'c',
            ][..],
        )
        .unwrap_err();
    assert_eq!(e, Error::Decode(DecodeError::UnsupportedProtocolVersion(4)));
    assert_eq!(
        &s.poll_transmit().unwrap()[..],
        &[0x20, 0x03, 0x00, 0x84, 0x00]
    );
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let now = Instant::now();
    let mut s = Session::new(now, SessionOptions::default());
    assert!(matches!(
        s.handle_bytes(now, &[0xC0, 0x00]),
        Err(Error::Protocol(ProtocolError::UnexpectedPacket { .. }))
    ));
    assert_eq!(s.phase(), SessionPhase::Closed);
}

#[test]
fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.connect();
    let connect = Packet::Connect(Box::default())
        .to_bytes(ProtocolVersion::V5)
        .unwrap();
    let e = h.session.handle_bytes(h.now, &connect).unwrap_err();
    assert!(matches!(
        e,
        Error::Protocol(ProtocolError::UnexpectedPacket {
            packet: PacketType::Connect,
            ..
        })
    ));
    assert_eq!(&h.session.poll_transmit().unwrap()[..], &[0xE0, 0x01, 0x82]);
}

#[test]
fn topic_aliases_both_ways() {
    for split in SPLITS {
        let opts = ClientOptions {
            outbound_topic_aliases: true,
            topic_alias_maximum: 4,
            ..Default::default()
        };
        let mut h = Harness::new(split, opts);
        h.connack.topic_alias_maximum = Some(8);
        h.connect();
        for _ in 0..3 {
            h.client
                .publish(h.now, msg("long/topic/name", b"p", QoS::AtMostOnce))
                .unwrap();
        }
        h.pump();
        // The server resolved every alias to the topic.
        let topics: Vec<_> = h
            .received_publishes()
            .iter()
            .map(|p| p.topic.as_str().to_string())
            .collect();
        assert_eq!(topics, vec!["long/topic/name"; 3], "{split:?}");
        // An alias above our maximum from the server: DISCONNECT 0x94 [MQTT-3.3.2-10].
        let mut p = msg("x", b"", QoS::AtMostOnce);
        p.properties.topic_alias = NonZeroU16::new(5);
        let bytes = Packet::Publish(p).to_bytes(ProtocolVersion::V5).unwrap();
        let e = h.client.handle_bytes(h.now, &bytes).unwrap_err();
        assert_eq!(
            e,
            Error::Protocol(ProtocolError::TopicAliasOutOfRange { alias: 5, max: 4 })
        );
        assert_eq!(&h.client.poll_transmit().unwrap()[..], &[0xE0, 0x01, 0x94]);
    }
}

#[test]
fn server_discards_publish_too_large_for_client_mqtt_3_1_2_25() {
    let opts = ClientOptions {
        maximum_packet_size: NonZeroU32::new(64),
        ..Default::default()
    };
    let mut h = Harness::new(Split::Whole, opts);
    h.connect();
    h.take_client_events();
    h.session
        .publish(h.now, Publish::new(topic("big"), vec![1u8; 100]), None)
        .unwrap();
    h.session
        .publish(h.now, msg("small", b"ok", QoS::AtMostOnce), None)
        .unwrap();
    h.pump();
    let msgs: Vec<_> = h
        .take_client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Message(p) => Some(p.topic.as_str().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(msgs, vec!["small"]);
    assert_eq!(h.session.dropped(), 1);
}

#[test]
fn message_expiry_drops_and_forwards_remaining_interval_mqtt_3_3_2_5_and_3_3_2_6() {
    let mut h = Harness::new(Split::Whole, persistent());
    h.connect();
    h.break_connection();
    // Offline: two messages queued, expiring in 10 s and 100 s.
    let mut a = msg("e", b"short", QoS::AtLeastOnce);
    a.properties.message_expiry_interval = Some(10);
    let mut b = msg("e", b"long", QoS::AtLeastOnce);
    b.properties.message_expiry_interval = Some(100);
    let state = h.stored.take().unwrap();
    let mut offline = Session::new(h.now, SessionOptions::default());
    offline.restore_state(state);
    offline
        .publish(h.now, a, Some(h.now + Duration::from_secs(10)))
        .unwrap();
    offline
        .publish(h.now, b, Some(h.now + Duration::from_secs(100)))
        .unwrap();
    h.stored = Some(offline.take_state());
    h.now += Duration::from_secs(30);
    h.take_client_events();
    h.connect();
    let msgs: Vec<_> = h
        .take_client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Message(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].payload[..], b"long");
    assert_eq!(msgs[0].properties.message_expiry_interval, Some(70));
}

#[test]
fn offline_queue_is_bounded_and_drops_qos0_first() {
    let now = Instant::now();
    let mut s = Session::new(
        now,
        SessionOptions {
            max_queued_messages: 2,
            ..Default::default()
        },
    );
    s.publish(now, msg("q", b"0", QoS::AtMostOnce), None)
        .unwrap();
    s.publish(now, msg("q", b"1", QoS::AtLeastOnce), None)
        .unwrap();
    // Full: the QoS 0 message makes room.
    s.publish(now, msg("q", b"2", QoS::AtLeastOnce), None)
        .unwrap();
    assert_eq!(s.state().queued(), 2);
    assert_eq!(s.dropped(), 1);
    // Full of QoS 1: a new QoS 1 message is refused, not silently lost.
    assert_eq!(
        s.publish(now, msg("q", b"3", QoS::AtLeastOnce), None),
        Err(StateError::QueueFull)
    );
}

#[test]
fn disconnect_with_session_expiry_rules() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.connect();
    // CONNECT had Session Expiry 0: a non-zero value on DISCONNECT is refused locally.
    assert_eq!(
        h.client.disconnect(h.now, ReasonCode::Success, Some(10)),
        Err(StateError::InvalidSessionExpiry)
    );
    h.client
        .disconnect(h.now, ReasonCode::DisconnectWithWillMessage, None)
        .unwrap();
    h.pump();
    assert!(h.session_events.iter().any(|e| matches!(e, SessionEvent::Disconnected { disconnect: Some(d), .. } if d.reason_code == ReasonCode::DisconnectWithWillMessage)));
    assert_eq!(h.client.state(), ClientState::Disconnected);
}

#[test]
fn enhanced_authentication_exchange() {
    let opts = ClientOptions {
        authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
        authentication_data: Some(Bytes::from_static(b"hello")),
        ..Default::default()
    };
    let mut h = Harness::new(Split::Whole, opts);
    h.client.connect(h.now).unwrap();
    let b = h.client.poll_transmit().unwrap();
    h.session.handle_bytes(h.now, &b).unwrap();
    assert!(matches!(
        h.session.poll_event(),
        Some(SessionEvent::Connect(_))
    ));
    // Challenge.
    h.session
        .send_auth(
            h.now,
            ReasonCode::ContinueAuthentication,
            Some(Bytes::from_static(b"nonce")),
        )
        .unwrap();
    let b = h.session.poll_transmit().unwrap();
    h.client.handle_bytes(h.now, &b).unwrap();
    assert!(
        matches!(h.client.poll_event(), Some(ClientEvent::Auth(a)) if a.properties.authentication_data.as_deref() == Some(&b"nonce"[..]))
    );
    h.client
        .authenticate(h.now, Some(Bytes::from_static(b"answer")))
        .unwrap();
    let b = h.client.poll_transmit().unwrap();
    h.session.handle_bytes(h.now, &b).unwrap();
    assert!(
        matches!(h.session.poll_event(), Some(SessionEvent::Auth(a)) if a.properties.authentication_data.as_deref() == Some(&b"answer"[..]))
    );
    h.session
        .acknowledge_connect(
            h.now,
            ReasonCode::Success,
            false,
            ConnAckProperties {
                authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
    let b = h.session.poll_transmit().unwrap();
    h.client.handle_bytes(h.now, &b).unwrap();
    assert_eq!(h.client.state(), ClientState::Connected);
    while h.client.poll_event().is_some() {}
    // Re-authentication.
    h.client
        .reauthenticate(h.now, Some(Bytes::from_static(b"again")))
        .unwrap();
    let b = h.client.poll_transmit().unwrap();
    h.session.handle_bytes(h.now, &b).unwrap();
    assert!(
        matches!(h.session.poll_event(), Some(SessionEvent::Auth(a)) if a.reason_code == ReasonCode::ReAuthenticate)
    );
    h.session
        .send_auth(h.now, ReasonCode::Success, None)
        .unwrap();
    let b = h.session.poll_transmit().unwrap();
    h.client.handle_bytes(h.now, &b).unwrap();
    assert!(
        matches!(h.client.poll_event(), Some(ClientEvent::Auth(a)) if a.reason_code == ReasonCode::Success)
    );
}

#[test]
fn pipelined_packets_after_connect_wait_for_the_decision() {
    let mut h = Harness::new(Split::Whole, ClientOptions::default());
    h.client.connect(h.now).unwrap();
    let mut bytes = h.client.poll_transmit().unwrap().to_vec();
    // A QoS 0 PUBLISH written right after CONNECT, before CONNACK.
    bytes.extend_from_slice(
        &Packet::Publish(msg("early", b"e", QoS::AtMostOnce))
            .to_bytes(ProtocolVersion::V5)
            .unwrap(),
    );
    h.session.handle_bytes(h.now, &bytes).unwrap();
    assert!(matches!(
        h.session.poll_event(),
        Some(SessionEvent::Connect(_))
    ));
    assert_eq!(h.session.poll_event(), None);
    h.session
        .acknowledge_connect(h.now, ReasonCode::Success, false, Default::default())
        .unwrap();
    assert!(
        matches!(h.session.poll_event(), Some(SessionEvent::Publish(p)) if p.topic.as_str() == "early")
    );
}

#[test]
fn refused_connection_is_reported() {
    let now = Instant::now();
    let mut c = Client::new(ClientOptions::default());
    c.connect(now).unwrap();
    c.poll_transmit().unwrap();
    c.handle_bytes(now, &[0x20, 0x03, 0x00, 0x86, 0x00])
        .unwrap();
    assert!(
        matches!(c.poll_event(), Some(ClientEvent::Refused(a)) if a.reason_code == ReasonCode::BadUserNameOrPassword)
    );
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Disconnected {
            error: Error::ClosedByPeer(ReasonCode::BadUserNameOrPassword),
            ..
        })
    ));
    assert_eq!(c.state(), ClientState::Disconnected);
}

/// What a client with (or without) an Authentication Method makes of CONNACKs and AUTHs that
/// break the rules of section 4.12: the connection ends with DISCONNECT and the matching code.
#[test]
fn client_checks_the_authentication_method_mqtt_4_12_0_5_and_4_12_0_6() {
    let token = || MqttString::try_from("TOKEN").unwrap();
    // (client's method, CONNACK's method, expected DISCONNECT reason)
    let cases = [
        (
            Some(token()),
            None,
            Some(ReasonCode::BadAuthenticationMethod),
        ),
        (
            Some(token()),
            Some(MqttString::try_from("OTHER").unwrap()),
            Some(ReasonCode::BadAuthenticationMethod),
        ),
        (
            None,
            Some(token()),
            Some(ReasonCode::BadAuthenticationMethod),
        ),
        (Some(token()), Some(token()), None),
        (None, None, None),
    ];
    for (ours, theirs, expected) in cases {
        let mut client = Client::new(ClientOptions {
            authentication_method: ours.clone(),
            ..Default::default()
        });
        let now = Instant::now();
        client.connect(now).unwrap();
        while client.poll_transmit().is_some() {}
        let connack = Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties {
                authentication_method: theirs.clone(),
                ..Default::default()
            },
        }))
        .to_bytes(ProtocolVersion::V5)
        .unwrap();
        let result = client.handle_bytes(now, &connack);
        let mut out = Vec::new();
        while let Some(b) = client.poll_transmit() {
            out.extend_from_slice(&b);
        }
        match expected {
            Some(code) => {
                assert!(result.is_err(), "{ours:?} / {theirs:?}");
                assert_eq!(&out[..], &[0xE0, 0x01, code as u8], "{ours:?} / {theirs:?}");
                assert_eq!(client.state(), ClientState::Disconnected);
            }
            None => {
                assert!(result.is_ok(), "{ours:?} / {theirs:?}: {result:?}");
                assert_eq!(client.state(), ClientState::Connected);
            }
        }
    }
}

/// Once connected, AUTH 0x18 is only part of a re-authentication the client started
/// [MQTT-4.12.1-1]; unsolicited, it is a protocol error.
#[test]
fn unsolicited_auth_after_connack_is_a_protocol_error_mqtt_4_12_1_1() {
    let opts = ClientOptions {
        authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
        ..Default::default()
    };
    let mut h = Harness::new(Split::Whole, opts);
    h.client.connect(h.now).unwrap();
    let b = h.client.poll_transmit().unwrap();
    h.session.handle_bytes(h.now, &b).unwrap();
    while h.session.poll_event().is_some() {}
    h.session
        .acknowledge_connect(
            h.now,
            ReasonCode::Success,
            false,
            ConnAckProperties {
                authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
    let b = h.session.poll_transmit().unwrap();
    h.client.handle_bytes(h.now, &b).unwrap();
    assert_eq!(h.client.state(), ClientState::Connected);
    while h.client.poll_transmit().is_some() {}
    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
            ..Default::default()
        },
    })
    .to_bytes(ProtocolVersion::V5)
    .unwrap();
    assert!(h.client.handle_bytes(h.now, &auth).is_err());
    let out = h.client.poll_transmit().unwrap();
    assert_eq!(&out[..], &[0xE0, 0x01, 0x82]);
}
