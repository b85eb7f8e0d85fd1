//! The migrations whose atomic transaction is open in this store instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Error, MigrationId};

/// The ids whose atomic transaction one store (and its clones) has open.
///
/// While a migration's data change and its bookkeeping are in one open
/// transaction, any other write to its row — say a handler that calls a
/// captured clone of the store from a task it spawned — would either wait
/// for that transaction (a deadlock, on a single-connection store) or race
/// its commit and leave the row saying "executed" without the change. A
/// store marks the id while the transaction is open and refuses such
/// writes at once with [`InFlight::check`].
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<MigrationId, usize>>>);

impl InFlight {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `id` as inside an atomic transaction until the guard drops.
    pub fn enter(&self, id: MigrationId) -> InFlightGuard {
        *self.lock().entry(id).or_insert(0) += 1;
        InFlightGuard {
            set: self.clone(),
            id,
        }
    }

    /// Fails with [`Error::Conflict`] when `id` is inside one of this
    /// store's atomic transactions.
    pub fn check(&self, id: MigrationId) -> Result<(), Error> {
        if self.lock().contains_key(&id) {
            return Err(Error::Conflict {
                id,
                message: "its atomic transaction is open in this store: a write to its row now \
                          (from inside its own handler, or a task the handler waits for) would \
                          deadlock or race the commit; use the transaction the handler receives"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// Whether any atomic transaction is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MigrationId, usize>> {
        // Every change is a single map operation: a panic cannot leave it half-done.
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Ends an [`InFlight::enter`] when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    id: MigrationId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.set.lock();
        if let Some(count) = map.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.id);
            }
        }
    }
}
