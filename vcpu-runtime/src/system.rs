//! The cross-core part of the runtime: what every core may read and write.
//!
//! Everything here is written against the [`sync`](crate::sync) shim and model-checked in
//! `loom-tests`. The protocol, in short (the full text is `docs/runtime.md`):
//!
//! * Each vCPU has one atomic *state word*: its owner core, its state, an in-flight flag and two
//!   request flags (`WAKE`, `ON_REQ`). Only the owner changes the state; any core may set a
//!   request flag. Because a request is a bit in the word, an owner change (hand-over) can never
//!   lose it: whoever owns the vCPU next sees the bit.
//! * A core hands a vCPU over by flipping the word to in-flight with the new owner and posting
//!   an `Arrive` that carries the vCPU's (boxed) scheduling state to the new owner's mailbox.
//!   The receiver takes the state onto its list and clears in-flight.
//! * A requester sets its flag, reads the owner from the same atomic operation and *kicks* that
//!   core (a flag, plus an IPI sent by the platform). The owner drains kicks at its next decision.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::ids::{CoreId, CoreMask, VcpuId};
use crate::sched::{SchedParams, VcpuSched};
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::Mutex;
use crate::time::Instant;
use crate::util::{Decay, Ewma};
use crate::vcpu::{ppm_percent, VcpuInfo, VcpuState};

const STATE_MASK: u32 = 0x7;
/// The vCPU is in flight to the owner named in the word (the state bits say what it will be).
const IN_FLIGHT: u32 = 1 << 3;
/// An interrupt or event arrived for the vCPU: a blocked vCPU must become runnable.
const WAKE: u32 = 1 << 4;
/// A guest PSCI CPU_ON asked for this parked vCPU to start.
const ON_REQ: u32 = 1 << 5;
const OWNER_SHIFT: u32 = 16;
// `start_running` and `stop_running` set and clear the state bits with one bit operation.
const _: () = assert!(VcpuState::Runnable as u32 == 0 && VcpuState::Running as u32 == 1);

/// A state word with its pending requests applied: a blocked vCPU with `WAKE`, or a parked one
/// with `ON_REQ`, becomes runnable; a wake-up for a parked or stopped vCPU means nothing.
fn apply_requests(w: u32) -> u32 {
    const BLOCKED: u32 = VcpuState::Blocked as u32;
    const PARKED: u32 = VcpuState::Parked as u32;
    const STOPPED: u32 = VcpuState::Stopped as u32;
    const RUNNABLE: u32 = VcpuState::Runnable as u32;
    match w & STATE_MASK {
        BLOCKED if w & WAKE != 0 => (w & !(STATE_MASK | WAKE)) | RUNNABLE,
        PARKED if w & ON_REQ != 0 => (w & !(STATE_MASK | WAKE | ON_REQ)) | RUNNABLE,
        PARKED | STOPPED => w & !WAKE,
        _ => w,
    }
}

const fn owner_of(word: u32) -> CoreId {
    CoreId((word >> OWNER_SHIFT) as u16)
}
const fn with_owner(word: u32, core: CoreId) -> u32 {
    (word & 0xffff) | ((core.0 as u32) << OWNER_SHIFT)
}
const fn with_state(word: u32, state: VcpuState) -> u32 {
    (word & !STATE_MASK) | state as u32
}

/// What [`System::signal`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// It was blocked (or migrating) and is runnable now: kick this core, its owner.
    Woken(CoreId),
    /// It was running on this core.
    Running(CoreId),
    /// Anything else: runnable (it runs soon and sees the event), woken already, parked or
    /// stopped.
    Other,
}

/// A snapshot of a vCPU's state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStatus {
    pub owner: CoreId,
    /// The vCPU's state; [`VcpuState::Migrating`] while it is in flight.
    pub state: VcpuState,
    pub wake_pending: bool,
    pub power_on_pending: bool,
}

/// What PSCI AFFINITY_INFO reports for a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityState {
    On,
    Off,
    OnPending,
}

/// Why a guest's PSCI CPU_ON for a sibling vCPU was refused (the PSCI error to return).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOnError {
    AlreadyOn,
    OnPending,
    /// No such vCPU (PSCI INVALID_PARAMETERS).
    NoSuchVcpu,
}

/// Per-vCPU shared data.
#[derive(Debug)]
pub(crate) struct VcpuShared {
    word: AtomicU32,
    /// The vCPU's utilization as last published by its owner, and when.
    util: AtomicU32,
    util_stamp: AtomicU64,
    /// Times the vCPU became runnable, counted by its owner (the governor's idle-gap estimate).
    wakeups: AtomicU64,
}

/// A message between cores.
#[derive(Debug)]
pub(crate) enum Message {
    /// A vCPU handed over to this core: its scheduling state (boxed: the message carries a
    /// pointer, not the 200 bytes), and how far its virtual time was from the sender's minimum
    /// (so it keeps its place in the queue).
    Arrive { sched: Box<VcpuSched>, lag: i64 },
    /// Please hand this vCPU (which you own) over to `dest`.
    MoveRequest { vcpu: VcpuId, dest: CoreId },
}

#[derive(Debug)]
struct MailboxInner {
    open: bool,
    queue: VecDeque<Message>,
}

/// Per-core shared data.
#[derive(Debug)]
pub(crate) struct CoreShared {
    mailbox: Mutex<MailboxInner>,
    mailbox_capacity: usize,
    /// Set when the mailbox may hold messages; lets the owner skip the lock when it is empty.
    has_mail: AtomicBool,
    /// Set when a vCPU of this core has a request flag set.
    kicked: AtomicBool,
    /// Real-time bandwidth admitted on this core, in ppm.
    reserved_ppm: AtomicU64,
    /// The core's busy utilization as last published.
    util: AtomicU32,
}

/// A reservation that does not fit on a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionError {
    pub core: CoreId,
    /// The reservation being admitted.
    pub requested_ppm: u64,
    /// What the core already has.
    pub admitted_ppm: u64,
    /// The core's bound.
    pub bound_ppm: u64,
}

impl core::fmt::Display for AdmissionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let total = self.admitted_ppm.saturating_add(self.requested_ppm);
        write!(
            f,
            "core {}: a reservation of {} would bring real-time utilization to {}, {} over the bound of {}",
            self.core,
            ppm_percent(self.requested_ppm),
            ppm_percent(total),
            ppm_percent(total.saturating_sub(self.bound_ppm)),
            ppm_percent(self.bound_ppm)
        )
    }
}

/// Why a message could not be posted to a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostError {
    /// The core is offline (or going offline) and takes no new messages.
    Closed,
    /// The mailbox is full (more messages in flight than it was sized for).
    Full,
}

/// The shared half of the runtime: one per system, referenced by every core.
#[derive(Debug)]
pub struct System {
    pub(crate) params: SchedParams,
    pub(crate) decay: Decay,
    vcpus: Box<[VcpuShared]>,
    infos: Box<[VcpuInfo]>,
    cores: Box<[CoreShared]>,
    online: AtomicU64,
}

impl System {
    pub(crate) fn new(params: SchedParams, cores: u16, infos: Vec<VcpuInfo>, owners: &[(CoreId, VcpuState)]) -> System {
        let n_vcpus = infos.len();
        let n_cores = cores as usize;
        // Every vCPU can be in flight at once, and each can have one move request queued.
        let capacity = 2 * n_vcpus + 4;
        let vcpus = owners
            .iter()
            .map(|&(owner, state)| VcpuShared {
                word: AtomicU32::new(with_state(with_owner(0, owner), state)),
                util: AtomicU32::new(0),
                util_stamp: AtomicU64::new(0),
                wakeups: AtomicU64::new(0),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let cores = (0..cores)
            .map(|_| CoreShared {
                mailbox: Mutex::new(MailboxInner { open: true, queue: VecDeque::with_capacity(capacity) }),
                mailbox_capacity: capacity,
                has_mail: AtomicBool::new(false),
                kicked: AtomicBool::new(false),
                reserved_ppm: AtomicU64::new(0),
                util: AtomicU32::new(0),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        System {
            params,
            decay: Decay::for_half_life(params.util_half_life),
            vcpus,
            infos: infos.into_boxed_slice(),
            cores,
            online: AtomicU64::new(CoreMask::first(n_cores).0),
        }
    }

    pub fn params(&self) -> &SchedParams {
        &self.params
    }
    pub fn core_count(&self) -> usize {
        self.cores.len()
    }
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }
    pub fn vcpu_info(&self, vcpu: VcpuId) -> Option<&VcpuInfo> {
        self.infos.get(vcpu.index())
    }
    pub fn vcpu_infos(&self) -> &[VcpuInfo] {
        &self.infos
    }

    /// The cores that are online and take vCPUs.
    pub fn online_cores(&self) -> CoreMask {
        CoreMask(self.online.load(Ordering::Acquire))
    }
    pub(crate) fn set_online(&self, core: CoreId, online: bool) {
        let bit = CoreMask::single(core).0;
        if online {
            self.online.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.online.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    fn word(&self, vcpu: VcpuId) -> &AtomicU32 {
        &self.vcpus[vcpu.index()].word
    }

    /// The vCPU's state word, decoded. `vcpu` must be one of the system's (ids come from
    /// [`System::vcpu_infos`]); an unknown one panics.
    pub fn status(&self, vcpu: VcpuId) -> VcpuStatus {
        decode(self.word(vcpu).load(Ordering::Acquire))
    }

    /// Signals an event for a vCPU (an interrupt became pending for it). A blocked vCPU becomes
    /// runnable; a running or runnable one is unaffected (and will not block on its next WFI);
    /// a parked or stopped one ignores it. Returns the core to kick (send an IPI to), if any.
    pub fn wake(&self, vcpu: VcpuId) -> Option<CoreId> {
        match self.signal(vcpu) {
            Signal::Woken(core) => Some(core),
            _ => None,
        }
    }

    /// [`System::wake`], saying also which core ran the vCPU when it was signalled, from the
    /// same atomic step: a platform makes a running vCPU exit to see the event. (A vCPU that
    /// starts running later sees it anyway: the event is published before the signal, and the
    /// start is a later step on the same word.)
    pub fn signal(&self, vcpu: VcpuId) -> Signal {
        if vcpu.index() >= self.vcpus.len() {
            return Signal::Other;
        }
        const BLOCKED: u32 = VcpuState::Blocked as u32;
        const RUNNING: u32 = VcpuState::Running as u32;
        let old = self.word(vcpu).fetch_or(WAKE, Ordering::AcqRel);
        let owner = owner_of(old);
        // The bits, not `decode`: this is every IPI's path.
        if old & WAKE == 0 && (old & IN_FLIGHT != 0 || old & STATE_MASK == BLOCKED) {
            // Blocked or in flight, and the first wake-up.
            self.kick(owner);
            Signal::Woken(owner)
        } else if old & (IN_FLIGHT | STATE_MASK) == RUNNING {
            Signal::Running(owner)
        } else {
            Signal::Other
        }
    }

    /// A guest's PSCI CPU_ON for `vcpu`. On success returns the core to kick.
    pub fn request_power_on(&self, vcpu: VcpuId) -> Result<CoreId, PowerOnError> {
        if vcpu.index() >= self.vcpus.len() {
            return Err(PowerOnError::NoSuchVcpu);
        }
        let word = self.word(vcpu);
        let mut old = word.load(Ordering::Acquire);
        loop {
            if VcpuState::from_bits(old) != VcpuState::Parked {
                return Err(PowerOnError::AlreadyOn);
            }
            if old & ON_REQ != 0 {
                return Err(PowerOnError::OnPending);
            }
            match word.compare_exchange_weak(old, old | ON_REQ, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let owner = owner_of(old);
                    self.kick(owner);
                    return Ok(owner);
                }
                Err(now) => old = now,
            }
        }
    }

    /// PSCI AFFINITY_INFO for one vCPU; `None` if there is no such vCPU (INVALID_PARAMETERS).
    pub fn affinity_info(&self, vcpu: VcpuId) -> Option<AffinityState> {
        let old = self.vcpus.get(vcpu.index())?.word.load(Ordering::Acquire);
        Some(match VcpuState::from_bits(old) {
            VcpuState::Parked if old & ON_REQ != 0 => AffinityState::OnPending,
            VcpuState::Parked | VcpuState::Stopped => AffinityState::Off,
            _ => AffinityState::On,
        })
    }

    /// Asks the vCPU's owner to hand it over to `dest` at its next decision. Returns the core
    /// to kick. The owner checks affinity, admission and that `dest` is online.
    pub fn request_move(&self, vcpu: VcpuId, dest: CoreId) -> Result<CoreId, crate::sched::MoveError> {
        let owner = self.move_owner(vcpu, dest)?;
        self.post_move(owner, vcpu, dest)
    }

    /// The owner a move of `vcpu` to `dest` is asked of, once both exist.
    pub(crate) fn move_owner(&self, vcpu: VcpuId, dest: CoreId) -> Result<CoreId, crate::sched::MoveError> {
        use crate::sched::MoveError;
        if vcpu.index() >= self.vcpus.len() {
            return Err(MoveError::NoSuchVcpu(vcpu));
        }
        if dest.index() >= self.cores.len() {
            return Err(MoveError::NoSuchCore(dest));
        }
        Ok(self.status(vcpu).owner)
    }

    /// Posts the request to move `vcpu` to `dest` to `owner`'s mailbox; returns `owner`.
    pub(crate) fn post_move(
        &self,
        owner: CoreId,
        vcpu: VcpuId,
        dest: CoreId,
    ) -> Result<CoreId, crate::sched::MoveError> {
        use crate::sched::MoveError;
        self.post(owner, Message::MoveRequest { vcpu, dest }).map_err(|(e, _)| match e {
            PostError::Closed => MoveError::CoreOffline(owner),
            PostError::Full => MoveError::Busy(vcpu),
        })?;
        Ok(owner)
    }

    /// The vCPU's utilization at `now`, in [`UTIL_ONE`](crate::util::UTIL_ONE) units, as last
    /// published by its owner and decayed since if it was not running.
    pub fn vcpu_utilization(&self, vcpu: VcpuId, now: Instant) -> u32 {
        let Some(shared) = self.vcpus.get(vcpu.index()) else { return 0 };
        let util = shared.util.load(Ordering::Relaxed);
        let stamp = Instant(shared.util_stamp.load(Ordering::Relaxed));
        if self.status(vcpu).state == VcpuState::Running {
            return util;
        }
        Ewma::with_value(stamp, util).decayed_to(self.decay, now)
    }

    /// How many times the vCPU has become runnable (woken from WFI or powered on) so far.
    pub fn vcpu_wakeups(&self, vcpu: VcpuId) -> u64 {
        self.vcpus.get(vcpu.index()).map_or(0, |s| s.wakeups.load(Ordering::Relaxed))
    }

    /// The core's busy utilization as last published by the core.
    pub fn core_utilization(&self, core: CoreId) -> u32 {
        self.cores[core.index()].util.load(Ordering::Relaxed)
    }

    /// Real-time bandwidth admitted on a core, in ppm.
    pub fn reserved_ppm(&self, core: CoreId) -> u64 {
        self.cores[core.index()].reserved_ppm.load(Ordering::Acquire)
    }

    /// Admits `ppm` of real-time bandwidth on `core`, or says by how much it does not fit.
    pub fn reserve(&self, core: CoreId, ppm: u64) -> Result<(), AdmissionError> {
        self.reserve_replacing(core, 0, ppm)
    }

    /// Replaces `old_ppm` already admitted on `core` by `new_ppm`, in one atomic step.
    pub fn reserve_replacing(&self, core: CoreId, old_ppm: u64, new_ppm: u64) -> Result<(), AdmissionError> {
        let bound = self.params.rt_bound_ppm;
        let cell = &self.cores[core.index()].reserved_ppm;
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let others = cur.saturating_sub(old_ppm);
            let new = others.saturating_add(new_ppm);
            // A change that does not grow the total is always admitted.
            if new > bound && new > cur {
                return Err(AdmissionError { core, requested_ppm: new_ppm, admitted_ppm: others, bound_ppm: bound });
            }
            match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    pub(crate) fn release(&self, core: CoreId, ppm: u64) {
        let cell = &self.cores[core.index()].reserved_ppm;
        let mut old = cell.load(Ordering::Acquire);
        loop {
            match cell.compare_exchange_weak(old, old.saturating_sub(ppm), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => old = now,
            }
        }
    }

    // ---- owner-side transitions -------------------------------------------------------------

    /// Applies `f` to the word until the CAS succeeds; returns (old, new).
    fn update(&self, vcpu: VcpuId, mut f: impl FnMut(u32) -> u32) -> (u32, u32) {
        let word = self.word(vcpu);
        let mut old = word.load(Ordering::Acquire);
        loop {
            let new = f(old);
            if new == old {
                // Nothing to change: the load is the linearization point, no write needed.
                return (old, new);
            }
            match word.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (old, new),
                Err(now) => old = now,
            }
        }
    }

    /// Owner: Runnable → Running. Clears `WAKE`: a vCPU that is about to run sees its
    /// interrupts on entry.
    ///
    /// One `fetch_or` (Runnable is 0, Running 1: only the owner changes the state bits), and a
    /// second read-modify-write to clear `WAKE` only if it was set. A wake-up that lands
    /// between the two is consumed as one that came just before the first (the vCPU is about
    /// to see its interrupts anyway), which is what the single CAS did.
    #[inline(always)]
    pub(crate) fn start_running(&self, core: CoreId, vcpu: VcpuId) {
        let word = self.word(vcpu);
        let old = word.fetch_or(VcpuState::Running as u32, Ordering::AcqRel);
        if old & WAKE != 0 {
            word.fetch_and(!WAKE, Ordering::AcqRel);
        }
        debug_assert_eq!(owner_of(old), core, "vCPU {vcpu} run by a core that does not own it");
        debug_assert_eq!(
            VcpuState::from_bits(old),
            VcpuState::Runnable,
            "vCPU {vcpu} started from a non-runnable state"
        );
        debug_assert_eq!(old & IN_FLIGHT, 0);
    }

    /// Owner: Running → Runnable (preempted or yielding), request flags kept: one `fetch_and`
    /// (Runnable is 0).
    #[inline(always)]
    pub(crate) fn stop_running(&self, vcpu: VcpuId) {
        let old = self.word(vcpu).fetch_and(!STATE_MASK, Ordering::AcqRel);
        debug_assert_eq!(VcpuState::from_bits(old), VcpuState::Running, "vCPU {vcpu} was not running");
    }

    /// Whether `core` has mail or a kick waiting (what [`System::take_mail`] and
    /// [`System::take_kick`] would find), in two loads.
    pub(crate) fn has_requests(&self, core: CoreId) -> bool {
        let c = &self.cores[core.index()];
        c.has_mail.load(Ordering::Acquire) || c.kicked.load(Ordering::Relaxed)
    }

    /// Owner: a local state change that keeps no request flag but `keep`.
    pub(crate) fn set_state(&self, vcpu: VcpuId, state: VcpuState, keep: u32) {
        self.update(vcpu, |w| with_state(w, state) & !((WAKE | ON_REQ) & !keep));
    }

    /// Owner: the running vCPU executed WFI. It blocks unless a wake-up is already pending, in
    /// which case it stays runnable and the wake-up is consumed. Returns whether it blocked.
    pub(crate) fn try_block(&self, vcpu: VcpuId) -> bool {
        let (old, _) = self.update(vcpu, |w| {
            if w & WAKE != 0 {
                with_state(w, VcpuState::Runnable) & !WAKE
            } else {
                with_state(w, VcpuState::Blocked)
            }
        });
        old & WAKE == 0
    }

    /// Owner: consumes a pending request of an owned vCPU that is not running. Returns the new
    /// state if the vCPU became runnable (woken or powered on).
    pub(crate) fn consume_requests(&self, vcpu: VcpuId) -> Option<VcpuState> {
        let (old, new) = self.update(vcpu, apply_requests);
        ((old ^ new) & STATE_MASK != 0).then(|| VcpuState::from_bits(old))
    }

    /// Owner `from`: marks the vCPU in flight to `dest`. The request flags stay for the
    /// receiver. One `fetch_xor`, not a compare-and-swap loop: only the owner changes the owner
    /// field, and `IN_FLIGHT` is clear while a core owns the vCPU, so flipping the bits that
    /// differ between `from` and `dest`, and `IN_FLIGHT`, is that change whatever request
    /// flags other cores set meanwhile.
    pub(crate) fn begin_handover(&self, vcpu: VcpuId, from: CoreId, dest: CoreId) {
        let flip = ((u32::from(from.0) ^ u32::from(dest.0)) << OWNER_SHIFT) | IN_FLIGHT;
        let old = self.word(vcpu).fetch_xor(flip, Ordering::AcqRel);
        debug_assert_eq!(owner_of(old), from, "vCPU {vcpu} handed over by a core that does not own it");
        debug_assert_eq!(old & IN_FLIGHT, 0, "vCPU {vcpu} handed over while in flight");
    }

    /// Undoes [`begin_handover`](Self::begin_handover) when the `Arrive` could not be posted.
    pub(crate) fn abort_handover(&self, vcpu: VcpuId, back_to: CoreId) {
        let (old, _) = self.update(vcpu, |w| with_owner(w, back_to) & !IN_FLIGHT);
        // A requester that saw the vCPU in flight kicked the core it was going to, which will
        // never receive it: kick its owner again, or the request would wait forever (found by
        // the loom models `wake_during_aborted_handover` / `power_on_during_aborted_handover`).
        if old & (WAKE | ON_REQ) != 0 {
            self.kick(back_to);
        }
    }

    /// Receiver: the vCPU has arrived. Returns its state after pending requests are applied.
    /// One atomic step clears `IN_FLIGHT` and applies them; a request that comes after it finds
    /// the vCPU owned here and kicks this core, as for any owned vCPU.
    pub(crate) fn complete_handover(&self, core: CoreId, vcpu: VcpuId) -> VcpuState {
        let (old, new) = self.update(vcpu, |w| apply_requests(w & !IN_FLIGHT));
        debug_assert_eq!(owner_of(old), core, "vCPU {vcpu} arrived at a core it was not sent to");
        debug_assert_ne!(old & IN_FLIGHT, 0, "vCPU {vcpu} arrived without being in flight");
        VcpuState::from_bits(new)
    }

    pub(crate) fn publish_vcpu_util(&self, vcpu: VcpuId, util: &Ewma) {
        let shared = &self.vcpus[vcpu.index()];
        shared.util.store(util.value(), Ordering::Relaxed);
        shared.util_stamp.store(util.last_update().as_nanos(), Ordering::Relaxed);
    }

    pub(crate) fn count_wakeup(&self, vcpu: VcpuId) {
        if let Some(shared) = self.vcpus.get(vcpu.index()) {
            shared.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn publish_core_util(&self, core: CoreId, util: u32) {
        self.cores[core.index()].util.store(util, Ordering::Relaxed);
    }

    // ---- kicks and mailboxes ----------------------------------------------------------------

    fn kick(&self, core: CoreId) {
        self.cores[core.index()].kicked.store(true, Ordering::Release);
    }

    /// Owner: whether a request flag was set on one of its vCPUs since the last call.
    pub(crate) fn take_kick(&self, core: CoreId) -> bool {
        let c = &self.cores[core.index()];
        // Cheap check first: the swap is a write and would bounce the cache line.
        c.kicked.load(Ordering::Relaxed) && c.kicked.swap(false, Ordering::AcqRel)
    }

    /// Posts `msg` to `core`'s mailbox; a message that cannot be posted comes back with the
    /// reason (an `Arrive` carries the vCPU's state, which the sender keeps).
    pub(crate) fn post(&self, core: CoreId, msg: Message) -> Result<(), (PostError, Message)> {
        let c = &self.cores[core.index()];
        {
            let mut inner = c.mailbox.lock();
            if !inner.open {
                return Err((PostError::Closed, msg));
            }
            // Never grow the queue: posting must not allocate.
            if inner.queue.len() >= c.mailbox_capacity {
                return Err((PostError::Full, msg));
            }
            inner.queue.push_back(msg);
            c.has_mail.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Owner: the next message in its mailbox, and whether more were behind it then (when
    /// none were, the mailbox's flag is cleared with it: a message posted after sets it again).
    pub(crate) fn take_mail(&self, core: CoreId) -> Option<(Message, bool)> {
        let c = &self.cores[core.index()];
        if !c.has_mail.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = c.mailbox.lock();
        let msg = inner.queue.pop_front();
        let more = !inner.queue.is_empty();
        if !more {
            // Cleared under the lock: a poster that pushes after this sets it again.
            c.has_mail.store(false, Ordering::Release);
        }
        msg.map(|m| (m, more))
    }

    /// Owner, going offline: refuses further messages; returns those still queued.
    pub(crate) fn close_mailbox(&self, core: CoreId, mut each: impl FnMut(Message)) {
        let c = &self.cores[core.index()];
        let mut inner = c.mailbox.lock();
        inner.open = false;
        while let Some(m) = inner.queue.pop_front() {
            each(m);
        }
        c.has_mail.store(false, Ordering::Release);
    }

    pub(crate) fn open_mailbox(&self, core: CoreId) {
        self.cores[core.index()].mailbox.lock().open = true;
    }
}

fn decode(word: u32) -> VcpuStatus {
    VcpuStatus {
        owner: owner_of(word),
        state: if word & IN_FLIGHT != 0 { VcpuState::Migrating } else { VcpuState::from_bits(word) },
        wake_pending: word & WAKE != 0,
        power_on_pending: word & ON_REQ != 0,
    }
}
