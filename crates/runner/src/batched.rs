//! Batched handlers for any store: one bounded batch at a time, the
//! checkpoint saved through the store after each batch.

use std::future::Future;
use std::sync::Arc;

use waymark_core::{
    BatchStep, BoxError, Handler, MigrationContext, drive_batches, drive_batches_blocking,
};

/// An async batched handler that works on any store.
///
/// `batch` gets the application's state and the checkpoint to start from
/// (`None` on a first run, the last saved one when resuming after a failure
/// or a crash), processes one bounded batch, and returns the next
/// checkpoint or [`BatchStep::done`]. After each batch the runner's store
/// saves the checkpoint and progress is reported; cancellation (a timeout)
/// stops the loop between batches.
///
/// **Not atomic:** a batch's data change and its checkpoint are committed
/// separately, so a crash between the two re-runs that one batch on the next
/// start. Make batches idempotent, or use a store crate's atomic batched
/// handler, where the two commit in one transaction.
///
/// ```
/// use std::sync::Arc;
/// use waymark_core::{BatchStep, BoxError};
///
/// struct App { rows: u64 }
///
/// let handler = waymark_runner::batched(|app: Arc<App>, from: Option<String>| async move {
///     let start: u64 = from.as_deref().unwrap_or("0").parse()?;
///     let end = (start + 500).min(app.rows);
///     // ... update rows start..end ...
///     Ok::<_, BoxError>(if end == app.rows {
///         BatchStep::done(end - start)
///     } else {
///         BatchStep::next(end.to_string(), end - start).with_total(app.rows)
///     })
/// });
/// assert!(!handler.is_blocking());
/// ```
pub fn batched<S, F, Fut>(batch: F) -> Handler<S>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BatchStep, BoxError>> + Send + 'static,
{
    let batch = Arc::new(batch);
    Handler::async_fn(move |ctx: MigrationContext<S>| {
        let batch = Arc::clone(&batch);
        async move {
            let store = Arc::clone(ctx.store());
            let id = ctx.id();
            let state = ctx.state_arc();
            drive_batches(&ctx, |from| {
                let work = batch(Arc::clone(&state), from);
                let store = Arc::clone(&store);
                async move {
                    let step = work.await?;
                    if let Some(next) = step.checkpoint() {
                        store.save_checkpoint(id, next).await?;
                    }
                    Ok(step)
                }
            })
            .await
        }
    })
}

/// [`batched`] for blocking code, run on a blocking thread: `batch` gets the
/// state and the checkpoint to start from. Not atomic either; see
/// [`batched`].
pub fn batched_blocking<S, F>(batch: F) -> Handler<S>
where
    S: Send + Sync + 'static,
    F: Fn(&S, Option<&str>) -> Result<BatchStep, BoxError> + Send + Sync + 'static,
{
    Handler::blocking_fn(move |ctx: MigrationContext<S>| {
        drive_batches_blocking(&ctx, |ctx, from| {
            let step = batch(ctx.state(), from)?;
            if let Some(next) = step.checkpoint() {
                ctx.runtime()
                    .block_on(ctx.store().save_checkpoint(ctx.id(), next))?;
            }
            Ok(step)
        })
    })
}
