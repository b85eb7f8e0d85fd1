//! Every connection-string form, with and without passwords, through every
//! error path the CLI can reach, given both as `--database` and as
//! `DATABASE_URL`: no password (nor any distinctive piece of one) ever
//! appears on stdout or stderr, and each error names what went wrong.
//!
//! Real parts only: SQLite files in temporary directories, a PostgreSQL
//! port nothing listens on (1), and the throwaway test cluster
//! (`waymark_tests::pg`, trust authentication, so any password connects).

mod support;

use std::path::Path;

use support::{Run, waymark_in};
use waymark::postgres::tokio_postgres;

/// A password and the pieces of it that must never be printed.
#[derive(Debug, Clone)]
struct Secret {
    password: String,
    markers: Vec<String>,
}

impl Secret {
    fn new(password: &str, markers: &[&str]) -> Self {
        Self {
            password: password.to_owned(),
            markers: markers.iter().map(|m| (*m).to_owned()).collect(),
        }
    }
}

/// Passwords with everything that breaks naive parsers: spaces, `@`, `:`,
/// `/`, `?`, `#`, `&`, `=`, both quotes, a backslash, non-ASCII.
fn tricky() -> Vec<Secret> {
    vec![
        Secret::new("hunter2K7QZ", &["hunter2K7QZ", "K7QZ"]),
        Secret::new("J4XW se cret V9PL", &["J4XW", "V9PL", "se cret"]),
        Secret::new("M3RB@T8NC:/?#&=x", &["M3RB", "T8NC"]),
        Secret::new("D5HF'\"\\G2YS", &["D5HF", "G2YS"]),
        Secret::new("=R6TA=wörd€F1KU", &["R6TA", "F1KU", "wörd"]),
    ]
}

/// Every userinfo character but the unreserved ones, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A libpq quoted value.
fn quote(text: &str) -> String {
    format!("'{}'", quote_inner(text))
}

fn quote_inner(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// A libpq unquoted value, escaping what would end it.
fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Asserts neither the password, its encoding, nor any marker is printed.
fn assert_secret_free(run: &Run, secret: Option<&Secret>, context: &str) {
    let Some(secret) = secret else { return };
    let output = format!("{}\n{}", run.stdout, run.stderr);
    let mut forbidden = vec![secret.password.clone(), encode(&secret.password)];
    forbidden.extend(secret.markers.iter().cloned());
    for piece in forbidden {
        assert!(
            !output.contains(&piece),
            "{context}: {piece:?} printed:\n{output}"
        );
    }
}

/// How the connection string reaches the CLI.
#[derive(Debug, Clone, Copy)]
enum Via {
    Flag,
    Env,
}

/// Runs `args` against `connection`, in `dir` if given.
fn run(via: Via, dir: Option<&Path>, connection: &str, args: &[&str]) -> Run {
    match via {
        Via::Flag => {
            let mut all = vec!["--database", connection];
            all.extend_from_slice(args);
            waymark_in(dir, None, &all)
        }
        Via::Env => waymark_in(dir, Some(connection), args),
    }
}

/// Runs through both ways in; expects exit code `code`, the `expected`
/// pieces on stderr (for errors) and no secret anywhere.
fn check(
    dir: Option<&Path>,
    connection: &str,
    args: &[&str],
    code: i32,
    expected: &[&str],
    secret: Option<&Secret>,
) -> Vec<Run> {
    let mut runs = Vec::new();
    for via in [Via::Flag, Via::Env] {
        let context = format!("{via:?} {connection:?} {args:?}");
        let out = run(via, dir, connection, args);
        assert_secret_free(&out, secret, &context);
        let out = out.expect(code);
        if code == 1 {
            assert!(out.stdout.is_empty(), "{context}: stdout {}", out.stdout);
        }
        // With --json the error is a JSON object: its message is what says it.
        let said = match serde_json::from_str::<serde_json::Value>(&out.stderr) {
            Ok(error) if args.contains(&"--json") => error["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => out.stderr.clone(),
        };
        for piece in expected {
            assert!(
                said.contains(piece),
                "{context}: expected {piece:?} in stderr: {}",
                out.stderr
            );
        }
        runs.push(out);
    }
    runs
}

/// Where a PostgreSQL form points.
#[derive(Debug, Clone)]
struct Server {
    host: String,
    port: u16,
    user: String,
    dbname: String,
    sslmode: &'static str,
}

/// Each PostgreSQL spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `postgres://user:ENCODED@host:port/db`
    Url,
    /// `postgresql://…?sslmode=…&application_name=…&options=…`
    UrlWithParams,
    /// `postgres://user:RAW@host:port/db`, the password not encoded.
    UrlUnencoded,
    /// `postgres://user@host:port/db?password=ENCODED`
    QueryPassword,
    /// `host=… password='quoted' …`
    KeyValueQuoted,
    /// `host = … password = 'quoted'`, spaces around `=`.
    KeyValueSpaced,
    /// `host=… password=back\ slash\ escaped`
    KeyValueEscaped,
}

const FORMS: [Form; 7] = [
    Form::Url,
    Form::UrlWithParams,
    Form::UrlUnencoded,
    Form::QueryPassword,
    Form::KeyValueQuoted,
    Form::KeyValueSpaced,
    Form::KeyValueEscaped,
];

impl Form {
    fn build(self, server: &Server, password: Option<&str>) -> String {
        let Server {
            host,
            port,
            user,
            dbname,
            sslmode,
        } = server;
        let userinfo = |encode_it: bool| match password {
            Some(p) if encode_it => format!("{user}:{}", encode(p)),
            Some(p) => format!("{user}:{p}"),
            None => user.clone(),
        };
        let pair = |value: fn(&str) -> String, spaced: bool| match password {
            Some(p) if spaced => format!(" password = {}", value(p)),
            Some(p) => format!(" password={}", value(p)),
            None => String::new(),
        };
        match self {
            Self::Url => format!("postgres://{}@{host}:{port}/{dbname}", userinfo(true)),
            Self::UrlWithParams => format!(
                "postgresql://{}@{host}:{port}/{dbname}?sslmode={sslmode}\
                 &application_name=waymark_cli_test&options=-c%20statement_timeout%3D5s",
                userinfo(true)
            ),
            Self::UrlUnencoded => {
                format!("postgres://{}@{host}:{port}/{dbname}", userinfo(false))
            }
            Self::QueryPassword => format!(
                "postgres://{user}@{host}:{port}/{dbname}?connect_timeout=5{}",
                password
                    .map(|p| format!("&password={}", encode(p)))
                    .unwrap_or_default()
            ),
            Self::KeyValueQuoted => format!(
                "host={host} port={port} user={user}{} dbname={dbname} sslmode={sslmode}",
                pair(quote, false)
            ),
            Self::KeyValueSpaced => format!(
                "host = {host}  port = {port} user = '{user}'{} dbname = '{dbname}'",
                pair(quote, true)
            ),
            Self::KeyValueEscaped => format!(
                "host={host} port={port}{} user={user} dbname={dbname}",
                pair(escape, false)
            ),
        }
    }

    /// An unencoded `@` in a URL's password is refused before connecting:
    /// it would make part of the password a host name.
    fn refuses(self, password: Option<&str>) -> bool {
        self == Self::UrlUnencoded && password.is_some_and(|p| p.contains('@'))
    }
}

/// `None` (no password) and each tricky one.
fn passwords(secrets: &[Secret]) -> Vec<Option<&Secret>> {
    std::iter::once(None)
        .chain(secrets.iter().map(Some))
        .collect()
}

const UNREACHABLE_COMMANDS: &[&[&str]] = &[
    &["status"],
    &["status", "--json"],
    &["pending", "--json"],
    &["show", "1", "--json"],
    &["mark-executed", "1"],
    &["init"],
    &["register", "1", "one", ""],
];

#[test]
fn every_postgres_form_against_an_unreachable_port_names_it_and_hides_the_password() {
    let server = Server {
        host: "127.0.0.1".into(),
        port: 1,
        user: "app".into(),
        dbname: "app".into(),
        sslmode: "require",
    };
    let secrets = tricky();
    for secret in passwords(&secrets) {
        let password = secret.map(|s| s.password.as_str());
        for form in FORMS {
            let connection = form.build(&server, password);
            for args in UNREACHABLE_COMMANDS {
                if form.refuses(password) {
                    check(None, &connection, args, 1, &["%40"], secret);
                } else {
                    check(
                        None,
                        &connection,
                        args,
                        1,
                        &["127.0.0.1:1", "Connection refused"],
                        secret,
                    );
                }
            }
        }
    }
}

#[test]
fn malformed_postgres_strings_say_what_is_wrong_and_hide_the_password() {
    let mut secrets = tricky();
    secrets.push(Secret::new("p@ssQ3ZN", &["Q3ZN", "p@ss"]));
    for secret in &secrets {
        let enc = encode(&secret.password);
        let quoted = quote(&secret.password);
        let raw = &secret.password;
        let mut cases: Vec<(String, &[&str])> = vec![
            (
                format!("postgres://app:{enc}@127.0.0.1:notaport/app"),
                &["invalid url", "port"],
            ),
            (
                format!("postgresql://app:{enc}@127.0.0.1/app?sslmode=sometimes"),
                &["sslmode"],
            ),
            (
                format!("postgres://app:{enc}@/app"),
                &["invalid url", "no host"],
            ),
            (
                format!("postgres://app@127.0.0.1/app?password={enc}&bogus_option=1"),
                &["unknown option", "bogus_option"],
            ),
            (
                format!("host=127.0.0.1 port=x user=app password={quoted} dbname=app"),
                &["invalid url", "port"],
            ),
            (
                format!("host=127.0.0.1 password={quoted} bogus_option=1"),
                &["unknown option", "bogus_option"],
            ),
            (
                format!(
                    "host=127.0.0.1 user=app password='{}",
                    quote_inner(&secret.password)
                ),
                &["invalid url", "quoted connection parameter value"],
            ),
            (
                format!("host=127.0.0.1 password={} port", escape(&secret.password)),
                &["invalid url"],
            ),
        ];
        if raw.contains('@') {
            cases.push((format!("postgres://app:{raw}@127.0.0.1:1/app"), &["%40"]));
            cases.push((
                format!("postgresql://app:{raw}@127.0.0.1:1/app?sslmode=require"),
                &["%40"],
            ));
        }
        for (connection, expected) in &cases {
            for args in [
                &["status"][..],
                &["status", "--json"],
                &["mark-executed", "1"],
            ] {
                check(None, connection, args, 1, expected, Some(secret));
            }
        }
    }
}

#[test]
fn usage_errors_never_echo_a_connection_string() {
    let server = Server {
        host: "127.0.0.1".into(),
        port: 1,
        user: "app".into(),
        dbname: "app".into(),
        sslmode: "require",
    };
    let secrets = tricky();
    for secret in &secrets {
        for form in FORMS {
            let connection = form.build(&server, Some(&secret.password));
            let flag = format!("--database={connection}");
            for args in [
                // A connection string where clap expects something else.
                vec!["status", connection.as_str()],
                vec![connection.as_str()],
                vec!["show", connection.as_str()],
                vec!["mark-executed", "1", connection.as_str()],
                vec![
                    "--database",
                    &connection,
                    "--database",
                    &connection,
                    "status",
                ],
                vec![flag.as_str(), "frobnicate"],
                vec!["-d", &connection, "status", "--jsn"],
            ] {
                let out = waymark_in(None, None, &args);
                let context = format!("{args:?}");
                assert_secret_free(&out, Some(secret), &context);
                assert_eq!(out.code, 2, "{context}: {out:?}");
                assert!(out.stderr.contains("error:"), "{context}: {}", out.stderr);
                // The environment's value is as safe.
                let out = waymark_in(None, Some(&connection), &["status", "--jsn"]);
                assert_secret_free(&out, Some(secret), &context);
                assert_eq!(out.code, 2);
            }
        }
    }
}

/// The shared test cluster, as a [`Server`] on database `dbname`, and the
/// passwords to try: any under trust authentication, or the URL's own when
/// `WAYMARK_TEST_DATABASE_URL` names a server that checks it.
fn cluster(url: &str, dbname: &str) -> (Server, Vec<Secret>) {
    let config: tokio_postgres::Config = url.parse().expect("the test URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("a TCP test server, got {other:?}"),
    };
    let server = Server {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        user: config.get_user().unwrap_or("postgres").to_owned(),
        dbname: dbname.to_owned(),
        sslmode: "disable",
    };
    let secrets = match config.get_password() {
        Some(own) => {
            let own = String::from_utf8(own.to_vec()).expect("a UTF-8 password");
            vec![Secret::new(&own, &[])]
        }
        None => tricky(),
    };
    (server, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_form_against_a_real_server() {
    let db = waymark_tests::pg::fresh_database().await;
    let (server, secrets) = cluster(db.url(), db.name());
    let missing = Server {
        dbname: "waymark_no_such_database".into(),
        ..server.clone()
    };
    let mut next_id = 0;
    for secret in passwords(&secrets) {
        let password = secret.map(|s| s.password.as_str());
        for form in FORMS {
            // A database the server does not know.
            let connection = form.build(&missing, password);
            for args in [
                &["status"][..],
                &["status", "--json"],
                &["mark-executed", "1"],
            ] {
                if form.refuses(password) {
                    check(None, &connection, args, 1, &["%40"], secret);
                } else {
                    check(
                        None,
                        &connection,
                        args,
                        1,
                        &["does not exist", "waymark_no_such_database"],
                        secret,
                    );
                }
            }
            if form.refuses(password) {
                continue;
            }
            // The real database: the commands work and print no password,
            // not even one recorded in a row's text.
            let connection = form.build(&server, password);
            check(None, &connection, &["init"], 0, &[], secret);
            next_id += 1;
            let id = next_id.to_string();
            let description = password.unwrap_or("no password");
            check(
                None,
                &connection,
                &["register", &id, &format!("m{id}"), description],
                0,
                &[],
                secret,
            );
            for out in check(None, &connection, &["show", &id, "--json"], 0, &[], secret) {
                let row: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                let expected = if password.is_some() {
                    "***"
                } else {
                    description
                };
                assert_eq!(row["description"], expected, "{form:?}");
            }
            let runs = check(None, &connection, &["pending", "--json"], 3, &[], secret);
            for out in runs {
                let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                assert!(!rows.as_array().unwrap().is_empty());
            }
            check(None, &connection, &["mark-executed", &id], 0, &[], secret);
            check(
                None,
                &connection,
                &["show", "99999"],
                1,
                &["not found"],
                secret,
            );
        }
    }
}

/// A fresh directory holding `existing.db`, initialised with migration 1.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    waymark_in(
        Some(dir.path()),
        None,
        &["-d", "sqlite:existing.db", "register", "1", "one", ""],
    )
    .expect(0);
    dir
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One SQLite case: `{dir}` in the connection string is the working
/// directory; `creates` must exist afterwards, and no other new file may.
struct SqliteCase {
    connection: &'static str,
    args: &'static [&'static str],
    code: i32,
    expected: &'static [&'static str],
    creates: Option<&'static str>,
}

const fn ok(
    connection: &'static str,
    args: &'static [&'static str],
    creates: Option<&'static str>,
) -> SqliteCase {
    SqliteCase {
        connection,
        args,
        code: 0,
        expected: &[],
        creates,
    }
}

const fn err(
    connection: &'static str,
    args: &'static [&'static str],
    expected: &'static [&'static str],
) -> SqliteCase {
    SqliteCase {
        connection,
        args,
        code: 1,
        expected,
        creates: None,
    }
}

const SQLITE_CASES: &[SqliteCase] = &[
    // Relative, absolute, percent-decoded.
    ok("sqlite:app.db", &["init"], Some("app.db")),
    ok("sqlite://app.db", &["init"], Some("app.db")),
    ok("sqlite://{dir}/app.db", &["init"], Some("app.db")),
    ok(
        "sqlite:{dir}/app.db",
        &["register", "1", "x", ""],
        Some("app.db"),
    ),
    ok(
        "sqlite://{dir}/my%20app%3Fv1.db",
        &["init"],
        Some("my app?v1.db"),
    ),
    ok("sqlite:caf%C3%A9.db", &["init"], Some("café.db")),
    // rwc: as without mode; never a file named `app.db?mode=rwc`.
    ok("sqlite:app.db?mode=rwc", &["init"], Some("app.db")),
    ok(
        "sqlite://app.db?mode=rwc",
        &["register", "2", "two", ""],
        Some("app.db"),
    ),
    err(
        "sqlite:app.db?mode=rwc",
        &["status", "--json"],
        &["no such database file", "waymark init"],
    ),
    // rw: an existing file only.
    ok("sqlite:existing.db?mode=rw", &["status", "--json"], None),
    ok("sqlite:existing.db?mode=rw", &["mark-executed", "1"], None),
    err(
        "sqlite:new.db?mode=rw",
        &["init"],
        &["no such database file", "mode=rw"],
    ),
    err(
        "sqlite:new.db?mode=rw",
        &["register", "1", "x", ""],
        &["no such database file", "mode=rw"],
    ),
    err(
        "sqlite:new.db?mode=rw",
        &["status"],
        &["no such database file", "mode=rw"],
    ),
    // ro: reads work, writes are refused, nothing is created.
    ok("sqlite:existing.db?mode=ro", &["status", "--json"], None),
    ok("sqlite:existing.db?mode=ro", &["show", "1", "--json"], None),
    ok("sqlite:existing.db?cache=shared&mode=ro", &["status"], None),
    ok("sqlite:existing.db?cache=private", &["status"], None),
    SqliteCase {
        connection: "sqlite:existing.db?mode=ro",
        args: &["pending", "--json"],
        code: 3,
        expected: &[],
        creates: None,
    },
    err(
        "sqlite:existing.db?mode=ro",
        &["mark-executed", "1"],
        &["`mark-executed`", "mode=ro", "read-only"],
    ),
    err(
        "sqlite:existing.db?mode=ro",
        &["mark-pending", "1"],
        &["`mark-pending`", "read-only"],
    ),
    err(
        "sqlite:existing.db?mode=ro",
        &["register", "2", "two", ""],
        &["`register`", "read-only"],
    ),
    err(
        "sqlite:existing.db?mode=ro",
        &["init"],
        &["`init`", "read-only"],
    ),
    err(
        "sqlite:new.db?mode=ro",
        &["status"],
        &["no such database file", "mode=ro"],
    ),
    // Refused forms.
    err(
        "sqlite:app.db?mode=rwc&foo=1&bar",
        &["init"],
        &["unknown SQLite URL parameters `foo`, `bar`"],
    ),
    err("sqlite:app.db?vfs=unix", &["init"], &["`vfs`"]),
    err("sqlite:app.db?mode=bogus", &["init"], &["mode=bogus"]),
    err(
        "sqlite:app.db?mode=ro&mode=rwc",
        &["init"],
        &["more than once"],
    ),
    err("sqlite::memory:", &["init"], &["in-memory"]),
    err("sqlite::memory:", &["status", "--json"], &["in-memory"]),
    err("sqlite://:memory:", &["init"], &["in-memory"]),
    err("sqlite:app.db?mode=memory", &["init"], &["in-memory"]),
    err("sqlite://", &["status"], &["no path"]),
    err("app.db", &["init"], &["bare path"]),
    err(
        "file:app.db",
        &["init"],
        &["unsupported URL scheme \"file\""],
    ),
];

#[test]
fn every_sqlite_form_opens_what_it_names_or_says_why_not() {
    for case in SQLITE_CASES {
        for via in [Via::Flag, Via::Env] {
            let dir = workdir();
            let before = files(dir.path());
            let existing = std::fs::read(dir.path().join("existing.db")).unwrap();
            let connection = case
                .connection
                .replace("{dir}", &dir.path().display().to_string());
            let context = format!("{via:?} {connection:?} {:?}", case.args);
            let out = run(via, Some(dir.path()), &connection, case.args).expect(case.code);
            for piece in case.expected {
                assert!(out.stderr.contains(piece), "{context}: {}", out.stderr);
            }
            if case.code == 1 {
                assert!(out.stdout.is_empty(), "{context}: {}", out.stdout);
            }
            let mut after = files(dir.path());
            if let Some(created) = case.creates {
                assert!(after.contains(&created.to_owned()), "{context}: {after:?}");
                after.retain(|name| !name.starts_with(created));
            }
            // Only existing.db's own companions (-wal, -shm) may appear.
            after.retain(|name| !name.starts_with("existing.db"));
            let before: Vec<String> = before
                .into_iter()
                .filter(|name| !name.starts_with("existing.db"))
                .collect();
            assert_eq!(after, before, "{context}: no other file is created");
            if case.connection.contains("mode=ro") || case.code == 1 {
                assert_eq!(
                    std::fs::read(dir.path().join("existing.db")).unwrap(),
                    existing,
                    "{context}: existing.db unchanged"
                );
            }
        }
    }
}

#[test]
fn passwords_anywhere_near_a_sqlite_or_unknown_url_are_never_shown() {
    for secret in &tricky() {
        let enc = encode(&secret.password);
        let dir = tempfile::tempdir().unwrap();
        for (connection, expected) in [
            (
                format!("sqlite:app.db?password={enc}"),
                &["unknown SQLite URL parameter `password`"][..],
            ),
            (
                format!("sqlite:app.db?mode=rwc&key={enc}"),
                &["unknown SQLite URL parameter `key`"],
            ),
            (
                format!("sqlite://app:{enc}@host/app.db"),
                &["no user name or password"],
            ),
            (
                format!("mysql://root:{enc}@127.0.0.1/app"),
                &["unsupported URL scheme \"mysql\""],
            ),
            (
                format!("POSTGRES://app:{enc}@127.0.0.1/app"),
                &["schemes are lowercase"],
            ),
        ] {
            for args in [
                &["init"][..],
                &["status", "--json"],
                &["mark-executed", "1"],
            ] {
                check(
                    Some(dir.path()),
                    &connection,
                    args,
                    1,
                    expected,
                    Some(secret),
                );
            }
        }
        assert_eq!(files(dir.path()), Vec::<String>::new(), "nothing created");
    }
}

#[test]
fn help_lists_every_accepted_form() {
    let help = waymark_in(None, None, &["--help"]).expect(0).stdout;
    for form in [
        "sqlite:PATH",
        "sqlite://PATH",
        "sqlite:///var/data/app.db",
        "mode=rwc",
        "mode=rw ",
        "mode=ro",
        "postgres://",
        "postgresql://",
        "password='se cret'",
        "sqlite::memory:",
        "DATABASE_URL",
    ] {
        assert!(help.contains(form), "{form} missing from --help:\n{help}");
    }
    let short = waymark_in(None, None, &["-h"]).expect(0).stdout;
    assert!(short.contains("--database"), "{short}");
    // The environment's value is never shown in help.
    let secret = Secret::new("hunter2K7QZ", &["K7QZ"]);
    for args in [&["--help"][..], &["-h"], &["status", "--help"]] {
        let out = waymark_in(None, Some("postgres://app:hunter2K7QZ@db/app"), args);
        assert_secret_free(&out, Some(&secret), "help");
        out.expect(0);
    }
}
