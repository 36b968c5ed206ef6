//! The grant entry protocol between hv, acting for a grantee, and the
//! granter, which runs on another CPU and may change its entry at any
//! moment (see `abi::grant`).
//!
//! The granter revokes with a compare-exchange that expects `MAPPED` clear
//! ([`revoke`], what pv-drivers' `GrantTable::end_access` does). hv must
//! therefore set `MAPPED` with a compare-exchange of the very word it
//! checked ([`claim`]): a plain "check, then set the bit" would let a
//! revoke slip in between, and the grantee would map a page its granter
//! believes revoked (and may reuse). Xen's grant table sets its
//! reading/writing flags the same way. hv claims an entry before it maps
//! the page or copies from or to it, and lets go ([`release`]) once no
//! mapping of that grant remains.
//!
//! The entry word is reached only through [`EntryWord`], so the protocol
//! runs on the host against a model that interleaves both sides step by
//! step (the tests below try every interleaving).

use abi::grant::{MAPPED, PERMIT_ACCESS, READONLY, TYPE_MASK};
use abi::{DomainId, Error};

/// A grant entry as one 64-bit word in shared memory: each call is one
/// atomic access.
pub trait EntryWord {
    /// Reads the word.
    fn load(&mut self) -> u64;
    /// Replaces the word with `new` if it is `current`; returns the word
    /// it found (`Ok` when it was `current`).
    fn compare_exchange(&mut self, current: u64, new: u64) -> Result<u64, u64>;
    /// Clears `MAPPED` (hv's bit; the granter never clears it).
    fn clear_mapped(&mut self);
}

/// A decoded grant entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub flags: u16,
    pub domain: u16,
    pub frame: u32,
}

impl Entry {
    /// Decodes an entry word (`flags`, `domain`, `frame` from the low bits up).
    pub fn decode(word: u64) -> Entry {
        Entry { flags: word as u16, domain: (word >> 16) as u16, frame: (word >> 32) as u32 }
    }

    /// Whether the grantee may write the page.
    pub fn writable(&self) -> bool {
        self.flags & READONLY == 0
    }
}

/// Whether entry word `word` lets `grantee` access the page (for writing
/// too if `write`); `Permission` if not.
pub fn permits(word: u64, grantee: DomainId, write: bool) -> Result<Entry, Error> {
    let entry = Entry::decode(word);
    if entry.flags & TYPE_MASK != PERMIT_ACCESS || u32::from(entry.domain) != grantee || (write && !entry.writable()) {
        return Err(Error::Permission);
    }
    Ok(entry)
}

/// How many times [`claim`] reads the entry again when the granter changed
/// it between the check and the compare-exchange; after that `Busy` (a
/// granter that keeps rewriting its entry only delays its own grantee).
pub const CLAIM_ATTEMPTS: usize = 8;

/// A successful [`claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The entry as checked.
    pub entry: Entry,
    /// `MAPPED` was set already (a mapping of the grant holds it), so
    /// ending this claim must leave it set.
    pub already: bool,
}

/// Checks the entry for `grantee` and sets `MAPPED` in the same word, so
/// that the granter's revoke fails from then on. `Permission` if the entry
/// does not permit the access, `Busy` if the granter kept changing it.
pub fn claim(word: &mut impl EntryWord, grantee: DomainId, write: bool) -> Result<Claim, Error> {
    for _ in 0..CLAIM_ATTEMPTS {
        let old = word.load();
        let entry = permits(old, grantee, write)?;
        if word.compare_exchange(old, old | u64::from(MAPPED)).is_ok() {
            return Ok(Claim { entry, already: old as u16 & MAPPED != 0 });
        }
    }
    Err(Error::Busy)
}

/// Ends a [`claim`] when no mapping of the grant remains (`still_mapped`
/// false): the granter may revoke again.
pub fn release(word: &mut impl EntryWord, still_mapped: bool) {
    if !still_mapped {
        word.clear_mapped();
    }
}

/// The granter's side, as `abi::grant` documents it: clears the flags
/// with a compare-exchange that expects `MAPPED` clear; `Busy` while the
/// grantee has the page claimed.
pub fn revoke(word: &mut impl EntryWord) -> Result<(), Error> {
    loop {
        let old = word.load();
        if old as u16 & MAPPED != 0 {
            return Err(Error::Busy);
        }
        if word.compare_exchange(old, old & !0xffff).is_ok() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANTEE: DomainId = 0;
    /// A grant of frame 0x1234 to the grantee, writable.
    const GRANTED: u64 = 0x1234 << 32 | (GRANTEE as u64) << 16 | PERMIT_ACCESS as u64;

    struct Word(u64);

    impl EntryWord for Word {
        fn load(&mut self) -> u64 {
            self.0
        }
        fn compare_exchange(&mut self, current: u64, new: u64) -> Result<u64, u64> {
            if self.0 == current {
                self.0 = new;
                Ok(current)
            } else {
                Err(self.0)
            }
        }
        fn clear_mapped(&mut self) {
            self.0 &= !u64::from(MAPPED);
        }
    }

    #[test]
    fn claim_checks_the_entry_and_sets_mapped() {
        let mut word = Word(GRANTED);
        assert_eq!(claim(&mut word, GRANTEE, true).map(|c| (c.entry.frame, c.already)), Ok((0x1234, false)));
        assert_ne!(word.0 as u16 & MAPPED, 0);
        assert_eq!(claim(&mut word, GRANTEE, true).map(|c| c.already), Ok(true), "a second claim finds it set");
        assert_eq!(revoke(&mut word), Err(Error::Busy));
        release(&mut word, true);
        assert_eq!(revoke(&mut word), Err(Error::Busy), "another mapping remains");
        release(&mut word, false);
        assert_eq!(revoke(&mut word), Ok(()));
        assert_eq!(claim(&mut word, GRANTEE, false), Err(Error::Permission));
        let mut readonly = Word(GRANTED | READONLY as u64);
        assert_eq!(claim(&mut readonly, GRANTEE, true), Err(Error::Permission));
        assert_eq!(readonly.0 as u16 & MAPPED, 0, "a refused claim sets nothing");
        let mut other = Word(GRANTED);
        assert_eq!(claim(&mut other, GRANTEE + 1, false), Err(Error::Permission));
    }

    /// One side of the race, as the sequence of atomic steps it takes.
    #[derive(Clone, Copy, Debug)]
    enum Side {
        /// About to read the word (attempts so far).
        Start(usize),
        /// Read `old` and checked it; the compare-exchange is next.
        Loaded(usize, u64),
        Done(Result<(), Error>),
    }

    /// hv's claim, one atomic step at a time (the same logic as `claim`).
    fn hv_step(side: Side, memory: &mut u64) -> Side {
        match side {
            Side::Start(attempts) if attempts == CLAIM_ATTEMPTS => Side::Done(Err(Error::Busy)),
            Side::Start(attempts) => match permits(*memory, GRANTEE, true) {
                Ok(_) => Side::Loaded(attempts, *memory),
                Err(error) => Side::Done(Err(error)),
            },
            Side::Loaded(_, old) if *memory == old => {
                *memory = old | u64::from(MAPPED);
                Side::Done(Ok(()))
            }
            Side::Loaded(attempts, _) => Side::Start(attempts + 1),
            done => done,
        }
    }

    /// The granter's revoke, one atomic step at a time (as `revoke`).
    fn granter_step(side: Side, memory: &mut u64) -> Side {
        match side {
            Side::Start(_) if *memory as u16 & MAPPED != 0 => Side::Done(Err(Error::Busy)),
            Side::Start(attempts) => Side::Loaded(attempts, *memory),
            Side::Loaded(_, old) if *memory == old => {
                *memory = old & !0xffff;
                Side::Done(Ok(()))
            }
            Side::Loaded(attempts, _) => Side::Start(attempts + 1),
            done => done,
        }
    }

    /// Explores every interleaving of hv's claim and the granter's revoke
    /// from `memory`, calling `check` with each outcome.
    fn explore(hv: Side, granter: Side, memory: u64, check: &mut dyn FnMut(Result<(), Error>, Result<(), Error>, u64)) {
        match (hv, granter) {
            (Side::Done(claimed), Side::Done(revoked)) => check(claimed, revoked, memory),
            _ => {
                if !matches!(hv, Side::Done(_)) {
                    let mut next = memory;
                    let hv = hv_step(hv, &mut next);
                    explore(hv, granter, next, check);
                }
                if !matches!(granter, Side::Done(_)) {
                    let mut next = memory;
                    let granter = granter_step(granter, &mut next);
                    explore(hv, granter, next, check);
                }
            }
        }
    }

    /// Whatever the interleaving, exactly one side wins: either hv claimed
    /// the entry (MAPPED set, the revoke failed) or the granter revoked it
    /// (flags clear, the claim failed). Never both, which is what a "check
    /// then set the bit" claim allowed.
    #[test]
    fn claim_and_revoke_never_both_succeed_in_any_interleaving() {
        let mut outcomes = 0;
        let mut hv_won = 0;
        explore(Side::Start(0), Side::Start(0), GRANTED, &mut |claimed, revoked, memory| {
            outcomes += 1;
            match (claimed, revoked) {
                (Ok(()), Err(Error::Busy)) => {
                    hv_won += 1;
                    assert_eq!(memory, GRANTED | u64::from(MAPPED));
                }
                (Err(Error::Permission), Ok(())) => assert_eq!(memory & 0xffff, 0),
                other => panic!("claim and revoke ended {other:?} with the entry {memory:#x}"),
            }
        });
        assert!(outcomes >= 6 && hv_won > 0 && hv_won < outcomes, "{outcomes} outcomes, hv won {hv_won}");
    }

    /// The old protocol (check, then set MAPPED with a plain bit set) loses
    /// the race in some interleaving: the model finds it.
    #[test]
    fn check_then_set_loses_a_race_that_the_model_finds() {
        // hv: load+check, then an unconditional bit set.
        let mut both = false;
        for revoke_first_step_at in 0..3 {
            let mut memory = GRANTED;
            let mut granter = Side::Start(0);
            let mut checked = false;
            for step in 0..3 {
                if step == revoke_first_step_at {
                    granter = granter_step(granter, &mut memory);
                    granter = granter_step(granter, &mut memory);
                }
                if step == 0 {
                    checked = permits(memory, GRANTEE, true).is_ok();
                } else if step == 1 && checked {
                    memory |= u64::from(MAPPED);
                }
            }
            if checked && matches!(granter, Side::Done(Ok(()))) {
                both = true;
            }
        }
        assert!(both, "check-then-set should lose to a revoke between its check and its set");
    }
}
