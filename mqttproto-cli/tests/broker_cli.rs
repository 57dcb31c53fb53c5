//! `mqttproto broker`: the listen lines it prints, its limits, and a graceful exit on SIGTERM,
//! with either driver (`--driver tokio`, the default, and `--driver blocking`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqttproto::proto::codec::{decode, Packet};
use mqttproto::proto::{ProtocolVersion, ReasonCode};

const WAIT: Duration = Duration::from_secs(5);

/// The broker process, killed on drop.
struct BrokerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl BrokerProcess {
    fn start(args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mqttproto"))
            .arg("broker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mqttproto broker");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        BrokerProcess { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line on stdout within 5 s")
    }

    /// Waits for the exit; returns whether it succeeded.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => panic!("the broker did not exit within {WAIT:?}"),
            }
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Reads packets until one arrives, the peer closes, or `timeout` passes.
fn read_packets(sock: &mut TcpStream, timeout: Duration) -> (Vec<Packet>, bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !packets.is_empty() {
            return (packets, false);
        }
        let _ = sock.set_read_timeout(Some(left));
        match sock.read(&mut chunk) {
            Ok(0) => return (packets, true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Ok(Some(p)) = decode(&mut buf, ProtocolVersion::V5, u32::MAX) {
                    packets.push(p);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return (packets, true),
        }
    }
}

fn port_of(line: &str) -> u16 {
    line.strip_prefix("listening on mqtt://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

#[cfg(unix)]
#[test]
fn broker_prints_listeners_enforces_limits_and_exits_on_sigterm() {
    prints_listeners_enforces_limits_and_exits_on_sigterm("tokio");
}

#[cfg(unix)]
#[test]
fn blocking_broker_prints_listeners_enforces_limits_and_exits_on_sigterm() {
    prints_listeners_enforces_limits_and_exits_on_sigterm("blocking");
}

#[cfg(unix)]
fn prints_listeners_enforces_limits_and_exits_on_sigterm(driver: &str) {
    let dir = std::env::temp_dir().join(format!("mqttproto-cli-{}-{driver}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let sock_path = dir.join("broker.sock");
    let unix = format!("unix:{}", sock_path.display());
    let mut broker = BrokerProcess::start(&[
        "--driver",
        driver,
        "--listen",
        "127.0.0.1:0",
        "--listen",
        &unix,
        "--max-connections",
        "1",
        "--max-packet-size",
        "2048",
    ]);
    let port = port_of(&broker.line());
    assert_eq!(
        broker.line(),
        format!("listening on unix://{}", sock_path.display())
    );

    // CONNACK announces the maximum packet size.
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client
        .write_all(&connect_packet("cli-test"))
        .expect("write");
    match read_packets(&mut client, WAIT).0.first() {
        Some(Packet::ConnAck(c)) => {
            assert_eq!(c.reason_code, ReasonCode::Success);
            assert_eq!(
                c.properties.maximum_packet_size.map(|m| m.get()),
                Some(2048)
            );
        }
        other => panic!("no CONNACK: {other:?}"),
    }
    // A second connection is over the maximum.
    let mut second = std::os::unix::net::UnixStream::connect(&sock_path).expect("connect");
    second.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let mut byte = [0u8; 1];
    assert!(matches!(second.read(&mut byte), Ok(0) | Err(_)), "refused");

    // SIGTERM: the client gets DISCONNECT 0x8B, the process exits cleanly, the socket file
    // is gone.
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    match read_packets(&mut client, WAIT).0.first() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ServerShuttingDown),
        other => panic!("no DISCONNECT: {other:?}"),
    }
    assert!(broker.wait_exit(), "exit status 0");
    assert!(!sock_path.exists(), "socket file removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broker_rejects_a_bad_listen_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqttproto"))
        .args(["broker", "--listen", "nowhere"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid listen address"), "{err}");
}

#[test]
fn broker_rejects_an_unknown_driver() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqttproto"))
        .args(["broker", "--driver", "threads"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokio") && err.contains("blocking"), "{err}");
}
