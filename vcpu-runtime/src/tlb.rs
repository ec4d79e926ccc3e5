//! Guest TLB maintenance across cores, when the hypervisor carries it out.
//!
//! A VM whose TLB maintenance traps (`HCR_EL2.TTLB` on aarch64) has each `TLBI` carried out by
//! the core it traps on, in the instruction's local form. The VM's other cores must not use a
//! translation the instruction removed once it has completed, and no core that does not run the
//! VM should be disturbed (a hardware broadcast reaches every core; under QEMU it stops them all).
//! The protocol (docs/linux-guests.md, *Guest TLB maintenance*), model-checked in `loom-tests`:
//!
//! - Each VM counts the instructions carried out ([`VmTlb`]); each core remembers the count it
//!   last caught up with, per VM ([`CoreTlb`]). Before entering a VM's guest, a core announces it
//!   ([`GuestRun`]), then reads the count: if it is behind, it drops all of the VM's stage-1
//!   entries first ([`CoreTlb::enter`] says so).
//! - The trapping core, after its local invalidation, bumps the count and reads every other
//!   core's [`GuestRun`]: those in the VM's guest now are kicked out of it and waited for
//!   ([`CoreTlb::carried_out`], [`GuestRun::left`]); they catch up at their next entry.
//! - The announcement before the read on one side, the bump before the read on the other, each
//!   pair separated by a sequentially consistent fence: either the entering core sees the new
//!   count, or the trapping core sees it in the guest and waits for it to leave. (Fences, not
//!   sequentially consistent accesses: loom models the fences' total order, not the accesses',
//!   and on aarch64 the fence is one `DMB ISH`.)
//!
//! A core waits only for cores that are in the guest, and a guest cannot hold off the kick, so
//! two cores carrying out instructions at once never wait for each other (each is out of its
//! guest while it does).

use alloc::vec::Vec;

use crate::sync::atomic::{fence, AtomicU64, Ordering};
use crate::{CoreId, CoreMask};

/// The low bits of a [`GuestRun`] value: which VM's guest (index + 1), 0 for none.
const VM_BITS: u64 = 0xffff;

/// Per VM: its trapped TLB maintenance instructions carried out so far.
#[derive(Debug, Default)]
pub struct VmTlb {
    generation: AtomicU64,
    /// Of those, the ones that found another core in the VM's guest (for the run's report).
    waited: AtomicU64,
}

impl VmTlb {
    pub fn new() -> Self {
        Self::default()
    }

    /// Instructions carried out so far, and how many of them found another core in the guest.
    pub fn counts(&self) -> (u64, u64) {
        (self.generation.load(Ordering::Relaxed), self.waited.load(Ordering::Relaxed))
    }
}

/// Per core, shared with the others: whether the core is in a guest whose TLB maintenance
/// traps, and which VM's. Written only by its core.
#[derive(Debug, Default)]
pub struct GuestRun {
    /// The core's entry count << 16 | the VM's index + 1 while in a guest; the count << 16
    /// otherwise.
    run: AtomicU64,
}

impl GuestRun {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the core has left the guest run it was in when [`CoreTlb::carried_out`] named
    /// it (`run`, [`Wait::run`]): then it catches up at its next entry.
    pub fn left(&self, run: u64) -> bool {
        self.run.load(Ordering::Acquire) != run
    }
}

/// A core in a VM's guest that must leave it before the trapped instruction is complete: kick
/// it, then wait until `GuestRun::left(run)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    pub core: usize,
    pub run: u64,
}

/// The cores [`CoreTlb::carried_out`] found in the VM's guest.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    runs: [u64; CoreMask::MAX_CORES],
    cores: CoreMask,
}

impl Waits {
    /// The cores to kick and wait for, in core order.
    pub fn iter(&self) -> impl Iterator<Item = Wait> + '_ {
        self.cores.iter().map(|k| Wait { core: k.index(), run: self.runs[k.index()] })
    }

    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }
}

/// Per core, private: the count it caught up with per VM (by index), and its entries so far.
#[derive(Debug)]
pub struct CoreTlb {
    seen: Vec<u64>,
    entries: u64,
}

impl CoreTlb {
    /// For a machine of `vms` VMs. A fresh core has caught up with nothing: every count starts
    /// at 0, and a VM whose count is still 0 has had no instruction carried out.
    pub fn new(vms: usize) -> Self {
        Self { seen: alloc::vec![0; vms], entries: 0 }
    }

    /// Right before this core enters the guest of VM `vm` (index `index`), announcing it in
    /// `me` (this core's own [`GuestRun`]). Returns true when the core must first drop all the
    /// VM's stage-1 TLB entries: instructions were carried out elsewhere since it last did.
    pub fn enter(&mut self, me: &GuestRun, index: usize, vm: &VmTlb) -> bool {
        self.entries += 1;
        me.run.store(self.entries << 16 | tag(index), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let generation = vm.generation.load(Ordering::Acquire);
        match self.seen.get_mut(index) {
            Some(seen) if *seen != generation => {
                *seen = generation;
                true
            }
            Some(_) => false,
            // Not a VM of this machine: drop everything, it costs only time.
            None => true,
        }
    }

    /// Right after this core left a guest it entered with [`CoreTlb::enter`].
    pub fn exit(&mut self, me: &GuestRun) {
        me.run.store(self.entries << 16, Ordering::Release);
    }

    /// This core (`me`, out of the guest) has just carried out a trapped TLB maintenance
    /// instruction of VM `vm` (index `index`) locally. Returns the other cores of `cores`
    /// (indexed by core) that are in the VM's guest now: kick each, then wait until it has left.
    pub fn carried_out<'a>(
        &mut self,
        me: usize,
        index: usize,
        vm: &VmTlb,
        cores: impl Iterator<Item = &'a GuestRun>,
    ) -> Waits {
        let before = vm.generation.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        if let Some(seen) = self.seen.get_mut(index) {
            // Only if it had caught up with every earlier one: another core's may still be
            // missing here.
            if *seen == before {
                *seen = before + 1;
            }
        }
        let mut waits = Waits { runs: [0; CoreMask::MAX_CORES], cores: CoreMask::NONE };
        for (k, c) in cores.enumerate().take(CoreMask::MAX_CORES) {
            if k == me {
                continue;
            }
            let run = c.run.load(Ordering::Relaxed);
            if run & VM_BITS == tag(index) {
                waits.runs[k] = run;
                waits.cores = waits.cores.with(CoreId(k as u16));
            }
        }
        if !waits.cores.is_empty() {
            vm.waited.fetch_add(1, Ordering::Relaxed);
        }
        waits
    }
}

/// A VM's tag in a [`GuestRun`] value: 1 to `VM_BITS` (VMIDs are 16 bits at most; two VMs
/// whose indices differ by a multiple of `VM_BITS` would only cost extra waits).
fn tag(index: usize) -> u64 {
    (index as u64 % VM_BITS) + 1
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_core_catches_up_once_after_another_carried_an_instruction_out() {
        let vm = VmTlb::new();
        let runs = [GuestRun::new(), GuestRun::new()];
        let mut a = CoreTlb::new(1);
        let mut b = CoreTlb::new(1);
        assert!(!b.enter(&runs[1], 0, &vm), "nothing carried out yet");
        b.exit(&runs[1]);
        assert!(!a.enter(&runs[0], 0, &vm));
        a.exit(&runs[0]);
        let waits = a.carried_out(0, 0, &vm, runs.iter());
        assert!(waits.is_empty(), "b is out of the guest");
        assert!(!a.enter(&runs[0], 0, &vm), "a did its own locally");
        a.exit(&runs[0]);
        assert!(b.enter(&runs[1], 0, &vm), "b must catch up");
        assert!(!b.enter(&runs[1], 0, &vm), "once");
    }

    #[test]
    fn a_core_in_the_guest_is_waited_for_until_it_leaves() {
        let vm = VmTlb::new();
        let other = VmTlb::new();
        let runs = [GuestRun::new(), GuestRun::new(), GuestRun::new()];
        let mut a = CoreTlb::new(2);
        let mut b = CoreTlb::new(2);
        let mut c = CoreTlb::new(2);
        b.enter(&runs[1], 0, &vm);
        c.enter(&runs[2], 1, &other);
        let waits = a.carried_out(0, 0, &vm, runs.iter());
        let named: Vec<Wait> = waits.iter().collect();
        assert_eq!(named.len(), 1, "only b runs the VM: {named:?}");
        assert_eq!(named[0].core, 1);
        assert!(!runs[1].left(named[0].run));
        b.exit(&runs[1]);
        assert!(runs[1].left(named[0].run));
        // Leaving and coming back at once also counts: the entry caught up.
        let waits = a.carried_out(0, 0, &vm, runs.iter());
        assert!(waits.is_empty());
        assert!(b.enter(&runs[1], 0, &vm));
        let waits = a.carried_out(0, 0, &vm, runs.iter());
        let wait = waits.iter().next().expect("b is in the guest");
        b.exit(&runs[1]);
        assert!(b.enter(&runs[1], 0, &vm), "caught up with the third");
        assert!(runs[1].left(wait.run));
        assert_eq!(vm.counts(), (3, 2));
    }

    #[test]
    fn an_instruction_carried_out_by_a_core_behind_does_not_hide_the_one_it_missed() {
        let vm = VmTlb::new();
        let runs = [GuestRun::new(), GuestRun::new()];
        let mut a = CoreTlb::new(1);
        let mut b = CoreTlb::new(1);
        a.carried_out(0, 0, &vm, runs.iter());
        b.carried_out(1, 0, &vm, runs.iter());
        assert!(b.enter(&runs[1], 0, &vm), "b still has a's to catch up with");
        assert!(a.enter(&runs[0], 0, &vm), "a has b's");
    }
}
