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
    /// An [`Error::Store`] for `err`, raised while `doing`.
    pub(crate) fn error(&self, doing: impl fmt::Display, err: rusqlite::Error) -> Error {
        let hint = self.hint(&err);
        Error::store(format!("{doing} in {}{hint}", self.location), err)
    }

    /// A closure for `map_err`.
    pub(crate) fn err<D: fmt::Display>(
        &self,
        doing: D,
    ) -> impl FnOnce(rusqlite::Error) -> Error + use<'_, D> {
        move |err| self.error(doing, err)
    }

    fn hint(&self, err: &rusqlite::Error) -> String {
        match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                ": the file is not a SQLite database (it was left untouched)".to_owned()
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
                ": another connection kept the database locked for longer than the busy timeout ({:?})",
                self.busy_timeout
            ),
            Some(ErrorCode::ReadOnly) => ": the database is read-only".to_owned(),
            _ if is_missing_table(err) => {
                ": the tracking table does not exist yet; call prepare() first".to_owned()
            }
            _ => String::new(),
        }
    }
}

/// Whether `err` says a table is missing (SQLite has no code of its own for it).
pub(crate) fn is_missing_table(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(_, Some(message)) if message.starts_with("no such table"))
}

/// A plain message as the source of an [`Error::Store`].
pub(crate) fn message(text: impl Into<String>) -> std::io::Error {
    std::io::Error::other(text.into())
}
