//! The guest's UART: an emulated PL011 at the guest's `0x0900_0000`, output only.
//!
//! Bytes a guest writes to the data register are collected into lines; each finished line is
//! handed to the platform, which prints it on the hypervisor's console prefixed with the
//! guest's name. Transmission is instant, so the transmit FIFO always reads empty and the
//! transmit interrupt (which Linux's driver waits for) is raised at once when unmasked. Nothing
//! is ever received.

/// Register offsets (PL011 TRM, table 3-1).
pub mod reg {
    pub const DR: u64 = 0x000;
    pub const RSR_ECR: u64 = 0x004;
    pub const FR: u64 = 0x018;
    pub const ILPR: u64 = 0x020;
    pub const IBRD: u64 = 0x024;
    pub const FBRD: u64 = 0x028;
    pub const LCR_H: u64 = 0x02c;
    pub const CR: u64 = 0x030;
    pub const IFLS: u64 = 0x034;
    pub const IMSC: u64 = 0x038;
    pub const RIS: u64 = 0x03c;
    pub const MIS: u64 = 0x040;
    pub const ICR: u64 = 0x044;
    pub const DMACR: u64 = 0x048;
    pub const PERIPH_ID0: u64 = 0xfe0;
}

/// Flag register: receive FIFO empty, transmit FIFO empty.
const FR_RXFE: u64 = 1 << 4;
const FR_TXFE: u64 = 1 << 7;
/// What `UARTFR` always reads: nothing to receive, the transmitter empty (every write goes out
/// at once). Constant, so a platform may answer reads of it without the model (the EL2 vector
/// does).
pub const FR_VALUE: u64 = FR_RXFE | FR_TXFE;
/// Raw interrupt status: transmit.
const INT_TX: u32 = 1 << 5;
/// PeriphID0..3 then PCellID0..3 of an ARM PL011 r1p5, as QEMU reports them.
const IDS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
/// The longest line kept; a longer one is cut and handed over in pieces.
pub const LINE_MAX: usize = 256;

/// A guest access the UART does not accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartError {
    /// Not a 1-, 2- or 4-byte access, or not aligned to its size.
    BadAccess { offset: u64, size: u8 },
    /// A write to a read-only register (ignored).
    ReadOnly { offset: u64 },
    /// Outside the 4 KiB register page.
    OutOfRange { offset: u64 },
}

/// The UART's state.
#[derive(Clone, Debug)]
pub struct Pl011 {
    line: [u8; LINE_MAX],
    len: usize,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    /// The interrupt line as last handed out by [`Pl011::irq_line_change`] (none yet).
    reported: Option<bool>,
}

impl Default for Pl011 {
    fn default() -> Self {
        Pl011 {
            line: [0; LINE_MAX],
            len: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // Reset value: TXE and RXE set, UART disabled.
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
            ris: 0,
            dmacr: 0,
            reported: None,
        }
    }
}

impl Pl011 {
    pub fn new() -> Pl011 {
        Pl011::default()
    }

    fn check(offset: u64, size: u8) -> Result<(), UartError> {
        if offset >= 0x1000 {
            return Err(UartError::OutOfRange { offset });
        }
        if !matches!(size, 1 | 2 | 4) || offset % size as u64 != 0 {
            return Err(UartError::BadAccess { offset, size });
        }
        Ok(())
    }

    /// A guest read.
    pub fn read(&self, offset: u64, size: u8) -> Result<u64, UartError> {
        Self::check(offset, size)?;
        let word = offset & !3;
        let value: u64 = match word {
            reg::DR | reg::RSR_ECR => 0,
            reg::FR => FR_VALUE,
            reg::IBRD => self.ibrd as u64,
            reg::FBRD => self.fbrd as u64,
            reg::LCR_H => self.lcr_h as u64,
            reg::CR => self.cr as u64,
            reg::IFLS => self.ifls as u64,
            reg::IMSC => self.imsc as u64,
            reg::RIS => self.ris as u64,
            reg::MIS => (self.ris & self.imsc) as u64,
            reg::DMACR => self.dmacr as u64,
            o if (reg::PERIPH_ID0..0x1000).contains(&o) => IDS[((o - reg::PERIPH_ID0) / 4) as usize] as u64,
            _ => 0,
        };
        Ok(value >> ((offset & 3) * 8))
    }

    /// A guest write. `out` receives each finished line (without its newline). A write to a
    /// read-only register is ignored and reported as [`UartError::ReadOnly`] so the platform
    /// can trace the misuse.
    pub fn write(&mut self, offset: u64, size: u8, value: u64, mut out: impl FnMut(&[u8])) -> Result<(), UartError> {
        Self::check(offset, size)?;
        let v = value as u32;
        match offset & !3 {
            reg::DR => {
                self.push(v as u8, &mut out);
                self.ris |= INT_TX;
            }
            reg::RSR_ECR => {}
            reg::IBRD => self.ibrd = v & 0xffff,
            reg::FBRD => self.fbrd = v & 0x3f,
            reg::LCR_H => self.lcr_h = v & 0xff,
            reg::CR => self.cr = v & 0xffff,
            reg::IFLS => self.ifls = v & 0x3f,
            reg::IMSC => {
                self.imsc = v & 0x7ff;
                // Unmasking the transmit interrupt with an empty FIFO raises it at once.
                if self.imsc & INT_TX != 0 {
                    self.ris |= INT_TX;
                }
            }
            reg::ICR => self.ris &= !(v & 0x7ff),
            reg::DMACR => self.dmacr = v & 0x7,
            o @ (reg::FR | reg::RIS | reg::MIS) => return Err(UartError::ReadOnly { offset: o }),
            o if o >= reg::PERIPH_ID0 => return Err(UartError::ReadOnly { offset: o }),
            _ => {}
        }
        Ok(())
    }

    fn push(&mut self, byte: u8, out: &mut impl FnMut(&[u8])) {
        match byte {
            b'\n' => {
                out(&self.line[..self.len]);
                self.len = 0;
            }
            b'\r' => {}
            b => {
                if self.len == LINE_MAX {
                    out(&self.line[..self.len]);
                    self.len = 0;
                }
                self.line[self.len] = b;
                self.len += 1;
            }
        }
    }

    /// The registers a checkpoint carries (the line not yet handed over is in
    /// [`Pl011::pending_line`]): IBRD, FBRD, LCR_H, CR, IFLS, IMSC, raw interrupt status, DMACR.
    pub fn registers(&self) -> [u32; 8] {
        [self.ibrd, self.fbrd, self.lcr_h, self.cr, self.ifls, self.imsc, self.ris, self.dmacr]
    }

    /// Output written but not handed over yet (no newline seen).
    pub fn pending_line(&self) -> &[u8] {
        &self.line[..self.len]
    }

    /// A UART with these registers (as [`Pl011::registers`] gave them) and this pending output,
    /// masked to the registers' widths and cut to [`LINE_MAX`] bytes.
    pub fn with_state(registers: [u32; 8], pending: &[u8]) -> Pl011 {
        let [ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr] = registers;
        let mut uart = Pl011 {
            ibrd: ibrd & 0xffff,
            fbrd: fbrd & 0x3f,
            lcr_h: lcr_h & 0xff,
            cr: cr & 0xffff,
            ifls: ifls & 0x3f,
            imsc: imsc & 0x7ff,
            ris: ris & 0x7ff,
            dmacr: dmacr & 0x7,
            ..Pl011::default()
        };
        let n = pending.len().min(LINE_MAX);
        uart.line[..n].copy_from_slice(&pending[..n]);
        uart.len = n;
        uart
    }

    /// Whatever is buffered without a newline yet (handed over when the guest stops).
    pub fn flush(&mut self, mut out: impl FnMut(&[u8])) {
        if self.len > 0 {
            out(&self.line[..self.len]);
            self.len = 0;
        }
    }

    /// The level of the UART's interrupt line (SPI 1 on the virt board).
    pub fn irq_line(&self) -> bool {
        self.ris & self.imsc != 0
    }

    /// The interrupt line, when it differs from what this returned last (always the first
    /// time, and after [`Pl011::new`] or [`Pl011::with_state`]): what the interrupt controller
    /// must be told after an access. A caller that hands the level on while it still holds the
    /// UART keeps the two in step.
    pub fn irq_line_change(&mut self) -> Option<bool> {
        let line = self.irq_line();
        (self.reported != Some(line)).then(|| {
            self.reported = Some(line);
            line
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_reported_once_per_change() {
        let mut u = Pl011::new();
        assert_eq!(u.irq_line_change(), Some(false), "the first time");
        assert_eq!(u.irq_line_change(), None);
        u.write(reg::IMSC, 4, 1 << 5, |_| {}).unwrap();
        u.write(reg::DR, 4, u64::from(b'a'), |_| {}).unwrap();
        assert_eq!(u.irq_line(), u.ris & (1 << 5) != 0);
        let line = u.irq_line();
        assert_eq!(u.irq_line_change(), (line).then_some(true));
        assert_eq!(u.irq_line_change(), None);
        let restored = Pl011::with_state([0, 0, 0, 0x301, 0x12, 1 << 5, 1 << 5, 0], b"");
        let mut restored = restored;
        assert_eq!(restored.irq_line_change(), Some(true), "a restored UART reports again");
    }
    extern crate std;
    use std::string::String;
    use std::vec::Vec;

    fn write_str(u: &mut Pl011, s: &str, lines: &mut Vec<String>) {
        for b in s.bytes() {
            u.write(reg::DR, 4, b as u64, |l| lines.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        }
    }

    /// What `registers` and `pending_line` give, `with_state` takes back: a restored UART
    /// continues its half-written line and keeps its configuration.
    #[test]
    fn state_round_trips() {
        let mut u = Pl011::new();
        let mut lines = Vec::new();
        u.write(reg::IMSC, 4, 0x10, |_| {}).unwrap();
        write_str(&mut u, "half a li", &mut lines);
        let mut v = Pl011::with_state(u.registers(), u.pending_line());
        assert_eq!(v.registers(), u.registers());
        write_str(&mut v, "ne\n", &mut lines);
        assert_eq!(lines, ["half a line"]);
        // Out-of-range values are masked, an overlong line cut.
        let w = Pl011::with_state([u32::MAX; 8], &[b'x'; LINE_MAX + 10]);
        assert_eq!(w.registers(), [0xffff, 0x3f, 0xff, 0xffff, 0x3f, 0x7ff, 0x7ff, 0x7]);
        assert_eq!(w.pending_line().len(), LINE_MAX);
    }

    #[test]
    fn lines_come_out_whole() {
        let mut u = Pl011::new();
        let mut lines = Vec::new();
        write_str(&mut u, "hello\r\nwor", &mut lines);
        assert_eq!(lines, ["hello"]);
        write_str(&mut u, "ld\n", &mut lines);
        assert_eq!(lines, ["hello", "world"]);
        write_str(&mut u, "tail", &mut lines);
        u.flush(|l| lines.push(String::from_utf8_lossy(l).into_owned()));
        assert_eq!(lines.last().map(String::as_str), Some("tail"));
    }

    #[test]
    fn long_lines_are_cut_not_lost() {
        let mut u = Pl011::new();
        let mut lines = Vec::new();
        let long = "x".repeat(LINE_MAX + 10);
        write_str(&mut u, &long, &mut lines);
        write_str(&mut u, "\n", &mut lines);
        assert_eq!(lines.iter().map(|l| l.len()).sum::<usize>(), LINE_MAX + 10);
    }

    #[test]
    fn registers_read_as_an_idle_pl011() {
        let mut u = Pl011::new();
        assert_eq!(u.read(reg::FR, 4), Ok(FR_RXFE | FR_TXFE));
        assert_eq!(u.read(reg::PERIPH_ID0, 4), Ok(0x11));
        assert_eq!(u.read(reg::PERIPH_ID0 + 0x1c, 4), Ok(0xb1));
        assert_eq!(u.read(reg::CR, 4), Ok(0x300));
        u.write(reg::CR, 4, 0x301, |_| {}).unwrap();
        assert_eq!(u.read(reg::CR, 2), Ok(0x301));
        assert_eq!(u.read(reg::CR + 1, 1), Ok(0x03));
    }

    #[test]
    fn transmit_interrupt_follows_mask_and_clear() {
        let mut u = Pl011::new();
        assert!(!u.irq_line());
        u.write(reg::IMSC, 4, INT_TX as u64, |_| {}).unwrap();
        assert!(u.irq_line(), "an empty FIFO raises TX at once when unmasked");
        u.write(reg::ICR, 4, INT_TX as u64, |_| {}).unwrap();
        assert!(!u.irq_line());
        assert_eq!(u.read(reg::MIS, 4), Ok(0));
        u.write(reg::DR, 4, b'a' as u64, |_| {}).unwrap();
        assert!(u.irq_line(), "a sent byte raises TX again");
    }

    #[test]
    fn misuse_is_reported_and_changes_nothing() {
        let mut u = Pl011::new();
        assert_eq!(u.write(reg::FR, 4, 0, |_| {}), Err(UartError::ReadOnly { offset: reg::FR }));
        assert_eq!(u.write(reg::PERIPH_ID0, 4, 0, |_| {}), Err(UartError::ReadOnly { offset: reg::PERIPH_ID0 }));
        assert_eq!(u.read(reg::FR, 4), Ok(FR_RXFE | FR_TXFE));
        assert_eq!(u.read(reg::DR, 8), Err(UartError::BadAccess { offset: 0, size: 8 }));
        assert_eq!(u.read(reg::CR + 2, 4), Err(UartError::BadAccess { offset: reg::CR + 2, size: 4 }));
        assert_eq!(u.read(0x1000, 4), Err(UartError::OutOfRange { offset: 0x1000 }));
    }
}
