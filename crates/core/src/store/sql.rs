//! The tracking table's statements, rendered once per table for the SQL
//! dialect of a backend, so that every store built on SQL (rusqlite,
//! tokio-postgres, sqlx) runs the same statements with the same meaning.
//!
//! Identifiers are validated plain names and always double-quoted; every
//! value is a bind parameter (`?N` for SQLite, `$N` for PostgreSQL).

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite: `?N` parameters, booleans as 0 and 1, `executed_at` as RFC 3339 text.
    Sqlite,
    /// PostgreSQL: `$N` parameters, `BOOLEAN`, `executed_at` as `TIMESTAMPTZ`.
    Postgres,
}

impl Dialect {
    fn param(self, n: u8) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }
}

/// Every statement on one tracking table. Parameters are listed with each.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Statements {
    /// The dialect they are written in.
    pub dialect: Dialect,
    /// The quoted table (`"schema"."table"` on PostgreSQL).
    pub table: String,
    /// The quoted side table of registered sets.
    pub fingerprints: String,
    /// The columns of a row, in order: id, name, description, executed,
    /// executed_at, attempts, last_error, checkpoint. NULL names and
    /// descriptions (possible in an adopted table) read as empty text.
    pub columns: &'static str,
    /// Every row by id.
    pub list: String,
    /// The pending rows by id.
    pub pending: String,
    /// One row: 1 id.
    pub get: String,
    /// 1 id, 2 now: executed, `executed_at` set the first time, checkpoint cleared.
    pub mark_executed: String,
    /// 1 id: pending again.
    pub mark_pending: String,
    /// 1 id, 2 now: a run's success.
    pub record_success: String,
    /// 1 id, 2 error chain: a run's failure.
    pub record_failure: String,
    /// 1 id, 2 checkpoint.
    pub save_checkpoint: String,
    /// 1 fingerprint: two booleans, whether the set was registered and
    /// whether nothing is pending ([`SetState::from_answers`](super::SetState::from_answers)).
    pub set_state: String,
    /// 1 id: the tracked name.
    pub name_of: String,
    /// 1 fingerprint: whether the set was registered.
    pub known_set: String,
    /// 1 id, 2 name, 3 description: a new pending row; a known id is left alone.
    pub insert: String,
    /// 1 fingerprint, 2 now.
    pub insert_fingerprint: String,
    /// 1 id, 2 stamp: an atomic success, only if still pending.
    pub claim_success: String,
    /// 1 id, 2 stamp, 3 checkpoint the batch started from: the last batch's
    /// success, only if still pending at that checkpoint.
    pub claim_last_batch: String,
    /// 1 id, 2 next checkpoint, 3 checkpoint the batch started from.
    pub claim_batch: String,
    /// 1 id: executed and checkpoint, to explain a refused claim.
    pub state: String,
}

impl Statements {
    /// The statements for `table` (already quoted, schema included) and its
    /// side table `fingerprints` (quoted).
    pub fn new(dialect: Dialect, table: &str, fingerprints: &str) -> Self {
        let p = |n| dialect.param(n);
        let (p1, p2, p3) = (p(1), p(2), p(3));
        // An adopted table's id may be INTEGER: the id parameter is BIGINT
        // whatever the column, so one Rust type binds on every table.
        let id = match dialect {
            Dialect::Sqlite => p1.clone(),
            Dialect::Postgres => format!("{p1}::BIGINT"),
        };
        let (columns, pending, executed, not_executed, next_attempt) = match dialect {
            Dialect::Sqlite => (
                "id, coalesce(name, ''), coalesce(description, ''), coalesce(executed, 0) <> 0, \
                 executed_at, attempts, last_error, checkpoint",
                "executed = 0",
                "1",
                "0",
                "attempts = min(attempts + 1, 2147483647)",
            ),
            Dialect::Postgres => (
                "id::BIGINT AS id, COALESCE(name, '') AS name, \
                 COALESCE(description, '') AS description, executed, executed_at, \
                 attempts::INTEGER AS attempts, last_error, checkpoint",
                "NOT executed",
                "TRUE",
                "FALSE",
                "attempts = LEAST(attempts::BIGINT + 1, 2147483647)::INTEGER",
            ),
        };
        let t = table;
        let fp = fingerprints;
        // Null-safe equality: SQLite's `IS` works on every version (its
        // `IS NOT DISTINCT FROM` only from 3.39, newer than many systems').
        let same = match dialect {
            Dialect::Sqlite => "IS",
            Dialect::Postgres => "IS NOT DISTINCT FROM",
        };
        let success = format!(
            "executed = {executed}, executed_at = {p2}, {next_attempt}, last_error = NULL, checkpoint = NULL"
        );
        Self {
            dialect,
            columns,
            list: format!("SELECT {columns} FROM {t} ORDER BY id"),
            pending: format!("SELECT {columns} FROM {t} WHERE {pending} ORDER BY id"),
            get: format!("SELECT {columns} FROM {t} WHERE id = {id}"),
            // The first completion keeps its time: marking again is a no-op.
            mark_executed: format!(
                "UPDATE {t} SET executed_at = CASE WHEN {pending} THEN {p2} ELSE executed_at END, \
                 executed = {executed}, checkpoint = NULL WHERE id = {id}"
            ),
            mark_pending: format!(
                "UPDATE {t} SET executed = {not_executed}, executed_at = NULL WHERE id = {id}"
            ),
            record_success: format!("UPDATE {t} SET {success} WHERE id = {id}"),
            record_failure: format!(
                "UPDATE {t} SET {next_attempt}, last_error = {p2} WHERE id = {id}"
            ),
            save_checkpoint: format!("UPDATE {t} SET checkpoint = {p2} WHERE id = {id}"),
            // One round trip; the partial index on pending rows answers the NOT EXISTS.
            set_state: format!(
                "SELECT EXISTS (SELECT 1 FROM {fp} WHERE fingerprint = {p1}), \
                 NOT EXISTS (SELECT 1 FROM {t} WHERE {pending})"
            ),
            name_of: format!("SELECT name FROM {t} WHERE id = {id}"),
            known_set: format!("SELECT 1 FROM {fp} WHERE fingerprint = {p1}"),
            insert: format!(
                "INSERT INTO {t} (id, name, description, executed, attempts) \
                 VALUES ({id}, {p2}, {p3}, {not_executed}, 0) ON CONFLICT (id) DO NOTHING"
            ),
            insert_fingerprint: format!(
                "INSERT INTO {fp} (fingerprint, registered_at) VALUES ({p1}, {p2}) \
                 ON CONFLICT (fingerprint) DO NOTHING"
            ),
            claim_success: format!("UPDATE {t} SET {success} WHERE id = {id} AND {pending}"),
            claim_last_batch: format!(
                "UPDATE {t} SET {success} WHERE id = {id} AND {pending} \
                 AND checkpoint {same} {p3}"
            ),
            claim_batch: format!(
                "UPDATE {t} SET checkpoint = {p2} WHERE id = {id} AND {pending} \
                 AND checkpoint {same} {p3}"
            ),
            state: format!("SELECT executed, checkpoint FROM {t} WHERE id = {id}"),
            table: t.to_owned(),
            fingerprints: fp.to_owned(),
        }
    }

    /// The statement for `change` (1 id, 2 the value: now, the error or the
    /// checkpoint; `MarkPending` takes only the id).
    pub fn update(&self, change: &super::RowChange<'_>) -> &str {
        use super::RowChange::*;
        match change {
            MarkExecuted => &self.mark_executed,
            MarkPending => &self.mark_pending,
            RecordSuccess => &self.record_success,
            RecordFailure(_) => &self.record_failure,
            SaveCheckpoint(_) => &self.save_checkpoint,
        }
    }

    /// The message of an [`AtomicError::Superseded`](super::AtomicError::Superseded)
    /// for a claim that changed no row, given what [`state`](Self::state)
    /// read: `executed` and the checkpoint, and the checkpoint the batch
    /// started from (`None` for a single atomic transaction).
    pub fn superseded(executed: bool, found: Option<&str>, from: Option<&str>) -> String {
        if executed {
            "another run completed it meanwhile; this run's changes were rolled back".to_owned()
        } else {
            format!(
                "another run moved its checkpoint from {from:?} to {found:?} meanwhile; \
                 this run's changes were rolled back"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_differ_only_in_parameters_and_booleans() {
        let lite = Statements::new(Dialect::Sqlite, "\"m\"", "\"m_fingerprints\"");
        let pg = Statements::new(Dialect::Postgres, "\"public\".\"m\"", "\"public\".\"m_fp\"");
        assert_eq!(
            lite.claim_batch,
            "UPDATE \"m\" SET checkpoint = ?2 WHERE id = ?1 AND executed = 0 \
             AND checkpoint IS ?3"
        );
        assert!(
            pg.claim_success
                .ends_with("WHERE id = $1::BIGINT AND NOT executed")
        );
        assert!(pg.set_state.contains("fingerprint = $1"));
    }
}
