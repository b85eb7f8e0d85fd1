//! A pooled connection that goes back to the pool only in a known state.

use std::ops::{Deref, DerefMut};

use deadpool_postgres::{ClientWrapper, Object};

/// A connection checked out for one call.
///
/// [`release`](Self::release) returns it to the pool once the call has run
/// to its end. If the call is abandoned instead (a timeout, a cancelled
/// future, a panic), dropping the guard closes the connection: it may still
/// be running a statement or sit in an open transaction, and must not serve
/// anyone else.
pub(crate) struct Conn {
    object: Option<Object>,
}

impl Conn {
    pub(crate) fn new(object: Object) -> Self {
        Self {
            object: Some(object),
        }
    }

    /// Back to the pool, for the next call.
    pub(crate) fn release(mut self) {
        drop(self.object.take());
    }

    /// Back to the pool if `reusable`, else closed.
    pub(crate) fn finish(self, reusable: bool) {
        if reusable {
            self.release();
        }
    }

    /// Out of the pool for good; the pool may open another in its place.
    pub(crate) fn detach(mut self) -> ClientWrapper {
        Object::take(
            self.object
                .take()
                .expect("connection present until consumed"),
        )
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            tracing::debug!("closing a connection abandoned mid-call");
            drop(Object::take(object));
        }
    }
}

impl Deref for Conn {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object
            .as_ref()
            .expect("connection present until consumed")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Object {
        self.object
            .as_mut()
            .expect("connection present until consumed")
    }
}
