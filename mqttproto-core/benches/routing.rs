//! Routing benchmarks: matching a topic name against the subscription index, and routing one
//! PUBLISH through the whole `Broker`.
//!
//! The claim under test (docs/DESIGN.md, "The broker's shape"): routing a PUBLISH costs time
//! proportional to the matching subscriptions and the topic's depth, not to the number of
//! subscriptions. `routing/index` matches one topic against 10 matching filters plus 1k, 10k and
//! 100k filters that do not match (a mix of exact, `+` and `#` filters, many sharing the topic's
//! leading levels); criterion's throughput is per delivered match, so flat numbers across the sizes
//! confirm the claim. `routing/linear_scan` is the baseline the index replaces: `filter_matches`
//! over every filter.
//!
//! The `routing/broker/*` groups route one PUBLISH (64-byte payload, 4-level topic, no
//! properties) through a whole [`Broker`] with no sockets, on a frozen fake clock. Setup, outside
//! the timed loop: `accept`, CONNECT and `acknowledge_connect` for every subscriber and for one
//! publisher, SUBSCRIBE (granted by the broker itself: `BrokerOptions::default()` does not
//! `authorize`), every output drained. One iteration is what a driver does for one inbound
//! PUBLISH: `handle_bytes` with the publisher's PUBLISH bytes (decode, route, queue and encode one
//! PUBLISH per subscriber), then `poll_transmit` until `None` (taking every subscriber's bytes,
//! which are dropped: no socket write is timed). Throughput is PUBLISHes delivered to subscribers
//! per iteration, so criterion's "elem/s" is deliveries per second.
//!
//! * `routing/broker/qos0/{1,100,10000}`: publisher and subscribers at QoS 0.
//! * `routing/broker/qos1/{1,100,10000}`: publisher at QoS 1 (it gets a PUBACK, included), and
//!   every subscriber granted QoS 1, so every delivery takes a packet identifier and an in-flight
//!   slot. The subscribers must acknowledge or their windows fill up, so **each iteration also
//!   feeds every subscriber's PUBACK back** through `handle_bytes` and drains `poll_transmit`
//!   again: the figure is the broker's whole cost of a QoS 1 delivery, PUBACK processing
//!   included (not the latency to the first byte out). Reading the packet identifier out of each
//!   delivered PUBLISH (a few byte loads, no decode) and building the 4-byte PUBACK are in the
//!   timed loop too; they are what a client would have to do anyway and cost nanoseconds.
//! * `routing/broker/qos1_in_qos0_out/{1,100,10000}`: publisher at QoS 1 (PUBACK included),
//!   subscribers granted QoS 0, so deliveries are downgraded to QoS 0 and nothing comes back.
//!   `qos1` minus this is the cost of QoS 1 delivery to the subscribers.
//! * `routing/broker/non_matching/{0,10000,100000}`: QoS 0, 10 matching subscribers (one
//!   [`MATCHING`] filter each: exact, `+` and `#`) plus 0, 10k or 100k subscriptions that do not
//!   match ([`non_matching`] filters, spread over 10 idle sessions). Throughput is per delivery
//!   (10 per PUBLISH): flat figures mean the cost does not grow with the subscriptions that do
//!   not match.
//!
//! Run with
//!
//! ```text
//! cargo bench -p mqttproto-core --bench routing -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! (one group: append its name, for example `routing/broker/qos1`).
// Benches need a clock origin: one `Instant::now()` per fixture, then the clock stays frozen
// (clippy.toml bans it for the sans-I/O core itself).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mqttproto_core::broker::index::{Match, SubscriptionIndex};
use mqttproto_core::broker::{Broker, BrokerEvent, BrokerOptions, ConnectionHandle};
use mqttproto_core::codec::{Connect, Publish, Subscribe, SubscribeProperties, Subscription};
use mqttproto_core::{
    filter_matches, MqttString, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, SessionPhase,
    TopicFilter, TopicName,
};

const TOPIC: &str = "plant/line-0/machine-0/temperature";

/// Ten distinct filters that all match [`TOPIC`].
const MATCHING: [&str; 10] = [
    "plant/line-0/machine-0/temperature",
    "plant/line-0/machine-0/+",
    "plant/line-0/+/temperature",
    "plant/+/machine-0/temperature",
    "+/line-0/machine-0/temperature",
    "+/+/+/+",
    "plant/line-0/machine-0/#",
    "plant/line-0/#",
    "plant/#",
    "#",
];

/// The `i`-th filter that does not match [`TOPIC`]: exact, `+` and `#` filters under the same
/// `plant/` prefix, a quarter of them below the `plant/line-0/+` node the topic's walk visits.
fn non_matching(i: usize) -> String {
    let line = 1 + i / 50;
    let machine = i % 50;
    match i % 4 {
        0 => format!("plant/line-{line}/machine-{machine}/temperature"),
        1 => format!("plant/line-{line}/+/temperature-{machine}"),
        2 => format!("plant/line-{line}/machine-{machine}/#"),
        _ => format!("plant/line-0/+/sensor-{i}"),
    }
}

fn filters(non_matching_count: usize) -> Vec<TopicFilter> {
    MATCHING
        .iter()
        .map(|f| (*f).to_owned())
        .chain((0..non_matching_count).map(non_matching))
        .map(|f| TopicFilter::try_from(f).expect("valid filter"))
        .collect()
}

fn build_index(filters: &[TopicFilter]) -> SubscriptionIndex<u32, QoS> {
    let mut index = SubscriptionIndex::new();
    for (key, filter) in filters.iter().enumerate() {
        index.insert(filter, key as u32, QoS::AtLeastOnce);
    }
    index
}

fn count_matches(index: &SubscriptionIndex<u32, QoS>, topic: &TopicName) -> usize {
    let mut n = 0;
    index.matches(topic, |m| {
        if let Match::Subscription { key, value } = m {
            black_box((key, value));
            n += 1;
        }
    });
    n
}

fn routing(c: &mut Criterion) {
    let topic = TopicName::try_from(TOPIC).expect("valid topic");

    let mut group = c.benchmark_group("routing/index");
    group.throughput(Throughput::Elements(MATCHING.len() as u64));
    for n in [1_000, 10_000, 100_000] {
        let filters = filters(n);
        let index = build_index(&filters);
        assert_eq!(index.len(), n + MATCHING.len());
        assert_eq!(count_matches(&index, &topic), MATCHING.len());
        group.bench_with_input(BenchmarkId::from_parameter(n), &index, |b, index| {
            b.iter(|| count_matches(index, black_box(&topic)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("routing/linear_scan");
    group.throughput(Throughput::Elements(MATCHING.len() as u64));
    for n in [1_000, 10_000] {
        let filters = filters(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &filters, |b, filters| {
            b.iter(|| {
                let t = black_box(&topic).as_bytes();
                filters
                    .iter()
                    .filter(|f| filter_matches(f.filter_bytes(), t))
                    .count()
            })
        });
    }
    group.finish();
}

// ---- the whole broker -------------------------------------------------------------------------

/// The publisher's payload size.
const PAYLOAD: usize = 64;

/// A broker with connected, subscribed sessions and one publisher, on a frozen fake clock.
struct Fixture {
    broker: Broker,
    now: Instant,
    publisher: ConnectionHandle,
    /// The publisher's PUBLISH, encoded once.
    publish: Bytes,
    /// Deliveries one PUBLISH must produce.
    deliveries: usize,
    /// Whether QoS 1 deliveries are acknowledged in the loop.
    acked: bool,
    /// Scratch for the PUBACKs of the QoS 1 case, reused across iterations.
    acks: Vec<(ConnectionHandle, [u8; 4])>,
}

/// Drains every output; panics on an event the benchmark does not expect.
fn drain(broker: &mut Broker, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(event) = broker.poll_event() {
            moved = true;
            match event {
                BrokerEvent::Connect { handle, .. } => broker
                    .acknowledge_connect(now, handle, ReasonCode::Success)
                    .expect("accept CONNECT"),
                other => panic!("unexpected broker event {other:?}"),
            }
        }
        while broker.poll_transmit().is_some() {
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// A connection that sent CONNECT (Clean Start, no Keep Alive so no timers) and was accepted.
fn connect(broker: &mut Broker, now: Instant, client_id: &str) -> ConnectionHandle {
    let handle = broker.accept(now);
    let connect = Connect {
        clean_start: true,
        client_id: MqttString::try_from(client_id).expect("valid client id"),
        ..Connect::default()
    };
    let bytes = Packet::Connect(Box::new(connect))
        .to_bytes(ProtocolVersion::V5)
        .expect("encode CONNECT");
    broker.handle_bytes(now, handle, &bytes).expect("CONNECT");
    drain(broker, now);
    assert!(broker
        .session(handle)
        .is_some_and(|s| s.phase() == SessionPhase::Connected));
    handle
}

/// Subscribes a connection to `filters` at `qos`, 1,000 filters per SUBSCRIBE.
fn subscribe(
    broker: &mut Broker,
    now: Instant,
    handle: ConnectionHandle,
    filters: &[String],
    qos: QoS,
) {
    for (i, chunk) in filters.chunks(1_000).enumerate() {
        let subscribe = Subscribe {
            packet_id: PacketId::new(1 + i as u16).expect("non-zero packet id"),
            properties: SubscribeProperties::default(),
            subscriptions: chunk
                .iter()
                .map(|f| {
                    Subscription::new(
                        TopicFilter::try_from(f.as_str()).expect("valid filter"),
                        qos,
                    )
                })
                .collect(),
        };
        let bytes = Packet::Subscribe(subscribe)
            .to_bytes(ProtocolVersion::V5)
            .expect("encode SUBSCRIBE");
        broker.handle_bytes(now, handle, &bytes).expect("SUBSCRIBE");
        drain(broker, now);
    }
}

impl Fixture {
    /// One publisher; a session per entry of `subscribers` (its filters, all granted at
    /// `sub_qos`); the publisher's PUBLISH to [`TOPIC`] at `pub_qos` with a 64-byte payload.
    /// `deliveries` is how many subscribers the topic matches.
    fn new(subscribers: &[Vec<String>], sub_qos: QoS, pub_qos: QoS, deliveries: usize) -> Fixture {
        let now = Instant::now();
        let mut broker = Broker::new(BrokerOptions::default());
        assert!(
            !broker.options().authorize,
            "the broker must grant subscriptions itself"
        );
        let mut filter_count = 0;
        for (i, filters) in subscribers.iter().enumerate() {
            let handle = connect(&mut broker, now, &format!("sub-{i}"));
            subscribe(&mut broker, now, handle, filters, sub_qos);
            filter_count += filters.len();
        }
        assert_eq!(broker.subscription_count(), filter_count);
        let publisher = connect(&mut broker, now, "publisher");
        let mut publish = Publish::new(
            TopicName::try_from(TOPIC).expect("valid topic"),
            vec![0x5a; PAYLOAD],
        );
        publish.qos = pub_qos;
        if pub_qos != QoS::AtMostOnce {
            publish.packet_id = PacketId::new(1);
        }
        let publish = Packet::Publish(publish)
            .to_bytes(ProtocolVersion::V5)
            .expect("encode PUBLISH");
        Fixture {
            broker,
            now,
            publisher,
            publish,
            deliveries,
            acked: sub_qos != QoS::AtMostOnce,
            acks: Vec::with_capacity(deliveries),
        }
    }

    /// The timed part at QoS 0 out: the PUBLISH in, then every transmit out (one encoded PUBLISH
    /// per subscriber, plus the publisher's PUBACK if it published at QoS 1). Returns the number
    /// of PUBLISHes delivered.
    fn publish_once(&mut self) -> usize {
        self.broker
            .handle_bytes(self.now, self.publisher, &self.publish)
            .expect("PUBLISH");
        let mut delivered = 0;
        while let Some((handle, bytes)) = self.broker.poll_transmit() {
            if handle != self.publisher {
                delivered += 1;
            }
            black_box(bytes);
        }
        delivered
    }

    /// The timed part at QoS 1 out: as [`publish_once`](Self::publish_once), then each
    /// subscriber's PUBACK fed back, and the transmits drained again (the PUBACKs write nothing,
    /// but they mark their connections for a look).
    fn publish_once_acked(&mut self) -> usize {
        self.broker
            .handle_bytes(self.now, self.publisher, &self.publish)
            .expect("PUBLISH");
        self.acks.clear();
        while let Some((handle, bytes)) = self.broker.poll_transmit() {
            if handle != self.publisher {
                let id = publish_packet_id(&bytes);
                self.acks.push((handle, [0x40, 0x02, id[0], id[1]]));
            }
            black_box(bytes);
        }
        for (handle, puback) in &self.acks {
            self.broker
                .handle_bytes(self.now, *handle, puback)
                .expect("PUBACK");
        }
        while self.broker.poll_transmit().is_some() {}
        self.acks.len()
    }

    /// One iteration: the PUBLISH in, every transmit out, and (QoS 1 out) every PUBACK back.
    /// Returns the number of PUBLISHes delivered to subscribers.
    fn iteration(&mut self) -> usize {
        if self.acked {
            self.publish_once_acked()
        } else {
            self.publish_once()
        }
    }

    /// Runs a few iterations outside the timer and checks they delivered what they should, with
    /// nothing left in flight, queued or raised.
    fn check(&mut self) {
        for _ in 0..3 {
            assert_eq!(self.iteration(), self.deliveries);
            assert!(self.broker.poll_event().is_none());
            assert!(self.broker.poll_transmit().is_none());
            for (h, _) in &self.acks {
                let session = self.broker.session(*h).expect("open connection");
                assert_eq!(session.inflight(), 0);
                assert_eq!(session.state().queued(), 0);
            }
        }
    }
}

/// The packet identifier of an encoded QoS 1 PUBLISH (the bytes of one PUBLISH, no topic alias).
fn publish_packet_id(bytes: &[u8]) -> [u8; 2] {
    assert_eq!(bytes[0] & 0xf6, 0x32, "one QoS 1 PUBLISH");
    let mut i = 1;
    while bytes[i] & 0x80 != 0 {
        i += 1;
    }
    let topic_len = usize::from(u16::from_be_bytes([bytes[i + 1], bytes[i + 2]]));
    let at = i + 3 + topic_len;
    [bytes[at], bytes[at + 1]]
}

/// One subscriber per entry, each with the one filter [`TOPIC`].
fn exact_subscribers(n: usize) -> Vec<Vec<String>> {
    vec![vec![TOPIC.to_owned()]; n]
}

fn broker(c: &mut Criterion) {
    // (group, subscribers' granted QoS, publisher's QoS)
    let cases = [
        ("routing/broker/qos0", QoS::AtMostOnce, QoS::AtMostOnce),
        ("routing/broker/qos1", QoS::AtLeastOnce, QoS::AtLeastOnce),
        (
            "routing/broker/qos1_in_qos0_out",
            QoS::AtMostOnce,
            QoS::AtLeastOnce,
        ),
    ];
    for (name, sub_qos, pub_qos) in cases {
        let mut group = c.benchmark_group(name);
        for n in [1, 100, 10_000] {
            let mut fixture = Fixture::new(&exact_subscribers(n), sub_qos, pub_qos, n);
            fixture.check();
            group.throughput(Throughput::Elements(n as u64));
            // 10,000 deliveries take milliseconds: criterion's minimum of 10 samples keeps the
            // run within the measurement time.
            group.sample_size(if n >= 10_000 { 10 } else { 100 });
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| fixture.iteration())
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("routing/broker/non_matching");
    group.throughput(Throughput::Elements(MATCHING.len() as u64));
    for n in [0, 10_000, 100_000] {
        let mut sessions: Vec<Vec<String>> =
            MATCHING.iter().map(|f| vec![(*f).to_owned()]).collect();
        // The non-matching filters belong to 10 idle sessions, n / 10 each.
        let idle = 10;
        for s in 0..idle {
            let filters: Vec<String> = (0..n).filter(|i| i % idle == s).map(non_matching).collect();
            if !filters.is_empty() {
                sessions.push(filters);
            }
        }
        let mut fixture = Fixture::new(&sessions, QoS::AtMostOnce, QoS::AtMostOnce, MATCHING.len());
        assert_eq!(fixture.broker.subscription_count(), MATCHING.len() + n);
        fixture.check();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| fixture.iteration())
        });
    }
    group.finish();
}

criterion_group!(benches, routing, broker);
criterion_main!(benches);
