//! Fault injection: publisher and subscriber both reach Mosquitto through a proxy that cuts
//! their connections at random byte counts (mid-packet included) and at intervals. 20,000
//! numbered messages go through persistent sessions: none may be lost at QoS 1; none lost and
//! none duplicated at QoS 2. The same for the blocking client (`blocking_*`), whose publishers
//! are threads each waiting for its acknowledgements.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Mosquitto;
use mqttproto::proto::{QoS, ReasonCode};
use mqttproto::tokio::client::Reconnect;
use mqttproto::tokio::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const MESSAGES: usize = 20_000;

/// One fault test at a time: each pushes 20,000 messages through two proxies and a broker, and
/// eight of them at once on two cores starve each other's clients (every wait is bounded, so a
/// starved run fails rather than hangs).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A proxy that forwards each connection until a random number of bytes (both directions
/// together) or a random time has passed, then cuts it.
struct FaultyProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicU64>,
    /// Bytes forwarded (client to broker, broker to client) on the last connections cut.
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    budget: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::Relaxed);
        let take = (n as u64).min(left) as usize;
        budget.fetch_sub(take as u64, Ordering::Relaxed);
        forwarded.fetch_add(take as u64, Ordering::Relaxed);
        // The cut may fall in the middle of a packet: only what the budget allows goes through.
        if w.write_all(&buf[..take]).await.is_err() || take < n {
            return;
        }
    }
}

impl FaultyProxy {
    async fn start(upstream: SocketAddr, seed: u64) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicU64::new(0));
        let counter = cuts.clone();
        let recent = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let log = recent.clone();
        tokio::spawn(async move {
            let mut rng = seed;
            while let Ok((down, _)) = listener.accept().await {
                // Cuts fall anywhere in the first 60 KB, but at least 512 bytes in: a resumed
                // session's resend burst must be able to get through sometimes. (Mosquitto
                // 2.0.11 lets its in-flight list grow past the Receive Maximum under cuts and
                // resends all of it on every resume; with tiny budgets that burst could be cut
                // every time.)
                let budget = Arc::new(AtomicU64::new(1 + xorshift(&mut rng) % 60_000));
                let lifetime = Duration::from_millis(50 + xorshift(&mut rng) % 400);
                let counter = counter.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let (sent, received) =
                        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                    tokio::select! {
                        _ = pump(dr, uw, budget.clone(), sent.clone()) => {}
                        _ = pump(ur, dw, budget, received.clone()) => {}
                        _ = tokio::time::sleep(lifetime) => {}
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if log.len() == 10 {
                        log.pop_front();
                    }
                    log.push_back((
                        sent.load(Ordering::Relaxed),
                        received.load(Ordering::Relaxed),
                    ));
                });
            }
        });
        FaultyProxy { addr, cuts, recent }
    }
}

/// The broker under the test: Mosquitto, or our own async broker.
///
/// Against Mosquitto the publisher keeps at most 20 publishes unacknowledged (as the blocking
/// test's 20 publishing threads do). With all 20,000 at once, Mosquitto 2.0.11 defeats any
/// subscriber under these cuts, and the log shows why: it puts queued messages in flight past
/// the subscriber's Receive Maximum (3,728 PUBLISHes sent on one resumed connection against a
/// Receive Maximum of 1,024, none acknowledged: a breach of [MQTT-3.3.4-9]), writes the whole
/// in-flight list on every resume before it reads, and once that list outgrows what a
/// connection carries before its cut, it fails with "Broken pipe" without reading the PUBACKs
/// the subscriber sent (thousands per connection: 9 KB up against 47 KB down). From then on
/// nothing is acknowledged, and no client progresses. With 200 outstanding, QoS 1 stalls the
/// same way, and at QoS 2 Mosquitto resends a PUBLISH (DUP set, same packet id) after it has
/// sent its PUBREL, which breaks [MQTT-4.3.3-6]: the log shows PUBLISH, our PUBREC, its PUBREL
/// (cut), its PUBREL again on the next connection, then the PUBLISH once more on the one after.
/// The receiver completed the flow when the PUBREL reached it, so the id is free and the
/// resend is a new message to it: a duplicate no receiver can tell apart.
async fn run(qos: QoS, seed: u64) {
    let Some(m) = Mosquitto::start("max_queued_messages 0\nmax_inflight_messages 50") else {
        return;
    };
    let upstream: SocketAddr = format!("127.0.0.1:{}", m.port).parse().unwrap();
    run_against(qos, seed, upstream, false, 20).await;
}

async fn run_ours(qos: QoS, seed: u64) {
    use mqttproto::tokio::broker::{Broker, BrokerConfig, ListenAddr};
    let config = BrokerConfig::default()
        .listen("127.0.0.1:0".parse::<ListenAddr>().unwrap())
        // The subscriber is cut off often: let its session queue everything meanwhile.
        .with_max_queued_messages(MESSAGES * 2);
    let broker = Broker::bind(config).await.unwrap();
    let addr = broker.local_addrs()[0].to_string();
    let upstream: SocketAddr = addr.trim_start_matches("mqtt://").parse().unwrap();
    let handle = broker.spawn();
    run_against(qos, seed, upstream, true, MESSAGES).await;
    let _ = timeout(Duration::from_secs(5), handle.shutdown()).await;
}

/// `small_window`: the subscriber announces Receive Maximum 64 (against our broker, which keeps
/// to it: its window logic is then exercised on every resume). Against Mosquitto the client's
/// default (1024) is used: Mosquitto 2.0.11 lets its in-flight list grow past a small Receive
/// Maximum when connections are cut (recorded on the wire: 84 unacknowledged PUBLISHes against
/// 64, and resend bursts of ~2,000 messages on every resume), and under this proxy's frequent
/// cuts those bursts are cut again and again.
async fn run_against(qos: QoS, seed: u64, upstream: SocketAddr, small_window: bool, window: usize) {
    let sub_proxy = FaultyProxy::start(upstream, seed).await;
    let pub_proxy = FaultyProxy::start(upstream, seed.wrapping_mul(31).wrapping_add(7)).await;
    let fast = Reconnect::Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let tag = format!("{qos:?}-{seed}");
    let sub_client = Client::builder(&format!("mqtt://{}", sub_proxy.addr))
        .unwrap()
        .client_id(&format!("faults-sub-{tag}"))
        .receive_maximum(if small_window { 64 } else { 1024 })
        .session_expiry(3600)
        .reconnect(fast.clone())
        .build();
    let mut sub = loop {
        // The first SUBSCRIBE may itself be cut; retry until it lands.
        match timeout(
            Duration::from_secs(5),
            sub_client.subscribe("faults/#", qos),
        )
        .await
        {
            Ok(Ok(s)) => break s,
            _ => continue,
        }
    };
    let pub_client = Client::builder(&format!("mqtt://{}", pub_proxy.addr))
        .unwrap()
        .client_id(&format!("faults-pub-{tag}"))
        .session_expiry(3600)
        .offline_queue(MESSAGES)
        .reconnect(fast)
        .build();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The last connection events of both clients, for the failure message.
    let history = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    for (name, client) in [("sub", &sub_client), ("pub", &pub_client)] {
        let mut events = client.events();
        let history = history.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                let mut h = history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if h.len() == 30 {
                    h.pop_front();
                }
                h.push_back(format!("{name}: {e:?}"));
            }
        });
    }
    let completed = Arc::new(AtomicU64::new(0));
    let publisher = {
        let c = pub_client.clone();
        let completed = completed.clone();
        tokio::spawn(async move {
            // `publish` queues the message at once; the future resolves with its
            // acknowledgement. At most `window` of them are outstanding.
            let mut outstanding = std::collections::VecDeque::new();
            let mut failed = 0;
            for i in 0..=MESSAGES {
                if i < MESSAGES {
                    outstanding.push_back(c.publish("faults/n", format!("{i}"), qos));
                }
                while outstanding.len() >= window || (i == MESSAGES && !outstanding.is_empty()) {
                    let Some(o) = outstanding.pop_front() else {
                        break;
                    };
                    // A QoS 2 flow whose PUBCOMP was cut off is answered 0x92 by our broker when
                    // the PUBREL is resent ("not an error during recovery", section 3.7.2.1): the
                    // client reports it as the success it is.
                    match o.await {
                        Ok(ReasonCode::Success) | Ok(ReasonCode::NoMatchingSubscribers) => {}
                        _ => failed += 1,
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            failed
        })
    };
    let mut seen = vec![0u32; MESSAGES];
    let mut distinct = 0;
    while distinct < MESSAGES {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = timeout(left, sub.recv())
            .await
            .unwrap_or_else(|_| {
                let h = history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                panic!(
                    "{qos:?}: only {distinct} of {MESSAGES} arrived in time; {} publishes \
                     completed; cuts {} + {}; subscriber's last connections (bytes up, down): \
                     {:?}; last events:\n{}",
                    completed.load(Ordering::Relaxed),
                    sub_proxy.cuts.load(Ordering::Relaxed),
                    pub_proxy.cuts.load(Ordering::Relaxed),
                    sub_proxy
                        .recent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    h.iter().cloned().collect::<Vec<_>>().join("\n")
                )
            })
            .expect("subscription open");
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        if seen[i] == 0 {
            distinct += 1;
        }
        seen[i] += 1;
    }
    let failed = timeout(
        deadline.saturating_duration_since(Instant::now()),
        publisher,
    )
    .await
    .expect("publishes complete in time")
    .unwrap();
    assert_eq!(failed, 0, "publishes that failed");
    // Late duplicates would show up now.
    while let Ok(Some(msg)) = timeout(Duration::from_millis(300), sub.recv()).await {
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        seen[i] += 1;
    }
    let duplicates: u32 = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    let cuts = sub_proxy.cuts.load(Ordering::Relaxed) + pub_proxy.cuts.load(Ordering::Relaxed);
    eprintln!("{qos:?}: {MESSAGES} messages, {cuts} connections cut, {duplicates} duplicates");
    assert!(cuts >= 10, "the proxy should have cut connections ({cuts})");
    if qos == QoS::ExactlyOnce {
        assert_eq!(duplicates, 0, "QoS 2 must not duplicate");
    }
    let _ = timeout(Duration::from_secs(5), pub_client.disconnect()).await;
    let _ = timeout(Duration::from_secs(5), sub_client.disconnect()).await;
}

#[test]
fn qos1_none_lost_through_random_cuts() {
    let _one_at_a_time = serial();
    runtime().block_on(run(QoS::AtLeastOnce, 0x1234_5678));
}

#[test]
fn qos2_none_lost_none_duplicated_through_random_cuts() {
    let _one_at_a_time = serial();
    runtime().block_on(run(QoS::ExactlyOnce, 0x0bad_cafe));
}

#[test]
fn qos1_none_lost_through_random_cuts_with_our_broker() {
    let _one_at_a_time = serial();
    runtime().block_on(run_ours(QoS::AtLeastOnce, 0x5151_0001));
}

#[test]
fn qos2_none_lost_none_duplicated_through_random_cuts_with_our_broker() {
    let _one_at_a_time = serial();
    runtime().block_on(run_ours(QoS::ExactlyOnce, 0x5151_0002));
}

/// The blocking client through the same faulty proxies, to Mosquitto or to our broker. The
/// proxies (and our broker) run on a runtime of their own; the clients use none.
fn run_blocking(qos: QoS, seed: u64, ours: bool) {
    use mqttproto::blocking::Client as BlockingClient;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut mosquitto = None;
    let mut broker = None;
    let upstream: SocketAddr = if ours {
        use mqttproto::tokio::broker::{Broker, BrokerConfig, ListenAddr};
        let config = BrokerConfig::default()
            .listen("127.0.0.1:0".parse::<ListenAddr>().unwrap())
            .with_max_queued_messages(MESSAGES * 2);
        let b = rt.block_on(Broker::bind(config)).unwrap();
        let addr = b.local_addrs()[0].socket_addr().unwrap();
        let _guard = rt.enter();
        broker = Some(b.spawn());
        addr
    } else {
        let Some(m) = Mosquitto::start("max_queued_messages 0\nmax_inflight_messages 50") else {
            return;
        };
        let addr = format!("127.0.0.1:{}", m.port).parse().unwrap();
        mosquitto = Some(m);
        addr
    };
    let sub_proxy = rt.block_on(FaultyProxy::start(upstream, seed));
    let pub_proxy = rt.block_on(FaultyProxy::start(
        upstream,
        seed.wrapping_mul(31).wrapping_add(7),
    ));
    let fast = Reconnect::Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let tag = format!("blocking-{qos:?}-{seed}");
    let sub_client = BlockingClient::builder(&format!("mqtt://{}", sub_proxy.addr))
        .unwrap()
        .client_id(&format!("faults-sub-{tag}"))
        // A small window against our broker only: see `run_against`.
        .receive_maximum(if ours { 64 } else { 1024 })
        .session_expiry(3600)
        .reconnect(fast.clone())
        .request_timeout(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let sub = loop {
        // The first SUBSCRIBE may itself be cut; retry until it lands.
        if let Ok(s) = sub_client.subscribe("faults/#", qos) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never subscribed");
    };
    let pub_client = BlockingClient::builder(&format!("mqtt://{}", pub_proxy.addr))
        .unwrap()
        .client_id(&format!("faults-pub-{tag}"))
        .session_expiry(3600)
        .offline_queue(MESSAGES)
        .reconnect(fast)
        .build()
        .unwrap();
    const THREADS: usize = 20;
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = pub_client.clone();
            std::thread::spawn(move || {
                let mut failed = 0;
                for i in (t..MESSAGES).step_by(THREADS) {
                    // See `run_against`: a PUBCOMP 0x92 after a cut is reported as Success.
                    match c.publish("faults/n", format!("{i}"), qos) {
                        Ok(ReasonCode::Success) | Ok(ReasonCode::NoMatchingSubscribers) => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut seen = vec![0u32; MESSAGES];
    let mut distinct = 0;
    while distinct < MESSAGES {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = sub
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{qos:?}: only {distinct} of {MESSAGES} arrived ({e})"));
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        if seen[i] == 0 {
            distinct += 1;
        }
        seen[i] += 1;
    }
    let failed: usize = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(failed, 0, "publishes that failed");
    // Late duplicates would show up now.
    while let Ok(msg) = sub.recv_timeout(Duration::from_millis(300)) {
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        seen[i] += 1;
    }
    let duplicates: u32 = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    let cuts = sub_proxy.cuts.load(Ordering::Relaxed) + pub_proxy.cuts.load(Ordering::Relaxed);
    eprintln!(
        "blocking {qos:?}: {MESSAGES} messages, {cuts} connections cut, {duplicates} duplicates"
    );
    assert!(cuts >= 10, "the proxy should have cut connections ({cuts})");
    if qos == QoS::ExactlyOnce {
        assert_eq!(duplicates, 0, "QoS 2 must not duplicate");
    }
    let _ = pub_client.disconnect();
    let _ = sub_client.disconnect();
    drop(sub);
    if let Some(h) = broker {
        let _ = rt.block_on(async { timeout(Duration::from_secs(5), h.shutdown()).await });
    }
    drop(mosquitto);
}

#[test]
fn blocking_qos1_none_lost_through_random_cuts() {
    let _one_at_a_time = serial();
    run_blocking(QoS::AtLeastOnce, 0x1234_5679, false);
}

#[test]
fn blocking_qos2_none_lost_none_duplicated_through_random_cuts() {
    let _one_at_a_time = serial();
    run_blocking(QoS::ExactlyOnce, 0x0bad_caff, false);
}

#[test]
fn blocking_qos1_none_lost_through_random_cuts_with_our_broker() {
    let _one_at_a_time = serial();
    run_blocking(QoS::AtLeastOnce, 0x5151_0003, true);
}

#[test]
fn blocking_qos2_none_lost_none_duplicated_through_random_cuts_with_our_broker() {
    let _one_at_a_time = serial();
    run_blocking(QoS::ExactlyOnce, 0x5151_0004, true);
}
