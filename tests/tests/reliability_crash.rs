//! Kill it: the real runner in a helper process, SIGKILLed at random
//! moments (at least 100 times per backend), then rerun to completion.
//!
//! After every kill: every atomic migration's effect is there entirely and
//! only if it is executed; batches form a gapless prefix without
//! duplicates that matches the checkpoint; a plain migration is never
//! executed without its effect; attempts never go down; no lock is left
//! (the run lock is taken without waiting). After the final run:
//! everything executed, each effect exactly once, attempts exactly the
//! runs that ended. The seed and the counts are printed; see
//! docs/reliability.md for longer soaks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use waymark_tests::reliability::knobs::{self, KILLS_VAR, SplitMix64};
use waymark_tests::reliability::process::{EXIT_MIGRATION_FAILED, Ended, Proc};
use waymark_tests::reliability::target::{Backend, Target};
use waymark_tests::reliability::workload::{Snapshot, Variant};

const HELPER: &str = env!("CARGO_BIN_EXE_reliability_helper");
/// Kills per backend in the default run.
const DEFAULT_KILLS: u64 = 100;
/// A hang guard for runs that are not killed, not a measurement.
const LIMIT: Duration = Duration::from_secs(120);
/// More runs than this in one round means the workload stopped making
/// progress between kills.
const MAX_RUNS_PER_ROUND: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_sigkill_at_random_moments() {
    kill_at_random(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_sigkill_at_random_moments() {
    kill_at_random(Backend::Postgres).await;
}

/// What a test did, for the summary line.
#[derive(Debug, Default)]
struct Counts {
    kills: u64,
    runs: u64,
    rounds: u64,
    failed_runs: u64,
    /// Kills by how many migrations were executed at that moment.
    kills_by_progress: BTreeMap<usize, u64>,
    /// Kills that left a batched migration between two batches.
    kills_mid_batched: u64,
}

async fn kill_at_random(backend: Backend) {
    let name = format!("crash_{}", backend.name());
    let seed = knobs::seed(&name);
    let wanted = knobs::knob(KILLS_VAR, DEFAULT_KILLS);
    let mut rng = SplitMix64::new(seed);
    let mut counts = Counts::default();

    // A run without kills: the baseline, and how long a first run takes,
    // which bounds the random moments.
    let calibration = Target::fresh(backend).await;
    let started = Instant::now();
    let first = run(&calibration, None).await;
    let span = started.elapsed();
    assert_eq!(
        first,
        Outcome::MigrationFailed,
        "the flaky migration fails its first attempt"
    );
    finish_round(&calibration, Snapshot::default(), &mut counts, &name, seed).await;
    // A run with nothing left to do: the fixed cost of every run.
    let started = Instant::now();
    assert_eq!(run(&calibration, None).await, Outcome::Succeeded);
    let overhead = started.elapsed();
    counts = Counts::default();

    while counts.kills < wanted {
        counts.rounds += 1;
        let target = Target::fresh(backend).await;
        let mut before = Snapshot::default();
        let mut runs_in_round = 0;
        while counts.kills < wanted {
            runs_in_round += 1;
            assert!(
                runs_in_round <= MAX_RUNS_PER_ROUND,
                "{name} (seed {seed}): no progress after {MAX_RUNS_PER_ROUND} runs"
            );
            // The moments of a run: its fixed cost, then the work left (with
            // some slack), so that most runs are killed somewhere inside.
            let left = before.remaining(Variant::Crash) * 1.25;
            let window = overhead + span.saturating_sub(overhead).mul_f64(left);
            let delay = Duration::from_micros(rng.below(window.as_micros() as u64 + 1));
            let outcome = run(&target, Some(delay)).await;
            counts.runs += 1;
            let now = check(&target, &before, &name, seed).await;
            match outcome {
                Outcome::Killed => {
                    counts.kills += 1;
                    let executed = now.rows.values().filter(|row| row.executed).count();
                    *counts.kills_by_progress.entry(executed).or_default() += 1;
                    if now
                        .rows
                        .values()
                        .any(|row| !row.executed && row.checkpoint.is_some())
                    {
                        counts.kills_mid_batched += 1;
                    }
                }
                Outcome::MigrationFailed => counts.failed_runs += 1,
                Outcome::Succeeded => {
                    complete(&target, &now, &name, seed);
                    break;
                }
            }
            before = now;
        }
        if counts.kills >= wanted {
            // Rerun the last round to completion without killing.
            finish_round(&target, before, &mut counts, &name, seed).await;
        }
    }
    knobs::announce(format_args!(
        "{name}: seed {seed}: {} kills over {} rounds, {} runs ({} ended by the flaky \
         migration's planned failure); a first run takes {span:?}, one with nothing to do \
         {overhead:?}; kills by migrations executed at that moment: {:?}; kills between two batches: {}",
        counts.kills,
        counts.rounds,
        counts.runs,
        counts.failed_runs,
        counts.kills_by_progress,
        counts.kills_mid_batched
    ));
}

/// How one helper run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Killed,
    MigrationFailed,
    Succeeded,
}

/// Runs the helper once, killing it after `kill_after` unless it exits first.
async fn run(target: &Target, kill_after: Option<Duration>) -> Outcome {
    let proc = Proc::spawn(HELPER, target.helper_args(Variant::Crash, None));
    let ended = tokio::task::spawn_blocking(move || match kill_after {
        Some(delay) => proc.kill_after(delay),
        None => proc.finish(LIMIT),
    })
    .await
    .expect("the helper's waiter panicked");
    match ended {
        Ended::Killed => Outcome::Killed,
        Ended::Exited { code: 0, .. } => Outcome::Succeeded,
        Ended::Exited { code, output }
            if code == EXIT_MIGRATION_FAILED && output.contains("failing on purpose") =>
        {
            Outcome::MigrationFailed
        }
        Ended::Exited { code, output } => {
            panic!("the helper failed on {target:?} with exit code {code}:\n{output}")
        }
    }
}

/// Checks the invariants that hold after any run, killed or not, and
/// returns the snapshot they were checked on.
async fn check(target: &Target, before: &Snapshot, name: &str, seed: u64) -> Snapshot {
    if let Err(problem) = target.check_no_lock_left().await {
        panic!("{name} (seed {seed}) on {target:?}: {problem}");
    }
    let now = target.snapshot().await;
    let verdict = now
        .check_consistent(Variant::Crash)
        .and_then(|()| now.check_attempts_never_decrease(before));
    if let Err(problem) = verdict {
        panic!("{name} (seed {seed}) on {target:?}: {problem}\nbefore:\n{before}\nafter:\n{now}");
    }
    now
}

/// Runs without killing until a run succeeds, then checks completion.
async fn finish_round(
    target: &Target,
    mut before: Snapshot,
    counts: &mut Counts,
    name: &str,
    seed: u64,
) {
    loop {
        let outcome = run(target, None).await;
        counts.runs += 1;
        let now = check(target, &before, name, seed).await;
        match outcome {
            Outcome::Succeeded => return complete(target, &now, name, seed),
            Outcome::MigrationFailed => counts.failed_runs += 1,
            Outcome::Killed => unreachable!("not killed"),
        }
        before = now;
    }
}

fn complete(target: &Target, now: &Snapshot, name: &str, seed: u64) {
    if let Err(problem) = now.check_complete(Variant::Crash) {
        panic!("{name} (seed {seed}) on {target:?} after the final run: {problem}\n{now}");
    }
}
