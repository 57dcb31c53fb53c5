//! The broker scenario suite, run against both drivers (`tokio_broker::*` and
//! `blocking_broker::*`, see `drivers/`): real third-party clients (Debian's `mosquitto_pub` and
//! `mosquitto_sub` in MQTT 5 mode, `-V 5`), plus raw-socket and core-client checks (connect
//! timeout, limits, authentication, bad input, slow consumers, graceful shutdown).
//!
//! Every broker listens on a free loopback port. Every wait is bounded; child processes are
//! killed when their guard drops. Without the mosquitto clients these tests fail and say how to
//! install them (`./scripts/test.sh`), unless `MQTTPROTO_SKIP_PEER_TESTS=1`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqttproto::proto::codec::{decode, Packet, Publish, Subscription};
use mqttproto::proto::{
    Client, ClientEvent, ClientOptions, MqttString, ProtocolVersion, QoS, ReasonCode,
    SubscriptionOptions, TopicFilter, TopicName,
};
use mqttproto::server::{ConnectRequest, ListenAddr, PeerAddr};

#[macro_use]
mod drivers;
use drivers::{Config, Driver, TestBroker};

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(5);

// ---- the peers ---------------------------------------------------------------------------

/// Whether the mosquitto clients are here; fails the test when they are not, unless skipping
/// was asked for.
fn peers_available() -> bool {
    let found = ["mosquitto_sub", "mosquitto_pub"].iter().all(|tool| {
        Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if found {
        return true;
    }
    if std::env::var("MQTTPROTO_SKIP_PEER_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: mosquitto_sub / mosquitto_pub not found (MQTTPROTO_SKIP_PEER_TESTS=1)");
        return false;
    }
    panic!(
        "mosquitto_sub / mosquitto_pub not found: run ./scripts/test.sh (it installs Debian's \
         mosquitto-clients), or set MQTTPROTO_SKIP_PEER_TESTS=1 to skip the peer tests"
    );
}

/// A message as `mosquitto_sub -F 'MSG|%t|%q|%r|%S|%p'` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    sub_ids: String,
    payload: String,
}

const FORMAT: &str = "MSG|%t|%q|%r|%S|%p";

impl Msg {
    fn parse(line: &str) -> Option<Msg> {
        let mut f = line.strip_prefix("MSG|")?.splitn(5, '|');
        Some(Msg {
            topic: f.next()?.to_string(),
            qos: f.next()?.parse().ok()?,
            retain: f.next()? == "1",
            sub_ids: f.next()?.to_string(),
            payload: f.next()?.to_string(),
        })
    }
}

/// A child process, killed on drop, whose stdout lines arrive on a channel.
struct Peer {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn spawn(program: &str, args: &[String], stdin: Option<String>) -> Peer {
        // The mosquitto tools buffer stdout when it is a pipe: ask for line buffering
        // (coreutils' stdbuf execs the tool, so the child is the tool itself).
        let mut command = if Command::new("stdbuf")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg(program);
            c
        } else {
            Command::new(program)
        };
        let mut child = command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e} (run ./scripts/test.sh)"));
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut out = BufReader::new(out);
                let mut line = Vec::new();
                while out.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if tx.send(text).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&text);
                }
            });
        }
        Peer {
            name: format!("{program} {}", args.join(" ")),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn describe(&self) -> String {
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "{}\n--- stdout so far:\n{}\n--- stderr:\n{stderr}",
            self.name,
            self.seen.join("\n")
        )
    }

    /// The next line matching `pred`, within `timeout`.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for SUBACK (mosquitto_sub -d prints "Subscribed (mid: …)").
    fn subscribed(&mut self) {
        if self
            .wait_line(WAIT, |l| l.starts_with("Subscribed (mid:"))
            .is_none()
        {
            panic!("no SUBACK for {}", self.describe());
        }
    }

    /// The next message, within `timeout`.
    fn message_within(&mut self, timeout: Duration) -> Option<Msg> {
        self.wait_line(timeout, |l| l.starts_with("MSG|"))
            .and_then(|l| Msg::parse(&l))
    }

    fn message(&mut self) -> Msg {
        match self.message_within(WAIT) {
            Some(m) => m,
            None => panic!("no message for {}", self.describe()),
        }
    }

    /// Waits for the process to exit; returns its stdout lines.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // Collect the rest of the output.
                    while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                        self.seen.push(line);
                    }
                    assert!(status.success(), "{status}: {}", self.describe());
                    return std::mem::take(&mut self.seen);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => panic!("did not finish within {WAIT:?}: {}", self.describe()),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["-V", "5", "-h", "127.0.0.1", "-p", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `mosquitto_sub -V 5 -d -F FORMAT …`, subscribed when it returns.
fn sub(port: u16, extra: &[&str]) -> Peer {
    let mut a = args(port, &["-d", "-F", FORMAT]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Peer::spawn("mosquitto_sub", &a, None);
    p.subscribed();
    p
}

/// `mosquitto_pub -V 5 …`, run to completion; returns its stdout.
fn publish(port: u16, extra: &[&str]) -> Vec<String> {
    Peer::spawn("mosquitto_pub", &args(port, extra), None).finish()
}

/// `mosquitto_pub -V 5 -l …` with `lines` on stdin.
fn publish_lines(port: u16, extra: &[&str], lines: &[String]) -> Vec<String> {
    let mut a = args(port, &["-l"]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    Peer::spawn("mosquitto_pub", &a, Some(text)).finish()
}

// ---- a blocking client on the core state machine ----------------------------------------

/// A minimal blocking driver of the core `Client`, for what the mosquitto tools cannot do.
struct CoreClient {
    sock: TcpStream,
    client: Client,
    events: VecDeque<ClientEvent>,
    closed: bool,
}

impl CoreClient {
    fn connect(port: u16, options: ClientOptions) -> CoreClient {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        let mut c = CoreClient {
            sock,
            client: Client::new(options),
            events: VecDeque::new(),
            closed: false,
        };
        c.client.connect(Instant::now()).expect("CONNECT");
        match c.wait_event(|e| matches!(e, ClientEvent::Connected(_) | ClientEvent::Refused(_))) {
            Some(ClientEvent::Connected(_)) => c,
            other => panic!("not connected: {other:?}"),
        }
    }

    fn with_id(port: u16, id: &str) -> CoreClient {
        let options = ClientOptions {
            client_id: MqttString::try_from(id).expect("an id"),
            ..ClientOptions::default()
        };
        CoreClient::connect(port, options)
    }

    /// Writes what is pending, reads once (waiting up to `wait`), feeds the client.
    fn pump(&mut self, wait: Duration) {
        while let Some(bytes) = self.client.poll_transmit() {
            if self.sock.write_all(&bytes).is_err() {
                self.closed = true;
            }
        }
        if !self.closed {
            let _ = self.sock.set_read_timeout(Some(wait));
            let mut buf = [0u8; 16384];
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    self.client.handle_close(Instant::now());
                }
                Ok(n) => {
                    let _ = self.client.handle_bytes(Instant::now(), &buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    self.client.handle_timeout(Instant::now())
                }
                Err(_) => {
                    self.closed = true;
                    self.client.handle_close(Instant::now());
                }
            }
        } else {
            std::thread::sleep(wait);
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push_back(e);
        }
    }

    /// The first event matching `pred` within [`WAIT`] (earlier non-matching ones are kept).
    fn wait_event_within(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> Option<ClientEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return self.events.remove(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump(Duration::from_millis(10));
        }
    }

    fn wait_event(&mut self, pred: impl Fn(&ClientEvent) -> bool) -> Option<ClientEvent> {
        self.wait_event_within(WAIT, pred)
    }

    fn subscribe(&mut self, filter: &str, options: SubscriptionOptions) -> Vec<ReasonCode> {
        let sub = Subscription {
            filter: TopicFilter::try_from(filter).expect("a filter"),
            options,
        };
        self.client
            .subscribe(Instant::now(), vec![sub], Default::default())
            .expect("SUBSCRIBE");
        match self.wait_event(|e| matches!(e, ClientEvent::Subscribed { .. })) {
            Some(ClientEvent::Subscribed { reason_codes, .. }) => reason_codes,
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    /// Publishes; QoS 1 and 2 wait for completion.
    fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS) {
        let mut p = Publish::new(
            TopicName::try_from(topic).expect("a topic"),
            payload.to_vec(),
        );
        p.qos = qos;
        let id = self.client.publish(Instant::now(), p).expect("PUBLISH");
        if id.is_some() {
            let done = self.wait_event(|e| matches!(e, ClientEvent::PublishComplete { .. }));
            assert!(done.is_some(), "publish not acknowledged");
        } else {
            self.pump(Duration::ZERO);
        }
    }

    fn message_within(&mut self, timeout: Duration) -> Option<Publish> {
        match self.wait_event_within(timeout, |e| matches!(e, ClientEvent::Message(_))) {
            Some(ClientEvent::Message(p)) => Some(p),
            _ => None,
        }
    }
}

// ---- raw bytes ----------------------------------------------------------------------------

/// An MQTT packet: the first byte, the remaining length, the body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
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
    packet(0x10, &body)
}

/// PUBLISH QoS 1 with packet id 1 and no properties.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&[0, 1, 0]);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// SUBSCRIBE with packet id 2, QoS 1.
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 2, 0];
    body.extend(string(filter));
    body.push(1);
    packet(0x82, &body)
}

/// Reads packets until the peer closes or `timeout` passes; returns them and whether the
/// connection closed.
fn read_packets(sock: &mut TcpStream, timeout: Duration) -> (Vec<Packet>, bool) {
    read_until(sock, timeout, |_| false)
}

/// Reads packets until `done` says enough, the peer closes, or `timeout` passes; returns them
/// and whether the connection closed.
fn read_until(
    sock: &mut TcpStream,
    timeout: Duration,
    done: impl Fn(&[Packet]) -> bool,
) -> (Vec<Packet>, bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
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
                if done(&packets) {
                    return (packets, false);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (packets, false)
            }
            // A stop signal (a shared machine's scheduler, a debugger) interrupts reads that
            // have a timeout even with SA_RESTART.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (packets, true),
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---- QoS, retained, wills, sessions -------------------------------------------------------

fn qos_0_1_2_round_trips_with_mosquitto_clients(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    for qos in 0..=2u8 {
        let q = qos.to_string();
        let topic = format!("qos/{qos}");
        let mut s = sub(broker.port(), &["-q", &q, "-t", &topic]);
        let payload = format!("hello at QoS {qos}");
        publish(broker.port(), &["-q", &q, "-t", &topic, "-m", &payload]);
        let m = s.message();
        assert_eq!(
            m,
            Msg {
                topic,
                qos,
                retain: false,
                sub_ids: String::new(),
                payload
            }
        );
    }
    // Many messages at QoS 2, in order.
    let mut s = sub(broker.port(), &["-q", "2", "-t", "many/#"]);
    let lines: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    publish_lines(broker.port(), &["-q", "2", "-t", "many/x"], &lines);
    for l in &lines {
        assert_eq!(&s.message().payload, l);
    }
}

fn retained_messages_are_kept_replayed_and_cleared(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    publish(
        broker.port(),
        &["-q", "1", "-r", "-t", "ret/a", "-m", "kept"],
    );
    // A later subscriber gets it, flagged retained [MQTT-3.3.1-9].
    let mut s = sub(broker.port(), &["-q", "1", "-t", "ret/#"]);
    let m = s.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str(), m.retain),
        ("ret/a", "kept", true)
    );
    // A live message on the same topic is not flagged retained for an existing subscriber.
    publish(
        broker.port(),
        &["-q", "1", "-r", "-t", "ret/a", "-m", "newer"],
    );
    let m = s.message();
    assert_eq!((m.payload.as_str(), m.retain), ("newer", false));
    // An empty retained message clears it [MQTT-3.3.1-6, MQTT-3.3.1-7].
    publish(broker.port(), &["-q", "1", "-r", "-t", "ret/a", "-n"]);
    assert_eq!(s.message().payload, "");
    let mut s2 = sub(broker.port(), &["-q", "1", "-t", "ret/#"]);
    publish(broker.port(), &["-q", "1", "-t", "ret/b", "-m", "marker"]);
    assert_eq!(
        s2.message().payload,
        "marker",
        "nothing retained was replayed first"
    );
}

fn will_is_published_when_the_client_dies(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut watcher = sub(broker.port(), &["-q", "1", "-t", "will/#"]);
    let mut dying = sub(
        broker.port(),
        &[
            "-t",
            "unrelated",
            "--will-topic",
            "will/dying",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    dying.kill();
    let m = watcher.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("will/dying", "gone")
    );

    // A clean DISCONNECT (mosquitto_pub exits normally) discards the will [MQTT-3.14.4-3].
    publish(
        broker.port(),
        &[
            "-t",
            "x",
            "-m",
            "y",
            "--will-topic",
            "will/clean",
            "--will-payload",
            "no",
        ],
    );
    publish(
        broker.port(),
        &["-q", "1", "-t", "will/marker", "-m", "marker"],
    );
    assert_eq!(watcher.message().topic, "will/marker");
}

fn will_delay_defers_the_will(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut watcher = sub(broker.port(), &["-q", "1", "-t", "will/#"]);
    let mut dying = sub(
        broker.port(),
        &[
            "-t",
            "unrelated",
            "-x",
            "60",
            "-D",
            "WILL",
            "will-delay-interval",
            "1",
            "--will-topic",
            "will/delayed",
            "--will-payload",
            "late",
        ],
    );
    dying.kill();
    let killed = Instant::now();
    let m = watcher.message();
    let waited = killed.elapsed();
    assert_eq!(m.payload, "late");
    assert!(
        waited >= Duration::from_millis(900),
        "the will came after {waited:?}, before its 1 s delay"
    );
}

fn persistent_session_resumes_with_queued_messages(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut first = sub(
        broker.port(),
        &["-q", "1", "-c", "-x", "60", "-i", "resumer", "-t", "sess/#"],
    );
    first.kill();
    // Offline: messages are queued for the session.
    let lines: Vec<String> = (0..3).map(|i| format!("queued-{i}")).collect();
    publish_lines(broker.port(), &["-q", "1", "-t", "sess/t"], &lines);
    let mut again = Peer::spawn(
        "mosquitto_sub",
        &args(
            broker.port(),
            &[
                "-d", "-F", FORMAT, "-q", "1", "-c", "-x", "60", "-i", "resumer", "-t", "sess/#",
            ],
        ),
        None,
    );
    // Published while no connection was subscribed: only the resumed session delivers them.
    for l in &lines {
        assert_eq!(&again.message().payload, l);
    }
}

// ---- MQTT 5 features ----------------------------------------------------------------------

/// A session with a Session Expiry Interval of 1 s, left offline well past it, is gone: a
/// reconnect with Clean Start 0 starts afresh and the message queued for the old session is
/// not delivered [MQTT-3.1.2-6].
fn expired_session_is_discarded(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut first = sub(
        broker.port(),
        &["-q", "1", "-c", "-x", "1", "-i", "expirer", "-t", "exp/#"],
    );
    first.kill();
    // Queued for the offline session, which expires 1 s after the close.
    publish(
        broker.port(),
        &["-q", "1", "-t", "exp/t", "-m", "for the old session"],
    );
    std::thread::sleep(Duration::from_secs(3));
    // Only a resumed session would deliver exp/t: this one subscribes to another topic.
    let mut again = sub(
        broker.port(),
        &["-q", "1", "-c", "-x", "1", "-i", "expirer", "-t", "fresh/#"],
    );
    publish(
        broker.port(),
        &["-q", "1", "-t", "fresh/t", "-m", "new session"],
    );
    assert_eq!(
        again.message().payload,
        "new session",
        "{}",
        again.describe()
    );
    assert!(
        !again.seen.iter().any(|l| l.contains("for the old session")),
        "the expired session's message was delivered: {}",
        again.describe()
    );
}

fn shared_subscription_splits_messages_between_members(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut a = sub(broker.port(), &["-q", "1", "-t", "$share/g/shared/t"]);
    let mut b = sub(broker.port(), &["-q", "1", "-t", "$share/g/shared/t"]);
    let lines: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    publish_lines(broker.port(), &["-q", "1", "-t", "shared/t"], &lines);
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got_a.len() + got_b.len() < lines.len() && Instant::now() < deadline {
        if let Some(m) = a.message_within(Duration::from_millis(20)) {
            got_a.push(m.payload);
        }
        if let Some(m) = b.message_within(Duration::from_millis(20)) {
            got_b.push(m.payload);
        }
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members got messages: {got_a:?} / {got_b:?}"
    );
    let all: BTreeSet<&String> = got_a.iter().chain(&got_b).collect();
    assert_eq!(
        all.len(),
        lines.len(),
        "each message once: {got_a:?} / {got_b:?}"
    );
    assert_eq!(got_a.len() + got_b.len(), lines.len());
}

fn subscription_identifiers_are_sent_with_matching_messages(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut s = sub(
        broker.port(),
        &[
            "-q",
            "1",
            "-t",
            "sid/#",
            "-D",
            "subscribe",
            "subscription-identifier",
            "42",
        ],
    );
    publish(broker.port(), &["-q", "1", "-t", "sid/x", "-m", "with id"]);
    let m = s.message();
    assert_eq!((m.payload.as_str(), m.sub_ids.as_str()), ("with id", "42"));
}

fn topic_aliases_from_mosquitto_pub(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut s = sub(broker.port(), &["-q", "1", "-t", "alias/#"]);
    let lines: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let out = publish_lines(
        broker.port(),
        &[
            "-d",
            "-q",
            "1",
            "-t",
            "alias/t",
            "-D",
            "publish",
            "topic-alias",
            "1",
        ],
        &lines,
    );
    // The second and third PUBLISH carried only the alias (no topic name).
    let sent: Vec<&String> = out
        .iter()
        .filter(|l| l.contains("sending PUBLISH"))
        .collect();
    assert_eq!(sent.len(), 3, "{out:?}");
    assert!(
        sent[0].contains("'alias/t'") && sent[2].contains("'(null)'"),
        "{out:?}"
    );
    for l in &lines {
        let m = s.message();
        assert_eq!((m.topic.as_str(), &m.payload), ("alias/t", l));
    }
}

fn no_local_suppresses_own_messages(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let mut c = CoreClient::with_id(broker.port(), "no-local");
    let options = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    };
    assert_eq!(c.subscribe("nl/#", options), vec![ReasonCode::GrantedQoS1]);
    // Our own message is routed first (PUBACK received), and must not come back
    // [MQTT-3.8.3-3]; another client's message must.
    c.publish("nl/t", b"own", QoS::AtLeastOnce);
    publish(broker.port(), &["-q", "1", "-t", "nl/t", "-m", "other"]);
    let m = c.message_within(WAIT).expect("a message");
    assert_eq!(&m.payload[..], b"other");
    // Without no-local, our own message does come back.
    assert_eq!(
        c.subscribe("nl2/#", SubscriptionOptions::with_qos(QoS::AtLeastOnce)),
        vec![ReasonCode::GrantedQoS1]
    );
    c.publish("nl2/t", b"echo", QoS::AtLeastOnce);
    let m = c.message_within(WAIT).expect("a message");
    assert_eq!(&m.payload[..], b"echo");
}

#[cfg(unix)]
fn unix_socket_listener_serves_mosquitto_clients(driver: Driver) {
    if !peers_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mqttproto-broker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("broker.sock");
    let config = Config::default().listen(ListenAddr::Unix(path.clone()));
    let mut broker = TestBroker::start_tcp(driver, config);
    let p = path.to_string_lossy().to_string();
    let mut s = Peer::spawn(
        "mosquitto_sub",
        &[
            "-V",
            "5",
            "--unix",
            p.as_str(),
            "-d",
            "-F",
            FORMAT,
            "-q",
            "1",
            "-t",
            "unix/#",
        ]
        .map(String::from),
        None,
    );
    s.subscribed();
    Peer::spawn(
        "mosquitto_pub",
        &[
            "-V",
            "5",
            "--unix",
            p.as_str(),
            "-q",
            "1",
            "-t",
            "unix/t",
            "-m",
            "over unix",
        ]
        .map(String::from),
        None,
    )
    .finish();
    assert_eq!(s.message().payload, "over unix");
    broker.stop();
    assert!(!path.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- limits, timeouts, shutdown ------------------------------------------------------------

fn silent_socket_is_closed_by_the_connect_timeout(driver: Driver) {
    let broker = TestBroker::start_tcp(
        driver,
        Config::default().with_connect_timeout(Duration::from_millis(200)),
    );
    let mut sock = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    let start = Instant::now();
    let (packets, closed) = read_packets(&mut sock, WAIT);
    let waited = start.elapsed();
    assert!(closed, "closed within {WAIT:?}");
    assert!(
        packets.is_empty(),
        "nothing sent before CONNECT: {packets:?}"
    );
    assert!(
        waited >= Duration::from_millis(150),
        "closed after {waited:?}, before the 200 ms timeout"
    );
}

fn connections_beyond_the_maximum_are_refused(driver: Driver) {
    let broker = TestBroker::start_tcp(driver, Config::default().with_max_connections(2));
    let mut one = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    let _two = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    let mut three = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    let (_, closed) = read_packets(&mut three, WAIT);
    assert!(closed, "the third connection is closed at once");
    // The first two are served.
    one.write_all(&connect_packet("one")).expect("write");
    let (packets, _) = read_until(&mut one, WAIT, |p| !p.is_empty());
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(c)) if c.reason_code == ReasonCode::Success),
        "{packets:?}"
    );
    // Once one closes, a new connection is accepted again.
    drop(one);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
        s.write_all(&connect_packet("again")).expect("write");
        let (packets, _) = read_until(&mut s, WAIT, |p| !p.is_empty());
        if matches!(packets.first(), Some(Packet::ConnAck(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "a slot never freed up");
    }
}

fn oversized_packet_is_refused_with_0x95(driver: Driver) {
    let limit = NonZeroU32::new(1024).expect("non-zero");
    let broker = TestBroker::start_tcp(driver, Config::default().with_max_packet_size(limit));
    let mut sock = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    sock.write_all(&connect_packet("big")).expect("write");
    let t0 = Instant::now();
    let (packets, closed) = read_until(&mut sock, WAIT, |p| !p.is_empty());
    match packets.first() {
        Some(Packet::ConnAck(c)) => {
            assert_eq!(c.properties.maximum_packet_size, Some(limit));
        }
        other => panic!(
            "no CONNACK: {other:?} closed={closed} after {:?}",
            t0.elapsed()
        ),
    }
    let _ = sock.write_all(&publish_packet("big/t", &[b'x'; 2000]));
    expect_disconnect_0x95(&mut sock);
}

/// The broker closes the connection with DISCONNECT 0x95 Packet too large.
fn expect_disconnect_0x95(sock: &mut TcpStream) {
    let (packets, closed) = read_packets(sock, WAIT);
    assert!(closed, "closed");
    assert!(
        matches!(
            packets.first(),
            Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::PacketTooLarge
        ),
        "{packets:?}"
    );
}

/// A packet declared larger than the Maximum Packet Size is refused from its fixed header
/// [MQTT-3.1.2-24]: the broker's reader, which keeps large packets together, must not wait
/// for the rest of it (here it never comes).
fn oversized_large_packet_is_refused_from_its_header_mqtt_3_1_2_24(driver: Driver) {
    let limit = NonZeroU32::new(100 * 1024).expect("non-zero");
    let broker = TestBroker::start_tcp(driver, Config::default().with_max_packet_size(limit));
    let mut sock = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    sock.write_all(&connect_packet("big")).expect("write");
    let (packets, _) = read_until(&mut sock, WAIT, |p| !p.is_empty());
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(_))),
        "{packets:?}"
    );
    // The first 4 KiB of a 1 MiB PUBLISH, and nothing more.
    let whole = publish_packet("big/t", &vec![b'x'; 1 << 20]);
    sock.write_all(&whole[..4096]).expect("write");
    expect_disconnect_0x95(&mut sock);
}

fn graceful_shutdown_disconnects_clients_with_0x8b(driver: Driver) {
    let mut broker = TestBroker::start_tcp(driver, Config::default());
    let mut c = CoreClient::with_id(broker.port(), "till-the-end");
    let mut silent = TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
    broker.stop();
    match c.wait_event(|e| matches!(e, ClientEvent::Disconnected { .. })) {
        Some(ClientEvent::Disconnected {
            disconnect: Some(d),
            ..
        }) => assert_eq!(d.reason_code, ReasonCode::ServerShuttingDown),
        other => panic!("no DISCONNECT 0x8B: {other:?}"),
    }
    let (_, closed) = read_packets(&mut silent, WAIT);
    assert!(
        closed,
        "a connection still waiting for CONNECT is closed too"
    );
    // No longer accepting: connecting fails, or (if a signal confused connect) nobody answers.
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", broker.port())) {
        let _ = s.write_all(&connect_packet("late"));
        let (packets, _) = read_until(&mut s, Duration::from_millis(500), |p| !p.is_empty());
        assert!(packets.is_empty(), "still accepting: {packets:?}");
    }
}

fn authenticator_verdicts_reach_connack(driver: Driver) {
    // The check for "slow" waits until the test releases it: meanwhile other clients must be
    // served, so the broker cannot be waiting for it.
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let (arrived_tx, arrived) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let config = Config::default().with_authenticator(move |req: ConnectRequest| {
        if req.client_id() == "slow" {
            let _ = arrived_tx.lock().expect("a sender").send(());
            let released = gate.lock().expect("the gate").recv_timeout(WAIT);
            assert!(released.is_ok(), "the test releases the slow check");
        }
        if req.client_id() == "panic" {
            panic!("an authenticator bug (expected by the test)");
        }
        assert!(matches!(req.peer, PeerAddr::Tcp(_)));
        assert!(req.listener.is_some());
        match (req.username(), req.password()) {
            (Some("alice"), Some(b"secret")) => ReasonCode::Success,
            (Some("alice"), _) => ReasonCode::BadUserNameOrPassword,
            // Not valid in CONNACK: replaced with 0x87.
            _ => ReasonCode::ServerShuttingDown,
        }
    });
    let broker = TestBroker::start_tcp(driver, config);
    let port = broker.port();
    let try_connect = |id: &str, user: Option<&str>, pass: Option<&[u8]>| -> ReasonCode {
        let options = ClientOptions {
            client_id: MqttString::try_from(id).expect("an id"),
            username: user.map(|u| MqttString::try_from(u).expect("a name")),
            password: pass.map(bytes::Bytes::copy_from_slice),
            ..ClientOptions::default()
        };
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut c = CoreClient {
            sock,
            client: Client::new(options),
            events: VecDeque::new(),
            closed: false,
        };
        c.client.connect(Instant::now()).expect("CONNECT");
        match c.wait_event(|e| matches!(e, ClientEvent::Connected(_) | ClientEvent::Refused(_))) {
            Some(ClientEvent::Connected(a)) | Some(ClientEvent::Refused(a)) => a.reason_code,
            other => panic!("no CONNACK for {id}: {other:?}"),
        }
    };
    std::thread::scope(|s| {
        let slow = s.spawn(|| try_connect("slow", Some("alice"), Some(b"secret")));
        arrived
            .recv_timeout(WAIT)
            .expect("the slow CONNECT reached the authenticator");
        assert_eq!(
            try_connect("fast", Some("alice"), Some(b"secret")),
            ReasonCode::Success
        );
        assert_eq!(
            try_connect("bad", Some("alice"), Some(b"wrong")),
            ReasonCode::BadUserNameOrPassword
        );
        assert_eq!(try_connect("anon", None, None), ReasonCode::NotAuthorized);
        // A panicking authenticator refuses the client at once.
        assert_eq!(
            try_connect("panic", None, None),
            ReasonCode::ImplementationSpecificError
        );
        assert!(!slow.is_finished(), "the slow check is still pending");
        release.send(()).expect("the slow check waits");
        assert_eq!(slow.join().expect("the slow client"), ReasonCode::Success);
    });
}

/// The blocking broker runs each check of its `Authenticator` on a thread of its own, which may
/// outlast its connection (a slow check, a client that leaves). Those threads number at most
/// the connections allowed, so that they stay within the threads (and memory mappings) the
/// connection limit allows for: beyond it a client is refused with 0x89 (Server busy), and the
/// broker serves on.
#[test]
fn blocking_broker_bounds_authentication_threads() {
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let (arrived_tx, arrived) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let config = Config::default()
        .with_max_connections(1)
        .with_authenticator(move |req: ConnectRequest| {
            if req.client_id() == "slow" {
                let _ = arrived_tx.lock().expect("a sender").send(());
                let _ = gate.lock().expect("the gate").recv_timeout(WAIT);
            }
            ReasonCode::Success
        });
    let broker = TestBroker::start_tcp(Driver::Blocking, config);
    let port = broker.port();
    // The CONNACK's reason code, or `None` if the connection is closed without one (refused
    // at accept: the one connection allowed is still open).
    let connack = |id: &str| -> Option<ReasonCode> {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = sock.write_all(&connect_packet(id));
        let (packets, _) = read_until(&mut sock, WAIT, |p| !p.is_empty());
        match packets.first() {
            Some(Packet::ConnAck(c)) => Some(c.reason_code),
            _ => None,
        }
    };
    let until_answered = |id: &str| -> ReasonCode {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(code) = connack(id) {
                return code;
            }
            assert!(Instant::now() < deadline, "{id}: the slot never freed up");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A client whose check hangs, and who leaves: its connection ends, its check goes on.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(&connect_packet("slow")).expect("CONNECT");
    arrived
        .recv_timeout(WAIT)
        .expect("the slow CONNECT reached the authenticator");
    drop(slow);
    // The connection slot frees up, the authentication slot does not: the next client is
    // refused with 0x89, over and over, with no thread started for it.
    assert_eq!(until_answered("next"), ReasonCode::ServerBusy);
    assert_eq!(until_answered("next"), ReasonCode::ServerBusy);
    // Once the slow check ends, clients are served again.
    release.send(()).expect("the slow check waits");
    let deadline = Instant::now() + WAIT;
    while until_answered("again") != ReasonCode::Success {
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The connect timeout on tokio's paused clock, over an in-memory stream: no real waiting.
#[tokio::test(start_paused = true)]
async fn connect_timeout_on_the_paused_clock() {
    use mqttproto::tokio::broker::{Broker, BrokerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let config = BrokerConfig::default().with_connect_timeout(Duration::from_secs(5));
    let handle = Broker::bind(config).await.expect("bind").spawn();

    // Silent: closed after exactly the timeout.
    let (mut silent, server) = tokio::io::duplex(4096);
    handle
        .accept_stream(server, PeerAddr::Unknown)
        .await
        .expect("accepted");
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).await.expect("read");
    assert_eq!(n, 0, "closed without a word");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );

    // Connected in time: still open long after.
    let (mut talker, server) = tokio::io::duplex(4096);
    handle
        .accept_stream(server, PeerAddr::Unknown)
        .await
        .expect("accepted");
    talker
        .write_all(&connect_packet("talker"))
        .await
        .expect("write");
    let n = talker.read(&mut buf).await.expect("read");
    assert!(n > 0 && buf[0] == 0x20, "CONNACK");
    let more = tokio::time::timeout(Duration::from_secs(60), talker.read(&mut buf)).await;
    assert!(more.is_err(), "the connected client was not disconnected");

    handle.shutdown().await;
}

// ---- robustness ---------------------------------------------------------------------------

fn bad_input_does_not_disturb_well_behaved_clients(driver: Driver) {
    if !peers_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    let port = broker.port();
    let mut good = sub(
        port,
        &["-q", "1", "-i", "good-subscriber-7f3a", "-t", "good/#"],
    );

    // Valid packets to mutate.
    let mut valid = connect_packet("fuzz");
    valid.extend(subscribe_packet("fuzz/#"));
    valid.extend(publish_packet("fuzz/t", b"payload"));

    let fuzzer = std::thread::spawn(move || {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let mut closed = 0;
        for round in 0..60 {
            let input: Vec<u8> = match round % 3 {
                // Random bytes.
                0 => (0..1 + rng.below(300)).map(|_| rng.next() as u8).collect(),
                // A valid CONNECT, then random bytes.
                1 => {
                    let mut v = connect_packet(&format!("fuzz-{round}"));
                    v.extend((0..rng.below(200)).map(|_| rng.next() as u8));
                    v
                }
                // Valid packets with a few bytes changed, dropped or inserted.
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(v.len());
                        match rng.below(3) {
                            0 => v[i] = rng.next() as u8,
                            1 => {
                                v.remove(i);
                            }
                            _ => v.insert(i, rng.next() as u8),
                        }
                    }
                    v
                }
            };
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let _ = s.write_all(&input);
            if round % 2 == 0 {
                let _ = s.shutdown(Shutdown::Write);
            }
            let (_, was_closed) = read_packets(&mut s, Duration::from_millis(30));
            closed += usize::from(was_closed);
        }
        closed
    });

    let lines: Vec<String> = (0..100).map(|i| format!("good-{i}")).collect();
    publish_lines(port, &["-q", "1", "-t", "good/t"], &lines);
    let closed = fuzzer.join().expect("the fuzzer");
    assert!(closed > 0, "the broker closed some bad connections");

    // Every message arrived, in order (mutated packets may have added others).
    let mut expected = lines.iter().peekable();
    let deadline = Instant::now() + WAIT;
    while let Some(want) = expected.peek() {
        let left = deadline.saturating_duration_since(Instant::now());
        match good.message_within(left) {
            Some(m) if &&m.payload == want => {
                expected.next();
            }
            Some(_) => {}
            None => panic!("lost {want}: {}", good.describe()),
        }
    }
    // And the broker still serves new clients.
    let mut late = sub(port, &["-q", "2", "-t", "late/#"]);
    publish(port, &["-q", "2", "-t", "late/t", "-m", "still up"]);
    assert_eq!(late.message().payload, "still up");
}

/// A subscriber that stops reading for a moment while 12.5 MiB is published to it, far more
/// than its 256 KiB outbound bound and the kernel's socket buffers, is waited for (the broker
/// stops taking the publisher's input, for at most 100 ms at a time) instead of being cut off
/// as a slow consumer: every message arrives. Without the pause the subscriber is disconnected
/// and its session, and the messages, are lost.
fn briefly_stalled_subscriber_is_waited_for_not_disconnected(driver: Driver) {
    let mut config = Config::default();
    config.max_outbound_bytes = 256 * 1024;
    let broker = TestBroker::start_tcp(driver, config);
    let port = broker.port();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(&connect_packet("briefly-stalled"))
        .expect("write");
    slow.write_all(&subscribe_packet("pause/#")).expect("write");
    let (packets, _) = read_until(&mut slow, WAIT, |p| p.len() >= 2);
    assert!(
        matches!(packets.last(), Some(Packet::SubAck(_))),
        "{packets:?}"
    );
    let count = 200;
    let payload = vec![b'p'; 64 * 1024];
    let publishing = std::thread::spawn(move || {
        let mut publisher = CoreClient::with_id(port, "pause-publisher");
        for _ in 0..count {
            publisher.publish("pause/t", &payload, QoS::AtLeastOnce);
        }
        publisher
    });
    // Not reading for 50 ms: the publisher floods meanwhile.
    std::thread::sleep(Duration::from_millis(50));
    let (packets, closed) = read_until(&mut slow, WAIT, |p| {
        p.iter().filter(|p| matches!(p, Packet::Publish(_))).count() >= count
    });
    let received = packets
        .iter()
        .filter(|p| matches!(p, Packet::Publish(m) if m.payload.len() == 64 * 1024))
        .count();
    assert_eq!(
        received, count,
        "messages received (connection closed: {closed})"
    );
    let _ = publishing.join().expect("the publisher");
}

fn stalled_subscriber_is_disconnected_without_holding_up_others(driver: Driver) {
    if !peers_available() {
        return;
    }
    let mut config = Config::default();
    config.outbound_queue_capacity = 64;
    config.max_outbound_bytes = 1 << 20;
    let broker = TestBroker::start_tcp(driver, config);
    let port = broker.port();

    // A subscriber that stops reading after SUBACK.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stalled
        .write_all(&connect_packet("stalled"))
        .expect("write");
    stalled
        .write_all(&subscribe_packet("flood/#"))
        .expect("write");
    let (packets, _) = read_until(&mut stalled, WAIT, |p| p.len() >= 2);
    assert!(
        matches!(packets.last(), Some(Packet::SubAck(_))),
        "{packets:?}"
    );

    // A well-behaved subscriber with a small Receive Maximum (the broker holds the rest).
    let mut fast = sub(
        port,
        &[
            "-q",
            "1",
            "-t",
            "flood/#",
            "-F",
            "MSG|%t|%q|%r|%S|%l",
            "-D",
            "connect",
            "receive-maximum",
            "4",
        ],
    );

    // 24 MiB in 64 KiB messages: more than the kernel's socket buffers and the 1 MiB bound.
    let count = 384;
    let payload = vec![b'p'; 64 * 1024];
    let mut publisher = CoreClient::with_id(port, "flooder");
    for _ in 0..count {
        publisher.publish("flood/t", &payload, QoS::AtLeastOnce);
    }
    for i in 0..count {
        match fast.message_within(WAIT) {
            Some(m) => assert_eq!(m.payload, payload.len().to_string()),
            None => panic!("the fast subscriber lost message {i}: {}", fast.describe()),
        }
    }
    // The stalled one was cut off: reading now ends before the flood does.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + WAIT;
    let _ = stalled.set_read_timeout(Some(Duration::from_millis(100)));
    let closed = loop {
        match stalled.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() > deadline {
                    break false;
                }
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "the stalled subscriber was disconnected");
    assert!(
        total < count * payload.len(),
        "it did not get the whole flood ({total} bytes)"
    );
}

/// Packets over 64 KiB are kept together by the broker's reader and handed to the core whole,
/// smaller ones as they arrive: large and small PUBLISHes interleaved arrive intact and in
/// order [MQTT-4.6.0-5] (one subscription, one QoS).
fn large_and_small_messages_arrive_intact_and_in_order(driver: Driver) {
    let broker = TestBroker::start_tcp(driver, Config::default());
    let port = broker.port();
    let mut subscriber = CoreClient::with_id(port, "mixed-sizes-sub");
    assert_eq!(
        subscriber.subscribe("mixed/#", SubscriptionOptions::with_qos(QoS::AtLeastOnce)),
        vec![ReasonCode::GrantedQoS1]
    );
    let sizes = [
        300 * 1024,
        10,
        40_000,
        65 * 1024,
        1,
        70_000,
        5_000,
        200 * 1024,
    ];
    let body =
        |i: usize, size: usize| -> Vec<u8> { (0..size).map(|k| (k * 7 + i) as u8).collect() };
    let publishing = std::thread::spawn(move || {
        let mut publisher = CoreClient::with_id(port, "mixed-sizes-pub");
        for (i, &size) in sizes.iter().enumerate() {
            publisher.publish("mixed/t", &body(i, size), QoS::AtLeastOnce);
        }
        publisher
    });
    for (i, &size) in sizes.iter().enumerate() {
        let m = subscriber
            .message_within(WAIT)
            .unwrap_or_else(|| panic!("message {i} ({size} bytes) did not arrive"));
        assert!(
            m.payload == body(i, size),
            "message {i} ({size} bytes) altered or out of order"
        );
    }
    let _ = publishing.join().expect("the publisher");
}

per_driver!(sync:
    qos_0_1_2_round_trips_with_mosquitto_clients,
    retained_messages_are_kept_replayed_and_cleared,
    will_is_published_when_the_client_dies,
    will_delay_defers_the_will,
    persistent_session_resumes_with_queued_messages,
    expired_session_is_discarded,
    shared_subscription_splits_messages_between_members,
    subscription_identifiers_are_sent_with_matching_messages,
    topic_aliases_from_mosquitto_pub,
    no_local_suppresses_own_messages,
    #[cfg(unix)]
    unix_socket_listener_serves_mosquitto_clients,
    silent_socket_is_closed_by_the_connect_timeout,
    connections_beyond_the_maximum_are_refused,
    oversized_packet_is_refused_with_0x95,
    oversized_large_packet_is_refused_from_its_header_mqtt_3_1_2_24,
    graceful_shutdown_disconnects_clients_with_0x8b,
    authenticator_verdicts_reach_connack,
    bad_input_does_not_disturb_well_behaved_clients,
    stalled_subscriber_is_disconnected_without_holding_up_others,
    briefly_stalled_subscriber_is_waited_for_not_disconnected,
    large_and_small_messages_arrive_intact_and_in_order,
);
