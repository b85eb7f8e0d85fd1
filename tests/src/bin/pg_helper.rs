//! A replica for the PostgreSQL fault tests: runs one slow atomic
//! migration through the real `Runner`, as an application would, so a test
//! can terminate its lock session or cut its network while it holds the
//! run lock.
//!
//! Usage:
//!
//! ```text
//! pg_helper slow-atomic <url> <sleep-ms> [dead-holder-secs]
//! ```
//!
//! Migration 1 inserts this process's pid into `effects` and sleeps
//! `sleep-ms` inside its transaction (printing `running` when it starts);
//! the run's events as `event executed|already_done|failed <id>`, and its
//! report as `report executed=[..] already_done=[..] failed=[..]`. Exit codes: 0 a report, 1 an error (on stderr).

use std::process::ExitCode;
use std::time::Duration;

use waymark_core::{BoxError, MigrationDef, error_chain};
use waymark_postgres::{PostgresConfig, PostgresStore};
use waymark_runner::{RunEvent, RunReport, Runner};

/// A helper orphaned by a failed test exits on its own after this.
const LIFETIME: Duration = Duration::from_secs(300);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        eprintln!("pg_helper: still running after {LIFETIME:?}; exiting");
        std::process::exit(2);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["slow-atomic", url, sleep] => slow_atomic(url, sleep, None).await,
        ["slow-atomic", url, sleep, bound] => slow_atomic(url, sleep, Some(bound)).await,
        _ => Err(format!("unknown arguments {args:?}").into()),
    };
    match result {
        Ok(report) => {
            let ids = |outcomes: Vec<i64>| format!("{outcomes:?}");
            println!(
                "report executed={} already_done={} failed={}",
                ids(report.executed().map(|o| o.id.get()).collect()),
                ids(report.already_done().map(|o| o.id.get()).collect()),
                ids(report.failures().map(|o| o.id.get()).collect()),
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("pg_helper: {}", error_chain(&*err));
            ExitCode::FAILURE
        }
    }
}

async fn slow_atomic(url: &str, sleep: &str, bound: Option<&str>) -> Result<RunReport, BoxError> {
    let sleep = Duration::from_millis(sleep.parse()?);
    let mut config = PostgresConfig::new(url).pool_size(3);
    if let Some(bound) = bound {
        config = config.dead_holder_timeout(Duration::from_secs(bound.parse()?));
    }
    let store = PostgresStore::connect_with(config).await?;
    let def = MigrationDef::new(1, "slow_recount", "inserts a row without a unique key")?;
    let runner = Runner::<(), PostgresStore>::builder(store)
        .lock_wait(Duration::from_secs(60))
        .observer(|event| match event {
            RunEvent::Succeeded { id, .. } => println!("event executed {id}"),
            RunEvent::AlreadyDone { id, .. } => println!("event already_done {id}"),
            RunEvent::Failed { id, .. } => println!("event failed {id}"),
            _ => {}
        })
        .atomic(def, move |tx, _ctx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO effects (pid) VALUES ($1)",
                    &[&(std::process::id() as i64)],
                )
                .await?;
                println!("running");
                tokio::time::sleep(sleep).await;
                Ok::<(), BoxError>(())
            })
        })
        .build()?;
    Ok(runner.run(()).await?.into_report())
}
