//! The event page protocol (`abi::event`) between hv, which raises ports,
//! and the guest, which takes pending bits, masks ports and clears its
//! upcall flags on other CPUs at any moment.
//!
//! hv raises port `p` for vCPU `v` in three atomic steps ([`raise`]): set
//! `p`'s pending bit (done if it was set: the guest has yet to take it),
//! read `p`'s mask bit (done if set: [`unmask`] delivers it later), then
//! swap 1 into `v`'s upcall flag (an upcall is newly due if the flag was 0
//! and the domain registered a vector). The guest's handler clears its flag,
//! then scans `pending & !mask`. Whatever the interleaving, a port left
//! pending and unmasked has its vCPU's flag set and an upcall due: either
//! hv's swap came after the guest's clear (it found 0: a new upcall), or
//! before, and then the scan, which follows the clear, sees the bit hv set
//! first. `Unmask` ([`unmask`]) is the mirror image: clear the mask bit,
//! then read the pending bit; against a raise (set the pending bit, then
//! read the mask bit) one of the two sees the other's write.
//!
//! Both orders matter: a guest that scans before it clears its flag, or an
//! hv that reads the mask before it sets the pending bit, loses an event in
//! some interleaving (the tests show the model finds both). On x86 the
//! guest's clear must therefore be a locked instruction or be followed by a
//! serializing one (MFENCE; IRET, when the handler scans after returning):
//! a plain store may wait in the store buffer while the scan's loads go
//! ahead, which is the first wrong order.
//!
//! The words are reached only through [`EventWords`], so the protocol runs
//! on the host against a model that interleaves hv and the guest step by
//! step (the tests below try every interleaving).

use abi::event::BITMAP_WORDS;

/// Byte offset of the `mask` bitmap in the page (`pending` is at 0).
pub const MASK_OFFSET: u64 = 8 * BITMAP_WORDS as u64;

/// Byte offset in the page of vCPU `vcpu`'s upcall flag
/// (`upcall_pending`, then `upcall_pending_vcpu[vcpu - 1]`).
pub const fn upcall_offset(vcpu: usize) -> u64 {
    16 * BITMAP_WORDS as u64 + 8 * vcpu as u64
}

/// A domain's event page in shared memory: each call is one atomic access.
pub trait EventWords {
    /// Sets port `port`'s pending bit; returns whether it was set.
    fn test_and_set_pending(&mut self, port: u32) -> bool;
    /// Reads pending word `word` (ports `64 * word` to `64 * word + 63`).
    fn load_pending(&mut self, word: usize) -> u64;
    /// Reads mask word `word`.
    fn load_mask(&mut self, word: usize) -> u64;
    /// Sets (`masked`) or clears port `port`'s mask bit.
    fn set_mask(&mut self, port: u32, masked: bool);
    /// Sets vCPU `vcpu`'s upcall flag to 1; returns whether it was set.
    fn test_and_set_upcall(&mut self, vcpu: usize) -> bool;
    /// Reads vCPU `vcpu`'s upcall flag.
    fn load_upcall(&mut self, vcpu: usize) -> u64;
    /// Sets bit `word` of vCPU `vcpu`'s pending-word selector, where the
    /// layout has one (Xen's `evtchn_pending_sel`); whether it was set.
    /// A set bit means an upcall for that word is on its way already.
    fn test_and_set_selector(&mut self, _vcpu: usize, _word: usize) -> bool {
        false
    }
}

/// What hv does for the vCPU a port notifies, once the page is updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing: the port was pending already (the guest has yet to take it).
    AlreadyPending,
    /// Nothing yet: the port is masked; it stays pending until `Unmask`.
    Masked,
    /// Wake the vCPU: its upcall flag was set already (an upcall is on its
    /// way, or its handler has yet to clear the flag and scan), or the
    /// domain registered no vector (it polls).
    Wake,
    /// Wake the vCPU and inject the upcall: hv set its flag, and the domain
    /// registered a vector.
    Upcall,
}

fn bit(port: u32) -> u64 {
    1 << (port % 64)
}

/// Makes port `port` pending for vCPU `vcpu` (the vCPU the port notifies);
/// `vector`: the domain registered an upcall vector.
pub fn raise(page: &mut impl EventWords, port: u32, vcpu: usize, vector: bool) -> Delivery {
    match mark_pending(page, port) {
        Err(delivery) => delivery,
        Ok(()) => raise_upcall(page, port, vcpu, vector),
    }
}

/// The first half of [`raise`]: makes port `port` pending. `Err` with
/// the delivery when that is all (it was pending already, or is masked);
/// `Ok` when the vCPU it notifies is to get the upcall ([`raise_upcall`]),
/// so a burst of events on one port costs one bit test each.
#[inline]
pub fn mark_pending(page: &mut impl EventWords, port: u32) -> Result<(), Delivery> {
    if page.test_and_set_pending(port) {
        return Err(Delivery::AlreadyPending);
    }
    if page.load_mask(port as usize / 64) & bit(port) != 0 {
        return Err(Delivery::Masked);
    }
    Ok(())
}

/// The second half of [`raise`], for a port [`mark_pending`] made pending
/// and found unmasked.
pub fn raise_upcall(page: &mut impl EventWords, port: u32, vcpu: usize, vector: bool) -> Delivery {
    // Xen's layout: the guest takes the selector, then scans its words; a
    // selector bit already set will lead it to this port's word.
    if page.test_and_set_selector(vcpu, port as usize / 64) {
        return Delivery::AlreadyPending;
    }
    if !page.test_and_set_upcall(vcpu) && vector { Delivery::Upcall } else { Delivery::Wake }
}

/// `EventOp::Unmask` of port `port` (which notifies vCPU `vcpu`): clears
/// its mask bit, then, if it is pending (raised while masked, or not taken
/// yet), raises `vcpu`'s upcall as [`raise`] would. `None` when it is not
/// pending.
pub fn unmask(page: &mut impl EventWords, port: u32, vcpu: usize, vector: bool) -> Option<Delivery> {
    page.set_mask(port, false);
    (page.load_pending(port as usize / 64) & bit(port) != 0).then(|| raise_upcall(page, port, vcpu, vector))
}

/// Whether an event waits for vCPU `vcpu`, so that it must not block: a
/// pending, unmasked port that notifies it (`notified(port)` is the vCPU a
/// port notifies) or, for a vCPU other than 0, its upcall flag (ABI 0.9).
/// The flag alone would not do: it is clear once the vCPU's handler ran,
/// so a vCPU that blocks with interrupts enabled could sleep through a
/// port whose upcall it acknowledged without scanning (see the tests).
pub fn waiting(page: &mut impl EventWords, vcpu: usize, notified: impl Fn(u32) -> usize) -> bool {
    if vcpu != 0 && page.load_upcall(vcpu) != 0 {
        return true;
    }
    (0..BITMAP_WORDS).any(|word| {
        let mut bits = page.load_pending(word) & !page.load_mask(word);
        while bits != 0 {
            if notified((word * 64) as u32 + bits.trailing_zeros()) == vcpu {
                return true;
            }
            bits &= bits - 1;
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::event::{EventPage, PORT_COUNT};
    use std::collections::HashSet;

    const VCPUS: usize = abi::hypercall::MAX_VCPUS as usize;
    /// Ports of the scenarios: P and Q (in another word) notify vCPU 0, R
    /// notifies vCPU 1.
    const P: u32 = 5;
    const Q: u32 = 70;
    const R: u32 = 9;

    fn notified(port: u32) -> usize {
        usize::from(port == R)
    }

    /// The event page, and the state of hv next to it that decides whether
    /// an event is seen, as the model holds them.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    struct State {
        pending: [u64; BITMAP_WORDS],
        mask: [u64; BITMAP_WORDS],
        upcall: [u64; VCPUS],
        /// hv will inject the vCPU's upcall (`upcall_due`).
        due: [bool; VCPUS],
        /// The vCPU sleeps until hv wakes it.
        blocked: [bool; VCPUS],
        /// The domain's lock is held by hv.
        locked: bool,
    }

    /// One atomic step of a side: an access to the page (one per
    /// `EventWords` call, plus the guest's own) or a change of hv's state.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Step {
        SetPending(u32),
        /// The guest takes a pending bit (LOCK BTR).
        TakePending(u32),
        LoadPending(usize),
        LoadMask(usize),
        SetMask(u32, bool),
        SetUpcall(usize),
        /// The guest clears its upcall flag (XCHG).
        ClearUpcall(usize),
        LoadUpcall(usize),
        /// hv takes its lock (waits while another side holds it), drops it.
        Lock,
        Unlock,
        /// hv wakes the vCPU, and makes its upcall due if `true`.
        Deliver(usize, bool),
        /// hv blocks the vCPU (`SchedOp::Block`, HLT).
        Block(usize),
        /// With interrupts enabled, the vCPU takes its upcall if one is due.
        TakeUpcall(usize),
    }

    impl Step {
        fn ready(self, state: &State) -> bool {
            self != Step::Lock || !state.locked
        }

        fn apply(self, state: &mut State) -> u64 {
            let was = |word: &mut u64, port: u32, set: bool| {
                let old = *word & bit(port) != 0;
                *word = if set { *word | bit(port) } else { *word & !bit(port) };
                u64::from(old)
            };
            match self {
                Step::SetPending(port) => was(&mut state.pending[port as usize / 64], port, true),
                Step::TakePending(port) => was(&mut state.pending[port as usize / 64], port, false),
                Step::LoadPending(word) => state.pending[word],
                Step::LoadMask(word) => state.mask[word],
                Step::SetMask(port, masked) => was(&mut state.mask[port as usize / 64], port, masked),
                Step::SetUpcall(vcpu) => core::mem::replace(&mut state.upcall[vcpu], 1),
                Step::ClearUpcall(vcpu) => core::mem::replace(&mut state.upcall[vcpu], 0),
                Step::LoadUpcall(vcpu) => state.upcall[vcpu],
                Step::Lock => u64::from(core::mem::replace(&mut state.locked, true)),
                Step::Unlock => u64::from(core::mem::replace(&mut state.locked, false)),
                Step::Deliver(vcpu, upcall) => {
                    state.blocked[vcpu] = false;
                    state.due[vcpu] |= upcall;
                    0
                }
                Step::Block(vcpu) => u64::from(core::mem::replace(&mut state.blocked[vcpu], true)),
                Step::TakeUpcall(vcpu) => u64::from(core::mem::replace(&mut state.due[vcpu], false)),
            }
        }
    }

    /// The page accessed directly, for the sequential tests.
    impl EventWords for State {
        fn test_and_set_pending(&mut self, port: u32) -> bool {
            Step::SetPending(port).apply(self) != 0
        }
        fn load_pending(&mut self, word: usize) -> u64 {
            Step::LoadPending(word).apply(self)
        }
        fn load_mask(&mut self, word: usize) -> u64 {
            Step::LoadMask(word).apply(self)
        }
        fn set_mask(&mut self, port: u32, masked: bool) {
            Step::SetMask(port, masked).apply(self);
        }
        fn test_and_set_upcall(&mut self, vcpu: usize) -> bool {
            Step::SetUpcall(vcpu).apply(self) != 0
        }
        fn load_upcall(&mut self, vcpu: usize) -> u64 {
            Step::LoadUpcall(vcpu).apply(self)
        }
    }

    /// A side's code run again over the steps it took so far: each returns
    /// what it returned then. Its first step beyond those is noted, not
    /// taken; the code runs on over made-up values, and nothing it does
    /// from there counts.
    struct Replay<'a> {
        taken: &'a [(Step, u64)],
        count: usize,
        next: Option<Step>,
    }

    impl Replay<'_> {
        fn step(&mut self, step: Step) -> u64 {
            if self.next.is_some() {
                return 0;
            }
            match self.taken.get(self.count) {
                Some(&(taken, result)) => {
                    assert_eq!(taken, step, "a side's code must take the same steps for the same results");
                    self.count += 1;
                    result
                }
                None => {
                    self.next = Some(step);
                    0
                }
            }
        }
    }

    impl EventWords for Replay<'_> {
        fn test_and_set_pending(&mut self, port: u32) -> bool {
            self.step(Step::SetPending(port)) != 0
        }
        fn load_pending(&mut self, word: usize) -> u64 {
            self.step(Step::LoadPending(word))
        }
        fn load_mask(&mut self, word: usize) -> u64 {
            self.step(Step::LoadMask(word))
        }
        fn set_mask(&mut self, port: u32, masked: bool) {
            self.step(Step::SetMask(port, masked));
        }
        fn test_and_set_upcall(&mut self, vcpu: usize) -> bool {
            self.step(Step::SetUpcall(vcpu)) != 0
        }
        fn load_upcall(&mut self, vcpu: usize) -> u64 {
            self.step(Step::LoadUpcall(vcpu))
        }
    }

    /// What a side did that the check needs besides the final state.
    #[derive(Clone, Debug, Default)]
    struct Effect {
        /// The guest took these ports (it handles them).
        taken: Vec<u32>,
        /// hv's decision for the port it raised or unmasked.
        delivery: Option<Delivery>,
        /// This side is the loop of this vCPU: it scans again unless blocked.
        mainline: Option<usize>,
    }

    /// One side of the race: its code, over the page and hv's state.
    type Side<'a> = &'a dyn Fn(&mut Replay) -> Effect;

    /// Explores every interleaving of the sides' steps from `state` and
    /// calls `check` with each distinct end (the final state and each
    /// side's effect). Returns the number of distinct ends. A side is plain
    /// code (hv's call this module's functions themselves): to find its
    /// next step, the explorer runs it again over the steps it took.
    fn explore(sides: &[Side], state: State, check: &mut dyn FnMut(&State, &[Effect])) -> usize {
        let mut seen = HashSet::new();
        let mut ends = 0;
        explore_from(sides, state, &mut vec![Vec::new(); sides.len()], &mut seen, &mut |state, effects| {
            ends += 1;
            check(state, effects);
        });
        ends
    }

    type Taken = Vec<Vec<(Step, u64)>>;

    fn explore_from(
        sides: &[Side],
        state: State,
        taken: &mut Taken,
        seen: &mut HashSet<(State, Taken)>,
        check: &mut dyn FnMut(&State, &[Effect]),
    ) {
        // A side's future depends only on the results of its steps so far:
        // the same state with the same histories has the same interleavings.
        if !seen.insert((state, taken.clone())) {
            return;
        }
        let mut effects = Vec::new();
        let mut moved = false;
        for (index, side) in sides.iter().enumerate() {
            let mut replay = Replay { taken: &taken[index], count: 0, next: None };
            let effect = side(&mut replay);
            let Some(step) = replay.next else {
                effects.push(effect);
                continue;
            };
            if step.ready(&state) {
                moved = true;
                let mut next = state;
                let result = step.apply(&mut next);
                taken[index].push((step, result));
                explore_from(sides, next, taken, seen, check);
                taken[index].pop();
            }
        }
        if effects.len() == sides.len() {
            check(&state, &effects);
        } else {
            assert!(moved, "no side can move: {state:?}");
        }
    }

    /// Ports lost at the end: pending and unmasked, yet neither is an
    /// upcall due for their vCPU with its flag set (its handler runs and
    /// scans again) nor does a loop of that vCPU run on (it scans again).
    fn lost(state: &State, effects: &[Effect]) -> Vec<u32> {
        (0..PORT_COUNT as u32)
            .filter(|&port| {
                let word = port as usize / 64;
                let vcpu = notified(port);
                state.pending[word] & !state.mask[word] & bit(port) != 0
                    && !(state.upcall[vcpu] != 0 && state.due[vcpu])
                    && !effects.iter().any(|effect| effect.mainline == Some(vcpu) && !state.blocked[vcpu])
            })
            .collect()
    }

    /// What events.rs does with a delivery: wake the vCPU, and make its
    /// upcall due for `Upcall`.
    fn deliver(side: &mut Replay, vcpu: usize, delivery: Delivery) {
        if matches!(delivery, Delivery::Wake | Delivery::Upcall) {
            side.step(Step::Deliver(vcpu, delivery == Delivery::Upcall));
        }
    }

    /// hv raising `port` (for a domain with a vector), with its lock held
    /// if `locked`.
    fn hv_raise(side: &mut Replay, port: u32, locked: bool) -> Effect {
        if locked {
            side.step(Step::Lock);
        }
        let delivery = raise(side, port, notified(port), true);
        deliver(side, notified(port), delivery);
        if locked {
            side.step(Step::Unlock);
        }
        Effect { delivery: Some(delivery), ..Effect::default() }
    }

    /// The guest's `EventOp::Unmask` of `port`: hv's code, on the guest's CPU.
    fn hv_unmask(side: &mut Replay, port: u32) -> Effect {
        let delivery = unmask(side, port, notified(port), true);
        if let Some(delivery) = delivery {
            deliver(side, notified(port), delivery);
        }
        Effect { delivery, ..Effect::default() }
    }

    /// The start of the races with vCPU 0's handler: it runs for an
    /// earlier upcall (its flag is set, the upcall taken).
    fn in_handler() -> State {
        let mut state = State::default();
        state.upcall[0] = 1;
        state
    }

    /// The guest's scan: `pending & !mask` word by word, taking each port
    /// it finds.
    fn scan(side: &mut Replay) -> Vec<u32> {
        let mut taken = Vec::new();
        for word in 0..BITMAP_WORDS {
            let mut bits = side.step(Step::LoadPending(word)) & !side.step(Step::LoadMask(word));
            while bits != 0 {
                let port = (word * 64) as u32 + bits.trailing_zeros();
                if side.step(Step::TakePending(port)) != 0 {
                    taken.push(port);
                }
                bits &= bits - 1;
            }
        }
        taken
    }

    /// The guest's upcall handler on `vcpu`, as `abi::event` documents it:
    /// clears its flag, then scans.
    fn guest_handler(side: &mut Replay, vcpu: usize) -> Effect {
        side.step(Step::ClearUpcall(vcpu));
        Effect { taken: scan(side), ..Effect::default() }
    }

    /// The explorer reaches each of the three orders of a guest's take
    /// against hv's set-then-load (before, between, after).
    #[test]
    fn the_model_reaches_every_interleaving() {
        let hv = |side: &mut Replay| {
            side.test_and_set_pending(P);
            Effect { taken: vec![side.load_pending(0) as u32], ..Effect::default() }
        };
        let guest =
            |side: &mut Replay| Effect { taken: vec![side.step(Step::TakePending(P)) as u32], ..Effect::default() };
        let mut seen = HashSet::new();
        let ends = explore(&[&hv, &guest], State::default(), &mut |_, effects| {
            seen.insert((effects[0].taken[0], effects[1].taken[0]));
        });
        assert_eq!(ends, 3);
        assert_eq!(seen, HashSet::from([(bit(P) as u32, 0), (0, 1), (bit(P) as u32, 1)]));
    }

    #[test]
    fn layout_matches_the_abi() {
        assert_eq!(MASK_OFFSET as usize, core::mem::offset_of!(EventPage, mask));
        assert_eq!(upcall_offset(0) as usize, core::mem::offset_of!(EventPage, upcall_pending));
        assert_eq!(upcall_offset(1) as usize, core::mem::offset_of!(EventPage, upcall_pending_vcpu));
        assert_eq!(upcall_offset(VCPUS - 1) as usize + 8, core::mem::size_of::<EventPage>());
    }

    #[test]
    fn raise_unmask_and_waiting_decide_in_turn() {
        let mut page = State::default();
        assert_eq!(raise(&mut page, P, 0, true), Delivery::Upcall);
        assert_eq!((page.pending[0], page.upcall[0]), (bit(P), 1));
        assert_eq!(raise(&mut page, P, 0, true), Delivery::AlreadyPending);
        assert_eq!(raise(&mut page, Q, 0, true), Delivery::Wake, "the flag is set: one upcall for both");
        assert_eq!(page.pending[1], bit(Q));
        assert!(waiting(&mut page, 0, notified));
        assert!(!waiting(&mut page, 1, notified));
        assert_eq!(raise(&mut page, R, 1, false), Delivery::Wake, "no vector: no upcall");
        assert_eq!(page.upcall[1], 1, "the flag is set all the same");
        assert!(waiting(&mut page, 1, notified));

        let mut page = State::default();
        page.set_mask(R, true);
        assert_eq!(raise(&mut page, R, 1, true), Delivery::Masked);
        assert_eq!((page.pending[0], page.upcall[1]), (bit(R), 0));
        assert!(!waiting(&mut page, 0, notified), "R notifies vCPU 1");
        assert!(!waiting(&mut page, 1, notified), "masked: no flag");
        assert_eq!(unmask(&mut page, R, 1, true), Some(Delivery::Upcall));
        assert_eq!((page.mask[0], page.upcall[1]), (0, 1));
        assert_eq!(unmask(&mut page, P, 0, true), None, "not pending");
        page.set_mask(P, true);
        page.test_and_set_pending(P);
        assert!(!waiting(&mut page, 0, notified), "P is masked");
        page.set_mask(P, false);
        assert!(waiting(&mut page, 0, notified));
    }

    /// (a) hv raises P while vCPU 0's handler runs (for an earlier upcall):
    /// P is taken by the handler, or a new upcall is due.
    #[test]
    fn a_raise_and_the_upcall_handler_lose_nothing_in_any_interleaving() {
        let start = in_handler();
        let (mut taken, mut upcalls) = (0, 0);
        let sides: [Side; 2] = [&|side| hv_raise(side, P, false), &|side| guest_handler(side, 0)];
        let ends = explore(&sides, start, &mut |state, effects| {
            assert_eq!(lost(state, effects), [], "{state:?} {effects:?}");
            taken += usize::from(effects[1].taken == [P]);
            upcalls += usize::from(effects[0].delivery == Some(Delivery::Upcall));
        });
        assert!(taken > 0 && upcalls > 0, "{ends} ends: the handler took P in {taken}, a new upcall in {upcalls}");
    }

    /// (b) hv raises P while the guest unmasks it (`EventOp::Unmask`), with
    /// and without vCPU 0's handler running: whichever side sees the
    /// other's write raises the upcall.
    #[test]
    fn a_raise_and_unmask_lose_nothing_in_any_interleaving() {
        let start = State { mask: [bit(P), 0, 0, 0], ..State::default() };
        let (mut by_raise, mut by_unmask) = (0, 0);
        explore(&[&|side| hv_raise(side, P, false), &|side| hv_unmask(side, P)], start, &mut |state, effects| {
            assert_eq!(lost(state, effects), [], "{state:?} {effects:?}");
            by_raise += usize::from(effects[0].delivery == Some(Delivery::Upcall));
            by_unmask += usize::from(effects[1].delivery == Some(Delivery::Upcall));
        });
        assert!(by_raise > 0 && by_unmask > 0, "upcall raised by the raise {by_raise}, by the unmask {by_unmask}");

        let start = State { mask: start.mask, ..in_handler() };
        let sides: [Side; 3] =
            [&|side| hv_raise(side, P, false), &|side| hv_unmask(side, P), &|side| guest_handler(side, 0)];
        explore(&sides, start, &mut |state, effects| assert_eq!(lost(state, effects), [], "{state:?} {effects:?}"));
    }

    /// (c) Two CPUs raise two ports at once (hv's lock not held: the page
    /// protocol alone keeps them) while vCPU 0's handler runs; the second
    /// port notifies vCPU 0 too (in another word), or vCPU 1 (whose port
    /// vCPU 0's scan takes as well when it finds it).
    #[test]
    fn two_raises_and_the_handler_lose_nothing_in_any_interleaving() {
        for other in [Q, R] {
            let start = in_handler();
            let handler = |side: &mut Replay| guest_handler(side, 0);
            let sides: [Side; 3] = [&|side| hv_raise(side, P, false), &|side| hv_raise(side, other, false), &handler];
            let (mut both_taken, mut left) = (0, 0);
            let ends = explore(&sides, start, &mut |state, effects| {
                assert_eq!(lost(state, effects), [], "{state:?} {effects:?}");
                both_taken += usize::from(effects[2].taken == [P, other]);
                left += usize::from(state.pending.iter().any(|&word| word != 0));
            });
            assert!(
                both_taken > 0 && left > 0,
                "{ends} ends, the handler took both in {both_taken}, left one in {left}"
            );
        }
    }

    /// A handler that scans before it clears its flag (or whose clear a
    /// store buffer delays past its scan) loses P: the model finds it.
    #[test]
    fn a_handler_that_scans_before_clearing_its_flag_loses_a_port() {
        let start = in_handler();
        let scan_first = |side: &mut Replay| {
            let taken = scan(side);
            side.step(Step::ClearUpcall(0));
            Effect { taken, ..Effect::default() }
        };
        let mut losses = 0;
        explore(&[&|side| hv_raise(side, P, false), &scan_first], start, &mut |state, effects| {
            losses += usize::from(lost(state, effects) == [P]);
        });
        assert!(losses > 0, "the model should find the handler clearing its flag after hv's raise");
    }

    /// An hv that reads the mask before it sets the pending bit loses P to
    /// an unmask between the two: the model finds it.
    #[test]
    fn a_raise_that_reads_the_mask_first_loses_a_port_to_unmask() {
        let mask_first = |side: &mut Replay| {
            let masked = side.load_mask(0) & bit(P) != 0;
            let delivery = if side.test_and_set_pending(P) {
                Delivery::AlreadyPending
            } else if masked {
                Delivery::Masked
            } else {
                raise_upcall(side, P, 0, true)
            };
            deliver(side, 0, delivery);
            Effect { delivery: Some(delivery), ..Effect::default() }
        };
        let start = State { mask: [bit(P), 0, 0, 0], ..State::default() };
        let mut losses = 0;
        explore(&[&mask_first, &|side| hv_unmask(side, P)], start, &mut |state, effects| {
            losses += usize::from(lost(state, effects) == [P]);
        });
        assert!(losses > 0, "the model should find the unmask between the raise's mask check and its set");
    }

    /// A guest that clears the mask bit in the page itself, without
    /// `EventOp::Unmask`, leaves a port raised while masked without upcall.
    #[test]
    fn clearing_the_mask_bit_without_unmask_loses_a_port_raised_while_masked() {
        let start = State { mask: [bit(P), 0, 0, 0], ..State::default() };
        let write_page = |side: &mut Replay| {
            side.step(Step::SetMask(P, false));
            Effect::default()
        };
        let mut losses = 0;
        explore(&[&|side| hv_raise(side, P, false), &write_page], start, &mut |state, effects| {
            losses += usize::from(lost(state, effects) == [P]);
        });
        assert!(losses > 0);
    }

    /// vCPU `vcpu`'s loop waiting for `port`: it takes the port, may take
    /// an upcall (interrupts enabled) whose handler only acknowledges it
    /// (pv-drivers' does; the loop scans) or also scans (`abi::event`),
    /// then blocks (under the domain's lock: `block` and `raise` exclude each other).
    fn guest_waits(
        side: &mut Replay,
        vcpu: usize,
        port: u32,
        interrupts: bool,
        handler_scans: bool,
        check: Check,
    ) -> Effect {
        let mut taken: Vec<u32> = (side.step(Step::TakePending(port)) != 0).then_some(port).into_iter().collect();
        if interrupts && side.step(Step::TakeUpcall(vcpu)) != 0 {
            side.step(Step::ClearUpcall(vcpu));
            if handler_scans {
                taken.extend(scan(side));
            }
        }
        side.step(Step::Lock);
        if !check(side, vcpu) {
            side.step(Step::Block(vcpu));
        }
        side.step(Step::Unlock);
        Effect { taken, mainline: Some(vcpu), ..Effect::default() }
    }

    /// The check `Block` makes (hv's `waiting`, or a wrong one).
    type Check = fn(&mut Replay, usize) -> bool;

    fn hv_waiting(side: &mut Replay, vcpu: usize) -> bool {
        waiting(side, vcpu, notified)
    }

    /// Losses when hv raises `port` while its vCPU's loop waits for it and
    /// `Block` checks with `check`.
    fn block_losses_with(port: u32, interrupts: bool, handler_scans: bool, check: Check) -> usize {
        let vcpu = notified(port);
        let (mut losses, mut took) = (0, 0);
        let waits = |side: &mut Replay| guest_waits(side, vcpu, port, interrupts, handler_scans, check);
        let ends = explore(&[&|side| hv_raise(side, port, true), &waits], State::default(), &mut |state, effects| {
            losses += usize::from(!lost(state, effects).is_empty());
            took += usize::from(effects[1].taken.contains(&port));
        });
        assert!(took > 0 && took < ends, "{ends} ends, the loop took the port in {took}");
        losses
    }

    fn block_losses(port: u32, interrupts: bool, handler_scans: bool) -> usize {
        block_losses_with(port, interrupts, handler_scans, hv_waiting)
    }

    /// `Block` looks at the pending bits of the ports bound to the vCPU, so
    /// a loop that blocks with interrupts enabled and an acknowledging
    /// handler (pv-drivers' `wait_for_event`) never sleeps through a port,
    /// on vCPU 0 or another.
    #[test]
    fn block_never_sleeps_through_a_port_on_any_vcpu() {
        for port in [P, R] {
            for (interrupts, handler_scans) in [(true, false), (false, false), (true, true)] {
                assert_eq!(block_losses(port, interrupts, handler_scans), 0, "port {port}");
            }
        }
    }

    /// A `Block` that looked only at another vCPU's upcall flag (ABI 0.9 as
    /// first written): with interrupts enabled, an upcall between the
    /// loop's scan and `Block` whose handler only acknowledges clears the
    /// flag, and the vCPU sleeps with R pending. The model finds it.
    #[test]
    fn a_block_that_checks_only_the_upcall_flag_sleeps_through_a_port() {
        let flag_only: Check = |side, vcpu| side.load_upcall(vcpu) != 0;
        assert!(block_losses_with(R, true, false, flag_only) > 0);
        assert_eq!(block_losses_with(R, false, false, flag_only), 0, "interrupts off: nothing lost");
    }
}
