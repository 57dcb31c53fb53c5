//! The async drivers, on tokio: [`Client`] and [`Broker`].

pub mod broker;
pub mod client;

pub use broker::{Broker, BrokerConfig, BrokerHandle};
pub use client::Client;
