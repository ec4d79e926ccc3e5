//! The portable heart of the hypervisor: the vCPU model, per-core run queues and the scheduler.
//!
//! "The runtime decides, the platform acts": this crate holds no hardware access and no
//! `unsafe`. A platform (the EL2 hypervisor or the host simulator) feeds it events and asks each
//! core's [`CoreRuntime`] what to do next.
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod ids;
pub mod scenario;
pub mod sync;
pub mod time;
pub mod trace;

pub use ids::{CoreId, CoreMask, VcpuId, VmId};
pub use time::{Instant, Nanos};
