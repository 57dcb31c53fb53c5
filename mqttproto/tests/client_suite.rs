//! One behaviour suite for both clients, run against both brokers: every scenario below is a
//! plain function of the client driver (`mqttproto::tokio::Client` or
//! `mqttproto::blocking::Client`) and the broker (Mosquitto, started on a free loopback port, or
//! our `mqttproto::tokio::Broker`), and the `suite!` macro at the bottom instantiates it for
//! the four pairs. Scenarios that do not depend on the broker, or only make sense against
//! Mosquitto, run once per driver. Every wait is bounded.

#![cfg(all(feature = "blocking", feature = "tokio"))]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::{Mosquitto, Proxy};
use mqttproto::client::{ClientError, ConnectionEvent, Message, Reconnect};
use mqttproto::proto::codec::{Publish, Will, WillProperties};
use mqttproto::proto::{MqttString, QoS, ReasonCode, StateError, TopicName, UserProperty};
use mqttproto::tokio::broker::{Broker, BrokerConfig, BrokerHandle, ListenAddr};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Runs `f` on the shared runtime, bounded by `secs`.
fn block_on<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match rt().block_on(async { tokio::time::timeout(Duration::from_secs(secs), f).await }) {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {secs} s"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Driver {
    Tokio,
    Blocking,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BrokerKind {
    Mosquitto,
    Ours,
}

/// Broker limits a scenario needs.
#[derive(Default)]
struct Limits {
    receive_maximum: Option<u16>,
    max_packet_size: Option<u32>,
    /// Sessions survive a restart (Mosquitto's persistence).
    persistence: bool,
}

enum TestBroker {
    Mosquitto(Mosquitto),
    Ours(Option<BrokerHandle>, SocketAddr),
}

impl TestBroker {
    /// `None` only when Mosquitto is missing and peer tests may be skipped.
    fn start(kind: BrokerKind, limits: Limits) -> Option<TestBroker> {
        match kind {
            BrokerKind::Mosquitto => {
                let mut conf = String::new();
                if let Some(n) = limits.receive_maximum {
                    conf += &format!("max_inflight_messages {n}\n");
                }
                if let Some(n) = limits.max_packet_size {
                    conf += &format!("max_packet_size {n}\n");
                }
                if limits.persistence {
                    conf += "persistence true\nautosave_interval 1\n";
                }
                Mosquitto::start(&conf).map(TestBroker::Mosquitto)
            }
            BrokerKind::Ours => {
                let mut config = BrokerConfig::default()
                    .listen("127.0.0.1:0".parse::<ListenAddr>().expect("an address"));
                if let Some(n) = limits.receive_maximum.and_then(NonZeroU16::new) {
                    config = config.with_receive_maximum(n);
                }
                if let Some(n) = limits.max_packet_size.and_then(NonZeroU32::new) {
                    config = config.with_max_packet_size(n);
                }
                let broker = block_on(5, "bind", Broker::bind(config)).expect("bind");
                let addr = broker.local_addrs()[0]
                    .socket_addr()
                    .expect("a TCP address");
                let _guard = rt().enter();
                Some(TestBroker::Ours(Some(broker.spawn()), addr))
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            TestBroker::Mosquitto(m) => SocketAddr::from(([127, 0, 0, 1], m.port)),
            TestBroker::Ours(_, addr) => *addr,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://{}", self.addr())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let TestBroker::Ours(handle, _) = self {
            if let Some(h) = handle.take() {
                block_on(10, "broker shutdown", h.shutdown());
            }
        }
    }
}

/// Client options the scenarios vary.
#[derive(Clone)]
struct Opts {
    id: String,
    clean_start: bool,
    session_expiry: u32,
    will: Option<Will>,
    reconnect: Reconnect,
    subscription_capacity: Option<usize>,
}

impl Opts {
    fn new(id: &str) -> Opts {
        Opts {
            id: id.to_string(),
            clean_start: true,
            session_expiry: 0,
            will: None,
            reconnect: Reconnect::default(),
            subscription_capacity: None,
        }
    }
}

fn fast_reconnect() -> Reconnect {
    Reconnect::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }
}

/// Either client, behind one synchronous interface (the tokio client's futures run on the
/// shared runtime, each bounded).
#[derive(Clone)]
enum TestClient {
    Tokio(mqttproto::tokio::Client),
    Blocking(mqttproto::blocking::Client),
}

/// Either client's subscription.
enum TestSub {
    Tokio(mqttproto::tokio::client::Subscription),
    Blocking(mqttproto::blocking::Subscription),
}

/// Either client's connection events.
enum Events {
    Tokio(tokio::sync::broadcast::Receiver<ConnectionEvent>),
    Blocking(std::sync::mpsc::Receiver<ConnectionEvent>),
}

macro_rules! with_options {
    ($builder:expr, $o:expr) => {{
        let o = $o;
        let mut b = $builder
            .client_id(&o.id)
            .clean_start(o.clean_start)
            .session_expiry(o.session_expiry)
            .reconnect(o.reconnect.clone());
        if let Some(w) = o.will.clone() {
            b = b.will(w);
        }
        if let Some(n) = o.subscription_capacity {
            b = b.subscription_capacity(n);
        }
        b
    }};
}

impl TestClient {
    fn new(driver: Driver, url: &str, o: &Opts) -> TestClient {
        match driver {
            Driver::Tokio => {
                let _guard = rt().enter();
                let b = mqttproto::tokio::Client::builder(url).expect("a URL");
                TestClient::Tokio(with_options!(b, o).build())
            }
            Driver::Blocking => {
                let b = mqttproto::blocking::Client::builder(url).expect("a URL");
                TestClient::Blocking(with_options!(b, o).build().expect("client thread"))
            }
        }
    }

    fn publish_message(&self, p: Publish) -> Result<ReasonCode, ClientError> {
        match self {
            TestClient::Tokio(c) => block_on(30, "publish", c.publish_message(p)),
            TestClient::Blocking(c) => {
                match c.publish_message_timeout(p, Some(Duration::from_secs(30))) {
                    Err(ClientError::Timeout(_)) => panic!("publish: not within 30 s"),
                    r => r,
                }
            }
        }
    }

    fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<ReasonCode, ClientError> {
        let mut p = Publish::new(TopicName::try_from(topic).expect("a topic"), payload.into());
        p.qos = qos;
        self.publish_message(p)
    }

    fn try_publish(&self, topic: &str, payload: impl Into<Bytes>, qos: QoS) {
        let mut p = Publish::new(TopicName::try_from(topic).expect("a topic"), payload.into());
        p.qos = qos;
        match self {
            TestClient::Tokio(c) => c.try_publish(p),
            TestClient::Blocking(c) => c.try_publish(p),
        }
        .expect("client open");
    }

    fn subscribe(&self, filter: &str, qos: QoS) -> TestSub {
        match self {
            TestClient::Tokio(c) => {
                TestSub::Tokio(block_on(10, "subscribe", c.subscribe(filter, qos)).expect("SUBACK"))
            }
            TestClient::Blocking(c) => TestSub::Blocking(c.subscribe(filter, qos).expect("SUBACK")),
        }
    }

    fn events(&self) -> Events {
        match self {
            TestClient::Tokio(c) => Events::Tokio(c.events()),
            TestClient::Blocking(c) => Events::Blocking(c.events()),
        }
    }

    fn disconnect(&self) {
        match self {
            TestClient::Tokio(c) => block_on(10, "disconnect", c.disconnect()),
            TestClient::Blocking(c) => c.disconnect(),
        }
        .expect("disconnected");
    }
}

impl TestSub {
    /// The next message within `wait`, if any.
    fn next_within(&mut self, wait: Duration) -> Option<Message> {
        match self {
            TestSub::Tokio(s) => rt()
                .block_on(async { tokio::time::timeout(wait, s.recv()).await })
                .ok()
                .flatten(),
            TestSub::Blocking(s) => s.recv_timeout(wait).ok(),
        }
    }

    /// The next message; fails the test if none comes within [`WAIT`].
    fn next(&mut self) -> Message {
        self.next_within(WAIT).expect("a message in time")
    }

    fn granted(&self) -> &[ReasonCode] {
        match self {
            TestSub::Tokio(s) => s.granted(),
            TestSub::Blocking(s) => s.granted(),
        }
    }
}

impl Events {
    /// Every event received so far.
    fn drain(&mut self) -> Vec<ConnectionEvent> {
        let mut out = Vec::new();
        match self {
            Events::Tokio(rx) => {
                while let Ok(ev) = rx.try_recv() {
                    out.push(ev);
                }
            }
            Events::Blocking(rx) => {
                while let Ok(ev) = rx.try_recv() {
                    out.push(ev);
                }
            }
        }
        out
    }

    /// The next event within [`WAIT`].
    fn next(&mut self) -> ConnectionEvent {
        match self {
            Events::Tokio(rx) => block_on(10, "event", rx.recv()).expect("an event"),
            Events::Blocking(rx) => rx.recv_timeout(WAIT).expect("an event in time"),
        }
    }
}

fn proxy(to: SocketAddr) -> Proxy {
    let _guard = rt().enter();
    block_on(5, "proxy", Proxy::start(to))
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

fn round_trips_qos_0_1_2_with_properties(driver: Driver, kind: BrokerKind) {
    let Some(b) = TestBroker::start(kind, Limits::default()) else {
        return;
    };
    let subscriber = TestClient::new(driver, &b.url(), &Opts::new("rt-sub"));
    let publisher = TestClient::new(driver, &b.url(), &Opts::new("rt-pub"));
    let mut sub = subscriber.subscribe("rt/#", QoS::ExactlyOnce);
    assert_eq!(sub.granted(), &[ReasonCode::GrantedQoS2]);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut p = Publish::new(
            TopicName::try_from(format!("rt/{i}")).unwrap(),
            format!("m{i}"),
        );
        p.qos = qos;
        p.properties.content_type = Some(MqttString::try_from("text/plain").unwrap());
        p.properties.user_properties = vec![UserProperty::new(
            MqttString::try_from("k").unwrap(),
            MqttString::try_from("v").unwrap(),
        )]
        .into();
        p.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        assert_eq!(publisher.publish_message(p).unwrap(), ReasonCode::Success);
        let got = sub.next();
        assert_eq!(got.topic.as_str(), format!("rt/{i}"));
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], format!("m{i}").as_bytes());
        assert_eq!(got.properties.content_type.as_ref().unwrap(), "text/plain");
        assert_eq!(got.properties.user_properties.len(), 1);
        assert_eq!(
            got.properties.correlation_data.as_deref(),
            Some(&b"\x01\x02"[..])
        );
    }
    publisher.disconnect();
    subscriber.disconnect();
}

fn retained_messages(driver: Driver, kind: BrokerKind) {
    let Some(b) = TestBroker::start(kind, Limits::default()) else {
        return;
    };
    let c = TestClient::new(driver, &b.url(), &Opts::new("ret"));
    let mut p = Publish::new(TopicName::try_from("ret/a").unwrap(), "kept");
    p.retain = true;
    p.qos = QoS::AtLeastOnce;
    // Nobody subscribes yet [MQTT-3.3.1-5: the broker stores it anyway].
    assert_eq!(
        c.publish_message(p).unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    let mut sub = c.subscribe("ret/+", QoS::AtLeastOnce);
    let got = sub.next();
    // Sent because of a new subscription: RETAIN stays set [MQTT-3.3.1-8].
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"kept");
    c.disconnect();
}

fn subscriptions_are_reference_counted_and_unsubscribe_on_drop(driver: Driver, kind: BrokerKind) {
    let Some(b) = TestBroker::start(kind, Limits::default()) else {
        return;
    };
    let c = TestClient::new(driver, &b.url(), &Opts::new("refs"));
    let mut a = c.subscribe("rc/x", QoS::AtLeastOnce);
    let mut s = c.subscribe("rc/x", QoS::AtLeastOnce);
    c.publish("rc/x", "1", QoS::AtLeastOnce).unwrap();
    assert_eq!(&a.next().payload[..], b"1");
    assert_eq!(&s.next().payload[..], b"1");
    drop(a);
    // Still subscribed through `s`.
    assert_eq!(
        c.publish("rc/x", "2", QoS::AtLeastOnce).unwrap(),
        ReasonCode::Success
    );
    assert_eq!(&s.next().payload[..], b"2");
    drop(s);
    // Now unsubscribed on the wire: the broker reports no matching subscribers.
    let mut rc = ReasonCode::Success;
    for _ in 0..100 {
        rc = c.publish("rc/x", "3", QoS::AtLeastOnce).unwrap();
        if rc == ReasonCode::NoMatchingSubscribers {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rc, ReasonCode::NoMatchingSubscribers);
    c.disconnect();
}

fn receive_maximum_of_the_broker_is_respected(driver: Driver, kind: BrokerKind) {
    let limits = Limits {
        receive_maximum: Some(5),
        ..Limits::default()
    };
    let Some(b) = TestBroker::start(kind, limits) else {
        return;
    };
    let subscriber = TestClient::new(driver, &b.url(), &Opts::new("rm-sub"));
    let mut sub = subscriber.subscribe("rm", QoS::AtLeastOnce);
    let c = TestClient::new(driver, &b.url(), &Opts::new("rm-pub"));
    let mut events = c.events();
    // 20 threads × 10 publishes, each waiting for its PUBACK: up to 20 at once, so the client
    // must hold back beyond the 5 the broker allows [MQTT-4.9.0-2]; a client that sent more
    // would be disconnected with 0x93.
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let rc = c.publish("rm", format!("{t}-{i}"), QoS::AtLeastOnce);
                    assert_eq!(rc.unwrap(), ReasonCode::Success);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("publisher thread");
    }
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let m = sub.next();
        assert!(seen.insert(m.payload.clone()), "duplicate {:?}", m.payload);
    }
    assert_eq!(seen.len(), 200);
    for ev in events.drain() {
        assert!(
            !matches!(ev, ConnectionEvent::Disconnected { .. }),
            "{ev:?}"
        );
    }
    c.disconnect();
    subscriber.disconnect();
}

fn message_above_the_broker_maximum_packet_size_is_refused_clearly(
    driver: Driver,
    kind: BrokerKind,
) {
    let limits = Limits {
        max_packet_size: Some(1000),
        ..Limits::default()
    };
    let Some(b) = TestBroker::start(kind, limits) else {
        return;
    };
    let c = TestClient::new(driver, &b.url(), &Opts::new("big"));
    let mut events = c.events();
    // Subscribing waits for the connection, so that the broker's limit is known.
    let _s = c.subscribe("big/ack", QoS::AtMostOnce);
    let err = c
        .publish("big/t", vec![0u8; 5000], QoS::AtLeastOnce)
        .unwrap_err();
    // [MQTT-3.1.2-24]: the client must not send a packet above the server's maximum.
    assert!(
        matches!(
            err,
            ClientError::State(StateError::PacketTooLarge { max: 1000, .. })
        ),
        "{err}"
    );
    // The connection is unharmed.
    assert_eq!(
        c.publish("big/t", "small", QoS::AtLeastOnce).unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    for ev in events.drain() {
        assert!(
            !matches!(ev, ConnectionEvent::Disconnected { .. }),
            "{ev:?}"
        );
    }
    c.disconnect();
}

fn will_is_published_when_the_connection_is_killed(driver: Driver, kind: BrokerKind) {
    let Some(b) = TestBroker::start(kind, Limits::default()) else {
        return;
    };
    let watcher = TestClient::new(driver, &b.url(), &Opts::new("will-watch"));
    let mut wills = watcher.subscribe("wills/#", QoS::AtLeastOnce);
    let p = proxy(b.addr());
    let mut o = Opts::new("w1");
    o.will = Some(Will {
        topic: TopicName::try_from("wills/w1").unwrap(),
        payload: Bytes::from_static(b"w1 died"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    o.reconnect = Reconnect::Off;
    let c = TestClient::new(driver, &p.url(), &o);
    let _s = c.subscribe("w1/x", QoS::AtMostOnce);
    // Cut without DISCONNECT: the broker publishes the will [MQTT-3.1.2-8].
    p.cut();
    let got = wills.next();
    assert_eq!(&got.payload[..], b"w1 died");
    watcher.disconnect();
}

fn publishing_from_inside_a_receive_loop_does_not_deadlock(driver: Driver, kind: BrokerKind) {
    let Some(b) = TestBroker::start(kind, Limits::default()) else {
        return;
    };
    let mut o = Opts::new("echo");
    o.subscription_capacity = Some(2);
    let c = TestClient::new(driver, &b.url(), &o);
    let mut pings = c.subscribe("ping", QoS::AtLeastOnce);
    let mut pongs = c.subscribe("pong", QoS::AtLeastOnce);
    let echo = c.clone();
    let handler = std::thread::spawn(move || {
        for _ in 0..50 {
            let msg = pings.next();
            // Waiting for a PUBACK from inside the loop while more messages arrive.
            echo.publish("pong", msg.payload, QoS::AtLeastOnce)
                .expect("PUBACK");
        }
    });
    for i in 0..50 {
        c.try_publish("ping", format!("{i}"), QoS::AtLeastOnce);
    }
    for i in 0..50 {
        assert_eq!(pongs.next().payload, Bytes::from(format!("{i}")));
    }
    handler.join().expect("handler thread");
    c.disconnect();
}

/// The connection breaks in the middle of a QoS 2 stream (Mosquitto: restarted, sessions kept
/// on disk; ours: every connection cut by a proxy, sessions kept in memory). Every message
/// arrives exactly once [MQTT-4.3.3-1], the subscriber's session is resumed
/// [MQTT-3.2.2-2], and unacknowledged messages are resent with DUP [MQTT-4.4.0-1].
fn reconnect_and_resume_without_loss_or_duplicates(driver: Driver, kind: BrokerKind) {
    let limits = Limits {
        persistence: true,
        ..Limits::default()
    };
    let Some(mut b) = TestBroker::start(kind, limits) else {
        return;
    };
    let cut = match kind {
        BrokerKind::Ours => Some(proxy(b.addr())),
        BrokerKind::Mosquitto => None,
    };
    let url = match &cut {
        Some(p) => p.url(),
        None => b.url(),
    };
    let opts = |id: &str| {
        let mut o = Opts::new(id);
        // Mosquitto 2.0.11 does not persist across a restart a session that began with Clean
        // Start = 1, so start with 0.
        o.clean_start = false;
        o.session_expiry = 600;
        o.reconnect = fast_reconnect();
        o
    };
    let subscriber = TestClient::new(driver, &url, &opts("resume-sub"));
    let mut sub_events = subscriber.events();
    let mut sub = subscriber.subscribe("resume/#", QoS::ExactlyOnce);
    let publisher = TestClient::new(driver, &url, &opts("resume-pub"));
    let mut pub_events = publisher.events();
    const N: usize = 60;
    let sender = {
        let publisher = publisher.clone();
        std::thread::spawn(move || {
            let threads: Vec<_> = (0..N)
                .map(|i| {
                    let publisher = publisher.clone();
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    std::thread::spawn(move || {
                        publisher.publish(
                            &format!("resume/{}", i % 3),
                            format!("{i}"),
                            QoS::ExactlyOnce,
                        )
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("publisher"))
                .collect::<Vec<_>>()
        })
    };
    std::thread::sleep(Duration::from_millis(60));
    match &cut {
        Some(p) => p.cut(),
        None => {
            if let TestBroker::Mosquitto(m) = &mut b {
                m.restart();
            }
        }
    }
    for rc in sender.join().expect("sender") {
        let rc = rc.expect("publish completes");
        assert!(!rc.is_error(), "{rc}");
    }
    let mut seen = vec![0u32; N];
    for _ in 0..N {
        let Some(msg) = sub.next_within(Duration::from_secs(30)) else {
            let missing: Vec<_> = (0..N).filter(|&i| seen[i] == 0).collect();
            panic!(
                "messages missing: {missing:?}; subscriber events: {:?}",
                sub_events.drain()
            );
        };
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        seen[i] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "lost or duplicated: {seen:?}");
    // Nothing more arrives (no duplicates later either).
    assert!(sub.next_within(Duration::from_millis(300)).is_none());
    let evs = sub_events.drain();
    assert!(
        !evs.iter()
            .any(|e| matches!(e, ConnectionEvent::SessionLost)),
        "session lost: {evs:?}"
    );
    assert!(
        evs.iter().any(|e| matches!(
            e,
            ConnectionEvent::Connected {
                session_present: true
            }
        )),
        "the subscriber resumed its session: {evs:?}"
    );
    let evs = pub_events.drain();
    assert!(
        evs.iter()
            .filter(|e| matches!(e, ConnectionEvent::Connected { .. }))
            .count()
            >= 2,
        "the publisher reconnected: {evs:?}"
    );
    publisher.disconnect();
    subscriber.disconnect();
}

fn connection_refused_is_reported_and_publish_fails_when_reconnect_is_off(driver: Driver) {
    let port = common::free_port();
    let mut o = Opts::new("refused");
    o.reconnect = Reconnect::Off;
    let c = TestClient::new(driver, &format!("127.0.0.1:{port}"), &o);
    let mut events = c.events();
    let err = c.publish("x", "y", QoS::AtLeastOnce).unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    let ev = events.next();
    assert!(
        matches!(
            ev,
            ConnectionEvent::Disconnected {
                reason_code: None,
                ..
            }
        ),
        "{ev:?}"
    );
}

/// A consumer reading slowly gets back-pressure (the client stops reading; TCP pushes back on
/// the broker), not loss, even at QoS 0. Against Mosquitto with an unbounded queue: a broker
/// may drop QoS 0 messages for a slow consumer, and ours does once its bounded outbound queue
/// is full.
fn a_slow_consumer_gets_back_pressure_not_loss_at_qos0(driver: Driver) {
    let Some(m) = Mosquitto::start("max_queued_messages 0") else {
        return;
    };
    let mut o = Opts::new("slow-qos0");
    o.subscription_capacity = Some(4);
    let slow = TestClient::new(driver, &m.url(), &o);
    let mut sub = slow.subscribe("bp/#", QoS::AtMostOnce);
    let producer = TestClient::new(driver, &m.url(), &Opts::new("fast-qos0"));
    const N: usize = 5_000;
    for i in 0..N - 1 {
        producer.try_publish("bp/x", format!("{i}"), QoS::AtMostOnce);
    }
    producer
        .publish("bp/x", format!("{}", N - 1), QoS::AtLeastOnce)
        .unwrap();
    // Read slowly: the client must stop reading rather than drop.
    for i in 0..N {
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let msg = sub.next();
        assert_eq!(msg.payload, Bytes::from(format!("{i}")), "message {i}");
    }
    producer.disconnect();
    slow.disconnect();
}

#[test]
fn tokio_client_connection_refused_is_reported_and_publish_fails_when_reconnect_is_off() {
    connection_refused_is_reported_and_publish_fails_when_reconnect_is_off(Driver::Tokio)
}

#[test]
fn blocking_client_connection_refused_is_reported_and_publish_fails_when_reconnect_is_off() {
    connection_refused_is_reported_and_publish_fails_when_reconnect_is_off(Driver::Blocking)
}

#[test]
fn tokio_client_mosquitto_slow_consumer_gets_back_pressure_not_loss_at_qos0() {
    a_slow_consumer_gets_back_pressure_not_loss_at_qos0(Driver::Tokio)
}

#[test]
fn blocking_client_mosquitto_slow_consumer_gets_back_pressure_not_loss_at_qos0() {
    a_slow_consumer_gets_back_pressure_not_loss_at_qos0(Driver::Blocking)
}

macro_rules! suite {
    ($($module:ident: $driver:expr, $broker:expr;)*) => {$(
        mod $module {
            use super::*;
            #[test]
            fn round_trips_qos_0_1_2_with_properties() {
                super::round_trips_qos_0_1_2_with_properties($driver, $broker)
            }
            #[test]
            fn retained_messages() {
                super::retained_messages($driver, $broker)
            }
            #[test]
            fn subscriptions_are_reference_counted_and_unsubscribe_on_drop() {
                super::subscriptions_are_reference_counted_and_unsubscribe_on_drop($driver, $broker)
            }
            #[test]
            fn receive_maximum_of_the_broker_is_respected() {
                super::receive_maximum_of_the_broker_is_respected($driver, $broker)
            }
            #[test]
            fn message_above_the_broker_maximum_packet_size_is_refused_clearly() {
                super::message_above_the_broker_maximum_packet_size_is_refused_clearly($driver, $broker)
            }
            #[test]
            fn will_is_published_when_the_connection_is_killed() {
                super::will_is_published_when_the_connection_is_killed($driver, $broker)
            }
            #[test]
            fn publishing_from_inside_a_receive_loop_does_not_deadlock() {
                super::publishing_from_inside_a_receive_loop_does_not_deadlock($driver, $broker)
            }
            #[test]
            fn reconnect_and_resume_without_loss_or_duplicates() {
                super::reconnect_and_resume_without_loss_or_duplicates($driver, $broker)
            }
        }
    )*};
}

suite! {
    tokio_client_mosquitto: Driver::Tokio, BrokerKind::Mosquitto;
    tokio_client_our_broker: Driver::Tokio, BrokerKind::Ours;
    blocking_client_mosquitto: Driver::Blocking, BrokerKind::Mosquitto;
    blocking_client_our_broker: Driver::Blocking, BrokerKind::Ours;
}

/// The blocking client's handle can be shared across threads (checked at compile time).
const _: () = {
    const fn shared<T: Send + Sync + Clone + 'static>() {}
    const fn sendable<T: Send>() {}
    shared::<mqttproto::blocking::Client>();
    sendable::<mqttproto::blocking::Subscription>();
};
