//! `prepare`: create the tracking table, or check and upgrade an existing
//! one in place (the original four-column table included), and
//! `plan_prepare`, which says what `prepare` would do without doing it.
//!
//! The compatibility check is core's ([`plan_table`]), the same on every
//! backend: an existing table gains waymark's missing columns and nothing
//! else; a table that cannot work, or rows whose state would be a guess,
//! are refused before anything changes.

use rusqlite::{Connection, OptionalExtension};
use waymark_core::store::{
    AddedColumn, AmbiguousRows, AmbiguousRowsRefused, FoundColumn, FoundTable, NullExecuted,
    PreparePlan, TableChange, TypeClass, plan_table,
};
use waymark_core::{Error, IncompatibleTable, MAX_NAME_CHARS, MigrationId};

use crate::config::Location;
use crate::open::use_wal;
use crate::sql;
use crate::target::Target;
use crate::timestamp;

/// What `prepare` would do: the plan, and either the statements or why it
/// refuses (nothing changed).
struct Assessed {
    plan: PreparePlan,
    steps: Result<Vec<String>, Error>,
}

/// Creates or upgrades the tables. Looks first without a write lock: a
/// prepared database needs nothing, which keeps `prepare` cheap at start-up
/// and possible on a read-only database. When something is missing it
/// looks again under `BEGIN IMMEDIATE`, so two processes preparing at once
/// serialise and the second finds nothing left to do.
pub(crate) fn prepare(conn: &mut Connection, target: &Target) -> Result<(), Error> {
    if assess(conn, target)?.steps?.is_empty() {
        return Ok(());
    }
    // A database made for waymark gets WAL, so readers never wait for a
    // writer; an application's existing database keeps the journal mode it
    // chose (switching it would outlive waymark).
    if matches!(target.site.location, Location::File(_)) && is_empty(conn, target)? {
        use_wal(conn, &target.site, target.site.busy_timeout)?;
    }
    sql::write(conn, target, "preparing the tracking table", |tx| {
        let steps = assess(tx, target)?.steps?;
        for step in &steps {
            tx.execute_batch(step).map_err(
                target
                    .site
                    .err(format_args!("preparing the tracking table ({step})")),
            )?;
        }
        if !steps.is_empty() {
            tracing::info!(table = %target.name, location = %target.site.location, ?steps, "prepared the migration table");
        }
        Ok(())
    })
}

/// What `prepare` would do, without changing anything.
pub(crate) fn plan_prepare(conn: &Connection, target: &Target) -> Result<PreparePlan, Error> {
    let assessed = assess(conn, target)?;
    let mut plan = assessed.plan;
    if let Err(refused) = assessed.steps {
        let chain = waymark_core::error_chain(&refused);
        plan.refusal = Some(chain);
    }
    Ok(plan)
}

/// Whether the database holds no table, index or view at all.
fn is_empty(conn: &Connection, target: &Target) -> Result<bool, Error> {
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master)",
        [],
        |row| row.get(0),
    )
    .map_err(target.site.err("inspecting the database"))
}

/// Looks at the database and decides. Fails only when it cannot look.
fn assess(conn: &Connection, target: &Target) -> Result<Assessed, Error> {
    let doing = "inspecting the tracking table";
    let err = |e| target.site.error(doing, e);
    let mut plan = PreparePlan::new(target.describe());
    let mut steps = Vec::new();
    let mut refusal: Option<Error> = None;
    let index_missing = schema_type(conn, &target.pending_index_name())
        .map_err(err)?
        .is_none();
    let fingerprints_missing = schema_type(conn, &target.fingerprints_name())
        .map_err(err)?
        .is_none();
    match schema_type(conn, &target.name).map_err(err)? {
        None => {
            plan.create = true;
            let others = other_tracking_tables(conn, target)?;
            if !others.is_empty() && !target.allow_second_table {
                refusal = Some(second_table(target, &others));
            }
            steps.push(create_table(target));
        }
        Some(kind) if kind != "table" => {
            refusal = Some(incompatible(
                target,
                IncompatibleTable::new(
                    target.name.clone(),
                    None,
                    format!("is a {kind}, not a table"),
                ),
            ));
        }
        Some(_) => {
            let shape = inspect(conn, target)?;
            match plan_table(&shape, true) {
                Err(refused) => refusal = Some(incompatible(target, refused)),
                // A table already prepared needs nothing: its rows are not
                // scanned at every start-up. Rows are read only once the
                // columns are known to be right.
                Ok(changes) if changes.is_empty() && !index_missing && !fingerprints_missing => {}
                Ok(changes) => match ambiguous_rows(conn, target, &shape)? {
                    Err(refused) => refusal = Some(incompatible(target, refused)),
                    Ok(ambiguous) => {
                        let found = Found { ambiguous };
                        for change in &changes {
                            let TableChange::Add(column) = change else {
                                continue;
                            };
                            steps.push(add_column(target, *column));
                        }
                        plan.changes = changes;
                        plan.ambiguous = found.ambiguous.clone();
                        if found.ambiguous.needs_choice(&target.adoption) {
                            refusal = Some(Error::store(
                                format!("preparing the tracking table in {}", target.site.location),
                                AmbiguousRowsRefused {
                                    table: target.name.clone(),
                                    rows: found.ambiguous.clone(),
                                },
                            ));
                        } else {
                            steps.extend(resolve(target, &found.ambiguous));
                        }
                    }
                },
            }
        }
    }
    if index_missing {
        plan.side_objects
            .push(format!("index {}", target.pending_index_name()));
        steps.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (id) WHERE executed = 0",
            target.pending_index_sql,
            target.table_sql()
        ));
    }
    if fingerprints_missing {
        plan.side_objects
            .push(format!("table {}", target.fingerprints_name()));
        steps.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (fingerprint TEXT PRIMARY KEY NOT NULL, \
             registered_at TEXT NOT NULL) WITHOUT ROWID",
            target.fingerprints_sql()
        ));
    }
    Ok(Assessed {
        plan,
        steps: match refusal {
            Some(refused) => Err(refused),
            None => Ok(steps),
        },
    })
}

fn create_table(target: &Target) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\
         id INTEGER PRIMARY KEY, \
         name TEXT NOT NULL, \
         description TEXT NOT NULL DEFAULT '', \
         executed INTEGER NOT NULL DEFAULT 0 CHECK (executed IN (0, 1)), \
         executed_at TEXT, \
         attempts INTEGER NOT NULL DEFAULT 0, \
         last_error TEXT, \
         checkpoint TEXT)",
        target.table_sql()
    )
}

fn add_column(target: &Target, column: AddedColumn) -> String {
    let definition = match column {
        AddedColumn::Description => "TEXT NOT NULL DEFAULT ''",
        AddedColumn::Attempts => "INTEGER NOT NULL DEFAULT 0",
        _ => "TEXT",
    };
    format!(
        "ALTER TABLE {} ADD COLUMN {} {definition}",
        target.table_sql(),
        column.name()
    )
}

/// The row changes the explicit choices ask for.
fn resolve(target: &Target, rows: &AmbiguousRows) -> Vec<String> {
    let t = target.table_sql();
    let mut steps = Vec::new();
    if let Some(choice) = target.adoption.null_executed
        && !rows.null_executed.is_empty()
    {
        let value = match choice {
            NullExecuted::Executed => 1,
            _ => 0,
        };
        steps.push(format!(
            "UPDATE {t} SET executed = {value} WHERE executed IS NULL"
        ));
    }
    if target.adoption.legacy_timestamps_are_utc {
        for (id, text) in &rows.legacy_timestamps {
            // Our own formatting of a parsed time: digits and separators only.
            if let Ok(at) = timestamp::parse(text) {
                steps.push(format!(
                    "UPDATE {t} SET executed_at = '{}' WHERE id = {}",
                    timestamp::format(at),
                    id.get()
                ));
            }
        }
    }
    steps
}

/// `table`, `view`, `index`… for a name in `sqlite_master` (names are
/// case-insensitive in SQLite), or `None`.
fn schema_type(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT type FROM sqlite_master WHERE name = ?1 COLLATE NOCASE",
        [name],
        |row| row.get(0),
    )
    .optional()
}

/// The ambiguous rows of an existing table that passed core's check.
struct Found {
    ambiguous: AmbiguousRows,
}

fn inspect(conn: &Connection, target: &Target) -> Result<FoundTable, Error> {
    let err = target.site.err("inspecting the tracking table's columns");
    let columns = columns(conn, &target.name).map_err(err)?;
    let keys = columns.iter().filter(|c| c.primary_key > 0).count();
    let id_key = columns
        .iter()
        .any(|c| c.found.name.eq_ignore_ascii_case("id") && c.primary_key == 1 && keys == 1);
    let id_unique = id_key || unique_id_index(conn, target)?;
    Ok(FoundTable {
        table: target.name.clone(),
        columns: columns.into_iter().map(|c| c.found).collect(),
        id_unique,
    })
}

/// One row of `pragma_table_info`, as core's description plus its key rank.
struct Existing {
    found: FoundColumn,
    primary_key: i64,
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Existing>> {
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)",
    )?;
    let rows = stmt.query_map([table], |row| {
        let name: String = row.get(0)?;
        let declared: String = row.get(1)?;
        let mut found = FoundColumn::new(name.to_ascii_lowercase(), &*declared, class(&declared));
        if row.get(2)? {
            found = found.not_null();
        }
        if row.get(3)? {
            found = found.with_default();
        }
        Ok(Existing {
            found,
            primary_key: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// Whether a unique index on `id` alone (what `ON CONFLICT (id)` needs)
/// exists besides the primary key.
fn unique_id_index(conn: &Connection, target: &Target) -> Result<bool, Error> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) AS l \
         WHERE l.\"unique\" AND l.partial = 0 \
           AND (SELECT count(*) FROM pragma_index_info(l.name)) = 1 \
           AND (SELECT name FROM pragma_index_info(l.name)) = 'id' COLLATE NOCASE)",
        [&target.name],
        |row| row.get(0),
    )
    .map_err(target.site.err("inspecting the tracking table's indexes"))
}

/// Rows whose state a silent conversion would guess, and names no
/// definition can match; the refusal of `executed_at` values that are no
/// time at all (no choice makes those readable).
fn ambiguous_rows(
    conn: &Connection,
    target: &Target,
    shape: &FoundTable,
) -> Result<Result<AmbiguousRows, IncompatibleTable>, Error> {
    let t = target.table_sql();
    let err = |e| target.site.error("inspecting the tracking table's rows", e);
    let has = |name: &str| shape.column(name).is_some();
    let ids = |sql: &str| -> Result<Vec<MigrationId>, Error> {
        let mut stmt = conn.prepare(sql).map_err(err)?;
        let ids = stmt
            .query_map([], |row| row.get::<_, i64>(0))
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(ids
            .into_iter()
            .filter_map(|id| MigrationId::new(id).ok())
            .collect())
    };
    let mut rows = AmbiguousRows {
        null_executed: ids(&format!(
            "SELECT id FROM {t} WHERE executed IS NULL ORDER BY id"
        ))?,
        long_names: ids(&format!(
            "SELECT id FROM {t} WHERE length(name) > {MAX_NAME_CHARS} ORDER BY id"
        ))?,
        ..AmbiguousRows::default()
    };
    if has("executed_at") {
        let mut unreadable = ids(&format!(
            "SELECT id FROM {t} WHERE typeof(executed_at) NOT IN ('text', 'null') ORDER BY id"
        ))?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, executed_at FROM {t} WHERE typeof(executed_at) = 'text' ORDER BY id"
            ))
            .map_err(err)?;
        let found = stmt
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        for (id, text) in found {
            let Ok(id) = MigrationId::new(id) else {
                continue;
            };
            if timestamp::is_rfc3339(&text) {
                continue;
            }
            if timestamp::parse(&text).is_ok() {
                rows.legacy_timestamps.push((id, text));
            } else {
                unreadable.push(id);
            }
        }
        if !unreadable.is_empty() {
            unreadable.sort();
            let list: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
            return Ok(Err(IncompatibleTable::new(
                target.name.clone(),
                Some("executed_at"),
                format!(
                    "holds values that are not a time (RFC 3339 or 'YYYY-MM-DD HH:MM:SS') for \
                     {}; fix or clear them (NULL), then prepare again",
                    list.join(", ")
                ),
            )));
        }
    }
    Ok(Ok(rows))
}

/// Other tables of the database shaped like a tracking table (`id`,
/// `name`, `executed`), besides waymark's own side tables.
fn other_tracking_tables(conn: &Connection, target: &Target) -> Result<Vec<String>, Error> {
    let err = |e| target.site.error("looking for other tracking tables", e);
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name <> ?1 COLLATE NOCASE ORDER BY name",
        )
        .map_err(err)?;
    let tables = stmt
        .query_map([&target.name], |row| row.get::<_, String>(0))
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(err)?;
    let mut tracking = Vec::new();
    for table in tables {
        let names: Vec<String> = columns(conn, &table)
            .map_err(err)?
            .into_iter()
            .map(|c| c.found.name)
            .collect();
        if ["id", "name", "executed"]
            .iter()
            .all(|wanted| names.iter().any(|n| n == wanted))
        {
            tracking.push(table);
        }
    }
    Ok(tracking)
}

fn second_table(target: &Target, others: &[String]) -> Error {
    Error::store_message(
        format!("preparing the tracking table in {}", target.site.location),
        format!(
            "the database already holds the tracking table {:?}, and {:?} does not exist: \
             creating it would start from nothing and run every migration again; configure \
             the table {:?}, or allow a second table (SqliteConfig::allow_second_table); \
             nothing was changed",
            others[0], target.name, others[0]
        ),
    )
}

fn incompatible(target: &Target, refused: IncompatibleTable) -> Error {
    Error::store(
        format!("preparing the tracking table in {}", target.site.location),
        refused,
    )
}

/// What a declared type holds, by SQLite's affinity rules
/// (<https://sqlite.org/datatype3.html#determination_of_column_affinity>):
/// INTEGER affinity is an integer, NUMERIC (`BOOLEAN`) a flag, TEXT and no
/// type at all text, REAL anything else.
fn class(declared: &str) -> TypeClass {
    let upper = declared.to_ascii_uppercase();
    if upper.contains("INT") {
        TypeClass::Integer
    } else if ["CHAR", "CLOB", "TEXT", "BLOB"]
        .iter()
        .any(|t| upper.contains(t))
        || upper.trim().is_empty()
    {
        TypeClass::Text
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) {
        TypeClass::Other
    } else if upper.contains("DATE") || upper.contains("TIME") {
        // NUMERIC affinity by the rules, but what SQLAlchemy's DateTime
        // declares: SQLite keeps the text it is given.
        TypeClass::Text
    } else {
        TypeClass::Boolean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_sqlite_affinity() {
        assert_eq!(class("INTEGER"), TypeClass::Integer);
        assert_eq!(class("bigint"), TypeClass::Integer);
        assert_eq!(class("VARCHAR(250)"), TypeClass::Text);
        assert_eq!(class("BOOLEAN"), TypeClass::Boolean);
        assert_eq!(class(""), TypeClass::Text);
        assert_eq!(class("DOUBLE"), TypeClass::Other);
        assert_eq!(class("DATETIME"), TypeClass::Text);
        // "POINT" contains "INT": SQLite's rules, not English.
        assert_eq!(class("FLOATING POINT"), TypeClass::Integer);
    }
}
