//! Publishes a few messages at QoS 1 and prints the broker's answer to each.
//!
//! ```sh
//! cargo run -p mqttproto --example publish -- mqtt://127.0.0.1:1883
//! ```

use mqttproto::proto::QoS;
use mqttproto::tokio::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let client = Client::builder(&url)?
        .client_id("example-publisher")
        .build();
    for i in 0..5 {
        let reason = client
            .publish(
                "examples/greetings",
                format!("hello #{i}"),
                QoS::AtLeastOnce,
            )
            .await?;
        println!("message {i}: broker answered {reason}");
    }
    client.disconnect().await?;
    Ok(())
}
