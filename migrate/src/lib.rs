//! Moving guests: the checkpoint format ([`checkpoint`]: snapshots and live migration streams),
//! the rest of live pre-copy migration ([`live`]: dirty bitmaps, the pre-copy planner, the
//! control messages), and the offload decision model ([`offload`]). vCPU hand-over between
//! cores lives in the runtime (see ARCHITECTURE.md).
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod checkpoint;
pub mod live;
pub mod offload;
