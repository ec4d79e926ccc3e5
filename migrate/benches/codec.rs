//! Checkpoint encode/decode throughput on 64 MiB of guest RAM against a plain copy of the same
//! bytes (`copy_from_slice`). Goals (issue 5): dense pages at ≥ 50 % of memcpy; zero pages
//! ≥ 10× faster than dense. `cargo bench -p migrate`. The codec's CRC-32C is the default of a
//! host build with `hw-crc` (the `crc32c` crate: SSE4.2 here); the `*-portable-crc` cases and
//! `crc32c/portable` use the portable tables, as an EL2 image without CRC instructions would.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use migrate::checkpoint::{
    CheckpointHeader, Compression, Crc32c, Decoder, DeviceState, EncodeOptions, Encoder, Event, GuestMemory,
    PowerState, TimerState, VcpuState, VmConfig,
};
use vdev::vgic::{Vgic, VgicConfig};

const RAM_BASE: u64 = 0x4000_0000;
const LEN: usize = 64 << 20;

/// xorshift64* bytes: incompressible.
fn random(len: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        c.copy_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()[..c.len()]);
    }
    v
}

/// Words from a small vocabulary: compresses about 3:1 with LZ4, like text and code pages.
fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the ", "guest ", "kernel ", "page ", "cache ", "of ", "and ", "memory ", "0x4000 ", "{}\n", "fn ", "= ",
        "return ", "struct ", "int ", "if (",
    ];
    let r = random(len / 4 + 8);
    let mut v = Vec::with_capacity(len + 16);
    let mut i = 0;
    while v.len() < len {
        v.extend_from_slice(WORDS[(r[i % r.len()] & 15) as usize].as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

/// An encoder with every section but memory written.
fn begin(out: &mut Vec<u8>, compression: Compression, crc: Crc32c) -> Encoder<&mut Vec<u8>> {
    out.clear();
    let header = CheckpointHeader::new(1, RAM_BASE, LEN as u64);
    let config = VmConfig { name: "bench".into(), weight: 1024, reservation: None };
    let opts = EncodeOptions { compression, ..EncodeOptions::default() };
    let mut e = Encoder::new(out, &header, &config, opts).unwrap().with_crc(crc);
    e.vcpu(&VcpuState::reset(0, PowerState::On)).unwrap();
    e.vgic(&Vgic::new(VgicConfig::new(1, 32)).unwrap().save()).unwrap();
    e.timers(&TimerState { counter_hz: 62_500_000, virtual_count: 0 }).unwrap();
    e.devices(&DeviceState::default()).unwrap();
    e
}

fn encode(ram: &[u8], out: &mut Vec<u8>, compression: Compression, crc: Crc32c) {
    let mut e = begin(out, compression, crc);
    e.memory(RAM_BASE, ram).unwrap();
    e.finish().unwrap();
}

/// Guest RAM to restore into; `fresh`: it is known zero, so zero runs are skipped.
struct Ram {
    bytes: Vec<u8>,
    fresh: bool,
}

impl GuestMemory for Ram {
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]> {
        let at = (ipa - RAM_BASE) as usize;
        self.bytes.get_mut(at..at + len)
    }
    fn zero(&mut self, ipa: u64, len: u64) -> bool {
        if !self.fresh {
            let at = (ipa - RAM_BASE) as usize;
            self.bytes[at..at + len as usize].fill(0);
        }
        true
    }
}

fn decode(bytes: &[u8], ram: &mut Ram, crc: Crc32c) {
    let mut d = Decoder::new(bytes).with_crc(crc);
    while let Some(ev) = d.next_event(ram).unwrap() {
        if let Event::End(_) = ev {
            break;
        }
    }
}

fn benches(c: &mut Criterion) {
    let inputs = [("dense", random(LEN)), ("text", text(LEN)), ("zero", vec![0u8; LEN])];
    // Make every page of the zero input resident (a calloc'ed buffer would otherwise be the
    // shared zero page, which is cheaper to read than real guest RAM).
    let mut inputs = inputs;
    for b in inputs[2].1.chunks_mut(4096) {
        b[0] = 1;
        b[0] = black_box(0);
    }

    let mut g = c.benchmark_group("checkpoint-64MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));
    let mut dst = vec![1u8; LEN];
    g.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(black_box(&inputs[0].1))));
    let hw = Crc32c::default();
    let portable = Crc32c::PORTABLE;
    eprintln!("CRC-32C: {hw:?}");
    // The CRC alone, in the 64 KiB pieces of a data run.
    for (name, crc) in [("default", hw), ("portable", portable)] {
        g.bench_with_input(BenchmarkId::new("crc32c", name), &inputs[0].1, |b, ram| {
            b.iter(|| ram.chunks(64 << 10).fold(0, |acc, c| acc ^ crc.checksum(black_box(c))))
        });
    }

    let mut out = Vec::with_capacity(LEN + (1 << 20));
    for (name, ram) in &inputs {
        g.bench_with_input(BenchmarkId::new("encode", name), ram, |b, ram| {
            b.iter(|| encode(black_box(ram), &mut out, Compression::Adaptive, hw))
        });
    }
    g.bench_with_input(BenchmarkId::new("encode-portable-crc", "dense"), &inputs[0].1, |b, ram| {
        b.iter(|| encode(black_box(ram), &mut out, Compression::Adaptive, portable))
    });
    // Zero pages the platform knows of (never mapped in stage 2): `memory_zero` reads nothing.
    g.bench_function(BenchmarkId::new("encode-known-zero", "zero"), |b| {
        b.iter(|| {
            let mut e = begin(&mut out, Compression::Adaptive, hw);
            e.memory_zero(RAM_BASE, (LEN / 4096) as u64).unwrap();
            e.finish().unwrap();
        })
    });
    g.bench_with_input(BenchmarkId::new("encode-lz4-every-run", "dense"), &inputs[0].1, |b, ram| {
        b.iter(|| encode(black_box(ram), &mut out, Compression::Lz4, hw))
    });

    let mut ram = Ram { bytes: dst, fresh: false };
    for (name, input) in &inputs {
        encode(input, &mut out, Compression::Adaptive, hw);
        eprintln!("{name}: {} bytes encoded for {LEN} bytes of RAM", out.len());
        let encoded = out.clone();
        ram.fresh = false;
        // Once outside the measurement, so that the check holds when a filter skips the case.
        decode(&encoded, &mut ram, hw);
        assert!(ram.bytes == *input);
        g.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, enc| {
            b.iter(|| decode(black_box(enc), &mut ram, hw))
        });
        if *name == "dense" {
            g.bench_with_input(BenchmarkId::new("decode-portable-crc", name), &encoded, |b, enc| {
                b.iter(|| decode(black_box(enc), &mut ram, portable))
            });
        }
        if *name == "zero" {
            ram.fresh = true;
            g.bench_with_input(BenchmarkId::new("decode-into-fresh-ram", name), &encoded, |b, enc| {
                b.iter(|| decode(black_box(enc), &mut ram, hw))
            });
        }
    }
    g.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);
