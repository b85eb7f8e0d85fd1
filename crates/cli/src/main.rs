//! `waymark`: the operator's tool for waymark's migration tracking, the
//! library's `migrate` command without the application's handlers.
//!
//! Exit codes (`waymark --help` lists them): 0 success; 1 an error (one
//! line on stderr, or one JSON object with `--json`); 2 a usage error; 3
//! from `pending` when migrations are pending (a deploy gate); 4 the lock
//! is held by another process.
//!
//! No output ever holds a password: every secret on the command line and in
//! `DATABASE_URL` is remembered before anything is parsed, and every error
//! line, log line, usage error, panic message and printed row is scrubbed
//! of it ([`redact`]).

mod args;
mod commands;
mod connection;
mod logging;
mod redact;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use waymark::cli::{Console, MigrateCommand};
use waymark::{Error, MemoryStore};

use args::{Cli, Command};
use connection::Target;

fn main() -> ExitCode {
    redact::install_panic_hook();
    for arg in std::env::args_os().skip(1) {
        redact::remember_secrets_in(&arg.to_string_lossy());
    }
    if let Some(url) = std::env::var_os("DATABASE_URL") {
        redact::remember_secrets_in(&url.to_string_lossy());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    logging::install(cli.verbose, cli.quiet);
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(*shell, &mut Cli::command(), "waymark", &mut out);
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let mut out = std::io::stdout();
            return match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(cli.json, &Error::store("writing the man page", err)),
            };
        }
        Command::Init { .. } | Command::Migrate(_) => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(cli.json, &Error::store("starting the async runtime", error));
        }
    };
    runtime.block_on(execute(cli))
}

async fn execute(cli: Cli) -> ExitCode {
    let json = cli.json;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut console = console(&mut out, &mut err);
    if !cli.command.opens_database() {
        // `run` and `plan`: refused (exit 2, saying how to mount the
        // command in the application) before any database is opened; the
        // command never touches this empty store.
        if let Command::Migrate(action) = cli.command {
            let command = MigrateCommand { json, action };
            return command
                .execute_without_handlers(&MemoryStore::new(), &mut console)
                .await;
        }
    }
    let store = match Target::parse(&cli.database) {
        Ok(target) => {
            target
                .open(cli.schema.as_deref(), &cli.table, &cli.command)
                .await
        }
        Err(err) => Err(err),
    };
    let store = match store {
        Ok(store) => store,
        Err(err) => return console.report_error(json, &err),
    };
    match cli.command {
        Command::Init { dry_run } => match commands::init(&*store, dry_run, json).await {
            Ok(text) => {
                drop(console);
                match write!(out, "{text}").and_then(|()| out.flush()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(json, &Error::store("writing the output", error)),
                }
            }
            Err(error) => console.report_error(json, &error),
        },
        Command::Migrate(action) => {
            MigrateCommand { json, action }
                .execute_without_handlers(&*store, &mut console)
                .await
        }
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
    }
}

/// The process's streams, every message and row scrubbed of passwords.
fn console<'a>(out: &'a mut (dyn Write + Send), err: &'a mut (dyn Write + Send)) -> Console<'a> {
    Console::stdio(out, err)
        .program("waymark")
        .filter(redact::scrub)
}

/// Prints one scrubbed error (a line, or a JSON object) on stderr.
fn fail(json: bool, error: &Error) -> ExitCode {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    console(&mut out, &mut err).report_error(json, error)
}

/// clap's usage errors (exit 2), scrubbed: one may quote any argument
/// ("unexpected argument '…'").
fn usage_error(error: &clap::Error) -> ExitCode {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    waymark::cli::usage_error(error, &mut console(&mut out, &mut err))
}
