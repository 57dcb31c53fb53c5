//! `mqttproto passwd` and `mqttproto broker --config FILE`: the password file round trip,
//! configuration errors naming the file, the line and the key, and a broker started from a
//! configuration file serving our client over WebSocket with a password file and an ACL.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqttproto::proto::{QoS, ReasonCode};
use mqttproto::tokio::auth::{PasswordEntries, PasswordHash};
use mqttproto::tokio::Client;

const BIN: &str = env!("CARGO_BIN_EXE_mqttproto");
const WAIT: Duration = Duration::from_secs(10);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqttproto-cfg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn passwd_creates_updates_and_deletes_users() {
    let dir = temp_dir("passwd");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    let (ok, out) = run(
        &[
            "passwd",
            "-c",
            f,
            "alice",
            "--password",
            "pw1",
            "--iterations",
            "100000",
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        &["passwd", f, "bob", "--iterations", "100000"],
        Some("pw2\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["passwd", "-D", f, "alice"], None);
    assert!(ok, "{out}");
    let (ok, out) = run(&["passwd", "-D", f, "alice"], None);
    assert!(!ok && out.contains("no user"), "{out}");
    let (ok, out) = run(
        &[
            "passwd",
            f,
            "carol",
            "--password",
            "x",
            "--iterations",
            "10",
        ],
        None,
    );
    assert!(!ok && out.contains("at least 100000"), "{out}");
    let (ok, out) = run(
        &["passwd", &format!("{f}.missing"), "dan", "--password", "x"],
        None,
    );
    assert!(!ok && out.contains("-c"), "{out}");

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("bob:$pbkdf2-sha512$100000$"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    let entries = PasswordEntries::parse(&text).unwrap();
    let hash: &PasswordHash = entries.get("bob").unwrap();
    assert!(hash.verify(b"pw2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `mqttproto broker --config` on `text`, which must fail; returns stderr and the path.
fn config_error(dir: &Path, name: &str, text: &str) -> (String, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    let (ok, out) = run(&["broker", "--config", &p], None);
    assert!(!ok, "{name} was accepted: {out}");
    (out, p)
}

#[test]
fn config_errors_name_the_file_the_line_and_the_key() {
    let dir = temp_dir("errors");
    let cases: &[(&str, &str, &str)] = &[
        (
            "type.toml",
            "# limits\n[limits]\nmax_connections = \"many\"\n",
            ":3: key `max_connections`:",
        ),
        (
            "unknown.toml",
            "[limits]\n\nbogus = 1\n",
            ":3: key `bogus`:",
        ),
        (
            "url.toml",
            "[[listener]]\nurl = \"gopher://127.0.0.1:1\"\n",
            ":2: key `url`: invalid listen address",
        ),
        (
            "tls.toml",
            "[[listener]]\nurl = \"mqtts://127.0.0.1:0\"\n",
            ":2: key `cert_file`: missing",
        ),
        (
            "mode.toml",
            "[[listener]]\nurl = \"mqtts://127.0.0.1:0\"\ncert_file = \"a\"\nkey_file = \"b\"\n\
             client_ca_file = \"c\"\nclient_certificates = \"sometimes\"\n",
            ":6: key `client_certificates`:",
        ),
        (
            "passwd.toml",
            "[auth]\n\npassword_file = \"does-not-exist\"\n",
            ":3: key `password_file`:",
        ),
        (
            "zero.toml",
            "[limits]\nreceive_maximum = 0\n",
            ":2: key `receive_maximum`: must be at least 1",
        ),
    ];
    for (name, text, expected) in cases {
        let (out, path) = config_error(&dir, name, text);
        assert!(
            out.contains(&format!("{path}{expected}")),
            "{name}: expected {path}{expected} in: {out}"
        );
    }
    // Errors inside referenced files name those files and lines.
    std::fs::write(dir.join("acl"), "user a\ntopic read a/#/b\n").unwrap();
    let (out, _) = config_error(&dir, "acl.toml", "[auth]\nacl_file = \"acl\"\n");
    assert!(
        out.contains("key `acl_file`") && out.contains("acl:2:"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the broker when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn broker_from_config_serves_websocket_with_passwords_and_acl() {
    serves_websocket_with_passwords_and_acl("tokio");
}

#[test]
fn blocking_broker_from_config_serves_websocket_with_passwords_and_acl() {
    serves_websocket_with_passwords_and_acl("blocking");
}

fn serves_websocket_with_passwords_and_acl(driver: &str) {
    let dir = temp_dir(&format!("serve-{driver}"));
    // A weak hash keeps the debug build fast (the connect timeout covers authentication);
    // `passwd_creates_updates_and_deletes_users` covers real ones.
    let mut users = PasswordEntries::default();
    users
        .set(
            "alice",
            PasswordHash::new_insecure_for_tests(b"s3cret", 1000),
        )
        .unwrap();
    std::fs::write(dir.join("passwd"), users.to_text()).unwrap();
    std::fs::write(dir.join("acl"), "user alice\ntopic readwrite alice/#\n").unwrap();
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        "[[listener]]\nurl = \"ws://127.0.0.1:0/mqtt\"\n\n[auth]\npassword_file = \"passwd\"\n\
         acl_file = \"acl\"\n\n[limits]\nmax_connections = 10\nmax_packet_size = 65536\n\
         max_queued_messages = 100\nreceive_maximum = 20\nconnect_timeout = 5\n\
         topic_alias_maximum = 4\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "broker",
            "--driver",
            driver,
            "--config",
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let broker = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/mqtt"),
        "{url}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = Client::builder(&url)
            .unwrap()
            .credentials("alice", "s3cret")
            .build();
        let mut sub = tokio::time::timeout(WAIT, c.subscribe("alice/#", QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.granted(), [ReasonCode::GrantedQoS1]);
        let denied = tokio::time::timeout(WAIT, c.subscribe("other/#", QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(denied.granted(), [ReasonCode::NotAuthorized]);
        let rc = tokio::time::timeout(WAIT, c.publish("other/x", "no", QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rc, ReasonCode::NotAuthorized);
        let rc = tokio::time::timeout(WAIT, c.publish("alice/x", "yes", QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rc, ReasonCode::Success);
        let msg = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&msg.payload[..], b"yes");
        c.disconnect().await.unwrap();
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
