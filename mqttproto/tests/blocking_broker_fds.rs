//! The blocking broker spends one file descriptor per connection, on every transport: its
//! reader thread, writer thread and owner share the accepted socket instead of duplicating it
//! (`try_clone`), which had cost four descriptors per connection and stopped the broker near
//! 5,000 connections under a 20,000-descriptor limit.
//!
//! Linux only: the test finds the broker's side of each connection in `/proc/net/tcp` and
//! `/proc/net/unix` (the local address is the listener's) and counts the descriptors of this
//! process that refer to it (`/proc/self/fd`). The clients run in the same process, but their
//! sockets have other local addresses, so they do not count. One test in this file, so that no
//! other test opens sockets meanwhile.

#![cfg(all(feature = "blocking", target_os = "linux"))]

#[path = "drivers/pki.rs"]
#[allow(dead_code)] // `client_der` is for other tests
mod pki;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqttproto::blocking::broker::{Broker, BrokerConfig};
use mqttproto::blocking::Client;
use mqttproto::client::{ConnectionEvent, Reconnect};
use mqttproto::proto::codec::Publish;
use mqttproto::proto::{QoS, ReasonCode, TopicName};
use mqttproto::server::{ListenAddr, Listener};

use pki::Pki;

const WAIT: Duration = Duration::from_secs(10);
/// Clients per listener.
const PER_LISTENER: usize = 8;

fn listener(url: &str) -> Listener {
    Listener::new(url.parse::<ListenAddr>().expect("a listen address"))
}

/// The inodes of the sockets the broker accepted: TCP sockets (IPv4) whose local port is one of
/// `ports`, other than the listening ones, and Unix sockets bound to `unix_path`, other than the
/// listening one.
fn broker_side_sockets(ports: &[u16], unix_path: &Path) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in tcp.lines().skip(1) {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = f[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let listening = f[3] == "0A";
        let inode: u64 = f[9].parse().expect("an inode");
        if !listening && inode != 0 && port.is_some_and(|p| ports.contains(&p)) {
            inodes.insert(inode);
        }
    }
    let unix = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let path = unix_path.to_str().expect("a UTF-8 path");
    for line in unix.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        let listening = f[3] == "00010000";
        if !listening && f.get(7) == Some(&path) {
            inodes.insert(f[6].parse().expect("an inode"));
        }
    }
    inodes
}

/// How many descriptors of this process refer to each socket inode.
fn descriptors_per_socket() -> HashMap<u64, usize> {
    let mut count = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        // A descriptor closed after read_dir listed it has no link any more.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            *count.entry(inode).or_insert(0) += 1;
        }
    }
    count
}

/// For the broker's side of every connection, the number of descriptors open on it.
fn broker_descriptors(ports: &[u16], unix_path: &Path) -> Vec<usize> {
    let sockets = broker_side_sockets(ports, unix_path);
    let fds = descriptors_per_socket();
    sockets
        .iter()
        .map(|inode| fds.get(inode).copied().unwrap_or(0))
        // A socket in /proc/net but in no descriptor of ours is a connection the broker has
        // closed (TIME_WAIT, or the clients' side of it was not ours).
        .filter(|&n| n > 0)
        .collect()
}

/// Subscribe, publish at QoS 1, receive: both of the broker's threads of the connection work.
fn round_trip(c: &Client, topic: &str) {
    let sub = c.subscribe(topic, QoS::AtLeastOnce).expect("SUBACK");
    let mut p = Publish::new(TopicName::try_from(topic).unwrap(), "one descriptor");
    p.qos = QoS::AtLeastOnce;
    let rc = c.publish_message_timeout(p, Some(WAIT)).expect("PUBACK");
    assert_eq!(rc, ReasonCode::Success);
    let msg = sub.recv_timeout(WAIT).expect("a message in time");
    assert_eq!(&msg.payload[..], b"one descriptor");
}

/// A directory removed when dropped (also when the test fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn one_descriptor_per_connection_on_every_transport() {
    let pki = Pki::generate("fds");
    let dir = TempDir(std::env::temp_dir().join(format!("mqttproto-fds-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let unix_path = dir.0.join("broker.sock");
    let config = BrokerConfig::default()
        .listen(listener("mqtt://127.0.0.1:0"))
        .listen(listener("mqtts://127.0.0.1:0").with_tls(pki.server()))
        .listen(listener("ws://127.0.0.1:0/mqtt"))
        .listen(listener("wss://127.0.0.1:0/mqtt").with_tls(pki.server()))
        .listen(Listener::new(ListenAddr::Unix(unix_path.clone())));
    let broker = Broker::bind(config).expect("bind");
    let addrs: Vec<ListenAddr> = broker.local_addrs().to_vec();
    let ports: Vec<u16> = addrs
        .iter()
        .filter_map(|a| a.socket_addr().map(|s| s.port()))
        .collect();
    assert_eq!(ports.len(), 4);
    let handle = broker.spawn().expect("the broker thread");
    assert!(broker_descriptors(&ports, &unix_path).is_empty());

    let mut clients = Vec::new();
    for (l, addr) in addrs.iter().enumerate() {
        let url = addr.to_string();
        for i in 0..PER_LISTENER {
            let mut b = Client::builder(&url)
                .expect("a URL")
                .client_id(&format!("fds-{l}-{i}"))
                .reconnect(Reconnect::Off)
                .request_timeout(Some(WAIT));
            if url.starts_with("mqtts:") || url.starts_with("wss:") {
                b = b.tls(pki.client(false));
            }
            let c = b.build().expect("a client");
            match c.events().recv_timeout(WAIT) {
                Ok(ConnectionEvent::Connected { .. }) => {}
                other => panic!("{url}: not connected: {other:?}"),
            }
            clients.push((url.clone(), c));
        }
    }
    for (n, (_, c)) in clients.iter().enumerate() {
        round_trip(c, &format!("fds/{n}"));
    }

    let per_conn = broker_descriptors(&ports, &unix_path);
    assert_eq!(
        per_conn.len(),
        clients.len(),
        "the broker's side of every connection is open (descriptors per connection: {per_conn:?})"
    );
    assert!(
        per_conn.iter().all(|&n| n == 1),
        "one descriptor per connection, not {per_conn:?}"
    );

    // Disconnected clients leave no descriptor behind.
    for (_, c) in &clients {
        let _ = c.disconnect();
    }
    drop(clients);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = broker_descriptors(&ports, &unix_path);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors still open after the clients left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.shutdown();
}
