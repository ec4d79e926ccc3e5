//! List registers: a portable description and the `ICH_LR<n>_EL2` encoding (IHI 0069, 12.4):
//! State `[63:62]`, HW `[61]`, Group `[60]`, Priority `[55:48]`, pINTID `[44:32]` when HW = 1 or EOI
//! `[41]` when HW = 0, vINTID `[31:0]`.

/// The state of an interrupt in a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LrState {
    /// Empty: the guest deactivated the interrupt (or the LR was never used).
    Invalid = 0b00,
    Pending = 0b01,
    Active = 0b10,
    PendingActive = 0b11,
}

impl LrState {
    pub const fn pending(self) -> bool {
        matches!(self, LrState::Pending | LrState::PendingActive)
    }

    pub const fn active(self) -> bool {
        matches!(self, LrState::Active | LrState::PendingActive)
    }

    const fn from_bits(bits: u64) -> LrState {
        match bits & 0b11 {
            0b00 => LrState::Invalid,
            0b01 => LrState::Pending,
            0b10 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
}

/// One list register's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lr {
    /// The virtual INTID the guest acknowledges.
    pub intid: u32,
    pub priority: u8,
    pub state: LrState,
    /// Group 1 (signalled as vIRQ); Group 0 is signalled as vFIQ.
    pub group1: bool,
    /// A physical INTID whose deactivation follows the guest's (the HW bit). The model never
    /// sets it; the platform does, for the virtual timer while it holds the physical PPI
    /// active (docs/platform.md, *Timers*).
    pub hw: Option<u32>,
    /// Raise a maintenance interrupt when the guest deactivates it (the EOI bit; only
    /// meaningful without `hw`).
    pub eoi_maintenance: bool,
}

impl Lr {
    /// An empty list register.
    pub const INVALID: Lr =
        Lr { intid: 0, priority: 0, state: LrState::Invalid, group1: false, hw: None, eoi_maintenance: false };
}

impl Default for Lr {
    fn default() -> Lr {
        Lr::INVALID
    }
}

impl Lr {
    /// SGI `intid` of Group 1 at `priority`, loaded pending by the hypervisor.
    #[inline(always)]
    pub(crate) const fn pending_sgi(intid: u32, priority: u8) -> Lr {
        Lr { intid, priority, state: LrState::Pending, group1: true, hw: None, eoi_maintenance: false }
    }
}

const STATE_SHIFT: u32 = 62;
const HW: u64 = 1 << 61;
const GROUP: u64 = 1 << 60;
const PRIORITY_SHIFT: u32 = 48;
const PINTID_SHIFT: u32 = 32;
const PINTID_MASK: u64 = 0x1FFF;
const EOI: u64 = 1 << 41;

/// The `ICH_LR<n>_EL2` value for `lr`. With `hw`, the pINTID keeps its low 13 bits and
/// `eoi_maintenance` is dropped (the EOI bit overlaps pINTID and the architecture raises no
/// EOI maintenance interrupt for hardware interrupts).
#[inline]
pub const fn encode_ich_lr(lr: &Lr) -> u64 {
    let mut v = lr.intid as u64 | (lr.priority as u64) << PRIORITY_SHIFT | (lr.state as u64) << STATE_SHIFT;
    if lr.group1 {
        v |= GROUP;
    }
    match lr.hw {
        Some(p) => v |= HW | (p as u64 & PINTID_MASK) << PINTID_SHIFT,
        None => {
            if lr.eoi_maintenance {
                v |= EOI;
            }
        }
    }
    v
}

/// The list register an `ICH_LR<n>_EL2` value describes (RES0 and NMI bits are ignored).
pub const fn decode_ich_lr(v: u64) -> Lr {
    let hw = v & HW != 0;
    Lr {
        intid: v as u32,
        priority: (v >> PRIORITY_SHIFT) as u8,
        state: LrState::from_bits(v >> STATE_SHIFT),
        group1: v & GROUP != 0,
        hw: if hw { Some(((v >> PINTID_SHIFT) & PINTID_MASK) as u32) } else { None },
        eoi_maintenance: !hw && v & EOI != 0,
    }
}
