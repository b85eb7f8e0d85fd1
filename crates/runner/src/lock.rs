//! Taking the store's run lock, saying so while another instance holds it.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use waymark_core::{Error, LockGuard, MigrationStore};

use crate::events::{Events, RunEvent};

/// The first "waiting" line comes after this long: an uncontended lock is
/// taken well before, so a quiet start-up stays quiet.
const FIRST_NOTICE: Duration = Duration::from_secs(1);
/// Then one line this often, so a long wait is visible but not noisy.
const NOTICE_EVERY: Duration = Duration::from_secs(30);

/// Takes the lock with one call to the store, waiting up to `wait`; returns
/// the guard and how long it took.
pub(crate) async fn acquire(
    store: &dyn MigrationStore,
    wait: Duration,
    events: &Events,
) -> Result<(LockGuard, Duration), Error> {
    announce_waiting(store.lock(wait), wait, events).await
}

/// Takes the lock if it is free, else waits up to `wait` for the instance
/// holding it to finish ([`MigrationStore::lock_or_wait`]): `None` then.
pub(crate) async fn acquire_or_wait(
    store: &dyn MigrationStore,
    wait: Duration,
    events: &Events,
) -> Result<(Option<LockGuard>, Duration), Error> {
    announce_waiting(store.lock_or_wait(wait), wait, events).await
}

/// Awaits `lock`, logging (and telling the observer) while it waits.
async fn announce_waiting<T>(
    lock: impl Future<Output = Result<T, Error>>,
    wait: Duration,
    events: &Events,
) -> Result<(T, Duration), Error> {
    let started = Instant::now();
    tokio::pin!(lock);
    let mut notice_at = started + FIRST_NOTICE;
    loop {
        tokio::select! {
            biased;
            result = &mut lock => {
                let waited = started.elapsed();
                return match result {
                    Ok(held) => Ok((held, waited)),
                    Err(err) => {
                        tracing::warn!(waited = ?waited, error = %err, "could not take the migration lock");
                        Err(err)
                    }
                };
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
