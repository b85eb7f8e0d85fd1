//! What a handler receives: the app's state, its migration's row, and ways to
//! checkpoint, report progress and notice cancellation.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::{Error, Migration, MigrationId, MigrationStore};

/// Receives `(done, total)` progress reports from a running handler.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// The context of one migration run, handed to its handler by value.
///
/// The same type serves async and blocking handlers: async code calls
/// [`save_checkpoint`](Self::save_checkpoint), blocking code (already on a
/// blocking thread) calls [`save_checkpoint_blocking`](Self::save_checkpoint_blocking).
pub struct MigrationContext<S> {
    state: Arc<S>,
    migration: Migration,
    store: Arc<dyn MigrationStore>,
    progress: Option<ProgressFn>,
    cancellation: Cancellation,
    completion: CompletionFlag,
    runtime: Handle,
}

impl<S> MigrationContext<S> {
    /// Builds a context. The runner calls this; handlers only receive one.
    ///
    /// Must be called inside a Tokio runtime: the context keeps a handle to
    /// it for [`save_checkpoint_blocking`](Self::save_checkpoint_blocking).
    pub fn new(state: Arc<S>, migration: Migration, store: Arc<dyn MigrationStore>) -> Self {
        Self {
            state,
            migration,
            store,
            progress: None,
            cancellation: Cancellation::new(),
            completion: CompletionFlag::default(),
            runtime: Handle::current(),
        }
    }

    /// Sends progress reports to `progress`.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Uses `cancellation`, which the runner trips on timeout or shutdown.
    pub fn with_cancellation(mut self, cancellation: Cancellation) -> Self {
        self.cancellation = cancellation;
        self
    }

    /// The application's state passed to the run.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// A shared handle to the application's state, for moving into tasks.
    pub fn state_arc(&self) -> Arc<S> {
        Arc::clone(&self.state)
    }

    /// The migration's row as it was when the run started.
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// The migration's id.
    pub fn id(&self) -> MigrationId {
        self.migration.id
    }

    /// The last saved checkpoint: `None` on a first run, the saved value when
    /// resuming after a failure or a crash.
    pub fn checkpoint(&self) -> Option<&str> {
        self.migration.checkpoint.as_deref()
    }

    /// The store the migration is tracked in.
    pub fn store(&self) -> &Arc<dyn MigrationStore> {
        &self.store
    }

    /// Saves `checkpoint` so that a later run resumes from it.
    ///
    /// The checkpoint is committed on its own, after the work it describes:
    /// make the work idempotent, or use a store crate's atomic batched
    /// handler, which commits both in one transaction.
    pub async fn save_checkpoint(&mut self, checkpoint: impl Into<String>) -> Result<(), Error> {
        let checkpoint = checkpoint.into();
        self.store
            .save_checkpoint(self.migration.id, &checkpoint)
            .await?;
        self.migration.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// [`save_checkpoint`](Self::save_checkpoint) for blocking handlers.
    ///
    /// # Panics
    /// When called from async code: it blocks the calling thread.
    pub fn save_checkpoint_blocking(&mut self, checkpoint: impl Into<String>) -> Result<(), Error> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.save_checkpoint(checkpoint))
    }

    /// Reports progress: `done` units of work so far, out of `total` if known.
    pub fn report_progress(&self, done: u64, total: Option<u64>) {
        if let Some(progress) = &self.progress {
            progress(done, total);
        }
    }

    /// True once the runner asks the handler to stop (timeout or shutdown).
    /// Long handlers should check it between units of work.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// The cancellation signal itself, to await or to pass along.
    pub fn cancellation(&self) -> &Cancellation {
        &self.cancellation
    }

    /// Tells the runner that the handler has recorded its own success in the
    /// same transaction as its data change (what the store crates' atomic
    /// handlers do), so the runner must not record it again.
    pub fn mark_success_recorded(&self) {
        self.completion.set();
    }

    /// The flag set by [`mark_success_recorded`](Self::mark_success_recorded);
    /// the runner keeps a clone before handing the context over.
    pub fn completion_flag(&self) -> CompletionFlag {
        self.completion.clone()
    }

    /// The Tokio runtime the run belongs to, for blocking code that needs to
    /// wait on async work.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }
}

impl<S> fmt::Debug for MigrationContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationContext")
            .field("migration", &self.migration)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Set once a handler has recorded its own success in its transaction.
#[derive(Debug, Clone, Default)]
pub struct CompletionFlag(Arc<AtomicBool>);

impl CompletionFlag {
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the handler recorded its success itself.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A cancellation signal shared between the runner and a handler.
#[derive(Debug, Clone, Default)]
pub struct Cancellation(Arc<CancellationInner>);

#[derive(Debug, Default)]
struct CancellationInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancellation {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal; every waiter wakes.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Completes when the signal fires (at once if it already has).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
