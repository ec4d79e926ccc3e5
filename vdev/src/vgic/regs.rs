//! The GICD and GICR register maps (IHI 0069, chapter 12): decoding an offset into a register,
//! checking the access size, and the register semantics.

use super::{
    Effects, Irq, MmioError, Vgic, CTLR_GRP0, CTLR_GRP1, GICD_SIZE, GICR_SGI_BASE, GICR_STRIDE, IROUTER_MASK,
    PRIVATE_COUNT,
};

// Distributor (GICD) offsets.
const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IIDR: u64 = 0x0008;
const GICD_TYPER2: u64 = 0x000C;
const GICD_STATUSR: u64 = 0x0010;
const GICD_IGROUPR: u64 = 0x0080;
const GICD_IPRIORITYR: u64 = 0x0400;
const GICD_ITARGETSR: u64 = 0x0800;
const GICD_ICFGR: u64 = 0x0C00;
const GICD_IGRPMODR: u64 = 0x0D00;
const GICD_NSACR: u64 = 0x0E00;
const GICD_IROUTER: u64 = 0x6000;
const GICD_IROUTER_END: u64 = 0x8000;
const IDREGS: u64 = 0xFFD0;

// Redistributor offsets, RD_base frame.
const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_STATUSR: u64 = 0x0010;
const GICR_WAKER: u64 = 0x0014;
// SGI_base frame (relative to it).
const GICR_IGROUPR0: u64 = 0x0080;
/// The end of `GICR_ICACTIVER0`, the last of the seven one-bit families.
const GICR_ICACTIVER0_END: u64 = 0x0383;
const GICR_IPRIORITYR0: u64 = 0x0400;
const GICR_ICFGR0: u64 = 0x0C00;
const GICR_ICFGR1: u64 = 0x0C04;
const GICR_IGRPMODR0: u64 = 0x0D00;
const GICR_NSACR: u64 = 0x0E00;

/// `GICD_CTLR.ARE` (single Security state view): affinity routing, RAO/WI.
const CTLR_ARE: u32 = 1 << 4;
/// `GICD_CTLR.DS`: Security disabled (single Security state), RAO/WI.
const CTLR_DS: u32 = 1 << 6;

/// `GICR_WAKER.ProcessorSleep`.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
/// `GICR_WAKER.ChildrenAsleep`.
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// `GICD_TYPER.IDbits` (bits `[23:19]`) = 10 interrupt ID bits - 1: INTIDs up to 1023, no LPIs.
const TYPER_IDBITS: u32 = 9 << 19;
/// `GICD_TYPER.RSS` (bit 26): targeted SGIs reach Aff0 0..255 (`send_sgi` honours RS).
const TYPER_RSS: u32 = 1 << 26;

/// JEP106 identity of Arm (continuation 4, code 0x3B) in `IIDR.Implementer` form.
const IMPLEMENTER_ARM: u32 = 0x43B;
/// `IIDR.ProductID` of this model ('H'); Variant and Revision 0.
const PRODUCT_ID: u32 = 0x48;
/// `GICD_IIDR` and `GICR_IIDR`.
pub(super) const IIDR: u32 = (PRODUCT_ID << 24) | IMPLEMENTER_ARM;

/// The ID registers at 0xFFD0..0x10000 of both frames: PIDR4..7, PIDR0..3, CIDR0..3.
/// `PIDR2` = 0x3B: ArchRev (bits `[7:4]`) = 3 for GICv3, JEDEC-assigned, JEP106 bits `[6:4]` of
/// Arm; PIDR1/PIDR4 carry the rest of Arm's JEP106 code; CIDRs are the CoreSight preamble.
const IDS: [u32; 12] = [0x04, 0, 0, 0, 0x00, 0xB0, 0x3B, 0, 0x0D, 0xF0, 0x05, 0xB1];

/// The seven one-bit-per-interrupt register families, in offset order from 0x080 (both frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

const FAMILIES: [Family; 7] = [
    Family::Group,
    Family::SetEnable,
    Family::ClearEnable,
    Family::SetPending,
    Family::ClearPending,
    Family::SetActive,
    Family::ClearActive,
];

/// What an offset decodes to. `base` is the slot of the first interrupt the register covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    /// Reserved, unimplemented, or RES0 because of affinity routing: RAZ/WI, reported.
    Reserved,
    /// An architected register this model implements as zero: RAZ/WI, not reported.
    RazWi,
    /// A read-only 32-bit register; writes are ignored and reported.
    ReadOnly(u32),
    DistCtlr,
    Waker(u16),
    /// `GICR_TYPER` of a vCPU; the flag is "upper word accessed".
    RdTyper(u16, bool),
    Bits(Family, usize),
    /// `IPRIORITYR`: the slot of the byte at the accessed offset.
    Priority(usize),
    /// `ICFGR`: 16 interrupts from `base`; `sgi` marks `GICR_ICFGR0` (read-only, all edge).
    Config {
        base: usize,
        sgi: bool,
    },
    /// `IROUTER` of the SPI in `slot`; the flag is "upper word accessed".
    Irouter(usize, bool),
}

impl Reg {
    /// Whether an access of `size` bytes (already aligned to its size) may reach it.
    fn allows(self, size: u8) -> bool {
        match self {
            Reg::Reserved => true,
            Reg::Priority(_) => size == 1 || size == 4,
            // A 64-bit access is 8-aligned, so it never starts in the upper word.
            Reg::RdTyper(..) | Reg::Irouter(..) => size == 4 || size == 8,
            _ => size == 4,
        }
    }
}

fn check_access(offset: u64, size: u8) -> Result<(), MmioError> {
    if !matches!(size, 1 | 2 | 4 | 8) || offset % u64::from(size) != 0 {
        return Err(MmioError::Unaligned { offset, size });
    }
    Ok(())
}

fn id_reg(offset: u64) -> u32 {
    IDS[((offset - IDREGS) / 4) as usize]
}

impl Vgic {
    /// `GICD_CTLR` as read: the group enables, ARE and DS set, RWP (bit 31) clear (every
    /// write takes effect at once).
    pub(super) fn dist_ctlr_value(&self) -> u32 {
        self.ctlr | CTLR_ARE | CTLR_DS
    }

    /// `GICD_TYPER`: ITLinesNumber = SPIs/32 (so INTIDs up to 32·(N+1) − 1 exist), CPUNumber
    /// 0 (affinity routing), SecurityExtn 0, MBIS 0, LPIS 0, IDbits 9, A3V 0, No1N 0 (1-of-N
    /// routing is supported), RSS 1, no extended SPIs.
    pub fn gicd_typer(&self) -> u32 {
        u32::from(self.spis / 32) | TYPER_IDBITS | TYPER_RSS
    }

    /// `GICR_TYPER` of `vcpu`: Affinity_Value = 0.0.0.`vcpu` (bits `[63:32]`), Processor_Number
    /// = `vcpu` (bits `[23:8]`), Last (bit 4) on the last vCPU, PLPIS/VLPIS/DirectLPI 0, PPInum 0
    /// (16 PPIs).
    pub fn gicr_typer(&self, vcpu: u16) -> u64 {
        let last = if vcpu + 1 == self.vcpus { 1 << 4 } else { 0 };
        (u64::from(vcpu) << 32) | (u64::from(vcpu) << 8) | last
    }

    fn dist_decode(&self, offset: u64) -> Reg {
        let spi_end = PRIVATE_COUNT + u32::from(self.spis);
        // The slot of SPI `intid` if the whole group of `n` interrupts from it exists.
        let spi_group = |first: u32, n: u32| {
            (first >= PRIVATE_COUNT && first + n <= spi_end).then(|| self.spi_slot(first).unwrap_or(0))
        };
        match offset {
            GICD_CTLR..=0x3 => Reg::DistCtlr,
            GICD_TYPER..=0x7 => Reg::ReadOnly(self.gicd_typer()),
            GICD_IIDR..=0xB => Reg::ReadOnly(IIDR),
            GICD_TYPER2..=0xF => Reg::ReadOnly(0),
            GICD_STATUSR..=0x13 => Reg::RazWi,
            GICD_IGROUPR..=0x3FF => {
                let family = FAMILIES[((offset - GICD_IGROUPR) / 0x80) as usize];
                let first = ((offset % 0x80) / 4) as u32 * 32;
                // Bank 0 (SGIs and PPIs) is RES0 in the distributor with affinity routing.
                spi_group(first, 32).map_or(Reg::Reserved, |base| Reg::Bits(family, base))
            }
            GICD_IPRIORITYR..=0x7FF => {
                let intid = (offset - GICD_IPRIORITYR) as u32;
                spi_group(intid & !3, 4).map_or(Reg::Reserved, |base| Reg::Priority(base + (intid % 4) as usize))
            }
            GICD_ITARGETSR..=0xBFF => Reg::Reserved,
            GICD_ICFGR..=0xCFF => {
                let first = ((offset - GICD_ICFGR) / 4) as u32 * 16;
                spi_group(first, 16).map_or(Reg::Reserved, |base| Reg::Config { base, sgi: false })
            }
            GICD_IGRPMODR..=0xD7F => {
                let first = ((offset - GICD_IGRPMODR) / 4) as u32 * 32;
                spi_group(first, 32).map_or(Reg::Reserved, |_| Reg::RazWi)
            }
            GICD_NSACR..=0xEFF => {
                let first = ((offset - GICD_NSACR) / 4) as u32 * 16;
                spi_group(first, 16).map_or(Reg::Reserved, |_| Reg::RazWi)
            }
            GICD_IROUTER..GICD_IROUTER_END => {
                let intid = ((offset - GICD_IROUTER) / 8) as u32;
                spi_group(intid, 1).map_or(Reg::Reserved, |slot| Reg::Irouter(slot, offset & 4 != 0))
            }
            IDREGS..GICD_SIZE => Reg::ReadOnly(id_reg(offset & !3)),
            _ => Reg::Reserved,
        }
    }

    fn redist_decode(&self, offset: u64) -> Reg {
        let vcpu = offset / GICR_STRIDE;
        if vcpu >= u64::from(self.vcpus) {
            return Reg::Reserved;
        }
        let vcpu = vcpu as u16;
        let base = usize::from(vcpu) * PRIVATE_COUNT as usize;
        let frame = offset % GICR_STRIDE;
        if frame < GICR_SGI_BASE {
            return match frame {
                // No LPIs: EnableLPIs is RES0, RWP/UWP read 0, DPG bits are not implemented.
                GICR_CTLR..=0x3 => Reg::RazWi,
                GICR_IIDR..=0x7 => Reg::ReadOnly(IIDR),
                GICR_TYPER..=0xF => Reg::RdTyper(vcpu, frame & 4 != 0),
                GICR_STATUSR..=0x13 => Reg::RazWi,
                GICR_WAKER..=0x17 => Reg::Waker(vcpu),
                IDREGS..GICR_SGI_BASE => Reg::ReadOnly(id_reg(frame & !3)),
                _ => Reg::Reserved,
            };
        }
        let sgi = frame - GICR_SGI_BASE;
        match sgi {
            GICR_IGROUPR0..=GICR_ICACTIVER0_END if sgi % 0x80 < 4 => {
                Reg::Bits(FAMILIES[((sgi - GICR_IGROUPR0) / 0x80) as usize], base)
            }
            GICR_IPRIORITYR0..=0x41F => Reg::Priority(base + (sgi - GICR_IPRIORITYR0) as usize),
            GICR_ICFGR0..=0xC03 => Reg::Config { base, sgi: true },
            GICR_ICFGR1..=0xC07 => Reg::Config { base: base + 16, sgi: false },
            GICR_IGRPMODR0..=0xD03 | GICR_NSACR..=0xE03 => Reg::RazWi,
            _ => Reg::Reserved,
        }
    }

    /// A guest read of the distributor frame at `offset` (0..64 KiB) of `size` bytes. The
    /// value is zero-extended to 64 bits.
    pub fn dist_read(&self, offset: u64, size: u8) -> Result<u64, MmioError> {
        check_access(offset, size)?;
        self.read(self.dist_decode(offset), offset, size)
    }

    /// A guest write to the distributor frame; `value` is truncated to `size` bytes.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) -> Result<Effects, MmioError> {
        check_access(offset, size)?;
        self.write(self.dist_decode(offset), offset, size, value)
    }

    /// A guest read of the redistributor region: `offset` is from the region's base, vCPU
    /// `offset / 128 KiB`'s RD_base frame then its SGI_base frame at +64 KiB.
    pub fn redist_read(&self, offset: u64, size: u8) -> Result<u64, MmioError> {
        check_access(offset, size)?;
        self.read(self.redist_decode(offset), offset, size)
    }

    /// A guest write to the redistributor region (see [`Vgic::redist_read`]).
    pub fn redist_write(&mut self, offset: u64, size: u8, value: u64) -> Result<Effects, MmioError> {
        check_access(offset, size)?;
        self.write(self.redist_decode(offset), offset, size, value)
    }

    fn read(&self, reg: Reg, offset: u64, size: u8) -> Result<u64, MmioError> {
        if !reg.allows(size) {
            return Err(MmioError::BadSize { offset, size });
        }
        let value = match reg {
            Reg::Reserved => {
                self.ignored_reads.set(self.ignored_reads.get() + 1);
                0
            }
            Reg::RazWi => 0,
            Reg::ReadOnly(v) => u64::from(v),
            Reg::DistCtlr => u64::from(self.dist_ctlr_value()),
            Reg::Waker(vcpu) => {
                if self.sleep[usize::from(vcpu)] {
                    u64::from(WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP)
                } else {
                    0
                }
            }
            Reg::RdTyper(vcpu, high) => split64(self.gicr_typer(vcpu), size, high),
            Reg::Bits(family, base) => u64::from(self.read_bits(family, base)),
            Reg::Priority(slot) => {
                let mut v = 0u64;
                for i in 0..usize::from(size) {
                    v |= u64::from(self.irqs[slot + i].priority) << (8 * i);
                }
                v
            }
            Reg::Config { base, sgi } => {
                let mut v = 0u64;
                for i in 0..16 {
                    if sgi || self.irqs[base + i].edge {
                        v |= 0b10 << (2 * i);
                    }
                }
                v
            }
            Reg::Irouter(slot, high) => split64(u64::from(self.irqs[slot].route), size, high),
        };
        Ok(value)
    }

    fn write(&mut self, reg: Reg, offset: u64, size: u8, value: u64) -> Result<Effects, MmioError> {
        if !reg.allows(size) {
            return Err(MmioError::BadSize { offset, size });
        }
        let mut fx = Effects::NONE;
        match reg {
            Reg::Reserved | Reg::ReadOnly(_) | Reg::RdTyper(..) => {
                self.ignored_writes += 1;
                fx.ignored = true;
            }
            Reg::RazWi => {}
            Reg::DistCtlr => {
                let new = value as u32 & (CTLR_GRP0 | CTLR_GRP1);
                if new != self.ctlr {
                    // Kick every vCPU with something to load or to refresh; rare.
                    let before = self.kick_all_interested();
                    self.ctlr = new;
                    self.refresh_all();
                    fx = before.merge(self.kick_all_interested());
                }
            }
            Reg::Waker(vcpu) => {
                self.sleep[usize::from(vcpu)] = value as u32 & WAKER_PROCESSOR_SLEEP != 0;
                if self.recompute_any_target() {
                    // SPIs routed with IRM = 1 follow the first awake vCPU.
                    for slot in self.private_len()..self.irqs.len() {
                        if self.irqs[slot].route & super::IROUTER_IRM != 0 {
                            self.touch(slot, &mut fx);
                        }
                    }
                }
            }
            Reg::Bits(family, base) => self.write_bits(family, base, value as u32, &mut fx),
            Reg::Priority(slot) => {
                for i in 0..usize::from(size) {
                    let p = (value >> (8 * i)) as u8 & self.prio_mask;
                    self.update(slot + i, &mut fx, |irq| irq.priority = p);
                }
            }
            Reg::Config { base, sgi } => {
                // SGIs are always edge-triggered: GICR_ICFGR0 is read-only.
                if !sgi {
                    for i in 0..16 {
                        let edge = value & (0b10 << (2 * i)) != 0;
                        self.update(base + i, &mut fx, |irq| irq.edge = edge);
                    }
                }
            }
            Reg::Irouter(slot, high) => {
                // The upper word holds only Aff3, which is RES0 here (A3V = 0).
                if !high {
                    let route = value as u32 & IROUTER_MASK;
                    self.update(slot, &mut fx, |irq| irq.route = route);
                }
            }
        }
        Ok(fx)
    }

    /// Applies `f` to the interrupt in `slot`; if that changed it, kicks whoever must see it.
    fn update(&mut self, slot: usize, fx: &mut Effects, f: impl FnOnce(&mut Irq)) {
        let before = self.irqs[slot];
        f(&mut self.irqs[slot]);
        if self.irqs[slot] != before {
            self.refresh(slot);
            self.touch(slot, fx);
        }
    }

    fn read_bits(&self, family: Family, base: usize) -> u32 {
        let mut v = 0u32;
        for (i, irq) in self.irqs[base..base + 32].iter().enumerate() {
            let bit = match family {
                Family::Group => irq.group1,
                Family::SetEnable | Family::ClearEnable => irq.enabled,
                Family::SetPending | Family::ClearPending => irq.read_pending(),
                Family::SetActive | Family::ClearActive => irq.read_active(),
            };
            v |= u32::from(bit) << i;
        }
        v
    }

    fn write_bits(&mut self, family: Family, base: usize, value: u32, fx: &mut Effects) {
        for i in 0..32 {
            let bit = value & (1 << i) != 0;
            let slot = base + i;
            if family != Family::Group && !bit {
                continue;
            }
            if family == Family::SetActive && slot >= self.private_len() {
                let irq = &self.irqs[slot];
                if !irq.in_lr && !irq.active {
                    // An SPI made active by a register write is active on its current target.
                    let owner = self.target(slot).unwrap_or(0);
                    self.irqs[slot].owner = owner;
                }
            }
            self.update(slot, fx, |irq| match family {
                Family::Group => irq.group1 = bit,
                Family::SetEnable => irq.enabled = true,
                Family::ClearEnable => irq.enabled = false,
                Family::SetPending => irq.latch = true,
                Family::ClearPending => irq.clear_pending(),
                Family::SetActive => irq.active = true,
                Family::ClearActive => irq.clear_active(),
            });
        }
    }
}

/// A 64-bit register's value for an access of `size` bytes (4 or 8) to its lower or upper word.
fn split64(v: u64, size: u8, high: bool) -> u64 {
    match (size, high) {
        (8, _) => v,
        (_, false) => v & 0xFFFF_FFFF,
        (_, true) => v >> 32,
    }
}
