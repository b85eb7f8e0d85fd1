//! Where a command writes, and how it writes an error: one line of text,
//! or one JSON object with a stable kind.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use serde::Serialize;

use crate::Error;
use crate::cli::exit;

/// Where a `migrate` command writes: its output, its errors and progress,
/// and whether those reach a person at a terminal (progress bars, colour).
///
/// [`MigrateCommand::run`](crate::cli::MigrateCommand::run) uses the
/// process's own streams; a tool that writes elsewhere (a test, a log)
/// builds one with [`Console::new`], and one that must filter what it
/// prints (the standalone `waymark` removes passwords) adds a
/// [`filter`](Console::filter).
pub struct Console<'a> {
    pub(crate) out: &'a mut (dyn Write + Send),
    pub(crate) err: &'a mut (dyn Write + Send),
    pub(crate) terminal: bool,
    pub(crate) color: bool,
    pub(crate) program: String,
    pub(crate) filter: Option<fn(&str) -> String>,
}

impl<'a> Console<'a> {
    /// Output to `out`, errors and progress lines to `err`; not a terminal
    /// (plain lines, no progress bars), no colour.
    pub fn new(out: &'a mut (dyn Write + Send), err: &'a mut (dyn Write + Send)) -> Self {
        Self {
            out,
            err,
            terminal: false,
            color: false,
            program: program_name(),
            filter: None,
        }
    }

    /// Passes every error message, and every text field of the rows the
    /// command prints (name, description, last error, checkpoint), through
    /// `filter` before it is shortened or written: the standalone tool
    /// removes passwords with it.
    pub fn filter(mut self, filter: fn(&str) -> String) -> Self {
        self.filter = Some(filter);
        self
    }

    pub(crate) fn filtered(&self, text: &str) -> String {
        self.filter
            .map_or_else(|| text.to_owned(), |filter| filter(text))
    }

    /// `locks` as they may be shown: holders and details filtered (a lock
    /// file's path is the database path the user typed).
    pub(crate) fn shown_locks(
        &self,
        locks: &[crate::store::LockInfo],
    ) -> Vec<crate::store::LockInfo> {
        locks
            .iter()
            .map(|lock| {
                let mut lock = lock.clone();
                if self.filter.is_some() {
                    if let Some(holder) = &mut lock.holder {
                        holder.host = self.filtered(&holder.host);
                        holder.application = self.filtered(&holder.application);
                    }
                    lock.detail = lock.detail.as_deref().map(|d| self.filtered(d));
                }
                lock
            })
            .collect()
    }

    /// `rows` as they may be shown.
    pub(crate) fn shown(&self, rows: &[crate::Migration]) -> Vec<crate::Migration> {
        rows.iter()
            .map(|row| {
                let mut row = row.clone();
                if self.filter.is_some() {
                    row.name = self.filtered(&row.name);
                    row.description = self.filtered(&row.description);
                    row.last_error = row.last_error.as_deref().map(|e| self.filtered(e));
                    row.checkpoint = row.checkpoint.as_deref().map(|c| self.filtered(c));
                }
                row
            })
            .collect()
    }

    /// Output to `out`, errors and progress to `err`, which are the
    /// process's standard output and error: a terminal when both are one,
    /// colour unless `NO_COLOR` says otherwise.
    pub fn stdio(out: &'a mut (dyn Write + Send), err: &'a mut (dyn Write + Send)) -> Self {
        Self::new(out, err)
            .terminal(stdio_is_terminal())
            .color(color_allowed())
    }

    /// Whether `err` is a terminal a person watches: progress bars (drawn
    /// on the process's standard error) instead of plain lines.
    pub fn terminal(mut self, terminal: bool) -> Self {
        self.terminal = terminal;
        self
    }

    /// Whether the progress bars may use colour.
    pub fn color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    /// The name error lines start with (`myapp: error: …`); the running
    /// executable's by default.
    pub fn program(mut self, name: impl Into<String>) -> Self {
        self.program = name.into();
        self
    }

    /// Prints `error` as every command does (one text line, or with `json`
    /// one JSON object on one line) and returns its exit code: 4 for a lock
    /// held too long ([`Error::LockTimeout`]), else 1.
    pub fn report_error(&mut self, json: bool, error: &Error) -> ExitCode {
        Failure::from(error).print(self, json)
    }
}

/// Prints a clap parse error of the application's command line as the
/// `migrate` command prints its errors, and returns the exit code: help and
/// version print as clap prints them (exit 0); a usage error is clap's
/// text on stderr, or, with `--json` anywhere on the command line, one JSON
/// error of kind `usage`; exit 2.
///
/// ```
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(subcommand)]
///     migrate: Option<waymark::cli::Action>,
/// }
///
/// let error = Cli::try_parse_from(["app", "show", "zero"]).err().unwrap();
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// let mut console = waymark::cli::Console::new(&mut out, &mut err);
/// let code = waymark::cli::usage_error(&error, &mut console);
/// assert_eq!(code, std::process::ExitCode::from(2));
/// # drop(console);
/// assert!(String::from_utf8(err).unwrap().contains("is not a migration id"));
/// ```
pub fn usage_error(error: &clap::Error, console: &mut Console<'_>) -> ExitCode {
    if !error.use_stderr() {
        // Help and version hold no argument of the user's: unfiltered, as
        // the help's examples of connection strings must show.
        let text = error.render().to_string();
        return match write!(console.out, "{text}").and_then(|()| console.out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(exit::FAILURE),
        };
    }
    let text = console.filtered(&error.render().to_string());
    if std::env::args_os().skip(1).any(|arg| arg == "--json") {
        // Its first line says what was wrong; the rest is clap's hint.
        let first = text.lines().next().unwrap_or("usage error");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        return Failure::new("usage", message, exit::USAGE).print(console, true);
    }
    let _ = write!(console.err, "{text}");
    let _ = console.err.flush();
    ExitCode::from(exit::USAGE)
}

/// Whether colour may be used: not when `NO_COLOR` is set to anything
/// non-empty (no-color.org).
pub fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Both standard streams are terminals.
fn stdio_is_terminal() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "waymark".to_owned())
}

impl std::fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("terminal", &self.terminal)
            .field("color", &self.color)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

/// Why a command did not succeed: a stable kind, the message, and the exit
/// code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) exit: u8,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
}

impl Failure {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>, exit: u8) -> Self {
        Self {
            kind,
            message: message.into(),
            exit,
        }
    }

    pub(crate) fn print(&self, console: &mut Console<'_>, json: bool) -> ExitCode {
        // Filtered before it is shortened, so that no cut leaves half a
        // secret the filter no longer recognises.
        let line = crate::render::one_line(&console.filtered(&self.message), 2000);
        // Nothing better can be done when stderr itself is gone.
        let _ = if json {
            let body = ErrorJson {
                error: ErrorBody {
                    kind: self.kind,
                    message: &line,
                },
            };
            serde_json::to_string(&body)
                .map_err(std::io::Error::other)
                .and_then(|text| writeln!(console.err, "{text}"))
        } else {
            writeln!(console.err, "{}: error: {line}", console.program)
        };
        let _ = console.err.flush();
        ExitCode::from(self.exit)
    }
}

impl From<&Error> for Failure {
    fn from(error: &Error) -> Self {
        let exit = match error {
            Error::LockTimeout { .. } => exit::LOCKED,
            _ => exit::FAILURE,
        };
        Self::new(error.kind(), crate::render::error_chain(error), exit)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::from(&error)
    }
}

/// Writing the command's own output failed (a closed pipe).
pub(crate) fn output_error(error: std::io::Error) -> Failure {
    Failure::new(
        "output",
        format!("writing the output: {error}"),
        exit::FAILURE,
    )
}
