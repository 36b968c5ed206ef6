//! hv's leveled log: every line goes into the dmesg ring, and lines at or
//! above the console level also go to COM1.
//!
//! Guest console text (`ConsoleWrite`) goes into a ring of its own, so it
//! never evicts hv's lines; each of its lines starts with "(d<id>) ", which
//! the guest cannot leave out (hv's own lines start with "hv: "), and each
//! domain is held to `GUEST_LINE_BURST` lines at once and
//! `GUEST_LINES_PER_SECOND` after that, the rest counted in a
//! "hv: d<id>: <count> lines suppressed" line.
//!
//! Once dom0 owns the serial console, hv lowers its console level to
//! warnings so the shell is not interleaved with chatter; `dmesg` in dom0
//! still shows everything.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use hvcore::log_ring::{LineBudget, SplitLog};
use spin::Mutex;

use crate::arch::serial;

pub use hvcore::log_ring::Level;

/// What starts each of hv's lines at `level`.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "hv: error: ",
        Level::Warning => "hv: warning: ",
        Level::Info => "hv: ",
        Level::Debug => "hv: debug: ",
    }
}

/// Capacity of the ring for hv's own lines, in bytes.
const HV_RING_BYTES: usize = 12 * 1024;
/// Capacity of the ring for guest console text, in bytes.
const GUEST_RING_BYTES: usize = 4 * 1024;
/// Capacity of the whole log (both rings), in bytes: what `DmesgRead` can return.
pub const RING_BYTES: usize = HV_RING_BYTES + GUEST_RING_BYTES;

/// Lines a domain may log at once.
pub const GUEST_LINE_BURST: u32 = 32;
/// Lines a domain may log per second after its burst.
pub const GUEST_LINES_PER_SECOND: u64 = 20;

static RING: Mutex<SplitLog<HV_RING_BYTES, GUEST_RING_BYTES>> = Mutex::new(SplitLog::new());
static RECORD_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static CONSOLE_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is recorded at all.
pub fn set_record_level(level: Level) {
    RECORD_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Sets the most verbose level that is also written to the serial console
/// (`None`: nothing, the console belongs to dom0).
pub fn set_console_level(level: Option<Level>) {
    CONSOLE_LEVEL.store(level.map_or(CONSOLE_OFF, |level| level as u8), Ordering::Relaxed);
}

/// `CONSOLE_LEVEL` value meaning "write nothing to the console".
const CONSOLE_OFF: u8 = u8::MAX;

/// Whether a line at `level` would be recorded (to skip formatting early).
pub fn enabled(level: Level) -> bool {
    level as u8 <= RECORD_LEVEL.load(Ordering::Relaxed)
}

/// Formats into a fixed line buffer, truncating what does not fit.
struct LineBuffer {
    bytes: [u8; 512],
    len: usize,
}

impl LineBuffer {
    const fn new() -> LineBuffer {
        LineBuffer { bytes: [0; 512], len: 0 }
    }

    fn push(&mut self, byte: u8) {
        if self.len < self.bytes.len() {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Records one line at `level` (the newline is added here).
pub fn write(level: Level, arguments: fmt::Arguments) {
    if !enabled(level) {
        return;
    }
    let mut line = LineBuffer::new();
    let _ = line.write_str(prefix(level));
    let _ = line.write_fmt(arguments);
    if line.len == line.bytes.len() {
        line.len -= 1;
    }
    line.bytes[line.len] = b'\n';
    line.len += 1;
    emit(level, &line.bytes[..line.len]);
}

/// Records raw text from a domain's console write, one log line per text
/// line, each tagged with the domain's id, in the guest ring. Lines beyond
/// the domain's `budget` (at TSC `now`, one line per `interval` ticks) are
/// dropped and counted; the count is logged before the next line that
/// passes.
pub fn domain_text(domain: u32, text: &[u8], budget: &mut LineBudget, now: u64) {
    let interval = GUEST_LINE_INTERVAL.load(Ordering::Relaxed);
    let mut line = LineBuffer::new();
    let _ = write!(line, "(d{domain}) ");
    let prefix_len = line.len;
    let mut emit_line = |line: &mut LineBuffer| {
        if line.len > prefix_len && budget.take(now, interval, GUEST_LINE_BURST) {
            let suppressed = budget.take_suppressed();
            if suppressed > 0 {
                let mut summary = LineBuffer::new();
                let _ = writeln!(summary, "hv: d{domain}: {suppressed} lines suppressed (rate limit)");
                emit_guest(&summary.bytes[..summary.len]);
            }
            emit_guest(&line.bytes[..line.len]);
        }
        line.len = prefix_len;
    };
    for &byte in text {
        // Keep the log printable: control characters other than newline and
        // tab become '?', so a guest cannot drive the operator's terminal.
        let clean = if byte == b'\n' || byte == b'\t' || (0x20..0x7f).contains(&byte) { byte } else { b'?' };
        line.push(clean);
        if clean == b'\n' || line.len == line.bytes.len() - 1 {
            if clean != b'\n' {
                line.push(b'\n');
            }
            emit_line(&mut line);
        }
    }
    if line.len > prefix_len {
        line.push(b'\n');
        emit_line(&mut line);
    }
}

/// The TSC ticks per guest log line after the burst (see `set_tsc_khz`).
static GUEST_LINE_INTERVAL: AtomicU64 = AtomicU64::new(1 << 21);

/// The TSC frequency `set_tsc_khz` was given (0: unknown).
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The TSC frequency measured at boot, in kHz (0: unknown).
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Sets the guests' line rate from the TSC frequency (0: unknown, then
/// about 2^21 ticks a line, a slice). Once, at boot.
pub fn set_tsc_khz(tsc_khz: u64) {
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
    if tsc_khz != 0 {
        GUEST_LINE_INTERVAL.store(tsc_khz * 1000 / GUEST_LINES_PER_SECOND, Ordering::Relaxed);
    }
}

/// Guest text goes to the guest ring only (never to COM1: dom0 owns it, and
/// guests have their own consoles).
fn emit_guest(bytes: &[u8]) {
    RING.lock().write_guest(bytes);
}

fn emit(level: Level, bytes: &[u8]) {
    RING.lock().write_hv(bytes);
    let console = CONSOLE_LEVEL.load(Ordering::Relaxed);
    if console != CONSOLE_OFF && level as u8 <= console {
        serial::write_bytes(bytes);
    }
}

/// Copies the most recent log bytes into `out`; returns how many.
pub fn copy_latest(out: &mut [u8]) -> usize {
    RING.lock().copy_latest(out)
}

/// Writes straight to the serial console, bypassing the ring's lock: for
/// exception and panic reports, which may happen while the lock is held.
pub fn emergency(arguments: fmt::Arguments) {
    struct Serial;
    impl Write for Serial {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            serial::write_bytes(text.as_bytes());
            Ok(())
        }
    }
    let _ = Serial.write_fmt(arguments);
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}
/// Logs at warning level.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($arg)*)) };
}
/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}
