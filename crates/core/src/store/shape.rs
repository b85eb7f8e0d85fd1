//! Adopting an existing tracking table: one compatibility check over a
//! backend-neutral description of its columns, which every SQL backend runs
//! before it changes anything, and the plan of what `prepare` would change.
//!
//! A backend reads its catalog into a [`FoundTable`] (mapping its own types
//! onto [`TypeClass`]), calls [`plan_table`], and either refuses with the
//! [`IncompatibleTable`] it returns — nothing changed — or applies the
//! [`TableChange`]s in its own DDL. Rows whose meaning is ambiguous
//! ([`AmbiguousRows`]) are found with the backend's queries and need an
//! explicit [`AdoptionChoices`] before anything is converted.

use std::fmt;

use crate::{IncompatibleTable, MigrationId};

/// What kind of values a column holds, as far as waymark cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TypeClass {
    /// Whole numbers (`INTEGER`, `BIGINT`, `SMALLINT`; SQLite INTEGER affinity).
    Integer,
    /// `BOOLEAN` (PostgreSQL), or SQLite NUMERIC affinity (`BOOLEAN`, `NUMERIC`).
    Boolean,
    /// Text (`TEXT`, `VARCHAR(n)`; SQLite TEXT affinity, or no declared type).
    Text,
    /// A point in time (`TIMESTAMPTZ`, `TIMESTAMP`).
    Timestamp,
    /// Anything else (floating point, `BYTEA`, `UUID`, JSON…).
    Other,
}

/// One column of an existing table, as its catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundColumn {
    /// Its name, as the catalog spells it.
    pub name: String,
    /// Its declared type, as the catalog spells it (for messages).
    pub declared: String,
    /// What the declared type holds.
    pub class: TypeClass,
    /// Whether it refuses NULL.
    pub not_null: bool,
    /// Whether it has a default value.
    pub has_default: bool,
}

impl FoundColumn {
    /// A column named `name` declared `declared`, of class `class`,
    /// nullable and without a default.
    pub fn new(name: impl Into<String>, declared: impl Into<String>, class: TypeClass) -> Self {
        Self {
            name: name.into(),
            declared: declared.into(),
            class,
            not_null: false,
            has_default: false,
        }
    }

    /// Marks it `NOT NULL`.
    pub fn not_null(mut self) -> Self {
        self.not_null = true;
        self
    }

    /// Marks it as having a default.
    pub fn with_default(mut self) -> Self {
        self.has_default = true;
        self
    }
}

/// An existing table that `prepare` would adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTable {
    /// Its name as messages show it (`schema.table` on PostgreSQL).
    pub table: String,
    /// Its columns.
    pub columns: Vec<FoundColumn>,
    /// Whether `id` alone is its primary key or has a unique index (what
    /// `INSERT … ON CONFLICT (id)` needs).
    pub id_unique: bool,
}

impl FoundTable {
    /// The column called `name` (case-insensitively, as SQL compares names).
    pub fn column(&self, name: &str) -> Option<&FoundColumn> {
        self.columns
            .iter()
            .find(|column| column.name.eq_ignore_ascii_case(name))
    }
}

/// A column waymark adds to an adopted table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddedColumn {
    /// `description`, text, empty by default (the original has it; a table
    /// without it gets it).
    Description,
    /// `executed_at`, a time, NULL until executed.
    ExecutedAt,
    /// `attempts`, an integer, `NOT NULL DEFAULT 0`.
    Attempts,
    /// `last_error`, text.
    LastError,
    /// `checkpoint`, text.
    Checkpoint,
}

impl AddedColumn {
    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Description => "description",
            Self::ExecutedAt => "executed_at",
            Self::Attempts => "attempts",
            Self::LastError => "last_error",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// One change `prepare` makes to an existing table. Waymark changes only
/// what it owns: it adds its own columns, never alters, retypes or
/// comments the application's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TableChange {
    /// Adds one of waymark's columns.
    Add(AddedColumn),
}

impl fmt::Display for TableChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add(column) => write!(f, "add column {}", column.name()),
        }
    }
}

/// What a column of the tracking table must be.
struct Expected {
    name: &'static str,
    accepts: &'static [TypeClass],
    wanted: &'static str,
    /// How to add it when missing; `None` for the original columns a table
    /// must have to be adopted.
    add: Option<AddedColumn>,
}

const INTEGER: &[TypeClass] = &[TypeClass::Integer];
const FLAG: &[TypeClass] = &[TypeClass::Boolean, TypeClass::Integer];
const TEXT: &[TypeClass] = &[TypeClass::Text];
const TIME: &[TypeClass] = &[TypeClass::Timestamp];

const EXPECTED: [Expected; 8] = [
    Expected {
        name: "id",
        accepts: INTEGER,
        wanted: "an integer type",
        add: None,
    },
    Expected {
        name: "name",
        accepts: TEXT,
        wanted: "a text type",
        add: None,
    },
    Expected {
        name: "description",
        accepts: TEXT,
        wanted: "a text type",
        add: Some(AddedColumn::Description),
    },
    Expected {
        name: "executed",
        accepts: FLAG,
        wanted: "a boolean (or integer) type",
        add: None,
    },
    Expected {
        name: "executed_at",
        accepts: TIME,
        wanted: "a timestamp type",
        add: Some(AddedColumn::ExecutedAt),
    },
    Expected {
        name: "attempts",
        accepts: INTEGER,
        wanted: "an integer type",
        add: Some(AddedColumn::Attempts),
    },
    Expected {
        name: "last_error",
        accepts: TEXT,
        wanted: "a text type",
        add: Some(AddedColumn::LastError),
    },
    Expected {
        name: "checkpoint",
        accepts: TEXT,
        wanted: "a text type",
        add: Some(AddedColumn::Checkpoint),
    },
];

/// Whether `found` can be adopted, and what to add to it.
///
/// `timestamps_as_text` is true for backends that store `executed_at` as
/// text (SQLite): a text `executed_at` is then what they expect.
///
/// # Errors
/// The [`IncompatibleTable`] naming the first column at fault and what to
/// do about it; the caller has changed nothing.
///
/// ```
/// use waymark_core::store::{FoundColumn, FoundTable, TableChange, TypeClass, plan_table};
///
/// // The original application's four columns, as SQLAlchemy created them.
/// let original = FoundTable {
///     table: "public.migrations".into(),
///     columns: vec![
///         FoundColumn::new("id", "integer", TypeClass::Integer).not_null(),
///         FoundColumn::new("name", "character varying(250)", TypeClass::Text),
///         FoundColumn::new("description", "character varying(2500)", TypeClass::Text),
///         FoundColumn::new("executed", "boolean", TypeClass::Boolean),
///     ],
///     id_unique: true,
/// };
/// let changes = plan_table(&original, false).unwrap();
/// assert_eq!(changes.len(), 4); // executed_at, attempts, last_error, checkpoint
/// assert!(changes.iter().all(|c| matches!(c, TableChange::Add(_))));
///
/// let mut text_attempts = original.clone();
/// text_attempts.columns.push(FoundColumn::new("attempts", "text", TypeClass::Text));
/// let refused = plan_table(&text_attempts, false).unwrap_err();
/// assert_eq!(refused.column.as_deref(), Some("attempts"));
/// ```
pub fn plan_table(
    found: &FoundTable,
    timestamps_as_text: bool,
) -> Result<Vec<TableChange>, IncompatibleTable> {
    let refuse = |column: &str, problem: String| {
        IncompatibleTable::new(found.table.clone(), Some(column), problem)
    };
    let missing: Vec<&str> = ["id", "name", "executed"]
        .into_iter()
        .filter(|name| found.column(name).is_none())
        .collect();
    if let Some(first) = missing.first() {
        return Err(refuse(
            first,
            format!(
                "is missing: this is not a migrations table (it has no {} column); \
                 configure another table name",
                missing.join(", ")
            ),
        ));
    }
    let mut changes = Vec::new();
    for expected in &EXPECTED {
        let Some(column) = found.column(expected.name) else {
            if let Some(add) = expected.add {
                changes.push(TableChange::Add(add));
            }
            continue;
        };
        // Waymark writes NULL into these (a new row, a success, a row
        // marked pending again): a NOT NULL one would refuse its writes.
        if column.not_null && ["executed_at", "last_error", "checkpoint"].contains(&expected.name) {
            return Err(refuse(
                expected.name,
                "is NOT NULL, but waymark clears it (a new row, a success, a row marked \
                 pending); allow NULL in it, or configure another table name"
                    .to_owned(),
            ));
        }
        let text_time =
            expected.name == "executed_at" && timestamps_as_text && column.class == TypeClass::Text;
        if !expected.accepts.contains(&column.class) && !text_time {
            return Err(refuse(
                expected.name,
                format!(
                    "is declared {:?}; waymark needs {} (rename or drop the column, \
                     or configure another table name)",
                    column.declared, expected.wanted
                ),
            ));
        }
    }
    if !found.id_unique {
        return Err(refuse(
            "id",
            "is not the table's primary key (nor unique); add a primary key on id, \
             or configure another table name"
                .to_owned(),
        ));
    }
    // Another column of the application's is fine, unless waymark's
    // inserts, which do not know it, would violate it.
    if let Some(extra) = found.columns.iter().find(|column| {
        column.not_null
            && !column.has_default
            && !EXPECTED
                .iter()
                .any(|expected| column.name.eq_ignore_ascii_case(expected.name))
    }) {
        return Err(refuse(
            &extra.name,
            "is NOT NULL without a default, so waymark could not insert rows; give it a \
             default or allow NULL, or configure another table name"
                .to_owned(),
        ));
    }
    Ok(changes)
}

/// Rows of an existing table whose state a silent conversion would guess.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmbiguousRows {
    /// Rows whose `executed` is NULL: the original application never ran
    /// them (its query asked for `executed = false`), yet never recorded
    /// them as executed either.
    pub null_executed: Vec<MigrationId>,
    /// Rows whose `executed_at` is not RFC 3339 (a legacy form such as
    /// `2024-05-01 10:00:00`, without an offset), with the value.
    pub legacy_timestamps: Vec<(MigrationId, String)>,
    /// Rows whose name is longer than a definition allows (250 characters):
    /// kept as they are, reported, never matched by a definition.
    pub long_names: Vec<MigrationId>,
}

impl AmbiguousRows {
    /// Whether `prepare` needs a choice before it can go on.
    pub fn needs_choice(&self, choices: &AdoptionChoices) -> bool {
        (!self.null_executed.is_empty() && choices.null_executed.is_none())
            || (!self.legacy_timestamps.is_empty() && !choices.legacy_timestamps_are_utc)
    }

    /// Whether there is anything to report.
    pub fn is_empty(&self) -> bool {
        self.null_executed.is_empty()
            && self.legacy_timestamps.is_empty()
            && self.long_names.is_empty()
    }
}

/// What NULL in `executed` should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NullExecuted {
    /// Pending: the next run executes them.
    Pending,
    /// Executed: they never run.
    Executed,
}

/// The explicit choices for [`AmbiguousRows`], given to a store's
/// configuration. Without them, `prepare` refuses a table holding such rows
/// and changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdoptionChoices {
    /// What NULL `executed` rows become; `None` refuses them.
    pub null_executed: Option<NullExecuted>,
    /// Whether legacy `executed_at` values without an offset are UTC (then
    /// rewritten as RFC 3339); otherwise they are refused.
    pub legacy_timestamps_are_utc: bool,
}

impl AdoptionChoices {
    /// No choice made: ambiguous rows are refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// NULL `executed` rows become `choice`.
    pub fn null_executed(mut self, choice: NullExecuted) -> Self {
        self.null_executed = Some(choice);
        self
    }

    /// Legacy `executed_at` values without an offset are read as UTC.
    pub fn legacy_timestamps_are_utc(mut self) -> Self {
        self.legacy_timestamps_are_utc = true;
        self
    }
}

/// Why `prepare` refused rows it would have had to guess about: the source
/// of its [`Error::Store`](crate::Error::Store). Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbiguousRowsRefused {
    /// The table.
    pub table: String,
    /// The rows.
    pub rows: AmbiguousRows,
}

impl fmt::Display for AmbiguousRowsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the existing table {:?} holds rows whose state is ambiguous",
            self.table
        )?;
        let ids = |ids: &mut dyn Iterator<Item = MigrationId>| {
            ids.map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
        };
        if !self.rows.null_executed.is_empty() {
            write!(
                f,
                "; executed is NULL for {} (choose pending or executed)",
                ids(&mut self.rows.null_executed.iter().copied())
            )?;
        }
        if !self.rows.legacy_timestamps.is_empty() {
            write!(
                f,
                "; executed_at is not RFC 3339 for {} (confirm they are UTC)",
                ids(&mut self.rows.legacy_timestamps.iter().map(|(id, _)| *id))
            )?;
        }
        f.write_str("; nothing was changed")
    }
}

impl std::error::Error for AmbiguousRowsRefused {}

/// What `prepare` would do to a database: the library's `init --dry-run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreparePlan {
    /// The tracking table as messages name it.
    pub table: String,
    /// Whether the table would be created (it does not exist).
    pub create: bool,
    /// What would change in an existing table.
    pub changes: Vec<TableChange>,
    /// Waymark's side objects that would be created (the registered-sets
    /// table, the pending index, …), by name.
    pub side_objects: Vec<String>,
    /// Rows whose state needs a choice, or is only reported.
    pub ambiguous: AmbiguousRows,
    /// Why `prepare` would refuse, when it would.
    pub refusal: Option<String>,
}

impl PreparePlan {
    /// A plan for `table` that changes nothing yet; backends fill it in.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            ..Self::default()
        }
    }

    /// Whether `prepare` would change nothing.
    pub fn is_empty(&self) -> bool {
        !self.create && self.changes.is_empty() && self.side_objects.is_empty()
    }
}

impl fmt::Display for PreparePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(refusal) = &self.refusal {
            return writeln!(f, "{}: prepare would refuse: {refusal}", self.table);
        }
        if self.is_empty() && self.ambiguous.is_empty() {
            return writeln!(f, "{}: ready, nothing to change", self.table);
        }
        if self.create {
            writeln!(f, "{}: would be created", self.table)?;
        } else if self.changes.is_empty() {
            writeln!(
                f,
                "{}: existing table, columns kept as they are",
                self.table
            )?;
        } else {
            writeln!(
                f,
                "{}: existing table would be adopted in place:",
                self.table
            )?;
            for change in &self.changes {
                writeln!(f, "  {change}")?;
            }
        }
        for object in &self.side_objects {
            writeln!(f, "  create {object}")?;
        }
        let rows = &self.ambiguous;
        for id in &rows.null_executed {
            writeln!(f, "  row {id}: executed is NULL (needs a choice)")?;
        }
        for (id, value) in &rows.legacy_timestamps {
            writeln!(
                f,
                "  row {id}: executed_at {value:?} has no offset (needs a choice)"
            )?;
        }
        for id in &rows.long_names {
            writeln!(
                f,
                "  row {id}: name longer than 250 characters (kept, never matched)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> FoundTable {
        FoundTable {
            table: "migrations".into(),
            columns: vec![
                FoundColumn::new("id", "INTEGER", TypeClass::Integer).not_null(),
                FoundColumn::new("name", "VARCHAR(250)", TypeClass::Text),
                FoundColumn::new("description", "VARCHAR(2500)", TypeClass::Text),
                FoundColumn::new("executed", "BOOLEAN", TypeClass::Boolean),
            ],
            id_unique: true,
        }
    }

    fn refused_column(table: &FoundTable) -> Option<String> {
        plan_table(table, false).unwrap_err().column
    }

    #[test]
    fn the_original_table_gets_only_waymarks_columns() {
        let changes = plan_table(&original(), false).unwrap();
        let added: Vec<&str> = changes
            .iter()
            .map(|TableChange::Add(column)| column.name())
            .collect();
        assert_eq!(
            added,
            ["executed_at", "attempts", "last_error", "checkpoint"]
        );
    }

    #[test]
    fn wrong_types_and_extra_not_null_columns_are_refused() {
        let mut table = original();
        table
            .columns
            .push(FoundColumn::new("owner_id", "INTEGER", TypeClass::Integer).not_null());
        assert_eq!(refused_column(&table).as_deref(), Some("owner_id"));
        let mut table = original();
        table
            .columns
            .push(FoundColumn::new("executed_at", "text", TypeClass::Text));
        assert_eq!(refused_column(&table).as_deref(), Some("executed_at"));
        assert!(
            plan_table(&table, true).is_ok(),
            "text is SQLite's time type"
        );
        let mut table = original();
        table.columns[0] = FoundColumn::new("id", "uuid", TypeClass::Other);
        assert_eq!(refused_column(&table).as_deref(), Some("id"));
        let mut table = original();
        table.id_unique = false;
        assert_eq!(refused_column(&table).as_deref(), Some("id"));
        let mut table = original();
        table.columns.retain(|c| c.name != "executed");
        assert_eq!(refused_column(&table).as_deref(), Some("executed"));
    }

    #[test]
    fn ambiguous_rows_need_a_choice() {
        let id = MigrationId::new(3).unwrap();
        let rows = AmbiguousRows {
            null_executed: vec![id],
            ..AmbiguousRows::default()
        };
        assert!(rows.needs_choice(&AdoptionChoices::new()));
        assert!(!rows.needs_choice(&AdoptionChoices::new().null_executed(NullExecuted::Pending)));
        let refused = AmbiguousRowsRefused {
            table: "migrations".into(),
            rows,
        };
        assert!(
            refused.to_string().contains("executed is NULL for 3"),
            "{refused}"
        );
    }
}
