//! The `blocking` feature alone pulls in no async runtime: `cargo tree -e normal -p mqttproto
//! --no-default-features --features blocking` (offline, from the lock file) lists no tokio, no
//! mio, no async-std/smol, no futures crate, and does list the blocking transports' crates.

use std::process::Command;

#[test]
fn blocking_feature_alone_has_no_async_runtime() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "-p",
            "mqttproto",
            "--no-default-features",
            "--features",
            "blocking",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).expect("UTF-8");
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for krate in ["mqttproto", "mqttproto-core", "rustls", "tungstenite"] {
        assert!(crates.contains(&krate), "{krate} missing from:\n{tree}");
    }
    let forbidden: Vec<&&str> = crates
        .iter()
        .filter(|c| {
            c.starts_with("tokio")
                || c.starts_with("async-")
                || c.starts_with("futures")
                || **c == "mio"
                || **c == "smol"
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "async runtime crates with only `blocking`: {forbidden:?}\n{tree}"
    );
}
