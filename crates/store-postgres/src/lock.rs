//! The run lock: a session-level PostgreSQL advisory lock held by a
//! connection that has left the pool for good.
//!
//! The connection is detached from the pool before it asks for the lock, so
//! it can never be handed to someone else still holding it (the failure of
//! tools whose error path skips the unlock). Dropping the guard closes the
//! connection, and the server frees the lock as the session ends; if the
//! process dies, the socket closes and the same happens.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::error::SqlState;
use waymark_core::{Error, HeldLock, LockGuard};

use crate::conn::Conn;

/// The key of `prepare`'s transaction lock. One key for every table:
/// preparing two tables of one schema at once would otherwise race on
/// `CREATE SCHEMA`. Distinct from every run-lock key, so a process holding
/// its run lock can still prepare.
pub(crate) const PREPARE_KEY: i64 = fnv1a_64(b"waymark:prepare") as i64;

/// The run-lock key of `schema.table`: stable across builds, platforms and
/// Rust versions (FNV-1a, not `std`'s hasher), so every process and host
/// agrees on it.
pub(crate) fn run_lock_key(schema: &str, table: &str) -> i64 {
    fnv1a_64(format!("waymark:run:{schema}.{table}").as_bytes()) as i64
}

/// The largest timeout PostgreSQL accepts, in milliseconds.
const MAX_TIMEOUT_MS: u128 = i32::MAX as u128;

const fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Keeps the lock's connection open; dropping it closes the connection
/// (aborting its task), which ends the session and frees the lock.
struct AdvisoryLock {
    client: ClientWrapper,
    key: i64,
}

impl HeldLock for AdvisoryLock {
    /// The lock lives exactly as long as its session: once the connection
    /// is closed (the backend terminated, the server restarted), it is gone.
    /// `is_closed` costs no round trip; a termination the connection task
    /// has not read yet is noticed at the next check.
    fn check(&self) -> Result<(), Error> {
        if self.client.is_closed() {
            return Err(Error::store(
                "holding the migration lock",
                std::io::Error::other(
                    "the lock's database session ended (terminated or the server restarted): \
                     the lock is lost, so the run stops",
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        tracing::debug!(key = self.key, "releasing the migration lock");
    }
}

/// Why taking the lock failed before it became an [`Error`].
pub(crate) enum LockFailure {
    /// Someone else held it for the whole wait.
    Busy,
    Pg(tokio_postgres::Error),
}

/// Takes the advisory lock `key` on `client`, waiting at most `wait`
/// (server-side `lock_timeout`). `client` must already be detached.
pub(crate) async fn acquire(
    client: ClientWrapper,
    key: i64,
    wait: Duration,
) -> Result<LockGuard, LockFailure> {
    if wait.is_zero() {
        // lock_timeout = 0 would mean "wait forever": ask without waiting.
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(LockFailure::Pg)?;
        if !row.get::<_, bool>(0) {
            return Err(LockFailure::Busy);
        }
    } else {
        // Whole milliseconds, rounded up so the wait is never shorter than asked.
        let wait_ms = wait.as_nanos().div_ceil(1_000_000).min(MAX_TIMEOUT_MS);
        // The statement timeout must not cut the wait short; the connection
        // serves nothing else.
        let script = format!(
            "SET lock_timeout = {wait_ms}; SET statement_timeout = {}; \
             SELECT pg_advisory_lock({key})",
            (wait_ms + 60_000).min(MAX_TIMEOUT_MS)
        );
        match client.batch_execute(&script).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::QUERY_CANCELED)
                ) =>
            {
                return Err(LockFailure::Busy);
            }
            Err(e) => return Err(LockFailure::Pg(e)),
        }
    }
    tracing::debug!(key, "took the migration lock");
    Ok(LockGuard::checked(AdvisoryLock { client, key }))
}

/// What [`lock_or_wait`] found.
pub(crate) enum TryOrWait {
    /// The lock was free and is now held.
    Held(LockGuard),
    /// Another session held it and has released it.
    Released,
}

/// Takes the advisory lock `key` if it is free, keeping `conn` out of the
/// pool to hold it; otherwise waits up to `wait` for the holder to release
/// it, then hands `conn` back to the pool.
///
/// The wait is a transaction-scoped *shared* lock: PostgreSQL grants it to
/// every waiter together when the holder's session lets go, so replicas
/// that lost the race all learn at once that the winner has finished. Its
/// timeouts are `SET LOCAL`, so the connection returns to the pool as it
/// came once the transaction has ended; on any error it is closed instead.
pub(crate) async fn lock_or_wait(
    conn: Conn,
    key: i64,
    wait: Duration,
) -> Result<TryOrWait, LockFailure> {
    let statement = conn
        .prepare_cached("SELECT pg_try_advisory_lock($1)")
        .await
        .map_err(LockFailure::Pg)?;
    let row = conn
        .query_one(&statement, &[&key])
        .await
        .map_err(LockFailure::Pg)?;
    if row.get::<_, bool>(0) {
        tracing::debug!(key, "took the migration lock");
        return Ok(TryOrWait::Held(LockGuard::checked(AdvisoryLock {
            client: conn.detach(),
            key,
        })));
    }
    if wait.is_zero() {
        // lock_timeout = 0 would mean "wait forever".
        conn.release();
        return Err(LockFailure::Busy);
    }
    let wait_ms = wait.as_nanos().div_ceil(1_000_000).min(MAX_TIMEOUT_MS);
    let script = format!(
        "BEGIN; SET LOCAL lock_timeout = {wait_ms}; SET LOCAL statement_timeout = {}; \
         SELECT pg_advisory_xact_lock_shared({key}); COMMIT",
        (wait_ms + 60_000).min(MAX_TIMEOUT_MS)
    );
    match conn.batch_execute(&script).await {
        Ok(()) => {
            conn.release();
            Ok(TryOrWait::Released)
        }
        // The transaction is left aborted: `conn` is closed as it drops.
        Err(e)
            if matches!(
                e.code(),
                Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::QUERY_CANCELED)
            ) =>
        {
            Err(LockFailure::Busy)
        }
        Err(e) => Err(LockFailure::Pg(e)),
    }
}

/// The error for a lock not obtained within `wait`.
pub(crate) fn busy(wait: Duration) -> Error {
    Error::LockTimeout { waited: wait }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        // Fixed values: a change would let old and new versions run at once.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let default = run_lock_key("public", "migrations");
        assert_eq!(default, run_lock_key("public", "migrations"));
        assert_ne!(default, run_lock_key("public", "other"));
        assert_ne!(default, run_lock_key("ops", "migrations"));
        assert_ne!(default, PREPARE_KEY);
    }
}
