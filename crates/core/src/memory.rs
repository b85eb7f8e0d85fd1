//! The in-memory store: for tests of applications and as the reference
//! behaviour the database backends are compared against.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::migration::now_utc;
use crate::store::{
    LockGuard, LockInfo, LockRequest, LockScope, PreparePlan, RowChange, SetState,
    check_unique_ids, name_conflict,
};
use crate::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

/// A complete [`MigrationStore`] kept in memory, thread-safe and cheap to
/// clone: clones share the same migrations and the same lock.
///
/// Like the database stores it must be [prepared](MigrationStore::prepare)
/// before use, so an application's tests catch a forgotten `prepare`.
///
/// ```
/// use waymark_core::{MemoryStore, MigrationDef, MigrationStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// store.prepare().await?;
/// store.register(&[MigrationDef::new(1, "fill_pace", "Derive pace from speed")?]).await?;
/// assert_eq!(store.pending().await?.len(), 1);
///
/// let other = store.clone();
/// other.mark_executed(1.try_into()?).await?;
/// assert!(store.pending().await?.is_empty());
/// # Ok::<(), waymark_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    run_lock: Arc<tokio::sync::Mutex<()>>,
    background_lock: Arc<tokio::sync::Mutex<()>>,
    holders: Holders,
}

/// Who holds each lock, for [`MigrationStore::locks`].
type Holders = Arc<Mutex<Vec<LockInfo>>>;

/// A held lock: the mutex guard, and the holder's entry removed on drop.
struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    scope: LockScope,
    holders: Holders,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|info| info.scope != self.scope);
    }
}

#[derive(Debug, Default)]
struct State {
    prepared: bool,
    rows: BTreeMap<MigrationId, Migration>,
    fingerprints: HashSet<String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, Error> {
        // A panic while holding the mutex cannot leave a half-written row:
        // every change below is a single assignment, so the data stays valid.
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !state.prepared {
            return Err(Error::NotInitialised {
                table: "the memory store".to_owned(),
            });
        }
        Ok(state)
    }

    fn change_row(
        &self,
        id: MigrationId,
        change: impl FnOnce(&mut Migration),
    ) -> Result<(), Error> {
        let mut state = self.state()?;
        let row = state.rows.get_mut(&id).ok_or(Error::NotFound { id })?;
        change(row);
        Ok(())
    }
}

#[async_trait]
impl MigrationStore for MemoryStore {
    async fn prepare(&self) -> Result<(), Error> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .prepared = true;
        Ok(())
    }

    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        let prepared = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .prepared;
        Ok(PreparePlan {
            table: "the memory store".to_owned(),
            create: !prepared,
            ..PreparePlan::default()
        })
    }

    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        check_unique_ids(defs)?;
        let mut state = self.state()?;
        // Check every definition before inserting any, so a conflict registers nothing.
        for def in defs {
            if let Some(row) = state.rows.get(&def.id())
                && row.name != def.name()
            {
                return Err(name_conflict(def.id(), &row.name, def.name()));
            }
        }
        for def in defs {
            state
                .rows
                .entry(def.id())
                .or_insert_with(|| Migration::registered(def));
        }
        state.fingerprints.insert(MigrationDef::fingerprint(defs));
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Migration>, Error> {
        Ok(self.state()?.rows.values().cloned().collect())
    }

    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        self.change_row(id, |row| match change {
            RowChange::MarkExecuted => {
                if !row.executed {
                    row.executed = true;
                    row.executed_at = Some(now_utc());
                }
                row.checkpoint = None;
            }
            RowChange::MarkPending => {
                row.executed = false;
                row.executed_at = None;
            }
            RowChange::RecordSuccess => {
                row.executed = true;
                row.executed_at = Some(now_utc());
                row.attempts = row.attempts.saturating_add(1);
                row.last_error = None;
                row.checkpoint = None;
            }
            RowChange::RecordFailure(error) => {
                row.attempts = row.attempts.saturating_add(1);
                row.last_error = Some(error.to_owned());
            }
            RowChange::SaveCheckpoint(checkpoint) => row.checkpoint = Some(checkpoint.to_owned()),
        })
    }

    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.state()?
            .rows
            .get(&id)
            .cloned()
            .ok_or(Error::NotFound { id })
    }

    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        Ok(SetState::from_answers(
            state.prepared && state.fingerprints.contains(fingerprint),
            state.rows.values().all(|row| row.executed),
        ))
    }

    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        let lock = Arc::clone(match request.scope {
            LockScope::Background => &self.background_lock,
            _ => &self.run_lock,
        });
        let wait: Duration = request.wait;
        let guard = match tokio::time::timeout(wait, lock.lock_owned()).await {
            Ok(guard) => guard,
            Err(_) => return Err(Error::LockTimeout { waited: wait }),
        };
        let mut info = LockInfo::new(request.scope);
        info.holder = Some(request.holder.clone());
        info.since = Some(now_utc());
        self.holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(info);
        Ok(LockGuard::new(Held {
            _guard: guard,
            scope: request.scope,
            holders: Arc::clone(&self.holders),
        }))
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        Ok(self
            .holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone())
    }
}
