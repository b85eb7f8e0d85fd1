//! Peak memory of this process (Linux): reset with `/proc/self/clear_refs`,
//! read as `VmHWM` from `/proc/self/status`.

/// Resets the peak resident set size to the current one; false where the
/// kernel does not allow it (the peak then includes earlier work).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size in KiB (`VmHWM`), if the system reports it.
pub fn peak_kib() -> Option<u64> {
    status_field("VmHWM:")
}

/// The current resident set size in KiB (`VmRSS`), if the system reports it.
pub fn current_kib() -> Option<u64> {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_field(&status, name)
}

fn parse_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t  999 kB\n";
        assert_eq!(parse_field(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_field(status, "VmRSS:"), Some(999));
        assert_eq!(parse_field(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_a_peak() {
        assert!(peak_kib().is_some_and(|kib| kib > 0));
        assert!(current_kib().is_some_and(|kib| kib > 0));
    }
}
