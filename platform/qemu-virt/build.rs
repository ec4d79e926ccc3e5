//! Links the `hypervisor` binary with this board's memory script (`memory.ld`: where the image
//! goes) and platform-aarch64's section script (`image.ld`, found on the search path that
//! platform-aarch64's build script adds).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/memory.ld");
    println!("cargo:rustc-link-arg-bins=-Timage.ld");
    println!("cargo:rerun-if-changed=memory.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
