//! The command line, as clap parses it: the options that say where the
//! migrations are tracked, then `init`, every subcommand of the mounted
//! `migrate` command (`waymark::cli::Action`), and the generated
//! completions and man page.
//!
//! `--database` is a plain string to clap: it is parsed afterwards
//! ([`crate::connection`]), so clap never has a reason to echo it in an
//! error ("invalid value '…' for '--database'").

use std::fmt;

use clap::{ArgAction, Parser, Subcommand};
use waymark::cli::Action;

use crate::redact;

/// `--database`'s long help (`waymark --help`): every accepted form.
const DATABASE_HELP: &str = "\
Where migrations are tracked: a SQLite file or a PostgreSQL database.

Accepted forms (in --database or DATABASE_URL):
  sqlite:PATH, sqlite://PATH     a SQLite file: sqlite:app.db and sqlite://app.db are
                                 relative, sqlite:///var/data/app.db is absolute;
                                 %XX is decoded (a `?` in a file name is %3F)
  sqlite:PATH?mode=rwc           as without mode: init and register create a missing
                                 file, the other commands never do
  sqlite:PATH?mode=rw            an existing file only: no command creates it
  sqlite:PATH?mode=ro            opened read-only: status, pending, show and locks work,
                                 commands that write are refused
  sqlite:PATH?cache=shared       accepted (also cache=private), no effect
  postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=require&application_name=NAME
  postgresql://…                 PostgreSQL; percent-encode `@`, `:` and `/` of a password
  host=db port=5432 user=app password='se cret' dbname=app sslmode=require
                                 PostgreSQL as libpq key=value pairs ('…' quotes a value)

Refused: sqlite::memory: and mode=memory (an in-memory database starts empty and is
gone when the command ends), other sqlite parameters, a bare path (write sqlite:PATH),
other schemes. A password never appears in any output: messages name the host, port
and database only.";

/// Inspect and repair waymark's migration tracking, and gate deploys on it.
///
/// `run` and `plan` need the application's handlers: mount
/// `waymark::cli::MigrateCommand` in the application (feature `cli`).
#[derive(Parser)]
#[command(
    name = "waymark",
    version,
    about,
    max_term_width = 100,
    after_long_help = waymark::cli::exit::HELP
)]
pub struct Cli {
    /// Where migrations are tracked: sqlite:PATH, postgres://… or key=value pairs (see --help).
    #[arg(
        long,
        short = 'd',
        env = "DATABASE_URL",
        default_value = "sqlite://waymark.db",
        hide_env_values = true,
        global = true,
        value_name = "CONNECTION",
        long_help = DATABASE_HELP
    )]
    pub database: String,

    /// The tracking table's name.
    #[arg(
        long,
        env = "WAYMARK_TABLE",
        default_value = "migrations",
        global = true
    )]
    pub table: String,

    /// The PostgreSQL schema of the tracking table (default: the first
    /// schema of the server's search path that holds the table, else the
    /// first existing one, as for any libpq client).
    #[arg(long, env = "WAYMARK_SCHEMA", global = true)]
    pub schema: Option<String>,

    /// Print JSON on stdout, and errors as JSON on stderr:
    /// {"error": {"kind": ..., "message": ...}}.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log lines on stderr (-v info, -vv debug, -vvv trace); RUST_LOG,
    /// when set, decides instead.
    #[arg(long, short = 'v', action = ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Fewer log lines (-q errors only, -qq none).
    #[arg(long, short = 'q', action = ArgAction::Count, global = true)]
    pub quiet: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Never shows the password in `--database`.
impl fmt::Debug for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("database", &redact::redact(&self.database))
            .field("table", &self.table)
            .field("schema", &self.schema)
            .field("json", &self.json)
            .field("verbose", &self.verbose)
            .field("quiet", &self.quiet)
            .field("command", &self.command)
            .finish()
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the tracking table, or upgrade an existing one in place.
    Init {
        /// Show what would be created or changed, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    #[command(flatten)]
    Migrate(Action),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
}

impl Command {
    /// The subcommand as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Init { .. } => "init",
            Self::Migrate(action) => action.name(),
            Self::Completions { .. } => "completions",
            Self::Man => "man",
        }
    }

    /// Whether it changes the database (so `mode=ro` refuses it).
    pub fn writes(&self) -> bool {
        match self {
            Self::Init { dry_run } => !dry_run,
            Self::Migrate(action) => action.writes(),
            Self::Completions { .. } | Self::Man => false,
        }
    }

    /// Whether it may create a missing SQLite file: `init`, and `register`,
    /// which prepares the table anyway.
    pub fn creates_database(&self) -> bool {
        matches!(
            self,
            Self::Init { dry_run: false } | Self::Migrate(Action::Register { .. })
        )
    }

    /// Whether it needs a database at all.
    pub fn opens_database(&self) -> bool {
        !matches!(self, Self::Completions { .. } | Self::Man)
            && !matches!(self, Self::Migrate(action) if action.needs_handlers())
    }
}
