//! The tracked row of one migration, and its state.

use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use crate::{MigrationDef, MigrationId};

/// One tracked migration: the original four columns (`id`, `name`,
/// `description`, `executed`) plus what waymark keeps to run it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Migration {
    /// The id; pending migrations run in ascending id order.
    pub id: MigrationId,
    /// The name, fixed once registered.
    pub name: String,
    /// What the migration does.
    pub description: String,
    /// Whether it has run to completion.
    pub executed: bool,
    /// When it completed (UTC, microsecond precision), if it has.
    #[serde(with = "time::serde::rfc3339::option")]
    pub executed_at: Option<OffsetDateTime>,
    /// How many times the runner started it and it ended (failures plus the success).
    pub attempts: u32,
    /// The error chain of the last failure, if any.
    pub last_error: Option<String>,
    /// The last saved checkpoint of a resumable migration; cleared on completion.
    pub checkpoint: Option<String>,
}

impl Migration {
    /// A pending row with no history: what a store reads before filling in
    /// the stored state field by field (rows adopted from the original table
    /// may break today's limits on names, so no validation happens here).
    ///
    /// ```
    /// use waymark_core::{Migration, MigrationId, MigrationState};
    ///
    /// let mut row = Migration::new(MigrationId::new(4)?, "fill_pace", "");
    /// row.attempts = 2;
    /// row.last_error = Some("disk full".into());
    /// assert_eq!(row.state(), MigrationState::Failed);
    /// # Ok::<(), waymark_core::Error>(())
    /// ```
    pub fn new(id: MigrationId, name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            description: description.into(),
            executed: false,
            executed_at: None,
            attempts: 0,
            last_error: None,
            checkpoint: None,
        }
    }

    /// The row `register` creates for `def`: pending, no history.
    pub fn registered(def: &MigrationDef) -> Self {
        Self::new(def.id(), def.name(), def.description())
    }

    /// What state the row is in.
    pub fn state(&self) -> MigrationState {
        if self.executed {
            MigrationState::Executed
        } else if self.last_error.is_some() {
            MigrationState::Failed
        } else if self.checkpoint.is_some() {
            MigrationState::Resumable
        } else {
            MigrationState::Pending
        }
    }
}

/// The state of a tracked migration, as read from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationState {
    /// Not executed yet, and no attempt has failed.
    Pending,
    /// Not executed; its last attempt failed (it runs again on the next run).
    Failed,
    /// Not executed; stopped part-way (a shutdown, a crash) with a saved
    /// checkpoint, where the next run resumes.
    Resumable,
    /// Executed.
    Executed,
}

impl MigrationState {
    /// `"pending"`, `"failed"`, `"resumable"` or `"executed"`: the stable
    /// name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Resumable => "resumable",
            Self::Executed => "executed",
        }
    }

    /// Whether a run would still execute it.
    pub fn is_pending(self) -> bool {
        !matches!(self, Self::Executed)
    }
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The current time as stores record it: UTC, truncated to whole
/// microseconds so that every backend round-trips it exactly.
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
