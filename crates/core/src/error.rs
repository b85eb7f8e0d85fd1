//! The one public error type shared by every store and the runner.
//!
//! Each variant's `Display` says its own part once; what caused it is its
//! [`source`](std::error::Error::source), so error reporters (anyhow's
//! `{:#}`, [`error_chain`]) print every cause exactly once.

use std::fmt;
use std::time::Duration;

use crate::MigrationId;

/// A boxed error that can cross threads: what handlers return and what
/// backends keep as the source of [`Error::Store`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in waymark, by meaning rather than by backend.
///
/// Each backend keeps its own error type private and maps it onto these
/// variants, keeping the original error as the [`source`](std::error::Error::source)
/// so that details such as a PostgreSQL SQLSTATE stay reachable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No migration with this id is tracked.
    #[error("migration {id} not found")]
    NotFound {
        /// The id that was looked up.
        id: MigrationId,
    },

    /// An input broke a limit: the message names the field, the limit and
    /// what was given.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field at fault (`"id"`, `"name"`, `"description"`, …).
        field: &'static str,
        /// What the limit is and what was given.
        message: String,
    },

    /// The request contradicts what is already tracked, such as an id
    /// registered under another name.
    #[error("conflict on migration {id}: {message}")]
    Conflict {
        /// The id in conflict.
        id: MigrationId,
        /// What is tracked and what was asked for.
        message: String,
    },

    /// The run lock was held by someone else for the whole wait.
    #[error("timed out after {waited:?} waiting for the migration lock")]
    LockTimeout {
        /// How long the caller waited.
        waited: Duration,
    },

    /// The tracking table does not exist yet, or is a table waymark has not
    /// prepared (the original four columns, before adoption). Read-only
    /// calls report this instead of changing anything; a run or
    /// `waymark init` prepares it.
    #[error(
        "{table} is not initialised: no tracking table, or one not yet prepared (a run or `waymark init` prepares it)"
    )]
    NotInitialised {
        /// The table and where it was looked for.
        table: String,
    },

    /// Another connection held the database's write lock for longer than
    /// the store waits (SQLite's busy timeout): nothing was changed, and
    /// the same call may succeed later.
    #[error(
        "{context}: another connection held the database's write lock for longer than the busy timeout"
    )]
    Busy {
        /// What was being done, and where.
        context: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// A migration failed: its handler returned an error, panicked, timed
    /// out, or was refused (an undeclared migration under the strict policy).
    /// The source says how.
    #[error("migration {id} failed")]
    Handler {
        /// The migration that failed.
        id: MigrationId,
        /// What happened: the handler's own error, or one of
        /// [`HandlerPanicked`], [`HandlerTimedOut`], [`UndeclaredMigration`].
        #[source]
        source: BoxError,
    },

    /// The application's shutdown signal stopped the run at a batch
    /// boundary (or interrupted a handler that is not batched): nothing is
    /// lost, and the next run resumes where it stopped.
    #[error("migration {id} was stopped by the shutdown; the next run resumes it")]
    Stopped {
        /// The migration that was running.
        id: MigrationId,
    },

    /// The database or the file system failed.
    #[error("{context}")]
    Store {
        /// What was being done, and where (a path, a host and port; never a password).
        context: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// An [`Error::Store`] saying what was being done, keeping `source`.
    pub fn store(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Store {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An [`Error::Store`] whose cause is a plain message.
    pub fn store_message(context: impl Into<String>, message: impl Into<String>) -> Self {
        Self::store(context, Message(message.into()))
    }

    /// The HTTP status a web endpoint should answer with, as the original
    /// service did: 404 for an unknown id, 500 for anything from the database.
    ///
    /// Core does not depend on an HTTP crate; pass the number to yours, e.g.
    /// `StatusCode::from_u16(err.http_status())`.
    ///
    /// ```
    /// use waymark_core::{Error, MigrationId};
    ///
    /// let id = MigrationId::new(9)?;
    /// assert_eq!(Error::NotFound { id }.http_status(), 404);
    /// assert_eq!(Error::store("query", std::io::Error::other("down")).http_status(), 500);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::Invalid { .. } => 400,
            Self::Conflict { .. } => 409,
            Self::LockTimeout { .. }
            | Self::Busy { .. }
            | Self::NotInitialised { .. }
            | Self::Stopped { .. } => 503,
            Self::Handler { .. } | Self::Store { .. } => 500,
        }
    }

    /// A short stable name of the variant (`"not_found"`, `"store"`, …), for
    /// logs, JSON output and comparing outcomes across backends.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Invalid { .. } => "invalid",
            Self::Conflict { .. } => "conflict",
            Self::LockTimeout { .. } => "lock_timeout",
            Self::NotInitialised { .. } => "not_initialised",
            Self::Busy { .. } => "busy",
            Self::Handler { .. } => "handler",
            Self::Stopped { .. } => "stopped",
            Self::Store { .. } => "store",
        }
    }
}

/// A plain message as an error source: what a backend reports when the
/// cause is its own finding rather than a driver's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message(pub String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// The source of an [`Error::Handler`] for a handler that panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the handler panicked: {message}")]
pub struct HandlerPanicked {
    /// The panic's message.
    pub message: String,
}

/// The source of an [`Error::Handler`] for a handler stopped by its timeout;
/// its own source is the handler's error when it returned one.
#[derive(Debug, thiserror::Error)]
#[error("the handler timed out after {limit:?}")]
pub struct HandlerTimedOut {
    /// The time limit that passed.
    pub limit: Duration,
    /// What the handler returned after being asked to stop, if anything.
    #[source]
    pub source: Option<BoxError>,
}

/// The source of an [`Error::Handler`] for a pending migration this release
/// does not declare, under the strict policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is pending but not declared by this release (registered by a newer release or by hand)"
)]
pub struct UndeclaredMigration {
    /// The tracked name of the migration.
    pub name: String,
}

/// Why an existing tracking table cannot be used: the source of the
/// [`Error::Store`] that [`prepare`](crate::MigrationStore::prepare) returns
/// on every backend. Nothing was changed when it is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncompatibleTable {
    /// The table that was found.
    pub table: String,
    /// The column at fault, when one is.
    pub column: Option<String>,
    /// What is wrong and what waymark needs instead.
    pub problem: String,
}

impl IncompatibleTable {
    /// The table `table` cannot be used because of `column` (if one is at
    /// fault): `problem` says why.
    pub fn new(table: impl Into<String>, column: Option<&str>, problem: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            column: column.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for IncompatibleTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the existing table {:?} cannot be used: ", self.table)?;
        if let Some(column) = &self.column {
            write!(f, "column {column:?} ")?;
        }
        write!(f, "{}; nothing was changed", self.problem)
    }
}

impl std::error::Error for IncompatibleTable {}

/// The error and all its sources joined into one line (`outer: inner: root`),
/// the form kept in a migration's `last_error`.
///
/// ```
/// use waymark_core::{Error, error_chain};
///
/// let err = Error::store("saving", std::io::Error::other("no space"));
/// assert_eq!(error_chain(&err), "saving: no space");
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // Drivers' errors often repeat their own source in their message
        // (waymark's never do): say each thing once.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn store_says_its_context_once_and_keeps_its_source() {
        let err = Error::store("opening /x.db", std::io::Error::other("disk gone"));
        assert_eq!(err.source().unwrap().to_string(), "disk gone");
        assert_eq!(err.to_string(), "opening /x.db");
        assert_eq!(error_chain(&err), "opening /x.db: disk gone");
    }

    #[test]
    fn handler_errors_print_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = Error::Handler {
            id: MigrationId::new(3).unwrap(),
            source: io.into(),
        };
        assert_eq!(err.to_string(), "migration 3 failed");
        assert_eq!(error_chain(&err), "migration 3 failed: No such file");
        let timed_out = Error::Handler {
            id: MigrationId::new(4).unwrap(),
            source: HandlerTimedOut {
                limit: Duration::from_secs(1),
                source: Some("gave up".into()),
            }
            .into(),
        };
        assert_eq!(
            error_chain(&timed_out),
            "migration 4 failed: the handler timed out after 1s: gave up"
        );
    }

    #[test]
    fn statuses_match_the_original_service() {
        let id = MigrationId::new(1).unwrap();
        assert_eq!(Error::NotFound { id }.http_status(), 404);
        assert_eq!(Error::invalid("name", "too long").http_status(), 400);
        assert_eq!(
            Error::LockTimeout {
                waited: Duration::from_secs(1)
            }
            .http_status(),
            503
        );
    }
}
