//! The hypervisor proper: VMs built from the scenario manifest, and on every core the loop that
//! asks the runtime what to run and runs it.
//!
//! [`start`] runs on the boot core once every core is online: it builds the VMs (guest RAM,
//! stage 2, vGIC, UART), the runtime (`vcpu_runtime::build`), publishes the [`Hypervisor`] and
//! enters the core loop; [`secondary`] is where every other core waits for it and then enters
//! the same loop (`core.rs`). Guest exits are handled in `exits.rs`.
//!
//! The run ends when every guest has stopped or the scenario's duration has passed: every core
//! leaves its loop and hands in its vCPUs' statistics, and the boot core prints them (`stat vcpu
//! ...` lines) and exits with status 0 through semihosting.
//!
//! Everything here is safe code over the platform's primitives ([`crate::guest`],
//! [`crate::gic`], [`crate::stage2`], [`crate::timer`]).

pub mod bench;
pub mod checkpoint;
mod core_loop;
pub use core_loop::set_tlbi_spin;
mod exits;
pub mod instructions;
pub mod live;
pub mod power;
pub mod vm;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::sync::Mutex;
use spin::Once;
use vcpu_runtime::manifest::Manifest;
use vcpu_runtime::trace::{TraceEvent, TraceKind};
use vcpu_runtime::vcpu::PPM;
use vcpu_runtime::{
    CoreId, CoreMask, CoreRuntime, Instant, Nanos, Reservation, RuntimeConfig, SchedParams, System, TraceSink,
    VcpuConfig, VcpuId, VcpuState, VcpuStats,
};

use crate::ram::RamRegion;
use crate::{exit_code, gic, println, semihosting, smp, stage2, timer};
use vm::{Vcpu, Vm};

/// Per-core shared state.
#[derive(Debug)]
pub struct CoreShared {
    /// The core's MPIDR affinity (for IPIs).
    pub mpidr: u64,
    /// The `ICC_SGI1R_EL1` value of a kick to it (`gic::sgi_value(SGI_KICK, mpidr)`).
    pub kick_sgi: u64,
    /// Set before a kick IPI when the kicked core must poll its runtime (a wake-up, a CPU_ON,
    /// a hand-over); a kick without it only makes the running vCPU exit (its list registers are
    /// refilled).
    pub poll: AtomicBool,
    /// Set (with `poll`) before a kick IPI when the kicked core must also do its housekeeping
    /// at once: the run is ending, the governor drains or starts it, a guest's mark brought
    /// core 0's live-migration step forward. A runtime kick (a hand-over, a wake-up) needs none.
    pub housekeep: AtomicBool,
    /// Its power state ([`power::ON`], [`power::DRAIN`], ...; docs/governor.md).
    pub power: AtomicU8,
    /// `CPU_ON` attempts that failed in a row.
    pub cpu_on_failures: AtomicU32,
    /// Whether the core is in the guest of a VM that traps its TLB maintenance, and which
    /// (`vcpu_runtime::tlb`, `Core::guest_tlbi`).
    pub guest_run: vcpu_runtime::tlb::GuestRun,
}

/// Everything the cores share once the scenario is set up.
pub struct Hypervisor {
    pub sys: System,
    pub vms: Vec<Vm>,
    /// Indexed by `VcpuId`.
    pub vcpus: Vec<Vcpu>,
    pub cores: Vec<CoreShared>,
    runtimes: Mutex<Vec<Option<CoreRuntime>>>,
    pub start: Instant,
    /// When the scenario's duration is over.
    pub end: Instant,
    /// `end` in counter ticks, rounded up: `timer::ticks() >= end_ticks` exactly when
    /// `timer::now() >= end`.
    pub end_ticks: u64,
    /// The run is ending: every core leaves its loop.
    ending: AtomicBool,
    /// VMs whose every vCPU has stopped.
    stopped_vms: AtomicUsize,
    /// Bit `k`: core `k` has left its loop and handed in its statistics.
    done: AtomicU64,
    stats: Mutex<Vec<(VcpuId, VcpuStats, VcpuState)>>,
    trace_events: AtomicU64,
    /// List registers per core (`ICH_VTR_EL2`).
    pub lrs: usize,
    /// The governor, the energy model and every core's energy book.
    pub power: power::Power,
}

static HYP: Once<&'static Hypervisor> = Once::new();

/// Which trace events reach the console (boot argument `hv.trace=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TraceLevel {
    /// Every event (the default).
    All = 0,
    /// All but the per-switch scheduling events (`run`, `pre`, `blk`, `wake`), which cost a
    /// console line each on the hot path.
    Events = 1,
    /// None.
    Off = 2,
}

impl TraceLevel {
    /// Parses the value of `hv.trace=`.
    pub fn from_arg(value: &str) -> Option<TraceLevel> {
        match value {
            "all" => Some(TraceLevel::All),
            "events" => Some(TraceLevel::Events),
            "off" => Some(TraceLevel::Off),
            _ => None,
        }
    }
}

static TRACE_LEVEL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(TraceLevel::All as u8);

/// Sets which trace events are printed (before the cores start running guests).
pub fn set_trace_level(level: TraceLevel) {
    TRACE_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// How guests' TLB maintenance instructions reach the other cores (boot argument
/// `hv.guest-tlbi=`; docs/linux-guests.md, *Guest TLB maintenance*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GuestTlbi {
    /// [`GuestTlbi::Trap`] when a guest has a real-time reservation and the board has more
    /// than one core, else [`GuestTlbi::Broadcast`] (the default).
    Auto = 0,
    /// Trapped (`HCR_EL2.TTLB`): the hypervisor carries each one out on the trapping core and
    /// on the cores that run the same VM, and no other core is disturbed.
    Trap = 1,
    /// Not trapped; broadcast to every core by the hardware (`HCR_EL2.FB`).
    Broadcast = 2,
}

impl GuestTlbi {
    /// Parses the value of `hv.guest-tlbi=`.
    pub fn from_arg(value: &str) -> Option<GuestTlbi> {
        match value {
            "auto" => Some(GuestTlbi::Auto),
            "trap" => Some(GuestTlbi::Trap),
            "broadcast" => Some(GuestTlbi::Broadcast),
            _ => None,
        }
    }
}

static GUEST_TLBI: AtomicU8 = AtomicU8::new(GuestTlbi::Auto as u8);

/// Sets how guests' TLB maintenance is carried out (before the VMs are built).
pub fn set_guest_tlbi(policy: GuestTlbi) {
    GUEST_TLBI.store(policy as u8, Ordering::Relaxed);
}

fn guest_tlbi() -> GuestTlbi {
    match GUEST_TLBI.load(Ordering::Relaxed) {
        1 => GuestTlbi::Trap,
        2 => GuestTlbi::Broadcast,
        _ => GuestTlbi::Auto,
    }
}

/// Prints trace events on the console, one line each, as the trace level allows.
pub struct ConsoleTrace<'h> {
    hyp: &'h Hypervisor,
}

impl TraceSink for ConsoleTrace<'_> {
    fn emit(&mut self, event: TraceEvent) {
        let level = TRACE_LEVEL.load(Ordering::Relaxed);
        let scheduling = matches!(
            event.kind,
            TraceKind::VcpuRun { .. }
                | TraceKind::VcpuPreempt { .. }
                | TraceKind::VcpuBlock { .. }
                | TraceKind::VcpuWake { .. }
        );
        if level == TraceLevel::Off as u8 || (level == TraceLevel::Events as u8 && scheduling) {
            return;
        }
        self.hyp.trace_events.fetch_add(1, Ordering::Relaxed);
        println!("{event}");
    }

    fn wants_switch_events(&self) -> bool {
        TRACE_LEVEL.load(Ordering::Relaxed) == TraceLevel::All as u8
    }
}

impl Hypervisor {
    pub fn trace(&self) -> ConsoleTrace<'_> {
        ConsoleTrace { hyp: self }
    }

    pub fn vcpu(&self, id: VcpuId) -> &Vcpu {
        &self.vcpus[id.index()]
    }

    pub fn vm_of(&self, id: VcpuId) -> &Vm {
        &self.vms[self.vcpus[id.index()].vm.index()]
    }

    /// Sends `core` a kick IPI; with `poll`, it also polls its runtime.
    pub fn kick_core(&self, core: CoreId, poll: bool) {
        let Some(c) = self.cores.get(core.index()) else { return };
        if poll {
            c.poll.store(true, Ordering::Release);
        }
        gic::send_sgi_value(c.kick_sgi);
    }

    /// [`Hypervisor::kick_core`] with `poll`, and the core does its housekeeping first.
    pub fn kick_core_to_housekeep(&self, core: CoreId) {
        let Some(c) = self.cores.get(core.index()) else { return };
        c.housekeep.store(true, Ordering::Release);
        self.kick_core(core, true);
    }

    /// Whether the run is ending.
    pub fn ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Ends the run: every core leaves its loop (the others are kicked).
    pub fn begin_ending(&self, me: CoreId) {
        if !self.ending.swap(true, Ordering::AcqRel) {
            for vm in self.vms.iter() {
                vm.hold_for_end();
            }
            for k in 0..self.cores.len() {
                if k != me.index() {
                    self.kick_core_to_housekeep(CoreId(k as u16));
                }
            }
        }
    }

    /// A VM's vCPU stopped; when it was the VM's last, the VM is done, and when that was the
    /// last VM, the run ends.
    pub fn vcpu_stopped(&self, me: CoreId, vm: &Vm) {
        let stopped = vm.stopped.fetch_add(1, Ordering::AcqRel) + 1;
        if stopped < vm.vcpus {
            return;
        }
        let mut uart = vm.uart.lock();
        uart.flush(|line| println!("[{}] {}", vm.name, Printable(line)));
        drop(uart);
        println!("guest {}: stopped ({})", vm.name, vm.stop_reason().word());
        if self.stopped_vms.fetch_add(1, Ordering::AcqRel) + 1 == self.vms.len() {
            self.begin_ending(me);
        }
    }
}

/// Guest output bytes as text: printable ASCII as is, anything else as `?`.
pub struct Printable<'a>(pub &'a [u8]);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        match core::str::from_utf8(self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control() || c == '\t') => f.write_str(s),
            _ => {
                for &b in self.0 {
                    f.write_char(if (0x20..0x7f).contains(&b) { b as char } else { '?' })?;
                }
                Ok(())
            }
        }
    }
}

/// The runtime configuration of the manifest's guests on `cores` cores: each guest's vCPUs in
/// order, the first runnable, the others parked until the guest's `CPU_ON`. A guest whose
/// affinity is every core of the scenario's board (the default, "any core") may run on any core
/// of the machine, also when it has more cores than the board.
pub fn runtime_config(manifest: &Manifest<'_>, cores: u16) -> RuntimeConfig {
    let board = CoreMask::first(usize::from(manifest.cores));
    let p = &manifest.policy;
    let params = SchedParams {
        timeslice: p.timeslice,
        min_granularity: p.min_granularity,
        rt_bound_ppm: u64::from(p.rt_utilization_bound_percent) * (PPM / 100),
        util_half_life: p.util_half_life,
        ..SchedParams::default()
    };
    let mut vcpus = Vec::new();
    for g in manifest.guests() {
        for i in 0..g.vcpus {
            vcpus.push(VcpuConfig {
                vm: g.vm,
                index_in_vm: i,
                weight: g.weight,
                reservation: g.reservation.map(|r| Reservation { budget: r.budget, period: r.period }),
                affinity: if g.affinity == board { CoreMask::ALL } else { g.affinity },
                starts_parked: i > 0,
            });
        }
    }
    RuntimeConfig { cores, params, vcpus }
}

/// Builds the VMs of `manifest` with RAM from `pool`, and the runtime for the cores whose
/// MPIDR affinities are `cores` (core `k` is `cores[k]`, the boot core first), then runs the
/// boot core's loop. Called on the boot core once every core is online.
pub fn start(manifest: Manifest<'static>, cores: &[u64], mut pool: RamRegion) -> ! {
    let fail = |what: String| -> ! {
        crate::fail!("{what}");
    };
    if let Err(e) = gic::init_distributor() {
        fail(format!("{e}"));
    }
    let n_cores = cores.len() as u16;
    if manifest.cores != n_cores {
        println!(
            "note: the scenario is for {} core{}, the machine has {n_cores}: running on {n_cores} (guests allowed on any core of the board may use all of them)",
            manifest.cores,
            if manifest.cores == 1 { "" } else { "s" }
        );
    }
    let priority_bits = gic::virtual_priority_bits();
    let mut vms = Vec::new();
    let mut vcpus = Vec::new();
    for guest in manifest.guests() {
        let vmid = guest.vm.0 + 1;
        if vmid > stage2::MAX_VMID {
            fail(format!("guest {} (`{}`): more than {} guests", guest.vm.0, guest.name, stage2::MAX_VMID));
        }
        let first = VcpuId(vcpus.len() as u16);
        let vm = match Vm::build(&guest, first, vmid, &mut pool, priority_bits) {
            Ok(vm) => vm,
            Err(e) => fail(format!("guest {} (`{}`): {e}", guest.vm.0, guest.name)),
        };
        println!(
            "vm {} \"{}\": {} vCPU{}, RAM {} MiB at IPA {:#x} (PA {:#x}), VMID {}, entry {:#x}",
            vm.id.0,
            vm.name,
            vm.vcpus,
            if vm.vcpus == 1 { "" } else { "s" },
            guest.memory_mib,
            vm.ram_ipa.start,
            vm.ram_pa().start,
            vmid,
            guest.entry_ipa
        );
        if let Some(linux) = &vm.linux {
            let initrd = match &linux.initrd {
                Some(r) => format!("initramfs {:#x}..{:#x}", r.start, r.end),
                None => String::from("no initramfs"),
            };
            println!(
                "vm {} \"{}\": linux: Image {:#x}..{:#x}, device tree at {:#x} ({} bytes), {initrd}",
                vm.id.0, vm.name, linux.kernel.start, linux.kernel.end, linux.dtb, linux.dtb_len
            );
        }
        vcpus.extend(vm.make_vcpus(&guest));
        vms.push(vm);
    }
    let trap_tlbi = match guest_tlbi() {
        GuestTlbi::Trap => true,
        GuestTlbi::Broadcast => false,
        GuestTlbi::Auto => n_cores > 1 && vms.iter().any(|vm| vm.reservation.is_some()),
    };
    if trap_tlbi {
        println!("guest TLB maintenance: trapped, carried out by the hypervisor on the cores concerned");
        for vm in &mut vms {
            vm.trap_tlbi = true;
        }
    }
    let mut config = runtime_config(&manifest, n_cores);
    // `hv.restore`: the first VM continues from the checkpoint on the disk (verified whole
    // before anything of it runs).
    // `hv.migrate-in`: the first VM comes from another instance over the migration stream; it
    // runs once the source committed. Everything else is built before the stream is read, so
    // that the guest's downtime holds only the stream's end, READY and COMMIT: its vCPUs start
    // parked and come up as the stream says.
    let migrate_in = live::migrate_in_requested();
    if migrate_in {
        let Some(vm) = vms.first() else { fail("migrate: the scenario has no guest to receive into".into()) };
        for k in 0..usize::from(vm.vcpus) {
            if let Some(v) = config.vcpus.get_mut(vm.first_vcpu.index() + k) {
                v.starts_parked = true;
            }
        }
    }
    let restored = match checkpoint::restore_requested() {
        true => match vms.first() {
            Some(vm) => match checkpoint::restore(vm, &vcpus) {
                Ok(r) => {
                    vm.touch_all();
                    println!("restore: guest {} from the checkpoint disk", vm.name);
                    for (k, power) in r.power.iter().enumerate() {
                        if let Some(v) = config.vcpus.get_mut(vm.first_vcpu.index() + k) {
                            v.starts_parked = !matches!(power, migrate::checkpoint::PowerState::On);
                        }
                    }
                    Some(r)
                }
                Err(e) => fail(format!("restore: {e}")),
            },
            None => None,
        },
        false => None,
    };
    let now = timer::now();
    let model = match ::power::EnergyModel::for_board(manifest.energy_profile, n_cores) {
        Ok(m) => m,
        Err(e) => fail(format!("energy profile: {e}")),
    };
    let mut governor =
        ::power::governor::GovernorConfig::new(manifest.policy.governor, manifest.policy.governor_period);
    governor.min_move_interval = manifest.policy.min_migration_interval;
    governor.rt_bound_ppm = u64::from(manifest.policy.rt_utilization_bound_percent) * (PPM / 100);
    let power_setup = match power::Power::new(model, governor, &config.vcpus, vms.len(), n_cores.into(), now) {
        Ok(p) => p,
        Err(e) => fail(format!("governor: {e}")),
    };
    let (sys, runtimes) = match vcpu_runtime::build(&config, now) {
        Ok(built) => built,
        Err(e) => fail(format!("runtime: {e}")),
    };
    let duration = manifest.policy.duration;
    let end = match checkpoint::checkpoint_at_ms() {
        // The run ends there, and the boot core writes the checkpoint.
        Some(ms) => now + Nanos::from_millis(ms),
        None if duration == Nanos::ZERO => Instant::NEVER,
        None => now + duration,
    };
    let hyp: &'static Hypervisor = alloc::boxed::Box::leak(alloc::boxed::Box::new(Hypervisor {
        sys,
        vms,
        vcpus,
        cores: cores
            .iter()
            .map(|&mpidr| CoreShared {
                mpidr,
                kick_sgi: gic::sgi_value(gic::SGI_KICK, mpidr),
                poll: AtomicBool::new(false),
                housekeep: AtomicBool::new(false),
                power: AtomicU8::new(power::ON),
                cpu_on_failures: AtomicU32::new(0),
                guest_run: vcpu_runtime::tlb::GuestRun::new(),
            })
            .collect(),
        runtimes: Mutex::new(runtimes.into_iter().map(Some).collect()),
        start: now,
        end,
        end_ticks: timer::nanos_to_ticks(end.as_nanos(), timer::frequency_hz()),
        ending: AtomicBool::new(false),
        stopped_vms: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        stats: Mutex::new(Vec::new()),
        trace_events: AtomicU64::new(0),
        lrs: gic::num_lrs().min(vdev::vgic::MAX_LRS),
        power: power_setup,
    }));
    println!(
        "hypervisor: scenario \"{}\": {} guest{}, {} vCPUs on {n_cores} core{}, duration {} ms",
        manifest.name,
        hyp.vms.len(),
        if hyp.vms.len() == 1 { "" } else { "s" },
        hyp.vcpus.len(),
        if n_cores == 1 { "" } else { "s" },
        duration.as_millis()
    );
    print_placement(hyp);
    if let (Some(r), Some(vm)) = (&restored, hyp.vms.first()) {
        // vCPUs whose CPU_ON was pending start as it asked; the guest's counter continues.
        for (k, power) in r.power.iter().enumerate() {
            if let (migrate::checkpoint::PowerState::OnPending { .. }, Some(id)) = (power, vm.vcpu_id(k as u16)) {
                let _ = hyp.sys.request_power_on(id);
            }
        }
        vm.cntvoff.store(r.timers.cntvoff(timer::counter()), Ordering::Release);
    }
    if let (true, Some(vm)) = (migrate_in, hyp.vms.first()) {
        let mut incoming = match live::receive(vm, &hyp.vcpus) {
            Ok(i) => i,
            Err(e) => fail(format!("migrate: guest {} refused: {e}", vm.name)),
        };
        // READY once everything that could fail here has been done (all of it before the
        // stream, but the stream itself); then COMMIT.
        if let Err(e) = live::await_commit(&mut incoming) {
            fail(format!("migrate: guest {} verified but not committed, it does not run here: {e}", vm.name));
        }
        println!("migrate: guest {} received and committed", vm.name);
        let i = &incoming;
        // Running vCPUs come up where they stopped (their boot slots are empty), vCPUs whose
        // CPU_ON was pending from reset; parked ones stay parked.
        for (k, power) in i.restored.power.iter().enumerate() {
            if let (migrate::checkpoint::PowerState::On | migrate::checkpoint::PowerState::OnPending { .. }, Some(id)) =
                (power, vm.vcpu_id(k as u16))
            {
                let _ = hyp.sys.request_power_on(id);
            }
        }
        // The guest's virtual time continues from the source's, plus the downtime both sides
        // measured: the source's pause until its last section, this side's wait since the
        // trailer (the stream's transit time is not seen by either).
        let here = timer::now().since(i.received_at).as_nanos();
        let paused = i.restored.timing.as_ref().map_or(0, |t| t.downtime_ns);
        let downtime = timer::nanos_to_ticks(paused + here, timer::frequency_hz());
        vm.cntvoff.store(i.restored.timers.cntvoff(timer::counter()).wrapping_sub(downtime), Ordering::Release);
        println!(
            "migrate: guest {} resumes: downtime_us={} (source {} + here {})",
            vm.name,
            (paused + here) / 1000,
            paused / 1000,
            here / 1000
        );
        live::send_done(incoming, 0);
        hyp.power.book_wait(timer::now());
    }
    if let Err(e) = live::arm(now, hyp.vms.len()) {
        fail(format!("migrate: {e}"));
    }
    HYP.call_once(|| hyp);
    // From here on the cores run guests: what their lines cost is counted (`stat console`).
    crate::console::count_costs(true);
    smp::wake_all();
    core_loop::run(hyp, CoreId(0))
}

/// Says where every vCPU starts: `placement: v0 work/0 c0, v1 work/1 c1, ...` (its id, guest
/// and index, and owner core). With the trace's `mig` events it tells on which core a vCPU was
/// at any time; the test harness weighs a real-time miss against the host's stalls of that
/// core's QEMU thread (docs/linux-guests.md).
fn print_placement(hyp: &Hypervisor) {
    let mut line = String::from("placement:");
    for (i, vcpu) in hyp.vcpus.iter().enumerate() {
        let owner = hyp.sys.status(vcpu.id).owner;
        let name = hyp.vms.get(vcpu.vm.index()).map_or("?", |vm| vm.name.as_str());
        let sep = if i == 0 { " " } else { ", " };
        line.push_str(&format!("{sep}v{} {name}/{} c{}", vcpu.id.0, vcpu.index, owner.0));
    }
    println!("{line}");
}

/// Whether the hypervisor runs its guests already: a core that reports in now is one the
/// governor turned back on (its runtime says so in the trace), not one starting at boot.
pub fn is_running() -> bool {
    HYP.get().is_some()
}

/// A secondary core's part: waits until the boot core has set the scenario up, then runs its
/// core loop. Without a scenario it waits for good (the boot core ends the run).
pub fn secondary(core: CoreId) -> ! {
    loop {
        if let Some(hyp) = HYP.get() {
            core_loop::run(hyp, core)
        }
        smp::wait_for_event();
    }
}

impl Hypervisor {
    /// Takes this core's runtime (once).
    fn take_runtime(&self, core: CoreId) -> Option<CoreRuntime> {
        self.runtimes.lock().get_mut(core.index()).and_then(Option::take)
    }

    /// A core that turns itself off leaves its runtime here, until it is back.
    fn give_back_runtime(&self, core: CoreId, rt: CoreRuntime) {
        if let Some(slot) = self.runtimes.lock().get_mut(core.index()) {
            *slot = Some(rt);
        }
    }

    /// Cores that are off (or parked after a refused `CPU_OFF`), as a bit mask: they take no
    /// part in the end of the run; their runtimes wait in `runtimes`.
    fn off_cores(&self) -> u64 {
        let mut mask = 0;
        for (k, c) in self.cores.iter().enumerate() {
            if matches!(c.power.load(Ordering::Acquire), power::OFF | power::PARKED) {
                mask |= 1 << k;
            }
        }
        mask
    }

    /// This core has left its loop: hands in its vCPUs' statistics. The boot core then waits for
    /// the others, prints everything and ends the run; the others wait to be switched off.
    fn finish(&self, me: CoreId, rt: &CoreRuntime) -> ! {
        instructions::sample(me);
        {
            let mut stats = self.stats.lock();
            for v in rt.vcpus() {
                stats.push((v.id(), *v.stats(), v.state()));
            }
        }
        self.done.fetch_or(1 << me.index(), Ordering::AcqRel);
        if me.index() != 0 {
            smp::park();
        }
        crate::console::count_costs(false);
        let all = if self.cores.len() >= 64 { u64::MAX } else { (1u64 << self.cores.len()) - 1 };
        let since = timer::now();
        while (self.done.load(Ordering::Acquire) | self.off_cores()) & all != all {
            if timer::now().since(since) > Nanos::from_secs(2) {
                let missing = all & !(self.done.load(Ordering::Acquire) | self.off_cores());
                crate::fail!("cores {missing:#x} did not leave their loops at the end of the run");
            }
            // Lets the others run under QEMU's round robin: a core halted in WFI with the
            // end's kick pending would not (`cpu::yield_hint`).
            crate::cpu::yield_hint();
        }
        let end = timer::now();
        // The off cores' vCPUs (none: a core hands them all over before it goes off) and
        // statistics.
        for k in 0..self.cores.len() {
            if self.done.load(Ordering::Acquire) & (1 << k) == 0 {
                if let Some(rt) = self.take_runtime(CoreId(k as u16)) {
                    let mut stats = self.stats.lock();
                    for v in rt.vcpus() {
                        stats.push((v.id(), *v.stats(), v.state()));
                    }
                }
            }
        }
        let elapsed = end.since(self.start);
        live::end_of_run(&self.vms);
        for vm in &self.vms {
            let mut uart = vm.uart.lock();
            uart.flush(|line| println!("[{}] {}", vm.name, Printable(line)));
        }
        let mut stats = self.stats.lock();
        stats.sort_by_key(|(id, _, _)| *id);
        for (id, s, state) in stats.iter() {
            let vcpu = self.vcpu(*id);
            let vm = &self.vms[vcpu.vm.index()];
            println!(
                "stat vcpu {}/{} cpu_ns={} runs={} wakeups={} preemptions={} migrations={} wake_latency_max_ns={} reservation_misses={} state={}",
                vm.name,
                vcpu.index,
                s.cpu_time.as_nanos(),
                s.runs,
                s.wakeups,
                s.preemptions,
                s.migrations,
                s.wake_latency_max.as_nanos(),
                s.reservation_misses,
                state_word(*state)
            );
        }
        let us = |ticks: u64| timer::ticks_to_nanos(ticks, timer::frequency_hz()) / 1000;
        for vm in self.vms.iter().filter(|vm| vm.trap_tlbi) {
            let (tlbi, waited) = vm.tlb.counts();
            println!(
                "stat vm {} tlbi={tlbi} tlbi_waited={waited} tlbi_wait_us={} tlbi_wait_max_us={} tlbi_deferred={}",
                vm.name,
                us(vm.tlbi_wait_ticks.load(Ordering::Relaxed)),
                us(vm.tlbi_wait_ticks_max.load(Ordering::Relaxed)),
                vm.tlbi_deferred.load(Ordering::Relaxed)
            );
        }
        let (bytes, ticks, longest) = crate::console::costs();
        println!("stat console bytes={bytes} us={} line_max_us={}", us(ticks), us(longest));
        if let Some(text) = checkpoint::checkpoint_line_missing() {
            crate::fail!("checkpoint: the run ended before the first guest printed a line containing \"{text}\"; nothing written");
        }
        if checkpoint::requested() {
            if let Some(vm) = self.vms.first() {
                let states: Vec<(VcpuId, VcpuState)> = stats.iter().map(|&(id, _, state)| (id, state)).collect();
                match checkpoint::write(vm, &self.vcpus, &states) {
                    Ok((bytes, crc)) => println!("checkpoint: guest {}: {bytes} bytes, crc {crc:#010x}", vm.name),
                    Err(e) => crate::fail!("checkpoint: guest {}: {e}", vm.name),
                }
            }
        }
        self.energy_report(end);
        instructions::report(self.cores.len());
        let stopped = self.stopped_vms.load(Ordering::Acquire);
        println!(
            "hypervisor: {} after {} ms: {stopped} of {} guests stopped, {} trace events",
            if stopped == self.vms.len() { "all guests stopped" } else { "scenario duration elapsed" },
            elapsed.as_millis(),
            self.vms.len(),
            self.trace_events.load(Ordering::Relaxed)
        );
        semihosting::exit(exit_code::SUCCESS)
    }
}

fn state_word(state: VcpuState) -> &'static str {
    match state {
        VcpuState::Runnable => "runnable",
        VcpuState::Running => "running",
        VcpuState::Blocked => "blocked",
        VcpuState::Parked => "parked",
        VcpuState::Migrating => "migrating",
        VcpuState::Stopped => "stopped",
    }
}
