//! What the example tests share: building an example binary.

use std::path::{Path, PathBuf};

/// Builds the example (a no-op when it is up to date) with this test's
/// profile and features, and returns its path.
pub fn example_binary(name: &str) -> PathBuf {
    let features: Vec<&str> = [
        ("sqlite", cfg!(feature = "sqlite")),
        ("sqlite-bundled", cfg!(feature = "sqlite-bundled")),
        ("testkit", cfg!(feature = "testkit")),
        ("postgres", cfg!(feature = "postgres")),
        ("postgres-tls", cfg!(feature = "postgres-tls")),
        ("cli", cfg!(feature = "cli")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    waymark_tests::examples::example_binary(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
        name,
        &features,
    )
}
