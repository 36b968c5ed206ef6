//! The hypervisor's message buffer (its dmesg): a fixed ring that keeps the latest `N` bytes.
//!
//! Byte number `i` of everything ever written (counting from 0) lives at
//! `buf[i % N]`, so the position of the next write is `written % N` and the
//! oldest byte still held is number `written - len()`.
//!
//! hv keeps two: [`SplitLog`] holds hv's own lines in one ring and the text
//! guests write (`ConsoleWrite`) in another, so guest text can never evict
//! hv's lines; and each domain's text is rate-limited by a [`LineBudget`]
//! (a token bucket of lines), so no domain takes more than its share of the
//! guest ring's turnover.

/// Severity of a log line; a lower value is more severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warning = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    /// Parses `error`, `warning`, `info`, `debug` (the `loglevel=` option).
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text {
            "error" => Level::Error,
            "warning" | "warn" => Level::Warning,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// A byte ring of capacity `N` (must be non-zero) that overwrites its oldest
/// bytes when full.
#[derive(Debug)]
pub struct LogRing<const N: usize> {
    /// Storage; byte number `i` is at index `i % N`.
    buf: [u8; N],
    /// Total bytes ever written; only grows.
    written: u64,
}

impl<const N: usize> LogRing<N> {
    /// An empty ring, usable in a `static`.
    pub const fn new() -> Self {
        const { assert!(N > 0, "a log ring needs room for at least one byte") };
        Self { buf: [0; N], written: 0 }
    }

    /// Index in `buf` of byte number `position`.
    fn index_of(position: u64) -> usize {
        // The remainder is below N, so it fits in usize.
        (position % N as u64) as usize
    }

    /// Appends `bytes`, overwriting the oldest bytes once the ring is full.
    pub fn write(&mut self, bytes: &[u8]) {
        // Of a write longer than the ring only its tail survives.
        let kept = &bytes[bytes.len().saturating_sub(N)..];
        let skipped = (bytes.len() - kept.len()) as u64;
        let start = Self::index_of(self.written + skipped);
        // At most two pieces: up to the end of `buf`, then from its start.
        let (first, second) = kept.split_at(kept.len().min(N - start));
        self.buf[start..start + first.len()].copy_from_slice(first);
        self.buf[..second.len()].copy_from_slice(second);
        self.written += bytes.len() as u64;
    }

    /// Copies the most recent `min(out.len(), self.len())` bytes into `out`,
    /// oldest first, and returns that count.
    pub fn copy_latest(&self, out: &mut [u8]) -> usize {
        let count = out.len().min(self.len());
        let start = Self::index_of(self.written - count as u64);
        let first_length = count.min(N - start);
        let (first, second) = out[..count].split_at_mut(first_length);
        first.copy_from_slice(&self.buf[start..start + first_length]);
        second.copy_from_slice(&self.buf[..second.len()]);
        count
    }

    /// Total bytes ever written, including those since overwritten; a reader
    /// can compare it with an earlier value to tell how much it missed.
    pub fn total_written(&self) -> u64 {
        self.written
    }

    /// Bytes currently held: `min(total_written, N)`.
    pub fn len(&self) -> usize {
        if self.written < N as u64 { self.written as usize } else { N }
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for LogRing<N> {
    /// Lets `write!` format straight into the ring.
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.write(text.as_bytes());
        Ok(())
    }
}

/// hv's log: its own lines in one ring, guest console text in another.
///
/// [`SplitLog::copy_latest`] gives hv's lines first, then the guest text,
/// each from its first whole line: so a reader whose buffer holds
/// `HV + GUEST` bytes always sees every line hv still keeps, however much
/// the guests wrote.
#[derive(Debug)]
pub struct SplitLog<const HV: usize, const GUEST: usize> {
    hv: LogRing<HV>,
    guest: LogRing<GUEST>,
}

impl<const HV: usize, const GUEST: usize> SplitLog<HV, GUEST> {
    /// An empty log, usable in a `static`.
    pub const fn new() -> Self {
        Self { hv: LogRing::new(), guest: LogRing::new() }
    }

    /// Appends hv's own text.
    pub fn write_hv(&mut self, bytes: &[u8]) {
        self.hv.write(bytes);
    }

    /// Appends guest text (already tagged with its domain by the caller).
    pub fn write_guest(&mut self, bytes: &[u8]) {
        self.guest.write(bytes);
    }

    /// Copies hv's latest lines, then the guests' latest lines, into `out`
    /// and returns the byte count. hv's lines come first and get the room
    /// they need; the guest text gets what is left. A line cut by either
    /// ring's wrap-around or by the room left is left out.
    pub fn copy_latest(&self, out: &mut [u8]) -> usize {
        let hv = copy_whole_lines(&self.hv, out);
        hv + copy_whole_lines(&self.guest, &mut out[hv..])
    }
}

impl<const HV: usize, const GUEST: usize> Default for SplitLog<HV, GUEST> {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies the latest bytes of `ring` that fit in `out`, starting at a line
/// boundary: when the copy does not begin with the first byte ever written,
/// the bytes up to the first newline (a partial line) are dropped.
fn copy_whole_lines<const N: usize>(ring: &LogRing<N>, out: &mut [u8]) -> usize {
    let count = ring.copy_latest(out);
    if count as u64 == ring.total_written() {
        return count;
    }
    match out[..count].iter().position(|&byte| byte == b'\n') {
        Some(newline) => {
            out.copy_within(newline + 1..count, 0);
            count - newline - 1
        }
        None => 0,
    }
}

/// A token bucket of log lines for one domain: up to `burst` lines at
/// once, refilled by one line every `interval` TSC ticks. The clock is
/// passed in (`now`), so it is host-testable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineBudget {
    /// Lines that may be logged now.
    tokens: u32,
    /// TSC up to which refills have been counted; `None` before first use.
    refilled_to: Option<u64>,
    /// Lines refused since the last summary.
    suppressed: u64,
}

impl LineBudget {
    /// A budget that starts full (its first use fills it to `burst`).
    pub const fn new() -> Self {
        Self { tokens: 0, refilled_to: None, suppressed: 0 }
    }

    /// Whether one more line may be logged at `now`; takes its token if so,
    /// else counts it as suppressed.
    pub fn take(&mut self, now: u64, interval: u64, burst: u32) -> bool {
        let interval = interval.max(1);
        match self.refilled_to {
            None => {
                self.tokens = burst;
                self.refilled_to = Some(now);
            }
            Some(last) if now > last => {
                let earned = (now - last) / interval;
                if earned > 0 {
                    self.tokens = (u64::from(self.tokens) + earned).min(u64::from(burst)) as u32;
                    // Keep the remainder, so slow writers are not short-changed.
                    self.refilled_to = Some(last + earned * interval);
                }
            }
            Some(_) => {}
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Lines suppressed since the last call, which resets the count: the
    /// caller logs "<count> lines suppressed" before the next line it logs.
    pub fn take_suppressed(&mut self) -> u64 {
        core::mem::take(&mut self.suppressed)
    }

    /// Lines suppressed since the last [`take_suppressed`](Self::take_suppressed).
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for LineBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All bytes the ring holds, oldest first.
    fn contents<const N: usize>(ring: &LogRing<N>) -> Vec<u8> {
        let mut out = vec![0; N + 5];
        let count = ring.copy_latest(&mut out);
        out.truncate(count);
        out
    }

    #[test]
    fn starts_empty() {
        let ring = LogRing::<8>::new();
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.total_written(), 0);
        assert_eq!(contents(&ring), b"");
    }

    #[test]
    fn keeps_everything_until_full() {
        let mut ring = LogRing::<8>::new();
        ring.write(b"abc");
        ring.write(b"");
        ring.write(b"defgh");
        assert_eq!(ring.len(), 8);
        assert!(!ring.is_empty());
        assert_eq!(contents(&ring), b"abcdefgh");
    }

    #[test]
    fn wraps_around_overwriting_the_oldest() {
        let mut ring = LogRing::<8>::new();
        ring.write(b"abcdef");
        ring.write(b"ghijk");
        assert_eq!(ring.total_written(), 11);
        assert_eq!(ring.len(), 8);
        assert_eq!(contents(&ring), b"defghijk");
        ring.write(b"l");
        assert_eq!(contents(&ring), b"efghijkl");
    }

    #[test]
    fn small_out_buffers_get_the_latest_bytes() {
        let mut ring = LogRing::<8>::new();
        ring.write(b"abcdefghijk");
        let mut out = [0u8; 3];
        assert_eq!(ring.copy_latest(&mut out), 3);
        assert_eq!(&out, b"ijk");
        let mut nothing = [0u8; 0];
        assert_eq!(ring.copy_latest(&mut nothing), 0);
        let mut out = [0u8; 6];
        assert_eq!(ring.copy_latest(&mut out), 6);
        assert_eq!(&out, b"fghijk");
    }

    #[test]
    fn writes_larger_than_the_ring_keep_their_tail() {
        let mut ring = LogRing::<8>::new();
        ring.write(b"xyz");
        ring.write(b"0123456789abcdefghij");
        assert_eq!(ring.total_written(), 23);
        assert_eq!(contents(&ring), b"cdefghij");
        ring.write(b"kl");
        assert_eq!(contents(&ring), b"efghijkl");
    }

    #[test]
    fn matches_a_simple_model() {
        // Compare against "keep the last N bytes of everything" over many
        // write lengths and starting offsets.
        let mut ring = LogRing::<7>::new();
        let mut model = Vec::new();
        let mut next = 0u8;
        for length in (0..40).chain(0..40).chain([100, 3, 7, 14, 1]) {
            let chunk: Vec<u8> = (0..length)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            ring.write(&chunk);
            model.extend_from_slice(&chunk);
            let expected = &model[model.len().saturating_sub(7)..];
            assert_eq!(contents(&ring), expected);
            for out_length in 0..9 {
                let mut out = vec![0; out_length];
                let count = ring.copy_latest(&mut out);
                assert_eq!(&out[..count], &expected[expected.len().saturating_sub(out_length)..]);
            }
        }
        assert_eq!(ring.total_written(), model.len() as u64);
    }

    #[test]
    fn formats_with_write_macro() {
        use core::fmt::Write;
        let mut ring = LogRing::<16>::new();
        write!(ring, "cpu {} up", 3).unwrap();
        assert_eq!(contents(&ring), b"cpu 3 up");
    }

    #[test]
    fn one_byte_ring() {
        let mut ring = LogRing::<1>::new();
        ring.write(b"abc");
        ring.write(b"d");
        assert_eq!(contents(&ring), b"d");
    }

    #[test]
    fn guest_text_never_evicts_hv_lines() {
        let mut log = SplitLog::<64, 32>::new();
        log.write_hv(b"hv: d3 crashed: EPT violation\n");
        for number in 0..1000 {
            log.write_guest(format!("(d4) flood {number}\n").as_bytes());
        }
        let mut out = [0u8; 96];
        let count = log.copy_latest(&mut out);
        let text = core::str::from_utf8(&out[..count]).unwrap();
        assert!(text.starts_with("hv: d3 crashed: EPT violation\n"), "{text:?}");
        // The guest text is there, from a whole line, and the latest of it.
        let guest = &text["hv: d3 crashed: EPT violation\n".len()..];
        assert!(guest.starts_with("(d4) flood "), "{guest:?}");
        assert!(guest.ends_with("(d4) flood 999\n"), "{guest:?}");
        assert!(guest.len() <= 32);
    }

    #[test]
    fn split_log_drops_partial_lines_and_respects_small_buffers() {
        let mut log = SplitLog::<16, 16>::new();
        log.write_hv(b"first line\nsecond\nthird\n");
        let mut out = [0u8; 40];
        let count = log.copy_latest(&mut out);
        assert_eq!(&out[..count], b"second\nthird\n");
        // A buffer too small for a whole line gets nothing of that ring.
        let mut tiny = [0u8; 3];
        assert_eq!(log.copy_latest(&mut tiny), 0);
        // Before any wrap everything is shown as written.
        let mut log = SplitLog::<16, 16>::new();
        log.write_hv(b"a\n");
        log.write_guest(b"(d1) b\n");
        let count = log.copy_latest(&mut out);
        assert_eq!(&out[..count], b"a\n(d1) b\n");
    }

    #[test]
    fn line_budget_allows_a_burst_then_one_line_per_interval() {
        let mut budget = LineBudget::new();
        let (interval, burst) = (100, 4);
        for _ in 0..4 {
            assert!(budget.take(1000, interval, burst));
        }
        assert!(!budget.take(1000, interval, burst));
        assert!(!budget.take(1099, interval, burst));
        assert_eq!(budget.suppressed(), 2);
        assert!(budget.take(1100, interval, burst));
        assert!(!budget.take(1150, interval, burst));
        // The half interval already waited counts toward the next token.
        assert!(budget.take(1200, interval, burst));
        assert_eq!(budget.take_suppressed(), 3);
        assert_eq!(budget.take_suppressed(), 0);
        // A long pause refills to the burst, never beyond.
        let mut allowed = 0;
        for _ in 0..100 {
            allowed += budget.take(1_000_000, interval, burst) as u32;
        }
        assert_eq!(allowed, burst);
        // A clock that goes backwards (another CPU's TSC) earns nothing.
        assert!(!budget.take(5, interval, burst));
    }

    #[test]
    fn a_flood_gets_only_its_rate() {
        // 100,000 lines over 10,000 ticks at one line per 100 ticks, burst 8:
        // at most 8 + 100 get through.
        let mut budget = LineBudget::new();
        let allowed = (0..100_000u64).filter(|line| budget.take(line / 10, 100, 8)).count();
        assert!((100..=108).contains(&allowed), "{allowed}");
        assert_eq!(budget.take_suppressed(), 100_000 - allowed as u64);
    }
}
