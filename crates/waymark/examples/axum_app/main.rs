//! waymark in a web app: an axum server on SQLite with one required data
//! migration and one background backfill.
//!
//! - **Before serving**, migration 1 (`prefix_item_paths`, atomic) runs:
//!   `runner.run(app).await?` returns once it is executed, and a failure
//!   stops the start-up (the process exits with status 1 and never listens).
//! - **While serving**, migration 2 (`backfill_item_slugs`, batched, each
//!   batch atomic with its checkpoint) runs in the background over the
//!   seeded `items` table; `GET /healthz` reports where it stands.
//! - **Ctrl-C or SIGTERM** cancels one `CancellationToken`, given both to
//!   the runner (`.shutdown(token)`) and to axum's graceful shutdown: the
//!   server stops accepting, the backfill finishes the batch in progress,
//!   commits its checkpoint, releases its lock and stops. The next start
//!   resumes at the next batch: none applied twice, none skipped. A second
//!   Ctrl-C exits at once (the batch in progress then rolls back).
//!
//! # Readiness
//!
//! Readiness is serving. The port is bound only after every required
//! migration is executed, so a release whose required migration fails is
//! never ready (it is not listening at all). Once serving, `GET /healthz`
//! answers `200` with `"status": "ok"` whatever the backfill is doing
//! (`starting`, `waiting_for_other_instance`, `running` with its progress, `finished`,
//! `stopped`): the app serves correctly with the backfill half-done, since
//! it serves during it. A backfill that failed (`failed`, its error
//! recorded, retried on the next start) is `"status": "degraded"`, still
//! `200`. A background phase that ended on a store error (`error`: the
//! database itself failed, a part the app requires) is `"status":
//! "unavailable"` with `503`, until a restart.
//!
//! ```text
//! GET /healthz  200
//! {"status":"ok","required":"executed","background":{"state":"running","id":2,
//!  "name":"backfill_item_slugs","position":1,"count":1,"progress":{"done":9500,
//!  "total":20000,"elapsed_seconds":1.04,"rate":9172.7,"eta_seconds":1.14}}}
//! ```
//!
//! (`starting` shows for a moment at every start, until this instance has
//! looked at the background lock; `waiting_for_other_instance` only while
//! another instance holds it.)
//!
//! ```sh
//! cargo run -p waymark --example axum_app -- --database app.db --listen 127.0.0.1:3000
//! curl -s localhost:3000/healthz
//! ```
//!
//! Options (each also an environment variable): `--database`
//! (`AXUM_APP_DATABASE`, default `axum_app.db`), `--listen`
//! (`AXUM_APP_LISTEN`, default `127.0.0.1:3000`; port 0 picks a free port),
//! `--rows` (`AXUM_APP_ROWS`, 20000, seeded on the first start only),
//! `--batch-size` (`AXUM_APP_BATCH_SIZE`, 500), `--batch-delay-ms`
//! (`AXUM_APP_BATCH_DELAY_MS`, 0: a pause per batch, to leave time for
//! Ctrl-C). The bound address is printed on stdout as
//! `listening on http://ADDR`.

mod migrations;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};
use waymark::render::error_chain;
use waymark::sqlite::{SqliteStore, rusqlite};
use waymark::{Background, BackgroundStatus, CancellationToken, Error, Runner};

use migrations::App;

/// An axum app whose data migrations waymark runs: one before serving, one
/// in the background, reported on /healthz.
#[derive(Debug, Parser)]
struct Args {
    /// The SQLite database file (created if missing).
    #[arg(long, env = "AXUM_APP_DATABASE", default_value = "axum_app.db")]
    database: PathBuf,
    /// The address to listen on; port 0 picks a free one.
    #[arg(long, env = "AXUM_APP_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// How many items to seed on the first start.
    #[arg(long, env = "AXUM_APP_ROWS", default_value_t = 20_000)]
    rows: u32,
    /// Items per batch of the background backfill.
    #[arg(long, env = "AXUM_APP_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Milliseconds to pause in each batch of the backfill.
    #[arg(long, env = "AXUM_APP_BATCH_DELAY_MS", default_value_t = 0)]
    batch_delay_ms: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    // First of all, so that a signal never meets the default action (which
    // ends the process on the spot).
    let shutdown = CancellationToken::new();
    listen_for_signals(shutdown.clone())?;

    // The app's own table, on its own connection (a pool in a real app).
    let path = args.database.clone();
    let rows = args.rows;
    let items = tokio::task::spawn_blocking(move || {
        let mut conn = rusqlite::Connection::open(path)?;
        migrations::seed(&mut conn, rows)
    })
    .await??;
    println!("{}: {items} items", args.database.display());

    let store = SqliteStore::open(&args.database).await?;
    let runner = Runner::builder(store)
        .shutdown(shutdown.clone())
        .atomic(migrations::prefix_paths_def()?, migrations::prefix_paths)
        .batched(
            migrations::backfill_slugs_def()?,
            migrations::backfill_slugs,
        )
        .build()?;
    let app = App {
        batch_size: args.batch_size,
        batch_delay: Duration::from_millis(args.batch_delay_ms),
    };
    // Required migrations first; `?` keeps a failed one from ever serving.
    let started = match runner.run(app).await {
        Ok(started) => started,
        Err(Error::Stopped { id }) => {
            println!("shut down before serving (migration {id} resumes on the next start)");
            return Ok(ExitCode::SUCCESS);
        }
        Err(err) => return Err(err.into()),
    };
    println!(
        "required migrations: {}",
        started.report().to_string().trim_end()
    );
    let background = started.background().clone();
    log_background(background.clone());

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let routes = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .with_state(background.clone());
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;

    // The server has stopped; wait for the backfill to stop at its batch
    // boundary (its lock is released by then).
    println!("shutting down: waiting for the background migrations");
    let last = background.finished_status().await;
    println!("background: {}", serde_json::to_string(&last)?);
    Ok(match last {
        BackgroundStatus::Failed { .. } | BackgroundStatus::Error { .. } => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// SIGINT (Ctrl-C) and SIGTERM cancel `shutdown`; a second one exits at once.
fn listen_for_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            for round in 0.. {
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                if round == 0 {
                    eprintln!("{name}: shutting down (again to exit at once)");
                    shutdown.cancel();
                } else {
                    eprintln!("{name} again: exiting now");
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: shutting down");
            shutdown.cancel();
        }
    });
    Ok(())
}

/// Logs each state the background migrations go through (progress at most
/// once a second).
fn log_background(background: Background) {
    tokio::spawn(async move {
        let mut status = background.subscribe();
        let mut last_logged = tokio::time::Instant::now() - Duration::from_secs(1);
        let mut last_state = String::new();
        loop {
            let now = status.borrow_and_update().clone();
            let state = json!(now)["state"].as_str().unwrap_or("").to_owned();
            if state != last_state || last_logged.elapsed() >= Duration::from_secs(1) {
                tracing::info!(status = %json!(now), "background migrations");
                last_logged = tokio::time::Instant::now();
                last_state = state;
            }
            if now.is_final() || status.changed().await.is_err() {
                break;
            }
        }
    });
}

async fn index() -> &'static str {
    "axum_app: a waymark example; see /healthz\n"
}

/// Readiness and health: see the module documentation.
async fn healthz(State(background): State<Background>) -> (StatusCode, Json<Value>) {
    let status = background.status();
    let (code, health) = match &status {
        BackgroundStatus::Error { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        BackgroundStatus::Failed { .. } => (StatusCode::OK, "degraded"),
        _ => (StatusCode::OK, "ok"),
    };
    (
        code,
        Json(json!({
            "status": health,
            // Only a process whose required migrations are all executed serves.
            "required": "executed",
            "background": status,
        })),
    )
}
