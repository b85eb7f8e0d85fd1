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
        let driver = current
            .downcast_ref::<tokio_postgres::Error>()
            .or_else(|| current.downcast_ref::<PgError>().map(|e| &e.0));
        if let Some(code) = driver.and_then(tokio_postgres::Error::code) {
            return Some(code.clone());
        }
        next = current.source();
    }
    None
}

/// A tokio-postgres error: its kind (`db error`, `connection closed`, …)
/// and SQLSTATE. Its source is the error's own cause (the server's
/// [`DbError`], or the I/O error), which its `Display` does not repeat, so
/// every reporter of the chain says each thing once.
#[derive(Debug)]
pub(crate) struct PgError(tokio_postgres::Error);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres' own Display is the kind alone; the cause is its source.
        write!(f, "{}", self.0)?;
        if let Some(code) = self.0.code() {
            write!(f, " [SQLSTATE {}]", code.code())?;
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

/// Whether `error` says the tracking table is not (yet) waymark's: the
/// table or its schema does not exist, or it lacks a column `prepare` adds
/// (the original four-column table, before adoption).
pub(crate) fn missing_table(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(
            &SqlState::UNDEFINED_TABLE
                | &SqlState::INVALID_SCHEMA_NAME
                | &SqlState::UNDEFINED_COLUMN
        )
    )
}

/// The [`Error::Store`] for `error` while doing `context`.
pub(crate) fn pg(context: impl Into<String>, error: tokio_postgres::Error) -> Error {
    Error::store(context, PgError(error))
}

/// [`pg`] for a statement of the store's own bookkeeping, which runs under
/// the store's statement timeout (`SET LOCAL`): when that is what cancelled
/// it, the context says so and where the limit is set.
pub(crate) fn pg_limited(
    context: impl Into<String>,
    error: tokio_postgres::Error,
    limit: Duration,
) -> Error {
    let mut context = context.into();
    let by_timeout = error.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::QUERY_CANCELED && db.message().contains("statement timeout")
    });
    if by_timeout {
        context.push_str(&format!(
            " (cancelled by the server after {limit:?}: {})",
            Limit::Statement
        ));
    }
    pg(context, error)
}

/// The [`Error::Store`] for failing to get a connection from the pool.
pub(crate) fn pool(server: &str, error: PoolError, timeouts: PoolTimeouts) -> Error {
    let connecting = format!("connecting to PostgreSQL at {server}");
    match error {
        PoolError::Backend(error) => pg(connecting, error),
        PoolError::Timeout(TimeoutType::Wait) => Error::store(
            format!("waiting for a free connection to PostgreSQL at {server}"),
            timed_out(
                Limit::PoolWait,
                timeouts.wait,
                "every pooled connection stayed busy",
            ),
        ),
        PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle) => Error::store(
            connecting,
            timed_out(
                Limit::Connect,
                timeouts.connect,
                "no answer from the server",
            ),
        ),
        PoolError::Closed => Error::store(connecting, std::io::Error::other("the pool is closed")),
        PoolError::NoRuntimeSpecified => Error::store(
            connecting,
            std::io::Error::other("the pool has timeouts but no runtime to enforce them"),
        ),
        // The session settings each new connection gets (a dead holder's keepalives).
        PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(error)) => {
            pg(connecting, error)
        }
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

/// Which of the store's limits passed, for messages that say where it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The limit of each of the store's own calls and bookkeeping statements.
    Statement,
    /// Opening one connection.
    Connect,
    /// Getting a connection from the pool.
    PoolWait,
    /// Taking the lock: the wait asked for, plus the statement timeout.
    Lock,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Statement => {
                "the store's statement timeout (set with PostgresConfig::statement_timeout)"
            }
            Self::Connect => {
                "the connect timeout (set with PostgresConfig::connect_timeout or the URL's \
                 connect_timeout)"
            }
            Self::PoolWait => {
                "the wait for a pooled connection (the connect timeout plus the statement \
                 timeout, set with PostgresConfig)"
            }
            Self::Lock => {
                "the lock wait asked for plus the store's statement timeout (set with \
                 PostgresConfig::statement_timeout)"
            }
        })
    }
}

/// An I/O "timed out" error saying after how long, and which limit that is.
pub(crate) fn timed_out(limit: Limit, after: Duration, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: timed out after {after:?}, {limit}"),
    )
}
