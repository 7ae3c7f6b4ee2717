//! What the server child cost, read from Linux's `/proc`: CPU seconds (`utime + stime` of
//! `/proc/PID/stat`) and peak resident memory (`VmHWM` of `/proc/PID/status`).

/// CPU seconds from the text of `/proc/PID/stat`, at `ticks` clock ticks per second. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
pub fn cpu_seconds(stat: &str, ticks: u64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Peak resident set size in bytes from the text of `/proc/PID/status` (`VmHWM: N kB`).
pub fn peak_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if it cannot be read.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// The CPU seconds and peak RSS of process `pid` now.
pub fn usage(pid: u32) -> std::io::Result<(f64, u64)> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot read {what} of process {pid}"),
        )
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let cpu = cpu_seconds(&stat, ticks_per_second()).ok_or_else(|| bad("the CPU time"))?;
    let rss = peak_rss_bytes(&status).ok_or_else(|| bad("the peak RSS"))?;
    Ok((cpu, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_after_a_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (berth (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 62 0 0 20 0 9 0 1000 1 2";
        assert_eq!(cpu_seconds(stat, 100), Some(3.12));
        assert_eq!(cpu_seconds("4242 (berth) S 1", 100), None);
        assert_eq!(cpu_seconds("garbage", 100), None);
    }

    #[test]
    fn reads_the_peak_rss_in_bytes() {
        let status = "Name:\tberth\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(peak_rss_bytes(status), Some(2048 * 1024));
        assert_eq!(peak_rss_bytes("Name:\tberth\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let (cpu, rss) = usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }
}
