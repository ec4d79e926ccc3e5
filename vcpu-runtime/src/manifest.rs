//! The boot manifest: a scenario turned into one binary blob that QEMU loads beside the
//! hypervisor image (`-device loader`), so that a new scenario needs no rebuild.
//!
//! `cargo xtask` writes it with [`encode`]; the hypervisor reads it with [`Manifest::parse`],
//! which is defensive: every offset, length and value is checked before use, a malformed
//! manifest gives a [`ManifestError`] naming the guest, the field and the problem, and nothing
//! panics on any input. The layout (all integers little-endian) is documented in
//! `docs/manifest-format.md`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::ids::{CoreMask, VmId};
use crate::scenario::{GovernorPolicy, Payload, Scenario};
use crate::time::Nanos;
use crate::vcpu::Reservation;

pub const MAGIC: [u8; 8] = *b"HVMANIF\0";
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 160;
pub const GUEST_LEN: usize = 256;
pub const MAX_SEGMENTS: usize = 4;
/// The largest manifest the reader accepts.
pub const MAX_LEN: u64 = 1 << 31;
/// Where `cargo xtask` has QEMU load the manifest on the `virt` board (`-device loader`), and
/// where the hypervisor looks for it: above the image, below guest RAM (docs/platform.md).
pub const QEMU_VIRT_ADDR: u64 = 0x4400_0000;
/// Where guest RAM starts in every guest's physical address space (see `docs/guest-abi.md`).
pub const GUEST_RAM_BASE: u64 = 0x4000_0000;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What a guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GuestKind {
    /// Nothing (a simulator-only guest); the hypervisor refuses to boot it.
    None = 0,
    /// A test guest: its ELF segments, entered at the ELF entry point.
    TestImage = 1,
    /// A Linux kernel `Image` with an optional initramfs and a command line.
    Linux = 2,
}

/// A piece of a guest image to copy into guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Where it goes (guest physical).
    pub ipa: u64,
    pub data: &'a [u8],
    /// Bytes it occupies in guest RAM (`>= data.len()`; the rest is zero).
    pub mem_len: u64,
}

/// One guest of a parsed manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestEntry<'a> {
    pub vm: VmId,
    pub name: &'a str,
    pub vcpus: u16,
    pub memory_mib: u32,
    pub weight: u32,
    pub reservation: Option<Reservation>,
    pub affinity: CoreMask,
    pub kind: GuestKind,
    pub entry_ipa: u64,
    segments: [Segment<'a>; MAX_SEGMENTS],
    segment_count: usize,
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
}

impl<'a> GuestEntry<'a> {
    pub fn segments(&self) -> &[Segment<'a>] {
        &self.segments[..self.segment_count]
    }
    /// Guest RAM: `[GUEST_RAM_BASE, ram_end())`.
    pub fn ram_end(&self) -> u64 {
        GUEST_RAM_BASE + self.memory_mib as u64 * (1 << 20)
    }
}

/// The policy knobs carried in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestPolicy {
    pub duration: Nanos,
    pub timeslice: Nanos,
    pub min_granularity: Nanos,
    pub governor_period: Nanos,
    pub min_migration_interval: Nanos,
    pub util_half_life: Nanos,
    pub rt_utilization_bound_percent: u32,
    pub governor: GovernorPolicy,
}

/// A parsed manifest, borrowing the bytes it was read from.
#[derive(Clone, Copy, Debug)]
pub struct Manifest<'a> {
    bytes: &'a [u8],
    pub name: &'a str,
    pub cores: u16,
    pub guest_count: u16,
    pub policy: ManifestPolicy,
    /// The board's energy profile (`board.energy_profile`), resolved by the `power` crate.
    pub energy_profile: &'a str,
}

/// What is wrong with a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    BadMagic,
    UnsupportedVersion(u32),
    /// The bytes end before `need`.
    Truncated {
        need: u64,
        have: u64,
    },
    TooLarge(u64),
    Checksum {
        stored: u32,
        computed: u32,
    },
    /// A value outside its allowed range.
    OutOfRange(u64),
    /// A name or command line that is not UTF-8 (or an empty name).
    BadText,
    /// A range of bytes that lies outside the manifest or overflows.
    BadRange {
        offset: u64,
        len: u64,
    },
    /// A segment outside the guest's RAM, or overlapping another.
    SegmentOutsideRam {
        ipa: u64,
        len: u64,
    },
    SegmentsOverlap,
    /// The entry point is not inside any segment.
    EntryOutsideImage(u64),
}

/// A manifest error: which guest (if any), which field, what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub guest: Option<u16>,
    pub field: &'static str,
    pub problem: Problem,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("manifest: ")?;
        if let Some(g) = self.guest {
            write!(f, "guest {g}: ")?;
        }
        write!(f, "{}: ", self.field)?;
        match self.problem {
            Problem::BadMagic => write!(f, "not a manifest (bad magic)"),
            Problem::UnsupportedVersion(v) => {
                write!(f, "format version {v} is not supported (this build reads {VERSION})")
            }
            Problem::Truncated { need, have } => write!(f, "truncated: needs {need} bytes, has {have}"),
            Problem::TooLarge(n) => write!(f, "{n} bytes is over the limit of {MAX_LEN}"),
            Problem::Checksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Problem::OutOfRange(v) => write!(f, "value {v} is out of range"),
            Problem::BadText => write!(f, "not valid UTF-8 text (or empty)"),
            Problem::BadRange { offset, len } => write!(f, "bytes {offset}+{len} lie outside the manifest"),
            Problem::SegmentOutsideRam { ipa, len } => {
                write!(f, "{len} bytes at IPA {ipa:#x} do not fit in the guest's RAM")
            }
            Problem::SegmentsOverlap => write!(f, "segments overlap"),
            Problem::EntryOutsideImage(e) => write!(f, "entry point {e:#x} is not inside the image"),
        }
    }
}

fn err(guest: Option<u16>, field: &'static str, problem: Problem) -> ManifestError {
    ManifestError { guest, field, problem }
}

/// Bounds-checked little-endian reads.
struct Reader<'a> {
    bytes: &'a [u8],
    guest: Option<u16>,
}

impl<'a> Reader<'a> {
    fn slice(&self, field: &'static str, offset: u64, len: u64) -> Result<&'a [u8], ManifestError> {
        let end = offset.checked_add(len).ok_or(err(self.guest, field, Problem::BadRange { offset, len }))?;
        if end > self.bytes.len() as u64 {
            return Err(err(self.guest, field, Problem::BadRange { offset, len }));
        }
        Ok(&self.bytes[offset as usize..end as usize])
    }
    fn u64(&self, field: &'static str, at: usize) -> Result<u64, ManifestError> {
        let b = self.slice(field, at as u64, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn u32(&self, field: &'static str, at: usize) -> Result<u32, ManifestError> {
        let b = self.slice(field, at as u64, 4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }
    fn u16(&self, field: &'static str, at: usize) -> Result<u16, ManifestError> {
        let b = self.slice(field, at as u64, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u8(&self, field: &'static str, at: usize) -> Result<u8, ManifestError> {
        Ok(self.slice(field, at as u64, 1)?[0])
    }
    /// A NUL-padded name in a fixed field.
    fn name(&self, field: &'static str, at: usize, len: usize) -> Result<&'a str, ManifestError> {
        let raw = self.slice(field, at as u64, len as u64)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
        let s = core::str::from_utf8(&raw[..end]).map_err(|_| err(self.guest, field, Problem::BadText))?;
        if s.is_empty() {
            return Err(err(self.guest, field, Problem::BadText));
        }
        Ok(s)
    }
    fn nanos(&self, field: &'static str, at: usize) -> Result<Nanos, ManifestError> {
        self.u64(field, at).map(Nanos)
    }
}

fn governor_from(v: u8) -> Option<GovernorPolicy> {
    Some(match v {
        0 => GovernorPolicy::Spread,
        1 => GovernorPolicy::Hotplug,
        2 => GovernorPolicy::RaceToIdle,
        3 => GovernorPolicy::Consolidate,
        _ => return None,
    })
}

fn governor_to(g: GovernorPolicy) -> u8 {
    match g {
        GovernorPolicy::Spread => 0,
        GovernorPolicy::Hotplug => 1,
        GovernorPolicy::RaceToIdle => 2,
        GovernorPolicy::Consolidate => 3,
    }
}

impl<'a> Manifest<'a> {
    /// Checks and parses a whole manifest (every guest included), so that a boot never starts
    /// on a manifest that would fail half-way.
    pub fn parse(bytes: &'a [u8]) -> Result<Manifest<'a>, ManifestError> {
        let r = Reader { bytes, guest: None };
        let have = bytes.len() as u64;
        if have < HEADER_LEN as u64 {
            // Say "not a manifest" rather than "truncated" when even the magic is wrong.
            if bytes.len() >= 8 && bytes[..8] != MAGIC {
                return Err(err(None, "magic", Problem::BadMagic));
            }
            return Err(err(None, "header", Problem::Truncated { need: HEADER_LEN as u64, have }));
        }
        if bytes[..8] != MAGIC {
            return Err(err(None, "magic", Problem::BadMagic));
        }
        let version = r.u32("version", 8)?;
        if version != VERSION {
            return Err(err(None, "version", Problem::UnsupportedVersion(version)));
        }
        let header_len = r.u32("header_len", 12)?;
        if header_len as usize != HEADER_LEN {
            return Err(err(None, "header_len", Problem::OutOfRange(header_len as u64)));
        }
        let total = r.u64("total_len", 16)?;
        if total > MAX_LEN {
            return Err(err(None, "total_len", Problem::TooLarge(total)));
        }
        if total > have {
            return Err(err(None, "total_len", Problem::Truncated { need: total, have }));
        }
        if total < HEADER_LEN as u64 {
            return Err(err(None, "total_len", Problem::OutOfRange(total)));
        }
        let bytes = &bytes[..total as usize];
        let r = Reader { bytes, guest: None };
        let stored = r.u32("checksum", 24)?;
        let computed = CRC.checksum(&bytes[32..]);
        if stored != computed {
            return Err(err(None, "checksum", Problem::Checksum { stored, computed }));
        }
        let cores = r.u16("cores", 32)?;
        if cores == 0 || cores as usize > CoreMask::MAX_CORES {
            return Err(err(None, "cores", Problem::OutOfRange(cores as u64)));
        }
        let guest_count = r.u16("guest_count", 34)?;
        if guest_count == 0 {
            return Err(err(None, "guest_count", Problem::OutOfRange(0)));
        }
        let governor_raw = r.u8("governor", 92)?;
        let policy = ManifestPolicy {
            duration: r.nanos("duration", 40)?,
            timeslice: r.nanos("timeslice", 48)?,
            min_granularity: r.nanos("min_granularity", 56)?,
            governor_period: r.nanos("governor_period", 64)?,
            min_migration_interval: r.nanos("min_migration_interval", 72)?,
            util_half_life: r.nanos("util_half_life", 80)?,
            rt_utilization_bound_percent: r.u32("rt_utilization_bound_percent", 88)?,
            governor: governor_from(governor_raw).ok_or(err(
                None,
                "governor",
                Problem::OutOfRange(governor_raw as u64),
            ))?,
        };
        if policy.timeslice == Nanos::ZERO {
            return Err(err(None, "timeslice", Problem::OutOfRange(0)));
        }
        if !(1..=100).contains(&policy.rt_utilization_bound_percent) {
            return Err(err(
                None,
                "rt_utilization_bound_percent",
                Problem::OutOfRange(policy.rt_utilization_bound_percent as u64),
            ));
        }
        let name = r.name("name", 96, 32)?;
        let energy_profile = r.name("energy_profile", 128, 32)?;
        let records_end = HEADER_LEN as u64 + guest_count as u64 * GUEST_LEN as u64;
        if records_end > total {
            return Err(err(None, "guest_count", Problem::Truncated { need: records_end, have: total }));
        }
        let manifest = Manifest { bytes, name, cores, guest_count, policy, energy_profile };
        for g in 0..guest_count {
            manifest.guest(g)?;
        }
        Ok(manifest)
    }

    /// Guest number `index` (checked again; cheap).
    pub fn guest(&self, index: u16) -> Result<GuestEntry<'a>, ManifestError> {
        let g = Some(index);
        if index >= self.guest_count {
            return Err(err(g, "index", Problem::OutOfRange(index as u64)));
        }
        let base = HEADER_LEN + index as usize * GUEST_LEN;
        let records_end = (HEADER_LEN + self.guest_count as usize * GUEST_LEN) as u64;
        let r = Reader { bytes: self.bytes, guest: g };
        let name = r.name("name", base, 32)?;
        let vcpus = r.u16("vcpus", base + 32)?;
        if vcpus == 0 || vcpus > 64 {
            return Err(err(g, "vcpus", Problem::OutOfRange(vcpus as u64)));
        }
        let memory_mib = r.u32("memory_mib", base + 36)?;
        if memory_mib == 0 || memory_mib > 65_536 {
            return Err(err(g, "memory_mib", Problem::OutOfRange(memory_mib as u64)));
        }
        let weight = r.u32("weight", base + 40)?;
        if weight == 0 || weight > 65_535 {
            return Err(err(g, "weight", Problem::OutOfRange(weight as u64)));
        }
        let budget = r.u64("reservation.budget", base + 48)?;
        let period = r.u64("reservation.period", base + 56)?;
        let reservation = match (budget, period) {
            (0, 0) => None,
            (b, p) if b > 0 && b <= p && p >= Reservation::MIN_PERIOD.as_nanos() => {
                Some(Reservation { budget: Nanos(b), period: Nanos(p) })
            }
            (b, _) => return Err(err(g, "reservation", Problem::OutOfRange(b))),
        };
        let affinity_raw = r.u64("affinity", base + 64)?;
        let all = CoreMask::first(self.cores as usize);
        let affinity = if affinity_raw == 0 { all } else { CoreMask(affinity_raw) };
        if affinity.and(all).is_empty() || affinity.0 & !all.0 != 0 {
            return Err(err(g, "affinity", Problem::OutOfRange(affinity_raw)));
        }
        let kind = match r.u8("kind", base + 72)? {
            0 => GuestKind::None,
            1 => GuestKind::TestImage,
            2 => GuestKind::Linux,
            k => return Err(err(g, "kind", Problem::OutOfRange(k as u64))),
        };
        let entry_ipa = r.u64("entry", base + 80)?;
        let segment_count = r.u32("segment_count", base + 88)? as usize;
        if segment_count > MAX_SEGMENTS || (kind != GuestKind::None && segment_count == 0) {
            return Err(err(g, "segment_count", Problem::OutOfRange(segment_count as u64)));
        }
        let blob = |field: &'static str, off_at: usize| -> Result<&'a [u8], ManifestError> {
            let off = r.u64(field, off_at)?;
            let len = r.u64(field, off_at + 8)?;
            if len == 0 {
                return Ok(&[]);
            }
            if off < records_end {
                return Err(err(g, field, Problem::BadRange { offset: off, len }));
            }
            r.slice(field, off, len)
        };
        let cmdline =
            core::str::from_utf8(blob("cmdline", base + 96)?).map_err(|_| err(g, "cmdline", Problem::BadText))?;
        let initrd = blob("initrd", base + 112)?;
        let mut entry = GuestEntry {
            vm: VmId(index),
            name,
            vcpus,
            memory_mib,
            weight,
            reservation,
            affinity,
            kind,
            entry_ipa,
            segments: [Segment { ipa: 0, data: &[], mem_len: 0 }; MAX_SEGMENTS],
            segment_count,
            initrd,
            cmdline,
        };
        let ram_end = entry.ram_end();
        let mut entry_inside = kind == GuestKind::None;
        for i in 0..segment_count {
            let at = base + 128 + i * 32;
            let ipa = r.u64("segment.ipa", at)?;
            let data = blob("segment.data", at + 8)?;
            let mem_len = r.u64("segment.mem_len", at + 24)?;
            let end = ipa.checked_add(mem_len);
            if mem_len < data.len() as u64 || ipa < GUEST_RAM_BASE || end.is_none_or(|e| e > ram_end) {
                return Err(err(g, "segment", Problem::SegmentOutsideRam { ipa, len: mem_len }));
            }
            for prev in &entry.segments[..i] {
                if ipa < prev.ipa + prev.mem_len && prev.ipa < ipa + mem_len {
                    return Err(err(g, "segment", Problem::SegmentsOverlap));
                }
            }
            entry_inside |= (ipa..ipa + mem_len).contains(&entry_ipa);
            entry.segments[i] = Segment { ipa, data, mem_len };
        }
        if !entry_inside {
            return Err(err(g, "entry", Problem::EntryOutsideImage(entry_ipa)));
        }
        Ok(entry)
    }

    pub fn guests(&self) -> impl Iterator<Item = GuestEntry<'a>> + '_ {
        (0..self.guest_count).filter_map(|i| self.guest(i).ok())
    }
}

/// A guest image ready to be written into a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestImage {
    pub entry_ipa: u64,
    /// (IPA, bytes, bytes in RAM).
    pub segments: Vec<(u64, Vec<u8>, u64)>,
    pub initrd: Vec<u8>,
    pub cmdline: String,
}

/// Why a manifest could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes the manifest of `scenario`, with one image per guest (in guest order; a guest whose
/// payload is none gets an empty image).
pub fn encode(scenario: &Scenario, images: &[GuestImage]) -> Result<Vec<u8>, EncodeError> {
    use alloc::format;
    if images.len() != scenario.guests.len() {
        return Err(EncodeError(format!("{} images for {} guests", images.len(), scenario.guests.len())));
    }
    let guests = scenario.guests.len();
    let records_end = HEADER_LEN + guests * GUEST_LEN;
    let mut out = alloc::vec![0u8; records_end];
    let put = |out: &mut Vec<u8>, at: usize, b: &[u8]| out[at..at + b.len()].copy_from_slice(b);
    let name_field = |s: &str, len: usize| -> Result<Vec<u8>, EncodeError> {
        if s.is_empty() || s.len() > len {
            return Err(EncodeError(format!("name `{s}` must be 1 to {len} bytes")));
        }
        let mut v = alloc::vec![0u8; len];
        v[..s.len()].copy_from_slice(s.as_bytes());
        Ok(v)
    };
    put(&mut out, 0, &MAGIC);
    put(&mut out, 8, &VERSION.to_le_bytes());
    put(&mut out, 12, &(HEADER_LEN as u32).to_le_bytes());
    put(&mut out, 32, &scenario.board.cores.to_le_bytes());
    put(&mut out, 34, &(guests as u16).to_le_bytes());
    let p = &scenario.policy;
    put(&mut out, 40, &scenario.duration.as_nanos().to_le_bytes());
    put(&mut out, 48, &p.timeslice.as_nanos().to_le_bytes());
    put(&mut out, 56, &p.min_granularity.as_nanos().to_le_bytes());
    put(&mut out, 64, &p.governor_period.as_nanos().to_le_bytes());
    put(&mut out, 72, &p.min_migration_interval.as_nanos().to_le_bytes());
    put(&mut out, 80, &p.util_half_life.as_nanos().to_le_bytes());
    put(&mut out, 88, &p.rt_utilization_bound_percent.to_le_bytes());
    out[92] = governor_to(p.governor);
    let name = name_field(&scenario.name, 32)?;
    put(&mut out, 96, &name);
    let profile = name_field(&scenario.board.energy_profile, 32)?;
    put(&mut out, 128, &profile);
    // Blobs go after the records; remember where each lands.
    let append = |out: &mut Vec<u8>, data: &[u8]| -> (u64, u64) {
        if data.is_empty() {
            return (0, 0);
        }
        // 8-byte alignment keeps the hypervisor's copies simple.
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let off = out.len() as u64;
        out.extend_from_slice(data);
        (off, data.len() as u64)
    };
    for (i, (guest, image)) in scenario.guests.iter().zip(images).enumerate() {
        let base = HEADER_LEN + i * GUEST_LEN;
        if image.segments.len() > MAX_SEGMENTS {
            return Err(EncodeError(format!(
                "guest `{}`: {} loadable segments, at most {MAX_SEGMENTS}",
                guest.name,
                image.segments.len()
            )));
        }
        let gname = name_field(&guest.name, 32)?;
        put(&mut out, base, &gname);
        put(&mut out, base + 32, &guest.vcpus.to_le_bytes());
        put(&mut out, base + 36, &guest.memory_mib.to_le_bytes());
        put(&mut out, base + 40, &guest.weight.to_le_bytes());
        if let Some(r) = guest.reservation {
            put(&mut out, base + 48, &r.budget.as_nanos().to_le_bytes());
            put(&mut out, base + 56, &r.period.as_nanos().to_le_bytes());
        }
        put(&mut out, base + 64, &guest.affinity.map_or(0, |m| m.0).to_le_bytes());
        out[base + 72] = match guest.payload {
            Payload::None => GuestKind::None,
            Payload::TestImage { .. } => GuestKind::TestImage,
            Payload::Linux { .. } => GuestKind::Linux,
        } as u8;
        put(&mut out, base + 80, &image.entry_ipa.to_le_bytes());
        put(&mut out, base + 88, &(image.segments.len() as u32).to_le_bytes());
        let (off, len) = append(&mut out, image.cmdline.as_bytes());
        put(&mut out, base + 96, &off.to_le_bytes());
        put(&mut out, base + 104, &len.to_le_bytes());
        let (off, len) = append(&mut out, &image.initrd);
        put(&mut out, base + 112, &off.to_le_bytes());
        put(&mut out, base + 120, &len.to_le_bytes());
        for (s, (ipa, data, mem_len)) in image.segments.iter().enumerate() {
            let at = base + 128 + s * 32;
            let (off, len) = append(&mut out, data);
            put(&mut out, at, &ipa.to_le_bytes());
            put(&mut out, at + 8, &off.to_le_bytes());
            put(&mut out, at + 16, &len.to_le_bytes());
            put(&mut out, at + 24, &mem_len.to_le_bytes());
        }
    }
    let total = out.len() as u64;
    put(&mut out, 16, &total.to_le_bytes());
    let crc = CRC.checksum(&out[32..]);
    put(&mut out, 24, &crc.to_le_bytes());
    // What we write, we must be able to read.
    Manifest::parse(&out).map_err(|e| EncodeError(format!("{e}")))?;
    Ok(out)
}

/// Reads the loadable segments and entry point of an aarch64 ELF64 executable (a test guest).
pub fn elf_image(bytes: &[u8]) -> Result<GuestImage, EncodeError> {
    use alloc::format;
    let e = |m: &str| EncodeError(format!("ELF: {m}"));
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        bytes.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(e("not an ELF file"));
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(e("not a little-endian ELF64 file"));
    }
    if u16_at(18) != Some(183) {
        return Err(e("not an aarch64 executable (e_machine is not EM_AARCH64)"));
    }
    let entry = u64_at(24).ok_or_else(|| e("truncated header"))?;
    let phoff = u64_at(32).ok_or_else(|| e("truncated header"))? as usize;
    let phentsize = u16_at(54).ok_or_else(|| e("truncated header"))? as usize;
    let phnum = u16_at(56).ok_or_else(|| e("truncated header"))? as usize;
    if phentsize < 56 {
        return Err(e("program header entries too small"));
    }
    let mut image = GuestImage { entry_ipa: entry, ..GuestImage::default() };
    for i in 0..phnum {
        let ph = phoff.checked_add(i * phentsize).ok_or_else(|| e("program header offset overflows"))?;
        let p_type = u32_at(ph).ok_or_else(|| e("truncated program header"))?;
        if p_type != 1 {
            continue; // PT_LOAD only
        }
        let offset = u64_at(ph + 8).ok_or_else(|| e("truncated program header"))? as usize;
        let paddr = u64_at(ph + 24).ok_or_else(|| e("truncated program header"))?;
        let filesz = u64_at(ph + 32).ok_or_else(|| e("truncated program header"))? as usize;
        let memsz = u64_at(ph + 40).ok_or_else(|| e("truncated program header"))?;
        if memsz == 0 {
            continue;
        }
        let data = offset
            .checked_add(filesz)
            .and_then(|end| bytes.get(offset..end))
            .ok_or_else(|| e("segment data lies outside the file"))?;
        image.segments.push((paddr, data.to_vec(), memsz));
    }
    if image.segments.is_empty() {
        return Err(e("no loadable segment"));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Board, Guest, Policy};
    use alloc::string::ToString;
    use alloc::vec;

    fn scenario() -> Scenario {
        let guest = |name: &str, vcpus| Guest {
            name: name.to_string(),
            vcpus,
            memory_mib: 64,
            weight: 256,
            reservation: None,
            affinity: None,
            payload: Payload::TestImage { image: name.to_string() },
            demand: None,
        };
        let mut rt = guest("rt", 1);
        rt.reservation = Some(Reservation { budget: Nanos::from_millis(2), period: Nanos::from_millis(10) });
        rt.affinity = Some(CoreMask(0b10));
        Scenario {
            name: "two".to_string(),
            description: String::new(),
            board: Board { cores: 2, energy_profile: "phone-dual".to_string() },
            policy: Policy::default(),
            guests: vec![guest("counter", 2), rt],
            duration: Nanos::from_secs(5),
        }
    }

    fn image(entry: u64) -> GuestImage {
        GuestImage {
            entry_ipa: entry,
            segments: vec![(0x4008_0000, vec![1, 2, 3, 4], 0x2000), (0x4010_0000, vec![9; 100], 100)],
            initrd: vec![],
            cmdline: String::new(),
        }
    }

    #[test]
    fn round_trip() {
        let s = scenario();
        let bytes = encode(&s, &[image(0x4008_0000), image(0x4008_0010)]).unwrap();
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!((m.name, m.cores, m.guest_count), ("two", 2, 2));
        assert_eq!(m.policy.timeslice, s.policy.timeslice);
        let g: Vec<GuestEntry> = m.guests().collect();
        assert_eq!(g[0].name, "counter");
        assert_eq!(g[0].vcpus, 2);
        assert_eq!(g[0].affinity, CoreMask(0b11));
        assert_eq!(g[1].reservation, s.guests[1].reservation);
        assert_eq!(g[1].affinity, CoreMask(0b10));
        assert_eq!(g[1].entry_ipa, 0x4008_0010);
        assert_eq!(g[0].segments()[0], Segment { ipa: 0x4008_0000, data: &[1, 2, 3, 4], mem_len: 0x2000 });
        assert_eq!(g[0].segments()[1].data.len(), 100);
    }

    #[test]
    fn refuses_what_is_wrong_naming_it() {
        let s = scenario();
        let good = encode(&s, &[image(0x4008_0000), image(0x4008_0000)]).unwrap();
        let reseal = |mut b: Vec<u8>| {
            let crc = CRC.checksum(&b[32..]);
            b[24..28].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let check = |b: &[u8], field: &str, guest: Option<u16>| {
            let e = Manifest::parse(b).unwrap_err();
            assert_eq!((e.field, e.guest), (field, guest), "{e}");
            e
        };
        let mut b = good.clone();
        b[0] = b'X';
        check(&b, "magic", None);
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(check(&b, "version", None).problem, Problem::UnsupportedVersion(9));
        check(&good[..good.len() - 1], "total_len", None);
        check(&good[..40], "header", None);
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(check(&b, "checksum", None).problem, Problem::Checksum { .. }));
        // Guest 1's vCPU count set to 0.
        let mut b = good.clone();
        b[HEADER_LEN + GUEST_LEN + 32] = 0;
        check(&reseal(b), "vcpus", Some(1));
        // Guest 0's first segment moved below guest RAM.
        let mut b = good.clone();
        b[HEADER_LEN + 128..HEADER_LEN + 136].copy_from_slice(&0x1000u64.to_le_bytes());
        let e = check(&reseal(b), "segment", Some(0));
        assert!(e.to_string().contains("do not fit in the guest's RAM"), "{e}");
        // Entry point outside the image.
        let mut b = good.clone();
        b[HEADER_LEN + 80..HEADER_LEN + 88].copy_from_slice(&0x4800_0000u64.to_le_bytes());
        check(&reseal(b), "entry", Some(0));
        // A segment's data pointing outside the manifest.
        let mut b = good.clone();
        b[HEADER_LEN + 136..HEADER_LEN + 144].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&reseal(b), "segment.data", Some(0));
        // Affinity naming a core the board does not have.
        let mut b = good.clone();
        b[HEADER_LEN + 64..HEADER_LEN + 72].copy_from_slice(&0b100u64.to_le_bytes());
        check(&reseal(b), "affinity", Some(0));
        assert_eq!(
            Manifest::parse(&b"HVMANIF\0"[..]).unwrap_err().to_string(),
            "manifest: header: truncated: needs 160 bytes, has 8"
        );
        // No energy profile.
        let mut b = good.clone();
        b[128..160].fill(0);
        check(&reseal(b), "energy_profile", None);
    }

    #[test]
    fn elf_reader_rejects_garbage() {
        assert!(elf_image(b"not an elf").is_err());
        assert!(elf_image(b"\x7fELF\x02\x01").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Manifest::parse(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_manifests(pos in 0usize..2000, val in proptest::num::u8::ANY, cut in 0usize..2000) {
            let good = encode(&scenario(), &[image(0x4008_0000), image(0x4008_0000)]).unwrap();
            let mut b = good.clone();
            let p = pos % b.len();
            b[p] = val;
            // Reseal half of the time so the checks behind the checksum are reached too.
            if pos % 2 == 0 {
                let crc = CRC.checksum(&b[32..]);
                b[24..28].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = Manifest::parse(&b);
            let _ = Manifest::parse(&b[..cut.min(b.len())]);
        }
    }
}
