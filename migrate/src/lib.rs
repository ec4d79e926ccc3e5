//! (Arrives with its issue; see ARCHITECTURE.md.)
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]
