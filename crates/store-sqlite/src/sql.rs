//! The statements behind each store operation, on a plain connection.
//!
//! The statements themselves are core's shared SQL ([`Statements`]), so they
//! mean the same on every backend. Functions taking `&Connection` run inside
//! whatever transaction the caller holds, so the store and the atomic
//! transactions share them; functions taking `&mut Connection` open their
//! own write transaction.
//!
//! [`Statements`]: waymark_core::store::sql::Statements

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use waymark_core::store::{LeftToRegister, Prefixes, RowChange, SetState, name_conflict, now_utc};
use waymark_core::{Error, Migration, MigrationDef, MigrationId};

use crate::target::Target;
use crate::timestamp;

/// Runs `body` in a write transaction taken at once (`BEGIN IMMEDIATE`), so
/// that waiting for another writer goes through the busy timeout instead of
/// failing on an upgrade from a stale read snapshot. Any error rolls back.
pub(crate) fn write<T>(
    conn: &mut Connection,
    target: &Target,
    doing: &str,
    body: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    let tx = begin(conn, target, doing)?;
    let out = body(&tx)?;
    tx.commit()
        .map_err(target.site.err(format!("committing ({doing})")))?;
    Ok(out)
}

/// Opens a `BEGIN IMMEDIATE` transaction.
pub(crate) fn begin<'c>(
    conn: &'c mut Connection,
    target: &Target,
    doing: &str,
) -> Result<Transaction<'c>, Error> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(
            target
                .site
                .err(format!("starting a write transaction ({doing})")),
        )
}

/// A row as read, before its values are checked.
struct RawRow {
    id: i64,
    name: String,
    description: String,
    executed: bool,
    executed_at: Option<String>,
    attempts: i64,
    last_error: Option<String>,
    checkpoint: Option<String>,
}

impl RawRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            name: row.get(1)?,
            description: row.get(2)?,
            executed: row.get(3)?,
            executed_at: row.get(4)?,
            attempts: row.get(5)?,
            last_error: row.get(6)?,
            checkpoint: row.get(7)?,
        })
    }

    fn into_migration(self, target: &Target) -> Result<Migration, Error> {
        let bad =
            |what: String| Error::store_message(format!("reading {}", target.describe()), what);
        let id = MigrationId::new(self.id).map_err(|_| {
            bad(format!(
                "row with id {} cannot be tracked: ids must be positive",
                self.id
            ))
        })?;
        let executed_at = match self.executed_at.as_deref() {
            None => None,
            Some(text) => Some(timestamp::parse(text).map_err(|err| {
                bad(format!(
                    "migration {id} has an executed_at that is neither RFC 3339 nor \
                     'YYYY-MM-DD HH:MM:SS' ({text:?}): {err}"
                ))
            })?),
        };
        // Rows adopted from the original table may break today's limits on
        // names; they are data to report, not definitions to validate.
        let mut migration = Migration::new(id, self.name, self.description);
        migration.executed = self.executed;
        migration.executed_at = executed_at;
        migration.attempts = u32::try_from(self.attempts.max(0)).unwrap_or(u32::MAX);
        migration.last_error = self.last_error;
        migration.checkpoint = self.checkpoint;
        Ok(migration)
    }
}

/// Every row, or only the pending ones, ordered by id.
pub(crate) fn list(
    conn: &Connection,
    target: &Target,
    pending_only: bool,
) -> Result<Vec<Migration>, Error> {
    let (sql, doing) = if pending_only {
        (&target.sql.pending, "listing pending migrations")
    } else {
        (&target.sql.list, "listing migrations")
    };
    let raw = (|| {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], RawRow::read)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(target.err(doing))?;
    raw.into_iter()
        .map(|row| row.into_migration(target))
        .collect()
}

/// One row; [`Error::NotFound`] when the id is unknown.
pub(crate) fn get(conn: &Connection, target: &Target, id: MigrationId) -> Result<Migration, Error> {
    conn.prepare_cached(&target.sql.get)
        .and_then(|mut stmt| stmt.query_row([id.get()], RawRow::read).optional())
        .map_err(target.err(format_args!("reading migration {id}")))?
        .ok_or(Error::NotFound { id })?
        .into_migration(target)
}

/// Inserts the unknown definitions as pending and records the set's
/// fingerprint. Reads first: in the steady state nothing is new and no write
/// lock is taken, so a start-up never waits behind another process's
/// running migration just to find out that nothing changed.
pub(crate) fn register(
    conn: &mut Connection,
    target: &Target,
    defs: &[MigrationDef],
) -> Result<(), Error> {
    let prefixes = Prefixes::of(defs);
    let recorded = longest_recorded(conn, target, &prefixes)?;
    let left = prefixes.unregistered(|fp| recorded.as_deref() == Some(fp));
    let seen = recorded.as_deref() == Some(prefixes.whole());
    if !needs_registering(conn, target, defs, left, seen)? {
        return Ok(());
    }
    write(conn, target, "registering migrations", |tx| {
        // Again under the write lock: another process may have registered
        // the same ids, possibly under other names, since the first look
        // (what was recorded then still is: `left` holds).
        needs_registering(tx, target, defs, left, false)?;
        (|| {
            let mut stmt = tx.prepare_cached(&target.sql.insert)?;
            for def in left.filter(defs) {
                stmt.execute(params![def.id().get(), def.name(), def.description()])?;
            }
            tx.prepare_cached(&target.sql.insert_fingerprint)?
                .execute(params![prefixes.whole(), timestamp::format(now_utc())])?;
            Ok(())
        })()
        .map_err(target.err("registering migrations"))
    })
}

/// The longest of `prefixes` recorded before, if any: one lookup per
/// candidate, in process, longest first.
fn longest_recorded(
    conn: &Connection,
    target: &Target,
    prefixes: &Prefixes,
) -> Result<Option<String>, Error> {
    let mut stmt = conn
        .prepare_cached(&target.sql.known_set)
        .map_err(target.err("checking registered sets"))?;
    for fingerprint in prefixes.fingerprints() {
        if stmt
            .exists([fingerprint])
            .map_err(target.err("checking registered sets"))?
        {
            return Ok(Some(fingerprint.to_owned()));
        }
    }
    Ok(None)
}

/// Whether registering `defs` writes anything: an id among those `left`
/// holds that is not tracked yet, or a set not `seen` before. A tracked id
/// under another name is [`Error::Conflict`].
fn needs_registering(
    conn: &Connection,
    target: &Target,
    defs: &[MigrationDef],
    left: LeftToRegister,
    seen: bool,
) -> Result<bool, Error> {
    if left == LeftToRegister::Nothing {
        return Ok(false);
    }
    let mut new = false;
    let mut stmt = conn
        .prepare_cached(&target.sql.name_of)
        .map_err(target.err("checking registered migrations"))?;
    for def in left.filter(defs) {
        let tracked: Option<Option<String>> = stmt
            .query_row([def.id().get()], |row| row.get(0))
            .optional()
            .map_err(target.err(format_args!("checking migration {}", def.id())))?;
        match tracked {
            None => new = true,
            Some(name) => {
                // An adopted row may have a NULL name; it reads as empty.
                let name = name.unwrap_or_default();
                if name != def.name() {
                    return Err(name_conflict(def.id(), &name, def.name()));
                }
            }
        }
    }
    Ok(new || !seen)
}

/// One change to one row, in whatever transaction `conn` holds;
/// [`Error::NotFound`] when no row has the id.
pub(crate) fn update(
    conn: &Connection,
    target: &Target,
    id: MigrationId,
    change: RowChange<'_>,
) -> Result<(), Error> {
    let now = timestamp::format(now_utc());
    let (doing, value) = match change {
        RowChange::MarkExecuted => ("marking executed migration", Some(now.as_str())),
        RowChange::RecordSuccess => ("recording the success of migration", Some(now.as_str())),
        RowChange::MarkPending => ("marking pending migration", None),
        RowChange::RecordFailure(error) => ("recording a failure of migration", Some(error)),
        RowChange::SaveCheckpoint(checkpoint) => {
            ("saving the checkpoint of migration", Some(checkpoint))
        }
        _ => {
            return Err(Error::invalid(
                "change",
                format!("{change:?} is not supported"),
            ));
        }
    };
    let changed = conn
        .prepare_cached(target.sql.update(&change))
        .and_then(|mut stmt| match value {
            Some(value) => stmt.execute(params![id.get(), value]),
            None => stmt.execute(params![id.get()]),
        })
        .map_err(target.err(format_args!("{doing} {id}")))?;
    if changed == 0 {
        return Err(Error::NotFound { id });
    }
    Ok(())
}

/// One query: whether the set was registered and whether anything is
/// pending. A database without the tables yet answers `Unregistered`.
pub(crate) fn set_state(
    conn: &Connection,
    target: &Target,
    fingerprint: &str,
) -> Result<SetState, Error> {
    match query_set_state(conn, target, fingerprint) {
        Ok(state) => Ok(state),
        Err(err) if crate::error::is_unprepared(&err) => Ok(SetState::Unregistered),
        Err(err) => Err(target
            .site
            .error("checking whether migrations are settled", err)),
    }
}

/// The query behind [`set_state`], with SQLite's own error.
pub(crate) fn query_set_state(
    conn: &Connection,
    target: &Target,
    fingerprint: &str,
) -> rusqlite::Result<SetState> {
    conn.prepare_cached(&target.sql.set_state)?
        .query_row([fingerprint], |row| {
            Ok(SetState::from_answers(row.get(0)?, row.get(1)?))
        })
}
