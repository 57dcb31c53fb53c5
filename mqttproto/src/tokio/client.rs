//! The async MQTT 5 client.
//!
//! A background task owns the connection and the core [`proto::Client`] state machine; a
//! [`Client`] is a cheap, cloneable handle to it.
//!
//! ```no_run
//! use mqttproto::tokio::Client;
//! use mqttproto::proto::QoS;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("mqtt://127.0.0.1:1883")?.client_id("demo").build();
//! let mut sub = client.subscribe("sensors/+", QoS::AtLeastOnce).await?;
//! let reason = client.publish("sensors/1", "21.5", QoS::AtLeastOnce).await?;
//! println!("broker answered {reason}");
//! if let Some(msg) = sub.recv().await {
//!     println!("{}: {:?}", msg.topic, msg.payload);
//! }
//! client.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! * **Subscriptions survive reconnects.** With a persistent session the broker keeps them; when
//!   it answers `session_present = false`, the client subscribes again by itself and reports
//!   [`ConnectionEvent::SessionLost`].
//! * **Knowing when a publish was acknowledged.** [`Client::publish`] resolves with the broker's
//!   reason code from PUBACK (QoS 1) or PUBCOMP (QoS 2), or once written (QoS 0). QoS 1/2
//!   messages in flight when the connection drops are resent after the reconnect, with DUP.
//! * **No deadlock from a message handler.** Commands travel over an unbounded channel to the
//!   task, which never waits for the application: publishing from inside the loop that reads a
//!   [`Subscription`] is safe.
//! * **Bounded memory, back-pressure, no QoS 1/2 loss.** Each subscription has a bounded
//!   buffer. Inbound QoS 1/2 messages are acknowledged only once they are in their
//!   subscriptions' buffers, so the broker's window (our Receive Maximum) bounds what waits for
//!   a slow consumer. When a bounded backlog fills up, the client stops reading from the socket,
//!   so TCP pushes back on the broker; only while the application awaits an acknowledgement does
//!   it keep reading (so that the wait cannot deadlock), and QoS 0 messages beyond the backlog
//!   are then dropped (at most once) and counted in a warning on the `mqttproto::client` tracing
//!   target. Messages are delivered in order: a subscription whose buffer is full holds up the
//!   messages behind it.
//!
//! # Cancel safety
//!
//! * [`Client::publish`], [`Client::publish_message`]: the message is handed to the client task
//!   when the method is *called*, not when the returned future is first polled. Dropping the
//!   future only discards the outcome; the message is still delivered per its QoS.
//! * [`Client::subscribe`]: the SUBSCRIBE is sent when called; dropping the future before it
//!   resolves unsubscribes again once the SUBACK arrives.
//! * [`Subscription::recv`]: cancel safe; a message is never lost by dropping the future.
//! * [`Client::disconnect`]: the DISCONNECT is requested when called.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::proto::codec::{Publish, SubscribeProperties, Subscription as SubscriptionRequest};
use crate::proto::{
    self, ClientEvent, ClientState, PacketId, QoS, ReasonCode, TopicFilter, TopicName,
};
use crate::transport::{self, Target, TransportError, TransportOptions};

pub use crate::client::{Authenticator, ClientError, ConnectionEvent, Message, Reconnect};
use crate::client::{Settings, SharedAuthenticator};

const TRACE: &str = "mqttproto::client";

/// Opens connections for a client: the built-in transports, or the application's own.
pub type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<transport::BoxStream>> + Send>>
        + Send
        + Sync,
>;

/// Builds a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    settings: Settings,
    connector: Option<Connector>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Where to connect and the default options.
    pub fn new(target: Target) -> ClientBuilder {
        ClientBuilder {
            settings: Settings::new(target),
            connector: None,
        }
    }

    crate::client::common_builder_methods!();

    /// Connects with the application's own transport instead of the URL's: `connector` is
    /// called for every connection attempt (an in-memory pipe in tests, a SOCKS proxy, …).
    pub fn custom_transport<F, Fut>(mut self, connector: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<transport::BoxStream>> + Send + 'static,
    {
        self.connector = Some(Arc::new(move || Box::pin(connector())));
        self
    }

    /// Starts the client task (on the current tokio runtime) and returns its handle. The
    /// connection is made in the background; see [`Client::events`].
    pub fn build(self) -> Client {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, first_events) = broadcast::channel(64);
        let s = self.settings;
        let task = Task {
            core: proto::Client::new(s.core_options()),
            connector: self.connector,
            offline_cap: s.offline_queue,
            rx,
            events: events.clone(),
            publishing: crate::client::Publishing::new(),
            deferred: VecDeque::new(),
            deferred_publishes: 0,
            pending_sub: HashMap::new(),
            subs: HashMap::new(),
            backlog: VecDeque::new(),
            dropped_qos0: 0,
            backlog_limit: s.subscription_capacity.saturating_mul(4).max(64),
            unacked: Vec::new(),
            closing: None,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64),
            target: s.target,
            transport: s.transport,
            authenticator: s.authenticator,
            reconnect: s.reconnect,
            invalid: s.invalid,
        };
        tokio::spawn(task.run());
        Client {
            inner: Arc::new(Inner {
                tx,
                events,
                first_events: std::sync::Mutex::new(Some(first_events)),
                sub_capacity: s.subscription_capacity,
            }),
        }
    }
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<ConnectionEvent>,
    /// The receiver made with the channel, before the task started: handed to the first caller
    /// of `events()`, so that it misses nothing (the connection starts at `build`).
    first_events: std::sync::Mutex<Option<broadcast::Receiver<ConnectionEvent>>>,
    sub_capacity: usize,
}

/// A handle to the client task. Cheap to clone; the task stops when every handle and every
/// [`Subscription`] is dropped (sending DISCONNECT first), or at [`Client::disconnect`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Command {
    Publish(Publish, Option<Reply<ReasonCode>>),
    Subscribe(
        Vec<SubscriptionRequest>,
        SubscribeProperties,
        u64,
        mpsc::Sender<Message>,
        Reply<Vec<ReasonCode>>,
    ),
    Unsubscribe(u64),
    Reauthenticate(Option<Bytes>, Reply<()>),
    Disconnect(Reply<()>),
}

/// The outcome of a request, resolved by the client task.
pub struct Pending<T> {
    rx: oneshot::Receiver<Result<T, ClientError>>,
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

impl Client {
    /// A builder for a client of the broker at `url` (`mqtt://host:port`, `host:port`,
    /// `unix:///path`).
    pub fn builder(url: &str) -> Result<ClientBuilder, TransportError> {
        Ok(ClientBuilder::new(Target::parse(url)?))
    }

    /// Connection events (connected, session lost, disconnected). The first call returns a
    /// receiver that has every event since [`ClientBuilder::build`] (the connection starts
    /// there, so a fast refusal is not missed); later calls see the events sent after them.
    /// A receiver that falls more than 64 events behind skips the oldest.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        if let Ok(mut first) = self.inner.first_events.lock() {
            if let Some(rx) = first.take() {
                return rx;
            }
        }
        self.inner.events.subscribe()
    }

    /// Publishes `payload` on `topic`. Resolves with the broker's reason code (PUBACK for QoS 1,
    /// PUBCOMP for QoS 2; `Success` once written for QoS 0).
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>, qos: QoS) -> Pending<ReasonCode> {
        match TopicName::try_from(topic) {
            Ok(t) => {
                let mut p = Publish::new(t, payload.into());
                p.qos = qos;
                self.publish_message(p)
            }
            Err(e) => failed(ClientError::Topic(e)),
        }
    }

    /// Publishes a message with every field and property under the caller's control.
    pub fn publish_message(&self, publish: Publish) -> Pending<ReasonCode> {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Command::Publish(publish, Some(tx)))
            .is_err()
        {
            return failed(ClientError::Closed);
        }
        Pending { rx }
    }

    /// Hands a message to the client task without waiting for anything; the outcome is not
    /// reported. Fails only if the client is closed.
    ///
    /// Messages keep their order. A QoS 1/2 message never fails for want of a packet
    /// identifier: when all 65,535 are in use it waits, with every message behind it, until
    /// acknowledgements free one. A message the client refuses (larger than the server's
    /// Maximum Packet Size, a QoS or retain the server does not support) or that finds the
    /// offline queue full is logged (`warn`, target `mqttproto::client`); use
    /// [`publish_message`](Self::publish_message) to get that outcome instead.
    pub fn try_publish(&self, publish: Publish) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(Command::Publish(publish, None))
            .map_err(|_| ClientError::Closed)
    }

    /// Subscribes to `filter` with default options. The returned [`Subscription`] yields the
    /// messages matching it, and unsubscribes when dropped. Several subscriptions to the same
    /// filter share one SUBSCRIBE and one UNSUBSCRIBE on the wire.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, ClientError> {
        let f = TopicFilter::try_from(filter)?;
        self.subscribe_with(
            vec![SubscriptionRequest::new(f, qos)],
            SubscribeProperties::default(),
        )
        .await
    }

    /// Subscribes to several filters with full options and properties.
    pub async fn subscribe_with(
        &self,
        filters: Vec<SubscriptionRequest>,
        properties: SubscribeProperties,
    ) -> Result<Subscription, ClientError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (msg_tx, msg_rx) = mpsc::channel(self.inner.sub_capacity);
        let (tx, rx) = oneshot::channel();
        let mut sub = Subscription {
            id,
            rx: msg_rx,
            granted: Vec::new(),
            filters: filters.iter().map(|s| s.filter.clone()).collect(),
            tx: self.inner.tx.clone(),
        };
        self.inner
            .tx
            .send(Command::Subscribe(filters, properties, id, msg_tx, tx))
            .map_err(|_| ClientError::Closed)?;
        sub.granted = Pending { rx }.await?;
        Ok(sub)
    }

    /// Starts re-authentication (AUTH 0x19) with new Authentication Data; the configured
    /// [`Authenticator`] answers the server's challenges. Resolves once the AUTH is written.
    pub fn reauthenticate(&self, data: Option<Bytes>) -> Pending<()> {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Command::Reauthenticate(data, tx))
            .is_err()
        {
            return failed(ClientError::Closed);
        }
        Pending { rx }
    }

    /// Sends DISCONNECT (normal disconnection), closes the connection and stops the task.
    /// Messages not yet acknowledged are abandoned (their futures fail with
    /// [`ClientError::Closed`]).
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Disconnect(tx))
            .map_err(|_| ClientError::Closed)?;
        Pending { rx }.await
    }
}

fn failed<T>(e: ClientError) -> Pending<T> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(e));
    Pending { rx }
}

/// The messages of one subscription. Unsubscribes when dropped.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Message>,
    granted: Vec<ReasonCode>,
    filters: Vec<TopicFilter>,
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("filters", &self.filters)
            .field("granted", &self.granted)
            .finish()
    }
}

impl Subscription {
    /// The next message; `None` once the client is closed. Cancel safe.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The reason codes of the SUBACK, one per filter (the granted QoS, or an error).
    pub fn granted(&self) -> &[ReasonCode] {
        &self.granted
    }

    /// The filters.
    pub fn filters(&self) -> &[TopicFilter] {
        &self.filters
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Unsubscribe(self.id));
    }
}

type PendingSubscribe = (
    u64,
    Vec<SubscriptionRequest>,
    SubscribeProperties,
    Reply<Vec<ReasonCode>>,
);

struct SubEntry {
    filters: Vec<TopicFilter>,
    tx: mpsc::Sender<Message>,
}

/// Why a connection ended, for the reconnect loop.
enum Outcome {
    /// Reconnect (per policy).
    Lost,
    /// Stop the task.
    Stop,
}

struct Task {
    /// An invalid builder input: reported, and no connection made.
    invalid: Option<String>,
    core: proto::Client,
    target: Target,
    transport: TransportOptions,
    connector: Option<Connector>,
    authenticator: Option<SharedAuthenticator>,
    reconnect: Reconnect,
    offline_cap: usize,
    rx: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<ConnectionEvent>,
    /// Commands that need a connection, waiting for one (publishes bounded by `offline_cap`).
    deferred: VecDeque<Command>,
    /// Publishes in `deferred` (counted, not scanned: a burst of publishes while disconnected
    /// would otherwise cost a scan of the queue each).
    deferred_publishes: usize,
    /// Replies awaited for publishes, and publishes waiting for a packet identifier.
    publishing: crate::client::Publishing<Reply<ReasonCode>>,
    pending_sub: HashMap<PacketId, PendingSubscribe>,
    subs: HashMap<u64, SubEntry>,
    /// Messages waiting for room in a full subscription buffer, in order, with the
    /// subscriptions they still have to reach.
    backlog: VecDeque<(Message, Vec<u64>)>,
    /// QoS 0 messages dropped because the backlog was full.
    dropped_qos0: u64,
    backlog_limit: usize,
    /// Inbound QoS 1/2 messages delivered while disconnected: acknowledged after reconnecting.
    unacked: Vec<PacketId>,
    closing: Option<Reply<()>>,
    rng: u64,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Task {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if let Some(reason) = self.invalid.take() {
                // An invalid builder input: reported, and no connection made.
                tracing::warn!(target: TRACE, %reason, "client not started");
                let _ = self.events.send(ConnectionEvent::Disconnected {
                    reason,
                    reason_code: None,
                });
                break;
            }
            let stream = match &self.connector {
                Some(c) => c().await.map_err(|e| e.to_string()),
                None => transport::connect(&self.target, &self.transport)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match stream {
                Ok(stream) => {
                    tracing::debug!(target: TRACE, target_addr = %self.target, "transport connected");
                    let (outcome, connected) = self.serve(stream).await;
                    if connected {
                        attempt = 0;
                    }
                    if let Outcome::Stop = outcome {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(target: TRACE, error = %e, "connect failed");
                    let _ = self.events.send(ConnectionEvent::Disconnected {
                        reason: e,
                        reason_code: None,
                    });
                }
            }
            if self.closing.is_some() {
                break;
            }
            let Some(delay) = self.reconnect.delay(attempt, &mut self.rng) else {
                break;
            };
            attempt = attempt.saturating_add(1);
            if !self.wait(delay).await {
                break;
            }
        }
        self.fail_all();
        if let Some(reply) = self.closing.take() {
            let _ = reply.send(Ok(()));
        }
    }

    /// Waits out a reconnect delay while taking commands. Returns false to stop.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(Command::Disconnect(reply)) => {
                        self.closing = Some(reply);
                        return false;
                    }
                    Some(cmd) => self.defer(cmd),
                },
            }
        }
    }

    fn defer(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(p, reply) => {
                let queued = self.deferred_publishes;
                if queued >= self.offline_cap {
                    match reply {
                        Some(r) => {
                            let _ = r.send(Err(ClientError::QueueFull));
                        }
                        None => tracing::warn!(
                            target: TRACE, qos = ?p.qos, cap = self.offline_cap,
                            "try_publish while disconnected: offline queue full, message dropped"
                        ),
                    }
                } else {
                    self.deferred.push_back(Command::Publish(p, reply));
                    self.deferred_publishes += 1;
                }
            }
            Command::Unsubscribe(id) => {
                // Not subscribed on the wire yet: just forget it.
                if self.subs.remove(&id).is_some() {
                    self.deferred.push_back(Command::Unsubscribe(id));
                } else {
                    self.deferred.retain(
                        |c| !matches!(c, Command::Subscribe(_, _, sid, _, _) if *sid == id),
                    );
                }
            }
            other => self.deferred.push_back(other),
        }
    }

    /// Runs one network connection. Returns how it ended and whether CONNACK accepted it.
    async fn serve(&mut self, stream: transport::BoxStream) -> (Outcome, bool) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut connected = false;
        if let Err(e) = self.core.connect(now()) {
            tracing::debug!(target: TRACE, error = %e, "connect refused locally");
            return (Outcome::Lost, false);
        }
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            // Events first: answering them (replaying deferred commands, …) may queue output.
            connected |= self.dispatch();
            if self.flush(&mut wr).await.is_err() {
                self.core.handle_close(now());
                connected |= self.dispatch();
            }
            if self.core.state() == ClientState::Disconnected {
                let _ = wr.shutdown().await;
                return match &self.closing {
                    Some(_) => (Outcome::Stop, connected),
                    None => (Outcome::Lost, connected),
                };
            }
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            let blocked = self.blocked_sender();
            // While messages wait for a full subscription, stop reading (TCP pushes back on the
            // broker) unless the application awaits an acknowledgement, which must not be held
            // up: then keep reading, and QoS 0 messages past the bounded backlog are dropped.
            let reading = self.backlog.len() < self.backlog_limit
                || !self.publishing.pending.is_empty()
                || !self.pending_sub.is_empty();
            tokio::select! {
                r = rd.read_buf(&mut buf), if reading => {
                    match r {
                        Ok(0) | Err(_) => self.core.handle_close(now()),
                        Ok(_) => {
                            if let Err(e) = self.core.handle_bytes(now(), &buf) {
                                tracing::debug!(target: TRACE, error = %e, "connection failed");
                            }
                            buf.clear();
                        }
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        // Take what else is already queued (bounded), so that one write carries
                        // many packets: a system call per message would dominate the cost.
                        for _ in 0..255 {
                            match self.rx.try_recv() {
                                Ok(c) => self.command(c),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Every handle is gone: leave cleanly.
                        let _ = self.core.disconnect(now(), ReasonCode::Success, None);
                        let _ = self.flush(&mut wr).await;
                        let _ = wr.shutdown().await;
                        return (Outcome::Stop, connected);
                    }
                },
                _ = sleep_until_opt(deadline) => self.core.handle_timeout(now()),
                _ = reserve(blocked) => self.drain_backlog(),
            }
        }
    }

    async fn flush(&mut self, wr: &mut (impl AsyncWriteExt + Unpin)) -> std::io::Result<()> {
        let mut wrote = false;
        while let Some(bytes) = self.core.poll_transmit() {
            wr.write_all(&bytes).await?;
            wrote = true;
        }
        if wrote {
            wr.flush().await?;
        }
        for reply in self.publishing.written.drain(..) {
            let _ = reply.send(Ok(ReasonCode::Success));
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) {
        if self.core.state() != ClientState::Connected {
            match cmd {
                Command::Disconnect(reply) => self.disconnect(reply),
                other => self.defer(other),
            }
            return;
        }
        match cmd {
            Command::Publish(p, reply) => {
                self.publishing.publish(&mut self.core, now(), p, reply);
            }
            Command::Subscribe(filters, props, id, tx, reply) => {
                let names = filters.iter().map(|s| s.filter.clone()).collect::<Vec<_>>();
                match self.core.subscribe(now(), filters.clone(), props.clone()) {
                    Ok(packet) => {
                        self.subs.insert(
                            id,
                            SubEntry {
                                filters: names.clone(),
                                tx,
                            },
                        );
                        match packet {
                            Some(pid) => {
                                self.pending_sub.insert(pid, (id, filters, props, reply));
                            }
                            None => {
                                let codes = names
                                    .iter()
                                    .map(|f| {
                                        self.core
                                            .subscription_granted(f)
                                            .unwrap_or(ReasonCode::Success)
                                    })
                                    .collect();
                                let _ = reply.send(Ok(codes));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Unsubscribe(id) => {
                if let Some(entry) = self.subs.remove(&id) {
                    let _ = self
                        .core
                        .unsubscribe(now(), entry.filters, Default::default());
                }
            }
            Command::Reauthenticate(data, reply) => {
                let _ = reply.send(self.core.reauthenticate(now(), data).map_err(Into::into));
            }
            Command::Disconnect(reply) => self.disconnect(reply),
        }
    }

    fn disconnect(&mut self, reply: Reply<()>) {
        if self.core.state() != ClientState::Disconnected {
            let _ = self.core.disconnect(now(), ReasonCode::Success, None);
        }
        self.closing = Some(reply);
    }

    /// Handles core events; returns whether the connection was accepted.
    fn dispatch(&mut self) -> bool {
        let mut connected = false;
        while let Some(ev) = self.core.poll_event() {
            match ev {
                ClientEvent::Connected(connack) => {
                    connected = true;
                    crate::client::connack_auth(self.authenticator.as_ref(), &connack);
                    tracing::info!(target: TRACE, session_present = connack.session_present, "connected");
                    let _ = self.events.send(ConnectionEvent::Connected {
                        session_present: connack.session_present,
                    });
                    crate::client::retry_unacked(&mut self.core, now(), &mut self.unacked);
                    self.deferred_publishes = 0;
                    for cmd in std::mem::take(&mut self.deferred) {
                        self.command(cmd);
                    }
                }
                ClientEvent::SessionLost => {
                    tracing::info!(target: TRACE, "session lost; resubscribed");
                    let _ = self.events.send(ConnectionEvent::SessionLost);
                }
                ClientEvent::Refused(connack) => {
                    let _ = self.events.send(ConnectionEvent::Disconnected {
                        reason: format!("connection refused: {}", connack.reason_code),
                        reason_code: Some(connack.reason_code),
                    });
                }
                ClientEvent::Message(m) => self.deliver(m),
                ClientEvent::PublishComplete {
                    packet_id,
                    reason_code,
                    ..
                } => {
                    if let Some(r) = self.publishing.pending.remove(&packet_id) {
                        let _ = r.send(Ok(reason_code));
                    }
                }
                ClientEvent::Subscribed {
                    packet_id,
                    reason_codes,
                    ..
                } => {
                    if let Some((_, _, _, r)) = self.pending_sub.remove(&packet_id) {
                        let _ = r.send(Ok(reason_codes));
                    }
                }
                ClientEvent::Unsubscribed { .. } => {}
                ClientEvent::Auth(auth) => self.on_auth(auth),
                ClientEvent::Disconnected { error, disconnect } => {
                    tracing::info!(target: TRACE, %error, "disconnected");
                    // Publishes waiting for identifiers go out first on the next connection.
                    for (p, reply) in std::mem::take(&mut self.publishing.stalled)
                        .into_iter()
                        .rev()
                    {
                        self.deferred.push_front(Command::Publish(p, reply));
                        self.deferred_publishes += 1;
                    }
                    // A SUBSCRIBE without SUBACK is void: send it again on the next connection.
                    let pending: Vec<_> = self.pending_sub.drain().map(|(_, v)| v).collect();
                    for (id, filters, props, reply) in pending.into_iter().rev() {
                        if let Some(entry) = self.subs.remove(&id) {
                            self.deferred.push_front(Command::Subscribe(
                                filters, props, id, entry.tx, reply,
                            ));
                        }
                    }
                    let _ = self.events.send(ConnectionEvent::Disconnected {
                        reason: error.to_string(),
                        reason_code: disconnect.map(|d| d.reason_code),
                    });
                }
            }
        }
        // Acknowledgements may have freed packet identifiers.
        self.publishing.retry_stalled(&mut self.core, now());
        connected
    }

    fn on_auth(&mut self, auth: crate::proto::codec::Auth) {
        crate::client::answer_auth(self.authenticator.as_ref(), &mut self.core, now(), auth);
    }

    fn deliver(&mut self, msg: Message) {
        if crate::client::resent_while_waiting(self.backlog.iter().map(|(m, _)| m), &msg) {
            return;
        }
        let mut targets = self
            .subs
            .iter()
            .filter(|(_, s)| s.filters.iter().any(|f| f.matches(&msg.topic)))
            .map(|(id, _)| *id)
            .collect::<Vec<_>>();
        targets.sort_unstable();
        // Past the limit, reading stops (see `serve`); what one read brought in still fits. Only
        // while an acknowledgement is awaited does reading go on, and then QoS 0 messages past
        // the limit are dropped.
        let must_read = !self.publishing.pending.is_empty() || !self.pending_sub.is_empty();
        if msg.qos == QoS::AtMostOnce && must_read && self.backlog.len() >= self.backlog_limit {
            // A consumer this far behind loses QoS 0 messages (at most once), never QoS 1/2,
            // which the broker's window bounds.
            self.dropped_qos0 += 1;
            tracing::warn!(target: TRACE, dropped = self.dropped_qos0, "subscription buffers full: QoS 0 message dropped");
            return;
        }
        self.backlog.push_back((msg, targets));
        self.drain_backlog();
    }

    /// The sender of the full subscription the oldest waiting message is stuck on.
    fn blocked_sender(&self) -> Option<mpsc::Sender<Message>> {
        let (_, targets) = self.backlog.front()?;
        targets
            .iter()
            .find_map(|id| self.subs.get(id))
            .map(|s| s.tx.clone())
    }

    /// Moves waiting messages into their subscriptions' buffers, in order, until one is full;
    /// a message is acknowledged once it reached every subscription it matches.
    fn drain_backlog(&mut self) {
        while let Some((msg, targets)) = self.backlog.front_mut() {
            while let Some(&id) = targets.first() {
                let Some(entry) = self.subs.get(&id) else {
                    targets.remove(0);
                    continue;
                };
                match entry.tx.try_send(msg.clone()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                        targets.remove(0);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => return,
                }
            }
            if let Some((msg, _)) = self.backlog.pop_front() {
                crate::client::acknowledge_delivered(
                    &mut self.core,
                    now(),
                    &msg,
                    &mut self.unacked,
                );
            }
        }
    }

    fn fail_all(&mut self) {
        self.publishing.fail_all(|| ClientError::Closed);
        for (_, (_, _, _, r)) in self.pending_sub.drain() {
            let _ = r.send(Err(ClientError::Closed));
        }
        self.deferred_publishes = 0;
        for cmd in self.deferred.drain(..) {
            match cmd {
                Command::Publish(_, Some(r)) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                Command::Subscribe(_, _, _, _, r) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                Command::Disconnect(r) => {
                    let _ = r.send(Ok(()));
                }
                _ => {}
            }
        }
        self.subs.clear();
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until `tx` has room (the permit is released at once: the message is sent by
/// `drain_backlog`, which is the only sender, so the room stays).
async fn reserve(tx: Option<mpsc::Sender<Message>>) {
    match tx {
        Some(tx) => {
            let _ = tx.reserve().await;
        }
        None => std::future::pending().await,
    }
}
