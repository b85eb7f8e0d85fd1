//! `waymark`: the operator's tool for waymark's migration tracking.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error;
//! 3 from `pending` when migrations are pending (a deploy gate).

mod args;
mod commands;
mod target;

use std::process::ExitCode;

use clap::Parser;

use args::Cli;
use target::Target;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let create = commands::creates_database(&cli.command);
    let store = target.open(&cli.schema, &cli.table, create).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    commands::run(cli.command, &*store, &mut out).await
}

/// Prints one line on stderr and returns exit code 1.
fn fail(error: &waymark::Error) -> ExitCode {
    let line = waymark::render::one_line(&waymark::render::error_chain(error), 2000);
    eprintln!("waymark: error: {line}");
    ExitCode::FAILURE
}
