//! `smp`: PSCI and virtual IPIs across every vCPU the guest has.
//!
//! 1. The boot vCPU starts vCPUs 1, 2, ... (`MPIDR.Aff0`) with `CPU_ON` until one answers
//!    `INVALID_PARAMETERS` (no such vCPU; at most 7 secondaries). Each secondary runs a piece of
//!    work seeded by its index, prints `smp: cpu N reported checksum=...`, and turns itself off
//!    with `CPU_OFF`. The boot vCPU checks every checksum and waits until `AFFINITY_INFO` says
//!    each secondary is OFF.
//! 2. It starts vCPU 1 again and at once a second time: the second `CPU_ON` must answer
//!    `ALREADY_ON` or `ON_PENDING`. On bare QEMU, whose PSCI never reports `ON_PENDING` (a
//!    second `CPU_ON` before the vCPU is out of reset succeeds and resets it twice), it waits
//!    for `AFFINITY_INFO` = ON before the second call. It starts the other secondaries again.
//! 3. SGIs: for several rounds the boot vCPU sends SGI 1 to each secondary in turn, which answers
//!    with SGI 2 to the boot vCPU; then one SGI 3 to all others at once (`IRM` = 1). Every ping
//!    and every answer must arrive, none twice.
//! 4. SGI 4 tells the secondaries to stop; each turns itself off and the boot vCPU waits until
//!    `AFFINITY_INFO` says so. No IRQ may have come without a handler.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use guest_rt::hypercall::{self, Platform};
use guest_rt::psci::{self, AffinityState, Error as PsciError};
use guest_rt::{cpu_index, ensure, fail, gic, println, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

const SGI_PING: u32 = 1;
const SGI_PONG: u32 = 2;
const SGI_BROADCAST: u32 = 3;
const SGI_WAKE: u32 = 4;
/// Ping-pong rounds per secondary.
const ROUNDS: u32 = 3;
/// Generator steps of a secondary's work.
const WORK: u64 = 200_000;
/// How long to wait for anything another vCPU does.
const TIMEOUT_MS: u64 = 5_000;

static BOOT_CPU: AtomicUsize = AtomicUsize::new(0);
/// Work results, written by each secondary before it reports.
static CHECKSUM: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static REPORTED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Phase 3: secondaries ready for SGIs.
static READY: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static PINGS: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
static BROADCASTS: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
static PONGS: AtomicU32 = AtomicU32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn work(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sum = 0u64;
    for _ in 0..WORK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(core::hint::black_box(x));
    }
    sum
}

/// Phase 1 on a secondary: work, report, turn off.
fn work_entry(index: u64) -> ! {
    let me = cpu_index();
    if me as u64 != index {
        guest_rt::finish(Err(fail!("cpu_on context {} arrived on cpu {}", index, me)));
    }
    let checksum = work(index);
    CHECKSUM[me].store(checksum, Ordering::Relaxed);
    REPORTED[me].store(true, Ordering::Release);
    println!("smp: cpu {} reported checksum={:#018x}", me, checksum);
    let err = psci::cpu_off();
    guest_rt::finish(Err(fail!("CPU_OFF on cpu {} returned {:?}", me, err)))
}

/// Phase 3 on a secondary: answer SGIs until told to stop, then turn off.
fn sgi_entry(_context: u64) -> ! {
    let me = cpu_index();
    gic::init();
    READY[me].store(true, Ordering::Release);
    gic::wait_until(|| STOP.load(Ordering::Acquire));
    gic::irq_disable();
    println!(
        "smp: cpu {} stopping pings={} broadcasts={}",
        me,
        PINGS[me].load(Ordering::Relaxed),
        BROADCASTS[me].load(Ordering::Relaxed)
    );
    let err = psci::cpu_off();
    guest_rt::finish(Err(fail!("CPU_OFF on cpu {} returned {:?}", me, err)))
}

fn on_ping(_intid: u32) {
    PINGS[cpu_index()].fetch_add(1, Ordering::AcqRel);
    gic::send_sgi(SGI_PONG, BOOT_CPU.load(Ordering::Relaxed));
}

fn on_pong(_intid: u32) {
    PONGS.fetch_add(1, Ordering::AcqRel);
}

fn on_broadcast(_intid: u32) {
    BROADCASTS[cpu_index()].fetch_add(1, Ordering::AcqRel);
}

fn on_wake(_intid: u32) {}

fn main(_x0: u64) -> Result<(), Fail> {
    let boot = cpu_index();
    BOOT_CPU.store(boot, Ordering::Relaxed);
    gic::init();
    gic::set_handler(SGI_PING, on_ping);
    gic::set_handler(SGI_PONG, on_pong);
    gic::set_handler(SGI_BROADCAST, on_broadcast);
    gic::set_handler(SGI_WAKE, on_wake);
    let version = psci::version().map_err(|e| fail!("PSCI_VERSION: {:?}", e))?;
    println!(
        "smp: psci {}.{} cpu_on features={:?} redistributors={}",
        version.major,
        version.minor,
        psci::features(psci::PSCI_CPU_ON_64),
        gic::redistributor_count()
    );

    // Phase 1: start every vCPU there is.
    let mut cpus = [0usize; MAX_VCPUS];
    let mut n = 0;
    for index in (0..MAX_VCPUS).filter(|&i| i != boot) {
        match psci::cpu_on(index as u64, work_entry, index as u64) {
            Ok(()) => {
                cpus[n] = index;
                n += 1;
            }
            Err(PsciError::InvalidParameters) => break,
            Err(e) => return Err(fail!("CPU_ON({}) returned {:?}", index, e)),
        }
    }
    let cpus = &cpus[..n];
    println!("smp: secondaries={} boot=cpu{}", n, boot);
    ensure!(n > 0, "no secondary vCPU answered CPU_ON (run with more than one vCPU)");
    ensure!(
        timer::wait_until(TIMEOUT_MS, || cpus.iter().all(|&c| REPORTED[c].load(Ordering::Acquire))),
        "not every secondary reported: {:?}",
        Reported(cpus)
    );
    for &c in cpus {
        let (got, want) = (CHECKSUM[c].load(Ordering::Relaxed), work(c as u64));
        ensure!(got == want, "cpu {} checksum {:#x}, expected {:#x}", c, got, want);
    }
    wait_all_off(cpus)?;
    ensure!(
        psci::affinity_info(boot as u64) == Ok(AffinityState::On),
        "AFFINITY_INFO(boot) = {:?}",
        psci::affinity_info(boot as u64)
    );
    println!("smp: phase 1 ok: all {} secondaries reported and are OFF", n);

    // Phase 2: CPU_ON twice on the same vCPU.
    let first = cpus[0];
    psci::cpu_on(first as u64, sgi_entry, 0).map_err(|e| fail!("second start of cpu {}: {:?}", first, e))?;
    if hypercall::platform() == Platform::BareQemu {
        // QEMU's PSCI never enters ON_PENDING: until the started vCPU has actually come out of
        // reset it still reads OFF, and a second CPU_ON succeeds and queues a second reset of
        // that vCPU. So on bare QEMU, ask again only once it is ON (expecting ALREADY_ON).
        ensure!(
            timer::wait_until(TIMEOUT_MS, || psci::affinity_info(first as u64) == Ok(AffinityState::On)),
            "cpu {} never became ON: {:?}",
            first,
            psci::affinity_info(first as u64)
        );
    }
    let again = psci::cpu_on(first as u64, sgi_entry, 0);
    ensure!(
        matches!(again, Err(PsciError::AlreadyOn) | Err(PsciError::OnPending)),
        "CPU_ON of cpu {} while on: {:?}, expected AlreadyOn or OnPending",
        first,
        again
    );
    println!("smp: phase 2 ok: CPU_ON of running cpu {} -> {:?}", first, again.unwrap_err());
    for &c in &cpus[1..] {
        psci::cpu_on(c as u64, sgi_entry, 0).map_err(|e| fail!("second start of cpu {}: {:?}", c, e))?;
    }
    ensure!(
        timer::wait_until(TIMEOUT_MS, || cpus.iter().all(|&c| READY[c].load(Ordering::Acquire))),
        "not every secondary came back for the SGI phase"
    );

    // Phase 3: SGIs.
    gic::irq_enable();
    for round in 1..=ROUNDS {
        for &c in cpus {
            let before = PONGS.load(Ordering::Acquire);
            gic::send_sgi(SGI_PING, c);
            ensure!(
                timer::wait_until(TIMEOUT_MS, || PONGS.load(Ordering::Acquire) > before),
                "no answer from cpu {} to ping {}",
                c,
                round
            );
            let pings = PINGS[c].load(Ordering::Acquire);
            ensure!(pings == round, "cpu {} got {} pings after round {}", c, pings, round);
        }
    }
    let pongs = PONGS.load(Ordering::Acquire);
    ensure!(pongs == ROUNDS * n as u32, "boot got {} answers, expected {}", pongs, ROUNDS * n as u32);
    gic::send_sgi_to_others(SGI_BROADCAST);
    ensure!(
        timer::wait_until(TIMEOUT_MS, || cpus.iter().all(|&c| BROADCASTS[c].load(Ordering::Acquire) == 1)),
        "broadcast SGI did not reach every secondary"
    );
    ensure!(BROADCASTS[boot].load(Ordering::Relaxed) == 0, "broadcast SGI reached its sender");
    println!("smp: phase 3 ok: {} pings and answers, broadcast reached {} vCPUs", pongs, n);

    // Phase 4: stop.
    STOP.store(true, Ordering::Release);
    gic::send_sgi_to_others(SGI_WAKE);
    wait_all_off(cpus)?;
    ensure!(gic::unhandled_count() == 0, "{} IRQs without a handler", gic::unhandled_count());
    println!("smp: phase 4 ok: all secondaries OFF again");
    Ok(())
}

/// Waits until `AFFINITY_INFO` says every vCPU in `cpus` is OFF.
fn wait_all_off(cpus: &[usize]) -> Result<(), Fail> {
    for &c in cpus {
        let off = timer::wait_until(TIMEOUT_MS, || psci::affinity_info(c as u64) == Ok(AffinityState::Off));
        ensure!(off, "AFFINITY_INFO({}) = {:?}, expected Off", c, psci::affinity_info(c as u64));
    }
    Ok(())
}

/// Which secondaries have reported, for a failure message.
struct Reported<'a>(&'a [usize]);

impl core::fmt::Debug for Reported<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|&c| (c, REPORTED[c].load(Ordering::Relaxed)))).finish()
    }
}
