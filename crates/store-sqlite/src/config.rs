//! How to open a store: where the database is, the table name, the busy
//! timeout, and whether to open it read-only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use waymark_core::Error;
use waymark_core::store::AdoptionChoices;

/// The busy timeout used unless [`SqliteConfig::busy_timeout`] sets another.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracking table's name unless [`SqliteConfig::table`] sets another.
pub const DEFAULT_TABLE: &str = "migrations";

/// The longest table name accepted; leaves room for the derived names of
/// the side table and the index (`<table>_fingerprints`, `<table>_pending`).
pub const MAX_TABLE_CHARS: usize = 48;

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A file on disk, created if missing.
    File(PathBuf),
    /// A private in-memory database, shared by the clones of one store.
    Memory,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "SQLite database {}", path.display()),
            Self::Memory => f.write_str("in-memory SQLite database"),
        }
    }
}

/// Options for [`SqliteStore::open_with`](crate::SqliteStore::open_with).
///
/// ```
/// use std::time::Duration;
/// use waymark_sqlite::SqliteConfig;
///
/// let config = SqliteConfig::file("app.db")
///     .table("data_migrations")
///     .busy_timeout(Duration::from_secs(10));
/// assert_eq!(config.table_name(), "data_migrations");
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub(crate) location: Location,
    pub(crate) table: String,
    pub(crate) busy_timeout: Duration,
    pub(crate) read_only: bool,
    pub(crate) adoption: AdoptionChoices,
    pub(crate) allow_second_table: bool,
}

impl SqliteConfig {
    /// A database file at `path`, created (with its tables, on
    /// [`prepare`](waymark_core::MigrationStore::prepare)) if missing. The
    /// directory must exist. An empty path and `":memory:"`, which SQLite
    /// would turn into a database that keeps nothing, make
    /// [`open_with`](crate::SqliteStore::open_with) fail with
    /// [`Error::Invalid`] for the field `path`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::at(Location::File(path.as_ref().to_path_buf()))
    }

    /// A private in-memory database: gone when the last clone of the store
    /// is dropped. For tests and tools that need no persistence.
    pub fn in_memory() -> Self {
        Self::at(Location::Memory)
    }

    fn at(location: Location) -> Self {
        Self {
            location,
            table: DEFAULT_TABLE.to_owned(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            read_only: false,
            adoption: AdoptionChoices::new(),
            allow_second_table: false,
        }
    }

    /// The tracking table's name (default `migrations`). It must be a plain
    /// SQL identifier: an ASCII letter or `_`, then ASCII letters, digits
    /// or `_`, at most [`MAX_TABLE_CHARS`] characters, not starting with
    /// `sqlite_`. Anything else makes [`open_with`](crate::SqliteStore::open_with)
    /// fail with [`Error::Invalid`] for the field `table`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// How long a statement waits for another connection's write lock
    /// before failing (default 5 s). Must fit in `i32::MAX` milliseconds,
    /// else [`open_with`](crate::SqliteStore::open_with) fails with
    /// [`Error::Invalid`] for the field `busy_timeout`.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens the database read-only: reads work, every write fails with
    /// [`Error::Store`]. A database file without any write permission bit
    /// is opened read-only even without this, whoever the user is.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The explicit choices for rows of an adopted table whose state would
    /// otherwise be a guess (a NULL `executed`, an `executed_at` without an
    /// offset). Without them `prepare` refuses such a table and changes
    /// nothing; [`plan_prepare`](waymark_core::MigrationStore::plan_prepare)
    /// lists the rows.
    pub fn adoption(mut self, choices: AdoptionChoices) -> Self {
        self.adoption = choices;
        self
    }

    /// Lets `prepare` create this tracking table although the database
    /// already holds another one (a table with `id`, `name` and `executed`
    /// columns, such as `migrations` when this store is configured for
    /// `data_migrations`). Off by default: a mistyped table name would
    /// otherwise start from an empty table and run every migration again.
    pub fn allow_second_table(mut self, allow: bool) -> Self {
        self.allow_second_table = allow;
        self
    }

    /// The table name as configured (validated when the store opens).
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Checks the settings that can be wrong, before anything is opened.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Location::File(path) = &self.location {
            validate_path(path)?;
        }
        validate_table_name(&self.table)?;
        let millis = self.busy_timeout.as_millis();
        if millis > i32::MAX as u128 {
            return Err(Error::invalid(
                "busy_timeout",
                format!("must be at most {} ms, got {millis} ms", i32::MAX),
            ));
        }
        Ok(())
    }
}

/// Refuses the two file names SQLite turns into a database that vanishes
/// when closed (`""`, a private temporary file, and `":memory:"`): every
/// migration would run again at the next start.
fn validate_path(path: &Path) -> Result<(), Error> {
    let vanishes = match path.to_str() {
        Some("") => "an empty path",
        Some(":memory:") => "\":memory:\" (use SqliteConfig::in_memory() for that)",
        _ => return Ok(()),
    };
    Err(Error::invalid(
        "path",
        format!("{vanishes} makes SQLite use a database that vanishes when closed"),
    ))
}

/// Accepts only plain identifiers, so the name can be spliced into SQL
/// (always double-quoted as well) without any way to inject.
fn validate_table_name(name: &str) -> Result<(), Error> {
    waymark_core::store::validate_identifier("table", name, MAX_TABLE_CHARS)?;
    if name.to_ascii_lowercase().starts_with("sqlite_") {
        return Err(Error::invalid(
            "table",
            format!("must not start with 'sqlite_', which SQLite reserves, got {name:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_are_accepted() {
        for name in ["migrations", "_m", "M2", &"a".repeat(MAX_TABLE_CHARS)] {
            assert!(validate_table_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn anything_else_is_invalid_table() {
        for name in [
            "",
            "1st",
            "with space",
            "dash-ed",
            "quo\"te",
            "x; DROP TABLE y",
            "ünïcode",
            "sqlite_master",
            "SQLITE_x",
            &"a".repeat(MAX_TABLE_CHARS + 1),
        ] {
            assert!(
                matches!(
                    validate_table_name(name),
                    Err(Error::Invalid { field: "table", .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn paths_sqlite_would_not_keep_are_invalid() {
        for path in ["", ":memory:"] {
            assert!(matches!(
                SqliteConfig::file(path).validate(),
                Err(Error::Invalid { field: "path", .. })
            ));
        }
        assert!(SqliteConfig::file("./:memory:").validate().is_ok());
    }

    #[test]
    fn busy_timeout_must_fit_sqlite() {
        let config = SqliteConfig::in_memory().busy_timeout(Duration::from_secs(u64::MAX));
        assert!(matches!(
            config.validate(),
            Err(Error::Invalid {
                field: "busy_timeout",
                ..
            })
        ));
        assert!(
            SqliteConfig::in_memory()
                .busy_timeout(Duration::ZERO)
                .validate()
                .is_ok()
        );
    }
}
