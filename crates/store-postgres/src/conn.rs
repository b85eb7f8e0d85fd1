//! A pooled connection that goes back to the pool only in a known state,
//! and never leaves a statement running on the server when it is abandoned.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::CancelToken;

/// How the store's connections reach the server: the connector of the
/// pool it builds, which cancel requests use too. With the `tls` feature,
/// rustls as `sslmode` and `sslrootcert` ask (`crate::tls`).
#[cfg(feature = "tls")]
pub(crate) type Tls = crate::tls::MakeRustls;

/// How the store's connections reach the server: without the `tls`
/// feature, plain TCP (or a Unix socket) only; modes that need TLS are
/// refused when the settings are read.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = tokio_postgres::NoTls;

/// The connector for `ssl`; reads `sslrootcert` now.
#[cfg(feature = "tls")]
pub(crate) fn tls(ssl: &crate::ssl::Ssl) -> Result<Tls, waymark_core::Error> {
    crate::tls::MakeRustls::new(ssl)
}

/// The connector for `ssl`: without the `tls` feature, none.
#[cfg(not(feature = "tls"))]
pub(crate) fn tls(ssl: &crate::ssl::Ssl) -> Result<Tls, waymark_core::Error> {
    crate::ssl::check_supported(ssl.mode)?;
    Ok(tokio_postgres::NoTls)
}

/// What is needed to ask the server to cancel a connection's statement:
/// the connector of the store's pool, and how long the request may take.
#[derive(Debug, Clone)]
pub(crate) struct Canceller {
    pub(crate) tls: Tls,
    pub(crate) limit: Duration,
}

impl Canceller {
    /// Asks the server to cancel whatever `token`'s session is running, on
    /// a connection of its own, waiting at most the limit. The server says
    /// nothing back: a session that was idle is left alone. A failure is
    /// only logged: the caller closes the session anyway.
    pub(crate) async fn cancel(&self, token: &CancelToken) {
        // A TLS connector is Clone, not Copy: written for one.
        #[allow(clippy::clone_on_copy)]
        let tls = self.tls.clone();
        match tokio::time::timeout(self.limit, token.cancel_query(tls)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the cancel request failed"),
            Err(_) => tracing::warn!(limit = ?self.limit, "the cancel request timed out"),
        }
    }

    /// Closes `client`, which may be running a statement: first the cancel
    /// request, so the server stops the statement (and frees its locks) now
    /// rather than when it next writes to the closed socket, which for a
    /// long statement is its end. Runs on the current runtime; without one,
    /// the connection is only closed.
    pub(crate) fn close_busy(&self, client: ClientWrapper) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(client);
            return;
        };
        let canceller = self.clone();
        let token = client.cancel_token();
        runtime.spawn(async move {
            canceller.cancel(&token).await;
            drop(client);
        });
    }
}

/// The state a call leaves its connection in, and so what becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Idle, outside any transaction: back to the pool.
    Reuse,
    /// Its session is broken, but nothing runs: closed.
    Close,
    /// A statement may still be running: cancelled, then closed.
    CancelAndClose,
}

/// A connection checked out for one call.
///
/// [`release`](Self::release) returns it to the pool once the call has run
/// to its end; [`discard`](Self::discard) closes it when its session is
/// broken. If the call is abandoned instead (a timeout, a cancelled future,
/// a panic), dropping the guard sends a cancel request and closes the
/// connection: it may still be running a statement or sit in an open
/// transaction, and must not serve anyone else nor keep the server busy.
pub(crate) struct Conn {
    object: Option<Object>,
    canceller: Canceller,
}

impl Conn {
    pub(crate) fn new(object: Object, canceller: Canceller) -> Self {
        Self {
            object: Some(object),
            canceller,
        }
    }

    /// Back to the pool, for the next call.
    pub(crate) fn release(mut self) {
        drop(self.object.take());
    }

    /// Closed without a cancel request: its last statement has answered
    /// (with an error that left the session unusable), so nothing runs.
    pub(crate) fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }

    /// Ends the call as `how` says.
    pub(crate) fn end(self, how: Ending) {
        match how {
            Ending::Reuse => self.release(),
            Ending::Close => self.discard(),
            Ending::CancelAndClose => drop(self),
        }
    }

    /// The cancel request's capability and connector for this connection.
    pub(crate) fn cancel_handle(&self) -> (CancelToken, Canceller) {
        (self.cancel_token(), self.canceller.clone())
    }

    /// Out of the pool for good (the pool may open another in its place),
    /// still cancelled and closed if abandoned mid-statement.
    pub(crate) fn detach(mut self) -> Detached {
        let object = self
            .object
            .take()
            .expect("connection present until consumed");
        Detached {
            client: Some(Object::take(object)),
            canceller: self.canceller.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            tracing::debug!("cancelling and closing a connection abandoned mid-call");
            self.canceller.close_busy(Object::take(object));
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

/// A connection that has left the pool (the run lock's), while its call
/// runs: dropped mid-statement, it is cancelled and closed like [`Conn`].
pub(crate) struct Detached {
    client: Option<ClientWrapper>,
    canceller: Canceller,
}

impl Detached {
    /// A connection already out of the pool (the store's kept lock
    /// session), cancelled and closed like any other if abandoned.
    pub(crate) fn new(client: ClientWrapper, canceller: Canceller) -> Self {
        Self {
            client: Some(client),
            canceller,
        }
    }

    /// The connection, once its call has answered: from now on dropping it
    /// only closes it.
    pub(crate) fn into_client(mut self) -> ClientWrapper {
        self.client
            .take()
            .expect("connection present until consumed")
    }

    /// Closed without a cancel request: its last statement has answered.
    pub(crate) fn discard(self) {
        drop(self.into_client());
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.canceller.close_busy(client);
        }
    }
}

impl Deref for Detached {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.client
            .as_ref()
            .expect("connection present until consumed")
    }
}
