//! Writes the guests' memory layout (`memory.ld`) where the linker finds it.
//!
//! Each guest's own build.rs passes `-Timage.ld -Tmemory.ld`: `image.ld` comes from aarch64-rt,
//! `memory.ld` from here. `cargo:rustc-link-search` propagates to every crate that depends on
//! this one, so the guests find both files by name.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(out.join("memory.ld"), include_str!("memory.ld")).expect("write memory.ld");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.ld");
}
