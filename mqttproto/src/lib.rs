//! # mqttproto
//!
//! A complete MQTT 5 toolkit. This crate is what applications depend on:
//!
//! * [`proto`]: the sans-I/O core ([`mqttproto_core`]): codec, topics, and the `Client`,
//!   `Session` and `Broker` state machines;
//! * [`tokio`] (feature `tokio`, on by default): the async client and broker;
//! * [`blocking`] (feature `blocking`, on by default): the blocking client and broker, on
//!   `std::net` and threads, without an async runtime;
//! * [`server`]: what both brokers share (listen addresses, configuration, password and ACL
//!   files, TLS settings, the authentication traits);
//! * `client`: what both clients share (errors, events, reconnect policy, authenticator);
//! * `transport`: where a client connects (URLs) and the TLS options.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The sans-I/O core ([`mqttproto_core`]).
pub use mqttproto_core as proto;

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub mod client;
pub mod server;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub mod transport;
