//! Codec benchmarks: mqttproto-core against the MQTT 5 codec of the `rumqttc` crate, measured in
//! the same run and the same criterion group so the figures sit side by side.
//!
//! Run with
//!
//! ```text
//! cargo bench -p mqttproto-core --bench codec -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Every case is benchmarked four times: `decode/mqttproto`, `decode/rumqttc`,
//! `encode/mqttproto`, `encode/rumqttc`, each group named after the case.
//!
//! * decode: the streaming entry point of each library (`mqttproto_core::codec::decode` and
//!   `rumqttc::v5::mqttbytes::v5::Packet::read`) takes one packet off the front of a read buffer
//!   (`BytesMut`). The buffer holds up to 256 back-to-back copies of the pre-encoded packet (at
//!   most about 1 MiB), filled outside the timed region, so it is warm in cache like a buffer just
//!   filled by a socket read and no input is decoded twice. One iteration decodes one packet and
//!   drops it; the buffer itself is freed outside the timed region. Both libraries get identical
//!   inputs.
//! * encode: `Packet::encode` (mqttproto, which validates the packet first) and `Packet::write`
//!   (rumqttc) append to one reused `BytesMut` that is cleared before each iteration.
//! * encode for a vectored write (PUBLISH only, mqttproto only, `encode_head/mqttproto`):
//!   `Publish::encode_head` appends everything but the payload, and the payload's `Bytes` is
//!   cloned into a reused list of chunks, which is what a vectored write sends. It produces the
//!   same bytes as rumqttc's `write` in two pieces instead of one copy. The drivers send
//!   payloads of 16 KiB or more this way (`SHARED_PAYLOAD_MIN`); smaller ones are copied.
//!
//! Before measuring, each case checks that both libraries agree: each side decodes its own and the
//! other side's encoding into the packet it was built from, and the two encodings have the same
//! length (and the same bytes where the property order of the two libraries coincides).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, Bencher, BenchmarkId, Criterion, Throughput};

use mqttproto_core::codec::{
    decode, Connect, ConnectProperties, Packet, Publish, PublishAck, PublishProperties, Subscribe,
    SubscribeProperties, Subscription, Will, WillProperties,
};
use mqttproto_core::{
    MqttString, PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionId,
    SubscriptionOptions, TopicFilter, TopicName, UserProperty,
};

use rumqttc::v5::mqttbytes as rq;

const V5: ProtocolVersion = ProtocolVersion::V5;
/// No size limit in the way: both libraries still compare against it.
const MAX_PACKET: u32 = u32::MAX;

const TOPIC: &str = "sensors/building-7/floor-3/room-12/temperature";
const RESPONSE_TOPIC: &str = "replies/gateway-42/temperature";
const CONTENT_TYPE: &str = "application/json";
const CORRELATION: &[u8] = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";
const USER_PROPS: [(&str, &str); 2] = [
    ("source", "gateway-42"),
    (
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
];

/// One benchmark case: the same packet built with each library.
struct Case {
    name: String,
    ours: Packet,
    theirs: rq::v5::Packet,
    /// Whether both libraries are expected to produce identical bytes (they do unless properties
    /// are written in a different order).
    same_bytes: bool,
}

fn mstr(s: &str) -> MqttString {
    MqttString::try_from(s).unwrap()
}

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn publish_case(size_name: &str, len: usize, with_props: bool) -> Case {
    let body = payload(len);
    let mut ours = Publish::new(TopicName::try_from(TOPIC).unwrap(), body.clone());
    ours.qos = QoS::AtLeastOnce;
    ours.packet_id = PacketId::new(4242);
    let mut theirs = rq::v5::Publish::new(TOPIC, rq::QoS::AtLeastOnce, body, None);
    theirs.pkid = 4242;
    if with_props {
        ours.properties = PublishProperties {
            message_expiry_interval: Some(3600),
            content_type: Some(mstr(CONTENT_TYPE)),
            response_topic: Some(TopicName::try_from(RESPONSE_TOPIC).unwrap()),
            correlation_data: Some(Bytes::from_static(CORRELATION)),
            user_properties: USER_PROPS
                .iter()
                .map(|(k, v)| UserProperty::new(mstr(k), mstr(v)))
                .collect(),
            ..PublishProperties::default()
        }
        .into();
        theirs.properties = Some(rq::v5::PublishProperties {
            message_expiry_interval: Some(3600),
            content_type: Some(CONTENT_TYPE.into()),
            response_topic: Some(RESPONSE_TOPIC.into()),
            correlation_data: Some(Bytes::from_static(CORRELATION)),
            user_properties: USER_PROPS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..rq::v5::PublishProperties::default()
        });
    }
    Case {
        name: format!(
            "publish_{size_name}_{}",
            if with_props { "props" } else { "no_props" }
        ),
        ours: Packet::Publish(ours),
        theirs: rq::v5::Packet::Publish(theirs),
        // rumqttc writes Content Type after the User Properties; mqttproto writes it before.
        same_bytes: !with_props,
    }
}

fn connect_case() -> Case {
    let will_payload = Bytes::from_static(br#"{"status":"offline","reason":"connection lost"}"#);
    let will_topic = "status/gateway-42";
    let ours = Connect {
        protocol_version: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: mstr("gateway-42-7f3a9c"),
        will: Some(Will {
            topic: TopicName::try_from(will_topic).unwrap(),
            payload: will_payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(86_400),
                content_type: Some(mstr(CONTENT_TYPE)),
                response_topic: Some(TopicName::try_from(RESPONSE_TOPIC).unwrap()),
                correlation_data: Some(Bytes::from_static(CORRELATION)),
                user_properties: [UserProperty::new(mstr("source"), mstr("gateway-42"))].into(),
                ..WillProperties::default()
            },
        }),
        username: Some(mstr("gateway-42")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: std::num::NonZeroU16::new(100),
            maximum_packet_size: std::num::NonZeroU32::new(1 << 20),
            topic_alias_maximum: Some(16),
            ..ConnectProperties::default()
        },
    };
    let theirs_connect = rq::v5::Connect {
        keep_alive: 60,
        client_id: "gateway-42-7f3a9c".into(),
        clean_start: true,
        properties: Some(rq::v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            max_packet_size: Some(1 << 20),
            topic_alias_max: Some(16),
            ..rq::v5::ConnectProperties::new()
        }),
    };
    let theirs_will = rq::v5::LastWill {
        topic: Bytes::from_static(will_topic.as_bytes()),
        message: will_payload,
        qos: rq::QoS::AtLeastOnce,
        retain: true,
        properties: Some(rq::v5::LastWillProperties {
            delay_interval: Some(30),
            payload_format_indicator: None,
            message_expiry_interval: Some(86_400),
            content_type: Some(CONTENT_TYPE.into()),
            response_topic: Some(RESPONSE_TOPIC.into()),
            correlation_data: Some(Bytes::from_static(CORRELATION)),
            user_properties: vec![("source".into(), "gateway-42".into())],
        }),
    };
    let theirs_login = rq::v5::Login::new("gateway-42", "correct horse battery staple");
    Case {
        name: "connect_will".into(),
        ours: Packet::Connect(Box::new(ours)),
        theirs: rq::v5::Packet::Connect(theirs_connect, Some(theirs_will), Some(theirs_login)),
        // Both libraries write these properties in the same order.
        same_bytes: true,
    }
}

/// The acknowledgement a broker gets for every QoS 1 delivery: PUBACK, Success, no properties
/// (the two-byte body).
fn puback_case() -> Case {
    Case {
        name: "puback".into(),
        ours: Packet::PubAck(PublishAck::new(PacketId::new(4242).unwrap())),
        theirs: rq::v5::Packet::PubAck(rq::v5::PubAck::new(4242, None)),
        same_bytes: true,
    }
}

fn subscribe_case() -> Case {
    const FILTERS: [&str; 10] = [
        "sensors/building-7/+/room-12/temperature",
        "sensors/building-7/floor-3/#",
        "alerts/+/critical",
        "commands/gateway-42/#",
        "config/gateway-42",
        "firmware/updates/+",
        "$share/workers/jobs/+/pending",
        "status/+",
        "telemetry/+/+/humidity",
        "broadcast/all",
    ];
    let qos_of = |i: usize| match i % 3 {
        0 => (QoS::AtMostOnce, rq::QoS::AtMostOnce),
        1 => (QoS::AtLeastOnce, rq::QoS::AtLeastOnce),
        _ => (QoS::ExactlyOnce, rq::QoS::ExactlyOnce),
    };
    let ours = Subscribe {
        packet_id: PacketId::new(17).unwrap(),
        properties: SubscribeProperties {
            subscription_identifier: SubscriptionId::new(42),
            ..SubscribeProperties::default()
        },
        subscriptions: FILTERS
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut s = Subscription::new(TopicFilter::try_from(*f).unwrap(), qos_of(i).0);
                if i == 3 {
                    s.options = SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    };
                }
                s
            })
            .collect(),
    };
    let theirs = rq::v5::Subscribe {
        pkid: 17,
        properties: Some(rq::v5::SubscribeProperties {
            id: Some(42),
            user_properties: Vec::new(),
        }),
        filters: FILTERS
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut filter = rq::v5::Filter::new(*f, qos_of(i).1);
                if i == 3 {
                    filter.qos = rq::QoS::AtLeastOnce;
                    filter.nolocal = true;
                    filter.preserve_retain = true;
                    filter.retain_forward_rule = rq::v5::RetainForwardRule::OnNewSubscribe;
                }
                filter
            })
            .collect(),
    };
    Case {
        name: "subscribe_10".into(),
        ours: Packet::Subscribe(ours),
        theirs: rq::v5::Packet::Subscribe(theirs),
        same_bytes: true,
    }
}

fn ours_decode(wire: &[u8]) -> Packet {
    let mut buf = BytesMut::from(wire);
    let p = decode(&mut buf, V5, MAX_PACKET).unwrap().unwrap();
    assert!(buf.is_empty());
    p
}

fn theirs_decode(wire: &[u8]) -> rq::v5::Packet {
    let mut buf = BytesMut::from(wire);
    let p = rq::v5::Packet::read(&mut buf, Some(MAX_PACKET)).unwrap();
    assert!(buf.is_empty());
    p
}

/// Encodes the case with both libraries and checks, outside any timed loop, that each decodes
/// both encodings into the packet it was built from. Returns mqttproto's encoding.
fn check_equivalent(case: &Case) -> Bytes {
    let ours_wire = case.ours.to_bytes(V5).unwrap();
    let mut theirs_wire = BytesMut::new();
    let n = case.theirs.write(&mut theirs_wire, None).unwrap();
    assert_eq!(n, theirs_wire.len(), "{}", case.name);
    assert_eq!(
        ours_wire.len(),
        theirs_wire.len(),
        "{}: sizes differ",
        case.name
    );
    assert_eq!(case.ours.encoded_len(V5), ours_wire.len(), "{}", case.name);
    assert_eq!(case.theirs.size(), theirs_wire.len(), "{}", case.name);
    if case.same_bytes {
        assert_eq!(
            &ours_wire[..],
            &theirs_wire[..],
            "{}: bytes differ",
            case.name
        );
    } else {
        assert_ne!(
            &ours_wire[..],
            &theirs_wire[..],
            "{}: expected a different order",
            case.name
        );
    }
    assert_eq!(ours_decode(&ours_wire), case.ours, "{}", case.name);
    assert_eq!(ours_decode(&theirs_wire), case.ours, "{}", case.name);
    assert_eq!(theirs_decode(&ours_wire), case.theirs, "{}", case.name);
    assert_eq!(theirs_decode(&theirs_wire), case.theirs, "{}", case.name);
    if let Packet::Publish(p) = &case.ours {
        check_vectored(p, &ours_wire);
    }
    ours_wire
}

/// Times `decode` taking packets off the front of a read buffer, the way a connection decodes a
/// stream. The buffer is filled with `chunk` back-to-back copies of `wire` outside the timed region
/// (so it is warm in cache, like a buffer just filled by a socket read, and no copy is reused); the
/// timed region covers decoding each packet and dropping it; the buffer is freed outside it.
///
/// The core never reads a clock, but a benchmark that times its own chunks of work must.
#[allow(clippy::disallowed_methods)]
fn bench_decode<O>(b: &mut Bencher, wire: &[u8], mut decode: impl FnMut(&mut BytesMut) -> O) {
    // Keep one buffer within about 1 MiB.
    let chunk = ((1 << 20) / wire.len().max(1)).clamp(1, 256);
    b.iter_custom(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(chunk as u64) as usize;
            let mut input = BytesMut::with_capacity(n * wire.len());
            for _ in 0..n {
                input.extend_from_slice(wire);
            }
            let start = Instant::now();
            for _ in 0..n {
                black_box(decode(black_box(&mut input)));
            }
            elapsed += start.elapsed();
            assert!(input.is_empty());
            left -= n as u64;
        }
        elapsed
    });
}

fn bench_case(c: &mut Criterion, case: &Case) {
    let wire = check_equivalent(case);
    let mut group = c.benchmark_group(&case.name);
    group.throughput(Throughput::Bytes(wire.len() as u64));

    group.bench_function(BenchmarkId::new("decode", "mqttproto"), |b| {
        bench_decode(b, &wire, |buf| {
            decode(buf, V5, MAX_PACKET).unwrap().unwrap()
        })
    });
    group.bench_function(BenchmarkId::new("decode", "rumqttc"), |b| {
        bench_decode(b, &wire, |buf| {
            rq::v5::Packet::read(buf, Some(MAX_PACKET)).unwrap()
        })
    });

    let mut out = BytesMut::with_capacity(2 * wire.len());
    group.bench_function(BenchmarkId::new("encode", "mqttproto"), |b| {
        b.iter(|| {
            out.clear();
            black_box(&case.ours).encode(&mut out, V5).unwrap();
            black_box(&out);
        })
    });
    group.bench_function(BenchmarkId::new("encode", "rumqttc"), |b| {
        b.iter(|| {
            out.clear();
            black_box(&case.theirs).write(&mut out, None).unwrap();
            black_box(&out);
        })
    });
    if let Packet::Publish(publish) = &case.ours {
        let mut chunks = Vec::with_capacity(1);
        group.bench_function(BenchmarkId::new("encode_head", "mqttproto"), |b| {
            b.iter(|| encode_vectored(black_box(publish), &mut out, &mut chunks))
        });
    }
    group.finish();
}

/// What a driver does to send a PUBLISH with a vectored write: the head is encoded, the payload
/// is referenced (the chunk list stands for the write's second buffer).
#[inline(always)]
fn encode_vectored(publish: &Publish, out: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    out.clear();
    chunks.clear();
    publish.encode_head(out, V5).unwrap();
    chunks.push(publish.payload.clone());
    black_box((&*out, &*chunks));
}

/// Checks that the head and the payload make the packet `Packet::encode` writes.
fn check_vectored(publish: &Publish, wire: &[u8]) {
    let (mut out, mut chunks) = (BytesMut::new(), Vec::new());
    encode_vectored(publish, &mut out, &mut chunks);
    let mut joined = out.to_vec();
    joined.extend_from_slice(&chunks[0]);
    assert_eq!(joined, wire, "encode_head + payload differs from encode");
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (size_name, len) in [("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        cases.push(publish_case(size_name, len, false));
        cases.push(publish_case(size_name, len, true));
    }
    cases.push(connect_case());
    cases.push(subscribe_case());
    cases.push(puback_case());
    cases
}

fn codec(c: &mut Criterion) {
    for case in &all_cases() {
        bench_case(c, case);
    }
}

criterion_group!(benches, codec);

/// Instruction counting under `valgrind --tool=callgrind`, which unlike wall-clock time is
/// repeatable on a busy machine: with `CODEC_COUNT=<iterations>` set, the binary runs every case's
/// four loops through the `count_*` functions below and exits. Each function's inclusive cost
/// divided by the iteration count is the cost of one decode (packet dropped included) or one
/// encode. `CODEC_COUNT_CASE=<name>` restricts the run to one case.
///
/// ```text
/// CODEC_COUNT=1000 CODEC_COUNT_CASE=publish_64B_no_props valgrind --tool=callgrind \
///     --callgrind-out-file=cg.out target/release/deps/codec-<hash>
/// callgrind_annotate --inclusive=yes cg.out | grep count_
/// ```
fn count_mode(iterations: usize, only: Option<&str>) {
    for case in all_cases() {
        if only.is_some_and(|name| name != case.name) {
            continue;
        }
        let wire = check_equivalent(&case);
        let mut input = BytesMut::with_capacity(iterations * wire.len());
        for _ in 0..iterations {
            input.extend_from_slice(&wire);
        }
        count_decode_mqttproto(&mut input, iterations);
        for _ in 0..iterations {
            input.extend_from_slice(&wire);
        }
        count_decode_rumqttc(&mut input, iterations);
        let mut out = BytesMut::with_capacity(2 * wire.len());
        count_encode_mqttproto(&case.ours, &mut out, iterations);
        count_encode_rumqttc(&case.theirs, &mut out, iterations);
        if let Packet::Publish(publish) = &case.ours {
            count_encode_head_mqttproto(publish, &mut out, iterations);
        }
        println!("{}: {} iterations counted", case.name, iterations);
    }
}

#[inline(never)]
fn count_decode_mqttproto(input: &mut BytesMut, n: usize) {
    for _ in 0..n {
        black_box(
            decode(black_box(&mut *input), V5, MAX_PACKET)
                .unwrap()
                .unwrap(),
        );
    }
}

#[inline(never)]
fn count_decode_rumqttc(input: &mut BytesMut, n: usize) {
    for _ in 0..n {
        black_box(rq::v5::Packet::read(black_box(&mut *input), Some(MAX_PACKET)).unwrap());
    }
}

#[inline(never)]
fn count_encode_mqttproto(p: &Packet, out: &mut BytesMut, n: usize) {
    for _ in 0..n {
        out.clear();
        black_box(p).encode(out, V5).unwrap();
        black_box(&*out);
    }
}

#[inline(never)]
fn count_encode_head_mqttproto(p: &Publish, out: &mut BytesMut, n: usize) {
    let mut chunks = Vec::with_capacity(1);
    for _ in 0..n {
        encode_vectored(black_box(p), out, &mut chunks);
    }
}

#[inline(never)]
fn count_encode_rumqttc(p: &rq::v5::Packet, out: &mut BytesMut, n: usize) {
    for _ in 0..n {
        out.clear();
        black_box(p).write(out, None).unwrap();
        black_box(&*out);
    }
}

/// Wall-clock timing with the two libraries interleaved, a check on criterion's figures when the
/// machine is busy: with `CODEC_INTERLEAVED=<rounds>` set, every round times one batch of each of
/// the four loops (decode and encode, mqttproto and rumqttc, in an order that alternates between
/// rounds), so a burst of load from other processes falls on both libraries alike. It prints, per
/// case and operation, the minimum and the median over the rounds of the time per packet, and the
/// ratios rumqttc / mqttproto of both. `CODEC_COUNT_CASE=<name>` restricts the run to one case.
///
/// For a PUBLISH it also times `enc_head` (the encode for a vectored write) and `pay_copy`: the
/// payload's copy into the reused output buffer and nothing else, the floor of any encoder that
/// writes the packet into one buffer. Both rows are compared with rumqttc's encode.
#[allow(clippy::disallowed_methods)]
fn interleaved_mode(rounds: usize, only: Option<&str>) {
    fn time_batch(n: usize, mut f: impl FnMut()) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_secs_f64() * 1e9 / n as f64
    }
    fn summary(v: &mut [f64]) -> (f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    }
    println!(
        "{:<24} {:<7} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "case",
        "op",
        "ours min",
        "theirs min",
        "ours median",
        "theirs med",
        "ratio min",
        "ratio med"
    );
    for case in all_cases() {
        if only.is_some_and(|name| name != case.name) {
            continue;
        }
        let wire = check_equivalent(&case);
        let n = ((1 << 20) / wire.len().max(1)).clamp(1, 256);
        let mut input = BytesMut::with_capacity(n * wire.len());
        let mut out = BytesMut::with_capacity(2 * wire.len());
        let publish = match &case.ours {
            Packet::Publish(p) => Some(p),
            _ => None,
        };
        let mut chunks = Vec::with_capacity(1);
        // decode ours, decode theirs, encode ours, encode theirs, encode_head ours (PUBLISH), the
        // payload's copy alone (PUBLISH)
        let mut t: [Vec<f64>; 6] = Default::default();
        for round in 0..rounds {
            for k in 0..6 {
                let which = if k >= 4 || round % 2 == 0 { k } else { k ^ 1 };
                match which {
                    5 => {
                        if let Some(p) = publish {
                            t[5].push(time_batch(n, || {
                                out.clear();
                                out.extend_from_slice(black_box(&p.payload));
                                black_box(&out);
                            }));
                        }
                    }
                    4 => {
                        if let Some(p) = publish {
                            t[4].push(time_batch(n, || {
                                encode_vectored(black_box(p), &mut out, &mut chunks)
                            }));
                        }
                    }
                    0 | 1 => {
                        input.clear();
                        for _ in 0..n {
                            input.extend_from_slice(&wire);
                        }
                        let buf = &mut input;
                        t[which].push(if which == 0 {
                            time_batch(n, || {
                                black_box(decode(black_box(&mut *buf), V5, MAX_PACKET).unwrap());
                            })
                        } else {
                            time_batch(n, || {
                                black_box(
                                    rq::v5::Packet::read(black_box(&mut *buf), Some(MAX_PACKET))
                                        .unwrap(),
                                );
                            })
                        });
                    }
                    2 => t[2].push(time_batch(n, || {
                        out.clear();
                        black_box(&case.ours).encode(&mut out, V5).unwrap();
                        black_box(&out);
                    })),
                    _ => t[3].push(time_batch(n, || {
                        out.clear();
                        black_box(&case.theirs).write(&mut out, None).unwrap();
                        black_box(&out);
                    })),
                }
            }
        }
        let rows: &[(&str, usize, usize)] = if publish.is_some() {
            &[
                ("decode", 0, 1),
                ("encode", 2, 3),
                ("enc_head", 4, 3),
                ("pay_copy", 5, 3),
            ]
        } else {
            &[("decode", 0, 1), ("encode", 2, 3)]
        };
        for &(op, i, j) in rows {
            let (ours_min, ours_med) = summary(&mut t[i].clone());
            let (theirs_min, theirs_med) = summary(&mut t[j].clone());
            println!(
                "{:<24} {:<7} {:>9.1} ns {:>9.1} ns {:>9.1} ns {:>9.1} ns {:>9.2} {:>9.2}",
                case.name,
                op,
                ours_min,
                theirs_min,
                ours_med,
                theirs_med,
                theirs_min / ours_min,
                theirs_med / ours_med
            );
        }
    }
}

fn main() {
    if let Some(rounds) = std::env::var("CODEC_INTERLEAVED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let only = std::env::var("CODEC_COUNT_CASE").ok();
        interleaved_mode(rounds, only.as_deref());
        return;
    }
    if let Some(n) = std::env::var("CODEC_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let only = std::env::var("CODEC_COUNT_CASE").ok();
        count_mode(n, only.as_deref());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
