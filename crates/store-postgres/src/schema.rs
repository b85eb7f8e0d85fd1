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
use waymark_core::store::{
    AddedColumn, AdoptionChoices, AmbiguousRows, AmbiguousRowsRefused, FoundColumn, FoundTable,
    NullExecuted, PreparePlan, TableChange, TypeClass, plan_table,
};
use waymark_core::{Error, IncompatibleTable, MigrationId};

use crate::error::Failure;
use crate::lock::PREPARE_KEY;
use crate::sql::PgStatements as Statements;

/// Column comments of a table waymark creates. An adopted table keeps the
/// application's own comments: waymark never comments what it did not create.
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
    columns: Vec<FoundColumn>,
    /// Ids of rows whose `executed` is NULL (read only when it allows NULL).
    null_executed: Vec<MigrationId>,
    /// Ids of rows whose name is longer than a definition allows.
    long_names: Vec<MigrationId>,
    /// Other tracking tables of the database, `schema.table` (looked for
    /// only when the table does not exist).
    others: Vec<String>,
}

impl Found {
    fn shape(&self, sql: &Statements) -> FoundTable {
        FoundTable {
            table: sql.display.clone(),
            columns: self.columns.clone(),
            id_unique: self.id_unique,
        }
    }

    fn column(&self, name: &str) -> Option<&FoundColumn> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// Nothing left to do: the steady state of every start but the first.
    fn complete(&self, sql: &Statements) -> bool {
        self.table
            && self.fingerprints
            && self.pending_index
            && self.null_executed.is_empty()
            && plan_table(&self.shape(sql), false).is_ok_and(|changes| changes.is_empty())
            && executed_is_boolean(self, &sql.display).is_ok()
    }
}

/// What the catalog's type name holds, as far as waymark cares. A
/// `timestamp without time zone` is not a point in time: refused.
fn class(declared: &str) -> TypeClass {
    match declared {
        "smallint" | "integer" | "bigint" => TypeClass::Integer,
        "boolean" => TypeClass::Boolean,
        "text" => TypeClass::Text,
        "timestamp with time zone" => TypeClass::Timestamp,
        other if other.starts_with("character varying") || other.starts_with("character(") => {
            TypeClass::Text
        }
        _ => TypeClass::Other,
    }
}

/// PostgreSQL's `NOT executed` needs a boolean (SQLite's 0/1 integers are
/// fine there, not here).
fn executed_is_boolean(found: &Found, table: &str) -> Result<(), IncompatibleTable> {
    match found.column("executed") {
        Some(column) if column.class != TypeClass::Boolean => Err(IncompatibleTable::new(
            table,
            Some("executed"),
            format!(
                "is declared {:?}; waymark needs a boolean type on PostgreSQL \
                 (rename the column, or configure another table name)",
                column.declared
            ),
        )),
        _ => Ok(()),
    }
}

/// Brings the table up to date inside `tx` (which the caller commits), or
/// refuses before changing anything.
pub(crate) async fn prepare(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &Statements,
    choices: &AdoptionChoices,
    allow_second_table: bool,
) -> Result<(), Failure> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PREPARE_KEY])
        .await?;
    let found = inspect(tx, schema, sql).await?;
    if found.complete(sql) {
        return Ok(());
    }
    let ddl = ddl(&found, schema, sql, choices, allow_second_table)?;
    tx.batch_execute(&ddl.join(";\n")).await?;
    if !ddl.is_empty() {
        tracing::info!(table = %sql.display, steps = ddl.len(), "prepared the migration table");
    }
    Ok(())
}

/// What [`prepare`] would do, read without changing anything.
pub(crate) async fn plan<C: GenericClient>(
    client: &C,
    schema: &str,
    sql: &Statements,
    choices: &AdoptionChoices,
    allow_second_table: bool,
) -> Result<PreparePlan, tokio_postgres::Error> {
    let found = inspect(client, schema, sql).await?;
    let mut plan = PreparePlan::new(sql.display.clone());
    plan.create = !found.table;
    plan.ambiguous = AmbiguousRows {
        null_executed: found.null_executed.clone(),
        legacy_timestamps: Vec::new(),
        long_names: found.long_names.clone(),
    };
    if found.table {
        match adoption(&found, sql) {
            Ok(changes) => plan.changes = changes,
            Err(refused) => plan.refusal = Some(refused.to_string()),
        }
        if plan.refusal.is_none() && plan.ambiguous.needs_choice(choices) {
            plan.refusal = Some(
                AmbiguousRowsRefused {
                    table: sql.display.clone(),
                    rows: plan.ambiguous.clone(),
                }
                .to_string(),
            );
        }
    }
    if !found.table && !found.others.is_empty() && !allow_second_table {
        plan.refusal = Some(waymark_core::error_chain(&second_table(sql, &found.others)));
    }
    if !found.schema {
        plan.side_objects.push(format!("schema {schema}"));
    }
    if !found.fingerprints {
        plan.side_objects
            .push(format!("table {}_fingerprints", sql.display));
    }
    if !found.pending_index {
        plan.side_objects
            .push(format!("index {}", sql.pending_index.trim_matches('"')));
    }
    Ok(plan)
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
    Ok(inspect(client, schema, sql).await?.complete(sql))
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
        ..Found::default()
    };
    if !found.table {
        let statement = tx
            .prepare_cached(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_%' \
                   AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid \
                        AND a.attnum > 0 AND NOT a.attisdropped \
                        AND a.attname IN ('id', 'name', 'executed')) = 3 \
                 ORDER BY c.relname = $1 DESC, 1 LIMIT 5",
            )
            .await?;
        let table = sql
            .display
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        found.others = tx
            .query(&statement, &[&table])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        return Ok(found);
    }
    let statement = tx
        .prepare_cached(
            "SELECT attname::TEXT, format_type(atttypid, atttypmod), attnotnull, atthasdef \
             FROM pg_attribute \
             WHERE attrelid = to_regclass($1::TEXT) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
        )
        .await?;
    found.columns = tx
        .query(&statement, &[&sql.table])
        .await?
        .iter()
        .map(|row| {
            let declared: String = row.get(1);
            let mut column =
                FoundColumn::new(row.get::<_, String>(0), &*declared, class(&declared));
            if row.get(2) {
                column = column.not_null();
            }
            if row.get(3) {
                column = column.with_default();
            }
            column
        })
        .collect();
    // A table already prepared needs nothing: its rows are not scanned at
    // every start-up.
    if found.fingerprints
        && found.pending_index
        && plan_table(&found.shape(sql), false).is_ok_and(|changes| changes.is_empty())
    {
        return Ok(found);
    }
    let readable_id = found
        .column("id")
        .is_some_and(|column| column.class == TypeClass::Integer);
    let nullable_flag = found
        .column("executed")
        .is_some_and(|column| column.class == TypeClass::Boolean && !column.not_null);
    if readable_id && nullable_flag {
        let nulls = format!(
            "SELECT id::BIGINT FROM {} WHERE executed IS NULL ORDER BY id",
            sql.table
        );
        found.null_executed = ids(tx.query(&nulls, &[]).await?);
    }
    if readable_id
        && found
            .column("name")
            .is_some_and(|c| c.class == TypeClass::Text)
    {
        let long = format!(
            "SELECT id::BIGINT FROM {} WHERE char_length(name) > {} ORDER BY id",
            sql.table,
            waymark_core::MAX_NAME_CHARS
        );
        found.long_names = ids(tx.query(&long, &[]).await?);
    }
    Ok(found)
}

fn ids(rows: Vec<tokio_postgres::Row>) -> Vec<MigrationId> {
    rows.iter()
        .filter_map(|row| MigrationId::new(row.get(0)).ok())
        .collect()
}

/// What an existing table needs, or why it cannot be adopted.
fn adoption(found: &Found, sql: &Statements) -> Result<Vec<TableChange>, IncompatibleTable> {
    let shape = found.shape(sql);
    let changes = plan_table(&shape, false)?;
    executed_is_boolean(found, &sql.display)?;
    Ok(changes)
}

/// Why `prepare` does not create the table beside another tracking table.
fn second_table(sql: &Statements, others: &[String]) -> Error {
    Error::store_message(
        format!("preparing the tracking table {}", sql.display),
        format!(
            "{} does not exist, but the database holds the tracking table {}: creating a \
             new one would start from nothing and run every migration again; configure \
             that schema and table, or allow a second table \
             (PostgresConfig::allow_second_table); nothing was changed",
            sql.display,
            others.join(", ")
        ),
    )
}

/// The statements that bring what was found up to date. Refuses before
/// anything runs: an incompatible table, rows whose state would be a guess.
fn ddl(
    found: &Found,
    schema: &str,
    sql: &Statements,
    choices: &AdoptionChoices,
    allow_second_table: bool,
) -> Result<Vec<String>, Error> {
    let t = &sql.table;
    let refuse = |source: Box<dyn std::error::Error + Send + Sync>| {
        Error::store(
            format!("preparing the tracking table {}", sql.display),
            source,
        )
    };
    let mut ddl = Vec::new();
    if found.table {
        let changes = adoption(found, sql).map_err(|refused| refuse(refused.into()))?;
        let ambiguous = AmbiguousRows {
            null_executed: found.null_executed.clone(),
            ..AmbiguousRows::default()
        };
        if ambiguous.needs_choice(choices) {
            return Err(refuse(
                AmbiguousRowsRefused {
                    table: sql.display.clone(),
                    rows: ambiguous,
                }
                .into(),
            ));
        }
        for change in changes {
            let TableChange::Add(column) = change else {
                continue;
            };
            let definition = match column {
                AddedColumn::Description => "TEXT NOT NULL DEFAULT ''",
                AddedColumn::ExecutedAt => "TIMESTAMPTZ",
                AddedColumn::Attempts => "INTEGER NOT NULL DEFAULT 0",
                _ => "TEXT",
            };
            ddl.push(format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {definition}",
                column.name()
            ));
        }
        if !found.null_executed.is_empty() {
            let value = match choices.null_executed {
                Some(NullExecuted::Executed) => "TRUE",
                _ => "FALSE",
            };
            ddl.push(format!(
                "UPDATE {t} SET executed = {value} WHERE executed IS NULL"
            ));
        }
    } else {
        if !found.others.is_empty() && !allow_second_table {
            return Err(second_table(sql, &found.others));
        }
        if !found.schema {
            ddl.push(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
        }
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
        ddl.push(format!(
            "COMMENT ON TABLE {t} IS 'One-time data migrations tracked by waymark'"
        ));
        for (column, comment) in COMMENTS {
            ddl.push(format!("COMMENT ON COLUMN {t}.{column} IS '{comment}'"));
        }
    }
    if !found.fingerprints {
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
    }
    if !found.pending_index {
        ddl.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE NOT executed",
            sql.pending_index
        ));
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
                FoundColumn::new("id", "integer", TypeClass::Integer).not_null(),
                FoundColumn::new(
                    "name",
                    "character varying(250)",
                    class("character varying(250)"),
                ),
                FoundColumn::new(
                    "description",
                    "character varying(2500)",
                    class("character varying(2500)"),
                ),
                FoundColumn::new("executed", "boolean", TypeClass::Boolean),
            ],
            id_unique: true,
            ..Found::default()
        }
    }

    #[test]
    fn the_original_table_gains_columns_and_nothing_else() {
        let sql = Statements::new("public", "migrations");
        let ddl = ddl(&original(), "public", &sql, &AdoptionChoices::new(), false)
            .unwrap()
            .join(";\n");
        for expected in [
            "ADD COLUMN IF NOT EXISTS executed_at TIMESTAMPTZ",
            "ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0",
            "ADD COLUMN IF NOT EXISTS checkpoint TEXT",
            "CREATE INDEX IF NOT EXISTS \"migrations_pending_idx\"",
        ] {
            assert!(ddl.contains(expected), "{expected} missing from\n{ddl}");
        }
        for never in [
            "ALTER COLUMN",
            "COMMENT ON COLUMN",
            "ADD PRIMARY KEY",
            "CREATE TABLE IF NOT EXISTS \"public\".\"migrations\" (",
        ] {
            assert!(!ddl.contains(never), "{never} in\n{ddl}");
        }
    }

    #[test]
    fn null_executed_rows_need_a_choice() {
        let sql = Statements::new("public", "migrations");
        let mut found = original();
        found.null_executed = vec![MigrationId::new(3).unwrap()];
        let err = ddl(&found, "public", &sql, &AdoptionChoices::new(), false).unwrap_err();
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<AmbiguousRowsRefused>())
            .expect("an AmbiguousRowsRefused source");
        assert_eq!(source.rows.null_executed, [MigrationId::new(3).unwrap()]);
        let chosen = AdoptionChoices::new().null_executed(NullExecuted::Executed);
        let ddl = ddl(&found, "public", &sql, &chosen, false)
            .unwrap()
            .join(";\n");
        assert!(
            ddl.contains("SET executed = TRUE WHERE executed IS NULL"),
            "{ddl}"
        );
    }

    #[test]
    fn a_foreign_table_is_refused() {
        let sql = Statements::new("public", "migrations");
        let mut found = original();
        found.columns.retain(|column| column.name != "executed");
        let err = ddl(&found, "public", &sql, &AdoptionChoices::new(), false).unwrap_err();
        assert!(
            matches!(&err, Error::Store { .. } if waymark_core::error_chain(&err).contains("column \"executed\"")),
            "{err:?}"
        );
        for (column, declared) in [("id", "uuid"), ("executed", "integer")] {
            let mut found = original();
            let at = found.columns.iter().position(|c| c.name == column).unwrap();
            found.columns[at] = FoundColumn::new(column, declared, class(declared));
            let err = ddl(&found, "public", &sql, &AdoptionChoices::new(), false).unwrap_err();
            let source = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<IncompatibleTable>())
                .expect("an IncompatibleTable source");
            assert_eq!(source.column.as_deref(), Some(column));
        }
        let mut found = original();
        found
            .columns
            .push(FoundColumn::new("attempts", "text", TypeClass::Text));
        assert!(ddl(&found, "public", &sql, &AdoptionChoices::new(), false).is_err());
        let mut found = original();
        found
            .columns
            .push(FoundColumn::new("owner_id", "integer", TypeClass::Integer).not_null());
        assert!(ddl(&found, "public", &sql, &AdoptionChoices::new(), false).is_err());
        let mut found = original();
        found.id_unique = false;
        assert!(ddl(&found, "public", &sql, &AdoptionChoices::new(), false).is_err());
    }

    #[test]
    fn a_complete_table_needs_nothing() {
        let sql = Statements::new("public", "migrations");
        let mut found = original();
        for (name, declared) in [
            ("executed_at", "timestamp with time zone"),
            ("attempts", "integer"),
            ("last_error", "text"),
            ("checkpoint", "text"),
        ] {
            found
                .columns
                .push(FoundColumn::new(name, declared, class(declared)));
        }
        assert!(!found.complete(&sql));
        found.fingerprints = true;
        found.pending_index = true;
        assert!(found.complete(&sql));
        assert_eq!(class("timestamp without time zone"), TypeClass::Other);
    }
}
