//! Atomic execution: the handler's data change and the migration's
//! bookkeeping commit in one SQLite transaction.
//!
//! One transaction is: the store's connection (held for the whole of it),
//! `BEGIN IMMEDIATE`, the handler's work on a blocking thread, the
//! conditional bookkeeping, `COMMIT`. While it is open the migration's id
//! is [`InFlight`](waymark_core::store::InFlight): the store's own writes to
//! that row fail at once instead of waiting for the connection.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, InterruptHandle, OptionalExtension, Transaction, params};
use waymark_core::store::sql::Statements;
use waymark_core::store::{AtomicError, AtomicFn, AtomicStore, BatchFn, check_advance, now_utc};
use waymark_core::{BatchStep, BoxError, Cancelled, Error, MigrationContext, MigrationId};

use crate::error::is_interrupt;
use crate::reentry;
use crate::sql;
use crate::store::SqliteStore;
use crate::target::Target;
use crate::timestamp;

/// How often a cancelled transaction's statement is interrupted again, for
/// a handler that goes on to run another statement after the first was
/// interrupted.
const INTERRUPT_AGAIN: Duration = Duration::from_millis(100);

/// Runs atomic handlers: `Handler::atomic` and `Handler::batched` of
/// waymark's runner, whose closures get `&rusqlite::Transaction` and run on
/// a blocking thread.
///
/// ```
/// use waymark_core::{BoxError, MigrationContext};
/// use waymark_sqlite::rusqlite::Transaction;
///
/// /// What `Handler::atomic` takes on SQLite (a closure works the same).
/// fn fill_pace(tx: &Transaction<'_>, ctx: &MigrationContext<()>) -> Result<(), BoxError> {
///     let updated = tx.execute(
///         "UPDATE streams SET pace = 1000.0 / speed WHERE pace IS NULL AND speed > 0",
///         [],
///     )?;
///     ctx.report_progress(updated as u64, Some(updated as u64));
///     Ok(())
/// }
/// # let _ = fill_pace;
/// ```
///
/// - **Bookkeeping.** When the work returns `Ok`, the success (or the
///   batch's next checkpoint) is recorded in the same transaction, only if
///   the row is still pending (and at the checkpoint the batch started
///   from); otherwise [`AtomicError::Superseded`] and everything rolls back.
/// - **Errors and panics** roll back the work; a panic goes on unwinding.
///   A handler that ends the transaction itself (`COMMIT` through
///   `execute_batch`) fails: its work is no longer atomic with the bookkeeping.
/// - **Cancellation** (the context's token: a timeout, a shutdown) and
///   **dropping the future** interrupt the running statement
///   (`sqlite3_interrupt`, repeated while the handler goes on) and roll
///   back: the result is [`Cancelled`]. Work the handler does outside
///   SQLite cannot be interrupted; it is waited for.
/// - **The connection.** The transaction holds the store's connection and
///   SQLite's write lock: other calls on the store wait for it, other
///   connections' writers wait up to their busy timeout. A write to the
///   migration's own row meanwhile fails at once with [`Error::Conflict`],
///   and any call to the store from the handler's own thread with
///   [`Error::Store`], instead of deadlocking.
impl AtomicStore for SqliteStore {
    type Tx<'t> = &'t Transaction<'t>;
    type Output<'t, R: Send + 't> = R;

    fn map_output<'t, A: Send + 't, B: Send + 't>(
        out: Self::Output<'t, A>,
        f: impl FnOnce(A) -> B + Send + 't,
    ) -> Self::Output<'t, B> {
        f(out)
    }

    fn execute_atomic<S: Send + Sync + 'static>(
        &self,
        work: AtomicFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
    ) -> impl Future<Output = Result<(), AtomicError>> + Send + 'static {
        let store = self.clone();
        async move { store.transact(Single(work), ctx).await }
    }

    fn execute_batch<S: Send + Sync + 'static>(
        &self,
        work: BatchFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
        from: Option<String>,
    ) -> impl Future<Output = Result<BatchStep, AtomicError>> + Send + 'static {
        let store = self.clone();
        async move { store.transact(Batch { work, from }, ctx).await }
    }
}

/// The work of one atomic transaction, and what it records.
trait Job<S>: Send + Sync + 'static {
    /// What the work returns on success.
    type Out: Send + 'static;

    /// Runs the work in `tx`.
    fn run(&self, tx: &Transaction<'_>, ctx: &MigrationContext<S>) -> Result<Self::Out, BoxError>;

    /// Records `out` in `tx`, or says why it must roll back instead.
    fn record(
        &self,
        tx: &Connection,
        target: &Target,
        id: MigrationId,
        out: &Self::Out,
    ) -> Result<(), AtomicError>;
}

/// A whole migration in one transaction.
struct Single<S>(AtomicFn<S, SqliteStore>);

impl<S: Send + Sync + 'static> Job<S> for Single<S> {
    type Out = ();

    fn run(&self, tx: &Transaction<'_>, ctx: &MigrationContext<S>) -> Result<(), BoxError> {
        (self.0)(tx, ctx)
    }

    fn record(
        &self,
        tx: &Connection,
        target: &Target,
        id: MigrationId,
        (): &(),
    ) -> Result<(), AtomicError> {
        claim(tx, target, id, None, Claim::Success)
    }
}

/// One batch, from checkpoint `from`.
struct Batch<S> {
    work: BatchFn<S, SqliteStore>,
    from: Option<String>,
}

impl<S: Send + Sync + 'static> Job<S> for Batch<S> {
    type Out = BatchStep;

    fn run(&self, tx: &Transaction<'_>, ctx: &MigrationContext<S>) -> Result<BatchStep, BoxError> {
        (self.work)(tx, self.from.as_deref(), ctx)
    }

    fn record(
        &self,
        tx: &Connection,
        target: &Target,
        id: MigrationId,
        step: &BatchStep,
    ) -> Result<(), AtomicError> {
        // Committing would save this batch's work under the checkpoint it
        // started from, so the next run would apply it again.
        let from = self.from.as_deref();
        check_advance(from, step).map_err(|e| AtomicError::Failed(e.into()))?;
        let what = match step.checkpoint() {
            None => Claim::LastBatch,
            Some(next) => Claim::Batch(next),
        };
        claim(tx, target, id, from, what)
    }
}

/// What a transaction records with its work.
#[derive(Debug, Clone, Copy)]
enum Claim<'a> {
    /// An atomic handler's success.
    Success,
    /// The last batch's success.
    LastBatch,
    /// A batch's next checkpoint.
    Batch(&'a str),
}

/// Runs one conditional claim for the batch that started at `from`; when it
/// changes no row, another run got there first ([`AtomicError::Superseded`])
/// or the row is gone.
fn claim(
    tx: &Connection,
    target: &Target,
    id: MigrationId,
    from: Option<&str>,
    what: Claim<'_>,
) -> Result<(), AtomicError> {
    let doing = format!("recording the progress of migration {id}");
    let sql = &target.sql;
    let stamp = timestamp::format(now_utc());
    let changed = match what {
        Claim::Success => tx
            .prepare_cached(&sql.claim_success)
            .and_then(|mut stmt| stmt.execute(params![id.get(), stamp])),
        Claim::LastBatch => tx
            .prepare_cached(&sql.claim_last_batch)
            .and_then(|mut stmt| stmt.execute(params![id.get(), stamp, from])),
        Claim::Batch(next) => tx
            .prepare_cached(&sql.claim_batch)
            .and_then(|mut stmt| stmt.execute(params![id.get(), next, from])),
    }
    .map_err(target.err(&doing))?;
    if changed == 1 {
        return Ok(());
    }
    let found: Option<(bool, Option<String>)> = tx
        .prepare_cached(&target.sql.state)
        .and_then(|mut stmt| {
            stmt.query_row([id.get()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(target.err(&doing))?;
    match found {
        None => Err(Error::NotFound { id }.into()),
        Some((executed, checkpoint)) => Err(AtomicError::Superseded(Statements::superseded(
            executed,
            checkpoint.as_deref(),
            from,
        ))),
    }
}

/// The running transaction's interrupt handle, while it runs.
#[derive(Default)]
struct Running {
    handle: Mutex<Option<InterruptHandle>>,
    interrupted: AtomicBool,
    ended: AtomicBool,
}

impl Running {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<InterruptHandle>> {
        self.handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn start(&self, handle: InterruptHandle) {
        *self.slot() = Some(handle);
    }

    /// Clears the handle; called before the connection is released, so an
    /// interrupt can never reach another call's statement.
    fn stop(&self) {
        *self.slot() = None;
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Interrupts the transaction's statement, if it still runs.
    /// A transaction not started yet then does not start.
    fn interrupt(&self) {
        let slot = self.slot();
        self.interrupted.store(true, Ordering::SeqCst);
        if let Some(handle) = slot.as_ref() {
            handle.interrupt();
        }
    }

    fn was_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Whether the transaction has started and not yet ended (or not
    /// started yet: the blocking task may still be waiting for the connection).
    fn is_running(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
    }
}

/// Interrupts the transaction when the future driving it is dropped, and
/// goes on interrupting (on a thread of its own: the future is gone) until
/// the transaction has ended, for a handler that runs statement after
/// statement. Work outside SQLite cannot be interrupted.
struct InterruptOnDrop(Arc<Running>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if !self.0.is_running() {
            return;
        }
        self.0.interrupt();
        let running = Arc::clone(&self.0);
        let spawned = std::thread::Builder::new()
            .name("waymark-interrupt".into())
            .spawn(move || {
                while running.is_running() {
                    std::thread::sleep(INTERRUPT_AGAIN);
                    running.interrupt();
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "could not keep interrupting an abandoned transaction");
        }
    }
}

/// How the work ended, inside the transaction.
enum Ended<T> {
    Done(Result<T, AtomicError>),
    Panicked(Box<dyn std::any::Any + Send>),
}

impl SqliteStore {
    /// One atomic transaction of `job` for `ctx`'s migration, on a blocking
    /// thread; the async side interrupts it on cancellation and on drop.
    async fn transact<S, J>(
        &self,
        job: J,
        ctx: Arc<MigrationContext<S>>,
    ) -> Result<J::Out, AtomicError>
    where
        S: Send + Sync + 'static,
        J: Job<S>,
    {
        if ctx.is_cancelled() {
            return Err(AtomicError::Failed(Cancelled.into()));
        }
        reentry::check(self.key())?;
        let open = self.inner.in_flight.enter(ctx.id());
        let running = Arc::new(Running::default());
        let store = self.clone();
        let (on_thread, work_ctx) = (Arc::clone(&running), Arc::clone(&ctx));
        let mut task = tokio::task::spawn_blocking(move || {
            let _open = open;
            store.run_job(&job, &work_ctx, &on_thread)
        });
        // Dropped before the work ends (the run abandoned), this interrupts it.
        let _on_drop = InterruptOnDrop(Arc::clone(&running));
        let joined = tokio::select! {
            biased;
            joined = &mut task => joined,
            () = ctx.cancellation().cancelled() => loop {
                running.interrupt();
                tokio::select! {
                    joined = &mut task => break joined,
                    () = tokio::time::sleep(INTERRUPT_AGAIN) => {}
                }
            },
        };
        match joined {
            Ok(Ended::Done(result)) => result,
            Ok(Ended::Panicked(panic)) => resume_unwind(panic),
            Err(join) => Err(Error::store(
                format!("running migration {} on a blocking thread", ctx.id()),
                join,
            )
            .into()),
        }
    }

    /// The transaction itself, on this thread: begin, work, bookkeeping,
    /// commit. The connection is held throughout, and `running` carries its
    /// interrupt handle until just before it is released.
    fn run_job<S, J: Job<S>>(
        &self,
        job: &J,
        ctx: &MigrationContext<S>,
        running: &Running,
    ) -> Ended<J::Out> {
        let mut conn = self.inner.connection();
        let held = reentry::Held::enter(self.key());
        running.start(conn.get_interrupt_handle());
        let ended = self.in_transaction(&mut conn, job, ctx, running);
        running.stop();
        drop(held);
        drop(conn);
        ended
    }

    fn in_transaction<S, J: Job<S>>(
        &self,
        conn: &mut Connection,
        job: &J,
        ctx: &MigrationContext<S>,
        running: &Running,
    ) -> Ended<J::Out> {
        let target = &self.inner.target;
        let id = ctx.id();
        let cancelled = || running.was_interrupted() || ctx.is_cancelled();
        if cancelled() {
            return Ended::Done(Err(AtomicError::Failed(Cancelled.into())));
        }
        let tx = match sql::begin(conn, target, &format!("running migration {id}")) {
            Ok(tx) => tx,
            // An interrupt that landed on BEGIN is the cancellation, not a failure.
            Err(_) if cancelled() => {
                return Ended::Done(Err(AtomicError::Failed(Cancelled.into())));
            }
            Err(e) => return Ended::Done(Err(e.into())),
        };
        let out = match catch_unwind(AssertUnwindSafe(|| job.run(&tx, ctx))) {
            Err(panic) => {
                rollback(tx, id);
                return Ended::Panicked(panic);
            }
            // An interrupted statement may have been swallowed by the
            // handler: after a cancel nothing it did is committed.
            Ok(_) if cancelled() => {
                rollback(tx, id);
                return Ended::Done(Err(AtomicError::Failed(Cancelled.into())));
            }
            Ok(Err(e)) => {
                rollback(tx, id);
                return Ended::Done(Err(AtomicError::Failed(e)));
            }
            Ok(Ok(out)) => out,
        };
        if tx.is_autocommit() {
            return Ended::Done(Err(Error::store_message(
                format!("running migration {id} in {}", target.site.location),
                "the handler ended the store's transaction itself (COMMIT or ROLLBACK); \
                 its work is no longer atomic with the bookkeeping",
            )
            .into()));
        }
        if let Err(e) = job.record(&tx, target, id, &out) {
            rollback(tx, id);
            if cancelled() && !matches!(e, AtomicError::Superseded(_)) {
                return Ended::Done(Err(AtomicError::Failed(Cancelled.into())));
            }
            return Ended::Done(Err(e));
        }
        Ended::Done(match tx.commit() {
            Ok(()) => Ok(out),
            Err(e) if is_interrupt(&e) || cancelled() => Err(AtomicError::Failed(Cancelled.into())),
            Err(e) => Err(target
                .site
                .error(format_args!("committing migration {id}"), e)
                .into()),
        })
    }
}

fn rollback(tx: Transaction<'_>, id: MigrationId) {
    if let Err(err) = tx.rollback() {
        tracing::error!(migration = %id, error = %err, "rolling back a failed migration failed");
    }
}
