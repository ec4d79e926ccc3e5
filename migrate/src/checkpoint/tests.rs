//! Round trips, refusals, and the decoder on hostile input.

extern crate std;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::time::{Duration, Instant};

use vdev::vgic::{Vgic, VgicConfig};

use super::wire::CRC;
use super::*;

const RAM_BASE: u64 = 0x4000_0000;

/// xorshift64*: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn vcpu(index: u16, rng: &mut Rng) -> VcpuState {
    let power = match index % 3 {
        0 => PowerState::On,
        1 => PowerState::Off,
        _ => PowerState::OnPending { entry: RAM_BASE + 0x40, context: rng.next() },
    };
    let mut v = VcpuState::reset(index, power);
    for x in &mut v.regs.x {
        *x = rng.next();
    }
    v.regs.pc = RAM_BASE + rng.below(1 << 20) * 4;
    v.regs.pstate = (rng.next() & !0x1F & 0xFFFF_FFFF) | [0b00000, 0b00100, 0b00101][rng.below(3) as usize];
    let mut el1 = v.el1.as_array();
    for r in &mut el1 {
        *r = rng.next();
    }
    v.el1 = El1Regs::from_array(el1);
    v.timer = VirtualTimer { cntv_ctl: rng.below(8), cntv_cval: rng.next() };
    v.fp.fpcr = rng.next();
    v.fp.fpsr = rng.next();
    for q in &mut v.fp.v {
        *q = u128::from(rng.next()) << 64 | u128::from(rng.next());
    }
    v.gic = GicCpu { vmcr: rng.next(), ap0r: [rng.next(), 0, 0, 1], ap1r: [0, rng.next(), 2, 0] };
    v
}

/// A vGIC with some life in it, saved by the real model.
fn vgic_state(vcpus: u16, spis: u16) -> VgicState {
    let mut g = Vgic::new(VgicConfig::new(vcpus, spis)).unwrap();
    g.dist_write(0x0, 4, 0x3).unwrap(); // GICD_CTLR: both groups on
    if spis > 0 {
        g.dist_write(0x104, 4, 0xFFFF_0F0F).unwrap(); // ISENABLER1: some SPIs
        g.dist_write(0x400 + 40, 4, 0x8040_20A0).unwrap(); // priorities of SPIs 40..44
        g.dist_write(0x6000 + 8 * 41, 8, u64::from(vcpus - 1)).unwrap(); // SPI 41 to the last vCPU
        g.set_level(33, None, true);
        g.inject_edge(36, None);
    }
    g.inject_edge(27, Some(vcpus - 1));
    g.send_sgi(0, (1 << 24) | 0b1); // SGI 1 to vCPU 0
    g.save()
}

#[derive(Clone, Copy)]
enum Fill {
    Zero,
    Random,
    Text,
    Pattern,
}

fn page(kind: Fill, rng: &mut Rng) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    match kind {
        Fill::Zero => {}
        Fill::Random => rng.fill(&mut p),
        Fill::Text => {
            const WORDS: [&str; 12] = [
                "the ", "guest ", "kernel ", "page ", "cache ", "of ", "and ", "memory ", "0x4000 ", "{}\n", "fn ",
                "= ",
            ];
            let mut at = 0;
            while at < PAGE_SIZE {
                let w = WORDS[rng.below(12) as usize].as_bytes();
                let n = w.len().min(PAGE_SIZE - at);
                p[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        Fill::Pattern => {
            let v = rng.next().to_le_bytes();
            for (i, b) in p.iter_mut().enumerate() {
                *b = v[i % 8];
            }
        }
    }
    p
}

/// Guest RAM of `kinds.len()` pages.
fn ram(kinds: &[Fill], rng: &mut Rng) -> Vec<u8> {
    kinds.iter().flat_map(|&k| page(k, rng)).collect()
}

fn memory_ranges(ram: &[u8]) -> Vec<DataRange> {
    vec![DataRange { ipa: RAM_BASE, bytes: ram.to_vec() }]
}

fn sample(vcpus: u16, spis: u16, kinds: &[Fill], seed: u64) -> Checkpoint {
    let mut rng = Rng(seed | 1);
    let ram = ram(kinds, &mut rng);
    Checkpoint {
        header: CheckpointHeader::new(vcpus, RAM_BASE, ram.len() as u64),
        config: VmConfig { name: "linux-1".to_string(), weight: 1024, reservation: Some((2_000_000, 10_000_000)) },
        vcpus: (0..vcpus).map(|i| vcpu(i, &mut rng)).collect(),
        vgic: vgic_state(vcpus, spis),
        timers: TimerState { counter_hz: 62_500_000, virtual_count: rng.next() >> 8 },
        devices: DeviceState {
            uart: Some(Pl011State {
                cr: 0x301,
                imsc: 0x20,
                ris: 0x20,
                line: b"booting".to_vec(),
                ..Default::default()
            }),
        },
        memory: memory_ranges(&ram),
        timing: None,
    }
}

/// A small checkpoint for the byte-by-byte tests.
fn small() -> Checkpoint {
    use Fill::*;
    sample(2, 32, &[Text, Zero, Zero, Random, Pattern, Zero], 7)
}

/// Guest RAM of a checkpoint, flattened.
fn flat(c: &Checkpoint) -> Vec<u8> {
    let mut ram = vec![0u8; c.header.memory_bytes as usize];
    for r in &c.memory {
        let at = (r.ipa - c.header.ram_base) as usize;
        ram[at..at + r.bytes.len()].copy_from_slice(&r.bytes);
    }
    ram
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.header, b.header);
    assert_eq!(a.config, b.config);
    assert_eq!(a.vcpus, b.vcpus);
    assert_eq!(a.vgic, b.vgic);
    assert_eq!(a.timers, b.timers);
    assert_eq!(a.devices, b.devices);
    assert!(flat(a) == flat(b), "guest RAM differs");
}

/// The file header and the sections (kind, payload) of a well-formed stream, trailer excluded.
fn split(bytes: &[u8]) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let mut at = FILE_HEADER_LEN;
    let mut sections = Vec::new();
    loop {
        let kind = bytes[at];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if kind == KIND_END {
            break;
        }
        sections.push((kind, bytes[at + 16..at + 16 + len].to_vec()));
        at += 16 + len;
    }
    (bytes[..FILE_HEADER_LEN].to_vec(), sections)
}

/// A stream with correct checksums and trailer around whatever the header and sections hold.
fn build(header: &[u8], sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = header.to_vec();
    for (kind, payload) in sections {
        out.extend_from_slice(&codec::section_header(*kind, payload.len() as u32, CRC.checksum(payload)));
        out.extend_from_slice(payload);
    }
    let t = Trailer { sections: sections.len() as u32, length: out.len() as u64, stream_crc: CRC.checksum(&out) };
    let mut p = Vec::new();
    codec::put_trailer(&mut p, &t);
    out.extend_from_slice(&codec::section_header(KIND_END, p.len() as u32, CRC.checksum(&p)));
    out.extend_from_slice(&p);
    out
}

fn reseal_header(h: &mut [u8]) {
    let crc = CRC.checksum(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes with both readers, which must agree; returns decode_all's answer.
fn decode_both(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let all = decode_all(bytes);
    let mut d = Decoder::new(bytes);
    let mut mem = Discard::default();
    let streamed = loop {
        match d.next_event(&mut mem) {
            Ok(Some(_)) => {}
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match (&all, streamed) {
        (Ok(_), Ok(())) => {}
        (Err(a), Err(s)) => assert_eq!(*a, s),
        // decode_all also refuses bytes after the trailer, which a stream reader leaves alone.
        (Err(a), Ok(())) => assert!(matches!(a.problem, Problem::TrailingBytes(_)), "{a}"),
        (Ok(_), Err(s)) => panic!("only the streaming decoder refused: {s}"),
    }
    all
}

// ----- round trips -----

#[test]
fn round_trip_of_a_full_checkpoint() {
    use Fill::*;
    let kinds: Vec<Fill> = [Zero, Zero, Random, Text, Text, Text, Pattern, Zero, Random, Random]
        .iter()
        .cycle()
        .take(90)
        .copied()
        .collect();
    let c = sample(4, 64, &kinds, 42);
    for compression in [Compression::None, Compression::Lz4, Compression::Adaptive] {
        let opts = EncodeOptions { compression, ..EncodeOptions::default() };
        let (bytes, summary) = c.encode_into(Vec::new(), opts).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(summary.zero_pages + summary.raw_pages + summary.lz4_pages, 90);
        assert_eq!(summary.zero_pages, 27);
        if compression == Compression::None {
            assert_eq!(summary.lz4_pages, 0);
        } else {
            assert!(summary.lz4_pages > 0 && summary.lz4_bytes < summary.lz4_pages * PAGE_SIZE as u64);
        }
        let back = decode_both(&bytes).unwrap();
        assert_same(&c, &back);
        // The vGIC model takes its state back.
        let g = Vgic::from_state(&back.vgic).unwrap();
        assert_eq!(g.save(), c.vgic);
    }
}

#[test]
fn memory_in_any_pieces_gives_the_same_stream() {
    use Fill::*;
    let kinds: Vec<Fill> = [Random, Random, Zero, Text, Text, Text, Text, Zero, Zero, Zero, Random]
        .iter()
        .cycle()
        .take(70)
        .copied()
        .collect();
    let c = sample(1, 32, &kinds, 3);
    let ram = flat(&c);
    let whole = c.encode(EncodeOptions::default()).unwrap();
    for piece_pages in [1usize, 3, 16, 17, 70] {
        let mut e = Encoder::new(Vec::new(), &c.header, &c.config, EncodeOptions::default()).unwrap();
        e.vcpu(&c.vcpus[0]).unwrap();
        e.vgic(&c.vgic).unwrap();
        e.timers(&c.timers).unwrap();
        e.devices(&c.devices).unwrap();
        for (k, chunk) in ram.chunks(piece_pages * PAGE_SIZE).enumerate() {
            e.memory(RAM_BASE + (k * piece_pages * PAGE_SIZE) as u64, chunk).unwrap();
        }
        let (bytes, _) = e.finish().unwrap();
        assert!(bytes == whole, "pieces of {piece_pages} pages");
    }
}

#[test]
fn zero_pages_cost_nothing_and_known_zero_ranges_are_not_read() {
    let header = CheckpointHeader::new(1, RAM_BASE, 1 << 30); // 1 GiB, all zero
    let c = Checkpoint {
        header,
        config: VmConfig { name: "idle".to_string(), weight: 1, reservation: None },
        vcpus: vec![VcpuState::reset(0, PowerState::On)],
        vgic: vgic_state(1, 0),
        timers: TimerState { counter_hz: 1, virtual_count: 0 },
        devices: DeviceState::default(),
        memory: vec![],
        timing: None,
    };
    let (bytes, summary) = c.encode_into(Vec::new(), EncodeOptions::default()).unwrap();
    assert_eq!(summary.zero_pages, (1 << 30) / PAGE_SIZE as u64);
    assert!(bytes.len() < 3000, "{} bytes", bytes.len());
    let back = decode_all(&bytes).unwrap();
    assert!(back.memory.is_empty());
}

/// A source that hands out a few bytes at a time.
struct Trickle<'a>(&'a [u8], usize);

impl Source for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        self.1 = self.1 % 7 + 1;
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Flat guest RAM.
struct Ram {
    base: u64,
    bytes: Vec<u8>,
    zero_calls: usize,
}

impl GuestMemory for Ram {
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]> {
        let at = usize::try_from(ipa.checked_sub(self.base)?).ok()?;
        self.bytes.get_mut(at..at.checked_add(len)?)
    }
    fn zero(&mut self, _ipa: u64, _len: u64) -> bool {
        self.zero_calls += 1;
        true // fresh RAM is zero
    }
}

#[test]
fn streaming_decoder_yields_sections_in_order() {
    let c = small();
    let bytes = c.encode(EncodeOptions::default()).unwrap();
    let mut d = Decoder::new(Trickle(&bytes, 0));
    let mut ram = Ram { base: RAM_BASE, bytes: vec![0; c.header.memory_bytes as usize], zero_calls: 0 };
    let mut names = Vec::new();
    while let Some(ev) = d.next_event(&mut ram).unwrap() {
        names.push(match ev {
            Event::Header(h) => {
                assert_eq!(h, c.header);
                "header".to_string()
            }
            Event::Config(_) => "config".to_string(),
            Event::Vcpu(v) => alloc::format!("vcpu {}", v.index),
            Event::Vgic(_) => "vgic".to_string(),
            Event::Timers(_) => "timers".to_string(),
            Event::Devices(_) => "devices".to_string(),
            Event::Memory(r) => alloc::format!("{:?} {}", r.encoding, r.pages),
            Event::Dirty(_) | Event::Timing(_) => panic!("a live section in a snapshot"),
            Event::End(t) => {
                assert_eq!(t.length + 16 + 24, bytes.len() as u64);
                "end".to_string()
            }
        });
    }
    assert_eq!(
        names,
        [
            "header", "config", "vcpu 0", "vcpu 1", "vgic", "timers", "devices", "Lz4 1", "Zero 2", "Lz4 2", "Zero 1",
            "end"
        ]
    );
    assert!(d.is_done());
    assert_eq!(d.next_event(&mut ram), Ok(None));
    assert_eq!(ram.zero_calls, 2);
    assert!(ram.bytes == flat(&c));
}

#[test]
fn a_checkpoint_names_no_physical_core() {
    // Eight vCPUs, whatever the saving host had: vCPU state is keyed by its index in the VM.
    let c = sample(8, 32, &[Fill::Text], 9);
    let back = decode_all(&c.encode(EncodeOptions::default()).unwrap()).unwrap();
    assert_eq!(back.vcpus.iter().map(|v| v.index).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
}

// ----- refusals -----

#[test]
fn every_single_byte_corruption_is_refused() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    assert!(bytes.len() < 16_000, "{}", bytes.len());
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[at] ^= flip;
            if decode_both(&b).is_ok() {
                panic!("flipping {flip:#x} at byte {at} went unnoticed");
            }
        }
    }
}

#[test]
fn truncation_at_every_length_is_refused() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    for n in 0..bytes.len() {
        let e = decode_both(&bytes[..n]).unwrap_err();
        assert!(matches!(e.problem, Problem::Truncated { .. }), "cut at {n}: {e}");
    }
    decode_both(&bytes).unwrap();
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode_all(&longer).unwrap_err().problem, Problem::TrailingBytes(1));
}

#[test]
fn truncation_message_names_the_section() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let (_, sections) = split(&bytes);
    // Where the vGIC section's payload starts: header, config, 2 vCPUs before it.
    let vgic_at = FILE_HEADER_LEN + (16 + codec::CONFIG_LEN) + 2 * (16 + codec::VCPU_LEN);
    assert_eq!(sections[3].0, KIND_VGIC);
    let need = sections[3].1.len();
    let e = decode_all(&bytes[..vgic_at + 16 + 100]).unwrap_err();
    assert_eq!(
        e.to_string(),
        alloc::format!("checkpoint: section 3 (vgic) at byte {vgic_at}: truncated: needs {need} bytes, 100 left")
    );
}

#[test]
fn checksum_mismatch_names_section_offset_and_values() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let vcpu1_at = FILE_HEADER_LEN + (16 + codec::CONFIG_LEN) + (16 + codec::VCPU_LEN);
    let mut b = bytes.clone();
    b[vcpu1_at + 16 + 300] ^= 4;
    let e = decode_all(&b).unwrap_err();
    assert_eq!((e.section, e.part, e.offset), (Some(2), Part::Vcpu(1), vcpu1_at as u64));
    let Problem::Checksum { stored, computed } = e.problem else { panic!("{e}") };
    assert_eq!(
        e.to_string(),
        alloc::format!(
            "checkpoint: section 2 (vcpu 1) at byte {vcpu1_at}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )
    );
}

fn with_header(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = bytes.to_vec();
    edit(&mut b[..FILE_HEADER_LEN]);
    reseal_header(&mut b[..FILE_HEADER_LEN]);
    b
}

#[test]
fn wrong_version_architecture_and_sizes_are_refused_by_name() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let b = with_header(&bytes, |h| h[8..10].copy_from_slice(&7u16.to_le_bytes()));
    let e = decode_all(&b).unwrap_err();
    assert_eq!(e.problem, Problem::UnsupportedVersion(7));
    assert_eq!(e.to_string(), "checkpoint: header at byte 0: format version 7 (this reader knows versions 1 to 2)");
    // A version is refused even when the rest of a newer header is unknown to us.
    assert_eq!(decode_all(&b[..12]).unwrap_err().problem, Problem::UnsupportedVersion(7));

    let b = with_header(&bytes, |h| h[12..16].copy_from_slice(&Arch::X86_64.0.to_le_bytes()));
    let e = decode_all(&b).unwrap_err();
    assert_eq!(e.problem, Problem::WrongArch(Arch::X86_64));
    assert_eq!(e.to_string(), "checkpoint: header at byte 0: wrong architecture: x86_64 (this host restores aarch64)");

    let b = with_header(&bytes, |h| h[20..22].copy_from_slice(&65u16.to_le_bytes()));
    assert_eq!(decode_all(&b).unwrap_err().problem, Problem::TooLarge { field: "vcpus", value: 65, max: 64 });

    let b = with_header(&bytes, |h| h[40..48].copy_from_slice(&(128u64 << 30).to_le_bytes()));
    let e = decode_all(&b).unwrap_err();
    assert_eq!(e.problem, Problem::TooLarge { field: "memory bytes", value: 128 << 30, max: 64 << 30 });
    assert_eq!(
        e.to_string(),
        "checkpoint: header at byte 0: memory bytes 137438953472 is over the limit of 68719476736"
    );

    let tight = Limits { max_memory: PAGE_SIZE as u64, ..Limits::DEFAULT };
    assert!(matches!(decode_all_with(&bytes, tight).unwrap_err().problem, Problem::TooLarge { .. }));
    let tight = Limits { max_vcpus: 1, ..Limits::DEFAULT };
    assert!(matches!(decode_all_with(&bytes, tight).unwrap_err().problem, Problem::TooLarge { field: "vcpus", .. }));

    let b = with_header(&bytes, |h| h[40..48].copy_from_slice(&4095u64.to_le_bytes()));
    assert!(matches!(decode_all(&b).unwrap_err().problem, Problem::OutOfRange { field: "memory bytes", .. }));

    let mut b = bytes.clone();
    b[0] = b'X';
    assert_eq!(decode_all(&b).unwrap_err().problem, Problem::BadMagic);
    assert_eq!(decode_all(b"HV").unwrap_err().problem, Problem::Truncated { need: 64, have: 2 });
    assert_eq!(decode_all(b"PK\x03\x04").unwrap_err().problem, Problem::BadMagic);
    assert_eq!(
        decode_all(b"").unwrap_err().to_string(),
        "checkpoint: header at byte 0: truncated: needs 64 bytes, 0 left"
    );
}

#[test]
fn oversized_sections_and_runs_are_refused_before_reading_them() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let (header, mut sections) = split(&bytes);
    // A section header announcing 2 MiB, over the limit, followed by nothing.
    let mut b = header.clone();
    b.extend_from_slice(&codec::section_header(KIND_CONFIG, 2 << 20, 0));
    let e = decode_all(&b).unwrap_err();
    assert_eq!(e.problem, Problem::TooLarge { field: "section length", value: 2 << 20, max: 16 + (1 << 20) });

    // A data run of 300 pages (over MAX_DATA_RUN_PAGES) in a VM big enough for it.
    let big = with_header(&header, |h| h[40..48].copy_from_slice(&(1u64 << 30).to_le_bytes()));
    let mut run = codec::run_header(RAM_BASE, 300, RunEncoding::Lz4).to_vec();
    run.extend_from_slice(&[0x10, 0]);
    let first_memory = sections.iter().position(|s| s.0 == KIND_MEMORY).unwrap();
    sections.truncate(first_memory);
    sections.push((KIND_MEMORY, run));
    let e = decode_all(&build(&big, &sections)).unwrap_err();
    assert_eq!(e.problem, Problem::TooLarge { field: "run pages", value: 300, max: 256 });
    assert_eq!(e.part, Part::Memory);

    // A zero run reaching past the end of RAM.
    sections.pop();
    sections.push((KIND_MEMORY, codec::run_header(RAM_BASE, 1 << 20, RunEncoding::Zero).to_vec()));
    let e = decode_all(&build(&header, &sections)).unwrap_err();
    assert_eq!(e.problem, Problem::MemoryOutsideRam { ipa: RAM_BASE, pages: 1 << 20 });
}

/// Rebuilds the small checkpoint with section `i`'s payload edited (checksums made right, so
/// the reader's other checks are what must catch it).
fn edited(i: usize, edit: impl FnOnce(&mut Vec<u8>)) -> Result<Checkpoint, CheckpointError> {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let (header, mut sections) = split(&bytes);
    edit(&mut sections[i].1);
    decode_both(&build(&header, &sections))
}

#[test]
fn semantic_checks_behind_the_checksums() {
    let (header, sections) = split(&small().encode(EncodeOptions::default()).unwrap());
    assert_eq!(decode_both(&build(&header, &sections)).map(|c| c.vcpus.len()), Ok(2));
    let problem = |i, edit: &dyn Fn(&mut Vec<u8>)| edited(i, |p| edit(p)).unwrap_err().problem;

    // vCPU 0 returning to EL2h.
    assert!(matches!(problem(1, &|p| p[280] = 0x9), Problem::OutOfRange { field: "pstate", .. }));
    // vCPU 1 claiming index 0, or another affinity.
    assert!(matches!(problem(2, &|p| p[0] = 0), Problem::OutOfRange { field: "index", .. }));
    assert!(matches!(problem(2, &|p| p[1096] = 5), Problem::OutOfRange { field: "vmpidr", .. }));
    assert!(matches!(problem(1, &|p| p[2] = 9), Problem::OutOfRange { field: "power state", .. }));
    assert!(matches!(problem(1, &|p| p[3] = 1), Problem::Reserved { .. }));
    // Config: a name that is not UTF-8, a zero weight.
    assert_eq!(problem(0, &|p| p[0] = 0xFF), Problem::BadText { field: "name" });
    assert!(matches!(problem(0, &|p| p[32..36].fill(0)), Problem::OutOfRange { field: "weight", .. }));
    // vGIC: another vCPU count, a reserved flag bit, an owner that does not exist.
    assert!(matches!(problem(3, &|p| p[0] = 3), Problem::OutOfRange { field: "vgic vcpus", .. }));
    let first_irq = 16 + 8;
    assert!(matches!(problem(3, &|p| p[first_irq] |= 0x40), Problem::Reserved { .. }));
    let spi = first_irq + 2 * 32 * 12;
    assert!(matches!(problem(3, &|p| p[spi + 2] = 9), Problem::OutOfRange { field: "owner", .. }));
    // Timers: a stopped counter.
    assert!(matches!(problem(4, &|p| p[..8].fill(0)), Problem::OutOfRange { field: "counter_hz", .. }));
    // Devices: unknown type, bad register.
    assert_eq!(problem(5, &|p| p[8] = 9), Problem::UnknownDevice(9));
    assert!(matches!(problem(5, &|p| p[16 + 4] = 0xFF), Problem::OutOfRange { field: "uart fbrd", .. }));
    // Memory: a run starting elsewhere than the next page; a damaged LZ4 block.
    assert!(matches!(problem(6, &|p| p[1] ^= 0x10), Problem::MemoryOutOfOrder { .. }));
    assert!(matches!(problem(6, &|p| p[12] = 7), Problem::OutOfRange { field: "run encoding", .. }));
    assert!(matches!(
        problem(6, &|p| {
            let n = p.len();
            p[n - 1] ^= 0xFF;
            p.truncate(n - 3)
        }),
        Problem::Lz4 { .. }
    ));
}

#[test]
fn sections_out_of_order_missing_or_unknown_are_refused() {
    let (header, sections) = split(&small().encode(EncodeOptions::default()).unwrap());
    let problem = |s: &[(u8, Vec<u8>)]| decode_both(&build(&header, s)).unwrap_err().problem;
    // vGIC before the second vCPU.
    let mut s = sections.clone();
    s.swap(2, 3);
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_VGIC, expected: Part::Vcpu(1) });
    // The last memory run missing.
    let mut s = sections.clone();
    s.pop();
    let e = decode_all(&build(&header, &s)).unwrap_err();
    assert!(matches!(e.problem, Problem::MemoryIncomplete { .. }), "{e}");
    assert_eq!(e.part, Part::End);
    // A memory run after all of RAM.
    let mut s = sections.clone();
    s.push(s.last().unwrap().clone());
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_MEMORY, expected: Part::End });
    // A section kind from the future.
    let mut s = sections.clone();
    s.insert(1, (42, vec![]));
    assert_eq!(problem(&s), Problem::UnknownSection(42));
    // A trailer that disagrees with the stream.
    let good = build(&header, &sections);
    let mut b = good.clone();
    let n = b.len();
    b[n - 24..n - 20].copy_from_slice(&99u32.to_le_bytes()); // section count
    let crc = CRC.checksum(&b[n - 24..]);
    b[n - 32..n - 28].copy_from_slice(&crc.to_le_bytes());
    let hcrc = CRC.checksum(&b[n - 40..n - 28]);
    b[n - 28..n - 24].copy_from_slice(&hcrc.to_le_bytes());
    assert!(matches!(decode_all(&b).unwrap_err().problem, Problem::TrailerMismatch { field: "section count", .. }));
}

#[test]
fn guest_memory_that_refuses_is_reported() {
    let bytes = small().encode(EncodeOptions::default()).unwrap();
    let mut d = Decoder::new(&bytes[..]);
    let e = loop {
        match d.next_event(&mut NoMemory) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("decoded into no memory"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e.problem, Problem::GuestMemoryRefused { ipa: RAM_BASE, .. }), "{e}");
    // The decoder stays failed.
    assert_eq!(d.next_event(&mut Discard::default()), Err(e));
}

#[test]
fn the_encoder_refuses_what_the_reader_would() {
    let c = small();
    let opts = EncodeOptions::default();
    let new = || Encoder::new(Vec::new(), &c.header, &c.config, opts).unwrap();
    let mut e = new();
    assert_eq!(e.vgic(&c.vgic), Err(EncodeError::OutOfOrder { expected: Part::Vcpu(0), got: Part::Vgic }));
    assert_eq!(e.vcpu(&c.vcpus[0]), Err(EncodeError::Poisoned));
    let mut e = new();
    let mut v = c.vcpus[0];
    v.regs.pstate = 0x3c9; // EL2h
    assert!(matches!(e.vcpu(&v), Err(EncodeError::Invalid { field: "pstate", .. })));
    let mut e = new();
    e.vcpu(&c.vcpus[0]).unwrap();
    assert!(matches!(e.vcpu(&c.vcpus[0]), Err(EncodeError::Invalid { field: "index", .. })));
    let mut e = new();
    for v in &c.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    assert!(matches!(e.memory(RAM_BASE + 4096, &[0; 4096]), Err(EncodeError::Invalid { .. })));
    let mut e = new();
    for v in &c.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    e.memory(RAM_BASE, &[1; 4096]).unwrap();
    assert!(matches!(e.memory(RAM_BASE + 4096, &[0; 100]), Err(EncodeError::Invalid { .. })));
    let mut e = new();
    for v in &c.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    e.memory_zero(RAM_BASE, 2).unwrap();
    assert_eq!(
        e.finish().map(|_| ()),
        Err(EncodeError::MemoryIncomplete { covered: 8192, expected: c.header.memory_bytes })
    );
    let bad = VmConfig { name: String::new(), ..c.config.clone() };
    assert!(Encoder::new(Vec::new(), &c.header, &bad, opts).is_err());
    let big = CheckpointHeader { vcpus: 65, ..c.header };
    assert!(Encoder::new(Vec::new(), &big, &c.config, opts).is_err());
}

/// A sink that fails after some bytes.
struct Full(usize);

impl Sink for Full {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.0 = self.0.checked_sub(bytes.len()).ok_or(SinkError("disk full"))?;
        Ok(())
    }
}

#[test]
fn a_failing_sink_fails_the_encoder() {
    let c = small();
    let e = c.encode_into(Full(3000), EncodeOptions::default()).map(|_| ()).unwrap_err();
    assert_eq!(e, EncodeError::Sink(SinkError("disk full")));
    assert_eq!(e.to_string(), "checkpoint encoder: sink failed: disk full");
}

#[test]
fn timer_offset_continues_guest_time() {
    let t = TimerState { counter_hz: 62_500_000, virtual_count: 1_000 };
    let off = t.cntvoff(50_000);
    assert_eq!(50_000u64.wrapping_sub(off), 1_000);
    assert_eq!(TimerState { counter_hz: 1, virtual_count: 10 }.cntvoff(5).wrapping_neg(), 5);
}

// ----- hostile input -----

/// Mutations of valid checkpoints and random bytes, up to 300 000 within a time budget, fed to
/// the decoder: none may panic, and a mutation that is accepted must decode to a checkpoint
/// that encodes again to the same state. (The cargo-fuzz target in `migrate/fuzz` goes further;
/// this runs on stable in plain `cargo test`, where the debug build does roughly 20 000 inputs
/// a second.)
#[test]
fn hostile_inputs_never_panic() {
    let budget = Duration::from_secs(if cfg!(debug_assertions) { 5 } else { 2 });
    let started = Instant::now();
    let opts = |compression, run_pages| EncodeOptions { compression, run_pages };
    // Small seeds, so that most of the time goes into many inputs rather than long checksums.
    let seeds: Vec<Vec<u8>> = vec![
        sample(1, 0, &[Fill::Zero, Fill::Zero], 1).encode(EncodeOptions::default()).unwrap(),
        sample(1, 0, &[Fill::Text], 2).encode(opts(Compression::Lz4, 1)).unwrap(),
        sample(2, 32, &[Fill::Random, Fill::Zero], 4).encode(opts(Compression::None, 16)).unwrap(),
    ];
    let split_seeds: Vec<_> = seeds.iter().map(|s| split(s)).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut mem = Discard::default();
    let (mut n, mut accepted, mut deep) = (0u64, 0u64, 0u64);
    while n < 300_000 && started.elapsed() < budget {
        n += 1;
        // Mostly the smallest seed (LZ4 decoding is slow in a debug build).
        let pick = [0, 0, 0, 0, 0, 1, 1, 2][rng.below(8) as usize];
        let input: Vec<u8> = match n % 8 {
            // Random bytes, half of them behind a valid magic and version.
            0 => {
                let mut b = vec![0u8; rng.below(200) as usize];
                rng.fill(&mut b);
                if n % 16 == 0 && b.len() >= 12 {
                    b[..8].copy_from_slice(&MAGIC);
                    b[8..12].copy_from_slice(&[1, 0, 64, 0]);
                }
                b
            }
            // A few bytes changed anywhere.
            1..=3 => {
                let mut b = seeds[pick].clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
                b
            }
            // Cut, maybe extended with garbage.
            4 => {
                let mut b = seeds[pick].clone();
                b.truncate(rng.below(b.len() as u64 + 1) as usize);
                for _ in 0..rng.below(4) {
                    b.push(rng.next() as u8);
                }
                b
            }
            // A payload changed (a bit, a byte more or less, sections swapped) and every
            // checksum made right again, so that the checks behind the checksums are reached.
            _ => {
                deep += 1;
                let (header, mut sections) = split_seeds[pick].clone();
                let i = rng.below(sections.len() as u64) as usize;
                let p = &mut sections[i].1;
                match rng.below(4) {
                    0 if !p.is_empty() => p.truncate(rng.below(p.len() as u64) as usize),
                    1 => p.push(rng.next() as u8),
                    _ if !p.is_empty() => {
                        let at = rng.below(p.len() as u64) as usize;
                        p[at] ^= 1 << rng.below(8);
                    }
                    _ => {}
                }
                if rng.below(8) == 0 {
                    let j = rng.below(sections.len() as u64) as usize;
                    sections.swap(i, j);
                }
                build(&header, &sections)
            }
        };
        // decode_all is the streaming decoder over a slice; now and then also feed it through
        // a trickling source into discarded memory.
        let all = decode_all(&input);
        if n % 64 == 0 {
            let mut d = Decoder::new(Trickle(&input, 0));
            while let Ok(Some(_)) = d.next_event(&mut mem) {}
        }
        if let Ok(c) = all {
            accepted += 1;
            if accepted % 16 == 1 {
                let again = c.encode(EncodeOptions::default()).expect("an accepted checkpoint encodes again");
                assert_same(&c, &decode_all(&again).unwrap());
            }
        }
    }
    std::eprintln!("{n} hostile inputs ({deep} resealed) in {:?}, {accepted} accepted", started.elapsed());
    assert!(n >= 20_000, "only {n} inputs in the time budget");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_vcpu(index: u16) -> impl Strategy<Value = VcpuState> {
        (
            proptest::array::uniform31(any::<u64>()),
            any::<u64>(),
            prop_oneof![Just(0u64), Just(4), Just(5)],
            proptest::array::uniform24(any::<u64>()),
            (0u64..8, any::<u64>()),
            proptest::array::uniform32(any::<u128>()),
            (any::<u64>(), any::<[u64; 4]>(), any::<[u64; 4]>()),
            (0u8..3, 0u64..(1 << 20), any::<u64>()),
        )
            .prop_map(move |(x, pc, m, el1, (ctl, cval), v, (vmcr, ap0r, ap1r), (power, entry, context))| {
                VcpuState {
                    index,
                    power: match power {
                        0 => PowerState::Off,
                        1 => PowerState::On,
                        _ => PowerState::OnPending { entry: RAM_BASE + entry, context },
                    },
                    regs: CpuRegs { x, pc, pstate: (pc & !0x1F) | m },
                    el1: El1Regs::from_array(el1),
                    timer: VirtualTimer { cntv_ctl: ctl, cntv_cval: cval },
                    fp: FpSimd { fpcr: pc.rotate_left(7), fpsr: pc.rotate_left(13), v },
                    gic: GicCpu { vmcr, ap0r, ap1r },
                    vmpidr: (1 << 31) | u64::from(index),
                }
            })
    }

    fn arb_irq(private: bool, vcpus: u16) -> impl Strategy<Value = IrqState> {
        (any::<[bool; 6]>(), any::<u8>(), 0..vcpus, any::<u32>()).prop_map(move |(f, priority, owner, route)| {
            IrqState {
                enabled: f[0],
                group1: f[1],
                edge: f[2],
                level: f[3],
                pending_latch: f[4],
                active: f[5],
                priority,
                owner: if private { 0 } else { owner },
                route: if private { 0 } else { u64::from(route & 0x80FF_FFFF) },
            }
        })
    }

    fn arb_checkpoint() -> impl Strategy<Value = Checkpoint> {
        (1u16..4, 0u16..3, proptest::collection::vec((0u8..4, any::<u64>()), 1..40), any::<u64>()).prop_flat_map(
            |(vcpus, spi_groups, pages, seed)| {
                let spis = spi_groups * 32;
                let irqs: Vec<_> = (0..usize::from(vcpus) * 32 + usize::from(spis))
                    .map(|slot| arb_irq(slot < usize::from(vcpus) * 32, vcpus).boxed())
                    .collect();
                let vcpu_states: Vec<_> = (0..vcpus).map(|i| arb_vcpu(i).boxed()).collect();
                let line = proptest::collection::vec(1u8..=255, 0..=256);
                (vcpu_states, irqs, proptest::collection::vec(any::<bool>(), usize::from(vcpus)), line, 4u8..=8)
                    .prop_map(move |(vs, irqs, sleep, line, priority_bits)| {
                        let mut rng = Rng(seed | 1);
                        let kinds: Vec<Fill> = pages
                            .iter()
                            .map(|&(k, _)| [Fill::Zero, Fill::Random, Fill::Text, Fill::Pattern][k as usize])
                            .collect();
                        let ram = ram(&kinds, &mut rng);
                        let mut vs = vs;
                        for v in &mut vs {
                            if let PowerState::OnPending { entry, .. } = &mut v.power {
                                *entry = RAM_BASE + (((*entry - RAM_BASE) % (ram.len() as u64 - 4)) & !3);
                            }
                        }
                        Checkpoint {
                            header: CheckpointHeader::new(vcpus, RAM_BASE, ram.len() as u64),
                            config: VmConfig { name: "p".repeat(1 + seed as usize % 32), weight: 7, reservation: None },
                            vcpus: vs,
                            vgic: VgicState {
                                vcpus,
                                spis,
                                priority_bits,
                                gicd_ctlr: seed as u32,
                                processor_sleep: sleep,
                                irqs,
                            },
                            timers: TimerState { counter_hz: 1 + (seed >> 1), virtual_count: seed },
                            devices: DeviceState {
                                uart: (seed % 3 != 0).then(|| Pl011State { ibrd: 3, line, ..Default::default() }),
                            },
                            memory: memory_ranges(&ram),
                            timing: None,
                        }
                    })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_states_round_trip(c in arb_checkpoint(), run_pages in 1u32..=20, mode in 0u8..3) {
            let compression = [Compression::None, Compression::Lz4, Compression::Adaptive][mode as usize];
            let bytes = c.encode(EncodeOptions { compression, run_pages }).unwrap();
            let back = decode_all(&bytes).unwrap();
            assert_same(&c, &back);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
            let mut b = bytes;
            if magic && b.len() >= 12 {
                b[..8].copy_from_slice(&MAGIC);
                b[8..12].copy_from_slice(&[1, 0, 64, 0]);
                if b.len() >= 64 {
                    reseal_header(&mut b[..64]);
                }
            }
            let _ = decode_both(&b);
        }
    }
}
