//! Transports: where a client connects, and the byte streams it connects over.
//!
//! Supported today: TCP (`mqtt://host:port`, `tcp://host:port`, or `host:port`) and Unix domain
//! sockets (`unix:///path/to/socket`, on Unix). Other schemes are refused with
//! [`TransportError::UnsupportedScheme`].

use std::fmt;
use std::io;
#[cfg(unix)]
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The default MQTT port over TCP.
pub const DEFAULT_PORT: u16 = 1883;

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
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "mqtt://[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "mqtt://{host}:{port}"),
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
    /// A scheme this build cannot connect with.
    #[error("unsupported URL scheme {0:?} (supported: mqtt://, tcp://, unix://)")]
    UnsupportedScheme(String),
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

    /// Parses `mqtt://host[:port]`, `tcp://host[:port]`, `host[:port]`, `[v6addr]:port`, or
    /// `unix:///path`.
    pub fn parse(url: &str) -> Result<Target, TransportError> {
        let invalid = |reason| TransportError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("mqtt".to_string(), url),
        };
        match scheme.as_str() {
            "mqtt" | "tcp" => {
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.is_empty() {
                    return Err(invalid("no host"));
                }
                let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                    let (h, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
                    let port = match after.strip_prefix(':') {
                        Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
                        None if after.is_empty() => DEFAULT_PORT,
                        None => return Err(invalid("junk after ']'")),
                    };
                    (h.to_string(), port)
                } else {
                    match authority.rsplit_once(':') {
                        Some((h, p)) => {
                            (h.to_string(), p.parse().map_err(|_| invalid("bad port"))?)
                        }
                        None => (authority.to_string(), DEFAULT_PORT),
                    }
                };
                if host.is_empty() {
                    return Err(invalid("no host"));
                }
                Ok(Target::Tcp { host, port })
            }
            #[cfg(unix)]
            "unix" => {
                if rest.is_empty() {
                    return Err(invalid("no socket path"));
                }
                Ok(Target::Unix(PathBuf::from(rest)))
            }
            other => Err(TransportError::UnsupportedScheme(other.to_string())),
        }
    }
}

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed connected stream.
pub type BoxStream = Box<dyn Stream>;

/// Opens a connection to `target`. TCP connections have Nagle's algorithm off (`TCP_NODELAY`),
/// so that small packets are not delayed.
pub async fn connect(target: &Target) -> Result<BoxStream, TransportError> {
    let err = |source| TransportError::Connect {
        target: target.to_string(),
        source,
    };
    match target {
        Target::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(err)?;
            s.set_nodelay(true).map_err(err)?;
            Ok(Box::new(s))
        }
        #[cfg(unix)]
        Target::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await.map_err(err)?;
            Ok(Box::new(s))
        }
    }
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
            Target::parse("wss://h"),
            Err(TransportError::UnsupportedScheme(_))
        ));
        assert!(Target::parse("mqtt://:1").is_err());
        assert!(Target::parse("h:notaport").is_err());
        assert_eq!(Target::tcp("::1", 5).to_string(), "mqtt://[::1]:5");
    }
}
