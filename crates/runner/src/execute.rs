//! Running one handler under supervision: on its own task (async) or a
//! blocking thread, with panics caught, an optional timeout, and the result
//! recorded in the store.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};
use tracing::{Instrument, Span};
use waymark_core::{
    BoxError, Cancellation, Error, Handler, LockGuard, Migration, MigrationContext, MigrationId,
    MigrationStore, error_chain,
};

use crate::events::{Events, RunEvent, progress_fn};
use crate::report::{Failure, FailureKind, MigrationOutcome, Status};

/// One pending migration to execute, with everything it needs.
pub(crate) struct Job<'a, S> {
    pub(crate) row: Migration,
    pub(crate) handler: &'a Handler<S>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) state: &'a Arc<S>,
    pub(crate) store: &'a Arc<dyn MigrationStore>,
    pub(crate) guard: &'a Arc<LockGuard>,
    pub(crate) events: &'a Events,
    pub(crate) position: usize,
    pub(crate) count: usize,
}

impl<S: Send + Sync + 'static> Job<'_, S> {
    /// Runs the handler and records its result. `Err` only when the store
    /// fails to record it.
    pub(crate) async fn execute(self) -> Result<MigrationOutcome, Error> {
        let span = tracing::info_span!(
            "waymark.migration",
            id = self.row.id.get(),
            name = %self.row.name
        );
        self.execute_in(span.clone()).instrument(span).await
    }

    async fn execute_in(self, span: Span) -> Result<MigrationOutcome, Error> {
        let id = self.row.id;
        let name: Arc<str> = Arc::from(self.row.name.as_str());
        let attempts = self.row.attempts.saturating_add(1);
        let resuming = self.row.checkpoint.is_some();
        tracing::info!(
            attempt = attempts,
            checkpoint = self.row.checkpoint.as_deref(),
            blocking = self.handler.is_blocking(),
            "migration started"
        );
        self.events.emit(|| RunEvent::Started {
            id,
            name: Arc::clone(&name),
            position: self.position,
            count: self.count,
            resuming,
        });

        let cancellation = Cancellation::new();
        let progress = progress_fn(self.events.clone(), id, Arc::clone(&name), span.clone());
        let ctx = MigrationContext::new(Arc::clone(self.state), self.row, Arc::clone(self.store))
            .with_progress(progress)
            .with_cancellation(cancellation.clone());
        let recorded_by_handler = ctx.completion_flag();
        let started = Instant::now();
        let (ended, timed_out) = supervise(
            self.handler,
            ctx,
            cancellation,
            self.guard,
            self.timeout,
            span,
        )
        .await;

        let status = if recorded_by_handler.is_set() {
            // An atomic handler committed its data and its success together;
            // whatever happened after that commit cannot undo it.
            if let Some(what) = ended.trouble() {
                tracing::warn!(%what, "the handler recorded its success, then failed; it stays executed");
            }
            Status::Executed
        } else {
            match ended.into_failure(timed_out) {
                None => {
                    if timed_out.is_some() {
                        tracing::warn!(
                            "the handler finished its work after the timeout; recording it as executed so it does not run twice"
                        );
                    }
                    if let Err(err) = self.store.record_success(id).await {
                        tracing::error!(error = %err, "the migration's work is done but recording its success failed; it will run again");
                        return Err(unrecorded(err, "the success", id, &name));
                    }
                    Status::Executed
                }
                // The handler's own commit may have landed although it did
                // not return: a timeout, or a lost connection, right at an
                // atomic handler's COMMIT. The row was pending when this run
                // started under the lock, so executed now means it did.
                Some(failure) if committed_anyway(&**self.store, id).await => {
                    tracing::warn!(error = %failure.message(), "the handler failed after its transaction committed its success; it stays executed");
                    Status::Executed
                }
                Some(failure) => {
                    if let Err(err) = self.store.record_failure(id, failure.message()).await {
                        // The caller gets the store error; the failure itself must not vanish.
                        tracing::error!(failure = %failure.message(), error = %err, "the migration failed and recording the failure failed too");
                        return Err(unrecorded(err, "the failure", id, &name));
                    }
                    Status::Failed(failure)
                }
            }
        };
        let duration = started.elapsed();
        match &status {
            Status::Failed(failure) => {
                tracing::error!(duration = ?duration, kind = ?failure.kind(), error = %failure.message(), "migration failed");
                self.events.emit(|| RunEvent::Failed {
                    id,
                    name: Arc::clone(&name),
                    duration,
                    kind: failure.kind(),
                    error: failure.message().to_owned(),
                });
            }
            _ => {
                tracing::info!(duration = ?duration, "migration executed");
                self.events.emit(|| RunEvent::Succeeded {
                    id,
                    name: Arc::clone(&name),
                    duration,
                });
            }
        }
        Ok(MigrationOutcome::new(
            id, &*name, status, duration, attempts,
        ))
    }
}

/// Whether the migration is recorded executed although its handler failed
/// (its commit landed just before a timeout or a lost connection). When the
/// row cannot be read, the failure is recorded as usual.
async fn committed_anyway(store: &dyn MigrationStore, id: MigrationId) -> bool {
    matches!(store.get(id).await, Ok(row) if row.executed)
}

/// How a handler's task ended.
enum Ended {
    Returned(Result<(), BoxError>),
    Panicked(String),
    /// Aborted: by the timeout, or because the runtime is shutting down.
    Aborted,
}

impl Ended {
    fn from_join(joined: Result<Result<(), BoxError>, JoinError>) -> Self {
        match joined {
            Ok(result) => Self::Returned(result),
            Err(err) if err.is_panic() => Self::Panicked(panic_message(err.into_panic())),
            Err(_) => Self::Aborted,
        }
    }

    /// What went wrong, if anything, for a log line.
    fn trouble(&self) -> Option<String> {
        match self {
            Self::Returned(Ok(())) => None,
            Self::Returned(Err(err)) => Some(error_chain(&**err)),
            Self::Panicked(message) => Some(format!("panicked: {message}")),
            Self::Aborted => Some("was aborted".to_owned()),
        }
    }

    /// The failure to record, or `None` for a success.
    fn into_failure(self, timed_out: Option<Duration>) -> Option<Failure> {
        let timeout_note = |limit: Duration| format!("timed out after {limit:?}");
        Some(match (self, timed_out) {
            (Self::Returned(Ok(())), _) => return None,
            (Self::Returned(Err(err)), None) => {
                Failure::new(FailureKind::Error, error_chain(&*err), Some(err))
            }
            // A blocking handler that noticed the cancellation and gave up.
            (Self::Returned(Err(err)), Some(limit)) => Failure::new(
                FailureKind::Timeout,
                format!("{}: {}", timeout_note(limit), error_chain(&*err)),
                Some(err),
            ),
            (Self::Panicked(message), _) => {
                Failure::new(FailureKind::Panic, format!("panicked: {message}"), None)
            }
            (Self::Aborted, Some(limit)) => {
                Failure::new(FailureKind::Timeout, timeout_note(limit), None)
            }
            (Self::Aborted, None) => Failure::new(
                FailureKind::Cancelled,
                "cancelled: the runtime is shutting down".to_owned(),
                None,
            ),
        })
    }
}

/// Cancels and aborts the handler's task if the run is dropped half-way
/// (for instance by a `select!` on a shutdown signal), so an async handler
/// never outlives the run. A blocking handler cannot be aborted; it keeps a
/// share of the lock guard, so the lock stays held until it returns.
struct Supervised<T> {
    handle: JoinHandle<T>,
    cancellation: Cancellation,
}

impl<T> Drop for Supervised<T> {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            self.cancellation.cancel();
            self.handle.abort();
        }
    }
}

/// Spawns the handler and waits for it. Returns how it ended and, when the
/// timeout passed, the limit.
async fn supervise<S: Send + Sync + 'static>(
    handler: &Handler<S>,
    ctx: MigrationContext<S>,
    cancellation: Cancellation,
    guard: &Arc<LockGuard>,
    timeout: Option<Duration>,
    span: Span,
) -> (Ended, Option<Duration>) {
    // The task owns a share of the lock guard: the lock cannot be released
    // while the handler still runs, whatever happens to this future.
    let hold = Arc::clone(guard);
    let handle = match handler {
        Handler::Async(handler) => {
            let handler = Arc::clone(handler);
            tokio::spawn(
                async move {
                    let _hold = hold;
                    handler.run(ctx).await
                }
                .instrument(span),
            )
        }
        Handler::Blocking(handler) => {
            let handler = Arc::clone(handler);
            tokio::task::spawn_blocking(move || {
                let _hold = hold;
                let _entered = span.enter();
                handler.run(ctx)
            })
        }
    };
    let mut task = Supervised {
        handle,
        cancellation,
    };
    let Some(limit) = timeout else {
        return (Ended::from_join((&mut task.handle).await), None);
    };
    if let Ok(joined) = tokio::time::timeout(limit, &mut task.handle).await {
        return (Ended::from_join(joined), None);
    }
    task.cancellation.cancel();
    if handler.is_blocking() {
        // Blocking code cannot be interrupted. Releasing the lock now would
        // let another instance start this migration while this one may still
        // commit it, so the run waits; the handler's own result decides.
        tracing::warn!(
            limit = ?limit,
            "timed out: cancellation requested; waiting for the blocking handler to return before going on (the lock stays held)"
        );
    } else {
        tracing::warn!(limit = ?limit, "timed out: aborting the handler");
        task.handle.abort();
    }
    (Ended::from_join((&mut task.handle).await), Some(limit))
}

/// The store's error on recording `what` of a migration, saying which
/// migration's outcome was lost (the store's own context names only the
/// database).
fn unrecorded(error: Error, what: &str, id: MigrationId, name: &str) -> Error {
    match error {
        Error::Store { context, source } => Error::Store {
            context: format!("recording {what} of migration {id} {name:?}: {context}"),
            source,
        },
        other => other,
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}
