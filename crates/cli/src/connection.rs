//! Which database `--database` (or `DATABASE_URL`) names, and opening its store.
//!
//! | form | database |
//! |---|---|
//! | `sqlite:PATH`, `sqlite://PATH` | a SQLite file; `sqlite://app.db` relative, `sqlite:///var/app.db` absolute; `%XX` decoded |
//! | `…?mode=rwc` | as without `mode`: `init` and `register` create a missing file, nothing else does |
//! | `…?mode=rw` | an existing file only: no command creates it |
//! | `…?mode=ro` | opened read-only; commands that write are refused before opening |
//! | `…?cache=shared`, `…?cache=private` | accepted, no effect (the CLI opens one connection) |
//! | `postgres://…`, `postgresql://…` | PostgreSQL, handed to the store as written |
//! | `host=db user=app password='…' dbname=app …` | PostgreSQL as libpq `key=value` pairs, handed to the store as written |
//!
//! Refused, each with its own message: `sqlite::memory:` and `mode=memory`
//! (an in-memory database starts empty and is gone when the command ends),
//! any other SQLite URL parameter (named, so that `?mode=rwc` never becomes
//! part of a file name), a user or password in a SQLite URL, an unencoded
//! `@` in a PostgreSQL URL's host, a bare path (ambiguous with a typo of
//! any other form: write `sqlite:PATH`), any other scheme.
//!
//! No message here repeats a connection string or a password; see
//! [`crate::redact`] for the safety net behind it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use waymark::postgres::{PostgresConfig, PostgresStore};
use waymark::sqlite::{SqliteConfig, SqliteStore};
use waymark::{Error, MigrationStore};

use crate::args::Command;
use crate::redact;

/// What `mode=` asks of a SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteMode {
    /// No `mode`: `init` and `register` create a missing file, nothing else does.
    #[default]
    Default,
    /// `mode=rwc`: the same as no mode (sqlx's spelling of "create if missing";
    /// reads still never create a file, so a typo in a path cannot make an
    /// empty database).
    ReadWriteCreate,
    /// `mode=rw`: an existing file only, for every command.
    ReadWrite,
    /// `mode=ro`: read-only; commands that write are refused.
    ReadOnly,
}

impl SqliteMode {
    fn parameter(self) -> &'static str {
        match self {
            Self::Default => "",
            Self::ReadWriteCreate => "mode=rwc",
            Self::ReadWrite => "mode=rw",
            Self::ReadOnly => "mode=ro",
        }
    }
}

/// A SQLite file and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteTarget {
    /// The file, percent-decoded.
    pub path: PathBuf,
    /// What `mode=` asked for.
    pub mode: SqliteMode,
}

/// A PostgreSQL connection string exactly as given (URL or `key=value`
/// pairs); its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresTarget(String);

impl PostgresTarget {
    /// The connection string as given, for the store only.
    pub fn connection_string(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PostgresTarget")
            .field(&redact::redact(&self.0))
            .finish()
    }
}

/// A database named by `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A SQLite file.
    Sqlite(SqliteTarget),
    /// A PostgreSQL server.
    Postgres(PostgresTarget),
}

/// What every message about an unusable `--database` ends with.
const FORMS: &str = "expected sqlite:PATH, sqlite://PATH, postgres://…, postgresql://… \
                     or key=value pairs such as `host=db dbname=app` (see `waymark --help`)";

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid("database", message)
}

impl Target {
    /// Parses every form in the module's table; see there for what is refused.
    pub fn parse(connection: &str) -> Result<Self, Error> {
        if connection.trim().is_empty() {
            return Err(invalid(format!("--database is empty: {FORMS}")));
        }
        if connection.starts_with("postgres://") || connection.starts_with("postgresql://") {
            check_postgres_url(connection)?;
            return Ok(Self::Postgres(PostgresTarget(connection.to_owned())));
        }
        if let Some(rest) = connection.strip_prefix("sqlite:") {
            return parse_sqlite(rest).map(Self::Sqlite);
        }
        if redact::is_key_value(connection) {
            return Ok(Self::Postgres(PostgresTarget(connection.to_owned())));
        }
        if let Some(scheme) = scheme(connection) {
            let hint = if scheme.eq_ignore_ascii_case("postgres")
                || scheme.eq_ignore_ascii_case("postgresql")
                || scheme.eq_ignore_ascii_case("sqlite")
            {
                " (schemes are lowercase, and PostgreSQL URLs start with `postgres://`)"
            } else {
                ""
            };
            return Err(invalid(format!(
                "unsupported URL scheme {scheme:?}{hint}: {FORMS}"
            )));
        }
        Err(invalid(format!(
            "not a connection string (a SQLite file is written sqlite:PATH; a bare path is not accepted): {FORMS}"
        )))
    }

    /// Opens the store for `command`. A missing SQLite file is created only
    /// by `init` and `register`, and not with `mode=rw` or `mode=ro`;
    /// `mode=ro` refuses commands that write before opening anything.
    pub async fn open(
        &self,
        schema: Option<&str>,
        table: &str,
        command: &Command,
    ) -> Result<Arc<dyn MigrationStore>, Error> {
        Ok(match self {
            Self::Sqlite(sqlite) => Arc::new(open_sqlite(sqlite, table, command).await?),
            Self::Postgres(postgres) => {
                let mut config = PostgresConfig::new(postgres.connection_string()).table(table);
                if let Some(schema) = schema {
                    config = config.schema(schema);
                }
                Arc::new(PostgresStore::connect_with(config).await?)
            }
        })
    }
}

async fn open_sqlite(
    target: &SqliteTarget,
    table: &str,
    command: &Command,
) -> Result<SqliteStore, Error> {
    let SqliteTarget { path, mode } = target;
    if *mode == SqliteMode::ReadOnly && command.writes() {
        return Err(invalid(format!(
            "`{}` changes the database, but mode=ro opens it read-only: drop mode=ro to change it",
            command.name()
        )));
    }
    let create = match mode {
        SqliteMode::Default | SqliteMode::ReadWriteCreate => command.creates_database(),
        SqliteMode::ReadWrite | SqliteMode::ReadOnly => false,
    };
    if !create && !path.exists() {
        let hint = match mode {
            SqliteMode::ReadWrite | SqliteMode::ReadOnly => format!(
                "{} opens an existing file only; without it `waymark init` creates the file",
                mode.parameter()
            ),
            SqliteMode::Default | SqliteMode::ReadWriteCreate => {
                "run `waymark init` to create it".to_owned()
            }
        };
        return Err(Error::store(
            format!("opening {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such database file ({hint})"),
            ),
        ));
    }
    // Read commands open read-only, whatever the mode: they must leave the
    // file as it was (a read-write connection closing a WAL database would
    // checkpoint it).
    SqliteStore::open_with(
        SqliteConfig::file(path)
            .table(table)
            .read_only(*mode == SqliteMode::ReadOnly || !command.writes()),
    )
    .await
}

/// The URL scheme `text` starts with (`mysql` of `mysql://…`, `file` of
/// `file:app.db`), if it has one.
fn scheme(text: &str) -> Option<&str> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (valid && scheme.len() <= 32).then_some(scheme)
}

/// tokio-postgres takes the userinfo up to the first `@`: a password with
/// an unencoded `@` would silently become part of the host name, the path
/// or a parameter, and those are shown in messages. So a URL may hold one
/// `@` only, the one before the host; every other is written %40.
fn check_postgres_url(url: &str) -> Result<(), Error> {
    if url.matches('@').count() > 1 {
        return Err(invalid(
            "the PostgreSQL URL holds more than one `@`: percent-encode every `@` but the one \
             before the host as %40 (in the user name, the password or a parameter)",
        ));
    }
    Ok(())
}

/// What follows `sqlite:`: `PATH` or `//PATH`, then `?key=value&…`, as
/// sqlx reads it.
fn parse_sqlite(rest: &str) -> Result<SqliteTarget, Error> {
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (raw_path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if raw_path == ":memory:" {
        return Err(in_memory_refused("sqlite::memory:"));
    }
    if raw_path.is_empty() {
        return Err(invalid(
            "the sqlite URL has no path: use sqlite:PATH, sqlite://PATH (relative) or \
             sqlite:///absolute/PATH",
        ));
    }
    let first_segment = raw_path.split('/').next().unwrap_or_default();
    if let Some(at) = first_segment.rfind('@')
        && first_segment[..at].contains(':')
    {
        return Err(invalid(
            "a SQLite URL takes no user name or password (it has `user:***@`): \
             a SQLite file is sqlite:PATH",
        ));
    }
    let mode = match query {
        Some(query) => parse_sqlite_query(query)?,
        None => SqliteMode::Default,
    };
    let path = String::from_utf8(redact::percent_decode(raw_path))
        .map_err(|_| invalid("the SQLite path is not valid UTF-8 once percent-decoded (%XX)"))?;
    if path == ":memory:" {
        return Err(in_memory_refused("sqlite::memory:"));
    }
    Ok(SqliteTarget {
        path: PathBuf::from(path),
        mode,
    })
}

fn in_memory_refused(what: &str) -> Error {
    invalid(format!(
        "{what} is refused: an in-memory SQLite database starts empty and is gone when the \
         command ends, so no command could show or change anything; name a file, sqlite:PATH"
    ))
}

/// The parameters sqlx accepts that mean something to the CLI: `mode`
/// (`ro`, `rw`, `rwc`; `memory` refused) and `cache` (no effect on one
/// connection). Anything else is refused, naming it: a file must never be
/// opened under another name than the one meant.
fn parse_sqlite_query(query: &str) -> Result<SqliteMode, Error> {
    let mut mode = None;
    let mut unknown = Vec::new();
    for segment in query.split('&').filter(|segment| !segment.is_empty()) {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = form_decode(key);
        let value = form_decode(value);
        match key.as_str() {
            "mode" => {
                let parsed = match value.as_str() {
                    "ro" => SqliteMode::ReadOnly,
                    "rw" => SqliteMode::ReadWrite,
                    "rwc" => SqliteMode::ReadWriteCreate,
                    "memory" => return Err(in_memory_refused("mode=memory")),
                    other => {
                        return Err(invalid(format!(
                            "mode={} is not a SQLite open mode: use mode=ro, mode=rw or mode=rwc",
                            shorten(other)
                        )));
                    }
                };
                if mode.replace(parsed).is_some() {
                    return Err(invalid("the SQLite URL gives mode= more than once"));
                }
            }
            "cache" => {
                if !matches!(value.as_str(), "shared" | "private") {
                    return Err(invalid(format!(
                        "cache={} is not a SQLite cache mode: use cache=shared or cache=private",
                        shorten(&value)
                    )));
                }
            }
            _ => unknown.push(format!("`{}`", shorten(&key))),
        }
    }
    if !unknown.is_empty() {
        let (noun, list) = match unknown.len() {
            1 => ("parameter", unknown[0].clone()),
            _ => ("parameters", unknown.join(", ")),
        };
        return Err(invalid(format!(
            "unknown SQLite URL {noun} {list}: the CLI accepts mode=ro|rw|rwc and \
             cache=shared|private (a `?` in a file name is written %3F)"
        )));
    }
    Ok(mode.unwrap_or_default())
}

/// A query key or value decoded as forms are: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> String {
    String::from_utf8_lossy(&redact::percent_decode(&text.replace('+', " "))).into_owned()
}

/// At most 40 characters of a name for a message.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 40 {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(39).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &str, mode: SqliteMode) -> Target {
        Target::Sqlite(SqliteTarget {
            path: path.into(),
            mode,
        })
    }

    fn message(connection: &str) -> String {
        let err = Target::parse(connection).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "database",
                    ..
                }
            ),
            "{err:?}"
        );
        err.to_string()
    }

    #[test]
    fn sqlite_paths_relative_absolute_and_decoded() {
        use SqliteMode::*;
        for (connection, path, mode) in [
            ("sqlite://waymark.db", "waymark.db", Default),
            ("sqlite://app.db", "app.db", Default),
            ("sqlite:app.db", "app.db", Default),
            ("sqlite:./data/app.db", "./data/app.db", Default),
            ("sqlite:///var/data/app.db", "/var/data/app.db", Default),
            ("sqlite:/var/data/app.db", "/var/data/app.db", Default),
            (
                "sqlite:///var/my%20app%3Fv1.db",
                "/var/my app?v1.db",
                Default,
            ),
            ("sqlite:caf%C3%A9+%zz.db", "café+%zz.db", Default),
            ("sqlite:app.db?mode=ro", "app.db", ReadOnly),
            ("sqlite://app.db?mode=rw", "app.db", ReadWrite),
            ("sqlite:///v/app.db?mode=rwc", "/v/app.db", ReadWriteCreate),
            ("sqlite:app.db?cache=shared&mode=ro", "app.db", ReadOnly),
            ("sqlite:app.db?cache=private", "app.db", Default),
            ("sqlite:app.db?", "app.db", Default),
            ("sqlite:app.db?mode=ro&", "app.db", ReadOnly),
            ("sqlite:./:memory:", "./:memory:", Default),
        ] {
            assert_eq!(
                Target::parse(connection).unwrap(),
                sqlite(path, mode),
                "{connection}"
            );
        }
    }

    #[test]
    fn in_memory_databases_are_refused() {
        for connection in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite:%3Amemory%3A",
            "sqlite:app.db?mode=memory",
            "sqlite::memory:?cache=shared",
        ] {
            let text = message(connection);
            assert!(text.contains("in-memory"), "{connection}: {text}");
        }
    }

    #[test]
    fn unknown_sqlite_parameters_are_named_and_values_never_shown() {
        let text = message("sqlite:app.db?mode=rwc&foo=1&password=hunter2&bar");
        assert!(
            text.contains("`foo`") && text.contains("`password`") && text.contains("`bar`"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = message("sqlite:app.db?mode=bogus");
        assert!(text.contains("mode=bogus"), "{text}");
        let text = message("sqlite:app.db?mode=ro&mode=rw");
        assert!(text.contains("more than once"), "{text}");
        let text = message("sqlite:app.db?cache=weird");
        assert!(text.contains("cache=weird"), "{text}");
        let text = message("sqlite:app.db?immutable=1");
        assert!(text.contains("`immutable`"), "{text}");
    }

    #[test]
    fn sqlite_urls_take_no_password() {
        let text = message("sqlite://app:hunter2@host/app.db");
        assert!(text.contains("no user name or password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // An `@` alone is a file name.
        assert_eq!(
            Target::parse("sqlite:backup@2024.db").unwrap(),
            sqlite("backup@2024.db", SqliteMode::Default)
        );
        let text = message("sqlite://");
        assert!(text.contains("no path"), "{text}");
        assert!(message("sqlite:").contains("no path"));
        assert!(message("sqlite:?mode=ro").contains("no path"));
    }

    #[test]
    fn postgres_urls_and_key_values_pass_through() {
        for connection in [
            "postgres://u@h/db",
            "postgresql://u:p%40ss@h:5433/db?sslmode=require&application_name=x",
            "postgres://u:pa/ss?@h/db?options=-c%20statement_timeout%3D5s",
            "postgres:///db?host=/var/run/postgresql",
            "postgres://u:p%40ss@h/db?application_name=a%40b",
            "host=db user=x password='se cret' dbname=app sslmode=require",
            "  host = db dbname=app",
            "dbname=app",
        ] {
            match Target::parse(connection).unwrap() {
                Target::Postgres(pg) => assert_eq!(pg.connection_string(), connection),
                other => panic!("{connection}: {other:?}"),
            }
        }
        for connection in [
            "postgres://app:p@ss@h/db",
            "postgres://app:M3@T8:/?#&=x@127.0.0.1:1/app",
            "postgres://u:pw@h/db?application_name=a@b",
        ] {
            let text = message(connection);
            assert!(text.contains("%40"), "{text}");
            assert!(!text.contains("p@ss") && !text.contains("#&"), "{text}");
        }
    }

    #[test]
    fn other_strings_are_refused_without_echoing_them() {
        for (connection, expected) in [
            (
                "mysql://root:hunter2@db/app",
                "unsupported URL scheme \"mysql\"",
            ),
            ("file:app.db?mode=ro", "unsupported URL scheme \"file\""),
            ("POSTGRES://u:hunter2@h/db", "schemes are lowercase"),
            ("app.db", "bare path is not accepted"),
            ("/var/hunter2/app.db", "bare path is not accepted"),
            ("hunter2", "not a connection string"),
            ("", "is empty"),
            ("   ", "is empty"),
        ] {
            let text = message(connection);
            assert!(text.contains(expected), "{connection}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("sqlite:PATH"), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        for connection in [
            "postgres://app:hunter2@db/app",
            "postgres://app@db/app?password=hunter2",
            "host=db password='hunter2 x' user=app",
            "host=db password=hunter2",
        ] {
            let target = Target::parse(connection).unwrap();
            let debug = format!("{target:?} {target:#?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains("db"), "{debug}");
        }
    }
}
