//! The tracked row of one migration.

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
    /// A freshly registered, pending row for `def`.
    pub fn pending(def: &MigrationDef) -> Self {
        Self {
            id: def.id(),
            name: def.name().to_owned(),
            description: def.description().to_owned(),
            executed: false,
            executed_at: None,
            attempts: 0,
            last_error: None,
            checkpoint: None,
        }
    }
}

/// The current time as stores record it: UTC, truncated to whole
/// microseconds so that every backend round-trips it exactly.
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
