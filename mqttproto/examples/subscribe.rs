//! Subscribes to a filter and prints every message until Ctrl-C.
//!
//! ```sh
//! cargo run -p mqttproto --example subscribe -- mqtt://127.0.0.1:1883 'examples/#'
//! ```

use futures_core::Stream;
use mqttproto::proto::QoS;
use mqttproto::tokio::client::ConnectionEvent;
use mqttproto::tokio::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let filter = args.next().unwrap_or_else(|| "examples/#".into());
    let client = Client::builder(&url)?
        .client_id("example-subscriber")
        .session_expiry(300) // keep the session (and queued messages) across reconnects
        .build();
    let mut events = client.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let ConnectionEvent::Disconnected { reason, .. } = &event {
                eprintln!("disconnected: {reason}; reconnecting");
            }
        }
    });
    let mut messages = client.subscribe(&filter, QoS::AtLeastOnce).await?;
    println!("subscribed to {filter}: {:?}", messages.granted());
    // A `Subscription` is also a `Stream` of messages.
    let _: &dyn Stream<Item = _> = &messages;
    loop {
        tokio::select! {
            msg = messages.recv() => match msg {
                Some(m) => println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.disconnect().await?;
    Ok(())
}
