//! Server-side transports of the broker: TLS (rustls with the ring provider) and WebSocket
//! (subprotocol `mqtt`), and the handshakes run for each accepted socket.

use std::io;

#[cfg(feature = "tls")]
use bytes::Bytes;

#[cfg(feature = "tls")]
pub use crate::server::tls::{ClientCertificates, ServerTlsOptions};

/// Runs the server side of the TLS handshake; returns the stream and the DER of the client's
/// leaf certificate, if it sent one.
#[cfg(feature = "tls")]
pub(crate) async fn tls_accept<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
) -> io::Result<(tokio_rustls::server::TlsStream<S>, Option<Bytes>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let tls = acceptor.accept(stream).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Bytes::copy_from_slice(c.as_ref()));
    Ok((tls, cert))
}

/// Runs the server side of the WebSocket handshake on `path`, answering the `mqtt`
/// subprotocol when the client offers it. Other paths get 404.
#[cfg(feature = "websocket")]
#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
pub(crate) async fn ws_accept<S>(stream: S, path: &str) -> io::Result<crate::transport::WsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

    fn check(path: &str, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("no MQTT here".to_string()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offers_mqtt = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offers_mqtt {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    }
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        check(path, req, resp)
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(crate::transport::WsStream::new(ws))
}
