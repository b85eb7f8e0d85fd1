//! What each subcommand does, given an open store.

use std::io::Write;
use std::process::ExitCode;

use waymark::render::StatusTable;
use waymark::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

use crate::args::Command;
use crate::redact::scrub;

/// The exit code of `pending` when some migrations are pending.
pub const EXIT_PENDING: u8 = 3;

/// Runs `command` against `store`, writing its output to `out`.
pub async fn run(
    command: Command,
    store: &dyn MigrationStore,
    out: &mut dyn Write,
) -> Result<ExitCode, Error> {
    match command {
        Command::Init { dry_run: true } => {
            let plan = store.plan_prepare().await?;
            write!(out, "{plan}").map_err(output_error)?;
        }
        Command::Init { dry_run: false } => {
            store.prepare().await?;
            writeln!(out, "tracking table ready").map_err(output_error)?;
        }
        Command::Status { json } => {
            let rows = store.list().await?;
            print_rows(out, &rows, json, "no migrations tracked")?;
        }
        Command::Pending { json } => {
            let rows = store.pending().await?;
            print_rows(out, &rows, json, "nothing pending")?;
            if !rows.is_empty() {
                return Ok(ExitCode::from(EXIT_PENDING));
            }
        }
        Command::Show { id, json } => {
            let row = store.get(MigrationId::new(id)?).await?;
            let row = shown(&row);
            if json {
                print_json(out, &row)?;
            } else {
                print_details(out, &row)?;
            }
        }
        Command::MarkExecuted { ids } => {
            let ids = known_ids(store, &ids).await?;
            for id in ids {
                store.mark_executed(id).await?;
                writeln!(out, "migration {id} marked executed").map_err(output_error)?;
            }
        }
        Command::MarkPending { ids } => {
            let ids = known_ids(store, &ids).await?;
            for id in ids {
                store.mark_pending(id).await?;
                writeln!(out, "migration {id} marked pending").map_err(output_error)?;
            }
        }
        Command::Register {
            id,
            name,
            description,
        } => {
            let def = MigrationDef::new(id, name, description)?;
            store.prepare().await?;
            store.register(std::slice::from_ref(&def)).await?;
            let row = store.get(def.id()).await?;
            let state = if row.executed { "executed" } else { "pending" };
            writeln!(out, "migration {id} registered ({state})").map_err(output_error)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Validates every id and checks each is tracked before changing any, so a
/// typo in the fifth id does not leave the first four changed.
async fn known_ids(store: &dyn MigrationStore, raw: &[i64]) -> Result<Vec<MigrationId>, Error> {
    store.prepare().await?;
    let mut ids = Vec::with_capacity(raw.len());
    for &id in raw {
        let id = MigrationId::new(id)?;
        store.get(id).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// `row` as it may be shown: its text fields scrubbed of any password the
/// command line holds (a handler's error may have recorded one).
fn shown(row: &Migration) -> Migration {
    let mut row = row.clone();
    row.name = scrub(&row.name);
    row.description = scrub(&row.description);
    row.last_error = row.last_error.as_deref().map(scrub);
    row.checkpoint = row.checkpoint.as_deref().map(scrub);
    row
}

fn print_rows(
    out: &mut dyn Write,
    rows: &[Migration],
    json: bool,
    empty: &str,
) -> Result<(), Error> {
    let rows: Vec<Migration> = rows.iter().map(shown).collect();
    let rows = rows.as_slice();
    if json {
        return print_json(out, rows);
    }
    if rows.is_empty() {
        writeln!(out, "{empty}")
    } else {
        write!(out, "{}", StatusTable(rows))
    }
    .map_err(output_error)
}

fn print_details(out: &mut dyn Write, row: &Migration) -> Result<(), Error> {
    let executed_at = row
        .executed_at
        .and_then(|at| {
            at.format(&waymark::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    let fields = [
        ("id", row.id.to_string()),
        ("name", row.name.clone()),
        ("description", row.description.clone()),
        ("state", row.state().to_string()),
        ("executed_at", executed_at),
        ("attempts", row.attempts.to_string()),
        (
            "last_error",
            row.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "checkpoint",
            row.checkpoint.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (field, value) in fields {
        writeln!(out, "{field:<12} {value}").map_err(output_error)?;
    }
    Ok(())
}

fn print_json<T: serde::Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> Result<(), Error> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(|e| Error::store("writing JSON", e))?;
    writeln!(out).map_err(output_error)
}

fn output_error(error: std::io::Error) -> Error {
    Error::store("writing output", error)
}
