//! Routing benchmarks: matching a topic name against the subscription index.
//!
//! The claim under test (docs/DESIGN.md, "The broker's shape"): routing a PUBLISH costs time
//! proportional to the matching subscriptions and the topic's depth, not to the number of
//! subscriptions. `routing/index` matches one topic against 10 matching filters plus 1k, 10k and
//! 100k filters that do not match (a mix of exact, `+` and `#` filters, many sharing the topic's
//! leading levels); criterion's throughput is per delivered match, so flat numbers across the sizes
//! confirm the claim. `routing/linear_scan` is the baseline the index replaces: `filter_matches`
//! over every filter.
//!
//! Run with `cargo bench -p mqttproto-core --bench routing -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mqttproto_core::broker::index::{Match, SubscriptionIndex};
use mqttproto_core::{filter_matches, QoS, TopicFilter, TopicName};

const TOPIC: &str = "plant/line-0/machine-0/temperature";

/// Ten distinct filters that all match [`TOPIC`].
const MATCHING: [&str; 10] = [
    "plant/line-0/machine-0/temperature",
    "plant/line-0/machine-0/+",
    "plant/line-0/+/temperature",
    "plant/+/machine-0/temperature",
    "+/line-0/machine-0/temperature",
    "+/+/+/+",
    "plant/line-0/machine-0/#",
    "plant/line-0/#",
    "plant/#",
    "#",
];

/// The `i`-th filter that does not match [`TOPIC`]: exact, `+` and `#` filters under the same
/// `plant/` prefix, a quarter of them below the `plant/line-0/+` node the topic's walk visits.
fn non_matching(i: usize) -> String {
    let line = 1 + i / 50;
    let machine = i % 50;
    match i % 4 {
        0 => format!("plant/line-{line}/machine-{machine}/temperature"),
        1 => format!("plant/line-{line}/+/temperature-{machine}"),
        2 => format!("plant/line-{line}/machine-{machine}/#"),
        _ => format!("plant/line-0/+/sensor-{i}"),
    }
}

fn filters(non_matching_count: usize) -> Vec<TopicFilter> {
    MATCHING
        .iter()
        .map(|f| (*f).to_owned())
        .chain((0..non_matching_count).map(non_matching))
        .map(|f| TopicFilter::try_from(f).expect("valid filter"))
        .collect()
}

fn build_index(filters: &[TopicFilter]) -> SubscriptionIndex<u32, QoS> {
    let mut index = SubscriptionIndex::new();
    for (key, filter) in filters.iter().enumerate() {
        index.insert(filter, key as u32, QoS::AtLeastOnce);
    }
    index
}

fn count_matches(index: &SubscriptionIndex<u32, QoS>, topic: &TopicName) -> usize {
    let mut n = 0;
    index.matches(topic, |m| {
        if let Match::Subscription { key, value } = m {
            black_box((key, value));
            n += 1;
        }
    });
    n
}

fn routing(c: &mut Criterion) {
    let topic = TopicName::try_from(TOPIC).expect("valid topic");

    let mut group = c.benchmark_group("routing/index");
    group.throughput(Throughput::Elements(MATCHING.len() as u64));
    for n in [1_000, 10_000, 100_000] {
        let filters = filters(n);
        let index = build_index(&filters);
        assert_eq!(index.len(), n + MATCHING.len());
        assert_eq!(count_matches(&index, &topic), MATCHING.len());
        group.bench_with_input(BenchmarkId::from_parameter(n), &index, |b, index| {
            b.iter(|| count_matches(index, black_box(&topic)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("routing/linear_scan");
    group.throughput(Throughput::Elements(MATCHING.len() as u64));
    for n in [1_000, 10_000] {
        let filters = filters(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &filters, |b, filters| {
            b.iter(|| {
                let t = black_box(&topic).as_bytes();
                filters
                    .iter()
                    .filter(|f| filter_matches(f.filter_bytes(), t))
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
