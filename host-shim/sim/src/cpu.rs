//! CPU time spent in a simulated VM, for the bench's "load on the VM" figures.
//!
//! The simulated VMs are process trees on this machine, so what a VM's processes cost is
//! what the kernel accounted to them: a live process's own user + system time, and the time of
//! the children it has reaped (which include their own reaped children). Summed over the
//! live processes of a VM's session groups, that is everything the VM ran in them except what
//! the simulator itself reaped (a session command that already exited).

use std::time::Duration;

/// CPU time (user + system) of some processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// The processes' own time.
    pub own: Duration,
    /// The time of the children they reaped.
    pub children: Duration,
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.own += other.own;
        self.children += other.children;
    }
}

impl CpuTime {
    /// Both together.
    pub fn total(&self) -> Duration {
        self.own + self.children
    }

    /// What was spent between `earlier` and this reading (zero where a process of `earlier`
    /// ended, rather than an underflow).
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            own: self.own.saturating_sub(earlier.own),
            children: self.children.saturating_sub(earlier.children),
        }
    }
}

/// `/proc` reports times in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space
/// on every architecture whatever the kernel's own tick.
const TICK: Duration = Duration::from_millis(10);

/// One process's pgrp and times, from the text of its `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(i32, CpuTime)> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'; the
    // fields after the last ')' are plain numbers: state is field 3, pgrp 5, utime 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    let pgrp = i32::try_from(field(5)?).ok()?;
    let ticks = |a: usize, b: usize| Some(TICK * u32::try_from(field(a)? + field(b)?).ok()?);
    Some((
        pgrp,
        CpuTime {
            own: ticks(14, 15)?,
            children: ticks(16, 17)?,
        },
    ))
}

/// The CPU time of every live process in one of `groups`.
pub(crate) fn of_groups(groups: &[i32]) -> CpuTime {
    of_processes(|_, pgrp| groups.contains(&pgrp))
}

/// The CPU time of every live process whose command line contains `needle`: for the bench, a
/// worker and the `ssh` master it started, which both name the worker's state directory.
pub fn of_command_lines(needle: &str) -> CpuTime {
    of_processes(|proc_dir, _| {
        std::fs::read(proc_dir.join("cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

/// The CPU time of every live process that `counts` (given its `/proc` directory and its
/// process group).
fn of_processes(mut counts: impl FnMut(&std::path::Path, i32) -> bool) -> CpuTime {
    let mut sum = CpuTime::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return sum;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process that ends between the listing and the read is simply not counted.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, t)) = parse_stat(&stat) {
            if counts(&entry.path(), pgrp) {
                sum += t;
            }
        }
    }
    sum
}

/// The CPU time of a child the caller has just reaped with `wait4`.
pub(crate) fn of_rusage(r: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(r.ru_utime) + tv(r.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_group_and_the_times() {
        // Field 2 holds spaces and a ')' of its own; utime 7, stime 3, cutime 20, cstime 5.
        let line = "4242 (a b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 7 3 20 5 20 0 1 0 1 0 0";
        let (pgrp, t) = parse_stat(line).unwrap();
        assert_eq!(pgrp, 4240);
        assert_eq!(t.own, Duration::from_millis(100));
        assert_eq!(t.children, Duration::from_millis(250));
    }

    #[test]
    fn a_short_or_garbled_stat_line_is_no_reading() {
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn the_reading_of_this_process_group_rises_as_it_spins() {
        // SAFETY: getpgrp has no preconditions.
        let me = unsafe { libc::getpgrp() };
        let before = of_groups(&[me]).own;
        // Spin until the reading has risen by two ticks, on a loaded machine too; a reading
        // that never rises fails after 10 s.
        let spin = std::time::Instant::now();
        while of_groups(&[me]).own < before + 2 * TICK {
            assert!(spin.elapsed() < Duration::from_secs(10), "no CPU time seen");
            for i in 0..100_000u64 {
                std::hint::black_box(i);
            }
        }
        assert_eq!(of_groups(&[]), CpuTime::default());
    }

    #[test]
    fn the_reading_by_command_line_counts_the_processes_that_name_it() {
        // This test binary's own command line starts with the program it was started as; no
        // process names a made-up string.
        let me = std::env::args().next().unwrap();
        let mine = of_command_lines(&me);
        let spin = std::time::Instant::now();
        while of_command_lines(&me).own < mine.own + 2 * TICK {
            assert!(spin.elapsed() < Duration::from_secs(10), "no CPU time seen");
            for i in 0..100_000u64 {
                std::hint::black_box(i);
            }
        }
        assert_eq!(
            of_command_lines("no process names 5b0c1f6e-9a1d-4c3e"),
            CpuTime::default()
        );
    }
}
