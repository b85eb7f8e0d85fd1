//! Atomic handlers: the handler's data change and the migration's
//! bookkeeping commit in one PostgreSQL transaction.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use tokio_postgres::Transaction;
use waymark_core::{
    BatchStep, BoxError, Error, Handler, MigrationContext, MigrationHandler, MigrationId,
    StalledBatch, drive_batches, now_utc,
};

use crate::PostgresStore;
use crate::conn::Conn;
use crate::error;
use crate::row::check_text;

/// A boxed, sendable future borrowing for `'a`: what atomic handler
/// closures return (`Box::pin(async move { … })`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl PostgresStore {
    /// A handler whose data change commits together with the record of its
    /// success.
    ///
    /// It takes a pooled connection, begins a transaction, runs `f` with it,
    /// records the success (as [`record_success`](waymark_core::MigrationStore::record_success)
    /// does) in the same transaction and commits; the runner is told not to
    /// record it again. If `f` fails, or anything before the commit does,
    /// both roll back: neither the change nor the executed flag is kept, and
    /// the runner records the failure. A run abandoned half-way (timeout,
    /// shutdown, a crash) closes the connection, which rolls back too.
    ///
    /// The success is recorded only if the migration is still pending when
    /// the transaction ends. Should two runs ever overlap (the run lock lost
    /// with a terminated session), the later one fails with
    /// [`Error::Conflict`] and rolls back: the change is applied once.
    ///
    /// `f` runs under the store's statement timeout; a handler with longer
    /// statements raises it with `SET LOCAL statement_timeout` first.
    ///
    /// ```no_run
    /// use waymark_core::{BoxError, Handler};
    /// use waymark_postgres::PostgresStore;
    ///
    /// struct App;
    ///
    /// # async fn demo() -> Result<(), waymark_core::Error> {
    /// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
    /// let fill_pace: Handler<App> = store.atomic(|tx, ctx| {
    ///     Box::pin(async move {
    ///         let updated = tx
    ///             .execute(
    ///                 "UPDATE streams SET pace = 1000.0 / speed WHERE pace IS NULL AND speed > 0",
    ///                 &[],
    ///             )
    ///             .await?;
    ///         ctx.report_progress(updated, Some(updated));
    ///         Ok::<(), BoxError>(())
    ///     })
    /// });
    /// # let _ = fill_pace;
    /// # Ok(())
    /// # }
    /// ```
    pub fn atomic<S, F>(&self, f: F) -> Handler<S>
    where
        S: Send + Sync + 'static,
        F: for<'a> Fn(
                &'a Transaction<'a>,
                &'a MigrationContext<S>,
            ) -> BoxFuture<'a, Result<(), BoxError>>
            + Send
            + Sync
            + 'static,
    {
        Handler::from_async(Atomic {
            store: self.clone(),
            f,
        })
    }

    /// A batched handler: each batch and its checkpoint commit in one
    /// transaction, and the last batch commits with the record of success.
    ///
    /// `f` gets the transaction, the checkpoint to start from (`None` on a
    /// first run, the last committed one when resuming) and the context,
    /// and returns [`BatchStep::next`] with the checkpoint after its batch,
    /// or [`BatchStep::done`]. A crash or failure between batches loses
    /// nothing committed: the next run resumes at the last checkpoint. The
    /// loop is [`drive_batches`]: it reports progress and stops between
    /// batches when the run is cancelled.
    ///
    /// A batch that returns the checkpoint it started from is rolled back
    /// and fails with [`StalledBatch`]: saving its work under the same
    /// checkpoint would apply it again on the next run.
    ///
    /// Each batch commits only if the migration is still pending at the
    /// checkpoint the batch started from; otherwise another run moved on
    /// (see [`atomic`](Self::atomic)) and the batch fails with
    /// [`Error::Conflict`], rolled back. So `f` must not save checkpoints
    /// through the context itself.
    ///
    /// ```no_run
    /// use waymark_core::{BatchStep, BoxError, Handler};
    /// use waymark_postgres::PostgresStore;
    ///
    /// # async fn demo(store: PostgresStore) {
    /// let backfill: Handler<()> = store.batched(|tx, from, _ctx| {
    ///     Box::pin(async move {
    ///         let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
    ///         let row = tx
    ///             .query_one(
    ///                 "WITH batch AS (SELECT id FROM laps WHERE id > $1 ORDER BY id LIMIT 500), \
    ///                       done AS (UPDATE laps SET avg_speed = distance / duration \
    ///                                FROM batch WHERE laps.id = batch.id) \
    ///                  SELECT COUNT(*), MAX(id) FROM batch",
    ///                 &[&after],
    ///             )
    ///             .await?;
    ///         let (count, last): (i64, Option<i64>) = (row.get(0), row.get(1));
    ///         Ok::<_, BoxError>(match last {
    ///             Some(last) => BatchStep::next(last.to_string(), count as u64),
    ///             None => BatchStep::done(0),
    ///         })
    ///     })
    /// });
    /// # let _ = backfill;
    /// # }
    /// ```
    pub fn batched<S, F>(&self, f: F) -> Handler<S>
    where
        S: Send + Sync + 'static,
        F: for<'a> Fn(
                &'a Transaction<'a>,
                Option<&'a str>,
                &'a MigrationContext<S>,
            ) -> BoxFuture<'a, Result<BatchStep, BoxError>>
            + Send
            + Sync
            + 'static,
    {
        Handler::from_async(Batched {
            store: self.clone(),
            f,
        })
    }

    /// Records, inside `tx`, what the work of an atomic transaction
    /// achieved, if the row is still as the run found it: pending, and for
    /// a batch, at the checkpoint the batch started from. Otherwise another
    /// run got there first (possible only if the run lock was lost, say to a
    /// terminated session): [`Error::Conflict`], and the caller rolls back,
    /// so the work is never applied twice.
    async fn bookkeep(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: MigrationId,
        record: Record<'_>,
    ) -> Result<(), Error> {
        let raw = id.get();
        let doing = format!("recording the progress of migration {raw}");
        let sql = self.statements();
        let pg = |e| error::pg(self.context(&doing), e);
        let updated = match record {
            Record::Success => {
                let statement = tx.prepare_cached(&sql.claim_success).await.map_err(pg)?;
                tx.execute(&statement, &[&raw, &now_utc()]).await
            }
            Record::Batch { from, next: None } => {
                let statement = tx.prepare_cached(&sql.claim_last_batch).await.map_err(pg)?;
                tx.execute(&statement, &[&raw, &now_utc(), &from]).await
            }
            Record::Batch {
                from,
                next: Some(next),
            } => {
                check_text("checkpoint", next)?;
                let statement = tx.prepare_cached(&sql.claim_batch).await.map_err(pg)?;
                tx.execute(&statement, &[&raw, &next, &from]).await
            }
        }
        .map_err(pg)?;
        if updated == 1 {
            return Ok(());
        }
        let statement = tx.prepare_cached(&sql.state).await.map_err(pg)?;
        let found = tx.query_opt(&statement, &[&raw]).await.map_err(pg)?;
        let Some(found) = found else {
            return Err(Error::NotFound { id: raw });
        };
        let (executed, checkpoint): (bool, Option<String>) = (found.get(0), found.get(1));
        let message = if executed {
            "another run completed it meanwhile; this run's changes were rolled back".to_owned()
        } else {
            let from = match record {
                Record::Batch { from, .. } => from,
                Record::Success => None,
            };
            format!(
                "another run moved its checkpoint from {from:?} to {checkpoint:?} meanwhile; \
                 this run's changes were rolled back"
            )
        };
        Err(Error::Conflict { id: raw, message })
    }

    /// Begins the transaction of an atomic handler on `conn`.
    async fn begin<'c>(
        &self,
        conn: &'c mut Conn,
        id: MigrationId,
    ) -> Result<deadpool_postgres::Transaction<'c>, Error> {
        conn.transaction()
            .await
            .map_err(|e| error::pg(self.context(&format!("beginning migration {id}")), e))
    }

    /// Ends an atomic handler's transaction after its work succeeded:
    /// records what it achieved and commits, or rolls back if that fails. Also says whether the connection is fit
    /// to go back to the pool.
    async fn conclude(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        id: MigrationId,
        record: Record<'_>,
    ) -> (Result<(), BoxError>, bool) {
        if let Err(e) = self.bookkeep(&tx, id, record).await {
            return (Err(e.into()), Self::abandon(tx).await);
        }
        match tx.commit().await {
            Ok(()) => (Ok(()), true),
            Err(e) => {
                let doing = format!("committing migration {id}");
                (Err(error::pg(self.context(&doing), e).into()), false)
            }
        }
    }

    /// Rolls back a failed handler's transaction; says whether the
    /// connection is fit to go back to the pool. A failed rollback means a
    /// broken session: the server rolls back as it ends.
    async fn abandon(tx: deadpool_postgres::Transaction<'_>) -> bool {
        tx.rollback().await.is_ok()
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

struct Atomic<F> {
    store: PostgresStore,
    f: F,
}

#[async_trait]
impl<S, F> MigrationHandler<S> for Atomic<F>
where
    S: Send + Sync + 'static,
    F: for<'a> Fn(
            &'a Transaction<'a>,
            &'a MigrationContext<S>,
        ) -> BoxFuture<'a, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        let store = &self.store;
        let mut conn = store.checkout().await?;
        let tx = store.begin(&mut conn, ctx.id()).await?;
        let (outcome, reusable) = match (self.f)(&tx, &ctx).await {
            Ok(()) => store.conclude(tx, ctx.id(), Record::Success).await,
            Err(e) => (Err(e), PostgresStore::abandon(tx).await),
        };
        conn.finish(reusable);
        outcome?;
        ctx.mark_success_recorded();
        Ok(())
    }
}

struct Batched<F> {
    store: PostgresStore,
    f: F,
}

#[async_trait]
impl<S, F> MigrationHandler<S> for Batched<F>
where
    S: Send + Sync + 'static,
    F: for<'a> Fn(
            &'a Transaction<'a>,
            Option<&'a str>,
            &'a MigrationContext<S>,
        ) -> BoxFuture<'a, Result<BatchStep, BoxError>>
        + Send
        + Sync
        + 'static,
{
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        let (store, f, ctx_ref) = (&self.store, &self.f, &ctx);
        drive_batches(&ctx, move |from: Option<String>| async move {
            let mut conn = store.checkout().await?;
            let tx = store.begin(&mut conn, ctx_ref.id()).await?;
            let (outcome, reusable) = match f(&tx, from.as_deref(), ctx_ref).await {
                // Committing would save this batch's work under the checkpoint
                // it started from, so the next run would apply it again.
                Ok(step) if step.checkpoint().is_some() && step.checkpoint() == from.as_deref() => {
                    let stalled = StalledBatch(from.clone().unwrap_or_default());
                    (Err(stalled.into()), PostgresStore::abandon(tx).await)
                }
                Ok(step) => {
                    let record = Record::Batch {
                        from: from.as_deref(),
                        next: step.checkpoint(),
                    };
                    let (outcome, reusable) = store.conclude(tx, ctx_ref.id(), record).await;
                    (outcome.map(|()| step), reusable)
                }
                Err(e) => (Err(e), PostgresStore::abandon(tx).await),
            };
            conn.finish(reusable);
            outcome
        })
        .await?;
        // Only now: the last batch committed its success with its data.
        ctx.mark_success_recorded();
        Ok(())
    }
}
