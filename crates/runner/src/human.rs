//! Durations as people read them, for reports and logs.

use std::time::Duration;

/// A duration as people read it: `850µs`, `12ms`, `1.25s`, `3m07s`, `2h05m`.
pub(crate) fn human(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{}ms", micros / 1_000)
    } else if duration.as_secs() < 60 {
        format!("{:.2}s", duration.as_secs_f64())
    } else if duration.as_secs() < 3_600 {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    } else {
        format!(
            "{}h{:02}m",
            duration.as_secs() / 3_600,
            duration.as_secs() % 3_600 / 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_micros(850)), "850µs");
        assert_eq!(human(Duration::from_millis(12)), "12ms");
        assert_eq!(human(Duration::from_millis(1250)), "1.25s");
        assert_eq!(human(Duration::from_secs(187)), "3m07s");
        assert_eq!(human(Duration::from_secs(7_500)), "2h05m");
    }
}
