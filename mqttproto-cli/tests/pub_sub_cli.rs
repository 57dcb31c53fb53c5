//! `mqttproto pub` and `mqttproto sub` against `mqttproto broker`, and `mqttproto sub` against a
//! message from `mosquitto_pub` when it is installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

/// Starts `mqttproto broker` on a free port; returns it and its port.
fn broker() -> (Proc, u16) {
    let mut child = mqttproto()
        .args(["broker", "--listen", "127.0.0.1:0"])
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
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (Proc(child), port)
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

/// Starts `mqttproto sub` and waits until its subscription is in place (a retained marker
/// published beforehand comes back).
fn subscriber(port: u16, extra: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let p = port.to_string();
    let marker = run({
        let mut c = mqttproto();
        c.args([
            "pub",
            "-p",
            &p,
            "-t",
            "cli/ready",
            "-m",
            "ready",
            "-r",
            "-q",
            "1",
        ]);
        c
    });
    assert!(marker.status.success(), "{marker:?}");
    let mut child = mqttproto()
        .args(["sub", "-p", &p, "-t", "cli/#", "-v", "-q", "2", "-W", "10"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sub");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(
        rx.recv_timeout(WAIT).expect("retained marker"),
        "cli/ready ready"
    );
    (Proc(child), rx)
}

#[test]
fn pub_and_sub_round_trip_at_every_qos_with_properties() {
    let (_broker, port) = broker();
    let p = port.to_string();
    let (_sub, lines) = subscriber(port, &["-C", "4"]);
    for q in ["0", "1", "2"] {
        let out = run({
            let mut c = mqttproto();
            c.args([
                "pub",
                "-p",
                &p,
                "-t",
                &format!("cli/q{q}"),
                "-m",
                &format!("m{q}"),
                "-q",
                q,
                "-v",
            ]);
            c
        });
        assert!(out.status.success(), "{out:?}");
        if q != "0" {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("0x00 Success"),
                "{out:?}"
            );
        }
    }
    for q in ["0", "1", "2"] {
        assert_eq!(lines.recv_timeout(WAIT).unwrap(), format!("cli/q{q} m{q}"));
    }
}

#[test]
fn pub_reports_refusals_and_bad_arguments() {
    let (_broker, port) = broker();
    let p = port.to_string();
    // A wildcard in a topic name is refused before anything is sent.
    let out = run({
        let mut c = mqttproto();
        c.args(["pub", "-p", &p, "-t", "a/+", "-m", "x"]);
        c
    });
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wildcard"),
        "{out:?}"
    );
    // Nobody listening: a clear error within the timeout.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = run({
        let mut c = mqttproto();
        c.args(["pub", "-p", &free, "-t", "a", "-m", "x", "-W", "3"]);
        c
    });
    assert!(!out.status.success());
}

#[test]
fn sub_prints_what_mosquitto_pub_sends() {
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        if std::env::var("MQTTPROTO_SKIP_PEER_TESTS").is_ok_and(|v| v == "1") {
            return;
        }
        panic!("mosquitto_pub is not installed: run ./scripts/test.sh, which installs it");
    }
    let (_broker, port) = broker();
    let (_sub, lines) = subscriber(port, &["-C", "2"]);
    let out = run({
        let mut c = Command::new("mosquitto_pub");
        c.args([
            "-V",
            "5",
            "-p",
            &port.to_string(),
            "-t",
            "cli/from-mosquitto",
            "-m",
            "hi",
            "-q",
            "1",
        ]);
        c
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "cli/from-mosquitto hi");
}
