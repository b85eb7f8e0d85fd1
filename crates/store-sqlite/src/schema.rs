//! `prepare`: create the tracking table, or check and upgrade an existing
//! one in place (the original four-column table included).

use rusqlite::{Connection, OptionalExtension};
use waymark_core::{Error, IncompatibleTable};

use crate::config::Location;
use crate::open::use_wal;
use crate::sql;
use crate::target::Target;

/// Whether the database holds no table, index or view at all.
fn is_empty(conn: &Connection, target: &Target) -> Result<bool, Error> {
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_schema)",
        [],
        |row| row.get(0),
    )
    .map_err(target.site.err("inspecting the database"))
}

/// What a column's declared type must allow, by SQLite's affinity rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// INTEGER affinity: the id.
    Integer,
    /// INTEGER or NUMERIC affinity (`BOOLEAN` is NUMERIC): flags and counts.
    Number,
    /// TEXT affinity, or none (a column declared without a type).
    Text,
}

struct Column {
    name: &'static str,
    kind: Kind,
    /// How to add the column when it is missing; `None` for the original
    /// four, which a table must already have to be adopted.
    add: Option<&'static str>,
}

const COLUMNS: [Column; 8] = [
    Column {
        name: "id",
        kind: Kind::Integer,
        add: None,
    },
    Column {
        name: "name",
        kind: Kind::Text,
        add: None,
    },
    Column {
        name: "description",
        kind: Kind::Text,
        add: None,
    },
    Column {
        name: "executed",
        kind: Kind::Number,
        add: None,
    },
    Column {
        name: "executed_at",
        kind: Kind::Text,
        add: Some("TEXT"),
    },
    Column {
        name: "attempts",
        kind: Kind::Number,
        add: Some("INTEGER NOT NULL DEFAULT 0"),
    },
    Column {
        name: "last_error",
        kind: Kind::Text,
        add: Some("TEXT"),
    },
    Column {
        name: "checkpoint",
        kind: Kind::Text,
        add: Some("TEXT"),
    },
];

/// Creates or upgrades the tables. Looks first without a write lock: a
/// prepared database needs nothing, which keeps `prepare` cheap at start-up
/// and possible on a read-only database. When something is missing it plans
/// again under `BEGIN IMMEDIATE`, so two processes preparing at once
/// serialise and the second finds nothing left to do.
pub(crate) fn prepare(conn: &mut Connection, target: &Target) -> Result<(), Error> {
    if plan(conn, target)?.is_empty() {
        return Ok(());
    }
    // A database made for waymark gets WAL, so readers never wait for a
    // writer; an application's existing database keeps the journal mode it
    // chose (switching it would outlive waymark).
    if matches!(target.site.location, Location::File(_)) && is_empty(conn, target)? {
        use_wal(conn, &target.site, target.site.busy_timeout)?;
    }
    sql::write(conn, target, "preparing the tracking table", |tx| {
        let steps = plan(tx, target)?;
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

/// The statements still needed, in order; empty when the database is ready.
/// Fails with an [`IncompatibleTable`] before anything is changed.
fn plan(conn: &Connection, target: &Target) -> Result<Vec<String>, Error> {
    let doing = "inspecting the tracking table";
    let err = |e| target.site.error(doing, e);
    let mut steps = Vec::new();
    match schema_type(conn, &target.name).map_err(err)? {
        None => steps.push(create_table(target)),
        Some(kind) if kind != "table" => {
            return Err(incompatible(
                target,
                None,
                format!("is a {kind}, not a table"),
            ));
        }
        Some(_) => steps.extend(upgrade(conn, target)?),
    }
    if schema_type(conn, &target.pending_index_name())
        .map_err(err)?
        .is_none()
    {
        steps.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (id) WHERE executed = 0",
            target.pending_index_sql,
            target.table_sql()
        ));
    }
    if schema_type(conn, &target.fingerprints_name())
        .map_err(err)?
        .is_none()
    {
        steps.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (fingerprint TEXT PRIMARY KEY NOT NULL, \
             registered_at TEXT NOT NULL) WITHOUT ROWID",
            target.fingerprints_sql()
        ));
    }
    Ok(steps)
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

/// `table`, `view`, `index`… for a name in `sqlite_schema` (names are
/// case-insensitive in SQLite), or `None`.
fn schema_type(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT type FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE",
        [name],
        |row| row.get(0),
    )
    .optional()
}

/// One row of `pragma_table_info`.
struct Existing {
    name: String,
    declared: String,
    not_null: bool,
    has_default: bool,
    primary_key: i64,
}

/// Checks an existing table's columns and returns what to add.
fn upgrade(conn: &Connection, target: &Target) -> Result<Vec<String>, Error> {
    let existing = columns(conn, &target.name)
        .map_err(target.site.err("inspecting the tracking table's columns"))?;
    let keys = existing.iter().filter(|c| c.primary_key > 0).count();
    let mut steps = Vec::new();
    for column in &COLUMNS {
        let Some(found) = existing
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(column.name))
        else {
            match column.add {
                Some(definition) => steps.push(format!(
                    "ALTER TABLE {} ADD COLUMN {} {definition}",
                    target.table_sql(),
                    column.name
                )),
                None => return Err(incompatible(target, Some(column.name), "is missing".into())),
            }
            continue;
        };
        let affinity = affinity(&found.declared);
        let fits = match column.kind {
            Kind::Integer => affinity == Affinity::Integer,
            Kind::Number => matches!(affinity, Affinity::Integer | Affinity::Numeric),
            Kind::Text => matches!(affinity, Affinity::Text | Affinity::Blob),
        };
        if !fits {
            let wanted = match column.kind {
                Kind::Integer => "an INTEGER type",
                Kind::Number => "an INTEGER or BOOLEAN type",
                Kind::Text => "a TEXT type",
            };
            return Err(incompatible(
                target,
                Some(column.name),
                format!("is declared {:?}; waymark needs {wanted}", found.declared),
            ));
        }
        if column.name == "id" && (found.primary_key != 1 || keys != 1) {
            return Err(incompatible(
                target,
                Some("id"),
                "is not the table's primary key; waymark needs id INTEGER PRIMARY KEY".into(),
            ));
        }
    }
    // Another column the application added is fine, unless waymark's
    // inserts, which do not know it, would violate it.
    if let Some(extra) = existing.iter().find(|c| {
        c.not_null
            && !c.has_default
            && c.primary_key == 0
            && !COLUMNS
                .iter()
                .any(|known| c.name.eq_ignore_ascii_case(known.name))
    }) {
        return Err(incompatible(
            target,
            Some(&extra.name),
            "is NOT NULL without a default, so waymark could not insert rows".into(),
        ));
    }
    // The original column may allow NULL; NULL never meant "executed", and
    // the pending query (and its index) look for 0.
    let executed = existing
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case("executed"));
    if executed.is_some_and(|c| !c.not_null) {
        let nulls = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE executed IS NULL)",
            target.table_sql()
        );
        let any: bool = conn
            .query_row(&nulls, [], |row| row.get(0))
            .map_err(target.site.err("inspecting the tracking table"))?;
        if any {
            steps.push(format!(
                "UPDATE {} SET executed = 0 WHERE executed IS NULL",
                target.table_sql()
            ));
        }
    }
    Ok(steps)
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Existing>> {
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)",
    )?;
    let rows = stmt.query_map([table], |row| {
        Ok(Existing {
            name: row.get(0)?,
            declared: row.get(1)?,
            not_null: row.get(2)?,
            has_default: row.get(3)?,
            primary_key: row.get(4)?,
        })
    })?;
    rows.collect()
}

fn incompatible(target: &Target, column: Option<&str>, problem: String) -> Error {
    Error::store(
        format!("preparing the tracking table in {}", target.site.location),
        IncompatibleTable::new(target.name.clone(), column, problem),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

/// SQLite's rules for a declared type's affinity, in SQLite's order
/// (<https://sqlite.org/datatype3.html#determination_of_column_affinity>).
fn affinity(declared: &str) -> Affinity {
    let upper = declared.to_ascii_uppercase();
    if upper.contains("INT") {
        Affinity::Integer
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
        Affinity::Text
    } else if upper.contains("BLOB") || upper.trim().is_empty() {
        Affinity::Blob
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlite() {
        assert_eq!(affinity("INTEGER"), Affinity::Integer);
        assert_eq!(affinity("bigint"), Affinity::Integer);
        assert_eq!(affinity("VARCHAR(250)"), Affinity::Text);
        assert_eq!(affinity("BOOLEAN"), Affinity::Numeric);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE"), Affinity::Real);
        // "POINT" contains "INT": SQLite's rules, not English.
        assert_eq!(affinity("FLOATING POINT"), Affinity::Integer);
    }
}
