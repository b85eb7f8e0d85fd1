//! Maps tokio-postgres and deadpool errors onto waymark's [`Error`], saying
//! what was being done and where (host and port, never a password), and
//! keeping the server's error, with its SQLSTATE, in the source chain.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::error::{DbError, SqlState};
use waymark_core::Error;

/// The SQLSTATE of the first PostgreSQL server error in `error`'s source
/// chain, if there is one.
///
/// Store errors keep the server's error as a source, so an application can
/// tell, for example, a serialization failure from a missing table:
///
/// ```
/// use waymark_postgres::sqlstate;
///
/// let not_from_a_server = waymark_core::Error::invalid("table", "bad");
/// assert_eq!(sqlstate(&not_from_a_server), None);
/// ```
pub fn sqlstate(error: &(dyn StdError + 'static)) -> Option<SqlState> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(db) = current.downcast_ref::<DbError>() {
            return Some(db.code().clone());
        }
        if let Some(code) = current
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
        {
            return Some(code.clone());
        }
        next = current.source();
    }
    None
}

/// A tokio-postgres error shown on one line, SQLSTATE included. Its source
/// is the error's own cause (the server's [`DbError`], or the I/O error), so
/// a chain printed with `waymark_core::error_chain` says each thing once.
#[derive(Debug)]
pub(crate) struct PgError(tokio_postgres::Error);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(code) = self.0.code() {
            write!(f, " [SQLSTATE {}]", code.code())?;
        }
        if let Some(cause) = self.0.source() {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl StdError for PgError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// What a call failed with before it became an [`Error`]: the server's or
/// the driver's error, or an answer that already has its meaning.
#[derive(Debug)]
pub(crate) enum Failure {
    Pg(tokio_postgres::Error),
    Done(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Pg(error)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Done(error)
    }
}

/// Whether `error` means the session is gone (closed socket, I/O failure,
/// the server ending the session): the connection must not be reused, and
/// an idempotent call may be retried on another.
pub(crate) fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        return matches!(db.severity(), "FATAL" | "PANIC") || db.code().code().starts_with("08");
    }
    error
        .source()
        .is_some_and(|cause| cause.is::<std::io::Error>())
}

/// The [`Error::Store`] for `error` while doing `context`. A missing table
/// gets a hint, since it nearly always means `prepare` was not called.
pub(crate) fn pg(context: impl Into<String>, error: tokio_postgres::Error) -> Error {
    let mut context = context.into();
    if error.code() == Some(&SqlState::UNDEFINED_TABLE) {
        context.push_str(" (the tracking table is missing: call prepare() first)");
    }
    Error::store(context, PgError(error))
}

/// The [`Error::Store`] for failing to get a connection from the pool.
pub(crate) fn pool(server: &str, error: PoolError, timeouts: PoolTimeouts) -> Error {
    let connecting = format!("connecting to PostgreSQL at {server}");
    match error {
        PoolError::Backend(error) => pg(connecting, error),
        PoolError::Timeout(TimeoutType::Wait) => Error::store(
            format!("waiting for a free connection to PostgreSQL at {server}"),
            timed_out(timeouts.wait, "every pooled connection stayed busy"),
        ),
        PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle) => Error::store(
            connecting,
            timed_out(timeouts.connect, "no answer from the server"),
        ),
        PoolError::Closed => Error::store(connecting, std::io::Error::other("the pool is closed")),
        PoolError::NoRuntimeSpecified => Error::store(
            connecting,
            std::io::Error::other("the pool has timeouts but no runtime to enforce them"),
        ),
        PoolError::PostCreateHook(hook) => {
            Error::store(connecting, std::io::Error::other(hook.to_string()))
        }
    }
}

/// The limits that apply while getting a connection, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolTimeouts {
    pub(crate) connect: Duration,
    pub(crate) wait: Duration,
}

/// An I/O "timed out" error saying after how long.
pub(crate) fn timed_out(after: Duration, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: timed out after {after:?}"),
    )
}
