//! The run itself: fast path, registration, lock, ordered dispatch.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use waymark_core::{Error, Handler, Migration, MigrationDef, MigrationId, MigrationStore};

use crate::builder::{FailurePolicy, MissingHandler, RunnerBuilder, Settings};
use crate::events::{Events, RunEvent};
use crate::execute::Job;
use crate::lock;
use crate::plan::Plan;
use crate::report::{Failure, FailureKind, MigrationOutcome, RunReport, SkipReason, Status};

/// A declared migration: its definition, handler and own timeout.
pub(crate) struct Declared<S> {
    pub(crate) def: MigrationDef,
    pub(crate) handler: Handler<S>,
    pub(crate) timeout: Option<Duration>,
}

/// Runs an application's data migrations exactly once, in id order, on any
/// [`MigrationStore`]. Build one with [`Runner::builder`]; cloning is cheap
/// and clones share everything.
///
/// # What a run does
///
/// 1. **Fast path.** One call, [`is_settled`](MigrationStore::is_settled)
///    with the fingerprint of the declared set: when this exact set was
///    registered before and nothing is pending, the run returns at once,
///    without preparing, registering or locking.
/// 2. Otherwise it [`prepare`](MigrationStore::prepare)s the store,
///    [`register`](MigrationStore::register)s every declared migration and
///    reads what is pending. Nothing pending, or nothing this runner has a
///    handler for: it returns without the lock.
/// 3. It takes the store's lock, waiting up to
///    [`lock_wait`](RunnerBuilder::lock_wait) and logging while it waits,
///    then reads the pending migrations again: another instance may have
///    executed some meanwhile ([`Status::AlreadyDone`]). While another
///    instance holds the lock, the run waits for it to let go
///    ([`lock_or_wait`](MigrationStore::lock_or_wait)) and reads the store
///    without taking the lock: when that instance ran everything this
///    runner could run, the run reports it and returns, so replicas that
///    start together finish together; otherwise it takes the lock and goes on.
/// 4. It executes them by ascending id. Async handlers run on their own
///    task, blocking handlers on a blocking thread, so the runtime keeps
///    serving. A success is recorded with
///    [`record_success`](MigrationStore::record_success) (unless an atomic
///    handler recorded it in its own transaction); an error, a panic or a
///    timeout with [`record_failure`](MigrationStore::record_failure) and the
///    error chain. The [`FailurePolicy`] decides whether to go on.
/// 5. The lock is released when the run ends, whichever way it ends.
///
/// # Results
///
/// [`run`](Self::run) returns `Err` when anything failed, a migration
/// included, so `runner.run(state).await?` stops an application's start-up.
/// [`run_and_report`](Self::run_and_report) returns the [`RunReport`] of
/// every outcome whenever the run itself worked, for tools that show them.
///
/// # Timeouts
///
/// When a migration's timeout passes, its context's cancellation fires.
/// An async handler is then aborted at its next `.await` (an atomic
/// handler's open transaction rolls back as it is dropped) and the failure
/// is recorded. A blocking handler cannot be interrupted: the run waits for
/// it to return, keeping the lock, because releasing the lock while it may
/// still commit would let another instance run the same migration. Its own
/// result then decides: an error (such as
/// [`Cancelled`](waymark_core::Cancelled) from a batched loop) is recorded as
/// a timeout failure; a success is recorded as executed, with a warning, so
/// that finished work never runs twice.
///
/// If the run itself is dropped half-way (a shutdown `select!`), the running
/// handler is cancelled and, if async, aborted; a blocking one keeps the
/// lock until it returns.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use waymark_core::{BoxError, Handler, MemoryStore, MigrationContext, MigrationDef};
/// use waymark_runner::Runner;
///
/// struct App { greeting: String }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let runner = Runner::<App>::builder(MemoryStore::new())
///     .migration(
///         MigrationDef::new(2, "fill_pace", "Derive pace streams from speed")?,
///         Handler::async_fn(|ctx: MigrationContext<App>| async move {
///             ctx.report_progress(1, Some(1));
///             Ok::<(), BoxError>(())
///         }),
///     )
///     .migration(
///         MigrationDef::new(1, "lap_averages", "Recompute lap averages")?,
///         Handler::blocking_fn(|ctx: MigrationContext<App>| {
///             assert_eq!(ctx.state().greeting, "hi"); // on a blocking thread
///             Ok(())
///         }),
///     )
///     .build()?;
///
/// let report = runner.run(App { greeting: "hi".into() }).await?;
/// assert_eq!(report.executed().count(), 2);
///
/// // Next start-up: one query, nothing to do.
/// let again = runner.run(App { greeting: "hi".into() }).await?;
/// assert!(again.was_settled());
/// # Ok::<(), waymark_core::Error>(())
/// # }).unwrap();
/// ```
pub struct Runner<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    store: Arc<dyn MigrationStore>,
    /// By ascending id.
    declared: Vec<Declared<S>>,
    by_id: HashMap<MigrationId, usize>,
    defs: Vec<MigrationDef>,
    fingerprint: String,
    settings: Settings,
    events: Events,
}

impl<S: Send + Sync + 'static> Runner<S> {
    /// Starts building a runner on `store`: a store value, an `Arc` of one,
    /// or an `Arc<dyn MigrationStore>`.
    pub fn builder(store: impl MigrationStore) -> RunnerBuilder<S> {
        RunnerBuilder::new(Arc::new(store))
    }

    pub(crate) fn new(
        store: Arc<dyn MigrationStore>,
        mut declared: Vec<Declared<S>>,
        settings: Settings,
        events: Events,
    ) -> Self {
        declared.sort_by_key(|d| d.def.id());
        let defs: Vec<MigrationDef> = declared.iter().map(|d| d.def.clone()).collect();
        let by_id = defs.iter().enumerate().map(|(i, d)| (d.id(), i)).collect();
        Self {
            inner: Arc::new(Inner {
                store,
                fingerprint: MigrationDef::fingerprint(&defs),
                declared,
                by_id,
                defs,
                settings,
                events,
            }),
        }
    }

    /// Runs every pending migration with the application's `state` (a
    /// value or an `Arc` of it); see [`Runner`] for the steps. Safe to call
    /// with `?` at start-up: a failed migration is an error.
    ///
    /// Must run inside a Tokio runtime with time enabled (as
    /// `#[tokio::main]` builds).
    ///
    /// # Errors
    /// [`Error::Handler`] when a migration failed (a handler error, panic or
    /// timeout, or a missing handler under [`MissingHandler::Error`]): the
    /// first failure by id, its message counting any others. The run has
    /// finished by then, under its [`FailurePolicy`], and released the lock;
    /// each outcome is logged. Use [`run_and_report`](Self::run_and_report)
    /// to get the full report of a run with failures.
    ///
    /// Otherwise as [`run_and_report`](Self::run_and_report).
    pub async fn run(&self, state: impl Into<Arc<S>>) -> Result<RunReport, Error> {
        self.run_and_report(state).await?.into_result()
    }

    /// Runs every pending migration like [`run`](Self::run), but returns
    /// `Ok` whenever the run itself worked, failed migrations included: for
    /// tools that show every outcome (a CLI's table). Check
    /// [`RunReport::is_success`] or call [`RunReport::into_result`].
    ///
    /// # Errors
    /// [`Error::LockTimeout`] when another instance held the lock for the
    /// whole wait; [`Error::Conflict`] when a declared id is tracked under
    /// another name; [`Error::Store`] when the database fails (including
    /// while recording an outcome: the run stops there);
    /// [`Error::Invalid`] outside a Tokio runtime.
    pub async fn run_and_report(&self, state: impl Into<Arc<S>>) -> Result<RunReport, Error> {
        let started = Instant::now();
        // Stores and the runner use Tokio's timers and blocking threads:
        // say so plainly rather than let a store panic on a missing reactor.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "runtime",
                "the runner must be called inside a Tokio runtime",
            ));
        }
        let inner = &*self.inner;
        if inner.store.is_settled(&inner.fingerprint).await? {
            tracing::debug!("migrations settled: nothing pending");
            return Ok(RunReport::new(Vec::new(), true, None, started.elapsed()));
        }
        let state = state.into();
        inner
            .run_pending(state, started)
            .instrument(tracing::info_span!("waymark.run"))
            .await
    }

    /// What a run would do now, in order, without running anything.
    ///
    /// It never registers, locks or runs a handler, and writes nothing to a
    /// store whose tracking table exists. Only when the store cannot be read
    /// (typically a database without the table yet) does it
    /// [`prepare`](MigrationStore::prepare) it, as a run would, and read again.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a declared id is tracked under another name
    /// (the run would fail the same way); [`Error::Store`] when the store
    /// cannot be read.
    pub async fn plan(&self) -> Result<Plan, Error> {
        let store = &self.inner.store;
        let rows = match store.list().await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the store; preparing it and reading again");
                store.prepare().await?;
                store.list().await?
            }
        };
        Plan::compute(rows, &self.inner.declared, &self.inner.settings)
    }

    /// The declared migrations, by ascending id.
    pub fn definitions(&self) -> impl Iterator<Item = &MigrationDef> {
        self.inner.defs.iter()
    }

    /// The store the runner works on.
    pub fn store(&self) -> &Arc<dyn MigrationStore> {
        &self.inner.store
    }

    #[cfg(test)]
    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }
}

impl<S: Send + Sync + 'static> Inner<S> {
    /// Registers the declared set. A store can refuse the write while
    /// another instance runs a long atomic migration that holds the
    /// database's write lock (SQLite's busy timeout is seconds, such a
    /// migration can take minutes): then wait for that run to end, as for
    /// the lock, and try once more.
    async fn register(&self, store: &dyn MigrationStore) -> Result<(), Error> {
        let first = match store.register(&self.defs).await {
            Err(err @ Error::Store { .. }) => err,
            other => return other,
        };
        tracing::info!(error = %first, "registering failed; waiting for any running migration to end, then trying again");
        let (guard, _) =
            lock::acquire_or_wait(store, self.settings.lock_wait, &self.events).await?;
        store.register(&self.defs).await?;
        drop(guard);
        Ok(())
    }

    async fn run_pending(&self, state: Arc<S>, started: Instant) -> Result<RunReport, Error> {
        let store = &*self.store;
        store.prepare().await?;
        self.register(store).await?;
        let before = store.pending().await?;
        if before.is_empty() {
            tracing::debug!("nothing pending");
            return Ok(RunReport::new(Vec::new(), false, None, started.elapsed()));
        }
        if !before.iter().any(|row| self.by_id.contains_key(&row.id)) {
            // Nothing here could be executed, so there is nothing to guard.
            let outcomes = self.dispatch_without_handlers(before);
            return Ok(RunReport::new(outcomes, false, None, started.elapsed()));
        }

        tracing::debug!(pending = before.len(), "taking the migration lock");
        let wait = self.settings.lock_wait;
        let (guard, waited) = match lock::acquire_or_wait(store, wait, &self.events).await? {
            (Some(guard), waited) => (guard, waited),
            (None, waited) => {
                // Another instance held the lock and has let it go: see what
                // it left. Every instance that lost the race gets here at
                // once, so none has to take the lock to find nothing to do.
                // One read gives both what is left and the attempts of
                // what the other instance did.
                let rows = store.list().await?;
                let left: Vec<Migration> =
                    rows.iter().filter(|row| !row.executed).cloned().collect();
                if !left.iter().any(|row| self.by_id.contains_key(&row.id)) {
                    tracing::info!(waited = ?waited, "another instance ran the pending migrations");
                    let mut outcomes = self.done_by_another(&before, &left, rows)?;
                    outcomes.extend(self.dispatch_without_handlers(left));
                    return Ok(RunReport::new(
                        outcomes,
                        false,
                        Some(waited),
                        started.elapsed(),
                    ));
                }
                // It stopped short (a failure, or it knew fewer migrations):
                // run what is left under the lock.
                let (guard, more) =
                    lock::acquire(store, wait.saturating_sub(waited), &self.events).await?;
                (guard, waited + more)
            }
        };
        let guard = Arc::new(guard);
        let mut pending = store.pending().await?;
        // Stores promise id order; sorting again costs nothing and makes
        // ordering this function's guarantee too.
        pending.sort_by_key(|row| row.id);
        tracing::info!(waited = ?waited, pending = pending.len(), "holding the migration lock");
        let count = pending.len();
        self.events
            .emit(|| RunEvent::LockAcquired { waited, count });

        let mut outcomes = self.already_done(&before, &pending).await?;
        let mut stopped_by = None;
        for (index, row) in pending.into_iter().enumerate() {
            let outcome = if let Some(by) = stopped_by {
                self.skip(row, SkipReason::EarlierFailure(by))
            } else {
                match self.by_id.get(&row.id).map(|&i| &self.declared[i]) {
                    None => self.missing_handler(row),
                    Some(declared) => {
                        // A lock tied to a database session can be lost
                        // (the session terminated): never start a
                        // migration without it.
                        guard.check()?;
                        Job {
                            row,
                            handler: &declared.handler,
                            timeout: declared.timeout.or(self.settings.timeout),
                            state: &state,
                            store: &self.store,
                            guard: &guard,
                            events: &self.events,
                            position: index + 1,
                            count,
                        }
                        .execute()
                        .await?
                    }
                }
            };
            if outcome.status.is_failure() && self.settings.failure_policy == FailurePolicy::Stop {
                stopped_by = Some(outcome.id);
            }
            outcomes.push(outcome);
        }
        drop(guard);
        let report = RunReport::new(outcomes, false, Some(waited), started.elapsed());
        tracing::info!(
            executed = report.executed().count(),
            failed = report.failures().count(),
            "migration run finished"
        );
        Ok(report)
    }

    /// Outcomes when no pending migration has a handler here: only missing
    /// handlers to report, in order, under the failure policy.
    fn dispatch_without_handlers(&self, pending: Vec<Migration>) -> Vec<MigrationOutcome> {
        let mut stopped_by = None;
        pending
            .into_iter()
            .map(|row| {
                if let Some(by) = stopped_by {
                    return self.skip(row, SkipReason::EarlierFailure(by));
                }
                let outcome = self.missing_handler(row);
                if outcome.status.is_failure()
                    && self.settings.failure_policy == FailurePolicy::Stop
                {
                    stopped_by = Some(outcome.id);
                }
                outcome
            })
            .collect()
    }

    /// Migrations pending before the lock and not after it: another
    /// instance executed them while this one waited.
    async fn already_done(
        &self,
        before: &[Migration],
        pending: &[Migration],
    ) -> Result<Vec<MigrationOutcome>, Error> {
        let still: HashSet<MigrationId> = pending.iter().map(|row| row.id).collect();
        if before.iter().all(|row| still.contains(&row.id)) {
            return Ok(Vec::new());
        }
        // One read for the exact attempts of them all, not one per row:
        // after a contended start every instance but one comes here.
        let rows = self.store.list().await?;
        self.done_by_another(before, pending, rows)
    }

    /// The outcomes of the migrations pending in `before` and not in
    /// `pending`, with their attempts as `rows` (every tracked row) has them.
    fn done_by_another(
        &self,
        before: &[Migration],
        pending: &[Migration],
        rows: Vec<Migration>,
    ) -> Result<Vec<MigrationOutcome>, Error> {
        let still: HashSet<MigrationId> = pending.iter().map(|row| row.id).collect();
        let mut now: HashMap<MigrationId, Migration> =
            rows.into_iter().map(|row| (row.id, row)).collect();
        let mut outcomes = Vec::new();
        for row in before.iter().filter(|row| !still.contains(&row.id)) {
            let now = now
                .remove(&row.id)
                .ok_or(Error::NotFound { id: row.id.get() })?;
            tracing::info!(id = row.id.get(), name = %row.name, "already executed by another instance");
            self.events.emit(|| RunEvent::AlreadyDone {
                id: row.id,
                name: Arc::from(row.name.as_str()),
            });
            outcomes.push(MigrationOutcome::new(
                row.id,
                now.name,
                Status::AlreadyDone,
                Duration::ZERO,
                now.attempts,
            ));
        }
        Ok(outcomes)
    }

    /// A pending migration with no declared handler: never silent.
    fn missing_handler(&self, row: Migration) -> MigrationOutcome {
        match self.settings.missing_handler {
            MissingHandler::Skip => {
                tracing::warn!(id = row.id.get(), name = %row.name, "pending migration has no handler; skipped (it stays pending)");
                self.skip(row, SkipReason::MissingHandler)
            }
            MissingHandler::Error => {
                let message = format!(
                    "no handler is declared for pending migration {} {:?} (registered by another version of the application?)",
                    row.id, row.name
                );
                tracing::error!(id = row.id.get(), name = %row.name, "{message}");
                self.events.emit(|| RunEvent::Failed {
                    id: row.id,
                    name: Arc::from(row.name.as_str()),
                    duration: Duration::ZERO,
                    kind: FailureKind::MissingHandler,
                    error: message.clone(),
                });
                // Nothing ran, so no attempt is recorded in the store.
                let failure = Failure::new(FailureKind::MissingHandler, message, None);
                MigrationOutcome::new(
                    row.id,
                    row.name,
                    Status::Failed(failure),
                    Duration::ZERO,
                    row.attempts,
                )
            }
        }
    }

    fn skip(&self, row: Migration, reason: SkipReason) -> MigrationOutcome {
        if let SkipReason::EarlierFailure(by) = reason {
            tracing::info!(id = row.id.get(), name = %row.name, failed = by.get(), "not run: an earlier migration failed");
        }
        self.events.emit(|| RunEvent::Skipped {
            id: row.id,
            name: Arc::from(row.name.as_str()),
            reason,
        });
        MigrationOutcome::new(
            row.id,
            row.name,
            Status::Skipped(reason),
            Duration::ZERO,
            row.attempts,
        )
    }
}

impl<S> Clone for Runner<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for Runner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("migrations", &self.inner.defs.len())
            .field("settings", &self.inner.settings)
            .field("events", &self.inner.events)
            .finish_non_exhaustive()
    }
}
