//! Live pre-copy migration, the portable half. The stream is [`crate::checkpoint`]'s live
//! layout (memory while the guest runs, dirty pages in rounds, then the paused state); around it:
//!
//! - [`DirtyBitmap`] and [`AtomicDirtyBitmap`]: one bit per guest page, set from stage-2 write
//!   faults (the atomic one from any core through `&self`) and taken as runs of pages to re-send.
//! - [`Precopy`]: the planner, told after each round how many pages are dirty and how fast the
//!   round went; it says whether to run another round or to stop the guest and copy the rest.
//! - [`Control`]: the fixed-size, checksummed frames that close the migration — READY or
//!   REFUSED from the destination, COMMIT from the source, DONE from the destination, ABORT
//!   from either.
//!
//! All of it is sans-IO: the platform owns time, the transport and the guest. docs/migration.md
//! (*Live migration*) describes the protocol and what each side does when a step fails.

mod bitmap;
mod control;
mod precopy;

#[cfg(test)]
mod tests;

pub use bitmap::{AtomicDirtyBitmap, DirtyBitmap, TakeRuns};
pub use control::{Control, ControlError, Reason, Refusal, CONTROL_FRAME_LEN, CONTROL_MAGIC};
pub use precopy::{Next, Precopy, PrecopyLimits, StopReason};
