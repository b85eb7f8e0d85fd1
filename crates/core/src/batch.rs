//! Batched migrations: process a bounded batch from a checkpoint, save the
//! next checkpoint, repeat. Shared by the runner's generic helper and the
//! store crates' atomic versions, so every batched loop behaves the same.

use std::future::Future;

use crate::{BoxError, MigrationContext};

/// What one batch returns: where the next batch starts, or that it is done.
///
/// ```
/// use waymark_core::BatchStep;
///
/// let more = BatchStep::next("last_id=500", 500).with_total(10_000);
/// assert_eq!(more.checkpoint(), Some("last_id=500"));
/// let last = BatchStep::done(120);
/// assert!(last.is_done());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStep {
    next: Option<String>,
    processed: u64,
    total: Option<u64>,
}

impl BatchStep {
    /// More work remains; the next batch starts from `checkpoint`.
    /// `processed` is how many units this batch handled.
    pub fn next(checkpoint: impl Into<String>, processed: u64) -> Self {
        Self {
            next: Some(checkpoint.into()),
            processed,
            total: None,
        }
    }

    /// This was the last batch.
    pub fn done(processed: u64) -> Self {
        Self {
            next: None,
            processed,
            total: None,
        }
    }

    /// The total units of work, when known, for progress and ETA.
    pub fn with_total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    /// The checkpoint to resume from, `None` when done.
    pub fn checkpoint(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Whether this was the last batch.
    pub fn is_done(&self) -> bool {
        self.next.is_none()
    }

    /// Units handled by this batch.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// The total, if the batch reported one.
    pub fn total(&self) -> Option<u64> {
        self.total
    }
}

/// The error of a batched migration stopped by cancellation (timeout or
/// shutdown) between two batches; everything committed so far stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled between batches; the next run resumes from the last checkpoint")]
pub struct Cancelled;

/// The error of a batch that returned the checkpoint it started from,
/// which would loop forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch starting at checkpoint {0:?} returned the same checkpoint; a batch must advance")]
pub struct StalledBatch(pub String);

/// Drives a batched migration on async code: calls `batch` with the last
/// checkpoint (the context's, at first) until it reports done, reporting
/// cumulative progress after each batch and stopping with [`Cancelled`] when
/// the context is cancelled.
///
/// `batch` must persist the checkpoint it returns (in the batch's own
/// transaction, for atomic versions) before returning it.
pub async fn drive_batches<S, F, Fut>(
    ctx: &MigrationContext<S>,
    mut batch: F,
) -> Result<(), BoxError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<BatchStep, BoxError>>,
{
    let mut cursor = BatchCursor::new(ctx);
    while let Some(from) = cursor.next_batch(ctx)? {
        let step = batch(from).await?;
        cursor.advance(ctx, step)?;
    }
    Ok(())
}

/// [`drive_batches`] for blocking code; `batch` also gets the context.
pub fn drive_batches_blocking<S, F>(ctx: &MigrationContext<S>, mut batch: F) -> Result<(), BoxError>
where
    F: FnMut(&MigrationContext<S>, Option<&str>) -> Result<BatchStep, BoxError>,
{
    let mut cursor = BatchCursor::new(ctx);
    while let Some(from) = cursor.next_batch(ctx)? {
        let step = batch(ctx, from.as_deref())?;
        cursor.advance(ctx, step)?;
    }
    Ok(())
}

/// Where a batched loop stands: the checkpoint to start from and the
/// units done so far in this run.
struct BatchCursor {
    checkpoint: Option<String>,
    finished: bool,
    done: u64,
}

impl BatchCursor {
    fn new<S>(ctx: &MigrationContext<S>) -> Self {
        Self {
            checkpoint: ctx.checkpoint().map(str::to_owned),
            finished: false,
            done: 0,
        }
    }

    /// The checkpoint the next batch starts from, `None` once finished.
    fn next_batch<S>(&self, ctx: &MigrationContext<S>) -> Result<Option<Option<String>>, BoxError> {
        if self.finished {
            return Ok(None);
        }
        if ctx.is_cancelled() {
            return Err(Cancelled.into());
        }
        Ok(Some(self.checkpoint.clone()))
    }

    fn advance<S>(&mut self, ctx: &MigrationContext<S>, step: BatchStep) -> Result<(), BoxError> {
        self.done = self.done.saturating_add(step.processed);
        ctx.report_progress(self.done, step.total);
        match step.next {
            None => self.finished = true,
            Some(next) if self.checkpoint.as_deref() == Some(next.as_str()) => {
                return Err(StalledBatch(next).into());
            }
            Some(next) => self.checkpoint = Some(next),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{MemoryStore, Migration, MigrationDef};

    type Reports = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

    fn context(checkpoint: Option<&str>) -> (MigrationContext<()>, Reports) {
        let mut row = Migration::pending(&MigrationDef::new(1, "m", "").unwrap());
        row.checkpoint = checkpoint.map(str::to_owned);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let ctx = MigrationContext::new(Arc::new(()), row, Arc::new(MemoryStore::new()))
            .with_progress(Arc::new(move |done, total| {
                sink.lock().unwrap().push((done, total))
            }));
        (ctx, reports)
    }

    #[tokio::test]
    async fn resumes_from_the_context_checkpoint_and_reports_progress() {
        let (ctx, reports) = context(Some("2"));
        let mut seen = Vec::new();
        drive_batches(&ctx, |from| {
            seen.push(from.clone());
            let at: u64 = from.unwrap().parse().unwrap();
            async move {
                Ok(if at < 4 {
                    BatchStep::next((at + 1).to_string(), 10).with_total(50)
                } else {
                    BatchStep::done(5)
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(seen, [Some("2".into()), Some("3".into()), Some("4".into())]);
        assert_eq!(
            *reports.lock().unwrap(),
            [(10, Some(50)), (20, Some(50)), (25, None)]
        );
    }

    #[tokio::test]
    async fn a_stalled_batch_is_an_error_not_a_loop() {
        let (ctx, _) = context(None);
        let err = drive_batches_blocking(&ctx, |_, _| Ok(BatchStep::next("same", 1))).unwrap_err();
        assert!(err.downcast_ref::<StalledBatch>().is_some(), "{err}");
    }

    #[tokio::test]
    async fn cancellation_stops_between_batches() {
        let (ctx, _) = context(None);
        let mut batches = 0;
        let err = drive_batches_blocking(&ctx, |ctx, _| {
            batches += 1;
            ctx.cancellation().cancel();
            Ok(BatchStep::next(batches.to_string(), 1))
        })
        .unwrap_err();
        assert!(err.downcast_ref::<Cancelled>().is_some());
        assert_eq!(batches, 1);
    }
}
