//! Taking over the original Python app's table, created exactly as its own
//! tools create it (SQLAlchemy's `create_all`, an Alembic revision: the
//! fixtures in `tests/fixtures/original`) and filled with awkward rows, on
//! SQLite and PostgreSQL: every row is kept byte for byte, only the pending
//! ones run, each once, and the original app's own queries still work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use waymark_core::{BoxError, MigrationContext, MigrationDef, MigrationStore};
use waymark_postgres::PostgresStore;
use waymark_runner::{Handler, Runner};
use waymark_sqlite::SqliteStore;
use waymark_tests::pg::fresh_database;

const CREATE_ALL_SQLITE: &str = include_str!("../fixtures/original/create_all_sqlite.sql");
const ALEMBIC_SQLITE: &str = include_str!("../fixtures/original/alembic_sqlite.sql");
const CREATE_ALL_POSTGRES: &str = include_str!("../fixtures/original/create_all_postgresql.sql");
const ALEMBIC_POSTGRES: &str = include_str!("../fixtures/original/alembic_postgresql.sql");

/// A row as the original app stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: i64,
    name: String,
    description: String,
    executed: bool,
}

/// Ids 1 to 10: some executed; quotes, emoji, CJK, control characters, a
/// trailing space, a 2500-character description, two rows sharing a name.
fn rows() -> Vec<Row> {
    let row = |id, name: &str, description: &str, executed| Row {
        id,
        name: name.to_owned(),
        description: description.to_owned(),
        executed,
    };
    vec![
        row(1, "fix_path_prefix", "Prefix stored paths", true),
        row(2, "it's \"quoted\"", "O'Brien said \"no\"", false),
        row(3, "emoji 🚀", "🏃‍♀️ pace", true),
        row(4, "中文名称", "计算心率区间", false),
        row(5, "tab\there\u{1}bell\u{7}", "line\nbreak\r\n", false),
        row(6, "trailing space ", " leading", false),
        row(7, "long_description", &"d".repeat(2500), true),
        row(8, "shared name", "first", false),
        row(9, "shared name", "second", true),
        row(10, "last", "", false),
    ]
}

type Counts = Arc<Mutex<HashMap<i64, usize>>>;

/// A runner declaring every row, each handler counting its runs.
fn runner<St: MigrationStore + Clone>(store: St, counts: &Counts) -> Runner<(), St> {
    let mut builder = Runner::<(), St>::builder(store);
    for row in rows() {
        let def = MigrationDef::new(row.id, row.name, row.description).unwrap();
        let counts = Arc::clone(counts);
        builder = builder.migration(
            def,
            Handler::async_fn(move |ctx: MigrationContext<()>| {
                let counts = Arc::clone(&counts);
                async move {
                    *counts.lock().unwrap().entry(ctx.id().get()).or_default() += 1;
                    Ok::<(), BoxError>(())
                }
            }),
        );
    }
    builder.build().unwrap()
}

/// Every pending row ran once, no executed one ran.
fn ran_once_each(counts: &Counts) {
    let counts = counts.lock().unwrap();
    for row in rows() {
        let expected = usize::from(!row.executed);
        assert_eq!(
            counts.get(&row.id).copied().unwrap_or(0),
            expected,
            "migration {} ({:?})",
            row.id,
            row.name
        );
    }
}

fn sqlite_rows(conn: &rusqlite::Connection) -> Vec<Row> {
    conn.prepare("SELECT id, name, description, executed FROM migrations ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                name: r.get(1)?,
                description: r.get(2)?,
                executed: r.get(3)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_adopts_the_original_table_as_its_tools_made_it() {
    for (fixture, ddl) in [
        ("create_all", CREATE_ALL_SQLITE),
        ("alembic", ALEMBIC_SQLITE),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(ddl).unwrap();
        for row in rows() {
            conn.execute(
                "INSERT INTO migrations (id, name, description, executed) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![row.id, row.name, row.description, row.executed],
            )
            .unwrap();
        }
        let counts = Counts::default();
        let store = SqliteStore::open(&path).await.unwrap();
        let report = runner(store.clone(), &counts).run(()).await.unwrap();
        assert!(
            report.report().is_success(),
            "{fixture}: {}",
            report.report()
        );
        ran_once_each(&counts);
        let expected: Vec<Row> = rows()
            .into_iter()
            .map(|row| Row {
                executed: true,
                ..row
            })
            .collect();
        assert_eq!(
            sqlite_rows(&conn),
            expected,
            "{fixture}: rows kept byte for byte"
        );
        // The original app's own queries still work on the adopted table.
        let pending: i64 = conn
            .query_row(
                "SELECT count(*) FROM migrations WHERE migrations.executed = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pending, 0, "{fixture}");
        conn.execute(
            "INSERT INTO migrations (id, name, description, executed) VALUES (11, 'from python', '', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE migrations SET executed = 1 WHERE migrations.id = 11",
            [],
        )
        .unwrap();
        assert!(store.list().await.unwrap().iter().all(|r| r.executed));
        // A second start does nothing more.
        runner(store, &counts).run(()).await.unwrap();
        ran_once_each(&counts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_adopts_the_original_table_as_its_tools_made_it() {
    for (fixture, ddl) in [
        ("create_all", CREATE_ALL_POSTGRES),
        ("alembic", ALEMBIC_POSTGRES),
    ] {
        let db = fresh_database().await;
        let admin = db.admin().await;
        admin.batch_execute(ddl).await.unwrap();
        for row in rows() {
            let id = i32::try_from(row.id).unwrap();
            admin
                .execute(
                    "INSERT INTO migrations (id, name, description, executed) VALUES ($1, $2, $3, $4)",
                    &[&id, &row.name, &row.description, &row.executed],
                )
                .await
                .unwrap();
        }
        let counts = Counts::default();
        let store: PostgresStore = db.store().await;
        let report = runner(store.clone(), &counts).run(()).await.unwrap();
        assert!(
            report.report().is_success(),
            "{fixture}: {}",
            report.report()
        );
        ran_once_each(&counts);
        let read: Vec<Row> = admin
            .query(
                "SELECT id, name, description, executed FROM migrations ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| Row {
                id: i64::from(r.get::<_, i32>(0)),
                name: r.get(1),
                description: r.get(2),
                executed: r.get(3),
            })
            .collect();
        let expected: Vec<Row> = rows()
            .into_iter()
            .map(|row| Row {
                executed: true,
                ..row
            })
            .collect();
        assert_eq!(read, expected, "{fixture}: rows kept byte for byte");
        // The original app's own queries still work on the adopted table.
        admin
            .execute(
                "INSERT INTO migrations (id, name, description, executed) VALUES (11, 'from python', '', false)",
                &[],
            )
            .await
            .unwrap();
        let pending = admin
            .query(
                "SELECT id FROM migrations WHERE migrations.executed = false",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "{fixture}");
        admin
            .execute(
                "UPDATE migrations SET executed = true WHERE migrations.id = 11",
                &[],
            )
            .await
            .unwrap();
        assert!(store.list().await.unwrap().iter().all(|r| r.executed));
        runner(store, &counts).run(()).await.unwrap();
        ran_once_each(&counts);
    }
}
