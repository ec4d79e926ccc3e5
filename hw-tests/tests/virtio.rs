//! The checkpoint disk over virtio-blk (docs/platform.md, *virtio-blk transport*): one QEMU
//! writes a stream to a raw image file (`hv.disk-test=write`), a second QEMU with another core
//! count reads it back from the same file (`hv.disk-test=read`); the host checks the file's
//! layout on its own, and a stream corrupted between the two runs, or a missing, blank or too
//! small disk, fails the run with a line that says what is wrong.
//!
//! Run with `cargo test --release -p hw-tests --test virtio -- --test-threads=1`.

use std::path::PathBuf;

use hw_tests::{run, workspace_root, QemuConfig, Run};

/// The payload of `hv.disk-test=write` (platform/qemu-virt/src/selftest.rs).
const PATTERN_LEN: usize = 1 << 20;
const SECTOR: usize = 512;
/// QEMU's virt board: the highest of its 32 virtio-mmio transports gets the first `-device`.
const BLOCK_LINE: &str = "virtio: block device (device ID 2) at 0xa003e00";

/// A fresh image of `bytes` zeros, `target/hw-tests/virtio/NAME.img`.
fn blank_image(name: &str, bytes: u64) -> PathBuf {
    let dir = workspace_root().join("target/hw-tests/virtio");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.img"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_len(bytes).unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
    path
}

/// Runs one half of the disk test on `smp` cores with `image` attached.
fn disk_test(mode: &str, smp: u32, image: Option<&PathBuf>) -> Run {
    let mut config = QemuConfig::new(smp, "cortex-a57").append(&format!("hv.disk-test={mode}"));
    if let Some(image) = image {
        config = config.disk(image);
    }
    let r = run(&config);
    eprintln!("hw-tests: disk-test={mode}: {}", r.summary());
    r
}

/// The value of `crc=0x...` on the line starting with `prefix`.
fn crc_on_line(r: &Run, prefix: &str) -> u32 {
    let line = r.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| r.fail(&format!("no `{prefix}` line")));
    let hex = line.split("crc=0x").nth(1).and_then(|rest| rest.get(..8));
    hex.and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or_else(|| r.fail(&format!("no crc in {line:?}")))
}

/// The test's payload, as selftest.rs makes it: splitmix64 from `0x4856_5354_5245_414d`, each
/// output's little-endian bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x4856_5354_5245_414d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: written apart from the
/// `crc` crate the hypervisor uses, so the layout is checked against its description.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Checks the image as docs/platform.md describes it: the header sector, then the payload.
fn check_layout(image: &PathBuf, crc: u32) {
    let bytes = std::fs::read(image).unwrap_or_else(|e| panic!("cannot read {}: {e}", image.display()));
    let header = &bytes[..SECTOR];
    assert_eq!(&header[0..8], b"HVSTREAM", "magic");
    assert_eq!(le32(header, 8), 1, "layout version");
    assert_eq!(le32(header, 12), SECTOR as u32, "sector size");
    assert_eq!(u64::from_le_bytes(header[16..24].try_into().unwrap()), PATTERN_LEN as u64, "payload length");
    assert_eq!(le32(header, 24), crc, "payload CRC in the header vs the console line");
    assert_eq!(le32(header, 28), crc32c(&header[..28]), "header CRC");
    assert!(header[32..].iter().all(|b| *b == 0), "header tail not zero");
    let payload = &bytes[SECTOR..SECTOR + PATTERN_LEN];
    assert!(payload == pattern(PATTERN_LEN).as_slice(), "the payload on the disk is not the pattern");
    assert_eq!(crc32c(payload), crc, "CRC-32C of the payload");
}

#[test]
fn a_stream_written_on_two_cores_reads_back_on_four() {
    let image = blank_image("roundtrip", 4 << 20);
    let w = disk_test("write", 2, Some(&image));
    w.assert_clean();
    w.assert_present(BLOCK_LINE);
    w.assert_present("all 2 cores online");
    w.assert_present("disk: virtio-blk at 0xa003e00, 4194304 bytes");
    let crc = crc_on_line(&w, &format!("disk: wrote {PATTERN_LEN} bytes crc=0x"));
    check_layout(&image, crc);

    let r = disk_test("read", 4, Some(&image));
    r.assert_clean();
    r.assert_present("all 4 cores online");
    r.assert_present(&format!("disk: read {PATTERN_LEN} bytes crc={crc:#010x} ok"));
}

#[test]
fn a_corrupted_payload_is_refused() {
    let image = blank_image("corrupt", 4 << 20);
    let w = disk_test("write", 2, Some(&image));
    w.assert_clean();
    let crc = crc_on_line(&w, "disk: wrote ");

    // One bit of one byte in the middle of the payload, changed on the host.
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[SECTOR + 300_001] ^= 0x10;
    std::fs::write(&image, &bytes).unwrap();

    let r = disk_test("read", 4, Some(&image));
    r.assert_exit(1);
    r.assert_present(&format!(
        "FAIL: disk: checksum mismatch: the {PATTERN_LEN}-byte payload has CRC-32C 0x{:08x}, the header says {crc:#010x}",
        crc32c(&bytes[SECTOR..SECTOR + PATTERN_LEN])
    ));
    r.assert_absent("disk: read ");
}

#[test]
fn a_corrupted_header_is_refused() {
    let image = blank_image("header", 4 << 20);
    disk_test("write", 1, Some(&image)).assert_clean();
    let mut bytes = std::fs::read(&image).unwrap();
    // The payload length: the header's own checksum catches it.
    bytes[17] ^= 0x01;
    std::fs::write(&image, &bytes).unwrap();
    let r = disk_test("read", 1, Some(&image));
    r.assert_exit(1);
    r.assert_present("FAIL: disk: bad stream header: header checksum 0x");
}

#[test]
fn a_blank_disk_has_no_stream() {
    let image = blank_image("blank", 1 << 20);
    let r = disk_test("read", 1, Some(&image));
    r.assert_exit(1);
    r.assert_present("FAIL: disk: bad stream header: the header sector is blank");
}

#[test]
fn a_disk_too_small_for_the_stream_is_refused() {
    // 1 MiB: the header sector and 1 MiB of payload do not fit.
    let image = blank_image("small", 1 << 20);
    let r = disk_test("write", 1, Some(&image));
    r.assert_exit(1);
    r.assert_present("FAIL: disk: device too small: the stream needs 1049088 bytes, the disk has 1048576");
}

#[test]
fn without_a_disk_the_test_says_so() {
    let r = disk_test("read", 1, None);
    r.assert_exit(1);
    r.assert_absent("virtio: ");
    r.assert_present("FAIL: disk: no virtio-blk device among 32 virtio-mmio transports");
}
