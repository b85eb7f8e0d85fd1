//! Turns a would-be deadlock into an error: a store call made from inside an
//! atomic handler of the same store would wait for the connection that the
//! handler's own transaction holds.

use std::cell::RefCell;

use waymark_core::Error;

thread_local! {
    /// The stores whose connection this thread holds, by address.
    static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks the current thread as holding a store's connection until dropped.
pub(crate) struct Held(usize);

impl Held {
    pub(crate) fn enter(store: usize) -> Self {
        HELD.with(|held| held.borrow_mut().push(store));
        Self(store)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|&s| s == self.0) {
                held.remove(at);
            }
        });
    }
}

/// Fails when the calling thread holds `store`'s connection. Store calls
/// from a blocking handler go through `Handle::block_on`, which polls them
/// on the handler's own thread, so this check sees them.
pub(crate) fn check(store: usize) -> Result<(), Error> {
    if HELD.with(|held| held.borrow().contains(&store)) {
        return Err(Error::store_message(
            "calling the SQLite store from inside one of its own atomic handlers",
            "the handler's transaction holds the store's connection, so this call would \
             deadlock; do the work through the transaction the handler receives (a batched \
             handler saves checkpoints in it)",
        ));
    }
    Ok(())
}
