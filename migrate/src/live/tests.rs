//! Dirty bitmaps against a plain model, control frames against damage, the planner on
//! synthetic guests.

extern crate std;

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use std::sync::Arc;
use std::thread;

use super::*;
use crate::checkpoint::{Trailer, PAGE_SIZE};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The runs of set pages in a plain bool-per-page model.
fn model_runs(set: &[bool]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (p, _) in set.iter().enumerate().filter(|(_, &s)| s) {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == p as u64 => *count += 1,
            _ => runs.push((p as u64, 1)),
        }
    }
    runs
}

// ----- bitmaps -----

#[test]
fn bitmap_runs_cross_words_and_clear() {
    let mut m = DirtyBitmap::new(200);
    assert_eq!(m.take_runs().next(), None);
    for p in [0, 1, 2, 63, 64, 65, 127, 128, 191, 192, 199] {
        assert!(m.set(p));
    }
    assert!(m.set(2)); // again: no change
    assert!(!m.set(200));
    assert!(!m.test(200));
    assert_eq!(m.count(), 11);
    assert!(m.test(63) && m.test(64) && !m.test(3));
    let runs: Vec<_> = m.take_runs().collect();
    assert_eq!(runs, [(0, 3), (63, 3), (127, 2), (191, 2), (199, 1)]);
    assert!(m.is_empty());
    assert_eq!(m.take_runs().count(), 0);
    // All set: one run over every word.
    for p in 0..200 {
        m.set(p);
    }
    assert_eq!(m.take_runs().collect::<Vec<_>>(), [(0, 200)]);
    // A run to the very last bit of a full last word.
    let mut m = DirtyBitmap::new(128);
    for p in 100..128 {
        m.set(p);
    }
    assert_eq!(m.take_runs().collect::<Vec<_>>(), [(100, 28)]);
    let mut empty = DirtyBitmap::new(0);
    assert!(!empty.set(0));
    assert_eq!(empty.take_runs().next(), None);
}

#[test]
fn bitmap_dropped_mid_take_keeps_the_rest() {
    let mut m = DirtyBitmap::new(300);
    for p in [5, 6, 100, 250] {
        m.set(p);
    }
    assert_eq!(m.take_runs().next(), Some((5, 2)));
    assert_eq!(m.count(), 2);
    assert!(!m.test(5) && m.test(100));
    assert_eq!(m.take_runs().collect::<Vec<_>>(), [(100, 1), (250, 1)]);
    m.set(7);
    m.clear();
    assert!(m.is_empty() && !m.test(7));
}

#[test]
fn bitmaps_agree_with_a_plain_model() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for round in 0..200 {
        let pages = 1 + rng.below(700);
        let mut model = vec![false; pages as usize];
        let mut m = DirtyBitmap::new(pages);
        let a = AtomicDirtyBitmap::new(pages);
        // Dense, sparse and clustered patterns.
        let marks = rng.below(pages * 2);
        for _ in 0..marks {
            let p = match round % 3 {
                0 => rng.below(pages),
                1 => (rng.below(4) * 64 + rng.below(3)).min(pages - 1),
                _ => (rng.below(pages) / 8 * 8 + rng.below(8)).min(pages - 1),
            };
            model[p as usize] = true;
            m.set(p);
            a.mark(p);
        }
        let want = model_runs(&model);
        let set = model.iter().filter(|&&s| s).count() as u64;
        assert_eq!((m.count(), a.count()), (set, set));
        for p in 0..pages {
            assert_eq!((m.test(p), a.is_marked(p)), (model[p as usize], model[p as usize]));
        }
        assert_eq!(m.take_runs().collect::<Vec<_>>(), want, "{pages} pages");
        let mut got = Vec::new();
        assert_eq!(a.take_runs(|first, count| got.push((first, count))), set);
        assert_eq!(got, want, "{pages} pages");
        assert_eq!((m.count(), a.count()), (0, 0));
    }
}

#[test]
fn atomic_bitmap_loses_no_page_marked_during_takes() {
    const PAGES: u64 = 4096;
    const WRITERS: u64 = 3;
    let map = Arc::new(AtomicDirtyBitmap::new(PAGES));
    // Each writer marks pages of its own stripe in a scattered order, then every page of it,
    // twenty times over; the taker takes runs all along, and once more at the end. Every page
    // must have been taken, none reported outside the bitmap, and nothing left marked.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let mut rng = Rng(w + 1);
                for _ in 0..20 {
                    for _ in 0..PAGES {
                        let p = rng.below(PAGES / WRITERS) * WRITERS + w;
                        map.mark(p);
                    }
                    for p in (w..PAGES).step_by(WRITERS as usize) {
                        map.mark(p);
                    }
                }
            })
        })
        .collect();
    let mut taken = vec![0u64; PAGES as usize];
    let mut take = |map: &AtomicDirtyBitmap| {
        map.take_runs(|first, count| {
            assert!(count > 0 && first + count <= PAGES);
            for p in first..first + count {
                taken[p as usize] += 1;
            }
        })
    };
    while writers.iter().any(|w| !w.is_finished()) {
        take(&map);
    }
    for w in writers {
        w.join().unwrap();
    }
    take(&map);
    assert_eq!(map.count(), 0);
    assert!(taken.iter().all(|&n| n >= 1), "a marked page was never taken");
    assert!(!map.mark(PAGES));
}

// ----- control frames -----

fn all_messages() -> Vec<Control> {
    vec![
        Control::Ready { stream_len: 0x1234_5678_9ABC, stream_crc: 0xDEAD_BEEF },
        Control::Ready { stream_len: 0, stream_crc: 0 },
        Control::refused(Refusal::Invalid, "checksum mismatch in section 7"),
        Control::refused(Refusal::Incompatible, "counter 24 MHz, this host 62.5"),
        Control::refused(Refusal::NoResources, ""),
        Control::refused(Refusal::Other, "exactly thirty-two bytes long..."),
        Control::Commit,
        Control::Done,
        Control::Abort,
        Control::Received { bytes: 0 },
        Control::Received { bytes: 17 << 20 },
    ]
}

#[test]
fn control_frames_round_trip() {
    for m in all_messages() {
        let frame = m.encode();
        assert_eq!(frame.len(), CONTROL_FRAME_LEN);
        assert_eq!(frame[..8], CONTROL_MAGIC);
        assert_eq!(Control::decode(&frame), Ok(m), "{m}");
    }
    let t = Trailer { sections: 9, length: 40_000, stream_crc: 0x0102_0304 };
    assert_eq!(Control::ready(&t), Control::Ready { stream_len: 40_000, stream_crc: 0x0102_0304 });
    assert_eq!(Control::ready(&t).to_string(), "READY (stream of 40000 bytes, crc 0x01020304)");
    assert_eq!(
        Control::refused(Refusal::Incompatible, "RAM 2 GiB > 1 GiB").to_string(),
        "REFUSED (incompatible: RAM 2 GiB > 1 GiB)"
    );
    assert_eq!(Control::Commit.to_string(), "COMMIT");
}

#[test]
fn reasons_are_cut_to_fit_at_a_character_boundary() {
    assert_eq!(Reason::new("short").as_str(), "short");
    let long = "a reason much longer than thirty-two bytes";
    assert_eq!(Reason::new(long).as_str(), &long[..32]);
    // 31 ASCII bytes and a 2-byte character: the character does not fit.
    let s = "0123456789012345678901234567890é";
    assert_eq!(Reason::new(s).as_str(), &s[..31]);
    assert_eq!(Reason::new("before\0after").as_str(), "before");
    let m = Control::refused(Refusal::Other, "ünïcödé reason ✓");
    assert_eq!(Control::decode(&m.encode()), Ok(m));
}

#[test]
fn every_damaged_control_frame_is_refused() {
    for m in all_messages() {
        let frame = m.encode();
        for at in 0..CONTROL_FRAME_LEN {
            for bit in 0..8 {
                let mut f = frame;
                f[at] ^= 1 << bit;
                assert!(Control::decode(&f).is_err(), "{m}: bit {bit} of byte {at}");
            }
        }
    }
}

/// A frame with `edit` applied and its CRC made right again.
fn resealed(m: Control, edit: impl FnOnce(&mut [u8; CONTROL_FRAME_LEN])) -> [u8; CONTROL_FRAME_LEN] {
    let mut f = m.encode();
    edit(&mut f);
    let crc = crate::checkpoint::wire::CRC.checksum(&f[..60]);
    f[60..].copy_from_slice(&crc.to_le_bytes());
    f
}

#[test]
fn control_frames_are_checked_behind_their_checksum() {
    let refused = Control::refused(Refusal::Invalid, "bad");
    let decode = |f: [u8; CONTROL_FRAME_LEN]| Control::decode(&f);
    let mut f = Control::Done.encode();
    f[0] = b'X';
    assert_eq!(Control::decode(&f), Err(ControlError::BadMagic));
    let mut f = Control::Done.encode();
    f[20] = 1;
    let e = Control::decode(&f).unwrap_err();
    assert!(matches!(e, ControlError::Checksum { .. }));
    assert!(e.to_string().starts_with("control frame: checksum mismatch (stored 0x"), "{e}");
    assert_eq!(decode(resealed(Control::Done, |f| f[8] = 9)), Err(ControlError::UnknownKind(9)));
    assert_eq!(
        decode(resealed(Control::Received { bytes: 5 }, |f| f[24] = 1)),
        Err(ControlError::Reserved { field: "stream CRC" })
    );
    assert_eq!(decode(resealed(Control::Done, |f| f[8] = 0)), Err(ControlError::UnknownKind(0)));
    assert_eq!(
        decode(resealed(Control::Abort, |f| f[10] = 1)),
        Err(ControlError::Reserved { field: "reserved bytes" })
    );
    assert_eq!(decode(resealed(Control::Commit, |f| f[12] = 1)), Err(ControlError::Reserved { field: "code" }));
    assert_eq!(
        decode(resealed(Control::Done, |f| f[24] = 1)),
        Err(ControlError::Reserved { field: "stream length and CRC" })
    );
    let ready = Control::Ready { stream_len: 1, stream_crc: 2 };
    assert_eq!(decode(resealed(ready, |f| f[30] = b'x')), Err(ControlError::Reserved { field: "reason" }));
    assert_eq!(decode(resealed(ready, |f| f[12] = 3)), Err(ControlError::Reserved { field: "code" }));
    assert_eq!(decode(resealed(refused, |f| f[12] = 0)), Err(ControlError::UnknownRefusal(0)));
    assert_eq!(decode(resealed(refused, |f| f[12] = 5)), Err(ControlError::UnknownRefusal(5)));
    assert_eq!(
        decode(resealed(refused, |f| f[16] = 1)),
        Err(ControlError::Reserved { field: "stream length and CRC" })
    );
    // The reason: not UTF-8; text after the padding began.
    let e = decode(resealed(refused, |f| f[28] = 0xFF)).unwrap_err();
    assert_eq!(e, ControlError::BadReason);
    assert_eq!(e.to_string(), "control frame: the reason is not NUL-padded UTF-8");
    assert_eq!(decode(resealed(refused, |f| f[40] = b'x')), Err(ControlError::BadReason));
    // A reason filling all 32 bytes has no NUL, and is fine.
    let full = Control::refused(Refusal::Other, "0123456789abcdef0123456789abcdef");
    assert_eq!(decode(full.encode()), Ok(full));
}

#[test]
fn arbitrary_frames_never_panic() {
    let mut rng = Rng(99);
    for n in 0..20_000u32 {
        let mut f = [0u8; CONTROL_FRAME_LEN];
        for b in f.iter_mut() {
            *b = rng.next() as u8;
        }
        if n % 2 == 0 {
            f[..8].copy_from_slice(&CONTROL_MAGIC);
            f[8] = (n % 7) as u8;
            if n % 4 == 0 {
                f[9..].fill(0);
                f[12] = (n % 6) as u8;
                f[28..28 + (n % 33) as usize].fill(b'r');
            }
            let crc = crate::checkpoint::wire::CRC.checksum(&f[..60]);
            f[60..].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(m) = Control::decode(&f) {
            assert_eq!(m.encode(), f, "an accepted frame is the encoding of what it decodes to");
        }
    }
}

// ----- the pre-copy planner -----

const GIB_PAGES: u64 = (1 << 30) / PAGE_SIZE as u64;
/// 100 MB/s, in bytes per ns.
const LINK: u64 = 100_000_000;

/// ns to send `bytes` over the 100 MB/s link.
fn ns_for(bytes: u64) -> u64 {
    bytes * 1_000_000_000 / LINK
}

#[test]
fn an_idle_guest_stops_after_round_0() {
    let mut p = Precopy::new(GIB_PAGES);
    // 1 GiB in round 0, mostly zero (2 % of the bytes sent), at the link's speed for those.
    let sent = (1 << 30) / 50;
    assert_eq!(p.round_done(40, sent, ns_for(sent)), Next::StopAndCopy { reason: StopReason::FitsDowntime });
    assert_eq!(p.rounds(), 1);
    assert_eq!(p.bandwidth(), Some(LINK));
    assert_eq!(p.expected_downtime_ns(40), Some(ns_for(40 * 4096)));
    // Decided: further reports change nothing.
    assert_eq!(p.round_done(1_000_000, 0, 1), Next::StopAndCopy { reason: StopReason::FitsDowntime });
    assert_eq!(p.stopped(), Some(StopReason::FitsDowntime));
    assert_eq!(p.rounds(), 1);
}

#[test]
fn a_guest_that_writes_less_each_round_converges() {
    let mut p = Precopy::new(GIB_PAGES);
    let mut pages = GIB_PAGES;
    let mut dirty = 120_000;
    let mut rounds = 0;
    loop {
        let bytes = pages * 4096;
        match p.round_done(dirty, bytes, ns_for(bytes)) {
            Next::Round => {
                rounds += 1;
                pages = dirty;
                dirty /= 3;
            }
            Next::StopAndCopy { reason } => {
                assert_eq!(reason, StopReason::FitsDowntime);
                break;
            }
        }
    }
    // 120 000 → 40 000 → 13 333 → 4 444 pages: 4 444 × 4 KiB at 100 MB/s is 182 ms.
    assert_eq!(rounds, 3);
    assert!(p.expected_downtime_ns(dirty).unwrap() <= 300_000_000);
}

#[test]
fn a_guest_writing_faster_than_the_link_does_not_converge() {
    let mut p = Precopy::new(GIB_PAGES);
    let bytes = 1u64 << 30;
    // It dirties 60 000 pages a second whatever is sent: each round leaves as much dirty as
    // the time it took allows, never under 90 % of the round before.
    assert_eq!(p.round_done(200_000, bytes, ns_for(bytes)), Next::Round);
    assert_eq!(p.round_done(195_000, 200_000 * 4096, ns_for(200_000 * 4096)), Next::Round);
    assert_eq!(
        p.round_done(190_000, 195_000 * 4096, ns_for(195_000 * 4096)),
        Next::StopAndCopy { reason: StopReason::NotConverging }
    );
    assert_eq!(p.rounds(), 3);
    // A round that makes progress resets the count.
    let mut p = Precopy::new(GIB_PAGES);
    for (dirty, want) in
        [(200_000, Next::Round), (195_000, Next::Round), (150_000, Next::Round), (149_000, Next::Round)]
    {
        assert_eq!(p.round_done(dirty, 1 << 30, ns_for(1 << 30)), want);
    }
    assert_eq!(
        p.round_done(148_000, 1 << 30, ns_for(1 << 30)),
        Next::StopAndCopy { reason: StopReason::NotConverging }
    );
}

#[test]
fn rounds_are_limited() {
    let limits = PrecopyLimits { max_rounds: 5, ..PrecopyLimits::DEFAULT };
    let mut p = Precopy::with_limits(GIB_PAGES, limits);
    let mut dirty = 250_000u64;
    for _ in 0..4 {
        dirty = dirty * 85 / 100; // progress every round, never fitting
        assert_eq!(p.round_done(dirty, 1 << 30, ns_for(1 << 30)), Next::Round);
    }
    assert_eq!(
        p.round_done(dirty * 85 / 100, 1 << 30, ns_for(1 << 30)),
        Next::StopAndCopy { reason: StopReason::MaxRounds }
    );
    assert_eq!(Precopy::new(1).limits().max_rounds, 30);
}

#[test]
fn without_a_measured_bandwidth_it_keeps_going_unless_nothing_is_dirty() {
    let mut p = Precopy::new(1000);
    assert_eq!(p.bandwidth(), None);
    assert_eq!(p.expected_downtime_ns(5), None);
    assert_eq!(p.round_done(10, 4096, 0), Next::Round);
    assert_eq!(p.bandwidth(), None);
    assert_eq!(p.round_done(0, 0, 0), Next::StopAndCopy { reason: StopReason::FitsDowntime });
    // A round that took time but sent nothing measures zero bandwidth: nothing fits.
    let mut p = Precopy::new(1000);
    assert_eq!(p.round_done(10, 0, 1_000), Next::Round);
    assert_eq!(p.bandwidth(), Some(0));
    assert_eq!(p.expected_downtime_ns(10), None);
}

#[test]
fn the_bandwidth_follows_recent_rounds() {
    // Limits that never stop it, to watch the estimate.
    let limits = PrecopyLimits { max_downtime_ns: 0, max_rounds: 100, stalled_rounds: 100, ..PrecopyLimits::DEFAULT };
    let mut p = Precopy::with_limits(GIB_PAGES, limits);
    // A fast round, then slow ones: the estimate moves towards the slow link.
    assert_eq!(p.round_done(200_000, 1 << 30, 1_000_000_000), Next::Round);
    assert_eq!(p.bandwidth(), Some(1 << 30));
    p.round_done(199_000, 10_000_000, 1_000_000_000);
    let after_one = p.bandwidth().unwrap();
    assert_eq!(after_one, ((1u64 << 29) + 10_000_000) * 1_000_000_000 / 1_500_000_000);
    for _ in 0..10 {
        assert_eq!(p.round_done(150_000, 10_000_000, 1_000_000_000), Next::Round);
    }
    let slow = p.bandwidth().unwrap();
    assert!(slow < after_one && slow < 11_000_000, "{slow}");
}
