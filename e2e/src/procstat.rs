//! Resource usage of another process, from /proc (Linux).

/// CPU time (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn usage(pid: u32) -> std::io::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_secs = (ticks(14) + ticks(15)) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu_secs,
        rss_bytes: rss_kb * 1024,
    })
}

/// Raises this process's open-file soft limit to the hard limit; returns the new limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: lim holds valid values read above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    // rlim_t is u64 here but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    let cur = lim.rlim_cur as u64;
    cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_usage() {
        let u = super::usage(std::process::id()).expect("own /proc");
        assert!(u.rss_bytes > 0);
        assert!(u.cpu_secs >= 0.0);
    }
}
