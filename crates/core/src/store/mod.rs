//! For backend authors: the storage contract and what every backend shares.
//!
//! An application names [`MigrationStore`] only to call it; a backend
//! implements it: a small required core ([`prepare`](MigrationStore::prepare),
//! [`register`](MigrationStore::register), [`list`](MigrationStore::list),
//! [`update`](MigrationStore::update), [`lock`](MigrationStore::lock)), with
//! every other method defaulted on those. A store whose transactions can carry
//! a migration's data change implements [`AtomicStore`] too. The
//! conformance suites (`testkit`, feature `testkit`) check both.

pub mod advisory;
mod atomic;
mod in_flight;
mod lock;
mod registration;
mod shape;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Error, Migration, MigrationDef, MigrationId};

pub use crate::fnv::fnv1a_64;
pub use crate::migration::now_utc;
pub use atomic::{
    AtomicError, AtomicFn, AtomicStore, BatchFn, BoxFuture, check_advance, confirm_commit,
};
pub use in_flight::{InFlight, InFlightGuard};
pub use lock::{HeldLock, LockGuard, LockHolder, LockInfo, LockRequest, LockScope};
pub use registration::{CHEAP_ADDITIONS, LeftToRegister, Prefixes};
pub use shape::{
    AddedColumn, AdoptionChoices, AmbiguousRows, AmbiguousRowsRefused, FoundColumn, FoundTable,
    NullExecuted, PreparePlan, TableChange, TypeClass, plan_table,
};

/// One change to one tracked row, as [`MigrationStore::update`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowChange<'a> {
    /// An operator's repair: executed, `executed_at` set the first time,
    /// checkpoint cleared; attempts and the last error kept.
    MarkExecuted,
    /// Pending again: executed cleared with `executed_at`; attempts, the
    /// last error and the checkpoint kept.
    MarkPending,
    /// A run's success: executed, `executed_at` now, one more attempt,
    /// last error and checkpoint cleared.
    RecordSuccess,
    /// A run's failure: one more attempt and this error chain as the last
    /// error; it stays pending and keeps its checkpoint.
    RecordFailure(&'a str),
    /// The checkpoint a resumable migration restarts from.
    SaveCheckpoint(&'a str),
}

/// What a store knows of one set of migration definitions, identified by
/// its [fingerprint](MigrationDef::fingerprint)
/// ([`MigrationStore::set_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SetState {
    /// Not registered, or the store cannot tell (no table yet): a start-up
    /// prepares the table and registers the set.
    Unregistered,
    /// Registered (its fingerprint is recorded: every id was tracked under
    /// its name when the set was registered), and some migration is
    /// pending: a start-up goes straight to reading the rows, without
    /// `prepare` or `register` (the runner falls back to both when the
    /// rows cannot be read or a declared row is missing).
    Pending,
    /// Registered, and no migration is pending: a start-up has nothing to do.
    Settled,
}

impl SetState {
    /// The state of a set from the two answers of one query: whether the
    /// fingerprint is recorded, and whether nothing is pending.
    pub fn from_answers(registered: bool, nothing_pending: bool) -> Self {
        match (registered, nothing_pending) {
            (false, _) => Self::Unregistered,
            (true, false) => Self::Pending,
            (true, true) => Self::Settled,
        }
    }
}

/// Where migrations are tracked: the in-memory [`MemoryStore`](crate::MemoryStore),
/// SQLite or PostgreSQL.
///
/// The trait is object-safe: tools hold an `Arc<dyn MigrationStore>` and
/// never name a backend. Every backend passes the same conformance suite
/// (`waymark_core::testkit`).
#[async_trait]
pub trait MigrationStore: Send + Sync + 'static {
    /// Creates the tracking table or upgrades it in place.
    ///
    /// Idempotent and safe when several processes call it at once. An
    /// existing table of the original four columns (`id`, `name`,
    /// `description`, `executed`) is adopted without losing a row; a table
    /// that cannot be used is refused with an [`IncompatibleTable`](crate::IncompatibleTable)
    /// source, and nothing is changed.
    async fn prepare(&self) -> Result<(), Error>;

    /// Tracks `defs`: unknown ids are inserted as pending, known ids keep
    /// their state. SQL stores check only what follows the part of the set
    /// they recorded before ([`Prefixes`]), trusting that tracked rows are
    /// not deleted or renamed by hand (the runner re-registers a declared
    /// row it does not find). A known id with another name is [`Error::Conflict`] and
    /// nothing is registered. Records the set's
    /// [fingerprint](MigrationDef::fingerprint) for [`set_state`](Self::set_state).
    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error>;

    /// Every tracked migration, ordered by id. Never creates anything: a
    /// database without the table is [`Error::NotInitialised`].
    async fn list(&self) -> Result<Vec<Migration>, Error>;

    /// Applies one change to one row; [`Error::NotFound`] for an unknown id.
    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error>;

    /// Takes an exclusive lock of `request.scope`, shared by every process
    /// and host that uses the same table. Waits up to `request.wait`, then
    /// fails with [`Error::LockTimeout`]. The lock is released when the
    /// guard is dropped and when the holding process dies.
    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error>;

    /// Takes the lock if no one holds it. If another run holds it, waits up
    /// to `request.wait` for that run to release it and then returns `None`
    /// without taking it, [`Error::LockTimeout`] if it does not.
    ///
    /// This is how replicas that start together and lose the race learn
    /// that the winner has finished: they all wake when it releases the
    /// lock and read what is left at once, instead of taking the lock one
    /// after the other only to find nothing to do.
    ///
    /// The default takes the lock as [`lock`](Self::lock) does, which is
    /// correct, only slower for the losers of a race: stores whose lock has
    /// a shared mode override it.
    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        self.lock(request).await.map(Some)
    }

    /// What [`prepare`](Self::prepare) would create or change, without
    /// changing anything (`waymark init --dry-run`). The default says the
    /// store cannot tell.
    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        Err(Error::invalid(
            "dry_run",
            "this store cannot show what prepare would change",
        ))
    }

    /// The locks held now, and by whom where the backend records it. The
    /// default says the store cannot tell.
    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        Err(Error::invalid(
            "locks",
            "this store cannot tell who holds its locks",
        ))
    }

    /// The migrations not yet executed, ordered by id.
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        let mut rows = self.list().await?;
        rows.retain(|row| !row.executed);
        Ok(rows)
    }

    /// One migration; [`Error::NotFound`] for an unknown id.
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.list()
            .await?
            .into_iter()
            .find(|row| row.id == id)
            .ok_or(Error::NotFound { id })
    }

    /// What this store knows of the set of definitions with this
    /// [fingerprint](MigrationDef::fingerprint): the start-up fast path,
    /// one query. [`SetState::Settled`] lets a start-up return at once,
    /// [`SetState::Pending`] lets it skip [`prepare`](Self::prepare) and
    /// [`register`](Self::register). Any doubt (including a table that does
    /// not exist yet) answers [`SetState::Unregistered`], which the default
    /// always does: correct, only slower.
    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        let _ = fingerprint;
        Ok(SetState::Unregistered)
    }

    /// True when the set of definitions with this
    /// [fingerprint](MigrationDef::fingerprint) was registered before and no
    /// migration is pending: [`set_state`](Self::set_state) is
    /// [`SetState::Settled`]. Backends override `set_state`, not this: the
    /// runner asks `set_state`.
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        Ok(self.set_state(fingerprint).await? == SetState::Settled)
    }

    /// [`RowChange::MarkExecuted`]: an operator's repair.
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error> {
        self.update(id, RowChange::MarkExecuted).await
    }

    /// [`RowChange::MarkPending`]: the next run executes it again.
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error> {
        self.update(id, RowChange::MarkPending).await
    }

    /// [`RowChange::RecordSuccess`].
    async fn record_success(&self, id: MigrationId) -> Result<(), Error> {
        self.update(id, RowChange::RecordSuccess).await
    }

    /// [`RowChange::RecordFailure`].
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error> {
        self.update(id, RowChange::RecordFailure(error)).await
    }

    /// [`RowChange::SaveCheckpoint`].
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error> {
        self.update(id, RowChange::SaveCheckpoint(checkpoint)).await
    }
}

/// Lets `Arc<S>` (and `Arc<dyn MigrationStore>`) be used wherever a store is
/// expected. Every method forwards, defaults included, so a store's own
/// faster versions are kept.
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
    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        (**self).update(id, change).await
    }
    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        (**self).lock(request).await
    }
    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        (**self).lock_or_wait(request).await
    }
    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        (**self).plan_prepare().await
    }
    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        (**self).locks().await
    }
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        (**self).pending().await
    }
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        (**self).get(id).await
    }
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        (**self).is_settled(fingerprint).await
    }
    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        (**self).set_state(fingerprint).await
    }
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error> {
        (**self).mark_executed(id).await
    }
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error> {
        (**self).mark_pending(id).await
    }
    async fn record_success(&self, id: MigrationId) -> Result<(), Error> {
        (**self).record_success(id).await
    }
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error> {
        (**self).record_failure(id, error).await
    }
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error> {
        (**self).save_checkpoint(id, checkpoint).await
    }
}

/// Checks `defs` for ids declared twice; stores call it before touching a
/// database. The same id with the same name twice is accepted; with two
/// names it is [`Error::Conflict`].
pub fn check_unique_ids(defs: &[MigrationDef]) -> Result<(), Error> {
    let mut seen: std::collections::HashMap<MigrationId, &str> = Default::default();
    for def in defs {
        if let Some(name) = seen.insert(def.id(), def.name())
            && name != def.name()
        {
            return Err(Error::Conflict {
                id: def.id(),
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
        id,
        message: format!("already registered as {tracked:?}, cannot register it as {requested:?}"),
    }
}

/// Checks a configured SQL name (a table, a schema) is a plain identifier:
/// an ASCII letter or `_`, then ASCII letters, digits or `_`, at most
/// `max_chars` long. Stores splice such names into SQL (quoted as well), so
/// nothing else may pass; anything else is [`Error::Invalid`] for `field`.
///
/// ```
/// use waymark_core::store::validate_identifier;
///
/// assert!(validate_identifier("table", "data_migrations", 63).is_ok());
/// assert!(validate_identifier("table", "x; DROP TABLE y", 63).is_err());
/// ```
pub fn validate_identifier(field: &'static str, name: &str, max_chars: usize) -> Result<(), Error> {
    let reject = |why: &str| Err(Error::invalid(field, format!("{why}, got {name:?}")));
    let mut chars = name.chars();
    match chars.next() {
        None => return reject("must not be empty"),
        Some(first) if !(first.is_ascii_alphabetic() || first == '_') => {
            return reject("must start with an ASCII letter or '_'");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return reject("must contain only ASCII letters, digits and '_'");
    }
    if name.len() > max_chars {
        return reject(&format!("must be at most {max_chars} characters"));
    }
    Ok(())
}
