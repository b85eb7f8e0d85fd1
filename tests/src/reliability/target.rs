//! A fresh database for the workload, on either backend: what the helper
//! is pointed at, and how the test checks it between runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::Client;
use waymark_postgres::PostgresStore;
use waymark_sqlite::SqliteStore;

use super::workload::{self, Snapshot, Variant};
use crate::pg::{TestDatabase, fresh_database};

/// The `application_name` of the helper's sessions, so the test can tell
/// them from its own.
pub const HELPER_APPLICATION: &str = "waymark_helper";

/// Which backend a test runs the workload on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A database of its own on the test cluster.
    Postgres,
}

impl Backend {
    /// The name used on the helper's command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A fresh database with the workload's data tables, and the test's own
/// store on it for inspecting.
pub enum Target {
    /// A SQLite file.
    Sqlite {
        /// Keeps the file's directory alive.
        dir: TempDir,
        /// The database file.
        path: PathBuf,
        /// The test's store on it.
        store: SqliteStore,
    },
    /// A PostgreSQL database.
    Postgres {
        /// A directory for start files.
        dir: TempDir,
        /// Keeps the database alive.
        db: TestDatabase,
        /// The URL the helper connects with (naming its sessions).
        url: String,
        /// The test's store on it.
        store: PostgresStore,
        /// The test's session, for the data tables and `pg_stat_activity`
        /// (boxed: a client is large).
        admin: Box<Client>,
    },
}

impl Target {
    /// A fresh database on `backend` with the data tables created.
    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let path = dir.path().join("workload.db");
                workload::sqlite::setup(&path).expect("creating the SQLite data tables");
                let store = SqliteStore::open(&path)
                    .await
                    .expect("opening the test's store");
                Self::Sqlite { dir, path, store }
            }
            Backend::Postgres => {
                let db = fresh_database().await;
                let admin = db.admin().await;
                admin
                    .batch_execute(workload::postgres::SETUP)
                    .await
                    .expect("creating the PostgreSQL data tables");
                let store = db.store().await;
                let url = with_application_name(db.url(), HELPER_APPLICATION);
                Self::Postgres {
                    dir: tempfile::tempdir().expect("a temporary directory"),
                    db,
                    url,
                    store,
                    admin: Box::new(admin),
                }
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite { .. } => Backend::Sqlite,
            Self::Postgres { .. } => Backend::Postgres,
        }
    }

    /// A directory that lives as long as the target, for start files.
    pub fn scratch(&self) -> &Path {
        match self {
            Self::Sqlite { dir, .. } | Self::Postgres { dir, .. } => dir.path(),
        }
    }

    /// The helper's arguments to run `variant` here; with `start`, after
    /// that start line is crossed and the delay has passed.
    pub fn helper_args(&self, variant: Variant, start: Option<(&Path, Duration)>) -> Vec<String> {
        let target = match self {
            Self::Sqlite { path, .. } => path.display().to_string(),
            Self::Postgres { url, .. } => url.clone(),
        };
        let mut args = vec![
            variant.name().to_owned(),
            self.backend().name().to_owned(),
            target,
        ];
        if let Some((path, delay)) = start {
            args.push(path.display().to_string());
            args.push(delay.as_millis().to_string());
        }
        args
    }

    /// After helpers ended (killed or not): waits for PostgreSQL to notice
    /// their sessions are gone (instant for SQLite, where the kernel drops
    /// a dead process's file locks), then checks that no lock is left: no
    /// advisory lock in `pg_locks`, and the run lock taken without waiting.
    pub async fn check_no_lock_left(&self) -> Result<(), String> {
        match self {
            Self::Sqlite { store, .. } => workload::sqlite::lock_is_free(store)
                .await
                .map_err(|e| format!("the run lock was left held: {e}")),
            Self::Postgres {
                db, store, admin, ..
            } => {
                wait_for_sessions_gone(admin, HELPER_APPLICATION, Duration::from_secs(20)).await?;
                let left = db.wait_for_no_advisory_locks(Duration::from_secs(5)).await;
                if !left.is_empty() {
                    return Err(format!("advisory locks left: {left:?}"));
                }
                workload::postgres::lock_is_free(store)
                    .await
                    .map_err(|e| format!("the run lock was left held: {e}"))
            }
        }
    }

    /// What the workload left in the database.
    pub async fn snapshot(&self) -> Snapshot {
        let snapshot = match self {
            Self::Sqlite { store, path, .. } => workload::sqlite::snapshot(store, path).await,
            Self::Postgres { store, admin, .. } => workload::postgres::snapshot(store, admin).await,
        };
        snapshot.unwrap_or_else(|e| panic!("reading the {} snapshot: {e}", self.backend().name()))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { path, .. } => write!(f, "Target::Sqlite({})", path.display()),
            Self::Postgres { db, .. } => write!(f, "Target::Postgres({})", db.name()),
        }
    }
}

/// `url` with `application_name` set, whichever form the URL has.
pub fn with_application_name(url: &str, name: &str) -> String {
    with_param(url, "application_name", name)
}

/// `url` with the connection parameter `key` set to `value` (a URL query
/// parameter, or a libpq `key=value` pair); it overrides the same setting
/// made earlier in the URL, such as the user or the database.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}{key}={value}")
    } else {
        format!("{url} {key}={value}")
    }
}

/// Waits until no session named `application` is connected to the
/// database of `admin`: a killed client's backend ends (rolling back its
/// transaction) as soon as it reads the closed socket.
pub async fn wait_for_sessions_gone(
    admin: &Client,
    application: &str,
    limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
                &[&application],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{left} helper session(s) still open after {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
