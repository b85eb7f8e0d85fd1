//! What a store works on: the database (for error messages), the names of
//! its table, side table and index, and the statements on them, rendered
//! once by core's shared SQL.

use waymark_core::Error;
use waymark_core::store::sql::{Dialect, Statements};

use crate::error::Site;

/// The database and tracking table one store works on.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) site: Site,
    /// The table name as configured (already validated as a plain identifier).
    pub(crate) name: String,
    /// Every statement on the table, shared with the other SQL backends.
    pub(crate) sql: Statements,
    /// `"<table>_pending"`: the partial index behind the pending query.
    pub(crate) pending_index_sql: String,
    /// The explicit choices for ambiguous rows of an adopted table.
    pub(crate) adoption: waymark_core::store::AdoptionChoices,
    /// Whether `prepare` may create the table beside another tracking table.
    pub(crate) allow_second_table: bool,
}

impl Target {
    /// `name` must have passed `SqliteConfig::validate`, so quoting it is
    /// only belt and braces.
    pub(crate) fn new(site: Site, name: &str) -> Self {
        Self {
            site,
            name: name.to_owned(),
            sql: Statements::new(
                Dialect::Sqlite,
                &format!("\"{name}\""),
                &format!("\"{name}_fingerprints\""),
            ),
            pending_index_sql: format!("\"{name}_pending\""),
            adoption: waymark_core::store::AdoptionChoices::new(),
            allow_second_table: false,
        }
    }

    /// The quoted table.
    pub(crate) fn table_sql(&self) -> &str {
        &self.sql.table
    }

    /// The quoted side table of registered sets.
    pub(crate) fn fingerprints_sql(&self) -> &str {
        &self.sql.fingerprints
    }

    /// The side table's bare name, as `sqlite_master` spells it.
    pub(crate) fn fingerprints_name(&self) -> String {
        format!("{}_fingerprints", self.name)
    }

    /// The index's bare name, as `sqlite_master` spells it.
    pub(crate) fn pending_index_name(&self) -> String {
        format!("{}_pending", self.name)
    }

    /// `table "migrations" in SQLite database app.db`.
    pub(crate) fn describe(&self) -> String {
        format!("table {:?} in {}", self.name, self.site.location)
    }

    /// The error of a read that found no tracking table.
    pub(crate) fn not_initialised(&self) -> Error {
        Error::NotInitialised {
            table: self.describe(),
        }
    }
}

impl Target {
    /// The error for `err` from a statement on the tracking table:
    /// [`Error::NotInitialised`] when the table (or a column of it) is
    /// missing, otherwise as [`Site::error`].
    pub(crate) fn error(&self, doing: impl std::fmt::Display, err: rusqlite::Error) -> Error {
        if crate::error::is_unprepared(&err) {
            self.not_initialised()
        } else {
            self.site.error(doing, err)
        }
    }

    /// A closure for `map_err`.
    pub(crate) fn err<D: std::fmt::Display>(
        &self,
        doing: D,
    ) -> impl FnOnce(rusqlite::Error) -> Error + use<'_, D> {
        move |err| self.error(doing, err)
    }
}
