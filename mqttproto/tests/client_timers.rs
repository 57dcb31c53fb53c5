//! Keep alive, reconnect backoff and enhanced authentication on tokio's paused clock, against a
//! scripted server over in-memory pipes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttproto::proto::codec::{decode, Auth, AuthProperties, ConnAck, ConnAckProperties, Packet};
use mqttproto::proto::{MqttString, ProtocolVersion, QoS, ReasonCode};
use mqttproto::tokio::client::{Authenticator, ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use mqttproto::transport::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Reads packets from a pipe, recording when each arrived.
struct Peer {
    io: DuplexStream,
    buf: BytesMut,
}

impl Peer {
    async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, V5, u32::MAX).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, p: Packet) {
        let b = p.to_bytes(V5).unwrap();
        let _ = self.io.write_all(&b).await;
    }
}

/// A client whose every connection attempt hands the server side of a new pipe to the test.
fn piped(
    builder_opts: impl FnOnce(
        mqttproto::tokio::client::ClientBuilder,
    ) -> mqttproto::tokio::client::ClientBuilder,
) -> (Client, mpsc::UnboundedReceiver<Peer>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = Client::builder("mqtt://scripted")
        .unwrap()
        .custom_transport(move || {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let _ = tx.send(Peer {
                io: b,
                buf: BytesMut::new(),
            });
            async move { Ok(Box::new(a) as BoxStream) }
        });
    (builder_opts(builder).build(), rx)
}

fn connack() -> Packet {
    Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    }))
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_and_reports_a_silent_server_mqtt_3_1_2_20() {
    let (client, mut conns) = piped(|b| {
        b.keep_alive(Duration::from_secs(10))
            .ping_timeout(Duration::from_secs(5))
            .reconnect(Reconnect::Off)
    });
    let mut events = client.events();
    let mut server = conns.recv().await.unwrap();
    assert!(matches!(server.next().await, Some(Packet::Connect(_))));
    let t0 = Instant::now();
    server.send(connack()).await;
    // First PINGREQ after 10 s of silence; answered.
    assert_eq!(server.next().await, Some(Packet::PingReq));
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    server.send(Packet::PingResp).await;
    // Second after 10 more seconds; not answered: lost 5 s later.
    assert_eq!(server.next().await, Some(Packet::PingReq));
    assert_eq!(t0.elapsed(), Duration::from_secs(20));
    loop {
        match events.recv().await.unwrap() {
            ConnectionEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("keep alive"), "{reason}");
                break;
            }
            ConnectionEvent::Connected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn reconnect_backoff_doubles_with_jitter_up_to_the_maximum() {
    let (client, mut conns) = piped(|b| {
        b.reconnect(Reconnect::Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    });
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    for _ in 0..7 {
        let server = conns.recv().await.unwrap();
        gaps.push(last.elapsed());
        last = Instant::now();
        // The server hangs up at once.
        drop(server);
    }
    // The first attempt is immediate; then ~1, 2, 4, 8, 8, 8 s, each between half and all.
    assert_eq!(gaps[0], Duration::ZERO);
    for (gap, base) in gaps[1..].iter().zip([1u64, 2, 4, 8, 8, 8]) {
        let base = Duration::from_secs(base);
        assert!(
            *gap >= base / 2 && *gap <= base,
            "{gap:?} vs {base:?} ({gaps:?})"
        );
    }
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn attempts_reset_after_a_successful_connection_and_subscriptions_return() {
    let (client, mut conns) = piped(|b| {
        b.reconnect(Reconnect::Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
        })
    });
    let mut server = conns.recv().await.unwrap();
    assert!(matches!(server.next().await, Some(Packet::Connect(_))));
    server.send(connack()).await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("a/#", QoS::AtLeastOnce).await }
    });
    let Some(Packet::Subscribe(s)) = server.next().await else {
        panic!()
    };
    server
        .send(Packet::SubAck(mqttproto::proto::codec::SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: vec![ReasonCode::GrantedQoS1],
        }))
        .await;
    let _sub = sub.await.unwrap().unwrap();
    drop(server);
    let t = Instant::now();
    let mut server = conns.recv().await.unwrap();
    assert!(t.elapsed() <= Duration::from_secs(2));
    let Some(Packet::Connect(c)) = server.next().await else {
        panic!()
    };
    assert!(!c.clean_start, "reconnects resume the session");
    // The server lost the session: the client subscribes again by itself.
    server.send(connack()).await;
    let Some(Packet::Subscribe(again)) = server.next().await else {
        panic!()
    };
    assert_eq!(again.subscriptions[0].filter.as_str(), "a/#");
}

struct Scripted {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Authenticator for Scripted {
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        let data = data.unwrap_or_default().to_vec();
        self.seen.lock().unwrap().push(data.clone());
        if data == b"fail" {
            return Err("unexpected challenge".into());
        }
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

#[tokio::test(start_paused = true)]
async fn enhanced_authentication_challenge_and_response() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (client, mut conns) = piped(|b| {
        b.authentication(
            "SCRIPT",
            Some(Bytes::from_static(b"hello")),
            Scripted { seen: seen.clone() },
        )
    });
    let mut server = conns.recv().await.unwrap();
    let Some(Packet::Connect(c)) = server.next().await else {
        panic!()
    };
    assert_eq!(
        c.properties.authentication_method.as_ref().unwrap(),
        "SCRIPT"
    );
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"hello"[..])
    );
    let method = Some(MqttString::try_from("SCRIPT").unwrap());
    server
        .send(Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: method.clone(),
                authentication_data: Some(Bytes::from_static(b"nonce")),
                ..Default::default()
            },
        }))
        .await;
    let Some(Packet::Auth(answer)) = server.next().await else {
        panic!()
    };
    assert_eq!(answer.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        answer.properties.authentication_data.as_deref(),
        Some(&b"re:nonce"[..])
    );
    let mut events = client.events();
    // A successful CONNACK carries the Authentication Method [MQTT-4.12.0-5], and here final
    // Authentication Data, which reaches the authenticator's `success`.
    server
        .send(Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties {
                authentication_method: method.clone(),
                authentication_data: Some(Bytes::from_static(b"final")),
                ..Default::default()
            },
        })))
        .await;
    assert!(matches!(
        events.recv().await.unwrap(),
        ConnectionEvent::Connected { .. }
    ));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[b"nonce".to_vec(), b"ok:final".to_vec()]
    );
    // Re-authentication: AUTH 0x19, a challenge answered by the authenticator, then success.
    client
        .reauthenticate(Some(Bytes::from_static(b"again")))
        .await
        .unwrap();
    let Some(Packet::Auth(re)) = server.next().await else {
        panic!()
    };
    assert_eq!(re.reason_code, ReasonCode::ReAuthenticate);
    assert_eq!(
        re.properties.authentication_data.as_deref(),
        Some(&b"again"[..])
    );
    server
        .send(Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: method.clone(),
                authentication_data: Some(Bytes::from_static(b"nonce2")),
                ..Default::default()
            },
        }))
        .await;
    let Some(Packet::Auth(answer)) = server.next().await else {
        panic!()
    };
    assert_eq!(
        answer.properties.authentication_data.as_deref(),
        Some(&b"re:nonce2"[..])
    );
    server
        .send(Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: AuthProperties {
                authentication_method: method,
                ..Default::default()
            },
        }))
        .await;
    // Still connected and usable.
    let publish = client.publish("after/reauth", "x", QoS::AtMostOnce);
    let Some(Packet::Publish(p)) = server.next().await else {
        panic!()
    };
    assert_eq!(p.topic.as_str(), "after/reauth");
    publish.await.unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[
            b"nonce".to_vec(),
            b"ok:final".to_vec(),
            b"nonce2".to_vec(),
            b"ok:".to_vec()
        ]
    );
}

/// A builder input that is not a valid MQTT string (here a client identifier with U+0000
/// [MQTT-1.5.4-2]) is not dropped or replaced: the client makes no connection, reports the
/// input, and every request fails with `Closed`.
#[tokio::test(start_paused = true)]
async fn an_invalid_builder_string_is_reported_and_nothing_connects() {
    let (client, mut conns) = piped(|b| {
        b.client_id("dev\0ice")
            .user_property("ok", "fine")
            .reconnect(Reconnect::Off)
    });
    let mut events = client.events();
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Ok(ConnectionEvent::Disconnected {
            reason,
            reason_code,
        })) => {
            assert!(reason.contains("client identifier"), "{reason}");
            assert!(reason.contains("U+0000"), "{reason}");
            assert_eq!(reason_code, None);
        }
        other => panic!("{other:?}"),
    }
    // The transport was never asked for a connection.
    let attempt = tokio::time::timeout(Duration::from_secs(5), conns.recv()).await;
    assert!(
        matches!(attempt, Ok(None)),
        "a connection was attempted: {:?}",
        attempt.map(|p| p.is_some())
    );
    let published = tokio::time::timeout(
        Duration::from_secs(5),
        client.publish("t", &b"x"[..], QoS::AtLeastOnce),
    )
    .await;
    assert!(
        matches!(
            published,
            Ok(Err(mqttproto::tokio::client::ClientError::Closed))
        ),
        "{published:?}"
    );
}
