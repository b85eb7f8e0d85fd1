//! Running one migration under supervision: on its own task (async and
//! atomic kinds) or blocking threads, with panics caught, an optional
//! timeout, the application's shutdown, and the outcome recorded.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use waymark_core::run::new_context;
use waymark_core::store::LockGuard;
use waymark_core::{
    BoxError, Error, HandlerPanicked, HandlerTimedOut, Migration, MigrationContext, MigrationId,
    MigrationStore,
};

use crate::drive::{Halt, drive_resumable};
use crate::events::{Events, RunEvent, progress_fn};
use crate::handler::{Body, Handler};
use crate::report::{Failure, FailureKind, MigrationOutcome, Status};

/// How long a batch that is running when the shutdown comes may take to
/// finish and commit before it is interrupted (and rolled back).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Where a run's store lives: the concrete store for atomic work, and the
/// same store as a trait object for contexts and bookkeeping.
pub(crate) struct Stores<St> {
    pub(crate) concrete: St,
    pub(crate) shared: Arc<dyn MigrationStore>,
}

/// One pending migration to execute, with everything it needs.
pub(crate) struct Job<'a, S, St> {
    pub(crate) row: Migration,
    pub(crate) handler: &'a Handler<S, St>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) state: &'a Arc<S>,
    pub(crate) stores: &'a Stores<St>,
    pub(crate) guard: &'a Arc<LockGuard>,
    pub(crate) events: &'a Events,
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) position: usize,
    pub(crate) count: usize,
}

/// How a handler's task ended.
enum Ended {
    Returned(Result<(), Halt>),
    Panicked(String),
    /// Aborted: by the timeout or the shutdown (async plain handlers), or
    /// because the runtime is shutting down.
    Aborted,
}

impl Ended {
    fn from_join(joined: Result<Result<(), Halt>, JoinError>) -> Self {
        match joined {
            Ok(result) => Self::Returned(result),
            Err(err) if err.is_panic() => Self::Panicked(panic_message(err.into_panic())),
            Err(_) => Self::Aborted,
        }
    }
}

/// What stopped a handler early, if anything.
#[derive(Debug, Clone, Copy, Default)]
struct Interruptions {
    timed_out: Option<Duration>,
    shut_down: bool,
}

impl<S, St> Job<'_, S, St>
where
    S: Send + Sync + 'static,
    St: MigrationStore + Clone,
{
    /// Runs the handler and records its outcome. `Err` only when the store
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
        let attempts_before = self.row.attempts;
        let kind = self.handler.kind();
        tracing::info!(
            attempt = attempts_before.saturating_add(1),
            checkpoint = self.row.checkpoint.as_deref(),
            kind = %kind,
            "migration started"
        );
        self.events.emit(|| RunEvent::Started {
            id,
            name: Arc::clone(&name),
            position: self.position,
            count: self.count,
            resuming: self.row.checkpoint.is_some(),
        });

        let cancel = CancellationToken::new();
        let progress = progress_fn(self.events.clone(), id, Arc::clone(&name), span.clone());
        let ctx = new_context(
            Arc::clone(self.state),
            self.row,
            Arc::clone(&self.stores.shared),
            Some(progress),
            cancel.clone(),
        );
        let started = Instant::now();
        let task = spawn(
            self.handler,
            ctx,
            self.stores,
            self.shutdown.clone(),
            Arc::clone(self.guard),
            span,
        );
        let (ended, interrupted) = supervise(
            task,
            kind.is_batched(),
            &self.handler.body,
            &cancel,
            self.timeout,
            self.shutdown,
        )
        .await;

        let status = match ended {
            Ended::Returned(Ok(())) => {
                if interrupted.timed_out.is_some() {
                    tracing::warn!(
                        "the handler finished its work after the timeout; recording it as executed so it does not run twice"
                    );
                }
                if !kind.is_atomic() {
                    // An atomic handler's store recorded it in its transaction.
                    if let Err(err) = self.stores.shared.record_success(id).await {
                        tracing::error!(error = %err, "the migration's work is done but recording its success failed; it will run again");
                        return Err(unrecorded(err, "the success", id, &name));
                    }
                }
                Status::Executed
            }
            Ended::Returned(Err(Halt::Superseded(message))) => {
                tracing::info!(%message, "another run recorded this migration first; this run's changes were rolled back");
                Status::AlreadyDone
            }
            Ended::Returned(Err(Halt::Cancelled)) if interrupted.timed_out.is_none() => {
                Status::Stopped
            }
            Ended::Aborted if interrupted.timed_out.is_none() => Status::Stopped,
            ended => {
                let failure = failure(ended, interrupted);
                if let Err(err) = self
                    .stores
                    .shared
                    .record_failure(id, failure.message())
                    .await
                {
                    // The caller gets the store error; the failure itself must not vanish.
                    tracing::error!(failure = %failure.message(), error = %err, "the migration failed and recording the failure failed too");
                    return Err(unrecorded(err, "the failure", id, &name));
                }
                Status::Failed(failure)
            }
        };
        let duration = started.elapsed();
        let attempts = match &status {
            Status::Executed | Status::Failed(_) => attempts_before.saturating_add(1),
            _ => attempts_before,
        };
        match &status {
            Status::Failed(failure) => {
                tracing::error!(duration = ?duration, kind = failure.kind().as_str(), error = %failure.message(), "migration failed");
                self.events.emit(|| RunEvent::Failed {
                    id,
                    name: Arc::clone(&name),
                    duration,
                    kind: failure.kind(),
                    error: failure.message().to_owned(),
                });
            }
            Status::AlreadyDone => self.events.emit(|| RunEvent::AlreadyDone {
                id,
                name: Arc::clone(&name),
            }),
            Status::Stopped => {
                tracing::info!(duration = ?duration, "migration stopped by the shutdown; the next run resumes it");
                self.events.emit(|| RunEvent::Stopped {
                    id,
                    name: Arc::clone(&name),
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

/// The failure to record for a handler that did not succeed.
fn failure(ended: Ended, interrupted: Interruptions) -> Failure {
    match (ended, interrupted.timed_out) {
        (Ended::Panicked(message), _) => {
            Failure::new(FailureKind::Panic, HandlerPanicked { message }.into())
        }
        (Ended::Returned(Err(halt)), Some(limit)) => {
            let source = match halt {
                Halt::Error(error) => Some(error),
                _ => None,
            };
            Failure::new(
                FailureKind::Timeout,
                HandlerTimedOut { limit, source }.into(),
            )
        }
        (Ended::Aborted, Some(limit)) => Failure::new(
            FailureKind::Timeout,
            HandlerTimedOut {
                limit,
                source: None,
            }
            .into(),
        ),
        (Ended::Returned(Err(Halt::Error(error))), None) => Failure::new(FailureKind::Error, error),
        // Handled by the caller: success, superseded, stopped.
        (other, _) => Failure::new(
            FailureKind::Error,
            format!("unexpected end of the handler: {}", describe(&other)).into(),
        ),
    }
}

fn describe(ended: &Ended) -> &'static str {
    match ended {
        Ended::Returned(Ok(())) => "success",
        Ended::Returned(Err(Halt::Superseded(_))) => "superseded",
        Ended::Returned(Err(Halt::Cancelled)) => "cancelled",
        Ended::Returned(Err(Halt::Error(_))) => "error",
        Ended::Panicked(_) => "panic",
        Ended::Aborted => "aborted",
    }
}

/// Spawns the handler on a task of its own (or a blocking thread). The task
/// owns a share of the lock guard: the lock cannot be released while the
/// handler still runs, whatever happens to the run.
fn spawn<S, St>(
    handler: &Handler<S, St>,
    mut ctx: MigrationContext<S>,
    stores: &Stores<St>,
    shutdown: CancellationToken,
    hold: Arc<LockGuard>,
    span: Span,
) -> JoinHandle<Result<(), Halt>>
where
    S: Send + Sync + 'static,
{
    match &handler.body {
        Body::Async(handler) => {
            let handler = Arc::clone(handler);
            tokio::spawn(
                async move {
                    let _hold = hold;
                    handler.run(ctx).await.map_err(Halt::from)
                }
                .instrument(span),
            )
        }
        Body::Blocking(handler) => {
            let handler = Arc::clone(handler);
            tokio::task::spawn_blocking(move || {
                let _hold = hold;
                let _entered = span.enter();
                handler.run(ctx).map_err(Halt::from)
            })
        }
        Body::Resumable(batch) => {
            let batch = Arc::clone(batch);
            tokio::spawn(
                async move {
                    let _hold = hold;
                    let state = ctx.state_arc();
                    let from = ctx.checkpoint().map(str::to_owned);
                    let ctx_ref = &mut ctx;
                    drive_resumable(ctx_ref, from, &shutdown, |from| {
                        batch(Arc::clone(&state), from)
                    })
                    .await
                }
                .instrument(span),
            )
        }
        Body::ResumableBlocking(batch) => {
            let batch = Arc::clone(batch);
            tokio::spawn(
                async move {
                    let _hold = hold;
                    let state = ctx.state_arc();
                    let from = ctx.checkpoint().map(str::to_owned);
                    let ctx_ref = &mut ctx;
                    drive_resumable(ctx_ref, from, &shutdown, |from| {
                        let (batch, state) = (Arc::clone(&batch), Arc::clone(&state));
                        Box::pin(async move {
                            tokio::task::spawn_blocking(move || batch(&state, from.as_deref()))
                                .await
                                .unwrap_or_else(|join| Err(rethrow(join)))
                        })
                    })
                    .await
                }
                .instrument(span),
            )
        }
        Body::Atomic(run) | Body::Batched(run) => {
            let work = run(&stores.concrete, ctx, shutdown);
            tokio::spawn(
                async move {
                    let _hold = hold;
                    work.await
                }
                .instrument(span),
            )
        }
    }
}

/// A panic on a blocking thread goes on unwinding on the task that waited
/// for it, so the runner reports it as the handler's panic.
fn rethrow(join: JoinError) -> BoxError {
    match join.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(join) => join.into(),
    }
}

/// Cancels and aborts the handler's task if the run is dropped half-way
/// (a `select!` on a shutdown signal), so an async handler never outlives
/// the run. Code on a blocking thread cannot be aborted; it keeps its share
/// of the lock guard, so the lock stays held until it returns.
struct Supervised<T> {
    handle: JoinHandle<T>,
    cancel: CancellationToken,
}

impl<T> Drop for Supervised<T> {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            self.cancel.cancel();
            self.handle.abort();
        }
    }
}

/// Waits for the handler's task, applying its timeout and the shutdown.
///
/// - Timeout: the context's cancellation fires. A plain async handler is
///   aborted; every other kind is waited for (blocking code cannot be
///   interrupted, and atomic stores stop their statements when cancelled),
///   keeping the lock, because releasing it while the handler may still
///   commit would let another instance run the same migration.
/// - Shutdown: batched kinds finish the batch in progress (up to
///   [`SHUTDOWN_GRACE`], then it is cancelled) and stop; other kinds are
///   cancelled at once, and a plain async one is aborted after the grace.
async fn supervise<S, St>(
    handle: JoinHandle<Result<(), Halt>>,
    batched: bool,
    body: &Body<S, St>,
    cancel: &CancellationToken,
    timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> (Ended, Interruptions) {
    let abortable = matches!(body, Body::Async(_));
    let mut task = Supervised {
        handle,
        cancel: cancel.clone(),
    };
    let mut interrupted = Interruptions::default();
    let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit);
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match deadline {
                Some(at) if interrupted.timed_out.is_none() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let grace = async {
            match grace_ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let shutting = async {
            if interrupted.shut_down {
                std::future::pending().await
            } else {
                shutdown.cancelled().await
            }
        };
        tokio::select! {
            joined = &mut task.handle => return (Ended::from_join(joined), interrupted),
            () = timer => {
                let limit = timeout.unwrap_or_default();
                interrupted.timed_out = Some(limit);
                cancel.cancel();
                if abortable {
                    tracing::warn!(limit = ?limit, "timed out: aborting the handler");
                    task.handle.abort();
                } else {
                    tracing::warn!(
                        limit = ?limit,
                        "timed out: cancellation requested; waiting for the handler to stop (the lock stays held)"
                    );
                }
            }
            () = shutting => {
                interrupted.shut_down = true;
                if batched {
                    tracing::info!("shutting down: finishing the batch in progress");
                } else {
                    tracing::info!("shutting down: cancelling the migration");
                    cancel.cancel();
                }
                grace_ends = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            () = grace => {
                grace_ends = None;
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutting down: the handler did not stop in time; cancelling it");
                cancel.cancel();
                if abortable {
                    task.handle.abort();
                }
            }
        }
    }
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
