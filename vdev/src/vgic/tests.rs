//! Host tests of the vGIC model: `cargo test -p vdev vgic`.

use super::*;
use proptest::prelude::*;

const SGI_BASE: u64 = GICR_SGI_BASE;
const OPEN: CpuInterface = CpuInterface::OPEN;

fn model(vcpus: u16, spis: u16) -> Vgic {
    Vgic::new(VgicConfig::new(vcpus, spis)).unwrap()
}

/// A model the way Linux leaves it after boot: distributor on (ARE | G1A | G1), every
/// redistributor awake.
fn booted(vcpus: u16, spis: u16) -> Vgic {
    let mut v = model(vcpus, spis);
    v.dist_write(0, 4, 0x13).unwrap();
    for c in 0..vcpus {
        v.redist_write(rd(c, 0x14), 4, 0).unwrap();
    }
    v
}

fn rd(vcpu: u16, off: u64) -> u64 {
    u64::from(vcpu) * GICR_STRIDE + off
}

fn dread(v: &Vgic, off: u64) -> u64 {
    v.dist_read(off, 4).unwrap()
}

fn dwrite(v: &mut Vgic, off: u64, value: u64) -> Effects {
    v.dist_write(off, 4, value).unwrap()
}

fn rread(v: &Vgic, vcpu: u16, off: u64) -> u64 {
    v.redist_read(rd(vcpu, off), 4).unwrap()
}

fn rwrite(v: &mut Vgic, vcpu: u16, off: u64, value: u64) -> Effects {
    v.redist_write(rd(vcpu, off), 4, value).unwrap()
}

/// Enables SPI `intid` in the distributor.
fn enable_spi(v: &mut Vgic, intid: u32) {
    dwrite(v, 0x100 + u64::from(intid / 32) * 4, 1 << (intid % 32));
}

/// Enables SGI/PPI `intid` in `vcpu`'s redistributor.
fn enable_private(v: &mut Vgic, vcpu: u16, intid: u32) {
    rwrite(v, vcpu, SGI_BASE + 0x100, 1 << intid);
}

fn set_priority(v: &mut Vgic, intid: u32, prio: u8) {
    v.dist_write(0x400 + u64::from(intid), 1, u64::from(prio)).unwrap();
}

fn fill(v: &mut Vgic, vcpu: u16, free: usize) -> Vec<Lr> {
    let mut out = [Lr::INVALID; MAX_LRS];
    let n = v.fill_lrs(vcpu, free, &mut out);
    out[..n].to_vec()
}

fn with_state(lr: Lr, state: LrState) -> Lr {
    Lr { state, ..lr }
}

fn vcpus(set: VcpuSet) -> Vec<u16> {
    set.iter().collect()
}

// ----- reset values and identification -----

#[test]
fn vgic_reset_values() {
    let v = model(2, 64);
    assert_eq!(dread(&v, 0x0000), 0x50, "GICD_CTLR: ARE and DS set, groups off, RWP clear");
    assert_eq!(dread(&v, 0x0004), 2 | 9 << 19 | 1 << 26, "GICD_TYPER");
    assert_eq!(dread(&v, 0x0008), 0x4800_043B, "GICD_IIDR: Arm implementer code");
    assert_eq!(dread(&v, 0x000C), 0, "GICD_TYPER2");
    assert_eq!(dread(&v, 0xFFE8), 0x3B, "GICD_PIDR2: ArchRev 3");
    assert_eq!(dread(&v, 0xFFE8) >> 4 & 0xF, 3);
    assert_eq!([dread(&v, 0xFFF0), dread(&v, 0xFFF4), dread(&v, 0xFFF8), dread(&v, 0xFFFC)], [0x0D, 0xF0, 0x05, 0xB1]);
    for spi_reg in [0x84u64, 0x88] {
        assert_eq!(dread(&v, spi_reg), 0xFFFF_FFFF, "IGROUPR: Group 1 at reset");
        assert_eq!(dread(&v, spi_reg + 0x80), 0, "ISENABLER");
        assert_eq!(dread(&v, spi_reg + 0x180), 0, "ISPENDR");
        assert_eq!(dread(&v, spi_reg + 0x280), 0, "ISACTIVER");
    }
    assert_eq!(dread(&v, 0x420), 0, "IPRIORITYR");
    assert_eq!(dread(&v, 0xC08), 0, "ICFGR: SPIs level-sensitive");
    assert_eq!(v.dist_read(0x6000 + 8 * 32, 8).unwrap(), 0, "IROUTER: vCPU 0");
    for c in 0..2 {
        assert_eq!(rread(&v, c, 0x0000), 0, "GICR_CTLR");
        assert_eq!(rread(&v, c, 0x0004), 0x4800_043B, "GICR_IIDR");
        assert_eq!(rread(&v, c, 0x0014), 0b110, "GICR_WAKER: ProcessorSleep and ChildrenAsleep");
        assert_eq!(rread(&v, c, 0xFFE8), 0x3B, "GICR_PIDR2");
        assert_eq!(rread(&v, c, SGI_BASE + 0x080), 0xFFFF_FFFF, "GICR_IGROUPR0");
        assert_eq!(rread(&v, c, SGI_BASE + 0x100), 0, "GICR_ISENABLER0");
        assert_eq!(rread(&v, c, SGI_BASE + 0xC00), 0xAAAA_AAAA, "GICR_ICFGR0: SGIs edge");
        assert_eq!(rread(&v, c, SGI_BASE + 0xC04), 0, "GICR_ICFGR1: PPIs level");
    }
    assert_eq!(v.gicr_typer(0), 0, "vCPU 0: affinity 0, processor 0, not last");
    assert_eq!(v.redist_read(rd(1, 0x8), 8).unwrap(), 1 << 32 | 1 << 8 | 1 << 4, "vCPU 1: Aff0 1, number 1, Last");
    assert_eq!(rread(&v, 1, 0x8), 1 << 8 | 1 << 4);
    assert_eq!(rread(&v, 1, 0xC), 1, "upper word: affinity");
    assert!(!v.has_pending(0, OPEN));
}

#[test]
fn vgic_gicd_typer_for_spi_counts() {
    for spis in [0u16, 32, 64, 128, 960] {
        let v = model(1, spis);
        let typer = dread(&v, 4) as u32;
        let it_lines = typer & 0x1F;
        assert_eq!(32 * (it_lines + 1) - 1, 31 + u32::from(spis), "highest INTID for {spis} SPIs");
        assert_eq!(typer >> 19 & 0x1F, 9, "IDbits: 10 bits");
        assert_eq!(typer & (1 << 10), 0, "SecurityExtn");
        assert_eq!(typer & (1 << 16 | 1 << 17), 0, "MBIS, LPIS");
        assert_eq!(typer >> 5 & 7, 0, "CPUNumber");
    }
}

#[test]
fn vgic_bad_configs() {
    assert_eq!(Vgic::new(VgicConfig::new(0, 32)).unwrap_err(), VgicError::BadVcpuCount(0));
    assert_eq!(Vgic::new(VgicConfig::new(65, 32)).unwrap_err(), VgicError::BadVcpuCount(65));
    assert_eq!(Vgic::new(VgicConfig::new(1, 33)).unwrap_err(), VgicError::BadSpiCount(33));
    assert_eq!(Vgic::new(VgicConfig::new(1, 992)).unwrap_err(), VgicError::BadSpiCount(992));
    let bad_prio = VgicConfig { priority_bits: 9, ..VgicConfig::new(1, 32) };
    assert_eq!(Vgic::new(bad_prio).unwrap_err(), VgicError::BadPriorityBits(9));
    assert!(Vgic::new(VgicConfig::new(64, 960)).is_ok());
}

#[test]
fn vgic_ctlr_enables_and_ro_bits() {
    let mut v = model(1, 32);
    dwrite(&mut v, 0, 0x13);
    assert_eq!(dread(&v, 0), 0x53, "Grp0 | Grp1 | ARE | DS");
    dwrite(&mut v, 0, 0x8000_0002);
    assert_eq!(dread(&v, 0), 0x52, "RWP never set; ARE/DS stay set");
    dwrite(&mut v, 0, 0);
    assert_eq!(dread(&v, 0), 0x50);
}

// ----- set/clear register semantics -----

#[test]
fn vgic_enable_set_clear_semantics() {
    let mut v = model(2, 64);
    dwrite(&mut v, 0x104, 0b1011);
    assert_eq!(dread(&v, 0x104), 0b1011, "ISENABLER1 reads the enables");
    assert_eq!(dread(&v, 0x184), 0b1011, "ICENABLER1 reads the same");
    dwrite(&mut v, 0x104, 0b0100);
    assert_eq!(dread(&v, 0x104), 0b1111, "writing 0 bits changes nothing");
    dwrite(&mut v, 0x184, 0b0010);
    assert_eq!(dread(&v, 0x104), 0b1101, "write-1-to-clear");
    dwrite(&mut v, 0x184, 0);
    assert_eq!(dread(&v, 0x104), 0b1101);
    // The redistributor's bank is per vCPU.
    rwrite(&mut v, 1, SGI_BASE + 0x100, 1 << 27 | 1 << 1);
    assert_eq!(rread(&v, 1, SGI_BASE + 0x100), 1 << 27 | 1 << 1);
    assert_eq!(rread(&v, 0, SGI_BASE + 0x100), 0);
    rwrite(&mut v, 1, SGI_BASE + 0x180, 1 << 1);
    assert_eq!(rread(&v, 1, SGI_BASE + 0x180), 1 << 27);
}

#[test]
fn vgic_pending_and_active_set_clear() {
    let mut v = model(1, 32);
    dwrite(&mut v, 0x204, 0b11);
    assert_eq!(dread(&v, 0x204), 0b11, "ISPENDR");
    assert_eq!(dread(&v, 0x284), 0b11, "ICPENDR reads the same");
    dwrite(&mut v, 0x284, 0b01);
    assert_eq!(dread(&v, 0x204), 0b10);
    dwrite(&mut v, 0x304, 1 << 5);
    assert_eq!(dread(&v, 0x384), 1 << 5, "ISACTIVER/ICACTIVER");
    dwrite(&mut v, 0x384, 1 << 5);
    assert_eq!(dread(&v, 0x304), 0);
    // A level line holds a level interrupt pending; ICPENDR clears only the latch.
    v.set_level(40, None, true);
    assert_eq!(dread(&v, 0x204) & 1 << 8, 1 << 8);
    dwrite(&mut v, 0x284, 1 << 8);
    assert_eq!(dread(&v, 0x204) & 1 << 8, 1 << 8, "still high, still pending");
    v.set_level(40, None, false);
    assert_eq!(dread(&v, 0x204) & 1 << 8, 0);
    // Groups are plain read/write.
    dwrite(&mut v, 0x84, 0xFFFF_FFF0);
    assert_eq!(dread(&v, 0x84), 0xFFFF_FFF0);
}

#[test]
fn vgic_priority_byte_and_word_access() {
    let mut v = model(2, 64);
    v.dist_write(0x400 + 33, 1, 0xFF).unwrap();
    assert_eq!(v.dist_read(0x400 + 33, 1).unwrap(), 0xF8, "5 priority bits implemented");
    assert_eq!(dread(&v, 0x420), 0xF800, "byte lane 1 of the word for INTIDs 32..36");
    dwrite(&mut v, 0x424, 0x8070_6050);
    assert_eq!(
        [0x424u64, 0x425, 0x426, 0x427].map(|o| v.dist_read(o, 1).unwrap()),
        [0x50, 0x60, 0x70, 0x80],
        "word write sets four interrupts"
    );
    // Redistributor priorities are per vCPU.
    v.redist_write(rd(1, SGI_BASE + 0x400 + 27), 1, 0xA0).unwrap();
    assert_eq!(v.redist_read(rd(1, SGI_BASE + 0x400 + 27), 1).unwrap(), 0xA0);
    assert_eq!(v.redist_read(rd(0, SGI_BASE + 0x400 + 27), 1).unwrap(), 0);
    assert_eq!(rread(&v, 1, SGI_BASE + 0x418), 0xA0 << 24);
    // Eight bits when configured so.
    let mut v8 = Vgic::new(VgicConfig { priority_bits: 8, ..VgicConfig::new(1, 32) }).unwrap();
    v8.dist_write(0x400 + 32, 1, 0x0F).unwrap();
    assert_eq!(v8.dist_read(0x400 + 32, 1).unwrap(), 0x0F);
}

#[test]
fn vgic_icfgr_configuration() {
    let mut v = model(1, 32);
    dwrite(&mut v, 0xC08, 0xFFFF_FFFF);
    assert_eq!(dread(&v, 0xC08), 0xAAAA_AAAA, "Int_config bits only; bit 2n is RES0");
    rwrite(&mut v, 0, SGI_BASE + 0xC00, 0);
    assert_eq!(rread(&v, 0, SGI_BASE + 0xC00), 0xAAAA_AAAA, "SGIs stay edge");
    rwrite(&mut v, 0, SGI_BASE + 0xC04, 0b10 << (2 * 11));
    assert_eq!(rread(&v, 0, SGI_BASE + 0xC04), 0b10 << 22, "PPI 27 edge");
}

// ----- access sizes and reserved space -----

#[test]
fn vgic_wrong_sizes_refused() {
    let mut v = model(2, 64);
    let bad = |offset, size| MmioError::BadSize { offset, size };
    assert_eq!(v.dist_read(0x0, 1), Err(bad(0x0, 1)), "GICD_CTLR is word-only");
    assert_eq!(v.dist_read(0x0, 8), Err(bad(0x0, 8)));
    assert_eq!(v.dist_write(0x104, 2, 1), Err(bad(0x104, 2)), "ISENABLER is word-only");
    assert_eq!(v.dist_write(0x108, 1, 1), Err(bad(0x108, 1)));
    assert_eq!(v.dist_write(0x420, 2, 1), Err(bad(0x420, 2)), "IPRIORITYR: bytes or words");
    assert_eq!(v.dist_write(0x420, 8, 1), Err(bad(0x420, 8)));
    assert_eq!(v.dist_read(0x6100, 2), Err(bad(0x6100, 2)), "IROUTER: 32 or 64 bits");
    assert_eq!(v.redist_read(0x8, 2), Err(bad(0x8, 2)), "GICR_TYPER");
    assert_eq!(v.redist_read(0x14, 2), Err(bad(0x14, 2)), "GICR_WAKER");
    assert_eq!(v.redist_read(0x10, 8), Err(bad(0x10, 8)), "no 64-bit access to a pair of 32-bit registers");
    assert_eq!(v.redist_write(rd(1, SGI_BASE + 0x100), 1, 1), Err(bad(rd(1, SGI_BASE + 0x100), 1)));
    assert_eq!(v.dist_read(0x0, 3), Err(MmioError::Unaligned { offset: 0, size: 3 }));
    assert_eq!(v.dist_read(0x102, 4), Err(MmioError::Unaligned { offset: 0x102, size: 4 }));
    assert_eq!(v.dist_read(0x6104, 8), Err(MmioError::Unaligned { offset: 0x6104, size: 8 }));
    // Refused accesses change nothing.
    assert_eq!(dread(&v, 0x104), 0);
    assert_eq!(v.ignored_accesses(), (0, 0));
}

#[test]
fn vgic_reserved_space_is_raz_wi_and_reported() {
    let mut v = model(2, 64);
    // Reserved or unimplemented: RAZ/WI, reported.
    for (off, size) in [(0x0F00u64, 4u8), (0x0040, 8), (0x0100, 4), (0x0400, 1), (0x0810, 4), (0x010C, 4), (0x6000, 8)]
    {
        assert_eq!(v.dist_read(off, size), Ok(0), "offset {off:#x}");
        let fx = v.dist_write(off, size, u64::MAX).unwrap();
        assert!(fx.ignored, "offset {off:#x}");
        assert_eq!(v.dist_read(off, size), Ok(0), "still zero at {off:#x}");
    }
    assert_eq!(v.ignored_accesses(), (14, 7));
    // Writes to read-only registers are reported too.
    assert!(dwrite(&mut v, 0x4, 0).ignored, "GICD_TYPER");
    assert!(v.redist_write(0x8, 8, 0).unwrap().ignored, "GICR_TYPER");
    assert_eq!(v.gicr_typer(0), 0);
    // Architected registers implemented as zero are not.
    for off in [0x10u64, 0xD04, 0xE08] {
        assert_eq!(dread(&v, off), 0);
        assert!(!dwrite(&mut v, off, u64::MAX).ignored, "offset {off:#x}");
    }
    assert!(!rwrite(&mut v, 0, 0x0, 1).ignored, "GICR_CTLR: EnableLPIs RES0");
    assert_eq!(rread(&v, 0, 0x0), 0);
    assert!(!rwrite(&mut v, 0, SGI_BASE + 0xD00, u64::MAX).ignored, "GICR_IGRPMODR0");
    // Past the last redistributor, and in the E-PPI ranges.
    assert_eq!(v.redist_read(rd(2, 0x14), 4), Ok(0));
    assert!(v.redist_write(rd(2, 0x14), 4, 0).unwrap().ignored);
    assert!(rwrite(&mut v, 0, SGI_BASE + 0x104, 1).ignored, "GICR_ISENABLER<1>E");
    assert_eq!(rread(&v, 0, 0x14), 0b110, "vCPU 0's WAKER untouched");
}

// ----- routing -----

#[test]
fn vgic_irouter_routing() {
    let mut v = booted(4, 64);
    enable_spi(&mut v, 40);
    v.dist_write(0x6000 + 8 * 40, 8, 2).unwrap();
    assert_eq!(v.dist_read(0x6000 + 8 * 40, 8).unwrap(), 2);
    let fx = v.inject_edge(40, None);
    assert_eq!(vcpus(fx.kick), [2]);
    assert!(fill(&mut v, 0, 4).is_empty());
    assert!(v.has_pending(2, OPEN));
    let lrs = fill(&mut v, 2, 4);
    assert_eq!(lrs.len(), 1);
    assert_eq!((lrs[0].intid, lrs[0].state), (40, LrState::Pending));
    assert!(lrs[0].eoi_maintenance, "SPIs reset level-sensitive: EOI maintenance to re-sample");

    // 32-bit halves: the upper word (Aff3) is RAZ/WI.
    dwrite(&mut v, 0x6000 + 8 * 41, 0x0000_0003);
    dwrite(&mut v, 0x6000 + 8 * 41 + 4, 0xFF);
    assert_eq!(v.dist_read(0x6000 + 8 * 41, 8).unwrap(), 3);
    assert_eq!(dread(&v, 0x6000 + 8 * 41 + 4), 0);
    // Reserved bits are dropped.
    v.dist_write(0x6000 + 8 * 42, 8, u64::MAX).unwrap();
    assert_eq!(v.dist_read(0x6000 + 8 * 42, 8).unwrap(), 0x80FF_FFFF);

    // Aff1 != 0 names no vCPU of ours: pending, but nobody gets it.
    enable_spi(&mut v, 43);
    dwrite(&mut v, 0x6000 + 8 * 43, 0x100);
    assert!(v.inject_edge(43, None).kick.is_empty());
    for c in 0..4 {
        assert!(fill(&mut v, c, 4).iter().all(|lr| lr.intid != 43));
    }
    // Aff0 beyond the last vCPU, likewise.
    dwrite(&mut v, 0x6000 + 8 * 43, 9);
    assert!(v.inject_edge(43, None).kick.is_empty());
    // Routed back: delivered.
    let fx = dwrite(&mut v, 0x6000 + 8 * 43, 1);
    assert_eq!(vcpus(fx.kick), [1], "rerouting a pending SPI kicks its new target");
    assert_eq!(fill(&mut v, 1, 4)[0].intid, 43);
}

#[test]
fn vgic_irm_routes_to_first_awake_vcpu() {
    let mut v = model(3, 32);
    dwrite(&mut v, 0, 0x2);
    enable_spi(&mut v, 32);
    dwrite(&mut v, 0x6000 + 8 * 32, 1 << 31);
    // Nobody awake: vCPU 0.
    assert_eq!(vcpus(v.inject_edge(32, None).kick), [0]);
    // vCPU 1 wakes first: the pending SPI follows it.
    let fx = rwrite(&mut v, 1, 0x14, 0);
    assert_eq!(vcpus(fx.kick), [1]);
    assert!(!v.has_pending(0, OPEN));
    assert!(v.has_pending(1, OPEN));
    rwrite(&mut v, 0, 0x14, 0);
    assert!(v.has_pending(0, OPEN), "vCPU 0 awake: lowest awake wins");
}

#[test]
fn vgic_active_spi_stays_with_its_vcpu() {
    let mut v = booted(2, 32);
    enable_spi(&mut v, 33);
    v.inject_edge(33, None);
    let lr = fill(&mut v, 0, 4)[0];
    // The guest acknowledged it on vCPU 0; then moves it to vCPU 1.
    v.sync_lr(0, with_state(lr, LrState::Active));
    dwrite(&mut v, 0x6000 + 8 * 33, 1);
    assert!(fill(&mut v, 1, 4).is_empty(), "still active on vCPU 0");
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!(lr.state, LrState::Active);
    // A new edge meanwhile; the EOI on vCPU 0 ends it there, the next one goes to vCPU 1.
    v.inject_edge(33, None);
    let fx = v.sync_lr(0, with_state(lr, LrState::Invalid));
    assert_eq!(vcpus(fx.kick), [1]);
    assert_eq!(fill(&mut v, 1, 4)[0].intid, 33);
}

// ----- redistributor power handshake -----

#[test]
fn vgic_waker_handshake() {
    let mut v = model(2, 32);
    assert_eq!(rread(&v, 1, 0x14), 0b110);
    // Linux's gic_enable_redist(true): clear ProcessorSleep, poll until ChildrenAsleep is 0.
    let w = rread(&v, 1, 0x14) & !0b10;
    rwrite(&mut v, 1, 0x14, w);
    assert_eq!(rread(&v, 1, 0x14) & 0b100, 0);
    assert_eq!(rread(&v, 0, 0x14), 0b110, "per redistributor");
    // gic_enable_redist(false) (CPU_PM_ENTER with DS = 1): set it, it reads back, children sleep.
    rwrite(&mut v, 1, 0x14, 0b10);
    assert_eq!(rread(&v, 1, 0x14), 0b110);
    // ChildrenAsleep and the IMPLEMENTATION DEFINED bit 0 are not writable.
    rwrite(&mut v, 1, 0x14, 0b101);
    assert_eq!(rread(&v, 1, 0x14), 0);
}

// ----- SGIs -----

#[test]
fn vgic_sgi_target_list() {
    let mut v = booted(4, 32);
    for c in 0..4 {
        enable_private(&mut v, c, 3);
    }
    // SGI 3 to vCPUs 1 and 2 (Aff3.Aff2.Aff1 = 0).
    let fx = v.send_sgi(0, 3 << 24 | 0b0110);
    assert_eq!(vcpus(fx.kick), [1, 2]);
    for (c, want) in [(0, false), (1, true), (2, true), (3, false)] {
        assert_eq!(rread(&v, c, SGI_BASE + 0x200) & 1 << 3 != 0, want, "vCPU {c}");
        assert_eq!(v.has_pending(c, OPEN), want);
    }
    let lr = fill(&mut v, 1, 4)[0];
    assert_eq!((lr.intid, lr.state, lr.group1), (3, LrState::Pending, true));
    // A non-zero Aff1 reaches nobody; a target list bit past the last vCPU is dropped.
    assert!(v.send_sgi(0, 5 << 24 | 1 << 16 | 0xF).kick.is_empty());
    assert_eq!(rread(&v, 0, SGI_BASE + 0x200) & 1 << 5, 0);
    let fx = v.send_sgi(0, 3 << 24 | 0xFFF0 | 0b1000);
    assert_eq!(vcpus(fx.kick), [3]);
    // Sending to itself is allowed.
    assert_eq!(vcpus(v.send_sgi(2, 3 << 24 | 0b100).kick), [2]);
    // A disabled SGI still becomes pending, but nobody is kicked.
    assert!(v.send_sgi(0, 7 << 24 | 0b10).kick.is_empty());
    assert_eq!(rread(&v, 1, SGI_BASE + 0x200) & 1 << 7, 1 << 7);
    assert!(v.send_sgi(9, 3 << 24 | 1).ignored, "unknown sender");
}

#[test]
fn vgic_sgi_all_but_self() {
    let mut v = booted(4, 32);
    for c in 0..4 {
        enable_private(&mut v, c, 1);
    }
    let fx = v.send_sgi(2, 1 << 40 | 1 << 24 | 0b1);
    assert_eq!(vcpus(fx.kick), [0, 1, 3], "IRM: everyone but the sender; TargetList ignored");
    assert!(!v.has_pending(2, OPEN));
}

#[test]
fn vgic_sgi_range_selector() {
    let mut v = booted(20, 32);
    enable_private(&mut v, 17, 0);
    // RS = 1: TargetList bit 1 is Aff0 17.
    let fx = v.send_sgi(0, 1 << 44 | 0b10);
    assert_eq!(vcpus(fx.kick), [17]);
    assert!(v.has_pending(17, OPEN));
    assert!(!v.has_pending(1, OPEN));
}

#[test]
fn vgic_sgi_group0_register() {
    let mut v = booted(2, 32);
    enable_private(&mut v, 1, 2);
    enable_private(&mut v, 1, 4);
    rwrite(&mut v, 1, SGI_BASE + 0x80, !(1 << 4)); // SGI 4 in Group 0
    assert!(v.send_sgi_group0(0, 2 << 24 | 0b10).kick.is_empty(), "SGI 2 is Group 1");
    assert_eq!(vcpus(v.send_sgi_group0(0, 4 << 24 | 0b10).kick), [1]);
    let lr = fill(&mut v, 1, 4)[0];
    assert_eq!((lr.intid, lr.group1), (4, false), "Group 0: vFIQ");
}

// ----- the virtual timer: a level PPI -----

#[test]
fn vgic_timer_level_ppi() {
    const TIMER: u32 = 27;
    let mut v = booted(2, 32);
    enable_private(&mut v, 1, TIMER);
    assert!(v.set_level(TIMER, None, true).ignored, "a PPI needs its vCPU");
    assert!(v.set_level(TIMER, Some(2), true).ignored, "no such vCPU");
    let fx = v.set_level(TIMER, Some(1), true);
    assert_eq!(vcpus(fx.kick), [1]);
    assert!(!v.has_pending(0, OPEN), "private to vCPU 1");
    assert!(v.set_level(TIMER, Some(1), true).kick.is_empty(), "still high: nothing new");

    let lr = fill(&mut v, 1, 4)[0];
    assert_eq!((lr.intid, lr.state, lr.hw), (TIMER, LrState::Pending, None));
    assert!(lr.eoi_maintenance, "level: re-sampled at EOI");
    assert!(fill(&mut v, 1, 4).is_empty(), "never handed out twice");

    // The guest acknowledged it; the line is still high: only Active goes back, never
    // pending-and-active for a level interrupt.
    v.sync_lr(1, with_state(lr, LrState::Active));
    assert!(!v.has_pending(1, OPEN));
    let lr = fill(&mut v, 1, 4)[0];
    assert_eq!(lr.state, LrState::Active);
    // EOI while the line is still high: pending again.
    v.sync_lr(1, with_state(lr, LrState::Invalid));
    assert!(v.has_pending(1, OPEN));
    let lr = fill(&mut v, 1, 4)[0];
    assert_eq!(lr.state, LrState::Pending);
    v.sync_lr(1, with_state(lr, LrState::Active));
    // The handler reprograms the timer: the line drops, then the EOI.
    assert!(v.set_level(TIMER, Some(1), false).kick.is_empty());
    let lr = fill(&mut v, 1, 4)[0];
    v.sync_lr(1, with_state(lr, LrState::Invalid));
    assert!(!v.has_pending(1, OPEN));
    assert!(fill(&mut v, 1, 4).is_empty());
    assert_eq!(rread(&v, 1, SGI_BASE + 0x200) & 1 << TIMER, 0);
    assert_eq!(rread(&v, 1, SGI_BASE + 0x300) & 1 << TIMER, 0);

    // The line drops before the guest took it: gone at the next sync.
    v.set_level(TIMER, Some(1), true);
    let lr = fill(&mut v, 1, 4)[0];
    v.set_level(TIMER, Some(1), false);
    v.sync_lr(1, lr);
    assert!(!v.has_pending(1, OPEN));
    assert!(fill(&mut v, 1, 4).is_empty());
}

#[test]
fn vgic_level_soft_pending_until_acknowledged() {
    let mut v = booted(1, 32);
    enable_spi(&mut v, 35);
    dwrite(&mut v, 0x204, 1 << 3); // ISPENDR: soft-pend level SPI 35, line low
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!((lr.intid, lr.state), (35, LrState::Pending));
    v.sync_lr(0, lr);
    assert!(v.has_pending(0, OPEN), "not acknowledged: still pending");
    let lr = fill(&mut v, 0, 4)[0];
    v.sync_lr(0, with_state(lr, LrState::Active));
    assert!(!v.has_pending(0, OPEN), "the acknowledge consumed the soft pending state");
    let lr = fill(&mut v, 0, 4)[0];
    v.sync_lr(0, with_state(lr, LrState::Invalid));
    assert!(!v.has_pending(0, OPEN));
    assert_eq!(dread(&v, 0x304), 0);
}

// ----- edge SPIs -----

#[test]
fn vgic_edge_spi() {
    let mut v = booted(2, 32);
    dwrite(&mut v, 0xC08, 0b10 << (2 * 4)); // SPI 36 edge
    enable_spi(&mut v, 36);
    assert!(v.set_level(36, None, true).kick.contains(0), "rising edge latches");
    assert!(v.set_level(36, None, true).kick.is_empty(), "no new edge");
    v.set_level(36, None, false);
    assert!(v.has_pending(0, OPEN), "the latch outlives the line");
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!((lr.intid, lr.state, lr.eoi_maintenance), (36, LrState::Pending, false));
    // The guest acknowledged; a second edge arrives meanwhile: kick so it is not stuck.
    assert!(v.inject_edge(36, None).kick.contains(0));
    assert_eq!(dread(&v, 0x204) & 1 << 4, 1 << 4, "ISPENDR shows it");
    v.sync_lr(0, with_state(lr, LrState::Active));
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!(lr.state, LrState::PendingActive, "edge: pending and active");
    // The guest EOIs the first; the LR then holds the pending second one.
    v.sync_lr(0, with_state(lr, LrState::Pending));
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!(lr.state, LrState::Pending);
    v.sync_lr(0, with_state(lr, LrState::Invalid));
    assert!(!v.has_pending(0, OPEN));
    assert_eq!(dread(&v, 0x204) | dread(&v, 0x304), 0);
}

#[test]
fn vgic_disabled_or_group_off_not_delivered() {
    let mut v = model(1, 32);
    enable_spi(&mut v, 32);
    assert!(v.inject_edge(32, None).kick.is_empty(), "distributor off");
    assert!(!v.has_pending(0, OPEN));
    assert!(fill(&mut v, 0, 4).is_empty());
    let fx = dwrite(&mut v, 0, 0x2);
    assert_eq!(vcpus(fx.kick), [0], "enabling the group makes it deliverable");
    assert!(v.has_pending(0, OPEN));
    dwrite(&mut v, 0x180 + 4, 1); // ICENABLER
    assert!(!v.has_pending(0, OPEN));
    assert_eq!(vcpus(dwrite(&mut v, 0x100 + 4, 1).kick), [0], "re-enabled: kick");
    // Group 0 interrupts need EnableGrp0.
    dwrite(&mut v, 0x84, 0);
    assert!(!v.has_pending(0, OPEN));
    dwrite(&mut v, 0, 0x1);
    assert!(v.has_pending(0, OPEN));
    // An active interrupt is loaded even when disabled, so that its EOI finds it.
    dwrite(&mut v, 0, 0);
    dwrite(&mut v, 0x304, 1 << 1);
    let lrs = fill(&mut v, 0, 4);
    assert_eq!(lrs.len(), 1);
    assert_eq!((lrs[0].intid, lrs[0].state), (33, LrState::Active));
}

// ----- list registers -----

#[test]
fn vgic_fill_lrs_priority_order_never_twice() {
    let mut v = booted(1, 64);
    let prios = [(40u32, 0xA0u8), (41, 0x20), (42, 0x80), (43, 0x20), (50, 0x00), (60, 0xF0)];
    for (intid, prio) in prios {
        enable_spi(&mut v, intid);
        set_priority(&mut v, intid, prio);
        v.inject_edge(intid, None);
    }
    let first = fill(&mut v, 0, 2);
    assert_eq!(first.iter().map(|lr| lr.intid).collect::<Vec<_>>(), [50, 41]);
    assert_eq!(first[1].priority, 0x20);
    let second = fill(&mut v, 0, 3);
    assert_eq!(second.iter().map(|lr| lr.intid).collect::<Vec<_>>(), [43, 42, 40], "ties by INTID");
    let third = fill(&mut v, 0, 4);
    assert_eq!(third.iter().map(|lr| lr.intid).collect::<Vec<_>>(), [60]);
    assert!(fill(&mut v, 0, 4).is_empty());
    // `out` shorter than `free` bounds it.
    let mut v = booted(1, 64);
    for intid in 32..40 {
        enable_spi(&mut v, intid);
        v.inject_edge(intid, None);
    }
    let mut out = [Lr::INVALID; 2];
    assert_eq!(v.fill_lrs(0, 8, &mut out), 2);
    assert_eq!(v.fill_lrs(0, 0, &mut [Lr::INVALID; 4]), 0);
    assert_eq!(v.fill_lrs(5, 4, &mut [Lr::INVALID; 4]), 0, "unknown vCPU");
}

#[test]
fn vgic_fill_lrs_active_first() {
    let mut v = booted(1, 32);
    for intid in [32u32, 33] {
        enable_spi(&mut v, intid);
    }
    set_priority(&mut v, 32, 0x10);
    set_priority(&mut v, 33, 0xC0);
    v.inject_edge(33, None);
    let lr = fill(&mut v, 0, 4)[0];
    v.sync_lr(0, with_state(lr, LrState::Active)); // the guest is handling 33
    v.inject_edge(32, None);
    let lrs = fill(&mut v, 0, 1);
    assert_eq!((lrs[0].intid, lrs[0].state), (33, LrState::Active), "the active one must be in an LR");
    assert!(v.overflow(0, 0));
    assert_eq!(fill(&mut v, 0, 1)[0].intid, 32);
}

#[test]
fn vgic_sync_lr_transitions() {
    let mut v = booted(2, 32);
    enable_private(&mut v, 0, 1);
    v.send_sgi(1, 1 << 24 | 1);
    let lr = fill(&mut v, 0, 4)[0];
    // Wrong vCPU, unknown INTID, or not handed out: ignored.
    assert!(v.sync_lr(1, lr).ignored);
    assert!(v.sync_lr(0, Lr { intid: 2000, ..lr }).ignored);
    assert!(v.sync_lr(0, Lr { intid: 2, ..lr }).ignored);
    // Pending -> still pending.
    assert!(!v.sync_lr(0, lr).ignored);
    assert!(v.sync_lr(0, lr).ignored, "given back once");
    assert_eq!(rread(&v, 0, SGI_BASE + 0x200), 1 << 1);
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!(lr.state, LrState::Pending);
    // Active -> active, not pending.
    v.sync_lr(0, with_state(lr, LrState::Active));
    assert_eq!(rread(&v, 0, SGI_BASE + 0x200), 0);
    assert_eq!(rread(&v, 0, SGI_BASE + 0x300), 1 << 1);
    let lr = fill(&mut v, 0, 4)[0];
    // Invalid -> EOIed: inactive.
    v.sync_lr(0, with_state(lr, LrState::Invalid));
    assert_eq!(rread(&v, 0, SGI_BASE + 0x300), 0);
    assert!(fill(&mut v, 0, 4).is_empty());
    // ICPENDR while the SGI sits pending in a running vCPU's LR: the owner is kicked and the
    // LR's pending state is dropped at sync.
    v.send_sgi(1, 1 << 24 | 1);
    let lr = fill(&mut v, 0, 4)[0];
    assert_eq!(rread(&v, 0, SGI_BASE + 0x200), 1 << 1, "reads include the LR");
    let fx = rwrite(&mut v, 0, SGI_BASE + 0x280, 1 << 1);
    assert_eq!(vcpus(fx.kick), [0]);
    assert_eq!(rread(&v, 0, SGI_BASE + 0x200), 0);
    v.sync_lr(0, lr);
    assert!(!v.has_pending(0, OPEN));
    assert!(fill(&mut v, 0, 4).is_empty());
    // ICACTIVER while it is active in an LR: inactive after sync.
    v.send_sgi(1, 1 << 24 | 1);
    let lr = fill(&mut v, 0, 4)[0];
    v.sync_lr(0, with_state(lr, LrState::Active));
    let lr = fill(&mut v, 0, 4)[0];
    rwrite(&mut v, 0, SGI_BASE + 0x380, 1 << 1);
    v.sync_lr(0, lr);
    assert_eq!(rread(&v, 0, SGI_BASE + 0x300), 0);
    assert!(fill(&mut v, 0, 4).is_empty());
}

#[test]
fn vgic_overflow_with_four_lrs() {
    let mut v = booted(1, 32);
    for intid in 32..38 {
        enable_spi(&mut v, intid);
        v.inject_edge(intid, None);
    }
    assert!(v.overflow(0, 4), "six to deliver, four LRs (QEMU)");
    assert!(!v.overflow(0, 6));
    let lrs = fill(&mut v, 0, 4);
    assert_eq!(lrs.len(), 4);
    assert!(v.overflow(0, 0), "two left behind: ask for an underflow maintenance interrupt");
    assert!(v.overflow(0, 1));
    assert!(!v.overflow(0, 2));
    // The guest took and EOIed all four; the refill brings the rest.
    for lr in lrs {
        v.sync_lr(0, with_state(lr, LrState::Invalid));
    }
    let rest = fill(&mut v, 0, 4);
    assert_eq!(rest.iter().map(|lr| lr.intid).collect::<Vec<_>>(), [36, 37]);
    assert!(!v.overflow(0, 0));
    assert!(!v.overflow(7, 0));
}

#[test]
fn vgic_set_level_ignores_bad_targets() {
    let mut v = booted(1, 32);
    assert!(v.set_level(3, Some(0), true).ignored, "SGIs have no line");
    assert!(v.set_level(64, None, true).ignored, "past the last SPI");
    assert!(v.inject_edge(1020, None).ignored);
    assert!(!v.set_level(32, Some(7), true).ignored, "SPIs ignore the vCPU argument");
}

// ----- the guest's CPU interface and WFI -----

/// `ICH_VMCR_EL2` with priority mask `pmr` and the group enables.
fn vmcr(pmr: u8, eng0: bool, eng1: bool) -> u64 {
    u64::from(pmr) << 24 | u64::from(eng1) << 1 | u64::from(eng0)
}

/// Linux after `gic_cpu_sys_reg_init`: PMR 0xF0 (`DEFAULT_PMR_VALUE`), Group 1 enabled,
/// nothing active; 5 preemption bits (one APR per group).
fn linux_cpu_if() -> CpuInterface {
    CpuInterface::from_registers(vmcr(0xF0, false, true), &[0], &[0])
}

#[test]
fn vgic_cpu_interface_from_registers() {
    let c = CpuInterface::from_registers(vmcr(0xF0, false, true), &[0], &[0]);
    assert_eq!(
        c,
        CpuInterface { priority_mask: 0xF0, group0_enabled: false, group1_enabled: true, running_priority: None }
    );
    // The reset VMCR masks everything.
    let c = CpuInterface::from_registers(0, &[0], &[0]);
    assert!(!c.signals(true, 0) && !c.signals(false, 0));
    // 5 preemption bits: AP1R0 bit 20 is group priority 20 << 3 = 0xA0; the lowest set bit of
    // either group wins.
    let c = CpuInterface::from_registers(vmcr(0xFF, true, true), &[1 << 25], &[1 << 20 | 1 << 30]);
    assert_eq!(c.running_priority, Some(0xA0));
    // 6 bits: two registers, bit 33 is 33 << 2; 7 bits: four, bit 100 is 100 << 1.
    let c = CpuInterface::from_registers(0, &[0, 0], &[0, 1 << 1]);
    assert_eq!(c.running_priority, Some(0x84));
    let c = CpuInterface::from_registers(0, &[0, 0, 0, 0], &[0, 0, 0, 1 << 4]);
    assert_eq!(c.running_priority, Some(200));
    // The upper words of the 64-bit registers are RES0 and not read.
    let c = CpuInterface::from_registers(0, &[1 << 40], &[0]);
    assert_eq!(c.running_priority, None);
}

#[test]
fn vgic_has_pending_respects_the_guest_mask() {
    let mut v = booted(1, 32);
    enable_spi(&mut v, 40);
    set_priority(&mut v, 40, 0xA0);
    v.inject_edge(40, None);
    assert!(v.has_pending(0, OPEN));
    assert!(v.has_pending(0, linux_cpu_if()));
    // The mask must be numerically above the priority: equal masks it.
    for (pmr, want) in [(0xF8, true), (0xA8, true), (0xA0, false), (0x80, false), (0x00, false)] {
        let c = CpuInterface::from_registers(vmcr(pmr, false, true), &[0], &[0]);
        assert_eq!(v.has_pending(0, c), want, "PMR {pmr:#x}");
    }
    // The guest's Group 1 enable (ICC_IGRPEN1_EL1) off: not signalled.
    let c = CpuInterface::from_registers(vmcr(0xF0, true, false), &[0], &[0]);
    assert!(!v.has_pending(0, c));
    // An interrupt of the same or a lower group priority is active (the guest is in its
    // handler): it does not preempt; a higher one does.
    let busy = CpuInterface::from_registers(vmcr(0xF0, false, true), &[0], &[1 << (0xA0 >> 3)]);
    assert!(!v.has_pending(0, busy));
    enable_spi(&mut v, 41);
    set_priority(&mut v, 41, 0x80);
    v.inject_edge(41, None);
    assert!(v.has_pending(0, busy), "0x80 preempts a running 0xA0");
    // Group 0 needs VENG0.
    let mut v = booted(1, 32);
    enable_spi(&mut v, 33);
    dwrite(&mut v, 0x84, !(1 << 1));
    v.inject_edge(33, None);
    assert!(!v.has_pending(0, linux_cpu_if()));
    assert!(v.has_pending(0, CpuInterface::from_registers(vmcr(0xF0, true, false), &[0], &[0])));
    // The mask decides the wake-up only: the interrupt is still handed out, for the hardware
    // to hold until the guest unmasks it.
    let masked = CpuInterface::from_registers(vmcr(0x00, true, true), &[0], &[0]);
    assert!(!v.has_pending(0, masked));
    assert_eq!(fill(&mut v, 0, 4).len(), 1);
    assert!(!v.has_pending(0, OPEN), "in an LR: not counted");
}

// ----- what Linux's GICv3 driver does -----

/// Linux's `gic_populate_rdist` on the CPU with affinity `aff`: walks the redistributor
/// frames, checks each one's `GICR_PIDR2` and reads `GICR_TYPER` (64-bit) until the affinity
/// matches or the `Last` frame. Returns the frame index.
fn linux_find_rdist(v: &Vgic, aff: u64) -> Option<u16> {
    let mut frame = 0u16;
    loop {
        let pidr2 = v.redist_read(rd(frame, 0xFFE8), 4).unwrap();
        assert_eq!(pidr2 >> 4 & 0xF, 3, "GICR_PIDR2.ArchRev of frame {frame}");
        let typer = v.redist_read(rd(frame, 0x8), 8).unwrap();
        if typer >> 32 == aff {
            return Some(frame);
        }
        if typer & 1 << 4 != 0 {
            return None;
        }
        frame += 1;
    }
}

/// Linux's `gic_dist_init` (with `gic_dist_config`) on `spis` SPIs, booting on vCPU `boot`.
fn linux_dist_init(v: &mut Vgic, boot: u64) {
    // gic_validate_dist_version, gic_init_bases
    assert_eq!(dread(v, 0xFFE8) & 0xF0, 0x30, "GICD_PIDR2: GICv3");
    let typer = dread(v, 0x4);
    let lines = (((typer & 0x1F) + 1) * 32).min(1020);
    assert_eq!(typer & 1 << 8, 0, "no extended SPIs");
    let _iidr = dread(v, 0x8);
    assert_eq!(dread(v, 0xC), 0, "GICD_TYPER2");
    dwrite(v, 0x0, 0);
    assert_eq!(dread(v, 0x0) & 1 << 31, 0, "RWP");
    for i in (32..lines).step_by(32) {
        dwrite(v, 0x80 + i / 8, 0xFFFF_FFFF);
    }
    for i in (32..lines).step_by(16) {
        dwrite(v, 0xC00 + i / 4, 0);
    }
    for i in (32..lines).step_by(4) {
        dwrite(v, 0x400 + i, 0xA0A0_A0A0);
    }
    for i in (32..lines).step_by(32) {
        dwrite(v, 0x380 + i / 8, 0xFFFF_FFFF);
        dwrite(v, 0x180 + i / 8, 0xFFFF_FFFF);
    }
    assert_eq!(dread(v, 0x0) & 1 << 31, 0, "RWP");
    // ARE_NS | EnableGrp1A | EnableGrp1 (DS = 1: bits 0 and 1 are the two groups).
    dwrite(v, 0x0, 0x13);
    assert_eq!(dread(v, 0x0) & 1 << 31, 0, "RWP");
    for i in 32..lines {
        v.dist_write(0x6000 + i * 8, 8, boot).unwrap();
    }
}

/// Linux's `gic_cpu_init` on vCPU `c` (affinity `c`), then its timer's PPI enabled as
/// `arch_timer_starting_cpu` does (level, then unmask).
fn linux_cpu_init(v: &mut Vgic, c: u16) {
    let frame = linux_find_rdist(v, u64::from(c)).expect("my redistributor");
    assert_eq!(frame, c);
    // gic_enable_redist(true)
    let w = rread(v, c, 0x14);
    rwrite(v, c, 0x14, w & !0b10);
    assert_eq!(rread(v, c, 0x14) & 0b100, 0, "ChildrenAsleep clears at once");
    rwrite(v, c, SGI_BASE + 0x80, 0xFFFF_FFFF);
    // gic_cpu_config
    rwrite(v, c, SGI_BASE + 0x380, 0xFFFF_FFFF);
    rwrite(v, c, SGI_BASE + 0x180, 0xFFFF_FFFF);
    for i in (0..32).step_by(4) {
        rwrite(v, c, SGI_BASE + 0x400 + i, 0xA0A0_A0A0);
    }
    rwrite(v, c, SGI_BASE + 0x100, 0x0000_FFFF);
    assert_eq!(rread(v, c, 0x0) & 1 << 3, 0, "GICR_CTLR.RWP");
    // gic_set_type(27, IRQ_TYPE_LEVEL_HIGH): read-modify-write of GICR_ICFGR1, then unmask.
    let cfg = rread(v, c, SGI_BASE + 0xC04);
    rwrite(v, c, SGI_BASE + 0xC04, cfg & !(0b11 << (2 * (27 - 16))));
    rwrite(v, c, SGI_BASE + 0x100, 1 << 27);
}

/// Linux's `gic_set_affinity` of SPI `intid` to the vCPU with affinity `aff`: mask, write
/// `IROUTER` (64-bit), unmask.
fn linux_set_affinity(v: &mut Vgic, intid: u32, aff: u64) -> Effects {
    let reg = u64::from(intid / 32) * 4;
    let enabled = dread(v, 0x100 + reg) & 1 << (intid % 32) != 0;
    let mut fx = Effects::NONE;
    if enabled {
        fx = fx.merge(dwrite(v, 0x180 + reg, 1 << (intid % 32)));
    }
    fx = fx.merge(v.dist_write(0x6000 + u64::from(intid) * 8, 8, aff).unwrap());
    if enabled {
        fx = fx.merge(dwrite(v, 0x100 + reg, 1 << (intid % 32)));
    }
    fx
}

/// The GICv3 driver's boot on four vCPUs, access by access, and then its use at run time:
/// every register reads back what the driver expects, nothing it touches is reserved, and
/// the timer, the UART's SPI and IPIs reach the right vCPU with the priorities it set.
#[test]
fn vgic_linux_boot_and_run() {
    let mut v = model(4, 64);
    linux_dist_init(&mut v, 0);
    for c in 0..4 {
        linux_cpu_init(&mut v, c);
    }
    assert_eq!(v.ignored_accesses(), (0, 0), "the driver touches only implemented registers");
    assert_eq!(dread(&v, 0x0), 0x53, "GICD_CTLR: ARE, DS, both groups");
    for c in 0..4 {
        assert_eq!(rread(&v, c, 0x14), 0, "GICR_WAKER: awake");
        assert_eq!(rread(&v, c, SGI_BASE + 0x100), 0xFFFF | 1 << 27, "SGIs and the timer enabled");
        assert_eq!(rread(&v, c, SGI_BASE + 0x418), 0xA0A0_A0A0, "IPRIORITYR6 (INTIDs 24..28)");
        assert_eq!(rread(&v, c, SGI_BASE + 0xC04), 0, "PPIs level-sensitive");
    }
    assert_eq!(v.dist_read(0x6000 + 95 * 8, 8).unwrap(), 0, "IROUTER: the boot CPU");
    assert_eq!(dread(&v, 0x104), 0, "every SPI masked");

    // The UART's SPI 33: level (ICFGR2), routed to the boot CPU, unmasked.
    let cfg = dread(&v, 0xC08);
    dwrite(&mut v, 0xC08, cfg & !(0b11 << 2));
    linux_set_affinity(&mut v, 33, 0);
    dwrite(&mut v, 0x104, 1 << 1);
    assert_eq!(vcpus(v.set_level(33, None, true).kick), [0]);
    assert!(v.has_pending(0, linux_cpu_if()));
    // Moved to CPU 3 while pending (irqbalance, or CPU hot-unplug): delivered there.
    let fx = linux_set_affinity(&mut v, 33, 3);
    assert!(fx.kick.contains(3));
    assert!(!v.has_pending(0, linux_cpu_if()));
    let lr = fill(&mut v, 3, 4)[0];
    assert_eq!(
        (lr.intid, lr.priority, lr.state, lr.group1, lr.eoi_maintenance),
        (33, 0xA0, LrState::Pending, true, true)
    );
    // Acknowledged, handled (the line drops), EOIed: gone.
    v.sync_lr(3, with_state(lr, LrState::Active));
    v.set_level(33, None, false);
    let lr = fill(&mut v, 3, 4)[0];
    v.sync_lr(3, with_state(lr, LrState::Invalid));
    assert!(!v.has_pending(3, OPEN));

    // The timer of vCPU 2.
    assert_eq!(vcpus(v.set_level(27, Some(2), true).kick), [2]);
    let lr = fill(&mut v, 2, 4)[0];
    assert_eq!((lr.intid, lr.priority, lr.eoi_maintenance), (27, 0xA0, true));

    // An IPI (SGI 1, IPI_CALL_FUNC) from vCPU 0 to vCPUs 1 and 3: gic_send_sgi's value.
    let fx = v.send_sgi(0, 1 << 24 | 0b1010);
    assert_eq!(vcpus(fx.kick), [1, 3]);
    for c in [1, 3] {
        let lr = fill(&mut v, c, 4)[0];
        assert_eq!((lr.intid, lr.state, lr.group1, lr.eoi_maintenance), (1, LrState::Pending, true, false));
    }
    assert_eq!(v.ignored_accesses(), (0, 0));
}

/// An interrupt of higher priority than everything in a vCPU's full list registers: the kick
/// makes the vCPU exit, the sync takes the unacknowledged ones back, and the refill puts the
/// new one first; the one that no longer fits waits for the maintenance interrupt.
#[test]
fn vgic_higher_priority_displaces_a_full_set_of_lrs() {
    let mut v = booted(2, 32);
    for intid in 32..37 {
        enable_spi(&mut v, intid);
        set_priority(&mut v, intid, 0xA0);
        v.inject_edge(intid, None);
    }
    let held = fill(&mut v, 0, 4);
    assert_eq!(held.iter().map(|lr| lr.intid).collect::<Vec<_>>(), [32, 33, 34, 35]);
    assert!(v.overflow(0, 0), "36 waits: the platform sets ICH_HCR_EL2.UIE");
    // The guest took 32 (active) before the new one came.
    enable_private(&mut v, 0, 5);
    v.redist_write(rd(0, SGI_BASE + 0x405), 1, 0x20).unwrap();
    assert_eq!(vcpus(v.send_sgi(1, 5 << 24 | 1).kick), [0]);
    v.sync_lr(0, with_state(held[0], LrState::Active));
    for lr in &held[1..] {
        v.sync_lr(0, *lr);
    }
    let lrs = fill(&mut v, 0, 4);
    let got: Vec<_> = lrs.iter().map(|lr| (lr.intid, lr.priority, lr.state)).collect();
    assert_eq!(
        got,
        [
            (32, 0xA0, LrState::Active),
            (5, 0x20, LrState::Pending),
            (33, 0xA0, LrState::Pending),
            (34, 0xA0, LrState::Pending)
        ],
        "the active one (its EOI must find it), then by priority"
    );
    assert!(v.overflow(0, 0), "35 and 36 wait");
    // The maintenance interrupt: the guest EOIed three, one LR is still valid.
    for lr in &lrs[..3] {
        v.sync_lr(0, with_state(*lr, LrState::Invalid));
    }
    v.sync_lr(0, lrs[3]);
    let rest: Vec<_> = fill(&mut v, 0, 4).iter().map(|lr| lr.intid).collect();
    assert_eq!(rest, [34, 35, 36]);
    assert!(!v.overflow(0, 0));
}

// ----- checkpoints -----

#[test]
fn vgic_save_restore_round_trip() {
    let mut v = booted(3, 64);
    enable_spi(&mut v, 40);
    enable_private(&mut v, 2, 27);
    set_priority(&mut v, 40, 0x40);
    dwrite(&mut v, 0x6000 + 8 * 40, 2);
    v.inject_edge(40, None);
    v.set_level(27, Some(2), true);
    v.send_sgi(0, 5 << 24 | 0b10);
    let lrs = fill(&mut v, 2, 4);
    v.sync_lr(2, with_state(lrs[0], LrState::Active));
    v.sync_lr(2, lrs[1]);
    let state = v.save();
    assert_eq!(state.irqs.len(), 3 * 32 + 64);
    let copy = Vgic::from_state(&state).unwrap();
    assert_eq!(copy.save(), state);
    assert_eq!(copy.dist_read(0x6000 + 8 * 40, 8), v.dist_read(0x6000 + 8 * 40, 8));
    let mut a = v.clone();
    let mut b = copy;
    for c in 0..3 {
        assert_eq!(fill(&mut a, c, 4), fill(&mut b, c, 4), "vCPU {c} sees the same");
    }
    // The wrong shape is refused and changes nothing.
    let mut other = model(2, 64);
    assert_eq!(other.restore(&state), Err(VgicError::ShapeMismatch));
    assert_eq!(other.save(), model(2, 64).save());
    // A saved state with an LR outstanding keeps what was loaded.
    let mut v = booted(1, 32);
    enable_spi(&mut v, 32);
    v.inject_edge(32, None);
    let _ = fill(&mut v, 0, 4);
    let s = v.save();
    assert!(s.irqs[32].pending_latch);
    let mut w = Vgic::from_state(&s).unwrap();
    assert_eq!(fill(&mut w, 0, 4)[0].intid, 32);
    // Sanitized: an SGI cannot be restored as level-sensitive, priorities are masked.
    let mut s = model(1, 32).save();
    s.irqs[3].edge = false;
    s.irqs[3].priority = 0xFF;
    s.irqs[32].route = u64::MAX;
    let w = Vgic::from_state(&s).unwrap();
    assert_eq!(w.redist_read(SGI_BASE + 0xC00, 4).unwrap(), 0xAAAA_AAAA);
    assert_eq!(w.redist_read(SGI_BASE + 0x403, 1).unwrap(), 0xF8);
    assert_eq!(w.dist_read(0x6100, 8).unwrap(), 0x80FF_FFFF);
}

#[test]
fn vgic_reset_clears_state() {
    let mut v = booted(2, 32);
    enable_spi(&mut v, 32);
    v.inject_edge(32, None);
    let _ = v.dist_read(0xF00, 4);
    v.reset();
    assert_eq!(v.save(), model(2, 32).save());
    assert_eq!(v.ignored_accesses(), (1, 0), "diagnostics survive");
}

// ----- list register encoding -----

#[test]
fn vgic_ich_lr_encoding() {
    let lr = Lr { intid: 27, priority: 0xA0, state: LrState::Pending, group1: true, hw: None, eoi_maintenance: true };
    assert_eq!(encode_ich_lr(&lr), 0x50A0_0200_0000_001B);
    assert_eq!(decode_ich_lr(0x50A0_0200_0000_001B), lr);
    let hw = Lr { intid: 44, priority: 0, state: LrState::Active, group1: true, hw: Some(300), eoi_maintenance: false };
    assert_eq!(encode_ich_lr(&hw), 0xB000_012C_0000_002C);
    assert_eq!(decode_ich_lr(encode_ich_lr(&hw)), hw);
    assert_eq!(decode_ich_lr(0).state, LrState::Invalid);
    assert_eq!(decode_ich_lr(3 << 62).state, LrState::PendingActive);
    assert_eq!(Lr::default(), Lr::INVALID);
}

fn arb_lr() -> impl Strategy<Value = Lr> {
    let state = prop_oneof![
        Just(LrState::Invalid),
        Just(LrState::Pending),
        Just(LrState::Active),
        Just(LrState::PendingActive)
    ];
    (any::<u32>(), any::<u8>(), state, any::<bool>(), proptest::option::of(0u32..0x2000), any::<bool>()).prop_map(
        |(intid, priority, state, group1, hw, eoi)| Lr {
            intid,
            priority,
            state,
            group1,
            hw,
            eoi_maintenance: eoi && hw.is_none(),
        },
    )
}

// ----- random sequences -----

#[derive(Clone, Debug)]
enum Op {
    DistWrite(u64, u8, u64),
    DistRead(u64, u8),
    RedistWrite(u64, u8, u64),
    RedistRead(u64, u8),
    SetLevel(u32, u16, bool),
    Edge(u32, u16),
    Sgi(u16, u64),
    Fill(u16, usize),
    /// The guest acts on one of a vCPU's LRs (index modulo how many it holds).
    Guest(u16, usize, u8),
    Sync(u16, usize),
    SyncAll(u16),
    SaveRestore,
}

/// Offsets worth hitting: register bases plus a small displacement, or anything.
fn arb_dist_offset() -> impl Strategy<Value = u64> {
    let bases = prop::sample::select(vec![
        0x0u64, 0x4, 0x80, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380, 0x400, 0xC00, 0xD00, 0x6100, 0x6200, 0xFFE8,
    ]);
    prop_oneof![3 => (bases, 0u64..0x40).prop_map(|(b, d)| b + d), 1 => 0u64..0x1_0000]
}

fn arb_redist_offset() -> impl Strategy<Value = u64> {
    let bases = prop::sample::select(vec![
        0x0u64, 0x8, 0x14, 0x10080, 0x10100, 0x10180, 0x10200, 0x10280, 0x10300, 0x10380, 0x10400, 0x10C00,
    ]);
    let frame = prop_oneof![3 => (bases, 0u64..0x20).prop_map(|(b, d)| b + d), 1 => 0u64..GICR_STRIDE];
    (0u64..5, frame).prop_map(|(c, f)| c * GICR_STRIDE + f)
}

fn arb_value() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(u64::MAX), Just(0), Just(0x13), (0u32..64).prop_map(|b| 1u64 << b)]
}

fn arb_size() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![1u8, 2, 4, 4, 4, 8, 3])
}

fn arb_intid() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 16u32..32, 4 => 32u32..100, 1 => 0u32..16, 1 => any::<u32>()]
}

fn arb_sgi_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0u64..16, 0u64..16, any::<bool>()).prop_map(|(i, t, irm)| i << 24 | t | u64::from(irm) << 40),
        1 => any::<u64>(),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (arb_dist_offset(), arb_size(), arb_value()).prop_map(|(o, s, v)| Op::DistWrite(o, s, v)),
        1 => (arb_dist_offset(), arb_size()).prop_map(|(o, s)| Op::DistRead(o, s)),
        4 => (arb_redist_offset(), arb_size(), arb_value()).prop_map(|(o, s, v)| Op::RedistWrite(o, s, v)),
        1 => (arb_redist_offset(), arb_size()).prop_map(|(o, s)| Op::RedistRead(o, s)),
        4 => (arb_intid(), 0u16..5, any::<bool>()).prop_map(|(i, c, l)| Op::SetLevel(i, c, l)),
        4 => (arb_intid(), 0u16..5).prop_map(|(i, c)| Op::Edge(i, c)),
        3 => (0u16..5, arb_sgi_value()).prop_map(|(c, v)| Op::Sgi(c, v)),
        6 => (0u16..5, 0usize..6).prop_map(|(c, f)| Op::Fill(c, f)),
        10 => (0u16..5, any::<usize>(), 0u8..4).prop_map(|(c, i, a)| Op::Guest(c, i, a)),
        5 => (0u16..5, any::<usize>()).prop_map(|(c, i)| Op::Sync(c, i)),
        2 => (0u16..5).prop_map(Op::SyncAll),
        1 => Just(Op::SaveRestore),
    ]
}

/// The platform side of the test: four list registers per vCPU (as QEMU has).
const LRS: usize = 4;

/// The INTIDs `fill_lrs(vcpu, free)` should hand out, from a scan of every interrupt: those
/// that want an LR, active first, then by priority, then by INTID.
fn scan_fill(v: &Vgic, vcpu: u16, free: usize) -> Vec<u32> {
    let mut keys: Vec<(bool, u8, u32)> = (0..v.irqs.len())
        .filter(|&s| v.target(s) == Some(vcpu) && v.wants_lr(&v.irqs[s]))
        .map(|s| (!v.irqs[s].active, v.irqs[s].priority, v.intid_of(s)))
        .collect();
    keys.sort();
    keys.iter().take(free.min(MAX_LRS)).map(|k| k.2).collect()
}

struct Harness {
    v: Vgic,
    held: Vec<Vec<Lr>>,
    /// What the last operation returned: the kick set, and the vCPU that is not kicked about
    /// its own interrupts (the one whose LRs were synced: it refills at entry anyway). `None`
    /// for an operation whose kicks the check does not cover (save and restore).
    fx: Option<(VcpuSet, Option<u16>)>,
}

impl Harness {
    fn is_edge(&self, vcpu: u16, intid: u32) -> bool {
        let slot = self.v.slot(vcpu, intid).unwrap();
        self.v.irqs[slot].edge
    }

    fn sync_all(&mut self, vcpu: u16) -> Effects {
        let mut fx = Effects::NONE;
        for lr in core::mem::take(&mut self.held[usize::from(vcpu)]) {
            let got = self.v.sync_lr(vcpu, lr);
            assert!(!got.ignored, "an LR the model handed out is taken back");
            fx = fx.merge(got);
        }
        fx
    }

    /// The slots that want an LR of each vCPU.
    fn wanting(&self) -> Vec<Vec<usize>> {
        let v = &self.v;
        (0..v.vcpus)
            .map(|c| (0..v.irqs.len()).filter(|&s| v.target(s) == Some(c) && v.wants_lr(&v.irqs[s])).collect())
            .collect()
    }

    fn apply(&mut self, op: Op) {
        let nv = self.v.vcpus;
        self.fx = Some((VcpuSet::EMPTY, None));
        let mut kicked = |fx: Effects| self.fx = Some((fx.kick, None));
        match op {
            Op::DistWrite(o, s, val) => {
                kicked(self.v.dist_write(o, s, val).unwrap_or(Effects::NONE));
            }
            Op::DistRead(o, s) => {
                let _ = self.v.dist_read(o, s);
            }
            Op::RedistWrite(o, s, val) => {
                kicked(self.v.redist_write(o, s, val).unwrap_or(Effects::NONE));
            }
            Op::RedistRead(o, s) => {
                let _ = self.v.redist_read(o, s);
            }
            Op::SetLevel(i, c, l) => {
                kicked(self.v.set_level(i, Some(c), l));
            }
            Op::Edge(i, c) => {
                kicked(self.v.inject_edge(i, Some(c)));
            }
            Op::Sgi(c, val) => {
                kicked(self.v.send_sgi(c, val));
            }
            Op::Fill(c, free) => {
                let held = self.held.get(usize::from(c)).map_or(0, Vec::len);
                let free = free.min(LRS - held);
                let expect = if c < nv { scan_fill(&self.v, c, free) } else { Vec::new() };
                let mut out = [Lr::INVALID; LRS];
                let n = self.v.fill_lrs(c, free, &mut out);
                assert!(n <= free);
                let got: Vec<u32> = out[..n].iter().map(|lr| lr.intid).collect();
                assert_eq!(got, expect, "fill_lrs picks as a full scan");
                for lr in &out[..n] {
                    assert_ne!(lr.state, LrState::Invalid);
                    assert!(lr.hw.is_none());
                    let private = lr.intid < PRIVATE_COUNT;
                    // Never in two LRs: not already held by this vCPU, nor (SPIs) by any.
                    for (holder, lrs) in self.held.iter().enumerate() {
                        for h in lrs {
                            let same = h.intid == lr.intid && (!private || holder == usize::from(c));
                            assert!(!same, "INTID {} handed out twice", lr.intid);
                        }
                    }
                    assert_eq!(out[..n].iter().filter(|o| o.intid == lr.intid).count(), 1);
                    if lr.state == LrState::PendingActive {
                        assert!(self.is_edge(c, lr.intid), "pending+active only for edge interrupts");
                    }
                    assert_eq!(lr.eoi_maintenance, !self.is_edge(c, lr.intid));
                }
                if n > 0 {
                    self.held[usize::from(c)].extend_from_slice(&out[..n]);
                }
            }
            Op::Guest(c, i, action) => {
                let Some(lrs) = self.held.get_mut(usize::from(c)) else { return };
                if lrs.is_empty() {
                    return;
                }
                let k = i % lrs.len();
                let lr = &mut lrs[k];
                lr.state = match (action, lr.state) {
                    // Acknowledge.
                    (0 | 3, LrState::Pending) => LrState::Active,
                    // EOI (priority drop and deactivation).
                    (1 | 3, LrState::Active) => LrState::Invalid,
                    (1 | 3, LrState::PendingActive) => LrState::Pending,
                    // What a confused platform could hand back.
                    (2, _) => LrState::Invalid,
                    (_, s) => s,
                };
            }
            Op::Sync(c, i) => {
                let Some(lrs) = self.held.get_mut(usize::from(c)) else { return };
                if lrs.is_empty() {
                    return;
                }
                let lr = lrs.swap_remove(i % lrs.len());
                let fx = self.v.sync_lr(c, lr);
                assert!(!fx.ignored);
                self.fx = Some((fx.kick, Some(c)));
            }
            Op::SyncAll(c) => {
                if c < nv {
                    let fx = self.sync_all(c);
                    self.fx = Some((fx.kick, Some(c)));
                }
            }
            Op::SaveRestore => {
                self.fx = None;
                for c in 0..nv {
                    self.sync_all(c);
                }
                let state = self.v.save();
                let copy = Vgic::from_state(&state).unwrap();
                assert_eq!(copy.save(), state);
                let (r, w) = self.v.ignored_accesses();
                self.v = copy;
                assert_eq!(self.v.ignored_accesses(), (0, 0));
                let _ = (r, w);
            }
        }
    }

    /// The model's LR bookkeeping matches what the platform holds, exactly.
    fn check(&self) {
        let v = &self.v;
        let mut in_lr = 0;
        for (slot, irq) in v.irqs.iter().enumerate() {
            if !irq.in_lr {
                assert_eq!(irq.lr, 0);
                continue;
            }
            in_lr += 1;
            let owner = if slot < v.private_len() { (slot / 32) as u16 } else { irq.owner };
            assert!(owner < v.vcpus);
            let intid = v.intid_of(slot);
            let held = self.held[usize::from(owner)].iter().filter(|lr| lr.intid == intid).count();
            assert_eq!(held, 1, "INTID {intid} is in exactly one LR of vCPU {owner}");
            if slot < v.private_len() {
                assert_eq!(irq.owner, owner);
            }
        }
        assert_eq!(in_lr, self.held.iter().map(Vec::len).sum::<usize>());
        // The want sets are exact, so delivery that looks only at them misses nothing.
        for (slot, irq) in v.irqs.iter().enumerate() {
            let bit = if slot < v.private_len() {
                v.want_private[slot / 32] & (1 << (slot % 32)) != 0
            } else {
                let k = slot - v.private_len();
                v.want_spi[k / 64] & (1 << (k % 64)) != 0
            };
            assert_eq!(bit, v.wants_lr(irq), "want bit of INTID {}", v.intid_of(slot));
        }
        // has_pending and overflow agree with a scan of every interrupt.
        for c in 0..v.vcpus {
            let mine: Vec<usize> = (0..v.irqs.len()).filter(|&s| v.target(s) == Some(c)).collect();
            let pending = mine.iter().any(|&s| !v.irqs[s].in_lr && v.deliverable(&v.irqs[s]));
            assert_eq!(v.has_pending(c, OPEN), pending);
            let waiting = mine.iter().filter(|&&s| v.wants_lr(&v.irqs[s])).count();
            for free in 0..=LRS {
                assert_eq!(v.overflow(c, free), waiting > free);
            }
        }
        for (slot, irq) in v.irqs.iter().enumerate() {
            assert_eq!(irq.priority & !v.prio_mask, 0);
            assert_eq!(irq.route & !IROUTER_MASK, 0);
            if slot < v.private_len() && slot % 32 < 16 {
                assert!(irq.edge, "SGIs are edge-triggered");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn vgic_random_sequences_keep_invariants(
        vcpus in 1u16..5,
        spi_groups in 0u16..3,
        boot in any::<bool>(),
        ops in prop::collection::vec(arb_op(), 1..200),
    ) {
        let mut v = model(vcpus, 32 * spi_groups);
        if boot {
            // Most sequences should reach delivery: distributor on, everything enabled, some
            // interrupts edge-triggered, SPIs spread over the vCPUs.
            v = booted(vcpus, 32 * spi_groups);
            for c in 0..vcpus {
                rwrite(&mut v, c, SGI_BASE + 0x100, u64::from(u32::MAX));
                rwrite(&mut v, c, SGI_BASE + 0xC04, 0x0A0A_0A0A);
            }
            for g in 1..=u64::from(spi_groups) {
                dwrite(&mut v, 0x100 + 4 * g, u64::from(u32::MAX));
                dwrite(&mut v, 0xC00 + 8 * g, 0xAAAA_0000);
            }
            for intid in 32..32 + u64::from(spi_groups) * 32 {
                v.dist_write(0x6000 + 8 * intid, 8, intid % u64::from(vcpus)).unwrap();
            }
        }
        let mut h = Harness { v, held: vec![Vec::new(); usize::from(vcpus)], fx: None };
        for op in ops {
            let before = h.wanting();
            h.apply(op.clone());
            h.check();
            // Whoever gains an interrupt that wants a list register is kicked (the platform's
            // fast path relies on it), but a vCPU about its own synced interrupts.
            if let Some((kick, exempt)) = h.fx {
                for (c, now) in h.wanting().iter().enumerate() {
                    let c = c as u16;
                    let gained = now.iter().any(|s| !before[usize::from(c)].contains(s));
                    if gained && Some(c) != exempt {
                        prop_assert!(kick.contains(c), "vCPU {} gained an interrupt without a kick ({:?})", c, op);
                    }
                }
            }
        }
        // Everything given back: nothing stays in an LR.
        for c in 0..vcpus {
            h.sync_all(c);
        }
        h.check();
        prop_assert!(h.v.irqs.iter().all(|irq| !irq.in_lr));
        // Drain: the guest takes and EOIs whatever it is given. Nothing is lost or stuck: at
        // the end no deliverable interrupt is left but level ones whose line is still high,
        // and nothing that has a vCPU stays active.
        for _ in 0..8 {
            for c in 0..vcpus {
                let expect = scan_fill(&h.v, c, MAX_LRS);
                let mut out = [Lr::INVALID; MAX_LRS];
                let n = h.v.fill_lrs(c, MAX_LRS, &mut out);
                prop_assert_eq!(out[..n].iter().map(|lr| lr.intid).collect::<Vec<_>>(), expect);
                for lr in &out[..n] {
                    prop_assert!(!h.v.sync_lr(c, with_state(*lr, LrState::Invalid)).ignored);
                }
            }
        }
        for slot in 0..h.v.irqs.len() {
            let irq = h.v.irqs[slot];
            if h.v.target(slot).is_none() {
                continue;
            }
            prop_assert!(!irq.active, "INTID {} stuck active", h.v.intid_of(slot));
            if h.v.deliverable(&irq) {
                prop_assert!(!irq.edge && irq.level && !irq.latch, "INTID {} left pending", h.v.intid_of(slot));
            }
        }
    }

    #[test]
    fn vgic_ich_lr_round_trip(lr in arb_lr()) {
        prop_assert_eq!(decode_ich_lr(encode_ich_lr(&lr)), lr);
    }

    #[test]
    fn vgic_ich_lr_decode_encode_keeps_fields(raw in any::<u64>()) {
        let lr = decode_ich_lr(raw);
        // Everything but RES0/NMI bits (and the EOI bit under HW) survives.
        let kept: u64 = 0xF0FF_0000_FFFF_FFFF | if raw & 1 << 61 != 0 { 0x1FFF << 32 } else { 1 << 41 };
        prop_assert_eq!(encode_ich_lr(&lr), raw & kept);
    }
}

/// The self-SGI fast path and the consumed-LR fast path leave the model exactly as the general
/// path does (send, fill, sync of an empty LR), and refuse whenever the general path would do
/// something else.
#[test]
fn vgic_self_sgi_fast_paths_match_the_general_path() {
    let mut fast = booted(2, 32);
    for intid in [1, 5] {
        enable_private(&mut fast, 1, intid);
    }
    set_priority(&mut fast, 0, 0x40);
    let mut slow = fast.clone();
    // SGI 5 from vCPU 1 to itself: Aff0 = 1 in TargetList bit 1.
    let lr = fast.send_sgi_to_self_direct(1, 5).expect("a free, enabled SGI goes straight in");
    assert_eq!(vcpus(slow.send_sgi(1, 5 << 24 | 0b10).kick), [1]);
    assert_eq!(fill(&mut slow, 1, 4), [lr]);
    assert_eq!(fast.save(), slow.save());
    // In an LR now: a second one takes the general path (it latches behind the first).
    assert!(fast.send_sgi_to_self_direct(1, 5).is_none());
    // The guest takes and ends it; the LR comes back empty.
    assert!(fast.retire_consumed(1, 5));
    assert!(slow.sync_lr(1, with_state(lr, LrState::Invalid)).kick.is_empty());
    assert_eq!(fast.save(), slow.save());
    assert!(!fast.retire_consumed(1, 5), "not in an LR any more");

    // Refusals: disabled, pending already, active, group off, not an SGI, no such vCPU.
    assert!(fast.send_sgi_to_self_direct(1, 2).is_none(), "SGI 2 is disabled");
    let _ = fast.send_sgi(0, 1 << 24 | 0b10);
    assert!(fast.send_sgi_to_self_direct(1, 1).is_none(), "SGI 1 is pending already");
    assert!(fast.send_sgi_to_self_direct(1, 16).is_none());
    assert!(fast.send_sgi_to_self_direct(7, 1).is_none());
    let mut off = booted(2, 32);
    enable_private(&mut off, 0, 3);
    dwrite(&mut off, 0, 0x10);
    assert!(off.send_sgi_to_self_direct(0, 3).is_none(), "Group 1 disabled in GICD_CTLR");

    // A consumed LR with something new since is synced the general way.
    let mut v = booted(1, 32);
    enable_private(&mut v, 0, 4);
    let lr = v.send_sgi_to_self_direct(0, 4).unwrap();
    let _ = v.send_sgi(0, 4 << 24 | 0b1);
    assert!(!v.retire_consumed(0, 4), "a new edge came while it was in the LR");
    let fx = v.sync_lr(0, with_state(lr, LrState::Invalid));
    assert!(!fx.ignored);
    assert_eq!(fill(&mut v, 0, 4).len(), 1, "the second edge is delivered");
}

/// Retiring a consumed LR and loading a self-SGI in one step leaves the model as the two steps
/// do, for the same SGI again and for another; a refusal of either part changes nothing.
#[test]
fn vgic_retire_and_send_sgi_to_self_is_the_two_steps_or_nothing() {
    let mut fast = booted(2, 32);
    for intid in [1, 5, 6] {
        enable_private(&mut fast, 1, intid);
    }
    let first = fast.send_sgi_to_self_direct(1, 5).unwrap();
    let mut slow = fast.clone();
    // The same SGI again, then another one.
    for (consumed, intid) in [(5, 5), (5, 6)] {
        let lr = fast.retire_and_send_sgi_to_self(1, consumed, intid).expect("both parts apply");
        assert!(slow.retire_consumed(1, consumed));
        assert_eq!(slow.send_sgi_to_self_direct(1, intid), Some(lr));
        assert_eq!(fast.save(), slow.save());
    }
    assert_eq!(first.intid, 5);
    // SGI 6 is in the LR now. Refusals, each leaving the model as it was.
    let before = fast.save();
    assert!(fast.retire_and_send_sgi_to_self(1, 5, 1).is_none(), "5 is not in an LR");
    assert!(fast.retire_and_send_sgi_to_self(0, 6, 1).is_none(), "6 is vCPU 1's");
    assert!(fast.retire_and_send_sgi_to_self(1, 6, 2).is_none(), "SGI 2 is disabled");
    assert!(fast.retire_and_send_sgi_to_self(1, 6, 16).is_none(), "not an SGI");
    let _ = fast.send_sgi(0, 1 << 24 | 0b10);
    let pending = fast.save();
    assert!(fast.retire_and_send_sgi_to_self(1, 6, 1).is_none(), "SGI 1 is pending already");
    assert_eq!(fast.save(), pending);
    let _ = fast.send_sgi(0, 6 << 24 | 0b10);
    let latched = fast.save();
    assert!(fast.retire_and_send_sgi_to_self(1, 6, 5).is_none(), "a new edge of 6 came while it was in the LR");
    assert_eq!(fast.save(), latched);
    assert_ne!(before, latched);
}
