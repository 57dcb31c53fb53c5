//! The async drivers, on tokio: [`Client`] and [`Broker`].

pub mod acl;
pub mod auth;
pub mod broker;
pub mod client;
#[cfg(any(feature = "tls", feature = "websocket"))]
pub mod listen;

pub use acl::AclFile;
pub use auth::PasswordFile;
pub use broker::{Broker, BrokerConfig, BrokerHandle};
pub use client::Client;
