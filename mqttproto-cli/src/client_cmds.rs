//! `mqttproto pub` and `mqttproto sub`, in the spirit of `mosquitto_pub` / `mosquitto_sub`: the
//! common short flags mean the same (`-h` host, `-p` port, `-t` topic, `-m` message, `-q` QoS,
//! `-r` retain, `-C` count, `-v` verbose, `-u` / `-P` credentials, `-i` client id, `-k` keep
//! alive, `-W` timeout, `-D` properties).

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use mqttproto::proto::codec::{Publish, SubscribeProperties, Subscription};
use mqttproto::proto::{
    MqttString, PayloadFormat, QoS, RetainHandling, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName, UserProperty,
};
use mqttproto::tokio::client::{ClientBuilder, ConnectionEvent, Reconnect};
use mqttproto::tokio::Client;
use mqttproto::transport::{Target, TlsOptions};

/// Where and how to connect (shared by `pub` and `sub`).
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Broker URL (mqtt://, mqtts://, ws://, wss://, unix://); overrides -h and -p.
    #[arg(short = 'L', long)]
    url: Option<String>,
    /// Host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// Port (default 1883, or 8883 with TLS options).
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Client identifier (default: assigned by the broker).
    #[arg(short = 'i', long = "id")]
    client_id: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pw: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    keepalive: u16,
    /// Keep the session after disconnecting (Session Expiry Interval, seconds).
    #[arg(short = 'x', long = "session-expiry", default_value_t = 0)]
    session_expiry: u32,
    /// Resume the session (Clean Start = 0).
    #[arg(short = 'c', long = "disable-clean-session")]
    resume: bool,
    /// CA certificates (PEM) to trust; turns TLS on.
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// Client certificate (PEM); turns TLS on.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// TLS server name to verify instead of the host.
    #[arg(long = "tls-server-name")]
    tls_server_name: Option<String>,
    /// Give up after this many seconds without success.
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,
    /// MQTT 5 properties: -D COMMAND NAME VALUE, for example -D publish user-property k v,
    /// -D publish content-type text/plain, -D subscribe subscription-identifier 7.
    #[arg(short = 'D', long = "property", num_args = 3, value_names = ["COMMAND", "NAME", "VALUE"], action = clap::ArgAction::Append)]
    properties: Vec<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl ConnectArgs {
    fn tls(&self) -> bool {
        self.cafile.is_some() || self.cert.is_some()
    }

    fn target(&self) -> Result<Target, String> {
        if let Some(url) = &self.url {
            return Target::parse(url).map_err(|e| e.to_string());
        }
        let port = self.port.unwrap_or(if self.tls() { 8883 } else { 1883 });
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls() { "mqtts" } else { "mqtt" };
        Target::parse(&format!("{scheme}://{host}:{port}")).map_err(|e| e.to_string())
    }

    /// The `-D` triples for one command.
    fn props(&self, command: &str) -> Vec<(String, String)> {
        self.properties
            .chunks(3)
            .filter(|c| c.len() == 3 && c[0] == command)
            .map(|c| (c[1].clone(), c[2].clone()))
            .collect()
    }

    fn builder(&self) -> Result<ClientBuilder, String> {
        let mut b = ClientBuilder::new(self.target()?)
            .keep_alive(Duration::from_secs(u64::from(self.keepalive)))
            .session_expiry(self.session_expiry)
            .clean_start(!self.resume)
            .reconnect(Reconnect::Off);
        if let Some(id) = &self.client_id {
            b = b.client_id(id);
        }
        if let Some(u) = &self.username {
            b = b.credentials(u, Bytes::from(self.pw.clone().unwrap_or_default()));
        }
        if self.tls()
            || matches!(self.url.as_deref(), Some(u) if u.starts_with("mqtts") || u.starts_with("wss"))
        {
            b = b.tls(TlsOptions {
                system_roots: self.cafile.is_none(),
                ca_file: self.cafile.clone(),
                client_cert_file: self.cert.clone(),
                client_key_file: self.key.clone(),
                server_name: self.tls_server_name.clone(),
            });
        }
        for (name, value) in self.props("connect") {
            match name.as_str() {
                "user-property" => {
                    let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                    b = b.user_property(k, v);
                }
                "session-expiry-interval" => {
                    b = b.session_expiry(value.parse().map_err(|_| format!("bad {name}: {value}"))?)
                }
                "receive-maximum" => {
                    b = b
                        .receive_maximum(value.parse().map_err(|_| format!("bad {name}: {value}"))?)
                }
                "maximum-packet-size" => {
                    b = b.maximum_packet_size(
                        value.parse().map_err(|_| format!("bad {name}: {value}"))?,
                    )
                }
                "topic-alias-maximum" => {
                    b = b.topic_alias_maximum(
                        value.parse().map_err(|_| format!("bad {name}: {value}"))?,
                    )
                }
                other => return Err(format!("unknown connect property {other:?}")),
            }
        }
        Ok(b)
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.timeout
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s))
    }
}

fn mqtt_str(s: &str) -> Result<MqttString, String> {
    MqttString::try_from(s).map_err(|e| e.to_string())
}

/// `mqttproto pub`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct PubArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    topic: String,
    /// The message.
    #[arg(short = 'm', long, conflicts_with_all = ["file", "stdin_file", "stdin_line", "null_message"])]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Send standard input as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Send each line of standard input as a message.
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,
    /// Send an empty message.
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
    /// QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
    /// Send the message this many times.
    #[arg(short = 'C', long = "count", default_value_t = 1)]
    count: u64,
    /// Print the broker's reason code for each message.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

fn publish_template(args: &PubArgs) -> Result<Publish, String> {
    let topic = TopicName::try_from(args.topic.as_str()).map_err(|e| e.to_string())?;
    let mut p = Publish::new(topic, Bytes::new());
    p.qos = qos(args.qos);
    p.retain = args.retain;
    for (name, value) in args.conn.props("publish") {
        let props = &mut p.properties;
        match name.as_str() {
            "user-property" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                props
                    .user_properties
                    .push(UserProperty::new(mqtt_str(k)?, mqtt_str(v)?));
            }
            "content-type" => props.content_type = Some(mqtt_str(&value)?),
            "response-topic" => {
                props.response_topic =
                    Some(TopicName::try_from(value.as_str()).map_err(|e| e.to_string())?)
            }
            "correlation-data" => props.correlation_data = Some(Bytes::from(value.into_bytes())),
            "message-expiry-interval" => {
                props.message_expiry_interval =
                    Some(value.parse().map_err(|_| format!("bad {name}: {value}"))?)
            }
            "payload-format-indicator" => {
                props.payload_format_indicator = Some(match value.as_str() {
                    "0" => PayloadFormat::Unspecified,
                    "1" => PayloadFormat::Utf8,
                    _ => return Err(format!("bad {name}: {value}")),
                })
            }
            other => return Err(format!("unknown publish property {other:?}")),
        }
    }
    Ok(p)
}

async fn wait_connected(
    client: &Client,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), String> {
    let mut events = client.events();
    let wait = async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Connected { .. }) => return Ok(()),
                Ok(ConnectionEvent::Disconnected { reason, .. }) => return Err(reason),
                Ok(_) => {}
                Err(_) => return Err("client stopped".to_string()),
            }
        }
    };
    match deadline {
        Some(d) => tokio::time::timeout_at(d, wait)
            .await
            .map_err(|_| "timed out connecting".to_string())?,
        None => wait.await,
    }
}

/// Runs `mqttproto pub`.
pub async fn run_pub(args: PubArgs) -> Result<(), String> {
    let template = publish_template(&args)?;
    let client = args.conn.builder()?.build();
    let deadline = args.conn.deadline();
    wait_connected(&client, deadline).await?;
    let payloads: Vec<Bytes> = if args.stdin_line {
        let mut lines = Vec::new();
        for line in std::io::stdin().lock().lines() {
            lines.push(Bytes::from(line.map_err(|e| e.to_string())?));
        }
        lines
    } else {
        let one = if let Some(m) = &args.message {
            Bytes::from(m.clone())
        } else if let Some(f) = &args.file {
            Bytes::from(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?)
        } else if args.stdin_file {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| e.to_string())?;
            Bytes::from(v)
        } else if args.null_message {
            Bytes::new()
        } else {
            return Err("give a message: -m, -f, -s, -l or -n".into());
        };
        (0..args.count).map(|_| one.clone()).collect()
    };
    let mut pending = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let mut p = template.clone();
        p.payload = payload;
        pending.push(client.publish_message(p));
    }
    let mut failed = 0;
    for (i, outcome) in pending.into_iter().enumerate() {
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d, outcome)
                .await
                .map_err(|_| "timed out waiting for acknowledgements".to_string())?,
            None => outcome.await,
        };
        match result {
            Ok(rc) => {
                if args.verbose {
                    println!("message {}: {rc}", i + 1);
                }
                if rc.is_error() {
                    failed += 1;
                }
            }
            Err(e) => return Err(format!("message {}: {e}", i + 1)),
        }
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    if failed > 0 {
        return Err(format!("{failed} message(s) refused by the broker"));
    }
    Ok(())
}

/// `mqttproto sub`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Topic filters to subscribe to.
    #[arg(short = 't', long = "topic", required = true)]
    topics: Vec<String>,
    /// Maximum QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Exit after receiving this many messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,
    /// Print the topic before each message.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Print every message as a line of JSON-like fields (topic, QoS, retain, properties).
    #[arg(short = 'F', long = "format-verbose")]
    full: bool,
    /// Do not receive messages published by this client (No Local).
    #[arg(long = "nl")]
    no_local: bool,
    /// Keep the RETAIN flag as published (Retain As Published).
    #[arg(long = "rap")]
    retain_as_published: bool,
    /// Retain handling: 0 send, 1 send if new, 2 do not send retained messages.
    #[arg(long = "retain-handling", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    retain_handling: u8,
    /// Skip retained messages (print only new ones).
    #[arg(short = 'R', long = "no-retained")]
    no_retained: bool,
}

fn print_message(args: &SubArgs, m: &Publish) {
    let payload = String::from_utf8_lossy(&m.payload);
    if args.full {
        let p = &m.properties;
        let mut fields = vec![
            format!("topic={}", m.topic),
            format!("qos={}", m.qos as u8),
            format!("retain={}", m.retain),
        ];
        if let Some(ct) = &p.content_type {
            fields.push(format!("content-type={ct}"));
        }
        if let Some(rt) = &p.response_topic {
            fields.push(format!("response-topic={rt}"));
        }
        if let Some(cd) = &p.correlation_data {
            fields.push(format!("correlation-data={}", String::from_utf8_lossy(cd)));
        }
        if let Some(e) = p.message_expiry_interval {
            fields.push(format!("message-expiry-interval={e}"));
        }
        for id in &p.subscription_identifiers {
            fields.push(format!("subscription-identifier={}", id.get()));
        }
        for (name, value) in &p.user_properties {
            fields.push(format!("user-property={name}={value}"));
        }
        fields.push(format!("payload={payload}"));
        println!("{}", fields.join(" "));
    } else if args.verbose {
        println!("{} {payload}", m.topic);
    } else {
        println!("{payload}");
    }
}

/// Runs `mqttproto sub`.
pub async fn run_sub(args: SubArgs) -> Result<(), String> {
    let mut properties = SubscribeProperties::default();
    for (name, value) in args.conn.props("subscribe") {
        match name.as_str() {
            "subscription-identifier" => {
                let id: u32 = value.parse().map_err(|_| format!("bad {name}: {value}"))?;
                properties.subscription_identifier =
                    Some(SubscriptionId::new(id).ok_or(format!("bad {name}: {value}"))?);
            }
            "user-property" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                properties
                    .user_properties
                    .push(UserProperty::new(mqtt_str(k)?, mqtt_str(v)?));
            }
            other => return Err(format!("unknown subscribe property {other:?}")),
        }
    }
    let options = SubscriptionOptions {
        qos: qos(args.qos),
        no_local: args.no_local,
        retain_as_published: args.retain_as_published,
        retain_handling: RetainHandling::from_u8(args.retain_handling)
            .unwrap_or(RetainHandling::SendAtSubscribe),
    };
    let mut filters = Vec::new();
    for t in &args.topics {
        let filter = TopicFilter::try_from(t.as_str()).map_err(|e| format!("{t}: {e}"))?;
        filters.push(Subscription { filter, options });
    }
    let client = args.conn.builder()?.build();
    let deadline = args.conn.deadline();
    let subscribe = client.subscribe_with(filters, properties);
    let mut sub = match deadline {
        Some(d) => tokio::time::timeout_at(d, subscribe)
            .await
            .map_err(|_| "timed out subscribing".to_string())?,
        None => subscribe.await,
    }
    .map_err(|e| e.to_string())?;
    if let Some(bad) = sub.granted().iter().find(|rc| rc.is_error()) {
        return Err(format!("subscription refused: {bad}"));
    }
    let mut received = 0u64;
    loop {
        if args.count.is_some_and(|c| received >= c) {
            break;
        }
        let next = async {
            tokio::select! {
                m = sub.recv() => m,
                _ = tokio::signal::ctrl_c() => None,
            }
        };
        let msg = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(m) => m,
                Err(_) => {
                    client.disconnect().await.map_err(|e| e.to_string())?;
                    return Err("timed out waiting for messages".into());
                }
            },
            None => next.await,
        };
        let Some(msg) = msg else { break };
        if args.no_retained && msg.retain {
            continue;
        }
        print_message(&args, &msg);
        received += 1;
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    Ok(())
}
