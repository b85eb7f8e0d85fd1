//! One figure per line: waymark, its baseline and peer from the same run,
//! the ratio, the target and what bounds the figure.

use std::fmt::Write as _;
use std::time::Duration;

use crate::timing::{Stats, format_duration};

/// What a figure must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// waymark's median at most this many times the baseline's.
    Ratio(f64),
    /// waymark's median at most this long.
    AtMost(Duration),
    /// Nothing to reach: a figure reported for information.
    None,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The benchmark, such as "no-op start-up".
    pub benchmark: &'static str,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The case, such as "N = 1,000".
    pub case: String,
    /// What one sample is: "per run", "per migration", "wall time".
    pub unit: &'static str,
    /// waymark.
    pub waymark: Stats,
    /// The hand-written baseline.
    pub baseline: Stats,
    /// The peer (refinery), where there is one.
    pub peer: Option<Stats>,
    /// The target.
    pub target: Target,
    /// What bounds the figure (a round trip, an fsync).
    pub bound: &'static str,
    /// Anything else worth showing (throughput, memory).
    pub note: String,
}

impl Figure {
    /// waymark's median over the baseline's.
    pub fn ratio(&self) -> f64 {
        ratio(self.waymark.median, self.baseline.median)
    }

    /// Whether the target is met; `None` when there is no target.
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::Ratio(max) => Some(self.ratio() <= max),
            Target::AtMost(max) => Some(self.waymark.median <= max),
            Target::None => None,
        }
    }

    /// The cells of this figure's row in [`table`].
    pub fn cells(&self) -> Vec<String> {
        let peer = self.peer.map_or_else(
            || "-".to_owned(),
            |p| {
                format!(
                    "{} ({:.2}x)",
                    format_duration(p.median),
                    ratio(p.median, self.baseline.median)
                )
            },
        );
        let target = match self.target {
            Target::Ratio(max) => format!("≤ {max}x"),
            Target::AtMost(max) => format!("≤ {}", format_duration(max)),
            Target::None => "-".to_owned(),
        };
        let met = match self.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        vec![
            self.benchmark.to_owned(),
            self.backend.to_owned(),
            self.case.clone(),
            self.unit.to_owned(),
            format!(
                "{} (p90 {})",
                format_duration(self.waymark.median),
                format_duration(self.waymark.p90)
            ),
            format_duration(self.baseline.median),
            format!("{:.2}x", self.ratio()),
            peer,
            target,
            met.to_owned(),
            self.bound.to_owned(),
            self.note.clone(),
        ]
    }

    /// A one-line summary, printed as soon as the figure is measured.
    pub fn line(&self) -> String {
        let cells = self.cells();
        let mut line = format!(
            "{} / {} / {}: waymark {} {}",
            cells[0], cells[1], cells[2], cells[4], cells[3]
        );
        let _ = write!(
            line,
            ", baseline {} ({}), peer {}, target {} met: {}",
            cells[5], cells[6], cells[7], cells[8], cells[9]
        );
        if !self.note.is_empty() {
            let _ = write!(line, "; {}", self.note);
        }
        line
    }
}

/// `a / b`, 0 when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// The headers of [`table`].
pub const HEADERS: [&str; 12] = [
    "benchmark",
    "backend",
    "case",
    "sample",
    "waymark median",
    "baseline",
    "ratio",
    "refinery",
    "target",
    "met",
    "bound by",
    "notes",
];

/// Every figure as a text table.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<Vec<String>> = figures.iter().map(Figure::cells).collect();
    waymark_core::render::render_table(&HEADERS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(micros: u64) -> Stats {
        Stats {
            median: Duration::from_micros(micros),
            p90: Duration::from_micros(micros * 2),
            samples: 10,
        }
    }

    fn figure(target: Target) -> Figure {
        Figure {
            benchmark: "no-op start-up",
            backend: "sqlite",
            case: "N = 10".into(),
            unit: "per run",
            waymark: stats(6),
            baseline: stats(4),
            peer: Some(stats(12)),
            target,
            bound: "a read",
            note: String::new(),
        }
    }

    #[test]
    fn ratio_and_targets() {
        assert_eq!(figure(Target::Ratio(1.5)).ratio(), 1.5);
        assert_eq!(figure(Target::Ratio(1.5)).met(), Some(true));
        assert_eq!(figure(Target::Ratio(1.2)).met(), Some(false));
        assert_eq!(
            figure(Target::AtMost(Duration::from_micros(10))).met(),
            Some(true)
        );
        assert_eq!(figure(Target::None).met(), None);
        assert_eq!(ratio(Duration::from_secs(1), Duration::ZERO), 0.0);
    }

    #[test]
    fn table_shows_every_column() {
        let text = table(&[figure(Target::Ratio(1.5))]);
        assert!(text.contains("6.00 µs (p90 12.0 µs)"), "{text}");
        assert!(text.contains("12.0 µs (3.00x)"), "{text}");
        assert!(text.contains("≤ 1.5x") && text.contains("yes"), "{text}");
    }
}
