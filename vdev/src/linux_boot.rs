//! Where a Linux guest's pieces go in its RAM, by the arm64 boot protocol
//! (Documentation/arch/arm64/booting.rst in Linux): the kernel `Image` where the manifest put
//! it, the device tree at the base of RAM, the initramfs at the top. Portable and host-tested;
//! the platform copies the bytes and starts vCPU 0 at the `Image` with `x0` = the device tree.
//!
//! ```text
//! ram_base            device tree (8-byte aligned, < 2 MiB, below the kernel)
//! kernel load address Image (text_offset from a 2 MiB boundary), then its BSS: image_size
//! ...                 free RAM
//! initrd start        initramfs, from a 2 MiB boundary, as high as it fits
//! ram_end
//! ```

use core::fmt;
use core::ops::Range;

use crate::guest_dt::DTB_MAX;

/// `ARM\x64` at offset 56 of an arm64 `Image`.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// The `Image` header's size (the kernel's first 64 bytes).
pub const IMAGE_HEADER_LEN: usize = 64;
/// The alignment the boot protocol places the kernel's base at, and that this layout gives
/// the initramfs.
pub const ALIGN_2M: u64 = 2 << 20;

/// The header of an arm64 kernel `Image` (booting.rst, *Call the kernel image*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the image goes from a 2 MiB-aligned base (0 for kernels since 3.17 with
    /// `RANDOMIZE_TEXT_OFFSET` off, and for every kernel since 5.8).
    pub text_offset: u64,
    /// The memory the kernel uses from its load address, BSS included (0 on kernels before
    /// 3.17: then only the file is known).
    pub image_size: u64,
    /// Bit 0: big-endian kernel; bits 1-2: page size; bit 3: may be placed anywhere in RAM.
    pub flags: u64,
}

impl ImageHeader {
    /// Reads the header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<ImageHeader, LinuxBootError> {
        let header = image.get(..IMAGE_HEADER_LEN).ok_or(LinuxBootError::NotAnImage)?;
        let u64_at = |off: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[off..off + 8]);
            u64::from_le_bytes(b)
        };
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&header[56..60]);
        if u32::from_le_bytes(magic) != IMAGE_MAGIC {
            return Err(LinuxBootError::NotAnImage);
        }
        Ok(ImageHeader { text_offset: u64_at(8), image_size: u64_at(16), flags: u64_at(24) })
    }
}

/// Where everything goes (IPAs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The device tree's address (vCPU 0's `x0`): the base of RAM.
    pub dtb: u64,
    /// The most bytes the device tree may take there: up to the kernel's 2 MiB base, at most
    /// [`DTB_MAX`].
    pub dtb_room: u64,
    /// The kernel from its load address (the entry point) to the end of what it uses (the
    /// larger of `image_size` and the bytes loaded).
    pub kernel: Range<u64>,
    /// The initramfs, if there is one.
    pub initrd: Option<Range<u64>>,
}

/// Why a Linux guest cannot be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxBootError {
    /// The kernel has no arm64 `Image` header (`ARM\x64` at offset 56).
    NotAnImage,
    /// The load address minus `text_offset` is not 2 MiB aligned (the boot protocol's rule).
    Misaligned { load: u64, text_offset: u64 },
    /// The kernel (with its `image_size`) does not fit in RAM after the device tree's room.
    KernelOutsideRam { load: u64, end: u64 },
    /// Less than a device tree's minimum room between the base of RAM and the kernel.
    NoRoomForDtb { room: u64 },
    /// The initramfs does not fit between the kernel's end and the end of RAM.
    InitrdDoesNotFit { len: u64, free: u64 },
}

impl fmt::Display for LinuxBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LinuxBootError::NotAnImage => write!(f, "the kernel is not an arm64 Image (no ARM\\x64 magic)"),
            LinuxBootError::Misaligned { load, text_offset } => {
                write!(f, "kernel at {load:#x} with text_offset {text_offset:#x}: its base is not 2 MiB aligned")
            }
            LinuxBootError::KernelOutsideRam { load, end } => {
                write!(
                    f,
                    "kernel {load:#x}..{end:#x} (with its image_size) is not inside guest RAM above the device tree"
                )
            }
            LinuxBootError::NoRoomForDtb { room } => {
                write!(f, "{room:#x} bytes between the base of RAM and the kernel: no room for the device tree")
            }
            LinuxBootError::InitrdDoesNotFit { len, free } => {
                write!(f, "initramfs of {len} bytes, {free} bytes of RAM free above the kernel")
            }
        }
    }
}

/// The smallest room kept for the device tree (a guest's tree is a few KiB).
const DTB_MIN_ROOM: u64 = 64 << 10;

/// Lays out a guest with RAM `ram`, the kernel `image` (its first bytes, at least the
/// header) loaded at `load` taking `loaded_len` bytes of RAM, and an initramfs of
/// `initrd_len` bytes (0: none).
pub fn layout(
    ram: Range<u64>,
    load: u64,
    image: &[u8],
    loaded_len: u64,
    initrd_len: u64,
) -> Result<LinuxLayout, LinuxBootError> {
    let header = ImageHeader::parse(image)?;
    let base = load.wrapping_sub(header.text_offset);
    if load < header.text_offset || base % ALIGN_2M != 0 {
        return Err(LinuxBootError::Misaligned { load, text_offset: header.text_offset });
    }
    let end = load.checked_add(header.image_size.max(loaded_len));
    let Some(end) = end.filter(|&e| load > ram.start && e <= ram.end) else {
        return Err(LinuxBootError::KernelOutsideRam { load, end: end.unwrap_or(u64::MAX) });
    };
    // The device tree stays below the kernel's 2 MiB base: the kernel maps it with blocks of
    // up to 2 MiB and must not share one with its own image.
    let room = base.saturating_sub(ram.start).min(DTB_MAX as u64);
    if room < DTB_MIN_ROOM {
        return Err(LinuxBootError::NoRoomForDtb { room });
    }
    let initrd = if initrd_len == 0 {
        None
    } else {
        let free = ram.end - end;
        let start = ram.end.checked_sub(initrd_len).map(|s| s / ALIGN_2M * ALIGN_2M);
        match start {
            Some(start) if start >= end => Some(start..start + initrd_len),
            _ => return Err(LinuxBootError::InitrdDoesNotFit { len: initrd_len, free }),
        }
    };
    Ok(LinuxLayout { dtb: ram.start, dtb_room: room, kernel: load..end, initrd })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;
    const RAM: Range<u64> = 0x4000_0000..0x4000_0000 + 256 * MIB;

    /// A kernel's first bytes with this header.
    fn image(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut b = std::vec![0u8; 4096];
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&0xAu64.to_le_bytes());
        b[56..60].copy_from_slice(b"ARM\x64");
        b
    }

    #[test]
    fn linux_boot_header() {
        let h = ImageHeader::parse(&image(0, 0x2A3_0000)).unwrap();
        assert_eq!(h, ImageHeader { text_offset: 0, image_size: 0x2A3_0000, flags: 0xA });
        assert_eq!(ImageHeader::parse(&[0u8; 63]), Err(LinuxBootError::NotAnImage));
        assert_eq!(ImageHeader::parse(&[0u8; 4096]), Err(LinuxBootError::NotAnImage), "an ELF or garbage");
    }

    #[test]
    fn linux_boot_layout_as_documented() {
        // A 40 MiB kernel (image_size) at 0x4020_0000, a 10 MB initramfs.
        let l = layout(RAM, 0x4020_0000, &image(0, 40 * MIB), 30 * MIB, 10_000_000).unwrap();
        assert_eq!(l.dtb, 0x4000_0000);
        assert_eq!(l.dtb_room, 2 * MIB);
        assert_eq!(l.kernel, 0x4020_0000..0x4020_0000 + 40 * MIB, "image_size counts, not the file");
        let initrd = l.initrd.unwrap();
        assert_eq!(initrd.start % ALIGN_2M, 0);
        assert_eq!(initrd.end - initrd.start, 10_000_000);
        assert!(initrd.end <= RAM.end && RAM.end - initrd.end < ALIGN_2M, "as high as it fits");
        assert_eq!(initrd.start, 0x4000_0000 + 256 * MIB - 10 * MIB);
        // No initramfs.
        assert_eq!(layout(RAM, 0x4020_0000, &image(0, 40 * MIB), 30 * MIB, 0).unwrap().initrd, None);
        // An old kernel (image_size 0): the loaded bytes count.
        let l = layout(RAM, 0x4028_0000, &image(0x8_0000, 0), 12 * MIB, 0).unwrap();
        assert_eq!(l.kernel, 0x4028_0000..0x4028_0000 + 12 * MIB);
    }

    #[test]
    fn linux_boot_layout_refusals() {
        let img = image(0, 40 * MIB);
        assert_eq!(
            layout(RAM, 0x4030_0000, &img, MIB, 0),
            Err(LinuxBootError::Misaligned { load: 0x4030_0000, text_offset: 0 })
        );
        assert_eq!(
            layout(RAM, 0x4020_0000, &image(0x8_0000, 0), MIB, 0),
            Err(LinuxBootError::Misaligned { load: 0x4020_0000, text_offset: 0x8_0000 })
        );
        assert_eq!(
            layout(RAM, 0x4000_0000, &img, MIB, 0),
            Err(LinuxBootError::KernelOutsideRam { load: 0x4000_0000, end: 0x4000_0000 + 40 * MIB })
        );
        let small = 0x4000_0000..0x4000_0000 + 32 * MIB;
        assert!(matches!(layout(small, 0x4020_0000, &img, MIB, 0), Err(LinuxBootError::KernelOutsideRam { .. })));
        // The initramfs must not overlap the kernel's BSS.
        let e = layout(RAM, 0x4020_0000, &img, MIB, 250 * MIB).unwrap_err();
        assert_eq!(e, LinuxBootError::InitrdDoesNotFit { len: 250 * MIB, free: 256 * MIB - 2 * MIB - 40 * MIB });
        assert_eq!(layout(RAM, 0x4020_0000, &[0u8; 64], MIB, 0), Err(LinuxBootError::NotAnImage));
        // A kernel 2 MiB above the base of RAM is the usual case; at 4 MiB the room stays 2 MiB.
        assert_eq!(layout(RAM, 0x4040_0000, &img, MIB, 0).unwrap().dtb_room, 2 * MIB);
    }
}
