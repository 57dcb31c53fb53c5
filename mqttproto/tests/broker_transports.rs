//! The brokers' TLS and WebSocket transports under load and under bad input, against both
//! drivers (`tokio_broker::*`, `blocking_broker::*`; see `drivers/`): large payloads in both
//! directions over `mqtts://`, `wss://` and `ws://` at once, WebSocket framing (several frames
//! per packet, pings), and junk or silence on the secure and WebSocket listeners.

#[macro_use]
mod drivers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqttproto::proto::codec::{decode, Packet};
use mqttproto::proto::{ProtocolVersion, QoS, ReasonCode};
use mqttproto::server::{ListenAddr, Listener};
use mqttproto::tokio::client::{ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

use drivers::pki::Pki;
use drivers::{Config, Driver, TestBroker};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

fn listener(url: &str) -> Listener {
    Listener::new(url.parse::<ListenAddr>().expect("a listen address"))
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// CONNECT (MQTT 5, Clean Start, Keep Alive 0, no properties).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 0, 0]);
    body.extend(string(client_id));
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

/// Every complete packet in `buf`.
fn decode_all(buf: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Ok(Some(p)) = decode(buf, ProtocolVersion::V5, 1 << 20) {
        packets.push(p);
    }
    packets
}

/// Whether the peer closes `sock` within `WAIT` (reading and discarding what it sends).
fn closed_by_peer(sock: &mut TcpStream) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left)).expect("a read timeout");
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A small deterministic generator for junk bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within 60 s"),
    }
}

/// Six pairs of clients, each subscriber on one of `mqtts://`, `wss://` and `ws://` and its
/// publisher on another, move 8 messages of 200 kB each at QoS 1 (TLS records, WebSocket
/// frames and reads and writes of one connection all interleave): every message arrives
/// intact and in order.
async fn large_payloads_over_tls_and_websocket(driver: Driver) {
    const PAIRS: usize = 6;
    const MESSAGES: usize = 8;
    const SIZE: usize = 200_000;
    let pki = Pki::generate(&format!("{driver:?}-large"));
    let config = Config::default()
        .listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()))
        .listen(listener("wss://127.0.0.1:0/mqtt").with_tls(pki.server()))
        .listen(listener("ws://127.0.0.1:0/mqtt"));
    let broker = TestBroker::start(driver, config).expect("bind");
    let urls: Vec<String> = broker.addrs.iter().map(|a| a.to_string()).collect();
    let build = |url: &str, id: String| {
        let mut b = Client::builder(url)
            .expect("a URL")
            .client_id(&id)
            .reconnect(Reconnect::Off);
        if !url.starts_with("ws://") {
            b = b.tls(pki.client(false));
        }
        b.build()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let sub = build(&urls[i % 3], format!("big-sub-{i}"));
        let publisher = build(&urls[(i + 1) % 3], format!("big-pub-{i}"));
        tasks.spawn(async move {
            let topic = format!("big/{i}");
            let mut messages = sub
                .subscribe(&topic, QoS::AtLeastOnce)
                .await
                .expect("SUBACK");
            let sending = async {
                for k in 0..MESSAGES {
                    let payload = vec![(i * MESSAGES + k) as u8; SIZE];
                    let rc = publisher
                        .publish(&topic, payload, QoS::AtLeastOnce)
                        .await
                        .expect("PUBACK");
                    assert_eq!(rc, ReasonCode::Success);
                }
            };
            let receiving = async {
                for k in 0..MESSAGES {
                    let m = messages.recv().await.expect("a message");
                    assert_eq!(m.payload.len(), SIZE, "pair {i}, message {k}");
                    let want = (i * MESSAGES + k) as u8;
                    assert!(
                        m.payload.iter().all(|b| *b == want),
                        "pair {i}, message {k}: wrong content"
                    );
                }
            };
            tokio::join!(sending, receiving);
            let _ = sub.disconnect().await;
            let _ = publisher.disconnect().await;
        });
    }
    within("the transfers", async {
        while let Some(r) = tasks.join_next().await {
            r.expect("a client pair");
        }
    })
    .await;
    broker.shutdown().await;
}

/// A graceful shutdown reaches clients over TLS, WebSocket and WebSocket over TLS: each gets
/// DISCONNECT 0x8B (Server shutting down) before the connection closes.
async fn shutdown_reaches_tls_and_websocket_clients(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-shutdown"));
    let config = Config::default()
        .listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()))
        .listen(listener("wss://127.0.0.1:0/mqtt").with_tls(pki.server()))
        .listen(listener("ws://127.0.0.1:0/mqtt"));
    let broker = TestBroker::start(driver, config).expect("bind");
    let mut clients = Vec::new();
    for (i, addr) in broker.addrs.iter().enumerate() {
        let url = addr.to_string();
        let mut b = Client::builder(&url)
            .expect("a URL")
            .client_id(&format!("till-the-end-{i}"))
            .reconnect(Reconnect::Off);
        if !url.starts_with("ws://") {
            b = b.tls(pki.client(false));
        }
        let c = b.build();
        let events = c.events();
        // Connected and served.
        within("subscribe", c.subscribe("x/#", QoS::AtLeastOnce))
            .await
            .expect("SUBACK");
        clients.push((url, c, events));
    }
    broker.shutdown().await;
    for (url, _c, mut events) in clients {
        loop {
            let event = within("an event", events.recv())
                .await
                .expect("events until the end");
            match event {
                ConnectionEvent::Connected { .. } => {}
                ConnectionEvent::Disconnected { reason_code, .. } => {
                    assert_eq!(reason_code, Some(ReasonCode::ServerShuttingDown), "{url}");
                    break;
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}

/// SUBSCRIBE to `filter` at QoS 1 (packet id 1, no properties).
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1, 0];
    body.extend(string(filter));
    body.push(1);
    let mut out = vec![0x82, body.len() as u8];
    out.extend(body);
    out
}

/// A subscriber over TLS that stops reading after its SUBACK is disconnected once its queue
/// overflows, while a subscriber over TLS that reads gets every message of the flood: the
/// stalled writer (holding its connection's TLS writing lock) holds up nobody else.
async fn stalled_tls_subscriber_does_not_hold_up_others(driver: Driver) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let pki = Pki::generate(&format!("{driver:?}-stall"));
    let mut config =
        Config::default().listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()));
    config.outbound_queue_capacity = 64;
    config.max_outbound_bytes = 1 << 20;
    let broker = TestBroker::start(driver, config).expect("bind");
    let url = broker.url();
    let addr = broker.addrs[0].socket_addr().expect("a TCP address");

    // The stalled subscriber: rustls over a blocking socket.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("the CA") {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("a server name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(tls), name).expect("TLS");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let mut stalled = rustls::StreamOwned::new(conn, sock);
    stalled
        .write_all(&connect_packet("stalled-tls"))
        .expect("CONNECT");
    stalled
        .write_all(&subscribe_packet("flood/#"))
        .expect("SUBSCRIBE");
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut chunk = [0u8; 1024];
    while packets.len() < 2 {
        let n = stalled.read(&mut chunk).expect("CONNACK and SUBACK");
        assert!(n > 0, "closed early: {packets:?}");
        buf.extend_from_slice(&chunk[..n]);
        packets.extend(decode_all(&mut buf));
    }
    assert!(matches!(packets[1], Packet::SubAck(_)), "{packets:?}");

    // With a small Receive Maximum the broker holds the reader's backlog in its session, not
    // in the outbound queue, so a reader merely slower than the publisher is not cut off.
    let client = |id: &str| {
        Client::builder(&url)
            .expect("a URL")
            .tls(pki.client(false))
            .client_id(id)
            .receive_maximum(4)
            .reconnect(Reconnect::Off)
            .build()
    };
    let reader = client("reading-tls");
    let mut messages = within("subscribe", reader.subscribe("flood/#", QoS::AtLeastOnce))
        .await
        .expect("SUBACK");
    let publisher = client("flooder-tls");
    // 24 MiB in 64 KiB messages: more than the kernel's socket buffers and the 1 MiB bound.
    let count = 384;
    let payload = vec![b'p'; 64 * 1024];
    let flood = async {
        for _ in 0..count {
            publisher
                .publish("flood/t", payload.clone(), QoS::AtLeastOnce)
                .await
                .expect("PUBACK");
        }
    };
    let receive = async {
        for i in 0..count {
            let m = messages.recv().await.expect("a message");
            assert_eq!(m.payload.len(), payload.len(), "message {i}");
        }
    };
    within("the flood", async { tokio::join!(flood, receive) }).await;

    // The stalled one was cut off: its socket ends before the flood would have.
    let mut sock = stalled.sock;
    let total = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        let mut total = 0usize;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            assert!(Instant::now() < deadline, "still open after {total} bytes");
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the reader");
    assert!(
        total < count * payload.len(),
        "the stalled subscriber got the whole flood ({total} bytes)"
    );
    let _ = reader.disconnect().await;
    let _ = publisher.disconnect().await;
    broker.shutdown().await;
}

/// A raw WebSocket client offering the `mqtt` subprotocol.
fn ws_connect(url: &str) -> tungstenite::WebSocket<TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("an address")
        .to_string();
    let sock = TcpStream::connect(&addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let mut request = url.into_client_request().expect("a request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, response) = tungstenite::client(request, sock).expect("the WebSocket handshake");
    // [MQTT-6.0.0-4] The server selects "mqtt".
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    ws
}

/// Reads WebSocket messages until the MQTT packets received satisfy `done`.
fn ws_read_until(
    ws: &mut tungstenite::WebSocket<TcpStream>,
    done: impl Fn(&[Packet]) -> bool,
) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&packets) {
        assert!(Instant::now() < deadline, "no answer: {packets:?}");
        match ws.read().expect("a WebSocket message") {
            Message::Binary(b) => {
                buf.extend_from_slice(&b);
                packets.extend(decode_all(&mut buf));
            }
            Message::Text(t) => panic!("a text frame from the broker: {t}"),
            _ => {}
        }
    }
    packets
}

/// A CONNECT split over two binary frames and two packets in one frame are read as MQTT
/// packets [MQTT-6.0.0-2]; pings are answered; the broker's packets come in binary frames
/// [MQTT-6.0.0-1].
fn websocket_frames_and_pings(driver: Driver) {
    let broker = TestBroker::start(
        driver,
        Config::default().listen(listener("ws://127.0.0.1:0/mqtt")),
    )
    .expect("bind");
    let mut ws = ws_connect(&broker.url());
    let connect = connect_packet("ws-frames");
    let (a, b) = connect.split_at(5);
    ws.send(Message::Binary(a.to_vec().into())).expect("send");
    ws.send(Message::Binary(b.to_vec().into())).expect("send");
    let packets = ws_read_until(&mut ws, |p| !p.is_empty());
    match &packets[0] {
        Packet::ConnAck(c) => assert_eq!(c.reason_code, ReasonCode::Success),
        other => panic!("not a CONNACK: {other:?}"),
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .expect("send");
    // Two PINGREQs in one frame.
    ws.send(Message::Binary(vec![0xC0, 0, 0xC0, 0].into()))
        .expect("send");
    let mut pong = false;
    let mut pingresps = 0;
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + WAIT;
    while !(pong && pingresps == 2) {
        assert!(
            Instant::now() < deadline,
            "pong {pong}, PINGRESPs {pingresps}"
        );
        match ws.read().expect("a WebSocket message") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                pong = true;
            }
            Message::Binary(b) => {
                buf.extend_from_slice(&b);
                for p in decode_all(&mut buf) {
                    assert!(matches!(p, Packet::PingResp), "{p:?}");
                    pingresps += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A WebSocket close ends the connection.
    ws.close(None).expect("close");
    let deadline = Instant::now() + WAIT;
    while ws.read().is_ok() {
        assert!(Instant::now() < deadline, "still open");
    }
}

/// Junk on the TLS and WebSocket listeners, a wrong WebSocket path, and silent sockets (closed
/// by the connect timeout, which bounds the handshakes too) leave the broker serving others.
fn junk_on_secure_and_websocket_listeners(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-junk"));
    let config = Config::default()
        .listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()))
        .listen(listener("ws://127.0.0.1:0/mqtt"))
        .with_connect_timeout(Duration::from_millis(300));
    let broker = TestBroker::start(driver, config).expect("bind");
    let tls_addr = broker.addrs[0].socket_addr().expect("a TCP address");
    let ws_addr = broker.addrs[1].socket_addr().expect("a TCP address");
    let mut rng = Rng(0x00DD_BA11_5EED);

    for round in 0..10 {
        for addr in [tls_addr, ws_addr] {
            let mut sock = TcpStream::connect(addr).expect("connect");
            let len = 1 + (rng.next() % 600) as usize;
            let junk = rng.bytes(len);
            let _ = sock.write_all(&junk);
            assert!(
                closed_by_peer(&mut sock),
                "round {round}: junk to {addr} not closed"
            );
        }
    }
    // A TLS record header announcing a ClientHello that never comes; a silent socket on each.
    for (addr, bytes) in [
        (tls_addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]),
        (tls_addr, &[][..]),
        (ws_addr, &b"GET /mqtt HTTP/1.1\r\n"[..]),
        (ws_addr, &[][..]),
    ] {
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.write_all(bytes).expect("write");
        assert!(
            closed_by_peer(&mut sock),
            "an idle handshake on {addr} not closed"
        );
    }
    // A WebSocket request for another path gets 404.
    let mut sock = TcpStream::connect(ws_addr).expect("connect");
    sock.write_all(
        b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write");
    let mut answer = Vec::new();
    sock.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let _ = sock.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // Still serving, over both listeners.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let tls = Client::builder(&broker.url())
            .expect("a URL")
            .tls(pki.client(false))
            .client_id("after-junk-tls")
            .build();
        let ws = Client::builder(&broker.addrs[1].to_string())
            .expect("a URL")
            .client_id("after-junk-ws")
            .build();
        let mut sub = within("subscribe", tls.subscribe("after/junk", QoS::AtLeastOnce))
            .await
            .expect("SUBACK");
        within(
            "publish",
            ws.publish("after/junk", "still up", QoS::AtLeastOnce),
        )
        .await
        .expect("PUBACK");
        let m = within("message", sub.recv()).await.expect("a message");
        assert_eq!(&m.payload[..], b"still up");
        let _ = tls.disconnect().await;
        let _ = ws.disconnect().await;
    });
}

/// Stopping the broker ends connections still in their TLS or WebSocket handshakes at once,
/// not when the (here very long) connect timeout would.
fn shutdown_ends_pending_handshakes(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-pending"));
    let config = Config::default()
        .listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()))
        .listen(listener("ws://127.0.0.1:0/mqtt"))
        .with_connect_timeout(Duration::from_secs(600));
    let mut broker = TestBroker::start(driver, config).expect("bind");
    let mut silent: Vec<TcpStream> = broker
        .addrs
        .iter()
        .map(|a| TcpStream::connect(a.socket_addr().expect("a TCP address")).expect("connect"))
        .collect();
    // Half a WebSocket request: the handshake is under way.
    silent[1]
        .write_all(b"GET /mqtt HTTP/1.1\r\n")
        .expect("write");
    // Wait until both are accepted: a byte written now stays unanswered, but the broker has
    // the socket (a refused one would be closed at once, failing the test below anyway).
    std::thread::sleep(Duration::from_millis(100));
    broker.stop();
    for (i, sock) in silent.iter_mut().enumerate() {
        assert!(closed_by_peer(sock), "pending handshake {i} still open");
    }
}

/// [MQTT-6.0.0-1] A text frame is not MQTT: the broker closes the connection.
fn closes_a_websocket_on_a_text_frame(driver: Driver) {
    let broker = TestBroker::start(
        driver,
        Config::default().listen(listener("ws://127.0.0.1:0/mqtt")),
    )
    .expect("bind");
    let mut ws = ws_connect(&broker.url());
    ws.send(Message::Binary(connect_packet("texter").into()))
        .expect("send");
    let packets = ws_read_until(&mut ws, |p| !p.is_empty());
    assert!(matches!(packets[0], Packet::ConnAck(_)), "{packets:?}");
    ws.send(Message::Text("hello".into())).expect("send");
    let deadline = Instant::now() + WAIT;
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => break,
            // The read timeout: the broker kept the connection open.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open {WAIT:?} after a text frame")
            }
            Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "still open"),
        }
    }
}

per_driver!(async:
    large_payloads_over_tls_and_websocket,
    shutdown_reaches_tls_and_websocket_clients,
    stalled_tls_subscriber_does_not_hold_up_others,
);

mod sync_scenarios {
    use super::*;
    per_driver!(sync:
        websocket_frames_and_pings,
        junk_on_secure_and_websocket_listeners,
        shutdown_ends_pending_handshakes,
        closes_a_websocket_on_a_text_frame,
    );
}

/// `BrokerHandle::accept_stream` serves a socket that did not come from a listener (here one
/// end of a Unix socket pair), counted towards the connection limit.
#[cfg(unix)]
#[test]
fn blocking_broker_serves_streams_handed_to_it() {
    use std::os::unix::net::UnixStream;

    let config = Config::default().with_max_connections(1);
    let handle = mqttproto::blocking::Broker::bind(config)
        .expect("bind")
        .spawn()
        .expect("spawn");
    let (mut ours, theirs) = UnixStream::pair().expect("a socket pair");
    handle
        .accept_stream(theirs, mqttproto::server::PeerAddr::Unknown)
        .expect("served");
    ours.set_read_timeout(Some(WAIT)).expect("a read timeout");
    ours.write_all(&connect_packet("paired")).expect("CONNECT");
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 256];
    let packets = loop {
        let n = ours.read(&mut chunk).expect("CONNACK");
        assert!(n > 0, "closed before CONNACK");
        buf.extend_from_slice(&chunk[..n]);
        let packets = decode_all(&mut buf);
        if !packets.is_empty() {
            break packets;
        }
    };
    match &packets[0] {
        Packet::ConnAck(c) => assert_eq!(c.reason_code, ReasonCode::Success),
        other => panic!("not a CONNACK: {other:?}"),
    }
    // The limit is one connection.
    let (_a, b) = UnixStream::pair().expect("a socket pair");
    let refused = handle.accept_stream(b, mqttproto::server::PeerAddr::Unknown);
    assert!(refused.is_err(), "over the connection limit");
    // Shutdown: DISCONNECT 0x8B, then the end of the stream.
    handle.shutdown();
    let mut rest = Vec::new();
    let _ = ours.read_to_end(&mut rest);
    buf.extend_from_slice(&rest);
    let packets = decode_all(&mut buf);
    assert!(
        matches!(packets.first(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::ServerShuttingDown),
        "{packets:?}"
    );
}
