//! The command line of `migrate`, as clap parses it.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::MigrationId;

/// The `migrate` command: mount it in the application's own clap command
/// line, next to its handlers, and run it with
/// [`run`](Self::run).
///
/// ```
/// use clap::{Parser, Subcommand};
/// use waymark::cli::MigrateCommand;
///
/// #[derive(Parser)]
/// struct App {
///     #[command(subcommand)]
///     command: AppCommand,
/// }
///
/// #[derive(Subcommand)]
/// enum AppCommand {
///     /// Serve requests.
///     Serve,
///     /// Look at and run the data migrations.
///     Migrate(MigrateCommand),
/// }
///
/// let app = App::try_parse_from(["myapp", "migrate", "status", "--json"]).unwrap();
/// assert!(matches!(app.command, AppCommand::Migrate(MigrateCommand { json: true, .. })));
/// ```
#[derive(Debug, Clone, Args)]
#[command(after_long_help = crate::cli::exit::HELP)]
pub struct MigrateCommand {
    /// Print JSON on stdout, and errors as JSON on stderr:
    /// {"error": {"kind": ..., "message": ...}}.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The subcommands of `migrate`.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum Action {
    /// Show every tracked migration, and who holds the locks.
    Status(StatusArgs),
    /// Show what `run` would do now, in order, and change nothing.
    Plan,
    /// Run the pending migrations, background ones included, to the end.
    Run,
    /// List the pending migrations; exit 0 when none, 3 when some (a deploy gate).
    Pending,
    /// Show one migration in full.
    Show {
        /// The migration's id (a positive integer).
        #[arg(value_parser = parse_id)]
        id: MigrationId,
    },
    /// Mark migrations executed without running them (an operator's repair).
    MarkExecuted(MarkArgs),
    /// Mark migrations pending, so that the next run executes them again.
    MarkPending(MarkArgs),
    /// Track a migration as pending (a known id keeps its state).
    Register {
        /// The id (a positive integer; migrations run in id order).
        #[arg(value_parser = parse_id)]
        id: MigrationId,
        /// The name, 1 to 250 characters.
        name: String,
        /// The description, at most 2500 characters.
        description: String,
    },
    /// Show who holds the run and background locks, since when, from where.
    Locks,
}

impl Action {
    /// The subcommand as typed (`"mark-executed"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Plan => "plan",
            Self::Run => "run",
            Self::Pending => "pending",
            Self::Show { .. } => "show",
            Self::MarkExecuted(_) => "mark-executed",
            Self::MarkPending(_) => "mark-pending",
            Self::Register { .. } => "register",
            Self::Locks => "locks",
        }
    }

    /// Whether it changes the database (a read-only database refuses it).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Self::Run | Self::MarkExecuted(_) | Self::MarkPending(_) | Self::Register { .. }
        )
    }

    /// Whether it needs the application's handlers (`run`, `plan`): the
    /// standalone tool has none and refuses these.
    pub fn needs_handlers(&self) -> bool {
        matches!(self, Self::Run | Self::Plan)
    }
}

/// The options of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Redraw until no migration runs any more (no lock is held); with
    /// nothing running, draw once.
    #[arg(long)]
    pub watch: bool,

    /// Seconds between redraws with --watch.
    #[arg(long, default_value = "1", value_parser = parse_interval, value_name = "SECONDS")]
    pub interval: Duration,
}

/// The options of `mark-executed` and `mark-pending`.
#[derive(Debug, Clone, Args)]
pub struct MarkArgs {
    /// The migrations' ids (positive integers).
    #[arg(required = true, value_parser = parse_id)]
    pub ids: Vec<MigrationId>,

    /// Change the rows without taking the locks, even while a run holds
    /// them and may be executing these migrations.
    #[arg(long)]
    pub force: bool,

    /// How long to wait for a running migration to let go of the locks
    /// before refusing.
    #[arg(long, default_value = "5", value_parser = parse_seconds, value_name = "SECONDS")]
    pub lock_wait: Duration,
}

/// A migration id as clap reads it: a malformed one is a usage error.
fn parse_id(text: &str) -> Result<MigrationId, String> {
    let id: i64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a migration id (a positive integer)"))?;
    MigrationId::new(id).map_err(|_| format!("{id} is not a migration id (a positive integer)"))
}

/// Seconds, fractions allowed, from 0 to a day.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text} is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A redraw interval: at least a tenth of a second.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_seconds(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text} is shorter than 0.1 seconds"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_integers() {
        assert_eq!(parse_id("7").unwrap().get(), 7);
        for bad in ["0", "-1", "x", "1.5", "", "99999999999999999999"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["-1", "NaN", "inf", "86401", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_interval("0.01").is_err());
    }
}
