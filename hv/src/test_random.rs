//! The xorshift64 generator the host tests use for fuzzing and random
//! operation sequences: deterministic, so a failure reproduces.

/// xorshift64 (Marsaglia): the state must not be zero.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `limit` (not perfectly uniform; fine for tests).
    pub fn below(&mut self, limit: usize) -> usize {
        (self.next() % limit as u64) as usize
    }
}
