//! The blocking client, no async runtime: subscribes, publishes a few messages at QoS 1 from
//! another thread, answers each one from inside the receive loop, and prints what arrives.
//!
//! ```sh
//! cargo run -p mqttproto --example blocking_pubsub -- mqtt://127.0.0.1:1883
//! ```
//!
//! Any URL the client takes works: `mqtts://`, `ws://host:port/mqtt`, `unix:///path`, …

use std::time::Duration;

use mqttproto::blocking::Client;
use mqttproto::client::ConnectionEvent;
use mqttproto::proto::QoS;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let client = Client::builder(&url)?
        .client_id("example-blocking")
        .request_timeout(Some(Duration::from_secs(10)))
        .build()?;

    // Connection events on their own thread.
    let events = client.events();
    std::thread::spawn(move || {
        for event in events {
            match event {
                ConnectionEvent::Connected { session_present } => {
                    eprintln!("connected (session present: {session_present})")
                }
                ConnectionEvent::Disconnected { reason, .. } => {
                    eprintln!("disconnected: {reason}")
                }
                other => eprintln!("{other:?}"),
            }
        }
    });

    let requests = client.subscribe("examples/blocking/requests", QoS::AtLeastOnce)?;
    let replies = client.subscribe("examples/blocking/replies", QoS::AtLeastOnce)?;

    // A publisher thread: the handle is `Send + Sync`, clones are cheap.
    let publisher = {
        let client = client.clone();
        std::thread::spawn(move || {
            for i in 0..3 {
                match client.publish(
                    "examples/blocking/requests",
                    format!("request {i}"),
                    QoS::AtLeastOnce,
                ) {
                    Ok(reason) => println!("request {i}: broker answered {reason}"),
                    Err(e) => eprintln!("request {i}: {e}"),
                }
            }
        })
    };

    // Answering from inside the receive loop: publishing here waits for the PUBACK without
    // blocking the client.
    for (i, request) in (&requests).take(3).enumerate() {
        let text = String::from_utf8_lossy(&request.payload).into_owned();
        client.publish(
            "examples/blocking/replies",
            format!("reply to {text}"),
            QoS::AtLeastOnce,
        )?;
        match replies.recv_timeout(Duration::from_secs(10)) {
            Ok(reply) => println!("{i}: {}", String::from_utf8_lossy(&reply.payload)),
            Err(e) => eprintln!("{i}: no reply: {e}"),
        }
    }
    let _ = publisher.join();
    client.disconnect()?;
    Ok(())
}
