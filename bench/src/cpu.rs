//! CPU time of processes, read from `/proc/<pid>/stat` (user + system time of every thread,
//! live or exited, in the kernel's fixed 100 Hz `USER_HZ` ticks) — how the load generator
//! charges CPU to itself and to the server it measures.

use std::fs;

/// The kernel reports process times in `USER_HZ` ticks, which Linux fixes at 100 per second
/// for every architecture's user-visible interfaces.
const TICKS_PER_SEC: f64 = 100.0;

/// Seconds of CPU (user + system) that process `pid` has used so far, or `None` if it is gone.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// CPU seconds of this process.
pub fn own_cpu_secs() -> f64 {
    process_cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// The summed CPU seconds of `pids` (processes that vanished count as zero).
pub fn total_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu_secs(*p)).sum()
}

/// Resident set size of `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime and stime are fields 14 and 15; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" comes field 3 (state); utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_after_a_command_name_with_spaces() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat), Some(3.25));
    }

    #[test]
    fn own_process_has_used_cpu_and_memory() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(own_cpu_secs() > 0.0);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(process_cpu_secs(u32::MAX), None);
    }
}
