//! The broker's security features: TLS listeners (with and without client certificates),
//! WebSocket and WebSocket-over-TLS listeners, the password file and the ACL file, exercised
//! with our async client and with Debian's `mosquitto_sub` / `mosquitto_pub`, against both
//! brokers (`tokio_broker::*`, `blocking_broker::*`; see `drivers/`).

mod common;
#[macro_use]
mod drivers;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqttproto::proto::{QoS, ReasonCode};
use mqttproto::server::acl::AclFile;
use mqttproto::server::auth::{PasswordEntries, PasswordFile, PasswordHash};
use mqttproto::server::{ClientCertificates, ConnectRequest, ListenAddr, Listener};
use mqttproto::tokio::client::{ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use tokio::time::timeout;

use drivers::pki::Pki;
use drivers::{Config, Driver, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn start(driver: Driver, config: Config) -> (TestBroker, String) {
    let broker = TestBroker::start(driver, config).expect("bind");
    let url = broker.url();
    (broker, url)
}

fn listener(url: &str) -> Listener {
    Listener::new(url.parse::<ListenAddr>().unwrap())
}

/// Subscribe, publish at QoS 1, receive.
async fn round_trip(c: &Client, topic: &str) {
    let mut sub = timeout(WAIT, c.subscribe(topic, QoS::AtLeastOnce))
        .await
        .expect("subscribed in time")
        .expect("subscribe");
    assert_eq!(sub.granted(), [ReasonCode::GrantedQoS1]);
    let rc = timeout(WAIT, c.publish(topic, "secure", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc, ReasonCode::Success);
    let msg = timeout(WAIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"secure");
}

/// How a client over plain TCP, with reconnection off, ends. Its connection waits until
/// the test listens to its events, so that no event is missed.
async fn refusal(url: &str, credentials: Option<(&str, &str)>) -> ConnectionEvent {
    let addr = url.trim_start_matches("mqtt://").to_string();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let mut b = Client::builder(url)
        .unwrap()
        .reconnect(Reconnect::Off)
        .custom_transport(move || {
            let (g, addr) = (g.clone(), addr.clone());
            async move {
                g.notified().await;
                let s = tokio::net::TcpStream::connect(addr).await?;
                Ok(Box::new(s) as mqttproto::transport::BoxStream)
            }
        });
    if let Some((u, p)) = credentials {
        b = b.credentials(u, p.to_string());
    }
    let c = b.build();
    let mut events = c.events();
    gate.notify_one();
    loop {
        let ev = timeout(WAIT, events.recv()).await.unwrap().unwrap();
        if !matches!(ev, ConnectionEvent::Connected { .. }) {
            return ev;
        }
    }
}

/// Runs a mosquitto tool to completion (killed after `WAIT`); returns its exit success and its
/// stdout and stderr.
async fn mosquitto(tool: &'static str, args: Vec<String>) -> Option<(bool, String)> {
    if common::peers_skipped() && Command::new(tool).arg("--help").output().is_err() {
        return None;
    }
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(tool)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool}: {e} (run ./scripts/test.sh)"));
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success(), text))
    })
    .await
    .unwrap()
}

fn args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["-V", "5", "-h", "127.0.0.1", "-p"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(port.to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

async fn tls_listener_serves_our_client(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-tls"));
    let config = Config::default().listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()));
    let (broker, url) = start(driver, config);
    assert!(url.starts_with("mqtts://127.0.0.1:"), "{url}");
    let c = Client::builder(&url)
        .unwrap()
        .tls(pki.client(false))
        .client_id("tls-ours")
        .build();
    round_trip(&c, "tls/ours").await;
    c.disconnect().await.unwrap();
    broker.shutdown().await;
}

async fn tls_listener_serves_mosquitto_clients(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-tls-mosq"));
    let config = Config::default().listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()));
    let (broker, url) = start(driver, config);
    let port = port_of(&url);
    let ca = pki.path("ca.pem").display().to_string();
    let Some((ok, out)) = mosquitto(
        "mosquitto_pub",
        args(
            port,
            &[
                "--cafile", &ca, "-t", "tls/m", "-m", "over-tls", "-q", "1", "-r",
            ],
        ),
    )
    .await
    else {
        return;
    };
    assert!(ok, "mosquitto_pub: {out}");
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        args(
            port,
            &["--cafile", &ca, "-t", "tls/m", "-C", "1", "-W", "10"],
        ),
    )
    .await
    .unwrap();
    assert!(ok, "mosquitto_sub: {out}");
    assert_eq!(out.trim(), "over-tls");
    broker.shutdown().await;
}

async fn client_certificate_required_refuses_without_and_accepts_with(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-mtls"));
    let tls = pki
        .server()
        .with_client_certificates(ClientCertificates::Required, pki.path("ca.pem"));
    // The authenticator sees the client's certificate.
    let expected = Arc::new(pki.client_der.clone());
    let config = Config::default()
        .listen(listener("mqtts://127.0.0.1:0").with_tls(tls))
        .with_authenticator(
            move |req: ConnectRequest| match req.client_cert.as_deref() {
                Some(der) if der == expected.as_slice() => ReasonCode::Success,
                _ => ReasonCode::NotAuthorized,
            },
        );
    let (broker, url) = start(driver, config);

    let refused = Client::builder(&url)
        .unwrap()
        .tls(pki.client(false))
        .reconnect(Reconnect::Off)
        .build();
    let result = timeout(WAIT, refused.publish("x", "y", QoS::AtLeastOnce))
        .await
        .expect("the client gives up in time");
    assert!(result.is_err(), "the TLS handshake fails: {result:?}");

    let c = Client::builder(&url).unwrap().tls(pki.client(true)).build();
    round_trip(&c, "mtls/a").await;
    c.disconnect().await.unwrap();

    // mosquitto_pub without a certificate fails too.
    let ca = pki.path("ca.pem").display().to_string();
    if let Some((ok, out)) = mosquitto(
        "mosquitto_pub",
        args(port_of(&url), &["--cafile", &ca, "-t", "x", "-m", "y"]),
    )
    .await
    {
        assert!(!ok, "mosquitto_pub without a certificate connected: {out}");
    }
    broker.shutdown().await;
}

async fn websocket_listener_serves_our_client(driver: Driver) {
    let config = Config::default().listen(listener("ws://127.0.0.1:0/mqtt"));
    let (broker, url) = start(driver, config);
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/mqtt"),
        "{url}"
    );
    let c = Client::builder(&url).unwrap().client_id("ws-1").build();
    round_trip(&c, "ws/a").await;
    c.disconnect().await.unwrap();

    // Another path is refused (404).
    let wrong = url.replace("/mqtt", "/other");
    let c = Client::builder(&wrong)
        .unwrap()
        .reconnect(Reconnect::Off)
        .build();
    let result = timeout(WAIT, c.publish("x", "y", QoS::AtLeastOnce))
        .await
        .expect("the client gives up in time");
    assert!(result.is_err(), "{result:?}");
    broker.shutdown().await;
}

async fn secure_websocket_listener_serves_our_client(driver: Driver) {
    let pki = Pki::generate(&format!("{driver:?}-wss"));
    let config =
        Config::default().listen(listener("wss://127.0.0.1:0/custom").with_tls(pki.server()));
    let (broker, url) = start(driver, config);
    assert!(
        url.starts_with("wss://") && url.ends_with("/custom"),
        "{url}"
    );
    let c = Client::builder(&url)
        .unwrap()
        .tls(pki.client(false))
        .client_id("wss-1")
        .build();
    round_trip(&c, "wss/a").await;
    c.disconnect().await.unwrap();
    broker.shutdown().await;
}

async fn tls_listener_without_settings_does_not_bind(driver: Driver) {
    let bind_error = |config: Config| match TestBroker::start(driver, config) {
        Ok(_) => panic!("the broker bound"),
        Err(e) => e.to_string(),
    };
    let err = bind_error(Config::default().listen(listener("mqtts://127.0.0.1:0")));
    assert!(err.contains("needs TLS settings"), "{err}");
    let pki = Pki::generate(&format!("plain-with-tls-{driver:?}"));
    let err =
        bind_error(Config::default().listen(listener("mqtt://127.0.0.1:0").with_tls(pki.server())));
    assert!(err.contains("not a TLS listener"), "{err}");
}

/// A password file with `alice` / `s3cret` (a weak hash: debug builds hash slowly).
fn password_file(dir: &std::path::Path) -> PathBuf {
    let mut entries = PasswordEntries::default();
    entries
        .set(
            "alice",
            PasswordHash::new_insecure_for_tests(b"s3cret", 1000),
        )
        .unwrap();
    entries
        .set("bob", PasswordHash::new_insecure_for_tests(b"b0b", 1000))
        .unwrap();
    let path = dir.join("passwd");
    std::fs::write(&path, entries.to_text()).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqttproto-bsec-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn password_file_accepts_the_right_password_only(driver: Driver) {
    let dir = temp_dir(&format!("{driver:?}-pw"));
    let file = PasswordFile::load(password_file(&dir)).unwrap();
    let config = Config::default()
        .listen(listener("127.0.0.1:0"))
        .with_authenticator(file);
    let (broker, url) = start(driver, config);

    let good = Client::builder(&url)
        .unwrap()
        .credentials("alice", "s3cret")
        .build();
    round_trip(&good, "pw/a").await;
    good.disconnect().await.unwrap();

    for credentials in [("alice", "wrong"), ("mallory", "s3cret")] {
        let ev = refusal(&url, Some(credentials)).await;
        assert!(
            matches!(
                ev,
                ConnectionEvent::Disconnected {
                    reason_code: Some(ReasonCode::BadUserNameOrPassword),
                    ..
                }
            ),
            "{credentials:?}: {ev:?}"
        );
    }
    let ev = refusal(&url, None).await;
    assert!(
        matches!(
            ev,
            ConnectionEvent::Disconnected {
                reason_code: Some(ReasonCode::NotAuthorized),
                ..
            }
        ),
        "{ev:?}"
    );

    // mosquitto_pub with a wrong password is refused, with the right one it gets through.
    let port = port_of(&url);
    if let Some((ok, out)) = mosquitto(
        "mosquitto_pub",
        args(
            port,
            &["-u", "alice", "-P", "nope", "-t", "pw/m", "-m", "x"],
        ),
    )
    .await
    {
        assert!(!ok, "{out}");
        assert!(out.to_lowercase().contains("password"), "{out}");
        let (ok, out) = mosquitto(
            "mosquitto_pub",
            args(
                port,
                &["-u", "alice", "-P", "s3cret", "-t", "pw/m", "-m", "x"],
            ),
        )
        .await
        .unwrap();
        assert!(ok, "{out}");
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

const ACL: &str = "\
# alice: her own tree, and reading public/
user alice
topic readwrite alice/#
topic read public/#

# bob: everything but secret/
user bob
topic readwrite #
topic deny secret/#
";

fn acl_broker(driver: Driver, dir: &std::path::Path) -> (TestBroker, String) {
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, ACL).unwrap();
    let config = Config::default()
        .listen(listener("127.0.0.1:0"))
        .with_authenticator(PasswordFile::load(password_file(dir)).unwrap())
        .with_authorizer(AclFile::load(&acl_path).unwrap());
    start(driver, config)
}

async fn acl_denies_in_suback_and_puback_for_our_client(driver: Driver) {
    let dir = temp_dir(&format!("{driver:?}-acl-ours"));
    let (broker, url) = acl_broker(driver, &dir);
    let alice = Client::builder(&url)
        .unwrap()
        .credentials("alice", "s3cret")
        .build();
    let bob = Client::builder(&url)
        .unwrap()
        .credentials("bob", "b0b")
        .build();

    // SUBACK: 0x87 for a filter alice may not read; bob may not read secret/ (deny overlaps #).
    let denied = timeout(WAIT, alice.subscribe("bob/#", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(denied.granted(), [ReasonCode::NotAuthorized]);
    let denied = timeout(WAIT, bob.subscribe("#", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(denied.granted(), [ReasonCode::NotAuthorized]);
    let mut watch = timeout(WAIT, bob.subscribe("alice/#", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.granted(), [ReasonCode::GrantedQoS1]);

    // PUBACK: 0x87 for a topic alice may not write; the message goes nowhere.
    let rc = timeout(WAIT, alice.publish("public/news", "x", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc, ReasonCode::NotAuthorized);
    let rc = timeout(WAIT, bob.publish("secret/plans", "x", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc, ReasonCode::NotAuthorized);
    // A denied QoS 0 message is dropped; the allowed one after it arrives first.
    let _ = alice
        .publish("public/news", "dropped", QoS::AtMostOnce)
        .await;
    let rc = timeout(WAIT, alice.publish("alice/status", "ok", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc, ReasonCode::Success);
    let msg = timeout(WAIT, watch.recv()).await.unwrap().unwrap();
    assert_eq!(msg.topic.as_str(), "alice/status");
    assert_eq!(&msg.payload[..], b"ok");

    alice.disconnect().await.unwrap();
    bob.disconnect().await.unwrap();
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn acl_denies_in_suback_and_puback_for_mosquitto_clients(driver: Driver) {
    let dir = temp_dir(&format!("{driver:?}-acl-mosq"));
    let (broker, url) = acl_broker(driver, &dir);
    let port = port_of(&url);
    let alice = ["-u", "alice", "-P", "s3cret", "-d"];
    let Some((_, out)) = mosquitto(
        "mosquitto_sub",
        args(
            port,
            &[&alice[..], &["-t", "bob/#", "-q", "1", "-W", "1"]].concat(),
        ),
    )
    .await
    else {
        return;
    };
    assert!(out.contains("135"), "SUBACK with 0x87 (135): {out}");
    let (_, out) = mosquitto(
        "mosquitto_pub",
        args(
            port,
            &[&alice[..], &["-t", "public/news", "-m", "x", "-q", "1"]].concat(),
        ),
    )
    .await
    .unwrap();
    assert!(
        out.contains("PUBACK") && out.contains("135"),
        "PUBACK with 0x87: {out}"
    );
    let (ok, out) = mosquitto(
        "mosquitto_pub",
        args(
            port,
            &[&alice[..], &["-t", "alice/x", "-m", "x", "-q", "1"]].concat(),
        ),
    )
    .await
    .unwrap();
    assert!(ok && !out.contains("135"), "allowed: {out}");
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(async:
    tls_listener_serves_our_client,
    tls_listener_serves_mosquitto_clients,
    client_certificate_required_refuses_without_and_accepts_with,
    websocket_listener_serves_our_client,
    secure_websocket_listener_serves_our_client,
    password_file_accepts_the_right_password_only,
    acl_denies_in_suback_and_puback_for_our_client,
    acl_denies_in_suback_and_puback_for_mosquitto_clients,
    tls_listener_without_settings_does_not_bind,
);
