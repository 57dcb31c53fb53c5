//! The async client against the real Mosquitto broker (Debian's `mosquitto`), started on a free
//! loopback port with a generated configuration. Every wait is bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Mosquitto, Proxy};
use mqttproto::proto::codec::{Publish, WillProperties};
use mqttproto::proto::{MqttString, QoS, ReasonCode, TopicName, UserProperty};
use mqttproto::tokio::client::{ClientError, ConnectionEvent, Reconnect, Subscription};
use mqttproto::tokio::Client;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &mut Subscription) -> Publish {
    timeout(WAIT, sub.recv())
        .await
        .expect("message in time")
        .expect("subscription open")
}

fn client(url: &str, id: &str) -> Client {
    Client::builder(url).unwrap().client_id(id).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trips_with_properties() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let sub_client = client(&m.url(), "rt-sub");
    let pub_client = client(&m.url(), "rt-pub");
    let mut sub = timeout(WAIT, sub_client.subscribe("rt/#", QoS::ExactlyOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.granted(), &[ReasonCode::GrantedQoS2]);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut p = Publish::new(
            TopicName::try_from(format!("rt/{i}")).unwrap(),
            format!("m{i}"),
        );
        p.qos = qos;
        p.properties.content_type = Some(MqttString::try_from("text/plain").unwrap());
        p.properties.user_properties = vec![UserProperty::new(
            MqttString::try_from("k").unwrap(),
            MqttString::try_from("v").unwrap(),
        )];
        p.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        let rc = timeout(WAIT, pub_client.publish_message(p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rc, ReasonCode::Success);
        let got = next(&mut sub).await;
        assert_eq!(got.topic.as_str(), format!("rt/{i}"));
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], format!("m{i}").as_bytes());
        assert_eq!(got.properties.content_type.as_ref().unwrap(), "text/plain");
        assert_eq!(got.properties.user_properties.len(), 1);
        assert_eq!(
            got.properties.correlation_data.as_deref(),
            Some(&b"\x01\x02"[..])
        );
    }
    pub_client.disconnect().await.unwrap();
    sub_client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_no_matching_subscribers() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let c = client(&m.url(), "ret");
    let mut p = Publish::new(TopicName::try_from("ret/a").unwrap(), "kept");
    p.retain = true;
    p.qos = QoS::AtLeastOnce;
    // Nobody subscribes yet: Mosquitto answers 0x10.
    let rc = timeout(WAIT, c.publish_message(p)).await.unwrap().unwrap();
    assert_eq!(rc, ReasonCode::NoMatchingSubscribers);
    let mut sub = c.subscribe("ret/+", QoS::AtLeastOnce).await.unwrap();
    let got = next(&mut sub).await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"kept");
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_reference_counted_and_unsubscribe_on_drop() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let c = client(&m.url(), "refs");
    let mut a = c.subscribe("rc/x", QoS::AtLeastOnce).await.unwrap();
    let mut b = c.subscribe("rc/x", QoS::AtLeastOnce).await.unwrap();
    c.publish("rc/x", "1", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(&next(&mut a).await.payload[..], b"1");
    assert_eq!(&next(&mut b).await.payload[..], b"1");
    drop(a);
    // Still subscribed through `b`.
    assert_eq!(
        c.publish("rc/x", "2", QoS::AtLeastOnce).await.unwrap(),
        ReasonCode::Success
    );
    assert_eq!(&next(&mut b).await.payload[..], b"2");
    drop(b);
    // Now unsubscribed on the wire: Mosquitto reports no matching subscribers.
    let mut rc = ReasonCode::Success;
    for _ in 0..50 {
        rc = c.publish("rc/x", "3", QoS::AtLeastOnce).await.unwrap();
        if rc == ReasonCode::NoMatchingSubscribers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rc, ReasonCode::NoMatchingSubscribers);
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_respected_against_max_inflight_5() {
    let Some(m) = Mosquitto::start("max_inflight_messages 5") else {
        return;
    };
    let sub_client = client(&m.url(), "rm-sub");
    let mut sub = sub_client.subscribe("rm", QoS::AtLeastOnce).await.unwrap();
    let c = client(&m.url(), "rm-pub");
    let mut events = c.events();
    // 200 publishes at once: at most 5 may be unacknowledged; a client that sent more would be
    // disconnected with 0x93 by Mosquitto.
    let futures: Vec<_> = (0..200)
        .map(|i| c.publish("rm", format!("{i}"), QoS::AtLeastOnce))
        .collect();
    for f in futures {
        assert_eq!(
            timeout(WAIT, f).await.unwrap().unwrap(),
            ReasonCode::Success
        );
    }
    for i in 0..200 {
        assert_eq!(next(&mut sub).await.payload, Bytes::from(format!("{i}")));
    }
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, ConnectionEvent::Disconnected { .. }),
            "{ev:?}"
        );
    }
    c.disconnect().await.unwrap();
    sub_client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_above_broker_maximum_packet_size_is_refused_clearly() {
    let Some(m) = Mosquitto::start("max_packet_size 1000") else {
        return;
    };
    let c = client(&m.url(), "big");
    // Wait for the connection so that the broker's limit is known.
    let mut events = c.events();
    let _ = c.subscribe("big/ack", QoS::AtMostOnce).await.unwrap();
    let err = c
        .publish("big/t", vec![0u8; 5000], QoS::AtLeastOnce)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::State(mqttproto::proto::StateError::PacketTooLarge { max: 1000, .. })
        ),
        "{err}"
    );
    // The connection is unharmed.
    assert_eq!(
        c.publish("big/t", "small", QoS::AtLeastOnce).await.unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    assert!(events
        .try_recv()
        .map_or(true, |e| !matches!(e, ConnectionEvent::Disconnected { .. })));
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delivered_when_the_connection_is_killed() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let watcher = client(&m.url(), "will-watch");
    let mut wills = watcher
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let proxy = Proxy::start(format!("127.0.0.1:{}", m.port).parse().unwrap()).await;
    let will = mqttproto::proto::codec::Will {
        topic: TopicName::try_from("wills/w1").unwrap(),
        payload: Bytes::from_static(b"w1 died"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    let c = Client::builder(&proxy.url())
        .unwrap()
        .client_id("w1")
        .will(will)
        .reconnect(Reconnect::Off)
        .build();
    let _s = c.subscribe("w1/x", QoS::AtMostOnce).await.unwrap();
    proxy.cut();
    let got = next(&mut wills).await;
    assert_eq!(&got.payload[..], b"w1 died");
    watcher.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_resume_across_a_broker_restart_without_loss_or_duplicates() {
    let Some(mut m) = Mosquitto::start("persistence true\nautosave_interval 1") else {
        return;
    };
    let fast = Reconnect::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    let sub_client = Client::builder(&m.url())
        .unwrap()
        .client_id("resume-sub")
        // Mosquitto 2.0.11 does not persist across a restart a session that began with Clean
        // Start = 1 (seen in its logs: CONNACK (0, 0) after the restart), so start with 0.
        .clean_start(false)
        .session_expiry(600)
        .reconnect(fast.clone())
        .build();
    let mut sub_events = sub_client.events();
    let mut sub = sub_client
        .subscribe("resume/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    let pub_client = Client::builder(&m.url())
        .unwrap()
        .client_id("resume-pub")
        .clean_start(false)
        .session_expiry(600)
        .reconnect(fast)
        .build();
    let mut pub_events = pub_client.events();
    const N: usize = 60;
    let mut outcomes = Vec::new();
    for i in 0..N {
        if i == N / 2 {
            m.restart();
        }
        outcomes.push(pub_client.publish(
            &format!("resume/{}", i % 3),
            format!("{i}"),
            QoS::ExactlyOnce,
        ));
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for o in outcomes {
        let rc = timeout(Duration::from_secs(30), o)
            .await
            .expect("publish completes")
            .unwrap();
        assert!(!rc.is_error(), "{rc}");
    }
    let mut seen = vec![0u32; N];
    for _ in 0..N {
        let Ok(msg) = timeout(Duration::from_secs(30), sub.recv()).await else {
            let mut evs = Vec::new();
            while let Ok(ev) = sub_events.try_recv() {
                evs.push(ev);
            }
            let missing: Vec<_> = (0..N).filter(|&i| seen[i] == 0).collect();
            panic!("messages missing: {missing:?}; subscriber events: {evs:?}");
        };
        let msg = msg.unwrap();
        let i: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        seen[i] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "lost or duplicated: {seen:?}");
    // Nothing more arrives (no duplicates later either).
    assert!(timeout(Duration::from_millis(300), sub.recv())
        .await
        .is_err());
    // The subscriber's session was resumed, not recreated.
    let mut resumed = false;
    while let Ok(ev) = sub_events.try_recv() {
        resumed |= matches!(
            ev,
            ConnectionEvent::Connected {
                session_present: true
            }
        );
        assert!(!matches!(ev, ConnectionEvent::SessionLost), "session lost");
    }
    assert!(resumed, "the subscriber resumed its session");
    let mut reconnected = false;
    while let Ok(ev) = pub_events.try_recv() {
        reconnected |= matches!(ev, ConnectionEvent::Connected { .. });
    }
    assert!(reconnected);
    pub_client.disconnect().await.unwrap();
    sub_client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_from_inside_a_message_handler_does_not_deadlock() {
    let Some(m) = Mosquitto::start("") else {
        return;
    };
    let c = Client::builder(&m.url())
        .unwrap()
        .client_id("echo")
        .subscription_capacity(2)
        .build();
    let mut pings = c.subscribe("ping", QoS::AtLeastOnce).await.unwrap();
    let mut pongs = c.subscribe("pong", QoS::AtLeastOnce).await.unwrap();
    let echo = c.clone();
    let handler = tokio::spawn(async move {
        for _ in 0..50 {
            let msg = pings.recv().await.unwrap();
            // Awaiting a publish from the handler while more messages arrive.
            echo.publish("pong", msg.payload, QoS::AtLeastOnce)
                .await
                .unwrap();
        }
    });
    for i in 0..50 {
        c.try_publish({
            let mut p = Publish::new(TopicName::try_from("ping").unwrap(), format!("{i}"));
            p.qos = QoS::AtLeastOnce;
            p
        })
        .unwrap();
    }
    for i in 0..50 {
        assert_eq!(next(&mut pongs).await.payload, Bytes::from(format!("{i}")));
    }
    timeout(WAIT, handler).await.unwrap().unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_reported_and_publish_fails_when_reconnect_is_off() {
    let port = common::free_port();
    let c = Client::builder(&format!("127.0.0.1:{port}"))
        .unwrap()
        .reconnect(Reconnect::Off)
        .build();
    let err = timeout(WAIT, c.publish("x", "y", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_gets_back_pressure_not_loss_at_qos0() {
    let Some(m) = Mosquitto::start("max_queued_messages 0") else {
        return;
    };
    let slow = Client::builder(&m.url())
        .unwrap()
        .client_id("slow-qos0")
        .subscription_capacity(4)
        .build();
    let mut sub = slow.subscribe("bp/#", QoS::AtMostOnce).await.unwrap();
    let producer = client(&m.url(), "fast-qos0");
    const N: usize = 5_000;
    for i in 0..N - 1 {
        producer
            .try_publish({
                let mut p = Publish::new(TopicName::try_from("bp/x").unwrap(), format!("{i}"));
                p.qos = QoS::AtMostOnce;
                p
            })
            .unwrap();
    }
    producer
        .publish("bp/x", format!("{}", N - 1), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Read slowly: the client must stop reading rather than drop.
    for i in 0..N {
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let msg = next(&mut sub).await;
        assert_eq!(msg.payload, Bytes::from(format!("{i}")), "message {i}");
    }
    producer.disconnect().await.unwrap();
    slow.disconnect().await.unwrap();
}
