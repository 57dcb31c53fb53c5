//! The blocking client on its own: every transport (TLS against Mosquitto with a test CA,
//! WebSocket, WebSocket over TLS and Unix sockets against our tokio broker), and its timers,
//! reconnect backoff, offline queue, request timeout and enhanced authentication against a
//! scripted server on loopback TCP. The blocking driver has no paused clock: timeouts are kept
//! short and only "it happened within a generous bound" is asserted, or a lower bound that a
//! slow machine cannot break (a delay never ends early). The behaviour shared with the tokio
//! client is in `client_suite.rs`.

#![cfg(all(
    feature = "blocking",
    feature = "tokio",
    feature = "tls",
    feature = "websocket"
))]

mod common;
mod pki;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::Mosquitto;
use mqttproto::blocking::Client;
use mqttproto::client::{Authenticator, ClientError, ConnectionEvent, Reconnect};
use mqttproto::proto::codec::{
    decode, Auth, AuthProperties, ConnAck, ConnAckProperties, Packet, Publish,
};
use mqttproto::proto::{MqttString, ProtocolVersion, QoS, ReasonCode, TopicName};
use mqttproto::tokio::broker::{Broker, BrokerConfig, BrokerHandle, ListenAddr, Listener};
use mqttproto::tokio::listen::ServerTlsOptions;
use pki::Pki;

const WAIT: Duration = Duration::from_secs(10);
const V5: ProtocolVersion = ProtocolVersion::V5;

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

/// Our tokio broker with one listener; shut down on drop.
struct OurBroker {
    handle: Option<BrokerHandle>,
    url: String,
}

impl OurBroker {
    fn start(listener: Listener) -> OurBroker {
        let config = BrokerConfig::default().listen(listener);
        let broker = rt()
            .block_on(async { tokio::time::timeout(WAIT, Broker::bind(config)).await })
            .expect("bound in time")
            .expect("bind");
        let url = broker.local_addrs()[0].to_string();
        let _guard = rt().enter();
        OurBroker {
            handle: Some(broker.spawn()),
            url,
        }
    }
}

impl Drop for OurBroker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = rt().block_on(async { tokio::time::timeout(WAIT, h.shutdown()).await });
        }
    }
}

/// Subscribe, publish at QoS 1, receive, through `c`.
fn round_trip(c: &Client, topic: &str) {
    let sub = c.subscribe(topic, QoS::AtLeastOnce).expect("SUBACK");
    let rc = c
        .publish_message_timeout(
            {
                let mut p = Publish::new(TopicName::try_from(topic).unwrap(), "over the wire");
                p.qos = QoS::AtLeastOnce;
                p
            },
            Some(WAIT),
        )
        .expect("PUBACK");
    assert_eq!(rc, ReasonCode::Success);
    let msg = sub.recv_timeout(WAIT).expect("a message in time");
    assert_eq!(&msg.payload[..], b"over the wire");
}

fn build(
    url: &str,
    f: impl FnOnce(mqttproto::blocking::ClientBuilder) -> mqttproto::blocking::ClientBuilder,
) -> Client {
    f(Client::builder(url)
        .expect("a URL")
        .request_timeout(Some(WAIT)))
    .build()
    .expect("client thread")
}

/// The next event that is not `Connected`, within [`WAIT`].
fn next_disconnect(events: &std::sync::mpsc::Receiver<ConnectionEvent>) -> ConnectionEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ConnectionEvent::Connected { .. }) => {}
            Ok(ev) => return ev,
            Err(e) => panic!("no event in time: {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transports.

#[test]
fn tls_with_a_test_ca_and_a_bare_ip_server_name() {
    let pki = Pki::generate("b-tls");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let c = build(&format!("mqtts://127.0.0.1:{}", m.port), |b| {
        b.tls(pki.tls(false)).client_id("b-tls-1")
    });
    round_trip(&c, "tls/a");
    c.disconnect().unwrap();
}

#[test]
fn tls_server_name_override() {
    let pki = Pki::generate("b-sni");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let mut tls = pki.tls(false);
    tls.server_name = Some("localhost".into());
    let c = build(&format!("mqtts://127.0.0.1:{}", m.port), |b| b.tls(tls));
    round_trip(&c, "tls/sni");
    c.disconnect().unwrap();
}

#[test]
fn tls_listener_requiring_client_certificates() {
    let pki = Pki::generate("b-mtls");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(true)) else {
        return;
    };
    let url = format!("mqtts://127.0.0.1:{}", m.port);
    // Without a certificate the broker hangs up and the client reports it.
    let refused = build(&url, |b| b.tls(pki.tls(false)).reconnect(Reconnect::Off));
    let events = refused.events();
    assert!(refused.publish("x", "y", QoS::AtLeastOnce).is_err());
    assert!(matches!(
        next_disconnect(&events),
        ConnectionEvent::Disconnected { .. }
    ));
    // With one it works.
    let c = build(&url, |b| b.tls(pki.tls(true)));
    round_trip(&c, "mtls/a");
    c.disconnect().unwrap();
}

#[test]
fn tls_rejects_an_untrusted_server() {
    let pki = Pki::generate("b-untrusted");
    let other = Pki::generate("b-other-ca");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let c = build(&format!("mqtts://127.0.0.1:{}", m.port), |b| {
        b.tls(other.tls(false)).reconnect(Reconnect::Off)
    });
    let events = c.events();
    let ConnectionEvent::Disconnected { reason, .. } = next_disconnect(&events) else {
        panic!("a disconnection")
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(matches!(
        c.publish("x", "y", QoS::AtMostOnce),
        Err(ClientError::Closed)
    ));
}

#[test]
fn tls_configuration_errors_are_reported_clearly() {
    // A listener that never answers: the TCP connection is made, then the TLS settings fail.
    let server = Server::start();
    let url = server.url().replace("mqtt://", "mqtts://");
    let c = build(&url, |b| {
        b.tls(mqttproto::transport::TlsOptions {
            system_roots: false,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        })
        .reconnect(Reconnect::Off)
    });
    let ConnectionEvent::Disconnected { reason, .. } = next_disconnect(&c.events()) else {
        panic!("a disconnection")
    };
    assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
}

#[test]
fn websocket_against_our_broker_with_the_mqtt_subprotocol() {
    let b = OurBroker::start(Listener::new(
        "ws://127.0.0.1:0/mqtt".parse::<ListenAddr>().unwrap(),
    ));
    assert!(b.url.starts_with("ws://"), "{}", b.url);
    let c = build(&b.url, |b| b.client_id("b-ws"));
    round_trip(&c, "ws/a");
    c.disconnect().unwrap();
}

#[test]
fn websocket_on_a_custom_path_and_a_wrong_path_refused() {
    let b = OurBroker::start(Listener::new(
        "ws://127.0.0.1:0/custom/path"
            .parse::<ListenAddr>()
            .unwrap(),
    ));
    let c = build(&b.url, |b| b.client_id("b-ws-path"));
    round_trip(&c, "ws/path");
    c.disconnect().unwrap();
    let wrong = b.url.replace("/custom/path", "/mqtt");
    let w = build(&wrong, |b| b.reconnect(Reconnect::Off));
    let ConnectionEvent::Disconnected { reason, .. } = next_disconnect(&w.events()) else {
        panic!("a disconnection")
    };
    assert!(reason.contains("WebSocket"), "{reason}");
}

#[test]
fn websocket_over_tls_against_our_broker() {
    let pki = Pki::generate("b-wss");
    let listener = Listener::new("wss://127.0.0.1:0/mqtt".parse::<ListenAddr>().unwrap()).with_tls(
        ServerTlsOptions::new(pki.path("server.pem"), pki.path("server.key")),
    );
    let b = OurBroker::start(listener);
    assert!(b.url.starts_with("wss://"), "{}", b.url);
    let c = build(&b.url, |b| b.tls(pki.tls(false)).client_id("b-wss"));
    round_trip(&c, "wss/a");
    c.disconnect().unwrap();
}

#[test]
fn mqtts_against_our_broker() {
    let pki = Pki::generate("b-mqtts-ours");
    let listener = Listener::new("mqtts://127.0.0.1:0".parse::<ListenAddr>().unwrap()).with_tls(
        ServerTlsOptions::new(pki.path("server.pem"), pki.path("server.key")),
    );
    let b = OurBroker::start(listener);
    let c = build(&b.url, |b| b.tls(pki.tls(false)).client_id("b-mqtts"));
    round_trip(&c, "mqtts/a");
    c.disconnect().unwrap();
}

#[cfg(unix)]
#[test]
fn unix_socket_against_our_broker() {
    let dir = std::env::temp_dir().join(format!("mqttproto-bunix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broker.sock");
    let b = OurBroker::start(Listener::new(ListenAddr::Unix(path.clone())));
    let c = build(&format!("unix://{}", path.display()), |b| {
        b.client_id("b-unix")
    });
    round_trip(&c, "unix/a");
    c.disconnect().unwrap();
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// A scripted server on loopback TCP.

struct Peer {
    sock: TcpStream,
    buf: BytesMut,
}

impl Peer {
    /// The next packet, or `None` when the client closed the connection or nothing came within
    /// `wait`.
    fn next_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = decode(&mut self.buf, V5, u32::MAX).expect("well-formed packets") {
                return Some(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn next(&mut self) -> Packet {
        self.next_within(WAIT).expect("a packet in time")
    }

    fn send(&mut self, p: Packet) {
        self.sock.write_all(&p.to_bytes(V5).unwrap()).unwrap();
    }
}

struct Server {
    listener: TcpListener,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Server { listener }
    }

    fn url(&self) -> String {
        format!("mqtt://{}", self.listener.local_addr().unwrap())
    }

    /// The next connection, within `wait`.
    fn accept_within(&self, wait: Duration) -> Option<Peer> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    sock.set_nonblocking(false).unwrap();
                    return Some(Peer {
                        sock,
                        buf: BytesMut::new(),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    }

    fn accept(&self) -> Peer {
        self.accept_within(WAIT).expect("a connection in time")
    }
}

fn connack() -> Packet {
    Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    }))
}

#[test]
fn keep_alive_pings_and_reports_a_silent_server_mqtt_3_1_2_20() {
    let server = Server::start();
    let c = build(&server.url(), |b| {
        b.keep_alive(Duration::from_secs(1))
            .ping_timeout(Duration::from_millis(500))
            .reconnect(Reconnect::Off)
    });
    let events = c.events();
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    // [MQTT-3.1.2-20]: with nothing else to send, the client sends PINGREQ within the keep
    // alive; answered…
    assert_eq!(
        peer.next_within(Duration::from_secs(5)),
        Some(Packet::PingReq)
    );
    peer.send(Packet::PingResp);
    // …and again; not answered: the client gives up on the connection.
    assert_eq!(
        peer.next_within(Duration::from_secs(5)),
        Some(Packet::PingReq)
    );
    let ConnectionEvent::Disconnected { reason, .. } = next_disconnect(&events) else {
        panic!("a disconnection")
    };
    assert!(reason.contains("keep alive"), "{reason}");
    // Reconnect is off: the client closed, and its event receivers end.
    assert!(matches!(
        c.publish("x", "y", QoS::AtMostOnce),
        Err(ClientError::Closed)
    ));
    assert_eq!(
        events.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(
        c.events().recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn reconnect_backs_off_then_connects_and_resubscribes() {
    let server = Server::start();
    let initial = Duration::from_millis(100);
    let c = build(&server.url(), |b| {
        b.reconnect(Reconnect::Backoff {
            initial,
            max: Duration::from_millis(400),
        })
    });
    let events = c.events();
    // The first connection is accepted and subscribed to.
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    assert!(matches!(
        events.recv_timeout(WAIT),
        Ok(ConnectionEvent::Connected { .. })
    ));
    let subscriber = {
        let c = c.clone();
        std::thread::spawn(move || c.subscribe("a/#", QoS::AtLeastOnce))
    };
    let Packet::Subscribe(s) = peer.next() else {
        panic!("SUBSCRIBE")
    };
    peer.send(Packet::SubAck(mqttproto::proto::codec::SubAck {
        packet_id: s.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::GrantedQoS1],
    }));
    let sub = subscriber.join().unwrap().expect("SUBACK");
    // Then the server hangs up on every attempt, five times.
    drop(peer);
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let peer = server.accept();
        accepted.push(Instant::now());
        drop(peer);
    }
    // The delays grow: 100, 200, 400, 400 ms bases, each at least half its base. A delay
    // never ends early, so these lower bounds hold on the slowest machine.
    for (pair, base_ms) in accepted.windows(2).zip([100u64, 200, 400, 400]) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(base_ms / 2),
            "gap {gap:?} for a base of {base_ms} ms"
        );
    }
    // Then it answers: the client reconnects, resuming the session [MQTT-3.1.2-4]…
    let mut peer = server.accept();
    let Packet::Connect(connect) = peer.next() else {
        panic!("CONNECT")
    };
    assert!(!connect.clean_start, "reconnects resume the session");
    // …and, told the session is gone, subscribes again by itself.
    peer.send(connack());
    let Packet::Subscribe(again) = peer.next() else {
        panic!("SUBSCRIBE")
    };
    assert_eq!(again.subscriptions[0].filter.as_str(), "a/#");
    let lost =
        (0..20).any(|_| matches!(events.recv_timeout(WAIT), Ok(ConnectionEvent::SessionLost)));
    assert!(lost, "SessionLost reported");
    drop(sub);
}

#[test]
fn offline_queue_is_bounded_and_drained_on_connect() {
    let server = Server::start();
    let c = build(&server.url(), |b| {
        b.offline_queue(1).reconnect(Reconnect::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(100),
        })
    });
    // Not accepted yet: the client waits for CONNACK, so publishes queue. One fits…
    let first = {
        let c = c.clone();
        std::thread::spawn(move || c.publish("q/1", "one", QoS::AtLeastOnce))
    };
    // …the second does not (give the first a moment to be queued first; if it was not, the
    // roles swap and one of the two still fails with QueueFull).
    std::thread::sleep(Duration::from_millis(100));
    let second = c.publish("q/2", "two", QoS::AtLeastOnce);
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    let Packet::Publish(p) = peer.next() else {
        panic!("PUBLISH")
    };
    peer.send(Packet::PubAck(mqttproto::proto::codec::PubAck {
        packet_id: p.packet_id.expect("QoS 1 has a packet id"),
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    }));
    let first = first.join().unwrap();
    let outcomes = [first, second];
    assert_eq!(
        outcomes
            .iter()
            .filter(|r| matches!(r, Err(ClientError::QueueFull)))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|r| matches!(r, Ok(ReasonCode::Success))),
        "{outcomes:?}"
    );
}

#[test]
fn publish_timeout_ends_the_wait_not_the_delivery() {
    let server = Server::start();
    let c = build(&server.url(), |b| b);
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    let mut p = Publish::new(TopicName::try_from("t/o").unwrap(), "late");
    p.qos = QoS::AtLeastOnce;
    let err = c
        .publish_message_timeout(p, Some(Duration::from_millis(200)))
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    // The message was sent all the same.
    let Packet::Publish(sent) = peer.next() else {
        panic!("PUBLISH")
    };
    assert_eq!(&sent.payload[..], b"late");
}

#[test]
fn subscription_iterator_ends_when_the_client_disconnects_and_recv_timeout_is_bounded() {
    let server = Server::start();
    let c = build(&server.url(), |b| b);
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    let subscriber = {
        let c = c.clone();
        std::thread::spawn(move || c.subscribe("it/#", QoS::AtLeastOnce))
    };
    let Packet::Subscribe(s) = peer.next() else {
        panic!("SUBSCRIBE")
    };
    peer.send(Packet::SubAck(mqttproto::proto::codec::SubAck {
        packet_id: s.packet_id,
        properties: Default::default(),
        reason_codes: vec![ReasonCode::GrantedQoS1],
    }));
    let sub = subscriber.join().unwrap().expect("SUBACK");
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(50)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    for i in 1..=3u16 {
        let mut p = Publish::new(
            TopicName::try_from(format!("it/{i}")).unwrap(),
            format!("{i}"),
        );
        p.qos = QoS::AtLeastOnce;
        p.packet_id = mqttproto::proto::PacketId::new(i);
        peer.send(Packet::Publish(p));
    }
    // The client acknowledges a QoS 1 message once it is in the subscription's buffer.
    for _ in 1..=3 {
        assert!(matches!(peer.next(), Packet::PubAck(_)));
    }
    c.disconnect().unwrap();
    assert!(matches!(peer.next(), Packet::Disconnect(_)));
    // The iterator yields what was buffered, then ends.
    let got = sub.into_iter().map(|m| m.payload).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![Bytes::from("1"), Bytes::from("2"), Bytes::from("3")]
    );
}

struct Scripted {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Authenticator for Scripted {
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        let data = data.unwrap_or_default().to_vec();
        self.seen.lock().unwrap().push(data.clone());
        let mut answer = b"re:".to_vec();
        answer.extend_from_slice(&data);
        Ok(Some(Bytes::from(answer)))
    }

    fn success(&mut self, data: Option<&[u8]>) {
        self.seen
            .lock()
            .unwrap()
            .push([b"ok:", data.unwrap_or_default()].concat());
    }
}

#[test]
fn enhanced_authentication_challenge_and_response() {
    let server = Server::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let c = build(&server.url(), |b| {
        b.authentication(
            "SCRIPT",
            Some(Bytes::from_static(b"hello")),
            Scripted { seen: seen.clone() },
        )
    });
    let events = c.events();
    let mut peer = server.accept();
    let Packet::Connect(connect) = peer.next() else {
        panic!("CONNECT")
    };
    assert_eq!(
        connect.properties.authentication_method.as_ref().unwrap(),
        "SCRIPT"
    );
    assert_eq!(
        connect.properties.authentication_data.as_deref(),
        Some(&b"hello"[..])
    );
    let method = Some(MqttString::try_from("SCRIPT").unwrap());
    peer.send(Packet::Auth(Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: method.clone(),
            authentication_data: Some(Bytes::from_static(b"nonce")),
            ..Default::default()
        },
    }));
    let Packet::Auth(answer) = peer.next() else {
        panic!("AUTH")
    };
    assert_eq!(answer.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        answer.properties.authentication_data.as_deref(),
        Some(&b"re:nonce"[..])
    );
    // A successful CONNACK carries the Authentication Method [MQTT-4.12.0-5], and here final
    // Authentication Data, which reaches the authenticator's `success`.
    peer.send(Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            authentication_method: method.clone(),
            authentication_data: Some(Bytes::from_static(b"final")),
            ..Default::default()
        },
    })));
    assert!(matches!(
        events.recv_timeout(WAIT),
        Ok(ConnectionEvent::Connected { .. })
    ));
    // Re-authentication [MQTT-4.12.1-1]: AUTH 0x19, answered challenge, success.
    c.reauthenticate(Some(Bytes::from_static(b"again")))
        .unwrap();
    let Packet::Auth(re) = peer.next() else {
        panic!("AUTH")
    };
    assert_eq!(re.reason_code, ReasonCode::ReAuthenticate);
    peer.send(Packet::Auth(Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties {
            authentication_method: method,
            authentication_data: Some(Bytes::from_static(b"done")),
            ..Default::default()
        },
    }));
    // Still connected and usable.
    let publisher = {
        let c = c.clone();
        std::thread::spawn(move || c.publish("after/reauth", "x", QoS::AtMostOnce))
    };
    let Packet::Publish(p) = peer.next() else {
        panic!("PUBLISH")
    };
    assert_eq!(p.topic.as_str(), "after/reauth");
    assert_eq!(publisher.join().unwrap().unwrap(), ReasonCode::Success);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[b"nonce".to_vec(), b"ok:final".to_vec(), b"ok:done".to_vec()]
    );
}

#[test]
fn every_handle_dropped_sends_disconnect() {
    let server = Server::start();
    let c = build(&server.url(), |b| b);
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    peer.send(connack());
    let events = c.events();
    assert!(matches!(
        events.recv_timeout(WAIT),
        Ok(ConnectionEvent::Connected { .. })
    ));
    let clone = c.clone();
    drop(c);
    // One handle left: still connected.
    assert_eq!(peer.next_within(Duration::from_millis(200)), None);
    drop(clone);
    assert!(matches!(peer.next(), Packet::Disconnect(_)));
}

/// A TCP stream that counts the bytes written through it.
struct Counting {
    inner: TcpStream,
    written: Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl mqttproto::blocking::Transport for Counting {
    fn try_clone_reader(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.inner.try_clone()?))
    }

    fn shutdown(&self) -> std::io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Both)
    }
}

#[test]
fn custom_transport_carries_the_connection() {
    let b = OurBroker::start(Listener::new("127.0.0.1:0".parse::<ListenAddr>().unwrap()));
    let addr = b.url.trim_start_matches("mqtt://").to_string();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let c = build("mqtt://via-custom-transport", move |b| {
        b.client_id("b-custom").custom_transport(move || {
            Ok(Counting {
                inner: TcpStream::connect(&addr)?,
                written: counter.clone(),
            })
        })
    });
    round_trip(&c, "custom/a");
    let before = written.load(std::sync::atomic::Ordering::Relaxed);
    // CONNECT, SUBSCRIBE and PUBLISH at least went through it.
    assert!(before > 30, "{before} bytes written");
    c.disconnect().unwrap();
}

/// Messages published before the connection is up (offline queue) and right after it go out
/// in the order they were published [MQTT-4.6.0-6]: a publish handled in the same batch as
/// the CONNACK must not overtake the queued ones.
#[test]
fn publishes_keep_their_order_across_the_connack() {
    let server = Server::start();
    let c = build(&server.url(), |b| b);
    const EARLY: usize = 300;
    const LATE: usize = 300;
    for i in 0..EARLY {
        c.try_publish(Publish::new(
            TopicName::try_from("order").unwrap(),
            format!("{i}"),
        ))
        .unwrap();
    }
    let mut peer = server.accept();
    assert!(matches!(peer.next(), Packet::Connect(_)));
    // More publishes race with the CONNACK.
    let late = {
        let c = c.clone();
        std::thread::spawn(move || {
            for i in EARLY..EARLY + LATE {
                c.try_publish(Publish::new(
                    TopicName::try_from("order").unwrap(),
                    format!("{i}"),
                ))
                .unwrap();
            }
        })
    };
    peer.send(connack());
    late.join().unwrap();
    for i in 0..EARLY + LATE {
        let Packet::Publish(p) = peer.next() else {
            panic!("PUBLISH {i}")
        };
        assert_eq!(p.payload, Bytes::from(format!("{i}")), "message {i}");
    }
}

/// A builder input that is not a valid MQTT string (a User Property name with U+0000
/// [MQTT-1.5.7-1]) is reported, not dropped: the client makes no connection (the listener
/// sees none) and every request fails with `Closed`.
#[test]
fn an_invalid_builder_string_is_reported_and_nothing_connects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    let client = Client::builder(&url)
        .unwrap()
        .client_id("blocking-invalid")
        .user_property("bad\0name", "v")
        .reconnect(Reconnect::Off)
        .build()
        .unwrap();
    match client.events().recv_timeout(WAIT) {
        Ok(ConnectionEvent::Disconnected { reason, .. }) => {
            assert!(reason.contains("User Property name"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.publish("t", &b"x"[..], QoS::AtLeastOnce),
        Err(ClientError::Closed)
    ));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection was made"
    );
}
