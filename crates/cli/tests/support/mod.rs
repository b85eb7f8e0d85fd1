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
        if code == 1 {
            // Errors: exactly one line on stderr, never a panic or backtrace.
            assert_eq!(self.stderr.lines().count(), 1, "stderr: {}", self.stderr);
            assert!(
                self.stderr.starts_with("waymark: error: "),
                "{}",
                self.stderr
            );
        }
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
                "no migrations tracked\n"
            );
            assert_eq!(
                waymark(url, &["status", "--json"]).expect(0).stdout.trim(),
                "[]"
            );
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
            assert_eq!(json[0]["id"], 1);
            assert_eq!(json[1]["name"], "fill_pace");
            assert_eq!(json[1]["description"], "Derive pace; it's \"fast\"");
            assert_eq!(json[1]["executed"], false);
            assert_eq!(json[1]["attempts"], 0);
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
            let err = waymark(url, &["register", "0", "zero", ""])
                .expect(1)
                .stderr;
            assert!(err.contains("invalid id"), "{err}");
            let err = waymark(url, &["show", "0"]).expect(1).stderr;
            assert!(err.contains("invalid id"), "{err}");
            let long_description = "d".repeat(2501);
            let err = waymark(url, &["register", "1", "ok", &long_description])
                .expect(1)
                .stderr;
            assert!(err.contains("2500"), "{err}");
            assert_eq!(
                waymark(url, &["status"]).expect(0).stdout,
                "no migrations tracked\n"
            );
            // A name of 250 characters is fine.
            waymark(url, &["register", "1", &"é".repeat(250), ""]).expect(0);
            waymark(url, &["register", "1", "other name", ""]).expect(1);
        }
    };
}
