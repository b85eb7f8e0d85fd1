//! Which database a URL names, and opening its store.

use std::path::PathBuf;
use std::sync::Arc;

use waymark::postgres::{PostgresConfig, PostgresStore};
use waymark::sqlite::{SqliteConfig, SqliteStore};
use waymark::{Error, MigrationStore};

/// A database named by `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A SQLite file.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (gone when the command ends).
    SqliteMemory,
    /// A PostgreSQL server; the URL as given (it may hold a password).
    Postgres(String),
}

impl Target {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:`, `postgres://…` and `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::invalid(
                    "database",
                    "sqlite URL has no path: use sqlite://PATH",
                ));
            }
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        Err(Error::invalid(
            "database",
            format!(
                "unsupported URL {:?}: expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB",
                redact(url)
            ),
        ))
    }

    /// Opens the store. `create` allows a SQLite file that does not exist
    /// yet to be created (a typo in a read's path must not make a new database).
    pub async fn open(
        &self,
        schema: &str,
        table: &str,
        create: bool,
    ) -> Result<Arc<dyn MigrationStore>, Error> {
        Ok(match self {
            Self::SqliteFile(path) => {
                if !create && !path.exists() {
                    return Err(Error::store(
                        format!("opening {}", path.display()),
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no such database file (run `waymark init` to create it)",
                        ),
                    ));
                }
                Arc::new(SqliteStore::open_with(SqliteConfig::file(path).table(table)).await?)
            }
            Self::SqliteMemory => {
                // A new in-memory database each time: there is nothing to
                // find uninitialised, so every command sees the empty table.
                let store = SqliteStore::open_with(SqliteConfig::in_memory().table(table)).await?;
                store.prepare().await?;
                Arc::new(store)
            }
            Self::Postgres(url) => Arc::new(
                PostgresStore::connect_with(PostgresConfig::new(url).schema(schema).table(table))
                    .await?,
            ),
        })
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let redacted = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let mut out = format!(
        "{}{}{}",
        &url[..authority_start],
        redacted,
        &url[authority_end..]
    );
    // A password may also come as a query parameter.
    if let Some(start) = out.find("password=") {
        let value_start = start + "password=".len();
        let value_end = out[value_start..]
            .find('&')
            .map_or(out.len(), |i| value_start + i);
        out.replace_range(value_start..value_end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_schemes() {
        assert_eq!(
            Target::parse("sqlite://waymark.db").unwrap(),
            Target::SqliteFile("waymark.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/app.db").unwrap(),
            Target::SqliteFile("/var/lib/app.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:app.db").unwrap(),
            Target::SqliteFile("app.db".into())
        );
        assert_eq!(
            Target::parse("sqlite::memory:").unwrap(),
            Target::SqliteMemory
        );
        assert!(matches!(
            Target::parse("postgresql://u@h/db").unwrap(),
            Target::Postgres(_)
        ));
    }

    #[test]
    fn rejects_other_schemes_without_leaking_passwords() {
        let err = Target::parse("mysql://root:hunter2@db/app").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@db/app"), "{text}");
        assert!(!text.contains("hunter2"));
        assert!(Target::parse("sqlite://").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@h:5432/db"),
            "postgres://app:***@h:5432/db"
        );
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(
            redact("postgres://h/db?password=x&sslmode=disable"),
            "postgres://h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://a:p@ss@h/db"), "postgres://a:***@h/db");
    }
}
