//! The run locks: an OS file lock on a sidecar file per scope for databases
//! on disk, a process-local mutex per scope for in-memory ones. Either way
//! the holder (host, pid, application, since) is recorded for `locks()`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use waymark_core::Error;
use waymark_core::store::{LockGuard, LockHolder, LockInfo, LockRequest, LockScope, now_utc};

use crate::config::Location;
use crate::release_watch;

/// The longest pause between two attempts while someone else holds the lock.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// The scopes, in the order `locks()` reports them.
const SCOPES: [LockScope; 2] = [LockScope::Run, LockScope::Background];

/// How a store takes its locks.
#[derive(Debug, Clone)]
pub(crate) enum RunLock {
    /// An exclusive `flock` on a file per scope, next to the database.
    File(Arc<LockFiles>),
    /// Shared by the clones of an in-memory store, the only ones that can
    /// reach its database.
    Memory(Arc<MemoryLocks>),
}

/// The sidecar files of one database and table.
#[derive(Debug)]
pub(crate) struct LockFiles {
    run: PathBuf,
    background: PathBuf,
}

impl LockFiles {
    fn path(&self, scope: LockScope) -> Result<&Path, Error> {
        match scope {
            LockScope::Run => Ok(&self.run),
            LockScope::Background => Ok(&self.background),
            other => Err(unknown_scope(other)),
        }
    }
}

/// One mutex per scope, and who holds each.
#[derive(Debug, Default)]
pub(crate) struct MemoryLocks {
    run: Arc<tokio::sync::Mutex<()>>,
    background: Arc<tokio::sync::Mutex<()>>,
    holders: Arc<Mutex<HashMap<LockScope, LockInfo>>>,
}

fn unknown_scope(scope: LockScope) -> Error {
    Error::invalid("scope", format!("the SQLite store has no {scope} lock"))
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
                let table = table.to_ascii_lowercase();
                Self::File(Arc::new(LockFiles {
                    // The name earlier versions lock, so that a rollback to
                    // one of them and this version exclude each other.
                    run: sidecar(&resolved, &table),
                    background: sidecar(&resolved, &format!("{table}-background")),
                }))
            }
            Location::Memory => Self::Memory(Arc::default()),
        }
    }

    /// Takes the lock, waiting up to `request.wait`.
    pub(crate) async fn acquire(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        let wait = request.wait;
        match self {
            Self::Memory(locks) => {
                let mutex = match request.scope {
                    LockScope::Run => &locks.run,
                    LockScope::Background => &locks.background,
                    other => return Err(unknown_scope(other)),
                };
                let guard = tokio::time::timeout(wait, Arc::clone(mutex).lock_owned())
                    .await
                    .map_err(|_| Error::LockTimeout { waited: wait })?;
                Ok(LockGuard::new(MemoryHeld::record(
                    guard,
                    &locks.holders,
                    request,
                )))
            }
            Self::File(files) => {
                let path = files.path(request.scope)?.to_owned();
                let file = open_sidecar_blocking(path.clone()).await?;
                let file = poll(file, &path, wait).await?;
                Ok(LockGuard::new(record_holder(file, &path, request)))
            }
        }
    }

    /// Takes the lock if it is free; otherwise waits up to `wait` for the
    /// holder to release it and returns `None` without taking it.
    ///
    /// The wait blocks on a shared `flock` in a thread of its own, shared
    /// by every waiter of this process ([`release_watch`]): the kernel
    /// wakes it the moment the holder lets go, and a waiter can give up on
    /// time without holding up the runtime's shutdown.
    pub(crate) async fn acquire_or_wait(
        &self,
        request: &LockRequest,
    ) -> Result<Option<LockGuard>, Error> {
        let Self::File(files) = self else {
            return self.acquire(request).await.map(Some);
        };
        let wait = request.wait;
        let path = files.path(request.scope)?.to_owned();
        let file = open_sidecar_blocking(path.clone()).await?;
        match file.try_lock() {
            Ok(()) => return Ok(Some(LockGuard::new(record_holder(file, &path, request)))),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => {
                return Err(Error::store(format!("locking {}", path.display()), err));
            }
        }
        let waiting = || format!("waiting for the lock on {}", path.display());
        if wait.is_zero() {
            // Asked once: no thread to wait on.
            return match file.try_lock_shared() {
                Ok(()) => Ok(None),
                Err(TryLockError::WouldBlock) => Err(Error::LockTimeout { waited: wait }),
                Err(TryLockError::Error(err)) => Err(Error::store(waiting(), err)),
            };
        }
        let mut released =
            release_watch::watch(&path, file).map_err(|err| Error::store(waiting(), err))?;
        let let_go = released.wait_for(Option::is_some);
        let seen = match Instant::now().checked_add(wait) {
            Some(deadline) => match tokio::time::timeout_at(deadline, let_go).await {
                Ok(seen) => seen,
                Err(_) => return Err(Error::LockTimeout { waited: wait }),
            },
            None => let_go.await,
        };
        match seen.as_deref() {
            Ok(Some(Ok(()))) => Ok(None),
            Ok(Some(Err((kind, message)))) => Err(Error::store(
                waiting(),
                std::io::Error::new(*kind, message.clone()),
            )),
            // The thread ended without a word (it cannot, short of a panic).
            Ok(None) | Err(_) => Err(Error::store(
                waiting(),
                std::io::Error::other("the thread waiting for the lock ended"),
            )),
        }
    }

    /// The locks held now and by whom. Reads only: a lock file that does
    /// not exist is a lock no one holds, and none is created.
    pub(crate) async fn held(&self) -> Result<Vec<LockInfo>, Error> {
        match self {
            Self::Memory(locks) => {
                let holders = locks
                    .holders
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                Ok(SCOPES
                    .iter()
                    .filter_map(|scope| holders.get(scope).cloned())
                    .collect())
            }
            Self::File(files) => {
                let files = Arc::clone(files);
                tokio::task::spawn_blocking(move || {
                    let mut held = Vec::new();
                    for scope in SCOPES {
                        if let Some(info) = inspect(scope, files.path(scope)?)? {
                            held.push(info);
                        }
                    }
                    Ok(held)
                })
                .await
                .map_err(|join| Error::store("reading the lock files", join))?
            }
        }
    }
}

/// A memory lock's guard; clears the holder's entry when dropped.
struct MemoryHeld {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    holders: Arc<Mutex<HashMap<LockScope, LockInfo>>>,
    scope: LockScope,
}

impl MemoryHeld {
    fn record(
        guard: tokio::sync::OwnedMutexGuard<()>,
        holders: &Arc<Mutex<HashMap<LockScope, LockInfo>>>,
        request: &LockRequest,
    ) -> Self {
        let mut info = LockInfo::new(request.scope);
        info.holder = Some(request.holder.clone());
        info.since = Some(now_utc());
        holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(request.scope, info);
        Self {
            _guard: guard,
            holders: Arc::clone(holders),
            scope: request.scope,
        }
    }
}

impl Drop for MemoryHeld {
    fn drop(&mut self) {
        self.holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&self.scope);
    }
}

/// `<database>-<name>.lock`: one lock per tracking table and scope, as the
/// contract asks, and never the database file itself, whose POSIX locks
/// SQLite owns (closing any other descriptor of it would drop them).
fn sidecar(database: &Path, name: &str) -> PathBuf {
    let mut file = database.as_os_str().to_owned();
    file.push(format!("-{name}.lock"));
    PathBuf::from(file)
}

async fn open_sidecar_blocking(path: PathBuf) -> Result<File, Error> {
    tokio::task::spawn_blocking(move || open_sidecar(&path))
        .await
        .map_err(|join| Error::store("opening the lock file", join))?
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

/// Writes who holds the lock into its file (which only the holder writes).
/// A failure to write it loses only that information, never the lock.
fn record_holder(mut file: File, path: &Path, request: &LockRequest) -> File {
    let holder = &request.holder;
    let since = now_utc().format(&Rfc3339).unwrap_or_default();
    let text = format!(
        "host={}\npid={}\napplication={}\nsince={since}\n",
        one_line(&holder.host),
        holder.pid,
        one_line(&holder.application)
    );
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(text.as_bytes()));
    if let Err(err) = written {
        tracing::debug!(path = %path.display(), error = %err, "could not record the lock's holder");
    }
    file
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Whether the `scope` lock at `path` is held, and by whom.
fn inspect(scope: LockScope, path: &Path) -> Result<Option<LockInfo>, Error> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Error::store(
                format!("opening the lock file {}", path.display()),
                err,
            ));
        }
    };
    match file.try_lock_shared() {
        Ok(()) => return Ok(None),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(err)) => {
            return Err(Error::store(format!("inspecting {}", path.display()), err));
        }
    }
    let mut text = String::new();
    // The holder may be writing it this instant: a partial read loses only the detail.
    let _ = file.read_to_string(&mut text);
    let mut info = LockInfo::new(scope);
    info.detail = Some(format!("lock file {}", path.display()));
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if let (Some(host), Some(pid), Some(application)) = (
        field("host"),
        field("pid").and_then(|pid| pid.parse().ok()),
        field("application"),
    ) {
        let mut holder = LockHolder::named(application);
        holder.host = host;
        holder.pid = pid;
        info.holder = Some(holder);
    }
    info.since = field("since").and_then(|since| OffsetDateTime::parse(&since, &Rfc3339).ok());
    Ok(Some(info))
}

/// Tries the non-blocking lock with a growing pause until `wait` runs out:
/// a blocking `flock` on a thread could not be given up on time.
async fn poll(file: File, path: &Path, wait: Duration) -> Result<File, Error> {
    let deadline = Instant::now().checked_add(wait);
    let mut pause = Duration::from_millis(2);
    loop {
        match file.try_lock() {
            // Dropping the guard closes the file, which releases the lock;
            // so does the death of the process, SIGKILL included.
            Ok(()) => return Ok(file),
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
    fn sidecars_sit_next_to_the_database() {
        assert_eq!(
            sidecar(Path::new("/data/app.db"), "migrations"),
            PathBuf::from("/data/app.db-migrations.lock")
        );
    }

    #[tokio::test]
    async fn a_held_file_lock_names_its_holder_and_scopes_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"").unwrap();
        let lock = RunLock::new(&Location::File(db), "Migrations");
        assert!(lock.held().await.unwrap().is_empty());
        let request = LockRequest::new(LockScope::Background, Duration::ZERO)
            .with_holder(LockHolder::named("reporter"));
        let guard = lock.acquire(&request).await.unwrap();
        let run = LockRequest::new(LockScope::Run, Duration::ZERO);
        let other = lock.acquire(&run).await.expect("scopes are separate locks");
        let held = lock.held().await.unwrap();
        assert_eq!(held.len(), 2, "{held:?}");
        let background = &held[1];
        assert_eq!(background.scope, LockScope::Background);
        assert_eq!(
            background.holder.as_ref().map(|h| h.application.as_str()),
            Some("reporter")
        );
        assert_eq!(
            background.holder.as_ref().map(|h| h.pid),
            Some(std::process::id())
        );
        assert!(background.since.is_some());
        drop((guard, other));
        assert!(lock.held().await.unwrap().is_empty());
    }
}
