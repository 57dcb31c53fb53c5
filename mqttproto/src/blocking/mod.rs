//! The blocking drivers, on `std::net` and threads, without an async runtime: the [`Broker`].

pub mod broker;

pub use broker::{Broker, BrokerConfig, BrokerHandle};
