//! `mqttproto bench`: a load tool for MQTT 5 brokers, in the spirit of emqtt-bench.
//!
//! Scenarios (`--scenario`, comma-separated, default `all`):
//!
//! * `fanin`: `--publishers` clients publish `--count` messages each to one topic, one
//!   subscriber receives them all;
//! * `fanout`: one publisher sends `--fanout-count` messages to one topic that each of
//!   `--fanout-subscribers` subscribers (a list, one run per entry) receives;
//! * `latency`: one publisher sends `--latency-count` messages at `--rate` messages per second,
//!   one subscriber measures how long each took (percentiles);
//! * `large`: one publisher sends `--large-count` messages of `--large-payload` bytes to one
//!   subscriber;
//! * `idle`: `--idle-connections` clients connect and stay idle: the connect rate, and with
//!   `--broker-pid` the growth of the broker's resident memory per connection.
//!
//! The message scenarios run once per QoS in `--qos` (default `0,1`). Each payload starts with
//! the publisher's index, a sequence number and the send time, so every subscriber counts lost
//! and duplicated messages and measures latency.
//!
//! The load clients speak MQTT through the core's codec over tokio TCP streams (with
//! `TCP_NODELAY`), not through [`mqttproto::tokio::Client`]: one task per connection, writes
//! batched (64 messages per write when not paced), no per-message channel hop, so that the
//! tool costs the CPU as little as possible. (The full client's receive path costs about
//! 0.45 µs of CPU per message, see docs/PERFORMANCE.md: at two million deliveries per second
//! on the load tool's one core it would be the bottleneck.)
//!
//! Every loop is bounded by a message count and by `--max-seconds` per run.
//!
//! Output: a table on standard output, and per result one machine-readable line starting with
//! `result ` followed by `key=value` pairs (`-` where a value does not apply).

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use mqttproto::proto::codec::{
    decode, ConnAck, Connect, ConnectProperties, Disconnect, Publish, PublishAck, Subscribe,
    SubscribeProperties, Subscription,
};
use mqttproto::proto::{
    MqttString, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

const V5: ProtocolVersion = ProtocolVersion::V5;
/// The largest packet the load clients accept (the protocol's limit).
const MAX_PACKET: u32 = 268_435_460;
/// Bytes at the start of every payload: publisher index (4), sequence number (8), send time in
/// nanoseconds since the tool started (8).
const HEADER: usize = 20;
/// Messages encoded into one write by a publisher that is not paced.
const WRITE_BATCH: usize = 64;
/// How long subscribers wait for more after the publishers finished.
const QUIET: Duration = Duration::from_secs(2);
/// How long one TCP connect, CONNECT/CONNACK or SUBSCRIBE/SUBACK exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being opened at once in the `idle` scenario.
const CONNECT_CONCURRENCY: usize = 64;
/// File descriptors the tool needs beyond its idle connections.
const SPARE_FDS: u64 = 256;

/// What `mqttproto bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Many publishers, one subscriber.
    Fanin,
    /// One publisher, many subscribers.
    Fanout,
    /// Latency percentiles at a fixed rate.
    Latency,
    /// Large messages.
    Large,
    /// Idle connections: connect rate and broker memory per connection.
    Idle,
    /// All of the above (idle first, while the broker's memory is fresh).
    All,
}

/// Options of `mqttproto bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// Broker host (an IP address or a name).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// QoS levels to run the message scenarios at, comma-separated (0 or 1).
    #[arg(short = 'q', long, value_delimiter = ',', default_value = "0,1")]
    qos: Vec<u8>,
    /// Payload size in bytes (at least 20) for fanin, fanout and latency.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Publishers in the fanin scenario.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages per publisher in the fanin scenario.
    #[arg(short = 'n', long, default_value_t = 50_000)]
    count: u64,
    /// Subscriber counts of the fanout scenario, comma-separated (one run each).
    #[arg(long, value_delimiter = ',', default_value = "16,100")]
    fanout_subscribers: Vec<usize>,
    /// Messages the fanout publisher sends.
    #[arg(long, default_value_t = 10_000)]
    fanout_count: u64,
    /// Messages per second in the latency scenario.
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// Messages sent in the latency scenario.
    #[arg(long, default_value_t = 10_000)]
    latency_count: u64,
    /// Payload size of the large scenario, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    large_payload: usize,
    /// Messages sent in the large scenario.
    #[arg(long, default_value_t = 50)]
    large_count: u64,
    /// Connections opened in the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// How long the idle connections are held after the last one connected, in seconds (the
    /// broker's memory is read at the end).
    #[arg(long, default_value_t = 2)]
    idle_hold: u64,
    /// The broker's process id: the idle scenario reads its VmRSS (/proc/PID/status) before
    /// and after connecting, and reports the growth per connection.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// The longest one run may take, in seconds; what has not arrived by then counts as lost.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// A label printed with each result (e.g. the broker's name).
    #[arg(long, default_value = "broker")]
    label: String,
    /// Only print the machine-readable `result` lines.
    #[arg(long)]
    quiet: bool,
}

/// One measured run.
#[derive(Debug, Default, Clone)]
struct Outcome {
    scenario: &'static str,
    qos: Option<u8>,
    publishers: usize,
    subscribers: usize,
    payload: usize,
    /// Messages the publishers sent.
    sent: u64,
    /// Deliveries expected (sent × subscribers).
    expected: u64,
    /// Distinct deliveries received.
    received: u64,
    lost: u64,
    duplicated: u64,
    /// PUBACKs with an error reason code.
    refused: u64,
    seconds: f64,
    /// Latency percentiles in microseconds: p50, p90, p99, max.
    latency: Option<[f64; 4]>,
    connections: Option<usize>,
    connect_per_s: Option<f64>,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
}

impl Outcome {
    fn msg_per_s(&self) -> Option<f64> {
        (self.seconds > 0.0 && self.expected > 0).then(|| self.received as f64 / self.seconds)
    }

    fn mib_per_s(&self) -> Option<f64> {
        self.msg_per_s()
            .map(|r| r * self.payload as f64 / f64::from(1u32 << 20))
    }

    fn bytes_per_conn(&self) -> Option<f64> {
        match (self.rss_before_kib, self.rss_after_kib, self.connections) {
            (Some(b), Some(a), Some(n)) if n > 0 => Some((a as f64 - b as f64) * 1024.0 / n as f64),
            _ => None,
        }
    }

    fn line(&self, label: &str) -> String {
        fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "-".to_string(), |v| v.to_string())
        }
        fn optf(v: Option<f64>, digits: usize) -> String {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
        }
        let lat = |i: usize| optf(self.latency.map(|l| l[i]), 1);
        format!(
            "result label={label} scenario={} qos={} publishers={} subscribers={} payload={} \
             sent={} expected={} received={} lost={} duplicated={} refused={} seconds={:.3} \
             msg_per_s={} mib_per_s={} p50_us={} p90_us={} p99_us={} max_us={} connections={} \
             connect_per_s={} rss_before_kib={} rss_after_kib={} bytes_per_conn={}",
            self.scenario,
            opt(self.qos),
            self.publishers,
            self.subscribers,
            self.payload,
            self.sent,
            self.expected,
            self.received,
            self.lost,
            self.duplicated,
            self.refused,
            self.seconds,
            optf(self.msg_per_s(), 0),
            optf(self.mib_per_s(), 1),
            lat(0),
            lat(1),
            lat(2),
            lat(3),
            opt(self.connections),
            optf(self.connect_per_s, 0),
            opt(self.rss_before_kib),
            opt(self.rss_after_kib),
            optf(self.bytes_per_conn(), 0),
        )
    }

    fn table_row(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
        let lat = |i: usize| f(self.latency.map(|l| l[i]), 0);
        let name = match self.scenario {
            "fanin" => format!("fanin {}:1", self.publishers),
            "fanout" => format!("fanout 1:{}", self.subscribers),
            "idle" => format!("idle {}", self.connections.unwrap_or(0)),
            other => other.to_string(),
        };
        format!(
            "{:<14} {:>3} {:>8} {:>10} {:>10} {:>7} {:>5} {:>11} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}",
            name,
            self.qos.map_or_else(|| "-".into(), |q| q.to_string()),
            self.payload,
            self.expected,
            self.received,
            self.lost,
            self.duplicated,
            f(self.msg_per_s(), 0),
            f(self.mib_per_s(), 1),
            lat(0),
            lat(1),
            lat(2),
            lat(3),
            f(self.connect_per_s, 0),
            f(self.bytes_per_conn(), 0),
        )
    }
}

const TABLE_HEADER: &str = "scenario       qos  payload   expected   received    lost   dup       msg/s    MiB/s  p50 µs  p90 µs  p99 µs  max µs   conn/s  B/conn";

/// Runs `mqttproto bench`.
pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.payload < HEADER {
        return Err(format!("--payload must be at least {HEADER} bytes"));
    }
    if args.large_payload < HEADER {
        return Err(format!("--large-payload must be at least {HEADER} bytes"));
    }
    for q in &args.qos {
        if *q > 1 {
            return Err(format!("--qos {q}: only 0 and 1 are supported"));
        }
    }
    if args.rate == 0 {
        return Err("--rate must be above 0".into());
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(run_all(args))
}

fn wants(args: &BenchArgs, s: Scenario) -> bool {
    args.scenario.contains(&s) || args.scenario.contains(&Scenario::All)
}

async fn run_all(args: BenchArgs) -> Result<(), String> {
    let addr = resolve(&args.host, args.port).await?;
    let bench = Bench {
        addr,
        origin: Instant::now(),
        max: Duration::from_secs(args.max_seconds.max(1)),
        tag: format!("{}-{}", std::process::id(), args.label),
    };
    if !args.quiet {
        println!("mqttproto bench against {addr} ({})", args.label);
        println!("{TABLE_HEADER}");
    }
    let report = |o: &Outcome| {
        if !args.quiet {
            println!("{}", o.table_row());
        }
        println!("{}", o.line(&args.label));
    };
    if wants(&args, Scenario::Idle) {
        report(&bench.idle(&args).await?);
    }
    for &q in &args.qos {
        let qos = QoS::from_u8(q).ok_or("bad QoS")?;
        if wants(&args, Scenario::Fanin) {
            let run = Run::new("fanin", qos, args.publishers, 1, args.payload, args.count);
            report(&bench.throughput(run).await?);
        }
        if wants(&args, Scenario::Fanout) {
            for &subs in &args.fanout_subscribers {
                let run = Run::new("fanout", qos, 1, subs, args.payload, args.fanout_count);
                report(&bench.throughput(run).await?);
            }
        }
        if wants(&args, Scenario::Latency) {
            let mut run = Run::new("latency", qos, 1, 1, args.payload, args.latency_count);
            run.rate = Some(args.rate);
            run.latency = true;
            report(&bench.throughput(run).await?);
        }
        if wants(&args, Scenario::Large) {
            let mut run = Run::new("large", qos, 1, 1, args.large_payload, args.large_count);
            run.latency = true;
            report(&bench.throughput(run).await?);
        }
    }
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

// ---- a minimal MQTT 5 connection over the core's codec ----------------------------------

/// One load client's connection: a TCP stream, what was read but not yet decoded, and what is
/// encoded but not yet written.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// Connects, sends CONNECT and waits for a successful CONNACK.
    async fn open(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
    ) -> Result<(Conn, ConnAck), String> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let stream = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        };
        let connect = Connect {
            protocol_version: V5,
            clean_start: true,
            keep_alive,
            client_id: MqttString::try_from(client_id).map_err(|e| e.to_string())?,
            properties: ConnectProperties {
                receive_maximum: NonZeroU16::new(u16::MAX),
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        conn.send(&Packet::Connect(Box::new(connect)))?;
        conn.flush().await?;
        match timeout_at(deadline, conn.next()).await {
            Err(_) => Err("no CONNACK in time".into()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Packet::ConnAck(ack))) if !ack.reason_code.is_error() => Ok((conn, *ack)),
            Ok(Ok(Packet::ConnAck(ack))) => Err(format!("connection refused: {}", ack.reason_code)),
            Ok(Ok(other)) => Err(format!("expected CONNACK, got {:?}", other.packet_type())),
        }
    }

    /// Subscribes to `filter` and waits for a successful SUBACK.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        let filter = TopicFilter::try_from(filter).map_err(|e| e.to_string())?;
        let packet_id = PacketId::new(1).ok_or("packet id")?;
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: SubscribeProperties::default(),
            subscriptions: vec![Subscription::new(filter, qos)],
        }))?;
        self.flush().await?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            match timeout_at(deadline, self.next()).await {
                Err(_) => return Err("no SUBACK in time".into()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Packet::SubAck(ack))) => {
                    return match ack.reason_codes.first() {
                        Some(code) if !code.is_error() => Ok(()),
                        Some(code) => Err(format!("subscription refused: {code}")),
                        None => Err("SUBACK without a reason code".into()),
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        packet
            .encode(&mut self.wbuf, V5)
            .map_err(|e| format!("encoding {:?}: {e}", packet.packet_type()))
    }

    async fn flush(&mut self) -> Result<(), String> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| format!("writing: {e}"))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next packet already read, if any.
    fn decoded(&mut self) -> Result<Option<Packet>, String> {
        decode(&mut self.rbuf, V5, MAX_PACKET)
            .map_err(|e| format!("bad packet from the broker: {e}"))
    }

    /// Reads once (cancel safe).
    async fn read_more(&mut self) -> Result<(), String> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err("the broker closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("reading: {e}")),
        }
    }

    /// The next packet: writes what is pending first, then reads until a packet is complete.
    async fn next(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self.decoded()? {
                return Ok(p);
            }
            self.flush().await?;
            self.read_more().await?;
        }
    }

    async fn close(mut self) {
        if self
            .send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
    }
}

// ---- payloads and what subscribers saw -------------------------------------------------

fn payload(len: usize, publisher: u32, seq: u64, sent_ns: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_u32(publisher);
    b.put_u64(seq);
    b.put_u64(sent_ns);
    b.resize(len, b'x');
    b.freeze()
}

/// One subscriber's record: a bit per (publisher, sequence number).
struct Seen {
    bits: Vec<Vec<u64>>,
    count: u64,
    distinct: u64,
    duplicated: u64,
    latencies_ns: Vec<u64>,
    last: Option<Instant>,
}

impl Seen {
    fn new(publishers: usize, count: u64, latency: bool) -> Seen {
        let words = count.div_ceil(64) as usize;
        Seen {
            bits: vec![vec![0; words]; publishers],
            count,
            distinct: 0,
            duplicated: 0,
            latencies_ns: if latency {
                Vec::with_capacity(count.min(1 << 20) as usize)
            } else {
                Vec::new()
            },
            last: None,
        }
    }

    /// Records one payload; ignores payloads that are not ours (too short, unknown publisher).
    fn record(&mut self, mut payload: &[u8], now_ns: u64, latency: bool) {
        if payload.len() < HEADER {
            return;
        }
        let publisher = payload.get_u32() as usize;
        let seq = payload.get_u64();
        let sent_ns = payload.get_u64();
        let Some(words) = self.bits.get_mut(publisher) else {
            return;
        };
        if seq >= self.count {
            return;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let Some(word) = words.get_mut(w) else {
            return;
        };
        if *word & bit != 0 {
            self.duplicated += 1;
            return;
        }
        *word |= bit;
        self.distinct += 1;
        if latency {
            self.latencies_ns.push(now_ns.saturating_sub(sent_ns));
        }
    }
}

fn percentiles(mut ns: Vec<u64>) -> Option<[f64; 4]> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let at = |p: f64| {
        let i = ((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    Some([at(0.50), at(0.90), at(0.99), at(1.0)])
}

// ---- scenarios ---------------------------------------------------------------------------

/// What one message run does.
#[derive(Debug, Clone)]
struct Run {
    scenario: &'static str,
    qos: QoS,
    publishers: usize,
    subscribers: usize,
    payload: usize,
    /// Messages per publisher.
    count: u64,
    /// Messages per second per publisher; unpaced when `None`.
    rate: Option<u32>,
    /// Record latencies.
    latency: bool,
}

impl Run {
    fn new(
        scenario: &'static str,
        qos: QoS,
        publishers: usize,
        subscribers: usize,
        payload: usize,
        count: u64,
    ) -> Run {
        Run {
            scenario,
            qos,
            publishers,
            subscribers,
            payload,
            count,
            rate: None,
            latency: false,
        }
    }
}

struct Bench {
    addr: SocketAddr,
    origin: Instant,
    max: Duration,
    tag: String,
}

/// What a publisher reports.
struct Published {
    sent: u64,
    refused: u64,
}

impl Bench {
    async fn throughput(&self, run: Run) -> Result<Outcome, String> {
        let topic = format!("bench/{}/{}/{}", self.tag, run.scenario, run.subscribers);
        let qos_n = run.qos as u8;
        let deadline = Instant::now() + self.max + HANDSHAKE_TIMEOUT;
        // Subscribers first, each subscribed before any publisher starts.
        let mut subs = Vec::with_capacity(run.subscribers);
        for i in 0..run.subscribers {
            let id = format!("{}-{}-q{qos_n}-s{i}", self.tag, run.scenario);
            let (mut conn, _) = Conn::open(self.addr, &id, 300).await?;
            conn.subscribe(&topic, run.qos).await?;
            subs.push(conn);
        }
        let mut pubs = Vec::with_capacity(run.publishers);
        for i in 0..run.publishers {
            let id = format!("{}-{}-q{qos_n}-p{i}", self.tag, run.scenario);
            pubs.push(Conn::open(self.addr, &id, 300).await?);
        }
        let done = Arc::new(AtomicBool::new(false));
        let origin = self.origin;
        let start = Instant::now();
        let run_deadline = start + self.max;
        let mut sub_tasks = tokio::task::JoinSet::new();
        for conn in subs {
            let run = run.clone();
            let done = done.clone();
            sub_tasks.spawn(subscriber(conn, run, done, origin, run_deadline));
        }
        let mut pub_tasks = tokio::task::JoinSet::new();
        let topic_name = TopicName::try_from(topic.as_str()).map_err(|e| e.to_string())?;
        for (i, (conn, ack)) in pubs.into_iter().enumerate() {
            let window = ack
                .properties
                .receive_maximum
                .map_or(u16::MAX, NonZeroU16::get)
                .min(u16::MAX - 1);
            let p = Publisher {
                conn,
                index: i as u32,
                run: run.clone(),
                topic: topic_name.clone(),
                window,
                origin,
                deadline: run_deadline,
            };
            pub_tasks.spawn(p.run());
        }
        let mut sent = 0;
        let mut refused = 0;
        let mut first_error = None;
        while let Some(joined) = timeout_at(deadline, pub_tasks.join_next())
            .await
            .map_err(|_| "publishers did not finish in time")?
        {
            match joined.map_err(|e| format!("publisher task: {e}"))? {
                Ok(p) => {
                    sent += p.sent;
                    refused += p.refused;
                }
                Err(e) => {
                    first_error.get_or_insert(format!("a publisher: {e}"));
                }
            }
        }
        done.store(true, Ordering::Release);
        let mut outcome = Outcome {
            scenario: run.scenario,
            qos: Some(qos_n),
            publishers: run.publishers,
            subscribers: run.subscribers,
            payload: run.payload,
            sent,
            expected: sent * run.subscribers as u64,
            refused,
            ..Outcome::default()
        };
        let mut latencies = Vec::new();
        let mut last = start;
        while let Some(joined) = timeout_at(deadline + QUIET, sub_tasks.join_next())
            .await
            .map_err(|_| "subscribers did not finish in time")?
        {
            let (seen, error) = joined.map_err(|e| format!("subscriber task: {e}"))?;
            outcome.received += seen.distinct;
            outcome.duplicated += seen.duplicated;
            if let Some(t) = seen.last {
                last = last.max(t);
            }
            latencies.extend(seen.latencies_ns);
            if let Some(e) = error {
                first_error.get_or_insert(format!("a subscriber: {e}"));
            }
        }
        if let Some(e) = first_error {
            eprintln!("warning: {} qos {qos_n}: {e}", run.scenario);
        }
        outcome.lost = outcome.expected.saturating_sub(outcome.received);
        outcome.seconds = last.duration_since(start).as_secs_f64();
        outcome.latency = percentiles(latencies);
        Ok(outcome)
    }

    async fn idle(&self, args: &BenchArgs) -> Result<Outcome, String> {
        let n = args.idle_connections;
        raise_fd_limit(n as u64 + SPARE_FDS)?;
        let rss_before = match args.broker_pid {
            Some(pid) => Some(vm_rss_kib(pid)?),
            None => None,
        };
        let start = Instant::now();
        let deadline = start + self.max;
        let mut conns = Vec::with_capacity(n);
        let mut opening = tokio::task::JoinSet::new();
        let mut next = 0;
        while conns.len() < n {
            while next < n && opening.len() < CONNECT_CONCURRENCY {
                let id = format!("{}-idle-{next}", self.tag);
                let addr = self.addr;
                opening.spawn(async move { Conn::open(addr, &id, 600).await });
                next += 1;
            }
            match timeout_at(deadline, opening.join_next()).await {
                Err(_) => {
                    return Err(format!(
                        "idle: only {} of {n} connections open after {} s",
                        conns.len(),
                        self.max.as_secs()
                    ))
                }
                Ok(None) => break,
                Ok(Some(joined)) => {
                    let (conn, _) = joined
                        .map_err(|e| format!("connect task: {e}"))?
                        .map_err(|e| format!("idle connection {}: {e}", conns.len() + 1))?;
                    conns.push(conn);
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(args.idle_hold)).await;
        let rss_after = match args.broker_pid {
            Some(pid) => Some(vm_rss_kib(pid)?),
            None => None,
        };
        let count = conns.len();
        drop(conns);
        Ok(Outcome {
            scenario: "idle",
            connections: Some(count),
            connect_per_s: Some(count as f64 / seconds.max(1e-9)),
            seconds,
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            ..Outcome::default()
        })
    }
}

/// A subscriber: counts what arrives (acknowledging QoS 1) until it has everything, the
/// publishers are done and nothing came for [`QUIET`], or the run's deadline. What it saw
/// counts even when the connection failed (a broker may drop a subscriber that does not keep
/// up): the error comes with it.
async fn subscriber(
    mut conn: Conn,
    run: Run,
    done: Arc<AtomicBool>,
    origin: Instant,
    deadline: Instant,
) -> (Seen, Option<String>) {
    let mut seen = Seen::new(run.publishers, run.count, run.latency);
    let result = receive(&mut conn, &mut seen, &run, &done, origin, deadline).await;
    conn.close().await;
    (seen, result.err())
}

async fn receive(
    conn: &mut Conn,
    seen: &mut Seen,
    run: &Run,
    done: &AtomicBool,
    origin: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let all = run.count * run.publishers as u64;
    // When the publishers were first seen finished; then the subscriber waits until nothing
    // came for QUIET since that moment and since the last message.
    let mut done_at: Option<Instant> = None;
    let mut last_activity = Instant::now();
    while seen.distinct < all {
        let wait_until = match done_at {
            Some(d) => (d.max(last_activity) + QUIET).min(deadline),
            // Wake up now and then to notice that the publishers finished.
            None => (Instant::now() + Duration::from_millis(250)).min(deadline),
        };
        let packet = match timeout_at(wait_until, conn.next()).await {
            Ok(p) => p?,
            Err(_) if Instant::now() >= deadline => break,
            Err(_) if done_at.is_some() => break,
            Err(_) => {
                if done.load(Ordering::Acquire) {
                    done_at = Some(Instant::now());
                }
                continue;
            }
        };
        last_activity = Instant::now();
        if let Packet::Publish(p) = packet {
            let now = Instant::now();
            seen.last = Some(now);
            seen.record(&p.payload, (now - origin).as_nanos() as u64, run.latency);
            if let Some(id) = p.packet_id {
                conn.send(&Packet::PubAck(PublishAck::new(id)))?;
            }
        }
    }
    Ok(())
}

/// A publisher: sends `run.count` messages, at most `window` unacknowledged at QoS 1.
struct Publisher {
    conn: Conn,
    index: u32,
    run: Run,
    topic: TopicName,
    window: u16,
    origin: Instant,
    deadline: Instant,
}

impl Publisher {
    async fn run(mut self) -> Result<Published, String> {
        let count = self.run.count;
        let qos1 = self.run.qos != QoS::AtMostOnce;
        let mut in_use = vec![false; 1 << 16];
        let mut next_id: u16 = 0;
        let mut in_flight: u32 = 0;
        let mut sent: u64 = 0;
        let mut refused: u64 = 0;
        let mut stalled = false;
        let start = Instant::now();
        let period = self
            .run
            .rate
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let batch = if self.run.payload > 64 * 1024 {
            1
        } else {
            WRITE_BATCH
        } as u64;
        loop {
            let now = Instant::now();
            if now >= self.deadline || (sent == count && in_flight == 0) {
                break;
            }
            // How many may go now: the count, the pacing, the window.
            let due = match period {
                Some(p) => ((now - start).as_secs_f64() / p.as_secs_f64()) as u64 + 1,
                None => count,
            };
            let mut n = due.min(count).saturating_sub(sent).min(batch);
            if qos1 {
                n = n.min(u64::from(u32::from(self.window).saturating_sub(in_flight)));
            }
            for _ in 0..n {
                let packet_id = if qos1 {
                    // At most `window` < 65535 ids are in use, so a free one exists.
                    loop {
                        next_id = next_id.checked_add(1).unwrap_or(1);
                        if !in_use[usize::from(next_id)] {
                            break;
                        }
                    }
                    in_use[usize::from(next_id)] = true;
                    in_flight += 1;
                    PacketId::new(next_id)
                } else {
                    None
                };
                let sent_ns = (Instant::now() - self.origin).as_nanos() as u64;
                let mut publish = Publish::new(
                    self.topic.clone(),
                    payload(self.run.payload, self.index, sent, sent_ns),
                );
                publish.qos = self.run.qos;
                publish.packet_id = packet_id;
                self.conn.send(&Packet::Publish(publish))?;
                sent += 1;
            }
            if n > 0 {
                // A broker that stops reading must not hold the publisher past the deadline;
                // what was not written by then counts as lost.
                match timeout_at(self.deadline, self.conn.flush()).await {
                    Ok(written) => written?,
                    Err(_) => {
                        // Part of the buffer may be written: the stream is cut mid-packet.
                        stalled = true;
                        break;
                    }
                }
            }
            // Acknowledgements that already arrived.
            if qos1 {
                loop {
                    match self.conn.stream.try_read_buf(&mut self.conn.rbuf) {
                        Ok(0) => return Err("the broker closed the connection".into()),
                        Ok(_) => {
                            if self.conn.rbuf.capacity() - self.conn.rbuf.len() < 4096 {
                                self.conn.rbuf.reserve(64 * 1024);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("reading: {e}")),
                    }
                }
                while let Some(packet) = self.conn.decoded()? {
                    ack(packet, &mut in_use, &mut in_flight, &mut refused);
                }
            }
            if n > 0 && period.is_none() {
                continue;
            }
            // Nothing more may go now: wait for an acknowledgement or the next message's time.
            let window_full = qos1 && in_flight >= u32::from(self.window);
            let next_due = match period {
                Some(p) if sent < count && !window_full => Some(start + p.mul_f64(sent as f64)),
                _ => None,
            };
            let wake = next_due.unwrap_or(self.deadline).min(self.deadline);
            if qos1 && in_flight > 0 {
                match timeout_at(wake, self.conn.read_more()).await {
                    Ok(r) => r?,
                    Err(_) => continue,
                }
                while let Some(packet) = self.conn.decoded()? {
                    ack(packet, &mut in_use, &mut in_flight, &mut refused);
                }
            } else if next_due.is_some() {
                tokio::time::sleep_until(wake).await;
            } else if sent == count {
                break;
            }
        }
        let sent_acked = if qos1 {
            sent - u64::from(in_flight)
        } else {
            sent
        };
        if !stalled {
            self.conn.close().await;
        }
        // At QoS 1 only acknowledged messages count as sent: an unacknowledged one may or may
        // not have been delivered.
        Ok(Published {
            sent: sent_acked,
            refused,
        })
    }
}

fn ack(packet: Packet, in_use: &mut [bool], in_flight: &mut u32, refused: &mut u64) {
    if let Packet::PubAck(a) = packet {
        if let Some(slot) = in_use.get_mut(usize::from(a.packet_id.get())) {
            if *slot {
                *slot = false;
                *in_flight = in_flight.saturating_sub(1);
                if a.reason_code.is_error() {
                    *refused += 1;
                }
            }
        }
    }
}

// ---- the process's limits and the broker's memory --------------------------------------

/// Raises the soft limit on open files to at least `needed`, or says why it cannot.
fn raise_fd_limit(needed: u64) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        return Err(format!(
            "the open-file limit is too low: {needed} descriptors are needed for \
             {} idle connections, the hard limit (ulimit -Hn) is {hard}; raise it \
             (ulimit -n 65536 as root) or lower --idle-connections",
            needed - SPARE_FDS
        ));
    }
    let mut raised = limit;
    raised.current = Some(needed.max(hard.min(65_536)));
    setrlimit(Resource::Nofile, raised).map_err(|e| {
        format!(
            "the open-file limit (ulimit -n) is {soft}, below the {needed} needed, and raising \
             it failed: {e}; run ulimit -n 65536 first"
        )
    })
}

/// The resident set size of process `pid`, in KiB, from `/proc/PID/status`.
fn vm_rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_distinct_and_duplicates() {
        let mut seen = Seen::new(2, 10, true);
        seen.record(&payload(64, 0, 3, 5), 10, true);
        seen.record(&payload(64, 0, 3, 5), 12, true);
        seen.record(&payload(64, 1, 3, 5), 20, true);
        seen.record(&payload(64, 2, 3, 5), 20, true); // unknown publisher: ignored
        seen.record(&payload(64, 1, 10, 5), 20, true); // beyond the count: ignored
        seen.record(b"short", 20, true);
        assert_eq!(seen.distinct, 2);
        assert_eq!(seen.duplicated, 1);
        assert_eq!(seen.latencies_ns, vec![5, 15]);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentiles(ns), Some([50.0, 90.0, 99.0, 100.0]));
        assert_eq!(percentiles(Vec::new()), None);
    }

    #[test]
    fn result_line_has_every_key() {
        let o = Outcome {
            scenario: "fanin",
            qos: Some(1),
            expected: 10,
            received: 10,
            seconds: 0.5,
            payload: 64,
            ..Outcome::default()
        };
        let line = o.line("ours");
        assert!(line.starts_with("result label=ours scenario=fanin qos=1 "));
        assert!(line.contains(" msg_per_s=20 "));
        assert!(line.ends_with(" bytes_per_conn=-"));
    }
}
