//! What a run would do, worked out from the tracked rows and the declared
//! migrations without running anything.

use std::collections::BTreeMap;
use std::fmt;

use waymark_core::{Error, Migration, MigrationId, name_conflict};

use crate::FailurePolicy;
use crate::builder::{MissingHandler, Settings};
use crate::runner::Declared;
use waymark_core::{Align, TextTable};

/// What [`Runner::run`](crate::Runner::run) would do now, in order; made by
/// [`Runner::plan`](crate::Runner::plan).
///
/// The plan cannot foresee a handler's failure: under
/// [`FailurePolicy::Stop`] a real run stops at the first migration that
/// fails, and the steps after it stay pending.
#[derive(Debug, Clone)]
pub struct Plan {
    steps: Vec<PlannedMigration>,
}

/// One migration a run would reach.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlannedMigration {
    /// The migration.
    pub id: MigrationId,
    /// Its name.
    pub name: String,
    /// What the run would do with it.
    pub action: PlannedAction,
    /// Whether it is already tracked; `false` for a declared migration the
    /// run would register first.
    pub registered: bool,
    /// Its handler's kind, or `None` when no handler is declared.
    pub handler: Option<HandlerKind>,
    /// Attempts so far.
    pub attempts: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// The checkpoint it would resume from.
    pub checkpoint: Option<String>,
}

/// What a run would do with one pending migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlannedAction {
    /// Run its handler.
    Run,
    /// Report it as failed: it has no handler ([`MissingHandler::Error`]).
    FailMissingHandler,
    /// Leave it pending: it has no handler ([`MissingHandler::Skip`]).
    SkipMissingHandler,
    /// Leave it pending because this earlier migration would fail first
    /// (under [`FailurePolicy::Stop`]).
    NotRun(MigrationId),
}

/// How a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// Awaited on the runtime.
    Async,
    /// On a blocking thread.
    Blocking,
}

impl Plan {
    /// Works out the plan from every tracked row. A declared migration
    /// tracked under another name is the [`Error::Conflict`] the run's
    /// registration would meet.
    pub(crate) fn compute<S>(
        rows: Vec<Migration>,
        declared: &[Declared<S>],
        settings: &Settings,
    ) -> Result<Self, Error> {
        let mut tracked: BTreeMap<MigrationId, Migration> =
            rows.into_iter().map(|row| (row.id, row)).collect();
        let mut steps: BTreeMap<MigrationId, PlannedMigration> = BTreeMap::new();
        for entry in declared {
            let def = &entry.def;
            let kind = Some(if entry.handler.is_blocking() {
                HandlerKind::Blocking
            } else {
                HandlerKind::Async
            });
            match tracked.remove(&def.id()) {
                Some(row) if row.name != def.name() => {
                    return Err(name_conflict(def.id(), &row.name, def.name()));
                }
                Some(row) if row.executed => {}
                Some(row) => {
                    steps.insert(row.id, PlannedMigration::from_row(row, kind, true));
                }
                None => {
                    let row = Migration::pending(def);
                    steps.insert(row.id, PlannedMigration::from_row(row, kind, false));
                }
            }
        }
        // What is left is tracked but not declared: pending ones lack a handler.
        for row in tracked.into_values().filter(|row| !row.executed) {
            steps.insert(row.id, PlannedMigration::from_row(row, None, true));
        }

        let mut stopped_by = None;
        let steps = steps
            .into_values()
            .map(|mut step| {
                step.action = match (stopped_by, step.handler, settings.missing_handler) {
                    (Some(by), _, _) => PlannedAction::NotRun(by),
                    (None, Some(_), _) => PlannedAction::Run,
                    (None, None, MissingHandler::Skip) => PlannedAction::SkipMissingHandler,
                    (None, None, MissingHandler::Error) => {
                        if settings.failure_policy == FailurePolicy::Stop {
                            stopped_by = Some(step.id);
                        }
                        PlannedAction::FailMissingHandler
                    }
                };
                step
            })
            .collect();
        Ok(Self { steps })
    }

    /// Every migration a run would reach, by ascending id.
    pub fn steps(&self) -> &[PlannedMigration] {
        &self.steps
    }

    /// The ids whose handlers would run, in order.
    pub fn to_run(&self) -> impl Iterator<Item = MigrationId> + '_ {
        self.steps
            .iter()
            .filter(|step| step.action == PlannedAction::Run)
            .map(|step| step.id)
    }

    /// True when nothing is pending: a run would do nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many pending migrations a run would reach.
    pub fn len(&self) -> usize {
        self.steps.len()
    }
}

impl PlannedMigration {
    fn from_row(row: Migration, handler: Option<HandlerKind>, registered: bool) -> Self {
        Self {
            id: row.id,
            name: row.name,
            action: PlannedAction::Run,
            registered,
            handler,
            attempts: row.attempts,
            last_error: row.last_error,
            checkpoint: row.checkpoint,
        }
    }
}

impl fmt::Display for PlannedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run => f.write_str("run"),
            Self::FailMissingHandler => f.write_str("fail (no handler)"),
            Self::SkipMissingHandler => f.write_str("skip (no handler)"),
            Self::NotRun(by) => write!(f, "not run ({by} fails first)"),
        }
    }
}

/// Checkpoints can be large (a whole cursor); the table shows their start.
const CHECKPOINT_CHARS: usize = 32;

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "nothing pending");
        }
        let runs = self.to_run().count();
        writeln!(
            f,
            "{} pending migration{}, {runs} would run:",
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" }
        )?;
        let mut table = TextTable::new(&[
            ("id", Align::Right),
            ("name", Align::Left),
            ("action", Align::Left),
            ("handler", Align::Left),
            ("attempts", Align::Right),
            ("resumes from", Align::Left),
        ]);
        for step in &self.steps {
            let handler = match step.handler {
                Some(HandlerKind::Async) => "async",
                Some(HandlerKind::Blocking) => "blocking",
                None => "none",
            };
            let checkpoint = match &step.checkpoint {
                None => "-".to_owned(),
                Some(text) if text.chars().count() <= CHECKPOINT_CHARS => text.clone(),
                Some(text) => {
                    let mut short: String = text.chars().take(CHECKPOINT_CHARS - 1).collect();
                    short.push('…');
                    short
                }
            };
            let name = if step.registered {
                step.name.clone()
            } else {
                format!("{} (new)", step.name)
            };
            table.row(vec![
                step.id.to_string(),
                name,
                step.action.to_string(),
                handler.to_owned(),
                step.attempts.to_string(),
                checkpoint,
            ]);
        }
        write!(f, "{table}")?;
        let mut errors = self
            .steps
            .iter()
            .filter(|s| s.last_error.is_some())
            .peekable();
        if errors.peek().is_some() {
            writeln!(f, "last errors:")?;
            for step in errors {
                let error = step.last_error.as_deref().unwrap_or_default();
                writeln!(f, "  {} {}: {error}", step.id, step.name)?;
            }
        }
        Ok(())
    }
}
