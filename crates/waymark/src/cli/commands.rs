//! What each subcommand does, and how its result is printed.

use serde::Serialize;

use crate::cli::console::{Console, Failure, output_error};
use crate::cli::{Action, MigrateCommand, Target, exit, progress, repair, watch};
use crate::store::LockInfo;
use crate::{Migration, MigrationDef, MigrationStore};

/// Runs `command` and returns its exit code, or why it failed.
pub(crate) async fn execute(
    command: MigrateCommand,
    target: Target<'_>,
    console: &mut Console<'_>,
) -> Result<u8, Failure> {
    let json = command.json;
    let store = target.store;
    match command.action {
        Action::Status(args) if args.watch => {
            watch::watch(store, args.interval, json, console).await
        }
        Action::Status(_) => {
            let rows = console.shown(&store.list().await?);
            let locks = readable_locks(store, console).await?;
            if json {
                print_json(
                    console,
                    &StatusJson {
                        migrations: &rows,
                        locks: locks.as_deref(),
                    },
                )?;
            } else {
                write!(
                    console.out,
                    "{}",
                    watch::status_text(&rows, locks.as_deref(), true)
                )
                .map_err(output_error)?;
            }
            Ok(exit::SUCCESS)
        }
        Action::Plan => {
            let app = target.app.ok_or_else(|| needs_handlers("plan"))?;
            let plan = app.plan().await?;
            if json {
                print_json(console, plan.steps())?;
            } else if plan.is_empty() {
                writeln!(console.out, "nothing to run").map_err(output_error)?;
            } else {
                write!(console.out, "{plan}").map_err(output_error)?;
            }
            Ok(exit::SUCCESS)
        }
        Action::Run => {
            let app = target.app.ok_or_else(|| needs_handlers("run"))?;
            progress::run(app, json, console).await
        }
        Action::Pending => {
            let rows = console.shown(&store.pending().await?);
            if json {
                print_json(console, &rows)?;
            } else if rows.is_empty() {
                writeln!(console.out, "nothing pending").map_err(output_error)?;
            } else {
                write!(console.out, "{}", crate::render::StatusTable(&rows))
                    .map_err(output_error)?;
            }
            Ok(if rows.is_empty() {
                exit::SUCCESS
            } else {
                exit::PENDING
            })
        }
        Action::Show { id } => {
            let row = console.shown(&[store.get(id).await?]).remove(0);
            if json {
                print_json(console, &row)?;
            } else {
                print_details(console, &row)?;
            }
            Ok(exit::SUCCESS)
        }
        Action::MarkExecuted(args) => {
            repair::mark(store, &args, repair::Mark::Executed, json, console).await
        }
        Action::MarkPending(args) => {
            repair::mark(store, &args, repair::Mark::Pending, json, console).await
        }
        Action::Register {
            id,
            name,
            description,
        } => {
            let def = MigrationDef::new(id.get(), name, description)?;
            store.prepare().await?;
            store.register(std::slice::from_ref(&def)).await?;
            let row = console.shown(&[store.get(def.id()).await?]).remove(0);
            if json {
                print_json(console, &row)?;
            } else {
                writeln!(console.out, "migration {id} registered ({})", row.state())
                    .map_err(output_error)?;
            }
            Ok(exit::SUCCESS)
        }
        Action::Locks => {
            let locks = console.shown_locks(&store.locks().await?);
            if json {
                print_json(console, &locks)?;
            } else {
                write!(console.out, "{}", watch::locks_text(&locks, true)).map_err(output_error)?;
            }
            Ok(exit::SUCCESS)
        }
    }
}

/// `status --json`.
#[derive(Serialize)]
pub(crate) struct StatusJson<'a> {
    pub(crate) migrations: &'a [Migration],
    /// `null` when the store cannot tell who holds its locks.
    pub(crate) locks: Option<&'a [LockInfo]>,
}

/// The locks as `console` may show them, or `None` from a store that
/// cannot tell.
pub(crate) async fn readable_locks(
    store: &dyn MigrationStore,
    console: &Console<'_>,
) -> Result<Option<Vec<LockInfo>>, Failure> {
    match store.locks().await {
        Ok(locks) => Ok(Some(console.shown_locks(&locks))),
        Err(crate::Error::Invalid { field: "locks", .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn needs_handlers(command: &str) -> Failure {
    Failure::new(
        "usage",
        format!(
            "`{command}` needs the application's handlers, which this tool does not have: \
             mount waymark::cli::MigrateCommand in the application's own binary \
             (feature `cli`; see docs/operations.md) and run `<app> migrate {command}`"
        ),
        exit::USAGE,
    )
}

pub(crate) fn print_json<T: Serialize + ?Sized>(
    console: &mut Console<'_>,
    value: &T,
) -> Result<(), Failure> {
    serde_json::to_writer_pretty(&mut *console.out, value)
        .map_err(|e| output_error(std::io::Error::other(e)))?;
    writeln!(console.out).map_err(output_error)
}

fn print_details(console: &mut Console<'_>, row: &Migration) -> Result<(), Failure> {
    let fields = [
        ("id", row.id.to_string()),
        ("name", row.name.clone()),
        ("description", row.description.clone()),
        ("state", row.state().to_string()),
        ("executed_at", watch::timestamp(row.executed_at)),
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
        writeln!(console.out, "{field:<12} {value}").map_err(output_error)?;
    }
    Ok(())
}
