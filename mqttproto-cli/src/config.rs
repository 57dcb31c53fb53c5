//! `mqttproto broker --config FILE`: the TOML configuration (documented in
//! docs/broker-config.md).

use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqttproto::server::{
    AclFile, BrokerConfig, ClientCertificates, ListenAddr, Listener, PasswordFile, ServerTlsOptions,
};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    listener: Vec<ListenerSection>,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    limits: LimitsSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSection {
    url: Spanned<String>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    client_ca_file: Option<Spanned<String>>,
    client_certificates: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    password_file: Option<Spanned<String>>,
    #[serde(default)]
    allow_anonymous: bool,
    acl_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_connections: Option<usize>,
    max_packet_size: Option<Spanned<u32>>,
    max_queued_messages: Option<usize>,
    receive_maximum: Option<Spanned<u16>>,
    connect_timeout: Option<Spanned<u64>>,
    topic_alias_maximum: Option<u16>,
}

/// A configuration error: "FILE:LINE: key `KEY`: MESSAGE".
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn at(&self, span: Range<usize>, key: &str, message: impl std::fmt::Display) -> String {
        format!(
            "{}:{}: key `{key}`: {message}",
            self.path.display(),
            self.line_of(span.start)
        )
    }

    /// Turns toml's error into "FILE:LINE: key `KEY`: MESSAGE", finding the key on the line
    /// the error points at, or in the message (missing and unknown fields).
    fn toml_error(&self, e: &toml::de::Error) -> String {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return format!("{}: {message}", self.path.display());
        };
        let line = self.line_of(span.start);
        let line_text = self.text.lines().nth(line - 1).unwrap_or_default().trim();
        let from_message = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"));
        let from_line = (!line_text.starts_with('['))
            .then(|| line_text.split_once('='))
            .flatten()
            .map(|(k, _)| k.trim().trim_matches('"'));
        match from_message.or(from_line) {
            Some(key) => format!("{}:{line}: key `{key}`: {message}", self.path.display()),
            None => format!("{}:{line}: {message}", self.path.display()),
        }
    }
}

/// A configuration file, read.
pub struct Loaded<A: ?Sized> {
    /// Everything but the authenticator.
    pub config: BrokerConfig<A>,
    /// The password file (`[auth] password_file`), which the caller installs as the
    /// authenticator of its driver.
    pub password_file: Option<PasswordFile>,
}

/// Reads the configuration file at `path` into `config` (listeners are appended), for either
/// driver.
pub fn load<A: ?Sized>(path: &Path, mut config: BrokerConfig<A>) -> Result<Loaded<A>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let loc = Located { path, text: &text };
    let file: File = toml::from_str(&text).map_err(|e| loc.toml_error(&e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };

    for l in file.listener {
        let url = &l.url;
        let addr: ListenAddr = url
            .get_ref()
            .parse()
            .map_err(|e| loc.at(url.span(), "url", e))?;
        let mut listener = Listener::new(addr.clone());
        let tls_keys = [
            ("cert_file", &l.cert_file),
            ("key_file", &l.key_file),
            ("client_ca_file", &l.client_ca_file),
            ("client_certificates", &l.client_certificates),
        ];
        if !addr.is_tls() {
            if let Some((key, Some(v))) = tls_keys.iter().find(|(_, v)| v.is_some()) {
                return Err(loc.at(
                    v.span(),
                    key,
                    format!("{addr} is not a TLS listener (use mqtts:// or wss://)"),
                ));
            }
            config = config.listen(listener);
            continue;
        }
        let (Some(cert), Some(key)) = (&l.cert_file, &l.key_file) else {
            let missing = if l.cert_file.is_none() {
                "cert_file"
            } else {
                "key_file"
            };
            return Err(loc.at(
                url.span(),
                missing,
                format!("missing: {addr} needs `cert_file` and `key_file`"),
            ));
        };
        let mut tls = ServerTlsOptions::new(resolve(cert.get_ref()), resolve(key.get_ref()));
        let mode = match &l.client_certificates {
            None => ClientCertificates::None,
            Some(m) => match m.get_ref().as_str() {
                "none" => ClientCertificates::None,
                "optional" => ClientCertificates::Optional,
                "required" => ClientCertificates::Required,
                other => {
                    return Err(loc.at(
                        m.span(),
                        "client_certificates",
                        format!("{other:?}: expected \"none\", \"optional\" or \"required\""),
                    ))
                }
            },
        };
        match (&l.client_ca_file, mode) {
            (Some(ca), mode) => {
                tls = tls.with_client_certificates(mode, resolve(ca.get_ref()));
            }
            (None, ClientCertificates::None) => {}
            (None, _) => {
                let span = l
                    .client_certificates
                    .as_ref()
                    .map_or(url.span(), |m| m.span());
                return Err(loc.at(
                    span,
                    "client_ca_file",
                    "missing: client certificates need a CA file",
                ));
            }
        }
        // Load the TLS files now, so that their errors point at the configuration.
        for (file_key, spanned, file) in [
            ("cert_file", cert, &tls.cert_file),
            ("key_file", key, &tls.key_file),
        ] {
            if let Err(e) = std::fs::metadata(file) {
                return Err(loc.at(spanned.span(), file_key, format!("{}: {e}", file.display())));
            }
        }
        tls.server_config()
            .map_err(|e| loc.at(url.span(), "url", format!("TLS settings: {e}")))?;
        listener = listener.with_tls(tls);
        config = config.listen(listener);
    }

    let auth = file.auth;
    let mut password_file = None;
    if let Some(p) = &auth.password_file {
        let file = PasswordFile::load(resolve(p.get_ref()))
            .map_err(|e| loc.at(p.span(), "password_file", e))?
            .allow_anonymous(auth.allow_anonymous);
        password_file = Some(file);
    }
    if let Some(p) = &auth.acl_file {
        let acl =
            AclFile::load(resolve(p.get_ref())).map_err(|e| loc.at(p.span(), "acl_file", e))?;
        config = config.with_authorizer(acl);
    }

    let limits = file.limits;
    if let Some(n) = limits.max_connections {
        config = config.with_max_connections(n);
    }
    if let Some(n) = &limits.max_packet_size {
        let max = NonZeroU32::new(*n.get_ref())
            .ok_or_else(|| loc.at(n.span(), "max_packet_size", "must be at least 1"))?;
        config = config.with_max_packet_size(max);
    }
    if let Some(n) = limits.max_queued_messages {
        config = config.with_max_queued_messages(n);
    }
    if let Some(n) = &limits.receive_maximum {
        let max = NonZeroU16::new(*n.get_ref())
            .ok_or_else(|| loc.at(n.span(), "receive_maximum", "must be at least 1"))?;
        config = config.with_receive_maximum(max);
    }
    if let Some(n) = &limits.connect_timeout {
        if *n.get_ref() == 0 {
            return Err(loc.at(n.span(), "connect_timeout", "must be at least 1 second"));
        }
        config = config.with_connect_timeout(Duration::from_secs(*n.get_ref()));
    }
    if let Some(n) = limits.topic_alias_maximum {
        config = config.with_topic_alias_maximum(n);
    }
    Ok(Loaded {
        config,
        password_file,
    })
}
