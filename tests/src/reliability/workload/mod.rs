//! The workload of the crash and race tests: one migration of every kind,
//! what each leaves in the database, and the invariants that must hold
//! after any kill and after a complete run.
//!
//! Every data table is a log without unique constraints, so an effect
//! applied twice shows up as a duplicate instead of being absorbed.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use waymark_core::{BatchStep, BoxError, Error, Migration, MigrationDef};

/// Plain handler: one `plain_log` row per application, committed on its
/// own before the runner records the success (at least once under kills).
pub const PLAIN: i64 = 1;
/// Atomic handler: two `atomic_log` rows with a pause between them, in the
/// transaction that records its success.
pub const ATOMIC: i64 = 2;
/// Batched atomic handler: [`ITEMS`] items in batches of [`BATCH`], each
/// batch committed with its checkpoint.
pub const BATCHED: i64 = 3;
/// A second atomic handler, after the batched one.
pub const ATOMIC_LATE: i64 = 4;
/// The runner's generic (not atomic) batched handler: idempotent upserts
/// into `plain_items`, one `plain_item_log` row per item applied, the
/// checkpoint saved after each batch.
pub const PLAIN_BATCHED: i64 = 5;
/// Plain handler that fails on its first [`FLAKY_FAILURES`] attempts (crash
/// variant only), so recorded attempts grow and must never shrink.
pub const FLAKY: i64 = 6;

/// Items processed by each batched migration.
pub const ITEMS: i64 = 24;
/// Items per batch of [`BATCHED`].
pub const BATCH: i64 = 3;
/// Items per batch of [`PLAIN_BATCHED`].
pub const PLAIN_BATCH: i64 = 6;
/// Failed attempts of [`FLAKY`] before it succeeds.
pub const FLAKY_FAILURES: u32 = 1;
/// A pause inside each transaction, so that a kill at a random moment
/// often lands in the middle of one.
pub const PAUSE: Duration = Duration::from_millis(3);

/// Which set of migrations a run declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Every kind, the flaky one included: for the kill tests.
    Crash,
    /// Every kind but the flaky one, so that every racing process succeeds.
    Race,
}

impl Variant {
    /// The ids this variant declares, ascending.
    pub fn ids(self) -> &'static [i64] {
        match self {
            Self::Crash => &[PLAIN, ATOMIC, BATCHED, ATOMIC_LATE, PLAIN_BATCHED, FLAKY],
            Self::Race => &[PLAIN, ATOMIC, BATCHED, ATOMIC_LATE, PLAIN_BATCHED],
        }
    }

    /// Its name on the helper's command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Race => "race",
        }
    }

    /// The variant of that name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Crash, Self::Race]
            .into_iter()
            .find(|variant| variant.name() == text)
    }
}

/// The definition of migration `id` of the workload.
pub fn definition(id: i64) -> Result<MigrationDef, Error> {
    let (name, description) = match id {
        PLAIN => ("plain_log", "one log row per application, not atomic"),
        ATOMIC => ("atomic_pair", "two rows in the transaction of its success"),
        BATCHED => (
            "batched_items",
            "items in batches committed with their checkpoint",
        ),
        ATOMIC_LATE => ("atomic_pair_late", "two rows, after the batched migration"),
        PLAIN_BATCHED => (
            "plain_batched_items",
            "idempotent batches, checkpoint saved after",
        ),
        FLAKY => ("flaky", "fails on its first attempts, then logs once"),
        other => {
            return Err(Error::invalid(
                "id",
                format!("not in the workload: {other}"),
            ));
        }
    };
    MigrationDef::new(id, name, description)
}

/// Where a batch starting after `from` ends, and the step to return.
pub fn batch_step(from: Option<&str>, size: i64) -> Result<(i64, i64, BatchStep), BoxError> {
    let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
    let last = (after + size).min(ITEMS);
    let processed = (last - after) as u64;
    let step = if last >= ITEMS {
        BatchStep::done(processed)
    } else {
        BatchStep::next(last.to_string(), processed).with_total(ITEMS as u64)
    };
    Ok((after, last, step))
}

/// The error of [`FLAKY`] on its early attempts, or `None` once it may succeed.
pub fn flaky_failure(attempts: u32) -> Option<BoxError> {
    (attempts < FLAKY_FAILURES)
        .then(|| format!("failing on purpose (attempt {})", attempts + 1).into())
}

/// A tracked row, as far as the invariants care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// Executed flag.
    pub executed: bool,
    /// Recorded attempts.
    pub attempts: u32,
    /// Saved checkpoint.
    pub checkpoint: Option<String>,
}

impl From<&Migration> for Tracked {
    fn from(row: &Migration) -> Self {
        Self {
            executed: row.executed,
            attempts: row.attempts,
            checkpoint: row.checkpoint.clone(),
        }
    }
}

/// Everything the workload left in the database at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Tracked rows by id (empty before the first `prepare` committed).
    pub rows: BTreeMap<i64, Tracked>,
    /// `plain_log` rows per migration id.
    pub plain_log: BTreeMap<i64, i64>,
    /// `atomic_log` parts per migration id, in insertion order.
    pub atomic_log: BTreeMap<i64, Vec<String>>,
    /// Items in `batch_items`, ascending, duplicates kept.
    pub batch_items: Vec<i64>,
    /// Items in `plain_items` (a set), ascending.
    pub plain_items: Vec<i64>,
    /// Rows in `plain_item_log`: every application of a plain batch item.
    pub plain_item_applications: i64,
}

impl Snapshot {
    /// Builds a snapshot from the tracked rows and the data tables.
    pub fn new(rows: &[Migration], data: Snapshot) -> Self {
        Self {
            rows: rows.iter().map(|row| (row.id.get(), row.into())).collect(),
            ..data
        }
    }

    fn row(&self, id: i64) -> Option<&Tracked> {
        self.rows.get(&id)
    }

    fn executed(&self, id: i64) -> bool {
        self.row(id).is_some_and(|row| row.executed)
    }

    fn plain(&self, id: i64) -> i64 {
        self.plain_log.get(&id).copied().unwrap_or(0)
    }

    /// What must hold at any moment, in particular right after a SIGKILL:
    /// atomic effects all or nothing and present iff executed, batches a
    /// gapless prefix without duplicates matching the checkpoint, plain
    /// effects present whenever executed.
    pub fn check_consistent(&self, variant: Variant) -> Result<(), String> {
        for id in self.rows.keys() {
            if !variant.ids().contains(id) {
                return Err(format!("migration {id} is tracked but was never declared"));
            }
        }
        for id in [ATOMIC, ATOMIC_LATE] {
            let parts = self.atomic_log.get(&id).cloned().unwrap_or_default();
            match parts.as_slice() {
                [] if !self.executed(id) => {}
                [first, second] if first == "first" && second == "second" && self.executed(id) => {}
                _ => {
                    return Err(format!(
                        "atomic migration {id}: effect {parts:?} with executed = {}",
                        self.executed(id)
                    ));
                }
            }
        }
        let done = prefix_len("batch_items", &self.batch_items)?;
        let expected = self.progress(BATCHED)?;
        if done != expected {
            return Err(format!(
                "batched atomic migration: {done} items applied but its state says {expected}"
            ));
        }
        if !self.executed(BATCHED) && done % BATCH != 0 {
            return Err(format!(
                "batched atomic migration: a partial batch ({done} items)"
            ));
        }
        let upserted = prefix_len("plain_items", &self.plain_items)?;
        let saved = self.progress(PLAIN_BATCHED)?;
        // Not atomic: the work of a batch commits before its checkpoint, so
        // the work is never behind the checkpoint, and at most a batch ahead.
        if upserted < saved || upserted > saved + PLAIN_BATCH {
            return Err(format!(
                "plain batched migration: {upserted} items upserted, checkpoint at {saved}"
            ));
        }
        if self.plain_item_applications < upserted {
            return Err(format!(
                "plain batched migration: {} applications for {upserted} items",
                self.plain_item_applications
            ));
        }
        for id in [PLAIN, FLAKY] {
            if self.executed(id) && self.plain(id) == 0 {
                return Err(format!(
                    "plain migration {id} is executed without its effect"
                ));
            }
        }
        if let Some(row) = self.row(FLAKY)
            && row.attempts > FLAKY_FAILURES + 1
        {
            return Err(format!("flaky migration: {} attempts", row.attempts));
        }
        Ok(())
    }

    /// Items done by a batched migration according to its row: all when
    /// executed, else its checkpoint (0 without one).
    fn progress(&self, id: i64) -> Result<i64, String> {
        match self.row(id) {
            Some(row) if row.executed => match &row.checkpoint {
                None => Ok(ITEMS),
                Some(left) => Err(format!(
                    "migration {id} is executed with checkpoint {left:?}"
                )),
            },
            Some(Tracked {
                checkpoint: Some(at),
                ..
            }) => at
                .parse()
                .map_err(|_| format!("migration {id}: checkpoint {at:?} is not a number")),
            _ => Ok(0),
        }
    }

    /// What must hold after a complete run: consistent, everything executed
    /// with every effect, and exactly the attempts that really ended
    /// (a killed run records none).
    pub fn check_complete(&self, variant: Variant) -> Result<(), String> {
        self.check_consistent(variant)?;
        for &id in variant.ids() {
            let row = self
                .row(id)
                .ok_or_else(|| format!("migration {id} is not tracked"))?;
            let attempts = if id == FLAKY { FLAKY_FAILURES + 1 } else { 1 };
            if !row.executed || row.attempts != attempts || row.checkpoint.is_some() {
                return Err(format!(
                    "migration {id}: {row:?}, expected executed after {attempts} attempt(s)"
                ));
            }
        }
        if self.batch_items.len() != ITEMS as usize || self.plain_items.len() != ITEMS as usize {
            return Err("a batched migration did not process every item".into());
        }
        Ok(())
    }

    /// What must hold after racing processes: complete, and even the plain
    /// handlers ran exactly once, since no process died.
    pub fn check_exactly_once(&self, variant: Variant) -> Result<(), String> {
        self.check_complete(variant)?;
        if self.plain(PLAIN) != 1 || self.plain_item_applications != ITEMS {
            return Err(format!(
                "plain handlers ran more than once: plain_log {:?}, {} item applications",
                self.plain_log, self.plain_item_applications
            ));
        }
        Ok(())
    }

    /// Roughly how much of `variant`'s work is left, from 1.0 (nothing
    /// executed) to 0.0: executed migrations count whole, batched ones in
    /// progress by their checkpoint.
    pub fn remaining(&self, variant: Variant) -> f64 {
        let ids = variant.ids();
        let done: f64 = ids
            .iter()
            .map(|&id| match self.row(id) {
                Some(row) if row.executed => 1.0,
                Some(row) => row
                    .checkpoint
                    .as_deref()
                    .and_then(|at| at.parse::<f64>().ok())
                    .map_or(0.0, |at| at / ITEMS as f64),
                None => 0.0,
            })
            .sum();
        1.0 - done / ids.len() as f64
    }

    /// Attempts are a count of ended runs: no migration's may go down.
    pub fn check_attempts_never_decrease(&self, before: &Snapshot) -> Result<(), String> {
        for (id, row) in &before.rows {
            match self.row(*id) {
                None => return Err(format!("migration {id} is no longer tracked")),
                Some(now) if now.attempts < row.attempts => {
                    return Err(format!(
                        "migration {id}: attempts went down from {} to {}",
                        row.attempts, now.attempts
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tracked:")?;
        for (id, row) in &self.rows {
            writeln!(f, "  {id}: {row:?}")?;
        }
        writeln!(f, "plain_log: {:?}", self.plain_log)?;
        writeln!(f, "atomic_log: {:?}", self.atomic_log)?;
        writeln!(f, "batch_items: {:?}", self.batch_items)?;
        writeln!(
            f,
            "plain_items: {:?} ({} applications)",
            self.plain_items, self.plain_item_applications
        )
    }
}

/// The length of `items` if it is exactly `1..=n` (ascending input).
fn prefix_len(table: &str, items: &[i64]) -> Result<i64, String> {
    for (index, item) in items.iter().enumerate() {
        if *item != index as i64 + 1 {
            return Err(format!(
                "{table}: not each of 1..={} exactly once: {items:?}",
                items.len()
            ));
        }
    }
    Ok(items.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(executed: bool, attempts: u32, checkpoint: Option<&str>) -> Tracked {
        Tracked {
            executed,
            attempts,
            checkpoint: checkpoint.map(str::to_owned),
        }
    }

    #[test]
    fn an_empty_database_is_consistent() {
        assert_eq!(Snapshot::default().check_consistent(Variant::Crash), Ok(()));
    }

    #[test]
    fn a_batch_applied_twice_or_a_half_atomic_effect_is_caught() {
        let mut snapshot = Snapshot::default();
        snapshot.rows.insert(BATCHED, tracked(false, 0, Some("3")));
        snapshot.batch_items = vec![1, 2, 3];
        assert_eq!(snapshot.check_consistent(Variant::Crash), Ok(()));
        snapshot.batch_items = vec![1, 2, 2, 3];
        assert!(snapshot.check_consistent(Variant::Crash).is_err());
        snapshot.batch_items = vec![1, 2, 3, 4, 5, 6];
        assert!(
            snapshot.check_consistent(Variant::Crash).is_err(),
            "ahead of its checkpoint"
        );

        let mut half = Snapshot::default();
        half.atomic_log.insert(ATOMIC, vec!["first".into()]);
        assert!(half.check_consistent(Variant::Crash).is_err());
    }

    #[test]
    fn attempts_going_down_are_caught() {
        let mut before = Snapshot::default();
        before.rows.insert(FLAKY, tracked(false, 2, None));
        let mut after = before.clone();
        after.rows.insert(FLAKY, tracked(false, 1, None));
        assert!(after.check_attempts_never_decrease(&before).is_err());
        assert!(before.check_attempts_never_decrease(&after).is_ok());
    }
}
