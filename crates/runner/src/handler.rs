//! Migration handlers: the code that changes the data. Plain handlers (async
//! or blocking) run on any store and the runner records their outcome;
//! atomic handlers run in the runner's own store's transactions, which
//! record it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use waymark_core::store::{AtomicFn, AtomicStore, BatchFn, BoxFuture};
use waymark_core::{BatchStep, BoxError, MigrationContext};

use crate::drive::{Halt, drive_batches};

/// An async migration handler, awaited on the runtime.
///
/// Closures work too: see [`Handler::async_fn`].
#[async_trait]
pub trait MigrationHandler<S>: Send + Sync + 'static {
    /// Does the migration's work. `Err` records a failed attempt and leaves
    /// the migration pending.
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError>;
}

/// A blocking migration handler: synchronous code (a database driver without
/// async, CPU-heavy work) that the runner moves onto a blocking thread so the
/// async runtime keeps serving.
///
/// Closures work too: see [`Handler::blocking_fn`].
pub trait BlockingMigrationHandler<S>: Send + Sync + 'static {
    /// Does the migration's work on a blocking thread.
    fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError>;
}

/// The body of a resumable (not atomic) async batch.
type ResumableFn<S> = Arc<
    dyn Fn(
            Arc<S>,
            Option<String>,
        ) -> waymark_core::store::BoxFuture<'static, Result<BatchStep, BoxError>>
        + Send
        + Sync,
>;

/// The body of a resumable (not atomic) blocking batch.
type ResumableBlockingFn<S> =
    Arc<dyn Fn(&S, Option<&str>) -> Result<BatchStep, BoxError> + Send + Sync>;

/// A migration's handler, for a runner whose application state is `S` and
/// whose store is `St`.
///
/// Plain handlers ([`async_fn`](Self::async_fn), [`blocking_fn`](Self::blocking_fn),
/// [`resumable`](Self::resumable)) work with any store: the runner records
/// their success after they return. Atomic ones ([`atomic`](Self::atomic),
/// [`batched`](Self::batched)) exist only for a store with transactions
/// ([`AtomicStore`]) and receive that store's transaction; their success
/// commits in it. The store type is part of the handler's type, so a handler
/// written for one store cannot be given to a runner over another:
///
/// ```compile_fail,E0277
/// use waymark_core::{BoxError, MemoryStore};
/// use waymark_runner::{Handler, Runner};
///
/// // MemoryStore has no transactions: there is no atomic handler for it.
/// let handler = Handler::<(), MemoryStore>::atomic(|_tx, _ctx| Ok::<(), BoxError>(()));
/// ```
///
/// Handlers return `Result<(), E>` for any error type `E` that converts
/// into [`BoxError`] (`std::io::Error`, `anyhow::Error`, your own):
///
/// ```
/// use waymark_core::{MemoryStore, MigrationContext};
/// use waymark_runner::Handler;
///
/// struct App;
///
/// let awaited: Handler<App, MemoryStore> =
///     Handler::async_fn(|ctx: MigrationContext<App>| async move {
///         ctx.report_progress(1, Some(1));
///         Ok::<(), std::io::Error>(())
///     });
/// let threaded: Handler<App, MemoryStore> =
///     Handler::blocking_fn(|_ctx: MigrationContext<App>| -> Result<(), std::io::Error> {
///         std::fs::metadata("/")?;
///         Ok(())
///     });
/// assert!(!awaited.kind().is_blocking() && threaded.kind().is_blocking());
/// ```
pub struct Handler<S, St> {
    pub(crate) body: Body<S, St>,
}

/// An atomic body bound to its store's execution: made where the store is
/// known to be an [`AtomicStore`], run by the runner on its own store.
pub(crate) type AtomicRun<S, St> = Arc<
    dyn Fn(&St, MigrationContext<S>, CancellationToken) -> BoxFuture<'static, Result<(), Halt>>
        + Send
        + Sync,
>;

pub(crate) enum Body<S, St> {
    Async(Arc<dyn MigrationHandler<S>>),
    Blocking(Arc<dyn BlockingMigrationHandler<S>>),
    Resumable(ResumableFn<S>),
    ResumableBlocking(ResumableBlockingFn<S>),
    Atomic(AtomicRun<S, St>),
    Batched(AtomicRun<S, St>),
}

/// How a handler runs: shown by [`Plan`](crate::Plan) and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandlerKind {
    /// Awaited on the runtime; the runner records its outcome.
    Async,
    /// On a blocking thread; the runner records its outcome.
    Blocking,
    /// Resumable batches, each checkpoint saved after its batch (not atomic).
    Resumable,
    /// One transaction of the store that also records its success.
    Atomic,
    /// Batches, each committed with its checkpoint in one transaction.
    Batched,
}

impl HandlerKind {
    /// `"async"`, `"blocking"`, `"resumable"`, `"atomic"` or `"batched"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Blocking => "blocking",
            Self::Resumable => "resumable",
            Self::Atomic => "atomic",
            Self::Batched => "batched",
        }
    }

    /// Whether its code runs on a blocking thread (for the resumable and
    /// atomic kinds, depending on the store: SQLite's do).
    pub fn is_blocking(self) -> bool {
        matches!(self, Self::Blocking)
    }

    /// Whether its work and its bookkeeping commit together.
    pub fn is_atomic(self) -> bool {
        matches!(self, Self::Atomic | Self::Batched)
    }

    /// Whether it runs in batches that a shutdown waits for.
    pub fn is_batched(self) -> bool {
        matches!(self, Self::Resumable | Self::Batched)
    }
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<S: Send + Sync + 'static, St> Handler<S, St> {
    /// An async handler from a closure returning a future.
    pub fn async_fn<F, Fut, E>(f: F) -> Self
    where
        F: Fn(MigrationContext<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::from_async(AsyncFn(f))
    }

    /// A blocking handler from a closure, run on a blocking thread.
    pub fn blocking_fn<F, E>(f: F) -> Self
    where
        F: Fn(MigrationContext<S>) -> Result<(), E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        Self::from_blocking(BlockingFn(f))
    }

    /// An async handler from a trait implementation.
    pub fn from_async(handler: impl MigrationHandler<S>) -> Self {
        Self {
            body: Body::Async(Arc::new(handler)),
        }
    }

    /// A blocking handler from a trait implementation.
    pub fn from_blocking(handler: impl BlockingMigrationHandler<S>) -> Self {
        Self {
            body: Body::Blocking(Arc::new(handler)),
        }
    }

    /// Resumable async batches that work on any store.
    ///
    /// `batch` gets the application's state and the checkpoint to start from
    /// (`None` on a first run, the last saved one when resuming after a
    /// failure, a crash or a shutdown), processes one bounded batch, and
    /// returns the next checkpoint or [`BatchStep::done`]. After each batch
    /// the checkpoint is saved and progress reported; a timeout stops the
    /// loop between batches, and so does the application's shutdown.
    ///
    /// **Not atomic:** a batch's data change and its checkpoint are committed
    /// separately, so a crash between the two repeats that one batch on the
    /// next start. Make batches idempotent, or declare the migration
    /// [`batched`](Self::batched) on a store with transactions.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use waymark_core::{BatchStep, MemoryStore};
    /// use waymark_runner::Handler;
    ///
    /// struct App { rows: u64 }
    ///
    /// let handler: Handler<App, MemoryStore> =
    ///     Handler::resumable(|app: Arc<App>, from: Option<String>| async move {
    ///         let start: u64 = from.as_deref().unwrap_or("0").parse()?;
    ///         let end = (start + 500).min(app.rows);
    ///         // ... update rows start..end, idempotently ...
    ///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(if end == app.rows {
    ///             BatchStep::done(end - start)
    ///         } else {
    ///             BatchStep::next(end.to_string(), end - start).with_total(app.rows)
    ///         })
    ///     });
    /// ```
    pub fn resumable<F, Fut, E>(batch: F) -> Self
    where
        F: Fn(Arc<S>, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<BatchStep, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let body: ResumableFn<S> = Arc::new(move |state, from| {
            let work = batch(state, from);
            Box::pin(async move { work.await.map_err(Into::into) })
        });
        Self {
            body: Body::Resumable(body),
        }
    }

    /// [`resumable`](Self::resumable) for blocking code, run on a blocking
    /// thread: `batch` gets the state and the checkpoint to start from. Not
    /// atomic either.
    pub fn resumable_blocking<F, E>(batch: F) -> Self
    where
        F: Fn(&S, Option<&str>) -> Result<BatchStep, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let body: ResumableBlockingFn<S> =
            Arc::new(move |state, from| batch(state, from).map_err(Into::into));
        Self {
            body: Body::ResumableBlocking(body),
        }
    }
}

impl<S, St> Handler<S, St> {
    /// How the handler runs.
    pub fn kind(&self) -> HandlerKind {
        match &self.body {
            Body::Async(_) => HandlerKind::Async,
            Body::Blocking(_) => HandlerKind::Blocking,
            Body::Resumable(_) | Body::ResumableBlocking(_) => HandlerKind::Resumable,
            Body::Atomic(_) => HandlerKind::Atomic,
            Body::Batched(_) => HandlerKind::Batched,
        }
    }
}

impl<S: Send + Sync + 'static, St: AtomicStore> Handler<S, St> {
    /// A handler whose work commits in the same transaction as its success.
    ///
    /// `f` gets the store's transaction (`&rusqlite::Transaction` on
    /// SQLite, run on a blocking thread; `&tokio_postgres::Transaction` on
    /// PostgreSQL, returning `Box::pin(async move { … })`) and the context.
    /// When it returns `Ok`, the store records the success in that
    /// transaction and commits; an error or a panic rolls back both. See
    /// [`AtomicStore`] for what each store guarantees.
    pub fn atomic<F, E>(f: F) -> Self
    where
        F: for<'t> Fn(St::Tx<'t>, &'t MigrationContext<S>) -> St::Output<'t, Result<(), E>>
            + Send
            + Sync
            + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let work: AtomicFn<S, St> =
            Arc::new(move |tx, ctx| St::map_output(f(tx, ctx), |r| r.map_err(Into::into)));
        let run: AtomicRun<S, St> = Arc::new(move |store: &St, ctx, _shutdown| {
            let call = store.execute_atomic(Arc::clone(&work), Arc::new(ctx));
            Box::pin(async move { call.await.map_err(Halt::from) })
        });
        Self {
            body: Body::Atomic(run),
        }
    }

    /// A handler in batches, each committed in one transaction with the
    /// checkpoint the next starts from; the last batch commits the success.
    ///
    /// `f` gets the transaction, the checkpoint its batch starts from
    /// (`None` the first time) and the context, processes one bounded batch
    /// and returns [`BatchStep::next`] or [`BatchStep::done`]. After a
    /// crash, a failure or a shutdown the next run starts at the first batch
    /// that did not commit: none is applied twice, none is skipped. A batch
    /// that returns the checkpoint it started from rolls back and fails
    /// ([`StalledBatch`](waymark_core::StalledBatch)).
    pub fn batched<F, E>(f: F) -> Self
    where
        F: for<'t> Fn(
                St::Tx<'t>,
                Option<&'t str>,
                &'t MigrationContext<S>,
            ) -> St::Output<'t, Result<BatchStep, E>>
            + Send
            + Sync
            + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let work: BatchFn<S, St> = Arc::new(move |tx, from, ctx| {
            St::map_output(f(tx, from, ctx), |r| r.map_err(Into::into))
        });
        let run: AtomicRun<S, St> = Arc::new(move |store: &St, ctx, shutdown| {
            let (store, work) = (store.clone(), Arc::clone(&work));
            Box::pin(async move {
                let ctx = Arc::new(ctx);
                let from = ctx.checkpoint().map(str::to_owned);
                drive_batches(&ctx, from, &shutdown, |from| {
                    let call = store.execute_batch(Arc::clone(&work), Arc::clone(&ctx), from);
                    async move { call.await.map_err(Halt::from) }
                })
                .await
            })
        });
        Self {
            body: Body::Batched(run),
        }
    }
}

impl<S, St> Clone for Handler<S, St> {
    fn clone(&self) -> Self {
        Self {
            body: match &self.body {
                Body::Async(h) => Body::Async(Arc::clone(h)),
                Body::Blocking(h) => Body::Blocking(Arc::clone(h)),
                Body::Resumable(h) => Body::Resumable(Arc::clone(h)),
                Body::ResumableBlocking(h) => Body::ResumableBlocking(Arc::clone(h)),
                Body::Atomic(h) => Body::Atomic(Arc::clone(h)),
                Body::Batched(h) => Body::Batched(Arc::clone(h)),
            },
        }
    }
}

impl<S, St> fmt::Debug for Handler<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.body {
            Body::Async(_) => "async",
            Body::Blocking(_) => "blocking",
            Body::Resumable(_) | Body::ResumableBlocking(_) => "resumable",
            Body::Atomic(_) => "atomic",
            Body::Batched(_) => "batched",
        };
        write!(f, "Handler({kind})")
    }
}

/// An async closure as a [`MigrationHandler`], converting its error.
struct AsyncFn<F>(F);

#[async_trait]
impl<S, F, Fut, E> MigrationHandler<S> for AsyncFn<F>
where
    S: Send + Sync + 'static,
    F: Fn(MigrationContext<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        (self.0)(ctx).await.map_err(Into::into)
    }
}

/// A blocking closure as a [`BlockingMigrationHandler`], converting its error.
struct BlockingFn<F>(F);

impl<S, F, E> BlockingMigrationHandler<S> for BlockingFn<F>
where
    F: Fn(MigrationContext<S>) -> Result<(), E> + Send + Sync + 'static,
    E: Into<BoxError>,
{
    fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        (self.0)(ctx).map_err(Into::into)
    }
}
