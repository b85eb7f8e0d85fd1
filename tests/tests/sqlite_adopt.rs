//! `prepare` on existing databases: the original four-column table is
//! adopted in place, and processes preparing at once do not trip each other.

use std::path::Path;
use std::time::Duration;

use waymark_core::store::{AdoptionChoices, NullExecuted};
use waymark_core::{Error, MigrationDef, MigrationId, MigrationStore};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{Helper, db_path, fresh_store, journal_mode, raw};

const HELPER: &str = env!("CARGO_BIN_EXE_sqlite_helper");

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

/// The table the original Python service created, with its data.
const ORIGINAL: &str = "
    CREATE TABLE migrations (
        id INTEGER NOT NULL PRIMARY KEY,
        name VARCHAR(250) NOT NULL,
        description VARCHAR(2500),
        executed BOOLEAN NOT NULL DEFAULT 0
    );
    INSERT INTO migrations (id, name, description, executed) VALUES
        (1, 'prefix_paths', 'Prefix stream file paths', 1),
        (2, 'dedupe_laps', 'Remove duplicated laps', 0),
        (3, 'fill_pace', NULL, 1),
        (7, 'recompute_power', 'Recompute power averages', 0);
";

fn columns(conn: &rusqlite::Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .unwrap();
    stmt.query_map([table], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn the_original_four_column_table_is_adopted_with_every_row_intact() {
    let (store, dir) = fresh_store().await;
    let conn = raw(&db_path(&dir));
    conn.execute_batch(ORIGINAL).unwrap();

    // Until it is prepared, reads say the table is not initialised and
    // leave it as it is.
    for result in [store.list().await, store.pending().await] {
        assert!(
            matches!(result, Err(Error::NotInitialised { .. })),
            "{result:?}"
        );
    }
    assert!(!store.is_settled("anything").await.unwrap());
    assert_eq!(
        columns(&conn, "migrations"),
        ["id", "name", "description", "executed"]
    );
    assert_eq!(journal_mode(&db_path(&dir)), "delete");

    store.prepare().await.unwrap();
    assert_eq!(
        journal_mode(&db_path(&dir)),
        "delete",
        "the application's database keeps its journal mode"
    );

    assert_eq!(
        columns(&conn, "migrations"),
        [
            "id",
            "name",
            "description",
            "executed",
            "executed_at",
            "attempts",
            "last_error",
            "checkpoint"
        ]
    );
    let rows = store.list().await.unwrap();
    let seen: Vec<(i64, &str, &str, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.id.get(),
                r.name.as_str(),
                r.description.as_str(),
                r.executed,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "prefix_paths", "Prefix stream file paths", true),
            (2, "dedupe_laps", "Remove duplicated laps", false),
            (3, "fill_pace", "", true),
            (7, "recompute_power", "Recompute power averages", false),
        ]
    );
    for row in &rows {
        assert_eq!((row.executed_at, row.attempts), (None, 0));
        assert_eq!((&row.last_error, &row.checkpoint), (&None, &None));
    }
    let pending: Vec<i64> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.get())
        .collect();
    assert_eq!(pending, [2, 7]);

    // Idempotent, and the application's own definitions register on top:
    // known ids keep their state, a new one arrives pending.
    store.prepare().await.unwrap();
    let mut defs: Vec<MigrationDef> = rows
        .iter()
        .map(|r| MigrationDef::new(r.id.get(), r.name.clone(), "").unwrap())
        .collect();
    defs.push(MigrationDef::new(8, "split_laps", "").unwrap());
    store.register(&defs).await.unwrap();
    let pending: Vec<i64> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.get())
        .collect();
    assert_eq!(pending, [2, 7, 8]);
    store.record_success(id(2)).await.unwrap();
    assert!(store.get(id(2)).await.unwrap().executed_at.is_some());
    let count: i64 = conn
        .query_row("SELECT count(*) FROM migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 5);
}

/// Everything in the database file: the schema and every row of every table.
fn dump(path: &Path) -> Vec<String> {
    let conn = raw(path);
    let mut out: Vec<String> = conn
        .prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let width = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |row| {
                Ok((0..width)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.push(format!("{table}: {rows:?}"));
    }
    out
}

const NULL_EXECUTED: &str = "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN);
     INSERT INTO migrations VALUES (1, 'a', 'x', NULL), (2, 'b', 'y', 1);";

/// An original table whose `executed` allowed NULL holds rows whose state
/// would be a guess: `prepare` refuses them, naming the rows and changing
/// nothing, until the configuration says what NULL means.
#[tokio::test]
async fn null_executed_rows_need_an_explicit_choice() {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    raw(&path).execute_batch(NULL_EXECUTED).unwrap();
    let before = dump(&path);
    let plan = store.plan_prepare().await.unwrap();
    assert_eq!(plan.ambiguous.null_executed, [id(1)]);
    assert!(
        plan.refusal
            .as_deref()
            .is_some_and(|r| r.contains("executed is NULL for 1")),
        "{plan:?}"
    );
    let err = store.prepare().await.unwrap_err();
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<waymark_core::store::AmbiguousRowsRefused>())
        .unwrap_or_else(|| panic!("expected AmbiguousRowsRefused, got {err:?}"));
    assert_eq!(source.rows.null_executed, [id(1)]);
    assert!(
        waymark_core::error_chain(&err).contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(dump(&path), before, "a refusal changes nothing");
    store.close().await.unwrap();

    for (choice, executed) in [
        (NullExecuted::Pending, false),
        (NullExecuted::Executed, true),
    ] {
        let copy = dir.path().join(format!("{choice:?}.db"));
        raw(&copy).execute_batch(NULL_EXECUTED).unwrap();
        let config =
            SqliteConfig::file(&copy).adoption(AdoptionChoices::new().null_executed(choice));
        let store = SqliteStore::open_with(config).await.unwrap();
        store.prepare().await.unwrap();
        let rows = store.list().await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.executed).collect::<Vec<_>>(),
            [executed, true],
            "{choice:?}"
        );
    }
}

/// An `executed_at` without an offset (SQLite's `CURRENT_TIMESTAMP`, what
/// the original app's DateTime column held) is read as UTC by reads, and
/// rewritten as RFC 3339 by `prepare` only when the configuration says it
/// is UTC; otherwise `prepare` refuses and changes nothing.
#[tokio::test]
async fn legacy_timestamps_need_an_explicit_choice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    raw(&path)
        .execute_batch(
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, \
             executed BOOLEAN NOT NULL DEFAULT 0, executed_at DATETIME);
             INSERT INTO migrations VALUES (1, 'a', 'x', 1, '2024-05-01 10:00:00'), (2, 'b', 'y', 0, NULL);",
        )
        .unwrap();
    let before = dump(&path);
    let store = SqliteStore::open(&path).await.unwrap();
    let err = store.prepare().await.unwrap_err();
    assert!(
        waymark_core::error_chain(&err).contains("executed_at is not RFC 3339 for 1"),
        "{err}"
    );
    assert_eq!(dump(&path), before, "a refusal changes nothing");
    store.close().await.unwrap();

    let config =
        SqliteConfig::file(&path).adoption(AdoptionChoices::new().legacy_timestamps_are_utc());
    let store = SqliteStore::open_with(config).await.unwrap();
    store.prepare().await.unwrap();
    let row = store.get(id(1)).await.unwrap();
    let at = row.executed_at.expect("kept");
    assert_eq!((at.hour(), at.minute()), (10, 0));
    let stored: String = raw(&path)
        .query_row("SELECT executed_at FROM migrations WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, "2024-05-01T10:00:00.000000Z");
}

/// A mistyped table name where the database holds a tracking table under
/// another name is refused before anything runs, instead of starting from
/// an empty table; allowing a second table is explicit.
#[tokio::test]
async fn a_wrong_table_name_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    raw(&path).execute_batch(ORIGINAL).unwrap();
    let before = dump(&path);
    let store = SqliteStore::open_with(SqliteConfig::file(&path).table("data_migrations"))
        .await
        .unwrap();
    let plan = store.plan_prepare().await.unwrap();
    assert!(plan.create && plan.refusal.is_some(), "{plan:?}");
    let err = store.prepare().await.unwrap_err();
    let message = waymark_core::error_chain(&err);
    assert!(
        message.contains("\"migrations\"") && message.contains("nothing was changed"),
        "{message}"
    );
    assert_eq!(dump(&path), before);
    store.close().await.unwrap();
    let allowed = SqliteConfig::file(&path)
        .table("data_migrations")
        .allow_second_table(true);
    let store = SqliteStore::open_with(allowed).await.unwrap();
    store.prepare().await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

/// The configured table name is used everywhere, and another table in the
/// same file is untouched.
#[tokio::test]
async fn a_custom_table_name_is_adopted_and_others_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = raw(&path);
    conn.execute_batch(&ORIGINAL.replace("migrations", "data_migrations"))
        .unwrap();
    conn.execute_batch("CREATE TABLE migrations (version TEXT PRIMARY KEY)")
        .unwrap();
    let store = SqliteStore::open_with(SqliteConfig::file(&path).table("data_migrations"))
        .await
        .unwrap();
    store.prepare().await.unwrap();
    assert_eq!(store.table(), "data_migrations");
    assert_eq!(store.pending().await.unwrap().len(), 2);
    assert_eq!(columns(&conn, "migrations"), ["version"]);
    assert_eq!(columns(&conn, "data_migrations").len(), 8);
}

/// Starts `count` helper processes that wait for a go file, then all open,
/// prepare and register the same three migrations at once.
fn race_prepare(path: &Path, count: usize) {
    let go = path.with_extension("go");
    let helpers: Vec<Helper> = (0..count)
        .map(|_| Helper::spawn(HELPER, [Path::new("prepare"), path, &go]))
        .collect();
    std::fs::write(&go, b"").unwrap();
    for helper in helpers {
        let (lines, ok) = helper.finish(Duration::from_secs(60));
        assert!(ok, "a racing prepare failed: {lines:?}");
        assert_eq!(lines, ["prepared"]);
    }
}

async fn assert_prepared_once(path: &Path, expected_ids: &[i64]) {
    let store = SqliteStore::open(path).await.unwrap();
    let ids: Vec<i64> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.get())
        .collect();
    assert_eq!(ids, expected_ids);
    let conn = raw(path);
    assert_eq!(columns(&conn, "migrations").len(), 8);
    let objects: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('migrations_pending', 'migrations_fingerprints')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(objects, 2);
    let sets: i64 = conn
        .query_row("SELECT count(*) FROM migrations_fingerprints", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(sets, 1);
}

#[tokio::test]
async fn processes_preparing_a_new_database_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    race_prepare(&path, 4);
    assert_prepared_once(&path, &[1, 2, 3]).await;
}

#[tokio::test]
async fn processes_adopting_the_original_table_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    raw(&path)
        .execute_batch(
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN);
             INSERT INTO migrations VALUES (1, 'm1', 'old', 1), (5, 'm5', 'old', 0);",
        )
        .unwrap();
    race_prepare(&path, 4);
    assert_prepared_once(&path, &[1, 2, 3, 5]).await;
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    assert_eq!(store.get(id(1)).await.unwrap().description, "old");
}

/// Tables core's check refuses are refused with the column named, by
/// `prepare` and by the plan alike, and left exactly as they were: a
/// foreign `migrations` table (Laravel's), waymark's nullable columns
/// declared NOT NULL, `executed_at` values that are no time at all (even
/// with the legacy-timestamp choice made).
#[tokio::test]
async fn tables_waymark_cannot_use_are_refused_by_plan_and_prepare_unchanged() {
    let cases = [
        (
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, migration TEXT NOT NULL, batch INTEGER NOT NULL);
             INSERT INTO migrations VALUES (1, '2014_10_12_create_users', 1);",
            "name",
        ),
        (
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN NOT NULL,
                                      checkpoint TEXT NOT NULL DEFAULT '');
             INSERT INTO migrations VALUES (1, 'a', '', 0, '');",
            "checkpoint",
        ),
        (
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN NOT NULL,
                                      executed_at DATETIME);
             INSERT INTO migrations VALUES (1, 'a', '', 1, 'yesterday'), (2, 'b', '', 1, 1714557600);",
            "executed_at",
        ),
    ];
    for (ddl, column) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        raw(&path).execute_batch(ddl).unwrap();
        let before = dump(&path);
        let config =
            SqliteConfig::file(&path).adoption(AdoptionChoices::new().legacy_timestamps_are_utc());
        let store = SqliteStore::open_with(config).await.unwrap();
        let plan = store.plan_prepare().await.unwrap();
        assert!(plan.refusal.is_some(), "{column}: {plan:?}");
        let err = store.prepare().await.unwrap_err();
        let refused = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<waymark_core::IncompatibleTable>())
            .unwrap_or_else(|| panic!("{column}: expected IncompatibleTable, got {err:?}"));
        assert_eq!(refused.column.as_deref(), Some(column), "{err}");
        store.close().await.unwrap();
        assert_eq!(dump(&path), before, "{column}: nothing changed");
    }
}
