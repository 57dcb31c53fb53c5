//! The TLS settings of a listener (`mqtts://`, `wss://`): certificate chain, key, and whether
//! to ask clients for certificates.

#[cfg(any(feature = "tls", feature = "blocking"))]
use std::io;
use std::path::PathBuf;
#[cfg(any(feature = "tls", feature = "blocking"))]
use std::sync::Arc;

#[cfg(feature = "blocking")]
use ::rustls;
#[cfg(all(feature = "tls", not(feature = "blocking")))]
use tokio_rustls::rustls;

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClientCertificates {
    /// Do not ask (the default).
    #[default]
    None,
    /// Ask; a client without one is still served, a client with an invalid one is refused.
    Optional,
    /// Ask, and refuse clients without a valid certificate (the TLS handshake fails).
    Required,
}

/// TLS settings of a listener (`mqtts://` or `wss://`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServerTlsOptions {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA certificates (PEM) client certificates must chain to. Needed unless
    /// [`client_certificates`](Self::client_certificates) is [`ClientCertificates::None`].
    pub client_ca_file: Option<PathBuf>,
    /// Whether to ask clients for a certificate.
    pub client_certificates: ClientCertificates,
}

impl ServerTlsOptions {
    /// A certificate chain and key, without client certificates.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        ServerTlsOptions {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_certificates: ClientCertificates::None,
        }
    }

    /// Asks clients for certificates that chain to the CAs of `ca_file`.
    pub fn with_client_certificates(
        mut self,
        mode: ClientCertificates,
        ca_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificates = mode;
        self.client_ca_file = Some(ca_file.into());
        self
    }

    /// Builds the rustls configuration, reading the files. Errors name the file at fault.
    #[cfg(any(feature = "tls", feature = "blocking"))]
    pub fn server_config(&self) -> io::Result<rustls::ServerConfig> {
        use rustls::server::WebPkiClientVerifier;
        use rustls::{RootCertStore, ServerConfig};
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let bad = |path: &PathBuf, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", path.display()),
            )
        };
        let read_certs = |path: &PathBuf| -> io::Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(path, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, &e))?;
            if certs.is_empty() {
                return Err(bad(path, &"no certificate in the file"));
            }
            Ok(certs)
        };
        let chain = read_certs(&self.cert_file)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| bad(&self.key_file, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let builder = match self.client_certificates {
            ClientCertificates::None => builder.with_no_client_auth(),
            mode => {
                let ca = self.client_ca_file.as_ref().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "client certificates need a CA file",
                    )
                })?;
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| bad(ca, &e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if mode == ClientCertificates::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| bad(ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(chain, key)
            .map_err(|e| bad(&self.cert_file, &e))
    }
}
