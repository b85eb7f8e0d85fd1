//! The differential test's vocabulary: store operations as data, applied
//! to any [`MigrationStore`], with outcomes normalised so that backends can
//! be compared (row timestamps by presence only, errors by variant).

use std::time::Duration;

use waymark_core::store::{LockGuard, LockRequest, LockScope, SetState};
use waymark_core::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

/// A definition as generated, possibly invalid: it goes through
/// [`MigrationDef::new`], the layer that validates names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDef {
    /// The id (zero and negative are invalid).
    pub id: i64,
    /// The name (empty or over 250 characters is invalid).
    pub name: String,
    /// The description (over 2500 characters is invalid).
    pub description: String,
}

/// One store operation. Ids are raw: zero and negative ones fail in
/// [`MigrationId::new`] before reaching the store, as in an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `prepare` again (idempotent).
    Prepare,
    /// `register` of these definitions.
    Register(Vec<RawDef>),
    /// `list`.
    List,
    /// `pending`.
    Pending,
    /// `get`.
    Get(i64),
    /// `mark_executed`.
    MarkExecuted(i64),
    /// `record_success`.
    RecordSuccess(i64),
    /// `mark_pending`.
    MarkPending(i64),
    /// `record_failure` with this error text.
    RecordFailure(i64, String),
    /// `save_checkpoint`.
    SaveCheckpoint(i64, String),
    /// `set_state` for the fingerprint of these definitions.
    SetState(Vec<RawDef>),
    /// `lock`, keeping the guard.
    Lock,
    /// Drops the most recent guard, if any.
    Unlock,
}

/// A row as compared across backends: `executed_at` by presence only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Executed flag.
    pub executed: bool,
    /// Whether `executed_at` is set.
    pub has_executed_at: bool,
    /// Attempts.
    pub attempts: u32,
    /// Last error.
    pub last_error: Option<String>,
    /// Checkpoint.
    pub checkpoint: Option<String>,
}

impl From<Migration> for Row {
    fn from(row: Migration) -> Self {
        Self {
            id: row.id.get(),
            name: row.name,
            description: row.description,
            executed: row.executed,
            has_executed_at: row.executed_at.is_some(),
            attempts: row.attempts,
            last_error: row.last_error,
            checkpoint: row.checkpoint,
        }
    }
}

/// An error by variant and the fields that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `Error::NotFound`.
    NotFound(i64),
    /// `Error::Invalid` for this field.
    Invalid(&'static str),
    /// `Error::Conflict` with its message (every backend uses core's).
    Conflict(i64, String),
    /// `Error::LockTimeout`.
    LockTimeout,
    /// Anything else, by kind, with the message to show what went wrong.
    Other(&'static str, String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound { id } => Self::NotFound(id.get()),
            Error::Invalid { field, .. } => Self::Invalid(field),
            Error::Conflict { id, message } => Self::Conflict(id.get(), message),
            Error::LockTimeout { .. } => Self::LockTimeout,
            other => Self::Other(other.kind(), waymark_core::error_chain(&other)),
        }
    }
}

/// What one operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded without a value.
    Done,
    /// Rows from `list` or `pending`.
    Rows(Vec<Row>),
    /// The row from `get`.
    Row(Row),
    /// The answer of `set_state`.
    Known(SetState),
    /// Whether `Unlock` had a guard to drop.
    Unlocked(bool),
    /// Failed.
    Failed(Failure),
}

/// A store under test and the run-lock guards an operation sequence holds.
pub struct Session<'a> {
    store: &'a dyn MigrationStore,
    guards: Vec<LockGuard>,
}

/// How long `Lock` waits when this session holds no guard: long enough to
/// absorb PostgreSQL freeing a dropped guard's session asynchronously
/// (milliseconds), so only a lock someone really holds times out.
const FREE_LOCK_WAIT: Duration = Duration::from_secs(5);

impl<'a> Session<'a> {
    /// A session on `store` (prepared, empty).
    pub fn new(store: &'a dyn MigrationStore) -> Self {
        Self {
            store,
            guards: Vec::new(),
        }
    }

    /// Whether the session holds a run-lock guard.
    pub fn holds_lock(&self) -> bool {
        !self.guards.is_empty()
    }

    /// Applies every operation, then `list` once more for the final state.
    pub async fn apply_all(&mut self, ops: &[Op]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(ops.len() + 1);
        for op in ops {
            outcomes.push(self.apply(op).await);
        }
        outcomes.push(self.apply(&Op::List).await);
        outcomes
    }

    /// Applies one operation.
    pub async fn apply(&mut self, op: &Op) -> Outcome {
        match self.try_apply(op).await {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error.into()),
        }
    }

    async fn try_apply(&mut self, op: &Op) -> Result<Outcome, Error> {
        let store = self.store;
        let id = |raw: &i64| MigrationId::new(*raw);
        Ok(match op {
            Op::Prepare => store.prepare().await.map(|()| Outcome::Done)?,
            Op::Register(raw) => store.register(&defs(raw)?).await.map(|()| Outcome::Done)?,
            Op::List => Outcome::Rows(rows(store.list().await?)),
            Op::Pending => Outcome::Rows(rows(store.pending().await?)),
            Op::Get(raw) => Outcome::Row(store.get(id(raw)?).await?.into()),
            Op::MarkExecuted(raw) => done(store.mark_executed(id(raw)?).await)?,
            Op::RecordSuccess(raw) => done(store.record_success(id(raw)?).await)?,
            Op::MarkPending(raw) => done(store.mark_pending(id(raw)?).await)?,
            Op::RecordFailure(raw, text) => done(store.record_failure(id(raw)?, text).await)?,
            Op::SaveCheckpoint(raw, text) => done(store.save_checkpoint(id(raw)?, text).await)?,
            Op::SetState(raw) => Outcome::Known(
                store
                    .set_state(&MigrationDef::fingerprint(&defs(raw)?))
                    .await?,
            ),
            Op::Lock => {
                let wait = if self.holds_lock() {
                    Duration::ZERO
                } else {
                    FREE_LOCK_WAIT
                };
                let request = LockRequest::new(LockScope::Run, wait);
                self.guards.push(store.lock(&request).await?);
                Outcome::Done
            }
            Op::Unlock => Outcome::Unlocked(self.guards.pop().is_some()),
        })
    }

    /// Drops every guard the session holds.
    pub fn release(&mut self) {
        self.guards.clear();
    }
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("guards", &self.guards.len())
            .finish_non_exhaustive()
    }
}

/// Validates `raw` as an application would: the first invalid one fails.
fn defs(raw: &[RawDef]) -> Result<Vec<MigrationDef>, Error> {
    raw.iter()
        .map(|def| MigrationDef::new(def.id, def.name.clone(), def.description.clone()))
        .collect()
}

fn rows(list: Vec<Migration>) -> Vec<Row> {
    list.into_iter().map(Row::from).collect()
}

fn done(result: Result<(), Error>) -> Result<Outcome, Error> {
    result.map(|()| Outcome::Done)
}
