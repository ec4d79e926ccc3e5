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

pub mod bootargs;
pub mod config;
pub mod ids;
pub mod manifest;
pub mod scenario;
pub mod sched;
pub mod sync;
pub mod system;
pub mod time;
pub mod tlb;
pub mod trace;
pub mod util;
pub mod vcpu;

pub use ids::{CoreId, CoreMask, VcpuId, VmId};
pub use sched::{
    build, BuildError, CoreRuntime, Decision, Event, ExitReason, MoveError, OfflineError, RuntimeConfig, RuntimeError,
    SchedParams, TraceSink, VcpuSched, VcpuStats,
};
pub use system::{AffinityState, PowerOnError, Signal, System, VcpuStatus};
pub use time::{Instant, Nanos};
pub use vcpu::{Reservation, VcpuConfig, VcpuInfo, VcpuState};
