//! Building a [`Runner`]: the migrations, their handlers and the run settings,
//! validated before any database is touched.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use waymark_core::{Error, Handler, MigrationDef, MigrationStore, check_unique_ids};

use crate::events::{Events, RunEvent};
use crate::runner::{Declared, Runner};

/// How long [`Runner::run`] waits for another instance's lock by default:
/// long enough for a typical backfill on another replica to finish.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

/// What a run does after a migration fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Stop at the first failure; later migrations are reported as not run
    /// and stay pending (they may depend on the one that failed). The default.
    #[default]
    Stop,
    /// Run every other pending migration anyway.
    Continue,
}

/// What a run does with a pending migration that has no handler (tracked in
/// the store, but not declared to this runner: another version of the
/// application, or an operator, registered it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingHandler {
    /// Report it as a failure, which the [`FailurePolicy`] then applies to.
    /// The default: a migration never goes missing silently.
    #[default]
    Error,
    /// Leave it pending, log a warning and report it as skipped.
    Skip,
}

/// Settings shared by every run of one runner.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) lock_wait: Duration,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) missing_handler: MissingHandler,
    pub(crate) timeout: Option<Duration>,
}

/// Collects migrations and settings for a [`Runner`]; made by
/// [`Runner::builder`]. Nothing is checked until [`build`](Self::build).
pub struct RunnerBuilder<S> {
    store: Arc<dyn MigrationStore>,
    declared: Vec<Declared<S>>,
    settings: Settings,
    events: Events,
}

impl<S: Send + Sync + 'static> RunnerBuilder<S> {
    pub(crate) fn new(store: Arc<dyn MigrationStore>) -> Self {
        Self {
            store,
            declared: Vec::new(),
            settings: Settings {
                lock_wait: DEFAULT_LOCK_WAIT,
                failure_policy: FailurePolicy::default(),
                missing_handler: MissingHandler::default(),
                timeout: None,
            },
            events: Events::default(),
        }
    }

    /// Declares a migration and the handler that performs it. Declaration
    /// order does not matter: pending migrations always run by ascending id.
    pub fn migration(mut self, def: MigrationDef, handler: Handler<S>) -> Self {
        self.declared.push(Declared {
            def,
            handler,
            timeout: None,
        });
        self
    }

    /// Declares a migration with its own timeout, overriding
    /// [`timeout`](Self::timeout).
    pub fn migration_with_timeout(
        mut self,
        def: MigrationDef,
        handler: Handler<S>,
        timeout: Duration,
    ) -> Self {
        self.declared.push(Declared {
            def,
            handler,
            timeout: Some(timeout),
        });
        self
    }

    /// Declares several migrations at once.
    pub fn migrations(
        mut self,
        list: impl IntoIterator<Item = (MigrationDef, Handler<S>)>,
    ) -> Self {
        for (def, handler) in list {
            self = self.migration(def, handler);
        }
        self
    }

    /// How long a run waits for the lock held by another instance before
    /// failing with [`Error::LockTimeout`]; [`DEFAULT_LOCK_WAIT`] by default.
    /// Zero tries once. An info line is logged (and
    /// [`RunEvent::WaitingForLock`] sent) while waiting.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.settings.lock_wait = wait;
        self
    }

    /// What to do after a migration fails; [`FailurePolicy::Stop`] by default.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.settings.failure_policy = policy;
        self
    }

    /// What to do with a pending migration that has no handler;
    /// [`MissingHandler::Error`] by default.
    pub fn on_missing_handler(mut self, policy: MissingHandler) -> Self {
        self.settings.missing_handler = policy;
        self
    }

    /// The time limit of each migration that has none of its own; none by
    /// default. See [`Runner`] for what happens when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// Receives every [`RunEvent`] (lock waits, start, progress with rate
    /// and ETA, success, failure, skip), for progress bars. It is called on
    /// the runner's task or on a handler's thread and should return quickly;
    /// a panic in it is logged and ignored.
    pub fn observer(mut self, observer: impl Fn(&RunEvent) + Send + Sync + 'static) -> Self {
        self.events = Events::new(Arc::new(observer));
        self
    }

    /// Validates the declarations and builds the runner, without touching
    /// the store.
    ///
    /// # Errors
    /// [`Error::Conflict`] when an id is declared twice (with one name or
    /// two); [`Error::Invalid`] for a zero timeout.
    pub fn build(self) -> Result<Runner<S>, Error> {
        check_timeout(self.settings.timeout)?;
        for declared in &self.declared {
            check_timeout(declared.timeout)?;
        }
        let defs: Vec<MigrationDef> = self.declared.iter().map(|d| d.def.clone()).collect();
        // Core's check names both names when they differ; the same name
        // twice is also an error here, since each id has exactly one handler.
        check_unique_ids(&defs)?;
        let mut seen = HashSet::with_capacity(defs.len());
        for def in &defs {
            if !seen.insert(def.id()) {
                return Err(Error::Conflict {
                    id: def.id().get(),
                    message: format!(
                        "{:?} declared twice; each migration has exactly one handler",
                        def.name()
                    ),
                });
            }
        }
        Ok(Runner::new(
            self.store,
            self.declared,
            self.settings,
            self.events,
        ))
    }
}

fn check_timeout(timeout: Option<Duration>) -> Result<(), Error> {
    match timeout {
        Some(limit) if limit.is_zero() => Err(Error::invalid(
            "timeout",
            "must be greater than zero (leave it unset for no limit)",
        )),
        _ => Ok(()),
    }
}

impl<S> fmt::Debug for RunnerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerBuilder")
            .field("migrations", &self.declared.len())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use waymark_core::MemoryStore;

    use super::*;
    use crate::Runner;

    fn def(id: i64, name: &str) -> MigrationDef {
        MigrationDef::new(id, name, "").unwrap()
    }

    fn noop() -> Handler<()> {
        Handler::blocking_fn(|_| Ok(()))
    }

    #[test]
    fn an_id_with_two_names_is_a_conflict() {
        let err = Runner::builder(MemoryStore::new())
            .migration(def(1, "a"), noop())
            .migration(def(1, "b"), noop())
            .build()
            .unwrap_err();
        match err {
            Error::Conflict { id: 1, message } => {
                assert!(
                    message.contains("\"a\"") && message.contains("\"b\""),
                    "{message}"
                )
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
    }

    #[test]
    fn the_same_id_twice_with_one_name_is_a_conflict() {
        let err = Runner::builder(MemoryStore::new())
            .migration(def(2, "same"), noop())
            .migration(def(1, "other"), noop())
            .migration(def(2, "same"), noop())
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { id: 2, ref message } if message.contains("declared twice")),
            "{err:?}"
        );
    }

    #[test]
    fn zero_timeouts_are_invalid() {
        let err = Runner::builder(MemoryStore::new())
            .migration(def(1, "a"), noop())
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "timeout",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = Runner::builder(MemoryStore::new())
            .migration_with_timeout(def(1, "a"), noop(), Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "timeout",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn defaults_and_declarations_in_any_order() {
        let runner = Runner::builder(MemoryStore::new())
            .migrations([(def(3, "c"), noop()), (def(1, "a"), noop())])
            .migration(def(2, "b"), noop())
            .build()
            .unwrap();
        let ids: Vec<i64> = runner.definitions().map(|d| d.id().get()).collect();
        assert_eq!(ids, [1, 2, 3]);
        let settings = runner.settings();
        assert_eq!(settings.lock_wait, DEFAULT_LOCK_WAIT);
        assert_eq!(settings.failure_policy, FailurePolicy::Stop);
        assert_eq!(settings.missing_handler, MissingHandler::Error);
        assert_eq!(settings.timeout, None);
    }

    #[test]
    fn an_empty_runner_is_valid() {
        assert!(Runner::<()>::builder(MemoryStore::new()).build().is_ok());
    }
}
