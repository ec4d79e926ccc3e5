//! The arm64 kernel `Image` (Documentation/arch/arm64/booting.rst in the kernel): its 64-byte
//! header, unpacking a gzip-compressed `vmlinuz`, and where a Linux guest's kernel goes in guest
//! RAM for the manifest.

use std::io::Read;
use std::path::Path;

use vcpu_runtime::manifest::{GuestImage, GUEST_RAM_BASE};

/// `ARM\x64` at offset 0x38.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
const MAGIC_OFFSET: usize = 0x38;
/// The header is 64 bytes.
pub const HEADER_LEN: usize = 64;

/// Where a Linux guest's kernel is loaded, before `text_offset`: the start of guest RAM plus
/// 2 MiB. The boot protocol wants a 2 MiB aligned base; the 2 MiB below it stay free for the
/// device tree the hypervisor writes for the guest.
pub const KERNEL_BASE_IPA: u64 = GUEST_RAM_BASE + (2 << 20);

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// How far above a 2 MiB aligned base the Image must be placed (0 in kernels since 5.10).
    pub text_offset: u64,
    /// The bytes the kernel occupies from its load address, BSS included.
    pub image_size: u64,
    /// Bit 0: big-endian; bits 1-2: page size (1: 4K, 2: 16K, 3: 64K); bit 3: placement.
    pub flags: u64,
}

impl ImageHeader {
    /// Reads and checks the header of an uncompressed `Image`.
    pub fn parse(image: &[u8]) -> Result<ImageHeader, String> {
        if image.len() < HEADER_LEN {
            return Err(format!("{} bytes, shorter than the 64-byte arm64 Image header", image.len()));
        }
        if image[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
            return Err(format!(
                "no arm64 Image magic \"ARM\\x64\" at offset 0x38 (found {:02x?}): not an arm64 kernel Image{}",
                &image[MAGIC_OFFSET..MAGIC_OFFSET + 4],
                if image.starts_with(b"\x7fELF") {
                    " (this is an ELF file, e.g. vmlinux: use arch/arm64/boot/Image)"
                } else {
                    ""
                }
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&image[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let header = ImageHeader { text_offset: u64_at(0x08), image_size: u64_at(0x10), flags: u64_at(0x18) };
        if header.image_size == 0 {
            return Err(
                "image_size is 0: a kernel older than 3.17, whose size and placement the header does not give".into()
            );
        }
        if header.flags & 1 != 0 {
            return Err("a big-endian kernel (flags bit 0); guests run little-endian".into());
        }
        if header.text_offset % 4096 != 0 || header.text_offset >= 2 << 20 {
            return Err(format!("text_offset {:#x} is not a page multiple below 2 MiB", header.text_offset));
        }
        Ok(header)
    }

    /// The page size the kernel was built for, when the header says.
    pub fn page_size(&self) -> Option<&'static str> {
        match (self.flags >> 1) & 3 {
            1 => Some("4K"),
            2 => Some("16K"),
            3 => Some("64K"),
            _ => None,
        }
    }
}

/// The raw `Image` in `kernel`: as it is when it already is one, unpacked when it is
/// gzip-compressed (`Image.gz`, a `vmlinuz` of distributions that compress it). Then checks the
/// header.
pub fn unpack(kernel: &[u8]) -> Result<(Vec<u8>, ImageHeader), String> {
    let image = if kernel.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(kernel)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip-compressed, but it does not unpack: {e}"))?;
        out
    } else if kernel.get(4..8) == Some(b"zimg".as_slice()) {
        // CONFIG_EFI_ZBOOT: an EFI program that unpacks the kernel itself, with no Image
        // header of its own; only firmware with EFI can boot it.
        let method = kernel.get(0x18..0x20).map(|m| String::from_utf8_lossy(m).trim_end_matches('\0').to_string());
        return Err(format!(
            "an EFI zboot image (CONFIG_EFI_ZBOOT, payload {}): it has no arm64 Image header; build the \
             kernel without CONFIG_EFI_ZBOOT and use arch/arm64/boot/Image",
            method.unwrap_or_default()
        ));
    } else {
        kernel.to_vec()
    };
    let header = ImageHeader::parse(&image)?;
    Ok((image, header))
}

/// A Linux guest for the manifest: the `Image` as one segment at [`KERNEL_BASE_IPA`] +
/// `text_offset`, taking `image_size` bytes of RAM (or the file's length, if longer: a signed
/// kernel carries its signature after the image), entered at its first byte; the initramfs and
/// the command line as the guest's blobs. `memory_mib` is the guest's RAM: the kernel and the
/// initramfs must fit in it above the 2 MiB kept for the device tree.
pub fn guest_image(image: Vec<u8>, initramfs: Vec<u8>, cmdline: &str, memory_mib: u32) -> Result<GuestImage, String> {
    let header = ImageHeader::parse(&image)?;
    let load = KERNEL_BASE_IPA + header.text_offset;
    let ram = header.image_size.max(image.len() as u64);
    let ram_end = GUEST_RAM_BASE + (u64::from(memory_mib) << 20);
    let needed = load + ram + initramfs.len() as u64;
    if needed > ram_end {
        let mib = |b: u64| b.div_ceil(1 << 20);
        return Err(format!(
            "the kernel ({} MiB from {load:#x}, BSS included) and the initramfs ({} MiB) need memory_mib >= {}, \
             the guest has {memory_mib}",
            mib(ram),
            mib(initramfs.len() as u64),
            mib(needed - GUEST_RAM_BASE)
        ));
    }
    Ok(GuestImage { entry_ipa: load, segments: vec![(load, image, ram)], initrd: initramfs, cmdline: cmdline.into() })
}

/// A minimal Image for tests: the header with these fields (4K pages, little-endian), then
/// `len - 64` bytes of zeros.
pub fn fake_image(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
    let mut image = vec![0u8; len.max(HEADER_LEN)];
    image[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
    image[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
    image[0x18..0x20].copy_from_slice(&0b1010u64.to_le_bytes());
    image[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    image
}

/// A Linux guest for the manifest from its files: the kernel at `kernel` ([`unpack`]ed), the
/// initramfs at `initrd` (none: no initramfs), laid out by [`guest_image`]. Errors name the file:
/// `cannot read the kernel PATH: ...`, `kernel PATH: ...`.
pub fn read_guest(kernel: &Path, initrd: Option<&Path>, cmdline: &str, memory_mib: u32) -> Result<GuestImage, String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let (image, _) = unpack(&read(kernel, "kernel")?).map_err(|e| format!("kernel {}: {e}", kernel.display()))?;
    let initramfs = match initrd {
        Some(path) => read(path, "initramfs")?,
        None => Vec::new(),
    };
    guest_image(image, initramfs, cmdline, memory_mib).map_err(|e| format!("kernel {}: {e}", kernel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_read_and_checked() {
        let h = ImageHeader::parse(&fake_image(0, 0x1ab_0000, 4096)).unwrap();
        assert_eq!((h.text_offset, h.image_size, h.page_size()), (0, 0x1ab_0000, Some("4K")));
        let err = |bytes: &[u8]| ImageHeader::parse(bytes).unwrap_err();
        assert!(err(&[0; 10]).contains("shorter than the 64-byte"));
        assert!(err(&[0; 100]).contains("no arm64 Image magic"));
        let mut elf = vec![0; 100];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert!(err(&elf).contains("vmlinux"));
        assert!(err(&fake_image(0, 0, 100)).contains("older than 3.17"));
        assert!(err(&fake_image(0x80001, 0x1000, 100)).contains("text_offset 0x80001"));
        let mut big = fake_image(0, 0x1000, 100);
        big[0x18] |= 1;
        assert!(err(&big).contains("big-endian"));
    }

    #[test]
    fn gzip_images_are_unpacked() {
        use std::io::Write;
        let raw = fake_image(0x8_0000, 0x20_0000, 5000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let (image, header) = unpack(&gz.finish().unwrap()).unwrap();
        assert_eq!(image, raw);
        assert_eq!(header.text_offset, 0x8_0000);
        assert_eq!(unpack(&raw).unwrap().0, raw);
        assert!(unpack(&[0x1f, 0x8b, 1, 2, 3]).unwrap_err().contains("does not unpack"));
        let mut zboot = vec![0u8; 128];
        zboot[4..8].copy_from_slice(b"zimg");
        zboot[0x18..0x1c].copy_from_slice(b"zstd");
        assert!(unpack(&zboot).unwrap_err().contains("EFI zboot image (CONFIG_EFI_ZBOOT, payload zstd)"));
    }

    #[test]
    fn kernel_goes_above_the_device_tree() {
        let g = guest_image(fake_image(0, 0x300_0000, 0x100_0000), vec![7; 100], "console=ttyAMA0", 128).unwrap();
        assert_eq!(g.entry_ipa, 0x4020_0000);
        assert_eq!(g.segments.len(), 1);
        let (ipa, data, ram) = &g.segments[0];
        assert_eq!((*ipa, data.len(), *ram), (0x4020_0000, 0x100_0000, 0x300_0000));
        assert_eq!((g.initrd.len(), g.cmdline.as_str()), (100, "console=ttyAMA0"));
        // An old-style text_offset is honoured.
        let g = guest_image(fake_image(0x8_0000, 0x1000, 0x1000), vec![], "", 16).unwrap();
        assert_eq!(g.entry_ipa, 0x4028_0000);
        // A file longer than image_size keeps all its bytes.
        let g = guest_image(fake_image(0, 0x1000, 0x2000), vec![], "", 16).unwrap();
        assert_eq!(g.segments[0].2, 0x2000);
        let e = guest_image(fake_image(0, 0x300_0000, 0x1000), vec![0; 3 << 20], "", 32).unwrap_err();
        assert!(e.contains("need memory_mib >= 53, the guest has 32"), "{e}");
    }
}
