//! `status` as text, and `status --watch`: the status redrawn until no
//! migration runs.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cli::commands::{StatusJson, readable_locks};
use crate::cli::console::{Console, Failure, output_error};
use crate::cli::exit;
use crate::render::{StatusTable, human_duration};
use crate::store::{LockInfo, LockScope};
use crate::time::OffsetDateTime;
use crate::{Migration, MigrationStore};

/// Clears a terminal and moves to its top left corner.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// An RFC 3339 time, or `-`.
pub(crate) fn timestamp(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| {
        at.format(&crate::time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

/// The rows, then one line per lock; with `age`, how long each lock has
/// been held.
pub(crate) fn status_text(rows: &[Migration], locks: Option<&[LockInfo]>, age: bool) -> String {
    let mut text = if rows.is_empty() {
        "no migrations tracked\n".to_owned()
    } else {
        StatusTable(rows).to_string()
    };
    text.push('\n');
    match locks {
        Some(locks) => text.push_str(&locks_text(locks, age)),
        None => text.push_str("locks: this store cannot tell who holds them\n"),
    }
    text
}

/// One line per scope: free, or who holds it, since when, from where.
pub(crate) fn locks_text(locks: &[LockInfo], age: bool) -> String {
    let mut text = String::new();
    for scope in [LockScope::Run, LockScope::Background] {
        let _ = match locks.iter().find(|lock| lock.scope == scope) {
            None => writeln!(text, "{scope} lock: free"),
            Some(lock) => writeln!(text, "{scope} lock: held {}", held_by(lock, age)),
        };
    }
    text
}

/// `by <holder> since <time> (<age>); <detail>`, each part where known;
/// the age with `age` only.
pub(crate) fn held_by(lock: &LockInfo, age: bool) -> String {
    let mut text = match &lock.holder {
        Some(holder) => format!("by {}", holder.describe()),
        None => "by an unnamed holder".to_owned(),
    };
    if let Some(since) = lock.since {
        let _ = write!(text, " since {}", timestamp(Some(since)));
        if age {
            let held_for = (OffsetDateTime::now_utc() - since)
                .try_into()
                .unwrap_or(Duration::ZERO);
            let _ = write!(text, " ({})", human_duration(held_for));
        }
    }
    if let Some(detail) = &lock.detail {
        let _ = write!(text, "; {detail}");
    }
    text
}

/// Redraws the status every `interval` while a lock is held, and once
/// more when none is (twice, after a run, to bridge the moment between its
/// required and background migrations). On a terminal each frame replaces the last; with
/// `json` each frame is one JSON object on one line; otherwise a frame is
/// printed when it differs from the one before.
pub(crate) async fn watch(
    store: &dyn MigrationStore,
    interval: Duration,
    json: bool,
    console: &mut Console<'_>,
) -> Result<u8, Failure> {
    let mut last = String::new();
    let (mut seen_running, mut idle_polls) = (false, 0);
    loop {
        let rows = console.shown(&store.list().await?);
        let locks = readable_locks(store, console).await?;
        // A store that cannot tell who holds its locks cannot say when a
        // run ends: it is drawn once.
        let running = locks.as_ref().is_some_and(|locks| !locks.is_empty());
        if json {
            let frame = serde_json::to_string(&StatusJson {
                migrations: &rows,
                locks: locks.as_deref(),
            })
            .map_err(|e| output_error(std::io::Error::other(e)))?;
            writeln!(console.out, "{frame}").map_err(output_error)?;
        } else {
            // Away from a terminal a frame is printed when it changed: without
            // the ticking age of the locks.
            let frame = status_text(&rows, locks.as_deref(), console.terminal);
            if console.terminal {
                let footer = if running {
                    format!(
                        "\nwatching: refreshed {}, every {}; Ctrl-C stops watching, not the run\n",
                        timestamp(Some(OffsetDateTime::now_utc())),
                        human_duration(interval)
                    )
                } else {
                    "\nno migration is running\n".to_owned()
                };
                write!(console.out, "{CLEAR}{frame}{footer}").map_err(output_error)?;
            } else if frame != last {
                if !last.is_empty() {
                    writeln!(console.out).map_err(output_error)?;
                }
                write!(console.out, "{frame}").map_err(output_error)?;
                last = frame;
            }
        }
        console.out.flush().map_err(output_error)?;
        if running {
            seen_running = true;
            idle_polls = 0;
        } else {
            idle_polls += 1;
            // Between the required migrations and the background ones no
            // lock is held for a moment: a run is over after two idle polls.
            if !seen_running || idle_polls >= 2 {
                return Ok(exit::SUCCESS);
            }
        }
        tokio::time::sleep(interval).await;
    }
}
