//! The commands on a real terminal (tmux): `migrate run`'s progress bars
//! with rate and ETA, and `status --watch` redrawing in place while the
//! run holds the lock, then saying that nothing runs any more.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Self {
        let tmux = Self {
            socket: format!("waymark-{name}-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "160",
            "-y",
            "40",
            command,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running tmux (installed by .ci/test): {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen of `window`, with `escapes` its colours too.
    fn screen(&self, window: &str, escapes: bool) -> String {
        let target = format!("main:{window}");
        let mut args = vec!["capture-pane", "-p", "-t", target.as_str()];
        if escapes {
            args.push("-e");
        }
        self.run(&args)
    }

    /// Waits until `window` shows what `done` looks for; returns that screen.
    fn wait_for(&self, window: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen(window, false);
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn progress_bars_and_a_live_status_on_a_real_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let app = support::example_app();
    // The shell stays after the command, so the last screen can be read.
    let run = format!(
        "env RIDES_ZONE_ITEMS=400 RIDES_STEP_MS=100 {} --database '{url}' migrate run; echo exit=$?; sleep 60",
        quoted(app)
    );
    let tmux = Tmux::start("run", &run);
    let bar = tmux.wait_for("0", "a progress bar with rate and ETA", |screen| {
        screen.lines().any(|line| {
            line.contains("recount_zones [") && line.contains("/400") && line.contains("/s ETA")
        })
    });
    assert!(
        bar.contains("[1/3] 1 normalise_units"),
        "finished bars stay: {bar}"
    );

    let watch = format!(
        "{} --database '{url}' status --watch --interval 0.2; echo exit=$?; sleep 60",
        quoted(Path::new(env!("CARGO_BIN_EXE_waymark")))
    );
    tmux.run(&["new-window", "-t", "main:1", &watch]);
    let live = tmux.wait_for("1", "the run lock's holder", |screen| {
        screen.contains("run lock: held by migrate_cli") && screen.contains("watching: refreshed")
    });
    assert_eq!(
        live.matches("id  name").count(),
        1,
        "each frame replaces the last: {live}"
    );
    let finished = tmux.wait_for("0", "the report", |screen| screen.contains("exit=0"));
    // The background migration runs too: `run` goes to the end.
    assert!(
        finished.contains("4 executed, 0 already done, 0 failed"),
        "{finished}"
    );
    assert!(
        finished.contains("[3/3] 3 link_gear executed in"),
        "{finished}"
    );
    let after = tmux.wait_for("1", "the end of the watch", |screen| {
        screen.contains("exit=0")
    });
    assert!(after.contains("no migration is running"), "{after}");
    assert!(after.contains("recount_zones    executed"), "{after}");
    assert!(after.contains("run lock: free"), "{after}");
}

/// `NO_COLOR` keeps the bars plain; without it they are coloured.
#[test]
fn no_color_is_honoured_on_a_terminal() {
    for (no_color, coloured) in [(true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        let env = if no_color {
            "NO_COLOR=1"
        } else {
            "WAYMARK_TEST=1"
        };
        let run = format!(
            "env -u NO_COLOR {env} RIDES_ZONE_ITEMS=400 RIDES_STEP_MS=100 {} --database '{url}' migrate run; sleep 60",
            quoted(support::example_app())
        );
        let tmux = Tmux::start(if no_color { "plain" } else { "colour" }, &run);
        tmux.wait_for("0", "a progress bar", |screen| {
            screen.contains("recount_zones [")
        });
        let screen = tmux.screen("0", true);
        // SGR colour sequences (foreground 30–37 or 38;…) appear only when allowed.
        let has_colour = screen.contains("\u{1b}[36m")
            || screen.contains("\u{1b}[1m")
            || screen.contains("\u{1b}[38;");
        assert_eq!(has_colour, coloured, "NO_COLOR={no_color}: {screen:?}");
    }
}
