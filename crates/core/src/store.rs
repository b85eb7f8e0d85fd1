//! The storage contract every backend implements.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, Migration, MigrationDef, MigrationId};

/// Where migrations are tracked: the in-memory [`MemoryStore`](crate::MemoryStore),
/// SQLite or PostgreSQL.
///
/// The trait is object-safe: the runner and tools hold an
/// `Arc<dyn MigrationStore>` and never name a backend. Every backend passes
/// the same conformance suite (`waymark_core::testkit`).
#[async_trait]
pub trait MigrationStore: Send + Sync + 'static {
    /// Creates the tracking table or upgrades it in place.
    ///
    /// Idempotent and safe when several processes call it at once. An
    /// existing table of the original four columns (`id`, `name`,
    /// `description`, `executed`) is adopted without losing a row.
    async fn prepare(&self) -> Result<(), Error>;

    /// Tracks `defs`: unknown ids are inserted as pending, known ids keep
    /// their state. A known id with another name is [`Error::Conflict`] and
    /// nothing is registered. Records the set's
    /// [fingerprint](MigrationDef::fingerprint) for [`is_settled`](Self::is_settled).
    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error>;

    /// Every tracked migration, ordered by id.
    async fn list(&self) -> Result<Vec<Migration>, Error>;

    /// The migrations not yet executed, ordered by id.
    async fn pending(&self) -> Result<Vec<Migration>, Error>;

    /// One migration; [`Error::NotFound`] for an unknown id.
    async fn get(&self, id: MigrationId) -> Result<Migration, Error>;

    /// Marks a migration executed (an operator's repair, or a runner that
    /// did the work outside a store transaction). Sets `executed_at` the
    /// first time and clears the checkpoint; idempotent. [`Error::NotFound`]
    /// for an unknown id.
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error>;

    /// Records a successful run: executed, `executed_at` now, one more
    /// attempt, `last_error` and checkpoint cleared. [`Error::NotFound`] for
    /// an unknown id.
    async fn record_success(&self, id: MigrationId) -> Result<(), Error>;

    /// Marks a migration pending again so the next run executes it. Keeps
    /// attempts and the last error. [`Error::NotFound`] for an unknown id.
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error>;

    /// Records a failed run: one more attempt and `error` as `last_error`;
    /// the migration stays pending and keeps its checkpoint.
    /// [`Error::NotFound`] for an unknown id.
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error>;

    /// Saves the checkpoint a resumable migration will restart from.
    /// [`Error::NotFound`] for an unknown id.
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error>;

    /// True when the set of definitions with this
    /// [fingerprint](MigrationDef::fingerprint) was registered before and no
    /// migration is pending: the start-up fast path, one query. Any doubt
    /// (including a table that does not exist yet) answers `false`.
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error>;

    /// Takes the exclusive run lock, shared by every process and host that
    /// uses the same table. Waits up to `wait`, then fails with
    /// [`Error::LockTimeout`]. The lock is released when the guard is dropped
    /// and when the holding process dies.
    async fn lock(&self, wait: Duration) -> Result<LockGuard, Error>;

    /// Takes the run lock if no one holds it. If another run holds it,
    /// waits up to `wait` for that run to release it and then returns
    /// `None` without taking it, [`Error::LockTimeout`] if it does not.
    ///
    /// This is how replicas that start together and lose the race learn
    /// that the winner has finished: they all wake when it releases the
    /// lock and check what is left at once, instead of taking the lock one
    /// after the other only to find nothing to do. `None` says nothing
    /// about what the other run did: the caller reads the store again, and
    /// takes the lock with [`lock`](Self::lock) if work is left.
    ///
    /// The default takes the lock as [`lock`](Self::lock) does and returns
    /// it, which is correct, only slower for the losers of a race: stores
    /// whose lock has a shared mode override it.
    async fn lock_or_wait(&self, wait: Duration) -> Result<Option<LockGuard>, Error> {
        self.lock(wait).await.map(Some)
    }
}

/// Proof of holding a store's run lock; dropping it releases the lock.
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

/// Lets `Arc<S>` be used wherever a store is expected.
#[async_trait]
impl<S: MigrationStore + ?Sized> MigrationStore for Arc<S> {
    async fn prepare(&self) -> Result<(), Error> {
        (**self).prepare().await
    }
    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        (**self).register(defs).await
    }
    async fn list(&self) -> Result<Vec<Migration>, Error> {
        (**self).list().await
    }
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        (**self).pending().await
    }
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        (**self).get(id).await
    }
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error> {
        (**self).mark_executed(id).await
    }
    async fn record_success(&self, id: MigrationId) -> Result<(), Error> {
        (**self).record_success(id).await
    }
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error> {
        (**self).mark_pending(id).await
    }
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error> {
        (**self).record_failure(id, error).await
    }
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error> {
        (**self).save_checkpoint(id, checkpoint).await
    }
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        (**self).is_settled(fingerprint).await
    }
    async fn lock(&self, wait: Duration) -> Result<LockGuard, Error> {
        (**self).lock(wait).await
    }
    async fn lock_or_wait(&self, wait: Duration) -> Result<Option<LockGuard>, Error> {
        (**self).lock_or_wait(wait).await
    }
}

/// Checks `defs` for ids declared twice; the runner and stores call it
/// before touching a database. The same id with the same name twice is
/// accepted; with two names it is [`Error::Conflict`].
pub fn check_unique_ids(defs: &[MigrationDef]) -> Result<(), Error> {
    let mut seen: std::collections::HashMap<MigrationId, &str> = Default::default();
    for def in defs {
        if let Some(name) = seen.insert(def.id(), def.name())
            && name != def.name()
        {
            return Err(Error::Conflict {
                id: def.id().get(),
                message: format!("declared twice, as {name:?} and {:?}", def.name()),
            });
        }
    }
    Ok(())
}

/// The [`Error::Conflict`] for registering `id` as `requested` when it is
/// tracked as `tracked`; every backend uses it so the message is the same.
pub fn name_conflict(id: MigrationId, tracked: &str, requested: &str) -> Error {
    Error::Conflict {
        id: id.get(),
        message: format!("already registered as {tracked:?}, cannot register it as {requested:?}"),
    }
}
