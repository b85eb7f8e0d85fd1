//! The run itself: fast path, registration, one snapshot under the lock, the
//! plan, and its execution, for required migrations; background ones are
//! handed to [`background`](crate::background).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use waymark_core::store::{LockGuard, LockScope};
use waymark_core::{Error, Migration, MigrationDef, MigrationId, MigrationStore, Mode};

use crate::background::{self, Background};
use crate::declare::{Declared, Settings};
use crate::events::{Events, RunEvent};
use crate::execute::{Job, Stores};
use crate::lock::{self, Waited};
use crate::plan::{Plan, PlannedAction, PlannedMigration, StopRule};
use crate::report::{Failure, FailureKind, MigrationOutcome, RunReport, SkipReason, Status};

/// Runs an application's data migrations exactly once, in id order, on any
/// [`MigrationStore`]. Build one with [`Runner::builder`]; cloning is cheap
/// and clones share everything.
///
/// `S` is the application's state, handed to every handler; `St` the store,
/// whose atomic handlers ([`RunnerBuilder::atomic`](crate::RunnerBuilder::atomic),
/// [`batched`](crate::RunnerBuilder::batched)) receive its transactions.
///
/// # What a run does
///
/// 1. **Fast path.** One call, [`is_settled`](MigrationStore::is_settled)
///    with the fingerprint of the declared set: when this exact set was
///    registered before and nothing is pending, the run returns at once,
///    without preparing, registering or locking.
/// 2. **Prepare and register.** Otherwise it [`prepare`](MigrationStore::prepare)s
///    the store and [`register`](MigrationStore::register)s every declared
///    migration. When the database's write lock is busy because another
///    instance runs a long migration, it waits for that run, as for the lock.
/// 3. **Plan.** It reads the rows once and works out a [`Plan`]. With no
///    required migration to run it takes no lock.
/// 4. **Lock and snapshot.** It takes the run lock, waiting up to
///    [`lock_wait`](crate::RunnerBuilder::lock_wait), and reads the rows once
///    more under it: that snapshot is the plan it executes. Replicas that
///    lose the race wait for the winner together
///    ([`lock_or_wait`](MigrationStore::lock_or_wait)) and report what it did
///    ([`Status::AlreadyDone`]) without taking the lock.
/// 5. **Execute** the required migrations by ascending id. Async handlers run
///    on their own task, blocking ones on a blocking thread, atomic ones in
///    the store's transactions, so the runtime keeps serving. The
///    [`FailurePolicy`](crate::FailurePolicy) decides whether to go on after
///    a failure; pending rows this release does not declare are left pending
///    and reported (or fail, under [`UndeclaredPolicy::Fail`](crate::UndeclaredPolicy::Fail)).
/// 6. **Background.** Background migrations ([`Mode::Background`]) then run
///    on a task of their own, under a separate lock, while the application
///    serves; the returned [`Started`] reports them.
///
/// # Results
///
/// [`run`](Self::run) returns `Err` when a required migration failed, so
/// `runner.run(state).await?` stops an application's start-up.
/// [`run_and_report`](Self::run_and_report) returns every outcome whenever
/// the run itself worked, for tools that show them.
///
/// # Timeouts and shutdown
///
/// When a migration's timeout passes, its context's cancellation fires. A
/// plain async handler is then aborted at its next `.await`; any other is
/// waited for, keeping the lock, because releasing the lock while it may
/// still commit would let another instance run the same migration (atomic
/// stores interrupt a running statement when cancelled). The application's
/// shutdown token ([`RunnerBuilder::shutdown`](crate::RunnerBuilder::shutdown))
/// stops batched migrations at the next batch boundary and cancels the
/// others; the next run resumes where they stopped.
///
/// # Example
///
/// ```
/// use waymark_core::{MemoryStore, MigrationContext, MigrationDef};
/// use waymark_runner::{Handler, Runner};
///
/// struct App { greeting: String }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let runner = Runner::builder(MemoryStore::new())
///     .migration(
///         MigrationDef::new(2, "fill_pace", "Derive pace streams from speed")?,
///         Handler::async_fn(|ctx: MigrationContext<App>| async move {
///             ctx.report_progress(1, Some(1));
///             Ok::<(), std::io::Error>(())
///         }),
///     )
///     .migration(
///         MigrationDef::new(1, "lap_averages", "Recompute lap averages")?,
///         Handler::blocking_fn(|ctx: MigrationContext<App>| {
///             assert_eq!(ctx.state().greeting, "hi"); // on a blocking thread
///             Ok::<(), std::io::Error>(())
///         }),
///     )
///     .build()?;
///
/// let started = runner.run(App { greeting: "hi".into() }).await?;
/// assert_eq!(started.report().executed().count(), 2);
///
/// // Next start-up: one query, nothing to do.
/// let again = runner.run(App { greeting: "hi".into() }).await?;
/// assert!(again.report().was_settled());
/// # Ok::<(), waymark_core::Error>(())
/// # }).unwrap();
/// ```
pub struct Runner<S, St> {
    pub(crate) inner: Arc<Inner<S, St>>,
}

pub(crate) struct Inner<S, St> {
    pub(crate) stores: Stores<St>,
    /// By ascending id.
    pub(crate) declared: Vec<Declared<S, St>>,
    pub(crate) by_id: HashMap<MigrationId, usize>,
    pub(crate) defs: Vec<MigrationDef>,
    pub(crate) fingerprint: String,
    pub(crate) settings: Settings,
}

/// What [`Runner::run`] returns once the required migrations are done: their
/// report, and the handle of the background ones.
#[derive(Debug)]
pub struct Started {
    report: RunReport,
    background: Background,
}

impl Started {
    /// What the run did with the required migrations (and the undeclared rows).
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// The report, leaving the background migrations to run on.
    pub fn into_report(self) -> RunReport {
        self.report
    }

    /// The background migrations: their status, for readiness and health
    /// endpoints, and a way to wait for them. Cloning it is cheap; dropping
    /// it does not stop them (the shutdown token does).
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Waits for the background migrations and returns the whole run's
    /// report, failures included.
    ///
    /// # Errors
    /// What the background phase met that is not a migration's outcome:
    /// the store failing, the lock timing out.
    pub async fn wait(self) -> Result<RunReport, Error> {
        let mut report = self.report;
        if let Some(background) = self.background.report().await {
            report.merge(background?);
        }
        Ok(report)
    }

    /// [`wait`](Self::wait), then `Err` if any migration failed or was
    /// stopped ([`RunReport::into_result`]).
    pub async fn finish(self) -> Result<RunReport, Error> {
        self.wait().await?.into_result()
    }
}

impl<S: Send + Sync + 'static, St: MigrationStore + Clone> Runner<S, St> {
    /// Runs the required migrations with the application's `state` (a value
    /// or an `Arc` of it), then starts the background ones; see [`Runner`]
    /// for the steps. Safe to call with `?` at start-up: a failed required
    /// migration is an error.
    ///
    /// Must run inside a Tokio runtime with time enabled (as
    /// `#[tokio::main]` builds).
    ///
    /// # Errors
    /// [`Error::Handler`] when a required migration failed (its handler's
    /// error, a panic or a timeout, or an undeclared row under
    /// [`UndeclaredPolicy::Fail`](crate::UndeclaredPolicy::Fail)): the first
    /// failure by id. The run has finished by then, under its
    /// [`FailurePolicy`](crate::FailurePolicy), and released the lock; each
    /// outcome is logged. [`Error::Stopped`] when the shutdown stopped it.
    /// Otherwise as [`run_and_report`](Self::run_and_report).
    pub async fn run(&self, state: impl Into<Arc<S>>) -> Result<Started, Error> {
        let Started { report, background } = self.run_and_report(state).await?;
        Ok(Started {
            report: report.into_result()?,
            background,
        })
    }

    /// Runs like [`run`](Self::run), but returns `Ok` whenever the run
    /// itself worked, failed migrations included: for tools that show every
    /// outcome. Check [`RunReport::is_success`] or call
    /// [`RunReport::into_result`]. Background migrations start only when no
    /// required one failed.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] when another instance held the lock for the
    /// whole wait; [`Error::Conflict`] when a declared id is tracked under
    /// another name; [`Error::Store`] when the database fails (including
    /// while recording an outcome: the run stops there);
    /// [`Error::Invalid`] outside a Tokio runtime.
    pub async fn run_and_report(&self, state: impl Into<Arc<S>>) -> Result<Started, Error> {
        let started = Instant::now();
        // Stores and the runner use Tokio's timers and blocking threads:
        // say so plainly rather than let a store panic on a missing reactor.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "runtime",
                "the runner must be called inside a Tokio runtime",
            ));
        }
        let inner = &self.inner;
        if inner.stores.concrete.is_settled(&inner.fingerprint).await? {
            tracing::debug!("migrations settled: nothing pending");
            return Ok(Started {
                report: RunReport::new(Vec::new(), true, None, started.elapsed()),
                background: Background::finished(),
            });
        }
        let state = state.into();
        let (report, background_plan) = inner
            .required(&state, started)
            .instrument(tracing::info_span!("waymark.run"))
            .await?;
        let background = match background_plan {
            Some(plan) if report.is_success() => background::start(Arc::clone(inner), state, plan),
            _ => Background::finished(),
        };
        Ok(Started { report, background })
    }

    /// Runs every migration, required and background, to the end, from code
    /// without an async runtime (a desktop tool, a script on rusqlite
    /// alone): one blocking call that starts a Tokio runtime of its own for
    /// the run, with the same guarantees as [`run`](Self::run). Blocking
    /// handlers need no async code at all.
    ///
    /// # Errors
    /// As [`Started::finish`]; [`Error::Invalid`] when called from inside a
    /// Tokio runtime (use [`run`](Self::run) there: blocking would stall it).
    pub fn run_blocking(&self, state: impl Into<Arc<S>>) -> Result<RunReport, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::invalid(
                "runtime",
                "run_blocking was called inside a Tokio runtime: await `run` instead",
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Error::store("starting a Tokio runtime for the run", err))?;
        let state = state.into();
        runtime.block_on(async { self.run(state).await?.finish().await })
    }

    /// What a run would do now, in order, without running anything.
    ///
    /// It reads the tracked rows once and never creates, alters, registers
    /// or locks anything: on a database without the tracking table yet it
    /// plans from no rows (every declared migration new).
    ///
    /// # Errors
    /// [`Error::Conflict`] when a declared id is tracked under another name
    /// (the run would fail the same way); [`Error::Store`] when the store
    /// cannot be read.
    pub async fn plan(&self) -> Result<Plan, Error> {
        let rows = match self.inner.stores.concrete.list().await {
            Ok(rows) => rows,
            Err(Error::NotInitialised { .. }) => Vec::new(),
            Err(err) => return Err(err),
        };
        Plan::compute(&rows, &self.inner.declared, &self.inner.settings)
    }

    /// The declared migrations, by ascending id.
    pub fn definitions(&self) -> impl Iterator<Item = &MigrationDef> {
        self.inner.defs.iter()
    }

    /// The store the runner works on.
    pub fn store(&self) -> &St {
        &self.inner.stores.concrete
    }
}

impl<S: Send + Sync + 'static, St: MigrationStore + Clone> Inner<S, St> {
    fn store(&self) -> &dyn MigrationStore {
        &*self.stores.shared
    }

    /// Steps 2 to 5 of a run. Also says whether background migrations were
    /// left to run.
    async fn required(
        &self,
        state: &Arc<S>,
        started: Instant,
    ) -> Result<(RunReport, Option<Plan>), Error> {
        self.prepare_and_register().await?;
        let before = self.store().list().await?;
        let plan = Plan::compute(&before, &self.declared, &self.settings)?;
        // The background phase starts from what was pending now, so that it
        // can report what another instance did meanwhile.
        let background = plan.runs(Mode::Background).then(|| plan.clone());
        if !plan.runs(Mode::Required) {
            // Nothing here could be executed, so there is nothing to guard.
            let outcomes = self.report_only(&plan);
            return Ok((
                RunReport::new(outcomes, false, None, started.elapsed()),
                background,
            ));
        }

        tracing::debug!(pending = plan.len(), "taking the migration lock");
        let wait = self.settings.lock_wait;
        let events = &self.settings.events;
        let shutdown = &self.settings.shutdown;
        let (guard, waited) = match lock::acquire_or_wait(
            self.store(),
            LockScope::Run,
            wait,
            events,
            shutdown,
        )
        .await?
        {
            Waited::ShutDown => return Err(self.stopped_before(&plan)),
            Waited::Done(Some(guard), waited) => (guard, waited),
            Waited::Done(None, waited) => {
                // Another instance held the lock and has let it go: see
                // what it left. Every instance that lost the race gets
                // here at once, so none has to take the lock to find
                // nothing to do.
                let rows = self.store().list().await?;
                let left = Plan::compute(&rows, &self.declared, &self.settings)?;
                if !left.runs(Mode::Required) {
                    tracing::info!(waited = ?waited, "another instance ran the pending migrations");
                    let mut outcomes = self.done_by_another(Queue::Required, &plan, &left, &rows);
                    outcomes.extend(self.report_only(&left));
                    let report = RunReport::new(outcomes, false, Some(waited), started.elapsed());
                    return Ok((report, background));
                }
                // It stopped short (a failure, or it knew fewer
                // migrations): run what is left under the lock.
                let rest = wait.saturating_sub(waited);
                match lock::acquire(self.store(), LockScope::Run, rest, events, shutdown).await? {
                    Waited::ShutDown => return Err(self.stopped_before(&left)),
                    Waited::Done(guard, more) => (guard, waited + more),
                }
            }
        };

        // The one snapshot under the lock: what this run executes.
        let rows = self.store().list().await?;
        let now = Plan::compute(&rows, &self.declared, &self.settings)?;
        let count = now
            .steps()
            .iter()
            .filter(|step| step.action == PlannedAction::Run && step.mode == Some(Mode::Required))
            .count();
        tracing::info!(waited = ?waited, pending = count, "holding the migration lock");
        events.emit(|| RunEvent::LockAcquired { waited, count });
        let mut outcomes = self.done_by_another(Queue::Required, &plan, &now, &rows);
        outcomes.extend(
            self.execute(&now, &rows, Queue::Required, state, guard, events)
                .await?,
        );
        let report = RunReport::new(outcomes, false, Some(waited), started.elapsed());
        tracing::info!(
            executed = report.executed().count(),
            failed = report.failures().count(),
            "migration run finished"
        );
        Ok((report, background))
    }

    /// Prepares the store and registers the declared set. A store refuses
    /// writes with [`Error::Busy`] while another instance runs a long atomic
    /// migration that holds the database's write lock (SQLite's busy timeout
    /// is seconds, such a migration can take minutes): then wait for that
    /// run to end, as for the lock, and try again, until the lock wait is
    /// used up.
    async fn prepare_and_register(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.settings.lock_wait;
        loop {
            let result = match self.store().prepare().await {
                Ok(()) => self.store().register(&self.defs).await,
                Err(err) => Err(err),
            };
            let err = match result {
                Err(err @ Error::Busy { .. }) if Instant::now() < deadline => err,
                other => return other,
            };
            tracing::info!(error = %err, "the database is busy; waiting for any running migration to end, then trying again");
            let left = deadline.saturating_duration_since(Instant::now());
            match lock::acquire_or_wait(
                self.store(),
                LockScope::Run,
                left,
                &self.settings.events,
                &self.settings.shutdown,
            )
            .await?
            {
                Waited::ShutDown => return Err(err),
                // Nobody held the run lock: the write lock belongs to a
                // background migration or another program; pause briefly.
                Waited::Done(Some(guard), _) => {
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Waited::Done(None, _) => {}
            }
        }
    }

    /// Executes the steps of `queue` in `plan` (made from `rows`) under the
    /// lock `guard`, by ascending id.
    pub(crate) async fn execute(
        &self,
        plan: &Plan,
        rows: &[Migration],
        queue: Queue,
        state: &Arc<S>,
        guard: LockGuard,
        events: &Events,
    ) -> Result<Vec<MigrationOutcome>, Error> {
        let guard = Arc::new(guard);
        let rows: HashMap<MigrationId, &Migration> = rows.iter().map(|row| (row.id, row)).collect();
        let steps: Vec<&PlannedMigration> = plan
            .steps()
            .iter()
            .filter(|step| queue.contains(step))
            .collect();
        let count = steps
            .iter()
            .filter(|step| step.action == PlannedAction::Run)
            .count();
        let mut stop = StopRule::new(self.settings.failure_policy);
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut position = 0;
        for step in steps {
            let outcome = if let Some(by) = stop.stopped_by() {
                self.skip(step, SkipReason::EarlierFailure(by))
            } else {
                match step.action {
                    PlannedAction::Run if self.settings.shutdown.is_cancelled() => {
                        self.stopped(step)
                    }
                    PlannedAction::Run => {
                        let (Some(&index), Some(&row)) =
                            (self.by_id.get(&step.id), rows.get(&step.id))
                        else {
                            return Err(Error::NotFound { id: step.id });
                        };
                        // A lock tied to a database session can be lost (the
                        // session terminated): never start a migration without it.
                        guard.check()?;
                        position += 1;
                        let declared = &self.declared[index];
                        Job {
                            row: row.clone(),
                            handler: &declared.handler,
                            timeout: declared.timeout(&self.settings),
                            state,
                            stores: &self.stores,
                            guard: &guard,
                            events,
                            shutdown: &self.settings.shutdown,
                            position,
                            count,
                        }
                        .execute()
                        .await?
                    }
                    _ => self.not_run(step),
                }
            };
            stop.after(outcome.id, outcome.status.is_failure());
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Outcomes of the required queue when nothing in it runs here:
    /// undeclared rows to report, under the failure policy.
    fn report_only(&self, plan: &Plan) -> Vec<MigrationOutcome> {
        plan.steps()
            .iter()
            .filter(|step| Queue::Required.contains(step) && step.action != PlannedAction::Run)
            .map(|step| self.not_run(step))
            .collect()
    }

    /// The outcome of a step this run does not execute.
    fn not_run(&self, step: &PlannedMigration) -> MigrationOutcome {
        match step.action {
            PlannedAction::NotRun(by) => self.skip(step, SkipReason::EarlierFailure(by)),
            PlannedAction::FailUndeclared => self.fail_undeclared(step),
            _ => self.leave_undeclared(step),
        }
    }

    /// A pending row this release does not declare, left pending: loudly.
    fn leave_undeclared(&self, step: &PlannedMigration) -> MigrationOutcome {
        tracing::warn!(
            id = step.id.get(),
            name = %step.name,
            "pending migration not declared by this release (registered by a newer release or by hand): left pending"
        );
        self.settings.events.emit(|| RunEvent::Undeclared {
            id: step.id,
            name: Arc::from(step.name.as_str()),
        });
        outcome(step, Status::Undeclared)
    }

    /// A pending row this release does not declare, under the strict policy.
    fn fail_undeclared(&self, step: &PlannedMigration) -> MigrationOutcome {
        let failure = Failure::new(
            FailureKind::Undeclared,
            waymark_core::UndeclaredMigration {
                name: step.name.clone(),
            }
            .into(),
        );
        tracing::error!(id = step.id.get(), name = %step.name, error = %failure.message(), "migration failed");
        self.settings.events.emit(|| RunEvent::Failed {
            id: step.id,
            name: Arc::from(step.name.as_str()),
            duration: Duration::ZERO,
            kind: FailureKind::Undeclared,
            error: failure.message().to_owned(),
        });
        // Nothing ran, so no attempt is recorded in the store.
        outcome(step, Status::Failed(failure))
    }

    fn skip(&self, step: &PlannedMigration, reason: SkipReason) -> MigrationOutcome {
        let SkipReason::EarlierFailure(by) = reason;
        tracing::info!(id = step.id.get(), name = %step.name, failed = by.get(), "not run: an earlier migration failed");
        self.settings.events.emit(|| RunEvent::Skipped {
            id: step.id,
            name: Arc::from(step.name.as_str()),
            reason,
        });
        outcome(step, Status::Skipped(reason))
    }

    fn stopped(&self, step: &PlannedMigration) -> MigrationOutcome {
        self.settings.events.emit(|| RunEvent::Stopped {
            id: step.id,
            name: Arc::from(step.name.as_str()),
        });
        outcome(step, Status::Stopped)
    }

    /// The error of a run the shutdown stopped before it took the lock.
    fn stopped_before(&self, plan: &Plan) -> Error {
        let id = plan
            .steps()
            .iter()
            .find(|step| step.action == PlannedAction::Run)
            .map(|step| step.id);
        match id {
            Some(id) => Error::Stopped { id },
            None => Error::invalid("shutdown", "the run was stopped before it started"),
        }
    }

    /// Migrations of `queue` that `before` would have run and `now` no longer has
    /// pending: another instance executed them meanwhile. `rows` is the
    /// snapshot `now` was made from, for their attempts.
    pub(crate) fn done_by_another(
        &self,
        queue: Queue,
        before: &Plan,
        now: &Plan,
        rows: &[Migration],
    ) -> Vec<MigrationOutcome> {
        let still: HashSet<MigrationId> = now.steps().iter().map(|step| step.id).collect();
        let attempts: HashMap<MigrationId, u32> =
            rows.iter().map(|row| (row.id, row.attempts)).collect();
        before
            .steps()
            .iter()
            .filter(|step| {
                queue.contains(step) && step.action == PlannedAction::Run && !still.contains(&step.id)
            })
            .map(|step| {
                tracing::info!(id = step.id.get(), name = %step.name, "already executed by another instance");
                self.settings.events.emit(|| RunEvent::AlreadyDone {
                    id: step.id,
                    name: Arc::from(step.name.as_str()),
                });
                let mut done = outcome(step, Status::AlreadyDone);
                done.attempts = attempts.get(&step.id).copied().unwrap_or(step.attempts);
                done
            })
            .collect()
    }
}

/// Which of a plan's steps a phase of the run handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// Required migrations, and the rows this release does not declare.
    Required,
    /// Background migrations.
    Background,
}

impl Queue {
    pub(crate) fn contains(self, step: &PlannedMigration) -> bool {
        match self {
            Self::Required => step.mode != Some(Mode::Background),
            Self::Background => step.mode == Some(Mode::Background),
        }
    }
}

fn outcome(step: &PlannedMigration, status: Status) -> MigrationOutcome {
    MigrationOutcome::new(
        step.id,
        step.name.clone(),
        status,
        Duration::ZERO,
        step.attempts,
    )
}

impl<S, St> Clone for Runner<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S, St> fmt::Debug for Runner<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("migrations", &self.inner.defs.len())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}
