//! The brokers under test, behind one interface, so that every broker scenario runs against
//! both drivers: the async broker (`mqttproto::tokio::Broker`, in a runtime of its own on a
//! thread of its own) and the blocking broker (`mqttproto::blocking::Broker`).
//!
//! Scenarios take a [`Driver`], build a [`Config`] (the blocking broker's configuration type:
//! its authenticator is a plain function, which the async broker runs on tokio's blocking pool),
//! and start a [`TestBroker`]. [`per_driver!`] turns scenario functions into one test per
//! driver, in modules `tokio_broker` and `blocking_broker`.
#![allow(dead_code)]

pub mod pki;

use std::io;
use std::sync::mpsc;
use std::time::Duration;

use mqttproto::server::ListenAddr;

/// The configuration scenarios write (see the module documentation).
pub type Config = mqttproto::blocking::broker::BrokerConfig;

/// How long a broker may take to shut down before the test fails.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// Which broker runs a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `mqttproto::tokio::Broker`.
    Tokio,
    /// `mqttproto::blocking::Broker`.
    Blocking,
}

/// The same configuration for the async broker; a blocking authenticator runs on tokio's
/// blocking pool (a panic in it stays a panic of the authentication task).
pub fn to_tokio(mut config: Config) -> mqttproto::tokio::BrokerConfig {
    let auth = config.authenticator.take();
    let mut t = config.without_authenticator::<dyn mqttproto::tokio::broker::Authenticator>();
    if let Some(auth) = auth {
        t = t.with_authenticator(move |req| {
            let auth = auth.clone();
            async move {
                match tokio::task::spawn_blocking(move || auth.authenticate(req)).await {
                    Ok(verdict) => verdict,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
        });
    }
    t
}

/// A running broker of either driver; shut down gracefully on [`stop`](Self::stop) or drop.
pub struct TestBroker {
    pub driver: Driver,
    /// The addresses listened on, ports resolved.
    pub addrs: Vec<ListenAddr>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl TestBroker {
    /// Binds the listeners of `config` and serves them.
    pub fn start(driver: Driver, config: Config) -> io::Result<TestBroker> {
        match driver {
            Driver::Blocking => {
                let broker = mqttproto::blocking::Broker::bind(config)?;
                let addrs = broker.local_addrs().to_vec();
                let handle = broker.spawn()?;
                Ok(TestBroker {
                    driver,
                    addrs,
                    stop: Some(Box::new(move || {
                        let (done_tx, done) = mpsc::channel();
                        std::thread::spawn(move || {
                            handle.shutdown();
                            let _ = done_tx.send(());
                        });
                        assert!(
                            done.recv_timeout(SHUTDOWN_WAIT).is_ok(),
                            "the blocking broker shut down within {SHUTDOWN_WAIT:?}"
                        );
                    })),
                })
            }
            Driver::Tokio => {
                let config = to_tokio(config);
                let (bound_tx, bound) = mpsc::channel();
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let thread = std::thread::spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let broker = match mqttproto::tokio::Broker::bind(config).await {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = bound_tx.send(Ok(broker.local_addrs().to_vec()));
                        let handle = broker.spawn();
                        let _ = stop_rx.await;
                        let done = tokio::time::timeout(SHUTDOWN_WAIT, handle.shutdown()).await;
                        assert!(
                            done.is_ok(),
                            "the tokio broker shut down within {SHUTDOWN_WAIT:?}"
                        );
                    });
                });
                let addrs = bound
                    .recv_timeout(SHUTDOWN_WAIT)
                    .map_err(|_| io::Error::other("the tokio broker did not start"))??;
                Ok(TestBroker {
                    driver,
                    addrs,
                    stop: Some(Box::new(move || {
                        let _ = stop_tx.send(());
                        if let Err(panic) = thread.join() {
                            std::panic::resume_unwind(panic);
                        }
                    })),
                })
            }
        }
    }

    /// Like [`start`](Self::start), with a TCP listener on a free loopback port added first.
    pub fn start_tcp(driver: Driver, config: Config) -> TestBroker {
        let mut listeners = vec!["127.0.0.1:0"
            .parse::<ListenAddr>()
            .expect("an address")
            .into()];
        let mut config = config;
        listeners.append(&mut config.listeners);
        config.listeners = listeners;
        TestBroker::start(driver, config).expect("the broker binds")
    }

    /// The first listener's URL.
    pub fn url(&self) -> String {
        self.addrs[0].to_string()
    }

    /// The first TCP port listened on.
    pub fn port(&self) -> u16 {
        let port = self
            .addrs
            .iter()
            .find_map(|a| a.socket_addr())
            .map(|a| a.port())
            .expect("a TCP listener");
        assert_ne!(port, 0, "local_addrs reports the real port");
        port
    }

    /// Shuts the broker down gracefully and waits until it is done (bounded).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }

    /// [`stop`](Self::stop), from async code.
    pub async fn shutdown(mut self) {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .expect("the broker stops");
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Stop without asserting anything more.
            if let Some(stop) = self.stop.take() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(stop));
            }
        } else {
            self.stop();
        }
    }
}

/// Generates, for each scenario `fn NAME(driver: Driver)` (or `async fn` with `async:`), the
/// tests `tokio_broker::NAME` and `blocking_broker::NAME`. Attributes before a name (such as
/// `#[cfg(unix)]`) go on both tests.
#[macro_export]
macro_rules! per_driver {
    (sync: $($(#[$m:meta])* $name:ident),* $(,)?) => {
        mod tokio_broker {
            $( $(#[$m])* #[test] fn $name() { super::$name($crate::drivers::Driver::Tokio) } )*
        }
        mod blocking_broker {
            $( $(#[$m])* #[test] fn $name() { super::$name($crate::drivers::Driver::Blocking) } )*
        }
    };
    (async: $($(#[$m:meta])* $name:ident),* $(,)?) => {
        mod tokio_broker {
            $(
                $(#[$m])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::drivers::Driver::Tokio).await }
            )*
        }
        mod blocking_broker {
            $(
                $(#[$m])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::drivers::Driver::Blocking).await }
            )*
        }
    };
}
