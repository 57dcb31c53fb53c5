//! Deterministic broker scenarios: several `Client`s talking to one `Broker` over in-memory
//! pipes, on a fake clock. Every scenario runs with input fed whole, one byte at a time, and in
//! pseudo-random splits. Each test names the statements it checks.
#![allow(clippy::disallowed_methods)] // one Instant::now() as the fake clock's origin

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttproto_core::broker::{Broker, BrokerEvent, BrokerOptions, ConnectionHandle};
use mqttproto_core::codec::*;
use mqttproto_core::*;

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    OneByte,
    Random(u64),
}

const SPLITS: [Split; 3] = [Split::Whole, Split::OneByte, Split::Random(0xfeed)];

struct Peer {
    client: Client,
    handle: Option<ConnectionHandle>,
    events: Vec<ClientEvent>,
}

struct World {
    now: Instant,
    split: Split,
    rng: u64,
    broker: Broker,
    peers: HashMap<&'static str, Peer>,
    /// Connect decisions: client id → reason code (default Success).
    refuse: HashMap<String, ReasonCode>,
    /// With `authorize`: topics denied for publish and filters denied for subscribe.
    deny: Vec<&'static str>,
    closed: Vec<ConnectionHandle>,
    /// Hold CONNECT and AUTH events in `held` for the test to answer (enhanced
    /// authentication), instead of accepting every CONNECT at once.
    hold: bool,
    held: Vec<BrokerEvent>,
    /// With `authorize`: the application adds Subscription Identifier 99 to every PUBLISH it
    /// lets through (what a subscriber gets must not depend on it).
    stamp_ids: bool,
}

impl World {
    fn new(split: Split, options: BrokerOptions) -> World {
        World {
            now: Instant::now(),
            split,
            rng: match split {
                Split::Random(s) => s,
                _ => 1,
            },
            broker: Broker::new(options),
            peers: HashMap::new(),
            refuse: HashMap::new(),
            deny: Vec::new(),
            closed: Vec::new(),
            hold: false,
            held: Vec::new(),
            stamp_ids: false,
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
                    let end = (i + 1 + (self.rng % 23) as usize).min(data.len());
                    out.push(data[i..end].to_vec());
                    i = end;
                }
                out
            }
        }
    }

    fn add(&mut self, name: &'static str, options: ClientOptions) {
        self.peers.insert(
            name,
            Peer {
                client: Client::new(options),
                handle: None,
                events: Vec::new(),
            },
        );
    }

    fn connect(&mut self, name: &'static str) {
        let handle = self.broker.accept(self.now);
        let peer = self.peers.get_mut(name).unwrap();
        peer.handle = Some(handle);
        peer.client.connect(self.now).unwrap();
        self.pump();
    }

    fn client(&mut self, name: &'static str) -> &mut Client {
        &mut self.peers.get_mut(name).unwrap().client
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let names: Vec<_> = self.peers.keys().copied().collect();
            for name in &names {
                let Some(h) = self.peers[name].handle else {
                    continue;
                };
                while let Some(b) = self.peers.get_mut(name).unwrap().client.poll_transmit() {
                    moved = true;
                    for c in self.chunks(&b) {
                        if self.broker.handle_bytes(self.now, h, &c).is_err() {
                            break;
                        }
                    }
                }
            }
            moved |= self.flush_broker_output();
            // Events after transmits: a connection's last bytes come before its Closed event.
            while let Some(ev) = self.broker.poll_event() {
                moved = true;
                self.decide(ev);
            }
            for name in &names {
                let p = self.peers.get_mut(name).unwrap();
                while let Some(e) = p.client.poll_event() {
                    moved = true;
                    p.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Delivers everything the broker wrote; returns whether anything moved.
    fn flush_broker_output(&mut self) -> bool {
        let mut moved = false;
        while let Some((h, b)) = self.broker.poll_transmit() {
            moved = true;
            let Some(name) = self
                .peers
                .iter()
                .find(|(_, p)| p.handle == Some(h))
                .map(|(n, _)| *n)
            else {
                continue;
            };
            for c in self.chunks(&b) {
                let now = self.now;
                if self
                    .peers
                    .get_mut(name)
                    .unwrap()
                    .client
                    .handle_bytes(now, &c)
                    .is_err()
                {
                    break;
                }
            }
        }
        moved
    }

    fn decide(&mut self, ev: BrokerEvent) {
        match ev {
            BrokerEvent::Connect { .. } | BrokerEvent::Auth { .. } if self.hold => {
                self.held.push(ev);
            }
            BrokerEvent::Connect { handle, connect } => {
                let rc = self
                    .refuse
                    .get(connect.client_id.as_str())
                    .copied()
                    .unwrap_or(ReasonCode::Success);
                self.broker
                    .acknowledge_connect(self.now, handle, rc)
                    .unwrap();
            }
            BrokerEvent::Subscribe {
                handle, subscribe, ..
            } => {
                let verdicts = subscribe
                    .subscriptions
                    .iter()
                    .map(|s| {
                        if self.deny.contains(&s.filter.as_str()) {
                            ReasonCode::NotAuthorized
                        } else {
                            ReasonCode::Success
                        }
                    })
                    .collect();
                self.broker
                    .acknowledge_subscribe(self.now, handle, subscribe, verdicts)
                    .unwrap();
            }
            BrokerEvent::Publish {
                handle,
                mut publish,
                ..
            } => {
                if self.stamp_ids {
                    publish
                        .properties
                        .subscription_identifiers
                        .push(SubscriptionId::new(99).unwrap());
                }
                let v = if self.deny.contains(&publish.topic.as_str()) {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::Success
                };
                self.broker
                    .acknowledge_publish(self.now, handle, publish, v)
                    .unwrap();
            }
            BrokerEvent::Closed { handle, .. } => {
                // As a driver does: write the connection's last bytes, then close it.
                self.flush_broker_output();
                self.closed.push(handle);
                for p in self.peers.values_mut() {
                    if p.handle == Some(handle) {
                        p.handle = None;
                        p.client.handle_close(self.now);
                    }
                }
            }
            BrokerEvent::Auth { .. } => {}
        }
    }

    /// The client's transport breaks (both sides notice).
    fn cut(&mut self, name: &'static str) {
        let now = self.now;
        let p = self.peers.get_mut(name).unwrap();
        p.client.handle_close(now);
        while p.client.poll_transmit().is_some() {}
        if let Some(h) = p.handle.take() {
            self.broker.handle_close(now, h);
        }
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for p in self.peers.values_mut() {
            p.client.handle_timeout(now);
        }
        self.broker.handle_timeout(now);
        self.pump();
    }

    fn subscribe(
        &mut self,
        name: &'static str,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        let now = self.now;
        let sub = Subscription {
            filter: TopicFilter::try_from(filter).unwrap(),
            options,
        };
        let props = SubscribeProperties {
            subscription_identifier: id.and_then(SubscriptionId::new),
            ..Default::default()
        };
        self.client(name).subscribe(now, vec![sub], props).unwrap();
        self.pump();
    }

    fn publish(
        &mut self,
        name: &'static str,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        retain: bool,
    ) -> Option<PacketId> {
        let now = self.now;
        let mut p = Publish::new(
            TopicName::try_from(topic).unwrap(),
            Bytes::from_static(payload),
        );
        p.qos = qos;
        p.retain = retain;
        let id = self.client(name).publish(now, p).unwrap();
        self.pump();
        id
    }

    fn messages(&mut self, name: &'static str) -> Vec<Publish> {
        let p = self.peers.get_mut(name).unwrap();
        let mut out = Vec::new();
        p.events.retain(|e| match e {
            ClientEvent::Message(m) => {
                out.push(m.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn events(&mut self, name: &'static str) -> Vec<ClientEvent> {
        std::mem::take(&mut self.peers.get_mut(name).unwrap().events)
    }
}

fn opts(id: &str) -> ClientOptions {
    ClientOptions {
        client_id: MqttString::try_from(id).unwrap(),
        ..Default::default()
    }
}

fn persistent(id: &str, expiry: u32) -> ClientOptions {
    ClientOptions {
        session_expiry_interval: expiry,
        ..opts(id)
    }
}

fn qos(q: QoS) -> SubscriptionOptions {
    SubscriptionOptions::with_qos(q)
}

fn payloads(ms: &[Publish]) -> Vec<&[u8]> {
    ms.iter().map(|m| &m.payload[..]).collect()
}

#[test]
fn publish_subscribe_all_qos_levels_with_downgrade() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("sub", opts("sub"));
        w.add("pub", opts("pub"));
        w.connect("sub");
        w.connect("pub");
        w.subscribe("sub", "a/+", qos(QoS::AtLeastOnce), None);
        w.publish("pub", "a/0", b"zero", QoS::AtMostOnce, false);
        w.publish("pub", "a/1", b"one", QoS::AtLeastOnce, false);
        w.publish("pub", "a/2", b"two", QoS::ExactlyOnce, false);
        let ms = w.messages("sub");
        assert_eq!(
            payloads(&ms),
            vec![&b"zero"[..], b"one", b"two"],
            "{split:?}"
        );
        // Downgraded to the granted QoS 1 [MQTT-3.8.4-?].
        assert_eq!(
            ms.iter().map(|m| m.qos).collect::<Vec<_>>(),
            vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce]
        );
        // The publisher's QoS 1/2 flows completed with Success.
        let done = w
            .events("pub")
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    ClientEvent::PublishComplete {
                        reason_code: ReasonCode::Success,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(done, 2);
    }
}

#[test]
fn no_matching_subscribers_is_0x10() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("pub", opts("pub"));
    w.connect("pub");
    w.publish("pub", "nobody", b"x", QoS::AtLeastOnce, false);
    assert!(w.events("pub").iter().any(|e| matches!(
        e,
        ClientEvent::PublishComplete {
            reason_code: ReasonCode::NoMatchingSubscribers,
            ..
        }
    )));
}

#[test]
fn overlapping_subscriptions_one_message_max_qos_all_identifiers_mqtt_3_3_4_2_and_3_3_4_3() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("sub", opts("sub"));
        w.connect("sub");
        w.subscribe("sub", "x/#", qos(QoS::AtMostOnce), Some(1));
        w.subscribe("sub", "x/+", qos(QoS::ExactlyOnce), Some(2));
        w.add("pub", opts("pub"));
        w.connect("pub");
        w.publish("pub", "x/y", b"o", QoS::ExactlyOnce, false);
        let ms = w.messages("sub");
        assert_eq!(ms.len(), 1, "{split:?}");
        assert_eq!(ms[0].qos, QoS::ExactlyOnce);
        let mut ids: Vec<_> = ms[0]
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }
}

#[test]
fn user_properties_forwarded_unaltered_and_in_order_mqtt_3_3_2_17_and_3_3_2_18() {
    let pair = |n: &str, v: &str| {
        UserProperty::new(
            MqttString::try_from(n).unwrap(),
            MqttString::try_from(v).unwrap(),
        )
    };
    let users =
        UserProperties::from([pair("a", "1"), pair("b", "2"), pair("a", "3"), pair("", "")]);
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("sub", opts("sub"));
        w.add("pub", opts("pub"));
        w.connect("sub");
        w.connect("pub");
        w.subscribe("sub", "u/#", qos(QoS::AtLeastOnce), None);
        let mut p = Publish::new(
            TopicName::try_from("u/1").unwrap(),
            Bytes::from_static(b"m"),
        );
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.properties.user_properties = users.clone();
        p.properties.content_type = Some(MqttString::try_from("text/plain").unwrap());
        let now = w.now;
        w.client("pub").publish(now, p).unwrap();
        w.pump();
        let live = w.messages("sub");
        assert_eq!(live.len(), 1, "{split:?}");
        assert_eq!(live[0].properties.user_properties, users, "{split:?}");
        // The retained copy the broker keeps is sent to a later subscriber with the same pairs.
        w.add("late", opts("late"));
        w.connect("late");
        w.subscribe("late", "u/+", qos(QoS::AtLeastOnce), None);
        let retained = w.messages("late");
        assert_eq!(retained.len(), 1, "{split:?}");
        assert!(retained[0].retain);
        assert_eq!(
            retained[0]
                .properties
                .user_properties
                .iter()
                .collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("a", "3"), ("", "")],
            "{split:?}"
        );
    }
}

#[test]
fn dollar_topics_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("sub", opts("sub"));
    w.add("pub", opts("pub"));
    w.connect("sub");
    w.connect("pub");
    w.subscribe("sub", "#", qos(QoS::AtMostOnce), None);
    w.subscribe("sub", "$SYS/#", qos(QoS::AtMostOnce), Some(5));
    w.publish("pub", "$SYS/x", b"sys", QoS::AtMostOnce, false);
    let ms = w.messages("sub");
    assert_eq!(ms.len(), 1);
    assert_eq!(
        ms[0].properties.subscription_identifiers,
        vec![SubscriptionId::new(5).unwrap()]
    );
}

#[test]
fn no_local_mqtt_3_8_3_3() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("a", opts("a"));
    w.connect("a");
    let mut o = qos(QoS::AtMostOnce);
    o.no_local = true;
    w.subscribe("a", "loop", o, None);
    w.publish("a", "loop", b"mine", QoS::AtMostOnce, false);
    assert!(w.messages("a").is_empty());
    w.add("b", opts("b"));
    w.connect("b");
    w.publish("b", "loop", b"theirs", QoS::AtMostOnce, false);
    assert_eq!(payloads(&w.messages("a")), vec![&b"theirs"[..]]);
}

#[test]
fn retained_store_replace_delete_mqtt_3_3_1_5_to_3_3_1_7() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("pub", opts("pub"));
        w.connect("pub");
        w.publish("pub", "r/1", b"first", QoS::AtLeastOnce, true);
        w.publish("pub", "r/1", b"second", QoS::AtLeastOnce, true);
        w.publish("pub", "r/2", b"other", QoS::AtMostOnce, true);
        w.publish("pub", "r/3", b"plain", QoS::AtMostOnce, false);
        assert_eq!(w.broker.retained_count(), 2);
        w.add("sub", opts("sub"));
        w.connect("sub");
        w.subscribe("sub", "r/+", qos(QoS::AtLeastOnce), None);
        let mut got: Vec<_> = w
            .messages("sub")
            .iter()
            .map(|m| (m.topic.as_str().to_string(), m.payload.clone(), m.retain))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("r/1".into(), Bytes::from_static(b"second"), true),
                ("r/2".into(), Bytes::from_static(b"other"), true)
            ],
            "{split:?}"
        );
        // An empty retained payload deletes [MQTT-3.3.1-6]; it is still delivered to current subscribers.
        w.publish("pub", "r/1", b"", QoS::AtMostOnce, true);
        assert_eq!(w.broker.retained_count(), 1);
        assert_eq!(w.messages("sub").len(), 1);
    }
}

#[test]
fn retain_handling_matrix_mqtt_3_3_1_9_to_3_3_1_11() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("pub", opts("pub"));
        w.connect("pub");
        w.publish("pub", "rh", b"kept", QoS::AtMostOnce, true);
        w.add("sub", opts("sub"));
        w.connect("sub");
        let with = |rh| SubscriptionOptions {
            retain_handling: rh,
            ..qos(QoS::AtMostOnce)
        };
        // 0: sent at every subscribe.
        // (A different subscription identifier makes the client send the second SUBSCRIBE
        // instead of only counting a reference.)
        w.subscribe("sub", "rh", with(RetainHandling::SendAtSubscribe), Some(1));
        w.subscribe("sub", "rh", with(RetainHandling::SendAtSubscribe), Some(2));
        assert_eq!(w.messages("sub").len(), 2, "{split:?}");
        // 1: only if the subscription is new.
        w.subscribe("sub", "rh", with(RetainHandling::SendIfNew), None);
        assert_eq!(w.messages("sub").len(), 0);
        w.subscribe("sub", "+", with(RetainHandling::SendIfNew), None);
        assert_eq!(w.messages("sub").len(), 1);
        // 2: never.
        w.subscribe("sub", "#", with(RetainHandling::DoNotSend), None);
        assert_eq!(w.messages("sub").len(), 0);
    }
}

#[test]
fn retain_as_published_mqtt_3_3_1_12_and_3_3_1_13() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("s0", opts("s0"));
    w.add("s1", opts("s1"));
    w.add("pub", opts("pub"));
    for n in ["s0", "s1", "pub"] {
        w.connect(n);
    }
    w.subscribe("s0", "rap", qos(QoS::AtMostOnce), None);
    w.subscribe(
        "s1",
        "rap",
        SubscriptionOptions {
            retain_as_published: true,
            ..qos(QoS::AtMostOnce)
        },
        None,
    );
    w.publish("pub", "rap", b"r", QoS::AtMostOnce, true);
    assert!(!w.messages("s0")[0].retain);
    assert!(w.messages("s1")[0].retain);
}

#[test]
fn retained_messages_expire() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("pub", opts("pub"));
    w.connect("pub");
    let now = w.now;
    let mut p = Publish::new(TopicName::try_from("exp").unwrap(), &b"soon"[..]);
    p.retain = true;
    p.properties.message_expiry_interval = Some(5);
    w.client("pub").publish(now, p).unwrap();
    w.pump();
    assert_eq!(w.broker.retained_count(), 1);
    w.advance(Duration::from_secs(3));
    w.add("early", opts("early"));
    w.connect("early");
    w.subscribe("early", "exp", qos(QoS::AtMostOnce), None);
    let ms = w.messages("early");
    assert_eq!(ms[0].properties.message_expiry_interval, Some(2));
    w.advance(Duration::from_secs(3));
    w.add("late", opts("late"));
    w.connect("late");
    w.subscribe("late", "exp", qos(QoS::AtMostOnce), None);
    assert!(w.messages("late").is_empty());
    assert_eq!(w.broker.retained_count(), 0);
}

#[test]
fn shared_subscription_round_robin_and_redistribution() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        for n in ["m1", "m2", "m3", "pub"] {
            w.add(n, opts(n));
            w.connect(n);
        }
        for n in ["m1", "m2", "m3"] {
            w.subscribe(n, "$share/g/jobs/#", qos(QoS::AtLeastOnce), None);
        }
        for _ in 0..6 {
            w.publish("pub", "jobs/x", b"j", QoS::AtLeastOnce, false);
        }
        let counts: Vec<_> = ["m1", "m2", "m3"]
            .iter()
            .map(|n| w.messages(n).len())
            .collect();
        assert_eq!(counts, vec![2, 2, 2], "{split:?}");
        // A member leaves: the others share the work.
        let now = w.now;
        w.client("m2")
            .unsubscribe(
                now,
                vec![TopicFilter::try_from("$share/g/jobs/#").unwrap()],
                Default::default(),
            )
            .unwrap();
        w.pump();
        for _ in 0..4 {
            w.publish("pub", "jobs/x", b"j", QoS::AtLeastOnce, false);
        }
        let counts: Vec<_> = ["m1", "m2", "m3"]
            .iter()
            .map(|n| w.messages(n).len())
            .collect();
        assert_eq!(counts, vec![2, 0, 2], "{split:?}");
    }
}

#[test]
fn session_takeover_mqtt_3_1_4_3() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("old", persistent("same", 60));
        w.add(
            "new",
            ClientOptions {
                clean_start: false,
                ..persistent("same", 60)
            },
        );
        w.connect("old");
        w.subscribe("old", "t", qos(QoS::AtLeastOnce), None);
        w.connect("new");
        let evs = w.events("old");
        assert!(
            evs.iter().any(|e| matches!(
                e,
                ClientEvent::Disconnected {
                    error: Error::ClosedByPeer(ReasonCode::SessionTakenOver),
                    ..
                }
            )),
            "{split:?} {evs:?}"
        );
        // The new connection resumed the session: Session Present, subscriptions kept.
        assert!(w
            .events("new")
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected(c) if c.session_present)));
        w.add("pub", opts("pub"));
        w.connect("pub");
        w.publish("pub", "t", b"to-new", QoS::AtLeastOnce, false);
        assert_eq!(payloads(&w.messages("new")), vec![&b"to-new"[..]]);
        assert_eq!(w.broker.session_count(), 2);
    }
}

#[test]
fn clean_start_discards_the_session_mqtt_3_1_2_4_and_3_2_2_2() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("a", persistent("a", 60));
    w.connect("a");
    w.subscribe("a", "t", qos(QoS::AtLeastOnce), None);
    w.cut("a");
    w.add("a2", persistent("a", 60)); // clean_start = true
    w.connect("a2");
    assert!(w
        .events("a2")
        .iter()
        .any(|e| matches!(e, ClientEvent::Connected(c) if !c.session_present)));
    assert_eq!(w.broker.subscription_count(), 0);
}

#[test]
fn offline_messages_are_queued_and_delivered_on_resume_mqtt_3_1_2_5_and_3_2_2_3() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add("sub", persistent("sub", 300));
        w.add("pub", opts("pub"));
        w.connect("sub");
        w.connect("pub");
        w.subscribe("sub", "q/#", qos(QoS::ExactlyOnce), None);
        w.cut("sub");
        w.publish("pub", "q/1", b"while-away-1", QoS::AtLeastOnce, false);
        w.publish("pub", "q/2", b"while-away-2", QoS::ExactlyOnce, false);
        assert_eq!(w.broker.queued_for("sub"), Some(2));
        w.connect("sub");
        assert_eq!(
            payloads(&w.messages("sub")),
            vec![&b"while-away-1"[..], b"while-away-2"],
            "{split:?}"
        );
        assert!(w
            .events("sub")
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected(c) if c.session_present)));
    }
}

#[test]
fn session_expiry_counts_from_the_close() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("s", persistent("s", 10));
    w.connect("s");
    w.subscribe("s", "t", qos(QoS::AtLeastOnce), None);
    w.advance(Duration::from_secs(30)); // connected time does not count
    w.cut("s");
    assert!(w.broker.has_session("s"));
    w.advance(Duration::from_secs(9));
    assert!(w.broker.has_session("s"));
    w.advance(Duration::from_secs(1));
    assert!(!w.broker.has_session("s"));
    assert_eq!(w.broker.subscription_count(), 0);
}

#[test]
fn session_expiry_changed_at_disconnect() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("s", persistent("s", 100));
    w.connect("s");
    let now = w.now;
    w.client("s")
        .disconnect(now, ReasonCode::Success, Some(0))
        .unwrap();
    w.pump();
    assert!(!w.broker.has_session("s"));
}

/// A DISCONNECT may change a non-zero Session Expiry Interval of the CONNECT to another
/// non-zero one (only raising it from 0 is a protocol error) [MQTT-3.14.2-2]; the broker must
/// remember the CONNECT's value after CONNACK to tell the two apart.
#[test]
fn session_expiry_shortened_at_disconnect_mqtt_3_14_2_2() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("s", persistent("s", 100));
    w.connect("s");
    w.subscribe("s", "t", qos(QoS::AtLeastOnce), None);
    let now = w.now;
    w.client("s")
        .disconnect(now, ReasonCode::Success, Some(1))
        .unwrap();
    w.pump();
    assert!(w.broker.has_session("s"), "kept for its new interval");
    w.advance(Duration::from_secs(1));
    assert!(!w.broker.has_session("s"), "gone after 1 s, not 100");
}

fn with_will(id: &str, delay: u32, expiry: u32) -> ClientOptions {
    ClientOptions {
        will: Some(Will {
            topic: TopicName::try_from("wills/x").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(delay),
                ..Default::default()
            },
        }),
        ..persistent(id, expiry)
    }
}

fn watcher(w: &mut World) {
    w.add("watch", opts("watch"));
    w.connect("watch");
    w.subscribe("watch", "wills/#", qos(QoS::AtLeastOnce), None);
}

#[test]
fn will_on_abnormal_close_not_on_normal_disconnect_mqtt_3_1_2_8_and_3_14_4_3() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    watcher(&mut w);
    w.add("a", with_will("a", 0, 0));
    w.connect("a");
    w.cut("a");
    assert_eq!(payloads(&w.messages("watch")), vec![&b"gone"[..]]);
    w.add("b", with_will("b", 0, 0));
    w.connect("b");
    let now = w.now;
    w.client("b")
        .disconnect(now, ReasonCode::Success, None)
        .unwrap();
    w.pump();
    assert!(w.messages("watch").is_empty());
    // DISCONNECT 0x04 asks for the will.
    w.add("c", with_will("c", 0, 0));
    w.connect("c");
    w.client("c")
        .disconnect(now, ReasonCode::DisconnectWithWillMessage, None)
        .unwrap();
    w.pump();
    assert_eq!(w.messages("watch").len(), 1);
}

#[test]
fn will_delay_cancelled_by_reconnect_mqtt_3_1_3_9() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        watcher(&mut w);
        w.add(
            "a",
            ClientOptions {
                clean_start: false,
                ..with_will("a", 10, 300)
            },
        );
        w.connect("a");
        w.cut("a");
        w.advance(Duration::from_secs(5));
        w.connect("a");
        w.advance(Duration::from_secs(20));
        assert!(w.messages("watch").is_empty(), "{split:?}");
    }
}

#[test]
fn will_delay_fires() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    watcher(&mut w);
    w.add("a", with_will("a", 10, 300));
    w.connect("a");
    w.cut("a");
    w.advance(Duration::from_secs(9));
    assert!(w.messages("watch").is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(w.messages("watch").len(), 1);
}

#[test]
fn will_sent_when_session_ends_before_delay_mqtt_3_1_2_8() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    watcher(&mut w);
    w.add("a", with_will("a", 100, 5));
    w.connect("a");
    w.cut("a");
    w.advance(Duration::from_secs(5));
    assert_eq!(w.messages("watch").len(), 1);
}

#[test]
fn assigned_client_identifier_mqtt_3_2_2_16() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("anon", ClientOptions::default());
    w.connect("anon");
    let id = w.client("anon").client_id().clone();
    assert!(id.as_str().starts_with("mqttproto-"), "{id}");
    assert!(w.broker.has_session(id.as_str()));
}

#[test]
fn connect_refused_by_the_driver() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.refuse
        .insert("bad".into(), ReasonCode::BadUserNameOrPassword);
    w.add("bad", opts("bad"));
    let h = w.broker.accept(w.now);
    w.peers.get_mut("bad").unwrap().handle = Some(h);
    let now = w.now;
    w.client("bad").connect(now).unwrap();
    w.pump();
    assert!(w.events("bad").iter().any(|e| matches!(e, ClientEvent::Refused(c) if c.reason_code == ReasonCode::BadUserNameOrPassword)));
    assert_eq!(w.closed, vec![h]);
    assert_eq!(w.broker.session_count(), 0);
}

#[test]
fn authorization_denials_in_suback_and_puback() {
    let mut w = World::new(
        Split::Whole,
        BrokerOptions {
            authorize: true,
            ..Default::default()
        },
    );
    w.deny = vec!["secret", "secret/#"];
    w.add("c", opts("c"));
    w.connect("c");
    let now = w.now;
    let subs = vec![
        Subscription::new(TopicFilter::try_from("open/#").unwrap(), QoS::AtLeastOnce),
        Subscription::new(TopicFilter::try_from("secret/#").unwrap(), QoS::AtLeastOnce),
    ];
    w.client("c")
        .subscribe(now, subs, Default::default())
        .unwrap();
    w.pump();
    assert!(w.events("c").iter().any(|e| matches!(e, ClientEvent::Subscribed { reason_codes, .. } if reason_codes == &vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized])));
    w.publish("c", "secret", b"x", QoS::AtLeastOnce, false);
    assert!(w.events("c").iter().any(|e| matches!(
        e,
        ClientEvent::PublishComplete {
            reason_code: ReasonCode::NotAuthorized,
            ..
        }
    )));
}

#[test]
fn server_limits_enforced_when_turned_off() {
    let connack = ConnAckProperties {
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        wildcard_subscription_available: Some(false),
        subscription_identifiers_available: Some(false),
        shared_subscription_available: Some(false),
        ..Default::default()
    };
    let mut w = World::new(
        Split::Whole,
        BrokerOptions {
            connack,
            ..Default::default()
        },
    );
    w.add("c", opts("c"));
    w.connect("c");
    assert_eq!(w.client("c").maximum_qos(), QoS::AtLeastOnce);
    assert!(!w.client("c").retain_available());
    let now = w.now;
    // The client refuses locally what the server announced it does not support.
    let sub = |f: &str| {
        vec![Subscription::new(
            TopicFilter::try_from(f).unwrap(),
            QoS::AtMostOnce,
        )]
    };
    assert!(matches!(
        w.client("c").subscribe(now, sub("a/+"), Default::default()),
        Err(StateError::NotSupportedByServer(_))
    ));
    assert!(matches!(
        w.client("c")
            .subscribe(now, sub("$share/g/a"), Default::default()),
        Err(StateError::NotSupportedByServer(_))
    ));
    // A raw client that ignores the limits gets SUBACK codes 0xA2, 0x9E, QoS downgraded to 1,
    // and DISCONNECT 0x9A for a retained PUBLISH.
    let h = w.broker.accept(now);
    let connect = Packet::Connect(Box::new(Connect {
        client_id: MqttString::try_from("raw").unwrap(),
        ..Default::default()
    }));
    w.broker
        .handle_bytes(now, h, &connect.to_bytes(ProtocolVersion::V5).unwrap())
        .unwrap();
    while let Some(ev) = w.broker.poll_event() {
        w.decide(ev);
    }
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![
            Subscription::new(TopicFilter::try_from("w/#").unwrap(), QoS::AtMostOnce),
            Subscription::new(
                TopicFilter::try_from("$share/g/x").unwrap(),
                QoS::AtMostOnce,
            ),
            Subscription::new(TopicFilter::try_from("plain").unwrap(), QoS::ExactlyOnce),
        ],
    });
    w.broker
        .handle_bytes(now, h, &subscribe.to_bytes(ProtocolVersion::V5).unwrap())
        .unwrap();
    let mut out = Vec::new();
    while let Some((hh, b)) = w.broker.poll_transmit() {
        if hh == h {
            out.extend_from_slice(&b);
        }
    }
    let mut buf = bytes::BytesMut::from(&out[..]);
    let mut suback = None;
    while let Some(p) = decode(&mut buf, ProtocolVersion::V5, u32::MAX).unwrap() {
        if let Packet::SubAck(s) = p {
            suback = Some(s);
        }
    }
    assert_eq!(
        suback.unwrap().reason_codes,
        vec![
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::GrantedQoS1
        ]
    );
    let mut p = Publish::new(TopicName::try_from("plain").unwrap(), &b"r"[..]);
    p.retain = true;
    let e = w
        .broker
        .handle_bytes(
            now,
            h,
            &Packet::Publish(p).to_bytes(ProtocolVersion::V5).unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.reason_code(), Some(ReasonCode::RetainNotSupported));
}

#[test]
fn receive_maximum_backpressure_towards_a_slow_subscriber() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add(
            "slow",
            ClientOptions {
                receive_maximum: NonZeroU16::new(2).unwrap(),
                manual_acks: true,
                ..opts("slow")
            },
        );
        w.add("pub", opts("pub"));
        w.connect("slow");
        w.connect("pub");
        w.subscribe("slow", "rm", qos(QoS::AtLeastOnce), None);
        for _ in 0..5 {
            w.publish("pub", "rm", b"m", QoS::AtLeastOnce, false);
        }
        let first = w.messages("slow");
        assert_eq!(first.len(), 2, "{split:?}");
        assert_eq!(w.broker.queued_for("slow"), Some(3));
        let now = w.now;
        for m in &first {
            w.client("slow")
                .acknowledge(now, m.packet_id.unwrap(), ReasonCode::Success)
                .unwrap();
        }
        w.pump();
        assert_eq!(w.messages("slow").len(), 2);
        assert_eq!(w.broker.queued_for("slow"), Some(1));
    }
}

#[test]
fn qos2_exactly_once_through_the_broker_across_subscriber_reconnect() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.add(
            "sub",
            ClientOptions {
                clean_start: false,
                manual_acks: true,
                ..persistent("sub", 300)
            },
        );
        w.add("pub", opts("pub"));
        w.connect("sub");
        w.connect("pub");
        w.subscribe("sub", "e", qos(QoS::ExactlyOnce), None);
        w.publish("pub", "e", b"once", QoS::ExactlyOnce, false);
        let got = w.messages("sub");
        assert_eq!(got.len(), 1);
        // Acknowledge (PUBREC), then lose the connection before PUBREL arrives.
        let now = w.now;
        w.client("sub")
            .acknowledge(now, got[0].packet_id.unwrap(), ReasonCode::Success)
            .unwrap();
        let pubrec = w.client("sub").poll_transmit().unwrap();
        let h = w.peers["sub"].handle.unwrap();
        w.broker.handle_bytes(now, h, &pubrec).unwrap();
        while w.broker.poll_transmit().is_some() {}
        w.cut("sub");
        w.connect("sub");
        // The broker resends PUBREL; the client answers from its remembered QoS 2 state.
        assert!(w.messages("sub").is_empty(), "{split:?}");
        assert_eq!(
            w.broker
                .session(w.peers["sub"].handle.unwrap())
                .unwrap()
                .inflight(),
            0
        );
    }
}

#[test]
fn keep_alive_timeout_on_the_broker_publishes_the_will() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    watcher(&mut w);
    w.add(
        "a",
        ClientOptions {
            keep_alive: 10,
            ..with_will("a", 0, 0)
        },
    );
    w.connect("a");
    // The client goes silent (its timers are not driven): 1.5 × 10 s later the broker closes.
    w.now += Duration::from_secs(15);
    let now = w.now;
    w.broker.handle_timeout(now);
    w.pump();
    assert_eq!(w.messages("watch").len(), 1);
    assert!(w.peers["a"].handle.is_none());
}

#[test]
fn graceful_shutdown_disconnects_with_0x8b() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.add("a", opts("a"));
    w.connect("a");
    let now = w.now;
    w.broker.disconnect_all(now, ReasonCode::ServerShuttingDown);
    w.pump();
    assert!(w.events("a").iter().any(|e| matches!(
        e,
        ClientEvent::Disconnected {
            error: Error::ClosedByPeer(ReasonCode::ServerShuttingDown),
            ..
        }
    )));
    assert_eq!(w.broker.connection_count(), 0);
}

/// A persistent publisher with a backlog and a persistent subscriber, through connections that
/// break after a pseudo-random number of bytes (both directions together, mid-packet included),
/// some of them half-open until the client's next CONNECT takes the session over
/// [MQTT-3.1.4-3]. On every reconnect both sides first resend what is unacknowledged
/// [MQTT-4.4.0-1]; the window a receiver announces bounds that burst [MQTT-3.3.4-7,
/// MQTT-3.3.4-9]. Returns every message's arrival count and the publisher's completion codes.
fn through_random_cuts(
    q: QoS,
    seed: u64,
    total: usize,
    max_bytes: u64,
) -> (Vec<u32>, Vec<ReasonCode>) {
    let mut options = BrokerOptions::default();
    options.session.max_queued_messages = total * 2;
    let mut w = World::new(Split::Whole, options);
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let window = ClientOptions {
        receive_maximum: NonZeroU16::new(100).unwrap(),
        ..persistent("sub", 3600)
    };
    w.add("sub", window.clone());
    w.add(
        "pub",
        ClientOptions {
            client_id: MqttString::try_from("pub").unwrap(),
            ..window
        },
    );
    w.connect("sub");
    w.subscribe("sub", "cut/#", qos(q), None);
    let names = ["pub", "sub"];
    let mut budget: HashMap<&'static str, u64> = HashMap::from([("pub", 0), ("sub", 0)]);
    let mut half_open: Vec<ConnectionHandle> = Vec::new();
    let mut seen = vec![0u32; total];
    let mut completed = Vec::new();
    let (mut distinct, mut sent, mut cuts, mut idle) = (0, 0, 0, 0);
    while distinct < total || completed.len() < total {
        idle += 1;
        assert!(
            idle < 5_000,
            "{q:?}: stalled at {distinct} of {total} delivered, {} completed ({cuts} cuts)",
            completed.len()
        );
        w.now += Duration::from_millis(1);
        let now = w.now;
        for name in names {
            let p = w.peers.get_mut(name).unwrap();
            p.client.handle_timeout(now);
            if p.client.state() == ClientState::Disconnected && next() % 4 == 0 {
                while p.client.poll_transmit().is_some() {}
                p.handle = Some(w.broker.accept(now));
                p.client.connect(now).unwrap();
                budget.insert(name, 1 + next() % max_bytes);
            }
        }
        w.broker.handle_timeout(now);
        // The publisher hands over its whole backlog; the client sends within the window.
        while sent < total && w.peers["pub"].client.state() == ClientState::Connected {
            let mut p = Publish::new(
                TopicName::try_from("cut/n").unwrap(),
                Bytes::from(sent.to_string()),
            );
            p.qos = q;
            w.client("pub").publish(now, p).unwrap();
            sent += 1;
        }
        let mut cut = Vec::new();
        for name in names {
            let Some(h) = w.peers[name].handle else {
                continue;
            };
            while let Some(b) = w.peers.get_mut(name).unwrap().client.poll_transmit() {
                let left = budget[name];
                let take = (b.len() as u64).min(left) as usize;
                budget.insert(name, left - take as u64);
                let _ = w.broker.handle_bytes(now, h, &b[..take]);
                if take < b.len() {
                    cut.push(name);
                    break;
                }
            }
        }
        while let Some((h, b)) = w.broker.poll_transmit() {
            let Some(name) = names.into_iter().find(|n| w.peers[n].handle == Some(h)) else {
                continue;
            };
            if cut.contains(&name) {
                continue;
            }
            let left = budget[name];
            let take = (b.len() as u64).min(left) as usize;
            budget.insert(name, left - take as u64);
            let _ = w
                .peers
                .get_mut(name)
                .unwrap()
                .client
                .handle_bytes(now, &b[..take]);
            if take < b.len() {
                cut.push(name);
            }
        }
        // Half-open connections end once the client has connected again (or later).
        if next() % 8 == 0 {
            for h in half_open.drain(..) {
                w.broker.handle_close(now, h);
            }
        }
        for name in cut {
            cuts += 1;
            let p = w.peers.get_mut(name).unwrap();
            p.client.handle_close(now);
            let Some(h) = p.handle.take() else { continue };
            if next() % 2 == 0 {
                half_open.push(h);
            } else {
                w.broker.handle_close(now, h);
            }
        }
        while let Some(ev) = w.broker.poll_event() {
            w.decide(ev);
        }
        for name in names {
            let p = w.peers.get_mut(name).unwrap();
            while let Some(e) = p.client.poll_event() {
                match e {
                    ClientEvent::Message(m) => {
                        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                        if seen[i] == 0 {
                            distinct += 1;
                            idle = 0;
                        }
                        seen[i] += 1;
                    }
                    ClientEvent::PublishComplete { reason_code, .. } => {
                        completed.push(reason_code);
                        idle = 0;
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(cuts >= 20, "only {cuts} cuts");
    (seen, completed)
}

#[test]
fn publisher_backlog_not_stuck_resending_through_random_cuts_qos1_mqtt_4_4_0_1_and_3_3_4_7() {
    let (seen, completed) = through_random_cuts(QoS::AtLeastOnce, 0x5151_0001, 2000, 4000);
    assert!(seen.iter().all(|&n| n >= 1));
    assert!(completed.iter().all(|rc| !rc.is_error()), "{completed:?}");
}

#[test]
fn publisher_backlog_not_stuck_resending_through_random_cuts_qos2_mqtt_4_4_0_1_and_3_3_4_7() {
    let (seen, completed) = through_random_cuts(QoS::ExactlyOnce, 0x5151_0002, 2000, 4000);
    // Exactly once [MQTT-4.3.3-4]: no message lost, none duplicated.
    assert!(
        seen.iter().all(|&n| n == 1),
        "QoS 2 lost or duplicated a message"
    );
    // Every publish completes successfully, also when a PUBREL resent after its PUBCOMP was
    // cut off is answered 0x92, "not an error during recovery" (section 3.7.2.1).
    assert!(
        completed.iter().all(|&rc| rc == ReasonCode::Success),
        "{completed:?}"
    );
}

// ---- enhanced authentication (section 4.12) ------------------------------------------------

fn with_method(id: &str, method: &str, data: &'static [u8]) -> ClientOptions {
    ClientOptions {
        authentication_method: Some(MqttString::try_from(method).unwrap()),
        authentication_data: Some(Bytes::from_static(data)),
        ..opts(id)
    }
}

/// The connection handle and data of the one held CONNECT or AUTH.
fn take_held(w: &mut World) -> (ConnectionHandle, Option<Bytes>, ReasonCode) {
    assert_eq!(w.held.len(), 1, "{:?}", w.held);
    match w.held.remove(0) {
        BrokerEvent::Connect { handle, connect } => (
            handle,
            connect.properties.authentication_data.clone(),
            ReasonCode::Success,
        ),
        BrokerEvent::Auth { handle, auth } => (
            handle,
            auth.properties.authentication_data.clone(),
            auth.reason_code,
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn connack_of(events: &[ClientEvent]) -> Option<&ConnAck> {
    events.iter().find_map(|e| match e {
        ClientEvent::Connected(c) | ClientEvent::Refused(c) => Some(c),
        _ => None,
    })
}

#[test]
fn enhanced_auth_connack_carries_method_and_final_data_mqtt_4_12_0_2_and_4_12_0_5() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.hold = true;
        w.add("a", with_method("a", "TOKEN", b"hello"));
        w.connect("a");
        let (h, data, _) = take_held(&mut w);
        assert_eq!(data.as_deref(), Some(&b"hello"[..]));
        // A challenge: AUTH 0x18 with the CONNECT's method [MQTT-4.12.0-2, MQTT-4.12.0-5].
        let now = w.now;
        w.broker
            .send_auth(
                now,
                h,
                ReasonCode::ContinueAuthentication,
                Some(Bytes::from_static(b"nonce")),
            )
            .unwrap();
        w.pump();
        let challenge = w.events("a").into_iter().find_map(|e| match e {
            ClientEvent::Auth(a) => Some(a),
            _ => None,
        });
        let challenge = challenge.expect("a challenge");
        assert_eq!(challenge.reason_code, ReasonCode::ContinueAuthentication);
        assert_eq!(
            challenge
                .properties
                .authentication_method
                .as_ref()
                .map(|m| m.as_str()),
            Some("TOKEN")
        );
        assert_eq!(
            challenge.properties.authentication_data.as_deref(),
            Some(&b"nonce"[..])
        );
        w.client("a")
            .authenticate(now, Some(Bytes::from_static(b"answer")))
            .unwrap();
        w.pump();
        let (h2, data, code) = take_held(&mut w);
        assert_eq!(
            (h2, data.as_deref(), code),
            (h, Some(&b"answer"[..]), ReasonCode::ContinueAuthentication)
        );
        w.broker
            .acknowledge_connect_with_auth_data(
                now,
                h,
                ReasonCode::Success,
                Some(Bytes::from_static(b"final")),
            )
            .unwrap();
        w.pump();
        let events = w.events("a");
        let connack = connack_of(&events).expect("CONNACK");
        assert_eq!(connack.reason_code, ReasonCode::Success, "{split:?}");
        // The successful CONNACK carries the same method [MQTT-4.12.0-5], and the final data.
        assert_eq!(
            connack
                .properties
                .authentication_method
                .as_ref()
                .map(|m| m.as_str()),
            Some("TOKEN")
        );
        assert_eq!(
            connack.properties.authentication_data.as_deref(),
            Some(&b"final"[..])
        );
        assert!(w.broker.has_session("a"));
    }
}

#[test]
fn enhanced_auth_plain_acknowledge_connect_still_carries_the_method_mqtt_4_12_0_5() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.hold = true;
    w.add("a", with_method("a", "TOKEN", b"ok"));
    w.connect("a");
    let (h, _, _) = take_held(&mut w);
    let now = w.now;
    w.broker
        .acknowledge_connect(now, h, ReasonCode::Success)
        .unwrap();
    w.pump();
    let events = w.events("a");
    let connack = connack_of(&events).expect("CONNACK");
    assert_eq!(
        connack
            .properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some("TOKEN")
    );
    assert_eq!(connack.properties.authentication_data, None);
}

#[test]
fn no_auth_method_in_connack_without_one_in_connect_mqtt_4_12_0_6() {
    // Even when the options (wrongly) name a method, a client that did not ask for enhanced
    // authentication gets none.
    let mut options = BrokerOptions::default();
    options.connack.authentication_method = Some(MqttString::try_from("TOKEN").unwrap());
    options.connack.authentication_data = Some(Bytes::from_static(b"x"));
    let mut w = World::new(Split::Whole, options);
    w.hold = true;
    w.add("a", opts("a"));
    w.connect("a");
    let (h, _, _) = take_held(&mut w);
    let now = w.now;
    // Final data without a method is refused, and nothing is sent.
    assert_eq!(
        w.broker.acknowledge_connect_with_auth_data(
            now,
            h,
            ReasonCode::Success,
            Some(Bytes::from_static(b"final"))
        ),
        Err(StateError::NoAuthInProgress)
    );
    // No AUTH either [MQTT-4.12.0-6].
    assert_eq!(
        w.broker
            .send_auth(now, h, ReasonCode::ContinueAuthentication, None),
        Err(StateError::NoAuthInProgress)
    );
    w.broker
        .acknowledge_connect(now, h, ReasonCode::Success)
        .unwrap();
    w.pump();
    let events = w.events("a");
    let connack = connack_of(&events).expect("CONNACK");
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(connack.properties.authentication_method, None);
    assert_eq!(connack.properties.authentication_data, None);
}

#[test]
fn enhanced_auth_refusal_carries_only_the_code_mqtt_4_12_0_4() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.hold = true;
    w.add("a", with_method("a", "TOKEN", b"wrong"));
    w.connect("a");
    let (h, _, _) = take_held(&mut w);
    let now = w.now;
    w.broker
        .acknowledge_connect_with_auth_data(
            now,
            h,
            ReasonCode::NotAuthorized,
            Some(Bytes::from_static(b"ignored")),
        )
        .unwrap();
    w.pump();
    let events = w.events("a");
    let connack = connack_of(&events).expect("CONNACK");
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(connack.properties.authentication_data, None);
    // The server closes the connection [MQTT-4.12.0-4].
    assert_eq!(w.closed, vec![h]);
    assert!(!w.broker.has_session("a"));
}

#[test]
fn disconnect_one_connection_after_failed_reauthentication_mqtt_4_12_1_2() {
    for split in SPLITS {
        let mut w = World::new(split, BrokerOptions::default());
        w.hold = true;
        w.add("a", with_method("a", "TOKEN", b"hello"));
        w.add("b", opts("b"));
        w.connect("a");
        let (ha, _, _) = take_held(&mut w);
        let now = w.now;
        w.broker
            .acknowledge_connect(now, ha, ReasonCode::Success)
            .unwrap();
        w.connect("b");
        let (hb, _, _) = take_held(&mut w);
        w.broker
            .acknowledge_connect(now, hb, ReasonCode::Success)
            .unwrap();
        w.pump();
        w.events("a");
        w.events("b");
        // Re-authentication [MQTT-4.12.1-1], which the server decides to fail.
        w.client("a")
            .reauthenticate(now, Some(Bytes::from_static(b"expired")))
            .unwrap();
        w.pump();
        let (h, data, code) = take_held(&mut w);
        assert_eq!(
            (h, data.as_deref(), code),
            (ha, Some(&b"expired"[..]), ReasonCode::ReAuthenticate)
        );
        // A code DISCONNECT cannot carry is refused and changes nothing.
        assert!(matches!(
            w.broker.disconnect(now, ha, ReasonCode::GrantedQoS1),
            Err(StateError::Encode(_))
        ));
        assert!(w.closed.is_empty());
        // DISCONNECT with the failure code, then the connection closes [MQTT-4.12.1-2].
        w.broker
            .disconnect(now, ha, ReasonCode::NotAuthorized)
            .unwrap();
        w.pump();
        let events = w.events("a");
        assert!(
            events.iter().any(|e| matches!(e,
                ClientEvent::Disconnected { disconnect: Some(d), .. }
                    if d.reason_code == ReasonCode::NotAuthorized)),
            "{split:?}: {events:?}"
        );
        assert_eq!(w.closed, vec![ha]);
        assert_eq!(w.broker.connection_count(), 1);
        // The handle is dead now; the other client is untouched.
        assert_eq!(
            w.broker.disconnect(now, ha, ReasonCode::NotAuthorized),
            Err(StateError::NotConnected)
        );
        w.subscribe("b", "t", qos(QoS::AtMostOnce), None);
        w.publish("b", "t", b"still here", QoS::AtMostOnce, false);
        assert_eq!(payloads(&w.messages("b")), vec![&b"still here"[..]]);
    }
}

#[test]
fn disconnect_before_connack_closes_without_a_packet_mqtt_3_14_0_1() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    w.hold = true;
    w.add("a", with_method("a", "TOKEN", b"hello"));
    w.connect("a");
    let (h, _, _) = take_held(&mut w);
    let now = w.now;
    w.broker
        .disconnect(now, h, ReasonCode::NotAuthorized)
        .unwrap();
    w.pump();
    let events = w.events("a");
    assert!(connack_of(&events).is_none(), "{events:?}");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ClientEvent::Disconnected {
                disconnect: Some(_),
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(w.closed, vec![h]);
    assert_eq!(w.broker.connection_count(), 0);
}

/// Raw AUTH bytes from a client, with the method "TOKEN".
fn auth_bytes(code: ReasonCode) -> Vec<u8> {
    let auth = Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(MqttString::try_from("TOKEN").unwrap()),
            ..Default::default()
        },
    };
    let mut out = bytes::BytesMut::new();
    Packet::Auth(auth)
        .encode(&mut out, ProtocolVersion::V5)
        .unwrap();
    out.to_vec()
}

/// A client connected with enhanced authentication; returns its handle.
fn connected_with_method(w: &mut World) -> ConnectionHandle {
    w.hold = true;
    w.add("a", with_method("a", "TOKEN", b"hello"));
    w.connect("a");
    let (h, _, _) = take_held(w);
    let now = w.now;
    w.broker
        .acknowledge_connect(now, h, ReasonCode::Success)
        .unwrap();
    w.pump();
    w.events("a");
    h
}

#[test]
fn auth_0x18_outside_a_reauthentication_is_a_protocol_error_mqtt_4_12_1_1() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    let h = connected_with_method(&mut w);
    let now = w.now;
    // The server has no re-authentication to answer either [MQTT-4.12.0-2].
    assert_eq!(
        w.broker
            .send_auth(now, h, ReasonCode::ContinueAuthentication, None),
        Err(StateError::NoAuthInProgress)
    );
    // AUTH 0x18 without a preceding AUTH 0x19: a protocol error, DISCONNECT 0x82.
    assert!(w
        .broker
        .handle_bytes(now, h, &auth_bytes(ReasonCode::ContinueAuthentication))
        .is_err());
    w.pump();
    let events = w.events("a");
    assert!(
        events.iter().any(|e| matches!(e,
            ClientEvent::Disconnected { disconnect: Some(d), .. }
                if d.reason_code == ReasonCode::ProtocolError)),
        "{events:?}"
    );
    assert_eq!(w.closed, vec![h]);
}

#[test]
fn reauthentication_turns_mqtt_4_12_1_1() {
    let mut w = World::new(Split::Whole, BrokerOptions::default());
    let h = connected_with_method(&mut w);
    let now = w.now;
    // AUTH 0x19 starts a re-authentication (the client's); the server may challenge and end
    // it.
    w.client("a").reauthenticate(now, None).unwrap();
    w.pump();
    let (_, _, code) = take_held(&mut w);
    assert_eq!(code, ReasonCode::ReAuthenticate);
    w.broker
        .send_auth(now, h, ReasonCode::ContinueAuthentication, None)
        .unwrap();
    w.pump();
    w.client("a").authenticate(now, None).unwrap();
    w.pump();
    let (_, _, code) = take_held(&mut w);
    assert_eq!(code, ReasonCode::ContinueAuthentication);
    w.broker
        .send_auth(now, h, ReasonCode::Success, None)
        .unwrap();
    // Over: no more AUTH from the server until the next AUTH 0x19.
    assert_eq!(
        w.broker.send_auth(now, h, ReasonCode::Success, None),
        Err(StateError::NoAuthInProgress)
    );
    // A second AUTH 0x19 in the middle of a re-authentication is a protocol error.
    w.broker
        .handle_bytes(now, h, &auth_bytes(ReasonCode::ReAuthenticate))
        .unwrap();
    assert!(w
        .broker
        .handle_bytes(now, h, &auth_bytes(ReasonCode::ReAuthenticate))
        .is_err());
    w.pump();
    let events = w.events("a");
    assert!(
        events.iter().any(|e| matches!(e,
            ClientEvent::Disconnected { disconnect: Some(d), .. }
                if d.reason_code == ReasonCode::ProtocolError)),
        "{events:?}"
    );
}

/// The broker encodes a message once for all the subscribers that get it in the same form
/// (QoS, RETAIN, no Subscription Identifier) and can be sent it at once; the others take the
/// regular path. Every subscriber must get what it would get alone: its own packet
/// identifiers (patched into its copy), RETAIN per Retain As Published [MQTT-3.3.1-12,
/// -13], its Subscription Identifiers [MQTT-3.3.4-3], the remaining expiry [MQTT-3.3.2-6],
/// topic aliases, nothing over its Maximum Packet Size [MQTT-3.1.2-25], nothing past its
/// Receive Maximum until it acknowledges [MQTT-3.3.4-9].
#[test]
fn one_encoding_per_form_reaches_every_subscriber_as_it_would_alone() {
    for split in SPLITS {
        let mut options = BrokerOptions::default();
        options.session.outbound_topic_aliases = true;
        let mut w = World::new(split, options);
        let manual = |id: &str, receive_maximum: u16| ClientOptions {
            manual_acks: true,
            receive_maximum: NonZeroU16::new(receive_maximum).unwrap(),
            ..opts(id)
        };
        w.add("pub", opts("pub"));
        w.add("q0", opts("q0"));
        w.add("q1", opts("q1"));
        w.add("q2", opts("q2"));
        w.add("busy", manual("busy", 100));
        w.add("full", manual("full", 1));
        w.add("rap", opts("rap"));
        w.add("ids", opts("ids"));
        w.add(
            "alias",
            ClientOptions {
                topic_alias_maximum: 10,
                ..opts("alias")
            },
        );
        w.add(
            "small",
            ClientOptions {
                maximum_packet_size: std::num::NonZeroU32::new(20),
                ..opts("small")
            },
        );
        for name in [
            "pub", "q0", "q1", "q2", "busy", "full", "rap", "ids", "alias", "small",
        ] {
            w.connect(name);
        }
        w.subscribe("q0", "t/#", qos(QoS::AtMostOnce), None);
        w.subscribe("q1", "t/#", qos(QoS::AtLeastOnce), None);
        w.subscribe("q2", "t/#", qos(QoS::ExactlyOnce), None);
        for name in ["busy", "full"] {
            w.subscribe(name, "t/#", qos(QoS::AtLeastOnce), None);
            w.subscribe(name, "x", qos(QoS::AtLeastOnce), None);
        }
        let mut rap = qos(QoS::AtLeastOnce);
        rap.retain_as_published = true;
        w.subscribe("rap", "t/#", rap, None);
        w.subscribe("ids", "t/#", qos(QoS::AtLeastOnce), Some(7));
        w.subscribe("alias", "t/#", qos(QoS::AtLeastOnce), None);
        w.subscribe("small", "t/#", qos(QoS::AtLeastOnce), None);

        // One unacknowledged message each: "busy" has room for more, "full" has none.
        w.publish("pub", "x", b"first", QoS::AtLeastOnce, false);
        let first: HashMap<_, _> = ["busy", "full"]
            .into_iter()
            .map(|n| (n, w.messages(n)[0].packet_id.unwrap()))
            .collect();

        for payload in [&b"shared one"[..], b"shared two"] {
            let now = w.now;
            let mut p = Publish::new(
                TopicName::try_from("t/a").unwrap(),
                Bytes::copy_from_slice(payload),
            );
            p.qos = QoS::ExactlyOnce;
            p.retain = true;
            p.properties.message_expiry_interval = Some(100);
            w.client("pub").publish(now, p).unwrap();
            w.pump();
        }
        let want = [&b"shared one"[..], b"shared two"];
        let check = |name: &str, ms: &[Publish], qos: QoS, retain: bool| {
            assert_eq!(payloads(ms), want, "{name} {split:?}");
            for m in ms {
                assert_eq!(m.qos, qos, "{name}");
                assert_eq!(m.retain, retain, "{name}");
                assert!(!m.dup, "{name}");
                assert_eq!(m.topic.as_str(), "t/a", "{name}");
                assert_eq!(m.properties.message_expiry_interval, Some(100), "{name}");
                assert_eq!(m.packet_id.is_some(), qos != QoS::AtMostOnce, "{name}");
            }
            if qos != QoS::AtMostOnce {
                assert_ne!(ms[0].packet_id, ms[1].packet_id, "{name}");
            }
        };
        check("q0", &w.messages("q0"), QoS::AtMostOnce, false);
        check("q1", &w.messages("q1"), QoS::AtLeastOnce, false);
        check("q2", &w.messages("q2"), QoS::ExactlyOnce, false);
        check("rap", &w.messages("rap"), QoS::AtLeastOnce, true);
        check("alias", &w.messages("alias"), QoS::AtLeastOnce, false);
        let ids = w.messages("ids");
        check("ids", &ids, QoS::AtLeastOnce, false);
        for m in &ids {
            assert_eq!(
                m.properties.subscription_identifiers,
                vec![SubscriptionId::new(7).unwrap()]
            );
        }
        let busy = w.messages("busy");
        check("busy", &busy, QoS::AtLeastOnce, false);
        assert!(busy.iter().all(|m| m.packet_id != Some(first["busy"])));
        // Over its Maximum Packet Size: discarded, not sent [MQTT-3.1.2-25].
        assert!(w.messages("small").is_empty());
        // Its window is full: the messages wait for the acknowledgement, then arrive.
        assert!(w.messages("full").is_empty(), "{split:?}");
        let now = w.now;
        w.client("full")
            .acknowledge(now, first["full"], ReasonCode::Success)
            .unwrap();
        w.pump();
        let mut full = w.messages("full");
        assert_eq!(full.len(), 1, "one at a time under Receive Maximum 1");
        let id = full[0].packet_id.unwrap();
        w.client("full")
            .acknowledge(now, id, ReasonCode::Success)
            .unwrap();
        w.pump();
        full.extend(w.messages("full"));
        check("full", &full, QoS::AtLeastOnce, false);
    }
}

/// Subscription Identifiers belong to each subscriber [MQTT-3.3.4-3]: identifiers an
/// application leaves on a PUBLISH it lets through reach nobody, on the shared-encoding path
/// (no identifier of the subscriber's own) as on the regular one.
#[test]
fn identifiers_on_an_authorized_publish_are_replaced_by_each_subscribers_own_mqtt_3_3_4_3() {
    let options = BrokerOptions {
        authorize: true,
        ..BrokerOptions::default()
    };
    let mut w = World::new(Split::Whole, options);
    w.stamp_ids = true;
    for name in ["pub", "plain", "with-id"] {
        w.add(name, opts(name));
        w.connect(name);
    }
    w.subscribe("plain", "t", qos(QoS::AtMostOnce), None);
    w.subscribe("with-id", "t", qos(QoS::AtMostOnce), Some(7));
    w.publish("pub", "t", b"m", QoS::AtMostOnce, false);
    let plain = w.messages("plain");
    assert_eq!(payloads(&plain), vec![&b"m"[..]]);
    assert!(plain[0].properties.subscription_identifiers.is_empty());
    let with_id = w.messages("with-id");
    assert_eq!(
        with_id[0].properties.subscription_identifiers,
        vec![SubscriptionId::new(7).unwrap()]
    );
}
