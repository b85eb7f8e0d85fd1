//! The command line, as clap parses it.

use clap::{Parser, Subcommand};

/// Inspect and repair waymark's migration tracking, and gate deploys on it.
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where migrations are tracked: sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        short = 'd',
        env = "DATABASE_URL",
        default_value = "sqlite://waymark.db",
        hide_env_values = true,
        global = true
    )]
    pub database: String,

    /// The tracking table's name.
    #[arg(long, default_value = "migrations", global = true)]
    pub table: String,

    /// The PostgreSQL schema of the tracking table.
    #[arg(long, default_value = "public", global = true)]
    pub schema: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the tracking table, or upgrade an existing one in place.
    Init,
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
