//! Every bad input to the SQLite store gets a typed, clear error.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{Error, MigrationDef, MigrationId, MigrationStore};
use waymark_sqlite::{IncompatibleTable, SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{db_path, fresh_store, raw};

/// A hang guard, not a measurement.
const NO_HANG: Duration = Duration::from_secs(30);

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

fn defs(ids: &[i64]) -> Vec<MigrationDef> {
    ids.iter()
        .map(|&i| MigrationDef::new(i, format!("m{i}"), "").unwrap())
        .collect()
}

/// The whole message of an expected [`Error::Store`], sources included.
fn store_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(err @ Error::Store { .. }) => waymark_core::error_chain(&err),
        other => panic!("expected Error::Store, got {other:?}"),
    }
}

/// The whole message of an expected [`Error::Busy`], sources included.
fn busy_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(err @ Error::Busy { .. }) => waymark_core::error_chain(&err),
        other => panic!("expected Error::Busy, got {other:?}"),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_missing_directory_is_a_store_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("deeper").join("app.db");
    let message = store_error(SqliteStore::open(&path).await);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(entries(dir.path()).is_empty(), "nothing is created");
}

/// Root ignores permission bits, so "unwritable" is made of things no user
/// can write into: a path below a regular file, and procfs.
#[tokio::test]
async fn a_path_below_a_regular_file_is_a_store_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain.txt");
    std::fs::write(&file, b"just text").unwrap();
    let path = file.join("app.db");
    let message = store_error(SqliteStore::open(&path).await);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("is not a directory"), "{message}");
    assert_eq!(std::fs::read(&file).unwrap(), b"just text");
}

#[tokio::test]
async fn an_unwritable_directory_is_a_store_error_naming_the_path() {
    let path = Path::new("/proc/waymark-test-cannot-exist.db");
    let message = store_error(SqliteStore::open(path).await);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("cannot be created"), "{message}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_directory_is_not_a_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let message = store_error(SqliteStore::open(dir.path()).await);
    assert!(message.contains("is a directory"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

/// A text file and a binary one: refused with a clear error, and neither the
/// file nor its directory is touched.
#[tokio::test]
async fn a_file_that_is_not_a_database_is_left_untouched() {
    let text = b"name,executed\nfill_pace,true\n".repeat(100);
    let binary: Vec<u8> = (0..64 * 1024_u32).map(|i| (i * 31 % 251) as u8).collect();
    for content in [text, binary] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        std::fs::write(&path, &content).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        for config in [
            SqliteConfig::file(&path),
            SqliteConfig::file(&path).read_only(true),
        ] {
            let message = store_error(SqliteStore::open_with(config).await);
            assert!(message.contains("not a SQLite database"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), content, "byte for byte");
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(
            entries(dir.path()),
            ["app.db"],
            "no journal or WAL left beside it"
        );
    }
}

/// A database file without write permission. Root could write through the
/// mode bits, so the store itself honours them (ordinary users get the same
/// from SQLite); `SqliteConfig::read_only` asks for the same explicitly.
#[tokio::test]
async fn a_read_only_database_reads_and_refuses_writes() {
    use std::os::unix::fs::PermissionsExt;

    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    store.prepare().await.unwrap();
    let set = defs(&[1, 2]);
    store.register(&set).await.unwrap();
    store.record_success(id(1)).await.unwrap();
    drop(store);

    for explicit in [false, true] {
        let mode = if explicit { 0o644 } else { 0o444 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = std::fs::read(&path).unwrap();
        let store = SqliteStore::open_with(SqliteConfig::file(&path).read_only(explicit))
            .await
            .unwrap();
        assert!(store.is_read_only());

        // Reads work, and so does prepare, which finds nothing to change.
        store.prepare().await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 2);
        assert_eq!(store.pending().await.unwrap()[0].id, id(2));
        assert!(store.get(id(1)).await.unwrap().executed);
        assert!(
            !store
                .is_settled(&MigrationDef::fingerprint(&set))
                .await
                .unwrap()
        );
        // Registering what is already registered needs no write either.
        store.register(&set).await.unwrap();

        // Writes fail clearly.
        let writes: Vec<Result<(), Error>> = vec![
            store.record_success(id(2)).await,
            store.mark_pending(id(1)).await,
            store.record_failure(id(2), "x").await,
            store.save_checkpoint(id(2), "7").await,
            store.register(&defs(&[3])).await,
        ];
        for result in writes {
            let message = store_error(result);
            assert!(message.contains("read-only"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        assert!(!store.get(id(2)).await.unwrap().executed);
        drop(store);
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    }
}

/// Shapes of an existing `migrations` table that cannot be adopted (each
/// with a row in it), and the column each error must name.
const INCOMPATIBLE: &[(&str, Option<&str>)] = &[
    (
        "CREATE TABLE migrations (id TEXT PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN);
         INSERT INTO migrations VALUES ('one', 'a', 'b', 1);",
        Some("id"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER, name TEXT, description TEXT, executed BOOLEAN);
         INSERT INTO migrations VALUES (1, 'a', 'b', 1);",
        Some("id"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER, name TEXT, description TEXT, executed BOOLEAN,
                                  PRIMARY KEY (id, name));
         INSERT INTO migrations VALUES (1, 'a', 'b', 1);",
        Some("id"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER PRIMARY KEY, description TEXT, executed BOOLEAN);
         INSERT INTO migrations VALUES (1, 'b', 0);",
        Some("name"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT, executed TEXT);
         INSERT INTO migrations VALUES (1, 'a', 'b', 'yes');",
        Some("executed"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT,
                                  executed BOOLEAN, attempts TEXT);
         INSERT INTO migrations VALUES (1, 'a', 'b', 1, 'many');",
        Some("attempts"),
    ),
    (
        "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, description TEXT,
                                  executed BOOLEAN, owner TEXT NOT NULL);
         INSERT INTO migrations VALUES (1, 'a', 'b', 1, 'ops');",
        Some("owner"),
    ),
    ("CREATE VIEW migrations AS SELECT 1 AS id", None),
];

/// Everything in the database, schema and rows, as text.
fn snapshot(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY name")
        .unwrap();
    let objects: Vec<(String, String, String)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut all = Vec::new();
    for (kind, name, sql) in objects {
        all.push(format!("{kind} {name}: {sql}"));
        if kind == "table" {
            let rows: Option<String> = conn
                .query_row(
                    &format!("SELECT group_concat(quote(id), ';') FROM \"{name}\""),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            all.push(format!("rows of {name}: {rows:?}"));
        }
    }
    all
}

#[tokio::test]
async fn an_incompatible_table_is_refused_naming_the_column_and_left_alone() {
    for (setup, column) in INCOMPATIBLE {
        let (store, dir) = fresh_store().await;
        let conn = raw(&db_path(&dir));
        conn.execute_batch(setup).unwrap();
        let before = snapshot(&conn);

        let err = store.prepare().await.unwrap_err();
        let message = waymark_core::error_chain(&err);
        let source = err
            .source()
            .and_then(|s| s.downcast_ref::<IncompatibleTable>())
            .unwrap_or_else(|| panic!("{setup}: expected IncompatibleTable, got {err:?}"));
        assert_eq!(source.table, "migrations");
        assert_eq!(source.column.as_deref(), *column, "{setup}: {message}");
        if let Some(column) = column {
            assert!(
                message.contains(&format!("column \"{column}\"")),
                "{message}"
            );
        }
        assert!(message.contains("nothing was changed"), "{message}");
        assert!(
            message.contains(&db_path(&dir).display().to_string()),
            "{message}"
        );
        assert_eq!(snapshot(&conn), before, "{setup}: the database was altered");
    }
}

/// Another connection holds the write lock longer than the busy timeout:
/// writes fail with [`Error::Busy`] saying so (nothing changed, the call
/// may succeed later), reads still work (WAL), and once the lock is gone
/// writes go through.
#[tokio::test]
async fn a_database_locked_beyond_the_busy_timeout_fails_clearly() {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    store.prepare().await.unwrap();
    store.register(&defs(&[1])).await.unwrap();
    drop(store);
    let store =
        SqliteStore::open_with(SqliteConfig::file(&path).busy_timeout(Duration::from_millis(200)))
            .await
            .unwrap();

    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let attempts: Vec<Result<(), Error>> = vec![
        tokio::time::timeout(NO_HANG, store.record_success(id(1)))
            .await
            .unwrap(),
        tokio::time::timeout(NO_HANG, store.register(&defs(&[2])))
            .await
            .unwrap(),
        tokio::time::timeout(NO_HANG, store.save_checkpoint(id(1), "x"))
            .await
            .unwrap(),
    ];
    for result in attempts {
        let message = busy_error(result);
        assert!(message.contains("busy timeout"), "{message}");
        assert!(message.contains("200ms"), "{message}");
        assert!(message.contains("database is locked"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
    assert_eq!(store.pending().await.unwrap().len(), 1, "reads still work");
    other.execute_batch("ROLLBACK").unwrap();
    store.record_success(id(1)).await.unwrap();
    let rows = store.list().await.unwrap();
    assert_eq!(rows.len(), 1, "the busy register wrote nothing");
    assert!(rows[0].executed && rows[0].checkpoint.is_none(), "{rows:?}");
}

/// A database in rollback-journal mode held under an exclusive lock: even
/// opening it (which reads the header) fails after the busy timeout, with
/// [`Error::Busy`].
#[tokio::test]
async fn opening_an_exclusively_locked_database_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let other = raw(&path);
    other
        .execute_batch("PRAGMA journal_mode = DELETE; CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let config = SqliteConfig::file(&path).busy_timeout(Duration::from_millis(200));
    let result = tokio::time::timeout(NO_HANG, SqliteStore::open_with(config))
        .await
        .unwrap();
    let message = busy_error(result);
    assert!(message.contains("busy timeout"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    other.execute_batch("COMMIT").unwrap();
    SqliteStore::open(&path).await.unwrap();
}

#[tokio::test]
async fn a_table_name_that_is_not_a_plain_identifier_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    for name in [
        "",
        "1st",
        "my table",
        "x\"; DROP TABLE y; --",
        "sqlite_schema",
        &"t".repeat(49),
    ] {
        let result = SqliteStore::open_with(SqliteConfig::file(&path).table(name)).await;
        assert!(
            matches!(result, Err(Error::Invalid { field: "table", .. })),
            "{name:?}: {result:?}"
        );
    }
    assert!(
        entries(dir.path()).is_empty(),
        "rejected before touching the disk"
    );
}

#[tokio::test]
async fn a_busy_timeout_sqlite_cannot_take_is_invalid() {
    let config = SqliteConfig::in_memory().busy_timeout(Duration::from_secs(30 * 24 * 3600));
    let result = SqliteStore::open_with(config).await;
    assert!(
        matches!(
            result,
            Err(Error::Invalid {
                field: "busy_timeout",
                ..
            })
        ),
        "{result:?}"
    );
}

/// Reads before `prepare` say the table is not initialised, naming the
/// table and the file, without SQL in the message, and create nothing.
#[tokio::test]
async fn reads_before_prepare_name_the_table_and_the_file() {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    match store.list().await {
        Err(Error::NotInitialised { table }) => {
            assert!(table.contains("migrations"), "{table}");
            assert!(table.contains(&path.display().to_string()), "{table}");
        }
        other => panic!("expected NotInitialised, got {other:?}"),
    }
    let message = store.pending().await.unwrap_err().to_string();
    assert!(message.contains("not initialised"), "{message}");
    assert!(!message.contains("no such table"), "{message}");
    assert!(!store.is_settled("anything").await.unwrap());
    let objects: i64 = raw(&path)
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(objects, 0, "reads created nothing");
}

/// A lock's sidecar file cannot be created (a directory is in its place):
/// an error naming it, not a hang or a lock that was never taken. Each
/// scope has its own file.
#[tokio::test]
async fn an_unusable_lock_file_is_a_store_error_naming_it() {
    for (scope, suffix) in [
        (LockScope::Run, "migrations.lock"),
        (LockScope::Background, "migrations-background.lock"),
    ] {
        let (store, dir) = fresh_store().await;
        let sidecar = dir
            .path()
            .join(format!("{}-{suffix}", waymark_tests::sqlite::DB_FILE));
        std::fs::create_dir(&sidecar).unwrap();
        let request = LockRequest::new(scope, Duration::from_secs(1));
        let message = store_error(
            tokio::time::timeout(NO_HANG, store.lock(&request))
                .await
                .unwrap(),
        );
        assert!(
            message.contains(&sidecar.display().to_string()),
            "{scope}: {message}"
        );
    }
}
