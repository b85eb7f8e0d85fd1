//! Break its inputs, CLI side: the bad inputs `cli_sqlite.rs` and
//! `cli_postgres.rs` do not cover. Each checks the exit code (1 for an
//! error, one line on stderr; 2 for a usage error) and that the database is
//! unchanged afterwards. docs/reliability.md lists every bad input with the
//! test that covers it.

mod support;

use std::path::Path;

use support::waymark;

/// A SQLite file with migration 1 registered, and its URL.
fn registered() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    waymark(&url, &["register", "1", "one", "the first"]).expect(0);
    (dir, url)
}

/// Everything tracked, as the CLI shows it.
fn tracked(url: &str) -> String {
    waymark(url, &["status", "--json"]).expect(0).stdout
}

#[test]
fn registering_a_known_id_under_another_name_exits_1_and_changes_nothing() {
    let (_dir, url) = registered();
    let before = tracked(&url);
    let err = waymark(&url, &["register", "1", "two", ""])
        .expect(1)
        .stderr;
    assert!(
        err.contains("conflict on migration 1") && err.contains("\"one\""),
        "{err}"
    );
    assert_eq!(tracked(&url), before);
}

#[test]
fn an_empty_name_exits_1_and_registers_nothing() {
    let (_dir, url) = registered();
    let before = tracked(&url);
    let err = waymark(&url, &["register", "2", "", ""]).expect(1).stderr;
    assert!(err.contains("invalid name"), "{err}");
    assert_eq!(tracked(&url), before);
}

#[test]
fn negative_and_oversized_ids_are_refused_and_change_nothing() {
    let (_dir, url) = registered();
    let before = tracked(&url);
    // Taken for flags or out of range: usage errors.
    for args in [
        &["show", "-1"][..],
        &["mark-executed", "1", "-5"],
        &["mark-pending", "99999999999999999999"],
    ] {
        assert_eq!(waymark(&url, args).code, 2, "{args:?}");
    }
    // Passed as values, they are still malformed ids: usage errors too.
    for args in [
        &["mark-executed", "--", "1", "-5"][..],
        &["register", "--", "-1", "x", ""],
    ] {
        let err = waymark(&url, args).expect(2).stderr;
        assert!(
            err.contains("-5 is not a migration id") || err.contains("-1 is not a migration id"),
            "{err}"
        );
    }
    assert_eq!(
        tracked(&url),
        before,
        "migration 1 listed first was not marked"
    );
}

#[test]
fn mark_pending_with_an_unknown_id_changes_none_of_the_others() {
    let (_dir, url) = registered();
    waymark(&url, &["mark-executed", "1"]).expect(0);
    let before = tracked(&url);
    let err = waymark(&url, &["mark-pending", "1", "42"]).expect(1).stderr;
    assert!(err.contains("migration 42 not found"), "{err}");
    assert_eq!(tracked(&url), before);
}

/// A database file without write permission (honoured even for root):
/// reads work, repairs and registrations exit 1 saying it is read-only,
/// and the file is byte for byte the same.
#[test]
fn a_read_only_database_file_refuses_changes_and_is_left_untouched() {
    use std::os::unix::fs::PermissionsExt;

    let (dir, url) = registered();
    let path = dir.path().join("app.db");
    // Fold the WAL into the file first, so reading it later changes nothing.
    waymark_tests::sqlite::raw(&path)
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let before = tracked(&url);
    for args in [
        &["mark-executed", "1"][..],
        &["mark-pending", "1"],
        &["register", "2", "two", ""],
    ] {
        let err = waymark(&url, args).expect(1).stderr;
        assert!(err.contains("read-only"), "{args:?}: {err}");
    }
    assert_eq!(tracked(&url), before);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// An existing `migrations` table of another shape: `init` refuses it,
/// naming the column, and leaves it as it was.
#[test]
fn an_incompatible_existing_table_is_refused_by_init_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let conn = waymark_tests::sqlite::raw(&path);
    conn.execute_batch(
        "CREATE TABLE migrations (id TEXT PRIMARY KEY, name TEXT, description TEXT, executed BOOLEAN);
         INSERT INTO migrations VALUES ('one', 'a', 'b', 1);",
    )
    .unwrap();
    let schema = || -> String {
        conn.query_row(
            "SELECT group_concat(sql, ';') FROM sqlite_schema",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    let before = schema();
    let url = format!("sqlite://{}", path.display());
    let err = waymark(&url, &["init"]).expect(1).stderr;
    assert!(err.contains("column \"id\""), "{err}");
    assert_eq!(schema(), before);
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM migrations WHERE id = 'one'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn a_directory_as_the_database_exits_1_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().display());
    let err = waymark(&url, &["init"]).expect(1).stderr;
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(Path::new(dir.path()).is_dir());
}

/// A database name the server does not know: exit 1 with the server's
/// answer, naming host and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_postgres_database_exits_1_naming_the_server() {
    let db = waymark_tests::pg::fresh_database().await;
    let url = waymark_tests::reliability::target::with_param(
        db.url(),
        "dbname",
        "waymark_no_such_database",
    );
    let err = waymark(&url, &["status"]).expect(1).stderr;
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("127.0.0.1:"), "{err}");
}

/// A schema name that is not a plain identifier: exit 1 before anything is
/// created (the database stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_postgres_schema_exits_1_and_creates_nothing() {
    let db = waymark_tests::pg::fresh_database().await;
    for schema in ["Bad Schema", "pg_mine", "x;drop"] {
        let err = waymark(db.url(), &["--schema", schema, "init"])
            .expect(1)
            .stderr;
        assert!(err.contains("invalid schema"), "{schema}: {err}");
    }
    let created: i64 = db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0);
}
