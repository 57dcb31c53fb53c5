//! Python's paho-mqtt 2.x (PyPI), in MQTT 5 mode, against our broker.
//!
//! Each test starts the broker (each driver: `tokio_broker::…` and `blocking_broker::…`) on a
//! free loopback port and runs one scenario of
//! `tests/paho/scenarios.py`, which checks what paho sees and exits non-zero on the first
//! failed check. `./scripts/test.sh` installs paho-mqtt when it is missing; without it these
//! tests fail, unless MQTTPROTO_SKIP_PEER_TESTS=1.

mod common;
mod drivers;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivers::{Config, Driver, TestBroker};
use mqttproto::server::acl::AclFile;
use mqttproto::server::auth::{PasswordEntries, PasswordFile, PasswordHash};

/// The longest a scenario may run (each wait inside it is bounded by 10 s).
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/scenarios.py")
}

/// Whether python3 with paho-mqtt 2.x is here; fails the test when it is not, unless skipping
/// was asked for.
fn paho_available() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith('2.') else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if common::peers_skipped() {
        eprintln!("skipped: python3 with paho-mqtt 2.x not found (MQTTPROTO_SKIP_PEER_TESTS=1)");
        return false;
    }
    panic!(
        "python3 with paho-mqtt 2.x not found: run ./scripts/test.sh (it installs paho-mqtt from \
         PyPI), or set MQTTPROTO_SKIP_PEER_TESTS=1 to skip the peer tests"
    );
}

/// Runs one scenario against the broker on `port`; panics with paho's output when it fails.
fn run_scenario(name: &str, port: u16) {
    let mut child = Command::new("python3")
        .arg(script())
        .args([name, "127.0.0.1", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break Some(status);
        }
        if started.elapsed() > SCENARIO_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    eprintln!("{out}{err}");
    let status = status.unwrap_or_else(|| panic!("scenario {name} ran past {SCENARIO_LIMIT:?}"));
    assert!(
        status.success() && out.lines().any(|l| l == "PASS"),
        "paho scenario {name} failed ({status}):\n{out}{err}"
    );
    // A scenario that passed made checks: each printed an "ok:" line.
    assert!(out.lines().filter(|l| l.starts_with("ok:")).count() >= 2);
}

fn scenario(driver: Driver, name: &str) {
    if !paho_available() {
        return;
    }
    let broker = TestBroker::start_tcp(driver, Config::default());
    run_scenario(name, broker.port());
}

fn paho_qos_0_1_2_round_trips_with_properties(driver: Driver) {
    scenario(driver, "qos_round_trips");
}

fn paho_retained_messages_and_retain_handling(driver: Driver) {
    scenario(driver, "retained");
}

fn paho_will_when_the_process_is_killed(driver: Driver) {
    scenario(driver, "will_no_delay");
}

fn paho_will_delay_interval(driver: Driver) {
    scenario(driver, "will_with_delay");
}

fn paho_session_resume_and_expiry(driver: Driver) {
    scenario(driver, "session_resume");
}

fn paho_shared_subscription(driver: Driver) {
    scenario(driver, "shared_subscription");
}

fn paho_subscription_identifiers(driver: Driver) {
    scenario(driver, "subscription_identifiers");
}

fn paho_topic_aliases(driver: Driver) {
    scenario(driver, "topic_alias");
}

fn paho_no_local(driver: Driver) {
    scenario(driver, "no_local");
}

fn paho_authentication_and_acl_failures(driver: Driver) {
    if !paho_available() {
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("mqttproto-paho-{}-{driver:?}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut entries = PasswordEntries::default();
    entries
        .set(
            "alice",
            PasswordHash::new_insecure_for_tests(b"s3cret", 1000),
        )
        .expect("a user");
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, entries.to_text()).expect("write passwd");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").expect("write acl");
    let config = Config::default()
        .with_authenticator(PasswordFile::load(&passwd).expect("password file"))
        .with_authorizer(AclFile::load(&acl).expect("acl file"));
    let broker = TestBroker::start_tcp(driver, config);
    run_scenario("auth_failures", broker.port());
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(sync:
    paho_qos_0_1_2_round_trips_with_properties,
    paho_retained_messages_and_retain_handling,
    paho_will_when_the_process_is_killed,
    paho_will_delay_interval,
    paho_session_resume_and_expiry,
    paho_shared_subscription,
    paho_subscription_identifiers,
    paho_topic_aliases,
    paho_no_local,
    paho_authentication_and_acl_failures,
);
