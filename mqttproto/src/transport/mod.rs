//! Transports: where a client connects, and the byte streams it connects over.
//!
//! | URL | transport | default port |
//! |---|---|---|
//! | `mqtt://host:port`, `tcp://host:port`, `host:port` | TCP | 1883 |
//! | `mqtts://host:port`, `ssl://host:port` | TLS (rustls; feature `tls` or `blocking`) | 8883 |
//! | `ws://host:port/path` | WebSocket, subprotocol `mqtt` (feature `websocket` or `blocking`) | 80 |
//! | `wss://host:port/path` | WebSocket over TLS (features `websocket` and `tls`, or `blocking`) | 443 |
//! | `unix:///path/to/socket` | Unix domain socket (Unix only) | |
//!
//! The WebSocket path defaults to `/mqtt`. A bare IP address works as a TLS server name.
//!
//! [`Target`], [`TransportError`], [`TransportOptions`] and [`TlsOptions`] do not depend on an
//! async runtime: the tokio client (`connect`, feature `tokio`) and the blocking client
//! (`crate::blocking`, feature `blocking`) share them. The blocking client always has TLS and
//! WebSocket; the tokio client has them with its `tls` and `websocket` features, and reports
//! [`TransportError::UnsupportedScheme`] otherwise.

use std::fmt;
use std::io;
#[cfg(unix)]
use std::path::PathBuf;

#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncWrite};
#[cfg(feature = "tokio")]
use tokio::net::TcpStream;

/// The default MQTT port over TCP.
pub const DEFAULT_PORT: u16 = 1883;
/// The default MQTT port over TLS.
pub const DEFAULT_TLS_PORT: u16 = 8883;

#[cfg(any(feature = "tls", feature = "blocking"))]
pub(crate) mod tls;
#[cfg(feature = "websocket")]
mod ws;
#[cfg(any(feature = "tls", feature = "blocking"))]
pub use tls::TlsOptions;
#[cfg(feature = "websocket")]
pub use ws::WsStream;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// TCP to a host name or address and a port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// TLS over TCP.
    #[cfg(any(feature = "tls", feature = "blocking"))]
    Tls {
        /// Host name or IP address (also the TLS server name unless overridden).
        host: String,
        /// Port.
        port: u16,
    },
    /// WebSocket (over TLS when `tls` is set).
    #[cfg(any(feature = "websocket", feature = "blocking"))]
    WebSocket {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
        /// Request path, such as `/mqtt`.
        path: String,
        /// `wss://`.
        tls: bool,
    },
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(PathBuf),
}

fn fmt_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "mqtt://{}:{port}", fmt_host(host)),
            #[cfg(any(feature = "tls", feature = "blocking"))]
            Target::Tls { host, port } => write!(f, "mqtts://{}:{port}", fmt_host(host)),
            #[cfg(any(feature = "websocket", feature = "blocking"))]
            Target::WebSocket {
                host,
                port,
                path,
                tls,
            } => {
                let scheme = if *tls { "wss" } else { "ws" };
                write!(f, "{scheme}://{}:{port}{path}", fmt_host(host))
            }
            #[cfg(unix)]
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A target that cannot be parsed or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is not well formed.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A scheme this build cannot connect with (a transport whose cargo feature is off).
    #[error("unsupported URL scheme {0:?}")]
    UnsupportedScheme(String),
    /// The TLS configuration is unusable (unreadable or invalid certificate or key files, …).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake with {target}: {reason}")]
    WebSocket {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        source: io::Error,
    },
}

impl Target {
    /// A TCP target.
    pub fn tcp(host: impl Into<String>, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    /// Parses a URL (see the [module documentation](self) for the forms).
    pub fn parse(url: &str) -> Result<Target, TransportError> {
        let invalid = |reason| TransportError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("mqtt".to_string(), url),
        };
        #[cfg(unix)]
        if scheme == "unix" {
            if rest.is_empty() {
                return Err(invalid("no socket path"));
            }
            return Ok(Target::Unix(PathBuf::from(rest)));
        }
        let default_port = match scheme.as_str() {
            "mqtt" | "tcp" => DEFAULT_PORT,
            "mqtts" | "ssl" => DEFAULT_TLS_PORT,
            "ws" => 80,
            "wss" => 443,
            other => return Err(TransportError::UnsupportedScheme(other.to_string())),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(invalid("junk after ']'")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| invalid("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let _ = path;
        match scheme.as_str() {
            "mqtt" | "tcp" => Ok(Target::Tcp { host, port }),
            #[cfg(any(feature = "tls", feature = "blocking"))]
            "mqtts" | "ssl" => Ok(Target::Tls { host, port }),
            #[cfg(any(feature = "websocket", feature = "blocking"))]
            "ws" | "wss" => {
                if scheme == "wss" && !cfg!(any(feature = "tls", feature = "blocking")) {
                    return Err(TransportError::UnsupportedScheme(scheme));
                }
                Ok(Target::WebSocket {
                    host,
                    port,
                    path: if path.is_empty() {
                        "/mqtt".to_string()
                    } else {
                        path.to_string()
                    },
                    tls: scheme == "wss",
                })
            }
            other => Err(TransportError::UnsupportedScheme(other.to_string())),
        }
    }
}

/// Options of the transports (TLS settings).
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// TLS settings for `mqtts://` and `wss://`.
    #[cfg(any(feature = "tls", feature = "blocking"))]
    pub tls: TlsOptions,
}

/// A connected byte stream.
#[cfg(feature = "tokio")]
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
#[cfg(feature = "tokio")]
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed connected stream.
#[cfg(feature = "tokio")]
pub type BoxStream = Box<dyn Stream>;

/// Opens a connection to `target`. TCP connections have Nagle's algorithm off (`TCP_NODELAY`),
/// so that small packets are not delayed.
#[cfg(feature = "tokio")]
pub async fn connect(
    target: &Target,
    options: &TransportOptions,
) -> Result<BoxStream, TransportError> {
    let err = |source| TransportError::Connect {
        target: target.to_string(),
        source,
    };
    let _ = options;
    match target {
        Target::Tcp { host, port } => Ok(Box::new(tcp(host, *port).await.map_err(err)?)),
        #[cfg(feature = "tls")]
        Target::Tls { host, port } => {
            let s = tcp(host, *port).await.map_err(err)?;
            Ok(Box::new(
                tls::connect(host, s, &options.tls, false)
                    .await
                    .map_err(|e| match e {
                        tls::Error::Config(m) => TransportError::TlsConfig(m),
                        tls::Error::Io(e) => err(e),
                    })?,
            ))
        }
        #[cfg(all(feature = "blocking", not(feature = "tls")))]
        Target::Tls { .. } => Err(TransportError::UnsupportedScheme("mqtts".into())),
        #[cfg(feature = "websocket")]
        Target::WebSocket {
            host,
            port,
            path,
            tls,
        } => {
            let s = tcp(host, *port).await.map_err(err)?;
            let url = target.to_string();
            let ws_err = |reason: String| TransportError::WebSocket {
                target: url.clone(),
                reason,
            };
            #[cfg(feature = "tls")]
            if *tls {
                let s = tls::connect(host, s, &options.tls, true)
                    .await
                    .map_err(|e| match e {
                        tls::Error::Config(m) => TransportError::TlsConfig(m),
                        tls::Error::Io(e) => err(e),
                    })?;
                return Ok(Box::new(ws::connect(&url, s).await.map_err(ws_err)?));
            }
            #[cfg(not(feature = "tls"))]
            if *tls {
                return Err(TransportError::UnsupportedScheme("wss".into()));
            }
            let _ = (tls, path);
            Ok(Box::new(ws::connect(&url, s).await.map_err(ws_err)?))
        }
        #[cfg(all(feature = "blocking", not(feature = "websocket")))]
        Target::WebSocket { tls, .. } => Err(TransportError::UnsupportedScheme(
            if *tls { "wss" } else { "ws" }.into(),
        )),
        #[cfg(unix)]
        Target::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await.map_err(err)?;
            Ok(Box::new(s))
        }
    }
}

#[cfg(feature = "tokio")]
async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect((host, port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("localhost").unwrap(),
            Target::tcp("localhost", 1883)
        );
        assert_eq!(
            Target::parse("mqtt://h:1884").unwrap(),
            Target::tcp("h", 1884)
        );
        assert_eq!(
            Target::parse("tcp://10.0.0.1:7").unwrap(),
            Target::tcp("10.0.0.1", 7)
        );
        assert_eq!(Target::parse("[::1]:99").unwrap(), Target::tcp("::1", 99));
        assert_eq!(
            Target::parse("mqtt://[::1]").unwrap(),
            Target::tcp("::1", 1883)
        );
        #[cfg(unix)]
        assert_eq!(
            Target::parse("unix:///tmp/s.sock").unwrap(),
            Target::Unix("/tmp/s.sock".into())
        );
        assert!(matches!(
            Target::parse("gopher://h"),
            Err(TransportError::UnsupportedScheme(_))
        ));
        assert_eq!(
            Target::parse("mqtts://127.0.0.1").unwrap(),
            Target::Tls {
                host: "127.0.0.1".into(),
                port: 8883
            }
        );
        assert_eq!(
            Target::parse("ws://h:9001").unwrap().to_string(),
            "ws://h:9001/mqtt"
        );
        assert_eq!(
            Target::parse("wss://h/custom").unwrap(),
            Target::WebSocket {
                host: "h".into(),
                port: 443,
                path: "/custom".into(),
                tls: true
            }
        );
        assert!(Target::parse("mqtt://:1").is_err());
        assert!(Target::parse("h:notaport").is_err());
        assert_eq!(Target::tcp("::1", 5).to_string(), "mqtt://[::1]:5");
    }
}
