//! The async drivers: [`Client`], on tokio.

pub mod client;

pub use client::Client;
