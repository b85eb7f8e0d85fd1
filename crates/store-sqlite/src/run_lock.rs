//! The run lock: an OS file lock on a sidecar file for databases on disk, a
//! process-local mutex for in-memory ones.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use waymark_core::{Error, LockGuard};

use crate::config::Location;

/// The longest pause between two attempts while someone else holds the lock.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause of a replica waiting for the holder to finish: short,
/// since every waiter should learn at about the same time that it is done.
const WAIT_PAUSE: Duration = Duration::from_millis(5);

/// How a store takes its run lock.
#[derive(Debug, Clone)]
pub(crate) enum RunLock {
    /// An exclusive `flock` on this file, next to the database.
    File(Arc<PathBuf>),
    /// Shared by the clones of an in-memory store, the only ones that can
    /// reach its database.
    Memory(Arc<tokio::sync::Mutex<()>>),
}

impl RunLock {
    /// Called once the database file exists, so its path can be resolved.
    pub(crate) fn new(location: &Location, table: &str) -> Self {
        match location {
            Location::File(path) => {
                // One database reached by two spellings (a symlink, `./`,
                // a relative path before a `chdir`) and one table in two
                // cases (SQLite ignores it) must share one lock file.
                let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                Self::File(Arc::new(sidecar(&resolved, &table.to_ascii_lowercase())))
            }
            Location::Memory => Self::Memory(Arc::default()),
        }
    }

    /// Takes the lock, waiting up to `wait`.
    pub(crate) async fn acquire(&self, wait: Duration) -> Result<LockGuard, Error> {
        match self {
            Self::Memory(mutex) => tokio::time::timeout(wait, Arc::clone(mutex).lock_owned())
                .await
                .map(LockGuard::new)
                .map_err(|_| Error::LockTimeout { waited: wait }),
            Self::File(path) => {
                let path = Arc::clone(path);
                let file = tokio::task::spawn_blocking(move || open_sidecar(&path))
                    .await
                    .map_err(|join| Error::store("opening the lock file", join))??;
                poll(file, self.path(), wait).await
            }
        }
    }

    /// Takes the lock if it is free; otherwise waits up to `wait` for the
    /// holder to release it and returns `None` without taking it.
    ///
    /// The wait polls a shared `flock` without blocking, like
    /// [`acquire`](Self::acquire) polls the exclusive one: a blocking
    /// `flock` on a thread could not be given up on time, and would keep
    /// the runtime from shutting down until the holder let go.
    pub(crate) async fn acquire_or_wait(&self, wait: Duration) -> Result<Option<LockGuard>, Error> {
        let Self::File(path) = self else {
            return self.acquire(wait).await.map(Some);
        };
        let opened = Arc::clone(path);
        let file = tokio::task::spawn_blocking(move || open_sidecar(&opened))
            .await
            .map_err(|join| Error::store("opening the lock file", join))??;
        match file.try_lock() {
            Ok(()) => return Ok(Some(LockGuard::new(file))),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => {
                return Err(Error::store(format!("locking {}", path.display()), err));
            }
        }
        let deadline = Instant::now().checked_add(wait);
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock_shared() {
                // The holder has let go; the shared lock is released as the
                // file closes on return.
                Ok(()) => return Ok(None),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(err)) => {
                    return Err(Error::store(
                        format!("waiting for the lock on {}", path.display()),
                        err,
                    ));
                }
            }
            let left = match deadline {
                Some(deadline) if Instant::now() >= deadline => {
                    return Err(Error::LockTimeout { waited: wait });
                }
                Some(deadline) => deadline - Instant::now(),
                None => WAIT_PAUSE,
            };
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(WAIT_PAUSE);
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::File(path) => path,
            Self::Memory(_) => Path::new(""),
        }
    }
}

/// `<database>-<table>.lock`: one lock per tracking table, as the contract
/// asks, and never the database file itself, whose POSIX locks SQLite owns
/// (closing any other descriptor of it would drop them).
fn sidecar(database: &Path, table: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(format!("-{table}.lock"));
    PathBuf::from(name)
}

fn open_sidecar(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|err| Error::store(format!("opening the lock file {}", path.display()), err))
}

/// Tries the non-blocking lock with a growing pause until `wait` runs out:
/// a blocking `flock` on a thread could not be given up on time.
async fn poll(file: File, path: &Path, wait: Duration) -> Result<LockGuard, Error> {
    let deadline = Instant::now().checked_add(wait);
    let mut pause = Duration::from_millis(2);
    loop {
        match file.try_lock() {
            // Dropping the guard closes the file, which releases the lock;
            // so does the death of the process, SIGKILL included.
            Ok(()) => return Ok(LockGuard::new(file)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => {
                return Err(Error::store(format!("locking {}", path.display()), err));
            }
        }
        let now = Instant::now();
        let left = match deadline {
            Some(deadline) if now >= deadline => return Err(Error::LockTimeout { waited: wait }),
            Some(deadline) => deadline - now,
            None => MAX_PAUSE,
        };
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_sits_next_to_the_database() {
        assert_eq!(
            sidecar(Path::new("/data/app.db"), "migrations"),
            PathBuf::from("/data/app.db-migrations.lock")
        );
    }
}
