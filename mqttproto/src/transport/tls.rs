//! TLS with rustls (ring provider): no OpenSSL, no system TLS library.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Trust the operating system's root certificates (default: yes).
    pub system_roots: bool,
    /// Also trust the CA certificates in this PEM file.
    pub ca_file: Option<PathBuf>,
    /// Present this certificate chain (PEM) to servers that ask for one…
    pub client_cert_file: Option<PathBuf>,
    /// …with this private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against, instead of the host of the URL.
    /// An IP address is fine (it must then be among the certificate's IP SANs).
    pub server_name: Option<String>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            system_roots: true,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
        }
    }
}

pub(crate) enum Error {
    Config(String),
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Io(io::Error),
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

impl TlsOptions {
    /// The rustls configuration of a client (ring provider; TLS 1.2 and 1.3); with `alpn_http`,
    /// the ALPN protocol `http/1.1` (for WebSocket over TLS).
    pub(crate) fn client_config(&self, alpn_http: bool) -> Result<ClientConfig, Error> {
        let mut roots = RootCertStore::empty();
        if self.system_roots {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(ca) = &self.ca_file {
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(Error::Config("no trusted root certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Config(
                    "a client certificate needs both a certificate and a key file".into(),
                ))
            }
        };
        if alpn_http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(config)
    }

    /// The name the server's certificate is checked against: [`TlsOptions::server_name`], or
    /// else `host`.
    pub(crate) fn server_name(&self, host: &str) -> Result<ServerName<'static>, Error> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string())
            .map_err(|e| Error::Config(format!("server name {name:?}: {e}")))
    }
}

/// Runs the TLS handshake over `tcp`.
#[cfg(feature = "tls")]
pub(crate) async fn connect(
    host: &str,
    tcp: tokio::net::TcpStream,
    options: &TlsOptions,
    websocket: bool,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Error> {
    let config = options.client_config(websocket)?;
    let server_name = options.server_name(host)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(Error::Io)
}
