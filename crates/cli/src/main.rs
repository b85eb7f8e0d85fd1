//! `waymark`: the operator's tool for waymark's migration tracking.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error;
//! 3 from `pending` when migrations are pending (a deploy gate).
//!
//! No output ever holds a password: every secret on the command line and in
//! `DATABASE_URL` is remembered before anything is parsed, and every error
//! line, usage error and panic message is scrubbed of it ([`redact`]).

mod args;
mod commands;
mod connection;
mod redact;

use std::process::ExitCode;

use clap::Parser;

use args::Cli;
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&waymark::Error::store("starting the async runtime", error)),
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(error) => fail(&error),
    }
}

async fn execute(cli: Cli) -> Result<ExitCode, waymark::Error> {
    let target = Target::parse(&cli.database)?;
    let store = target
        .open(cli.schema.as_deref(), &cli.table, &cli.command)
        .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    commands::run(cli.command, &*store, &mut out).await
}

/// Prints one scrubbed line on stderr and returns exit code 1. Scrubbed
/// before it is shortened, so that no cut can leave half a password.
fn fail(error: &waymark::Error) -> ExitCode {
    let chain = redact::scrub(&waymark::render::error_chain(error));
    let line = waymark::render::one_line(&chain, 2000);
    eprintln!("waymark: error: {line}");
    ExitCode::FAILURE
}

/// clap's usage errors (exit 2) as plain text: one may quote any argument
/// ("unexpected argument '…'"), so it is scrubbed like every other
/// message. Help and version (exit 0) hold no argument and print as clap
/// prints them.
fn usage_error(error: &clap::Error) -> ExitCode {
    if error.use_stderr() {
        eprint!("{}", redact::scrub(&error.render().to_string()));
    } else if error.print().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}
