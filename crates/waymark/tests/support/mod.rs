//! What the example tests share: building an example binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Builds the example (a no-op when it is up to date) with this test's
/// profile and features, and returns its path. `cargo test --test …` does
/// not build examples, and a binary left by an older build would test old
/// code.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .expect("target/<profile>/deps")
        .to_owned();
    let features: Vec<&str> = [
        ("sqlite", cfg!(feature = "sqlite")),
        ("sqlite-bundled", cfg!(feature = "sqlite-bundled")),
        ("testkit", cfg!(feature = "testkit")),
        ("postgres", cfg!(feature = "postgres")),
        ("postgres-tls", cfg!(feature = "postgres-tls")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args([
            "--example",
            name,
            "--message-format=json-render-diagnostics",
        ])
        .args(["--no-default-features", "--features", &features.join(",")])
        .stderr(Stdio::inherit());
    if profile != "debug" {
        build.args(["--profile", &profile]);
    }
    let output = build.output().expect("running cargo build");
    assert!(output.status.success(), "building example {name} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo did not report the executable of example {name}"))
}
