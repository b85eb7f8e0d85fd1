//! The real binary against SQLite files, and the inputs that must fail cleanly.

mod support;

use std::time::{Duration, Instant};

use support::{waymark, waymark_raw};

async fn fresh() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    (url, dir)
}

cli_backend_tests!(fresh());

#[test]
fn the_default_database_is_waymark_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .env_remove("DATABASE_URL")
        .current_dir(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(dir.path().join("waymark.db").exists());
}

#[test]
fn database_url_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.db");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .env("DATABASE_URL", format!("sqlite://{}", path.display()))
        .arg("init")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(path.exists());
}

/// An in-memory database starts empty and is gone when the command ends:
/// no command could show or change anything, so it is refused.
#[test]
fn in_memory_databases_are_refused() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite:app.db?mode=memory",
    ] {
        for args in [&["init"][..], &["pending"]] {
            let err = waymark(url, args).expect(1).stderr;
            assert!(err.contains("in-memory"), "{url}: {err}");
        }
    }
}

#[test]
fn a_missing_file_is_not_created_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = format!("sqlite://{}", path.display());
    for args in [
        &["status"][..],
        &["pending"],
        &["show", "1"],
        &["mark-executed", "1"],
    ] {
        let err = waymark(&url, args).expect(1).stderr;
        assert!(err.contains("no such database file"), "{err}");
    }
    assert!(!path.exists());
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let url = format!("sqlite://{}", path.display());
    for args in [&["init"][..], &["status"], &["register", "1", "x", ""]] {
        let err = waymark(&url, args).expect(1).stderr;
        assert!(err.contains("not a database"), "{err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

#[test]
fn a_table_never_initialised_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    let url = format!("sqlite://{}", path.display());
    waymark(&url, &["init"]).expect(0);
    let err = waymark(&url, &["--table", "other", "status"])
        .expect(1)
        .stderr;
    assert!(err.contains("waymark init"), "{err}");
}

#[test]
fn an_invalid_table_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let url = format!("sqlite://{}", path.display());
    let err = waymark(&url, &["--table", "x; DROP TABLE y", "init"])
        .expect(1)
        .stderr;
    assert!(err.contains("invalid table"), "{err}");
    assert!(!path.exists(), "nothing created");
}

#[test]
fn unsupported_url_schemes_are_errors_without_the_password() {
    let err = waymark("mysql://root:hunter2@localhost/app", &["status"])
        .expect(1)
        .stderr;
    assert!(err.contains("unsupported URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    waymark("sqlite://", &["status"]).expect(1);
}

#[test]
fn an_unreachable_server_fails_fast_without_the_password() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let started = Instant::now();
    let err = waymark("postgres://app:hunter2@127.0.0.1:1/app", &["status"])
        .expect(1)
        .stderr;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(err.contains("127.0.0.1") && err.contains('1'), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn usage_errors_exit_with_two() {
    assert_eq!(waymark_raw(&["frobnicate"]).code, 2);
    assert_eq!(waymark_raw(&["show"]).code, 2);
    assert_eq!(waymark_raw(&["show", "abc"]).code, 2);
    assert_eq!(waymark_raw(&["mark-executed"]).code, 2);
    assert_eq!(waymark_raw(&["register", "1", "only-name"]).code, 2);
    let help = waymark_raw(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("pending"));
    assert!(
        help.stdout
            .contains("4  the lock is held by another process"),
        "--help lists the exit codes: {}",
        help.stdout
    );
}

/// Shell completions and the man page come from the same command line.
#[test]
fn completions_and_the_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "_waymark()"),
        ("zsh", "#compdef waymark"),
        ("fish", "complete -c waymark"),
        ("elvish", "edit:completion:arg-completer[waymark]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = waymark_raw(&["completions", shell]).expect(0).stdout;
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("mark-executed"), "{shell} knows the commands");
    }
    waymark_raw(&["completions", "tcsh"]).expect(2);
    let man = waymark_raw(&["man"]).expect(0).stdout;
    assert!(man.starts_with(".ie"), "roff: {man}");
    assert!(man.contains(".TH waymark 1"), "{man}");
    assert!(man.contains("mark\\-executed"), "{man}");
    assert!(man.contains("WAYMARK_TABLE"), "{man}");
}

/// `--table` and `--schema` come from the environment too.
#[test]
fn the_table_comes_from_waymark_table() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let env = [("WAYMARK_TABLE", "data_migrations")];
    support::waymark_env(&url, &["register", "1", "one", ""], &env).expect(0);
    let rows = support::waymark_env(&url, &["pending", "--json"], &env).expect(3);
    assert!(rows.stdout.contains("\"one\""), "{}", rows.stdout);
    // The default table was never created.
    let err = waymark(&url, &["status"]).expect(1).stderr;
    assert!(err.contains("not initialised"), "{err}");
}

/// Log lines go to stderr: warnings by default, none with `-qq`, and what
/// `RUST_LOG` asks for when it is set.
#[test]
fn log_levels_follow_the_flags_and_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    waymark(&url, &["register", "1", "one", ""]).expect(0);
    let forced = ["mark-executed", "1", "--force"];
    let warned = waymark(&url, &forced).expect(0).stderr;
    assert!(
        warned.contains("WARN") && warned.contains("--force"),
        "{warned}"
    );
    // The warning itself is not a log line: it stays with -qq and RUST_LOG=off.
    let warning = "waymark: warning: --force: changing the rows without the locks";
    let silent = waymark(&url, &["-qq", "mark-executed", "1", "--force"])
        .expect(0)
        .stderr;
    assert!(
        silent.starts_with(warning) && !silent.contains("WARN"),
        "{silent}"
    );
    let quiet = support::waymark_env(&url, &forced, &[("RUST_LOG", "off")]).expect(0);
    assert!(
        quiet.stderr.starts_with(warning) && !quiet.stderr.contains("WARN"),
        "{}",
        quiet.stderr
    );
    assert_eq!(waymark(&url, &["-q", "status"]).expect(0).stderr, "");
    let debug = waymark(&url, &["-vv", "status"]).expect(0).stderr;
    assert!(
        debug.contains("DEBUG") && debug.contains("migrate command"),
        "{debug}"
    );
    let chosen = support::waymark_env(&url, &["status"], &[("RUST_LOG", "debug")]).expect(0);
    assert!(
        chosen.stderr.contains("migrate command"),
        "{}",
        chosen.stderr
    );
    // Not a terminal: no colour codes.
    assert!(!warned.contains('\u{1b}'), "{warned:?}");
    assert_eq!(
        waymark(&url, &["-v", "-q", "status"]).code,
        2,
        "-v and -q conflict"
    );
}

/// `init --dry-run` says what `init` would do and changes nothing: on a
/// missing table it would create, on the original four-column table it
/// would add columns, on rows whose state is a guess it would refuse.
#[test]
fn init_dry_run_shows_the_plan_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let url = format!("sqlite://{}", path.display());
    let conn = ::waymark::sqlite::rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE migrations (id INTEGER NOT NULL, name VARCHAR(250), \
         description VARCHAR(2500), executed BOOLEAN, PRIMARY KEY (id));
         INSERT INTO migrations VALUES (1, 'one', '', 1), (2, 'two', '', NULL);",
    )
    .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let out = waymark(&url, &["init", "--dry-run"]).expect(0).stdout;
    assert!(
        out.contains("refuse") && out.contains("executed is NULL for 2"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a dry run changes nothing"
    );
    let created = dir.path().join("fresh.db");
    ::waymark::sqlite::rusqlite::Connection::open(&created)
        .unwrap()
        .execute_batch("CREATE TABLE laps (id INTEGER PRIMARY KEY)")
        .unwrap();
    let url = format!("sqlite://{}", created.display());
    let out = waymark(&url, &["init", "--dry-run"]).expect(0).stdout;
    assert!(out.contains("would be created"), "{out}");
    waymark(&url, &["status"]).expect(1);
    waymark(&url, &["init"]).expect(0);
    let out = waymark(&url, &["init", "--dry-run"]).expect(0).stdout;
    assert!(out.contains("nothing to change"), "{out}");
}

/// `status` on a foreign SQLite file (an application's, in rollback-journal
/// mode) says it is not initialised and leaves the file byte for byte as
/// it was, journal mode included, with no side files.
#[test]
fn status_on_a_foreign_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    ::waymark::sqlite::rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE laps (id INTEGER PRIMARY KEY); INSERT INTO laps VALUES (1);")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let url = format!("sqlite://{}", path.display());
    for args in [&["status"][..], &["pending"], &["show", "1"]] {
        let err = waymark(&url, args).expect(1).stderr;
        assert!(err.contains("not initialised"), "{args:?}: {err}");
        assert!(!err.contains("SELECT"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, ["app.db"], "no -wal, -shm or lock file");
}

/// Every key the JSON schema of the tests holds is in docs/operations.md's
/// JSON section, so the docs and the output cannot drift apart silently.
#[test]
fn the_json_shapes_are_the_documented_ones() {
    let docs = include_str!("../../../docs/operations.md");
    let start = docs.find("### JSON output").expect("the JSON section");
    let section = &docs[start..];
    let section = &section[..section[4..]
        .find("\n### ")
        .map_or(section.len(), |end| end + 4)];
    use support::schema::*;
    for (what, keys) in [
        ("migration", MIGRATION),
        ("status", STATUS),
        ("lock", LOCK),
        ("holder", HOLDER),
        ("marked", MARKED),
        ("init", INIT),
        ("init --dry-run", INIT_PLAN),
        ("error", ERROR),
        ("error body", ERROR_BODY),
        ("plan step", PLAN_STEP),
        ("run", RUN),
        ("outcome", OUTCOME),
    ] {
        for key in keys {
            assert!(
                section.contains(&format!("\"{key}\"")),
                "{what}: {key:?} is not in docs/operations.md's JSON section"
            );
        }
    }
}
