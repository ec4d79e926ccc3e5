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

#[derive(Clone, Copy, Debug)]
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
    assert_eq!(a.timing, b.timing);
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

/// A stream's sections (kind, payload), trailer excluded.
type Sections = Vec<(u8, Vec<u8>)>;

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
fn every_crc_implementation_writes_and_reads_the_same_stream() {
    use Fill::*;
    let c = sample(2, 32, &[Random, Zero, Text, Random, Pattern, Random, Random, Zero, Text], 5);
    let whole = c.encode(EncodeOptions::default()).unwrap();
    let mut e =
        Encoder::new(Vec::new(), &c.header, &c.config, EncodeOptions::default()).unwrap().with_crc(Crc32c::PORTABLE);
    for v in &c.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    e.memory(RAM_BASE, &flat(&c)).unwrap();
    let (portable, _) = e.finish().unwrap();
    assert!(portable == whole);
    let mut corrupt = whole.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x10;
    for crc in [Crc32c::PORTABLE, Crc32c::default()] {
        let read = |bytes: &[u8]| {
            let mut d = Decoder::new(bytes).with_crc(crc);
            loop {
                match d.next_event(&mut Discard::default()) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        assert_eq!(read(&whole), Ok(()), "{crc:?}");
        let e = read(&corrupt).unwrap_err();
        assert!(matches!(e.problem, Problem::Checksum { .. }), "{crc:?}: {e}");
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

// ----- live streams -----

/// The pages one round changes: (first page, the new pages' kinds).
type Round = Vec<(usize, Vec<Fill>)>;

/// A live migration replayed on the host.
struct LiveRun {
    bytes: Vec<u8>,
    /// What the destination must end with: the source's state and its RAM after every change.
    expected: Checkpoint,
    summary: EncodeSummary,
}

/// Sends `base` as a live stream: its RAM as round 0 (in pieces of `piece_pages`), then each
/// pre-copy round's changes applied to the source's RAM and re-sent, then the paused state, the
/// last round's changes, and the timing section.
fn live_run(base: &Checkpoint, precopy: &[Round], last: &Round, opts: EncodeOptions, piece_pages: usize) -> LiveRun {
    let mut rng = Rng(0x5EED_0000 + precopy.len() as u64);
    let mut ram = flat(base);
    let mut e = Encoder::new_live(Vec::new(), &base.header, &base.config, opts).unwrap();
    for (k, chunk) in ram.chunks(piece_pages * PAGE_SIZE).enumerate() {
        e.memory(RAM_BASE + (k * piece_pages * PAGE_SIZE) as u64, chunk).unwrap();
    }
    let mut resent = 0u64;
    // A round's pages are read after all of its writes, as a platform copies what its dirty
    // bitmap shows.
    let mut send = |e: &mut Encoder<Vec<u8>>, ram: &mut Vec<u8>, round: &Round| {
        for (first, kinds) in round {
            let new = super::tests::ram(kinds, &mut rng);
            ram[first * PAGE_SIZE..][..new.len()].copy_from_slice(&new);
        }
        for (first, kinds) in round {
            let (at, len) = (first * PAGE_SIZE, kinds.len() * PAGE_SIZE);
            e.dirty(RAM_BASE + at as u64, &ram[at..at + len]).unwrap();
            resent += kinds.len() as u64;
        }
    };
    for round in precopy {
        send(&mut e, &mut ram, round);
    }
    for v in &base.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&base.vgic).unwrap();
    e.timers(&base.timers).unwrap();
    e.devices(&base.devices).unwrap();
    send(&mut e, &mut ram, last);
    let timing = Timing { downtime_ns: 2_345_678, precopy_rounds: precopy.len() as u32, pages_resent: resent };
    e.timing(&timing).unwrap();
    assert_eq!(e.summary().trailer, None);
    let (bytes, summary) = e.finish().unwrap();
    assert_eq!(summary.dirty_pages, resent);
    // The trailer the destination will confirm in its READY.
    let trailer = summary.trailer.unwrap();
    assert_eq!(trailer.length, bytes.len() as u64 - 40);
    assert_eq!(trailer.stream_crc, CRC.checksum(&bytes[..trailer.length as usize]));
    let expected = Checkpoint { memory: memory_ranges(&ram), timing: Some(timing), ..base.clone() };
    LiveRun { bytes, expected, summary }
}

/// The small checkpoint sent live: pages 0-5 are text, zero, zero, random, pattern, zero;
/// round 1 writes data over a zero page and zero over data, round 2 writes out of order, and
/// the last round overwrites pages that earlier rounds sent.
fn small_live() -> LiveRun {
    use Fill::*;
    let precopy = [vec![(1, vec![Text]), (3, vec![Zero])], vec![(5, vec![Pattern]), (0, vec![Pattern, Zero])]];
    let last = vec![(3, vec![Pattern, Text]), (1, vec![Zero])];
    live_run(&small(), &precopy, &last, EncodeOptions::default(), 2)
}

/// Pre-copy rounds of random page ranges with random contents over a RAM of `pages` pages.
fn random_rounds(rng: &mut Rng, rounds: usize, pages: usize) -> (Vec<Round>, Round) {
    let kinds = [Fill::Zero, Fill::Random, Fill::Text, Fill::Pattern];
    let mut round = |n: usize| -> Round {
        (0..n)
            .map(|_| {
                let first = rng.below(pages as u64) as usize;
                let len = 1 + rng.below(20.min(pages - first) as u64) as usize;
                (first, (0..len).map(|_| kinds[rng.below(4) as usize]).collect())
            })
            .collect()
    };
    let precopy = (0..rounds).map(|r| round(8 >> r.min(3))).collect();
    (precopy, round(3))
}

#[test]
fn live_stream_round_trip() {
    use Fill::*;
    let kinds: Vec<Fill> = [Zero, Zero, Random, Text, Text, Text, Pattern, Zero, Random, Random]
        .iter()
        .cycle()
        .take(90)
        .copied()
        .collect();
    let c = sample(4, 64, &kinds, 42);
    let mut rng = Rng(77);
    for compression in [Compression::None, Compression::Lz4, Compression::Adaptive] {
        for (rounds, piece_pages) in [(0, 90), (1, 7), (5, 1)] {
            let (precopy, last) = random_rounds(&mut rng, rounds, 90);
            let opts = EncodeOptions { compression, ..EncodeOptions::default() };
            let run = live_run(&c, &precopy, &last, opts, piece_pages);
            assert_eq!(run.summary.bytes, run.bytes.len() as u64);
            let s = run.summary;
            assert_eq!(s.zero_pages + s.raw_pages + s.lz4_pages, 90 + s.dirty_pages);
            let back = decode_both(&run.bytes).unwrap();
            assert_eq!(back.header.format_version, FORMAT_VERSION);
            assert_same(&run.expected, &back);
            // Encoded again (memory as round 0, no dirty runs), it reads back the same.
            assert_same(&back, &decode_both(&back.encode(opts).unwrap()).unwrap());
        }
    }
}

#[test]
fn live_stream_events_in_order_and_dirty_pages_overwrite() {
    let run = small_live();
    let mut d = Decoder::new(Trickle(&run.bytes, 0));
    let mut ram = Ram { base: RAM_BASE, bytes: vec![0; run.expected.header.memory_bytes as usize], zero_calls: 0 };
    let mut names = Vec::new();
    while let Some(ev) = d.next_event(&mut ram).unwrap() {
        names.push(match ev {
            Event::Header(_) => "header".to_string(),
            Event::Config(_) => "config".to_string(),
            Event::Vcpu(v) => alloc::format!("vcpu {}", v.index),
            Event::Vgic(_) => "vgic".to_string(),
            Event::Timers(_) => "timers".to_string(),
            Event::Devices(_) => "devices".to_string(),
            Event::Memory(r) => alloc::format!("{:?} {}", r.encoding, r.pages),
            Event::Dirty(r) => alloc::format!("dirty {} {}", (r.ipa - RAM_BASE) / PAGE_SIZE as u64, r.pages),
            Event::Timing(t) => {
                assert_eq!(Some(t), run.expected.timing);
                "timing".to_string()
            }
            Event::End(_) => "end".to_string(),
        });
        assert!(d.is_live());
    }
    assert_eq!(
        names,
        [
            "header",
            "config",
            "Lz4 1",
            "Zero 2",
            "Lz4 2",
            "Zero 1",
            "dirty 1 1",
            "dirty 3 1",
            "dirty 5 1",
            "dirty 0 1",
            "dirty 1 1",
            "vcpu 0",
            "vcpu 1",
            "vgic",
            "timers",
            "devices",
            "dirty 3 2",
            "dirty 1 1",
            "timing",
            "end"
        ]
    );
    // Round 0's zero runs went to `zero` (fresh RAM, untouched); the dirty zero pages really
    // cleared what earlier runs had written there.
    assert_eq!(ram.zero_calls, 2);
    assert!(ram.bytes == flat(&run.expected));
}

#[test]
fn dirty_runs_apply_over_collected_memory_anywhere() {
    use Fill::*;
    // RAM with data ranges apart; dirty runs before, between, across, inside and after them.
    let base = sample(1, 0, &[Zero, Text, Text, Zero, Zero, Random, Zero, Zero, Zero, Zero], 5);
    let precopy = [
        vec![(0, vec![Pattern]), (3, vec![Text]), (9, vec![Random])],
        vec![(2, vec![Zero, Pattern, Pattern, Zero]), (7, vec![Zero])],
        vec![(1, vec![Zero, Zero, Zero, Zero, Zero, Zero, Zero, Zero, Zero])],
        vec![(4, vec![Text]), (6, vec![Random, Pattern])],
    ];
    let last = vec![(0, vec![Random; 10]), (8, vec![Zero, Zero])];
    for rounds in 0..=precopy.len() {
        for last in [&last, &vec![]] {
            let run = live_run(&base, &precopy[..rounds], last, EncodeOptions::default(), 3);
            let back = decode_both(&run.bytes).unwrap();
            assert_same(&run.expected, &back);
            // Ranges in order, apart.
            assert!(back.memory.windows(2).all(|w| w[0].ipa + (w[0].bytes.len() as u64) < w[1].ipa));
        }
    }
}

#[test]
fn timing_continues_the_guest_clock_by_the_downtime() {
    let t = Timing { downtime_ns: 250_000_000, precopy_rounds: 3, pages_resent: 10 };
    assert_eq!(t.downtime_ticks(62_500_000), 15_625_000);
    assert_eq!(Timing { downtime_ns: u64::MAX, ..t }.downtime_ticks(u64::MAX), u64::MAX);
    let timers = TimerState { counter_hz: 62_500_000, virtual_count: 1_000_000 };
    let ticks = t.downtime_ticks(timers.counter_hz);
    let off = timers.cntvoff_after(900_000_000, ticks);
    // The guest's virtual count right now: where it paused, plus the downtime.
    assert_eq!(900_000_000u64.wrapping_sub(off), 1_000_000 + 15_625_000);
    assert_eq!(timers.cntvoff_after(5, 0), timers.cntvoff(5));
}

/// The version-1 snapshot of `v1_sample()`, written by the version-1 encoder.
const V1_SNAPSHOT: &[u8] = include_bytes!("testdata/v1-snapshot.bin");

fn v1_sample() -> Checkpoint {
    use Fill::*;
    sample(1, 32, &[Text, Zero, Pattern, Zero], 11)
}

#[test]
fn a_version_1_stream_is_still_read() {
    let c = v1_sample();
    let back = decode_both(V1_SNAPSHOT).unwrap();
    assert_eq!(back.header.format_version, 1);
    assert_same(&Checkpoint { header: CheckpointHeader { format_version: 1, ..c.header }, ..c.clone() }, &back);
    // Version 2's snapshot layout is version 1's: only the version, the header's CRC and the
    // trailer's stream CRC (and so its section's CRCs) differ.
    let v2 = c.encode(EncodeOptions::default()).unwrap();
    assert_eq!(v2.len(), V1_SNAPSHOT.len());
    let n = v2.len();
    let trailer_crcs = [n - 32..n - 24, n - 8..n - 4];
    let differs: Vec<usize> = (0..n).filter(|&i| v2[i] != V1_SNAPSHOT[i]).collect();
    assert!(differs.contains(&8));
    for i in differs {
        assert!(i == 8 || (60..64).contains(&i) || trailer_crcs.iter().any(|r| r.contains(&i)), "byte {i} differs");
    }
    // What was read is written again as version 2.
    assert_eq!(back.encode(EncodeOptions::default()).unwrap(), v2);
    // A version-1 stream knows no flags and no live sections.
    let live_v1 = with_header(V1_SNAPSHOT, |h| h[16] = 1);
    assert_eq!(decode_all(&live_v1).unwrap_err().problem, Problem::Reserved { field: "flags" });
    let (header, mut sections) = split(V1_SNAPSHOT);
    sections.push((KIND_TIMING, vec![0; 24]));
    assert_eq!(decode_both(&build(&header, &sections)).unwrap_err().problem, Problem::UnknownSection(KIND_TIMING));
}

// ----- refusals -----

fn every_single_byte_corruption_is_refused_in(bytes: &[u8]) {
    assert!(bytes.len() < 20_000, "{}", bytes.len());
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.to_vec();
            b[at] ^= flip;
            if decode_both(&b).is_ok() {
                panic!("flipping {flip:#x} at byte {at} went unnoticed");
            }
        }
    }
}

#[test]
fn every_single_byte_corruption_is_refused() {
    every_single_byte_corruption_is_refused_in(&small().encode(EncodeOptions::default()).unwrap());
}

#[test]
fn every_single_byte_corruption_of_a_live_stream_is_refused() {
    every_single_byte_corruption_is_refused_in(&small_live().bytes);
}

#[test]
fn truncation_at_every_length_is_refused() {
    for bytes in [small().encode(EncodeOptions::default()).unwrap(), small_live().bytes] {
        for n in 0..bytes.len() {
            let e = decode_both(&bytes[..n]).unwrap_err();
            assert!(matches!(e.problem, Problem::Truncated { .. }), "cut at {n}: {e}");
        }
        decode_both(&bytes).unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_all(&longer).unwrap_err().problem, Problem::TrailingBytes(1));
    }
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

/// The index of the `n`th section of `kind`.
fn nth(sections: &[(u8, Vec<u8>)], kind: u8, n: usize) -> usize {
    sections.iter().enumerate().filter(|(_, s)| s.0 == kind).nth(n).map(|(i, _)| i).unwrap()
}

#[test]
fn live_sections_out_of_place_are_refused() {
    let (header, sections) = split(&small_live().bytes);
    assert_eq!(decode_both(&build(&header, &sections)).map(|c| c.timing.is_some()), Ok(true));
    let err = |s: &[(u8, Vec<u8>)]| decode_both(&build(&header, s)).unwrap_err();
    let problem = |s: &[(u8, Vec<u8>)]| err(s).problem;
    let (last_memory, first_dirty) = (nth(&sections, KIND_MEMORY, 3), nth(&sections, KIND_DIRTY, 0));
    let (vcpu0, devices, timing) =
        (nth(&sections, KIND_VCPU, 0), nth(&sections, KIND_DEVICES, 0), nth(&sections, KIND_TIMING, 0));
    let incomplete = Problem::MemoryIncomplete { covered: 5 * PAGE_SIZE as u64, expected: 6 * PAGE_SIZE as u64 };

    // A dirty run, the vCPUs or the trailer before round 0 covered RAM.
    let mut s = sections.clone();
    s.swap(last_memory, first_dirty);
    let e = err(&s);
    assert_eq!((e.part, e.problem), (Part::Dirty, incomplete));
    assert_eq!(
        e.to_string(),
        alloc::format!(
            "checkpoint: section {last_memory} (dirty) at byte {}: memory ends after 20480 of 24576 bytes of guest RAM",
            e.offset
        )
    );
    let mut s = sections.clone();
    s.remove(last_memory);
    assert_eq!(err(&s).problem, incomplete);
    assert_eq!(err(&s[..last_memory]).problem, incomplete);
    // A state section twice, or after the final dirty runs began.
    let mut s = sections.clone();
    s.insert(devices + 1, sections[vcpu0].clone());
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_VCPU, expected: Part::Timing });
    let mut s = sections.clone();
    s.insert(devices + 2, sections[devices].clone());
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_DEVICES, expected: Part::Timing });
    // No timing section; two; one before the state; a dirty run after it.
    let mut s = sections.clone();
    s.remove(timing);
    let e = err(&s);
    assert_eq!((e.part, e.problem), (Part::End, Problem::MissingSection(Part::Timing)));
    assert!(e.to_string().ends_with("the timing section is missing"), "{e}");
    let mut s = sections.clone();
    s.push(sections[timing].clone());
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_TIMING, expected: Part::End });
    let mut s = sections.clone();
    let t = s.remove(timing);
    s.insert(vcpu0, t);
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_TIMING, expected: Part::Vcpu(0) });
    let mut s = sections.clone();
    s.push(sections[first_dirty].clone());
    assert_eq!(problem(&s), Problem::UnexpectedSection { found: KIND_DIRTY, expected: Part::End });

    // The same sections without the LIVE flag: memory where vCPU 0 should be.
    let snapshot_header = with_header(&header, |h| h[16] = 0);
    let e = decode_both(&build(&snapshot_header, &sections)).unwrap_err();
    assert_eq!(e.problem, Problem::UnexpectedSection { found: KIND_MEMORY, expected: Part::Vcpu(0) });
    // A snapshot with LIVE set: vCPU 0 before any memory.
    let (snap_header, snap_sections) = split(&small().encode(EncodeOptions::default()).unwrap());
    let flagged = with_header(&snap_header, |h| h[16] = 1);
    let e = decode_both(&build(&flagged, &snap_sections)).unwrap_err();
    assert_eq!((e.part, e.problem), (Part::Vcpu(0), Problem::MemoryIncomplete { covered: 0, expected: 6 * 4096 }));
    // Flags this version does not know.
    let odd = with_header(&header, |h| h[16] = 3);
    assert_eq!(decode_both(&build(&odd, &sections)).unwrap_err().problem, Problem::Reserved { field: "flags" });
    // Live sections in a snapshot.
    for (kind, payload) in [(KIND_TIMING, sections[timing].1.clone()), (KIND_DIRTY, sections[first_dirty].1.clone())] {
        let mut s = snap_sections.clone();
        s.push((kind, payload));
        let e = decode_both(&build(&snap_header, &s)).unwrap_err();
        assert_eq!(e.problem, Problem::LiveSectionInSnapshot(kind));
        assert!(e.to_string().contains("section in a snapshot (the header has no LIVE flag)"), "{e}");
    }
}

#[test]
fn dirty_runs_and_timing_are_checked_behind_their_checksums() {
    let (header, sections) = split(&small_live().bytes);
    let problem = |i: usize, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut s = sections.clone();
        edit(&mut s[i].1);
        decode_both(&build(&header, &s)).unwrap_err().problem
    };
    let ipa = |p: &mut Vec<u8>, v: u64| p[..8].copy_from_slice(&v.to_le_bytes());
    let zero = nth(&sections, KIND_DIRTY, 1); // page 3, zero
    let data = nth(&sections, KIND_DIRTY, 0); // page 1, LZ4
    let timing = nth(&sections, KIND_TIMING, 0);
    assert_eq!(sections[zero].1[12], RunEncoding::Zero as u8);
    assert_eq!(sections[data].1[12], RunEncoding::Lz4 as u8);
    let end = RAM_BASE + 6 * PAGE_SIZE as u64;
    assert_eq!(problem(zero, &|p| ipa(p, RAM_BASE + 0x10)), Problem::Unaligned { ipa: RAM_BASE + 0x10 });
    assert_eq!(
        problem(zero, &|p| ipa(p, RAM_BASE - 4096)),
        Problem::MemoryOutsideRam { ipa: RAM_BASE - 4096, pages: 1 }
    );
    assert_eq!(problem(zero, &|p| ipa(p, end)), Problem::MemoryOutsideRam { ipa: end, pages: 1 });
    assert_eq!(problem(zero, &|p| p[8] = 7), Problem::MemoryOutsideRam { ipa: RAM_BASE + 3 * 4096, pages: 7 });
    assert_eq!(problem(zero, &|p| p[8] = 0), Problem::OutOfRange { field: "run pages", value: 0 });
    assert_eq!(problem(zero, &|p| p.push(0)), Problem::BadLength { expected: 16, found: 17 });
    assert_eq!(problem(zero, &|p| p[13] = 1), Problem::Reserved { field: "run header bytes" });
    assert!(matches!(problem(data, &|p| p.truncate(p.len() - 2)), Problem::Lz4 { .. }));
    assert!(matches!(problem(data, &|p| p[8] = 2), Problem::Lz4 { .. }));
    assert_eq!(
        problem(data, &|p| p[12] = 1),
        Problem::BadLength { expected: 16 + 4096, found: sections[data].1.len() as u64 }
    );
    assert_eq!(problem(timing, &|p| p[12] = 1), Problem::Reserved { field: "timing bytes" });
    assert_eq!(problem(timing, &|p| p.truncate(23)), Problem::BadLength { expected: 24, found: 23 });
    // A data run over the limit, in a VM big enough for it.
    let big = with_header(&header, |h| h[40..48].copy_from_slice(&(1u64 << 30).to_le_bytes()));
    let mut run = codec::run_header(RAM_BASE, 300, RunEncoding::Lz4).to_vec();
    run.extend_from_slice(&[0x10, 0]);
    let all_zero = codec::run_header(RAM_BASE, 1 << 18, RunEncoding::Zero).to_vec();
    let s = [sections[0].clone(), (KIND_MEMORY, all_zero), (KIND_DIRTY, run)];
    assert_eq!(
        decode_both(&build(&big, &s)).unwrap_err().problem,
        Problem::TooLarge { field: "run pages", value: 300, max: 256 }
    );
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

#[test]
fn the_live_encoder_refuses_sections_out_of_order() {
    let c = small();
    let opts = EncodeOptions::default();
    let ram = flat(&c);
    let incomplete = |covered| EncodeError::MemoryIncomplete { covered, expected: c.header.memory_bytes };
    let new = || Encoder::new_live(Vec::new(), &c.header, &c.config, opts).unwrap();
    // Before round 0 covered RAM: no dirty runs, no state.
    let mut e = new();
    assert_eq!(e.dirty(RAM_BASE, &ram[..4096]), Err(incomplete(0)));
    assert_eq!(e.memory(RAM_BASE, &ram), Err(EncodeError::Poisoned));
    let mut e = new();
    e.memory(RAM_BASE, &ram[..8192]).unwrap();
    assert_eq!(e.vcpu(&c.vcpus[0]), Err(incomplete(8192)));
    let mut e = new();
    e.memory_zero(RAM_BASE, 1).unwrap();
    assert_eq!(e.timing(&Timing::default()), Err(incomplete(4096)));
    // Round 0 done: no more memory, no timing before the state.
    let round0 = || {
        let mut e = new();
        e.memory(RAM_BASE, &ram).unwrap();
        e
    };
    let mut e = round0();
    assert_eq!(
        e.memory(RAM_BASE, &ram[..4096]),
        Err(EncodeError::OutOfOrder { expected: Part::Vcpu(0), got: Part::Memory })
    );
    let mut e = round0();
    assert_eq!(
        e.timing(&Timing::default()),
        Err(EncodeError::OutOfOrder { expected: Part::Vcpu(0), got: Part::Timing })
    );
    let e = round0();
    assert_eq!(e.finish().map(|_| ()), Err(EncodeError::OutOfOrder { expected: Part::Vcpu(0), got: Part::End }));
    // Dirty ranges must be whole pages inside RAM.
    let mut e = round0();
    assert!(matches!(e.dirty(RAM_BASE + 1, &ram[..4096]), Err(EncodeError::Invalid { part: Part::Dirty, .. })));
    let mut e = round0();
    assert!(matches!(e.dirty(RAM_BASE, &ram[..100]), Err(EncodeError::Invalid { part: Part::Dirty, .. })));
    let mut e = round0();
    assert!(matches!(e.dirty(RAM_BASE - 4096, &ram[..4096]), Err(EncodeError::Invalid { part: Part::Dirty, .. })));
    let mut e = round0();
    assert!(matches!(e.dirty(RAM_BASE + 4096, &ram), Err(EncodeError::Invalid { part: Part::Dirty, .. })));
    // The paused state, then the timing section is owed; nothing after it but finish.
    let state = |e: &mut Encoder<Vec<u8>>| {
        for v in &c.vcpus {
            e.vcpu(v).unwrap();
        }
        e.vgic(&c.vgic).unwrap();
        e.timers(&c.timers).unwrap();
        e.devices(&c.devices).unwrap();
    };
    let mut e = round0();
    e.dirty(RAM_BASE, &ram[..8192]).unwrap();
    e.dirty(RAM_BASE, &[]).unwrap();
    state(&mut e);
    e.dirty(RAM_BASE + 4096, &ram[4096..8192]).unwrap();
    assert_eq!(e.summary().dirty_pages, 3);
    assert_eq!(e.finish().map(|_| ()), Err(EncodeError::OutOfOrder { expected: Part::Timing, got: Part::End }));
    let mut e = round0();
    state(&mut e);
    e.timing(&Timing::default()).unwrap();
    assert_eq!(e.dirty(RAM_BASE, &ram[..4096]), Err(EncodeError::OutOfOrder { expected: Part::End, got: Part::Dirty }));
    let mut e = round0();
    state(&mut e);
    e.timing(&Timing::default()).unwrap();
    let (bytes, summary) = e.finish().unwrap();
    assert_eq!(summary.dirty_pages, 0);
    assert_eq!(decode_all(&bytes).unwrap().timing, Some(Timing::default()));
    // A snapshot has neither dirty runs nor timing.
    let mut e = Encoder::new(Vec::new(), &c.header, &c.config, opts).unwrap();
    assert_eq!(e.dirty(RAM_BASE, &ram[..4096]), Err(EncodeError::NotLive { got: Part::Dirty }));
    let mut e = Encoder::new(Vec::new(), &c.header, &c.config, opts).unwrap();
    let err = e.timing(&Timing::default()).unwrap_err();
    assert_eq!(err.to_string(), "checkpoint encoder: got timing, which only a live stream has");
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
        {
            let base = sample(1, 0, &[Fill::Zero, Fill::Pattern, Fill::Zero], 6);
            let precopy = [vec![(0, vec![Fill::Pattern]), (2, vec![Fill::Zero])]];
            live_run(&base, &precopy, &vec![(1, vec![Fill::Zero, Fill::Text])], opts(Compression::Lz4, 2), 1).bytes
        },
    ];
    let split_seeds: Vec<_> = seeds.iter().map(|s| split(s)).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut mem = Discard::default();
    let (mut n, mut accepted, mut deep) = (0u64, 0u64, 0u64);
    while n < 300_000 && started.elapsed() < budget {
        n += 1;
        // Mostly the smallest seed (LZ4 decoding is slow in a debug build).
        let pick = [0, 0, 0, 0, 1, 1, 2, 3, 3, 3][rng.below(10) as usize];
        let input: Vec<u8> = match n % 8 {
            // Random bytes, half of them behind a valid magic and version.
            0 => {
                let mut b = vec![0u8; rng.below(200) as usize];
                rng.fill(&mut b);
                if n % 16 == 0 && b.len() >= 12 {
                    b[..8].copy_from_slice(&MAGIC);
                    b[8..12].copy_from_slice(&[1 + (n % 32 == 0) as u8, 0, 64, 0]);
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

    /// A round's page changes (first pages beyond RAM are wrapped by the test).
    fn arb_round() -> impl Strategy<Value = Round> {
        let kind = prop_oneof![Just(Fill::Zero), Just(Fill::Random), Just(Fill::Text), Just(Fill::Pattern)];
        proptest::collection::vec((0usize..40, proptest::collection::vec(kind, 1..6)), 0..5)
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
        fn random_live_streams_round_trip(
            c in arb_checkpoint(),
            rounds in proptest::collection::vec(arb_round(), 0..4),
            last in arb_round(),
            run_pages in 1u32..=20,
            mode in 0u8..3,
            piece_pages in 1usize..8,
        ) {
            let compression = [Compression::None, Compression::Lz4, Compression::Adaptive][mode as usize];
            let pages = c.header.pages() as usize;
            let fit = |r: &Round| -> Round {
                r.iter().map(|(first, kinds)| {
                    let first = first % pages;
                    (first, kinds[..kinds.len().min(pages - first)].to_vec())
                }).collect()
            };
            let precopy: Vec<Round> = rounds.iter().map(fit).collect();
            let run = live_run(&c, &precopy, &fit(&last), EncodeOptions { compression, run_pages }, piece_pages);
            assert_same(&run.expected, &decode_all(&run.bytes).unwrap());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            magic in any::<bool>(),
            version in 1u8..=2,
            flags in 0u8..=2,
        ) {
            let mut b = bytes;
            if magic && b.len() >= 12 {
                b[..8].copy_from_slice(&MAGIC);
                b[8..12].copy_from_slice(&[version, 0, 64, 0]);
                if b.len() >= 64 {
                    b[16..20].copy_from_slice(&u32::from(flags).to_le_bytes());
                    b[20..22].copy_from_slice(&1u16.to_le_bytes());
                    reseal_header(&mut b[..64]);
                }
            }
            let _ = decode_both(&b);
        }
    }
}

// ----- the examples in docs/checkpoint-format.md -----

/// The documented VM: 1 vCPU, no SPIs, 12 KiB of RAM whose first page is text, a PL011 at
/// reset.
fn documented_vm() -> Checkpoint {
    let mut ram = vec![0u8; 3 * PAGE_SIZE];
    for (i, b) in ram[..PAGE_SIZE].iter_mut().enumerate() {
        *b = b"hello from the guest\n"[i % 21];
    }
    Checkpoint {
        header: CheckpointHeader::new(1, RAM_BASE, ram.len() as u64),
        config: VmConfig { name: "demo".to_string(), weight: 1024, reservation: None },
        vcpus: vec![VcpuState::reset(0, PowerState::On)],
        vgic: Vgic::new(VgicConfig::new(1, 0)).unwrap().save(),
        timers: TimerState { counter_hz: 62_500_000, virtual_count: 1_000_000 },
        devices: DeviceState { uart: Some(Pl011State::default()) },
        memory: memory_ranges(&ram),
        timing: None,
    }
}

/// The documented live stream of that VM: round 0, one pre-copy round re-sending page 1 (now
/// text too), the state, page 0 once more (zeroed meanwhile), the timing section.
fn documented_live() -> Vec<u8> {
    let c = documented_vm();
    let mut ram = flat(&c);
    let mut e = Encoder::new_live(Vec::new(), &c.header, &c.config, EncodeOptions::default()).unwrap();
    e.memory(RAM_BASE, &ram).unwrap();
    ram.copy_within(..PAGE_SIZE, PAGE_SIZE);
    e.dirty(RAM_BASE + PAGE_SIZE as u64, &ram[PAGE_SIZE..2 * PAGE_SIZE]).unwrap();
    e.vcpu(&c.vcpus[0]).unwrap();
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    ram[..PAGE_SIZE].fill(0);
    e.dirty(RAM_BASE, &ram[..PAGE_SIZE]).unwrap();
    e.timing(&Timing { downtime_ns: 4_200_000, precopy_rounds: 1, pages_resent: 2 }).unwrap();
    e.finish().unwrap().0
}

/// (kind, offset, payload length) of every section.
fn layout(bytes: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut at = FILE_HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((bytes[at], at, len));
        at += 16 + len;
    }
    out
}

#[test]
fn documented_examples_are_what_the_code_writes() {
    let snapshot = documented_vm().encode(EncodeOptions::default()).unwrap();
    assert_eq!(snapshot.len(), 2192);
    assert_eq!(
        (&snapshot[8..10], &snapshot[16..20], &snapshot[60..64]),
        (&[2, 0][..], &[0; 4][..], &[0x30, 0xcc, 0xe3, 0x28][..])
    );
    #[rustfmt::skip]
    let want = [
        (KIND_CONFIG, 64, 56), (KIND_VCPU, 136, 1104), (KIND_VGIC, 1256, 408), (KIND_TIMERS, 1680, 16),
        (KIND_DEVICES, 1712, 312), (KIND_MEMORY, 2040, 64), (KIND_MEMORY, 2120, 16), (KIND_END, 2152, 24),
    ];
    assert_eq!(layout(&snapshot), want);
    assert_eq!(&snapshot[64..80], &[1, 0, 0, 0, 0x38, 0, 0, 0, 0x14, 0xf2, 0x17, 0x87, 0x0a, 0xcd, 0x45, 0xc2]);
    assert_eq!(&snapshot[1272..1289], &[1, 0, 0, 0, 5, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(snapshot[2056 + 12], RunEncoding::Lz4 as u8);
    assert_eq!(
        &snapshot[2168..2192],
        &[7, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x08, 0, 0, 0, 0, 0, 0, 0x5f, 0xb1, 0x20, 0xb2, 0, 0, 0, 0]
    );

    let live = documented_live();
    assert_eq!(live.len(), 2344);
    assert_eq!((live[16], &live[60..64]), (1, &[0x0f, 0xe8, 0xb2, 0x48][..]));
    #[rustfmt::skip]
    let want = [
        (KIND_CONFIG, 64, 56), (KIND_MEMORY, 136, 64), (KIND_MEMORY, 216, 16), (KIND_DIRTY, 248, 64),
        (KIND_VCPU, 328, 1104), (KIND_VGIC, 1448, 408), (KIND_TIMERS, 1872, 16), (KIND_DEVICES, 1904, 312),
        (KIND_DIRTY, 2232, 16), (KIND_TIMING, 2264, 24), (KIND_END, 2304, 24),
    ];
    assert_eq!(layout(&live), want);
    assert_eq!(&live[264..280], &codec::run_header(RAM_BASE + PAGE_SIZE as u64, 1, RunEncoding::Lz4));
    assert_eq!(&live[2248..2264], &codec::run_header(RAM_BASE, 1, RunEncoding::Zero));
    assert_eq!(&live[2280..2304], &[0x40, 0x16, 0x40, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        &live[2320..2344],
        &[10, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0xfc, 0x8c, 0x23, 0x97, 0, 0, 0, 0]
    );
    let back = decode_both(&live).unwrap();
    let mut c = documented_vm();
    c.memory = vec![DataRange { ipa: RAM_BASE + PAGE_SIZE as u64, bytes: c.memory[0].bytes[..PAGE_SIZE].to_vec() }];
    c.timing = Some(Timing { downtime_ns: 4_200_000, precopy_rounds: 1, pages_resent: 2 });
    assert_same(&c, &back);

    // The error examples.
    let message = |bytes: &[u8], sections: &dyn Fn(&mut Sections)| {
        let (header, mut s) = split(bytes);
        sections(&mut s);
        decode_both(&build(&header, &s)).err().map(|e| e.to_string()).unwrap_or_default()
    };
    // Sections of the live example: 0 config, 1-2 memory, 3 dirty, 4 vcpu, 5 vgic, 6 timers,
    // 7 devices, 8 dirty, 9 timing.
    let messages = [
        message(&live, &|s| s.swap(2, 3)),
        message(&live, &|s| s[3].1[0] = 0x10),
        message(&live, &|s| s[8].1[8] = 7),
        message(&live, &|s| s.insert(8, s[4].clone())),
        message(&live, &|s| {
            s.remove(9);
        }),
        message(&snapshot, &|s| s.push((KIND_DIRTY, s[6].1.clone()))),
    ];
    assert_eq!(
        messages,
        [
            "checkpoint: section 2 (dirty) at byte 216: memory ends after 4096 of 12288 bytes of guest RAM",
            "checkpoint: section 3 (dirty) at byte 248: run IPA 0x40001010 is not page aligned",
            "checkpoint: section 8 (dirty) at byte 2232: run of 7 pages at IPA 0x40000000 is not inside guest RAM",
            "checkpoint: section 8 (section header) at byte 2232: found a vcpu section where timing was expected",
            "checkpoint: section 9 (end) at byte 2264: the timing section is missing",
            "checkpoint: section 7 (section header) at byte 2152: a dirty section in a snapshot (the header has no LIVE flag)",
        ]
    );
}
