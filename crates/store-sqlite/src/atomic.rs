//! Atomic handlers: the handler's data changes and the migration's
//! bookkeeping commit in one SQLite transaction.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use rusqlite::Transaction;
use waymark_core::{
    BatchStep, BoxError, Error, Handler, MigrationContext, StalledBatch, drive_batches_blocking,
};

use crate::error::message;
use crate::reentry;
use crate::sql::{self, Change};
use crate::store::SqliteStore;

impl SqliteStore {
    /// A handler whose work commits in the same transaction as its success.
    ///
    /// `f` runs on a blocking thread inside a `BEGIN IMMEDIATE` transaction on
    /// this store's connection. When it returns `Ok`, the migration is
    /// recorded as succeeded (as [`record_success`] does) in that transaction,
    /// the transaction commits, and the runner is told not to record it
    /// again. An error or a panic in `f` rolls back everything: the data and
    /// the bookkeeping.
    ///
    /// While `f` runs it holds the store's connection and SQLite's write
    /// lock: other writers wait (up to the busy timeout, for other
    /// connections), and `f` must not call this store itself, whether
    /// through `ctx.store()` or `save_checkpoint_blocking`: such calls fail
    /// at once with [`Error::Store`] instead of deadlocking. For long work
    /// use [`batched`](Self::batched), which also saves checkpoints.
    ///
    /// [`record_success`]: waymark_core::MigrationStore::record_success
    ///
    /// ```
    /// use waymark_core::{BoxError, Handler, MigrationContext};
    /// use waymark_sqlite::SqliteStore;
    ///
    /// # async fn example(store: SqliteStore) {
    /// let handler: Handler<()> = store.atomic(|tx, _ctx: &MigrationContext<()>| {
    ///     tx.execute("UPDATE laps SET path = '/tracks' || path", [])?;
    ///     Ok::<(), BoxError>(())
    /// });
    /// # }
    /// ```
    pub fn atomic<S, F>(&self, f: F) -> Handler<S>
    where
        S: Send + Sync + 'static,
        F: Fn(&Transaction<'_>, &MigrationContext<S>) -> Result<(), BoxError>
            + Send
            + Sync
            + 'static,
    {
        let store = self.clone();
        Handler::blocking_fn(move |ctx: MigrationContext<S>| {
            store.in_transaction(&ctx, |tx| {
                f(tx, &ctx)?;
                store.bookkeeping(tx, &ctx, Change::RecordSuccess)?;
                Ok(())
            })?;
            ctx.mark_success_recorded();
            Ok(())
        })
    }

    /// A batched handler whose every batch commits with its checkpoint.
    ///
    /// `f` gets the transaction and the checkpoint to start from (`None` the
    /// first time), processes one bounded batch and returns where the next
    /// batch starts ([`BatchStep::next`]) or that it was the last
    /// ([`BatchStep::done`]). Each batch runs in its own `BEGIN IMMEDIATE`
    /// transaction, which also saves the returned checkpoint, or for the
    /// last batch records the success. After a crash the next run starts at
    /// the first batch that did not commit: none is applied twice, none is
    /// skipped. Progress is reported after each batch, and cancellation is
    /// honoured between batches ([`drive_batches_blocking`]).
    ///
    /// A batch that returns the checkpoint it started from is rolled back
    /// and fails with [`StalledBatch`]. The notes on [`atomic`](Self::atomic)
    /// about the held connection apply to each batch.
    ///
    /// ```
    /// use waymark_core::{BatchStep, BoxError, Handler, MigrationContext};
    /// use waymark_sqlite::SqliteStore;
    ///
    /// # async fn example(store: SqliteStore) {
    /// let handler: Handler<()> = store.batched(|tx, from, _ctx: &MigrationContext<()>| {
    ///     let after: i64 = from.map_or(Ok(0), str::parse)?;
    ///     let last: Option<i64> = tx.query_row(
    ///         "UPDATE laps SET pace = 1000.0 / speed WHERE id IN \
    ///          (SELECT id FROM laps WHERE id > ?1 ORDER BY id LIMIT 500) RETURNING max(id)",
    ///         [after],
    ///         |row| row.get(0),
    ///     )?;
    ///     Ok::<_, BoxError>(match last {
    ///         Some(last) => BatchStep::next(last.to_string(), 500),
    ///         None => BatchStep::done(0),
    ///     })
    /// });
    /// # }
    /// ```
    pub fn batched<S, F>(&self, f: F) -> Handler<S>
    where
        S: Send + Sync + 'static,
        F: Fn(&Transaction<'_>, Option<&str>, &MigrationContext<S>) -> Result<BatchStep, BoxError>
            + Send
            + Sync
            + 'static,
    {
        let store = self.clone();
        Handler::blocking_fn(move |ctx: MigrationContext<S>| {
            drive_batches_blocking(&ctx, |ctx, from| {
                let step = store.in_transaction(ctx, |tx| {
                    let step = f(tx, from, ctx)?;
                    match step.checkpoint() {
                        None => store.bookkeeping(tx, ctx, Change::RecordSuccess)?,
                        Some(next) if Some(next) == from => {
                            return Err(StalledBatch(next.to_owned()).into());
                        }
                        Some(next) => store.bookkeeping(tx, ctx, Change::SaveCheckpoint(next))?,
                    }
                    Ok(step)
                })?;
                if step.is_done() {
                    ctx.mark_success_recorded();
                }
                Ok(step)
            })
        })
    }

    /// Runs `body` in a write transaction on the store's connection and
    /// commits when it returns `Ok`. On an error it rolls back; on a panic it
    /// rolls back and lets the panic continue, so the runner reports it as
    /// it does for any handler.
    fn in_transaction<S, T>(
        &self,
        ctx: &MigrationContext<S>,
        body: impl FnOnce(&Transaction<'_>) -> Result<T, BoxError>,
    ) -> Result<T, BoxError> {
        let target = &self.inner.target;
        let id = ctx.id();
        let mut conn = self.inner.connection();
        let held = reentry::Held::enter(self.key());
        let tx = sql::begin(&mut conn, target, &format!("running migration {id}"))?;
        match catch_unwind(AssertUnwindSafe(|| body(&tx))) {
            Ok(Ok(out)) => {
                tx.commit()
                    .map_err(target.site.err(format_args!("committing migration {id}")))?;
                Ok(out)
            }
            Ok(Err(err)) => {
                rollback(tx, id.get());
                Err(err)
            }
            Err(panic) => {
                rollback(tx, id.get());
                // Release everything before unwinding further, so the mutex
                // is not poisoned and the thread's marker is cleared.
                drop(held);
                drop(conn);
                resume_unwind(panic)
            }
        }
    }

    /// Records `change` in the handler's transaction, after checking that
    /// the handler left the transaction open.
    fn bookkeeping<S>(
        &self,
        tx: &Transaction<'_>,
        ctx: &MigrationContext<S>,
        change: Change<'_>,
    ) -> Result<(), Error> {
        let target = &self.inner.target;
        if tx.is_autocommit() {
            return Err(Error::store(
                format!("running migration {} in {}", ctx.id(), target.site.location),
                message(
                    "the handler ended the store's transaction itself (COMMIT or ROLLBACK); \
                     its work is no longer atomic with the bookkeeping",
                ),
            ));
        }
        sql::update(tx, target, change, ctx.id())
    }
}

fn rollback(tx: Transaction<'_>, id: i64) {
    if let Err(err) = tx.rollback() {
        tracing::error!(migration = id, error = %err, "rolling back a failed migration failed");
    }
}
