//! `mqttproto bench` against our broker, with tiny counts: every scenario reports, the numbers
//! parse, and at QoS 1 every message arrives exactly once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);
/// The longest the bench run may take before the test gives up (it takes well under a second).
const BENCH_LIMIT: Duration = Duration::from_secs(90);

/// A child process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mqttproto broker` on a free loopback port; returns it and the port.
fn start_broker() -> (Process, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqttproto"))
        .args(["broker", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqttproto broker");
    let out = child.stdout.take().expect("stdout");
    let process = Process(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(WAIT).expect("a listening line within 5 s");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (process, port)
}

/// Runs `mqttproto bench ARGS`, bounded; returns (success, stdout, stderr).
fn bench(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_mqttproto"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqttproto bench");
    let mut process = Process(child);
    let mut stdout = process.0.stdout.take().expect("stdout");
    let mut stderr = process.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BENCH_LIMIT;
    let status = loop {
        match process.0.try_wait().expect("wait for bench") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("mqttproto bench did not finish within {BENCH_LIMIT:?}"),
        }
    };
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    (status.success(), out, err)
}

fn parse_results(stdout: &str) -> Vec<HashMap<String, String>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .map(|l| {
            l.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect()
}

fn num(r: &HashMap<String, String>, key: &str) -> f64 {
    let v = r.get(key).unwrap_or_else(|| panic!("no {key} in {r:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number in {r:?}"))
}

#[test]
fn every_scenario_reports_and_qos1_loses_nothing() {
    let (broker, port) = start_broker();
    let port = port.to_string();
    let pid = broker.0.id().to_string();
    let (ok, stdout, stderr) = bench(&[
        "-p",
        &port,
        "--scenario",
        "idle,fanin,fanout,latency,large",
        "--qos",
        "0,1",
        "--publishers",
        "3",
        "--count",
        "300",
        "--fanout-subscribers",
        "4",
        "--fanout-count",
        "200",
        "--latency-count",
        "40",
        "--rate",
        "2000",
        "--large-payload",
        "200000",
        "--large-count",
        "3",
        "--idle-connections",
        "25",
        "--idle-hold",
        "0",
        "--broker-pid",
        &pid,
        "--max-seconds",
        "20",
        "--label",
        "ours",
    ]);
    assert!(ok, "bench failed: {stderr}\n{stdout}");
    assert!(stdout.contains("msg/s"), "no table header in:\n{stdout}");
    let results = parse_results(&stdout);
    // idle, then 4 message runs per QoS.
    assert_eq!(results.len(), 1 + 2 * 4, "results:\n{stdout}");

    let idle = &results[0];
    assert_eq!(idle["scenario"], "idle");
    assert_eq!(idle["label"], "ours");
    assert_eq!(num(idle, "connections"), 25.0);
    assert!(num(idle, "connect_per_s") > 0.0);
    assert!(num(idle, "rss_before_kib") > 0.0);
    assert!(num(idle, "rss_after_kib") > 0.0);
    num(idle, "bytes_per_conn");

    let mut seen = Vec::new();
    for r in &results[1..] {
        let scenario = r["scenario"].clone();
        let qos = num(r, "qos");
        let (sent, expected, received) = (num(r, "sent"), num(r, "expected"), num(r, "received"));
        let (pubs, subs) = (num(r, "publishers"), num(r, "subscribers"));
        let per_publisher = match scenario.as_str() {
            "fanin" => 300.0,
            "fanout" => 200.0,
            "latency" => 40.0,
            "large" => 3.0,
            other => panic!("unexpected scenario {other}"),
        };
        assert_eq!(expected, sent * subs, "{r:?}");
        assert!(received <= expected, "{r:?}");
        assert_eq!(num(r, "duplicated"), 0.0, "{r:?}");
        assert_eq!(num(r, "lost"), expected - received, "{r:?}");
        if qos == 1.0 {
            // Every message acknowledged, and every subscriber got each exactly once.
            assert_eq!(sent, per_publisher * pubs, "{r:?}");
            assert_eq!(received, expected, "{r:?}");
            assert_eq!(num(r, "refused"), 0.0, "{r:?}");
        }
        assert!(num(r, "msg_per_s") > 0.0, "{r:?}");
        assert!(num(r, "mib_per_s") >= 0.0, "{r:?}");
        if scenario == "latency" || scenario == "large" {
            let (p50, p90, p99, max) = (
                num(r, "p50_us"),
                num(r, "p90_us"),
                num(r, "p99_us"),
                num(r, "max_us"),
            );
            assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{r:?}");
        }
        seen.push((scenario, qos as u8, subs as usize));
    }
    for qos in [0, 1] {
        for (scenario, subs) in [("fanin", 1), ("fanout", 4), ("latency", 1), ("large", 1)] {
            assert!(
                seen.contains(&(scenario.to_string(), qos, subs)),
                "{scenario} at QoS {qos} missing:\n{stdout}"
            );
        }
    }
}

#[test]
fn too_small_payload_is_refused_with_a_clear_error() {
    let (ok, stdout, stderr) = bench(&["-p", "1", "--payload", "8"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("--payload must be at least 20 bytes"),
        "{stderr}"
    );
}
