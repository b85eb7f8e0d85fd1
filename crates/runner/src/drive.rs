//! The batched loops, one for atomic batches and one for resumable ones, and
//! how a handler's body says it stopped short.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use waymark_core::store::{AtomicError, check_advance};
use waymark_core::{BatchStep, BoxError, Cancelled, Error, MigrationContext};

/// Why a handler's body stopped short of success.
pub(crate) enum Halt {
    Error(BoxError),
    /// Another run recorded it first; this run's work was rolled back.
    Superseded(String),
    /// Stopped between batches (by the timeout or the shutdown).
    Cancelled,
}

impl From<BoxError> for Halt {
    fn from(error: BoxError) -> Self {
        if error.is::<Cancelled>() {
            Self::Cancelled
        } else {
            Self::Error(error)
        }
    }
}

impl From<Error> for Halt {
    fn from(error: Error) -> Self {
        Self::Error(error.into())
    }
}

impl From<AtomicError> for Halt {
    fn from(error: AtomicError) -> Self {
        match error {
            AtomicError::Superseded(message) => Self::Superseded(message),
            AtomicError::Failed(error) => error.into(),
            other => Self::Error(other.into()),
        }
    }
}

/// The batched loop of every batched kind: from the checkpoint, one batch
/// after the other until one says it was the last, reporting cumulative
/// progress after each. A timeout (the context's cancellation) or the
/// application's shutdown stops it between two batches, with everything
/// committed so far kept.
pub(crate) async fn drive_batches<S, F, Fut>(
    ctx: &MigrationContext<S>,
    mut from: Option<String>,
    shutdown: &CancellationToken,
    mut batch: F,
) -> Result<(), Halt>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<BatchStep, Halt>>,
{
    let mut done: u64 = 0;
    loop {
        if ctx.is_cancelled() || shutdown.is_cancelled() {
            return Err(Halt::Cancelled);
        }
        let step = batch(from.clone()).await?;
        check_advance(from.as_deref(), &step).map_err(|e| Halt::Error(e.into()))?;
        done = done.saturating_add(step.processed());
        ctx.report_progress(done, step.total());
        match step.checkpoint() {
            None => return Ok(()),
            Some(next) => from = Some(next.to_owned()),
        }
    }
}

/// [`drive_batches`] for resumable batches, which are not atomic: each
/// checkpoint is saved after its batch returned.
pub(crate) async fn drive_resumable<S, F>(
    ctx: &mut MigrationContext<S>,
    from: Option<String>,
    shutdown: &CancellationToken,
    mut batch: F,
) -> Result<(), Halt>
where
    F: FnMut(
        Option<String>,
    ) -> waymark_core::store::BoxFuture<'static, Result<BatchStep, BoxError>>,
{
    let mut done: u64 = 0;
    let mut from = from;
    loop {
        if ctx.is_cancelled() || shutdown.is_cancelled() {
            return Err(Halt::Cancelled);
        }
        let step = batch(from.clone()).await?;
        check_advance(from.as_deref(), &step).map_err(|e| Halt::Error(e.into()))?;
        if let Some(next) = step.checkpoint() {
            ctx.save_checkpoint(next).await?;
        }
        done = done.saturating_add(step.processed());
        ctx.report_progress(done, step.total());
        match step.checkpoint() {
            None => return Ok(()),
            Some(next) => from = Some(next.to_owned()),
        }
    }
}
