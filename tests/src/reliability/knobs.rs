//! Seeds and the knobs that turn the default run into a longer soak.
//!
//! Every randomised test prints its seed on stderr (shown with
//! `--nocapture`, and always when it fails); setting [`SEED_VAR`] to it
//! replays the same schedule of kills or the same generated cases.

use std::time::{SystemTime, UNIX_EPOCH};

/// The variable fixing the seed of every randomised reliability test.
pub const SEED_VAR: &str = "WAYMARK_SEED";
/// The variable raising the number of SIGKILLs per backend (default 100).
pub const KILLS_VAR: &str = "WAYMARK_SOAK_KILLS";
/// The variable raising the number of model-test cases per backend (default 500).
pub const CASES_VAR: &str = "WAYMARK_MODEL_CASES";

/// The seed of one test: [`SEED_VAR`] when set, else a fresh one. Printed
/// with the test's name and how to replay it.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR} must be an unsigned integer, got {text:?}")),
        Err(_) => fresh_seed(),
    };
    announce(format_args!(
        "{test}: seed {seed} (replay with {SEED_VAR}={seed})"
    ));
    seed
}

/// Prints one line on the process's real standard error. The test harness
/// captures `eprintln!` of passing tests; seeds and counts must show in
/// every CI log, so they bypass the capture.
pub fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A number from the environment variable `var`, else `default`.
pub fn knob(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be an unsigned integer, got {text:?}")),
        Err(_) => default,
    }
}

/// The clock mixed with the process id: different in every run and every
/// process, which is all a seed needs.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SplitMix64::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}

/// SplitMix64: a tiny, fast generator whose whole state is the seed, so a
/// printed seed replays the same sequence on any machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0); the tiny modulo bias is
    /// irrelevant for scheduling kills.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "an empty range");
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(first[0], first[1]);
        assert!((0..1000).all(|_| a.below(7) < 7));
    }
}
