//! Moving guests: the checkpoint format ([`checkpoint`]); vCPU hand-over, live migration and
//! the offload policy arrive with their issues (see ARCHITECTURE.md).
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod checkpoint;
