//! `mqttproto broker`: serves MQTT 5 with [`mqttproto::tokio::Broker`].

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::Args;
use mqttproto::tokio::broker::{
    Broker, BrokerConfig, ClientCertificates, ListenAddr, Listener, ServerTlsOptions,
};

/// The address served when no `--listen` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";

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
}

impl BrokerArgs {
    fn config(self) -> Result<BrokerConfig, String> {
        let mut config = BrokerConfig::default();
        if let Some(path) = &self.config {
            config = crate::config::load(path, config)?;
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
        Ok(config)
    }
}

/// Runs the broker until Ctrl-C or SIGTERM, then shuts it down gracefully.
pub fn run(args: BrokerArgs) -> Result<(), String> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let broker = Broker::bind(config).await.map_err(|e| e.to_string())?;
        for addr in broker.local_addrs() {
            println!("listening on {addr}");
        }
        let stop = shutdown_signal().await?;
        broker.run_until(stop).await;
        Ok(())
    })
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
