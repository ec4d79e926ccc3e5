//! The checkpoint reader on hostile input. Whatever the bytes, `decode_all` and the streaming
//! `Decoder` must not panic, must agree, and anything they accept must encode again to the same
//! state.
//!
//! Checksums stop a byte-mutating fuzzer at the first section, so the first input byte picks a
//! mode: 0 = the bytes as they are; 1 = the bytes with every checksum made right (the file
//! header's, each section's, the trailer's), so that the checks behind the checksums are
//! reached; 2 = a valid checkpoint — a snapshot or a live stream with dirty runs — built from
//! the next bytes, then mutated by the rest (and resealed or not). Mode 2 needs no seed corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrate::checkpoint::{
    decode_all, Checkpoint, CheckpointHeader, Compression, DataRange, Decoder, DeviceState, Discard, EncodeOptions,
    Encoder, Pl011State, PowerState, Source, SourceError, TimerState, Timing, VcpuState, VmConfig,
};

/// Bytes of `generate`'s parameters.
const PARAMS: usize = 24;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Recomputes every checksum and the trailer of a stream, following its section lengths
/// (clamped to what is there).
fn reseal(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let crc = CRC.checksum(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let (mut at, mut sections) = (64usize, 0u32);
    while at + 16 <= b.len() {
        let kind = b[at];
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let len = len.min(b.len() - at - 16);
        if kind == 7 && len >= 24 {
            // The trailer: section count, length and CRC of everything before it.
            let stream = CRC.checksum(&b[..at]);
            let p = at + 16;
            b[p..p + 4].copy_from_slice(&sections.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&(at as u64).to_le_bytes());
            b[p + 16..p + 20].copy_from_slice(&stream.to_le_bytes());
        }
        let payload = CRC.checksum(&b[at + 16..at + 16 + len]);
        b[at + 4..at + 8].copy_from_slice(&(len as u32).to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&payload.to_le_bytes());
        let header = CRC.checksum(&b[at..at + 12]);
        b[at + 12..at + 16].copy_from_slice(&header.to_le_bytes());
        at += 16 + len;
        sections += 1;
    }
}

/// Fills a page from a pattern number (0: zero).
fn fill_page(page: &mut [u8], pattern: u8, k: usize) {
    match pattern % 4 {
        0 => page.fill(0),
        1 => page.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 + k) as u8),
        2 => page.iter_mut().enumerate().for_each(|(i, b)| *b = ((i * 2_654_435_761) >> 13) as u8),
        _ => page.iter_mut().enumerate().for_each(|(i, b)| *b = b"guest memory "[i % 13]),
    }
}

/// A valid checkpoint shaped by a few bytes: a snapshot, or a live stream whose pages change
/// between rounds.
fn generate(p: &[u8]) -> Vec<u8> {
    let byte = |i: usize| p.get(i).copied().unwrap_or(0);
    let vcpus = 1 + u16::from(byte(0) % 3);
    let spis = u16::from(byte(1) % 3) * 32;
    let pages = 1 + usize::from(byte(2) % 6);
    let mut ram = vec![0u8; pages * 4096];
    for (k, page) in ram.chunks_mut(4096).enumerate() {
        fill_page(page, byte(3 + k), k);
    }
    let power = |i: u16| match (byte(10) >> i) % 3 {
        0 => PowerState::On,
        1 => PowerState::Off,
        _ => PowerState::OnPending { entry: 0x4000_0000, context: 7 },
    };
    let c = Checkpoint {
        header: CheckpointHeader::new(vcpus, 0x4000_0000, ram.len() as u64),
        config: VmConfig { name: "fuzz".into(), weight: 100, reservation: None },
        vcpus: (0..vcpus).map(|i| VcpuState::reset(i, power(i))).collect(),
        vgic: vdev::vgic::Vgic::new(vdev::vgic::VgicConfig::new(vcpus, spis)).unwrap().save(),
        timers: TimerState { counter_hz: 62_500_000, virtual_count: u64::from(byte(11)) << 20 },
        devices: DeviceState { uart: (byte(12) & 1 == 1).then(Pl011State::default) },
        memory: vec![DataRange { ipa: 0x4000_0000, bytes: ram }],
        timing: None,
    };
    let compression = [Compression::None, Compression::Lz4, Compression::Adaptive][usize::from(byte(13) % 3)];
    let run_pages = 1 + u32::from(byte(14) % 4);
    let opts = EncodeOptions { compression, run_pages };
    if byte(15) & 1 == 0 {
        return c.encode(opts).unwrap();
    }
    // Live: round 0, pre-copy rounds of one changed range each, the state, a last range.
    let mut ram = c.memory[0].bytes.clone();
    let mut e = Encoder::new_live(Vec::new(), &c.header, &c.config, opts).unwrap();
    e.memory(0x4000_0000, &ram).unwrap();
    let change = |e: &mut Encoder<Vec<u8>>, ram: &mut [u8], b: u8| {
        let first = usize::from(b) % pages;
        let count = 1 + usize::from(b >> 4) % (pages - first);
        for k in first..first + count {
            fill_page(&mut ram[k * 4096..(k + 1) * 4096], b.rotate_left(k as u32), k);
        }
        e.dirty(0x4000_0000 + (first * 4096) as u64, &ram[first * 4096..(first + count) * 4096]).unwrap();
    };
    let rounds = byte(16) % 4;
    for r in 0..rounds {
        change(&mut e, &mut ram, byte(17 + usize::from(r)));
    }
    for v in &c.vcpus {
        e.vcpu(v).unwrap();
    }
    e.vgic(&c.vgic).unwrap();
    e.timers(&c.timers).unwrap();
    e.devices(&c.devices).unwrap();
    if byte(21) & 1 == 1 {
        change(&mut e, &mut ram, byte(22));
    }
    let pages_resent = e.summary().dirty_pages;
    e.timing(&Timing { downtime_ns: u64::from(byte(23)) << 20, precopy_rounds: rounds.into(), pages_resent }).unwrap();
    e.finish().unwrap().0
}

/// A source that hands out 1 to 7 bytes at a time.
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

fn check(bytes: &[u8]) {
    let all = decode_all(bytes);
    let mut d = Decoder::new(Trickle(bytes, 0));
    let mut mem = Discard::default();
    let streamed = loop {
        match d.next_event(&mut mem) {
            Ok(Some(_)) => {}
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match (&all, &streamed) {
        (Ok(_), Ok(())) => {}
        (Err(a), Err(s)) => assert_eq!(a, s),
        (Err(a), Ok(())) => assert!(matches!(a.problem, migrate::checkpoint::Problem::TrailingBytes(_)), "{a}"),
        (Ok(_), Err(s)) => panic!("only the streaming decoder refused: {s}"),
    }
    if let Ok(c) = all {
        let again = c.encode(EncodeOptions::default()).expect("an accepted checkpoint encodes again");
        let back = decode_all(&again).expect("and decodes again");
        assert_eq!((&back.vcpus, &back.vgic, &back.devices, &back.timing), (&c.vcpus, &c.vgic, &c.devices, &c.timing));
        assert_eq!(back.header, CheckpointHeader { format_version: back.header.format_version, ..c.header });
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => check(rest),
        1 => {
            let mut b = rest.to_vec();
            reseal(&mut b);
            check(&b);
        }
        _ => {
            let (params, mutations) = rest.split_at(rest.len().min(PARAMS));
            let mut b = generate(params);
            // Mutations: (position u16, xor u8) triples; a final odd byte asks for a reseal.
            let mut chunks = mutations.chunks_exact(3);
            for m in &mut chunks {
                let at = usize::from(u16::from_le_bytes([m[0], m[1]])) % b.len();
                b[at] ^= m[2];
            }
            if chunks.remainder().first().is_some_and(|r| r & 1 == 1) {
                reseal(&mut b);
            }
            check(&b);
        }
    }
});
