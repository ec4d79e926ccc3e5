//! Self-tests of the failure paths, chosen with `hv.selftest=NAME` in `/chosen/bootargs`
//! (QEMU: `-append hv.selftest=NAME`). They check that a failure cannot pass silently: each
//! must end the run with the right exit status and a report on the console. The secondary
//! tests fail before the core counts as online, so the boot core cannot end the run with
//! status 0 first.
//!
//! | NAME | what happens | expected exit status |
//! |---|---|---|
//! | `panic` | the boot core panics once its own line is out | 2 |
//! | `secondary-panic` | the last core panics after printing its online lines | 2 |
//! | `brk` | the boot core executes `BRK` | 3 |
//! | `overflow` | the last core, likewise, recurses until its stack overflows | 3 |
//! | `hang` | the last core never reports in | 1 (after the online timeout) |
//! | `mem` | the boot core checks `memcpy`, `memmove` and `memset` against byte loops, then the boot goes on | 0, or 1 with `FAIL: selftest: mem: ...` |
//!
//! The checkpoint disk's end-to-end test is here too, chosen with `hv.disk-test=write|read`
//! ([`disk`]): it succeeds with status 0, and fails (`FAIL: disk: ...`, status 1) when the disk
//! or the stream on it is missing, too small or corrupt.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use platform_aarch64::virtio::CheckpointDisk;
use platform_aarch64::{exceptions, exit_code, fail, println, semihosting};
use vcpu_runtime::CoreId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Test {
    None = 0,
    Panic,
    SecondaryPanic,
    Brk,
    Overflow,
    Hang,
    Mem,
}

const TESTS: [(&str, Test); 6] = [
    ("panic", Test::Panic),
    ("secondary-panic", Test::SecondaryPanic),
    ("brk", Test::Brk),
    ("overflow", Test::Overflow),
    ("hang", Test::Hang),
    ("mem", Test::Mem),
];

static SELECTED: AtomicU8 = AtomicU8::new(Test::None as u8);
/// The core that runs the secondary tests: the last one.
static TARGET_CORE: AtomicUsize = AtomicUsize::new(0);

fn selected() -> Test {
    let v = SELECTED.load(Ordering::Acquire);
    TESTS.iter().map(|(_, t)| *t).find(|t| *t as u8 == v).unwrap_or(Test::None)
}

/// Reads `hv.selftest=NAME` from the boot arguments (before the secondaries start).
pub fn configure(bootargs: &str, cores: usize) {
    let Some(name) = vcpu_runtime::bootargs::value(bootargs, "hv.selftest") else {
        return;
    };
    match TESTS.iter().find(|(n, _)| *n == name) {
        Some((_, test)) => {
            println!("selftest: {name} (core {})", cores - 1);
            TARGET_CORE.store(cores - 1, Ordering::Relaxed);
            SELECTED.store(*test as u8, Ordering::Release);
        }
        None => println!("selftest: unknown test `{name}` ignored"),
    }
}

/// Runs the boot core's part of the selected test, once it has reported in and before it
/// starts the secondaries.
pub fn on_boot_core() {
    match selected() {
        Test::Panic => panic!("selftest: the boot core panics on purpose"),
        Test::Brk => exceptions::breakpoint(),
        Test::Mem => match platform_aarch64::mem::check() {
            Ok(cases) => println!("selftest: mem: memcpy, memmove and memset agree with byte loops in {cases} cases"),
            Err(e) => fail!("selftest: mem: {e}"),
        },
        _ => {}
    }
}

/// Runs the target core's part of the selected test, after it printed its online lines and
/// before it counts as online: the boot core cannot see all cores online (and end the run
/// with status 0) before the failure has ended the run.
pub fn before_counted_online(core: CoreId) {
    if usize::from(core.0) != TARGET_CORE.load(Ordering::Relaxed) {
        return;
    }
    match selected() {
        Test::SecondaryPanic => panic!("selftest: core {} panics on purpose", core.0),
        Test::Overflow => {
            let depth = recurse(0);
            println!("selftest: recursion returned at depth {depth}?");
        }
        _ => {}
    }
}

/// Whether this core should hold back its online report (the `hang` test).
pub fn hangs(core: CoreId) -> bool {
    selected() == Test::Hang && usize::from(core.0) == TARGET_CORE.load(Ordering::Relaxed)
}

/// Recurses with a 1 KiB frame until the stack runs out (the guard region faults).
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth as u8; 1024]);
    if core::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    recurse(depth + 1) + u64::from(frame[depth as usize % 1024])
}

/// Which half of the disk test runs (`hv.disk-test=write|read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskTest {
    /// Writes [`DISK_PATTERN_LEN`] bytes of the pattern as the disk's stream.
    Write,
    /// Reads the stream back and checks it is exactly the pattern.
    Read,
}

impl DiskTest {
    pub fn from_arg(value: &str) -> Option<DiskTest> {
        match value {
            "write" => Some(DiskTest::Write),
            "read" => Some(DiskTest::Read),
            _ => None,
        }
    }
}

/// The length of the disk test's payload: 1 MiB.
pub const DISK_PATTERN_LEN: usize = 1 << 20;

/// The disk test's payload, a byte at a time: the little-endian bytes of successive splitmix64
/// outputs from the seed `0x4856_5354_5245_414d` (hw-tests/tests/virtio.rs makes the same).
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new() -> Pattern {
        Pattern { state: 0x4856_5354_5245_414d, word: [0; 8], used: 8 }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == 8 {
                self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                self.word = (z ^ (z >> 31)).to_le_bytes();
                self.used = 0;
            }
            *byte = self.word[self.used];
            self.used += 1;
        }
    }
}

/// The checkpoint disk's end-to-end test, on the boot core once every core is online: `Write`
/// writes the pattern as the first virtio-blk device's stream (`disk: wrote N bytes
/// crc=0x...`), `Read` reads it back, lets the reader verify length and CRC, and compares every
/// byte with the pattern (`disk: read N bytes crc=0x... ok`). Either ends the run: status 0, or
/// a `FAIL: disk: ...` line and status 1.
pub fn disk(test: DiskTest) -> ! {
    let mut disk = match CheckpointDisk::open() {
        Ok(disk) => disk,
        Err(e) => fail!("disk: {e}"),
    };
    println!("disk: virtio-blk at {:#x}, {} bytes", disk.mmio().base, disk.capacity_bytes());
    let mut pattern = Pattern::new();
    // Odd piece sizes, so that pieces straddle sectors and the disk's 64 KiB requests.
    let mut piece = [0u8; 4093];
    match test {
        DiskTest::Write => {
            let mut writer = disk.writer();
            let mut left = DISK_PATTERN_LEN;
            while left > 0 {
                let n = left.min(piece.len());
                pattern.fill(&mut piece[..n]);
                if let Err(e) = writer.write(&piece[..n]) {
                    fail!("disk: {e}");
                }
                left -= n;
            }
            match writer.finish() {
                Ok(s) => println!("disk: wrote {} bytes crc={:#010x}", s.len, s.crc),
                Err(e) => fail!("disk: {e}"),
            }
        }
        DiskTest::Read => {
            let mut reader = match disk.reader() {
                Ok(reader) => reader,
                Err(e) => fail!("disk: {e}"),
            };
            if reader.len() != DISK_PATTERN_LEN as u64 {
                fail!("disk: the stream holds {} bytes, the test writes {DISK_PATTERN_LEN}", reader.len());
            }
            let mut expected = [0u8; 3001];
            let mut offset = 0usize;
            // The first byte that differs from the pattern, reported only if the CRC passes (the
            // stream's own verdict comes first).
            let mut first_difference = None;
            loop {
                let n = match reader.read(&mut piece[..3001]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => fail!("disk: {e}"),
                };
                pattern.fill(&mut expected[..n]);
                if first_difference.is_none() {
                    first_difference =
                        piece[..n].iter().zip(&expected[..n]).position(|(a, b)| a != b).map(|i| offset + i);
                }
                offset += n;
            }
            let summary = match reader.finish() {
                Ok(s) => s,
                Err(e) => fail!("disk: {e}"),
            };
            if let Some(at) = first_difference {
                fail!("disk: the stream verifies, but byte {at} differs from the pattern");
            }
            println!("disk: read {} bytes crc={:#010x} ok", summary.len, summary.crc);
        }
    }
    drop(disk);
    semihosting::exit(exit_code::SUCCESS)
}

/// The migration stream's end-to-end test (`hv.stream-test`), on the boot core once every core
/// is online: sends [`DISK_PATTERN_LEN`] bytes of the disk test's pattern over the virtio
/// console, reads the same number back (the peer echoes them: hw-tests/tests/virtio.rs) and
/// compares. Ends the run: status 0 with `stream: echoed N bytes ok sent_ms=.. echo_ms=..`, or
/// `FAIL: stream: ...` and status 1.
pub fn stream() -> ! {
    use platform_aarch64::timer;
    use platform_aarch64::virtio::MigrationStream;
    use vcpu_runtime::Nanos;
    let mut stream = match MigrationStream::open() {
        Ok(s) => s,
        Err(e) => fail!("stream: {e}"),
    };
    println!("stream: virtio console at {:#x}", stream.mmio().base);
    let start = timer::now();
    let mut pattern = Pattern::new();
    let mut piece = [0u8; 3000];
    let mut left = DISK_PATTERN_LEN;
    while left > 0 {
        let n = left.min(piece.len());
        pattern.fill(&mut piece[..n]);
        if let Err(e) = stream.write(&piece[..n]) {
            fail!("stream: {e}");
        }
        left -= n;
    }
    if let Err(e) = stream.flush() {
        fail!("stream: {e}");
    }
    let sent = timer::now();
    let mut expected = Pattern::new();
    let mut want = [0u8; 4096];
    let mut got = [0u8; 4096];
    let mut left = DISK_PATTERN_LEN;
    while left > 0 {
        let n = left.min(got.len());
        if let Err(e) = stream.read_exact_quiet(&mut got[..n], Nanos::from_secs(10)) {
            fail!("stream: after {} bytes back: {e}", DISK_PATTERN_LEN - left);
        }
        expected.fill(&mut want[..n]);
        if got[..n] != want[..n] {
            fail!(
                "stream: the echo differs from what was sent, within bytes {}..{}",
                DISK_PATTERN_LEN - left,
                DISK_PATTERN_LEN - left + n
            );
        }
        left -= n;
    }
    let done = timer::now();
    println!(
        "stream: echoed {DISK_PATTERN_LEN} bytes ok sent_ms={} echo_ms={}",
        sent.since(start).as_millis(),
        done.since(start).as_millis()
    );
    semihosting::exit(exit_code::SUCCESS)
}
