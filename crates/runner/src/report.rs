//! What a run did: one outcome per migration that was pending, and a table
//! for people.

use std::fmt;
use std::time::Duration;

use waymark_core::render::{Align, TextTable, human_duration as human};
use waymark_core::{BoxError, Error, MigrationId, error_chain};

/// What one run did. Lists every migration that was pending when the run
/// started, by ascending id; already executed migrations do not appear.
///
/// [`Runner::run`](crate::Runner::run) returns it only when nothing failed;
/// [`Runner::run_and_report`](crate::Runner::run_and_report) returns it
/// whenever the run itself worked, failures included:
///
/// ```no_run
/// # use waymark_core::MemoryStore;
/// # async fn status(runner: waymark_runner::Runner<(), MemoryStore>) -> Result<(), waymark_core::Error> {
/// let started = runner.run_and_report(()).await?;
/// print!("{}", started.report()); // every outcome, failures with their errors
/// started.into_report().into_result()?; // then fail like `run` would
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RunReport {
    outcomes: Vec<MigrationOutcome>,
    settled: bool,
    lock_waited: Option<Duration>,
    elapsed: Duration,
}

impl RunReport {
    pub(crate) fn new(
        mut outcomes: Vec<MigrationOutcome>,
        settled: bool,
        lock_waited: Option<Duration>,
        elapsed: Duration,
    ) -> Self {
        outcomes.sort_by_key(|outcome| outcome.id);
        Self {
            outcomes,
            settled,
            lock_waited,
            elapsed,
        }
    }

    /// Every migration that was pending, by ascending id.
    pub fn outcomes(&self) -> &[MigrationOutcome] {
        &self.outcomes
    }

    /// The outcome of one migration, if it was pending.
    pub fn outcome(&self, id: MigrationId) -> Option<&MigrationOutcome> {
        self.outcomes.iter().find(|outcome| outcome.id == id)
    }

    /// The migrations this run executed.
    pub fn executed(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::Executed))
    }

    /// The migrations that failed (including an undeclared one under
    /// [`UndeclaredPolicy::Fail`](crate::UndeclaredPolicy::Fail)).
    pub fn failures(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::Failed(_)))
    }

    /// The migrations left pending without running.
    pub fn skipped(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::Skipped(_)))
    }

    /// The migrations another instance executed while this one waited, or
    /// whose commit another run made first (this run's work rolled back).
    pub fn already_done(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::AlreadyDone))
    }

    /// The pending migrations this release does not declare, left pending
    /// under [`UndeclaredPolicy::Warn`](crate::UndeclaredPolicy::Warn).
    pub fn undeclared(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::Undeclared))
    }

    /// The migrations stopped by the application's shutdown; they resume
    /// where they stopped on the next run.
    pub fn stopped(&self) -> impl Iterator<Item = &MigrationOutcome> {
        self.with(|status| matches!(status, Status::Stopped))
    }

    /// Adds `other`'s outcomes (a later phase of the same run).
    pub(crate) fn merge(&mut self, other: RunReport) {
        self.outcomes.extend(other.outcomes);
        self.outcomes.sort_by_key(|outcome| outcome.id);
        self.lock_waited = match (self.lock_waited, other.lock_waited) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    fn with(&self, keep: fn(&Status) -> bool) -> impl Iterator<Item = &MigrationOutcome> {
        self.outcomes
            .iter()
            .filter(move |outcome| keep(&outcome.status))
    }

    /// True when nothing failed and nothing was stopped. Undeclared
    /// migrations left pending are not failures.
    pub fn is_success(&self) -> bool {
        self.failures().next().is_none() && self.stopped().next().is_none()
    }

    /// True when nothing was pending.
    pub fn nothing_pending(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// True when the run took the fast path: the same definitions were
    /// registered before and nothing was pending, known from one query
    /// without preparing, registering or locking.
    pub fn was_settled(&self) -> bool {
        self.settled
    }

    /// How long the run waited for the lock; `None` when it did not take it.
    pub fn lock_waited(&self) -> Option<Duration> {
        self.lock_waited
    }

    /// How long the whole run took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The report when nothing failed, else [`Error::Handler`] for the
    /// first failure (by id), whose source says what happened; else
    /// [`Error::Stopped`] when the shutdown stopped a migration.
    pub fn into_result(mut self) -> Result<Self, Error> {
        let failed = self
            .outcomes
            .iter_mut()
            .find(|outcome| matches!(outcome.status, Status::Failed(_)));
        if let Some(first) = failed {
            let Status::Failed(failure) = &mut first.status else {
                unreachable!("found by the same pattern");
            };
            let source = failure.take_source();
            return Err(Error::Handler {
                id: first.id,
                source,
            });
        }
        if let Some(stopped) = self.stopped().next() {
            return Err(Error::Stopped { id: stopped.id });
        }
        Ok(self)
    }

    fn count(&self, keep: fn(&Status) -> bool) -> usize {
        self.outcomes.iter().filter(|o| keep(&o.status)).count()
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.outcomes.is_empty() {
            let how = if self.settled { ", settled" } else { "" };
            return writeln!(f, "nothing pending ({}{how})", human(self.elapsed));
        }
        let mut summary = Vec::new();
        for (label, keep) in [
            (
                "executed",
                (|s| matches!(s, Status::Executed)) as fn(&Status) -> bool,
            ),
            ("failed", |s| matches!(s, Status::Failed(_))),
            ("not run", |s| matches!(s, Status::Skipped(_))),
            ("already done", |s| matches!(s, Status::AlreadyDone)),
            ("not declared", |s| matches!(s, Status::Undeclared)),
            ("stopped", |s| matches!(s, Status::Stopped)),
        ] {
            let n = self.count(keep);
            if n > 0 {
                summary.push(format!("{n} {label}"));
            }
        }
        let pending = self.outcomes.len();
        write!(
            f,
            "{pending} pending migration{}: {} in {}",
            if pending == 1 { "" } else { "s" },
            summary.join(", "),
            human(self.elapsed),
        )?;
        if let Some(waited) = self.lock_waited.filter(|w| *w >= Duration::from_millis(1)) {
            write!(f, " (waited {} for the lock)", human(waited))?;
        }
        writeln!(f)?;

        let mut table = TextTable::new(&[
            ("id", Align::Right),
            ("name", Align::Left),
            ("result", Align::Left),
            ("attempts", Align::Right),
            ("duration", Align::Right),
        ]);
        for outcome in &self.outcomes {
            let ran = matches!(
                outcome.status,
                Status::Executed | Status::Failed(_) | Status::Stopped
            );
            table.row(vec![
                outcome.id.to_string(),
                outcome.name.clone(),
                outcome.status.to_string(),
                outcome.attempts.to_string(),
                if ran {
                    human(outcome.duration)
                } else {
                    "-".to_owned()
                },
            ]);
        }
        write!(f, "{table}")?;

        // Errors can be long; they get their own lines under the table.
        let mut failures = self.failures().peekable();
        if failures.peek().is_some() {
            writeln!(f, "errors:")?;
            for outcome in failures {
                if let Status::Failed(failure) = &outcome.status {
                    writeln!(f, "  {} {}: {}", outcome.id, outcome.name, failure.message)?;
                }
            }
        }
        Ok(())
    }
}

/// What happened to one pending migration.
#[derive(Debug)]
#[non_exhaustive]
pub struct MigrationOutcome {
    /// The migration.
    pub id: MigrationId,
    /// Its name.
    pub name: String,
    /// What happened.
    pub status: Status,
    /// How long its handler ran, recording included; zero when it did not run.
    pub duration: Duration,
    /// Its attempts after this run (failures plus the success).
    pub attempts: u32,
}

impl MigrationOutcome {
    pub(crate) fn new(
        id: MigrationId,
        name: impl Into<String>,
        status: Status,
        duration: Duration,
        attempts: u32,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            status,
            duration,
            attempts,
        }
    }
}

/// The outcome of one pending migration.
#[derive(Debug)]
#[non_exhaustive]
pub enum Status {
    /// This run executed it, and it is recorded as executed.
    Executed,
    /// It failed; the attempt is recorded and it stays pending.
    Failed(Failure),
    /// It was left pending without running.
    Skipped(SkipReason),
    /// Another instance executed it: while this run waited for the lock, or
    /// (after a lost lock) by committing first, in which case this run's
    /// changes were rolled back.
    AlreadyDone,
    /// This release does not declare it: left pending for the release that
    /// does ([`UndeclaredPolicy::Warn`](crate::UndeclaredPolicy::Warn)).
    Undeclared,
    /// The application's shutdown stopped it at a batch boundary (or, for
    /// a handler that is not batched, interrupted it); no attempt is
    /// counted, and the next run resumes from its last checkpoint.
    Stopped,
}

impl Status {
    /// The outcome as a stable, machine-readable name: `"executed"`,
    /// `"failed"`, `"skipped"`, `"already_done"`, `"undeclared"` or
    /// `"stopped"` (the `migrate run --json` output).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Failed(_) => "failed",
            Self::Skipped(_) => "skipped",
            Self::AlreadyDone => "already_done",
            Self::Undeclared => "undeclared",
            Self::Stopped => "stopped",
        }
    }

    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Executed => f.write_str("executed"),
            Self::Failed(failure) => f.write_str(match failure.kind {
                FailureKind::Error => "failed",
                FailureKind::Panic => "failed (panic)",
                FailureKind::Timeout => "failed (timeout)",
                FailureKind::Undeclared => "failed (not declared)",
            }),
            Self::Skipped(SkipReason::EarlierFailure(id)) => write!(f, "not run ({id} failed)"),
            Self::AlreadyDone => f.write_str("already done"),
            Self::Undeclared => f.write_str("not declared (left pending)"),
            Self::Stopped => f.write_str("stopped (resumes next run)"),
        }
    }
}

/// Why a pending migration was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// An earlier migration of the same mode (this id) failed under
    /// [`FailurePolicy::Stop`](crate::FailurePolicy::Stop).
    EarlierFailure(MigrationId),
}

/// Why a migration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler panicked.
    Panic,
    /// The handler ran past its timeout.
    Timeout,
    /// This release does not declare it (under
    /// [`UndeclaredPolicy::Fail`](crate::UndeclaredPolicy::Fail)); nothing
    /// ran and no attempt is recorded.
    Undeclared,
}

impl FailureKind {
    /// `"error"`, `"panic"`, `"timeout"` or `"undeclared"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Undeclared => "undeclared",
        }
    }
}

/// A failed migration: what kind of failure, and its error, whose chain is
/// what the store records as `last_error`.
#[derive(Debug)]
pub struct Failure {
    kind: FailureKind,
    message: String,
    source: Option<BoxError>,
}

impl Failure {
    /// `source` says what happened: the handler's own error, or one of
    /// core's `HandlerPanicked`, `HandlerTimedOut`, `UndeclaredMigration`.
    pub(crate) fn new(kind: FailureKind, source: BoxError) -> Self {
        Self {
            kind,
            message: error_chain(&*source),
            source: Some(source),
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error chain in one line, as recorded in the migration's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error itself (until [`RunReport::into_result`] moves it into the
    /// returned [`Error::Handler`]).
    pub fn error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    fn take_source(&mut self) -> BoxError {
        self.source
            .take()
            .unwrap_or_else(|| waymark_core::Message(self.message.clone()).into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: i64) -> MigrationId {
        MigrationId::new(raw).unwrap()
    }

    fn failed(kind: FailureKind, message: &str) -> Status {
        Status::Failed(Failure::new(kind, message.to_owned().into()))
    }

    fn mixed() -> RunReport {
        RunReport::new(
            vec![
                MigrationOutcome::new(
                    id(3),
                    "zones_from_hr",
                    Status::Skipped(SkipReason::EarlierFailure(id(2))),
                    Duration::ZERO,
                    0,
                ),
                MigrationOutcome::new(
                    id(1),
                    "backfill_lap_averages",
                    Status::Executed,
                    Duration::from_millis(1250),
                    1,
                ),
                MigrationOutcome::new(
                    id(2),
                    "fill_pace",
                    failed(FailureKind::Error, "decoding waypoints: expected `]`"),
                    Duration::from_millis(12),
                    2,
                ),
                MigrationOutcome::new(
                    id(10),
                    "dedupe_laps",
                    Status::AlreadyDone,
                    Duration::ZERO,
                    1,
                ),
            ],
            false,
            Some(Duration::from_millis(30)),
            Duration::from_millis(1300),
        )
    }

    #[test]
    fn the_table_lists_every_outcome_by_id_with_errors_below() {
        let expected = "\
4 pending migrations: 1 executed, 1 failed, 1 not run, 1 already done in 1.30s (waited 30ms for the lock)
id  name                   result              attempts  duration
--  ---------------------  ------------------  --------  --------
 1  backfill_lap_averages  executed                   1     1.25s
 2  fill_pace              failed                     2      12ms
 3  zones_from_hr          not run (2 failed)         0         -
10  dedupe_laps            already done               1         -
errors:
  2 fill_pace: decoding waypoints: expected `]`
";
        assert_eq!(mixed().to_string(), expected);
    }

    #[test]
    fn an_empty_report_says_nothing_is_pending() {
        let settled = RunReport::new(Vec::new(), true, None, Duration::from_micros(40));
        assert_eq!(settled.to_string(), "nothing pending (40µs, settled)\n");
        let checked = RunReport::new(Vec::new(), false, None, Duration::from_millis(3));
        assert_eq!(checked.to_string(), "nothing pending (3ms)\n");
        assert!(settled.is_success() && settled.nothing_pending() && settled.was_settled());
    }

    #[test]
    fn column_widths_count_characters_not_bytes() {
        let report = RunReport::new(
            vec![MigrationOutcome::new(
                id(1),
                "données_é",
                Status::Executed,
                Duration::from_millis(5),
                1,
            )],
            false,
            None,
            Duration::from_millis(5),
        );
        // "données_é" is 9 characters but 11 bytes: the columns still line up.
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "id  name       result    attempts  duration");
        assert_eq!(lines[3], " 1  données_é  executed         1       5ms");
    }

    #[test]
    fn into_result_reports_the_first_failure_and_counts_the_others() {
        let report = RunReport::new(
            vec![
                MigrationOutcome::new(
                    id(5),
                    "b",
                    failed(FailureKind::Panic, "panicked: b"),
                    Duration::ZERO,
                    1,
                ),
                MigrationOutcome::new(
                    id(4),
                    "a",
                    failed(FailureKind::Error, "boom"),
                    Duration::ZERO,
                    1,
                ),
                MigrationOutcome::new(
                    id(6),
                    "c",
                    failed(FailureKind::Timeout, "timed out"),
                    Duration::ZERO,
                    1,
                ),
            ],
            false,
            None,
            Duration::ZERO,
        );
        assert!(!report.is_success());
        assert_eq!(report.failures().count(), 3);
        match report.into_result() {
            Err(Error::Handler { id, source }) => {
                assert_eq!(id.get(), 4);
                assert_eq!(source.to_string(), "boom");
            }
            other => panic!("expected the handler error of 4, got {other:?}"),
        }
        let fine = mixed_without_failures();
        assert!(fine.into_result().is_ok());
    }

    fn mixed_without_failures() -> RunReport {
        RunReport::new(
            vec![MigrationOutcome::new(
                id(1),
                "a",
                Status::Undeclared,
                Duration::ZERO,
                0,
            )],
            false,
            None,
            Duration::ZERO,
        )
    }

    #[test]
    fn statuses_read_as_words() {
        assert_eq!(Status::Executed.to_string(), "executed");
        assert_eq!(
            failed(FailureKind::Undeclared, "x").to_string(),
            "failed (not declared)"
        );
        assert_eq!(
            Status::Undeclared.to_string(),
            "not declared (left pending)"
        );
        assert!(failed(FailureKind::Timeout, "x").is_failure());
    }
}
