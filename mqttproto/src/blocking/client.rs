//! The blocking MQTT 5 client, on `std::net` and threads.
//!
//! ```no_run
//! use mqttproto::blocking::Client;
//! use mqttproto::proto::QoS;
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("mqtt://127.0.0.1:1883")?.client_id("demo").build()?;
//! let sub = client.subscribe("sensors/+", QoS::AtLeastOnce)?;
//! let reason = client.publish("sensors/1", "21.5", QoS::AtLeastOnce)?;
//! println!("broker answered {reason}");
//! if let Ok(msg) = sub.recv_timeout(std::time::Duration::from_secs(5)) {
//!     println!("{}: {:?}", msg.topic, msg.payload);
//! }
//! client.disconnect()?;
//! # Ok(()) }
//! ```
//!
//! See the [module documentation](super) for the threads and the guarantees.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::transport::{self, Stream, Transport};
use crate::client::{Settings, SharedAuthenticator};
use crate::proto::codec::{Publish, SubscribeProperties, Subscription as SubscriptionRequest};
use crate::proto::{
    self, ClientEvent, ClientState, PacketId, QoS, ReasonCode, TopicFilter, TopicName,
};
use crate::transport::{Target, TransportError, TransportOptions};

pub use crate::client::{Authenticator, ClientError, ConnectionEvent, Message, Reconnect};

const TRACE: &str = "mqttproto::client";
/// How many events a receiver of [`Client::events`] may fall behind before newer ones are
/// dropped for it.
const EVENTS_CAPACITY: usize = 64;

/// Opens connections for a client with the application's own transport.
pub type Connector = Arc<dyn Fn() -> std::io::Result<Box<dyn Transport>> + Send + Sync>;

/// Builds a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    settings: Settings,
    request_timeout: Option<Duration>,
    connector: Option<Connector>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("settings", &self.settings)
            .field("request_timeout", &self.request_timeout)
            .field("custom_transport", &self.connector.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Where to connect and the default options.
    pub fn new(target: Target) -> ClientBuilder {
        ClientBuilder {
            settings: Settings::new(target),
            request_timeout: None,
            connector: None,
        }
    }

    crate::client::common_builder_methods!();

    /// How long [`Client::publish`], [`Client::publish_message`], [`Client::subscribe`],
    /// [`Client::subscribe_with`] and [`Client::reauthenticate`] wait for their outcome before
    /// failing with [`ClientError::Timeout`] (default: no limit; they wait until the broker
    /// answers or the client closes). A request that timed out still goes on: the message is
    /// delivered per its QoS.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Connects with the application's own transport instead of the URL's: `connector` is
    /// called on the I/O thread for every connection attempt, and returns a connected stream
    /// (see [`Transport`]; `TcpStream` and `UnixStream` are ones). The URL then only names the
    /// broker in logs.
    pub fn custom_transport<F, T>(mut self, connector: F) -> Self
    where
        F: Fn() -> std::io::Result<T> + Send + Sync + 'static,
        T: Transport,
    {
        self.connector = Some(Arc::new(move || {
            connector().map(|t| Box::new(t) as Box<dyn Transport>)
        }));
        self
    }

    /// Starts the client's I/O thread and returns its handle. The connection is made in the
    /// background; see [`Client::events`]. Fails only if the thread cannot be spawned.
    pub fn build(self) -> std::io::Result<Client> {
        let (tx, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::sync_channel(EVENTS_CAPACITY);
        let events = Arc::new(Mutex::new(Some(vec![first_tx])));
        let s = self.settings;
        let worker = Worker {
            core: proto::Client::new(s.core_options()),
            target: s.target,
            transport: s.transport,
            connector: self.connector,
            authenticator: s.authenticator,
            reconnect: s.reconnect,
            invalid: s.invalid,
            offline_cap: s.offline_queue,
            rx,
            tx: tx.clone(),
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
            gone: false,
            generation: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64) ^ next_id(),
        };
        std::thread::Builder::new()
            .name("mqttproto-client".into())
            .spawn(move || worker.run())?;
        Ok(Client {
            inner: Arc::new(Inner {
                tx,
                events,
                first_events: Mutex::new(Some(first_rx)),
                sub_capacity: s.subscription_capacity,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A message to the I/O thread.
// Publishes travel unboxed, as in the tokio client: boxing would cost an allocation per
// message to save channel slot space.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// From the application.
    Cmd(Command),
    /// Bytes the reader thread of connection number `.0` read.
    Input(u64, Vec<u8>),
    /// The reader thread of connection number `.0` saw the stream end.
    Eof(u64),
    /// A subscription that was full made room.
    Room,
    /// Every handle and subscription is gone.
    HandlesGone,
}

type Reply<T> = SyncSender<Result<T, ClientError>>;

/// The senders of every events receiver; `None` once the I/O thread stopped (receivers then
/// see the end of the channel).
type EventSenders = Arc<Mutex<Option<Vec<SyncSender<ConnectionEvent>>>>>;

enum Command {
    Publish(Publish, Option<Reply<ReasonCode>>),
    Subscribe(Box<SubscribeCmd>),
    Unsubscribe(u64),
    Reauthenticate(Option<Bytes>, Reply<()>),
    Disconnect(Reply<()>),
}

struct SubscribeCmd {
    filters: Vec<SubscriptionRequest>,
    properties: SubscribeProperties,
    id: u64,
    tx: SyncSender<Message>,
    blocked: Arc<AtomicBool>,
    reply: Reply<Vec<ReasonCode>>,
}

#[derive(Debug)]
struct Inner {
    tx: Sender<Msg>,
    events: EventSenders,
    /// The receiver made at `build`, handed to the first caller of `events()`.
    first_events: Mutex<Option<Receiver<ConnectionEvent>>>,
    sub_capacity: usize,
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Cmd(_) => "Cmd",
            Msg::Input(..) => "Input",
            Msg::Eof(_) => "Eof",
            Msg::Room => "Room",
            Msg::HandlesGone => "HandlesGone",
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::HandlesGone);
    }
}

/// A handle to the client's I/O thread. Cheap to clone, `Send` and `Sync`: use it from as
/// many threads as needed. The thread stops when every handle and every [`Subscription`] is
/// dropped (sending DISCONNECT first), or at [`Client::disconnect`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn wait<T>(
    rx: Receiver<Result<T, ClientError>>,
    timeout: Option<Duration>,
) -> Result<T, ClientError> {
    match timeout {
        None => rx.recv().unwrap_or(Err(ClientError::Closed)),
        Some(t) => match rx.recv_timeout(t) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout(t)),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        },
    }
}

impl Client {
    /// A builder for a client of the broker at `url` (`mqtt://host:port`, `host:port`,
    /// `mqtts://`, `ws://host:port/path`, `wss://…`, `unix:///path`).
    pub fn builder(url: &str) -> Result<ClientBuilder, TransportError> {
        Ok(ClientBuilder::new(Target::parse(url)?))
    }

    fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(Msg::Cmd(cmd))
            .map_err(|_| ClientError::Closed)
    }

    /// Connection events (connected, session lost, disconnected). The first call returns a
    /// receiver that has every event since [`ClientBuilder::build`] (the connection starts
    /// there, so a fast refusal is not missed); later calls see the events sent after them.
    /// A receiver more than 64 events behind misses the newer ones until it catches up. Once
    /// the client stopped, receivers end (iterating over one ends).
    pub fn events(&self) -> Receiver<ConnectionEvent> {
        if let Ok(mut first) = self.inner.first_events.lock() {
            if let Some(rx) = first.take() {
                return rx;
            }
        }
        let (tx, rx) = mpsc::sync_channel(EVENTS_CAPACITY);
        if let Ok(mut list) = self.inner.events.lock() {
            if let Some(list) = list.as_mut() {
                list.push(tx);
            }
        }
        rx
    }

    /// Publishes `payload` on `topic` and waits for the broker's reason code (PUBACK for QoS 1,
    /// PUBCOMP for QoS 2; `Success` once written for QoS 0), or for the request timeout.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<ReasonCode, ClientError> {
        let mut p = Publish::new(TopicName::try_from(topic)?, payload.into());
        p.qos = qos;
        self.publish_message(p)
    }

    /// Publishes a message with every field and property under the caller's control, and
    /// waits for the outcome as [`Client::publish`] does.
    pub fn publish_message(&self, publish: Publish) -> Result<ReasonCode, ClientError> {
        self.publish_message_timeout(publish, self.inner.request_timeout)
    }

    /// [`Client::publish_message`] with its own limit on the wait (`None`: no limit). When the
    /// wait times out ([`ClientError::Timeout`]) the message is still delivered per its QoS.
    pub fn publish_message_timeout(
        &self,
        publish: Publish,
        timeout: Option<Duration>,
    ) -> Result<ReasonCode, ClientError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Publish(publish, Some(tx)))?;
        wait(rx, timeout)
    }

    /// Hands a message to the I/O thread without waiting for anything; the outcome is not
    /// reported. Fails only if the client is closed.
    ///
    /// Messages keep their order. A QoS 1/2 message never fails for want of a packet
    /// identifier: when all 65,535 are in use it waits, with every message behind it, until
    /// acknowledgements free one. A message the client refuses (larger than the server's
    /// Maximum Packet Size, a QoS or retain the server does not support) or that finds the
    /// offline queue full is logged (`warn`, target `mqttproto::client`); use
    /// [`publish_message`](Self::publish_message) to get that outcome instead.
    pub fn try_publish(&self, publish: Publish) -> Result<(), ClientError> {
        self.send(Command::Publish(publish, None))
    }

    /// Subscribes to `filter` with default options and waits for the SUBACK. The returned
    /// [`Subscription`] yields the messages matching it, and unsubscribes when dropped. Several
    /// subscriptions to the same filter share one SUBSCRIBE and one UNSUBSCRIBE on the wire.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, ClientError> {
        let f = TopicFilter::try_from(filter)?;
        self.subscribe_with(
            vec![SubscriptionRequest::new(f, qos)],
            SubscribeProperties::default(),
        )
    }

    /// Subscribes to several filters with full options and properties.
    pub fn subscribe_with(
        &self,
        filters: Vec<SubscriptionRequest>,
        properties: SubscribeProperties,
    ) -> Result<Subscription, ClientError> {
        let id = next_id();
        let (msg_tx, msg_rx) = mpsc::sync_channel(self.inner.sub_capacity);
        let (tx, rx) = mpsc::sync_channel(1);
        let blocked = Arc::new(AtomicBool::new(false));
        let mut sub = Subscription {
            id,
            rx: msg_rx,
            granted: Vec::new(),
            filters: filters.iter().map(|s| s.filter.clone()).collect(),
            blocked: blocked.clone(),
            inner: self.inner.clone(),
        };
        self.send(Command::Subscribe(Box::new(SubscribeCmd {
            filters,
            properties,
            id,
            tx: msg_tx,
            blocked,
            reply: tx,
        })))?;
        // On failure `sub` is dropped, which withdraws the subscription.
        sub.granted = wait(rx, self.inner.request_timeout)?;
        Ok(sub)
    }

    /// Starts re-authentication (AUTH 0x19) with new Authentication Data; the configured
    /// [`Authenticator`] answers the server's challenges. Returns once the AUTH is queued.
    pub fn reauthenticate(&self, data: Option<Bytes>) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Reauthenticate(data, tx))?;
        wait(rx, self.inner.request_timeout)
    }

    /// Sends DISCONNECT (normal disconnection), closes the connection and stops the I/O
    /// thread; returns once it stopped. Messages not yet acknowledged are abandoned (their
    /// waits fail with [`ClientError::Closed`]).
    pub fn disconnect(&self) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Disconnect(tx))?;
        wait(rx, None)
    }
}

/// The messages of one subscription, as an iterator (ending when the client closes) or with
/// [`Subscription::recv_timeout`]. Unsubscribes when dropped.
pub struct Subscription {
    id: u64,
    rx: Receiver<Message>,
    granted: Vec<ReasonCode>,
    filters: Vec<TopicFilter>,
    blocked: Arc<AtomicBool>,
    inner: Arc<Inner>,
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
    fn got(&self, m: Message) -> Message {
        // The I/O thread found this subscription full: tell it there is room again.
        if self.blocked.swap(false, Ordering::AcqRel) {
            let _ = self.inner.tx.send(Msg::Room);
        }
        m
    }

    /// The next message, waiting as long as it takes; `None` once the client is closed.
    pub fn recv(&self) -> Option<Message> {
        self.rx.recv().ok().map(|m| self.got(m))
    }

    /// The next message, waiting up to `timeout`: [`RecvTimeoutError::Timeout`] when none came,
    /// [`RecvTimeoutError::Disconnected`] once the client is closed.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|m| self.got(m))
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Option<Message> {
        self.rx.try_recv().ok().map(|m| self.got(m))
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

impl Iterator for Subscription {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        self.recv()
    }
}

impl Iterator for &Subscription {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        self.recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.inner.tx.send(Msg::Cmd(Command::Unsubscribe(self.id)));
    }
}

/// How many bytes the reader thread may have handed over that the I/O thread has not taken yet.
const READ_AHEAD: usize = 256 * 1024;

/// The reader thread's state, shared with the I/O thread.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct ReaderState {
    /// Subscriptions are full: do not read (back-pressure).
    paused: bool,
    /// The connection is over.
    stopped: bool,
    /// Bytes sent to the I/O thread and not yet taken by it.
    in_flight: usize,
}

impl ReaderState {
    fn may_read(&self) -> bool {
        !self.paused && self.in_flight < READ_AHEAD
    }
}

/// Whether the reader thread may read and whether it must stop.
#[derive(Default)]
struct ReaderControl {
    state: Mutex<ReaderState>,
    changed: Condvar,
}

impl ReaderControl {
    fn update(&self, f: impl FnOnce(&mut ReaderState)) {
        if let Ok(mut s) = self.state.lock() {
            let before = *s;
            f(&mut s);
            if before.may_read() != s.may_read() || before.stopped != s.stopped {
                self.changed.notify_all();
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        self.update(|s| s.paused = paused);
    }

    fn stop(&self) {
        self.update(|s| s.stopped = true);
    }

    fn paused(&self) -> bool {
        self.state.lock().map(|s| s.paused).unwrap_or(false)
    }

    /// The I/O thread took `n` bytes.
    fn taken(&self, n: usize) {
        self.update(|s| s.in_flight = s.in_flight.saturating_sub(n));
    }

    /// The reader handed `n` bytes over.
    fn handed(&self, n: usize) {
        self.update(|s| s.in_flight += n);
    }

    /// Waits (each wait bounded, re-checked) until reading is allowed; false once stopped.
    fn wait_go(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while !s.may_read() && !s.stopped {
            match self.changed.wait_timeout(s, Duration::from_millis(500)) {
                Ok((g, _)) => s = g,
                Err(_) => return false,
            }
        }
        !s.stopped
    }

    fn stopped(&self) -> bool {
        self.state.lock().map(|s| s.stopped).unwrap_or(true)
    }
}

fn reader(
    mut sock: Box<dyn std::io::Read + Send>,
    generation: u64,
    tx: Sender<Msg>,
    control: Arc<ReaderControl>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while control.wait_go() {
        match sock.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Msg::Eof(generation));
                return;
            }
            Ok(n) => {
                control.handed(n);
                if tx.send(Msg::Input(generation, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if control.stopped() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(target: TRACE, error = %e, "read failed");
                let _ = tx.send(Msg::Eof(generation));
                return;
            }
        }
    }
}

type PendingSubscribe = Box<SubscribeCmd>;

struct SubEntry {
    filters: Vec<TopicFilter>,
    tx: SyncSender<Message>,
    blocked: Arc<AtomicBool>,
}

/// One connection, as the I/O thread's message handler sees it.
struct Conn<'a> {
    generation: u64,
    stream: &'a mut Stream,
    input: &'a mut BytesMut,
    control: &'a ReaderControl,
}

/// Why a connection ended, for the reconnect loop.
enum Outcome {
    /// Reconnect (per policy).
    Lost,
    /// Stop the thread.
    Stop,
}

/// The I/O thread: owns the core state machine and the connection.
struct Worker {
    /// An invalid builder input: reported, and no connection made.
    invalid: Option<String>,
    core: proto::Client,
    target: Target,
    transport: TransportOptions,
    connector: Option<Connector>,
    authenticator: Option<SharedAuthenticator>,
    reconnect: Reconnect,
    offline_cap: usize,
    rx: Receiver<Msg>,
    /// For the reader threads.
    tx: Sender<Msg>,
    events: EventSenders,
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
    dropped_qos0: u64,
    backlog_limit: usize,
    /// Inbound QoS 1/2 messages delivered while disconnected: acknowledged after reconnecting.
    unacked: Vec<PacketId>,
    closing: Option<Reply<()>>,
    /// Every handle is gone.
    gone: bool,
    /// The number of the current connection (input from older readers is ignored).
    generation: u64,
    rng: u64,
}

fn now() -> Instant {
    Instant::now()
}

impl Worker {
    fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if let Some(reason) = self.invalid.take() {
                // An invalid builder input: reported, and no connection made.
                tracing::warn!(target: TRACE, %reason, "client not started");
                self.emit(ConnectionEvent::Disconnected {
                    reason,
                    reason_code: None,
                });
                break;
            }
            let timeout = self.core.options().connect_timeout;
            let conn = match &self.connector {
                Some(c) => c()
                    .and_then(transport::custom)
                    .map_err(|e| format!("connecting to {}: {e}", self.target)),
                None => transport::connect(&self.target, &self.transport, timeout)
                    .map_err(|e| e.to_string()),
            };
            match conn {
                Ok(conn) => {
                    tracing::debug!(target: TRACE, target_addr = %self.target, "transport connected");
                    let (outcome, connected) = self.serve(conn);
                    if connected {
                        attempt = 0;
                    }
                    if let Outcome::Stop = outcome {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(target: TRACE, error = %e, "connect failed");
                    self.emit(ConnectionEvent::Disconnected {
                        reason: e,
                        reason_code: None,
                    });
                }
            }
            // Take what arrived meanwhile (a disconnect, every handle dropped).
            while let Ok(msg) = self.rx.try_recv() {
                self.idle_msg(msg);
            }
            if self.closing.is_some() || self.gone {
                break;
            }
            let Some(delay) = self.reconnect.delay(attempt, &mut self.rng) else {
                break;
            };
            attempt = attempt.saturating_add(1);
            if !self.wait(delay) {
                break;
            }
        }
        self.fail_all();
        if let Ok(mut events) = self.events.lock() {
            *events = None;
        }
        if let Some(reply) = self.closing.take() {
            let _ = reply.try_send(Ok(()));
        }
    }

    /// A message while not connected.
    fn idle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Cmd(Command::Disconnect(reply)) => self.closing = Some(reply),
            Msg::Cmd(cmd) => self.defer(cmd),
            Msg::HandlesGone => self.gone = true,
            Msg::Room => self.drain_backlog(),
            Msg::Input(..) | Msg::Eof(_) => {}
        }
    }

    /// Waits out a reconnect delay while taking commands. Returns false to stop.
    fn wait(&mut self, delay: Duration) -> bool {
        let deadline = now() + delay;
        loop {
            let left = deadline.saturating_duration_since(now());
            if left.is_zero() {
                return true;
            }
            match self.rx.recv_timeout(left) {
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
                Ok(msg) => {
                    self.idle_msg(msg);
                    if self.closing.is_some() || self.gone {
                        return false;
                    }
                }
            }
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        if let Ok(mut guard) = self.events.lock() {
            let Some(list) = guard.as_mut() else {
                return;
            };
            list.retain(|tx| {
                !matches!(
                    tx.try_send(event.clone()),
                    Err(TrySendError::Disconnected(_))
                )
            });
        }
    }

    fn defer(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(p, reply) => {
                let queued = self.deferred_publishes;
                if queued >= self.offline_cap {
                    match reply {
                        Some(r) => {
                            let _ = r.try_send(Err(ClientError::QueueFull));
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
                if self.subs.remove(&id).is_some() {
                    self.deferred.push_back(Command::Unsubscribe(id));
                } else {
                    // Not subscribed on the wire yet: just forget it.
                    self.deferred
                        .retain(|c| !matches!(c, Command::Subscribe(s) if s.id == id));
                }
            }
            other => self.deferred.push_back(other),
        }
    }

    /// Runs one network connection. Returns how it ended and whether CONNACK accepted it.
    fn serve(&mut self, conn: transport::Connection) -> (Outcome, bool) {
        let mut stream = conn.stream;
        self.generation += 1;
        let generation = self.generation;
        let control = Arc::new(ReaderControl::default());
        let stop_reader = |stream: &mut Stream, control: &ReaderControl| {
            control.stop();
            stream.close();
        };
        {
            let (tx, ctl) = (self.tx.clone(), control.clone());
            let sock = conn.reader;
            if let Err(e) = std::thread::Builder::new()
                .name("mqttproto-reader".into())
                .spawn(move || reader(sock, generation, tx, ctl))
            {
                tracing::warn!(target: TRACE, error = %e, "cannot spawn the reader thread");
                stop_reader(&mut stream, &control);
                return (Outcome::Lost, false);
            }
        }
        let mut connected = false;
        if let Err(e) = self.core.connect(now()) {
            tracing::debug!(target: TRACE, error = %e, "connect refused locally");
            stop_reader(&mut stream, &control);
            return (Outcome::Lost, false);
        }
        let mut input = BytesMut::with_capacity(16 * 1024);
        loop {
            // Events first: answering them (replaying deferred commands, …) may queue output.
            connected |= self.dispatch();
            if !self.backlog.is_empty() {
                self.drain_backlog();
            }
            if self.flush(&mut stream).is_err() {
                self.core.handle_close(now());
                connected |= self.dispatch();
            }
            if self.gone && self.core.state() != ClientState::Disconnected {
                // Every handle is gone: leave cleanly.
                let _ = self.core.disconnect(now(), ReasonCode::Success, None);
                let _ = self.flush(&mut stream);
                stop_reader(&mut stream, &control);
                return (Outcome::Stop, connected);
            }
            if self.core.state() == ClientState::Disconnected {
                stop_reader(&mut stream, &control);
                return match (&self.closing, self.gone) {
                    (None, false) => (Outcome::Lost, connected),
                    _ => (Outcome::Stop, connected),
                };
            }
            // While messages wait for a full subscription, the reader stops reading (TCP pushes
            // back on the broker) unless the application awaits an acknowledgement, which must
            // not be held up: then reading goes on, and QoS 0 messages past the bounded backlog
            // are dropped.
            let reading = self.backlog.len() < self.backlog_limit
                || !self.publishing.pending.is_empty()
                || !self.pending_sub.is_empty();
            if control.paused() == reading {
                control.set_paused(!reading);
            }
            let received = match self.core.poll_timeout() {
                Some(deadline) => {
                    let t = now();
                    if deadline <= t {
                        self.core.handle_timeout(t);
                        continue;
                    }
                    self.rx.recv_timeout(deadline - t)
                }
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Err(RecvTimeoutError::Timeout) => self.core.handle_timeout(now()),
                Err(RecvTimeoutError::Disconnected) => self.gone = true,
                Ok(msg) => {
                    let mut conn = Conn {
                        generation,
                        stream: &mut stream,
                        input: &mut input,
                        control: &control,
                    };
                    self.on_msg(msg, &mut conn);
                    // Take what else is already queued (bounded), so that one write carries
                    // many packets.
                    for _ in 0..255 {
                        match self.rx.try_recv() {
                            Ok(msg) => self.on_msg(msg, &mut conn),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, conn: &mut Conn<'_>) {
        let Conn {
            generation,
            stream,
            input,
            control,
        } = conn;
        let generation = *generation;
        match msg {
            Msg::Cmd(cmd) => self.command(cmd),
            Msg::Input(g, bytes) if g == generation => {
                control.taken(bytes.len());
                stream.feed(&bytes);
                self.pump(stream, input);
            }
            Msg::Eof(g) if g == generation => {
                stream.set_eof();
                self.pump(stream, input);
                if self.core.state() != ClientState::Disconnected {
                    self.core.handle_close(now());
                }
            }
            Msg::Input(..) | Msg::Eof(_) => {}
            Msg::Room => self.drain_backlog(),
            Msg::HandlesGone => self.gone = true,
        }
    }

    /// Feeds the core what the layers made of the bytes received.
    fn pump(&mut self, stream: &mut Stream, input: &mut BytesMut) {
        let r = stream.read_available(input);
        if !input.is_empty() {
            if let Err(e) = self.core.handle_bytes(now(), input) {
                tracing::debug!(target: TRACE, error = %e, "connection failed");
            }
            input.clear();
        }
        match r {
            Ok(false) => {}
            Ok(true) => self.core.handle_close(now()),
            Err(e) => {
                tracing::debug!(target: TRACE, error = %e, "transport failed");
                self.core.handle_close(now());
            }
        }
    }

    fn flush(&mut self, stream: &mut Stream) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        while let Some(bytes) = self.core.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
        for reply in self.publishing.written.drain(..) {
            let _ = reply.try_send(Ok(ReasonCode::Success));
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) {
        // Commands that came while disconnected are replayed when the Connected event is
        // handled; one that comes after the CONNACK was read but before that (in the same batch
        // of messages) queues behind them, so that publishes keep their order.
        if self.core.state() != ClientState::Connected || !self.deferred.is_empty() {
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
            Command::Subscribe(cmd) => {
                let names = cmd
                    .filters
                    .iter()
                    .map(|s| s.filter.clone())
                    .collect::<Vec<_>>();
                match self
                    .core
                    .subscribe(now(), cmd.filters.clone(), cmd.properties.clone())
                {
                    Ok(packet) => {
                        self.subs.insert(
                            cmd.id,
                            SubEntry {
                                filters: names.clone(),
                                tx: cmd.tx.clone(),
                                blocked: cmd.blocked.clone(),
                            },
                        );
                        match packet {
                            Some(pid) => {
                                self.pending_sub.insert(pid, cmd);
                            }
                            None => {
                                // Every filter was subscribed already (reference counted).
                                let codes = names
                                    .iter()
                                    .map(|f| {
                                        self.core
                                            .subscription_granted(f)
                                            .unwrap_or(ReasonCode::Success)
                                    })
                                    .collect();
                                let _ = cmd.reply.try_send(Ok(codes));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = cmd.reply.try_send(Err(e.into()));
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
                let _ = reply.try_send(self.core.reauthenticate(now(), data).map_err(Into::into));
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
                    self.emit(ConnectionEvent::Connected {
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
                    self.emit(ConnectionEvent::SessionLost);
                }
                ClientEvent::Refused(connack) => {
                    self.emit(ConnectionEvent::Disconnected {
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
                        let _ = r.try_send(Ok(reason_code));
                    }
                }
                ClientEvent::Subscribed {
                    packet_id,
                    reason_codes,
                    ..
                } => {
                    if let Some(cmd) = self.pending_sub.remove(&packet_id) {
                        let _ = cmd.reply.try_send(Ok(reason_codes));
                    }
                }
                ClientEvent::Unsubscribed { .. } => {}
                ClientEvent::Auth(auth) => {
                    crate::client::answer_auth(
                        self.authenticator.as_ref(),
                        &mut self.core,
                        now(),
                        auth,
                    );
                }
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
                    for cmd in pending.into_iter().rev() {
                        if self.subs.remove(&cmd.id).is_some() {
                            self.deferred.push_front(Command::Subscribe(cmd));
                        }
                    }
                    self.emit(ConnectionEvent::Disconnected {
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
                    Ok(()) | Err(TrySendError::Disconnected(_)) => {
                        targets.remove(0);
                    }
                    Err(TrySendError::Full(m)) => {
                        // Ask the consumer for a wake-up, then try once more: a message taken
                        // between the two attempts has seen the flag.
                        entry.blocked.store(true, Ordering::Release);
                        match entry.tx.try_send(m) {
                            Ok(()) | Err(TrySendError::Disconnected(_)) => {
                                targets.remove(0);
                            }
                            Err(TrySendError::Full(_)) => return,
                        }
                    }
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
        for (_, cmd) in self.pending_sub.drain() {
            let _ = cmd.reply.try_send(Err(ClientError::Closed));
        }
        self.deferred_publishes = 0;
        for cmd in self.deferred.drain(..) {
            match cmd {
                Command::Publish(_, Some(r)) => {
                    let _ = r.try_send(Err(ClientError::Closed));
                }
                Command::Subscribe(cmd) => {
                    let _ = cmd.reply.try_send(Err(ClientError::Closed));
                }
                Command::Disconnect(r) => {
                    let _ = r.try_send(Ok(()));
                }
                _ => {}
            }
        }
        for r in self.publishing.written.drain(..) {
            let _ = r.try_send(Err(ClientError::Closed));
        }
        self.subs.clear();
        self.backlog.clear();
    }
}
