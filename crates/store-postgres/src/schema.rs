//! `prepare`: create the tracking table, or bring an existing one (the
//! original four columns included) up to date in place.
//!
//! Every caller takes one transaction-scoped advisory lock first, so any
//! number of processes may prepare at the same moment: they take turns, and
//! the ones after the first find everything in place and change nothing. The
//! catalog is inspected before any DDL because `ALTER TABLE` takes an
//! exclusive lock even when it has nothing to do.
//!
//! Names and descriptions are `TEXT`: their limits (in characters) are
//! [`MigrationDef`](waymark_core::MigrationDef)'s, enforced in Rust. A
//! `VARCHAR(n)` counts bytes on a `SQL_ASCII` database, where it would
//! refuse a valid name of non-ASCII characters. An adopted table keeps its
//! own column types.

use deadpool_postgres::{GenericClient, Transaction};
use waymark_core::{Error, IncompatibleTable};

use crate::error::Failure;
use crate::lock::PREPARE_KEY;
use crate::sql::PgStatements as Statements;

/// The columns waymark adds to the original four, with their definitions.
const ADDED_COLUMNS: [(&str, &str); 4] = [
    ("executed_at", "TIMESTAMPTZ"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("last_error", "TEXT"),
    ("checkpoint", "TEXT"),
];

/// Column comments, in the spirit of the original table's.
const COMMENTS: [(&str, &str); 8] = [
    (
        "id",
        "Migration identifier; pending migrations run in ascending id order",
    ),
    (
        "name",
        "Migration name (at most 250 characters), fixed once registered",
    ),
    (
        "description",
        "What the migration does (at most 2500 characters)",
    ),
    ("executed", "Whether the migration has been executed"),
    ("executed_at", "When the migration completed (UTC)"),
    (
        "attempts",
        "How many runs ended: the failures plus the success",
    ),
    ("last_error", "Error chain of the last failed run"),
    (
        "checkpoint",
        "Where a resumable migration restarts from; cleared on completion",
    ),
];

/// What the catalog says about the tracking table and its companions.
#[derive(Debug, Default)]
struct Found {
    schema: bool,
    table: bool,
    fingerprints: bool,
    pending_index: bool,
    id_unique: bool,
    /// `(name, type, not null)` of each column of the table.
    columns: Vec<(String, String, bool)>,
}

impl Found {
    fn column(&self, name: &str) -> Option<(&str, bool)> {
        self.columns
            .iter()
            .find(|(column, _, _)| column == name)
            .map(|(_, kind, not_null)| (kind.as_str(), *not_null))
    }

    fn complete(&self) -> bool {
        self.table
            && self.fingerprints
            && self.pending_index
            && self.id_unique
            && self.column("id").is_some_and(|(kind, _)| kind == "bigint")
            && self
                .column("executed")
                .is_some_and(|(_, not_null)| not_null)
            && ["name", "description"]
                .iter()
                .chain(ADDED_COLUMNS.iter().map(|(name, _)| name))
                .all(|name| self.column(name).is_some())
    }
}

/// Brings the table up to date inside `tx` (which the caller commits).
pub(crate) async fn prepare(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &Statements,
) -> Result<(), Failure> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PREPARE_KEY])
        .await?;
    let found = inspect(tx, schema, sql).await?;
    if found.complete() {
        return Ok(());
    }
    let ddl = plan(&found, schema, sql)?;
    tx.batch_execute(&ddl).await?;
    Ok(())
}

/// Whether the table and its companions are complete, read without a
/// transaction or a lock: `prepare`'s steady state. A table another
/// session is creating is not visible until it commits, so "complete" is
/// never premature; anything else goes through [`prepare`].
pub(crate) async fn is_complete(
    client: &deadpool_postgres::Client,
    schema: &str,
    sql: &Statements,
) -> Result<bool, tokio_postgres::Error> {
    Ok(inspect(client, schema, sql).await?.complete())
}

async fn inspect<C: GenericClient>(
    tx: &C,
    schema: &str,
    sql: &Statements,
) -> Result<Found, tokio_postgres::Error> {
    let index = format!("\"{schema}\".{}", sql.pending_index);
    // Cached: every start-up runs this once, through `is_complete`.
    let statement = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                    to_regclass($2::TEXT) IS NOT NULL, \
                    to_regclass($3::TEXT) IS NOT NULL, \
                    to_regclass($4::TEXT) IS NOT NULL, \
                    EXISTS (SELECT 1 FROM pg_index i \
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                            WHERE i.indrelid = to_regclass($2::TEXT) AND i.indisunique \
                              AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = 'id')",
        )
        .await?;
    let row = tx
        .query_one(
            &statement,
            &[&schema, &sql.table, &sql.fingerprints, &index],
        )
        .await?;
    let mut found = Found {
        schema: row.get(0),
        table: row.get(1),
        fingerprints: row.get(2),
        pending_index: row.get(3),
        id_unique: row.get(4),
        columns: Vec::new(),
    };
    if found.table {
        let statement = tx
            .prepare_cached(
                "SELECT attname::TEXT, format_type(atttypid, atttypmod), attnotnull \
                 FROM pg_attribute \
                 WHERE attrelid = to_regclass($1::TEXT) AND attnum > 0 AND NOT attisdropped",
            )
            .await?;
        found.columns = tx
            .query(&statement, &[&sql.table])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
    }
    Ok(found)
}

/// The DDL that brings what was found up to date, as one script.
fn plan(found: &Found, schema: &str, sql: &Statements) -> Result<String, Error> {
    let t = &sql.table;
    let mut ddl = Vec::new();
    if !found.schema {
        ddl.push(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
    }
    if found.table {
        ddl.extend(adopt(found, sql)?);
    } else {
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
               id BIGINT PRIMARY KEY, \
               name TEXT NOT NULL, \
               description TEXT NOT NULL DEFAULT '', \
               executed BOOLEAN NOT NULL DEFAULT FALSE, \
               executed_at TIMESTAMPTZ, \
               attempts INTEGER NOT NULL DEFAULT 0, \
               last_error TEXT, \
               checkpoint TEXT)"
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\
           fingerprint TEXT PRIMARY KEY, \
           registered_at TIMESTAMPTZ NOT NULL)",
        sql.fingerprints
    ));
    ddl.push(format!(
        "COMMENT ON TABLE {} IS 'Sets of migration definitions registered with waymark: \
         a start-up that registers a known set with nothing pending has nothing to do'",
        sql.fingerprints
    ));
    ddl.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE NOT executed",
        sql.pending_index
    ));
    ddl.push(format!(
        "COMMENT ON TABLE {t} IS 'One-time data migrations tracked by waymark'"
    ));
    for (column, comment) in COMMENTS {
        ddl.push(format!("COMMENT ON COLUMN {t}.{column} IS '{comment}'"));
    }
    Ok(ddl.join(";\n"))
}

/// The DDL that upgrades an existing table in place, keeping every row.
/// The error for a table `prepare` refuses, the same type on every backend.
fn incompatible(sql: &Statements, column: Option<&str>, problem: String) -> Error {
    Error::store(
        format!("preparing the tracking table {}", sql.display),
        IncompatibleTable::new(sql.display.clone(), column, problem),
    )
}

/// A table that lacks the original columns is someone else's: refused.
fn adopt(found: &Found, sql: &Statements) -> Result<Vec<String>, Error> {
    let t = &sql.table;
    let missing: Vec<&str> = ["id", "name", "executed"]
        .into_iter()
        .filter(|name| found.column(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(incompatible(
            sql,
            Some(missing[0]),
            format!(
                "is missing: this is not a migrations table (it has no {} column); \
                 configure another table name",
                missing.join(", ")
            ),
        ));
    }
    let mut ddl = Vec::new();
    match found.column("id").map(|(kind, _)| kind) {
        Some("bigint") => {}
        Some("smallint" | "integer") => {
            ddl.push(format!("ALTER TABLE {t} ALTER COLUMN id TYPE BIGINT"));
        }
        Some(other) => {
            return Err(incompatible(
                sql,
                Some("id"),
                format!("is {other}, not an integer; configure another table name"),
            ));
        }
        None => unreachable!("checked above"),
    }
    if !found.id_unique {
        ddl.push(format!("ALTER TABLE {t} ADD PRIMARY KEY (id)"));
    }
    if found.column("description").is_none() {
        ddl.push(format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS description TEXT NOT NULL DEFAULT ''"
        ));
    }
    if found
        .column("executed")
        .is_some_and(|(_, not_null)| !not_null)
    {
        // The original allowed NULL; a row never marked executed is pending.
        ddl.push(format!(
            "UPDATE {t} SET executed = FALSE WHERE executed IS NULL"
        ));
        ddl.push(format!(
            "ALTER TABLE {t} ALTER COLUMN executed SET DEFAULT FALSE, \
             ALTER COLUMN executed SET NOT NULL"
        ));
    }
    for (column, definition) in ADDED_COLUMNS {
        if found.column(column).is_none() {
            ddl.push(format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {column} {definition}"
            ));
        }
    }
    Ok(ddl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Found {
        Found {
            schema: true,
            table: true,
            columns: vec![
                ("id".into(), "integer".into(), true),
                ("name".into(), "character varying(250)".into(), false),
                (
                    "description".into(),
                    "character varying(2500)".into(),
                    false,
                ),
                ("executed".into(), "boolean".into(), false),
            ],
            id_unique: true,
            ..Found::default()
        }
    }

    #[test]
    fn the_original_table_is_upgraded_in_place() {
        let sql = Statements::new("public", "migrations");
        let ddl = plan(&original(), "public", &sql).unwrap();
        assert!(!ddl.contains("CREATE TABLE IF NOT EXISTS \"public\".\"migrations\" ("));
        assert!(!ddl.contains("CREATE SCHEMA"));
        for expected in [
            "ALTER COLUMN id TYPE BIGINT",
            "SET executed = FALSE WHERE executed IS NULL",
            "ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0",
            "ADD COLUMN IF NOT EXISTS checkpoint TEXT",
            "CREATE INDEX IF NOT EXISTS \"migrations_pending_idx\"",
            "COMMENT ON COLUMN \"public\".\"migrations\".executed",
        ] {
            assert!(ddl.contains(expected), "{expected} missing from\n{ddl}");
        }
    }

    #[test]
    fn a_foreign_table_is_refused() {
        let sql = Statements::new("public", "migrations");
        let mut found = original();
        found.columns.retain(|(name, _, _)| name != "executed");
        let err = plan(&found, "public", &sql).unwrap_err();
        assert!(
            matches!(&err, Error::Store { .. } if waymark_core::error_chain(&err).contains("column \"executed\"")),
            "{err:?}"
        );
        let mut found = original();
        found.columns[0].1 = "uuid".into();
        let err = plan(&found, "public", &sql).unwrap_err();
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<IncompatibleTable>())
            .expect("an IncompatibleTable source");
        assert_eq!(source.column.as_deref(), Some("id"));
    }

    #[test]
    fn a_complete_table_needs_nothing() {
        let mut found = original();
        found.columns[0].1 = "bigint".into();
        found.columns[3].2 = true;
        for (name, _) in ADDED_COLUMNS {
            found.columns.push((name.into(), "text".into(), false));
        }
        assert!(!found.complete());
        found.fingerprints = true;
        found.pending_index = true;
        assert!(found.complete());
    }
}
