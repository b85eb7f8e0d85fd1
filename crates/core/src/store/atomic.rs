//! Atomic execution: a store whose transaction carries a migration's data
//! change together with its bookkeeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use time::OffsetDateTime;

use super::MigrationStore;
use crate::{BatchStep, BoxError, Error, MigrationContext, MigrationId, StalledBatch};

/// A boxed, sendable future borrowing for `'a`: what async atomic handlers
/// return (`Box::pin(async move { … })`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An atomic handler's body, type-erased: gets the store's transaction and
/// the context, returns what the store's [`AtomicStore::Output`] wraps.
pub type AtomicFn<S, St> = Arc<
    dyn for<'t> Fn(
            <St as AtomicStore>::Tx<'t>,
            &'t MigrationContext<S>,
        ) -> <St as AtomicStore>::Output<'t, Result<(), BoxError>>
        + Send
        + Sync,
>;

/// A batched atomic handler's body, type-erased: gets the transaction, the
/// checkpoint its batch starts from and the context, returns the step.
pub type BatchFn<S, St> = Arc<
    dyn for<'t> Fn(
            <St as AtomicStore>::Tx<'t>,
            Option<&'t str>,
            &'t MigrationContext<S>,
        ) -> <St as AtomicStore>::Output<'t, Result<BatchStep, BoxError>>
        + Send
        + Sync,
>;

/// A store whose transactions can carry a migration's work: atomic handlers
/// receive its transaction, and the store records the outcome in that same
/// transaction before it commits.
///
/// This is the only way a migration's success is recorded other than by
/// the runner itself after a plain handler returned: completion is what a
/// store's [`execute_atomic`](Self::execute_atomic) or last
/// [`execute_batch`](Self::execute_batch) commits, never something a handler
/// says. Handlers are declared for the runner's own store type (the runner
/// builder's `atomic` and `batched`), so one written for one store cannot
/// run against another.
///
/// Bookkeeping is conditional on every backend: success is recorded only if
/// the row is still pending (and, for a batch, still at the checkpoint the
/// batch started from); otherwise [`AtomicError::Superseded`] and everything
/// rolls back, so even two runs that overlap (a lost lock) apply a change once.
pub trait AtomicStore: MigrationStore + Clone {
    /// What a handler receives: a reference to the store's transaction
    /// (`&rusqlite::Transaction`, `&tokio_postgres::Transaction`,
    /// `&mut sqlx::Transaction`).
    type Tx<'t>;

    /// What a handler returns for a result `R`: `R` itself for a blocking
    /// driver, a [`BoxFuture`] of it for an async one.
    type Output<'t, R: Send + 't>;

    /// Applies `f` to the result inside `out` (used to convert handlers'
    /// own error types).
    fn map_output<'t, A: Send + 't, B: Send + 't>(
        out: Self::Output<'t, A>,
        f: impl FnOnce(A) -> B + Send + 't,
    ) -> Self::Output<'t, B>;

    /// Runs `work` in one transaction, records the migration's success in
    /// it (see [`confirm_commit`] for a commit whose answer was lost) and
    /// commits; an error or a panic rolls everything back (a panic goes on
    /// unwinding). A cancelled `ctx` (a timeout, a shutdown) stops any
    /// statement still running; dropping the future rolls back and leaves
    /// nothing running on the server.
    fn execute_atomic<S: Send + Sync + 'static>(
        &self,
        work: AtomicFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
    ) -> impl Future<Output = Result<(), AtomicError>> + Send + 'static;

    /// Runs one batch of `work` from checkpoint `from` in one transaction,
    /// which also saves the returned checkpoint or, for the last batch,
    /// records the success. A batch that does not advance
    /// ([`check_advance`]) rolls back with [`StalledBatch`]. Otherwise as
    /// [`execute_atomic`](Self::execute_atomic).
    fn execute_batch<S: Send + Sync + 'static>(
        &self,
        work: BatchFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
        from: Option<String>,
    ) -> impl Future<Output = Result<BatchStep, AtomicError>> + Send + 'static;
}

/// Why an atomic transaction did not record its migration's progress;
/// everything it did was rolled back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtomicError {
    /// The handler or the store failed.
    #[error(transparent)]
    Failed(BoxError),
    /// Another run recorded the migration (or moved its checkpoint) first:
    /// this run's changes were rolled back, so the work is applied once.
    #[error("another run got there first: {0}")]
    Superseded(String),
}

impl AtomicError {
    /// The error of a store failure.
    pub fn store(error: Error) -> Self {
        Self::Failed(error.into())
    }
}

impl From<Error> for AtomicError {
    fn from(error: Error) -> Self {
        Self::store(error)
    }
}

/// Fails with [`StalledBatch`] when a batch that started at `from` says the
/// next one starts there too: committing it would apply its work again on
/// the next run. Every atomic backend calls this before committing a batch.
pub fn check_advance(from: Option<&str>, step: &BatchStep) -> Result<(), StalledBatch> {
    match step.checkpoint() {
        Some(next) if Some(next) == from => Err(StalledBatch(next.to_owned())),
        _ => Ok(()),
    }
}

/// Whether this run's commit of migration `id`'s success landed, when the
/// answer to `COMMIT` was lost (the connection dropped at that moment).
///
/// An atomic success records `executed_at = stamp`, a time taken by this
/// run to the microsecond: the row executed at exactly that time is this
/// run's commit, never another run's.
pub async fn confirm_commit(
    store: &(impl MigrationStore + ?Sized),
    id: MigrationId,
    stamp: OffsetDateTime,
) -> Result<bool, Error> {
    let row = store.get(id).await?;
    Ok(row.executed && row.executed_at == Some(stamp))
}
