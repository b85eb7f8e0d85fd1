//! The store's SQL: core's statements shared by every SQL backend, plus
//! the few only PostgreSQL can run (arrays), rendered once for the
//! configured schema and table.
//!
//! Identifiers are validated plain names and always double-quoted, so no
//! configured name can change the meaning of a statement; every value is a
//! bind parameter.

use std::ops::Deref;

use waymark_core::store::sql::{Dialect, Statements};

/// Every statement the store runs, for one table.
#[derive(Debug)]
pub(crate) struct PgStatements {
    shared: Statements,
    /// `"table_pending_idx"` (an index lives in its table's schema).
    pub(crate) pending_index: String,
    /// `schema.table` unquoted, for messages.
    pub(crate) display: String,
    /// 1 ids, 2 names, 3 descriptions (arrays of one length): every new
    /// id as a pending row in one statement, in id order; known ids are
    /// left alone.
    pub(crate) insert_many: String,
    /// 1 ids: `(id, name)` of each tracked one.
    pub(crate) names: String,
    /// 1 fingerprints: those of them recorded (`register`'s first look,
    /// see [`Prefixes`](waymark_core::store::Prefixes)).
    pub(crate) recorded: String,
}

impl PgStatements {
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let fp = format!("\"{schema}\".\"{table}_fingerprints\"");
        Self {
            insert_many: format!(
                "INSERT INTO {t} (id, name, description, executed, attempts) \
                 SELECT u.id, u.name, u.description, FALSE, 0 \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[]) AS u(id, name, description) \
                 ORDER BY u.id \
                 ON CONFLICT (id) DO NOTHING"
            ),
            names: format!(
                "SELECT id::BIGINT, COALESCE(name, '') FROM {t} WHERE id = ANY($1::BIGINT[]) ORDER BY id"
            ),
            recorded: format!("SELECT fingerprint FROM {fp} WHERE fingerprint = ANY($1::TEXT[])"),
            pending_index: format!("\"{table}_pending_idx\""),
            display: format!("{schema}.{table}"),
            shared: Statements::new(Dialect::Postgres, &t, &fp),
        }
    }
}

/// The shared statements are used as if they were the store's own.
impl Deref for PgStatements {
    type Target = Statements;

    fn deref(&self) -> &Statements {
        &self.shared
    }
}
