//! The demand player's schedule: a guest's simulated demand written out as arrivals, for the
//! `player` test guest to replay on the hypervisor (docs/guests.md, *player*), so that the
//! simulator and QEMU see the same load for a scenario.
//!
//! [`player_schedule`] runs the simulator's own [`DemandGen`] for each vCPU of a guest the way
//! [`crate::Simulator`] does (started at [`Instant::ZERO`], each arrival asked for at the time
//! of the one before), keeps the arrivals released before the scenario's duration and encodes
//! them. The manifest carries the blob as the guest's data blob (its `initrd` field); the
//! hypervisor copies it to the base of the guest's RAM and passes its address in vCPU 0's `x0`
//! (docs/guest-abi.md). [`decode_schedule`] reads a blob back, for tests and tools.
//!
//! # Format
//!
//! All integers little-endian; offsets from the start of the blob.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `DPLY` |
//! | 4 | 4 | version, 1 |
//! | 8 | 4 | vCPU count `V`, ≥ 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | duration, ns: the player runs until then |
//! | 24 | 8 × `V` | per vCPU: (u32 offset of its first entry, u32 entry count) |
//! | … | 24 each | entries: u64 release, ns from the start; u64 work, ns of CPU time; u64 deadline, ns after the release, 0 = none |
//!
//! A vCPU's entries are contiguous, 8-byte aligned, after the table and in release order;
//! every release is before the duration. The whole blob is at most [`SCHEDULE_MAX`] bytes.
//!
//! # How arrivals become entries
//!
//! An arrival (`at`, `work`, `deadline`) releases `work` of CPU time at `at`; the simulator adds
//! it to the vCPU's pending work, so work released while earlier work is still pending waits
//! behind it, and the player does the same (it takes the next entry only when the previous one
//! is done). Arrivals at or after the duration are dropped (the simulator does none of their
//! work either); work is capped at what is left of the duration, so a `batch` demand, one
//! endless arrival at 0, becomes one entry of `duration` work. A deadline is stored relative to
//! its release (only `periodic` demand has them). `trace` and `phone-day` demand are arrivals of
//! at most 1 ms of work every 1 ms step in which the demand is not zero (`percent` % of 1 ms),
//! so their schedules grow by one entry per busy millisecond: a phone day does not fit.

use std::fmt;

use vcpu_runtime::scenario::Demand;
use vcpu_runtime::{Instant, Nanos};

use crate::demand::DemandGen;

/// The first four bytes of a schedule.
pub const MAGIC: [u8; 4] = *b"DPLY";
/// The format version written and read.
pub const VERSION: u32 = 1;
/// Bytes before the per-vCPU table.
pub const HEADER_LEN: usize = 24;
/// Bytes per vCPU in the table.
pub const TABLE_ENTRY_LEN: usize = 8;
/// Bytes per entry.
pub const ENTRY_LEN: usize = 24;
/// The most bytes a schedule may have: what the hypervisor copies of a test image's data blob
/// (`TEST_DATA_MAX` in platform/aarch64/src/hyp/vm.rs, the RAM below the image).
pub const SCHEDULE_MAX: usize = 512 << 10;

/// Arrivals counted before a schedule that is far too large is refused without counting the
/// rest (a periodic demand of 100 µs over a day has 864 million).
const COUNT_LIMIT: u64 = 1 << 24;

/// One job of a vCPU: at `release`, `work` of CPU time becomes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// From the player's start.
    pub release: Nanos,
    /// CPU time, not wall time.
    pub work: Nanos,
    /// The job must be done this long after its release.
    pub deadline: Option<Nanos>,
}

/// A decoded schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// How long the player runs.
    pub duration: Nanos,
    /// Each vCPU's entries, in release order.
    pub vcpus: Vec<Vec<Entry>>,
}

impl Schedule {
    /// The arrivals of `demand` for each of `vcpus` vCPUs, released before `duration` (see the
    /// module doc); refused if its blob would exceed [`SCHEDULE_MAX`].
    pub fn from_demand(demand: &Demand, vcpus: u16, duration: Nanos) -> Result<Schedule, ScheduleError> {
        if vcpus == 0 {
            return Err(ScheduleError::NoVcpus);
        }
        let max = max_entries(vcpus as usize);
        let end = Instant::ZERO + duration;
        let mut lists = Vec::with_capacity(vcpus as usize);
        let mut total = 0u64;
        let mut too_large = false;
        for i in 0..vcpus {
            let mut gen = DemandGen::new(demand, i, Instant::ZERO);
            let mut list = Vec::new();
            // As the simulator does: the first arrival is asked for at 0, each next one at the
            // time its predecessor arrived.
            let mut now = Instant::ZERO;
            while let Some(a) = gen.next_arrival(now) {
                if a.at >= end {
                    break;
                }
                debug_assert!(a.at >= now, "arrivals go forward");
                now = a.at;
                total += 1;
                if total > max as u64 {
                    too_large = true;
                    if total >= COUNT_LIMIT {
                        break;
                    }
                    continue;
                }
                list.push(Entry {
                    release: a.at - Instant::ZERO,
                    work: a.work.min(end - a.at),
                    deadline: a.deadline.map(|d| Nanos((d - a.at).as_nanos().max(1))),
                });
            }
            lists.push(list);
            if total >= COUNT_LIMIT {
                break;
            }
        }
        if too_large {
            return Err(ScheduleError::TooLarge {
                demand: demand.kind_name(),
                vcpus,
                duration,
                entries: total,
                counted_all: total < COUNT_LIMIT,
            });
        }
        Ok(Schedule { duration, vcpus: lists })
    }

    /// The blob (see the module doc).
    pub fn encode(&self) -> Result<Vec<u8>, ScheduleError> {
        let vcpus = self.vcpus.len();
        if vcpus == 0 {
            return Err(ScheduleError::NoVcpus);
        }
        let entries: usize = self.vcpus.iter().map(Vec::len).sum();
        let len = blob_len(vcpus, entries as u64);
        if len > SCHEDULE_MAX as u64 {
            return Err(ScheduleError::TooLarge {
                demand: "scheduled",
                vcpus: vcpus.min(u16::MAX as usize) as u16,
                duration: self.duration,
                entries: entries as u64,
                counted_all: true,
            });
        }
        let mut out = Vec::with_capacity(len as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(vcpus as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.duration.as_nanos().to_le_bytes());
        let mut offset = HEADER_LEN + vcpus * TABLE_ENTRY_LEN;
        for list in &self.vcpus {
            // Below SCHEDULE_MAX, so both fit in a u32.
            out.extend_from_slice(&(offset as u32).to_le_bytes());
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            offset += list.len() * ENTRY_LEN;
        }
        for e in self.vcpus.iter().flatten() {
            out.extend_from_slice(&e.release.as_nanos().to_le_bytes());
            out.extend_from_slice(&e.work.as_nanos().to_le_bytes());
            out.extend_from_slice(&e.deadline.map_or(0, Nanos::as_nanos).to_le_bytes());
        }
        debug_assert_eq!(out.len() as u64, len);
        Ok(out)
    }

    /// All entries of all vCPUs.
    pub fn entries(&self) -> usize {
        self.vcpus.iter().map(Vec::len).sum()
    }
}

/// The schedule blob of a guest of `vcpus` vCPUs whose demand is `demand`, over `duration`
/// (the scenario's): [`Schedule::from_demand`] then [`Schedule::encode`].
pub fn player_schedule(demand: &Demand, vcpus: u16, duration: Nanos) -> Result<Vec<u8>, ScheduleError> {
    Schedule::from_demand(demand, vcpus, duration)?.encode()
}

/// Reads a schedule blob, checking everything the player checks and more: the magic, the
/// version, the reserved word, that the table and every vCPU's entries lie inside `blob`
/// (after the table, 8-byte aligned, not overlapping), that releases go forward and come before
/// the duration, and that the blob is at most [`SCHEDULE_MAX`] bytes and has nothing after its
/// last entry.
pub fn decode_schedule(blob: &[u8]) -> Result<Schedule, ScheduleError> {
    let bad = |what: String| Err(ScheduleError::Malformed(what));
    if blob.len() > SCHEDULE_MAX {
        return bad(format!("{} bytes, more than the {SCHEDULE_MAX} a schedule may have", blob.len()));
    }
    if blob.len() < HEADER_LEN {
        return bad(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", blob.len()));
    }
    let u32_at = |at: usize| u32::from_le_bytes([blob[at], blob[at + 1], blob[at + 2], blob[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&blob[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if blob[..4] != MAGIC {
        return bad(format!("bad magic {:02x?}, expected {:02x?} (\"DPLY\")", &blob[..4], MAGIC));
    }
    let version = u32_at(4);
    if version != VERSION {
        return bad(format!("version {version}, this reader knows {VERSION}"));
    }
    let vcpus = u32_at(8) as usize;
    if vcpus == 0 {
        return bad("0 vCPUs".into());
    }
    let reserved = u32_at(12);
    if reserved != 0 {
        return bad(format!("reserved word is {reserved:#x}, must be 0"));
    }
    let duration = Nanos(u64_at(16));
    let table_end = HEADER_LEN as u64 + vcpus as u64 * TABLE_ENTRY_LEN as u64;
    if table_end > blob.len() as u64 {
        return bad(format!("a table of {vcpus} vCPUs needs {table_end} bytes, the blob has {}", blob.len()));
    }
    let mut lists = Vec::with_capacity(vcpus);
    let mut next = table_end;
    for v in 0..vcpus {
        let at = HEADER_LEN + v * TABLE_ENTRY_LEN;
        let (offset, count) = (u32_at(at) as u64, u32_at(at + 4) as u64);
        let end = offset + count * ENTRY_LEN as u64;
        if offset < next || offset % 8 != 0 || end > blob.len() as u64 {
            return bad(format!(
                "vCPU {v}: {count} entries at offset {offset} do not lie 8-byte aligned in {next}..{} (after the \
                 table and the vCPUs before)",
                blob.len()
            ));
        }
        let mut list = Vec::with_capacity(count as usize);
        let mut last = Nanos::ZERO;
        for k in 0..count as usize {
            let e = offset as usize + k * ENTRY_LEN;
            let (release, work, deadline) = (Nanos(u64_at(e)), Nanos(u64_at(e + 8)), u64_at(e + 16));
            if release < last || release >= duration {
                return bad(format!(
                    "vCPU {v} entry {k}: release {release} is before the previous one ({last}) or not before the \
                     duration ({duration})"
                ));
            }
            last = release;
            list.push(Entry { release, work, deadline: (deadline != 0).then_some(Nanos(deadline)) });
        }
        lists.push(list);
        next = end;
    }
    if next != blob.len() as u64 {
        return bad(format!("{} bytes after the last entry", blob.len() as u64 - next));
    }
    Ok(Schedule { duration, vcpus: lists })
}

/// Bytes of a schedule of `vcpus` vCPUs and `entries` entries in all.
fn blob_len(vcpus: usize, entries: u64) -> u64 {
    (HEADER_LEN + vcpus * TABLE_ENTRY_LEN) as u64 + entries * ENTRY_LEN as u64
}

/// The most entries a schedule of `vcpus` vCPUs can hold.
pub fn max_entries(vcpus: usize) -> usize {
    SCHEDULE_MAX.saturating_sub(HEADER_LEN + vcpus * TABLE_ENTRY_LEN) / ENTRY_LEN
}

/// Why a schedule cannot be made or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// The schedule would be larger than [`SCHEDULE_MAX`].
    TooLarge {
        /// The demand's kind (`periodic`, `phone-day`...).
        demand: &'static str,
        vcpus: u16,
        duration: Nanos,
        /// Entries in all vCPUs; a lower bound unless `counted_all`.
        entries: u64,
        counted_all: bool,
    },
    /// A schedule needs at least one vCPU.
    NoVcpus,
    /// A blob that is not a valid schedule, and why.
    Malformed(String),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::TooLarge { demand, vcpus, duration, entries, counted_all } => write!(
                f,
                "{demand} demand over {duration} on {vcpus} vCPU{} gives {}{entries} arrivals ({}{} bytes of \
                 schedule), but a test guest's data blob holds at most {SCHEDULE_MAX} bytes ({} KiB, {} arrivals): use a \
                 shorter duration",
                if *vcpus == 1 { "" } else { "s" },
                if *counted_all { "" } else { "more than " },
                if *counted_all { "" } else { "more than " },
                blob_len(*vcpus as usize, *entries),
                SCHEDULE_MAX >> 10,
                max_entries(*vcpus as usize),
            ),
            ScheduleError::NoVcpus => f.write_str("a schedule needs at least one vCPU"),
            ScheduleError::Malformed(why) => write!(f, "malformed demand schedule: {why}"),
        }
    }
}

impl std::error::Error for ScheduleError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn periodic(period_ms: u64, work_ms: u64, deadline_ms: u64, offset_ms: u64) -> Demand {
        Demand::Periodic {
            period: Nanos::from_millis(period_ms),
            work: Nanos::from_millis(work_ms),
            deadline: Nanos::from_millis(deadline_ms),
            offset: Nanos::from_millis(offset_ms),
        }
    }

    #[test]
    fn periodic_round_trip() {
        let d = periodic(10, 2, 8, 1);
        let blob = player_schedule(&d, 2, Nanos::from_millis(100)).unwrap();
        assert_eq!(&blob[..4], b"DPLY");
        assert_eq!(blob.len(), HEADER_LEN + 2 * TABLE_ENTRY_LEN + 20 * ENTRY_LEN);
        let s = decode_schedule(&blob).unwrap();
        assert_eq!(s, Schedule::from_demand(&d, 2, Nanos::from_millis(100)).unwrap());
        assert_eq!(s.duration, Nanos::from_millis(100));
        assert_eq!(s.vcpus.len(), 2);
        for list in &s.vcpus {
            assert_eq!(list.len(), 10, "releases at 1, 11, ..., 91 ms");
            assert_eq!(
                list[3],
                Entry {
                    release: Nanos::from_millis(31),
                    work: Nanos::from_millis(2),
                    deadline: Some(Nanos::from_millis(8))
                }
            );
        }
        assert_eq!(s.encode().unwrap(), blob);
    }

    /// The schedule holds exactly what the simulator's generator yields before the duration.
    #[test]
    fn interactive_matches_the_generator() {
        let d = Demand::Interactive { burst_mean: Nanos::from_millis(3), think_mean: Nanos::from_millis(20), seed: 9 };
        let end = Nanos::from_secs(1);
        let s = decode_schedule(&player_schedule(&d, 3, end).unwrap()).unwrap();
        for (i, list) in s.vcpus.iter().enumerate() {
            let mut gen = DemandGen::new(&d, i as u16, Instant::ZERO);
            let mut now = Instant::ZERO;
            let mut want = Vec::new();
            while let Some(a) = gen.next_arrival(now) {
                if a.at >= Instant::ZERO + end {
                    break;
                }
                now = a.at;
                want.push((a.at.as_nanos(), a.work.min(Instant::ZERO + end - a.at).as_nanos()));
            }
            let got: Vec<(u64, u64)> = list.iter().map(|e| (e.release.as_nanos(), e.work.as_nanos())).collect();
            assert_eq!(got, want, "vCPU {i}");
            assert!(list.iter().all(|e| e.deadline.is_none()));
        }
        assert_ne!(s.vcpus[0], s.vcpus[1], "vCPUs draw distinct streams");
    }

    #[test]
    fn trace_and_batch_become_arrivals() {
        let d = Demand::Trace {
            file: "t.csv".into(),
            points: vec![(Nanos::from_millis(2), 50), (Nanos::from_millis(4), 0), (Nanos::from_millis(6), 100)],
        };
        let s = decode_schedule(&player_schedule(&d, 1, Nanos::from_millis(9)).unwrap()).unwrap();
        let got: Vec<(u64, u64)> = s.vcpus[0].iter().map(|e| (e.release.as_millis(), e.work.as_micros())).collect();
        assert_eq!(got, [(2, 500), (3, 500), (6, 1000), (7, 1000), (8, 1000)]);

        let s = decode_schedule(&player_schedule(&Demand::Batch, 2, Nanos::from_secs(3)).unwrap()).unwrap();
        for list in &s.vcpus {
            assert_eq!(list, &[Entry { release: Nanos::ZERO, work: Nanos::from_secs(3), deadline: None }]);
        }
    }

    #[test]
    fn work_is_capped_at_the_duration() {
        let s = Schedule::from_demand(&periodic(10, 4, 10, 0), 1, Nanos::from_millis(22)).unwrap();
        let works: Vec<u64> = s.vcpus[0].iter().map(|e| e.work.as_millis()).collect();
        assert_eq!(works, [4, 4, 2], "the job released at 20 ms has 2 ms left");
    }

    #[test]
    fn too_large_is_refused_with_the_demand_the_count_and_the_limit() {
        // 1 ms period over 20 s on 2 vCPUs: 40000 arrivals, more than the 21843 that fit.
        let err = player_schedule(&periodic(1, 1, 1, 0), 2, Nanos::from_secs(20)).unwrap_err();
        assert!(matches!(err, ScheduleError::TooLarge { entries: 40_000, counted_all: true, .. }), "{err:?}");
        let msg = err.to_string();
        for part in ["periodic demand", "20.000s", "2 vCPUs", "40000 arrivals", "524288 bytes", "21843 arrivals"] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
        assert!(msg.contains("shorter duration"), "{msg}");
        // A phone day is refused too, without generating all of it.
        let day = Demand::PhoneDay { seed: 1, active_minutes: 240 };
        let err = player_schedule(&day, 2, Nanos::from_secs(24 * 3600)).unwrap_err();
        assert!(err.to_string().starts_with("phone-day demand over 86400.000s on 2 vCPUs gives"), "{err}");
        // The largest schedule that fits is accepted and is within the limit.
        let n = max_entries(1) as u64;
        let blob = player_schedule(&periodic(1, 1, 1, 0), 1, Nanos::from_millis(n)).unwrap();
        assert!(blob.len() <= SCHEDULE_MAX && blob.len() > SCHEDULE_MAX - ENTRY_LEN);
        assert!(player_schedule(&periodic(1, 1, 1, 0), 1, Nanos::from_millis(n + 1)).is_err());
        assert_eq!(player_schedule(&Demand::Batch, 0, Nanos::from_secs(1)), Err(ScheduleError::NoVcpus));
    }

    #[test]
    fn corrupted_blobs_are_refused() {
        let blob = player_schedule(&periodic(10, 2, 10, 0), 2, Nanos::from_millis(50)).unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = blob.clone();
            f(&mut b);
            decode_schedule(&b).unwrap_err().to_string()
        };
        assert!(with(&|b| b[0] = b'X').contains("bad magic"));
        assert!(with(&|b| b[4] = 2).contains("version 2"));
        assert!(with(&|b| b[8] = 0).contains("0 vCPUs"));
        assert!(with(&|b| b[8] = 200).contains("a table of 200 vCPUs"));
        assert!(with(&|b| b[12] = 1).contains("reserved"));
        // vCPU 1's entry count runs past the end.
        assert!(with(&|b| b[36] = 9).contains("vCPU 1: 9 entries"));
        // vCPU 0's entries overlap the table.
        assert!(with(&|b| b[24] = 8).contains("vCPU 0"));
        // The third entry of vCPU 0 released before the second.
        let second = HEADER_LEN + 2 * TABLE_ENTRY_LEN + ENTRY_LEN;
        let third = second + ENTRY_LEN;
        assert!(
            with(&|b| b[third..third + 8].copy_from_slice(&5_000_000u64.to_le_bytes())).contains("before the previous")
        );
        // A release at the duration.
        assert!(with(&|b| b[second..second + 8].copy_from_slice(&50_000_000u64.to_le_bytes()))
            .contains("not before the duration"));
        assert!(with(&|b| b.truncate(b.len() - 1)).contains("vCPU 1"));
        assert!(with(&|b| b.push(0)).contains("1 bytes after the last entry"));
        assert!(with(&|b| b.truncate(10)).contains("shorter than the 24-byte header"));
        assert!(decode_schedule(&vec![0; SCHEDULE_MAX + 1]).unwrap_err().to_string().contains("more than"));
    }
}
