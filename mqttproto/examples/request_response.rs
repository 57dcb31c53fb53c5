//! Request/response with MQTT 5's Response Topic and Correlation Data: a responder answers
//! requests, and a requester waits for the answer that carries its correlation data.
//!
//! ```sh
//! cargo run -p mqttproto --example request_response -- mqtt://127.0.0.1:1883
//! ```

use bytes::Bytes;
use mqttproto::proto::codec::Publish;
use mqttproto::proto::{QoS, TopicName};
use mqttproto::tokio::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());

    // The responder: answers every request on its Response Topic, echoing the Correlation Data.
    let responder = Client::builder(&url)?
        .client_id("example-responder")
        .build();
    let mut requests = responder
        .subscribe("examples/service/sum", QoS::AtLeastOnce)
        .await?;
    let answering = responder.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let Some(reply_to) = req.properties.response_topic.clone() else {
                continue;
            };
            let text = String::from_utf8_lossy(&req.payload).to_string();
            let sum: i64 = text
                .split('+')
                .filter_map(|n| n.trim().parse::<i64>().ok())
                .sum();
            let mut answer = Publish::new(reply_to, sum.to_string());
            answer.qos = QoS::AtLeastOnce;
            answer.properties.correlation_data = req.properties.correlation_data.clone();
            // Publishing from inside the handler is safe: it never deadlocks.
            let _ = answering.publish_message(answer).await;
        }
    });

    // The requester.
    let requester = Client::builder(&url)?
        .client_id("example-requester")
        .build();
    let mut replies = requester
        .subscribe("examples/replies/requester", QoS::AtLeastOnce)
        .await?;
    let mut request = Publish::new(TopicName::try_from("examples/service/sum")?, "2 + 3 + 37");
    request.qos = QoS::AtLeastOnce;
    request.properties.response_topic = Some(TopicName::try_from("examples/replies/requester")?);
    request.properties.correlation_data = Some(Bytes::from_static(b"req-1"));
    requester.publish_message(request).await?;
    while let Some(reply) = replies.recv().await {
        if reply.properties.correlation_data.as_deref() == Some(&b"req-1"[..]) {
            println!("2 + 3 + 37 = {}", String::from_utf8_lossy(&reply.payload));
            break;
        }
    }
    requester.disconnect().await?;
    responder.disconnect().await?;
    Ok(())
}
