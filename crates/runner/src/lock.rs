//! Taking a store's lock, saying so while another instance holds it, and
//! giving up when the application shuts down.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use waymark_core::store::{LockGuard, LockRequest, LockScope};
use waymark_core::{Error, MigrationStore};

use crate::events::{Events, RunEvent};

/// The first "waiting" line comes after this long: an uncontended lock is
/// taken well before, so a quiet start-up stays quiet.
const FIRST_NOTICE: Duration = Duration::from_secs(1);
/// Then one line this often, so a long wait is visible but not noisy.
const NOTICE_EVERY: Duration = Duration::from_secs(30);

/// How a lock wait ended without the lock.
pub(crate) enum Waited<T> {
    /// What the store answered, and how long it took.
    Done(T, Duration),
    /// The application is shutting down.
    ShutDown,
}

/// Takes the `scope` lock with one call to the store, waiting up to `wait`.
pub(crate) async fn acquire(
    store: &dyn MigrationStore,
    scope: LockScope,
    wait: Duration,
    events: &Events,
    shutdown: &CancellationToken,
) -> Result<Waited<LockGuard>, Error> {
    let request = LockRequest::new(scope, wait);
    announce_waiting(store.lock(&request), wait, events, shutdown).await
}

/// Takes the lock if it is free, else waits up to `wait` for the instance
/// holding it to finish ([`MigrationStore::lock_or_wait`]): `None` then.
pub(crate) async fn acquire_or_wait(
    store: &dyn MigrationStore,
    scope: LockScope,
    wait: Duration,
    events: &Events,
    shutdown: &CancellationToken,
) -> Result<Waited<Option<LockGuard>>, Error> {
    let request = LockRequest::new(scope, wait);
    announce_waiting(store.lock_or_wait(&request), wait, events, shutdown).await
}

/// Awaits `lock`, logging (and telling the observer) while it waits.
async fn announce_waiting<T>(
    lock: impl Future<Output = Result<T, Error>>,
    wait: Duration,
    events: &Events,
    shutdown: &CancellationToken,
) -> Result<Waited<T>, Error> {
    let started = Instant::now();
    tokio::pin!(lock);
    let mut notice_at = started + FIRST_NOTICE;
    loop {
        tokio::select! {
            biased;
            result = &mut lock => {
                let waited = started.elapsed();
                return match result {
                    Ok(held) => Ok(Waited::Done(held, waited)),
                    Err(err) => {
                        tracing::warn!(waited = ?waited, error = %err, "could not take the migration lock");
                        Err(err)
                    }
                };
            }
            () = shutdown.cancelled() => {
                tracing::info!("shutting down: no longer waiting for the migration lock");
                return Ok(Waited::ShutDown);
            }
            () = sleep_until(notice_at) => {
                let waited = started.elapsed();
                tracing::info!(
                    waited = ?waited,
                    limit = ?wait,
                    "waiting for the migration lock: another instance is running migrations"
                );
                events.emit(|| RunEvent::WaitingForLock { waited, limit: wait });
                notice_at += NOTICE_EVERY;
            }
        }
    }
}
