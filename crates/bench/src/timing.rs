//! Careful timing: warm-up, many samples, medians and 90th percentiles.

use std::future::Future;
use std::time::{Duration, Instant};

/// The summary of a set of samples of one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// The median sample.
    pub median: Duration,
    /// The 90th percentile sample.
    pub p90: Duration,
    /// How many samples were taken.
    pub samples: usize,
}

impl Stats {
    /// Summarises `samples` (which it sorts). An empty set is all zeros.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let index = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[index]
        };
        Self {
            median: at(0.5),
            p90: at(0.9),
            samples: samples.len(),
        }
    }

    /// The median divided by `units` (for a per-item cost).
    pub fn per(&self, units: u64) -> Self {
        let div = |d: Duration| d / u32::try_from(units.max(1)).unwrap_or(u32::MAX);
        Self {
            median: div(self.median),
            p90: div(self.p90),
            samples: self.samples,
        }
    }
}

/// Samples of one variant of a figure, collected in turns with the others.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Times `op` once and keeps the sample.
    pub async fn time<F: Future>(&mut self, op: F) -> F::Output {
        let started = Instant::now();
        let out = op.await;
        self.0.push(started.elapsed());
        out
    }

    /// Times a synchronous `op` once and keeps the sample.
    pub fn time_sync<T>(&mut self, op: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = op();
        self.0.push(started.elapsed());
        out
    }

    /// Keeps a sample measured elsewhere.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// The summary of what was collected.
    pub fn stats(&mut self) -> Stats {
        Stats::of(&mut self.0)
    }

    /// How many samples were collected.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was collected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How many calls of an operation that took `one` fit in `budget`, kept
/// between `min` and `max`.
pub fn iterations(one: Duration, budget: Duration, min: usize, max: usize) -> usize {
    let one = one.max(Duration::from_nanos(100));
    let fit = (budget.as_nanos() / one.as_nanos()) as usize;
    fit.clamp(min, max)
}

/// Formats a duration for a table: ns, µs or ms with three significant digits.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos() as f64;
    let (value, unit) = if nanos < 1_000.0 {
        (nanos, "ns")
    } else if nanos < 1_000_000.0 {
        (nanos / 1_000.0, "µs")
    } else if nanos < 1_000_000_000.0 {
        (nanos / 1_000_000.0, "ms")
    } else {
        (nanos / 1_000_000_000.0, "s")
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90_of_known_samples() {
        let mut samples: Vec<Duration> = (1..=11).rev().map(Duration::from_micros).collect();
        let stats = Stats::of(&mut samples);
        assert_eq!(stats.median, Duration::from_micros(6));
        assert_eq!(stats.p90, Duration::from_micros(10));
        assert_eq!(stats.samples, 11);
        assert_eq!(Stats::of(&mut []).median, Duration::ZERO);
        assert_eq!(stats.per(2).median, Duration::from_micros(3));
    }

    #[test]
    fn iterations_fit_the_budget_within_bounds() {
        let ms = Duration::from_millis(1);
        assert_eq!(iterations(ms, Duration::from_millis(50), 10, 1000), 50);
        assert_eq!(iterations(ms, Duration::from_millis(1), 10, 1000), 10);
        assert_eq!(
            iterations(Duration::ZERO, Duration::from_secs(1), 10, 1000),
            1000
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_nanos(850)), "850 ns");
        assert_eq!(format_duration(Duration::from_nanos(4_321)), "4.32 µs");
        assert_eq!(format_duration(Duration::from_micros(1_530)), "1.53 ms");
        assert_eq!(format_duration(Duration::from_millis(2_500)), "2.50 s");
    }
}
