//! `run`: the application's migrations run to the end, with progress bars
//! (rate, ETA) on a terminal, plain lines elsewhere, and the report last.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::App;
use crate::cli::commands::print_json;
use crate::cli::console::{Console, Failure, output_error};
use crate::cli::exit;
use crate::render::{human_duration, render_table};
use crate::{MigrationId, RunEvent, RunReport, SkipReason, Status};

/// Plain progress lines for one migration at most this often.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// What the command needs of a [`RunEvent`], owned, to cross to the task
/// that draws.
#[derive(Debug)]
enum Seen {
    Waiting {
        waited: Duration,
        limit: Duration,
    },
    Started {
        id: MigrationId,
        label: String,
        resuming: bool,
    },
    Progress {
        id: MigrationId,
        done: u64,
        total: Option<u64>,
        rate: f64,
        eta: Option<Duration>,
    },
    Ended {
        id: MigrationId,
        ok: bool,
        what: String,
    },
}

impl Seen {
    fn from_event(event: &RunEvent) -> Option<Self> {
        Some(match event {
            RunEvent::WaitingForLock { waited, limit } => Self::Waiting {
                waited: *waited,
                limit: *limit,
            },
            RunEvent::Started {
                id,
                name,
                position,
                count,
                resuming,
            } => Self::Started {
                id: *id,
                label: format!("[{position}/{count}] {id} {name}"),
                resuming: *resuming,
            },
            RunEvent::Progress { id, progress, .. } => Self::Progress {
                id: *id,
                done: progress.done,
                total: progress.total,
                rate: progress.rate,
                eta: progress.eta,
            },
            RunEvent::Succeeded { id, duration, .. } => Self::Ended {
                id: *id,
                ok: true,
                what: format!("executed in {}", human_duration(*duration)),
            },
            RunEvent::Failed {
                id, kind, error, ..
            } => Self::Ended {
                id: *id,
                ok: false,
                what: format!(
                    "failed ({}): {}",
                    kind.as_str(),
                    crate::render::one_line(error, 200)
                ),
            },
            RunEvent::AlreadyDone { id, .. } => Self::Ended {
                id: *id,
                ok: true,
                what: "already done by another instance".to_owned(),
            },
            RunEvent::Stopped { id, .. } => Self::Ended {
                id: *id,
                ok: false,
                what: "stopped; the next run resumes it".to_owned(),
            },
            _ => return None,
        })
    }
}

/// Runs the application's migrations, showing their progress, then prints
/// the report. A failed migration exits 1 (after the report), a lock held
/// for the whole wait 4.
pub(crate) async fn run(
    app: &dyn App,
    json: bool,
    console: &mut Console<'_>,
) -> Result<u8, Failure> {
    let (send, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let subscription = app.subscribe(Box::new(move |event: &RunEvent| {
        if let Some(event) = Seen::from_event(event) {
            let _ = send.send(event);
        }
    }));
    let mut display = if json {
        Display::Quiet
    } else if console.terminal {
        Display::Bars(Box::new(Bars::new(console.color)))
    } else {
        Display::Lines(HashMap::new())
    };
    let running = app.run();
    tokio::pin!(running);
    let report = loop {
        tokio::select! {
            report = &mut running => break report,
            Some(event) = seen.recv() => display.show(event, console),
        }
    };
    drop(subscription);
    while let Ok(event) = seen.try_recv() {
        display.show(event, console);
    }
    display.finish();
    let report = report?;
    if json {
        print_json(console, &ReportJson::from(&report))?;
    } else {
        print_report(console, &report)?;
    }
    match report.into_result() {
        Ok(_) => Ok(exit::SUCCESS),
        Err(err) => Err(err.into()),
    }
}

enum Display {
    Quiet,
    Bars(Box<Bars>),
    /// When each running migration last printed a progress line.
    Lines(HashMap<MigrationId, (String, Instant)>),
}

impl Display {
    /// Best effort: progress that cannot be written (stderr closed) must
    /// not stop the run, whose migrations go on to the end.
    fn show(&mut self, event: Seen, console: &mut Console<'_>) {
        match self {
            Self::Quiet => {}
            Self::Bars(bars) => bars.show(event),
            Self::Lines(labels) => {
                if let Some(line) = progress_line(labels, event) {
                    let _ = writeln!(console.err, "{line}");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Self::Bars(bars) = self {
            for bar in bars.bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

/// The plain line for `event`, if it gets one now.
fn progress_line(
    labels: &mut HashMap<MigrationId, (String, Instant)>,
    event: Seen,
) -> Option<String> {
    let line = match event {
        Seen::Waiting { waited, limit } => waiting_line(waited, limit),
        Seen::Started {
            id,
            label,
            resuming,
        } => {
            let line = format!(
                "{label}: started{}",
                if resuming {
                    " (resuming from its checkpoint)"
                } else {
                    ""
                }
            );
            labels.insert(id, (label, Instant::now()));
            line
        }
        Seen::Progress {
            id,
            done,
            total,
            rate,
            eta,
        } => {
            let (label, last) = labels.get_mut(&id)?;
            let finished = total.is_some_and(|total| done >= total);
            if last.elapsed() < LINE_EVERY && !finished {
                return None;
            }
            *last = Instant::now();
            format!("{label}: {}", figures(done, total, rate, eta))
        }
        Seen::Ended { id, what, .. } => match labels.remove(&id) {
            Some((label, _)) => format!("{label}: {what}"),
            None => format!("migration {id}: {what}"),
        },
    };
    Some(line)
}

fn waiting_line(waited: Duration, limit: Duration) -> String {
    format!(
        "waiting for the run lock, held by another process ({} of {})",
        human_duration(waited),
        human_duration(limit)
    )
}

/// `500/1000 (50%), 12.3/s, ETA 40s`.
fn figures(done: u64, total: Option<u64>, rate: f64, eta: Option<Duration>) -> String {
    let mut text = match total {
        Some(total) if total > 0 => {
            format!("{done}/{total} ({}%)", done.saturating_mul(100) / total)
        }
        Some(total) => format!("{done}/{total}"),
        None => done.to_string(),
    };
    text.push_str(&format!(", {rate:.1}/s"));
    if let Some(eta) = eta.filter(|_| total.is_none_or(|total| done < total)) {
        text.push_str(&format!(", ETA {}", human_duration(eta)));
    }
    text
}

/// One indicatif bar per running migration, on standard error.
struct Bars {
    multi: MultiProgress,
    bars: HashMap<MigrationId, ProgressBar>,
    counted: ProgressStyle,
    open_ended: ProgressStyle,
    ended: ProgressStyle,
}

impl Bars {
    fn new(color: bool) -> Self {
        let (counted, open_ended, ended) = if color {
            (
                "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg}",
                "{prefix:.bold} {spinner:.cyan} {pos} {msg}",
                "{prefix:.bold} {msg}",
            )
        } else {
            (
                "{prefix} [{bar:30}] {pos}/{len} {msg}",
                "{prefix} {spinner} {pos} {msg}",
                "{prefix} {msg}",
            )
        };
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> ")
        };
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: HashMap::new(),
            counted: style(counted),
            open_ended: style(open_ended),
            ended: style(ended),
        }
    }

    fn show(&mut self, event: Seen) {
        match event {
            Seen::Waiting { waited, limit } => {
                let _ = self.multi.println(waiting_line(waited, limit));
            }
            Seen::Started {
                id,
                label,
                resuming,
            } => {
                let bar = self.multi.add(ProgressBar::no_length());
                bar.set_style(self.open_ended.clone());
                bar.set_prefix(label);
                bar.set_message(if resuming { "resuming" } else { "started" });
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bars.insert(id, bar);
            }
            Seen::Progress {
                id,
                done,
                total,
                rate,
                eta,
            } => {
                let Some(bar) = self.bars.get(&id) else {
                    return;
                };
                if let Some(total) = total
                    && bar.length() != Some(total)
                {
                    bar.set_style(self.counted.clone());
                    bar.set_length(total);
                }
                bar.set_position(done);
                let mut message = format!("{rate:.1}/s");
                if let Some(eta) = eta {
                    message.push_str(&format!(" ETA {}", human_duration(eta)));
                }
                bar.set_message(message);
            }
            Seen::Ended { id, ok, what } => {
                let Some(bar) = self.bars.remove(&id) else {
                    let _ = self.multi.println(format!("migration {id}: {what}"));
                    return;
                };
                if bar.length().is_none() {
                    // It never reported a total: no count or spinner to keep.
                    bar.set_style(self.ended.clone());
                }
                if ok {
                    bar.finish_with_message(what);
                } else {
                    bar.abandon_with_message(what);
                }
            }
        }
    }
}

fn print_report(console: &mut Console<'_>, report: &RunReport) -> Result<(), Failure> {
    if report.nothing_pending() {
        return writeln!(console.out, "nothing to run: every migration is executed")
            .map_err(output_error);
    }
    let rows: Vec<Vec<String>> = report
        .outcomes()
        .iter()
        .map(|outcome| {
            vec![
                outcome.id.to_string(),
                crate::render::one_line(&outcome.name, 60),
                outcome.status.to_string(),
                human_duration(outcome.duration),
                outcome.attempts.to_string(),
            ]
        })
        .collect();
    write!(
        console.out,
        "{}",
        render_table(&["id", "name", "outcome", "took", "attempts"], &rows)
    )
    .map_err(output_error)?;
    writeln!(
        console.out,
        "{} executed, {} already done, {} failed, in {}",
        report.executed().count(),
        report.already_done().count(),
        report.failures().count(),
        human_duration(report.elapsed())
    )
    .map_err(output_error)
}

/// `run --json`.
#[derive(Serialize)]
struct ReportJson {
    /// Nothing was pending: the run took its one-query fast path.
    settled: bool,
    elapsed_ms: u64,
    /// How long the run waited for the lock; `null` when it took none.
    lock_waited_ms: Option<u64>,
    outcomes: Vec<OutcomeJson>,
}

#[derive(Serialize)]
struct OutcomeJson {
    id: MigrationId,
    name: String,
    status: &'static str,
    duration_ms: u64,
    attempts: u32,
    /// For `failed`: its kind and message.
    failure: Option<FailureJson>,
    /// For `skipped`: the earlier migration whose failure stopped it.
    after_failure_of: Option<MigrationId>,
}

#[derive(Serialize)]
struct FailureJson {
    kind: &'static str,
    message: String,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<&RunReport> for ReportJson {
    fn from(report: &RunReport) -> Self {
        Self {
            settled: report.was_settled(),
            elapsed_ms: millis(report.elapsed()),
            lock_waited_ms: report.lock_waited().map(millis),
            outcomes: report
                .outcomes()
                .iter()
                .map(|outcome| OutcomeJson {
                    id: outcome.id,
                    name: outcome.name.clone(),
                    status: outcome.status.as_str(),
                    duration_ms: millis(outcome.duration),
                    attempts: outcome.attempts,
                    failure: match &outcome.status {
                        Status::Failed(failure) => Some(FailureJson {
                            kind: failure.kind().as_str(),
                            message: failure.message().to_owned(),
                        }),
                        _ => None,
                    },
                    after_failure_of: match &outcome.status {
                        Status::Skipped(SkipReason::EarlierFailure(id)) => Some(*id),
                        _ => None,
                    },
                })
                .collect(),
        }
    }
}
