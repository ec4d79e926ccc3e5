//! The `rt` guest's deadline misses, each weighed against the host's stalls of QEMU.
//!
//! A miss the host caused is one the job would not have had if QEMU's threads had had a host
//! CPU whenever they could run: the time they waited ([`crate::hostwait`]) inside the job's
//! window covers how late the job was. `rt` says each miss with its timing
//! (guests/realtime): a job that ended late gives its response time, so it ran from
//! `end - response_us` to its end and was `response - deadline` late; ticks skipped give how
//! late the first of them was handled (`late_us`), and that job, had it run then, would have
//! ended `late + work - deadline` late. The end (or the handling) is the `HV_MARK` the guest
//! makes with the miss, at the hypervisor's time in the trace (`T <ns> mark id=3 val=N`),
//! which maps to the host's clock through the console: a trace line cannot arrive before it
//! was made, so the least arrival-minus-stamp over the run's trace lines is the offset (QEMU's
//! counter runs on the host's clock without `-icount`).
//!
//! The wait counted for a miss is the lower bound of the window's wait of the thread of the
//! core the vCPU was on (the least of them, if it moved in the window: `placement:` and the
//! `mig` events say where it was), or of the main thread, which raises the timer interrupts,
//! during the release (before the job started): whichever is more. A miss is explained when
//! that covers its lateness; anything the harness cannot place in time is not explained.

use std::fmt;
use std::time::Duration;

use vcpu_runtime::trace::{self, TraceEvent, TraceKind};

use crate::hostwait::{HostWaits, QemuThread, ThreadTimes};
use crate::Run;

/// The `HV_MARK` id `rt` marks a miss with.
const MARK_MISS: u32 = 3;

/// One miss of the guest.
#[derive(Clone, Debug, PartialEq)]
pub struct RtMiss {
    /// The guest's line, without its prefix.
    pub line: String,
    /// How late the job ended (at least).
    pub lateness: Duration,
    /// The job's window in the host's time since QEMU started, if it could be placed.
    pub window: Option<(Duration, Duration)>,
    /// The cores the vCPU was on in the window.
    pub cores: Vec<u16>,
    /// At least how long QEMU's threads that mattered waited for a host CPU in the window.
    pub host_wait: Duration,
    /// What the thread of the core the vCPU ended the window on did around it (an estimate).
    pub core_times: Option<ThreadTimes>,
    /// Why the miss could not be placed in time, if it could not.
    pub unplaced: Option<String>,
}

impl RtMiss {
    /// Whether the host's stall covers the miss: without it the job would have been on time.
    pub fn explained(&self) -> bool {
        self.unplaced.is_none() && self.host_wait >= self.lateness
    }
}

impl fmt::Display for RtMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.explained() { "the host's" } else { "NOT explained by the host" };
        write!(f, "{}: {:.1} ms late", self.line, self.lateness.as_secs_f64() * 1e3)?;
        match (&self.unplaced, self.window) {
            (Some(why), _) => write!(f, "; {why}; {verdict}"),
            (None, Some((a, b))) => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                write!(
                    f,
                    "; at {:.1}..{:.1} ms of the host's time, on core {:?}, QEMU waited at least {:.1} ms for a host CPU",
                    ms(a),
                    ms(b),
                    self.cores,
                    ms(self.host_wait)
                )?;
                if let (Some(t), Some(core)) = (self.core_times, self.cores.last()) {
                    write!(
                        f,
                        " (core {core}'s thread over {:.1} ms: ran {:.1}, waited {:.1}, off a CPU {:.1}: asleep, or taken by the host's hypervisor)",
                        ms(t.span),
                        ms(t.ran),
                        ms(t.waited),
                        ms(t.off())
                    )?;
                }
                write!(f, ": {verdict}")
            }
            (None, None) => write!(f, "; {verdict}"),
        }
    }
}

/// The misses of real-time guest `guest` (`rt`) in `run`, each weighed against the host's
/// stalls.
pub fn rt_misses(run: &Run, guest: &str) -> Vec<RtMiss> {
    let lines: Vec<&str> = run.lines().collect();
    misses_in(&lines, &run.line_times, &run.host_waits, guest)
}

/// Says each miss of `guest` in `run` in the test's log, with what the host did then.
pub fn log(run: &Run, guest: &str, what: &str) {
    for m in rt_misses(run, guest) {
        eprintln!("hw-tests: {what}: {m}");
    }
}

/// [`rt_misses`] from a console's `lines`, when each arrived (`times`, since QEMU started;
/// lines past them are not the console's) and QEMU's threads' times.
pub fn misses_in(lines: &[&str], times: &[Duration], waits: &HostWaits, guest: &str) -> Vec<RtMiss> {
    let console = &lines[..lines.len().min(times.len())];
    let offset = clock_offset(console, times);
    let prefix = format!("[{guest}] ");
    let vcpu = placement(console, &format!("{guest}/0"));
    let moves: Vec<(u64, u16)> = match vcpu {
        Some((id, _)) => console.iter().filter_map(|l| migration(l, id)).collect(),
        None => Vec::new(),
    };
    let params = console.iter().find_map(|l| l.strip_prefix(&prefix).and_then(RtParams::parse));
    let mut misses = Vec::new();
    for (i, line) in console.iter().enumerate() {
        let Some(text) = line.strip_prefix(&prefix) else { continue };
        let Some(miss) = MissLine::parse(text) else { continue };
        let mut m = RtMiss {
            line: text.to_string(),
            lateness: Duration::ZERO,
            window: None,
            cores: Vec::new(),
            host_wait: Duration::ZERO,
            core_times: None,
            unplaced: None,
        };
        let Some(params) = params else {
            m.unplaced = Some("the guest's parameters line is missing".into());
            misses.push(m);
            continue;
        };
        m.lateness = miss.lateness(&params);
        let mark = console[..i].iter().rev().find_map(|l| mark_time(l, miss.period));
        let (Some(mark), Some(offset), Some((_, first_core))) = (mark, offset, vcpu) else {
            m.unplaced = Some("no mark, clock or placement to place it by (hv.trace=events?)".into());
            misses.push(m);
            continue;
        };
        // In the hypervisor's time: the job's window, and the part before the job started.
        let (from, release_end) = miss.window(mark);
        let to_host = |hv: u64| Duration::from_nanos((i128::from(hv) + offset).max(0) as u64);
        let (a, b) = (to_host(from), to_host(mark));
        let core_at_from = moves.iter().take_while(|(t, _)| *t <= from).last().map_or(first_core, |&(_, c)| c);
        m.cores = std::iter::once(core_at_from)
            .chain(moves.iter().filter(|(t, _)| *t > from && *t <= mark).map(|&(_, c)| c))
            .collect();
        m.cores.dedup();
        let cpu_wait = m.cores.iter().map(|&c| waits.waited_within(QemuThread::Cpu(c.into()), a, b)).min();
        let main_wait = waits.waited_within(QemuThread::Main, a, to_host(release_end));
        m.host_wait = cpu_wait.unwrap_or_default().max(main_wait);
        m.core_times = m.cores.last().and_then(|&c| waits.around(QemuThread::Cpu(c.into()), a, b));
        m.window = Some((a, b));
        misses.push(m);
    }
    misses
}

/// Host time minus hypervisor time, in ns: the least over the trace lines of their arrival
/// (`times`, one per line) less their stamp.
pub fn clock_offset(lines: &[&str], times: &[Duration]) -> Option<i128> {
    lines.iter().zip(times).filter_map(|(l, t)| Some(t.as_nanos() as i128 - i128::from(trace_time(l)?))).min()
}

/// The trace event of a console line (docs/trace-format.md), read by the trace's own parser.
fn event(line: &str) -> Option<TraceEvent> {
    TraceEvent::parse(trace::find_in(line)?).ok()
}

/// The stamp of a trace line, in ns of the hypervisor's clock.
fn trace_time(line: &str) -> Option<u64> {
    event(line).map(|e| e.at.as_nanos())
}

/// The time of `rt`'s mark of a miss in `period`.
fn mark_time(line: &str, period: u64) -> Option<u64> {
    let e = event(line)?;
    matches!(e.kind, TraceKind::Mark { id: MARK_MISS, value } if value == period).then_some(e.at.as_nanos())
}

/// The id and first core of vCPU `name` (`guest/index`) from the hypervisor's `placement:` line.
fn placement(lines: &[&str], name: &str) -> Option<(u16, u16)> {
    let line = lines.iter().find_map(|l| l.strip_prefix("placement: "))?;
    line.split(", ").find_map(|entry| {
        let mut words = entry.split(' ');
        let id = words.next()?.strip_prefix('v')?.parse().ok()?;
        (words.next()? == name).then_some(())?;
        let core = words.next()?.strip_prefix('c')?.parse().ok()?;
        Some((id, core))
    })
}

/// A move of vCPU `vcpu` in a trace line (`mig`): when, and to which core.
fn migration(line: &str, vcpu: u16) -> Option<(u64, u16)> {
    match event(line)? {
        TraceEvent { at, kind: TraceKind::VcpuMigrate { vcpu: v, to, .. } } if v.0 == vcpu => {
            Some((at.as_nanos(), to.0))
        }
        _ => None,
    }
}

/// The guest's parameters: `rt: period_us=P work_us=W deadline_us=D periods=N ...`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RtParams {
    work: Duration,
    deadline: Duration,
}

impl RtParams {
    fn parse(text: &str) -> Option<RtParams> {
        let rest = text.strip_prefix("rt: period_us=")?;
        Some(RtParams { work: micros(rest, "work_us=")?, deadline: micros(rest, "deadline_us=")? })
    }
}

/// The value of `key` (`name=`) in `text`, in microseconds.
fn micros(text: &str, key: &str) -> Option<Duration> {
    let value = text.split(' ').find_map(|w| w.strip_prefix(key))?;
    value.parse().ok().map(Duration::from_micros)
}

/// One of `rt`'s miss lines.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MissLine {
    period: u64,
    kind: MissKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MissKind {
    /// A job that ended `response` after its release, having started `start` after it.
    Late { response: Duration, start: Duration },
    /// Ticks skipped, the first of them handled `late` after it was due.
    Skipped { late: Duration },
}

impl MissLine {
    fn parse(text: &str) -> Option<MissLine> {
        let (period, rest) = text.strip_prefix("rt: miss in period ")?.split_once(": ")?;
        let period = period.parse().ok()?;
        let kind = match micros(rest, "response_us=") {
            Some(response) => MissKind::Late { response, start: micros(rest, "start_us=")? },
            None => MissKind::Skipped { late: micros(rest, "late_us=")? },
        };
        Some(MissLine { period, kind })
    }

    /// How late the job ended, or would have at the earliest.
    fn lateness(&self, p: &RtParams) -> Duration {
        match self.kind {
            MissKind::Late { response, .. } => response.saturating_sub(p.deadline),
            MissKind::Skipped { late } => (late + p.work).saturating_sub(p.deadline),
        }
    }

    /// The window of the job that ended (or was handled) at `mark` (ns, the hypervisor's
    /// time): its start, and the end of its release (the job's start; all of it for ticks
    /// skipped, whose handling was what came late).
    fn window(&self, mark: u64) -> (u64, u64) {
        match self.kind {
            MissKind::Late { response, start } => {
                let from = mark.saturating_sub(response.as_nanos() as u64);
                (from, from + start.as_nanos() as u64)
            }
            MissKind::Skipped { late } => (mark.saturating_sub(late.as_nanos() as u64), mark),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostwait::{HostWaits, WaitSample};
    use std::collections::HashMap;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lines_are_read() {
        assert_eq!(
            MissLine::parse("rt: miss in period 60: response_us=10844 start_us=117 job_us=10726"),
            Some(MissLine {
                period: 60,
                kind: MissKind::Late { response: Duration::from_micros(10844), start: Duration::from_micros(117) }
            })
        );
        assert_eq!(
            MissLine::parse("rt: miss in period 88: 1 ticks skipped, their jobs never ran, late_us=10500"),
            Some(MissLine { period: 88, kind: MissKind::Skipped { late: Duration::from_micros(10500) } })
        );
        assert_eq!(MissLine::parse("rt: miss in period 88: 1 ticks skipped, their jobs never ran"), None);
        assert_eq!(
            RtParams::parse("rt: period_us=10000 work_us=1000 deadline_us=10000 periods=2000 work_steps=250661"),
            Some(RtParams { work: ms(1), deadline: ms(10) })
        );
        let lines = ["placement: v0 work/0 c0, v1 work/1 c1, v4 rt/0 c1"];
        assert_eq!(placement(&lines, "rt/0"), Some((4, 1)));
        assert_eq!(placement(&lines, "work/1"), Some((1, 1)));
        assert_eq!(placement(&lines, "rt/1"), None);
        assert_eq!(migration("T 2224986880 mig v4 c0>c1", 4), Some((2_224_986_880, 1)));
        assert_eq!(migration("T 2224986880 mig v2 c0>c1", 4), None);
        assert_eq!(mark_time("T 2856518896 mark id=3 val=60", 60), Some(2_856_518_896));
        assert_eq!(mark_time("T 2856518896 mark id=3 val=60", 61), None);
        assert_eq!(mark_time("T 2856518896 mark id=4 val=60", 60), None);
    }

    /// A run whose `rt` vCPU (v2) starts on core 0 and moves to core 1 at 50 ms of the
    /// hypervisor's time; the hypervisor's clock is 300 ms behind the host's. Core 1's thread
    /// waits 9 ms between host times 355 and 365 ms.
    fn run(miss_lines: &[(u64, &str)]) -> Run {
        let mut text = vec![
            (0, "placement: v0 a/0 c0, v1 a/1 c1, v2 rt/0 c0".to_string()),
            (301, "T 1000000 core c0 online".to_string()),
            (302, "[rt] rt: period_us=10000 work_us=1000 deadline_us=10000 periods=2000 work_steps=1".to_string()),
            (351, "T 50000000 mig v2 c0>c1".to_string()),
        ];
        for &(at_ms, line) in miss_lines {
            let (mark, miss) = line.split_once('|').unwrap();
            text.push((at_ms, mark.to_string()));
            text.push((at_ms, format!("[rt] {miss}")));
        }
        let output: String = text.iter().map(|(_, l)| format!("{l}\n")).collect();
        let sample = |at, cpu1_ms: u64| WaitSample {
            at: ms(at),
            waited_ns: HashMap::from([
                (QemuThread::Main, 0),
                (QemuThread::Cpu(0), 0),
                (QemuThread::Cpu(1), cpu1_ms * 1_000_000),
            ]),
            ran_ns: HashMap::from([(QemuThread::Cpu(0), at * 1_000_000), (QemuThread::Cpu(1), 0)]),
        };
        let mut r = crate::tests::run_with(&output, Some(0));
        r.line_times = text.iter().map(|&(t, _)| ms(t)).collect();
        r.host_waits = HostWaits { samples: vec![sample(350, 0), sample(355, 0), sample(365, 9), sample(370, 9)] };
        r
    }

    #[test]
    fn a_miss_inside_a_stall_it_covers_is_the_hosts() {
        // Ended at 66 ms (host 366), 11 ms after its release: 1 ms late, core 1 waited 9.
        let r = run(&[(
            366,
            "T 66000000 mark id=3 val=7|rt: miss in period 7: response_us=11000 start_us=100 job_us=10900",
        )]);
        let misses = rt_misses(&r, "rt");
        assert_eq!(misses.len(), 1);
        let m = &misses[0];
        assert_eq!(m.cores, vec![1]);
        assert_eq!(m.lateness, ms(1));
        assert_eq!(m.host_wait, ms(9));
        assert!(m.explained(), "{m}");
        assert!(m.to_string().contains("the host's"), "{m}");
        // Core 1's thread around it (355..365): never ran, waited 9, off a CPU 1.
        assert_eq!(m.core_times, Some(ThreadTimes { span: ms(10), ran: Duration::ZERO, waited: ms(9) }));
        assert!(m.to_string().contains("ran 0.0, waited 9.0, off a CPU 1.0"), "{m}");
    }

    #[test]
    fn a_miss_the_stall_does_not_cover_is_not() {
        // 9.5 ms late, from the move on: more than the 9 ms the host took.
        let late = "T 69500000 mark id=3 val=7|rt: miss in period 7: response_us=19500 start_us=100 job_us=19400";
        let m = &rt_misses(&run(&[(370, late)]), "rt")[0];
        assert_eq!(m.cores, vec![1]);
        assert_eq!(m.host_wait, ms(9));
        assert!(!m.explained(), "{m}");
        assert!(m.to_string().contains("NOT explained"), "{m}");
        // Away from the stall: nothing waited.
        let away = "T 90000000 mark id=3 val=9|rt: miss in period 9: response_us=10800 start_us=100 job_us=10700";
        let m = &rt_misses(&run(&[(390, away)]), "rt")[0];
        assert_eq!(m.host_wait, Duration::ZERO);
        assert!(!m.explained(), "{m}");
        // Over the move: the thread of core 0, which did not wait, counts.
        let over = "T 66000000 mark id=3 val=7|rt: miss in period 7: response_us=19500 start_us=100 job_us=19400";
        let m = &rt_misses(&run(&[(366, over)]), "rt")[0];
        assert_eq!(m.cores, vec![0, 1]);
        assert_eq!(m.host_wait, Duration::ZERO);
        // On core 0 (before the move), whose thread did not wait.
        let before = "T 45000000 mark id=3 val=4|rt: miss in period 4: response_us=10800 start_us=100 job_us=10700";
        let m = &rt_misses(&run(&[(345, before)]), "rt")[0];
        assert_eq!(m.cores, vec![0]);
        assert!(!m.explained(), "{m}");
    }

    #[test]
    fn skipped_ticks_are_weighed_by_how_late_they_were_handled() {
        // Handled 11 ms late: the job would have ended 2 ms late; core 1 waited 9.
        let skip =
            "T 66000000 mark id=3 val=7|rt: miss in period 7: 1 ticks skipped, their jobs never ran, late_us=11000";
        let m = &rt_misses(&run(&[(366, skip)]), "rt")[0];
        assert_eq!(m.lateness, ms(2));
        assert!(m.explained(), "{m}");
        // The main thread counts too, for all of it (the tick's interrupt came late): on
        // core 0, whose thread did not wait, but the main thread waited 5 ms.
        let mut r = run(&[(
            346,
            "T 46000000 mark id=3 val=4|rt: miss in period 4: 1 ticks skipped, their jobs never ran, late_us=11000",
        )]);
        assert!(!rt_misses(&r, "rt")[0].explained());
        for s in &mut r.host_waits.samples {
            s.waited_ns.insert(QemuThread::Main, 5_000_000);
        }
        let main = |at, waited| WaitSample {
            at: ms(at),
            waited_ns: HashMap::from([(QemuThread::Main, waited)]),
            ran_ns: HashMap::new(),
        };
        r.host_waits.samples.splice(0..0, [main(335, 0), main(336, 0), main(341, 5_000_000)]);
        let m = &rt_misses(&r, "rt")[0];
        assert_eq!(m.host_wait, ms(5), "{m}");
        assert!(m.explained(), "{m}");
    }

    #[test]
    fn a_miss_that_cannot_be_placed_is_not_explained() {
        // No mark for it (a run without trace events).
        let r = run(&[(
            366,
            "T 66000000 core c1 online|rt: miss in period 7: response_us=10800 start_us=100 job_us=10700",
        )]);
        let m = &rt_misses(&r, "rt")[0];
        assert!(m.unplaced.is_some());
        assert!(!m.explained(), "{m}");
    }
}
