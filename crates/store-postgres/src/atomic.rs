//! Atomic execution: the handler's data change and the migration's
//! bookkeeping commit in one PostgreSQL transaction.
//!
//! One transaction is: a pooled connection, `BEGIN`, the handler's work
//! (under the session's own `statement_timeout`), then the conditional
//! bookkeeping under `SET LOCAL statement_timeout` (the store's limit) and
//! `COMMIT`. While it is open the migration's id is [`InFlight`]: the
//! store's own writes to that row fail at once instead of waiting for it.
//!
//! [`InFlight`]: waymark_core::store::InFlight

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::Transaction as PgTransaction;
use waymark_core::store::sql::Statements;
use waymark_core::store::{
    AtomicError, AtomicFn, AtomicStore, BatchFn, BoxFuture, check_advance, confirm_commit, now_utc,
};
use waymark_core::time::OffsetDateTime;
use waymark_core::{BatchStep, BoxError, Cancelled, Error, MigrationContext, MigrationId};

use crate::PostgresStore;
use crate::conn::{Conn, Ending};
use crate::error::{self, Limit, connection_lost, timed_out};
use crate::lock::timeout_ms;
use crate::row::check_text;

/// How long a rollback after a cancel request may take before the
/// connection is cancelled again and closed instead (the server then rolls
/// back as the session ends). Short: the cancelled run is waited for.
const CANCELLED_ROLLBACK_GRACE: Duration = Duration::from_secs(2);

/// Runs atomic handlers: `Handler::atomic` and `Handler::batched` of
/// waymark's runner, whose closures get `&tokio_postgres::Transaction` and
/// return `Box::pin(async move { … })`.
///
/// ```
/// use waymark_core::store::BoxFuture;
/// use waymark_core::{BoxError, MigrationContext};
/// use waymark_postgres::tokio_postgres::Transaction;
///
/// /// What `Handler::atomic` takes on PostgreSQL (a closure works the same).
/// fn fill_pace<'t>(
///     tx: &'t Transaction<'t>,
///     ctx: &'t MigrationContext<()>,
/// ) -> BoxFuture<'t, Result<(), BoxError>> {
///     Box::pin(async move {
///         let updated = tx
///             .execute("UPDATE streams SET pace = 1000.0 / speed WHERE pace IS NULL AND speed > 0", &[])
///             .await?;
///         ctx.report_progress(updated, Some(updated));
///         Ok(())
///     })
/// }
/// # let _ = fill_pace;
/// ```
///
/// - **Bookkeeping.** When the work returns `Ok`, the success (or the
///   batch's next checkpoint) is recorded in the same transaction, only if
///   the row is still pending (and at the checkpoint the batch started
///   from); otherwise [`AtomicError::Superseded`] and everything rolls
///   back. A `COMMIT` whose answer is lost (the connection dropped at that
///   moment) is checked on another connection ([`confirm_commit`]).
/// - **Errors and panics** roll back the work; a panic goes on unwinding.
/// - **Cancellation** (the context's token: a timeout, a shutdown) sends the
///   server a cancel request for the running statement, drops the work and
///   rolls back: nothing is left running, no row stays locked. The result
///   is [`Cancelled`], so the runner stops or records the timeout.
/// - **Dropping the future** mid-statement sends the cancel request and
///   closes the connection, which rolls back.
/// - **Timeouts.** The handler's statements run under the session's own
///   `statement_timeout` (none unless the server, the role or the URL sets
///   one); the store's [`statement_timeout`](crate::PostgresConfig::statement_timeout)
///   bounds `BEGIN`, the bookkeeping and `COMMIT` only.
impl AtomicStore for PostgresStore {
    type Tx<'t> = &'t PgTransaction<'t>;
    type Output<'t, R: Send + 't> = BoxFuture<'t, R>;

    fn map_output<'t, A: Send + 't, B: Send + 't>(
        out: Self::Output<'t, A>,
        f: impl FnOnce(A) -> B + Send + 't,
    ) -> Self::Output<'t, B> {
        Box::pin(async move { f(out.await) })
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
trait Job<S>: Send + Sync {
    /// What the work returns on success.
    type Out: Send;

    /// Runs the work in `tx`.
    fn run<'t>(
        &'t self,
        tx: &'t PgTransaction<'t>,
        ctx: &'t MigrationContext<S>,
    ) -> BoxFuture<'t, Result<Self::Out, BoxError>>;

    /// What to record for `out`, or why it must roll back instead.
    fn record<'a>(&'a self, out: &'a Self::Out) -> Result<Record<'a>, AtomicError>;
}

/// A whole migration in one transaction.
struct Single<S>(AtomicFn<S, PostgresStore>);

impl<S: Send + Sync + 'static> Job<S> for Single<S> {
    type Out = ();

    fn run<'t>(
        &'t self,
        tx: &'t PgTransaction<'t>,
        ctx: &'t MigrationContext<S>,
    ) -> BoxFuture<'t, Result<(), BoxError>> {
        (self.0)(tx, ctx)
    }

    fn record<'a>(&'a self, (): &'a ()) -> Result<Record<'a>, AtomicError> {
        Ok(Record::Success)
    }
}

/// One batch, from checkpoint `from`.
struct Batch<S> {
    work: BatchFn<S, PostgresStore>,
    from: Option<String>,
}

impl<S: Send + Sync + 'static> Job<S> for Batch<S> {
    type Out = BatchStep;

    fn run<'t>(
        &'t self,
        tx: &'t PgTransaction<'t>,
        ctx: &'t MigrationContext<S>,
    ) -> BoxFuture<'t, Result<BatchStep, BoxError>> {
        (self.work)(tx, self.from.as_deref(), ctx)
    }

    fn record<'a>(&'a self, step: &'a BatchStep) -> Result<Record<'a>, AtomicError> {
        // Committing would save this batch's work under the checkpoint it
        // started from, so the next run would apply it again.
        check_advance(self.from.as_deref(), step).map_err(|e| AtomicError::Failed(e.into()))?;
        Ok(Record::Batch {
            from: self.from.as_deref(),
            next: step.checkpoint(),
        })
    }
}

/// What an atomic transaction records with its work.
#[derive(Debug, Clone, Copy)]
enum Record<'s> {
    /// An atomic handler's success.
    Success,
    /// A batch that started at checkpoint `from`: the checkpoint `next` to
    /// resume from, or (`None`) the migration's success.
    Batch {
        from: Option<&'s str>,
        next: Option<&'s str>,
    },
}

/// How an atomic transaction ended.
enum Ended<T> {
    /// Committed, or rolled back with this error.
    Known(Result<T, AtomicError>),
    /// The answer to `COMMIT` was lost (`lost` says how): it may have
    /// landed, with `executed_at` = `stamp` for a success.
    Unknown {
        out: T,
        stamp: OffsetDateTime,
        lost: Error,
    },
}

impl Record<'_> {
    /// Whether it records the migration's success (stamped `executed_at`).
    fn completes(&self) -> bool {
        matches!(self, Self::Success | Self::Batch { next: None, .. })
    }
}

impl PostgresStore {
    /// One atomic transaction of `job` for `ctx`'s migration.
    async fn transact<S, J>(
        &self,
        job: J,
        ctx: Arc<MigrationContext<S>>,
    ) -> Result<J::Out, AtomicError>
    where
        S: Send + Sync + 'static,
        J: Job<S>,
    {
        let id = ctx.id();
        if ctx.is_cancelled() {
            return Err(AtomicError::Failed(Cancelled.into()));
        }
        let _open = self.in_flight().enter(id);
        let mut conn = self.checkout().await?;
        // Dropped mid-way (the future abandoned, a panic), `conn` is
        // cancelled and closed; the server rolls back as the session ends.
        let (how, ended) = self.in_transaction(&mut conn, &job, &ctx).await;
        conn.end(how);
        match ended {
            Ended::Known(result) => result,
            Ended::Unknown { out, stamp, lost } => {
                // The answer to COMMIT was lost: another connection tells
                // whether it landed.
                let landed = match job.record(&out) {
                    Ok(record) => self.landed(id, record, stamp).await,
                    Err(e) => return Err(e),
                };
                match landed {
                    Ok(true) => Ok(out),
                    Ok(false) => Err(lost.into()),
                    Err(check) => {
                        tracing::warn!(%id, error = %check, "the answer to COMMIT was lost and its outcome could not be read");
                        Err(lost.into())
                    }
                }
            }
        }
    }

    /// The transaction itself, on `conn`: begin, work, bookkeeping, commit.
    /// Says what is left of the connection, and how it ended.
    async fn in_transaction<S, J>(
        &self,
        conn: &mut Conn,
        job: &J,
        ctx: &MigrationContext<S>,
    ) -> (Ending, Ended<J::Out>)
    where
        S: Send + Sync + 'static,
        J: Job<S>,
    {
        let id = ctx.id();
        let limit = self.statement_timeout();
        let (token, canceller) = conn.cancel_handle();
        let known = |result| Ended::Known(result);
        let doing = format!("beginning migration {id}");
        let tx = match tokio::time::timeout(limit, conn.transaction()).await {
            Ok(Ok(tx)) => tx,
            Ok(Err(e)) => return (Ending::Close, known(Err(self.pg_error(&doing, e).into()))),
            Err(_) => {
                let error = self.no_answer(&doing, limit);
                return (Ending::CancelAndClose, known(Err(error.into())));
            }
        };

        let outcome = {
            let work = job.run(&tx, ctx);
            tokio::select! {
                biased;
                out = work => Some(out),
                () = ctx.cancellation().cancelled() => None,
            }
        };
        let out = match outcome {
            Some(Ok(out)) => out,
            Some(Err(e)) => {
                return (
                    roll_back(tx, limit).await,
                    known(Err(AtomicError::Failed(e))),
                );
            }
            None => {
                // The work is dropped; its statement may still run on the
                // server: cancel it, then roll back.
                tracing::debug!(%id, "cancelled: sending a cancel request and rolling back");
                canceller.cancel(&token).await;
                let how = roll_back(tx, CANCELLED_ROLLBACK_GRACE.min(limit)).await;
                return (how, known(Err(AtomicError::Failed(Cancelled.into()))));
            }
        };
        let record = match job.record(&out) {
            Ok(record) => record,
            Err(e) => return (roll_back(tx, limit).await, known(Err(e))),
        };

        let stamp = now_utc();
        match tokio::time::timeout(limit, self.book(&tx, id, record, stamp)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (roll_back(tx, limit).await, known(Err(e))),
            Err(_) => {
                // Cancelled and closed: the server rolls back.
                let doing = format!("recording the progress of migration {id}");
                let error = self.no_answer(&doing, limit);
                return (Ending::CancelAndClose, known(Err(error.into())));
            }
        }

        let doing = format!("committing migration {id}");
        match tokio::time::timeout(limit, tx.commit()).await {
            Ok(Ok(())) => (Ending::Reuse, known(Ok(out))),
            Ok(Err(e)) if connection_lost(&e) => {
                let lost = error::pg(self.context(&doing), e);
                (Ending::Close, Ended::Unknown { out, stamp, lost })
            }
            // The server refused it: the transaction is rolled back.
            Ok(Err(e)) => {
                let error = self.pg_error_limited(&doing, e, limit);
                (Ending::Close, known(Err(error.into())))
            }
            Err(_) => {
                let lost = self.no_answer(&doing, limit);
                (Ending::CancelAndClose, Ended::Unknown { out, stamp, lost })
            }
        }
    }

    /// Records `record` inside `tx`, if the row is still as the run found
    /// it: pending, and for a batch, at the checkpoint the batch started
    /// from. Otherwise another run got there first (possible only if the
    /// run lock was lost, say to a terminated session):
    /// [`AtomicError::Superseded`], and the caller rolls back, so the work
    /// is never applied twice.
    ///
    /// Runs under `SET LOCAL statement_timeout` (the store's limit), sent
    /// pipelined with the claim: the handler's statements before it ran
    /// under the session's own setting.
    async fn book(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: MigrationId,
        record: Record<'_>,
        stamp: OffsetDateTime,
    ) -> Result<(), AtomicError> {
        let raw = id.get();
        let limit = self.statement_timeout();
        let doing = format!("recording the progress of migration {id}");
        let pg = |e| AtomicError::from(self.pg_error_limited(&doing, e, limit));
        let sql = self.statements();
        let set_limit = format!("SET LOCAL statement_timeout = {}", timeout_ms(limit));
        let (set, updated) = match record {
            Record::Success => {
                let statement = tx.prepare_cached(&sql.claim_success).await.map_err(pg)?;
                pipelined(
                    tx.batch_execute(&set_limit),
                    tx.execute(&statement, &[&raw, &stamp]),
                )
                .await
            }
            Record::Batch { from, next: None } => {
                let statement = tx.prepare_cached(&sql.claim_last_batch).await.map_err(pg)?;
                pipelined(
                    tx.batch_execute(&set_limit),
                    tx.execute(&statement, &[&raw, &stamp, &from]),
                )
                .await
            }
            Record::Batch {
                from,
                next: Some(next),
            } => {
                check_text("checkpoint", next)?;
                let statement = tx.prepare_cached(&sql.claim_batch).await.map_err(pg)?;
                pipelined(
                    tx.batch_execute(&set_limit),
                    tx.execute(&statement, &[&raw, &next, &from]),
                )
                .await
            }
        };
        set.map_err(pg)?;
        if updated.map_err(pg)? == 1 {
            return Ok(());
        }
        let statement = tx.prepare_cached(&sql.state).await.map_err(pg)?;
        let Some(found) = tx.query_opt(&statement, &[&raw]).await.map_err(pg)? else {
            return Err(Error::NotFound { id }.into());
        };
        let (executed, checkpoint): (bool, Option<String>) = (found.get(0), found.get(1));
        let from = match record {
            Record::Batch { from, .. } => from,
            Record::Success => None,
        };
        Err(AtomicError::Superseded(Statements::superseded(
            executed,
            checkpoint.as_deref(),
            from,
        )))
    }

    /// Whether the transaction whose `COMMIT` answer was lost committed:
    /// for a success, the row executed at exactly `stamp` (this run's, to
    /// the microsecond); for a batch, the row pending at the checkpoint it
    /// saved. Read on another connection.
    async fn landed(
        &self,
        id: MigrationId,
        record: Record<'_>,
        stamp: OffsetDateTime,
    ) -> Result<bool, Error> {
        if record.completes() {
            return confirm_commit(self, id, stamp).await;
        }
        let next = match record {
            Record::Batch { next, .. } => next,
            Record::Success => None,
        };
        let row = waymark_core::MigrationStore::get(self, id).await?;
        Ok(!row.executed && row.checkpoint.as_deref() == next)
    }

    /// [`pg_error`](Self::pg_error) for a statement of the bookkeeping,
    /// which the store's statement timeout may have cancelled.
    fn pg_error_limited(&self, doing: &str, e: tokio_postgres::Error, limit: Duration) -> Error {
        if error::missing_table(&e) {
            self.not_initialised()
        } else {
            error::pg_limited(self.context(doing), e, limit)
        }
    }

    /// The error of a step of the store's own that passed the statement timeout.
    fn no_answer(&self, doing: &str, limit: Duration) -> Error {
        Error::store(
            self.context(doing),
            timed_out(
                Limit::Statement,
                limit,
                "no answer from the server (its statement was cancelled)",
            ),
        )
    }
}

/// Rolls back `tx` within `limit`; says what is left of its connection. A
/// failed rollback means a broken session (the server rolls back as it
/// ends); one that takes too long means a statement still runs.
async fn roll_back(tx: deadpool_postgres::Transaction<'_>, limit: Duration) -> Ending {
    match tokio::time::timeout(limit, tx.rollback()).await {
        Ok(Ok(())) => Ending::Reuse,
        Ok(Err(_)) => Ending::Close,
        Err(_) => Ending::CancelAndClose,
    }
}

/// Both futures on one connection, pipelined: `first` is polled, and so
/// sent, before `second` (tokio-postgres sends a request when its future is
/// first polled), so the server runs them in that order, without waiting
/// for `first`'s answer before sending `second`.
async fn pipelined<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    let (mut first, mut second) = (pin!(first), pin!(second));
    let (mut a, mut b) = (None, None);
    std::future::poll_fn(|cx| {
        if a.is_none()
            && let Poll::Ready(out) = first.as_mut().poll(cx)
        {
            a = Some(out);
        }
        if b.is_none()
            && let Poll::Ready(out) = second.as_mut().poll(cx)
        {
            b = Some(out);
        }
        match (a.take(), b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (x, y) => {
                (a, b) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}
