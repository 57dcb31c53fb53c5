//! Client throughput and CPU cost: `mqttproto::tokio::Client` and `mqttproto::blocking::Client`
//! against rumqttc's v5 `AsyncClient`/`EventLoop`, in one run.
//!
//! ```text
//! cargo bench -p mqttproto --bench client
//! ```
//!
//! Three libraries, by the names the tables and `MQTTPROTO_BENCH_LIBS` use: `mqttproto` (the
//! tokio client), `blocking` (mqttproto's blocking client: its own I/O thread and reader
//! thread, called from the bench's main thread, no async runtime) and `rumqttc`.
//!
//! Every message carries a 64-byte payload. Two peers, one after the other:
//!
//! * **Mosquitto** (Debian's, started here with `set_tcp_nodelay true`,
//!   `max_inflight_messages 0` so that its CONNACK carries no Receive Maximum, and
//!   `max_queued_messages 0` so that it never drops QoS 0 messages for a busy subscriber).
//!   Mosquitto is often the bottleneck: see "peer busy %" in the details.
//! * **The raw peer**: this binary in a "peer" role, a minimal MQTT 5 responder that never is
//!   the bottleneck (it discards QoS 0 PUBLISH, answers QoS 1 PUBLISH with PUBACK, and floods
//!   a subscriber with pre-encoded PUBLISH packets right after SUBACK). Client-bound numbers.
//!
//! For each peer, repetition (3; medians are reported) and library in turn (the libraries
//! never overlap; their order rotates between repetitions, so with three libraries each one
//! runs first, second and last once in three repetitions), each on a new connection:
//!
//! * **QoS 0 publish**, 200,000 messages. The clock starts before the first message is handed
//!   to the library and stops when the library reports the last one written to the socket:
//!   - mqttproto: `try_publish` for the first N-1, `publish_message` for the last, whose
//!     future resolves once the task has written it (`write_all` + `flush` returned); the task
//!     handles commands in order, so every earlier message is written too.
//!   - blocking: `try_publish` for the first N-1 (hands the message to the I/O thread's
//!     unbounded channel and returns), `publish_message_timeout` for the last, which returns
//!     once the I/O thread has written it (its reply is sent after `write_all` + `flush` of the
//!     batch that carries it returned); the I/O thread takes commands from one channel in
//!     order, so every earlier message is written too.
//!   - rumqttc: the event loop has yielded `Outgoing::Publish` N times; it yields that event
//!     only after `Network::flush` for that request has returned.
//!
//!   "Written" means accepted by the kernel, not read by the peer. An untimed QoS 1 marker
//!   sent afterwards (its PUBACK proves the peer has read everything before it) gives the
//!   "peer-confirmed" rate in the details.
//! * **QoS 1 publish**, 100,000 messages, until every PUBACK is in. mqttproto: `try_publish`
//!   for N-1, then `publish_message` awaited (commands are handled in order and PUBACKs come
//!   in order [MQTT-4.6.0-2]); rumqttc: the event loop has yielded N `Incoming::PubAck`.
//!   blocking: the same, except that every 50,000th message is also published with the
//!   waiting `publish_message_timeout` (so with N = 100,000: 49,999 `try_publish`, one wait
//!   for a PUBACK, 49,999 `try_publish`, one wait for the last PUBACK). Without those waits
//!   the run fails or, worse, loses messages unseen: the blocking I/O thread takes commands and
//!   the reader thread's input from one FIFO channel, so the PUBACKs that arrive while N-1
//!   commands are queued are handled only after them; every queued QoS 1 message takes a
//!   packet identifier, and once all 65,535 are in use the core refuses the next publish
//!   (`NoPacketIdAvailable`), which `try_publish`, having no reply, could not report (fixed
//!   since: the client now holds such messages back; the waits stay so that the figures
//!   compare with those measured before the fix). Each wait
//!   empties the pipeline once (one round trip), a small cost against 50,000 messages.
//! * **QoS 0/1 publish, a `publish()` future per message** (mqttproto only: rumqttc reports
//!   no per-message outcome, and the blocking client cannot hold N outstanding calls without
//!   N threads): `Client::publish(&str, ..)` N times, then every future awaited.
//! * **QoS 0/1 publish, a blocking `publish()` per message** (blocking only), 10,000 messages:
//!   `Client::publish(&str, ..)` N times in a row, each returning before the next is made (QoS
//!   0: once the I/O thread has written it; QoS 1: once its PUBACK is in). One message in
//!   flight at a time, so these measure latency, not throughput: QoS 0 is a round trip between
//!   the caller and the I/O thread plus a `write`, QoS 1 a round trip to the peer as well. Not
//!   comparable with the other rows.
//! * **Receive**, 100,000 QoS 0 messages, until the application has the N-th
//!   (`Subscription::recv` / blocking `Subscription::recv_timeout` /
//!   `Event::Incoming(Packet::Publish)`). With Mosquitto a separate process (the same for
//!   every library: this binary in a "publisher" role, writing pre-encoded PUBLISH packets over
//!   raw TCP) publishes, and the clock starts when it is told to go (it is already connected);
//!   with the raw peer the clock starts before SUBSCRIBE. mqttproto's and blocking's
//!   subscription buffers are sized N here, so that they cannot drop messages; the
//!   mqttproto/blocking-only **receive, default subscription capacity** case keeps the default
//!   and reports how many QoS 0 messages the client dropped (the blocking client stops reading
//!   instead while nothing awaits an acknowledgement, so it should drop none).
//! * **CPU per message**: CPU time of this process (summed over its threads, from
//!   `/proc/self/task/*/schedstat`, in ns) over the timed window, divided by N. The peer and
//!   the publisher are other processes and are not counted; the blocking client's I/O and
//!   reader threads are threads of this process and are.
//!
//! The async libraries run on one current-thread tokio runtime, TCP_NODELAY on both ends. The
//! producer hands every message to the library back to back (mqttproto's command channel is
//! unbounded, and so is the blocking client's; rumqttc's request channel is sized N so
//! `publish_bytes` never waits). With two or more cores, the bench pins itself (every thread,
//! so the blocking client's threads too) to core 1 and the peer and the publisher to core 0
//! (`taskset`); `MQTTPROTO_BENCH_PIN=0` turns that off. Every phase has a timeout, and a
//! watchdog ends the whole run after 175 s.
//!
//! Knobs (for profiling): `MQTTPROTO_BENCH_REPS` (3), `MQTTPROTO_BENCH_SCALE` (1.0, multiplies
//! every N), `MQTTPROTO_BENCH_LIBS` (`mqttproto,blocking,rumqttc`), `MQTTPROTO_BENCH_PEERS`
//! (`mosquitto,raw`), `MQTTPROTO_BENCH_PHASES`
//! (`qos0,qos0-each,qos0-wait,qos1,qos1-each,qos1-wait,recv,recv-default`).

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttproto::blocking::Client as BlockingClient;
use mqttproto::proto::codec::Publish;
use mqttproto::proto::{QoS, TopicName};
use mqttproto::tokio::client::{ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;

const PAYLOAD_LEN: usize = 64;
const QOS0_N: usize = 200_000;
const QOS1_N: usize = 100_000;
const RECV_N: usize = 100_000;
/// Blocking `publish()` per message, one at a time: latency-bound, so fewer messages.
const WAIT_N: usize = 10_000;
/// The blocking client's QoS 1 publish phase waits for a PUBACK after at most this many
/// `try_publish` calls, keeping the unacknowledged messages under the 65,535 packet
/// identifiers (see the module docs).
const BLOCKING_QOS1_BURST: usize = 50_000;
const PUB_TOPIC: &str = "bench/pub";
const RECV_TOPIC: &str = "bench/recv";
/// Bound on one timed phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting, subscribing, draining and disconnecting.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A receive phase ends early when no message arrived for this long.
const STALL: Duration = Duration::from_secs(3);
/// No repetition starts unless it is expected to end within this much time from the start.
const REP_BUDGET: Duration = Duration::from_secs(150);
/// The whole process is aborted after this much time.
const HARD_LIMIT: Duration = Duration::from_secs(175);

static BROKER_PID: AtomicU32 = AtomicU32::new(0);
/// Warnings logged by mqttproto (a QoS 0 message dropped for a slow subscription, …).
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static PUBLISHER_PID: AtomicU32 = AtomicU32::new(0);
static PEER_PID: AtomicU32 = AtomicU32::new(0);

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.

/// CPU time of this process: ns on CPU (schedstat, all threads) and user/system clock ticks.
#[derive(Clone, Copy, Default)]
struct Cpu {
    ns: Option<u64>,
    utime: u64,
    stime: u64,
}

/// utime and stime (fields 14 and 15) of a /proc/<pid>/stat file, in clock ticks.
fn stat_ticks(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn sched_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread that just exited has no file any more: skip it.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

fn process_cpu() -> Cpu {
    let (utime, stime) = stat_ticks("/proc/self/stat").unwrap_or((0, 0));
    Cpu {
        ns: sched_ns(),
        utime,
        stime,
    }
}

fn pid_ticks(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    stat_ticks(&format!("/proc/{pid}/stat")).map_or(0, |(u, s)| u + s)
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Busy and total jiffies per CPU, from /proc/stat.
fn cpu_jiffies() -> Vec<(u64, u64)> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One timed window.
struct Meter {
    t0: Instant,
    cpu0: Cpu,
    broker_pid: u32,
    broker0: u64,
}

impl Meter {
    /// Starts a window; `broker_pid` is the peer process whose CPU is reported too.
    fn start(broker_pid: u32) -> Meter {
        let broker0 = pid_ticks(broker_pid);
        let cpu0 = process_cpu();
        Meter {
            t0: Instant::now(),
            cpu0,
            broker_pid,
            broker0,
        }
    }

    fn stop(&self, n: usize) -> Sample {
        let wall = self.t0.elapsed();
        let cpu1 = process_cpu();
        let broker1 = pid_ticks(self.broker_pid);
        Sample {
            n,
            wall,
            cpu_ns: match (self.cpu0.ns, cpu1.ns) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            utime: cpu1.utime.saturating_sub(self.cpu0.utime),
            stime: cpu1.stime.saturating_sub(self.cpu0.stime),
            broker_ticks: broker1.saturating_sub(self.broker0),
            confirmed: None,
            lost: 0,
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    n: usize,
    wall: Duration,
    /// CPU ns of this process (schedstat); `None` if the kernel does not expose it.
    cpu_ns: Option<u64>,
    utime: u64,
    stime: u64,
    broker_ticks: u64,
    /// Time until the broker had read every message (QoS 0 publish only).
    confirmed: Option<Duration>,
    /// Messages the client dropped (receive with the default subscription capacity only).
    lost: usize,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64()
    }

    fn cpu_us_per_msg(&self, hz: u64) -> f64 {
        let ns = self
            .cpu_ns
            .unwrap_or((self.utime + self.stime) * 1_000_000_000 / hz);
        ns as f64 / 1000.0 / self.n as f64
    }

    fn broker_busy(&self, hz: u64) -> f64 {
        let ns = self.broker_ticks as f64 * 1e9 / hz as f64;
        100.0 * ns / self.wall.as_nanos() as f64
    }
}

/// Counts mqttproto's warnings (nothing else is enabled, so other callsites cost nothing).
struct WarningCounter;

impl tracing::Subscriber for WarningCounter {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.enabled(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event()
            && *meta.level() <= tracing::Level::WARN
            && meta.target().starts_with("mqttproto")
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {
        WARNINGS.fetch_add(1, Ordering::Relaxed);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------------------------
// Mosquitto and pinning.

/// A command for `program`, pinned to `core` if given.
fn pinned(core: Option<u32>, program: &PathBuf) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Mosquitto {
    fn start(core: Option<u32>) -> Res<Mosquitto> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("mosquitto is not installed (apt-get install mosquitto)")?;
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("mqttproto-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(err)?;
        let conf = dir.join("mosquitto.conf");
        // max_inflight_messages 0: no Receive Maximum in CONNACK (65,535), so the broker's
        // window does not cap QoS 1 throughput for either client.
        // max_queued_messages 0: QoS 0 messages for a busy subscriber are never dropped.
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             persistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n\
             log_dest none\n"
        );
        std::fs::write(&conf, text).map_err(err)?;
        let child = pinned(core, &bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start mosquitto: {e}"))?;
        BROKER_PID.store(child.id(), Ordering::Relaxed);
        let m = Mosquitto { port, dir, child };
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while StdStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("mosquitto did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        BROKER_PID.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pins this process (every thread) to `core` with `taskset -a -p`.
fn pin_self(core: u32) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn kill_pid(pid: u32) {
    if pid != 0 {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// The raw publisher (a child process running this binary in the "publisher" role).

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    put_varint(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

/// Reads one MQTT packet; returns its first byte and body.
fn read_packet(s: &mut StdStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body)?;
    Ok((first[0], body))
}

/// A QoS 0 PUBLISH on [`RECV_TOPIC`] with a 64-byte payload, encoded.
fn publish_packet() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(RECV_TOPIC.len() as u16).to_be_bytes());
    body.extend_from_slice(RECV_TOPIC.as_bytes());
    body.push(0); // no properties
    body.extend_from_slice(&[b'r'; PAYLOAD_LEN]);
    packet(0x30, &body)
}

/// Publisher role: connect (MQTT 5), say "ready", wait for "go" on stdin, write N pre-encoded
/// QoS 0 PUBLISH packets, DISCONNECT.
fn publisher_main() -> i32 {
    let run = || -> std::io::Result<()> {
        let port: u16 = std::env::var("MQTTPROTO_BENCH_PORT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1883);
        let n: usize = std::env::var("MQTTPROTO_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RECV_N);
        let mut s = StdStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(PHASE_TIMEOUT))?;
        let id = b"mqttproto-bench-raw-publisher";
        // Protocol name, level 5, Clean Start, keep alive 60 s, no properties, client id.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id);
        s.write_all(&packet(0x10, &body))?;
        let (first, connack) = read_packet(&mut s)?;
        if first != 0x20 || connack.get(1) != Some(&0) {
            return Err(std::io::Error::other("CONNACK refused"));
        }
        let all = publish_packet().repeat(n);
        println!("ready");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        s.write_all(&all)?;
        s.write_all(&[0xE0, 0])?;
        s.shutdown(std::net::Shutdown::Write)?;
        // The broker closes after DISCONNECT.
        let mut sink = [0u8; 512];
        while s.read(&mut sink).is_ok_and(|k| k > 0) {}
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench publisher: {e}");
            1
        }
    }
}

struct RawPublisher {
    child: Child,
}

impl RawPublisher {
    /// Starts the publisher and waits until it is connected.
    fn start(core: Option<u32>, port: u16, n: usize) -> Res<RawPublisher> {
        let exe = std::env::current_exe().map_err(err)?;
        let mut child = pinned(core, &exe)
            .env("MQTTPROTO_BENCH_ROLE", "publisher")
            .env("MQTTPROTO_BENCH_PORT", port.to_string())
            .env("MQTTPROTO_BENCH_N", n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(err)?;
        PUBLISHER_PID.store(child.id(), Ordering::Relaxed);
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // Bounded by the watchdog (and the publisher's own read timeout).
        BufReader::new(stdout).read_line(&mut line).map_err(err)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("publisher not ready: {line:?}"));
        }
        Ok(RawPublisher { child })
    }

    fn go(&mut self) -> Res<()> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"go\n").map_err(err)?;
        stdin.flush().map_err(err)
    }

    fn finish(mut self) {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        PUBLISHER_PID.store(0, Ordering::Relaxed);
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The raw peer: a minimal MQTT 5 "broker" (a child process running this binary in the "peer"
// role) that is never the bottleneck. It accepts one connection at a time; answers CONNECT,
// SUBSCRIBE, UNSUBSCRIBE, PINGREQ and QoS 1 PUBLISH (PUBACK, written once per read); discards
// QoS 0 PUBLISH; and after each SUBACK writes N pre-encoded QoS 0 PUBLISH packets at once.

/// The first byte, header length and total length of the packet at the start of `b`.
fn frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *b.first()?;
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let byte = *b.get(i)?;
        len |= ((byte & 0x7f) as usize) << shift;
        i += 1;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    (b.len() >= i + len).then_some((first, i, i + len))
}

fn serve_peer(s: &mut StdStream, blast: &[u8]) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 18];
    let mut have = 0usize;
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let k = s.read(&mut buf[have..])?;
        if k == 0 {
            return Ok(());
        }
        have += k;
        let (mut pos, mut flood, mut close) = (0, false, false);
        while let Some((first, head, end)) = frame(&buf[pos..have]) {
            let body = &buf[pos + head..pos + end];
            let id = |at: usize| [body.get(at).copied(), body.get(at + 1).copied()];
            match (first >> 4, id(0)) {
                (1, _) => out.extend_from_slice(&[0x20, 3, 0, 0, 0]),
                (3, _) if (first >> 1) & 3 == 1 => {
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    if let [Some(a), Some(b)] = id(2 + topic_len) {
                        out.extend_from_slice(&[0x40, 2, a, b]);
                    }
                }
                (8, [Some(a), Some(b)]) => {
                    out.extend_from_slice(&[0x90, 4, a, b, 0, 0]);
                    flood = true;
                }
                (10, [Some(a), Some(b)]) => out.extend_from_slice(&[0xB0, 4, a, b, 0, 0]),
                (12, _) => out.extend_from_slice(&[0xD0, 0]),
                (14, _) => close = true,
                _ => {}
            }
            pos += end;
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
        if flood {
            s.write_all(blast)?;
        }
        if close {
            return Ok(());
        }
    }
}

/// Peer role: print the port, then serve connections one after the other.
fn peer_main() -> i32 {
    let n: usize = std::env::var("MQTTPROTO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RECV_N);
    let Ok(listener) = StdListener::bind("127.0.0.1:0") else {
        return 1;
    };
    let Ok(addr) = listener.local_addr() else {
        return 1;
    };
    println!("port {}", addr.port());
    let _ = std::io::stdout().flush();
    let blast = publish_packet().repeat(n);
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(PHASE_TIMEOUT));
        let _ = serve_peer(&mut s, &blast);
    }
    0
}

struct RawPeer {
    port: u16,
    child: Child,
}

impl RawPeer {
    fn start(core: Option<u32>, n: usize) -> Res<RawPeer> {
        let exe = std::env::current_exe().map_err(err)?;
        let mut child = pinned(core, &exe)
            .env("MQTTPROTO_BENCH_ROLE", "peer")
            .env("MQTTPROTO_BENCH_N", n.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(err)?;
        PEER_PID.store(child.id(), Ordering::Relaxed);
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout).read_line(&mut line).map_err(err)?;
        match line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
        {
            Some(port) => Ok(RawPeer { port, child }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("raw peer did not start: {line:?}"))
            }
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        PEER_PID.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Phases.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lib {
    /// `mqttproto::tokio::Client`.
    Mqttproto,
    /// `mqttproto::blocking::Client`.
    Blocking,
    Rumqttc,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Mqttproto => "mqttproto",
            Lib::Blocking => "blocking",
            Lib::Rumqttc => "rumqttc",
        }
    }
}

/// The throughput and CPU ratios the tables show, a/b, for the pairs whose libraries both run.
const RATIO_PAIRS: [(Lib, Lib); 3] = [
    (Lib::Mqttproto, Lib::Rumqttc),
    (Lib::Blocking, Lib::Rumqttc),
    (Lib::Blocking, Lib::Mqttproto),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// QoS 0 publish through each library's cheapest fire-and-forget call.
    Qos0,
    /// QoS 0 publish through `Client::publish(&str, ..)`, awaiting every future (mqttproto
    /// only: rumqttc has no per-message completion).
    Qos0Each,
    /// QoS 1 publish through `Client::publish(&str, ..)`, awaiting every future (mqttproto
    /// only).
    Qos1Each,
    /// QoS 0 publish through the blocking `Client::publish(&str, ..)`, one call at a time
    /// (blocking only; latency-bound).
    Qos0Wait,
    /// QoS 1 publish through the blocking `Client::publish(&str, ..)`, each call waiting for
    /// its PUBACK (blocking only; latency-bound: a round trip per message).
    Qos1Wait,
    Qos1,
    Recv,
    /// Receive with the default subscription capacity (mqttproto only), counting messages
    /// the client drops.
    RecvDefault,
}

impl Phase {
    fn key(self) -> &'static str {
        match self {
            Phase::Qos0 => "qos0",
            Phase::Qos0Each => "qos0-each",
            Phase::Qos1Each => "qos1-each",
            Phase::Qos0Wait => "qos0-wait",
            Phase::Qos1Wait => "qos1-wait",
            Phase::Qos1 => "qos1",
            Phase::Recv => "recv",
            Phase::RecvDefault => "recv-default",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Qos0 => "Publish QoS 0",
            Phase::Qos0Each => "Publish QoS 0, `publish()` future per message",
            Phase::Qos1Each => "Publish QoS 1, `publish()` future per message",
            Phase::Qos0Wait => {
                "Publish QoS 0, blocking `publish()` per message, one at a time (latency-bound)"
            }
            Phase::Qos1Wait => {
                "Publish QoS 1, blocking `publish()` per message, each waiting for its PUBACK \
                 (latency-bound: a round trip per message)"
            }
            Phase::Qos1 => "Publish QoS 1 (until all PUBACKs)",
            Phase::Recv => "Receive QoS 0",
            Phase::RecvDefault => "Receive QoS 0, default subscription capacity (delivered)",
        }
    }

    fn n(self, scale: f64) -> usize {
        let n = match self {
            Phase::Qos0 | Phase::Qos0Each => QOS0_N,
            Phase::Qos1 | Phase::Qos1Each => QOS1_N,
            Phase::Recv | Phase::RecvDefault => RECV_N,
            Phase::Qos0Wait | Phase::Qos1Wait => WAIT_N,
        };
        ((n as f64 * scale) as usize).max(1)
    }

    fn applies(self, lib: Lib) -> bool {
        match self {
            Phase::Qos0 | Phase::Qos1 | Phase::Recv => true,
            // N outstanding blocking calls would need N threads.
            Phase::Qos0Each | Phase::Qos1Each => lib == Lib::Mqttproto,
            Phase::Qos0Wait | Phase::Qos1Wait => lib == Lib::Blocking,
            Phase::RecvDefault => lib != Lib::Rumqttc,
        }
    }
}

/// The receive phase starts: against Mosquitto a raw publisher is started and released (the
/// raw peer floods on its own once subscribed); the meter runs from `early` if it was started
/// before the subscription. The publisher is returned to be kept alive for the phase.
fn start_receiving(
    ctx: &Ctx,
    n: usize,
    early: Option<Meter>,
) -> Res<(Meter, Option<RawPublisher>)> {
    let mut publisher = match ctx.raw {
        true => None,
        false => Some(RawPublisher::start(ctx.core0, ctx.port, n)?),
    };
    let meter = early.unwrap_or_else(|| Meter::start(ctx.peer_pid));
    if let Some(p) = publisher.as_mut() {
        p.go()?;
    }
    Ok((meter, publisher))
}

struct Ctx {
    url: String,
    port: u16,
    core0: Option<u32>,
    payload: Bytes,
    /// The peer is the raw sink/source ([`peer_main`]) rather than Mosquitto.
    raw: bool,
    peer_pid: u32,
}

async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Res<T>>,
) -> Res<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what}: timed out after {limit:?}")),
    }
}

// mqttproto -----------------------------------------------------------------------------------

async fn mq_connect(url: &str, id: &str, capacity: Option<usize>) -> Res<Client> {
    let mut builder = Client::builder(url)
        .map_err(err)?
        .client_id(id)
        .reconnect(Reconnect::Off);
    if let Some(c) = capacity {
        builder = builder.subscription_capacity(c);
    }
    let client = builder.build();
    let mut events = client.events();
    bounded(SETUP_TIMEOUT, "mqttproto connect", async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Connected { .. }) => return Ok(()),
                Ok(ConnectionEvent::Disconnected { reason, .. }) => return Err(reason),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(err(e)),
            }
        }
    })
    .await?;
    Ok(client)
}

async fn mq_close(client: Client) -> Res<()> {
    bounded(SETUP_TIMEOUT, "mqttproto disconnect", async {
        client.disconnect().await.map_err(err)
    })
    .await
}

async fn mq_publish(ctx: &Ctx, n: usize, qos: QoS, each: bool) -> Res<Sample> {
    let client = mq_connect(&ctx.url, "bench-mqttproto-pub", None).await?;
    let topic = TopicName::try_from(PUB_TOPIC).map_err(err)?;
    let mut msg = Publish::new(topic, ctx.payload.clone());
    msg.qos = qos;
    let meter = Meter::start(ctx.peer_pid);
    bounded(PHASE_TIMEOUT, "mqttproto publish", async {
        if each {
            let pending: Vec<_> = (0..n)
                .map(|_| client.publish(PUB_TOPIC, ctx.payload.clone(), qos))
                .collect();
            for p in pending {
                let code = p.await.map_err(err)?;
                if code.is_error() {
                    return Err(format!("PUBACK {code}"));
                }
            }
        } else {
            // Commands are handled in order, and a server sends PUBACKs in the order of the
            // PUBLISHes [MQTT-4.6.0-2]: the last message's outcome covers every earlier one.
            for _ in 1..n {
                client.try_publish(msg.clone()).map_err(err)?;
            }
            let code = client.publish_message(msg.clone()).await.map_err(err)?;
            if code.is_error() {
                return Err(format!("PUBACK {code}"));
            }
        }
        Ok(())
    })
    .await?;
    let mut sample = meter.stop(n);
    if qos == QoS::AtMostOnce {
        bounded(SETUP_TIMEOUT, "mqttproto marker", async {
            client
                .publish(PUB_TOPIC, ctx.payload.clone(), QoS::AtLeastOnce)
                .await
                .map_err(err)
        })
        .await?;
        sample.confirmed = Some(meter.t0.elapsed());
    }
    mq_close(client).await?;
    Ok(sample)
}

/// `capacity`: the subscription's buffer (`None`: the default). With `tolerate_loss`, QoS 0
/// messages the client drops end the phase as if received, and are reported as lost.
async fn mq_receive(
    ctx: &Ctx,
    n: usize,
    capacity: Option<usize>,
    tolerate_loss: bool,
) -> Res<Sample> {
    let client = mq_connect(&ctx.url, "bench-mqttproto-sub", capacity).await?;
    let warnings0 = WARNINGS.load(Ordering::Relaxed);
    let dropped = || (WARNINGS.load(Ordering::Relaxed) - warnings0) as usize;
    // The raw peer floods the subscriber as soon as it has sent SUBACK.
    let early = ctx.raw.then(|| Meter::start(ctx.peer_pid));
    let mut sub = bounded(SETUP_TIMEOUT, "mqttproto subscribe", async {
        client
            .subscribe(RECV_TOPIC, QoS::AtMostOnce)
            .await
            .map_err(err)
    })
    .await?;
    let (meter, publisher) = start_receiving(ctx, n, early)?;
    let got = Cell::new(0usize);
    let bytes = Cell::new(0usize);
    let result = bounded(PHASE_TIMEOUT, "mqttproto receive", async {
        let stall = stall_detector(&got, || got.get() + dropped() >= n);
        tokio::pin!(stall);
        while got.get() < n {
            tokio::select! {
                biased;
                m = sub.recv() => match m {
                    Some(m) => {
                        bytes.set(bytes.get() + m.payload.len());
                        got.set(got.get() + 1);
                    }
                    None => return Err("subscription closed".to_string()),
                },
                _ = &mut stall => break,
            }
        }
        Ok(())
    })
    .await;
    let lost = dropped();
    let mut sample = meter.stop(n);
    if let Some(p) = publisher {
        p.finish();
    }
    result?;
    if tolerate_loss {
        sample.n = got.get().max(1);
        sample.lost = lost;
    } else {
        check_received(got.get(), bytes.get(), n, warnings0)?;
    }
    drop(sub);
    mq_close(client).await?;
    Ok(sample)
}

// rumqttc -------------------------------------------------------------------------------------

async fn rq_connect(port: u16, id: &str, cap: usize) -> Res<(AsyncClient, EventLoop)> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    let mut net = options.network_options();
    net.set_tcp_nodelay(true);
    options.set_network_options(net);
    let (client, mut eventloop) = AsyncClient::new(options, cap);
    bounded(SETUP_TIMEOUT, "rumqttc connect", async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(err(e)),
            }
        }
    })
    .await?;
    Ok((client, eventloop))
}

async fn rq_close(client: AsyncClient, mut eventloop: EventLoop) -> Res<()> {
    bounded(SETUP_TIMEOUT, "rumqttc disconnect", async {
        client.disconnect().await.map_err(err)?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    })
    .await
}

async fn rq_publish(ctx: &Ctx, n: usize, qos: RQoS) -> Res<Sample> {
    let (client, mut eventloop) = rq_connect(ctx.port, "bench-rumqttc-pub", n + 16).await?;
    let meter = Meter::start(ctx.peer_pid);
    // The event loop runs in its own task, as applications run it.
    let driver = tokio::spawn(async move {
        let mut done = 0usize;
        while done < n {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == RQoS::AtMostOnce => done += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) if qos == RQoS::AtLeastOnce => done += 1,
                Ok(_) => {}
                Err(e) => return (eventloop, Err(err(e))),
            }
        }
        (eventloop, Ok(()))
    });
    let abort = driver.abort_handle();
    let timed = bounded(PHASE_TIMEOUT, "rumqttc publish", async {
        for _ in 0..n {
            client
                .publish_bytes(PUB_TOPIC, qos, false, ctx.payload.clone())
                .await
                .map_err(err)?;
        }
        driver.await.map_err(err)
    })
    .await;
    let mut sample = meter.stop(n);
    let (mut eventloop, r) = match timed {
        Ok(v) => v,
        Err(e) => {
            abort.abort();
            return Err(e);
        }
    };
    r?;
    if qos == RQoS::AtMostOnce {
        bounded(SETUP_TIMEOUT, "rumqttc marker", async {
            client
                .publish_bytes(PUB_TOPIC, RQoS::AtLeastOnce, false, ctx.payload.clone())
                .await
                .map_err(err)?;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(err(e)),
                }
            }
        })
        .await?;
        sample.confirmed = Some(meter.t0.elapsed());
    }
    rq_close(client, eventloop).await?;
    Ok(sample)
}

async fn rq_receive(ctx: &Ctx, n: usize) -> Res<Sample> {
    let (client, mut eventloop) = rq_connect(ctx.port, "bench-rumqttc-sub", 64).await?;
    // The raw peer floods the subscriber as soon as it has sent SUBACK.
    let early = ctx.raw.then(|| Meter::start(ctx.peer_pid));
    bounded(SETUP_TIMEOUT, "rumqttc subscribe", async {
        client
            .subscribe(RECV_TOPIC, RQoS::AtMostOnce)
            .await
            .map_err(err)?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(err(e)),
            }
        }
    })
    .await?;
    let warnings0 = WARNINGS.load(Ordering::Relaxed);
    let (meter, publisher) = start_receiving(ctx, n, early)?;
    let got = Cell::new(0usize);
    let bytes = Cell::new(0usize);
    let result = bounded(PHASE_TIMEOUT, "rumqttc receive", async {
        let stall = stall_detector(&got, || false);
        tokio::pin!(stall);
        while got.get() < n {
            tokio::select! {
                biased;
                e = eventloop.poll() => match e {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        bytes.set(bytes.get() + p.payload.len());
                        got.set(got.get() + 1);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(err(e)),
                },
                _ = &mut stall => break,
            }
        }
        Ok(())
    })
    .await;
    let sample = meter.stop(n);
    if let Some(p) = publisher {
        p.finish();
    }
    result?;
    check_received(got.get(), bytes.get(), n, warnings0)?;
    rq_close(client, eventloop).await?;
    Ok(sample)
}

// mqttproto's blocking client -----------------------------------------------------------------

fn bl_connect(url: &str, id: &str, capacity: Option<usize>) -> Res<BlockingClient> {
    // The request timeout bounds `subscribe` and the per-message `publish` calls.
    let mut builder = BlockingClient::builder(url)
        .map_err(err)?
        .client_id(id)
        .reconnect(Reconnect::Off)
        .request_timeout(Some(SETUP_TIMEOUT));
    if let Some(c) = capacity {
        builder = builder.subscription_capacity(c);
    }
    let client = builder.build().map_err(err)?;
    let events = client.events();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ConnectionEvent::Connected { .. }) => return Ok(client),
            Ok(ConnectionEvent::Disconnected { reason, .. }) => return Err(reason),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "blocking connect: timed out after {SETUP_TIMEOUT:?}"
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("blocking connect: client closed".into())
            }
        }
    }
}

/// `disconnect` waits for the I/O thread to stop; bounded here by a helper thread.
fn bl_close(client: BlockingClient) -> Res<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.disconnect().map_err(err));
    });
    match rx.recv_timeout(SETUP_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "blocking disconnect: timed out after {SETUP_TIMEOUT:?}"
        )),
    }
}

/// `try_publish` for N-1, then `publish_message_timeout` for the last: it returns once the I/O
/// thread has written it (QoS 0) or has its PUBACK (QoS 1), and the I/O thread handles
/// commands in order (PUBACKs come in order [MQTT-4.6.0-2]), so everything before is done too.
/// QoS 1 also waits so on every [`BLOCKING_QOS1_BURST`]th message.
fn bl_publish(ctx: &Ctx, n: usize, qos: QoS) -> Res<Sample> {
    let client = bl_connect(&ctx.url, "bench-blocking-pub", None)?;
    let topic = TopicName::try_from(PUB_TOPIC).map_err(err)?;
    let mut msg = Publish::new(topic, ctx.payload.clone());
    msg.qos = qos;
    let burst = match qos {
        QoS::AtMostOnce => n,
        _ => BLOCKING_QOS1_BURST,
    };
    let meter = Meter::start(ctx.peer_pid);
    let deadline = meter.t0 + PHASE_TIMEOUT;
    for i in 1..=n {
        if i < n && i % burst != 0 {
            client.try_publish(msg.clone()).map_err(err)?;
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let code = client
            .publish_message_timeout(msg.clone(), Some(left))
            .map_err(|e| format!("blocking publish ({i} of {n}): {e}"))?;
        if code.is_error() {
            return Err(format!("PUBACK {code}"));
        }
    }
    let mut sample = meter.stop(n);
    if qos == QoS::AtMostOnce {
        let mut marker = msg;
        marker.qos = QoS::AtLeastOnce;
        client
            .publish_message_timeout(marker, Some(SETUP_TIMEOUT))
            .map_err(|e| format!("blocking marker: {e}"))?;
        sample.confirmed = Some(meter.t0.elapsed());
    }
    bl_close(client)?;
    Ok(sample)
}

/// The blocking `publish(&str, ..)` N times, one after the other: each returns once the
/// message is written (QoS 0) or acknowledged (QoS 1) before the next is made.
fn bl_publish_wait(ctx: &Ctx, n: usize, qos: QoS) -> Res<Sample> {
    let client = bl_connect(&ctx.url, "bench-blocking-pub", None)?;
    let meter = Meter::start(ctx.peer_pid);
    let deadline = meter.t0 + PHASE_TIMEOUT;
    for i in 0..n {
        if i % 256 == 0 && Instant::now() > deadline {
            return Err(format!(
                "blocking publish: timed out after {PHASE_TIMEOUT:?} ({i} of {n} done)"
            ));
        }
        let code = client
            .publish(PUB_TOPIC, ctx.payload.clone(), qos)
            .map_err(|e| format!("blocking publish: {e}"))?;
        if code.is_error() {
            return Err(format!("PUBACK {code}"));
        }
    }
    let sample = meter.stop(n);
    bl_close(client)?;
    Ok(sample)
}

/// As [`mq_receive`], with the blocking client: `Subscription::recv_timeout` (10 ms, so that
/// a stall or, with `tolerate_loss`, dropped messages end the phase as the tokio variant's
/// stall detector does) until the N-th message.
fn bl_receive(ctx: &Ctx, n: usize, capacity: Option<usize>, tolerate_loss: bool) -> Res<Sample> {
    let client = bl_connect(&ctx.url, "bench-blocking-sub", capacity)?;
    let warnings0 = WARNINGS.load(Ordering::Relaxed);
    let dropped = || (WARNINGS.load(Ordering::Relaxed) - warnings0) as usize;
    // The raw peer floods the subscriber as soon as it has sent SUBACK.
    let early = ctx.raw.then(|| Meter::start(ctx.peer_pid));
    let sub = client
        .subscribe(RECV_TOPIC, QoS::AtMostOnce)
        .map_err(|e| format!("blocking subscribe: {e}"))?;
    let (meter, publisher) = start_receiving(ctx, n, early)?;
    let deadline = meter.t0 + PHASE_TIMEOUT;
    let (mut got, mut bytes) = (0usize, 0usize);
    let (mut last, mut since) = (0usize, Instant::now());
    let result: Res<()> = loop {
        if got >= n {
            break Ok(());
        }
        match sub.recv_timeout(Duration::from_millis(10)) {
            Ok(m) => {
                bytes += m.payload.len();
                got += 1;
                if got % 4096 == 0 && Instant::now() > deadline {
                    break Err(format!(
                        "blocking receive: timed out after {PHASE_TIMEOUT:?}"
                    ));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if got + dropped() >= n {
                    break Ok(());
                }
                if got != last {
                    (last, since) = (got, now);
                } else if now - since > STALL {
                    break Ok(());
                }
                if now > deadline {
                    break Err(format!(
                        "blocking receive: timed out after {PHASE_TIMEOUT:?}"
                    ));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break Err("subscription closed".into()),
        }
    };
    let lost = dropped();
    let mut sample = meter.stop(n);
    if let Some(p) = publisher {
        p.finish();
    }
    result?;
    if tolerate_loss {
        sample.n = got.max(1);
        sample.lost = lost;
    } else {
        check_received(got, bytes, n, warnings0)?;
    }
    drop(sub);
    bl_close(client)?;
    Ok(sample)
}

/// Resolves when `done()` holds or `got` has not moved for [`STALL`].
async fn stall_detector(got: &Cell<usize>, done: impl Fn() -> bool) {
    let (mut last, mut since) = (got.get(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if done() {
            return;
        }
        if got.get() != last {
            (last, since) = (got.get(), Instant::now());
        } else if since.elapsed() > STALL {
            return;
        }
    }
}

fn check_received(got: usize, bytes: usize, n: usize, warnings0: u64) -> Res<()> {
    if got < n {
        let warned = WARNINGS.load(Ordering::Relaxed) - warnings0;
        return Err(format!(
            "received {got} of {n} messages ({warned} warnings from mqttproto, \
             e.g. QoS 0 messages dropped for a full subscription)"
        ));
    }
    if bytes != n * PAYLOAD_LEN {
        return Err(format!(
            "received {bytes} payload bytes, expected {}",
            n * PAYLOAD_LEN
        ));
    }
    Ok(())
}

/// Runs one phase: the async libraries on `rt`, the blocking client on this thread.
fn run_phase(
    rt: &tokio::runtime::Runtime,
    ctx: &Ctx,
    lib: Lib,
    phase: Phase,
    n: usize,
) -> Res<Sample> {
    if lib == Lib::Blocking {
        return match phase {
            Phase::Qos0 => bl_publish(ctx, n, QoS::AtMostOnce),
            Phase::Qos1 => bl_publish(ctx, n, QoS::AtLeastOnce),
            Phase::Qos0Wait => bl_publish_wait(ctx, n, QoS::AtMostOnce),
            Phase::Qos1Wait => bl_publish_wait(ctx, n, QoS::AtLeastOnce),
            // Sized N, as for the tokio client.
            Phase::Recv => bl_receive(ctx, n, Some(n), false),
            Phase::RecvDefault => bl_receive(ctx, n, None, true),
            Phase::Qos0Each | Phase::Qos1Each => Err("not applicable".into()),
        };
    }
    rt.block_on(run_async_phase(ctx, lib, phase, n))
}

async fn run_async_phase(ctx: &Ctx, lib: Lib, phase: Phase, n: usize) -> Res<Sample> {
    match (lib, phase) {
        (Lib::Mqttproto, Phase::Qos0) => mq_publish(ctx, n, QoS::AtMostOnce, false).await,
        (Lib::Mqttproto, Phase::Qos0Each) => mq_publish(ctx, n, QoS::AtMostOnce, true).await,
        (Lib::Mqttproto, Phase::Qos1Each) => mq_publish(ctx, n, QoS::AtLeastOnce, true).await,
        (Lib::Mqttproto, Phase::Qos1) => mq_publish(ctx, n, QoS::AtLeastOnce, false).await,
        // A buffer as large as the run: the client never drops, so both libraries deliver all.
        (Lib::Mqttproto, Phase::Recv) => mq_receive(ctx, n, Some(n), false).await,
        (Lib::Mqttproto, Phase::RecvDefault) => mq_receive(ctx, n, None, true).await,
        (Lib::Rumqttc, Phase::Qos0) => rq_publish(ctx, n, RQoS::AtMostOnce).await,
        (Lib::Rumqttc, Phase::Qos1) => rq_publish(ctx, n, RQoS::AtLeastOnce).await,
        (Lib::Rumqttc, Phase::Recv) => rq_receive(ctx, n).await,
        (Lib::Rumqttc, Phase::Qos0Each | Phase::Qos1Each | Phase::RecvDefault)
        | (Lib::Mqttproto | Lib::Rumqttc, Phase::Qos0Wait | Phase::Qos1Wait)
        | (Lib::Blocking, _) => Err("not applicable".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Driver and report.

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if digits == 0 => group(x.round() as u64),
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn env_list<T: Copy>(name: &str, all: &[T], key: impl Fn(T) -> &'static str) -> Vec<T> {
    match std::env::var(name) {
        Ok(v) => {
            let wanted: Vec<&str> = v.split(',').map(str::trim).collect();
            all.iter()
                .copied()
                .filter(|x| wanted.contains(&key(*x)))
                .collect()
        }
        Err(_) => all.to_vec(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Mosquitto,
    Raw,
}

impl Peer {
    fn key(self) -> &'static str {
        match self {
            Peer::Mosquitto => "mosquitto",
            Peer::Raw => "raw",
        }
    }
}

type Results = Vec<(Peer, Lib, Phase, Sample)>;

fn print_tables(
    results: &Results,
    peer: Peer,
    libs: &[Lib],
    phases: &[Phase],
    scale: f64,
    hz: u64,
) {
    let pick = |lib: Lib, phase: Phase, f: &dyn Fn(&Sample) -> Option<f64>| {
        median(
            results
                .iter()
                .filter(|(pe, l, p, _)| *pe == peer && *l == lib && *p == phase)
                .filter_map(|(_, _, _, s)| f(s))
                .collect(),
        )
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    };
    // Only the phases some selected library runs, and the ratios whose libraries both ran.
    let phases: Vec<Phase> = phases
        .iter()
        .copied()
        .filter(|p| libs.iter().any(|l| p.applies(*l)))
        .collect();
    let pairs: Vec<(Lib, Lib)> = RATIO_PAIRS
        .iter()
        .copied()
        .filter(|(a, b)| libs.contains(a) && libs.contains(b))
        .collect();
    let mut header = String::from("| case | N |");
    for lib in libs {
        header += &format!(" {} msg/s |", lib.name());
    }
    for (a, b) in &pairs {
        header += &format!(" throughput ratio {}/{} |", a.name(), b.name());
    }
    for lib in libs {
        header += &format!(" {} µs CPU/msg |", lib.name());
    }
    for (a, b) in &pairs {
        header += &format!(" CPU ratio {}/{} |", a.name(), b.name());
    }
    println!("{header}");
    let numeric = 2 * (libs.len() + pairs.len());
    println!("|---|---:|{}", "---:|".repeat(numeric));
    for &phase in &phases {
        let rate = |lib| pick(lib, phase, &|s: &Sample| Some(s.rate()));
        let cpu = |lib| pick(lib, phase, &|s: &Sample| Some(s.cpu_us_per_msg(hz)));
        let mut row = format!("| {} | {} |", phase.label(), group(phase.n(scale) as u64));
        for &lib in libs {
            row += &format!(" {} |", fmt_opt(rate(lib), 0));
        }
        for &(a, b) in &pairs {
            row += &format!(" {} |", ratio(rate(a), rate(b)));
        }
        for &lib in libs {
            row += &format!(" {} |", fmt_opt(cpu(lib), 3));
        }
        for &(a, b) in &pairs {
            row += &format!(" {} |", ratio(cpu(a), cpu(b)));
        }
        println!("{row}");
    }
    println!();
    println!("Details (medians; user/sys ticks are sampled at {hz}/s and only roughly split):");
    println!();
    println!(
        "| case | library | user ticks | sys ticks | peer busy % | peer-confirmed msg/s \
         | dropped by the client |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for &phase in &phases {
        for &lib in libs {
            if !phase.applies(lib) {
                continue;
            }
            let confirmed = |s: &Sample| s.confirmed.map(|d| s.n as f64 / d.as_secs_f64());
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                phase.key(),
                lib.name(),
                fmt_opt(pick(lib, phase, &|s: &Sample| Some(s.utime as f64)), 0),
                fmt_opt(pick(lib, phase, &|s: &Sample| Some(s.stime as f64)), 0),
                fmt_opt(pick(lib, phase, &|s: &Sample| Some(s.broker_busy(hz))), 0),
                fmt_opt(pick(lib, phase, &confirmed), 0),
                fmt_opt(pick(lib, phase, &|s: &Sample| Some(s.lost as f64)), 0),
            );
        }
    }
    println!();
}

fn main() {
    match std::env::var("MQTTPROTO_BENCH_ROLE").as_deref() {
        Ok("publisher") => std::process::exit(publisher_main()),
        Ok("peer") => std::process::exit(peer_main()),
        _ => {}
    }
    let started = Instant::now();
    let _ = tracing::subscriber::set_global_default(WarningCounter);
    let reps: usize = std::env::var("MQTTPROTO_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let scale: f64 = std::env::var("MQTTPROTO_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0);
    let libs = env_list(
        "MQTTPROTO_BENCH_LIBS",
        &[Lib::Mqttproto, Lib::Blocking, Lib::Rumqttc],
        Lib::name,
    );
    let phases = env_list(
        "MQTTPROTO_BENCH_PHASES",
        &[
            Phase::Qos0,
            Phase::Qos0Each,
            Phase::Qos0Wait,
            Phase::Qos1,
            Phase::Qos1Each,
            Phase::Qos1Wait,
            Phase::Recv,
            Phase::RecvDefault,
        ],
        Phase::key,
    );
    let peers = env_list(
        "MQTTPROTO_BENCH_PEERS",
        &[Peer::Mosquitto, Peer::Raw],
        Peer::key,
    );
    let hz = clock_ticks_per_sec();

    // Pinning: this process on core 1; the broker, the publisher and the raw peer on core 0.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want_pin = !std::env::var("MQTTPROTO_BENCH_PIN").is_ok_and(|v| v == "0");
    let pinned_ok = want_pin && cores >= 2 && pin_self(1);
    let core0 = pinned_ok.then_some(0);
    let pin_note = if pinned_ok {
        "bench process pinned to core 1; Mosquitto, the raw publisher and the raw peer to core 0 \
         (taskset)"
            .to_string()
    } else {
        format!("not pinned (cores available: {cores}, pinning wanted: {want_pin})")
    };

    // Watchdog: bounds the whole run even if something hangs outside a timeout.
    std::thread::spawn(|| {
        std::thread::sleep(HARD_LIMIT);
        eprintln!("bench: over {HARD_LIMIT:?}; aborting");
        kill_pid(PUBLISHER_PID.load(Ordering::Relaxed));
        kill_pid(BROKER_PID.load(Ordering::Relaxed));
        kill_pid(PEER_PID.load(Ordering::Relaxed));
        std::process::exit(3);
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let payload = Bytes::from(vec![b'x'; PAYLOAD_LEN]);

    let load_start = loadavg();
    let jiffies_start = cpu_jiffies();
    let cpu_start = process_cpu();
    println!("# mqttproto (tokio and blocking clients) vs rumqttc client benchmark");
    println!();
    println!(
        "payload {PAYLOAD_LEN} B, up to {reps} repetitions (median reported), scale {scale}; \
         the async clients on one current-thread tokio runtime, the blocking client on its own \
         I/O and reader threads; {pin_note}"
    );
    println!("load average at start: {load_start}");
    println!();

    let mut results: Results = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut reps_done = Vec::new();
    for &peer in &peers {
        // Keep the peer alive for the whole section.
        let (ctx, _mosquitto, _raw) = match peer {
            Peer::Mosquitto => match Mosquitto::start(core0) {
                Ok(m) => (
                    Ctx {
                        url: m.url(),
                        port: m.port,
                        core0,
                        payload: payload.clone(),
                        raw: false,
                        peer_pid: m.child.id(),
                    },
                    Some(m),
                    None,
                ),
                Err(e) => {
                    failures.push(format!("mosquitto: {e}"));
                    continue;
                }
            },
            Peer::Raw => match RawPeer::start(core0, Phase::Recv.n(scale)) {
                Ok(r) => (
                    Ctx {
                        url: format!("mqtt://127.0.0.1:{}", r.port),
                        port: r.port,
                        core0,
                        payload: payload.clone(),
                        raw: true,
                        peer_pid: r.child.id(),
                    },
                    None,
                    Some(r),
                ),
                Err(e) => {
                    failures.push(format!("raw peer: {e}"));
                    continue;
                }
            },
        };
        eprintln!("peer {}: {}", peer.key(), ctx.url);
        let mut done = 0;
        let mut last_rep = Duration::from_secs(30);
        for rep in 0..reps {
            if started.elapsed() + last_rep > REP_BUDGET {
                eprintln!(
                    "(time budget: {} stops after {rep} repetitions)",
                    peer.key()
                );
                break;
            }
            let rep_start = Instant::now();
            // Rotate the order so no library always runs first (with two libraries this
            // alternates them).
            let mut order = libs.clone();
            if !order.is_empty() {
                let k = rep % order.len();
                order.rotate_left(k);
            }
            for &lib in &order {
                for &phase in &phases {
                    if !phase.applies(lib) {
                        continue;
                    }
                    let n = phase.n(scale);
                    // Let the peer settle after the previous phase.
                    std::thread::sleep(Duration::from_millis(200));
                    let tag = format!(
                        "{} rep {} {} {}",
                        peer.key(),
                        rep + 1,
                        lib.name(),
                        phase.key()
                    );
                    match run_phase(&rt, &ctx, lib, phase, n) {
                        Ok(s) => {
                            eprintln!(
                                "{tag:<40} {:>10.0} msg/s {:>7.3} µs CPU/msg (user {} sys {} ticks, peer {:.0}% busy{})",
                                s.rate(),
                                s.cpu_us_per_msg(hz),
                                s.utime,
                                s.stime,
                                s.broker_busy(hz),
                                match s.lost {
                                    0 => String::new(),
                                    k => format!(", {k} dropped by the client"),
                                },
                            );
                            results.push((peer, lib, phase, s));
                        }
                        Err(e) => {
                            eprintln!("{tag}: FAILED: {e}");
                            failures.push(format!("{tag}: {e}"));
                        }
                    }
                }
            }
            done += 1;
            last_rep = rep_start.elapsed();
        }
        reps_done.push((peer, done));
    }
    let load_end = loadavg();
    let jiffies_end = cpu_jiffies();
    let cpu_end = process_cpu();
    drop(rt);

    for &(peer, done) in &reps_done {
        match peer {
            Peer::Mosquitto => println!(
                "## Against Mosquitto (medians of {done}; `set_tcp_nodelay true`, \
                 `max_inflight_messages 0`, `max_queued_messages 0`)"
            ),
            Peer::Raw => println!(
                "## Against the raw peer (medians of {done}): client-bound, the peer is never \
                 the bottleneck"
            ),
        }
        println!();
        print_tables(&results, peer, &libs, &phases, scale, hz);
    }
    println!(
        "A ratio a/b: throughput ratio > 1 and CPU ratio < 1 favour a. mqttproto = \
         `mqttproto::tokio::Client`, blocking = `mqttproto::blocking::Client`, rumqttc = \
         rumqttc's v5 `AsyncClient`. The blocking `publish()`-per-message rows are \
         latency-bound (one message in flight) and not comparable with the others. Peer busy = \
         the peer process's CPU time / wall time of the window."
    );
    println!();
    println!("## Machine load");
    println!();
    println!("load average: start {load_start}, end {load_end}");
    let own = match (cpu_start.ns, cpu_end.ns) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => {
            ((cpu_end.utime + cpu_end.stime) - (cpu_start.utime + cpu_start.stime)) as f64
                / hz as f64
        }
    };
    let wall = started.elapsed().as_secs_f64();
    for (i, (a, b)) in jiffies_start.iter().zip(&jiffies_end).enumerate() {
        let busy = (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64 * 100.0;
        println!("- cpu{i}: {busy:.0}% busy over the run (all processes)");
    }
    println!(
        "- this process: {own:.1} s CPU over {wall:.1} s wall ({:.0}% of one core)",
        own / wall * 100.0
    );
    if !failures.is_empty() {
        println!();
        println!("## Failures");
        println!();
        for f in &failures {
            println!("- {f}");
        }
        std::process::exit(1);
    }
}
