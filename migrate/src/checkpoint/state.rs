//! The plain data a checkpoint carries, and the rules each value must follow. The same rules
//! are applied by the encoder (so that what it writes can be read back) and by the decoder.
//!
//! These types mirror the platform's (`platform/aarch64`'s `GuestRegs`, `El1State`,
//! `GicCpuState`, `VcpuContext`) without depending on it; converting is a field-by-field copy.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use vdev::vgic::{IrqState, VgicState};

use super::{FORMAT_VERSION, PAGE_SIZE};

/// An architecture, by its ELF `e_machine` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch(pub u32);

impl Arch {
    pub const AARCH64: Arch = Arch(183);
    pub const X86_64: Arch = Arch(62);
    pub const RISCV: Arch = Arch(243);
    pub const ARM: Arch = Arch(40);

    /// The architecture this crate saves and restores.
    pub const HOST: Arch = Arch::AARCH64;

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Arch::AARCH64 => "aarch64",
            Arch::X86_64 => "x86_64",
            Arch::RISCV => "riscv",
            Arch::ARM => "arm (32-bit)",
            _ => return None,
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown architecture (ELF machine {})", self.0),
        }
    }
}

/// The fixed header: what the reader must know before any section (to size the VM and to
/// bound what follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The stream's format version: what the reader read (1 or 2); the encoder writes
    /// [`FORMAT_VERSION`] and refuses a header with another.
    pub format_version: u16,
    /// [`Arch::AARCH64`].
    pub arch: Arch,
    /// vCPUs of the VM, 1..=[`Limits::max_vcpus`](super::Limits). They are stored by their index
    /// in the VM only, never by physical core: a checkpoint taken with 2 cores restores on 8.
    pub vcpus: u16,
    /// Guest physical address of the first byte of RAM (page-aligned).
    pub ram_base: u64,
    /// Bytes of guest RAM: a non-zero multiple of [`PAGE_SIZE`].
    pub memory_bytes: u64,
}

impl CheckpointHeader {
    /// An aarch64 header of the version this crate writes.
    pub const fn new(vcpus: u16, ram_base: u64, memory_bytes: u64) -> CheckpointHeader {
        CheckpointHeader { format_version: FORMAT_VERSION, arch: Arch::AARCH64, vcpus, ram_base, memory_bytes }
    }

    /// The end of guest RAM (exclusive); checked not to overflow when the header was read.
    pub fn ram_end(&self) -> u64 {
        self.ram_base.saturating_add(self.memory_bytes)
    }

    pub fn pages(&self) -> u64 {
        self.memory_bytes / PAGE_SIZE as u64
    }
}

/// The VM's configuration beyond the header: its name and scheduling parameters (which travel
/// with the guest; its core affinity does not, as it names physical cores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// 1 to 32 bytes of UTF-8, no NUL.
    pub name: String,
    /// Fair-share weight, 1..=65535.
    pub weight: u32,
    /// A real-time reservation (budget, period) in ns: both 0 for none, else 0 < budget ≤ period.
    pub reservation: Option<(u64, u64)>,
}

/// Where a vCPU is in its PSCI life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Parked (never started, or after `CPU_OFF`): its registers are not used; a `CPU_ON`
    /// resets them.
    Off,
    /// Running or runnable (possibly blocked in WFI: it restarts after its WFI, which the
    /// architecture allows as a spurious wake-up).
    On,
    /// A sibling's `CPU_ON` was accepted but the vCPU has not started yet: it will start, from
    /// reset, at `entry` with `context` in x0.
    OnPending { entry: u64, context: u64 },
}

/// x0-x30, PC (`ELR_EL2`) and PSTATE (`SPSR_EL2`): the platform's `GuestRegs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuRegs {
    pub x: [u64; 31],
    pub pc: u64,
    pub pstate: u64,
}

/// The EL1/EL0 system registers, in the platform's `El1State` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El1Regs {
    pub sp_el0: u64,
    pub sp_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub sctlr_el1: u64,
    pub cpacr_el1: u64,
    pub ttbr0_el1: u64,
    pub ttbr1_el1: u64,
    pub tcr_el1: u64,
    pub mair_el1: u64,
    pub amair_el1: u64,
    pub vbar_el1: u64,
    pub contextidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub tpidr_el1: u64,
    pub esr_el1: u64,
    pub far_el1: u64,
    pub afsr0_el1: u64,
    pub afsr1_el1: u64,
    pub par_el1: u64,
    pub cntkctl_el1: u64,
    pub csselr_el1: u64,
    pub mdscr_el1: u64,
}

impl El1Regs {
    /// The registers in their stored order.
    pub(crate) fn as_array(&self) -> [u64; 24] {
        [
            self.sp_el0,
            self.sp_el1,
            self.elr_el1,
            self.spsr_el1,
            self.sctlr_el1,
            self.cpacr_el1,
            self.ttbr0_el1,
            self.ttbr1_el1,
            self.tcr_el1,
            self.mair_el1,
            self.amair_el1,
            self.vbar_el1,
            self.contextidr_el1,
            self.tpidr_el0,
            self.tpidrro_el0,
            self.tpidr_el1,
            self.esr_el1,
            self.far_el1,
            self.afsr0_el1,
            self.afsr1_el1,
            self.par_el1,
            self.cntkctl_el1,
            self.csselr_el1,
            self.mdscr_el1,
        ]
    }

    pub(crate) fn from_array(a: [u64; 24]) -> El1Regs {
        let [sp_el0, sp_el1, elr_el1, spsr_el1, sctlr_el1, cpacr_el1, ttbr0_el1, ttbr1_el1, tcr_el1, mair_el1, amair_el1, vbar_el1, contextidr_el1, tpidr_el0, tpidrro_el0, tpidr_el1, esr_el1, far_el1, afsr0_el1, afsr1_el1, par_el1, cntkctl_el1, csselr_el1, mdscr_el1] =
            a;
        El1Regs {
            sp_el0,
            sp_el1,
            elr_el1,
            spsr_el1,
            sctlr_el1,
            cpacr_el1,
            ttbr0_el1,
            ttbr1_el1,
            tcr_el1,
            mair_el1,
            amair_el1,
            vbar_el1,
            contextidr_el1,
            tpidr_el0,
            tpidrro_el0,
            tpidr_el1,
            esr_el1,
            far_el1,
            afsr0_el1,
            afsr1_el1,
            par_el1,
            cntkctl_el1,
            csselr_el1,
            mdscr_el1,
        }
    }
}

/// The EL1 virtual timer of one vCPU. Both values are in the guest's *virtual* counter
/// (`CNTVCT_EL0` = physical count − `CNTVOFF_EL2`), so they are restored as they are; the
/// counter itself continues through [`TimerState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtualTimer {
    /// `CNTV_CTL_EL0`: ENABLE (bit 0), IMASK (bit 1), ISTATUS (bit 2, read-only, as saved);
    /// the other bits are RES0.
    pub cntv_ctl: u64,
    /// `CNTV_CVAL_EL0`.
    pub cntv_cval: u64,
}

/// FP/SIMD: `FPCR`, `FPSR` and Q0-Q31.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpSimd {
    pub fpcr: u64,
    pub fpsr: u64,
    pub v: [u128; 32],
}

/// The vCPU's half of the GIC virtual CPU interface outside the list registers (which the
/// platform empties into the vGIC model, `Vgic::sync_lr`, before saving).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GicCpu {
    /// `ICH_VMCR_EL2`.
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2`.
    pub ap0r: [u64; 4],
    /// `ICH_AP1R<n>_EL2`.
    pub ap1r: [u64; 4],
}

/// Everything of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// Its index in the VM (0..vcpus); sections come in index order.
    pub index: u16,
    pub power: PowerState,
    pub regs: CpuRegs,
    pub el1: El1Regs,
    pub timer: VirtualTimer,
    pub fp: FpSimd,
    pub gic: GicCpu,
    /// `VMPIDR_EL2` (what the guest reads as `MPIDR_EL1`): its affinity must be 0.0.0.`index`,
    /// which is how the vGIC and PSCI name the vCPU.
    pub vmpidr: u64,
}

impl VcpuState {
    /// A vCPU at reset with the platform's `VMPIDR_EL2` convention (bit 31 set, Aff0 = index):
    /// `PSTATE` EL1h with DAIF masked, `SCTLR_EL1` at its RES1 value, everything else zero.
    pub fn reset(index: u16, power: PowerState) -> VcpuState {
        VcpuState {
            index,
            power,
            regs: CpuRegs { pstate: 0x3c5, ..CpuRegs::default() },
            el1: El1Regs { sctlr_el1: 0x30d0_0800, ..El1Regs::default() },
            timer: VirtualTimer::default(),
            fp: FpSimd::default(),
            gic: GicCpu::default(),
            vmpidr: (1 << 31) | u64::from(index),
        }
    }
}

/// The guest's counter: lets the restoring platform continue the guest's virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerState {
    /// `CNTFRQ_EL0` of the machine the checkpoint was taken on, Hz (non-zero). A restoring
    /// platform whose counter runs at another frequency must refuse the checkpoint (the
    /// guest's idea of time and every `CNTV_CVAL` would be off).
    pub counter_hz: u64,
    /// The guest's virtual count (`CNTVCT_EL0`) when its vCPUs were stopped.
    pub virtual_count: u64,
}

impl TimerState {
    /// The `CNTVOFF_EL2` to restore with, given the physical count (`CNTPCT_EL0`) at the
    /// moment the vCPUs restart: the guest sees its virtual counter continue from
    /// `virtual_count`, as if no time had passed while it was saved.
    pub fn cntvoff(&self, physical_now: u64) -> u64 {
        physical_now.wrapping_sub(self.virtual_count)
    }

    /// The `CNTVOFF_EL2` to restore a *live-migrated* guest with: its virtual counter continues
    /// from `virtual_count` advanced by `elapsed_ticks`, the counter ticks that passed since the
    /// source paused it (from [`Timing::downtime_ticks`] plus what the destination itself took
    /// after reading the timing section). The guest then sees its clock keep wall time across
    /// the migration, with a jump of the downtime, as after any pause of a VM.
    pub fn cntvoff_after(&self, physical_now: u64, elapsed_ticks: u64) -> u64 {
        physical_now.wrapping_sub(self.virtual_count.wrapping_add(elapsed_ticks))
    }
}

/// The timing section of a live stream: what the source measured, for the destination's
/// clock and for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Nanoseconds from the moment the source paused the guest to the moment it wrote this
    /// section: the downtime so far, which the destination adds to the guest's virtual counter
    /// ([`TimerState::cntvoff_after`]).
    pub downtime_ns: u64,
    /// Pre-copy rounds after round 0 (rounds of re-sent dirty pages while the guest ran).
    pub precopy_rounds: u32,
    /// Pages the stream's dirty runs hold, pre-copy and final (a page sent twice counts
    /// twice). Reported as the source gives it; the reader does not count the runs against it.
    pub pages_resent: u64,
}

impl Timing {
    /// [`downtime_ns`](Self::downtime_ns) in ticks of a counter running at `counter_hz`
    /// (rounded down; saturating, as no real downtime reaches it).
    pub fn downtime_ticks(&self, counter_hz: u64) -> u64 {
        let ticks = u128::from(self.downtime_ns) * u128::from(counter_hz) / 1_000_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// The emulated PL011's state: what `vdev::uart::Pl011::registers` and `pending_line` give and
/// `Pl011::with_state` takes back (see `docs/checkpoint-format.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pl011State {
    /// `UARTIBRD` (16 bits).
    pub ibrd: u32,
    /// `UARTFBRD` (6 bits).
    pub fbrd: u32,
    /// `UARTLCR_H` (8 bits).
    pub lcr_h: u32,
    /// `UARTCR` (16 bits).
    pub cr: u32,
    /// `UARTIFLS` (6 bits).
    pub ifls: u32,
    /// `UARTIMSC` (11 bits).
    pub imsc: u32,
    /// Raw interrupt status (11 bits).
    pub ris: u32,
    /// `UARTDMACR` (3 bits).
    pub dmacr: u32,
    /// Output not yet handed over (no newline yet), at most [`vdev::uart::LINE_MAX`] bytes.
    pub line: Vec<u8>,
}

impl Default for Pl011State {
    /// The PL011's reset values.
    fn default() -> Self {
        Pl011State { ibrd: 0, fbrd: 0, lcr_h: 0, cr: 0x300, ifls: 0x12, imsc: 0, ris: 0, dmacr: 0, line: Vec::new() }
    }
}

/// The emulated devices (besides the vGIC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The UART at `0x0900_0000`, if the VM has one.
    pub uart: Option<Pl011State>,
}

// ----- rules -----

/// A value that breaks a rule: which field, what value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) field: &'static str,
    pub(crate) value: u64,
}

fn rule(ok: bool, field: &'static str, value: u64) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid { field, value })
    }
}

/// `IROUTER` bits that are not RES0: Aff3 (39:32), IRM (31), Aff2.Aff1.Aff0 (23:0).
const IROUTER_BITS: u64 = 0xFF_80FF_FFFF;
/// Bits of an `IrqState` flags byte.
pub(crate) const IRQ_FLAG_BITS: u8 = 0x3F;

impl VmConfig {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        let n = self.name.len();
        rule((1..=32).contains(&n) && !self.name.contains('\0'), "name length", n as u64)?;
        rule((1..=65_535).contains(&self.weight), "weight", self.weight.into())?;
        if let Some((budget, period)) = self.reservation {
            rule(budget > 0 && budget <= period, "reservation budget", budget)?;
        }
        Ok(())
    }
}

impl VcpuState {
    pub(crate) fn check(&self, header: &CheckpointHeader, expected_index: u16) -> Result<(), Invalid> {
        rule(self.index == expected_index, "index", self.index.into())?;
        // Affinity Aff3.Aff2.Aff1.Aff0 = 0.0.0.index (MT, U and bit 31 are not checked).
        rule(self.vmpidr & 0xFF_00FF_FFFF == u64::from(self.index), "vmpidr", self.vmpidr)?;
        // The guest must come back at EL0 or EL1 in AArch64 (M[4:0] = EL0t, EL1t or EL1h):
        // PSTATE goes into SPSR_EL2, and anything else would return into EL2 or AArch32.
        rule(matches!(self.regs.pstate & 0x1F, 0b00000 | 0b00100 | 0b00101), "pstate", self.regs.pstate)?;
        rule(self.timer.cntv_ctl & !0b111 == 0, "cntv_ctl", self.timer.cntv_ctl)?;
        if let PowerState::OnPending { entry, .. } = self.power {
            let in_ram = entry >= header.ram_base && entry.checked_add(4).is_some_and(|e| e <= header.ram_end());
            rule(in_ram, "pending entry", entry)?;
        }
        Ok(())
    }
}

pub(crate) fn check_vgic(v: &VgicState, header: &CheckpointHeader) -> Result<(), Invalid> {
    rule(v.vcpus == header.vcpus, "vgic vcpus", v.vcpus.into())?;
    rule(v.spis % 32 == 0 && v.spis <= vdev::vgic::MAX_SPIS, "spis", v.spis.into())?;
    rule((4..=8).contains(&v.priority_bits), "priority_bits", v.priority_bits.into())?;
    rule(v.processor_sleep.len() == usize::from(v.vcpus), "processor_sleep count", v.processor_sleep.len() as u64)?;
    let private = usize::from(v.vcpus) * vdev::vgic::PRIVATE_COUNT as usize;
    let want = private + usize::from(v.spis);
    rule(v.irqs.len() == want, "interrupt count", v.irqs.len() as u64)?;
    for (slot, irq) in v.irqs.iter().enumerate() {
        if slot < private {
            rule(irq.route == 0, "route of a private interrupt", irq.route)?;
            rule(irq.owner == 0, "owner of a private interrupt", irq.owner.into())?;
        } else {
            rule(irq.route & !IROUTER_BITS == 0, "irouter", irq.route)?;
            rule(irq.owner < v.vcpus, "owner", irq.owner.into())?;
        }
    }
    Ok(())
}

impl TimerState {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        rule(self.counter_hz != 0, "counter_hz", 0)
    }
}

impl Pl011State {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        rule(self.ibrd <= 0xFFFF, "uart ibrd", self.ibrd.into())?;
        rule(self.fbrd <= 0x3F, "uart fbrd", self.fbrd.into())?;
        rule(self.lcr_h <= 0xFF, "uart lcr_h", self.lcr_h.into())?;
        rule(self.cr <= 0xFFFF, "uart cr", self.cr.into())?;
        rule(self.ifls <= 0x3F, "uart ifls", self.ifls.into())?;
        rule(self.imsc <= 0x7FF, "uart imsc", self.imsc.into())?;
        rule(self.ris <= 0x7FF, "uart ris", self.ris.into())?;
        rule(self.dmacr <= 0x7, "uart dmacr", self.dmacr.into())?;
        rule(self.line.len() <= vdev::uart::LINE_MAX, "uart line length", self.line.len() as u64)
    }
}
