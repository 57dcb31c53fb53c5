//! # mqttproto-core
//!
//! The sans-I/O core of mqttproto: a complete MQTT 5 codec, validated topic types and (in later
//! releases) the protocol state machines. It never touches a socket, never reads a clock and never
//! spawns; the drivers in the `mqttproto` crate do that.
//!
//! ## Decoding and encoding
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
    SubscriptionId, SubscriptionOptions, UserProperty,
};
