//! The hypervisor image for QEMU's `virt` board (`-M virt,virtualization=on,gic-version=3`).
//!
//! The boot core reads the device tree, turns on the final EL2 identity map, prints the board's
//! facts, starts every CPU of `/cpus` with PSCI `CPU_ON` and waits until all have reported in.
//! Every core prints `core N online (mpidr 0x...)` and a trace line `T <ns> core cN online`.
//! Then, if QEMU's loader put a scenario manifest at [`MANIFEST_ADDR`], the boot core parses it
//! (a bad one fails the run with the parser's message) and hands it, the cores and the guest
//! RAM pool to `platform_aarch64::hyp`, which runs the guests on every core; without one, the
//! run was a boot check and ends with exit status 0 through semihosting. `hv.disk-test=write|read`
//! instead runs the checkpoint disk's end-to-end test (`selftest::disk`) once the cores are
//! online, and ends the run.
//!
//! All the unsafe code is in `platform-aarch64`; this crate only has its entry glue (the
//! `Board` implementation and `entry!`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod devicetree;
mod selftest;

use alloc::vec::Vec;
use core::ops::Range;

use platform_aarch64::entry::{Board, BootInfo, DtbSource};
use platform_aarch64::layout::MAX_CORES;
use platform_aarch64::{cpu, exit_code, fail, hyp, mmu, println, ram, semihosting, smp, stage2, timer, virtio};
use smccc::Smc;
use vcpu_runtime::manifest::{self, Manifest};
use vcpu_runtime::trace::{CoreState, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, Nanos};

/// QEMU's `virt` machine.
struct QemuVirt;

/// RAM starts here on QEMU's virt board; everything below is devices (flash, GIC, UART, RTC,
/// GPIO, virtio-mmio, PCIe windows).
const RAM_BASE: usize = 0x4000_0000;

/// Where QEMU's loader puts the scenario manifest (`cargo xtask qemu SCENARIO`:
/// `-device loader,file=...,addr=0x44000000,force-raw=on`; xtask and hw-tests use the same
/// numbers): above the image, which memory.ld links at 0x4020_0000 with at most 62 MiB.
const MANIFEST_ADDR: usize = vcpu_runtime::manifest::QEMU_VIRT_ADDR as usize;
/// The region reserved for the manifest; guest RAM comes after it.
const MANIFEST_MAX: usize = 128 << 20;
/// Where the guest RAM pool starts: right after the manifest's region, up to the end of RAM.
const GUEST_POOL: usize = MANIFEST_ADDR + MANIFEST_MAX;

/// How long the boot core waits for the secondaries to report in before failing the run
/// (`hv.online-timeout-ms=N` in the boot arguments overrides it).
const ONLINE_TIMEOUT: Nanos = Nanos::from_secs(10);

// SAFETY: these are the addresses of QEMU's virt machine (hw/arm/virt.c, `base_memmap`): the
// PL011 UART0 at 0x0900_0000 (below 1 GiB, so device memory in the boot map), used by nothing
// but the console; RAM from 0x4000_0000 (1 GiB aligned), memory.ld linking the image at
// 0x4020_0000, inside the first GiB of RAM and 2 MiB above its start; the GICv3 distributor at
// 0x0800_0000 and its redistributors from 0x080A_0000 (`gic-version=3`), inside the device
// region 0..1 GiB that `boot_main` maps, used only by the platform's `gic` module.
#[allow(unsafe_code)]
unsafe impl Board for QemuVirt {
    const NAME: &'static str = "QEMU virt";
    const PL011_BASE: usize = 0x0900_0000;
    const RAM_BASE: usize = RAM_BASE;
    const GICD_BASE: usize = 0x0800_0000;
    const GICR_BASE: usize = 0x080A_0000;

    fn main(boot: BootInfo) -> ! {
        boot_main(boot)
    }

    fn secondary_main(core: CoreId) -> ! {
        report_online(core);
        hyp::secondary(core)
    }
}

platform_aarch64::entry!(QemuVirt);

fn boot_main(boot: BootInfo) -> ! {
    let facts = match devicetree::read(boot.dtb) {
        Ok(facts) => facts,
        Err(e) => fail!("device tree: {e}"),
    };
    let image = mmu::image_layout();
    let Some(ram) = facts.ram.iter().find(|r| r.start <= image.start && image.end <= r.end).cloned() else {
        fail!("no RAM region of the device tree holds the image ({:#x}..{:#x})", image.start, image.end);
    };
    let devices: Range<usize> = 0..RAM_BASE;
    if let Err(e) = mmu::init(ram.clone(), core::slice::from_ref(&devices)) {
        fail!("EL2 identity map: {e}");
    }

    let ram_mib: usize = facts.ram.iter().map(|r| r.len()).sum::<usize>() >> 20;
    println!("hypervisor {}: energy-aware SMP hypervisor, EL2, on {}", env!("CARGO_PKG_VERSION"), QemuVirt::NAME);
    println!(
        "board: {}, {} core{}, RAM {} MiB at {:#x}, device tree at {:#x} (from {})",
        facts.compatible.unwrap_or("(no compatible)"),
        facts.cpus.len(),
        if facts.cpus.len() == 1 { "" } else { "s" },
        ram_mib,
        ram.start,
        boot.dtb.as_ptr() as usize,
        match boot.dtb_source {
            DtbSource::X0 => "x0",
            DtbSource::RamBase => "the start of RAM",
        }
    );
    println!(
        "cpu: {}, PA {} bits (EL2 map uses {}), VMID {} bits, timer {} Hz",
        cpu::midr(),
        cpu::pa_bits(),
        cpu::mapped_pa_bits(),
        cpu::vmid_bits(),
        timer::frequency_hz()
    );
    match facts.chosen {
        Some(c) => println!(
            "chosen: bootargs \"{}\", stdout-path \"{}\"",
            c.bootargs.unwrap_or(""),
            c.stdout_path.unwrap_or("")
        ),
        None => println!("chosen: no /chosen node"),
    }
    println!(
        "mmu: EL2 identity map on, caches on: image {:#x}..{:#x}, RAM {:#x}..{:#x} write-back, devices {:#x}..{:#x} nGnRE",
        image.start, image.end, ram.start, ram.end, devices.start, devices.end
    );
    // The virtio-mmio transports (QEMU makes 32, empty unless a -device is plugged in): one line
    // per device, none without.
    match virtio::probe_mmio(&facts.virtio_mmio) {
        Ok(found) => {
            for d in found {
                println!("virtio: {} (device ID {}) at {:#x}", d.kind(), d.device_id, d.base);
            }
        }
        Err(e) => fail!("virtio: {e}"),
    }

    // PSCI: at EL2 only SMC reaches the firmware (an HVC would come back to this hypervisor).
    let psci = match facts.psci_method {
        Some("smc") => smccc::psci::version::<Smc>(),
        Some(other) => fail!("/psci method is \"{other}\"; at EL2 only \"smc\" reaches the firmware"),
        None => fail!("no /psci node: cannot start the secondary cores"),
    };
    match psci {
        Ok(v) => println!("psci: version {}.{} over smc", v.major, v.minor),
        Err(e) => fail!("PSCI_VERSION failed: {e:?}"),
    }

    // Core ids in boot order: the boot core is core 0, the others follow in device-tree order.
    let me = smp::current_mpidr();
    if !facts.cpus.contains(&me) {
        fail!("the boot core (mpidr {me:#x}) is not in /cpus {:x?}", facts.cpus);
    }
    let mut cores: Vec<u64> = Vec::with_capacity(facts.cpus.len());
    cores.push(me);
    cores.extend(facts.cpus.iter().copied().filter(|m| *m != me));
    if cores.len() > MAX_CORES {
        println!("note: /cpus lists {} CPUs; this image runs at most {MAX_CORES}, the rest stay off", cores.len());
        cores.truncate(MAX_CORES);
    }

    let bootargs = facts.chosen.and_then(|c| c.bootargs).unwrap_or("");
    selftest::configure(bootargs, cores.len());
    report_online(CoreId(0));
    selftest::on_boot_core();
    for (k, mpidr) in cores.iter().enumerate().skip(1) {
        if let Err(e) = smp::start_secondary::<Smc>(CoreId(k as u16), *mpidr) {
            fail!("{e}");
        }
    }
    let n = cores.len();
    let timeout = vcpu_runtime::bootargs::value(bootargs, "hv.online-timeout-ms")
        .and_then(|v| v.parse().ok())
        .map(Nanos::from_millis)
        .unwrap_or(ONLINE_TIMEOUT);
    if let Err(mask) = smp::wait_online(n, timeout) {
        for (k, mpidr) in cores.iter().enumerate().filter(|(k, _)| mask & (1 << k) == 0) {
            println!("FAIL: core {k} (mpidr {mpidr:#x}) did not come online");
        }
        fail!("{} of {n} cores came online within {} ms", mask.count_ones(), timeout.as_millis());
    }
    println!("all {n} cores online");

    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.cpu-off") {
        match value {
            "psci" => hyp::power::set_cpu_off_by_psci(true),
            "wfi" => hyp::power::set_cpu_off_by_psci(false),
            _ => fail!("hv.cpu-off={value}: unknown; use psci (turn cores off) or wfi (park them in WFI)"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.checkpoint-at") {
        match value.parse::<u64>() {
            Ok(ms) => hyp::checkpoint::set_checkpoint_at(ms),
            Err(_) => fail!("hv.checkpoint-at={value}: give milliseconds, e.g. hv.checkpoint-at=200"),
        }
    }
    if let Some(text) = vcpu_runtime::bootargs::value(bootargs, "hv.checkpoint-on") {
        if text.is_empty() {
            fail!("hv.checkpoint-on=: give the text of a console line of the first guest, e.g. hv.checkpoint-on=\"ticks: 5 \"");
        }
        hyp::checkpoint::set_checkpoint_on(text);
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.migrate-out") {
        let (at, vm) = value.split_once(':').unwrap_or((value, "0"));
        match (at.parse::<u64>(), vm.parse::<u16>()) {
            (Ok(ms), Ok(vm)) => hyp::live::set_migrate_out(ms, vm),
            _ => fail!("hv.migrate-out={value}: give milliseconds and optionally the guest's index, e.g. hv.migrate-out=300 or hv.migrate-out=300:1"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.offload") {
        if hyp::live::set_offload(value).is_none() {
            fail!("hv.offload={value}: unknown; use wifi, lte or 3g (decide by the model over that link), always or never");
        }
    }
    if vcpu_runtime::bootargs::flag(bootargs, "hv.offload-server") {
        hyp::live::set_offload_server(true);
    }
    if vcpu_runtime::bootargs::flag(bootargs, "hv.migrate-in") {
        hyp::live::set_migrate_in(true);
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.downtime-ms") {
        match value.parse::<u64>() {
            Ok(ms) if ms > 0 => hyp::live::set_downtime_limit(vcpu_runtime::Nanos::from_millis(ms)),
            _ => fail!("hv.downtime-ms={value}: give a positive number of milliseconds, e.g. hv.downtime-ms=300"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.migrate-timeout-ms") {
        match value.parse::<u64>() {
            Ok(ms) if ms > 0 => hyp::live::set_answer_timeout(vcpu_runtime::Nanos::from_millis(ms)),
            _ => fail!("hv.migrate-timeout-ms={value}: give a positive number of milliseconds"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.dirty-log") {
        match value {
            "hw" => stage2::set_hardware_dirty(true),
            "wp" => stage2::set_hardware_dirty(false),
            _ => fail!("hv.dirty-log={value}: unknown; use hw (the CPU's dirty state where it has it) or wp (write-protect faults)"),
        }
    }
    if vcpu_runtime::bootargs::flag(bootargs, "hv.restore") {
        hyp::checkpoint::set_restore(true);
    }
    if vcpu_runtime::bootargs::flag(bootargs, "hv.bench") {
        hyp::bench::allow_moves(true);
    }
    if vcpu_runtime::bootargs::flag(bootargs, "hv.count-instructions") {
        hyp::instructions::set_enabled(true);
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.migrate-every") {
        match value.parse::<u64>() {
            Ok(us) => hyp::power::set_migrate_every(vcpu_runtime::Nanos::from_micros(us)),
            Err(_) => fail!("hv.migrate-every={value}: give microseconds, e.g. hv.migrate-every=1000"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.guest-tlbi") {
        match hyp::GuestTlbi::from_arg(value) {
            Some(policy) => hyp::set_guest_tlbi(policy),
            None => fail!("hv.guest-tlbi={value}: unknown; use auto, trap or broadcast"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.tlbi-spin-us") {
        match value.parse::<u64>() {
            Ok(us) => hyp::set_tlbi_spin(us.saturating_mul(1000)),
            Err(_) => fail!("hv.tlbi-spin-us={value}: give microseconds, e.g. hv.tlbi-spin-us=200"),
        }
    }
    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.trace") {
        match hyp::TraceLevel::from_arg(value) {
            Some(level) => hyp::set_trace_level(level),
            None => fail!("hv.trace={value}: unknown trace level; use all, events or off"),
        }
    }

    if let Some(value) = vcpu_runtime::bootargs::value(bootargs, "hv.disk-test") {
        match selftest::DiskTest::from_arg(value) {
            Some(test) => selftest::disk(test),
            None => fail!("hv.disk-test={value}: unknown; use write or read"),
        }
    }

    if vcpu_runtime::bootargs::flag(bootargs, "hv.stream-test") {
        selftest::stream();
    }

    let Some(bytes) = find_manifest() else {
        // No scenario: the run was a boot check.
        semihosting::exit(exit_code::SUCCESS)
    };
    let manifest = match Manifest::parse(bytes) {
        Ok(m) => m,
        Err(e) => fail!("{e}"),
    };
    println!(
        "manifest: scenario \"{}\", {} guest{}, {} cores, duration {} ms, timeslice {} us",
        manifest.name,
        manifest.guest_count,
        if manifest.guest_count == 1 { "" } else { "s" },
        manifest.cores,
        manifest.policy.duration.as_millis(),
        manifest.policy.timeslice.as_micros()
    );
    for g in manifest.guests() {
        println!(
            "manifest: guest {} \"{}\": {} vCPU{}, {} MiB, weight {}, entry {:#x}, {} segment{}",
            g.vm.0,
            g.name,
            g.vcpus,
            if g.vcpus == 1 { "" } else { "s" },
            g.memory_mib,
            g.weight,
            g.entry_ipa,
            g.segments().len(),
            if g.segments().len() == 1 { "" } else { "s" }
        );
    }
    let Some(free) = ram::free_ram().filter(|f| f.end > GUEST_POOL) else {
        fail!("no RAM above {GUEST_POOL:#x} for the guests (give QEMU -m 1G or more)");
    };
    let pool = match ram::claim(GUEST_POOL..free.end) {
        Ok(pool) => pool,
        Err(e) => fail!("guest RAM pool: {e}"),
    };
    hyp::start(manifest, &cores, pool)
}

/// The scenario manifest QEMU's loader placed at [`MANIFEST_ADDR`], if its magic is there. The
/// whole reserved region is claimed (guest RAM must come after it) and handed to the parser,
/// which reads only as far as the manifest's header says.
fn find_manifest() -> Option<&'static [u8]> {
    let free = ram::free_ram()?;
    let end = (MANIFEST_ADDR + MANIFEST_MAX).min(free.end);
    if end < MANIFEST_ADDR + manifest::HEADER_LEN {
        return None;
    }
    let region = match ram::claim(MANIFEST_ADDR..end) {
        Ok(region) => region,
        Err(e) => fail!("manifest region: {e}"),
    };
    let bytes = region.into_static();
    bytes.starts_with(&manifest::MAGIC).then_some(bytes)
}

/// Prints that the calling core is up, as a console line and a trace event, and tells the boot
/// core.
fn report_online(core: CoreId) {
    if selftest::hangs(core) {
        smp::park();
    }
    if hyp::is_running() {
        // Back on after the governor turned it off: the runtime traces that.
        smp::report_online();
        return;
    }
    println!("core {} online (mpidr {:#x})", core.0, smp::current_mpidr());
    let event = TraceEvent { at: timer::now(), kind: TraceKind::CoreState { core, state: CoreState::Online } };
    println!("{event}");
    selftest::before_counted_online(core);
    smp::report_online();
}
