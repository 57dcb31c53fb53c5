//! Enhanced authentication (section 4.12) on both brokers (`tokio_broker::*`,
//! `blocking_broker::*`; see `drivers/`): a two-step challenge-response method through our
//! async client and its client-side authenticator, refusals, re-authentication, and raw
//! clients that break the exchange or vanish in the middle of it.

mod common;
#[macro_use]
mod drivers;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttproto::proto::codec::{decode, Auth, AuthProperties, Connect, ConnectProperties, Packet};
use mqttproto::proto::{MqttString, ProtocolVersion, QoS, ReasonCode};
use mqttproto::server::{AuthContext, AuthConversation, AuthStep, EnhancedAuthenticator};
use mqttproto::tokio::client::{self, ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use drivers::{Config, Driver, TestBroker};

const WAIT: Duration = Duration::from_secs(10);
const METHOD: &str = "TEST-CHALLENGE";
const SLOW: &str = "TEST-SLOW";
const PANIC: &str = "TEST-PANIC";

// ---- the broker's side: a two-step challenge-response method ------------------------------

/// Supports [`METHOD`]: the initial data names the user (only `alice` is known); the broker
/// then sends two nonces, each to be answered reversed; success carries `welcome` (or
/// `welcome-back` for a re-authentication). [`SLOW`] blocks its first step until released.
#[derive(Clone, Default)]
struct Challenges {
    /// Conversations alive (started, not yet dropped).
    live: Arc<AtomicUsize>,
    /// Conversations started, and how many of them were re-authentications.
    started: Arc<AtomicUsize>,
    reauths: Arc<AtomicUsize>,
    /// Releases the first step of a [`SLOW`] conversation.
    release: Arc<Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl EnhancedAuthenticator for Challenges {
    fn supports(&self, method: &str) -> bool {
        method == METHOD || method == SLOW || method == PANIC
    }

    fn start(&self, context: &AuthContext<'_>) -> Result<Box<dyn AuthConversation>, ReasonCode> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if context.reauthentication {
            self.reauths.fetch_add(1, Ordering::SeqCst);
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Conversation {
            live: self.live.clone(),
            slow: (context.method == SLOW).then(|| self.release.clone()),
            panic: context.method == PANIC,
            reauthentication: context.reauthentication,
            round: 0,
            nonce: Vec::new(),
        }))
    }
}

struct Conversation {
    live: Arc<AtomicUsize>,
    slow: Option<Arc<Mutex<Option<std::sync::mpsc::Receiver<()>>>>>,
    reauthentication: bool,
    panic: bool,
    round: u8,
    nonce: Vec<u8>,
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AuthConversation for Conversation {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        if let Some(release) = self.slow.take() {
            // Bounded: a test that forgets to release fails instead of hanging.
            let rx = release
                .lock()
                .unwrap()
                .take()
                .expect("one slow conversation");
            let _ = rx.recv_timeout(WAIT);
        }
        assert!(!self.panic, "a step that panics (on purpose)");
        self.round += 1;
        match self.round {
            1 if data != Some(&b"alice"[..]) => AuthStep::Failure(ReasonCode::NotAuthorized),
            1 | 2 => {
                if self.round == 2 {
                    let mut expected = self.nonce.clone();
                    expected.reverse();
                    if data != Some(&expected[..]) {
                        return AuthStep::Failure(ReasonCode::NotAuthorized);
                    }
                }
                self.nonce = format!("nonce-{}", self.round).into_bytes();
                AuthStep::Continue(Some(Bytes::from(self.nonce.clone())))
            }
            _ => {
                let mut expected = self.nonce.clone();
                expected.reverse();
                if data != Some(&expected[..]) {
                    AuthStep::Failure(ReasonCode::NotAuthorized)
                } else if self.reauthentication {
                    AuthStep::Success(Some(Bytes::from_static(b"welcome-back")))
                } else {
                    AuthStep::Success(Some(Bytes::from_static(b"welcome")))
                }
            }
        }
    }
}

fn config(auth: &Challenges) -> Config {
    Config::default()
        .with_enhanced_authenticator(auth.clone())
        .with_connect_timeout(WAIT)
}

/// Waits (bounded) until no conversation is alive.
async fn all_conversations_dropped(auth: &Challenges) -> bool {
    common::wait_for(10, || auth.live.load(Ordering::SeqCst) == 0).await
}

// ---- the client's side --------------------------------------------------------------------

/// Answers each challenge with the nonce reversed (or with garbage once `wrong` is set), and
/// reports the final data of each success.
struct Answers {
    wrong: Arc<AtomicBool>,
    challenges: Arc<AtomicUsize>,
    successes: mpsc::UnboundedSender<Option<Bytes>>,
}

impl client::Authenticator for Answers {
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        self.challenges.fetch_add(1, Ordering::SeqCst);
        let mut answer = data.ok_or("a challenge without data")?.to_vec();
        answer.reverse();
        if self.wrong.load(Ordering::SeqCst) {
            answer.push(b'!');
        }
        Ok(Some(Bytes::from(answer)))
    }

    fn success(&mut self, data: Option<&[u8]>) {
        let _ = self.successes.send(data.map(Bytes::copy_from_slice));
    }
}

struct TestClient {
    client: Client,
    events: tokio::sync::broadcast::Receiver<ConnectionEvent>,
    wrong: Arc<AtomicBool>,
    challenges: Arc<AtomicUsize>,
    successes: mpsc::UnboundedReceiver<Option<Bytes>>,
}

impl TestClient {
    /// A client (reconnection off) using `method` with initial data `user`; its connection
    /// waits until its events are listened to, so that none is missed.
    fn new(url: &str, id: &str, method: &str, user: &str) -> TestClient {
        let addr = url.trim_start_matches("mqtt://").to_string();
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let wrong = Arc::new(AtomicBool::new(false));
        let challenges = Arc::new(AtomicUsize::new(0));
        let (tx, successes) = mpsc::unbounded_channel();
        let answers = Answers {
            wrong: wrong.clone(),
            challenges: challenges.clone(),
            successes: tx,
        };
        let client = Client::builder(url)
            .unwrap()
            .client_id(id)
            .reconnect(Reconnect::Off)
            .authentication(method, Some(Bytes::from(user.to_string())), answers)
            .custom_transport(move || {
                let (g, addr) = (g.clone(), addr.clone());
                async move {
                    g.notified().await;
                    let s = TcpStream::connect(addr).await?;
                    Ok(Box::new(s) as mqttproto::transport::BoxStream)
                }
            })
            .build();
        let events = client.events();
        gate.notify_one();
        TestClient {
            client,
            events,
            wrong,
            challenges,
            successes,
        }
    }

    async fn next_event(&mut self) -> ConnectionEvent {
        timeout(WAIT, self.events.recv())
            .await
            .expect("a connection event in time")
            .expect("the client is alive")
    }
}

/// Subscribe, publish at QoS 1, receive: the connection serves.
async fn round_trip(c: &Client, topic: &str) {
    let mut sub = timeout(WAIT, c.subscribe(topic, QoS::AtLeastOnce))
        .await
        .expect("subscribed in time")
        .expect("subscribe");
    assert_eq!(sub.granted(), [ReasonCode::GrantedQoS1]);
    let rc = timeout(WAIT, c.publish(topic, "authenticated", QoS::AtLeastOnce))
        .await
        .expect("published in time")
        .expect("publish");
    assert_eq!(rc, ReasonCode::Success);
    let msg = timeout(WAIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"authenticated");
}

// ---- a raw client ------------------------------------------------------------------------

struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(broker: &TestBroker) -> Raw {
        let sock = timeout(WAIT, TcpStream::connect(("127.0.0.1", broker.port())))
            .await
            .expect("connected in time")
            .expect("connect");
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet
            .encode(&mut out, ProtocolVersion::V5)
            .expect("encodes");
        self.sock.write_all(&out).await.expect("write");
    }

    /// CONNECT with an Authentication Method and initial data.
    async fn send_connect(&mut self, id: &str, method: &str, data: &'static [u8]) {
        let connect = Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            client_id: MqttString::try_from(id).unwrap(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                authentication_method: Some(MqttString::try_from(method).unwrap()),
                authentication_data: Some(Bytes::from_static(data)),
                ..Default::default()
            },
        };
        self.send(Packet::Connect(Box::new(connect))).await;
    }

    async fn send_auth(&mut self, code: ReasonCode, method: &str, data: Vec<u8>) {
        let auth = Auth {
            reason_code: code,
            properties: AuthProperties {
                authentication_method: Some(MqttString::try_from(method).unwrap()),
                authentication_data: Some(Bytes::from(data)),
                ..Default::default()
            },
        };
        self.send(Packet::Auth(auth)).await;
    }

    /// The next packet, or `None` when the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, ProtocolVersion::V5, u32::MAX).expect("valid") {
                return Some(p);
            }
            let n = timeout(WAIT, self.sock.read_buf(&mut self.buf))
                .await
                .expect("the broker answers in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// The next packet, which must be AUTH 0x18; returns its data.
    async fn challenge(&mut self) -> Vec<u8> {
        match self.recv().await {
            Some(Packet::Auth(a)) => {
                assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
                // Every AUTH carries the CONNECT's method [MQTT-4.12.0-5].
                assert_eq!(
                    a.properties
                        .authentication_method
                        .as_ref()
                        .map(|m| m.as_str()),
                    Some(METHOD)
                );
                a.properties.authentication_data.expect("a nonce").to_vec()
            }
            other => panic!("expected AUTH 0x18, got {other:?}"),
        }
    }

    /// Answers a challenge correctly.
    async fn answer(&mut self) {
        let mut nonce = self.challenge().await;
        nonce.reverse();
        self.send_auth(ReasonCode::ContinueAuthentication, METHOD, nonce)
            .await;
    }

    /// Whether the broker closes the connection (bounded).
    async fn closed(&mut self) -> bool {
        self.recv().await.is_none()
    }
}

// ---- scenarios ----------------------------------------------------------------------------

/// CONNECT with a supported method → two challenges, two right answers → CONNACK 0x00, and
/// the connection serves; the client's authenticator answered both challenges.
async fn two_step_challenge_response_succeeds(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "alice-1", METHOD, "alice");
    assert_eq!(
        c.next_event().await,
        ConnectionEvent::Connected {
            session_present: false
        }
    );
    // Two challenges answered [MQTT-4.12.0-2, MQTT-4.12.0-3].
    assert_eq!(c.challenges.load(Ordering::SeqCst), 2);
    round_trip(&c.client, "enhanced/ok").await;
    timeout(WAIT, c.client.disconnect()).await.unwrap().unwrap();
    // The conversation ended with the exchange.
    assert!(all_conversations_dropped(&auth).await);
    assert_eq!(auth.started.load(Ordering::SeqCst), 1);
}

/// A wrong answer to a challenge → CONNACK 0x87 Not authorized and the connection closes
/// [MQTT-4.12.0-4].
async fn wrong_answer_is_refused_with_0x87(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "alice-2", METHOD, "alice");
    c.wrong.store(true, Ordering::SeqCst);
    match c.next_event().await {
        ConnectionEvent::Disconnected { reason_code, .. } => {
            assert_eq!(reason_code, Some(ReasonCode::NotAuthorized))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(c.challenges.load(Ordering::SeqCst), 1);
    assert!(all_conversations_dropped(&auth).await);
}

/// An unknown user (the initial data) is refused at the first step, before any challenge.
async fn unknown_user_is_refused_at_once(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "mallory", METHOD, "mallory");
    match c.next_event().await {
        ConnectionEvent::Disconnected { reason_code, .. } => {
            assert_eq!(reason_code, Some(ReasonCode::NotAuthorized))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(c.challenges.load(Ordering::SeqCst), 0);
}

/// A method the enhanced authenticator does not support → CONNACK 0x8C, without starting a
/// conversation [MQTT-4.12.0-1].
async fn unsupported_method_is_refused_with_0x8c(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "kerberos", "GSSAPI", "alice");
    match c.next_event().await {
        ConnectionEvent::Disconnected { reason_code, .. } => {
            assert_eq!(reason_code, Some(ReasonCode::BadAuthenticationMethod))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(auth.started.load(Ordering::SeqCst), 0);
}

/// Without an enhanced authenticator every method is refused with 0x8C [MQTT-4.12.0-1], and
/// a client without a method still connects.
async fn no_enhanced_authenticator_refuses_every_method_with_0x8c(driver: Driver) {
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut c = TestClient::new(&broker.url(), "alice-3", METHOD, "alice");
    match c.next_event().await {
        ConnectionEvent::Disconnected { reason_code, .. } => {
            assert_eq!(reason_code, Some(ReasonCode::BadAuthenticationMethod))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let plain = Client::builder(&broker.url())
        .unwrap()
        .client_id("plain")
        .reconnect(Reconnect::Off)
        .build();
    round_trip(&plain, "plain/ok").await;
}

/// Enhanced authentication replaces the regular authenticator for the connections that use it
/// (which would refuse everyone here); clients without a method still go through it.
async fn enhanced_auth_replaces_the_regular_authenticator(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(
        driver,
        config(&auth).with_authenticator(|_req| ReasonCode::BadUserNameOrPassword),
    );
    let mut c = TestClient::new(&broker.url(), "alice-4", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
    round_trip(&c.client, "enhanced/replaces").await;
    let plain = Client::builder(&broker.url())
        .unwrap()
        .client_id("plain")
        .reconnect(Reconnect::Off)
        .build();
    let mut events = plain.events();
    let refused = timeout(WAIT, async {
        loop {
            if let Ok(ConnectionEvent::Disconnected { reason_code, .. }) = events.recv().await {
                return reason_code;
            }
        }
    })
    .await
    .expect("refused in time");
    assert_eq!(refused, Some(ReasonCode::BadUserNameOrPassword));
}

/// Re-authentication (AUTH 0x19) → two challenges → AUTH 0x00 Success with the final data;
/// the connection serves on [MQTT-4.12.1-1].
async fn reauthentication_succeeds(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "alice-5", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
    // The CONNACK's final Authentication Data reached the client's authenticator.
    let first = timeout(WAIT, c.successes.recv())
        .await
        .expect("authenticated in time");
    assert_eq!(first, Some(Some(Bytes::from_static(b"welcome"))));
    timeout(
        WAIT,
        c.client.reauthenticate(Some(Bytes::from_static(b"alice"))),
    )
    .await
    .unwrap()
    .unwrap();
    let last = timeout(WAIT, c.successes.recv())
        .await
        .expect("re-authenticated in time");
    assert_eq!(last, Some(Some(Bytes::from_static(b"welcome-back"))));
    assert_eq!(c.challenges.load(Ordering::SeqCst), 4);
    assert_eq!(auth.reauths.load(Ordering::SeqCst), 1);
    // Still connected, still serving.
    round_trip(&c.client, "enhanced/reauth").await;
    assert!(c.events.try_recv().is_err(), "no disconnection");
}

/// A failed re-authentication → DISCONNECT 0x87 and the connection closes [MQTT-4.12.1-2].
async fn failed_reauthentication_disconnects_with_0x87(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut c = TestClient::new(&broker.url(), "alice-6", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
    c.wrong.store(true, Ordering::SeqCst);
    timeout(
        WAIT,
        c.client.reauthenticate(Some(Bytes::from_static(b"alice"))),
    )
    .await
    .unwrap()
    .unwrap();
    match c.next_event().await {
        ConnectionEvent::Disconnected { reason_code, .. } => {
            assert_eq!(reason_code, Some(ReasonCode::NotAuthorized))
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(all_conversations_dropped(&auth).await);
}

/// Raw bytes: the successful CONNACK carries the CONNECT's method and the final data
/// [MQTT-4.12.0-5]; re-authentication ends with AUTH 0x00 carrying the method too.
async fn connack_carries_the_method_and_final_data(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("raw-1", METHOD, b"alice").await;
    raw.answer().await;
    raw.answer().await;
    match raw.recv().await {
        Some(Packet::ConnAck(c)) => {
            assert_eq!(c.reason_code, ReasonCode::Success);
            assert_eq!(
                c.properties
                    .authentication_method
                    .as_ref()
                    .map(|m| m.as_str()),
                Some(METHOD)
            );
            assert_eq!(
                c.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.send_auth(ReasonCode::ReAuthenticate, METHOD, b"alice".to_vec())
        .await;
    raw.answer().await;
    raw.answer().await;
    match raw.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::Success);
            assert_eq!(
                a.properties
                    .authentication_method
                    .as_ref()
                    .map(|m| m.as_str()),
                Some(METHOD)
            );
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"welcome-back"[..])
            );
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
}

/// Raw bytes: AUTH with another method than the CONNECT's → CONNACK 0x8C before the CONNACK,
/// DISCONNECT 0x8C after it [MQTT-4.12.0-5, MQTT-4.12.1-1].
async fn auth_with_another_method_is_refused_with_0x8c(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    // During the exchange.
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("raw-2", METHOD, b"alice").await;
    let mut nonce = raw.challenge().await;
    nonce.reverse();
    raw.send_auth(ReasonCode::ContinueAuthentication, SLOW, nonce)
        .await;
    match raw.recv().await {
        Some(Packet::ConnAck(c)) => {
            assert_eq!(c.reason_code, ReasonCode::BadAuthenticationMethod)
        }
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
    assert!(raw.closed().await);
    // After the CONNACK, in a re-authentication.
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("raw-3", METHOD, b"alice").await;
    raw.answer().await;
    raw.answer().await;
    assert!(
        matches!(raw.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == ReasonCode::Success)
    );
    raw.send_auth(ReasonCode::ReAuthenticate, SLOW, b"alice".to_vec())
        .await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::BadAuthenticationMethod)
        }
        other => panic!("expected DISCONNECT 0x8C, got {other:?}"),
    }
    assert!(raw.closed().await);
    assert!(all_conversations_dropped(&auth).await);
}

/// Raw bytes: AUTH 0x18 from a connected client with no exchange under way is a protocol
/// error → DISCONNECT 0x82.
async fn unsolicited_continue_after_connack_is_a_protocol_error(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("raw-4", METHOD, b"alice").await;
    raw.answer().await;
    raw.answer().await;
    assert!(
        matches!(raw.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == ReasonCode::Success)
    );
    raw.send_auth(ReasonCode::ContinueAuthentication, METHOD, b"x".to_vec())
        .await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ProtocolError),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
    assert!(raw.closed().await);
}

/// Raw bytes: a client that vanishes after the first challenge → its conversation is dropped,
/// and the broker serves on.
async fn client_vanishing_mid_exchange_frees_its_state(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("raw-5", METHOD, b"alice").await;
    let _ = raw.challenge().await;
    assert_eq!(auth.live.load(Ordering::SeqCst), 1);
    drop(raw);
    assert!(
        all_conversations_dropped(&auth).await,
        "the conversation of a vanished client is dropped"
    );
    // The broker serves on, enhanced authentication included.
    let mut c = TestClient::new(&broker.url(), "alice-7", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
    round_trip(&c.client, "enhanced/after-vanish").await;
}

/// A step that blocks holds up only its own client: another client connects and exchanges
/// messages meanwhile; once released, the slow one is answered.
async fn slow_step_does_not_stall_other_clients(driver: Driver) {
    let auth = Challenges::default();
    let (release, rx) = std::sync::mpsc::channel();
    *auth.release.lock().unwrap() = Some(rx);
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("slow", SLOW, b"alice").await;
    assert!(common::wait_for(10, || auth.started.load(Ordering::SeqCst) == 1).await);
    // The slow step is running (blocked); others are served.
    let mut c = TestClient::new(&broker.url(), "alice-8", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
    round_trip(&c.client, "enhanced/not-stalled").await;
    release.send(()).expect("the slow step waits");
    match raw.recv().await {
        Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication),
        other => panic!("expected the slow client's challenge, got {other:?}"),
    }
}

/// The connect timeout bounds the whole exchange: a client that never answers its challenge
/// is closed, and its conversation dropped.
async fn connect_timeout_bounds_the_exchange(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(
        driver,
        config(&auth).with_connect_timeout(Duration::from_millis(300)),
    );
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("silent", METHOD, b"alice").await;
    let _ = raw.challenge().await;
    // No answer: the broker closes the connection (no CONNACK is owed to a timed-out client).
    loop {
        match raw.recv().await {
            None => break,
            Some(Packet::ConnAck(c)) => assert!(c.reason_code.is_error(), "{c:?}"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(all_conversations_dropped(&auth).await);
}

/// A step that panics refuses the client with 0x83, drops its conversation, and the broker
/// serves on.
async fn panicking_step_refuses_with_0x83(driver: Driver) {
    let auth = Challenges::default();
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("panics", PANIC, b"alice").await;
    match raw.recv().await {
        Some(Packet::ConnAck(c)) => {
            assert_eq!(c.reason_code, ReasonCode::ImplementationSpecificError)
        }
        other => panic!("expected CONNACK 0x83, got {other:?}"),
    }
    assert!(raw.closed().await);
    assert!(all_conversations_dropped(&auth).await);
    let mut c = TestClient::new(&broker.url(), "alice-9", METHOD, "alice");
    assert!(matches!(
        c.next_event().await,
        ConnectionEvent::Connected { .. }
    ));
}

/// Raw bytes: AUTH sent while the broker is still deciding the previous step breaks the
/// exchange's turn-taking [MQTT-4.12.0-3] → CONNACK 0x82; the step's late result is dropped.
async fn auth_before_the_challenge_is_a_protocol_error(driver: Driver) {
    let auth = Challenges::default();
    let (release, rx) = std::sync::mpsc::channel();
    *auth.release.lock().unwrap() = Some(rx);
    let broker = TestBroker::start_tcp(driver, config(&auth));
    let mut raw = Raw::connect(&broker).await;
    raw.send_connect("eager", SLOW, b"alice").await;
    assert!(common::wait_for(10, || auth.started.load(Ordering::SeqCst) == 1).await);
    raw.send_auth(ReasonCode::ContinueAuthentication, SLOW, b"eager".to_vec())
        .await;
    match raw.recv().await {
        Some(Packet::ConnAck(c)) => assert_eq!(c.reason_code, ReasonCode::ProtocolError),
        other => panic!("expected CONNACK 0x82, got {other:?}"),
    }
    assert!(raw.closed().await);
    release.send(()).expect("the slow step waits");
    assert!(all_conversations_dropped(&auth).await);
}

per_driver!(async:
    panicking_step_refuses_with_0x83,
    auth_before_the_challenge_is_a_protocol_error,
    two_step_challenge_response_succeeds,
    wrong_answer_is_refused_with_0x87,
    unknown_user_is_refused_at_once,
    unsupported_method_is_refused_with_0x8c,
    no_enhanced_authenticator_refuses_every_method_with_0x8c,
    enhanced_auth_replaces_the_regular_authenticator,
    reauthentication_succeeds,
    failed_reauthentication_disconnects_with_0x87,
    connack_carries_the_method_and_final_data,
    auth_with_another_method_is_refused_with_0x8c,
    unsolicited_continue_after_connack_is_a_protocol_error,
    client_vanishing_mid_exchange_frees_its_state,
    slow_step_does_not_stall_other_clients,
    connect_timeout_bounds_the_exchange,
);
