//! Batched migrations: what one batch returns, and the errors of a batched
//! loop. The loop itself is the runner's, one for every kind of batch.

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

/// The error of a batched migration stopped by cancellation (a timeout or
/// the application's shutdown) between two batches; everything committed so
/// far stays, and the next run resumes from the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled between batches; the next run resumes from the last checkpoint")]
pub struct Cancelled;

/// The error of a batch that returned the checkpoint it started from,
/// which would loop forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch starting at checkpoint {0:?} returned the same checkpoint; a batch must advance")]
pub struct StalledBatch(pub String);
