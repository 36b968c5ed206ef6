//! The hypervisor's message buffer (its dmesg): a fixed ring that keeps the latest `N` bytes.
//!
//! Byte number `i` of everything ever written (counting from 0) lives at
//! `buf[i % N]`, so the position of the next write is `written % N` and the
//! oldest byte still held is number `written - len()`.

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
}
