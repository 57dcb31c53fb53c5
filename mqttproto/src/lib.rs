//! # mqttproto
//!
//! A complete MQTT 5 toolkit. This crate is what applications depend on. Today it re-exports the
//! sans-I/O core as [`proto`]: the codec and the topic types. The async (tokio) and blocking
//! drivers, client and broker, will live here too.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The sans-I/O core ([`mqttproto_core`]).
pub use mqttproto_core as proto;
