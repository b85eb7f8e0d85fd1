//! Building a [`Runner`]: the migrations, their handlers and the run settings,
//! validated before any database is touched.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use waymark_core::store::{AtomicStore, check_unique_ids};
use waymark_core::{BatchStep, BoxError, Error, MigrationContext, MigrationDef, MigrationStore};

use crate::declare::{Declared, FailurePolicy, Settings, UndeclaredPolicy};
use crate::engine::Inner;
use crate::events::{Events, RunEvent};
use crate::execute::Stores;
use crate::handler::Handler;
use crate::runner::Runner;

/// Collects migrations and settings for a [`Runner`]; made by
/// [`Runner::builder`]. Nothing is checked until [`build`](Self::build).
pub struct RunnerBuilder<S, St> {
    store: St,
    declared: Vec<Declared<S, St>>,
    settings: Settings,
}

impl<S: Send + Sync + 'static, St: MigrationStore + Clone> Runner<S, St> {
    /// Starts building a runner on `store` (a store value, an `Arc` of one,
    /// or an `Arc<dyn MigrationStore>`).
    pub fn builder(store: St) -> RunnerBuilder<S, St> {
        RunnerBuilder {
            store,
            declared: Vec::new(),
            settings: Settings::default(),
        }
    }
}

impl<S: Send + Sync + 'static, St: MigrationStore + Clone> RunnerBuilder<S, St> {
    /// Declares a migration and the handler that performs it. Declaration
    /// order does not matter: pending migrations always run by ascending id.
    /// The definition says whether it is required before serving (the
    /// default) or runs in the [background](MigrationDef::background), and
    /// may carry its own [timeout](MigrationDef::timeout).
    pub fn migration(mut self, def: MigrationDef, handler: Handler<S, St>) -> Self {
        self.declared.push(Declared { def, handler });
        self
    }

    /// Declares several migrations at once.
    pub fn migrations(
        mut self,
        list: impl IntoIterator<Item = (MigrationDef, Handler<S, St>)>,
    ) -> Self {
        for (def, handler) in list {
            self = self.migration(def, handler);
        }
        self
    }

    /// How long a run waits for the run lock held by another instance before
    /// failing with [`Error::LockTimeout`]; [`DEFAULT_LOCK_WAIT`](crate::DEFAULT_LOCK_WAIT)
    /// by default. Zero tries once. An info line is logged (and
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

    /// What to do with a pending migration this release does not declare;
    /// [`UndeclaredPolicy::Warn`] by default, so that a rollback starts.
    pub fn on_undeclared(mut self, policy: UndeclaredPolicy) -> Self {
        self.settings.undeclared = policy;
        self
    }

    /// The time limit of each migration that has none of its own; none by
    /// default. See [`Runner`] for what happens when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// The application's shutdown signal. When it fires, batched migrations
    /// stop at the next batch boundary (the batch in progress commits),
    /// other handlers are cancelled, waits for the lock end, and the lock is
    /// released; the next start resumes exactly where they stopped.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.settings.shutdown = token;
        self
    }

    /// Receives every [`RunEvent`] (lock waits, start, progress with rate
    /// and ETA, success, failure, skip), for progress bars. It is called on
    /// the runner's task or on a handler's thread and should return quickly;
    /// a panic in it is logged and ignored.
    pub fn observer(mut self, observer: impl Fn(&RunEvent) + Send + Sync + 'static) -> Self {
        self.settings.events = Events::new(Arc::new(observer));
        self
    }

    /// Validates the declarations and builds the runner, without touching
    /// the store.
    ///
    /// # Errors
    /// [`Error::Conflict`] when an id is declared twice (with one name or
    /// two); [`Error::Invalid`] for a zero timeout.
    pub fn build(self) -> Result<Runner<S, St>, Error> {
        check_timeout(self.settings.timeout)?;
        for declared in &self.declared {
            check_timeout(declared.def.time_limit())?;
        }
        let mut declared = self.declared;
        declared.sort_by_key(|d| d.def.id());
        let defs: Vec<MigrationDef> = declared.iter().map(|d| d.def.clone()).collect();
        // Core's check names both names when they differ; the same name
        // twice is also an error here, since each id has exactly one handler.
        check_unique_ids(&defs)?;
        let mut seen = HashSet::with_capacity(defs.len());
        for def in &defs {
            if !seen.insert(def.id()) {
                return Err(Error::Conflict {
                    id: def.id(),
                    message: format!(
                        "{:?} declared twice; each migration has exactly one handler",
                        def.name()
                    ),
                });
            }
        }
        let by_id = defs.iter().enumerate().map(|(i, d)| (d.id(), i)).collect();
        let shared: Arc<dyn MigrationStore> = Arc::new(self.store.clone());
        Ok(Runner {
            inner: Arc::new(Inner {
                stores: Stores {
                    concrete: self.store,
                    shared,
                },
                fingerprint: MigrationDef::fingerprint(&defs),
                declared,
                by_id,
                defs,
                settings: self.settings,
            }),
        })
    }
}

impl<S: Send + Sync + 'static, St: AtomicStore> RunnerBuilder<S, St> {
    /// Declares a migration whose work commits in the same transaction of
    /// the runner's store as its success: [`Handler::atomic`].
    ///
    /// ```
    /// # #[cfg(any())] mod skipped {}
    /// // See the store crates for examples with their transaction types.
    /// ```
    pub fn atomic<F, E>(self, def: MigrationDef, f: F) -> Self
    where
        F: for<'t> Fn(St::Tx<'t>, &'t MigrationContext<S>) -> St::Output<'t, Result<(), E>>
            + Send
            + Sync
            + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.migration(def, Handler::atomic(f))
    }

    /// Declares a migration in batches, each committed with its checkpoint
    /// in one transaction of the runner's store: [`Handler::batched`].
    pub fn batched<F, E>(self, def: MigrationDef, f: F) -> Self
    where
        F: for<'t> Fn(
                St::Tx<'t>,
                Option<&'t str>,
                &'t MigrationContext<S>,
            ) -> St::Output<'t, Result<BatchStep, E>>
            + Send
            + Sync
            + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.migration(def, Handler::batched(f))
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

impl<S, St> fmt::Debug for RunnerBuilder<S, St> {
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

    fn noop() -> Handler<(), MemoryStore> {
        Handler::blocking_fn(|_| Ok::<(), BoxError>(()))
    }

    fn invalid_timeout(result: Result<Runner<(), MemoryStore>, Error>) -> bool {
        matches!(
            result,
            Err(Error::Invalid {
                field: "timeout",
                ..
            })
        )
    }

    #[test]
    fn an_id_with_two_names_is_a_conflict() {
        let err = Runner::builder(MemoryStore::new())
            .migration(def(1, "a"), noop())
            .migration(def(1, "b"), noop())
            .build()
            .unwrap_err();
        match err {
            Error::Conflict { id, message } => {
                assert_eq!(id.get(), 1);
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
            matches!(&err, Error::Conflict { id, message } if id.get() == 2 && message.contains("declared twice")),
            "{err:?}"
        );
    }

    #[test]
    fn zero_timeouts_are_invalid() {
        assert!(invalid_timeout(
            Runner::builder(MemoryStore::new())
                .migration(def(1, "a"), noop())
                .timeout(Duration::ZERO)
                .build()
        ));
        assert!(invalid_timeout(
            Runner::builder(MemoryStore::new())
                .migration(def(1, "a").timeout(Duration::ZERO), noop())
                .build()
        ));
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
        let settings = &runner.inner.settings;
        assert_eq!(settings.lock_wait, crate::DEFAULT_LOCK_WAIT);
        assert_eq!(settings.failure_policy, FailurePolicy::Stop);
        assert_eq!(settings.undeclared, UndeclaredPolicy::Warn);
        assert_eq!(settings.timeout, None);
    }

    #[test]
    fn an_empty_runner_is_valid() {
        assert!(Runner::<(), _>::builder(MemoryStore::new()).build().is_ok());
    }
}
