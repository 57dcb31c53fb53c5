//! A live exchange with a real MQTT 5 peer, Eclipse Mosquitto, decoded with this codec.
//!
//! The test starts `mosquitto` on a free loopback port with a generated configuration in a
//! temporary directory, puts a recording TCP proxy (std only: `std::net` and threads) in front of
//! it, and runs `mosquitto_sub -V 5` and two `mosquitto_pub -V 5` through the proxy with MQTT 5
//! properties. Every recorded byte of both directions of the three connections then goes through
//! the streaming [`decode`]; the test asserts that the streams decode completely, that the packet
//! types come in the expected order, the decoded fields, and that re-encoding each packet gives the
//! recorded bytes (see [`assert_reencodes`] for the one legitimate difference: property order).
//!
//! Every wait is bounded and all of them share one overall deadline, so the test ends within about
//! [`BUDGET`]; child processes are killed by a drop guard even when an assertion fails.
//!
//! The Mosquitto programs are required: when they are missing the test fails and says to run
//! `./scripts/test.sh`, which installs them. Set `MQTTPROTO_SKIP_PEER_TESTS=1` to skip it instead.

// mqttproto-core/clippy.toml forbids clocks, sleeps, threads and sockets because the core library
// is sans-I/O. This integration test is not part of the library: driving a real broker over real
// sockets with bounded waits is its whole point.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqttproto_core::codec::{decode, decode_packet, Packet};
use mqttproto_core::{
    MqttString, PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS, ReasonCode,
    SubscriptionId, SubscriptionOptions, UserProperties,
};

const V5: ProtocolVersion = ProtocolVersion::V5;
const SKIP_VAR: &str = "MQTTPROTO_SKIP_PEER_TESTS";
/// The overall time limit shared by every wait of the test.
const BUDGET: Duration = Duration::from_secs(12);

// ---------------------------------------------------------------------------------------------
// Finding the peer programs.
// ---------------------------------------------------------------------------------------------

fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

struct Programs {
    broker: PathBuf,
    sub: PathBuf,
    publish: PathBuf,
}

/// The Mosquitto programs, or `None` when they are missing and the skip variable is set.
fn programs() -> Option<Programs> {
    let found = ["mosquitto", "mosquitto_sub", "mosquitto_pub"].map(find_program);
    if let [Some(broker), Some(sub), Some(publish)] = found {
        return Some(Programs {
            broker,
            sub,
            publish,
        });
    }
    let missing: Vec<&str> = ["mosquitto", "mosquitto_sub", "mosquitto_pub"]
        .iter()
        .zip(&found)
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect();
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED mosquitto live test: {} not found and {SKIP_VAR}=1",
            missing.join(", ")
        );
        return None;
    }
    panic!(
        "the mosquitto live test needs {} (looked in /usr/sbin, /usr/bin, /usr/local and PATH). \
         Run ./scripts/test.sh, which installs the Debian packages mosquitto and \
         mosquitto-clients, or set {SKIP_VAR}=1 to skip this test.",
        missing.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Deadline, temporary directory and the drop guard.
// ---------------------------------------------------------------------------------------------

struct Deadline(Instant);

impl Deadline {
    /// The time left for a wait of at most `limit`.
    fn cap(&self, limit: Duration) -> Duration {
        limit.min(self.0.saturating_duration_since(Instant::now()))
    }
}

/// Owns everything the test starts: child processes are killed, the proxy is stopped and the
/// temporary directory removed when it drops (the directory is kept if the test failed).
struct Harness {
    dir: PathBuf,
    children: Vec<(String, Child)>,
    proxy: Option<Proxy>,
}

impl Harness {
    fn new() -> Harness {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "mqttproto-mosquitto-live-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("create the temporary directory");
        Harness {
            dir,
            children: Vec::new(),
            proxy: None,
        }
    }

    /// Starts `program` with its stdout and stderr in `<dir>/<name>.log`; returns its index.
    fn spawn<S: AsRef<OsStr>>(&mut self, name: &str, program: &Path, args: &[S]) -> usize {
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("create a log file");
        let err = log.try_clone().expect("clone a log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        self.children.push((name.to_string(), child));
        self.children.len() - 1
    }

    /// The logs of every child, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            out.push_str(&format!("\n--- {name}.log ---\n{text}"));
        }
        out
    }

    /// Polls `done` every 10 ms until it holds, failing the test after `limit`.
    fn wait_until(
        &self,
        deadline: &Deadline,
        limit: Duration,
        what: &str,
        mut done: impl FnMut() -> bool,
    ) {
        let end = Instant::now() + deadline.cap(limit);
        while !done() {
            if Instant::now() >= end {
                panic!("timed out waiting for {what}{}", self.logs());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for child `index` to exit, failing the test after `limit`.
    fn wait_exit(&mut self, deadline: &Deadline, index: usize, limit: Duration) -> ExitStatus {
        let end = Instant::now() + deadline.cap(limit);
        loop {
            let (name, child) = &mut self.children[index];
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let name = name.clone();
                    panic!("timed out waiting for {name} to exit{}", self.logs())
                }
                Err(e) => panic!("waiting for {name}: {e}"),
            }
        }
    }

    fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        self.children[index].1.try_wait().ok().flatten()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.proxy.take());
        if thread::panicking() {
            eprintln!("mosquitto live test: logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A command line split at whitespace (no argument of this test contains any).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// The recording proxy.
// ---------------------------------------------------------------------------------------------

/// What went through one proxied connection.
#[derive(Default, Clone)]
struct Conn {
    /// Client to broker.
    c2s: Vec<u8>,
    /// Broker to client.
    s2c: Vec<u8>,
    c2s_closed: bool,
    s2c_closed: bool,
}

type Recording = Arc<Mutex<Vec<Conn>>>;

struct Proxy {
    port: u16,
    recording: Recording,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let recording: Recording = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let recording = recording.clone();
            let stop = stop.clone();
            thread::spawn(move || accept_loop(listener, upstream, recording, stop))
        };
        Proxy {
            port,
            recording,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    fn snapshot(&self) -> Vec<Conn> {
        self.recording.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    recording: Recording,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let Ok(broker) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
            continue; // The client sees its connection close; the test reports the rest.
        };
        let index = {
            let mut conns = recording.lock().unwrap();
            conns.push(Conn::default());
            conns.len() - 1
        };
        for (from, to, c2s) in [
            (client.try_clone(), broker.try_clone(), true),
            (broker.try_clone(), client.try_clone(), false),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let recording = recording.clone();
            let stop = stop.clone();
            thread::spawn(move || pump(from, to, c2s, index, recording, stop));
        }
    }
}

/// Copies `from` to `to`, recording every chunk before forwarding it.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    c2s: bool,
    index: usize,
    recording: Recording,
    stop: Arc<AtomicBool>,
) {
    let _ = from.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                {
                    let mut conns = recording.lock().unwrap();
                    let conn = &mut conns[index];
                    let dir = if c2s { &mut conn.c2s } else { &mut conn.s2c };
                    dir.extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let mut conns = recording.lock().unwrap();
    if c2s {
        conns[index].c2s_closed = true;
    } else {
        conns[index].s2c_closed = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding the recording.
// ---------------------------------------------------------------------------------------------

/// The packet types of the complete packets at the start of `stream` (a partial one is ignored).
fn types_so_far(stream: &[u8]) -> Vec<PacketType> {
    let mut input = BytesMut::from(stream);
    let mut types = Vec::new();
    while let Ok(Some(p)) = decode(&mut input, V5, u32::MAX) {
        types.push(p.packet_type());
    }
    types
}

/// Decodes a whole recorded stream with the streaming decoder, feeding it in 7-byte pieces, and
/// returns each packet with the bytes it was decoded from. Every byte must decode.
fn decode_stream(stream: &[u8], label: &str) -> Vec<(Packet, Vec<u8>)> {
    let mut input = BytesMut::new();
    let mut packets = Vec::new();
    let mut offset = 0; // Start of `input` within `stream`.
    for chunk in stream.chunks(7) {
        input.extend_from_slice(chunk);
        loop {
            let before = input.len();
            match decode(&mut input, V5, u32::MAX) {
                Ok(Some(packet)) => {
                    let used = before - input.len();
                    packets.push((packet, stream[offset..offset + used].to_vec()));
                    offset += used;
                }
                Ok(None) => break,
                Err(e) => panic!(
                    "{label}: decoding failed at byte {offset}: {e}; bytes from there: {}",
                    to_hex(&stream[offset..])
                ),
            }
        }
    }
    assert!(
        input.is_empty(),
        "{label}: {} trailing bytes do not form a packet: {}",
        input.len(),
        to_hex(&input)
    );
    packets
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Re-encoding must give the recorded bytes. Mosquitto writes properties in its own order (for
/// example CONNACK: Topic Alias Maximum before Receive Maximum) and this codec in a fixed one; the
/// specification does not fix the order (only User Properties keep theirs, and they do). So when
/// the bytes differ, they must differ only that way: same length and fixed header, the same bytes
/// in another order, and the re-encoding decodes to the same packet.
fn assert_reencodes(packet: &Packet, recorded: &[u8], label: &str) {
    let encoded = packet
        .to_bytes(V5)
        .unwrap_or_else(|e| panic!("{label}: cannot re-encode {packet:?}: {e}"));
    if encoded.as_ref() == recorded {
        return;
    }
    let context = format!(
        "{label}: re-encoding of {:?} differs\n recorded {}\n encoded  {}",
        packet.packet_type(),
        to_hex(recorded),
        to_hex(&encoded)
    );
    assert_eq!(encoded.len(), recorded.len(), "{context}");
    let header = recorded.len() - packet.remaining_len(V5);
    assert_eq!(&encoded[..header], &recorded[..header], "{context}");
    let mut a = encoded.to_vec();
    let mut b = recorded.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "not a reordering: {context}");
    let again = decode_packet(encoded, V5).unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(&again, packet, "{context}");
}

fn s(v: &Option<MqttString>) -> Option<&str> {
    v.as_ref().map(MqttString::as_str)
}

fn pairs(props: &UserProperties) -> Vec<(&str, &str)> {
    props.iter().collect()
}

fn pid(v: u16) -> Option<PacketId> {
    PacketId::new(v)
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

#[test]
fn mosquitto_exchange_decodes_and_reencodes() {
    let Some(programs) = programs() else {
        return;
    };
    let deadline = Deadline(Instant::now() + BUDGET);
    let mut h = Harness::new();

    // The broker, on a free loopback port.
    let broker_port = free_port();
    let conf = h.dir.join("mosquitto.conf");
    fs::write(
        &conf,
        format!("listener {broker_port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .expect("write mosquitto.conf");
    let broker = h.spawn(
        "mosquitto",
        &programs.broker,
        &[OsStr::new("-c"), conf.as_os_str(), OsStr::new("-v")],
    );
    let broker_addr = SocketAddr::from(([127, 0, 0, 1], broker_port));
    h.wait_until(
        &deadline,
        Duration::from_secs(5),
        "mosquitto to listen",
        || TcpStream::connect_timeout(&broker_addr, Duration::from_millis(200)).is_ok(),
    );
    if let Some(status) = h.exited(broker) {
        panic!("mosquitto exited: {status}{}", h.logs());
    }

    h.proxy = Some(Proxy::start(broker_addr));
    let port = h.proxy.as_ref().unwrap().port.to_string();
    let snapshot = |h: &Harness| h.proxy.as_ref().unwrap().snapshot();

    // The subscriber: two filters, a Subscription Identifier, User Properties, an UNSUBSCRIBE of a
    // filter it never subscribed to; it exits after two messages.
    let sub = h.spawn(
        "mosquitto_sub",
        &programs.sub,
        &words(&format!(
            "-V 5 -h 127.0.0.1 -p {port} -i live-sub -q 2 \
             -t a/+ -t b/# -U old/# -C 2 -v \
             -D connect session-expiry-interval 60 \
             -D connect user-property k v \
             -D subscribe subscription-identifier 7 \
             -D subscribe user-property sk sv \
             -D unsubscribe user-property uk uv \
             -D disconnect user-property dk dv"
        )),
    );
    h.wait_until(
        &deadline,
        Duration::from_secs(5),
        "SUBACK and UNSUBACK to the subscriber",
        || {
            snapshot(&h).first().is_some_and(|c| {
                let t = types_so_far(&c.s2c);
                t.contains(&PacketType::SubAck) && t.contains(&PacketType::UnsubAck)
            })
        },
    );

    // QoS 1, retained, with every publish property mosquitto_pub offers except the alias.
    let pub1 = h.spawn(
        "mosquitto_pub_1",
        &programs.publish,
        &words(&format!(
            "-V 5 -h 127.0.0.1 -p {port} -i live-pub1 \
             -t a/x -m hello -q 1 -r \
             -D publish message-expiry-interval 30 \
             -D publish content-type text/plain \
             -D publish response-topic r/t \
             -D publish correlation-data 0a0b \
             -D publish user-property a b \
             -D publish user-property a c \
             -D publish payload-format-indicator 1"
        )),
    );
    let status = h.wait_exit(&deadline, pub1, Duration::from_secs(5));
    assert!(
        status.success(),
        "mosquitto_pub 1 failed: {status}{}",
        h.logs()
    );
    h.wait_until(
        &deadline,
        Duration::from_secs(5),
        "the first PUBLISH to the subscriber",
        || {
            snapshot(&h)
                .first()
                .is_some_and(|c| types_so_far(&c.s2c).contains(&PacketType::Publish))
        },
    );

    // QoS 2.
    let pub2 = h.spawn(
        "mosquitto_pub_2",
        &programs.publish,
        &words(&format!(
            "-V 5 -h 127.0.0.1 -p {port} -i live-pub2 \
             -t b/y/z -m world -q 2 \
             -D publish user-property x y"
        )),
    );
    let status = h.wait_exit(&deadline, pub2, Duration::from_secs(5));
    assert!(
        status.success(),
        "mosquitto_pub 2 failed: {status}{}",
        h.logs()
    );
    let status = h.wait_exit(&deadline, sub, Duration::from_secs(5));
    assert!(
        status.success(),
        "mosquitto_sub failed: {status}{}",
        h.logs()
    );
    h.wait_until(
        &deadline,
        Duration::from_secs(3),
        "every proxied connection to close",
        || {
            let conns = snapshot(&h);
            conns.len() == 3 && conns.iter().all(|c| c.c2s_closed && c.s2c_closed)
        },
    );
    let conns = snapshot(&h);
    drop(h.proxy.take());

    // Decode everything, both directions, and check every re-encoding.
    let mut decoded = Vec::new();
    for (i, (name, conn)) in ["subscriber", "publisher 1", "publisher 2"]
        .iter()
        .zip(&conns)
        .enumerate()
    {
        let mut dirs = Vec::new();
        for (dir, bytes) in [("client->broker", &conn.c2s), ("broker->client", &conn.s2c)] {
            let label = format!("connection {i} ({name}) {dir}");
            let packets = decode_stream(bytes, &label);
            for (packet, raw) in &packets {
                assert_reencodes(packet, raw, &label);
            }
            dirs.push(packets.into_iter().map(|(p, _)| p).collect::<Vec<_>>());
        }
        decoded.push(dirs);
    }
    let types = |ps: &[Packet]| ps.iter().map(Packet::packet_type).collect::<Vec<_>>();
    use PacketType::*;

    // The subscriber's connection.
    let (to_broker, from_broker) = (&decoded[0][0], &decoded[0][1]);
    assert_eq!(
        types(to_broker),
        [
            Connect,
            Subscribe,
            Unsubscribe,
            PubAck,
            PubRec,
            PubComp,
            Disconnect
        ]
    );
    assert_eq!(
        types(from_broker),
        [ConnAck, SubAck, UnsubAck, Publish, Publish, PubRel]
    );

    let Packet::Connect(c) = &to_broker[0] else {
        unreachable!()
    };
    assert_eq!(c.client_id, "live-sub");
    assert!(c.clean_start);
    assert_eq!(c.properties.session_expiry_interval, Some(60));
    assert_eq!(pairs(&c.properties.user_properties), [("k", "v")]);
    assert!(c.will.is_none());

    let Packet::Subscribe(sub) = &to_broker[1] else {
        unreachable!()
    };
    assert_eq!(
        sub.properties.subscription_identifier,
        SubscriptionId::new(7)
    );
    assert_eq!(pairs(&sub.properties.user_properties), [("sk", "sv")]);
    let filters: Vec<&str> = sub
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["a/+", "b/#"]);
    assert!(sub
        .subscriptions
        .iter()
        .all(|s| s.options == SubscriptionOptions::with_qos(QoS::ExactlyOnce)));

    let Packet::Unsubscribe(unsub) = &to_broker[2] else {
        unreachable!()
    };
    assert_eq!(pairs(&unsub.properties.user_properties), [("uk", "uv")]);
    assert_eq!(unsub.filters.len(), 1);
    assert_eq!(unsub.filters[0].as_str(), "old/#");

    let Packet::Disconnect(d) = &to_broker[6] else {
        unreachable!()
    };
    assert_eq!(d.reason_code, ReasonCode::NORMAL_DISCONNECTION);
    assert_eq!(pairs(&d.properties.user_properties), [("dk", "dv")]);

    let Packet::ConnAck(ack) = &from_broker[0] else {
        unreachable!()
    };
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);

    let Packet::SubAck(ack) = &from_broker[1] else {
        unreachable!()
    };
    assert_eq!(ack.packet_id, sub.packet_id);
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::GrantedQoS2, ReasonCode::GrantedQoS2]
    );

    let Packet::UnsubAck(ack) = &from_broker[2] else {
        unreachable!()
    };
    assert_eq!(ack.packet_id, unsub.packet_id);
    assert_eq!(ack.reason_codes, [ReasonCode::NoSubscriptionExisted]);

    let Packet::Publish(p) = &from_broker[3] else {
        unreachable!()
    };
    assert_eq!(p.topic.as_str(), "a/x");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain, "a live delivery has RETAIN 0");
    assert!(p.packet_id.is_some());
    assert_eq!(p.payload.as_ref(), b"hello");
    let q = &p.properties;
    assert_eq!(
        q.subscription_identifiers,
        [SubscriptionId::new(7).unwrap()]
    );
    let expiry = q.message_expiry_interval.expect("Message Expiry Interval");
    assert!((1..=30).contains(&expiry), "expiry {expiry}");
    assert_eq!(s(&q.content_type), Some("text/plain"));
    assert_eq!(q.response_topic.as_ref().map(|t| t.as_str()), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"0a0b"[..]));
    assert_eq!(pairs(&q.user_properties), [("a", "b"), ("a", "c")]);
    assert_eq!(q.payload_format_indicator, Some(PayloadFormat::Utf8));
    let Packet::PubAck(ack) = &to_broker[3] else {
        unreachable!()
    };
    assert_eq!(Some(ack.packet_id), p.packet_id);

    let Packet::Publish(p) = &from_broker[4] else {
        unreachable!()
    };
    assert_eq!(p.topic.as_str(), "b/y/z");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(p.payload.as_ref(), b"world");
    assert_eq!(
        p.properties.subscription_identifiers,
        [SubscriptionId::new(7).unwrap()]
    );
    assert_eq!(pairs(&p.properties.user_properties), [("x", "y")]);
    for ack in [&to_broker[4], &from_broker[5], &to_broker[5]] {
        let (Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) = ack else {
            unreachable!()
        };
        assert_eq!(Some(a.packet_id), p.packet_id);
        assert_eq!(a.reason_code, ReasonCode::Success);
    }

    // Publisher 1: QoS 1.
    let (to_broker, from_broker) = (&decoded[1][0], &decoded[1][1]);
    assert_eq!(types(to_broker), [Connect, Publish, Disconnect]);
    assert_eq!(types(from_broker), [ConnAck, PubAck]);
    let Packet::Connect(c) = &to_broker[0] else {
        unreachable!()
    };
    assert_eq!(c.client_id, "live-pub1");
    let Packet::Publish(p) = &to_broker[1] else {
        unreachable!()
    };
    assert_eq!(p.topic.as_str(), "a/x");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.retain);
    assert_eq!(p.packet_id, pid(1));
    assert_eq!(p.payload.as_ref(), b"hello");
    let q = &p.properties;
    assert_eq!(q.message_expiry_interval, Some(30));
    assert_eq!(s(&q.content_type), Some("text/plain"));
    assert_eq!(q.response_topic.as_ref().map(|t| t.as_str()), Some("r/t"));
    assert_eq!(q.correlation_data.as_deref(), Some(&b"0a0b"[..]));
    assert_eq!(pairs(&q.user_properties), [("a", "b"), ("a", "c")]);
    assert_eq!(q.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert!(q.subscription_identifiers.is_empty());
    let Packet::PubAck(ack) = &from_broker[1] else {
        unreachable!()
    };
    assert_eq!(Some(ack.packet_id), pid(1));
    assert_eq!(ack.reason_code, ReasonCode::Success);

    // Publisher 2: QoS 2.
    let (to_broker, from_broker) = (&decoded[2][0], &decoded[2][1]);
    assert_eq!(types(to_broker), [Connect, Publish, PubRel, Disconnect]);
    assert_eq!(types(from_broker), [ConnAck, PubRec, PubComp]);
    let Packet::Publish(p) = &to_broker[1] else {
        unreachable!()
    };
    assert_eq!(p.topic.as_str(), "b/y/z");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(p.packet_id, pid(1));
    assert_eq!(pairs(&p.properties.user_properties), [("x", "y")]);
    for ack in [&from_broker[1], &to_broker[2], &from_broker[2]] {
        let (Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) = ack else {
            unreachable!()
        };
        assert_eq!(Some(a.packet_id), pid(1));
        assert_eq!(a.reason_code, ReasonCode::Success);
    }
}
