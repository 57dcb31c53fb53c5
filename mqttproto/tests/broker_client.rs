//! Both brokers (tokio and blocking, see `drivers/`) with our own async `Client`: round trips,
//! retained messages, and a load smoke test (1,000 concurrent clients at QoS 1, no loss).

#[macro_use]
mod drivers;

use std::time::Duration;

use mqttproto::proto::QoS;
use mqttproto::tokio::client::Reconnect;
use mqttproto::tokio::Client;

use drivers::{Config, Driver, TestBroker};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(5);

fn start(driver: Driver, config: Config) -> (TestBroker, String) {
    let broker = TestBroker::start_tcp(driver, config);
    let url = broker.url();
    (broker, url)
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

async fn async_client_round_trips_at_every_qos(driver: Driver) {
    let (broker, url) = start(driver, Config::default());
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

async fn async_client_gets_retained_messages(driver: Driver) {
    let (broker, url) = start(driver, Config::default());
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
async fn load_smoke_1000_clients_qos1_no_loss(driver: Driver) {
    const N: usize = 1000;
    let (broker, url) = start(driver, Config::default());
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

per_driver!(async:
    async_client_round_trips_at_every_qos,
    async_client_gets_retained_messages,
    load_smoke_1000_clients_qos1_no_loss,
);
