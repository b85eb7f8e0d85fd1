//! Learning the moment a lock file's holder lets go: one thread per lock
//! file and process blocks on a shared `flock`, which the kernel grants as
//! soon as the exclusive holder releases, and tells every waiter of this
//! process at once.
//!
//! A poll from the async runtime would learn late: Tokio's timer counts in
//! milliseconds, so a 1 ms pause sleeps 1–2 ms, and the replicas that lost
//! a start-up race (a few milliseconds of work for the winner) returned
//! 1.8 ms after their irreducible cost. The thread is a plain one, not one
//! of Tokio's blocking threads, so it never holds up a runtime's shutdown;
//! a waiter that gives up (its wait ran out, a shutdown) only stops
//! listening. The thread then ends when the holder lets go or the process
//! exits, and later waiters of the same file listen to it instead of
//! starting another: at most one per file, whatever the number of waits.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use tokio::sync::watch;

/// What the thread saw: `None` while the holder holds the lock, then
/// `Ok` once it let go, or the system's error (kind and message: an
/// `io::Error` cannot be cloned to every waiter).
pub(crate) type Released = Option<Result<(), (std::io::ErrorKind, String)>>;

/// The threads blocking on each lock file now.
static WATCHING: LazyLock<Mutex<HashMap<PathBuf, watch::Receiver<Released>>>> =
    LazyLock::new(Default::default);

/// A receiver that changes to `Some` once the holder of `path`'s lock lets
/// go. `file` is `path` opened: the thread that blocks on it, if one is
/// started, takes it.
pub(crate) fn watch(path: &Path, file: File) -> std::io::Result<watch::Receiver<Released>> {
    let mut watching = WATCHING.lock().unwrap_or_else(|poison| poison.into_inner());
    // A thread still blocking (it has not answered, and is alive).
    if let Some(released) = watching.get(path)
        && released.borrow().is_none()
        && released.has_changed().is_ok()
    {
        return Ok(released.clone());
    }
    let (tell, released) = watch::channel(None);
    watching.insert(path.to_owned(), released.clone());
    let key = path.to_owned();
    let ours = released.clone();
    std::thread::Builder::new()
        .name("waymark-lock-wait".to_owned())
        .spawn(move || {
            // Granted as soon as no one holds the lock exclusively; released
            // at once, as the file closes.
            let seen = loop {
                match file.lock_shared() {
                    // A signal interrupted the wait: wait again.
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other.map_err(|err| (err.kind(), err.to_string())),
                }
            };
            drop(file);
            let mut watching = WATCHING.lock().unwrap_or_else(|poison| poison.into_inner());
            if watching
                .get(&key)
                .is_some_and(|current| current.same_channel(&ours))
            {
                watching.remove(&key);
            }
            drop(watching);
            let _ = tell.send(Some(seen));
        })
        .inspect_err(|_| {
            watching.remove(path);
        })?;
    Ok(released)
}
