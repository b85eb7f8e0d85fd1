//! What a run would do, worked out from one snapshot of the tracked rows and
//! the declared migrations. The run executes exactly this; `Runner::plan`
//! shows it without running anything.

use std::collections::BTreeMap;
use std::fmt;

use waymark_core::render::{Align, TextTable, one_line};
use waymark_core::store::name_conflict;
use waymark_core::{Error, Migration, MigrationId, Mode};

use crate::declare::{Declared, FailurePolicy, Settings, UndeclaredPolicy};
use crate::handler::HandlerKind;

/// What [`Runner::run`](crate::Runner::run) would do now, in order; made by
/// [`Runner::plan`](crate::Runner::plan).
///
/// The plan cannot foresee a handler's failure: under
/// [`FailurePolicy::Stop`] a real run stops at the first migration that
/// fails, and the later ones of the same mode stay pending.
#[derive(Debug, Clone)]
pub struct Plan {
    steps: Vec<PlannedMigration>,
}

/// One pending migration a run would reach.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct PlannedMigration {
    /// The migration.
    pub id: MigrationId,
    /// Its name.
    pub name: String,
    /// When it runs; `None` for a migration this release does not declare.
    pub mode: Option<Mode>,
    /// What the run would do with it.
    pub action: PlannedAction,
    /// Whether it is already tracked; `false` for a declared migration the
    /// run would register first.
    pub registered: bool,
    /// Its handler's kind, or `None` when this release does not declare it.
    #[serde(serialize_with = "kind_name")]
    pub handler: Option<HandlerKind>,
    /// Attempts so far.
    pub attempts: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// The checkpoint it would resume from.
    pub checkpoint: Option<String>,
}

fn kind_name<S: serde::Serializer>(kind: &Option<HandlerKind>, s: S) -> Result<S::Ok, S::Error> {
    match kind {
        Some(kind) => s.serialize_some(kind.as_str()),
        None => s.serialize_none(),
    }
}

/// What a run would do with one pending migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "after")]
#[non_exhaustive]
pub enum PlannedAction {
    /// Run its handler.
    Run,
    /// Leave it pending and warn: this release does not declare it
    /// ([`UndeclaredPolicy::Warn`]).
    LeaveUndeclared,
    /// Report it as failed: this release does not declare it
    /// ([`UndeclaredPolicy::Fail`]).
    FailUndeclared,
    /// Leave it pending because this earlier migration would fail first
    /// (under [`FailurePolicy::Stop`]).
    NotRun(MigrationId),
}

/// The failure policy applied along one queue of migrations (the required
/// ones, or the background ones): once one has failed under
/// [`FailurePolicy::Stop`], the rest of the queue is not run. The one place
/// this rule lives, for plans and runs alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopRule {
    policy: FailurePolicy,
    stopped_by: Option<MigrationId>,
}

impl StopRule {
    pub(crate) fn new(policy: FailurePolicy) -> Self {
        Self {
            policy,
            stopped_by: None,
        }
    }

    /// The earlier failure that stops the queue here, if any.
    pub(crate) fn stopped_by(&self) -> Option<MigrationId> {
        self.stopped_by
    }

    /// Takes note of `id`'s outcome.
    pub(crate) fn after(&mut self, id: MigrationId, failed: bool) {
        if failed && self.policy == FailurePolicy::Stop && self.stopped_by.is_none() {
            self.stopped_by = Some(id);
        }
    }
}

impl Plan {
    /// Works out the plan from every tracked row (one snapshot). A declared
    /// migration tracked under another name is the [`Error::Conflict`] the
    /// run's registration meets.
    pub(crate) fn compute<S, St>(
        rows: &[Migration],
        declared: &[Declared<S, St>],
        settings: &Settings,
    ) -> Result<Self, Error> {
        let mut tracked: BTreeMap<MigrationId, Migration> =
            rows.iter().map(|row| (row.id, row.clone())).collect();
        let mut steps: BTreeMap<MigrationId, PlannedMigration> = BTreeMap::new();
        for entry in declared {
            let def = &entry.def;
            let declared = Some((entry.mode(), entry.handler.kind()));
            match tracked.remove(&def.id()) {
                Some(row) if row.name != def.name() => {
                    return Err(name_conflict(def.id(), &row.name, def.name()));
                }
                Some(row) if row.executed => {}
                Some(row) => {
                    steps.insert(row.id, PlannedMigration::from_row(row, declared, true));
                }
                None => {
                    let row = Migration::registered(def);
                    steps.insert(row.id, PlannedMigration::from_row(row, declared, false));
                }
            }
        }
        // What is left is tracked but not declared by this release.
        for row in tracked.into_values().filter(|row| !row.executed) {
            steps.insert(row.id, PlannedMigration::from_row(row, None, true));
        }

        // Undeclared rows go with the required queue: they are what stands
        // between a release and serving.
        let mut required = StopRule::new(settings.failure_policy);
        let mut background = StopRule::new(settings.failure_policy);
        let steps = steps
            .into_values()
            .map(|mut step| {
                let queue = match step.mode {
                    Some(Mode::Background) => &mut background,
                    _ => &mut required,
                };
                step.action = match (queue.stopped_by(), step.handler, settings.undeclared) {
                    (Some(by), _, _) => PlannedAction::NotRun(by),
                    (None, Some(_), _) => PlannedAction::Run,
                    (None, None, UndeclaredPolicy::Fail) => {
                        queue.after(step.id, true);
                        PlannedAction::FailUndeclared
                    }
                    (None, None, _) => PlannedAction::LeaveUndeclared,
                };
                step
            })
            .collect();
        Ok(Self { steps })
    }

    /// Every pending migration a run would reach, by ascending id.
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

    /// The pending migrations this release does not declare.
    pub fn undeclared(&self) -> impl Iterator<Item = &PlannedMigration> {
        self.steps.iter().filter(|step| step.handler.is_none())
    }

    /// True when nothing is pending: a run would do nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many pending migrations a run would reach.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether a run would execute anything of `mode`.
    pub(crate) fn runs(&self, mode: Mode) -> bool {
        self.steps
            .iter()
            .any(|step| step.action == PlannedAction::Run && step.mode == Some(mode))
    }
}

impl PlannedMigration {
    fn from_row(row: Migration, declared: Option<(Mode, HandlerKind)>, registered: bool) -> Self {
        Self {
            id: row.id,
            name: row.name,
            mode: declared.map(|(mode, _)| mode),
            action: PlannedAction::Run,
            registered,
            handler: declared.map(|(_, kind)| kind),
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
            Self::LeaveUndeclared => f.write_str("leave pending (not declared)"),
            Self::FailUndeclared => f.write_str("fail (not declared)"),
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
            ("mode", Align::Left),
            ("action", Align::Left),
            ("handler", Align::Left),
            ("attempts", Align::Right),
            ("resumes from", Align::Left),
        ]);
        for step in &self.steps {
            let name = if step.registered {
                step.name.clone()
            } else {
                format!("{} (new)", step.name)
            };
            table.row(vec![
                step.id.to_string(),
                name,
                step.mode.map_or("-", Mode::as_str).to_owned(),
                step.action.to_string(),
                step.handler.map_or("none", HandlerKind::as_str).to_owned(),
                step.attempts.to_string(),
                step.checkpoint
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |c| one_line(c, CHECKPOINT_CHARS)),
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
