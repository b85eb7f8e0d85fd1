//! Building an example binary of a workspace package, for tests that run
//! it as a real process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Builds example `name` of the package at `manifest` (a no-op when it is
/// up to date) with `features` and no default ones, in the profile of the
/// calling test binary, and returns its path. `cargo test --test …` does
/// not build examples, and a binary left by an older build would test old
/// code.
pub fn example_binary(manifest: &Path, name: &str, features: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .expect("target/<profile>/deps")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest)
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

/// The manifest of the `waymark` package (the facade), whose examples the
/// tests run.
pub fn facade_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/waymark/Cargo.toml")
}
