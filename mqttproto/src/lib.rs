//! # mqttproto
//!
//! A complete MQTT 5 toolkit. This crate is what applications depend on:
//!
//! * [`proto`]: the sans-I/O core ([`mqttproto_core`]): codec, topics, and the `Client`,
//!   `Session` and `Broker` state machines;
//! * [`tokio`] (feature `tokio`, on by default): the async client and broker.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The sans-I/O core ([`mqttproto_core`]).
pub use mqttproto_core as proto;

#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(feature = "tokio")]
pub mod transport;
