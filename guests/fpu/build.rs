//! Links the guest with aarch64-rt's `image.ld` and guest-rt's `memory.ld` (both on the link
//! search path, put there by those crates' build scripts).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Timage.ld");
    println!("cargo:rustc-link-arg-bins=-Tmemory.ld");
}
