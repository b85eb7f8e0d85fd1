//! Running the real `waymark` binary, and the tests every backend runs.

#![allow(dead_code)]

use std::process::{Command, Output};

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        if code == 1 || code == 4 {
            // Errors: exactly one line on stderr, never a panic or backtrace.
            assert_eq!(self.stderr.lines().count(), 1, "stderr: {}", self.stderr);
            assert!(
                self.stderr.starts_with("waymark: error: ")
                    || self.stderr.starts_with("migrate_cli: error: ")
                    || self.stderr.starts_with("{\"error\":"),
                "{}",
                self.stderr
            );
        }
        self.expect_code(code)
    }

    /// Asserts the exit code only (and that nothing panicked), for runs
    /// whose stderr also holds progress lines.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        self
    }
}

/// Runs `waymark --database URL ARGS…` with no `DATABASE_URL` inherited.
pub fn waymark(url: &str, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waymark"));
    command
        .env_remove("DATABASE_URL")
        .arg("--database")
        .arg(url)
        .args(args);
    finish(command.output().expect("run waymark"))
}

/// Runs `waymark ARGS…` as given.
pub fn waymark_raw(args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waymark"));
    command.env_remove("DATABASE_URL").args(args);
    finish(command.output().expect("run waymark"))
}

/// Runs `waymark ARGS…` in `dir` (when given) with `DATABASE_URL` set to
/// `env_url` (when given) and nothing else inherited from it.
pub fn waymark_in(dir: Option<&std::path::Path>, env_url: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waymark"));
    command.env_remove("DATABASE_URL").args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    if let Some(url) = env_url {
        command.env("DATABASE_URL", url);
    }
    finish(command.output().expect("run waymark"))
}

fn finish(output: Output) -> Run {
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// The tests every backend runs; `$url` is an expression giving a fresh
/// database URL (and whatever keeps it alive) as `(String, guard)`.
#[macro_export]
macro_rules! cli_backend_tests {
    ($fresh:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn init_then_status_is_empty() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            assert_eq!(
                waymark(url, &["init"]).expect(0).stdout,
                "tracking table ready\n"
            );
            assert_eq!(
                waymark(url, &["status"]).expect(0).stdout,
                "no migrations tracked\n\nrun lock: free\nbackground lock: free\n"
            );
            let json: serde_json::Value =
                serde_json::from_str(&waymark(url, &["status", "--json"]).expect(0).stdout)
                    .unwrap();
            assert_eq!(json, serde_json::json!({"migrations": [], "locks": []}));
            // init is idempotent.
            waymark(url, &["init"]).expect(0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn register_status_show_and_json() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            waymark(url, &["init"]).expect(0);
            let out = waymark(
                url,
                &["register", "2", "fill_pace", "Derive pace; it's \"fast\""],
            )
            .expect(0);
            assert_eq!(out.stdout, "migration 2 registered (pending)\n");
            waymark(url, &["register", "1", "averages", "Recompute averages"]).expect(0);
            let status = waymark(url, &["status"]).expect(0).stdout;
            let lines: Vec<&str> = status.lines().collect();
            assert!(lines[0].starts_with("id  name"), "{status}");
            assert!(lines[2].starts_with("1   averages   pending"), "{status}");
            assert!(lines[3].starts_with("2   fill_pace  pending"), "{status}");
            let json: serde_json::Value =
                serde_json::from_str(&waymark(url, &["status", "--json"]).expect(0).stdout)
                    .unwrap();
            let rows = &json["migrations"];
            assert_eq!(rows[0]["id"], 1);
            assert_eq!(rows[1]["name"], "fill_pace");
            assert_eq!(rows[1]["description"], "Derive pace; it's \"fast\"");
            assert_eq!(rows[1]["executed"], false);
            assert_eq!(rows[1]["attempts"], 0);
            let show = waymark(url, &["show", "2"]).expect(0).stdout;
            assert!(show.contains("name         fill_pace\n"), "{show}");
            assert!(show.contains("state        pending\n"), "{show}");
            let one: serde_json::Value =
                serde_json::from_str(&waymark(url, &["show", "2", "--json"]).expect(0).stdout)
                    .unwrap();
            assert_eq!(one["id"], 2);
            assert_eq!(one["executed_at"], serde_json::Value::Null);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pending_is_a_deploy_gate() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            waymark(url, &["init"]).expect(0);
            assert_eq!(
                waymark(url, &["pending"]).expect(0).stdout,
                "nothing pending\n"
            );
            waymark(url, &["register", "7", "seven", ""]).expect(0);
            waymark(url, &["register", "3", "three", ""]).expect(0);
            let out = waymark(url, &["pending"]).expect(3).stdout;
            assert!(
                out.find("three").unwrap() < out.find("seven").unwrap(),
                "id order: {out}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&waymark(url, &["pending", "--json"]).expect(3).stdout)
                    .unwrap();
            assert_eq!(json.as_array().unwrap().len(), 2);
            waymark(url, &["mark-executed", "3", "7"]).expect(0);
            waymark(url, &["pending"]).expect(0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn mark_executed_and_pending_repair() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            waymark(url, &["register", "1", "one", ""]).expect(0);
            let out = waymark(url, &["mark-executed", "1"]).expect(0).stdout;
            assert_eq!(out, "migration 1 marked executed\n");
            let row: serde_json::Value =
                serde_json::from_str(&waymark(url, &["show", "1", "--json"]).expect(0).stdout)
                    .unwrap();
            assert_eq!(row["executed"], true);
            assert!(row["executed_at"].as_str().unwrap().ends_with('Z'), "{row}");
            // Registering again keeps the state.
            assert_eq!(
                waymark(url, &["register", "1", "one", ""]).expect(0).stdout,
                "migration 1 registered (executed)\n"
            );
            assert_eq!(
                waymark(url, &["mark-pending", "1"]).expect(0).stdout,
                "migration 1 marked pending\n"
            );
            waymark(url, &["pending"]).expect(3);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unknown_ids_fail_and_change_nothing() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            waymark(url, &["register", "1", "one", ""]).expect(0);
            let err = waymark(url, &["show", "99"]).expect(1).stderr;
            assert!(err.contains("migration 99 not found"), "{err}");
            let err = waymark(url, &["mark-executed", "1", "99"]).expect(1).stderr;
            assert!(err.contains("migration 99 not found"), "{err}");
            // The known id listed before the unknown one was not changed.
            waymark(url, &["pending"]).expect(3);
            let err = waymark(url, &["mark-pending", "42"]).expect(1).stderr;
            assert!(err.contains("not found"), "{err}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn invalid_input_is_a_clear_error() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            waymark(url, &["init"]).expect(0);
            let long = "n".repeat(251);
            let err = waymark(url, &["register", "1", &long, ""]).expect(1).stderr;
            assert!(
                err.contains("invalid name: must be 1 to 250 characters, got 251"),
                "{err}"
            );
            // A malformed id is a usage error (2), whatever the command.
            for args in [
                &["register", "0", "zero", ""][..],
                &["show", "0"],
                &["show", "x"],
                &["mark-executed", "1", "two"],
                &["mark-pending", "99999999999999999999"],
            ] {
                let err = waymark(url, args).expect(2).stderr;
                assert!(err.contains("is not a migration id"), "{args:?}: {err}");
            }
            waymark(url, &["show", "-3"]).expect(2);
            let long_description = "d".repeat(2501);
            let err = waymark(url, &["register", "1", "ok", &long_description])
                .expect(1)
                .stderr;
            assert!(err.contains("2500"), "{err}");
            assert!(
                waymark(url, &["status"])
                    .expect(0)
                    .stdout
                    .starts_with("no migrations tracked\n"),
            );
            // A name of 250 characters is fine.
            waymark(url, &["register", "1", &"é".repeat(250), ""]).expect(0);
            waymark(url, &["register", "1", "other name", ""]).expect(1);
        }

        /// Every command speaks JSON with `--json`, errors included, in
        /// the shapes docs/operations.md describes (`support::schema`).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_command_speaks_json_in_the_documented_shapes() {
            use support::schema::{self, assert_error, assert_keys, parse};
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            let init = parse(&waymark(url, &["init", "--json"]).expect(0).stdout);
            assert_keys(&init, schema::INIT, "init");
            let plan = parse(&waymark(url, &["init", "--dry-run", "--json"]).expect(0).stdout);
            assert_keys(&plan, schema::INIT_PLAN, "init --dry-run");
            assert_eq!(plan["ready"], true);
            let row = parse(&waymark(url, &["register", "1", "one", "first", "--json"]).expect(0).stdout);
            assert_keys(&row, schema::MIGRATION, "register");
            assert_eq!(row["id"], 1);
            waymark(url, &["--json", "register", "2", "two", ""]).expect(0);
            let status = parse(&waymark(url, &["status", "--json"]).expect(0).stdout);
            assert_keys(&status, schema::STATUS, "status");
            for row in status["migrations"].as_array().unwrap() {
                assert_keys(row, schema::MIGRATION, "status row");
            }
            assert_eq!(status["locks"], serde_json::json!([]));
            let pending = parse(&waymark(url, &["pending", "--json"]).expect(3).stdout);
            assert_eq!(pending.as_array().unwrap().len(), 2);
            let show = parse(&waymark(url, &["show", "2", "--json"]).expect(0).stdout);
            assert_keys(&show, schema::MIGRATION, "show");
            let marked = parse(&waymark(url, &["mark-executed", "1", "2", "--json"]).expect(0).stdout);
            assert_keys(&marked, schema::MARKED, "mark-executed");
            assert_eq!(marked, serde_json::json!({"marked": [1, 2], "state": "executed", "forced": false}));
            let marked = parse(&waymark(url, &["mark-pending", "2", "--json"]).expect(0).stdout);
            assert_eq!(marked["state"], "pending");
            assert_eq!(parse(&waymark(url, &["locks", "--json"]).expect(0).stdout), serde_json::json!([]));
            // Errors: one JSON object on stderr with a stable kind.
            assert_error(&waymark(url, &["show", "99", "--json"]).expect(1).stderr, "not_found");
            assert_error(&waymark(url, &["show", "x", "--json"]).expect(2).stderr, "usage");
            assert_error(&waymark(url, &["--json", "frobnicate"]).expect(2).stderr, "usage");
            assert_error(&waymark(url, &["run", "--json"]).expect(2).stderr, "usage");
            assert_error(&waymark(url, &["plan", "--json"]).expect(2).stderr, "usage");
            let long = "n".repeat(251);
            assert_error(&waymark(url, &["register", "3", &long, "", "--json"]).expect(1).stderr, "invalid");
            // Nothing printed on stdout for a failed command.
            assert_eq!(waymark(url, &["show", "99", "--json"]).stdout, "");
        }

        /// `run` and `plan` need the application's handlers: the tool
        /// says how to mount the command, exits 2, and opens nothing.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn run_and_plan_need_the_application() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            for command in ["run", "plan"] {
                let err = waymark(url, &[command]).expect(2).stderr;
                assert!(err.contains("waymark::cli::MigrateCommand"), "{err}");
                assert!(err.contains(&format!("migrate {command}")), "{err}");
            }
            // Nothing was created or prepared.
            waymark(url, &["status"]).expect(1);
        }

        /// An operator's `mark-executed` while a replica runs the
        /// migrations waits for the run lock, then refuses, naming the
        /// holder and changing nothing (exit 4); `--force` goes ahead. The
        /// mounted command refuses the same way.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn repairs_wait_for_the_lock_and_name_its_holder() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            let running = support::RunningApp::start(url, 800);
            let pid = running.pid().to_string();
            let locks = support::schema::parse(&waymark(url, &["locks", "--json"]).expect(0).stdout);
            let run = locks
                .as_array()
                .unwrap()
                .iter()
                .find(|lock| lock["scope"] == "run")
                .expect("the run lock is held");
            support::schema::assert_keys(run, support::schema::LOCK, "lock");
            support::schema::assert_keys(&run["holder"], support::schema::HOLDER, "holder");
            assert_eq!(run["holder"]["application"], "migrate_cli");
            assert_eq!(run["holder"]["pid"].to_string(), pid);
            let text = waymark(url, &["status"]).expect(0).stdout;
            assert!(text.contains(&format!("run lock: held by migrate_cli (pid {pid} on ")), "{text}");

            let before = waymark(url, &["status", "--json"]).expect(0).stdout;
            let before = support::schema::parse(&before)["migrations"].clone();
            let err = waymark(url, &["mark-executed", "2", "--lock-wait", "0.3"]).expect(4).stderr;
            assert!(err.contains(&format!("held by migrate_cli (pid {pid} on ")), "{err}");
            assert!(err.contains("--force"), "{err}");
            let err = waymark(url, &["mark-pending", "1", "--lock-wait", "0", "--json"]).expect(4).stderr;
            support::schema::assert_error(&err, "locked");
            let err = support::app(url, &["migrate", "mark-executed", "2", "--lock-wait", "0.3"], &[])
                .expect(4)
                .stderr;
            assert!(err.starts_with("migrate_cli: error: the run lock is held by migrate_cli"), "{err}");
            let after = waymark(url, &["status", "--json"]).expect(0).stdout;
            let after = support::schema::parse(&after)["migrations"].clone();
            // Only the running backfill's checkpoint may have moved.
            let strip = |rows: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value)> {
                rows.as_array().unwrap().iter().map(|r| (r["id"].clone(), r["executed"].clone())).collect()
            };
            assert_eq!(strip(&before), strip(&after), "nothing changed");

            let forced = support::waymark_env(url, &["mark-executed", "3", "--force"], &[("NO_COLOR", "1")]).expect(0);
            assert_eq!(forced.stdout, "migration 3 marked executed\n");
            assert!(forced.stderr.contains("--force"), "the log warns: {}", forced.stderr);
            let quiet = waymark(url, &["-q", "mark-executed", "3", "--force"]).expect(0);
            assert!(!quiet.stderr.contains("WARN"), "-q hides the log line: {}", quiet.stderr);
            assert!(running.wait(), "the run itself went on to the end");
            // Once the run is over, a repair takes the locks at once.
            waymark(url, &["mark-pending", "4", "--lock-wait", "0"]).expect(0);
        }

        /// The mounted command, driven as an operator would: plan, run
        /// with plain progress lines (not a terminal), the report, a failed
        /// migration, and the JSON of each.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_mounted_command_plans_runs_and_reports() {
            use support::schema::{self, assert_error, assert_keys, parse};
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            let plan = support::app(url, &["migrate", "plan"], &[]).expect(0).stdout;
            assert!(plan.contains("4 pending migrations, 4 would run"), "{plan}");
            let steps = parse(&support::app(url, &["migrate", "plan", "--json"], &[]).expect(0).stdout);
            for step in steps.as_array().unwrap() {
                assert_keys(step, schema::PLAN_STEP, "plan step");
            }
            // plan only reads: the table is not even created.
            waymark(url, &["status"]).expect(1);

            let failed = support::app(url, &["migrate", "run"], &[("RIDES_FAIL", "1")]).expect_code(1);
            assert!(failed.stdout.contains("link_gear        failed"), "{}", failed.stdout);
            assert!(failed.stdout.contains("2 executed, 0 already done, 1 failed"), "{}", failed.stdout);
            assert!(failed.stderr.contains("[1/3] 1 normalise_units: started"), "{}", failed.stderr);
            assert!(failed.stderr.contains("[2/3] 2 recount_zones: executed in"), "{}", failed.stderr);
            assert!(
                failed.stderr.lines().last().unwrap().starts_with("migrate_cli: error: migration 3 failed: the gear service did not answer"),
                "{}",
                failed.stderr
            );
            let failed = support::app(url, &["migrate", "run", "--json"], &[("RIDES_FAIL", "1")]).expect_code(1);
            let report = parse(&failed.stdout);
            assert_keys(&report, schema::RUN, "run");
            let outcome = &report["outcomes"][0];
            assert_keys(outcome, schema::OUTCOME, "outcome");
            assert_eq!(outcome["status"], "failed");
            assert_eq!(outcome["failure"]["message"], "the gear service did not answer");
            assert_error(&failed.stderr, "handler");

            let ok = support::app(url, &["migrate", "run"], &[]).expect(0);
            assert!(ok.stdout.contains("link_gear       executed"), "{}", ok.stdout);
            let again = support::app(url, &["migrate", "run"], &[]).expect(0);
            assert_eq!(again.stdout, "nothing to run: every migration is executed\n");
            let report = parse(&support::app(url, &["migrate", "run", "--json"], &[]).expect(0).stdout);
            assert_eq!(report["settled"], true);
            support::app(url, &["migrate", "pending"], &[]).expect(0);
            let status = parse(&support::app(url, &["migrate", "status", "--json"], &[]).expect(0).stdout);
            assert_eq!(status["migrations"].as_array().unwrap().len(), 4);
            let text = support::app(url, &["migrate", "status"], &[]).expect(0).stdout;
            assert!(text.contains("run lock: free\nbackground lock: free\n"), "{text}");
            assert_eq!(support::app(url, &["migrate", "locks", "--json"], &[]).expect(0).stdout.trim(), "[]");
            let added = parse(&support::app(url, &["migrate", "register", "9", "later", "", "--json"], &[]).expect(0).stdout);
            assert_keys(&added, schema::MIGRATION, "register");
            let pending = parse(&support::app(url, &["migrate", "pending", "--json"], &[]).expect(3).stdout);
            assert_eq!(pending[0]["id"], 9);
            assert_eq!(
                support::app(url, &["migrate", "mark-executed", "9"], &[]).expect(0).stdout,
                "migration 9 marked executed\n"
            );
            let marked = parse(&support::app(url, &["migrate", "mark-pending", "9", "--json"], &[]).expect(0).stdout);
            assert_eq!(marked["state"], "pending");
            let help = support::app(url, &["migrate", "--help"], &[]).expect(0).stdout;
            assert!(help.contains("3  `pending`: some migrations are pending"), "{help}");
            let shown = support::app(url, &["migrate", "show", "3"], &[]).expect(0).stdout;
            assert!(shown.contains("attempts     3"), "{shown}");
            assert_error(&support::app(url, &["migrate", "show", "0", "--json"], &[]).expect(2).stderr, "usage");
        }

        /// `status --watch` away from a terminal prints each new frame of a
        /// running migration's state, holder included, and ends with the
        /// run; with `--json`, one object per line.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn status_watch_follows_a_run_until_it_ends() {
            let (url, _guard) = $fresh.await;
            let url = url.as_str();
            let running = support::RunningApp::start(url, 300);
            let watched = waymark(url, &["status", "--watch", "--interval", "0.2"]).expect(0).stdout;
            assert!(watched.contains("run lock: held by migrate_cli"), "{watched}");
            assert!(watched.trim_end().ends_with("background lock: free"), "{watched}");
            assert!(watched.contains("2   recount_zones    executed"), "the last frame: {watched}");
            assert!(running.wait());
            let frames = waymark(url, &["status", "--watch", "--json"]).expect(0).stdout;
            assert_eq!(frames.lines().count(), 1, "nothing running: one frame: {frames}");
            support::schema::assert_keys(&support::schema::parse(&frames), support::schema::STATUS, "frame");
        }
    };
}

/// `program --database URL ARGS…` with `envs` set and nothing inherited
/// of `DATABASE_URL` or `RUST_LOG`, not started.
fn command_for(
    program: &std::path::Path,
    url: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .arg("--database")
        .arg(url)
        .args(args);
    command
}

/// Runs `waymark --database URL ARGS…` with `envs` set.
pub fn waymark_env(url: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_waymark"));
    finish(
        command_for(program, url, args, envs)
            .output()
            .expect("run waymark"),
    )
}

/// The example application that mounts `waymark::cli::MigrateCommand`
/// (`crates/waymark/examples/migrate_cli.rs`), built once per test binary
/// with the features this crate gives the facade, so nothing is rebuilt.
pub fn example_app() -> &'static std::path::Path {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        waymark_tests::examples::example_binary(
            &waymark_tests::examples::facade_manifest(),
            "migrate_cli",
            &["cli", "sqlite-bundled", "postgres-tls"],
        )
    })
}

/// Runs `migrate_cli --database URL ARGS…` with `envs` set, to the end.
pub fn app(url: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut command = app_command(url, args, envs);
    finish(command.output().expect("run the example app"))
}

/// The example app's command line, not started.
pub fn app_command(url: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
    command_for(example_app(), url, args, envs)
}

/// A `migrate run` of the example app that keeps the run lock for a while
/// (its zone backfill walks `RIDES_ZONE_ITEMS` rides in batches of 10,
/// pausing 100 ms per batch), started and waited for until the lock shows
/// as held. Killed when dropped.
pub struct RunningApp {
    child: std::process::Child,
}

impl RunningApp {
    pub fn start(url: &str, items: u32) -> Self {
        let items = items.to_string();
        let child = app_command(
            url,
            &["migrate", "run"],
            &[("RIDES_ZONE_ITEMS", &items), ("RIDES_STEP_MS", "100")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the example app");
        let running = Self { child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let locks = waymark(url, &["locks", "--json"]);
            if locks.code == 0 && locks.stdout.contains("\"run\"") {
                return running;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the app never took the run lock: {locks:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The app's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the run to end; whether it succeeded.
    pub fn wait(mut self) -> bool {
        self.child.wait().expect("wait for the app").success()
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keys of each JSON object the commands print, as docs/operations.md
/// describes them: a test fails when a field is added, renamed or removed
/// without the docs.
pub mod schema {
    use serde_json::Value;

    /// A tracked migration (`status`, `pending`, `show`, `register`).
    pub const MIGRATION: &[&str] = &[
        "attempts",
        "checkpoint",
        "description",
        "executed",
        "executed_at",
        "id",
        "last_error",
        "name",
    ];
    /// `status --json`.
    pub const STATUS: &[&str] = &["locks", "migrations"];
    /// A held lock (`locks`, `status`).
    pub const LOCK: &[&str] = &["detail", "holder", "scope", "since"];
    /// Its holder.
    pub const HOLDER: &[&str] = &["application", "host", "pid"];
    /// `mark-executed --json`, `mark-pending --json`.
    pub const MARKED: &[&str] = &["forced", "marked", "state"];
    /// `init --json`.
    pub const INIT: &[&str] = &["ready"];
    /// `init --dry-run --json`.
    pub const INIT_PLAN: &[&str] = &[
        "changes",
        "create",
        "ready",
        "refusal",
        "side_objects",
        "table",
    ];
    /// Every error, on stderr.
    pub const ERROR: &[&str] = &["error"];
    /// Inside `error`.
    pub const ERROR_BODY: &[&str] = &["kind", "message"];
    /// `plan --json`: each step.
    pub const PLAN_STEP: &[&str] = &[
        "action",
        "attempts",
        "checkpoint",
        "handler",
        "id",
        "last_error",
        "mode",
        "name",
        "registered",
    ];
    /// `run --json`.
    pub const RUN: &[&str] = &["elapsed_ms", "lock_waited_ms", "outcomes", "settled"];
    /// Each outcome of `run --json`.
    pub const OUTCOME: &[&str] = &[
        "after_failure_of",
        "attempts",
        "duration_ms",
        "failure",
        "id",
        "name",
        "status",
    ];

    /// Asserts `value` is an object with exactly `keys`.
    pub fn assert_keys(value: &Value, keys: &[&str], what: &str) {
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{what}: not an object: {value}"));
        let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(found, keys, "{what}: {value}");
    }

    /// Parses `text` as one JSON value.
    pub fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Asserts `stderr` is one JSON error of `kind`.
    pub fn assert_error(stderr: &str, kind: &str) {
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        let error = parse(stderr);
        assert_keys(&error, ERROR, "error");
        assert_keys(&error["error"], ERROR_BODY, "error body");
        assert_eq!(error["error"]["kind"], kind, "{stderr}");
    }
}
