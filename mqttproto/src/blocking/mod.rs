//! The blocking drivers, on `std::net` and threads, with no async runtime (feature
//! `blocking`): the [`Client`] and the [`Broker`] (its threading model and limits are in the
//! [`broker`] module).
//!
//! `cargo tree -e normal -p mqttproto --no-default-features --features blocking` lists no
//! tokio, no futures executor: the test `blocking_has_no_async_runtime` checks it.
//!
//! # The client's threads
//!
//! [`ClientBuilder::build`](client::ClientBuilder::build) starts one **I/O thread** per client.
//! It owns the core state machine ([`crate::proto::Client`]) and the connection, and waits on
//! a single channel for everything that can happen: commands from the application's handles,
//! bytes from the network, room made in a subscription buffer. It waits at most until the
//! core's `poll_timeout()` (keep alive, ping timeout, connect timeout), then calls
//! `handle_timeout`: nothing polls, and an idle client wakes up only for its keep alive.
//!
//! Per connection, a **reader thread** does the blocking reads from a clone of the socket and
//! forwards the raw bytes; the I/O thread feeds them through the TLS (rustls'
//! `StreamOwned`) and WebSocket (tungstenite) layers into the core, and writes through the same
//! layers. The reader wakes every half second to check whether its connection is over, and
//! stops reading while subscriptions are full (back-pressure, below) or while 256 KiB it read
//! are not yet taken by the I/O thread. With
//! [`ClientBuilder::custom_transport`](client::ClientBuilder::custom_transport) the application
//! supplies the stream (any [`Transport`]).
//!
//! Connecting (TCP, TLS and WebSocket handshakes) happens on the I/O thread, bounded by the
//! connect timeout; a blocking write is bounded by 30 s, after which the connection counts as
//! lost.
//!
//! # Guarantees
//!
//! * **Thread safety.** [`Client`] is `Clone + Send + Sync`: share it or clone it across
//!   threads; every method takes `&self`. A [`Subscription`] is `Send`
//!   and belongs to one consumer at a time.
//! * **No deadlock from a message handler.** A method of the handle only sends a command to
//!   the I/O thread and then waits for its answer; no lock is held while waiting, and the I/O
//!   thread never waits for the application. Publishing (and waiting for the PUBACK) from
//!   inside the loop that reads a subscription is safe: while an acknowledgement is awaited,
//!   the client keeps reading.
//! * **Knowing when a publish was acknowledged.** [`Client::publish`] returns the broker's
//!   reason code from PUBACK (QoS 1) or PUBCOMP (QoS 2), or `Success` once written (QoS 0).
//!   QoS 1/2 messages in flight when the connection drops are resent after the reconnect, with
//!   DUP. With a request timeout ([`ClientBuilder::request_timeout`](client::ClientBuilder::request_timeout)
//!   or [`Client::publish_message_timeout`]) the wait ends with
//!   [`ClientError::Timeout`](client::ClientError::Timeout), and the message is still
//!   delivered: giving up waiting never cancels a publish.
//! * **Subscriptions.** A subscription is an iterator over its messages (ending when the
//!   client closes), with [`recv_timeout`](client::Subscription::recv_timeout) for bounded
//!   waits. Dropping it unsubscribes; several subscriptions to one filter are reference
//!   counted (one SUBSCRIBE and one UNSUBSCRIBE on the wire). They survive reconnects: when the
//!   broker lost the session, the client subscribes again and reports
//!   [`ConnectionEvent::SessionLost`](client::ConnectionEvent::SessionLost).
//! * **Bounded memory, back-pressure, no QoS 1/2 loss.** Each subscription buffers a bounded
//!   number of messages. Inbound QoS 1/2 messages are acknowledged only once they are in their
//!   subscriptions' buffers, so the broker's window (our Receive Maximum) bounds what waits.
//!   When the bounded backlog fills up, the reader thread stops reading, so TCP pushes back on
//!   the broker; only while the application awaits an acknowledgement does it keep reading,
//!   and QoS 0 messages past the backlog are then dropped (at most once) with a warning on the
//!   `mqttproto::client` tracing target.
//! * **Reconnect.** With [`Reconnect::Backoff`](client::Reconnect::Backoff) (the default),
//!   the client reconnects after a lost connection with exponential backoff and jitter;
//!   publishes made meanwhile wait in the bounded offline queue.
//! * **Stopping.** [`Client::disconnect`] sends DISCONNECT, closes the connection and returns
//!   once the I/O thread stopped; pending waits fail with
//!   [`ClientError::Closed`](client::ClientError::Closed). Dropping every handle and
//!   subscription does the same in the background.

pub mod broker;
pub mod client;
mod transport;

pub use broker::{Broker, BrokerConfig, BrokerHandle};
pub use client::{Client, ClientBuilder, Subscription};
pub use transport::Transport;
