//! The command line, as clap parses it.
//!
//! `--database` is a plain string to clap: it is parsed afterwards
//! ([`crate::connection`]), so clap never has a reason to echo it in an
//! error ("invalid value '…' for '--database'").

use std::fmt;

use clap::{Parser, Subcommand};

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
  sqlite:PATH?mode=ro            opened read-only: status, pending and show work,
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
#[derive(Parser)]
#[command(name = "waymark", version, about, max_term_width = 100)]
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
    #[arg(long, default_value = "migrations", global = true)]
    pub table: String,

    /// The PostgreSQL schema of the tracking table (default: the first
    /// schema of the server's search path that holds the table, else the
    /// first existing one, as for any libpq client).
    #[arg(long, global = true)]
    pub schema: Option<String>,

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
    /// Show every tracked migration.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List pending migrations; exit 0 when none, 3 when some (a deploy gate).
    Pending {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one migration in full.
    Show {
        /// The migration's id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mark migrations executed without running them (operator repair).
    MarkExecuted {
        /// The migrations' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Mark migrations pending so the next run executes them again.
    MarkPending {
        /// The migrations' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Track a migration as pending (known ids keep their state).
    Register {
        /// The id (a positive integer; migrations run in id order).
        id: i64,
        /// The name, 1 to 250 characters.
        name: String,
        /// The description, at most 2500 characters.
        description: String,
    },
}

impl Command {
    /// The subcommand as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Init { .. } => "init",
            Self::Status { .. } => "status",
            Self::Pending { .. } => "pending",
            Self::Show { .. } => "show",
            Self::MarkExecuted { .. } => "mark-executed",
            Self::MarkPending { .. } => "mark-pending",
            Self::Register { .. } => "register",
        }
    }

    /// Whether it changes the database (so `mode=ro` refuses it).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Self::Status { .. }
                | Self::Pending { .. }
                | Self::Show { .. }
                | Self::Init { dry_run: true }
        )
    }

    /// Whether it may create a missing SQLite file: `init`, and `register`,
    /// which prepares the table anyway.
    pub fn creates_database(&self) -> bool {
        matches!(self, Self::Init { dry_run: false } | Self::Register { .. })
    }
}
