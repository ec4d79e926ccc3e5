//! How long QEMU's threads waited for a host CPU during a run.
//!
//! QEMU runs each emulated core on its own host thread (`CPU n/TCG`, named with
//! `-name ...,debug-threads=on`) and its timers on the main thread. When the host has no CPU
//! for one of them (other processes, or the host itself a VM whose CPUs are taken away), the
//! guest's time goes on and its work does not: a real-time job misses its deadline with no
//! fault of the hypervisor's. Linux counts, per thread, the time it was runnable and waited
//! for a CPU (the second field of `/proc/PID/task/TID/schedstat`); [`WaitMonitor`] samples it
//! every [`SAMPLE_PERIOD`] while QEMU runs, and [`HostWaits::waited_within`] gives a lower bound
//! of the wait inside any interval. `Run::rt_misses` weighs each real-time miss against it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the waits are read: a few reads of small `/proc` files, about 2 % of a host CPU.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(2);

/// One of QEMU's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QemuThread {
    /// The main loop: QEMU's timers (the emulated cores' timer interrupts) and its devices.
    Main,
    /// The thread of emulated core `n` (`CPU n/TCG`).
    Cpu(usize),
}

impl QemuThread {
    /// The thread a task is, from its name and id (`pid`: QEMU's process id, the main thread's).
    fn of(comm: &str, tid: u32, pid: u32) -> Option<QemuThread> {
        if tid == pid {
            return Some(QemuThread::Main);
        }
        let n = comm.strip_prefix("CPU ")?.strip_suffix("/TCG")?;
        n.parse().ok().map(QemuThread::Cpu)
    }
}

/// The cumulative times read at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitSample {
    /// Since the run's start.
    pub at: Duration,
    /// Each thread's time spent runnable and waiting for a CPU since it started, in ns.
    pub waited_ns: HashMap<QemuThread, u64>,
    /// Each thread's time on a CPU since it started, in ns.
    pub ran_ns: HashMap<QemuThread, u64>,
}

/// The samples of one run, in time order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostWaits {
    pub samples: Vec<WaitSample>,
}

impl HostWaits {
    /// At least how long `thread` waited for a host CPU between `from` and `to` (since the
    /// run's start): over a pair of samples around or inside the interval, the wait counted
    /// between them less the part of their span outside the interval (which the thread may
    /// have spent waiting). The best such pair is the last sample at or before an end or the
    /// first one after it, on each side. Zero without samples of the thread there.
    pub fn waited_within(&self, thread: QemuThread, from: Duration, to: Duration) -> Duration {
        let s = &self.samples;
        if to <= from || s.is_empty() {
            return Duration::ZERO;
        }
        let after_from = s.partition_point(|x| x.at < from);
        let after_to = s.partition_point(|x| x.at <= to);
        let starts = [after_from.checked_sub(1), Some(after_from)];
        let ends = [after_to.checked_sub(1), Some(after_to)];
        let mut best = 0i128;
        for i in starts.into_iter().flatten() {
            for j in ends.into_iter().flatten() {
                let (Some(a), Some(b)) = (s.get(i), s.get(j)) else { continue };
                if b.at <= a.at {
                    continue;
                }
                let (Some(wa), Some(wb)) = (a.waited_ns.get(&thread), b.waited_ns.get(&thread)) else { continue };
                let waited = i128::from(*wb) - i128::from(*wa);
                let outside = from.saturating_sub(a.at) + b.at.saturating_sub(to);
                best = best.max(waited - outside.as_nanos() as i128);
            }
        }
        Duration::from_nanos(best.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// What `thread` did between the samples nearest to `from` and to `to`: their span, its
    /// time on a CPU and its time waiting for one (the rest it was off a CPU without waiting:
    /// asleep, or on a CPU the host's own hypervisor took away, which Linux counts as
    /// neither). An estimate for messages, over the samples' span rather than the interval.
    pub fn around(&self, thread: QemuThread, from: Duration, to: Duration) -> Option<ThreadTimes> {
        let nearest = |t: Duration| self.samples.iter().min_by_key(|x| x.at.abs_diff(t));
        let (a, b) = (nearest(from)?, nearest(to)?);
        let delta = |m: fn(&WaitSample) -> &HashMap<QemuThread, u64>| {
            Some(Duration::from_nanos(m(b).get(&thread)?.checked_sub(*m(a).get(&thread)?)?))
        };
        (b.at > a.at).then_some(())?;
        Some(ThreadTimes { span: b.at - a.at, ran: delta(|x| &x.ran_ns)?, waited: delta(|x| &x.waited_ns)? })
    }
}

/// A thread's times over a span ([`HostWaits::around`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadTimes {
    pub span: Duration,
    pub ran: Duration,
    pub waited: Duration,
}

impl ThreadTimes {
    /// Off a CPU without waiting for one: asleep, or its CPU taken by the host's hypervisor.
    pub fn off(&self) -> Duration {
        self.span.saturating_sub(self.ran + self.waited)
    }
}

/// Samples a running QEMU's thread waits until [`WaitMonitor::finish`].
pub struct WaitMonitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<HostWaits>,
}

impl WaitMonitor {
    /// Starts sampling process `pid`; times are taken since `origin`.
    pub fn start(pid: u32, origin: Instant) -> WaitMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut waits = HostWaits::default();
            let mut known: HashMap<u32, Option<QemuThread>> = HashMap::new();
            let task_dir = format!("/proc/{pid}/task");
            while !flag.load(Ordering::Relaxed) {
                match sample(Path::new(&task_dir), pid, &mut known) {
                    Some((waited_ns, ran_ns)) => {
                        waits.samples.push(WaitSample { at: origin.elapsed(), waited_ns, ran_ns })
                    }
                    // Gone (or not Linux): nothing more to read.
                    None => break,
                }
                thread::sleep(SAMPLE_PERIOD);
            }
            waits
        });
        WaitMonitor { stop, thread }
    }

    /// Stops sampling and hands over what was read.
    pub fn finish(self) -> HostWaits {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Per thread, ns waited and ran.
type Times = (HashMap<QemuThread, u64>, HashMap<QemuThread, u64>);

/// One reading of every known QEMU thread's times; the names of new threads are read once.
fn sample(task_dir: &Path, pid: u32, known: &mut HashMap<u32, Option<QemuThread>>) -> Option<Times> {
    let (mut waited, mut ran) = (HashMap::new(), HashMap::new());
    for entry in std::fs::read_dir(task_dir).ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let kind = *known.entry(tid).or_insert_with(|| {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            QemuThread::of(comm.trim_end(), tid, pid)
        });
        let Some(kind) = kind else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
        if let Some((on_cpu, wait)) = parse_schedstat(&stat) {
            ran.insert(kind, on_cpu);
            waited.insert(kind, wait);
        }
    }
    Some((waited, ran))
}

/// The on-CPU and run-queue wait times (ns) of a `schedstat` line: "on-CPU ns, waiting ns,
/// timeslices".
fn parse_schedstat(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn waits(points: &[(u64, u64)]) -> HostWaits {
        HostWaits {
            samples: points
                .iter()
                .map(|&(at, w)| WaitSample {
                    at: ms(at),
                    waited_ns: HashMap::from([(QemuThread::Cpu(0), w * 1_000_000)]),
                    ran_ns: HashMap::from([(QemuThread::Cpu(0), at * 100_000)]),
                })
                .collect(),
        }
    }

    #[test]
    fn threads_are_told_by_name() {
        assert_eq!(QemuThread::of("qemu-system-aar", 10, 10), Some(QemuThread::Main));
        assert_eq!(QemuThread::of("CPU 1/TCG", 12, 10), Some(QemuThread::Cpu(1)));
        assert_eq!(QemuThread::of("CPU 12/TCG", 13, 10), Some(QemuThread::Cpu(12)));
        assert_eq!(QemuThread::of("call_rcu", 11, 10), None);
        assert_eq!(QemuThread::of("CPU x/TCG", 14, 10), None);
        assert_eq!(parse_schedstat("15474421 8478921 57\n"), Some((15_474_421, 8_478_921)));
        assert_eq!(parse_schedstat("15474421\n"), None);
    }

    #[test]
    fn the_wait_inside_an_interval_is_bounded_from_below() {
        // Waited 8 ms between 10 and 20, nothing else.
        let w = waits(&[(0, 0), (10, 0), (20, 8), (30, 8)]);
        let t = QemuThread::Cpu(0);
        // The samples at the ends: all of it.
        assert_eq!(w.waited_within(t, ms(10), ms(20)), ms(8));
        // From 12 to 20: the 2 ms before 12 may have been waiting, so at least 6.
        assert_eq!(w.waited_within(t, ms(12), ms(20)), ms(6));
        // From 12 to 19: at least 5.
        assert_eq!(w.waited_within(t, ms(12), ms(19)), ms(5));
        // Wider than the samples: still 8 (no wait outside 10..20 was counted).
        assert_eq!(w.waited_within(t, ms(5), ms(25)), ms(8));
        // Where it may all have been outside: nothing.
        assert_eq!(w.waited_within(t, ms(11), ms(13)), Duration::ZERO);
        assert_eq!(w.waited_within(t, ms(20), ms(30)), Duration::ZERO);
        // Another thread, or no interval: nothing.
        assert_eq!(w.waited_within(QemuThread::Main, ms(10), ms(20)), Duration::ZERO);
        assert_eq!(w.waited_within(t, ms(20), ms(10)), Duration::ZERO);
        assert_eq!(HostWaits::default().waited_within(t, ms(0), ms(30)), Duration::ZERO);
    }

    #[test]
    fn the_times_around_an_interval_say_where_the_rest_went() {
        // Ran a tenth of the time; waited 8 ms between 10 and 20.
        let w = waits(&[(0, 0), (10, 0), (20, 8), (30, 8)]);
        let t = w.around(QemuThread::Cpu(0), ms(11), ms(19)).unwrap();
        assert_eq!(t, ThreadTimes { span: ms(10), ran: ms(1), waited: ms(8) });
        assert_eq!(t.off(), ms(1));
        let t = w.around(QemuThread::Cpu(0), ms(20), ms(30)).unwrap();
        assert_eq!((t.ran, t.waited, t.off()), (ms(1), ms(0), ms(9)));
        assert_eq!(w.around(QemuThread::Main, ms(10), ms(20)), None);
        assert_eq!(w.around(QemuThread::Cpu(0), ms(11), ms(12)), None);
    }

    #[test]
    fn an_inner_pair_counts_when_the_outer_one_is_loose() {
        // 20 ms of wait between 0 and 100, 9 of them between 40 and 50.
        let w = waits(&[(0, 0), (40, 5), (50, 14), (100, 20)]);
        let t = QemuThread::Cpu(0);
        assert_eq!(w.waited_within(t, ms(38), ms(52)), ms(9));
        assert_eq!(w.waited_within(t, ms(40), ms(50)), ms(9));
    }

    #[test]
    fn this_process_can_be_sampled() {
        // The test's own process: its main thread is found, and the reading ends when asked.
        let monitor = WaitMonitor::start(std::process::id(), Instant::now());
        thread::sleep(ms(20));
        let waits = monitor.finish();
        assert!(waits.samples.len() >= 2, "{waits:?}");
        assert!(waits.samples.iter().all(|s| s.waited_ns.contains_key(&QemuThread::Main)), "{waits:?}");
        assert!(waits.samples.windows(2).all(|p| p[0].at < p[1].at));
    }
}
