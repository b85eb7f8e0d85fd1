//! The store's SQL, rendered once for the configured schema and table.
//!
//! Identifiers are validated plain names and always double-quoted, so no
//! configured name can change the meaning of a statement; every value is a
//! bind parameter.

/// The columns of a [`Migration`](waymark_core::Migration), in the order
/// [`crate::row::migration`] reads them. Name and description of an adopted
/// table may be NULL.
const COLUMNS: &str = "id, COALESCE(name, '') AS name, COALESCE(description, '') AS description, \
                       executed, executed_at, attempts, last_error, checkpoint";

/// One more attempt, saturating instead of overflowing the INTEGER column.
const NEXT_ATTEMPT: &str = "attempts = LEAST(attempts::BIGINT + 1, 2147483647)::INTEGER";

/// Every statement the store runs, for one table.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `"schema"."table"`, for messages and DDL.
    pub(crate) table: String,
    /// `"schema"."table_fingerprints"`.
    pub(crate) fingerprints: String,
    /// `"table_pending_idx"` (an index lives in its table's schema).
    pub(crate) pending_index: String,
    /// `schema.table` unquoted, for messages.
    pub(crate) display: String,
    pub(crate) list: String,
    pub(crate) pending: String,
    pub(crate) get: String,
    pub(crate) insert: String,
    pub(crate) names: String,
    pub(crate) insert_fingerprint: String,
    pub(crate) mark_executed: String,
    pub(crate) record_success: String,
    pub(crate) mark_pending: String,
    pub(crate) record_failure: String,
    pub(crate) save_checkpoint: String,
    pub(crate) is_settled: String,
    /// Whether a set is registered already: every id under its name, and
    /// the fingerprint. One round trip; `register`'s steady state.
    pub(crate) registered: String,
    pub(crate) claim_success: String,
    pub(crate) claim_last_batch: String,
    pub(crate) claim_batch: String,
    pub(crate) state: String,
}

impl Statements {
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let fp = format!("\"{schema}\".\"{table}_fingerprints\"");
        Self {
            list: format!("SELECT {COLUMNS} FROM {t} ORDER BY id"),
            pending: format!("SELECT {COLUMNS} FROM {t} WHERE NOT executed ORDER BY id"),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE id = $1"),
            insert: format!(
                "INSERT INTO {t} (id, name, description, executed, attempts) \
                 SELECT u.id, u.name, u.description, FALSE, 0 \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[]) AS u(id, name, description) \
                 ORDER BY u.id \
                 ON CONFLICT (id) DO NOTHING"
            ),
            names: format!("SELECT id, name FROM {t} WHERE id = ANY($1::BIGINT[]) ORDER BY id"),
            insert_fingerprint: format!(
                "INSERT INTO {fp} (fingerprint, registered_at) VALUES ($1, $2) \
                 ON CONFLICT (fingerprint) DO NOTHING"
            ),
            // The first completion keeps its time: marking again is a no-op.
            mark_executed: format!(
                "UPDATE {t} SET executed = TRUE, \
                 executed_at = CASE WHEN executed THEN executed_at ELSE $2 END, \
                 checkpoint = NULL WHERE id = $1"
            ),
            record_success: format!(
                "UPDATE {t} SET executed = TRUE, executed_at = $2, {NEXT_ATTEMPT}, \
                 last_error = NULL, checkpoint = NULL WHERE id = $1"
            ),
            mark_pending: format!(
                "UPDATE {t} SET executed = FALSE, executed_at = NULL WHERE id = $1"
            ),
            record_failure: format!("UPDATE {t} SET {NEXT_ATTEMPT}, last_error = $2 WHERE id = $1"),
            save_checkpoint: format!("UPDATE {t} SET checkpoint = $2 WHERE id = $1"),
            // One round trip; the partial index answers the NOT EXISTS.
            is_settled: format!(
                "SELECT EXISTS (SELECT 1 FROM {fp} WHERE fingerprint = $1) \
                 AND NOT EXISTS (SELECT 1 FROM {t} WHERE NOT executed)"
            ),
            registered: format!(
                "SELECT EXISTS (SELECT 1 FROM {fp} WHERE fingerprint = $3) \
                 AND (SELECT COUNT(*) FROM {t} AS t \
                      JOIN UNNEST($1::BIGINT[], $2::TEXT[]) AS u(id, name) \
                      ON t.id = u.id AND t.name = u.name) = CARDINALITY($1::BIGINT[])"
            ),
            // Atomic bookkeeping changes the row only if it is as the run
            // found it; see `PostgresStore::bookkeep`.
            claim_success: format!(
                "UPDATE {t} SET executed = TRUE, executed_at = $2, {NEXT_ATTEMPT}, \
                 last_error = NULL, checkpoint = NULL WHERE id = $1 AND NOT executed"
            ),
            claim_last_batch: format!(
                "UPDATE {t} SET executed = TRUE, executed_at = $2, {NEXT_ATTEMPT}, \
                 last_error = NULL, checkpoint = NULL \
                 WHERE id = $1 AND NOT executed AND checkpoint IS NOT DISTINCT FROM $3"
            ),
            claim_batch: format!(
                "UPDATE {t} SET checkpoint = $2 \
                 WHERE id = $1 AND NOT executed AND checkpoint IS NOT DISTINCT FROM $3"
            ),
            state: format!("SELECT executed, checkpoint FROM {t} WHERE id = $1"),
            pending_index: format!("\"{table}_pending_idx\""),
            display: format!("{schema}.{table}"),
            table: t,
            fingerprints: fp,
        }
    }
}
