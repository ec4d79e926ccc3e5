//! A host relay between two hypervisor instances' migration streams (docs/migration.md,
//! *Transport*): each QEMU connects its virtio console's socket chardev to one of the relay's
//! loopback ports, and the relay copies bytes both ways. It can model a link (bandwidth each way
//! and one-way latency) and cut the connection at a chosen point of the migration, which it
//! recognizes by reading the checkpoint stream's section headers as they pass
//! (docs/checkpoint-format.md) and the control frames going back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Where the relay cuts the connection (closes both sides and forwards nothing more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Never.
    Never,
    /// After this many bytes from the source (within pre-copy for a large guest).
    AfterSourceBytes(u64),
    /// When the source's stream reaches its first section of this kind (2 vcpu: the
    /// stop-and-copy part; 7 end: the trailer), before forwarding that section's header.
    BeforeSection(u8),
    /// Drops the destination's first control frame (READY) instead of forwarding it.
    DropReady,
    /// Forwards READY, then drops the source's next control frame (COMMIT).
    DropCommit,
}

/// A link model: bandwidth each way in bytes per second (0: unlimited) and one-way latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up_bytes_per_s: u64,
    pub down_bytes_per_s: u64,
    pub latency: Duration,
}

impl Link {
    /// Loopback as it is.
    pub const UNLIMITED: Link = Link { up_bytes_per_s: 0, down_bytes_per_s: 0, latency: Duration::ZERO };
}

/// What passed through the relay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    pub source_bytes: u64,
    pub destination_bytes: u64,
    /// Section kinds seen in the source's stream, in order (memory runs collapsed).
    pub sections: Vec<u8>,
    /// Whether the relay cut the connection.
    pub cut: bool,
}

/// The running relay.
pub struct Relay {
    pub source_port: u16,
    pub destination_port: u16,
    done: Option<JoinHandle<RelayReport>>,
}

/// The length of a control frame (`migrate::live::CONTROL_FRAME_LEN`), for the tests.
#[cfg(test)]
const CONTROL_LEN: usize = migrate::live::CONTROL_FRAME_LEN;
/// The kind byte of a READY frame (`migrate::live::Control`, offset 8).
const READY_KIND: u8 = 1;
/// The checkpoint stream's file header and section header lengths.
const FILE_HEADER: u64 = migrate::checkpoint::FILE_HEADER_LEN as u64;
const SECTION_HEADER: u64 = migrate::checkpoint::SECTION_HEADER_LEN as u64;

impl Relay {
    /// Listens on two free loopback ports; the copying starts once both QEMUs connected.
    pub fn start(link: Link, cut: Cut) -> Relay {
        let source = TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        let destination = TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        let source_port = source.local_addr().unwrap().port();
        let destination_port = destination.local_addr().unwrap().port();
        let done = thread::spawn(move || relay(source, destination, link, cut));
        Relay { source_port, destination_port, done: Some(done) }
    }

    /// Waits for the relay to end (both sides closed or cut) and reports.
    pub fn finish(mut self) -> RelayReport {
        self.done.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

/// Accepts with a deadline (a QEMU that never connects must not hang the test).
fn accept(listener: &TcpListener, timeout: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < timeout => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
}

fn relay(source: TcpListener, destination: TcpListener, link: Link, cut: Cut) -> RelayReport {
    let timeout = Duration::from_secs(60);
    let (Some(src), Some(dst)) = (accept(&source, timeout), accept(&destination, timeout)) else {
        return RelayReport::default();
    };
    let report = Arc::new(Mutex::new(RelayReport::default()));
    let cut_now = Arc::new(AtomicBool::new(false));
    let ready_seen = Arc::new(AtomicU64::new(0));
    let up = {
        let (from, to) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
        let (report, cut_now, ready_seen) = (report.clone(), cut_now.clone(), ready_seen.clone());
        thread::spawn(move || forward_up(from, to, link, cut, &report, &cut_now, &ready_seen))
    };
    let down = {
        let (from, to) = (dst.try_clone().unwrap(), src.try_clone().unwrap());
        let (report, cut_now, ready_seen) = (report.clone(), cut_now.clone(), ready_seen.clone());
        thread::spawn(move || forward_down(from, to, link, cut, &report, &cut_now, &ready_seen))
    };
    let _ = up.join();
    let _ = down.join();
    let r = report.lock().unwrap().clone();
    r
}

/// Closes both connections: each QEMU sees its peer gone.
fn cut_both(a: &TcpStream, b: &TcpStream, report: &Mutex<RelayReport>, cut_now: &AtomicBool) {
    cut_now.store(true, Ordering::SeqCst);
    report.lock().unwrap().cut = true;
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Sleeps what `bytes` take at `rate` plus the latency (a simple serial link model).
fn pace(bytes: usize, rate: u64, latency: Duration) {
    let mut wait = latency;
    if rate > 0 {
        wait += Duration::from_secs_f64(bytes as f64 / rate as f64);
    }
    if !wait.is_zero() {
        thread::sleep(wait);
    }
}

/// What the reading half of a direction hands its writing half.
enum Piece {
    Data(Vec<u8>),
    /// Cut the connection once everything before this was written.
    Cut,
}

/// The writing half of the source-to-destination direction: paces the pieces by the link and
/// writes them, so that the reading half never stops reading (QEMU's virtio console drops what
/// its socket cannot take at once, so the source's socket must never fill).
fn write_up(
    pieces: std::sync::mpsc::Receiver<Piece>,
    mut to: TcpStream,
    from: TcpStream,
    link: Link,
    report: &Mutex<RelayReport>,
    cut_now: &AtomicBool,
) {
    for piece in pieces {
        match piece {
            Piece::Data(bytes) => {
                pace(bytes.len(), link.up_bytes_per_s, link.latency);
                if to.write_all(&bytes).is_err() {
                    return;
                }
                report.lock().unwrap().source_bytes += bytes.len() as u64;
            }
            Piece::Cut => {
                cut_both(&from, &to, report, cut_now);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Source to destination: the checkpoint stream, then control frames (COMMIT). Reads as fast
/// as the source sends; [`write_up`] forwards.
fn forward_up(
    mut from: TcpStream,
    to: TcpStream,
    link: Link,
    cut: Cut,
    report: &Arc<Mutex<RelayReport>>,
    cut_now: &Arc<AtomicBool>,
    ready_seen: &AtomicU64,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let (from, report, cut_now) = (from.try_clone().unwrap(), report.clone(), cut_now.clone());
        thread::spawn(move || write_up(rx, to, from, link, &report, &cut_now))
    };
    let mut buf = vec![0u8; 64 * 1024];
    // Where the next section header starts in the stream, and the bytes of it seen so far.
    let mut next_header = FILE_HEADER;
    let mut header = Vec::new();
    let mut offset = 0u64;
    let mut stream_over = false;
    'reading: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut_now.load(Ordering::SeqCst) {
            break;
        }
        if stream_over && cut == Cut::DropCommit && ready_seen.load(Ordering::SeqCst) > 0 {
            // The stream is through and READY went back: what the source sends now is COMMIT.
            let _ = tx.send(Piece::Cut);
            break;
        }
        // Walk the section headers in this piece.
        let mut i = 0usize;
        while i < n && !stream_over {
            let at = offset + i as u64;
            if at < next_header {
                i += (next_header - at).min((n - i) as u64) as usize;
                continue;
            }
            header.push(buf[i]);
            if header.len() == 1 && cut == Cut::BeforeSection(buf[i]) {
                let _ = tx.send(Piece::Data(buf[..i].to_vec()));
                let _ = tx.send(Piece::Cut);
                break 'reading;
            }
            i += 1;
            if header.len() as u64 == SECTION_HEADER {
                let kind = header[0];
                let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
                {
                    let mut r = report.lock().unwrap();
                    if r.sections.last() != Some(&kind) {
                        r.sections.push(kind);
                    }
                }
                next_header = offset + i as u64 + len;
                header.clear();
                // The trailer: control frames follow its payload.
                stream_over = kind == 7;
            }
        }
        if let Cut::AfterSourceBytes(limit) = cut {
            if offset + n as u64 >= limit {
                let keep = (limit - offset.min(limit)) as usize;
                let _ = tx.send(Piece::Data(buf[..keep].to_vec()));
                let _ = tx.send(Piece::Cut);
                break;
            }
        }
        if tx.send(Piece::Data(buf[..n].to_vec())).is_err() {
            break;
        }
        offset += n as u64;
    }
    drop(tx);
    let _ = writer.join();
}

/// Destination to source: control frames (RECEIVED while the stream flows, then READY or
/// REFUSED, then DONE) — or, when the destination sends a guest back (offload), a stream.
/// Bytes are forwarded as they come; READY is recognized by its magic and kind byte 1.
fn forward_down(
    mut from: TcpStream,
    mut to: TcpStream,
    link: Link,
    cut: Cut,
    report: &Mutex<RelayReport>,
    cut_now: &AtomicBool,
    ready_seen: &AtomicU64,
) {
    let magic = migrate::live::CONTROL_MAGIC;
    let mut buf = vec![0u8; 64 * 1024];
    // The last bytes of the previous piece, so that a frame's magic split across pieces is found.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut_now.load(Ordering::SeqCst) {
            break;
        }
        let mut seen = tail.clone();
        seen.extend_from_slice(&buf[..n]);
        let ready_at =
            seen.windows(magic.len() + 1).position(|w| w[..magic.len()] == magic && w[magic.len()] == READY_KIND);
        if let Some(at) = ready_at {
            if cut == Cut::DropReady {
                // Forward what came before the frame, then cut.
                let before = at.saturating_sub(tail.len());
                let _ = to.write_all(&buf[..before]);
                cut_both(&from, &to, report, cut_now);
                return;
            }
            ready_seen.store(1, Ordering::SeqCst);
        }
        let keep = seen.len().saturating_sub(magic.len());
        tail = seen[keep..].to_vec();
        pace(n, link.down_bytes_per_s, link.latency);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        report.lock().unwrap().destination_bytes += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of the live layout's shape: a file header, then sections of these kinds with
    /// small payloads (the relay reads only the headers' kind and length).
    fn stream(kinds: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; FILE_HEADER as usize];
        for (i, &kind) in kinds.iter().enumerate() {
            let len = 10 + i as u32;
            let mut h = [0u8; SECTION_HEADER as usize];
            h[0] = kind;
            h[4..8].copy_from_slice(&len.to_le_bytes());
            s.extend_from_slice(&h);
            s.extend(std::iter::repeat_n(kind, len as usize));
        }
        s
    }

    const LIVE: [u8; 9] = [1, 6, 8, 2, 3, 4, 5, 9, 7];

    fn ready_frame() -> Vec<u8> {
        let mut f = vec![0xaa; CONTROL_LEN];
        f[..8].copy_from_slice(&migrate::live::CONTROL_MAGIC);
        f[8] = READY_KIND;
        f
    }

    /// Runs a source that sends `bytes` then waits for 64 bytes back (and then sends 64 more,
    /// like COMMIT), and a destination that reads everything and answers 64 bytes once it has
    /// `bytes.len()`. Returns what each side got.
    fn exchange(cut: Cut, bytes: Vec<u8>) -> (Vec<u8>, Vec<u8>, RelayReport) {
        let relay = Relay::start(Link::UNLIMITED, cut);
        let (sp, dp) = (relay.source_port, relay.destination_port);
        let want = bytes.len();
        let source = thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", sp)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(&bytes).unwrap();
            let mut answer = vec![0u8; CONTROL_LEN];
            let got = s.read_exact(&mut answer).is_ok();
            if got {
                let _ = s.write_all(&[0xcc; CONTROL_LEN]);
            }
            if got {
                answer
            } else {
                Vec::new()
            }
        });
        let destination = thread::spawn(move || {
            let mut d = TcpStream::connect(("127.0.0.1", dp)).unwrap();
            d.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered = false;
            while let Ok(n) = d.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() >= want && !answered {
                    answered = true;
                    let _ = d.write_all(&ready_frame());
                }
            }
            got
        });
        let at_source = source.join().unwrap();
        let at_destination = destination.join().unwrap();
        (at_source, at_destination, relay.finish())
    }

    #[test]
    fn without_a_cut_everything_passes_both_ways() {
        let bytes = stream(&LIVE);
        let (src, dst, report) = exchange(Cut::Never, bytes.clone());
        assert_eq!(src, ready_frame());
        assert_eq!(&dst[..bytes.len()], &bytes[..]);
        assert_eq!(&dst[bytes.len()..], &[0xcc; CONTROL_LEN][..]);
        assert_eq!(report.sections, LIVE.to_vec());
        assert!(!report.cut);
    }

    #[test]
    fn a_cut_before_a_section_forwards_exactly_what_came_before_it() {
        let bytes = stream(&LIVE);
        let (src, dst, report) = exchange(Cut::BeforeSection(2), bytes.clone());
        let vcpu_at = stream(&LIVE[..3]).len();
        assert_eq!(dst, bytes[..vcpu_at].to_vec());
        assert!(src.is_empty(), "no answer reaches the source");
        assert_eq!(report.sections, vec![1, 6, 8]);
        assert!(report.cut);
    }

    #[test]
    fn a_cut_after_bytes_forwards_that_many() {
        let bytes = stream(&LIVE);
        let (_, dst, report) = exchange(Cut::AfterSourceBytes(100), bytes);
        assert_eq!(dst.len(), 100);
        assert_eq!(report.source_bytes, 100);
        assert!(report.cut);
    }

    #[test]
    fn ready_and_commit_can_each_be_dropped() {
        let bytes = stream(&LIVE);
        let (src, dst, report) = exchange(Cut::DropReady, bytes.clone());
        assert!(src.is_empty() && report.cut);
        assert_eq!(dst, bytes);
        let (src, dst, report) = exchange(Cut::DropCommit, bytes.clone());
        assert_eq!(src, ready_frame(), "READY passes");
        assert_eq!(dst, bytes, "COMMIT does not");
        assert!(report.cut);
    }
}
