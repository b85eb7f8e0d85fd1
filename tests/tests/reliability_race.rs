//! Race it: 16 processes on one SQLite file and 32 on one PostgreSQL
//! database start the same runner at the same moment (a start line they
//! all wait on). Every handler's effect happens exactly once, plain
//! handlers included; every process succeeds; afterwards no lock is left
//! (`pg_locks` holds no advisory lock). A second round staggers the starts
//! by random offsets from the printed seed, so that processes also arrive
//! while another is mid-run.

use std::time::Duration;

use waymark_tests::reliability::knobs::{self, SplitMix64};
use waymark_tests::reliability::process::{Ended, Proc, StartLine};
use waymark_tests::reliability::target::{Backend, Target};
use waymark_tests::reliability::workload::Variant;

const HELPER: &str = env!("CARGO_BIN_EXE_reliability_helper");
/// A hang guard, not a measurement.
const LIMIT: Duration = Duration::from_secs(150);
/// The latest a staggered process starts after the start line.
const MAX_STAGGER_MS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_processes_on_one_sqlite_file_apply_each_effect_once() {
    race(Backend::Sqlite, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_processes_on_one_postgres_database_apply_each_effect_once() {
    race(Backend::Postgres, 32).await;
}

async fn race(backend: Backend, processes: usize) {
    let name = format!("race_{}", backend.name());
    let seed = knobs::seed(&name);
    let mut rng = SplitMix64::new(seed);
    let simultaneous = vec![Duration::ZERO; processes];
    let staggered: Vec<Duration> = (0..processes)
        .map(|_| Duration::from_millis(rng.below(MAX_STAGGER_MS + 1)))
        .collect();
    for (round, delays) in [("simultaneous", simultaneous), ("staggered", staggered)] {
        let target = Target::fresh(backend).await;
        let start = StartLine::new(target.scratch());
        let mut helpers: Vec<Proc> = delays
            .iter()
            .map(|&delay| {
                let args = target.helper_args(Variant::Race, Some((start.path(), delay)));
                Proc::spawn(HELPER, args)
            })
            .collect();
        let ended = tokio::task::spawn_blocking(move || {
            start.release(&mut helpers);
            helpers
                .into_iter()
                .map(|helper| helper.finish(LIMIT))
                .collect::<Vec<_>>()
        })
        .await
        .expect("the helpers' waiter panicked");

        let mut tally = Tally::default();
        for ended in &ended {
            match ended {
                Ended::Exited { code: 0, output } => tally.add(output),
                other => panic!("{name} {round} (seed {seed}): a process failed: {other:?}"),
            }
        }
        if let Err(problem) = target.check_no_lock_left().await {
            panic!("{name} {round} (seed {seed}): {problem}");
        }
        let snapshot = target.snapshot().await;
        if let Err(problem) = snapshot.check_exactly_once(Variant::Race) {
            panic!("{name} {round} (seed {seed}): {problem}\n{snapshot}");
        }
        let migrations = Variant::Race.ids().len();
        assert_eq!(
            tally.executed, migrations,
            "{name} {round}: each migration is reported executed by exactly one process: {tally:?}"
        );
        knobs::announce(format_args!(
            "{name}: seed {seed}, {round} start: {processes} processes all succeeded; \
             {migrations} migrations executed once, by {} process(es); {} process(es) \
             reported migrations done by another; {} took the settled fast path",
            tally.runners, tally.waited, tally.settled
        ));
    }
}

/// What the processes reported.
#[derive(Debug, Default)]
struct Tally {
    /// Migrations executed, summed over processes.
    executed: usize,
    /// Processes that executed at least one migration.
    runners: usize,
    /// Processes that found migrations done by another after waiting.
    waited: usize,
    /// Processes that found everything settled at once.
    settled: usize,
}

impl Tally {
    /// Adds one process's `ok executed=N already_done=N settled=B` line.
    fn add(&mut self, output: &str) {
        let line = output
            .lines()
            .find(|line| line.starts_with("ok "))
            .unwrap_or_else(|| panic!("no report line in {output:?}"));
        let field = |key: &str| -> &str {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        let executed: usize = field("executed").parse().unwrap();
        self.executed += executed;
        self.runners += usize::from(executed > 0);
        self.waited += usize::from(field("already_done") != "0");
        self.settled += usize::from(field("settled") == "true");
    }
}
