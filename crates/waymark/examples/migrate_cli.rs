//! An application that mounts waymark's `migrate` command in its own
//! command line, next to its handlers (feature `cli`):
//!
//! ```sh
//! cargo run -p waymark --features cli --example migrate_cli -- migrate plan
//! cargo run -p waymark --features cli --example migrate_cli -- migrate run
//! cargo run -p waymark --features cli --example migrate_cli -- migrate status --json
//! cargo run -p waymark --features cli --example migrate_cli -- serve
//! ```
//!
//! `--database` (or `DATABASE_URL`) is a SQLite file (`rides.db`,
//! `sqlite:rides.db`) or, built with the feature `postgres`, a PostgreSQL
//! URL. Three settings shape the demo's migrations, so that a run can be
//! watched: `RIDES_ZONE_ITEMS` (rides the zone backfill walks, default
//! 200), `RIDES_STEP_MS` (the pause per batch of 10, default 20) and
//! `RIDES_FAIL` (set: the gear migration fails).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use waymark::cli::{Console, MigrateCommand};
use waymark::sqlite::SqliteStore;
use waymark::{
    BatchStep, BoxError, Error, Handler, MigrationContext, MigrationDef, MigrationStore, Runner,
};

/// A ride log that keeps its data migrations next to its code.
#[derive(Debug, Parser)]
#[command(name = "rides")]
struct Cli {
    /// A SQLite file (`rides.db`, `sqlite:rides.db`) or a postgres:// URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "rides.db",
        hide_env_values = true
    )]
    database: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pending migrations, then serve (here: say so and stop).
    Serve,
    /// Look at, plan, run and repair the data migrations.
    Migrate(MigrateCommand),
}

/// What the handlers get.
#[derive(Debug)]
struct Rides {
    zone_items: u64,
    step: Duration,
    gear_service_down: bool,
}

impl Rides {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(default)
        };
        Self {
            zone_items: number("RIDES_ZONE_ITEMS", 200),
            step: Duration::from_millis(number("RIDES_STEP_MS", 20)),
            gear_service_down: std::env::var_os("RIDES_FAIL").is_some(),
        }
    }
}

/// The release's migrations, on whichever store the database is.
fn runner<St: MigrationStore + Clone + 'static>(store: St) -> Result<Runner<Rides, St>, Error> {
    Runner::builder(store)
        .migration(
            MigrationDef::new(1, "normalise_units", "Store every distance in metres")?,
            Handler::async_fn(|ctx: MigrationContext<Rides>| async move {
                ctx.report_progress(1, Some(1));
                Ok::<(), BoxError>(())
            }),
        )
        .migration(
            MigrationDef::new(
                2,
                "recount_zones",
                "Recompute heart-rate zones of every ride",
            )?,
            Handler::resumable(|rides: Arc<Rides>, from: Option<String>| async move {
                let start: u64 = from.as_deref().unwrap_or("0").parse()?;
                tokio::time::sleep(rides.step).await;
                let end = (start + 10).min(rides.zone_items);
                Ok::<_, BoxError>(if end == rides.zone_items {
                    BatchStep::done(end - start)
                } else {
                    BatchStep::next(end.to_string(), end - start).with_total(rides.zone_items)
                })
            }),
        )
        .migration(
            MigrationDef::new(3, "link_gear", "Attach every ride to its bike")?,
            Handler::async_fn(|ctx: MigrationContext<Rides>| async move {
                if ctx.state().gear_service_down {
                    return Err::<(), BoxError>("the gear service did not answer".into());
                }
                Ok(())
            }),
        )
        .migration(
            MigrationDef::new(4, "prune_previews", "Delete preview images of old rides")?
                .background(),
            Handler::async_fn(
                |_ctx: MigrationContext<Rides>| async move { Ok::<(), BoxError>(()) },
            ),
        )
        .build()
}

async fn dispatch<St: MigrationStore + Clone + 'static>(store: St, command: Command) -> ExitCode {
    let json = matches!(&command, Command::Migrate(m) if m.json);
    let runner = match runner(store) {
        Ok(runner) => runner,
        Err(err) => return report(json, &err),
    };
    match command {
        Command::Migrate(migrate) => migrate.run(&runner, Rides::from_env()).await,
        Command::Serve => match runner.run(Rides::from_env()).await {
            Ok(started) => {
                println!(
                    "serving ({} migrations ran)",
                    started.report().executed().count()
                );
                ExitCode::SUCCESS
            }
            Err(err) => report(json, &err),
        },
    }
}

/// An error before the command ran (the database cannot be opened), in
/// the same shape as the command's own.
fn report(json: bool, error: &Error) -> ExitCode {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    Console::new(&mut out, &mut err).report_error(json, error)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            return waymark::cli::usage_error(&error, &mut Console::new(&mut out, &mut err));
        }
    };
    let json = matches!(&cli.command, Command::Migrate(m) if m.json);
    let database = cli.database.as_str();
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return match waymark::postgres::PostgresStore::connect(database).await {
            Ok(store) => dispatch(store, cli.command).await,
            Err(err) => report(json, &err),
        };
        #[cfg(not(feature = "postgres"))]
        return report(
            json,
            &Error::invalid(
                "database",
                "this build has no PostgreSQL: build with --features postgres",
            ),
        );
    }
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .unwrap_or(database);
    match SqliteStore::open(path).await {
        Ok(store) => dispatch(store, cli.command).await,
        Err(err) => report(json, &err),
    }
}
