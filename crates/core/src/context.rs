//! What a handler receives: the app's state, its migration's row, and ways to
//! checkpoint, report progress and notice cancellation.

use std::fmt;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Migration, MigrationId, MigrationStore};

/// Receives `(done, total)` progress reports from a running handler.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// The context of one migration run, given to its handler.
///
/// Plain handlers get it by value and may save checkpoints through it
/// ([`save_checkpoint`](Self::save_checkpoint), or
/// [`save_checkpoint_blocking`](Self::save_checkpoint_blocking) on a
/// blocking thread). Atomic handlers get a shared reference: their
/// checkpoints and their success are recorded by the store in their own
/// transaction, so there is nothing for them to record, and nothing a
/// handler can call claims a migration done.
pub struct MigrationContext<S> {
    state: Arc<S>,
    migration: Migration,
    store: Arc<dyn MigrationStore>,
    progress: Option<ProgressFn>,
    cancellation: CancellationToken,
    runtime: Handle,
}

impl<S> MigrationContext<S> {
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
    /// resuming after a failure, a crash or a shutdown.
    pub fn checkpoint(&self) -> Option<&str> {
        self.migration.checkpoint.as_deref()
    }

    /// Saves `checkpoint` so that a later run resumes from it.
    ///
    /// The checkpoint is committed on its own, after the work it describes:
    /// make the work idempotent, or declare the migration `batched` on a
    /// store with atomic transactions, which commits both together.
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

    /// True once the runner asks the handler to stop (its timeout passed,
    /// or the application is shutting down). Long handlers should check it
    /// between units of work.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// The cancellation signal itself, to await or to pass along. The runner
    /// cancels it when the migration's timeout passes and, on the
    /// application's shutdown, at once for handlers that are not batched
    /// (batched ones stop at a batch boundary; theirs is cancelled only if
    /// the batch outlasts the shutdown grace).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
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

/// Builds a context: for the runner and the conformance suites. Must be
/// called inside a Tokio runtime (the context keeps a handle to it for
/// [`MigrationContext::save_checkpoint_blocking`]).
pub fn new_context<S>(
    state: Arc<S>,
    migration: Migration,
    store: Arc<dyn MigrationStore>,
    progress: Option<ProgressFn>,
    cancellation: CancellationToken,
) -> MigrationContext<S> {
    MigrationContext {
        state,
        migration,
        store,
        progress,
        cancellation,
        runtime: Handle::current(),
    }
}
