//! The `migrate` command (feature `cli`): an application mounts
//! [`MigrateCommand`] in its own binary, next to its handlers, and gets
//!
//! ```text
//! myapp migrate status [--watch] | plan | run | pending | show ID
//!               | mark-executed ID… | mark-pending ID… | register ID NAME DESC | locks
//! ```
//!
//! with `--json` on every subcommand (errors included, as
//! `{"error": {"kind": …, "message": …}}` on stderr) and the [`exit`] codes
//! below. `run` shows progress bars with rate and ETA on a terminal and
//! plain lines elsewhere; `plan` only reads. `mark-executed` and
//! `mark-pending` take the run and background locks first (waiting
//! `--lock-wait`, then refusing with the holder named), unless `--force`.
//! The standalone `waymark` tool is this command without handlers
//! ([`MigrateCommand::run_without_handlers`]): it refuses `run` and `plan`.
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
//! use waymark::cli::MigrateCommand;
//! use waymark::{Handler, MigrationContext, MigrationDef, Runner};
//! use waymark::sqlite::SqliteStore;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     command: Command,
//! }
//!
//! #[derive(Subcommand)]
//! enum Command {
//!     /// Serve requests (running the migrations at start-up).
//!     Serve,
//!     /// The data migrations.
//!     Migrate(MigrateCommand),
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode, waymark::Error> {
//!     let store = SqliteStore::open("app.db").await?;
//!     let runner = Runner::builder(store)
//!         .migration(
//!             MigrationDef::new(1, "fill_pace", "Derive pace from speed")?,
//!             Handler::async_fn(|_ctx: MigrationContext<()>| async { Ok::<(), waymark::BoxError>(()) }),
//!         )
//!         .build()?;
//!     match Cli::parse().command {
//!         Command::Migrate(command) => Ok(command.run(&runner, ()).await),
//!         Command::Serve => {
//!             runner.run(()).await?;
//!             // … serve
//!             Ok(std::process::ExitCode::SUCCESS)
//!         }
//!     }
//! }
//! ```

mod args;
mod commands;
mod console;
mod progress;
mod repair;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;

pub use args::{Action, MarkArgs, MigrateCommand, StatusArgs};
pub use console::{Console, color_allowed, usage_error};

use crate::{Error, MigrationStore, Plan, RunEvent, RunReport, Runner, Subscription};

/// The exit codes of every `migrate` subcommand (and of the standalone
/// `waymark` tool). They never change meaning.
pub mod exit {
    /// It worked; for `pending`, nothing is pending.
    pub const SUCCESS: u8 = 0;
    /// An error, said on stderr: a database that cannot be reached, an
    /// unknown id, a failed migration (`run`).
    pub const FAILURE: u8 = 1;
    /// A usage error: an unknown subcommand or option, a malformed id, a
    /// command the tool cannot run (`run` without the application's handlers).
    pub const USAGE: u8 = 2;
    /// `pending` found pending migrations (a deploy gate).
    pub const PENDING: u8 = 3;
    /// Another process held the lock for the whole wait: `mark-*` refused
    /// (the holder named), or `run` timed out waiting.
    pub const LOCKED: u8 = 4;

    /// The codes, as `--help` lists them.
    pub const HELP: &str = "\
Exit codes:
  0  success (for `pending`: nothing pending)
  1  an error, said on stderr (a failed migration for `run`)
  2  a usage error (unknown option, malformed id, `run` without the application)
  3  `pending`: some migrations are pending
  4  the lock is held by another process (mark-* refused, run timed out)";
}

impl MigrateCommand {
    /// Runs the command against the application's runner, on the process's
    /// standard output and error, and returns the exit code for `main`.
    /// `state` is what the handlers get, used by `run` only.
    pub async fn run<S, St>(self, runner: &Runner<S, St>, state: impl Into<Arc<S>>) -> ExitCode
    where
        S: Send + Sync + 'static,
        St: MigrationStore + Clone + 'static,
    {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        self.execute(runner, state, &mut Console::stdio(&mut out, &mut err))
            .await
    }

    /// [`run`](Self::run), writing to `console`.
    pub async fn execute<S, St>(
        self,
        runner: &Runner<S, St>,
        state: impl Into<Arc<S>>,
        console: &mut Console<'_>,
    ) -> ExitCode
    where
        S: Send + Sync + 'static,
        St: MigrationStore + Clone + 'static,
    {
        let app = WithState {
            runner,
            state: state.into(),
        };
        let target = Target {
            store: runner.store(),
            app: Some(&app),
        };
        self.execute_on(target, console).await
    }

    /// Runs the command on a store alone, as the standalone `waymark` tool
    /// does: every subcommand but `run` and `plan`, which need the
    /// application's handlers and are refused with exit code 2 and a
    /// message saying how to mount the command in the application.
    pub async fn run_without_handlers(self, store: &dyn MigrationStore) -> ExitCode {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        self.execute_without_handlers(store, &mut Console::stdio(&mut out, &mut err))
            .await
    }

    /// [`run_without_handlers`](Self::run_without_handlers), writing to `console`.
    pub async fn execute_without_handlers(
        self,
        store: &dyn MigrationStore,
        console: &mut Console<'_>,
    ) -> ExitCode {
        let target = Target { store, app: None };
        self.execute_on(target, console).await
    }

    async fn execute_on(self, target: Target<'_>, console: &mut Console<'_>) -> ExitCode {
        let json = self.json;
        tracing::debug!(command = self.action.name(), json, "migrate command");
        let result = commands::execute(self, target, console).await;
        let _ = console.out.flush();
        match result {
            Ok(code) => ExitCode::from(code),
            Err(failure) => failure.print(console, json),
        }
    }
}

/// What a command works on: the store, and the application's runner when
/// the command is mounted in the application.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) store: &'a dyn MigrationStore,
    pub(crate) app: Option<&'a dyn App>,
}

/// The application's runner with its state, without their types.
#[crate::store::async_trait]
pub(crate) trait App: Sync {
    async fn plan(&self) -> Result<Plan, Error>;
    /// Runs everything, background migrations included, to the end.
    async fn run(&self) -> Result<RunReport, Error>;
    fn subscribe(&self, observer: Box<dyn Fn(&RunEvent) + Send + Sync>) -> Subscription;
}

struct WithState<'a, S, St> {
    runner: &'a Runner<S, St>,
    state: Arc<S>,
}

#[crate::store::async_trait]
impl<S, St> App for WithState<'_, S, St>
where
    S: Send + Sync + 'static,
    St: MigrationStore + Clone + 'static,
{
    async fn plan(&self) -> Result<Plan, Error> {
        self.runner.plan().await
    }

    async fn run(&self) -> Result<RunReport, Error> {
        let started = self.runner.run_and_report(Arc::clone(&self.state)).await?;
        started.wait().await
    }

    fn subscribe(&self, observer: Box<dyn Fn(&RunEvent) + Send + Sync>) -> Subscription {
        self.runner.subscribe(observer)
    }
}
