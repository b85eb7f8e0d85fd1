//! Migration handlers: the code that changes the data, async or blocking.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{BoxError, MigrationContext};

/// An async migration handler, awaited on the runtime.
///
/// Closures `Fn(MigrationContext<S>) -> impl Future<Output = Result<(), BoxError>>`
/// implement it; wrap one with [`Handler::async_fn`].
#[async_trait]
pub trait MigrationHandler<S>: Send + Sync + 'static {
    /// Does the migration's work. `Err` records a failed attempt and leaves
    /// the migration pending.
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError>;
}

#[async_trait]
impl<S, F, Fut> MigrationHandler<S> for F
where
    S: Send + Sync + 'static,
    F: Fn(MigrationContext<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    async fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        (self)(ctx).await
    }
}

/// A blocking migration handler: synchronous code (a database driver without
/// async, CPU-heavy work) that the runner moves onto a blocking thread so the
/// async runtime keeps serving.
///
/// Closures `Fn(MigrationContext<S>) -> Result<(), BoxError>` implement it;
/// wrap one with [`Handler::blocking_fn`].
pub trait BlockingMigrationHandler<S>: Send + Sync + 'static {
    /// Does the migration's work on a blocking thread.
    fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError>;
}

impl<S, F> BlockingMigrationHandler<S> for F
where
    F: Fn(MigrationContext<S>) -> Result<(), BoxError> + Send + Sync + 'static,
{
    fn run(&self, ctx: MigrationContext<S>) -> Result<(), BoxError> {
        (self)(ctx)
    }
}

/// A registered handler, async or blocking; what the runner dispatches on.
///
/// ```
/// use waymark_core::{BoxError, Handler, MigrationContext};
///
/// struct App;
///
/// let awaited: Handler<App> = Handler::async_fn(|ctx: MigrationContext<App>| async move {
///     ctx.report_progress(1, Some(1));
///     Ok::<(), BoxError>(())
/// });
/// let threaded: Handler<App> = Handler::blocking_fn(|_ctx: MigrationContext<App>| Ok(()));
/// assert!(!awaited.is_blocking() && threaded.is_blocking());
/// ```
pub enum Handler<S> {
    /// Awaited on the runtime.
    Async(Arc<dyn MigrationHandler<S>>),
    /// Run on a blocking thread.
    Blocking(Arc<dyn BlockingMigrationHandler<S>>),
}

impl<S: Send + Sync + 'static> Handler<S> {
    /// An async handler from a closure returning a future.
    pub fn async_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(MigrationContext<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Self::Async(Arc::new(f))
    }

    /// A blocking handler from a closure.
    pub fn blocking_fn<F>(f: F) -> Self
    where
        F: Fn(MigrationContext<S>) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        Self::Blocking(Arc::new(f))
    }

    /// An async handler from a trait implementation.
    pub fn from_async(handler: impl MigrationHandler<S>) -> Self {
        Self::Async(Arc::new(handler))
    }

    /// A blocking handler from a trait implementation.
    pub fn from_blocking(handler: impl BlockingMigrationHandler<S>) -> Self {
        Self::Blocking(Arc::new(handler))
    }
}

impl<S> Handler<S> {
    /// Whether the handler runs on a blocking thread.
    pub fn is_blocking(&self) -> bool {
        matches!(self, Self::Blocking(_))
    }
}

impl<S> Clone for Handler<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Async(handler) => Self::Async(Arc::clone(handler)),
            Self::Blocking(handler) => Self::Blocking(Arc::clone(handler)),
        }
    }
}

impl<S> fmt::Debug for Handler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Async(_) => "Handler::Async",
            Self::Blocking(_) => "Handler::Blocking",
        })
    }
}
