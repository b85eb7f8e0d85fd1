//! Run locks: what a caller asks for, and the guard that proves it holds one.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::Error;

/// Which of a table's locks a caller wants.
///
/// Each scope is a separate lock: a replica running a long background
/// migration does not keep a newer release's required migrations from
/// starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LockScope {
    /// Held while required migrations run, and by operators' repairs.
    Run,
    /// Held while background migrations run.
    Background,
}

impl LockScope {
    /// `"run"` or `"background"`: stable, used in lock keys and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Background => "background",
        }
    }
}

impl fmt::Display for LockScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`lock`](super::MigrationStore::lock) is asked for.
///
/// ```
/// use std::time::Duration;
/// use waymark_core::store::{LockRequest, LockScope};
///
/// let request = LockRequest::new(LockScope::Run, Duration::from_secs(30));
/// assert_eq!(request.wait, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockRequest {
    /// Which lock.
    pub scope: LockScope,
    /// How long to wait for it; zero tries once.
    pub wait: Duration,
    /// Who asks: recorded with the lock where the backend allows it, so
    /// that operators can see who holds it.
    pub holder: LockHolder,
}

impl LockRequest {
    /// A request for the `scope` lock, waiting up to `wait`, by this
    /// process ([`LockHolder::this_process`]).
    pub fn new(scope: LockScope, wait: Duration) -> Self {
        Self {
            scope,
            wait,
            holder: LockHolder::this_process(),
        }
    }

    /// The same request, on behalf of `holder`.
    pub fn with_holder(mut self, holder: LockHolder) -> Self {
        self.holder = holder;
        self
    }
}

/// Who holds a lock (or asks for one): where the backend allows it, the
/// store records this with the lock, and [`locks`](super::MigrationStore::locks)
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockHolder {
    /// The host name.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
    /// The application: the name of its executable unless set.
    pub application: String,
}

impl LockHolder {
    /// This process: the machine's host name, the process id and the name
    /// of the running executable.
    pub fn this_process() -> Self {
        let application = std::env::current_exe()
            .ok()
            .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            host: host_name(),
            pid: std::process::id(),
            application,
        }
    }

    /// This process under another application name (what the CLI and the
    /// runner pass: the application's name, not the binary's).
    pub fn named(application: impl Into<String>) -> Self {
        Self {
            application: application.into(),
            ..Self::this_process()
        }
    }

    /// A holder as another process recorded it (what a backend reads back
    /// for [`locks`](super::MigrationStore::locks)).
    pub fn at(host: impl Into<String>, pid: u32, application: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            pid,
            application: application.into(),
        }
    }

    /// `application (pid N on HOST)`, how messages name a holder.
    pub fn describe(&self) -> String {
        format!("{} (pid {} on {})", self.application, self.pid, self.host)
    }
}

/// The host name, from the kernel on Linux, then the usual variables.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// A lock that is held, as [`locks`](super::MigrationStore::locks) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// Which lock.
    pub scope: LockScope,
    /// Who holds it, when the backend recorded it (a holder of an older
    /// version records nothing).
    pub holder: Option<LockHolder>,
    /// Since when, when known.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// What the backend knows besides (a PostgreSQL backend pid and client
    /// address, a lock file's path).
    pub detail: Option<String>,
}

impl LockInfo {
    /// A held `scope` lock, holder and time unknown.
    pub fn new(scope: LockScope) -> Self {
        Self {
            scope,
            holder: None,
            since: None,
            detail: None,
        }
    }
}

/// Proof of holding a store's lock; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    held: Held,
}

enum Held {
    /// A lock that is held for as long as the value lives (a file lock, a mutex guard).
    Plain { _held: Box<dyn Any + Send + Sync> },
    /// A lock that can be lost while its guard lives (a database session ended by the server).
    Checked(Box<dyn HeldLock>),
}

/// A lock whose holder can lose it while the guard lives — a PostgreSQL
/// advisory lock dies with its session — and can tell.
pub trait HeldLock: Send + Sync + 'static {
    /// `Ok` while the lock is still held; an error saying how it was lost otherwise.
    /// Must be cheap: the runner asks before every migration.
    fn check(&self) -> Result<(), Error>;
}

impl LockGuard {
    /// Wraps whatever keeps a backend's lock held (a mutex guard, a locked
    /// file); dropping it must release the lock. The lock must stay held as
    /// long as the value lives.
    pub fn new<T: Send + Sync + 'static>(held: T) -> Self {
        Self {
            held: Held::Plain {
                _held: Box::new(held),
            },
        }
    }

    /// Wraps a lock that can be lost while held, such as one tied to a
    /// database session; [`check`](Self::check) asks it.
    pub fn checked(held: impl HeldLock) -> Self {
        Self {
            held: Held::Checked(Box::new(held)),
        }
    }

    /// `Ok` while the lock is known to be held. The runner checks before
    /// each migration, so a run whose lock was lost (its session
    /// terminated) stops instead of running migrations unprotected.
    pub fn check(&self) -> Result<(), Error> {
        match &self.held {
            Held::Plain { .. } => Ok(()),
            Held::Checked(lock) => lock.check(),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}
