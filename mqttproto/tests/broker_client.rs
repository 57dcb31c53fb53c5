//! `mqttproto::tokio::Broker` with our own async `Client`: round trips, retained messages, and
//! a load smoke test (1,000 concurrent clients at QoS 1, no loss).

use std::time::Duration;

use mqttproto::proto::QoS;
use mqttproto::tokio::broker::{Broker, BrokerConfig, BrokerHandle, ListenAddr};
use mqttproto::tokio::client::Reconnect;
use mqttproto::tokio::Client;

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(5);

async fn start(config: BrokerConfig) -> (BrokerHandle, String) {
    let config = config.listen("127.0.0.1:0".parse::<ListenAddr>().expect("an address"));
    let broker = Broker::bind(config).await.expect("bind");
    let url = broker.local_addrs()[0].to_string();
    (broker.spawn(), url)
}

fn client(url: &str, id: &str) -> Client {
    Client::builder(url)
        .expect("a URL")
        .client_id(id)
        .reconnect(Reconnect::Off)
        .build()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_round_trips_at_every_qos() {
    let (broker, url) = start(BrokerConfig::default()).await;
    let c = client(&url, "round-trips");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("rt/{}", qos as u8);
        let mut sub = within("subscribe", c.subscribe(&topic, qos))
            .await
            .expect("SUBACK");
        within("publish", c.publish(&topic, "ping", qos))
            .await
            .expect("acknowledged");
        let m = within("message", sub.recv()).await.expect("a message");
        assert_eq!((&m.payload[..], m.qos), (&b"ping"[..], qos));
    }
    within("disconnect", c.disconnect())
        .await
        .expect("DISCONNECT");
    within("shutdown", broker.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_gets_retained_messages() {
    let (broker, url) = start(BrokerConfig::default()).await;
    let publisher = client(&url, "publisher");
    let mut retained = mqttproto::proto::codec::Publish::new(
        mqttproto::proto::TopicName::try_from("state/door").expect("a topic"),
        &b"open"[..],
    );
    retained.retain = true;
    retained.qos = QoS::AtLeastOnce;
    within("retained publish", publisher.publish_message(retained))
        .await
        .expect("acknowledged");
    let late = client(&url, "late");
    let mut sub = within("subscribe", late.subscribe("state/#", QoS::AtLeastOnce))
        .await
        .expect("SUBACK");
    let m = within("retained", sub.recv()).await.expect("a message");
    assert!(m.retain && &m.payload[..] == b"open", "{m:?}");
    within("shutdown", broker.shutdown()).await;
}

/// 1,000 clients on loopback, each subscribed to its own topic and publishing one QoS 1
/// message to its neighbour's: every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_smoke_1000_clients_qos1_no_loss() {
    const N: usize = 1000;
    let (broker, url) = start(BrokerConfig::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    for i in 0..N {
        let url = url.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let c = client(&url, &format!("load-{i}"));
            let mut sub = c
                .subscribe(&format!("load/{i}"), QoS::AtLeastOnce)
                .await
                .expect("SUBACK");
            // Everyone is subscribed before anyone publishes.
            barrier.wait().await;
            let to = (i + 1) % N;
            c.publish(&format!("load/{to}"), format!("from {i}"), QoS::AtLeastOnce)
                .await
                .expect("PUBACK");
            let m = sub.recv().await.expect("a message");
            let from = (i + N - 1) % N;
            assert_eq!(m.payload, format!("from {from}").into_bytes());
            // Nothing more is coming.
            drop(sub);
            let _ = c.disconnect().await;
        });
    }
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.expect("a client task");
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), all).await {
        Ok(()) => {}
        Err(_) => panic!("1,000 clients did not finish within 30 s"),
    }
    within("shutdown", broker.shutdown()).await;
}
