//! `mqttproto broker --listen mqtts://… --cert … --key …`: TLS listeners from the command line,
//! used by `mqttproto pub` / `sub` with a test CA generated here.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

const WAIT: Duration = Duration::from_secs(10);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mqttproto() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mqttproto"))
}

/// A temporary directory with a test CA, a server certificate for 127.0.0.1 and a client
/// certificate; removed on drop.
struct Pki(PathBuf);

impl Pki {
    fn generate(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("mqttproto-clitls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cli test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("IP")));
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
        client
            .distinguished_name
            .push(DnType::CommonName, "cli-client");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");
        for (file, text) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), text).expect("write PEM");
        }
        Pki(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `mqttproto broker ARGS`; returns it and the first line it prints.
fn broker(args: &[&str]) -> (Proc, String) {
    let mut child = mqttproto()
        .arg("broker")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the broker prints where it listens");
    (Proc(child), line)
}

/// Runs a command to completion within the time limit.
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(WAIT)
        .expect("the command finishes in time")
        .expect("output")
}

fn port_of(line: &str) -> String {
    line.rsplit(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn tls_args<'a>(pki: &'a Pki, port: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = ["-h", "127.0.0.1", "-p", port, "--cafile"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(pki.path("ca.pem"));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Publishes a retained message over TLS, then reads it back with `sub -C 1` over TLS.
fn retained_round_trip(pki: &Pki, port: &str, client_cert: &[&str]) -> (Output, Output) {
    let mut publish = mqttproto();
    publish.arg("pub").args(tls_args(
        pki,
        port,
        &[
            &["-t", "tls/cli", "-m", "over tls", "-r", "-q", "1"],
            client_cert,
        ]
        .concat(),
    ));
    let published = run(publish);
    let mut subscribe = mqttproto();
    subscribe.arg("sub").args(tls_args(
        pki,
        port,
        &[&["-t", "tls/cli", "-C", "1", "-W", "5"], client_cert].concat(),
    ));
    (published, run(subscribe))
}

#[test]
fn broker_serves_mqtts_from_the_command_line() {
    let pki = Pki::generate("serve");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    for driver in ["tokio", "blocking"] {
        let (_broker, line) = broker(&[
            "--driver",
            driver,
            "--listen",
            "mqtts://127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        assert!(
            line.starts_with("listening on mqtts://127.0.0.1:"),
            "{driver}: {line}"
        );
        let port = port_of(&line);
        let (published, received) = retained_round_trip(&pki, &port, &[]);
        assert!(published.status.success(), "{driver}: {published:?}");
        assert!(received.status.success(), "{driver}: {received:?}");
        assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "over tls");
    }
}

#[test]
fn broker_requires_client_certificates_when_asked() {
    let pki = Pki::generate("mtls");
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let (_broker, line) = broker(&[
        "--listen",
        "mqtts://127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--client-ca",
        &ca,
        "--require-client-cert",
    ]);
    let port = port_of(&line);
    // Without a client certificate the TLS handshake is refused.
    let mut refused = mqttproto();
    refused.arg("pub").args(tls_args(
        &pki,
        &port,
        &["-t", "tls/cli", "-m", "x", "-q", "1"],
    ));
    let refused = run(refused);
    assert!(!refused.status.success(), "{refused:?}");
    // With one, it is served.
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client.key"));
    let (published, received) =
        retained_round_trip(&pki, &port, &["--cert", &client_cert, "--key", &client_key]);
    assert!(published.status.success(), "{published:?}");
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "over tls");
}

#[test]
fn tls_listener_errors_are_clear() {
    let pki = Pki::generate("errors");
    // A TLS listener without a certificate.
    let out = run({
        let mut c = mqttproto();
        c.args(["broker", "--listen", "mqtts://127.0.0.1:0"]);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cert") && err.contains("--key"), "{err}");
    // A certificate file that does not exist is named.
    let missing = Path::new(&pki.path("nope.pem")).display().to_string();
    let key = pki.path("server.key");
    let out = run({
        let mut c = mqttproto();
        c.args([
            "broker",
            "--listen",
            "mqtts://127.0.0.1:0",
            "--cert",
            &missing,
            "--key",
            &key,
        ]);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.pem"), "{err}");
    // --cert without any TLS listener is a mistake, not silently ignored.
    let cert = pki.path("server.pem");
    let out = run({
        let mut c = mqttproto();
        c.args([
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtts://"), "{err}");
}
