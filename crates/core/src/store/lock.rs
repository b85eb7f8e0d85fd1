//! Run locks: what a caller asks for, and the guard that proves it holds one.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::Error;

/// Which of a table's locks a caller wants.
///
/// Each scope is a separate lock: a replica running a long background
/// migration does not keep a newer release's required migrations from
/// starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl LockRequest {
    /// A request for the `scope` lock, waiting up to `wait`.
    pub fn new(scope: LockScope, wait: Duration) -> Self {
        Self { scope, wait }
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
