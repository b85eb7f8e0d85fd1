//! The one public error type shared by every store and the runner.

use std::time::Duration;

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
        id: i64,
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
        id: i64,
        /// What is tracked and what was asked for.
        message: String,
    },

    /// The run lock was held by someone else for the whole wait.
    #[error("timed out after {waited:?} waiting for the migration lock")]
    LockTimeout {
        /// How long the caller waited.
        waited: Duration,
    },

    /// A migration handler failed, panicked or timed out.
    #[error("migration {id} failed: {message}")]
    Handler {
        /// The migration whose handler failed.
        id: i64,
        /// The handler's error chain, flattened into one line.
        message: String,
        /// The handler's own error, when there is one (a panic has none).
        #[source]
        source: Option<BoxError>,
    },

    /// The database or the file system failed.
    #[error("{context}: {source}")]
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

    /// The HTTP status a web endpoint should answer with, as the original
    /// service did: 404 for an unknown id, 500 for anything from the database.
    ///
    /// Core does not depend on an HTTP crate; pass the number to yours, e.g.
    /// `StatusCode::from_u16(err.http_status())`.
    ///
    /// ```
    /// use waymark_core::Error;
    ///
    /// assert_eq!(Error::NotFound { id: 9 }.http_status(), 404);
    /// assert_eq!(Error::store("query", std::io::Error::other("down")).http_status(), 500);
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::Invalid { .. } => 400,
            Self::Conflict { .. } => 409,
            Self::LockTimeout { .. } => 503,
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
            Self::Handler { .. } => "handler",
            Self::Store { .. } => "store",
        }
    }
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

impl std::fmt::Display for IncompatibleTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // Many errors repeat their source in their own message; say it once.
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
    fn store_keeps_its_source() {
        let err = Error::store("opening /x.db", std::io::Error::other("disk gone"));
        assert_eq!(err.source().unwrap().to_string(), "disk gone");
        assert_eq!(err.to_string(), "opening /x.db: disk gone");
    }

    #[test]
    fn statuses_match_the_original_service() {
        assert_eq!(Error::NotFound { id: 1 }.http_status(), 404);
        assert_eq!(Error::invalid("name", "too long").http_status(), 400);
        assert_eq!(
            Error::LockTimeout {
                waited: Duration::from_secs(1)
            }
            .http_status(),
            503
        );
    }

    #[test]
    fn chain_joins_sources_once() {
        let err = Error::store("saving", std::io::Error::other("no space"));
        assert_eq!(error_chain(&err), "saving: no space");
    }
}
