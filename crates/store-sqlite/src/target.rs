//! What a store works on: the database (for error messages) and the names
//! of its table, side table and index, quoted once for splicing into SQL.

use crate::error::Site;

/// The database and tracking table one store works on.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) site: Site,
    /// The table name as configured (already validated as a plain identifier).
    pub(crate) name: String,
    /// `"<table>"`
    pub(crate) table_sql: String,
    /// `"<table>_fingerprints"`: the registered sets, for `is_settled`.
    pub(crate) fingerprints_sql: String,
    /// `"<table>_pending"`: the partial index behind the pending query.
    pub(crate) pending_index_sql: String,
    /// The start-up fast path's query, rendered once: it runs on every start.
    pub(crate) is_settled_sql: String,
}

impl Target {
    /// `name` must have passed `SqliteConfig::validate`, so quoting it is
    /// only belt and braces.
    pub(crate) fn new(site: Site, name: &str) -> Self {
        let table_sql = format!("\"{name}\"");
        let fingerprints_sql = format!("\"{name}_fingerprints\"");
        Self {
            site,
            name: name.to_owned(),
            is_settled_sql: format!(
                "SELECT EXISTS (SELECT 1 FROM {fingerprints_sql} WHERE fingerprint = ?1) \
                 AND NOT EXISTS (SELECT 1 FROM {table_sql} WHERE executed = 0)"
            ),
            table_sql,
            fingerprints_sql,
            pending_index_sql: format!("\"{name}_pending\""),
        }
    }

    /// The side table's bare name, as `sqlite_schema` spells it.
    pub(crate) fn fingerprints_name(&self) -> String {
        format!("{}_fingerprints", self.name)
    }

    /// The index's bare name, as `sqlite_schema` spells it.
    pub(crate) fn pending_index_name(&self) -> String {
        format!("{}_pending", self.name)
    }
}
