//! The run and background locks: session-level PostgreSQL advisory locks
//! held by a connection that has left the pool for good.
//!
//! The connection is detached from the pool before it asks for the lock, so
//! it can never be handed to someone else still holding it (the failure of
//! tools whose error path skips the unlock). Dropping the guard unlocks on
//! that session and, once the server has said the lock is released, keeps
//! the session aside for the store's next lock ([`SpareSession`]), never in
//! the pool; if the unlock fails or cannot run, the connection is closed
//! and the server frees the lock as the session ends. If the process dies,
//! the socket closes and the same happens. A wait abandoned half-way is
//! cancelled on the server before its connection closes, so no session is
//! left queued for the lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use waymark_core::Error;
use waymark_core::store::advisory::{ANNOUNCE, DeadHolderBound, session_tag};
use waymark_core::store::{HeldLock, LockGuard, LockHolder, LockScope, fnv1a_64};

use crate::conn::{Conn, Detached};

/// The key of `prepare`'s transaction lock. One key for every table:
/// preparing two tables of one schema at once would otherwise race on
/// `CREATE SCHEMA`. Distinct from every lock key of a table, so a process
/// holding its run lock can still prepare.
pub(crate) const PREPARE_KEY: i64 = fnv1a_64(b"waymark:prepare") as i64;

/// The key of `scope`'s lock on `schema.table`: FNV-1a of
/// `waymark:<scope>:<schema>.<table>`, stable across builds, platforms and
/// Rust versions, so every process and host agrees on it. The run lock's is
/// the key every earlier version used: old and new versions exclude each
/// other.
pub(crate) fn lock_key(scope: LockScope, schema: &str, table: &str) -> i64 {
    fnv1a_64(format!("waymark:{scope}:{schema}.{table}").as_bytes()) as i64
}

/// The largest timeout PostgreSQL accepts, in milliseconds.
const MAX_TIMEOUT_MS: u128 = i32::MAX as u128;

/// Whole milliseconds for a server-side timeout, rounded up so the wait is
/// never shorter than asked, clamped to what the server accepts.
pub(crate) fn timeout_ms(limit: Duration) -> u128 {
    limit.as_nanos().div_ceil(1_000_000).min(MAX_TIMEOUT_MS)
}

/// Unlocks `key` on the session that held it, in one round trip, and
/// leaves the session as it was before the lock (its timeouts reset, named
/// idle); the row says `t` when the lock was held and is now free.
fn release_script(key: i64) -> String {
    format!(
        "RESET lock_timeout; RESET statement_timeout; \
         SELECT pg_advisory_unlock({key}), set_config('application_name', 'waymark idle lock session', false)"
    )
}

/// Whether the answer to [`release_script`] confirms the unlock.
fn unlocked(messages: &[tokio_postgres::SimpleQueryMessage]) -> bool {
    messages.iter().any(|message| {
        matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))
    })
}

/// The store's lock session kept between two locks: a run that locks after
/// another does not open a new session (about 3.5 ms on loopback, the
/// largest fixed cost of a short run). It holds no lock while it waits
/// here (only a session whose unlock the server confirmed comes back), it
/// is never in the pool, and one at most is kept; shared by the store's
/// clones.
#[derive(Clone)]
pub(crate) struct SpareSession(Arc<Spare>);

/// The longest a lock waits for this store's own unlocks in flight.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

struct Spare {
    slot: Mutex<Option<ClientWrapper>>,
    /// Unlocks sent and not yet answered.
    releasing: AtomicUsize,
    released: Notify,
    /// The longest an unlock may take before its session is closed instead.
    limit: Duration,
}

impl SpareSession {
    /// An empty slot; an unlock that takes longer than `limit` closes its
    /// session instead.
    pub(crate) fn new(limit: Duration) -> Self {
        Self(Arc::new(Spare {
            slot: Mutex::new(None),
            releasing: AtomicUsize::new(0),
            released: Notify::new(),
            limit,
        }))
    }

    /// The kept session, if there is one still open, once the unlocks in
    /// flight have been answered (waiting at most their limit): a lock
    /// asked for right after this store released one must not find its own
    /// release still under way.
    pub(crate) async fn take(&self) -> Option<ClientWrapper> {
        // A statement timeout may be "never": the wait is bounded anyway.
        let deadline = tokio::time::Instant::now() + self.0.limit.min(RELEASE_WAIT);
        loop {
            let released = self.0.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.0.releasing.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break;
            }
        }
        let mut slot = self.0.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.take().filter(|client| !client.is_closed())
    }

    /// Keeps `client` (which holds no lock) for the next lock; if one is
    /// kept already, `client` is closed.
    fn put(&self, client: ClientWrapper) {
        let mut slot = self.0.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(client);
        }
    }

    /// Unlocks `key` on `client` in a task of `runtime`, then keeps the
    /// session or closes it.
    fn release(&self, runtime: &tokio::runtime::Handle, client: ClientWrapper, key: i64) {
        self.0.releasing.fetch_add(1, Ordering::AcqRel);
        let spare = self.clone();
        runtime.spawn(async move {
            let script = release_script(key);
            let answer = tokio::time::timeout(
                spare.0.limit.min(RELEASE_WAIT),
                client.simple_query(&script),
            )
            .await;
            match answer {
                Ok(Ok(messages)) if unlocked(&messages) => spare.put(client),
                // Not confirmed in time: closed, and the server frees what
                // it held as the session ends.
                _ => drop(client),
            }
            spare.0.releasing.fetch_sub(1, Ordering::AcqRel);
            spare.0.released.notify_waiters();
        });
    }
}

/// Keeps the lock's connection open; dropping it unlocks and keeps the
/// session aside, or closes the connection (aborting its task), which
/// ends the session and frees the lock.
struct AdvisoryLock {
    client: Option<ClientWrapper>,
    key: i64,
    scope: LockScope,
    spare: SpareSession,
}

impl HeldLock for AdvisoryLock {
    /// The lock lives exactly as long as its session: once the connection
    /// is closed (the backend terminated, the server restarted), it is gone.
    /// `is_closed` costs no round trip; a termination the connection task
    /// has not read yet is noticed at the next check.
    fn check(&self) -> Result<(), Error> {
        if self.client.as_ref().is_none_or(|client| client.is_closed()) {
            return Err(Error::store_message(
                format!("holding the {} lock", self.scope),
                "the lock's database session ended (terminated or the server restarted): \
                 the lock is lost, so the run stops",
            ));
        }
        Ok(())
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        tracing::debug!(key = self.key, scope = %self.scope, "releasing the lock");
        let Some(client) = self.client.take() else {
            return;
        };
        // Without a runtime the unlock cannot run: closing frees the lock.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.spare.release(&runtime, client, self.key);
    }
}

/// What the lock's session says once it holds the lock: who holds it
/// (its `application_name`, which `locks()` reads back) and how soon the
/// server frees it if that holder vanishes (its own keepalives).
pub(crate) struct Announcement {
    tag: String,
    bound: DeadHolderBound,
}

impl Announcement {
    pub(crate) fn new(scope: LockScope, holder: &LockHolder, bound: DeadHolderBound) -> Self {
        Self {
            tag: session_tag(scope, holder),
            bound,
        }
    }

    /// Sends it on the session that now holds the lock.
    async fn send(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let [idle, interval, count, user_timeout] = self.bound.parameters();
        client
            .query_one(
                ANNOUNCE,
                &[&self.tag, &idle, &interval, &count, &user_timeout],
            )
            .await
            .map(drop)
    }
}

/// Why taking the lock failed before it became an [`Error`].
pub(crate) enum LockFailure {
    /// Someone else held it for the whole wait.
    Busy,
    /// The server or the session failed before the lock was held.
    Pg(tokio_postgres::Error),
    /// The lock was taken, but the session could not announce itself, so
    /// it was closed (which frees the lock as the server notices): trying
    /// again at once could see the lock still held by it.
    Unannounced(tokio_postgres::Error),
}

/// Takes the advisory lock `key` on the detached `client`, waiting at most
/// `wait` (server-side `lock_timeout`).
pub(crate) async fn acquire(
    client: Detached,
    scope: LockScope,
    key: i64,
    wait: Duration,
    announcement: &Announcement,
    spare: &SpareSession,
) -> Result<LockGuard, LockFailure> {
    if wait.is_zero() {
        // lock_timeout = 0 would mean "wait forever": ask without waiting.
        let row = match client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
        {
            Ok(row) => row,
            Err(e) => {
                client.discard();
                return Err(LockFailure::Pg(e));
            }
        };
        if !row.get::<_, bool>(0) {
            client.discard();
            return Err(LockFailure::Busy);
        }
    } else {
        let wait_ms = timeout_ms(wait);
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
                client.discard();
                return Err(LockFailure::Busy);
            }
            Err(e) => {
                client.discard();
                return Err(LockFailure::Pg(e));
            }
        }
    }
    held(client, scope, key, announcement, spare).await
}

/// The guard of the lock `key` that `client` has just taken, once the
/// session has announced itself; if it cannot, the session is closed (which
/// frees the lock) rather than held without the bound.
async fn held(
    client: Detached,
    scope: LockScope,
    key: i64,
    announcement: &Announcement,
    spare: &SpareSession,
) -> Result<LockGuard, LockFailure> {
    if let Err(e) = announcement.send(&client).await {
        client.discard();
        return Err(LockFailure::Unannounced(e));
    }
    tracing::debug!(key, %scope, holder = %announcement.tag, "took the lock");
    Ok(LockGuard::checked(AdvisoryLock {
        client: Some(client.into_client()),
        key,
        scope,
        spare: spare.clone(),
    }))
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
    scope: LockScope,
    key: i64,
    wait: Duration,
    announcement: &Announcement,
    spare: &SpareSession,
) -> Result<TryOrWait, LockFailure> {
    let tried = async {
        let statement = conn
            .prepare_cached("SELECT pg_try_advisory_lock($1)")
            .await?;
        Ok(conn.query_one(&statement, &[&key]).await?.get::<_, bool>(0))
    };
    match tried.await {
        Ok(true) => {}
        Ok(false) => return wait_for_release(conn, key, wait).await,
        Err(e) => {
            conn.discard();
            return Err(LockFailure::Pg(e));
        }
    }
    // Out of the pool for good: the session now holds the lock.
    held(conn.detach(), scope, key, announcement, spare)
        .await
        .map(TryOrWait::Held)
}

/// Tries the lock `key` on the kept session `client`, without waiting:
/// the guard when it was free; `Ok(None)` when another session holds it
/// (the kept session goes back aside, holding nothing); [`LockFailure::Pg`]
/// when the kept session failed before holding anything (it is closed, and
/// the caller may go on with the pool).
pub(crate) async fn try_on_spare(
    client: Detached,
    scope: LockScope,
    key: i64,
    announcement: &Announcement,
    spare: &SpareSession,
) -> Result<Option<LockGuard>, LockFailure> {
    match client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => held(client, scope, key, announcement, spare)
            .await
            .map(Some),
        Ok(_) => {
            spare.put(client.into_client());
            Ok(None)
        }
        Err(e) => {
            client.discard();
            Err(LockFailure::Pg(e))
        }
    }
}

/// Waits for the holder of `key` to let go, on `conn` (see [`lock_or_wait`]).
pub(crate) async fn wait_for_release(
    conn: Conn,
    key: i64,
    wait: Duration,
) -> Result<TryOrWait, LockFailure> {
    if wait.is_zero() {
        // lock_timeout = 0 would mean "wait forever".
        conn.release();
        return Err(LockFailure::Busy);
    }
    let wait_ms = timeout_ms(wait);
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
        // The transaction is left aborted: the connection is closed.
        Err(e)
            if matches!(
                e.code(),
                Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::QUERY_CANCELED)
            ) =>
        {
            conn.discard();
            Err(LockFailure::Busy)
        }
        Err(e) => {
            conn.discard();
            Err(LockFailure::Pg(e))
        }
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
        // Fixed value: the run lock's key of every earlier version, so that
        // old and new versions never run at once.
        let default = lock_key(LockScope::Run, "public", "migrations");
        assert_eq!(default, fnv1a_64(b"waymark:run:public.migrations") as i64);
        assert_eq!(default, RUN_KEY_OF_EARLIER_VERSIONS);
        assert_ne!(default, lock_key(LockScope::Run, "public", "other"));
        assert_ne!(default, lock_key(LockScope::Run, "ops", "migrations"));
        assert_ne!(default, PREPARE_KEY);
        let background = lock_key(LockScope::Background, "public", "migrations");
        assert_eq!(
            background,
            fnv1a_64(b"waymark:background:public.migrations") as i64
        );
        assert_ne!(background, default);
        assert_ne!(background, PREPARE_KEY);
    }

    /// `waymark:run:public.migrations` as the releases before lock scopes hashed it.
    const RUN_KEY_OF_EARLIER_VERSIONS: i64 = 0x1407_d146_a822_ee90;

    #[test]
    fn server_timeouts_round_up_and_clamp() {
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(timeout_ms(Duration::MAX), MAX_TIMEOUT_MS);
    }
}
