//! The run engine: fast path, registration, one snapshot under the lock,
//! the plan, and its execution. The public [`Runner`](crate::Runner) and
//! the background phase both drive it; it depends on neither.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use waymark_core::store::{LockGuard, LockScope, SetState};
use waymark_core::{Error, Migration, MigrationDef, MigrationId, MigrationStore, Mode};

use crate::declare::{Declared, Settings};
use crate::events::{Events, RunEvent};
use crate::execute::{Job, Stores};
use crate::lock::{self, Waited};
use crate::plan::{Plan, PlannedAction, PlannedMigration, StopRule};
use crate::report::{Failure, FailureKind, MigrationOutcome, RunReport, SkipReason, Status};

/// What a runner holds, shared by its clones and its background phase.
pub(crate) struct Inner<S, St> {
    pub(crate) stores: Stores<St>,
    /// By ascending id.
    pub(crate) declared: Vec<Declared<S, St>>,
    pub(crate) by_id: HashMap<MigrationId, usize>,
    pub(crate) defs: Vec<MigrationDef>,
    pub(crate) fingerprint: String,
    pub(crate) settings: Settings,
}

impl<S: Send + Sync + 'static, St: MigrationStore + Clone> Inner<S, St> {
    pub(crate) fn store(&self) -> &dyn MigrationStore {
        &*self.stores.shared
    }

    /// Steps 2 to 5 of a run. Also says whether background migrations were
    /// left to run.
    pub(crate) async fn required(
        &self,
        state: &Arc<S>,
        started: Instant,
        known: SetState,
    ) -> Result<(RunReport, Option<Plan>), Error> {
        let before = self.registered_rows(known).await?;
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

    /// The tracked rows, once the declared set is registered: a set the
    /// store knows already ([`SetState::Pending`]) needs neither `prepare`
    /// nor `register`, only the read. That saves a starting replica three
    /// round trips on PostgreSQL, where 32 replicas starting at once queue
    /// on the server's CPU.
    async fn registered_rows(&self, known: SetState) -> Result<Vec<Migration>, Error> {
        let known_rows = match known {
            SetState::Pending => match self.store().list().await {
                // The set was recorded, but the table needs `prepare` (an
                // unprepared table restored beside its fingerprints): the
                // full path, as for a new set.
                Err(Error::NotInitialised { .. }) => None,
                listed => Some(listed?),
            },
            _ => None,
        };
        let rows = match known_rows {
            Some(rows) => rows,
            None => {
                self.prepare_and_register(&self.defs).await?;
                self.store().list().await?
            }
        };
        let tracked: HashSet<MigrationId> = rows.iter().map(|row| row.id).collect();
        let missing: Vec<MigrationDef> = self
            .defs
            .iter()
            .filter(|def| !tracked.contains(&def.id()))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(rows);
        }
        // A declared row deleted by hand since its set was registered (the
        // store trusts a set it recorded): registered again, as new.
        self.prepare_and_register(&missing).await?;
        self.store().list().await
    }

    /// Prepares the store and registers `defs`. A store refuses
    /// writes with [`Error::Busy`] while another instance runs a long atomic
    /// migration that holds the database's write lock (SQLite's busy timeout
    /// is seconds, such a migration can take minutes): then wait for that
    /// run to end, as for the lock, and try again, until the lock wait is
    /// used up.
    async fn prepare_and_register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        let deadline = Instant::now() + self.settings.lock_wait;
        loop {
            let result = match self.store().prepare().await {
                Ok(()) => self.store().register(defs).await,
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
