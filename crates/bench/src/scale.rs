//! How big each benchmark is: the full sizes of the issue, or a quick mode
//! for CI; and which benchmarks to run.

use std::time::Duration;

/// Sizes and sample budgets of one run.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Quick mode: small sizes, few samples.
    pub quick: bool,
    /// Registered migrations for the no-op start-up.
    pub noop_sizes: Vec<usize>,
    /// Time spent sampling each variant of one no-op figure.
    pub noop_budget: Duration,
    /// Pending migrations executed per run.
    pub pending_count: usize,
    /// Runs of each variant of the pending benchmark.
    pub pending_runs: usize,
    /// Heart-rate streams of the timed backfill.
    pub backfill_streams: usize,
    /// Points per stream.
    pub backfill_points: usize,
    /// Streams per batch.
    pub backfill_batch: usize,
    /// Runs of each variant of the backfill.
    pub backfill_runs: usize,
    /// The two table sizes at which peak memory is measured.
    pub memory_streams: [usize; 2],
    /// Runners starting at once on SQLite and on PostgreSQL.
    pub contenders: (usize, usize),
    /// Pending migrations at a contended start.
    pub contended_pending: usize,
    /// Repetitions of each contended figure.
    pub contended_runs: usize,
    /// The two sizes of the seed-shape table, in streams: peak memory is
    /// measured at both, the whole backfill timed at the second.
    pub seed_streams: [usize; 2],
    /// JSON points per stream of the seed-shape table.
    pub seed_points: usize,
    /// Streams per batch of the seed-shape backfill.
    pub seed_batch: usize,
    /// Runs of each variant of the seed-shape backfill on SQLite and on
    /// PostgreSQL (in full mode each run is 2.4 GB of JSON: 8 and 15 s).
    pub seed_runs: (usize, usize),
    /// Tracked migrations before a deploy that adds one.
    pub growth_sizes: Vec<usize>,
    /// Rounds of each variant of the deploy benchmark.
    pub growth_runs: usize,
}

impl Scale {
    /// The sizes the issue asks for.
    pub fn full() -> Self {
        Self {
            quick: false,
            noop_sizes: vec![10, 100, 1_000, 10_000, 100_000],
            noop_budget: Duration::from_millis(1_500),
            pending_count: 100,
            pending_runs: 7,
            backfill_streams: 10_000,
            backfill_points: 1_000,
            backfill_batch: 500,
            backfill_runs: 7,
            memory_streams: [10_000, 40_000],
            contenders: (8, 32),
            contended_pending: 10,
            contended_runs: 9,
            seed_streams: [25_000, 100_000],
            seed_points: 1_000,
            seed_batch: 500,
            seed_runs: (7, 3),
            growth_sizes: vec![100, 1_000, 10_000, 100_000],
            growth_runs: 7,
        }
    }

    /// Small sizes that finish in well under a minute.
    pub fn quick() -> Self {
        Self {
            quick: true,
            noop_sizes: vec![10, 1_000],
            noop_budget: Duration::from_millis(150),
            pending_count: 20,
            pending_runs: 3,
            backfill_streams: 1_000,
            backfill_points: 1_000,
            backfill_batch: 500,
            backfill_runs: 3,
            memory_streams: [1_000, 4_000],
            contenders: (8, 32),
            contended_pending: 10,
            contended_runs: 3,
            seed_streams: [1_000, 4_000],
            seed_points: 200,
            seed_batch: 500,
            seed_runs: (3, 3),
            growth_sizes: vec![100, 1_000],
            growth_runs: 3,
        }
    }
}

/// Which benchmarks and backends to run, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    names: Vec<String>,
}

/// The benchmarks, by the names the command line accepts.
pub const BENCHMARKS: [&str; 6] = ["noop", "pending", "backfill", "contended", "seed", "growth"];
/// The backends, by the names the command line accepts.
pub const BACKENDS: [&str; 2] = ["sqlite", "postgres"];

impl Selection {
    /// From the words after `--` that are not options: benchmark and
    /// backend names. None of a kind selects all of that kind.
    pub fn new(words: &[String]) -> Result<Self, String> {
        for word in words {
            if !BENCHMARKS.contains(&word.as_str()) && !BACKENDS.contains(&word.as_str()) {
                return Err(format!(
                    "unknown benchmark or backend {word:?}: expected one of {BENCHMARKS:?} or {BACKENDS:?}"
                ));
            }
        }
        Ok(Self {
            names: words.to_vec(),
        })
    }

    /// Whether `benchmark` on `backend` is selected.
    pub fn runs(&self, benchmark: &str, backend: &str) -> bool {
        let picked = |list: &[&str], name: &str| {
            !self.names.iter().any(|n| list.contains(&n.as_str()))
                || self.names.iter().any(|n| n == name)
        };
        picked(&BENCHMARKS, benchmark) && picked(&BACKENDS, backend)
    }

    /// Whether any PostgreSQL benchmark is selected.
    pub fn needs_postgres(&self) -> bool {
        BENCHMARKS.iter().any(|b| self.runs(b, "postgres"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn empty_selection_runs_everything() {
        let all = Selection::new(&[]).unwrap();
        assert!(all.runs("noop", "sqlite") && all.runs("contended", "postgres"));
    }

    #[test]
    fn names_narrow_each_kind_separately() {
        let some = Selection::new(&words(&["noop", "sqlite"])).unwrap();
        assert!(some.runs("noop", "sqlite"));
        assert!(!some.runs("noop", "postgres"));
        assert!(!some.runs("pending", "sqlite"));
        assert!(!some.needs_postgres());
        let pg = Selection::new(&words(&["postgres"])).unwrap();
        assert!(pg.runs("backfill", "postgres") && !pg.runs("backfill", "sqlite"));
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = Selection::new(&words(&["nop"])).unwrap_err();
        assert!(err.contains("\"nop\""), "{err}");
    }

    #[test]
    fn quick_is_smaller_than_full() {
        let (quick, full) = (Scale::quick(), Scale::full());
        assert!(quick.backfill_streams < full.backfill_streams);
        assert!(quick.noop_budget < full.noop_budget);
        assert_eq!(full.noop_sizes, [10, 100, 1_000, 10_000, 100_000]);
        assert_eq!(full.contenders, (8, 32));
        assert_eq!(full.seed_streams, [25_000, 100_000]);
        assert!(
            quick.seed_streams[1] * quick.seed_points < full.seed_streams[1] * full.seed_points
        );
    }
}
