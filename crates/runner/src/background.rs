//! Background migrations: run on a task of their own after the required
//! ones, under the background lock, while the application serves; watched
//! through a [`Background`] handle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{Error, MigrationId, MigrationStore};

use crate::engine::{Inner, Queue};
use crate::events::{Progress, RunEvent};
use crate::lock::{self, Waited};
use crate::plan::Plan;
use crate::report::{RunReport, Status};

/// How long one wait for the background lock lasts before the task looks
/// again: a replica whose holder died takes over within this much.
const WAIT_ROUND: Duration = Duration::from_secs(30);

/// Where the background migrations stand, for readiness and health
/// endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum BackgroundStatus {
    /// Taking the background lock: nothing has run yet.
    Starting,
    /// Another instance is running them; this one serves and takes over if
    /// that instance stops before it finishes.
    WaitingForOtherInstance,
    /// Running one of them.
    Running {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: String,
        /// Its position among the background migrations of this run, from 1.
        position: usize,
        /// How many this run executes.
        count: usize,
        /// How far it is, once its handler reported progress.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "progress_fields"
        )]
        progress: Option<Progress>,
    },
    /// Every background migration is executed (or there was none).
    Finished,
    /// One of them failed; it stays pending with its error recorded, and the
    /// next start tries again.
    Failed {
        /// The migration.
        id: MigrationId,
        /// Its error chain.
        error: String,
    },
    /// The application's shutdown stopped them; the next start resumes
    /// where they stopped.
    Stopped,
    /// The store failed (the database is down, say); the next start tries again.
    Error {
        /// What went wrong.
        error: String,
    },
}

fn progress_fields<S: serde::Serializer>(
    progress: &Option<Progress>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let Some(p) = progress else {
        return s.serialize_none();
    };
    let mut out = s.serialize_struct("Progress", 5)?;
    out.serialize_field("done", &p.done)?;
    out.serialize_field("total", &p.total)?;
    out.serialize_field("elapsed_seconds", &p.elapsed.as_secs_f64())?;
    out.serialize_field("rate", &p.rate)?;
    out.serialize_field("eta_seconds", &p.eta.map(|eta| eta.as_secs_f64()))?;
    out.end()
}

impl BackgroundStatus {
    /// Whether nothing more will happen in this process: finished, failed,
    /// stopped or in error.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Self::Starting | Self::WaitingForOtherInstance | Self::Running { .. }
        )
    }
}

/// The background migrations of one run. Cloning it is cheap; dropping it
/// does not stop them (the runner's shutdown token does).
#[derive(Debug, Clone)]
pub struct Background {
    status: watch::Receiver<BackgroundStatus>,
    report: Arc<Mutex<Option<Result<RunReport, Error>>>>,
}

impl Background {
    /// A handle with nothing to run.
    pub(crate) fn finished() -> Self {
        let (_, status) = watch::channel(BackgroundStatus::Finished);
        Self {
            status,
            report: Arc::default(),
        }
    }

    /// Where they stand now.
    pub fn status(&self) -> BackgroundStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`status`](Self::status).
    pub fn subscribe(&self) -> watch::Receiver<BackgroundStatus> {
        self.status.clone()
    }

    /// Waits until nothing more happens in this process and returns the
    /// final status.
    pub async fn finished_status(&self) -> BackgroundStatus {
        let mut status = self.status.clone();
        let result = status.wait_for(BackgroundStatus::is_final).await;
        match result {
            Ok(status) => status.clone(),
            // The task is gone (the runtime is shutting down).
            Err(_) => self.status(),
        }
    }

    /// Waits for the end and takes the background phase's report (once;
    /// `None` afterwards, and when there was nothing to run).
    pub(crate) async fn report(&self) -> Option<Result<RunReport, Error>> {
        self.finished_status().await;
        self.report
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

/// Starts the background phase on its own task.
/// `before` is the plan made when the run started, for reporting what
/// another instance ran meanwhile.
pub(crate) fn start<S, St>(inner: Arc<Inner<S, St>>, state: Arc<S>, before: Plan) -> Background
where
    S: Send + Sync + 'static,
    St: MigrationStore + Clone,
{
    let (tx, rx) = watch::channel(BackgroundStatus::Starting);
    let report: Arc<Mutex<Option<Result<RunReport, Error>>>> = Arc::default();
    let slot = Arc::clone(&report);
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        let result = run(&inner, &state, &before, &tx).await;
        let last = match &result {
            Ok(report) => final_status(report),
            Err(err) => BackgroundStatus::Error {
                error: waymark_core::error_chain(err),
            },
        };
        if let Err(err) = &result {
            tracing::error!(error = %err, "background migrations stopped on an error");
        }
        *slot.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(result);
        tx.send_replace(last);
    });
    Background { status: rx, report }
}

fn final_status(report: &RunReport) -> BackgroundStatus {
    for outcome in report.outcomes() {
        match &outcome.status {
            Status::Failed(failure) => {
                return BackgroundStatus::Failed {
                    id: outcome.id,
                    error: failure.message().to_owned(),
                };
            }
            Status::Stopped => return BackgroundStatus::Stopped,
            _ => {}
        }
    }
    BackgroundStatus::Finished
}

async fn run<S, St>(
    inner: &Inner<S, St>,
    state: &Arc<S>,
    before: &Plan,
    status: &Arc<watch::Sender<BackgroundStatus>>,
) -> Result<RunReport, Error>
where
    S: Send + Sync + 'static,
    St: MigrationStore + Clone,
{
    let started = std::time::Instant::now();
    let store = &*inner.stores.shared;
    let settings = &inner.settings;
    let tap = Arc::clone(status);
    let events = settings.events.tapped(Arc::new(move |event: &RunEvent| {
        track(&tap, event);
    }));
    let mut waited = Duration::ZERO;
    // One look first, so that the status says "waiting" only when another
    // instance really holds the lock.
    let first = LockRequest::new(LockScope::Background, Duration::ZERO);
    let mut held_now = match store.lock(&first).await {
        Ok(guard) => Some(guard),
        Err(Error::LockTimeout { .. }) => {
            status.send_replace(BackgroundStatus::WaitingForOtherInstance);
            None
        }
        Err(err) => return Err(err),
    };
    loop {
        let guard = match held_now.take() {
            Some(guard) => Some(guard),
            None => {
                let round = lock::acquire_or_wait(
                    store,
                    LockScope::Background,
                    WAIT_ROUND,
                    &events,
                    &settings.shutdown,
                )
                .await;
                match round {
                    Ok(Waited::ShutDown) => return Ok(stopped(before, started)),
                    Ok(Waited::Done(guard, took)) => {
                        waited += took;
                        guard
                    }
                    // Another instance is still at it; keep serving and look again.
                    Err(Error::LockTimeout { waited: took }) => {
                        waited += took;
                        status.send_replace(BackgroundStatus::WaitingForOtherInstance);
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        let rows = store.list().await?;
        let now = Plan::compute(&rows, &inner.declared, settings)?;
        let done = inner.done_by_another(Queue::Background, before, &now, &rows);
        let Some(guard) = guard else {
            if now.runs(waymark_core::Mode::Background) {
                // The other instance stopped short: take over.
                continue;
            }
            tracing::info!("another instance ran the background migrations");
            return Ok(RunReport::new(done, false, Some(waited), started.elapsed()));
        };
        let mut outcomes = done;
        outcomes.extend(
            inner
                .execute(&now, &rows, Queue::Background, state, guard, &events)
                .await?,
        );
        return Ok(RunReport::new(
            outcomes,
            false,
            Some(waited),
            started.elapsed(),
        ));
    }
}

/// The report of a background phase stopped before it took the lock.
fn stopped(plan: &Plan, started: std::time::Instant) -> RunReport {
    let outcomes = plan
        .steps()
        .iter()
        .filter(|step| Queue::Background.contains(step))
        .map(|step| {
            crate::report::MigrationOutcome::new(
                step.id,
                step.name.clone(),
                Status::Stopped,
                Duration::ZERO,
                step.attempts,
            )
        })
        .collect();
    RunReport::new(outcomes, false, None, started.elapsed())
}

/// Follows the running migration in the status.
fn track(status: &watch::Sender<BackgroundStatus>, event: &RunEvent) {
    match event {
        RunEvent::Started {
            id,
            name,
            position,
            count,
            ..
        } => {
            status.send_replace(BackgroundStatus::Running {
                id: *id,
                name: name.to_string(),
                position: *position,
                count: *count,
                progress: None,
            });
        }
        RunEvent::Progress {
            id: running,
            progress: now,
            ..
        } => {
            status.send_if_modified(|current| match current {
                BackgroundStatus::Running { id, progress, .. } if id == running => {
                    *progress = Some(*now);
                    true
                }
                _ => false,
            });
        }
        _ => {}
    }
}
