//! The axum_app example as a real process on a real SQLite file, over real
//! HTTP on loopback: it serves at once while its background backfill runs,
//! `/healthz` follows the backfill, Ctrl-C stops it at a batch boundary
//! with its checkpoint recorded and its lock free, and a restart finishes
//! it with every row processed exactly once.
#![cfg(feature = "sqlite")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::example_binary;
use waymark::MigrationStore;
use waymark::sqlite::SqliteStore;
use waymark::sqlite::rusqlite::Connection;
use waymark::store::LockScope;

const ROWS: i64 = 20_000;
const BATCH: i64 = 500;

fn axum_app() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| example_binary("axum_app"))
}

/// A running axum_app, killed if the test fails before it exits.
struct Running {
    child: Child,
    addr: String,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn start(db: &Path, batch_delay_ms: u64) -> Self {
        let mut child = Command::new(axum_app())
            .arg("--database")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args([
                "--rows",
                &ROWS.to_string(),
                "--batch-size",
                &BATCH.to_string(),
            ])
            .env("AXUM_APP_BATCH_DELAY_MS", batch_delay_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting axum_app");
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        // Drain both pipes, so the app never blocks on a full one.
        let stdout = child.stdout.take().unwrap();
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = addr_tx.send(addr.to_owned());
                }
                collected.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            collected
                .lock()
                .unwrap()
                .push_str(&format!("[stderr]\n{text}"));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "axum_app never printed its address:\n{}",
                    output.lock().unwrap()
                )
            });
        Self {
            child,
            addr,
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn healthz(&self) -> Value {
        let (code, body) = get(&self.addr, "/healthz");
        assert_eq!(code, 200, "/healthz: {body}");
        let health: Value = serde_json::from_str(&body).expect("JSON from /healthz");
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["required"], "executed", "{health}");
        health
    }

    /// Sends `signal` (`INT`, `TERM`) and waits for the process to end.
    fn stop(mut self, signal: &str) -> (ExitStatus, String) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "axum_app did not exit after SIG{signal}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the pipe readers see the end of the output.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.output())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET over a plain TCP connection: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to axum_app");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_owned())
}

/// The tracked row of a migration: executed, attempts, checkpoint.
fn migration_row(conn: &Connection, id: i64) -> (bool, u32, Option<String>) {
    conn.query_row(
        "SELECT executed, attempts, checkpoint FROM migrations WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The locks held on `db`'s tracking table, as waymark reports them.
fn locks(db: &Path) -> Vec<LockScope> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(db).await.unwrap();
        let held = store.locks().await.unwrap();
        store.close().await.unwrap();
        held.into_iter().map(|lock| lock.scope).collect()
    })
}

#[test]
fn serves_during_the_backfill_stops_on_ctrl_c_and_resumes_exactly_there() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");

    // First start: slow batches (40 of them, 100 ms each), so that Ctrl-C
    // lands half-way.
    let app = Running::start(&db, 100);
    let (code, body) = get(&app.addr, "/");
    assert_eq!(code, 200);
    assert!(body.contains("axum_app"), "{body}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut states = Vec::new();
    let done_before_interrupt = loop {
        assert!(
            Instant::now() < deadline,
            "the backfill never got going; states seen: {states:?}\n{}",
            app.output()
        );
        let health = app.healthz();
        let background = &health["background"];
        let state = background["state"].as_str().unwrap().to_owned();
        assert!(
            ["starting", "running"].contains(&state.as_str()),
            "before the interrupt the backfill is starting or running: {health}"
        );
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "running" {
            assert_eq!(background["id"], 2, "{health}");
            assert_eq!(background["name"], "backfill_item_slugs", "{health}");
            let done = background["progress"]["done"].as_i64();
            if let Some(done) = done {
                assert_eq!(background["progress"]["total"], ROWS, "{health}");
                if done >= 3 * BATCH {
                    break done;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(states.contains(&"running".to_owned()), "{states:?}");
    // While it runs, this instance holds the background lock, not the run lock.
    assert_eq!(locks(&db), [LockScope::Background]);

    // Ctrl-C.
    let (status, output) = app.stop("INT");
    assert!(status.success(), "{status:?}\n{output}");
    assert!(
        output.contains(r#"background: {"state":"stopped"}"#),
        "{output}"
    );

    let conn = Connection::open(&db).unwrap();
    let (executed, attempts, checkpoint) = migration_row(&conn, 1);
    assert!(executed && attempts == 1 && checkpoint.is_none());
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items WHERE path = '/items/' || id"
        ),
        ROWS,
        "the required migration prefixed every path once"
    );
    let (executed, attempts, checkpoint) = migration_row(&conn, 2);
    assert!(!executed, "stopped, so still pending");
    assert_eq!(attempts, 0, "a shutdown is not a failed attempt");
    let stopped_at: i64 = checkpoint
        .expect("the stopped backfill has a checkpoint")
        .parse()
        .unwrap();
    assert_eq!(stopped_at % BATCH, 0, "stopped at a batch boundary");
    assert!(
        stopped_at >= done_before_interrupt && stopped_at < ROWS,
        "stopped half-way: at {stopped_at}, {done_before_interrupt} done before Ctrl-C"
    );
    // Exactly the rows up to the checkpoint are backfilled, once each.
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT count(*) FROM items WHERE backfilled = (CASE WHEN id <= {stopped_at} THEN 1 ELSE 0 END)"
            )
        ),
        ROWS
    );
    drop(conn);
    assert_eq!(locks(&db), [], "no lock is left behind");

    // Restart: it serves at once and resumes after the checkpoint.
    let app = Running::start(&db, 10);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut states = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the backfill never finished; states seen: {states:?}\n{}",
            app.output()
        );
        let health = app.healthz();
        let background = &health["background"];
        let state = background["state"].as_str().unwrap().to_owned();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        match state.as_str() {
            "finished" => break,
            "starting" => {}
            "running" => {
                // Progress counts this run's batches against what was left.
                if !background["progress"].is_null() {
                    assert_eq!(
                        background["progress"]["total"],
                        ROWS - stopped_at,
                        "{health}"
                    );
                }
            }
            other => panic!("unexpected background state {other:?}: {health}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(locks(&db), [], "the finished backfill released its lock");
    let (status, output) = app.stop("TERM");
    assert!(status.success(), "{status:?}\n{output}");
    assert!(
        output.contains(r#"background: {"state":"finished"}"#),
        "{output}"
    );
    assert!(
        output.contains("required migrations: nothing pending"),
        "the required migration is not run again:\n{output}"
    );

    let conn = Connection::open(&db).unwrap();
    let (executed, attempts, _) = migration_row(&conn, 2);
    assert!(executed && attempts == 1, "executed by the second start");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items WHERE backfilled = 1"),
        ROWS,
        "every row backfilled exactly once"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items WHERE slug = lower(replace(title, ' ', '-'))"
        ),
        ROWS
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items WHERE path = '/items/' || id"
        ),
        ROWS,
        "the required migration did not run again"
    );
    drop(conn);
    assert_eq!(locks(&db), []);
}

#[test]
fn a_start_after_the_backfill_finished_finds_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    for round in 0..2 {
        let app = Running::start(&db, 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        while app.healthz()["background"]["state"] != "finished" {
            assert!(Instant::now() < deadline, "{}", app.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, output) = app.stop("TERM");
        assert!(status.success(), "{status:?}\n{output}");
        if round == 1 {
            assert!(
                output.contains("required migrations: nothing pending")
                    && output.contains("settled"),
                "the second start takes the fast path:\n{output}"
            );
        }
    }
    let conn = Connection::open(&db).unwrap();
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items WHERE backfilled = 1"),
        ROWS
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM migrations WHERE executed AND attempts = 1"
        ),
        2
    );
}
