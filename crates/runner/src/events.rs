//! What an observer hears during a run, and the progress arithmetic
//! (rate, ETA) behind it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tracing::Span;
use waymark_core::{MigrationId, ProgressFn};

use crate::report::{FailureKind, SkipReason};

/// One thing that happened during a run, sent to the
/// [observer](crate::RunnerBuilder::observer) as it happens.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunEvent {
    /// Another instance holds the lock; sent after a second of waiting and
    /// every 30 seconds after that.
    WaitingForLock {
        /// How long this run has waited so far.
        waited: Duration,
        /// How long it will wait in all.
        limit: Duration,
    },
    /// The run holds a lock and is about to execute `count` migrations.
    LockAcquired {
        /// How long it waited for the lock.
        waited: Duration,
        /// How many migrations are pending under the lock.
        count: usize,
    },
    /// A migration's handler is starting.
    Started {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
        /// Its position in this run, from 1.
        position: usize,
        /// How many pending migrations this run handles.
        count: usize,
        /// Whether it resumes from a saved checkpoint.
        resuming: bool,
    },
    /// A handler reported progress.
    Progress {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
        /// How far it is.
        progress: Progress,
    },
    /// A migration completed and is recorded as executed.
    Succeeded {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
        /// How long it took.
        duration: Duration,
    },
    /// A migration failed; the failure is recorded and it stays pending.
    Failed {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
        /// How long it ran.
        duration: Duration,
        /// What kind of failure.
        kind: FailureKind,
        /// The error chain, as recorded in the migration's `last_error`.
        error: String,
    },
    /// A pending migration was not run.
    Skipped {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
        /// Why.
        reason: SkipReason,
    },
    /// A migration pending when the run started was executed by another
    /// instance: while this one waited for the lock, or by committing first
    /// (this run's changes were rolled back).
    AlreadyDone {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
    },
    /// A pending migration this release does not declare was left pending.
    Undeclared {
        /// The migration.
        id: MigrationId,
        /// Its tracked name.
        name: Arc<str>,
    },
    /// The application's shutdown stopped a migration; it resumes on the
    /// next run.
    Stopped {
        /// The migration.
        id: MigrationId,
        /// Its name.
        name: Arc<str>,
    },
}

/// How far a running migration is, as its handler reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Units of work done in this run.
    pub done: u64,
    /// Units of work in all, when the handler knows.
    pub total: Option<u64>,
    /// Time since the migration started in this run.
    pub elapsed: Duration,
    /// Average units per second since the start of this run.
    pub rate: f64,
    /// Estimated time left at that rate, when a total is known.
    pub eta: Option<Duration>,
}

impl Progress {
    /// The figures for `done` of `total` units after `elapsed`.
    pub fn measure(done: u64, total: Option<u64>, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        };
        let eta = total.and_then(|total| {
            if done >= total {
                Some(Duration::ZERO)
            } else if rate > 0.0 {
                Duration::try_from_secs_f64((total - done) as f64 / rate).ok()
            } else {
                None
            }
        });
        Self {
            done,
            total,
            elapsed,
            rate,
            eta,
        }
    }

    /// The share done, from 0.0 to 1.0, when a total is known.
    pub fn fraction(&self) -> Option<f64> {
        self.total.map(|total| {
            if total == 0 {
                1.0
            } else {
                (self.done as f64 / total as f64).min(1.0)
            }
        })
    }
}

/// The observer callback.
pub(crate) type Observer = Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// Sends events to the observers: the application's, the runner's own
/// (the background status), and those subscribed while the runner lives
/// ([`Runner::subscribe`](crate::Runner::subscribe)), shared by every clone.
#[derive(Clone, Default)]
pub(crate) struct Events {
    fixed: Vec<Observer>,
    subscribed: Arc<Subscribers>,
}

/// The observers subscribed to a runner, by subscription number.
#[derive(Default)]
struct Subscribers {
    next: AtomicU64,
    list: RwLock<Vec<(u64, Observer)>>,
}

impl Events {
    pub(crate) fn new(observer: Observer) -> Self {
        Self {
            fixed: vec![observer],
            subscribed: Arc::default(),
        }
    }

    /// These events, also heard by `tap`.
    pub(crate) fn tapped(&self, tap: Observer) -> Self {
        let mut fixed = self.fixed.clone();
        fixed.push(tap);
        Self {
            fixed,
            subscribed: Arc::clone(&self.subscribed),
        }
    }

    /// Adds `observer` until the returned subscription is dropped.
    pub(crate) fn subscribe(&self, observer: Observer) -> Subscription {
        let id = self.subscribed.next.fetch_add(1, Ordering::Relaxed);
        self.subscribed
            .list
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, observer));
        Subscription {
            id,
            subscribers: Arc::downgrade(&self.subscribed),
        }
    }

    /// Builds the event only when someone listens. A panicking observer
    /// (a progress bar's bug) must not fail a migration or the run.
    pub(crate) fn emit(&self, event: impl FnOnce() -> RunEvent) {
        // Copied out, so that an observer may subscribe or drop a
        // subscription without deadlocking on the list.
        let subscribed: Vec<Observer> = {
            let list = self
                .subscribed
                .list
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            list.iter()
                .map(|(_, observer)| Arc::clone(observer))
                .collect()
        };
        if self.fixed.is_empty() && subscribed.is_empty() {
            return;
        }
        let event = event();
        for observer in self.fixed.iter().chain(&subscribed) {
            if catch_unwind(AssertUnwindSafe(|| observer(&event))).is_err() {
                tracing::warn!(?event, "a run observer panicked; the event is dropped");
            }
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subscribed = self.subscribed.list.read().map_or(0, |list| list.len());
        write!(
            f,
            "Events({} observers, {subscribed} subscribed)",
            self.fixed.len()
        )
    }
}

/// An observer added to a running application's runner by
/// [`Runner::subscribe`](crate::Runner::subscribe): it hears every event of
/// every run of the runner and its clones until this is dropped.
#[must_use = "the observer is removed when the subscription is dropped"]
pub struct Subscription {
    id: u64,
    subscribers: Weak<Subscribers>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(subscribers) = self.subscribers.upgrade() {
            subscribers
                .list
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(id, _)| *id != self.id);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

/// Progress lines go to the log at info level at most this often; every
/// report goes out at debug level and to the observer.
const INFO_EVERY: Duration = Duration::from_secs(5);

/// The progress callback handed to one migration's context.
pub(crate) fn progress_fn(
    events: Events,
    id: MigrationId,
    name: Arc<str>,
    span: Span,
) -> ProgressFn {
    let started = Instant::now();
    let last_info: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |done, total| {
        let progress = Progress::measure(done, total, started.elapsed());
        let due = {
            let mut last = last_info.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= INFO_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::info!(parent: &span, done, total, rate = progress.rate, eta = ?progress.eta, "migration progress");
        } else {
            tracing::debug!(parent: &span, done, total, rate = progress.rate, "migration progress");
        }
        events.emit(|| RunEvent::Progress {
            id,
            name: Arc::clone(&name),
            progress,
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_average_speed() {
        let p = Progress::measure(250, Some(1000), Duration::from_secs(5));
        assert_eq!(p.rate, 50.0);
        assert_eq!(p.eta, Some(Duration::from_secs(15)));
        assert_eq!(p.fraction(), Some(0.25));
    }

    #[test]
    fn unknown_or_unreachable_totals_give_no_eta() {
        assert_eq!(
            Progress::measure(10, None, Duration::from_secs(1)).eta,
            None
        );
        // Nothing done yet: no rate, so no estimate rather than infinity.
        let idle = Progress::measure(0, Some(10), Duration::from_secs(1));
        assert_eq!((idle.rate, idle.eta), (0.0, None));
        // At the very start there is no elapsed time to divide by.
        assert_eq!(Progress::measure(5, Some(10), Duration::ZERO).rate, 0.0);
    }

    #[test]
    fn done_past_the_total_is_finished() {
        let p = Progress::measure(12, Some(10), Duration::from_secs(1));
        assert_eq!(p.eta, Some(Duration::ZERO));
        assert_eq!(p.fraction(), Some(1.0));
        assert_eq!(
            Progress::measure(0, Some(0), Duration::ZERO).fraction(),
            Some(1.0)
        );
    }

    #[test]
    fn a_panicking_observer_is_contained() {
        let events = Events::new(Arc::new(|_: &RunEvent| panic!("progress bar bug")));
        events.emit(|| RunEvent::WaitingForLock {
            waited: Duration::ZERO,
            limit: Duration::ZERO,
        });
    }
}
