//! What a runner is built from: the declared migrations and the settings
//! shared by every run. Data only; the builder fills it, the run reads it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use waymark_core::{MigrationDef, Mode};

use crate::events::Events;
use crate::handler::Handler;

/// How long a run waits for another instance's run lock by default: long
/// enough for a typical required migration on another replica to finish.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

/// What a run does after a migration fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Stop at the first failure; later migrations of the same mode are
    /// reported as not run and stay pending (they may depend on the one that
    /// failed). The default.
    #[default]
    Stop,
    /// Run every other pending migration anyway.
    Continue,
}

/// What a run does with a pending migration this release does not declare
/// (a newer release registered it, or an operator did by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UndeclaredPolicy {
    /// Leave it pending, say so loudly (a warning naming each one, in the
    /// log and in the report) and go on: a rollback to an older release
    /// starts and serves. The default.
    #[default]
    Warn,
    /// Treat it as a failed migration, which the [`FailurePolicy`] then
    /// applies to: a release refuses to run beside rows it does not know.
    Fail,
}

/// Settings shared by every run of one runner.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) lock_wait: Duration,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) undeclared: UndeclaredPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) events: Events,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lock_wait: DEFAULT_LOCK_WAIT,
            failure_policy: FailurePolicy::default(),
            undeclared: UndeclaredPolicy::default(),
            timeout: None,
            shutdown: CancellationToken::new(),
            events: Events::default(),
        }
    }
}

/// A declared migration: its definition and its handler.
pub(crate) struct Declared<S, St> {
    pub(crate) def: MigrationDef,
    pub(crate) handler: Handler<S, St>,
}

impl<S, St> Declared<S, St> {
    pub(crate) fn mode(&self) -> Mode {
        self.def.mode()
    }

    /// Its own time limit, or the runner's.
    pub(crate) fn timeout(&self, settings: &Settings) -> Option<Duration> {
        self.def.time_limit().or(settings.timeout)
    }
}
