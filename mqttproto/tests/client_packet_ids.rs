//! Both clients when every packet identifier is taken: a scripted server acknowledges nothing
//! until 65,535 QoS 1 PUBLISHes are in flight, so the client's next message finds no free
//! identifier [MQTT-2.2.1-3]. It must wait (in order, behind nothing lost) until PUBACKs free
//! identifiers, not be dropped: `try_publish` reports no outcome, so a drop there would be
//! silent. The server checks that it receives every message, once and in order.

#![cfg(all(feature = "blocking", feature = "tokio"))]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqttproto::client::Reconnect;
use mqttproto::proto::codec::{decode, ConnAck, Packet, Publish, PublishAck};
use mqttproto::proto::{ProtocolVersion, QoS, ReasonCode, TopicName};

const V5: ProtocolVersion = ProtocolVersion::V5;
/// Every identifier, plus some.
const MESSAGES: u32 = 66_000;
const HOLD: u32 = 65_535;
const WAIT: Duration = Duration::from_secs(60);

fn encode(p: Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(&mut b, V5).expect("encodable");
    b
}

/// Accepts one client; answers CONNACK (no Receive Maximum: 65,535); holds every PUBACK until
/// `HOLD` PUBLISHes have arrived, then acknowledges them all and every later one at once.
/// Returns the payloads received, in order.
fn server() -> (u16, JoinHandle<Vec<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handle = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("a read timeout");
        // Writes on a thread of their own: a server that stops reading while it writes could
        // deadlock with a client doing the same.
        let (tx, rx) = std::sync::mpsc::channel::<BytesMut>();
        let mut writer = sock.try_clone().expect("a second handle");
        let writing = std::thread::spawn(move || {
            for out in rx {
                if writer.write_all(&out).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut buf = BytesMut::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut held = Vec::new();
        let mut seen = Vec::new();
        while (seen.len() as u32) < MESSAGES && Instant::now() < deadline {
            let n = match sock.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("read: {e}"),
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut out = BytesMut::new();
            while let Some(p) = decode(&mut buf, V5, u32::MAX).expect("well formed") {
                match p {
                    Packet::Connect(_) => out.extend(encode(Packet::ConnAck(Box::new(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::Success,
                        properties: Default::default(),
                    })))),
                    Packet::Publish(p) => {
                        let i: u32 = std::str::from_utf8(&p.payload)
                            .expect("text")
                            .parse()
                            .expect("a number");
                        seen.push(i);
                        if let Some(id) = p.packet_id {
                            held.push(id);
                        }
                        if seen.len() as u32 >= HOLD {
                            for id in held.drain(..) {
                                out.extend(encode(Packet::PubAck(PublishAck::new(id))));
                            }
                        }
                    }
                    Packet::PingReq => out.extend(encode(Packet::PingResp)),
                    Packet::Disconnect(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            if !out.is_empty() {
                tx.send(out).expect("the writer");
            }
        }
        // Acknowledge what is left (the last message waits for its PUBACK), then let the
        // client leave.
        let mut out = BytesMut::new();
        for id in held.drain(..) {
            out.extend(encode(Packet::PubAck(PublishAck::new(id))));
        }
        let _ = tx.send(out);
        drop(tx);
        let _ = writing.join();
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = sock.read(&mut chunk);
        seen
    });
    (port, handle)
}

fn message(i: u32) -> Publish {
    let mut p = Publish::new(
        TopicName::try_from("ids").expect("a topic"),
        Bytes::from(i.to_string()),
    );
    p.qos = QoS::AtLeastOnce;
    p
}

fn check(seen: Vec<u32>) {
    assert_eq!(seen.len() as u32, MESSAGES, "messages received");
    assert!(
        seen.iter().enumerate().all(|(i, &v)| i as u32 == v),
        "in order, once each"
    );
}

#[test]
fn tokio_client_waits_for_a_free_packet_identifier() {
    let (port, server) = server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let client = mqttproto::tokio::Client::builder(&format!("mqtt://127.0.0.1:{port}"))
            .expect("a URL")
            .client_id("ids-tokio")
            .reconnect(Reconnect::Off)
            // Messages published before the CONNACK wait in the offline queue: room for all.
            .offline_queue(MESSAGES as usize)
            .build();
        for i in 0..MESSAGES - 1 {
            client.try_publish(message(i)).expect("open");
        }
        let last = tokio::time::timeout(WAIT, client.publish_message(message(MESSAGES - 1)))
            .await
            .expect("in time");
        assert_eq!(last.expect("acknowledged"), ReasonCode::Success);
        let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    });
    check(server.join().expect("the server"));
}

#[test]
fn blocking_client_waits_for_a_free_packet_identifier() {
    let (port, server) = server();
    let client = mqttproto::blocking::Client::builder(&format!("mqtt://127.0.0.1:{port}"))
        .expect("a URL")
        .client_id("ids-blocking")
        .reconnect(Reconnect::Off)
        // Messages published before the CONNACK wait in the offline queue: room for all.
        .offline_queue(MESSAGES as usize)
        .build()
        .expect("a client");
    for i in 0..MESSAGES - 1 {
        client.try_publish(message(i)).expect("open");
    }
    let last = client
        .publish_message_timeout(message(MESSAGES - 1), Some(WAIT))
        .expect("acknowledged");
    assert_eq!(last, ReasonCode::Success);
    let _ = client.disconnect();
    check(server.join().expect("the server"));
}
