//! The [`MigrationStore`] implementation: the tracking table's operations.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use crate::conn::Detached;
use waymark_core::store::advisory::{HELD_LOCKS, parse_session_tag};
use waymark_core::store::{
    LeftToRegister, LockGuard, LockInfo, LockRequest, LockScope, Prefixes, PreparePlan, RowChange,
    SetState, check_unique_ids, name_conflict, now_utc,
};
use waymark_core::time::OffsetDateTime;
use waymark_core::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

use crate::PostgresStore;
use crate::call::{Retry, body};
use crate::conn::Conn;
use crate::error::{Limit, missing_table, timed_out};
use crate::lock::{self, LockFailure};
use crate::row::{self, check_text, storable_error};
use crate::schema;

#[async_trait]
impl MigrationStore for PostgresStore {
    async fn prepare(&self) -> Result<(), Error> {
        let schema = self.schema();
        let sql = self.statements();
        self.call(
            "preparing",
            Retry::Once,
            body!(|conn| {
                // Look first, outside any transaction or lock: on a database
                // prepared before (every start but the first) this is all.
                if schema::is_complete(&conn, schema, sql).await? {
                    return Ok(());
                }
                let tx = conn.transaction().await?;
                schema::prepare(
                    &tx,
                    schema,
                    sql,
                    self.adoption(),
                    self.second_table_allowed(),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }),
        )
        .await
    }

    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        let schema = self.schema();
        let sql = self.statements();
        let (choices, allow) = (self.adoption(), self.second_table_allowed());
        self.call(
            "planning the preparation",
            Retry::Once,
            body!(|conn| {
                let client: &deadpool_postgres::Client = &conn;
                Ok(schema::plan(client, schema, sql, choices, allow).await?)
            }),
        )
        .await
    }

    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        check_unique_ids(defs)?;
        for def in defs {
            check_text("name", def.name())?;
            check_text("description", def.description())?;
        }
        let prefixes = Prefixes::of(defs);
        // The body may run twice (a lost connection): it borrows these.
        let (candidates, prefixes) = (&prefixes.fingerprints(), &prefixes);
        let sql = self.statements();
        self.call(
            "registering migrations",
            Retry::Once,
            body!(|conn| {
                // Read first: only what follows the longest prefix of this
                // set registered before needs checking and inserting; in the
                // steady state (the whole set seen before) nothing is
                // written or locked.
                let recorded = conn.prepare_cached(&sql.recorded).await?;
                let recorded: Vec<String> = conn
                    .query(&recorded, &[candidates])
                    .await?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                let left = prefixes.unregistered(|fp| recorded.iter().any(|r| r == fp));
                if left == LeftToRegister::Nothing {
                    return Ok(());
                }
                let seen = recorded.iter().any(|r| r == prefixes.whole());
                // Inserted in id order, so concurrent registrations of
                // overlapping sets wait for each other instead of
                // deadlocking. An id repeated with the same name keeps its
                // first description, as in the other backends.
                let mut by_id: HashMap<i64, &MigrationDef> = HashMap::new();
                for def in left.filter(defs) {
                    by_id.entry(def.id().get()).or_insert(def);
                }
                let mut ids: Vec<i64> = by_id.keys().copied().collect();
                ids.sort_unstable();
                let names: Vec<&str> = ids.iter().map(|id| by_id[id].name()).collect();
                let descriptions: Vec<&str> =
                    ids.iter().map(|id| by_id[id].description()).collect();
                // A set seen before that is still checked in full (a small
                // one): nothing is written when every row is in place.
                if seen {
                    let client: &deadpool_postgres::Client = &conn;
                    let tracked = tracked_names(client, &sql.names, &ids).await?;
                    if names
                        .iter()
                        .zip(&ids)
                        .all(|(name, id)| tracked.get(id).is_some_and(|t| t == name))
                    {
                        return Ok(());
                    }
                }
                let tx = conn.transaction().await?;
                if !ids.is_empty() {
                    let insert = tx.prepare_cached(&sql.insert_many).await?;
                    tx.execute(&insert, &[&ids, &names, &descriptions]).await?;
                    // Read back after inserting: a row another process
                    // inserted at the same moment is visible now, and checked.
                    let tracked_names = tracked_names(&tx, &sql.names, &ids).await?;
                    // The first conflict in declaration order, as every backend reports it.
                    let conflict = left.filter(defs).find_map(|def| {
                        let name = tracked_names.get(&def.id().get())?;
                        (name != def.name()).then(|| name_conflict(def.id(), name, def.name()))
                    });
                    if let Some(conflict) = conflict {
                        tx.rollback().await?;
                        return Err(conflict.into());
                    }
                }
                let record = tx.prepare_cached(&sql.insert_fingerprint).await?;
                tx.execute(&record, &[&prefixes.whole(), &now_utc()])
                    .await?;
                tx.commit().await?;
                Ok(())
            }),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<Migration>, Error> {
        self.select("listing migrations", &self.statements().list)
            .await
    }

    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        // Checked before anything: a write to a row whose atomic
        // transaction is open in this store would wait for that
        // transaction (or race its commit).
        self.in_flight().check(id)?;
        let statement = self.statements().update(&change);
        match change {
            RowChange::MarkPending => {
                let doing = "marking a migration pending";
                self.update_row(doing, Retry::Once, statement, id, &[])
                    .await
            }
            RowChange::MarkExecuted => {
                let doing = "marking a migration executed";
                self.update_row(doing, Retry::Once, statement, id, &[&now_utc()])
                    .await
            }
            RowChange::RecordSuccess => {
                // Never retried: a second run would count a second attempt.
                let doing = "recording a success";
                self.update_row(doing, Retry::Never, statement, id, &[&now_utc()])
                    .await
            }
            RowChange::RecordFailure(error) => {
                let error = storable_error(error);
                let doing = "recording a failure";
                self.update_row(doing, Retry::Never, statement, id, &[&error.as_ref()])
                    .await
            }
            RowChange::SaveCheckpoint(checkpoint) => {
                check_text("checkpoint", checkpoint)?;
                let doing = "saving a checkpoint";
                self.update_row(doing, Retry::Once, statement, id, &[&checkpoint])
                    .await
            }
            other => Err(Error::invalid(
                "change",
                format!("{other:?} is not supported by this version of the PostgreSQL store"),
            )),
        }
    }

    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        self.select("listing pending migrations", &self.statements().pending)
            .await
    }

    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        let raw = id.get();
        let sql = self.statements();
        self.call(
            "reading a migration",
            Retry::Once,
            body!(|conn| {
                let statement = conn.prepare_cached(&sql.get).await?;
                match conn.query_opt(&statement, &[&raw]).await? {
                    Some(row) => row::migration(&row),
                    None => Err(Error::NotFound { id }.into()),
                }
            }),
        )
        .await
    }

    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        if fingerprint.contains('\0') {
            // Never registered: it could not have been stored.
            return Ok(SetState::Unregistered);
        }
        let sql = self.statements();
        self.call(
            "checking whether migrations are settled",
            Retry::Once,
            body!(|conn| {
                let statement = match conn.prepare_cached(&sql.set_state).await {
                    Err(e) if missing_table(&e) => return Ok(SetState::Unregistered),
                    other => other?,
                };
                match conn.query_one(&statement, &[&fingerprint]).await {
                    Err(e) if missing_table(&e) => Ok(SetState::Unregistered),
                    Ok(row) => Ok(SetState::from_answers(row.get(0), row.get(1))),
                    Err(e) => Err(e.into()),
                }
            }),
        )
        .await
    }

    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        let (scope, wait) = (request.scope, request.wait);
        // The server gives up at `wait`; this only guards against a server
        // that stops answering. Dropping the future cancels the wait on the
        // server and closes the connection.
        let limit = wait.saturating_add(self.statement_timeout());
        let doing = format!("taking the {scope} lock");
        let key = self.lock_key_for(scope);
        let announcement = lock::Announcement::new(scope, &request.holder, *self.dead_holder());
        let spare = self.spare_session();
        let taking = async {
            if let Some(client) = spare.take().await {
                let client = Detached::new(client, self.canceller().clone());
                match lock::acquire(client, scope, key, wait, &announcement, spare).await {
                    // The kept session failed (it may have died while idle):
                    // it is closed, and a fresh one asks again.
                    Err(LockFailure::Pg(e)) => {
                        tracing::debug!(error = %e, "the kept lock session failed; opening another");
                    }
                    other => return Ok(other),
                }
            }
            let client = self.checkout().await?.detach();
            Ok(lock::acquire(client, scope, key, wait, &announcement, spare).await)
        };
        match tokio::time::timeout(limit, taking).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(guard))) => Ok(guard),
            Ok(Ok(Err(LockFailure::Busy))) => Err(lock::busy(wait)),
            Ok(Ok(Err(LockFailure::Pg(e) | LockFailure::Unannounced(e)))) => {
                Err(self.pg_error(&doing, e))
            }
            Err(_) => Err(Error::store(
                self.context(&doing),
                timed_out(Limit::Lock, limit, "no answer from the server"),
            )),
        }
    }

    /// Read from the server's lock table: every replica's lock shows,
    /// whichever host holds it. The holder is what its session announced
    /// (`application_name`); a lock taken by an older version, or a session
    /// of another role the reader may not inspect, shows without one.
    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        let keys = [
            (self.lock_key_for(LockScope::Run), LockScope::Run),
            (
                self.lock_key_for(LockScope::Background),
                LockScope::Background,
            ),
        ];
        let wanted: Vec<i64> = keys.iter().map(|(key, _)| *key).collect();
        let wanted = &wanted;
        let rows = self
            .call(
                "reading who holds the locks",
                Retry::Once,
                body!(|conn| {
                    let statement = conn.prepare_cached(HELD_LOCKS).await?;
                    Ok(conn.query(&statement, &[wanted]).await?)
                }),
            )
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let key: i64 = row.get(0);
            let Some(&(_, scope)) = keys.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            let pid: i32 = row.get(1);
            let tag: Option<String> = row.get(2);
            let address: Option<String> = row.get(3);
            let since: Option<OffsetDateTime> = row.get(4);
            let mut info = LockInfo::new(scope);
            info.holder = tag
                .as_deref()
                .and_then(parse_session_tag)
                .filter(|(tagged, _)| *tagged == scope)
                .map(|(_, holder)| holder);
            info.since = since;
            info.detail = Some(match address {
                Some(address) => format!("server backend pid {pid}, client {address}"),
                None => format!("server backend pid {pid}"),
            });
            held.push(info);
        }
        Ok(held)
    }

    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        let (scope, wait) = (request.scope, request.wait);
        let limit = wait.saturating_add(self.statement_timeout());
        let doing = format!("taking or waiting for the {scope} lock");
        let key = self.lock_key_for(scope);
        let announcement = lock::Announcement::new(scope, &request.holder, *self.dead_holder());
        let spare = self.spare_session();
        let taking = async {
            if let Some(client) = spare.take().await {
                let client = Detached::new(client, self.canceller().clone());
                match lock::try_on_spare(client, scope, key, &announcement, spare).await {
                    Ok(Some(guard)) => return Ok(Ok(lock::TryOrWait::Held(guard))),
                    // Held elsewhere: wait on a pooled session, as below.
                    Ok(None) => {
                        let conn = self.checkout().await?;
                        return Ok(lock::wait_for_release(conn, key, wait).await);
                    }
                    // The kept session failed before holding anything and
                    // is closed: the pool's way.
                    Err(LockFailure::Pg(e)) => {
                        tracing::debug!(error = %e, "the kept lock session failed; opening another");
                    }
                    Err(other) => return Ok(Err(other)),
                }
            }
            let conn = self.checkout().await?;
            Ok(lock::lock_or_wait(conn, scope, key, wait, &announcement, spare).await)
        };
        match tokio::time::timeout(limit, taking).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(lock::TryOrWait::Held(guard)))) => Ok(Some(guard)),
            Ok(Ok(Ok(lock::TryOrWait::Released))) => Ok(None),
            Ok(Ok(Err(LockFailure::Busy))) => Err(lock::busy(wait)),
            Ok(Ok(Err(LockFailure::Pg(e) | LockFailure::Unannounced(e)))) => {
                Err(self.pg_error(&doing, e))
            }
            Err(_) => Err(Error::store(
                self.context(&doing),
                timed_out(Limit::Lock, limit, "no answer from the server"),
            )),
        }
    }
}

/// The tracked names of `ids` (`names`: the statement reading them).
async fn tracked_names<C: GenericClient>(
    client: &C,
    names: &str,
    ids: &[i64],
) -> Result<HashMap<i64, String>, tokio_postgres::Error> {
    let statement = client.prepare_cached(names).await?;
    let mut tracked = HashMap::with_capacity(ids.len());
    for row in client.query(&statement, &[&ids]).await? {
        let name: Option<String> = row.get(1);
        tracked.insert(row.get::<_, i64>(0), name.unwrap_or_default());
    }
    Ok(tracked)
}
