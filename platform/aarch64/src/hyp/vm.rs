//! VMs and vCPUs: guest RAM, stage-2 map, emulated devices and the per-vCPU context, built from
//! the manifest's guest records.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};

use crate::sync::Mutex;
use vcpu_runtime::manifest::{GuestEntry, GuestKind, GUEST_RAM_BASE};
use vcpu_runtime::trace::StopReason;
use vcpu_runtime::{VcpuId, VmId};
use vdev::guest_dt::{self, GuestDtConfig, GuestDtError, Pl011Node, PsciConduit, TimerPpis};
use vdev::linux_boot::{self, LinuxBootError};
use vdev::uart::Pl011;
use vdev::vgic::{Vgic, VgicConfig, GICD_SIZE, GICR_STRIDE};

use crate::guest::VcpuContext;
use crate::ram::RamRegion;
use crate::stage2::{Stage2Error, Stage2Map};

/// The emulated devices of every guest (docs/guest-abi.md).
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICR_BASE: u64 = 0x080A_0000;
/// The UART's interrupt: SPI 1.
pub const UART_INTID: u32 = 33;
/// SPIs each guest's GIC has (INTIDs 32..96).
pub const GUEST_SPIS: u16 = 64;
/// Guest RAM is placed at physical addresses aligned to this (stage 2 maps it in 2 MiB blocks).
pub const RAM_ALIGN: usize = 2 << 20;

/// A test image's data blob (the manifest's `initrd` field: the demand player's schedule) is
/// placed at the base of guest RAM, below the image (linked at `0x4008_0000`), and its address
/// is vCPU 0's `x0` (docs/guest-abi.md).
pub const TEST_DATA_IPA: u64 = GUEST_RAM_BASE;
/// The most a test image's data blob may hold.
pub const TEST_DATA_MAX: usize = 0x8_0000;

/// The frequency of the fixed clock the guest's device tree gives its UART (`apb_pclk`), as
/// QEMU's `virt` board says; the emulated UART has no baud rate, so only drivers read it.
pub const UART_CLOCK_HZ: u32 = 24_000_000;

/// Where a Linux guest's pieces went (docs/guest-abi.md, *Linux guests*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The kernel from its entry point to the end of its `image_size`.
    pub kernel: Range<u64>,
    /// The device tree (vCPU 0's `x0`) and its size in bytes.
    pub dtb: u64,
    pub dtb_len: usize,
    pub initrd: Option<Range<u64>>,
}

/// The granule of stage 2 and of dirty logging.
pub const PAGE: u64 = 4096;
/// Outside live migration, a guest's first write to RAM makes this much around it touched and
/// writable at once (aligned): a booting Linux guest first writes about 11,600 pages, and one
/// fault per page cost 18.8 M EL2 instructions, 2.4 % of the boot's own 776 M (`cargo xtask
/// bench linux`, `-smp 1`). A migration then reads the granules' untouched pages too and
/// elides them as zero.
pub const FIRST_WRITE_GRANULE: u64 = 2 << 20;

/// No timer armed ([`Vcpu::timer_deadline`]).
pub const NO_DEADLINE: u64 = u64::MAX;

/// A vCPU's boot slot ([`Vcpu::boot`]): a lock around the pending `CPU_ON`, and a flag that lets
/// the owner, which looks every time it loads the vCPU, skip the lock when the slot is empty.
///
/// The flag is set whenever the slot is locked, and set to whether the slot holds something
/// when the guard goes, still under the lock. So a writer that locks the slot, makes the
/// runtime's `request_power_on` and then fills it has the flag up before the request: an owner
/// that saw the request (it made the vCPU runnable) sees the flag, takes the lock, and waits
/// for the slot to be filled, as it would without the flag.
pub struct BootSlot {
    slot: Mutex<Option<(u64, u64)>>,
    maybe_full: AtomicBool,
}

/// The slot, locked ([`BootSlot::lock`]).
pub struct BootSlotGuard<'a> {
    guard: spin::MutexGuard<'a, Option<(u64, u64)>>,
    maybe_full: &'a AtomicBool,
}

impl Default for BootSlot {
    fn default() -> BootSlot {
        BootSlot::new()
    }
}

impl BootSlot {
    /// An empty slot.
    pub const fn new() -> BootSlot {
        BootSlot { slot: Mutex::new(None), maybe_full: AtomicBool::new(false) }
    }

    /// The slot, locked.
    pub fn lock(&self) -> BootSlotGuard<'_> {
        let guard = self.slot.lock();
        self.maybe_full.store(true, Ordering::SeqCst);
        BootSlotGuard { guard, maybe_full: &self.maybe_full }
    }

    /// Takes what the slot holds; without locking it when it is known to be empty.
    pub fn take(&self) -> Option<(u64, u64)> {
        if !self.maybe_full.load(Ordering::SeqCst) {
            return None;
        }
        self.lock().take()
    }
}

impl core::ops::Deref for BootSlotGuard<'_> {
    type Target = Option<(u64, u64)>;
    fn deref(&self) -> &Option<(u64, u64)> {
        &self.guard
    }
}

impl core::ops::DerefMut for BootSlotGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<(u64, u64)> {
        &mut self.guard
    }
}

impl Drop for BootSlotGuard<'_> {
    fn drop(&mut self) {
        // Before the lock goes (the guard field is dropped after this).
        self.maybe_full.store(self.guard.is_some(), Ordering::SeqCst);
    }
}

/// One VM.
pub struct Vm {
    pub id: VmId,
    pub name: String,
    /// Its vCPUs are `first_vcpu .. first_vcpu + vcpus` in the runtime's numbering.
    pub first_vcpu: VcpuId,
    pub vcpus: u16,
    /// Guest RAM, as the guest sees it.
    pub ram_ipa: Range<u64>,
    /// The RAM the VM was given. The guest owns its contents; the hypervisor writes them only
    /// when it builds the VM and when it loads the image again at a reset (every vCPU off).
    ram: Mutex<RamRegion>,
    /// The image, kept to load it again at a `SYSTEM_RESET`: (IPA, bytes, bytes in RAM). For a
    /// test image, its data blob too; for Linux, its initramfs.
    segments: Vec<(u64, &'static [u8], u64)>,
    /// A Linux guest's device tree, loaded at [`LinuxBoot::dtb`] with the segments.
    dtb: Vec<u8>,
    /// Where a Linux guest's kernel, device tree and initramfs are; `None` for a test image.
    pub linux: Option<LinuxBoot>,
    /// Where vCPU 0 starts, and its `x0` (a test image's data blob's address, or 0; a Linux
    /// guest's device tree).
    pub entry_ipa: u64,
    pub boot_x0: u64,
    /// `VTTBR_EL2` of its stage-2 map (the tables live for the rest of the run).
    pub vttbr: u64,
    /// The stage-2 map and, while live migration logs it, the set of pages written since the
    /// last harvest (both under one lock: a page is marked and made writable together).
    stage2: Mutex<Stage2State>,
    /// Live migration paused the VM: its vCPUs leave their cores at their next exit or entry
    /// and do not run until it is resumed (docs/migration.md). Set with [`Vm::set_paused`].
    pub paused: AtomicBool,
    /// [`HOLD_STOP`], [`HOLD_RESET`], [`HOLD_PAUSE`] and [`HOLD_END`]: set after `stopping`,
    /// `resetting`, `paused` or the run's end (`Hypervisor::ending`) are and before the VM's
    /// vCPUs are signalled or the cores kicked, cleared after them, so that an entry or exit
    /// tests one byte ([`Vm::held`]) and the four only when it is not zero.
    hold: AtomicU8,
    /// The interrupt controller model; reach it with [`Vm::vgic`].
    vgic: Mutex<Vgic>,
    pub uart: Mutex<Pl011>,
    /// Set once the VM is being stopped (SYSTEM_OFF, SYSTEM_RESET, a fatal fault): its vCPUs
    /// stop at their next exit or entry.
    pub stopping: AtomicBool,
    stop_reason: AtomicU8,
    /// vCPUs that have stopped.
    pub stopped: AtomicU16,
    /// Fair-share weight and real-time reservation (budget, period in ns), for checkpoints.
    pub weight: u32,
    pub reservation: Option<(u64, u64)>,
    /// `CNTVOFF_EL2` of the VM's vCPUs: 0, or what continues a restored guest's virtual time.
    pub cntvoff: AtomicU64,
    /// A `SYSTEM_RESET` in progress: [`RESET_NONE`], [`RESET_QUIESCING`] (its vCPUs turn off at
    /// their next exit or entry) or [`RESET_LOADING`] (one core loads the image again).
    pub resetting: AtomicU8,
    /// Its TLB maintenance traps (`HCR_EL2.TTLB`) and the hypervisor carries it out
    /// (`Core::guest_tlbi`); set before the VMs are shared (`hv.guest-tlbi`).
    pub trap_tlbi: bool,
    /// Its trapped TLB maintenance instructions carried out so far (`vcpu_runtime::tlb`).
    pub tlb: vcpu_runtime::tlb::VmTlb,
    /// Counter ticks cores spent waiting for others to leave the VM's guest after its trapped
    /// TLB maintenance, in all and at most once (for the run's report).
    pub tlbi_wait_ticks: AtomicU64,
    pub tlbi_wait_ticks_max: AtomicU64,
    /// Of its waits, those left to the vCPU's next entry (`Core::guest_tlbi`).
    pub tlbi_deferred: AtomicU64,
}

/// [`Vm::hold`]: the VM is stopping.
const HOLD_STOP: u8 = 1;
/// [`Vm::hold`]: a reset is under way.
const HOLD_RESET: u8 = 2;
/// [`Vm::hold`]: live migration paused the VM.
const HOLD_PAUSE: u8 = 4;
/// [`Vm::hold`]: the run is ending (`Hypervisor::ending`, for every VM).
const HOLD_END: u8 = 8;

/// No reset in progress ([`Vm::resetting`]).
pub const RESET_NONE: u8 = 0;
/// Every vCPU turns itself off at its next exit or entry.
pub const RESET_QUIESCING: u8 = 1;
/// Every vCPU is off; the core that saw it last loads the image and starts vCPU 0.
pub const RESET_LOADING: u8 = 2;

/// The stage-2 map, the pages the guest (or the hypervisor's loading) ever wrote, and the dirty
/// log.
///
/// **Touched pages.** Guest RAM starts zero and read-only at stage 2, but for the pages the
/// hypervisor loads (touched and writable); a guest's first write to any other page faults
/// once, which marks the [`FIRST_WRITE_GRANULE`] around it touched and makes it writable. A
/// page never touched is known to be zero: a migration's round 0 sends it as a zero run
/// without reading it (an idle guest with much RAM moves at the cost of the pages it uses), and
/// dirty logging has nothing to protect there.
struct Stage2State {
    map: Stage2Map,
    touched: Vec<u64>,
    log: Option<DirtyLog>,
}

fn bit(bits: &[u64], page: usize) -> bool {
    bits.get(page / 64).is_some_and(|w| w & (1 << (page % 64)) != 0)
}

fn set_bit(bits: &mut [u64], page: usize) {
    if let Some(w) = bits.get_mut(page / 64) {
        *w |= 1 << (page % 64);
    }
}

/// Runs of set bits of `bits`, as (first page, pages), over `pages` pages.
fn runs_of(bits: &[u64], pages: usize) -> DirtyRuns {
    let mut runs = DirtyRuns::new();
    for page in 0..pages {
        if bit(bits, page) {
            push_page(&mut runs, page as u64);
        }
    }
    runs
}

/// Pages written since the last harvest, one bit per page of guest RAM (software tracking; with
/// hardware tracking the descriptors hold the state and this stays empty).
struct DirtyLog {
    bits: Vec<u64>,
    hardware: bool,
    /// Pages marked by write faults, and found written by the CPU (hardware tracking), since
    /// the log started.
    faulted: u64,
    found_by_cpu: u64,
}

impl DirtyLog {
    fn mark(&mut self, page: usize) {
        set_bit(&mut self.bits, page);
    }
}

/// Runs of dirty pages of a harvest: (page index from the RAM base, pages).
pub type DirtyRuns = Vec<(u64, u64)>;

/// Appends `page` to `runs`, extending the last run when it follows it.
fn push_page(runs: &mut DirtyRuns, page: u64) {
    match runs.last_mut() {
        Some((first, n)) if *first + *n == page => *n += 1,
        _ => runs.push((page, 1)),
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm").field("id", &self.id).field("name", &self.name).field("ram", &self.ram).finish()
    }
}

/// One vCPU.
pub struct Vcpu {
    pub id: VcpuId,
    pub vm: VmId,
    /// Its index in the VM (its `MPIDR_EL1.Aff0`, its redistributor).
    pub index: u16,
    /// Registers and system state. Locked by the core that runs the vCPU, for the whole run.
    pub ctx: Mutex<VcpuContext>,
    /// A pending PSCI `CPU_ON`: (entry, context id). Written by the caller with the runtime's
    /// `request_power_on` under this lock, taken by the owner when it next runs the vCPU.
    pub boot: BootSlot,
    /// When its virtual timer fires (ns of the counter), while it is not running; [`NO_DEADLINE`]
    /// if its timer is off or it is running. Its owner's core loop wakes it then.
    pub timer_deadline: AtomicU64,
    /// Moves whenever the interrupt model gives this vCPU something new to load: bumped for
    /// every vCPU in an `Effects::kick` set (`Core::dispatch`) before it is woken or kicked. A
    /// vCPU whose list registers are empty and whose last fill found nothing need not look at
    /// the model again at its next entry while this stays the same.
    pub vgic_epoch: AtomicU64,
    /// The target fields of an `ICC_SGI1R_EL1` value that names only this vCPU (affinity
    /// 0.0.0.index: `RS` = index / 16, `TargetList` bit index % 16, IRM and Aff3..Aff1 0).
    pub sgi_self_target: u64,
}

/// [`Vcpu::sgi_self_target`] of the vCPU with index `index`.
pub const fn sgi_self_target(index: u16) -> u64 {
    (index as u64 / 16) << 44 | 1 << (index % 16)
}

impl fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).field("vm", &self.vm).field("index", &self.index).finish()
    }
}

/// Why a VM could not be built.
#[derive(Debug)]
pub enum VmError {
    /// No payload (a simulator-only guest).
    Kind(GuestKind),
    /// A Linux guest's entry point is not the start of one of its segments (the kernel
    /// `Image` must be entered at its first byte), or another segment lies below it (where
    /// the device tree goes).
    LinuxEntry {
        entry: u64,
    },
    /// A Linux guest's kernel, device tree and initramfs cannot be laid out in its RAM.
    Linux(LinuxBootError),
    /// Its device tree could not be generated.
    DeviceTree(GuestDtError),
    /// Its device tree is larger than the room below the kernel.
    DeviceTreeTooLarge {
        len: usize,
        room: u64,
    },
    /// A test image's data blob is larger than [`TEST_DATA_MAX`].
    Data {
        len: usize,
    },
    /// The guest RAM pool is too small.
    NoRam {
        want_mib: u32,
        left: usize,
    },
    /// A segment does not fit its RAM (the manifest reader checks this; kept for safety).
    Segment {
        ipa: u64,
    },
    Stage2(Stage2Error),
    Vgic(vdev::vgic::VgicError),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Kind(k) => write!(f, "payload kind {k:?} cannot be booted"),
            VmError::LinuxEntry { entry } => {
                write!(f, "entry {entry:#x} must be the first byte of the kernel Image's segment, the lowest one")
            }
            VmError::Linux(e) => write!(f, "{e}"),
            VmError::DeviceTree(e) => write!(f, "device tree: {e}"),
            VmError::DeviceTreeTooLarge { len, room } => {
                write!(f, "device tree of {len} bytes, {room} bytes of room below the kernel")
            }
            VmError::NoRam { want_mib, left } => {
                write!(f, "{want_mib} MiB of RAM wanted, {} MiB left in the guest pool", left >> 20)
            }
            VmError::Segment { ipa } => write!(f, "segment at {ipa:#x} lies outside guest RAM"),
            VmError::Data { len } => {
                write!(f, "the data blob (initrd) of a test image is {len} bytes, at most {TEST_DATA_MAX} fit below the image")
            }
            VmError::Stage2(e) => write!(f, "{e}"),
            VmError::Vgic(e) => write!(f, "vGIC: {e:?}"),
        }
    }
}

impl Vm {
    /// Builds the VM of a manifest guest: takes its RAM from `pool` (2 MiB aligned), zeroes it,
    /// copies the image's segments in (for Linux also its device tree and initramfs), cleans it
    /// to the point of coherency (the vCPU starts with its MMU off), and maps it at stage 2
    /// with VMID `vmid`.
    pub fn build(
        guest: &GuestEntry<'static>,
        first_vcpu: VcpuId,
        vmid: u16,
        pool: &mut RamRegion,
        priority_bits: u8,
    ) -> Result<Vm, VmError> {
        let mut segments: Vec<_> = guest.segments().iter().map(|s| (s.ipa, s.data, s.mem_len)).collect();
        // Where vCPU 0's x0 points; a Linux guest's device tree and where things went.
        let (boot_x0, dtb, linux) = match guest.kind {
            GuestKind::TestImage => {
                if guest.initrd.len() > TEST_DATA_MAX {
                    return Err(VmError::Data { len: guest.initrd.len() });
                }
                if guest.initrd.is_empty() {
                    (0, Vec::new(), None)
                } else {
                    segments.push((TEST_DATA_IPA, guest.initrd, guest.initrd.len() as u64));
                    (TEST_DATA_IPA, Vec::new(), None)
                }
            }
            GuestKind::Linux => {
                let (boot, dtb) = linux_boot(guest)?;
                if let Some(initrd) = &boot.initrd {
                    segments.push((initrd.start, guest.initrd, guest.initrd.len() as u64));
                }
                (boot.dtb, dtb, Some(boot))
            }
            GuestKind::None => return Err(VmError::Kind(guest.kind)),
        };
        let bytes = guest.memory_mib as usize * (1 << 20);
        let skip = pool.range().start.next_multiple_of(RAM_ALIGN) - pool.range().start;
        let no_ram = VmError::NoRam { want_mib: guest.memory_mib, left: pool.len().saturating_sub(skip) };
        if skip.checked_add(bytes).is_none_or(|n| n > pool.len()) {
            return Err(no_ram);
        }
        // The alignment gap is left unused.
        let _ = pool.split_off_front(skip);
        let mut ram = pool.split_off_front(bytes).ok_or(no_ram)?;
        ram.as_mut_slice().fill(0);
        load_image(&mut ram, &with_dtb(&segments, boot_x0, &dtb))?;

        let ram_ipa = GUEST_RAM_BASE..guest.ram_end();
        let mut stage2 = Stage2Map::new(vmid).map_err(VmError::Stage2)?;
        stage2.map_ram(ram_ipa.clone(), ram.range().start as u64).map_err(VmError::Stage2)?;
        let vttbr = stage2.vttbr();
        // Read-only until first written (no vCPU runs yet: no TLB maintenance); what was loaded
        // counts as written.
        stage2.write_protect(ram_ipa.clone(), false).map_err(VmError::Stage2)?;
        let pages = ((ram_ipa.end - ram_ipa.start) / PAGE) as usize;
        let mut touched = alloc::vec![0u64; pages.div_ceil(64)];
        for &(ipa, data, mem_len) in &with_dtb(&segments, boot_x0, &dtb) {
            let end = ipa + mem_len.max(data.len() as u64);
            let mut page_ipa = ipa & !(PAGE - 1);
            while page_ipa < end {
                set_bit(&mut touched, ((page_ipa - ram_ipa.start) / PAGE) as usize);
                page_ipa += PAGE;
            }
        }
        // Outside a dirty log, touched pages are writable (`dirty_fault` relies on it).
        for (first, n) in runs_of(&touched, pages) {
            let ipa = ram_ipa.start + first * PAGE;
            stage2.make_writable(ipa..ipa + n * PAGE).map_err(VmError::Stage2)?;
        }

        let config = VgicConfig { vcpus: guest.vcpus, spis: GUEST_SPIS, priority_bits: priority_bits.clamp(4, 8) };
        let vgic = Vgic::new(config).map_err(VmError::Vgic)?;
        Ok(Vm {
            id: guest.vm,
            name: String::from(guest.name),
            first_vcpu,
            vcpus: guest.vcpus,
            ram_ipa,
            ram: Mutex::new(ram),
            segments,
            dtb,
            linux,
            entry_ipa: guest.entry_ipa,
            boot_x0,
            vttbr,
            // The tables must outlive every vCPU that runs on them: the VM lives for the run.
            stage2: Mutex::new(Stage2State { map: stage2, touched, log: None }),
            paused: AtomicBool::new(false),
            hold: AtomicU8::new(0),
            vgic: Mutex::new(vgic),
            uart: Mutex::new(Pl011::new()),
            stopping: AtomicBool::new(false),
            stop_reason: AtomicU8::new(0),
            stopped: AtomicU16::new(0),
            resetting: AtomicU8::new(RESET_NONE),
            weight: guest.weight,
            reservation: guest.reservation.map(|r| (r.budget.as_nanos(), r.period.as_nanos())),
            cntvoff: AtomicU64::new(0),
            trap_tlbi: false,
            tlb: vcpu_runtime::tlb::VmTlb::new(),
            tlbi_wait_ticks: AtomicU64::new(0),
            tlbi_wait_ticks_max: AtomicU64::new(0),
            tlbi_deferred: AtomicU64::new(0),
        })
    }

    /// What a core loads into its EL2 registers to run one of the VM's vCPUs.
    pub fn regs(&self) -> crate::guest::VmRegs {
        let ttlb = if self.trap_tlbi { crate::guest::HCR_TTLB } else { 0 };
        crate::guest::VmRegs {
            vttbr: self.vttbr,
            cntvoff: self.cntvoff.load(Ordering::Relaxed),
            hcr: crate::guest::HCR_GUEST | ttlb,
        }
    }

    /// Starts a `SYSTEM_RESET`; returns whether this call did (no reset or stop was under way).
    pub fn begin_reset(&self) -> bool {
        let begun = !self.stopping.load(Ordering::SeqCst)
            && self.resetting.compare_exchange(RESET_NONE, RESET_QUIESCING, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if begun {
            self.hold.fetch_or(HOLD_RESET, Ordering::SeqCst);
        }
        begun
    }

    /// Ends a reset (its image is loaded again): the VM's vCPUs may run.
    pub fn end_reset(&self) {
        self.resetting.store(RESET_NONE, Ordering::SeqCst);
        self.hold.fetch_and(!HOLD_RESET, Ordering::SeqCst);
    }

    /// Pauses the VM for live migration, or resumes it; its vCPUs are signalled after.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if paused {
            self.hold.fetch_or(HOLD_PAUSE, Ordering::SeqCst);
        } else {
            self.hold.fetch_and(!HOLD_PAUSE, Ordering::SeqCst);
        }
    }

    /// The run is ending (`Hypervisor::begin_ending`, before it kicks the cores).
    pub fn hold_for_end(&self) {
        self.hold.fetch_or(HOLD_END, Ordering::SeqCst);
    }

    /// Whether the VM may be stopping, resetting or paused, or the run ending (then `stopping`,
    /// [`Vm::is_resetting`], `paused` and `Hypervisor::ending` say which): one load for the test
    /// every entry and every exit that leaves makes. An entry tests it after its vCPU is made
    /// `Running`; a core that sets one of them signals the VM's vCPUs after it, which kicks the
    /// cores it sees running them (the run's end kicks every core).
    #[inline(always)]
    pub fn held(&self) -> bool {
        self.hold.load(Ordering::SeqCst) != 0
    }

    /// Whether a reset is under way: a vCPU of this VM that comes to run turns itself off.
    pub fn is_resetting(&self) -> bool {
        self.resetting.load(Ordering::Acquire) != RESET_NONE
    }

    /// Loads the image into guest RAM again (with its data blob, or a Linux guest's device
    /// tree and initramfs; the rest of RAM keeps its contents, as RAM does through a warm
    /// reset) and resets the emulated devices, which drops every pending interrupt. Only while
    /// every vCPU is off ([`RESET_LOADING`]): nobody runs on the RAM.
    pub fn reload(&self) -> Result<(), VmError> {
        load_image(&mut self.ram.lock(), &with_dtb(&self.segments, self.boot_x0, &self.dtb))?;
        self.vgic().reset();
        *self.uart.lock() = Pl011::new();
        Ok(())
    }

    /// The vCPUs of a VM built from `guest`: vCPU 0 starts at the image's entry point with
    /// x0 = the data blob's address, or 0 (test images get no device tree), or a Linux guest's
    /// device tree (x1 = x2 = x3 = 0, MMU and caches off, EL1h with D, A, I, F masked, as the
    /// arm64 boot protocol wants); the others wait, at reset, for a `CPU_ON`.
    pub fn make_vcpus(&self, guest: &GuestEntry<'_>) -> Vec<Vcpu> {
        (0..self.vcpus)
            .map(|i| Vcpu {
                id: VcpuId(self.first_vcpu.0 + i),
                vm: self.id,
                index: i,
                ctx: Mutex::new(if i == 0 {
                    VcpuContext::new(vmpidr(i), guest.entry_ipa, self.boot_x0)
                } else {
                    VcpuContext::new(vmpidr(i), 0, 0)
                }),
                boot: BootSlot::new(),
                timer_deadline: AtomicU64::new(NO_DEADLINE),
                vgic_epoch: AtomicU64::new(0),
                sgi_self_target: sgi_self_target(i),
            })
            .collect()
    }

    /// Runs `f` on the guest's RAM (to read it for a checkpoint; no vCPU of the VM may run).
    pub fn with_ram<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.ram.lock().as_slice())
    }

    /// Runs `f` on the guest's RAM to overwrite it (a restore, before any vCPU of the VM runs).
    pub fn with_ram_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(self.ram.lock().as_mut_slice())
    }

    /// Copies guest RAM at `offset` (bytes from its base) into `out` while its vCPUs may run: see
    /// [`RamRegion::snapshot`]. False if the range is not RAM.
    pub fn snapshot_ram(&self, offset: u64, out: &mut [u8]) -> bool {
        usize::try_from(offset).is_ok_and(|o| self.ram.lock().snapshot(o, out))
    }

    /// Bytes of guest RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_ipa.end - self.ram_ipa.start
    }

    /// Starts logging the pages the guest writes: all of RAM becomes read-only at stage 2 (with
    /// DBM where the CPU tracks dirtiness itself), the log empty. Returns whether the hardware
    /// tracks.
    pub fn start_dirty_log(&self) -> Result<bool, Stage2Error> {
        let hardware = crate::stage2::hardware_dirty();
        {
            let mut s2 = self.stage2.lock();
            let pages = (self.ram_bytes() / PAGE) as usize;
            s2.log = Some(DirtyLog { bits: alloc::vec![0; pages.div_ceil(64)], hardware, faulted: 0, found_by_cpu: 0 });
            // Untouched pages are read-only already; their first write is logged by its fault.
            for (first, n) in runs_of(&s2.touched, pages) {
                let ipa = self.ram_ipa.start + first * PAGE;
                s2.map.write_protect(ipa..ipa + n * PAGE, hardware)?;
            }
        }
        crate::stage2::invalidate_vm(self.vttbr);
        Ok(hardware)
    }

    /// A stage-2 permission fault at `ipa` by a vCPU of this VM (loaded on this core): a first
    /// write to an untouched page, or a write logged by live migration. The page is marked
    /// (touched, and dirty while the VM logs) and made writable, and the access can be retried.
    /// A fault on a page that is writable already comes from a stale entry in this core's TLB
    /// (the permission was given back by another core, which dropped only its own entries): it
    /// is handled alike, the mark conservative. False when `ipa` is not RAM.
    pub fn dirty_fault(&self, ipa: u64) -> bool {
        if !self.is_ram(ipa, 1) {
            return false;
        }
        let page_ipa = ipa & !(PAGE - 1);
        let whole_granule = {
            let mut s2 = self.stage2.lock();
            let Stage2State { map, touched, log } = &mut *s2;
            let page = ((page_ipa - self.ram_ipa.start) / PAGE) as usize;
            if let Some(log) = log {
                // Live migration logs every page on its own.
                if map.make_writable(page_ipa..page_ipa + PAGE).is_err() {
                    return false;
                }
                set_bit(touched, page);
                log.mark(page);
                log.faulted += 1;
                false
            } else if bit(touched, page) {
                // Outside a log touched pages are writable: a stale entry in this core's TLB
                // (dropped below). Made writable again all the same, so that a touched page left
                // read-only by mistake costs a fault, never a loop of them.
                if map.make_writable(page_ipa..page_ipa + PAGE).is_err() {
                    return false;
                }
                false
            } else {
                // A first write: its whole granule becomes touched and writable at once.
                let granule = self.first_write_granule(page_ipa);
                if map.make_writable(granule.clone()).is_err() {
                    return false;
                }
                let first = ((granule.start - self.ram_ipa.start) / PAGE) as usize;
                for p in first..first + ((granule.end - granule.start) / PAGE) as usize {
                    set_bit(touched, p);
                }
                true
            }
        };
        if whole_granule {
            // This core's read-only entries of the granule's other pages go too; another core's
            // stale entry costs it one spurious fault, which finds the page touched.
            crate::stage2::invalidate_loaded_vm_local();
        } else {
            crate::stage2::invalidate_ipa_local(page_ipa);
        }
        true
    }

    /// The first-write granule holding `page_ipa`: [`FIRST_WRITE_GRANULE`] aligned, within RAM.
    fn first_write_granule(&self, page_ipa: u64) -> core::ops::Range<u64> {
        let start = (page_ipa & !(FIRST_WRITE_GRANULE - 1)).max(self.ram_ipa.start);
        let end = (page_ipa & !(FIRST_WRITE_GRANULE - 1)).saturating_add(FIRST_WRITE_GRANULE).min(self.ram_ipa.end);
        start..end
    }

    /// Harvests the pages written since the log started or since the last harvest into `runs`
    /// (page indices from the RAM base) and write-protects them again; their TLB entries are
    /// gone when this returns, so what the caller copies of them afterwards is at least as new as
    /// what the log saw, and later writes are logged again.
    pub fn harvest_dirty(&self, runs: &mut DirtyRuns) -> Result<(), Stage2Error> {
        let base = self.ram_ipa.start;
        {
            let mut s2 = self.stage2.lock();
            let Stage2State { map, log, .. } = &mut *s2;
            let Some(log) = log else { return Ok(()) };
            // Pages marked by write faults: always with software tracking, and with hardware
            // tracking too where a write still faulted (a CPU that reports HAFDBS but leaves a
            // stage-2 DBM page read-only, or a stage-1 walk's write).
            let first_new = runs.len();
            for (w, word) in log.bits.iter_mut().enumerate() {
                let mut bits = core::mem::take(word);
                while bits != 0 {
                    let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    push_page(runs, page);
                }
            }
            for &(first, n) in &runs[first_new..] {
                let ipa = base + first * PAGE;
                map.write_protect(ipa..ipa + n * PAGE, log.hardware)?;
            }
            if log.hardware {
                let mut found = 0;
                map.harvest_hardware_dirty(self.ram_ipa.clone(), &mut |ipa| {
                    push_page(runs, (ipa - base) / PAGE);
                    found += 1;
                })?;
                log.found_by_cpu += found;
            }
        }
        crate::stage2::invalidate_vm(self.vttbr);
        Ok(())
    }

    /// Whether the page at `offset` (bytes from the RAM base) was ever written: a page that was
    /// not is zero.
    pub fn page_touched(&self, offset: u64) -> bool {
        bit(&self.stage2.lock().touched, (offset / PAGE) as usize)
    }

    /// From the page at `offset` (bytes from the RAM base): whether it was ever written, and how
    /// many pages from it (at most `most`) are alike, under one lock.
    pub fn touched_run(&self, offset: u64, most: u64) -> (bool, u64) {
        let s2 = self.stage2.lock();
        let pages = self.ram_bytes() / PAGE;
        let first = offset / PAGE;
        let touched = bit(&s2.touched, first as usize);
        let mut n = 1;
        while n < most && first + n < pages {
            let page = (first + n) as usize;
            // A whole word alike at once.
            if page % 64 == 0 && first + n + 64 <= pages {
                let word = s2.touched[page / 64];
                if word == if touched { u64::MAX } else { 0 } {
                    n += 64;
                    continue;
                }
            }
            if bit(&s2.touched, page) != touched {
                break;
            }
            n += 1;
        }
        (touched, n.min(most))
    }

    /// After a restore wrote guest RAM from a checkpoint: every page counts as touched (the
    /// checkpoint's zero runs did not write, but a page may have been written before).
    /// All of RAM is made writable too, as touched pages are outside a dirty log (should that
    /// fail, `dirty_fault` still makes each page writable at its first write).
    pub fn touch_all(&self) {
        self.make_ram_writable();
        self.mark_all_touched();
    }

    /// [`Vm::touch_all`]'s stage-2 half: all of RAM writable (outside a dirty log). Done before
    /// a migration's stream is read into a VM that does not run yet, so that only the cheap half
    /// ([`Vm::mark_all_touched`]) falls in the downtime. Until then writable pages may be
    /// untouched; nothing runs in the VM to write them.
    pub fn make_ram_writable(&self) {
        {
            let mut s2 = self.stage2.lock();
            if s2.log.is_some() || s2.map.make_writable(self.ram_ipa.clone()).is_err() {
                return;
            }
        }
        crate::stage2::invalidate_vm(self.vttbr);
    }

    /// [`Vm::touch_all`]'s bookkeeping half: every page counts as touched. (Before it, a
    /// restore's zero runs clear only the pages touched so far: a fresh VM's are zero.)
    pub fn mark_all_touched(&self) {
        self.stage2.lock().touched.fill(u64::MAX);
    }

    /// Pages the dirty log has seen written so far: (by write faults, by the CPU's dirty state).
    pub fn dirty_log_counts(&self) -> (u64, u64) {
        self.stage2.lock().log.as_ref().map_or((0, 0), |l| (l.faulted, l.found_by_cpu))
    }

    /// Ends dirty logging: every touched page writable again, DBM off.
    pub fn stop_dirty_log(&self) -> Result<(), Stage2Error> {
        {
            let mut s2 = self.stage2.lock();
            s2.log = None;
            // Untouched pages stay read-only: their first write is still to be seen.
            let pages = (self.ram_bytes() / PAGE) as usize;
            for (first, n) in runs_of(&s2.touched, pages) {
                let ipa = self.ram_ipa.start + first * PAGE;
                s2.map.make_writable(ipa..ipa + n * PAGE)?;
            }
        }
        crate::stage2::invalidate_vm(self.vttbr);
        Ok(())
    }

    /// The RAM region backing the guest's memory (for reports).
    pub fn ram_pa(&self) -> Range<usize> {
        self.ram.lock().range()
    }

    /// Whether `[ipa, ipa + len)` is guest RAM.
    pub fn is_ram(&self, ipa: u64, len: u64) -> bool {
        ipa >= self.ram_ipa.start && ipa.checked_add(len).is_some_and(|end| end <= self.ram_ipa.end)
    }

    /// The VM's vCPU with this index.
    pub fn vcpu_id(&self, index: u16) -> Option<VcpuId> {
        (index < self.vcpus).then_some(VcpuId(self.first_vcpu.0 + index))
    }

    /// Marks the VM as stopping for `reason`; returns whether this call did it (the first).
    pub fn begin_stop(&self, reason: StopReason) -> bool {
        let first = !self.stopping.swap(true, Ordering::SeqCst);
        self.hold.fetch_or(HOLD_STOP, Ordering::SeqCst);
        if first {
            self.stop_reason.store(reason_code(reason), Ordering::Release);
        }
        first
    }

    /// Why the VM is stopping (SYSTEM_OFF when not said).
    pub fn stop_reason(&self) -> StopReason {
        match self.stop_reason.load(Ordering::Acquire) {
            1 => StopReason::SystemReset,
            2 => StopReason::Fault,
            3 => StopReason::Halted,
            4 => StopReason::Migrated,
            _ => StopReason::SystemOff,
        }
    }

    /// The interrupt controller model, locked.
    pub fn vgic(&self) -> spin::MutexGuard<'_, Vgic> {
        self.vgic.lock()
    }

    /// The guest physical range of the emulated redistributors.
    pub fn gicr_range(&self) -> Range<u64> {
        GICR_BASE..GICR_BASE + u64::from(self.vcpus) * GICR_STRIDE
    }

    /// The guest physical range of the emulated distributor.
    pub fn gicd_range(&self) -> Range<u64> {
        GICD_BASE..GICD_BASE + GICD_SIZE
    }
}

/// The segments to load: `segments`, and a non-empty device tree at `dtb_ipa`.
fn with_dtb<'a>(segments: &[(u64, &'a [u8], u64)], dtb_ipa: u64, dtb: &'a [u8]) -> Vec<(u64, &'a [u8], u64)> {
    let mut all = segments.to_vec();
    if !dtb.is_empty() {
        all.push((dtb_ipa, dtb, dtb.len() as u64));
    }
    all
}

/// A Linux guest's layout (`vdev::linux_boot`: the kernel where the manifest put it, the
/// device tree at the base of RAM, the initramfs at the top) and its device tree
/// (`vdev::guest_dt`: its RAM, its vCPUs with their `VMPIDR_EL2` affinities, PSCI over HVC,
/// the emulated GICv3, timer and PL011, the manifest's command line and the initramfs).
fn linux_boot(guest: &GuestEntry<'_>) -> Result<(LinuxBoot, Vec<u8>), VmError> {
    let kernel = guest
        .segments()
        .iter()
        .find(|s| s.ipa == guest.entry_ipa)
        .ok_or(VmError::LinuxEntry { entry: guest.entry_ipa })?;
    if guest.segments().iter().any(|s| s.ipa < kernel.ipa) {
        return Err(VmError::LinuxEntry { entry: guest.entry_ipa });
    }
    let loaded_end = guest.segments().iter().map(|s| s.ipa + s.mem_len).max().unwrap_or(kernel.ipa);
    let ram = GUEST_RAM_BASE..guest.ram_end();
    let layout =
        linux_boot::layout(ram.clone(), kernel.ipa, kernel.data, loaded_end - kernel.ipa, guest.initrd.len() as u64)
            .map_err(VmError::Linux)?;
    let cpus: Vec<u64> = (0..guest.vcpus).map(vmpidr).collect();
    let config = GuestDtConfig {
        ram_base: ram.start,
        ram_size: ram.end - ram.start,
        cpus: &cpus,
        psci: PsciConduit::Hvc,
        gicd_base: GICD_BASE,
        gicd_size: GICD_SIZE,
        gicr_base: GICR_BASE,
        gicr_size: u64::from(guest.vcpus) * GICR_STRIDE,
        timer: TimerPpis::SBSA,
        uart: Some(Pl011Node { base: UART_BASE, size: UART_SIZE, intid: UART_INTID, clock_hz: UART_CLOCK_HZ }),
        bootargs: guest.cmdline,
        initrd: layout.initrd.clone(),
    };
    let dtb = guest_dt::generate(&config).map_err(VmError::DeviceTree)?;
    if dtb.len() as u64 > layout.dtb_room {
        return Err(VmError::DeviceTreeTooLarge { len: dtb.len(), room: layout.dtb_room });
    }
    let boot = LinuxBoot { kernel: layout.kernel, dtb: layout.dtb, dtb_len: dtb.len(), initrd: layout.initrd };
    Ok((boot, dtb))
}

/// Copies the image's segments into `ram` (zero-filling each segment's tail) and cleans it to the
/// point of coherency, as a vCPU starts with its MMU off.
fn load_image(ram: &mut RamRegion, segments: &[(u64, &[u8], u64)]) -> Result<(), VmError> {
    let mem = ram.as_mut_slice();
    for &(ipa, data, mem_len) in segments {
        let start = ipa.checked_sub(GUEST_RAM_BASE).ok_or(VmError::Segment { ipa })? as usize;
        let len = usize::try_from(mem_len.max(data.len() as u64)).map_err(|_| VmError::Segment { ipa })?;
        let end = start.checked_add(len).ok_or(VmError::Segment { ipa })?;
        let dest = mem.get_mut(start..end).ok_or(VmError::Segment { ipa })?;
        let (copied, zeroed) = dest.split_at_mut(data.len());
        copied.copy_from_slice(data);
        zeroed.fill(0);
    }
    ram.clean_to_poc();
    Ok(())
}

fn reason_code(reason: StopReason) -> u8 {
    match reason {
        StopReason::SystemOff => 0,
        StopReason::SystemReset => 1,
        StopReason::Fault => 2,
        StopReason::Halted => 3,
        StopReason::Migrated => 4,
    }
}

/// `VMPIDR_EL2` of vCPU `index`: Aff0 = index, bit 31 (RES1) set, U = 0.
pub fn vmpidr(index: u16) -> u64 {
    (1 << 31) | u64::from(index & 0xff)
}
