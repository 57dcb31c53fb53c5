//! Helpers for the driver tests: a Mosquitto broker on a free loopback port, and a TCP proxy
//! that can cut connections.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Whether tests that need a real peer may be skipped (only when asked explicitly).
pub fn peers_skipped() -> bool {
    std::env::var("MQTTPROTO_SKIP_PEER_TESTS").is_ok_and(|v| v == "1")
}

fn mosquitto_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Mosquitto broker for one test, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts Mosquitto with `extra` configuration lines. `None` if Mosquitto is missing and
    /// MQTTPROTO_SKIP_PEER_TESTS=1; panics (failing the test) if it is missing otherwise.
    pub fn start(extra: &str) -> Option<Mosquitto> {
        if mosquitto_bin().is_none() {
            if peers_skipped() {
                eprintln!("mosquitto not installed; skipped (MQTTPROTO_SKIP_PEER_TESTS=1)");
                return None;
            }
            panic!("mosquitto is not installed: run ./scripts/test.sh, which installs it");
        }
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("mqttproto-mosq-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut m = Mosquitto {
            port,
            dir,
            extra: extra.to_string(),
            child: None,
        };
        m.launch();
        Some(m)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let text = format!(
            // `user root`: started as root, Mosquitto would otherwise switch to the `mosquitto`
            // user, which cannot write its persistence file here (ignored when not root).
            "user root\nlistener {} 127.0.0.1\nallow_anonymous true\npersistence_location {}/\n{}\n",
            self.port,
            self.dir.display(),
            self.extra
        );
        std::fs::write(&conf, text).expect("write config");
        let child = Command::new(mosquitto_bin().expect("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM, so that persistence is written).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the same persistence directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of `upstream`; [`Proxy::cut`] drops every connection through it.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if s.load(Ordering::Relaxed) {
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, stop }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Cuts every open connection (abruptly: no DISCONNECT).
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }

    /// Refuses new connections from now on (they are accepted and closed).
    pub fn refuse(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for `cond` up to `secs` seconds.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}
