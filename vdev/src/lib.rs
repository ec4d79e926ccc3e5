//! The devices a guest sees, as portable models: the platform traps a guest's access (an MMIO
//! data abort, an HVC) and hands it here; the model answers and says what must happen next
//! (which vCPU to kick, which interrupt is now pending). No hardware access and no `unsafe`,
//! so every model is tested on the host; `platform/aarch64` carries the results out. The device
//! tree a Linux guest boots with, which describes these devices, is generated here too
//! (`guest_dt`).
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod guest_dt;
pub mod idregs;
pub mod linux_boot;
pub mod mmio;
pub mod psci;
pub mod smccc;
pub mod tlbi;
pub mod uart;
pub mod vgic;
