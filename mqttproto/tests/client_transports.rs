//! The async client over every transport: TLS against Mosquitto (a test CA generated with rcgen
//! at test time, a listener that requires client certificates, a bare IP as server name), a
//! password-protected listener, WebSocket (through an in-test WebSocket-to-TCP bridge, since
//! Debian's Mosquitto is built without WebSocket support), and Unix sockets.

#![allow(clippy::result_large_err)] // the WebSocket handshake callback's error type is tungstenite's

mod common;
mod pki;

use std::path::Path;
use std::time::Duration;

use common::Mosquitto;
use mqttproto::proto::QoS;
use mqttproto::proto::ReasonCode;
use mqttproto::tokio::client::{ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use mqttproto::transport::{TlsOptions, WsStream};
use pki::Pki;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// Round trip through `c`: subscribe, publish at QoS 1, receive.
async fn round_trip(c: &Client, topic: &str) {
    let mut sub = timeout(WAIT, c.subscribe(topic, QoS::AtLeastOnce))
        .await
        .expect("subscribed in time")
        .expect("subscribe");
    let rc = timeout(WAIT, c.publish(topic, "over the wire", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc, ReasonCode::Success);
    let msg = timeout(WAIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"over the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_a_bare_ip_server_name() {
    let pki = Pki::generate("tls");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let c = Client::builder(&format!("mqtts://127.0.0.1:{}", m.port))
        .unwrap()
        .tls(pki.tls(false))
        .client_id("tls-1")
        .build();
    round_trip(&c, "tls/a").await;
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_override() {
    let pki = Pki::generate("sni");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let mut tls = pki.tls(false);
    tls.server_name = Some("localhost".into());
    let c = Client::builder(&format!("mqtts://127.0.0.1:{}", m.port))
        .unwrap()
        .tls(tls)
        .build();
    round_trip(&c, "tls/sni").await;
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_requiring_client_certificates() {
    let pki = Pki::generate("mtls");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(true)) else {
        return;
    };
    let url = format!("mqtts://127.0.0.1:{}", m.port);
    // Without a certificate the handshake fails and the client reports it.
    let refused = Client::builder(&url)
        .unwrap()
        .tls(pki.tls(false))
        .reconnect(Reconnect::Off)
        .build();
    let mut events = refused.events();
    let err = timeout(WAIT, refused.publish("x", "y", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert!(err.is_err());
    let ev = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert!(matches!(ev, ConnectionEvent::Disconnected { .. }), "{ev:?}");
    // With one it works.
    let c = Client::builder(&url).unwrap().tls(pki.tls(true)).build();
    round_trip(&c, "mtls/a").await;
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_rejects_an_untrusted_server() {
    let pki = Pki::generate("untrusted");
    let other = Pki::generate("other-ca");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let c = Client::builder(&format!("mqtts://127.0.0.1:{}", m.port))
        .unwrap()
        .tls(other.tls(false))
        .reconnect(Reconnect::Off)
        .build();
    let mut events = c.events();
    drop(c.publish("x", "y", QoS::AtMostOnce));
    let ev = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    let ConnectionEvent::Disconnected { reason, .. } = ev else {
        panic!("{ev:?}")
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_listener() {
    let dir = std::env::temp_dir().join(format!("mqttproto-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pwfile = dir.join("passwd");
    std::fs::write(&pwfile, "").unwrap();
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&pwfile)
        .arg("alice")
        .arg("s3cret")
        .status();
    if status.is_err() && common::peers_skipped() {
        return;
    }
    assert!(
        status.unwrap().success(),
        "mosquitto_passwd (run ./scripts/test.sh)"
    );
    let Some(m) = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}",
        pwfile.display()
    )) else {
        return;
    };
    let bad = Client::builder(&m.url())
        .unwrap()
        .credentials("alice", "wrong")
        .reconnect(Reconnect::Off)
        .build();
    let mut events = bad.events();
    drop(bad.publish("x", "y", QoS::AtMostOnce));
    let ev = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert!(
        matches!(ev, ConnectionEvent::Disconnected { reason_code: Some(rc), .. } if rc == ReasonCode::BadUserNameOrPassword || rc == ReasonCode::NotAuthorized),
        "{ev:?}"
    );
    let good = Client::builder(&m.url())
        .unwrap()
        .credentials("alice", "s3cret")
        .build();
    round_trip(&good, "pw/a").await;
    good.disconnect().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket server that bridges each connection to a TCP upstream, checking that the client
/// asked for the `mqtt` subprotocol; over TLS when `tls` is given.
async fn ws_bridge(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    ws_bridge_tls(upstream, None).await
}

fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn ws_bridge_tls(
    upstream: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::net::SocketAddr {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let check = |req: &Request, mut resp: Response| {
                    let proto = req.headers().get("Sec-WebSocket-Protocol").cloned();
                    assert_eq!(proto.as_ref().and_then(|v| v.to_str().ok()), Some("mqtt"));
                    assert_eq!(req.uri().path(), "/mqtt");
                    if let Some(p) = proto {
                        resp.headers_mut().insert("Sec-WebSocket-Protocol", p);
                    }
                    Ok(resp)
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                match tls {
                    Some(acceptor) => {
                        let Ok(sock) = acceptor.accept(sock).await else {
                            return;
                        };
                        let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
                            return;
                        };
                        let _ =
                            tokio::io::copy_bidirectional(&mut WsStream::new(ws), &mut up).await;
                    }
                    None => {
                        let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
                            return;
                        };
                        let _ =
                            tokio::io::copy_bidirectional(&mut WsStream::new(ws), &mut up).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_with_the_mqtt_subprotocol() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let bridge = ws_bridge(format!("127.0.0.1:{}", m.port).parse().unwrap()).await;
    let c = Client::builder(&format!("ws://{bridge}/mqtt"))
        .unwrap()
        .client_id("ws-1")
        .build();
    round_trip(&c, "ws/a").await;
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let pki = Pki::generate("wss");
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let bridge = ws_bridge_tls(
        format!("127.0.0.1:{}", m.port).parse().unwrap(),
        Some(tls_acceptor(&pki)),
    )
    .await;
    let c = Client::builder(&format!("wss://{bridge}/mqtt"))
        .unwrap()
        .tls(pki.tls(false))
        .client_id("wss-1")
        .build();
    round_trip(&c, "wss/a").await;
    c.disconnect().await.unwrap();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mqttproto-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broker.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let upstream = m.port;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    let c = Client::builder(&format!("unix://{}", path.display()))
        .unwrap()
        .build();
    round_trip(&c, "unix/a").await;
    c.disconnect().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _: &Path = &path;
}

/// The default TLS settings trust the operating system's roots (Debian's ca-certificates here)
/// and verify the server against them: a server signed by a private CA is refused with a
/// certificate error, not a configuration error (the system store loaded and was used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_system_roots_verify_the_server() {
    let pki = Pki::generate("sysroots");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let c = Client::builder(&format!("mqtts://127.0.0.1:{}", m.port))
        .unwrap()
        .reconnect(Reconnect::Off)
        .build();
    let mut events = c.events();
    drop(c.publish("x", "y", QoS::AtMostOnce));
    let ev = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    let ConnectionEvent::Disconnected { reason, .. } = ev else {
        panic!("{ev:?}")
    };
    let reason = reason.to_lowercase();
    assert!(
        !reason.contains("no trusted root"),
        "the system root store is empty on this machine (install ca-certificates): {reason}"
    );
    assert!(
        reason.contains("certificate") || reason.contains("issuer"),
        "{reason}"
    );
}

/// A CA file adds to the system roots rather than replacing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_system_roots_plus_a_ca_file() {
    let pki = Pki::generate("sysroots-ca");
    let Some(m) = Mosquitto::start(&pki.mosquitto_tls(false)) else {
        return;
    };
    let tls = TlsOptions {
        system_roots: true,
        ..pki.tls(false)
    };
    let c = Client::builder(&format!("mqtts://127.0.0.1:{}", m.port))
        .unwrap()
        .tls(tls)
        .build();
    round_trip(&c, "sysroots/a").await;
    c.disconnect().await.unwrap();
}
