//! `mqttproto broker`: serves MQTT 5 with [`mqttproto::tokio::Broker`] (the default) or
//! [`mqttproto::blocking::Broker`] (`--driver blocking`), from the same options and
//! configuration file. The library's warnings and errors go to standard error (see `log`).

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mqttproto::server::{
    BrokerConfig, ClientCertificates, ListenAddr, Listener, PasswordFile, ServerTlsOptions,
};

/// The address served when no `--listen` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";

/// Which broker implementation serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// The async broker, on a tokio runtime.
    #[default]
    Tokio,
    /// The blocking broker: std::net and threads (two per connection), no async runtime.
    Blocking,
}

/// Options of `mqttproto broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// A TOML configuration file: listeners (TLS, WebSocket), password file, ACL file, limits.
    /// See docs/broker-config.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to listen: IP:PORT (port 0 picks a free port), mqtt://IP:PORT, mqtts://IP:PORT,
    /// ws://IP:PORT/PATH, wss://IP:PORT/PATH or unix:PATH. Repeatable; added to the
    /// configuration file's listeners. TLS listeners (mqtts://, wss://) need --cert and --key.
    /// Default (when neither gives one): 127.0.0.1:1883.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<ListenAddr>,
    /// The server's certificate chain (PEM, leaf first) for the TLS listeners given with
    /// --listen.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1) for the TLS listeners given
    /// with --listen.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Ask TLS clients for a certificate chaining to the CAs of this PEM file (clients without
    /// one are still served, unless --require-client-cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (needs --client-ca).
    #[arg(long, requires = "client_ca")]
    require_client_cert: bool,
    /// The most connections open at once; more are refused.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// The largest packet accepted from clients, in bytes (announced in CONNACK). Default: the
    /// protocol's limit.
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<NonZeroU32>,
    /// The broker implementation: `tokio` (async) or `blocking` (threads). Both serve the same
    /// listeners and read the same configuration.
    #[arg(long, value_enum, default_value_t = Driver::Tokio)]
    driver: Driver,
}

impl BrokerArgs {
    /// The configuration for either driver, and the password file to install as its
    /// authenticator.
    fn config<A: ?Sized>(self) -> Result<(BrokerConfig<A>, Option<PasswordFile>), String> {
        let mut config = BrokerConfig::<A>::default();
        let mut password_file = None;
        if let Some(path) = &self.config {
            let loaded = crate::config::load(path, config)?;
            config = loaded.config;
            password_file = loaded.password_file;
        }
        if let Some(max) = self.max_connections {
            config = config.with_max_connections(max);
        }
        let tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let mut tls = ServerTlsOptions::new(cert, key);
                if let Some(ca) = &self.client_ca {
                    let mode = if self.require_client_cert {
                        ClientCertificates::Required
                    } else {
                        ClientCertificates::Optional
                    };
                    tls = tls.with_client_certificates(mode, ca);
                }
                // Read the files now, so that a bad one is reported before anything listens.
                tls.server_config()
                    .map_err(|e| format!("TLS settings: {e}"))?;
                Some(tls)
            }
            _ => None,
        };
        if tls.is_some() && !self.listen.iter().any(ListenAddr::is_tls) {
            return Err(
                "--cert and --key apply to mqtts:// or wss:// listeners given with --listen, \
                 and there is none"
                    .into(),
            );
        }
        for addr in self.listen {
            if addr.is_tls() {
                let Some(tls) = &tls else {
                    return Err(format!("{addr} is a TLS listener: give --cert and --key"));
                };
                config = config.listen(Listener::new(addr).with_tls(tls.clone()));
            } else {
                config = config.listen(addr);
            }
        }
        if config.listeners.is_empty() {
            let addr = DEFAULT_LISTEN
                .parse::<ListenAddr>()
                .map_err(|e| e.to_string())?;
            config = config.listen(addr);
        }
        if let Some(max) = self.max_packet_size {
            config = config.with_max_packet_size(max);
        }
        Ok((config, password_file))
    }
}

/// Runs the broker until Ctrl-C or SIGTERM, then shuts it down gracefully.
pub fn run(args: BrokerArgs) -> Result<(), String> {
    crate::log::init();
    match args.driver {
        Driver::Tokio => run_tokio(args),
        Driver::Blocking => run_blocking(args),
    }
}

fn run_tokio(args: BrokerArgs) -> Result<(), String> {
    use mqttproto::tokio::broker::{Broker, BrokerConfig};

    let (mut config, password_file): (BrokerConfig, _) = args.config()?;
    if let Some(file) = password_file {
        config = config.with_authenticator(file);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let broker = Broker::bind(config).await.map_err(|e| e.to_string())?;
        // The handlers are in place before anyone learns where to connect.
        let stop = shutdown_signal().await?;
        for addr in broker.local_addrs() {
            println!("listening on {addr}");
        }
        broker.run_until(stop).await;
        Ok(())
    })
}

/// The blocking broker serves on its own threads; this thread only waits for the signal (on a
/// one-thread tokio runtime of the command-line tool: the broker itself uses none).
fn run_blocking(args: BrokerArgs) -> Result<(), String> {
    use mqttproto::blocking::broker::{Broker, BrokerConfig};

    let (mut config, password_file): (BrokerConfig, _) = args.config()?;
    if let Some(file) = password_file {
        config = config.with_authenticator(file);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let broker = Broker::bind(config).map_err(|e| e.to_string())?;
    let stop = runtime.block_on(shutdown_signal())?;
    for addr in broker.local_addrs() {
        println!("listening on {addr}");
    }
    let handle = broker
        .spawn()
        .map_err(|e| format!("starting the broker thread: {e}"))?;
    runtime.block_on(stop);
    handle.shutdown();
    Ok(())
}

/// A future that completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM. Installing the handlers
/// happens before it is returned, so that a signal sent right after start-up is not missed.
async fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send, String> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("installing the SIGINT handler: {e}"))?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    })
}
