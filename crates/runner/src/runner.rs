//! The public runner: [`Runner`] and what [`Runner::run`] returns. The run
//! itself is the engine's ([`engine`](crate::engine)); background migrations
//! are handed to [`background`](crate::background).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;
use waymark_core::store::SetState;
use waymark_core::{Error, MigrationDef, MigrationStore};

use crate::background::{self, Background};
use crate::engine::Inner;
use crate::events::{RunEvent, Subscription};
use crate::plan::Plan;
use crate::report::RunReport;

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
/// 1. **Fast path.** One call, [`set_state`](MigrationStore::set_state)
///    with the fingerprint of the declared set: when this exact set was
///    registered before and nothing is pending, the run returns at once,
///    without preparing, registering or locking.
/// 2. **Prepare and register.** When the set was never registered, it
///    [`prepare`](MigrationStore::prepare)s the store and
///    [`register`](MigrationStore::register)s every declared migration (a
///    set registered before, with work pending, skips both). When the
///    database's write lock is busy because another instance runs a long
///    migration, it waits for that run, as for the lock.
/// 3. **Plan.** It reads the rows once (twice when a declared row is
///    missing and is registered again) and works out a [`Plan`]. With no
///    required migration to run it takes no lock.
/// 4. **Lock and snapshot.** It takes the run lock, waiting up to
///    [`lock_wait`](crate::RunnerBuilder::lock_wait), and reads the rows once
///    more under it: that snapshot is the plan it executes. Replicas that
///    lose the race wait for the winner together
///    ([`lock_or_wait`](MigrationStore::lock_or_wait)) and report what it did
///    ([`Status::AlreadyDone`](crate::Status::AlreadyDone)) without taking the lock.
/// 5. **Execute** the required migrations by ascending id. Async handlers run
///    on their own task, blocking ones on a blocking thread, atomic ones in
///    the store's transactions, so the runtime keeps serving. The
///    [`FailurePolicy`](crate::FailurePolicy) decides whether to go on after
///    a failure; pending rows this release does not declare are left pending
///    and reported (or fail, under [`UndeclaredPolicy::Fail`](crate::UndeclaredPolicy::Fail)).
/// 6. **Background.** Background migrations ([`Mode::Background`](waymark_core::Mode::Background)) then run
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
        let known = inner.stores.concrete.set_state(&inner.fingerprint).await?;
        if known == SetState::Settled {
            tracing::debug!("migrations settled: nothing pending");
            return Ok(Started {
                report: RunReport::new(Vec::new(), true, None, started.elapsed()),
                background: Background::finished(),
            });
        }
        let state = state.into();
        let (report, background_plan) = inner
            .required(&state, started, known)
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

    /// Adds `observer` to this runner and its clones until the returned
    /// [`Subscription`] is dropped: it hears every [`RunEvent`] of their
    /// runs, background ones included, after the builder's
    /// [`observer`](crate::RunnerBuilder::observer). For code that gets a
    /// runner already built, such as a command showing progress bars.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use waymark_core::{MemoryStore, MigrationContext, MigrationDef};
    /// use waymark_runner::{Handler, RunEvent, Runner};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let runner = Runner::builder(MemoryStore::new())
    ///     .migration(
    ///         MigrationDef::new(1, "fill_pace", "")?,
    ///         Handler::async_fn(|_ctx: MigrationContext<()>| async { Ok::<(), std::io::Error>(()) }),
    ///     )
    ///     .build()?;
    /// let heard = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&heard);
    /// let subscription = runner.subscribe(move |event| {
    ///     if let RunEvent::Succeeded { name, .. } = event {
    ///         log.lock().unwrap().push(name.to_string());
    ///     }
    /// });
    /// runner.run(()).await?.finish().await?;
    /// drop(subscription);
    /// assert_eq!(*heard.lock().unwrap(), ["fill_pace"]);
    /// # Ok::<(), waymark_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn subscribe(&self, observer: impl Fn(&RunEvent) + Send + Sync + 'static) -> Subscription {
        self.inner.settings.events.subscribe(Arc::new(observer))
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
