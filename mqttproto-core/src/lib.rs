//! # mqttproto-core
//!
//! The sans-I/O core of mqttproto: a complete MQTT 5 codec ([`codec`]), validated topic types
//! ([`topic`]), and three protocol state machines:
//!
//! * [`Client`]: a client's session with a broker;
//! * [`Session`]: the broker's view of one connected client;
//! * [`Broker`](broker::Broker): the broker (registry, takeover, subscription trie, retained
//!   messages, shared subscriptions, wills, session expiry, routing), built on `Session`s.
//!
//! They parse bytes in and produce bytes out, but never touch a socket, never read a clock,
//! never sleep and never spawn. The drivers in the `mqttproto` crate (tokio and blocking) do
//! that; so can yours.
//!
//! ## The driving-loop contract
//!
//! Every machine has four kinds of methods:
//!
//! * **getters** (`&self`): `state()`, `client_id()`, `maximum_qos()`, …;
//! * **inputs**: `handle_bytes(now, &[u8])` (buffers partial packets, processes complete ones),
//!   `handle_timeout(now)`, `handle_close(now)` when the transport ended;
//! * **commands** from the application: `connect`, `publish`, `subscribe`, `unsubscribe`,
//!   `acknowledge`, `disconnect`; on the server side `acknowledge_connect`,
//!   `acknowledge_subscribe`, `acknowledge_publish`, …;
//! * **outputs**, drained after every input or command: `poll_transmit()` (bytes to write; for
//!   the broker, bytes and the connection they are for), `poll_event()` (messages, completions,
//!   decisions to make), `poll_timeout()` (when to call `handle_timeout` next).
//!
//! ```text
//!            bytes from the socket                     bytes to the socket
//!   driver ──handle_bytes(now, &[u8])──▶ ┌─────────┐ ──poll_transmit()──▶ driver
//!   driver ──handle_timeout(now)───────▶ │ machine │ ──poll_event()─────▶ application
//!   app ─────commands(now, …)──────────▶ └─────────┘ ──poll_timeout()───▶ driver's timer
//! ```
//!
//! A driver's loop is the same everywhere: feed what arrived, drain transmits and events, sleep
//! until the next timeout or the next input. Time is an input (`now: Instant`), so keep alive,
//! the broker's 1.5 × keep-alive disconnect, will delays, session expiry and message expiry are
//! written once, here, and tested on a fake clock.
//!
//! Malformed input or a protocol violation queues the DISCONNECT (or CONNACK) with the right
//! reason code and returns a fatal [`Error`] that stays set for every later input. Misusing the
//! API (publishing while disconnected, acknowledging an unknown packet id) is a non-fatal
//! [`StateError`].
//!
//! ## A complete driver over `std::net`
//!
//! A broker on a loopback port, and a client that subscribes, publishes at QoS 1 and receives
//! its own message, each driven by a few lines of blocking code and nothing but this crate:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//! use mqttproto_core::broker::{Broker, BrokerEvent, BrokerOptions};
//! use mqttproto_core::codec::{Publish, Subscription};
//! use mqttproto_core::*;
//!
//! // The broker: one connection, driven until it closes.
//! let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let addr = listener.local_addr().unwrap();
//! let server = std::thread::spawn(move || {
//!     let (mut sock, _) = listener.accept().unwrap();
//!     sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
//!     let mut broker = Broker::new(BrokerOptions::default());
//!     let conn = broker.accept(Instant::now());
//!     let mut buf = [0u8; 4096];
//!     let deadline = Instant::now() + Duration::from_secs(10);
//!     while Instant::now() < deadline {
//!         match sock.read(&mut buf) {
//!             Ok(0) => broker.handle_close(Instant::now(), conn),
//!             Ok(n) => { let _ = broker.handle_bytes(Instant::now(), conn, &buf[..n]); }
//!             Err(_) => broker.handle_timeout(Instant::now()),
//!         }
//!         while let Some(event) = broker.poll_event() {
//!             match event {
//!                 // Authentication is the driver's decision: accept everyone here.
//!                 BrokerEvent::Connect { handle, .. } => broker
//!                     .acknowledge_connect(Instant::now(), handle, ReasonCode::Success)
//!                     .unwrap(),
//!                 BrokerEvent::Closed { .. } => return,
//!                 _ => {}
//!             }
//!         }
//!         while let Some((_, bytes)) = broker.poll_transmit() {
//!             sock.write_all(&bytes).unwrap();
//!         }
//!     }
//! });
//!
//! // The client.
//! let mut sock = TcpStream::connect(addr).unwrap();
//! sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
//! let mut client = Client::new(ClientOptions::default());
//! client.connect(Instant::now()).unwrap();
//! let mut subscribed = false;
//! let mut received = None;
//! let mut buf = [0u8; 4096];
//! let deadline = Instant::now() + Duration::from_secs(10);
//! while received.is_none() && Instant::now() < deadline {
//!     while let Some(bytes) = client.poll_transmit() {
//!         sock.write_all(&bytes).unwrap();
//!     }
//!     match sock.read(&mut buf) {
//!         Ok(0) => client.handle_close(Instant::now()),
//!         Ok(n) => client.handle_bytes(Instant::now(), &buf[..n]).unwrap(),
//!         Err(_) => client.handle_timeout(Instant::now()),
//!     }
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             ClientEvent::Connected(_) if !subscribed => {
//!                 let filter = TopicFilter::try_from("demo/#").unwrap();
//!                 let sub = Subscription::new(filter, QoS::AtLeastOnce);
//!                 client.subscribe(Instant::now(), vec![sub], Default::default()).unwrap();
//!                 subscribed = true;
//!             }
//!             ClientEvent::Subscribed { .. } => {
//!                 let mut msg = Publish::new(TopicName::try_from("demo/1").unwrap(), &b"hello"[..]);
//!                 msg.qos = QoS::AtLeastOnce;
//!                 client.publish(Instant::now(), msg).unwrap();
//!             }
//!             ClientEvent::Message(m) => received = Some(m.payload),
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(received.as_deref(), Some(&b"hello"[..]));
//! client.disconnect(Instant::now(), ReasonCode::Success, None).unwrap();
//! sock.write_all(&client.poll_transmit().unwrap()).unwrap();
//! server.join().unwrap();
//! ```
//!
//! ## The codec alone
//!
//! ```
//! use bytes::BytesMut;
//! use mqttproto_core::codec::{decode, Packet, Publish};
//! use mqttproto_core::{ProtocolVersion, QoS, PacketId, TopicName};
//!
//! let mut publish = Publish::new(TopicName::try_from("sensors/1").unwrap(), &b"21.5"[..]);
//! publish.qos = QoS::AtLeastOnce;
//! publish.packet_id = PacketId::new(7);
//! let packet = Packet::Publish(publish);
//!
//! let mut wire = BytesMut::new();
//! packet.encode(&mut wire, ProtocolVersion::V5).unwrap();
//! assert_eq!(wire.len(), packet.encoded_len(ProtocolVersion::V5));
//!
//! // Feed the bytes in two pieces: the first call sees a partial packet and waits.
//! let mut input = BytesMut::new();
//! input.extend_from_slice(&wire[..5]);
//! assert_eq!(decode(&mut input, ProtocolVersion::V5, 1024).unwrap(), None);
//! input.extend_from_slice(&wire[5..]);
//! let decoded = decode(&mut input, ProtocolVersion::V5, 1024).unwrap().unwrap();
//! assert_eq!(decoded, packet);
//! ```
//!
//! Every [`DecodeError`] names the reason code the receiver must answer with
//! ([`DecodeError::reason_code`]) and the normative statement it enforces
//! ([`DecodeError::statement`]).
//!
//! Every packet in and out is logged at DEBUG on the `tracing` target `mqttproto`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod broker;
pub mod client;
pub mod codec;
mod conn;
pub mod error;
pub mod session;
pub mod string;
pub mod topic;
pub mod types;

pub use client::{Client, ClientEvent, ClientOptions, ClientState};
pub use codec::Packet;
pub use error::{DecodeError, EncodeError, Error, ProtocolError, StateError};
pub use session::{Session, SessionEvent, SessionOptions, SessionPhase, SessionState};
pub use string::{MqttString, StringError};
pub use topic::{filter_matches, TopicError, TopicFilter, TopicName};
pub use types::{
    PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS, ReasonCode, RetainHandling,
    SubscriptionId, SubscriptionOptions, UserProperties, UserPropertiesIter, UserProperty,
};
