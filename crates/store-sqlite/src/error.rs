//! Maps rusqlite's errors onto [`waymark_core::Error`], naming what was being
//! done and where, with a hint for the failures operators meet most.

use std::fmt;
use std::time::Duration;

use rusqlite::ErrorCode;
use waymark_core::Error;

use crate::config::Location;

/// What every error message needs to say where it happened.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) location: Location,
    pub(crate) busy_timeout: Duration,
}

impl Site {
    /// The error for `err`, raised while `doing`: [`Error::Busy`] when
    /// another connection kept the write lock past the busy timeout (the
    /// call may succeed later), [`Error::Store`] otherwise.
    pub(crate) fn error(&self, doing: impl fmt::Display, err: rusqlite::Error) -> Error {
        if is_busy(&err) {
            return Error::Busy {
                context: format!(
                    "{doing} in {} (busy timeout {:?})",
                    self.location, self.busy_timeout
                ),
                source: err.into(),
            };
        }
        let hint = match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                ": the file is not a SQLite database (it was left untouched)"
            }
            Some(ErrorCode::ReadOnly) => ": the database is read-only",
            Some(ErrorCode::DiskFull) => ": the disk is full",
            _ => "",
        };
        Error::store(format!("{doing} in {}{hint}", self.location), err)
    }

    /// A closure for `map_err`.
    pub(crate) fn err<D: fmt::Display>(
        &self,
        doing: D,
    ) -> impl FnOnce(rusqlite::Error) -> Error + use<'_, D> {
        move |err| self.error(doing, err)
    }
}

/// Whether `err` is SQLite giving up on a lock another connection holds.
pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether `err` says the tracking table (or one of its columns) is missing:
/// a database waymark has not prepared. SQLite has no code of its own for it.
pub(crate) fn is_unprepared(err: &rusqlite::Error) -> bool {
    let message = match err {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        // An error found while preparing comes as rusqlite's
        // `SqlInputError` where SQLite is new enough (the variant exists
        // only then), whose text starts with SQLite's message.
        rusqlite::Error::SqliteFailure(_, None) => return false,
        other => other.to_string(),
    };
    message.starts_with("no such table") || message.starts_with("no such column")
}

/// Whether `err` is the interrupt sent when a run was cancelled.
pub(crate) fn is_interrupt(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(ErrorCode::OperationInterrupted)
}
