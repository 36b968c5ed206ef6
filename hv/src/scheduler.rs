//! A proportional-share (credit) scheduler for entries of one vCPU each, on
//! one or more CPUs with a run queue each, with a weight, a cap and a CPU
//! affinity per entry, and groups of entries that share a weight and a cap.
//!
//! An entry is named by a [`DomainId`] key: hv enters each vCPU of a domain
//! (key `domain_id << 3 | vcpu`) and puts the vCPUs of a domain in one
//! group, so that a domain's weight and cap hold across its vCPUs, as in
//! Xen's credit scheduler.
//!
//! The scheduler never reads the clock: the caller passes the TSC (`now`)
//! to [`Scheduler::pick`] and reports how long the chosen entry ran with
//! [`Scheduler::charge`]. Each CPU runs this loop, `cpu` being its index,
//! with every call made under one lock around the scheduler:
//!
//! ```text
//! loop {
//!     match scheduler.pick(now, cpu) {
//!         Some((entry, limit)) => { run entry for at most `limit` TSC ticks;
//!                                   scheduler.charge(entry, ran, now) }
//!         None => idle until scheduler.next_event(now), or until an interrupt
//!                 makes an entry runnable (next_event None: only the interrupt)
//!     }
//! }
//! ```
//!
//! Every `pick` is followed by a `charge` of the entry picked (of 0 ticks if
//! it did not run). An idle CPU is not told when a wake-up or another CPU's
//! `charge` gives it an entry to run: the caller wakes it (an IPI).
//!
//! Time is cut into accounting periods of `period_tsc` ticks; the first one
//! starts at the first `pick` or `charge`. The rules:
//!
//! - **CPUs.** [`set_cpus`](Scheduler::set_cpus) CPUs share the queue, so
//!   a period holds `cpus × period_tsc` ticks of CPU time, its *capacity*.
//!   An entry is *running* from the `pick` that returns it to the `charge`
//!   that reports its run; `pick` skips running entries, so an entry (one
//!   vCPU) never runs on two CPUs at once. A running entry is still
//!   runnable for everything else (credit, caps, wake-ups).
//! - **Run queues.** Each CPU has a run queue: the entries that last ran
//!   on it (an entry that never ran is in none). A CPU picks from its own
//!   queue, and takes an entry from another CPU's queue (or one in none)
//!   only when its own offers nothing eligible, or when that entry is
//!   ahead by the order below: in a better class (woken with credit, then
//!   not run in this period), or in the same class with more than a
//!   slice's worth of credit over the best of its own. An entry taken so
//!   moves to the CPU's queue. Entries thus keep to one CPU (its caches,
//!   its TLB tags) and move only to even out the shares. The queues are
//!   parts of one structure under the caller's one lock, as Xen's credit2
//!   shares a run queue among the CPUs of a socket (measured on 4 CPUs
//!   under a mixed load: 0.3% of the CPUs' time waiting for it;
//!   BENCHMARKS.md, ninth session). hv takes it once a pick: the vCPUs'
//!   states come as numbered snapshots ([`apply_snapshot`](Scheduler::apply_snapshot)).
//! - **Affinity.** An entry runs only on the CPUs in its affinity mask (bit
//!   `i` for CPU `i`, all CPUs by default). Credit ignores affinity: entries
//!   confined to fewer CPUs than their grants need share those CPUs in the
//!   order of the rules below, not exactly by weight.
//! - **Groups.** [`set_group`](Scheduler::set_group) puts an entry in a
//!   group; the entries of a group share the group's weight and cap
//!   ([`set_group_params`](Scheduler::set_group_params)), and their own go
//!   unused while they belong to it. A group comes into being with its
//!   first entry, taking that entry's weight and cap, and is forgotten when
//!   its last entry leaves it (removed, or moved to another group). An entry
//!   in no group is scheduled alone with its own weight and cap: in the
//!   rules below, a *group* also means such an entry by itself.
//! - **Credit.** Each period's capacity is granted as credit to the groups
//!   that take part in it, in proportion to their weights, except that no
//!   group is granted more than its *ceiling*: one period for each of its
//!   entries taking part (one vCPU uses at most one CPU) and, for a group
//!   with a cap, its cap budget (an entry alone is held to one period only:
//!   its cap bounds its runs, not its credit). A group whose share would
//!   exceed its ceiling is granted its ceiling, and the rest is shared again
//!   among the others by weight (water-filling). A group's grant is split evenly among its entries
//!   taking part, so that its weight goes to its active vCPUs, however many
//!   it has (Xen's credit scheduler does the same). On one CPU without
//!   groups this is plain proportional sharing. Running consumes credit
//!   tick for tick; a run counts against the period it was picked in, even
//!   when another CPU starts the next period before it is charged (`pick`
//!   takes the limit in advance, `charge` settles the difference). When a
//!   period starts, the entries that were *active* in the one that ended
//!   (runnable at some moment of it) take part. An entry that slept through
//!   the whole last period takes part from the moment it wakes: the period
//!   is shared again among all the entries now taking part, and the
//!   difference is taken back from (or given to) the others' credit. An
//!   entry is thus granted at most one period's share per period, the
//!   grants of a period add up to its capacity (to the groups' ceilings
//!   when all of them reach theirs: fewer entries than CPUs, or caps), and
//!   the result does not depend on the order of wake-ups.
//! - **Bounded credit.** Before the new credit is added, what an entry
//!   carries over (surplus or debt) is clamped to one slice either way: the
//!   most an entry ever holds is one period's share plus one slice, and time
//!   taken from an otherwise idle CPU is not held against an entry later.
//!   The slice of carry-over keeps the rounding of whole slices from
//!   accumulating into unfairness.
//! - **Choice.** Among the *eligible* entries (runnable, not running,
//!   allowed on the asking CPU, and within their group's cap) of each
//!   queue it looks at (see Run queues) `pick` prefers, in order: an entry that woke since it last ran and
//!   still has credit (prompt service for I/O; it spends credit each time,
//!   so it cannot starve the others); an entry that has not run yet in this
//!   period (so every runnable entry runs at least once per period, however
//!   small its weight: that run, up to a slice, is the floor of a tiny
//!   share); the most credit per unit of weight; the entry
//!   picked least recently (round robin, so equal entries alternate). An
//!   entry counts with the weight that earns its grant at the rate the
//!   others earn theirs: its own weight when it is alone and below its
//!   ceiling, its even part of its group's weight in a group below its
//!   ceiling, and less than these when the ceiling stopped the grant; so
//!   all entries spend their grants at the same pace.
//! - **Work conserving.** Credit only orders the eligible entries: an entry
//!   out of credit still runs when nobody else wants the CPU. Because the
//!   order is by credit per unit of weight, time that an entry leaves unused
//!   is shared among the others by weight too.
//! - **Cap.** A group with a cap of `c` percent of one CPU runs at most
//!   `c`% of one CPU's period in each period, its entries' runs counted
//!   together: an entry alone at most 100%, a group of `n` entries up to
//!   `n` × 100% (150 is one and a half CPUs). Once it has used that, none
//!   of its entries is eligible until the next period starts; if nothing
//!   else is eligible `pick` returns `None` and the CPU idles (caps are not
//!   work conserving). What an entry used stays with the group it ran in:
//!   an entry moved to another group in the middle of a period brings none
//!   of it along (hv groups an entry before it first runs).
//! - **Limit.** `pick` also says how long the entry may run: until the end
//!   of its slice, of its group's cap budget, or of the period, whichever is
//!   first, so that the scheduler is asked again at every boundary that
//!   matters.

use arrayvec::ArrayVec;
use core::cmp::Reverse;

/// Identifier of a domain (as in the ABI); the scheduler takes it as the
/// key of an entry.
pub type DomainId = abi::DomainId;

/// Smallest valid scheduling weight.
pub const MIN_WEIGHT: u32 = 1;
/// Largest valid scheduling weight.
pub const MAX_WEIGHT: u32 = abi::domctl::MAX_WEIGHT;
/// Largest valid cap of one entry, in percent of one CPU (0 means no cap):
/// an entry is one vCPU, which never uses more than 100%. A group's cap,
/// across all its entries, may be up to `MAX_CAP_PERCENT` times its number
/// of entries: a cap of 150 is one and a half CPUs, however many vCPUs the
/// group spreads them over.
pub const MAX_CAP_PERCENT: u32 = 100;
/// Most CPUs the scheduler serves: CPU indexes are `0..MAX_CPUS`, one bit
/// each in an affinity mask.
pub const MAX_CPUS: u32 = 64;
/// The default affinity: every CPU.
pub const ALL_CPUS: u64 = u64::MAX;

/// Why the scheduler refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// The scheduler already holds its maximum number of entries (or of
    /// groups).
    Full,
    /// No entry (or group) with that id is known.
    NotFound,
    /// An entry with that id was added already.
    Exists,
    /// The weight is outside `MIN_WEIGHT..=MAX_WEIGHT`.
    InvalidWeight,
    /// The cap is above `MAX_CAP_PERCENT` (for a group: above
    /// `MAX_CAP_PERCENT` times its number of entries).
    InvalidCap,
    /// The affinity mask names no CPU.
    InvalidAffinity,
}

/// One entry's scheduling state.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    id: DomainId,
    /// Relative share, `MIN_WEIGHT..=MAX_WEIGHT`; unused while in a group.
    weight: u32,
    /// Most of each period the entry may run, in percent; 0 = no cap;
    /// unused while in a group.
    cap_percent: u32,
    /// The group the entry belongs to, which is always in `groups`; `None`:
    /// the entry is alone.
    group: Option<u32>,
    /// The CPUs the entry may run on, bit `i` for CPU `i`; never 0.
    affinity: u64,
    /// Whether the entry wants the CPU.
    runnable: bool,
    /// While the entry runs (picked, not charged yet): the limit it was
    /// picked with, which `pick` already charged, and the end of the period
    /// it was picked in.
    running: Option<(u64, u64)>,
    /// Runnable at some moment of the current period, so it earns credit at
    /// the period's end. Always true while `runnable` is.
    active: bool,
    /// Credit granted for the current period; `None` while the entry does
    /// not take part in it.
    grant: Option<i64>,
    /// The weight, scaled by 2^16, that orders the entry instead of its
    /// own (`None`: its own): the weight that earns its grant at the rate
    /// the others earn theirs, so that all entries spend their grants at
    /// the same pace. Set while the entry is in a group, or its grant is a
    /// ceiling (water-filling stopped it).
    order_weight: Option<u64>,
    /// Became runnable since it was last picked.
    woken: bool,
    /// Picked at least once in the current period.
    ran_this_period: bool,
    /// TSC ticks the entry is owed (negative: ticks it ran beyond its share).
    credit: i64,
    /// TSC ticks charged in the current period, for the cap.
    used_this_period: u64,
    /// The pick counter's value when last picked (0 = never); the least
    /// recently picked entry wins a tie.
    last_pick: u64,
    /// The CPU whose run queue holds the entry: the one it last ran on
    /// (`None` before its first run).
    home: Option<u32>,
    /// The number of the last snapshot [`Scheduler::apply_snapshot`] took
    /// (0: none yet).
    snapshot: u64,
}

impl Entry {
    /// The order among eligible entries, best last (see the module doc).
    fn order(&self) -> (bool, bool, i128, Reverse<u64>) {
        (self.boosted(), !self.ran_this_period, self.credit_per_weight(), Reverse(self.last_pick))
    }

    /// Whether a wake-up gives this entry priority over the others.
    fn boosted(&self) -> bool {
        self.woken && self.credit > 0
    }

    /// Credit per unit of weight (scaled by 2^16 to keep the precision of
    /// a tick), the order among entries otherwise equal.
    fn credit_per_weight(&self) -> i128 {
        self.per_weight(self.credit)
    }

    /// `credit` per unit of this entry's weight (see `credit_per_weight`).
    fn per_weight(&self, credit: i64) -> i128 {
        let scaled_weight = self.order_weight.unwrap_or(u64::from(self.weight) << 16);
        (i128::from(credit) << 32) / i128::from(scaled_weight.max(1))
    }

    /// Whether a CPU whose own queue offers `own` takes this entry from
    /// another CPU's queue instead: when it is in a better class (woken
    /// with credit, then not run in this period), or in the same class and
    /// ahead by more than `margin` ticks of credit. The margin keeps
    /// entries in their queues while the order among them is close, so
    /// they move only to even out a real imbalance.
    fn beats(&self, own: &Entry, margin: u64) -> bool {
        let class = |entry: &Entry| (entry.boosted(), !entry.ran_this_period);
        match class(self).cmp(&class(own)) {
            core::cmp::Ordering::Equal => {
                self.per_weight(self.credit.saturating_sub(saturate_i64(margin))) > own.credit_per_weight()
            }
            ordering => ordering.is_gt(),
        }
    }
}

/// A group's shared scheduling state.
#[derive(Clone, Copy, Debug)]
struct Group {
    id: u32,
    /// Relative share of all the group's entries together,
    /// `MIN_WEIGHT..=MAX_WEIGHT`.
    weight: u32,
    /// Most of each period the group's entries may run together, in percent
    /// of one CPU; 0 = no cap.
    cap_percent: u32,
    /// TSC ticks charged to the group's entries in the current period, for
    /// the cap.
    used_this_period: u64,
}

/// A credit scheduler for up to `N` entries sharing one or more CPUs.
#[derive(Debug)]
pub struct Scheduler<const N: usize> {
    entries: ArrayVec<Entry, N>,
    /// The groups; each has at least one entry, so there are never more
    /// groups than entries.
    groups: ArrayVec<Group, N>,
    /// Length of an accounting period, in TSC ticks (at least 1).
    period_tsc: u64,
    /// Longest run `pick` grants, in TSC ticks (at least 1).
    slice_tsc: u64,
    /// Number of CPUs sharing the queue, `1..=MAX_CPUS`.
    cpus: u32,
    /// TSC at which the current period started; `None` before the first
    /// `pick` or `charge`.
    period_start: Option<u64>,
    /// Number of picks so far, to order entries for round robin.
    picks: u64,
}

impl<const N: usize> Scheduler<N> {
    /// A scheduler with no entries, for one CPU. `period_tsc` is the
    /// accounting period (e.g. 30 ms of TSC); `slice_tsc` the longest an
    /// entry runs before the scheduler is asked again. Zero lengths are
    /// taken as 1.
    pub const fn new(period_tsc: u64, slice_tsc: u64) -> Self {
        Self {
            entries: ArrayVec::new_const(),
            groups: ArrayVec::new_const(),
            period_tsc: if period_tsc == 0 { 1 } else { period_tsc },
            slice_tsc: if slice_tsc == 0 { 1 } else { slice_tsc },
            cpus: 1,
            period_start: None,
            picks: 0,
        }
    }

    /// Sets the number of CPUs sharing the queue (taken as
    /// `1..=MAX_CPUS`). The current period is shared again at once with
    /// the new capacity.
    pub fn set_cpus(&mut self, cpus: u32) {
        self.cpus = cpus.clamp(1, MAX_CPUS);
        self.share_period_again();
    }

    /// Adds entry `id` with `weight` (`MIN_WEIGHT..=MAX_WEIGHT`), no cap,
    /// no group, every CPU, no credit, not runnable.
    pub fn add(&mut self, id: DomainId, weight: u32) -> Result<(), SchedError> {
        check_weight(weight)?;
        if self.find(id).is_some() {
            return Err(SchedError::Exists);
        }
        // Everything else starts empty: no cap, no group, no credit, not runnable.
        let entry = Entry { id, weight, affinity: ALL_CPUS, ..Entry::default() };
        self.entries.try_push(entry).map_err(|_| SchedError::Full)
    }

    /// Removes entry `id`, and its group if it was the group's last entry.
    /// Charging it afterwards is ignored, so it may be removed while it
    /// runs.
    pub fn remove(&mut self, id: DomainId) -> Result<(), SchedError> {
        let index = self.find(id).ok_or(SchedError::NotFound)?;
        self.leave_group(index);
        self.entries.swap_remove(index);
        Ok(())
    }

    /// Puts entry `id` in `group`, out of the group it was in (forgotten
    /// if the entry was its last). A group new to the scheduler takes the
    /// entry's own weight and cap. From the next credit grant the entry
    /// shares the group's weight; the group's cap applies at once, to the
    /// runs picked from now on. `Full`: the group is new and no more groups
    /// fit (never, while each group holds an entry); nothing changed then.
    pub fn set_group(&mut self, id: DomainId, group: u32) -> Result<(), SchedError> {
        let index = self.find(id).ok_or(SchedError::NotFound)?;
        let old = self.entries[index].group;
        if old == Some(group) {
            return Ok(());
        }
        let frees_a_group = old.is_some_and(|old| self.members(old) == 1);
        if self.find_group(group).is_none() && self.groups.is_full() && !frees_a_group {
            return Err(SchedError::Full);
        }
        self.leave_group(index);
        if self.find_group(group).is_none() {
            let entry = &self.entries[index];
            let new_group =
                Group { id: group, weight: entry.weight, cap_percent: entry.cap_percent, used_this_period: 0 };
            self.groups.try_push(new_group).map_err(|_| SchedError::Full)?;
        }
        self.entries[index].group = Some(group);
        Ok(())
    }

    /// Sets `group`'s weight (`MIN_WEIGHT..=MAX_WEIGHT`), shared by all its
    /// entries, and cap (percent of one CPU for all its entries together,
    /// 0 = none, at most `MAX_CAP_PERCENT` times its number of entries: 150
    /// is one and a half CPUs). The weight is checked first, then the
    /// group, then the cap against the group's entries. The cap applies at
    /// once; the weight from the next credit grant. A cap left above what
    /// the group's entries can use, when entries leave, does no harm.
    pub fn set_group_params(&mut self, group: u32, weight: u32, cap_percent: u32) -> Result<(), SchedError> {
        check_weight(weight)?;
        let index = self.find_group(group).ok_or(SchedError::NotFound)?;
        let most = u64::from(MAX_CAP_PERCENT) * self.members(group) as u64;
        if u64::from(cap_percent) > most {
            return Err(SchedError::InvalidCap);
        }
        let group = &mut self.groups[index];
        group.weight = weight;
        group.cap_percent = cap_percent;
        Ok(())
    }

    /// Sets the CPUs entry `id` may run on: bit `i` of `cpus` for CPU `i`
    /// (not 0; the argument is checked before the id). It applies from the
    /// next `pick`: a run under way is not cut short. A mask naming only
    /// CPUs the machine lacks keeps the entry from running at all.
    pub fn set_affinity(&mut self, id: DomainId, cpus: u64) -> Result<(), SchedError> {
        if cpus == 0 {
            return Err(SchedError::InvalidAffinity);
        }
        let index = self.find(id).ok_or(SchedError::NotFound)?;
        self.entries[index].affinity = cpus;
        Ok(())
    }

    /// Sets entry `id`'s runnable state and affinity (ignored if 0) from
    /// snapshot number `snapshot` of its vCPU, unless a later one (a
    /// higher number) was applied already. Snapshots are taken under the
    /// vCPU's domain's lock and numbered there, so the numbers follow the
    /// domain's changes; they are applied later, in any order, under the
    /// scheduler's: an older snapshot never overwrites a newer (a wake-up
    /// is not undone by a stale "blocked"). Unknown ids are ignored.
    pub fn apply_snapshot(&mut self, id: DomainId, runnable: bool, affinity: u64, snapshot: u64) {
        let Some(index) = self.find(id) else { return };
        if snapshot <= self.entries[index].snapshot {
            return;
        }
        self.entries[index].snapshot = snapshot;
        if affinity != 0 {
            self.entries[index].affinity = affinity;
        }
        self.set_runnable(id, runnable);
    }

    /// Marks entry `id` runnable (it wants the CPU) or blocked. Unknown ids
    /// are ignored. A blocked entry that becomes runnable counts as woken,
    /// and is granted credit if it has had none for this period.
    pub fn set_runnable(&mut self, id: DomainId, runnable: bool) {
        let Some(index) = self.find(id) else { return };
        let entry = &mut self.entries[index];
        let wakes = runnable && !entry.runnable;
        entry.runnable = runnable;
        if wakes {
            entry.woken = true;
            entry.active = true;
            // Before the first period starts nobody has credit yet: the
            // first grants, at the end of that period, treat all alike.
            if entry.grant.is_none() && self.period_start.is_some() {
                entry.grant = Some(0);
                self.share_period_again();
            }
        }
    }

    /// Which entry CPU `cpu` should run now, and for how many TSC ticks at
    /// most: until the end of its slice, of its group's cap budget in this
    /// period, or of the period, whichever is first (always at least 1).
    /// The entry is running until it is [charged](Self::charge). `None`: no
    /// entry allowed on `cpu` is runnable, not running and within its
    /// group's cap (always for a `cpu` beyond `MAX_CPUS`); the caller idles
    /// until [`next_event`](Self::next_event) or an interrupt.
    pub fn pick(&mut self, now: u64, cpu: u32) -> Option<(DomainId, u64)> {
        self.advance(now);
        let period_end = self.period_end()?;
        let cpu_bit = 1u64.checked_shl(cpu).unwrap_or(0);
        // The best eligible entry of this CPU's queue, and of the others'.
        let mut best: [Option<usize>; 2] = [None; 2];
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.runnable && entry.running.is_none() && entry.affinity & cpu_bit != 0 && self.cap_left(index) > 0 {
                let queue = &mut best[usize::from(entry.home != Some(cpu))];
                if queue.is_none_or(|other| self.entries[other].order() <= entry.order()) {
                    *queue = Some(index);
                }
            }
        }
        let index = match best {
            [Some(own), Some(other)] if self.entries[other].beats(&self.entries[own], self.slice_tsc) => other,
            [Some(own), _] => own,
            [None, other] => other?,
        };
        self.picks += 1;
        // `advance` left `now` before the period's end, so every term is at
        // least 1 (another CPU's clock may lag `period_start` a little).
        let limit = self.slice_tsc.min(period_end - now).min(self.cap_left(index));
        // Charged now, so that the run counts against this period even if
        // another CPU starts the next one before this run is charged.
        self.consume(index, limit);
        let entry = &mut self.entries[index];
        entry.last_pick = self.picks;
        entry.woken = false;
        entry.ran_this_period = true;
        entry.running = Some((limit, period_end));
        entry.home = Some(cpu);
        Some((entry.id, limit))
    }

    /// Charges `ran_tsc` ticks to entry `id`, which ran until `now`, and
    /// ends its run. Ids that are unknown or not running are ignored. The
    /// run counts against the period it was picked in, even when `now` lies
    /// in a later one; only if another CPU started a later period meanwhile
    /// does the difference from the limit fall in that later period: ticks
    /// beyond it count against it, ticks left of it go back to the credit
    /// but not to that period's cap budget.
    pub fn charge(&mut self, id: DomainId, ran_tsc: u64, now: u64) {
        if let Some(index) = self.find(id)
            && let Some((charged, picked_in)) = self.entries[index].running.take()
        {
            if ran_tsc >= charged {
                self.consume(index, ran_tsc - charged);
            } else {
                // Ticks left of a limit charged to an earlier period go back
                // to the credit only: the cap's usage of this period does
                // not hold them (another entry of the group may have run).
                let same_period = self.period_end() == Some(picked_in);
                self.refund(index, charged - ran_tsc, same_period);
            }
        }
        self.advance(now);
    }

    /// When a runnable entry held back by its group's cap becomes eligible
    /// again: the start of the next period (or `now`, if that has passed).
    /// `None` when no runnable entry is capped out.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        let period_end = self.period_end()?;
        (0..self.entries.len())
            .any(|index| self.entries[index].runnable && self.cap_left(index) == 0)
            .then_some(period_end.max(now))
    }

    /// Index of entry `id` in `entries`.
    fn find(&self, id: DomainId) -> Option<usize> {
        self.entries.iter().position(|entry| entry.id == id)
    }

    /// Index of `group` in `groups`.
    fn find_group(&self, group: u32) -> Option<usize> {
        self.groups.iter().position(|candidate| candidate.id == group)
    }

    /// Index in `groups` of the group of entry `index`; `None`: it is alone.
    fn group_index(&self, index: usize) -> Option<usize> {
        self.entries[index].group.and_then(|group| self.find_group(group))
    }

    /// Number of entries in `group`.
    fn members(&self, group: u32) -> usize {
        self.entries.iter().filter(|entry| entry.group == Some(group)).count()
    }

    /// Takes entry `index` out of its group, and forgets the group if the
    /// entry was its last.
    fn leave_group(&mut self, index: usize) {
        let Some(group) = self.entries[index].group.take() else { return };
        if self.members(group) == 0
            && let Some(group_index) = self.find_group(group)
        {
            self.groups.swap_remove(group_index);
        }
    }

    /// Ticks entry `index` may still run in this period under its cap, or
    /// its group's (`u64::MAX` without a cap).
    fn cap_left(&self, index: usize) -> u64 {
        let entry = &self.entries[index];
        match self.group_index(index) {
            Some(group) => {
                let group = &self.groups[group];
                cap_left(group.cap_percent, group.used_this_period, self.period_tsc)
            }
            None => cap_left(entry.cap_percent, entry.used_this_period, self.period_tsc),
        }
    }

    /// Adds `ticks` to the run of entry `index` being charged: to the
    /// credit it consumes and to the cap's usage (its own and its group's).
    fn consume(&mut self, index: usize, ticks: u64) {
        if let Some(group) = self.group_index(index) {
            let group = &mut self.groups[group];
            group.used_this_period = group.used_this_period.saturating_add(ticks);
        }
        let entry = &mut self.entries[index];
        entry.credit = entry.credit.saturating_sub(saturate_i64(ticks));
        entry.used_this_period = entry.used_this_period.saturating_add(ticks);
    }

    /// Takes `ticks` back from the run of entry `index` being charged (it
    /// ran less than it was charged in advance): from the credit it
    /// consumed and, if `from_usage`, from the cap's usage.
    fn refund(&mut self, index: usize, ticks: u64, from_usage: bool) {
        let entry = &mut self.entries[index];
        entry.credit = entry.credit.saturating_add(saturate_i64(ticks));
        if !from_usage {
            return;
        }
        entry.used_this_period = entry.used_this_period.saturating_sub(ticks);
        if let Some(group) = self.group_index(index) {
            let group = &mut self.groups[group];
            group.used_this_period = group.used_this_period.saturating_sub(ticks);
        }
    }

    /// TSC at which the current period ends.
    fn period_end(&self) -> Option<u64> {
        self.period_start.map(|start| start.saturating_add(self.period_tsc))
    }

    /// Starts the first period at `now`, or closes the current one if `now`
    /// lies beyond it. Periods skipped entirely (nobody asked the scheduler
    /// during them) are not accounted one by one: the clamp on carried credit
    /// would make their grants nearly irrelevant anyway.
    fn advance(&mut self, now: u64) {
        let Some(start) = self.period_start else {
            self.period_start = Some(now);
            return;
        };
        let elapsed_periods = now.saturating_sub(start) / self.period_tsc;
        if elapsed_periods == 0 {
            return;
        }
        self.period_start = Some(start + elapsed_periods * self.period_tsc);
        self.grant_credit();
    }

    /// Shares the current period again among the entries taking part in it
    /// (those with a grant), adjusting each one's credit by the change in
    /// its grant: when an entry joins, or the capacity changes.
    // Out of line: its arrays (one slot per entry) are on the stack only
    // while it runs, not in every caller's frame.
    #[inline(never)]
    fn share_period_again(&mut self) {
        let mut taking_part = [false; N];
        for (takes_part, entry) in taking_part.iter_mut().zip(&self.entries) {
            *takes_part = entry.grant.is_some();
        }
        let grants = self.water_fill(&taking_part);
        for (entry, (grant, order_weight)) in self.entries.iter_mut().zip(grants) {
            if let Some(old_grant) = entry.grant {
                entry.credit = entry.credit.saturating_add(grant - old_grant);
                entry.grant = Some(grant);
                entry.order_weight = order_weight;
            }
        }
    }

    /// The accounting at a period boundary: clamp what each entry carries
    /// over, share the new period among the entries active in the old one,
    /// and reset the per-period state.
    // Out of line: its arrays (one slot per entry) are on the stack only
    // while it runs, not in every caller's frame.
    #[inline(never)]
    fn grant_credit(&mut self) {
        let carry = saturate_i64(self.slice_tsc);
        let mut taking_part = [false; N];
        for (takes_part, entry) in taking_part.iter_mut().zip(&self.entries) {
            *takes_part = entry.active;
        }
        let grants = self.water_fill(&taking_part);
        for (entry, (grant, order_weight)) in self.entries.iter_mut().zip(grants) {
            entry.credit = entry.credit.clamp(-carry, carry);
            entry.grant = None;
            entry.order_weight = None;
            if entry.active {
                entry.credit = entry.credit.saturating_add(grant);
                entry.grant = Some(grant);
                entry.order_weight = order_weight;
            }
            entry.active = entry.runnable;
            entry.ran_this_period = false;
            entry.used_this_period = 0;
        }
        for group in &mut self.groups {
            group.used_this_period = 0;
        }
    }

    /// The credit each entry marked in `taking_part` is granted for a
    /// period (0 for the others), with its `order_weight`. The capacity is
    /// shared among the groups taking part (an entry alone counting as a
    /// group) by weight, but at most up to each group's ceiling: those
    /// whose share reaches their ceiling get it, and the rest of the
    /// capacity is shared again among the others; this only raises the
    /// others' shares, so it ends after at most one round per group. A
    /// group's grant is split evenly among its entries taking part.
    // Out of line: its arrays (one slot per entry) are on the stack only
    // while it runs, not in every caller's frame.
    #[inline(never)]
    fn water_fill(&self, taking_part: &[bool; N]) -> [(i64, Option<u64>); N] {
        let period = u128::from(self.period_tsc);
        // Each group taking part is led by its first entry taking part; the
        // group's figures are kept at the leader's index.
        let mut leader = [0; N];
        let mut members = [0u32; N];
        for index in (0..self.entries.len()).filter(|&index| taking_part[index]) {
            let group = self.entries[index].group;
            leader[index] = match group {
                Some(_) => {
                    (0..index).find(|&other| taking_part[other] && self.entries[other].group == group).unwrap_or(index)
                }
                None => index,
            };
            members[leader[index]] += 1;
        }
        let leads = |index: &usize| taking_part[*index] && leader[*index] == *index;
        let group_weight = |index: usize| {
            u128::from(self.group_index(index).map_or(self.entries[index].weight, |group| self.groups[group].weight))
        };
        // One period per entry and, in a group, the cap budget.
        let ceiling = |index: usize| match self.group_index(index) {
            Some(group) => {
                let cap = cap_left(self.groups[group].cap_percent, 0, self.period_tsc);
                (u128::from(members[index]) * period).min(u128::from(cap))
            }
            None => period,
        };
        let mut full = [false; N];
        let mut capacity = u128::from(self.cpus) * period;
        // Capacity and weight of the last round that had groups left: the
        // rate at which weight earns credit.
        let mut rate = (capacity, 1);
        loop {
            let unfilled = |index: &usize| leads(index) && !full[*index];
            let total_weight: u128 = (0..self.entries.len()).filter(unfilled).map(group_weight).sum();
            if total_weight == 0 {
                break;
            }
            rate = (capacity, total_weight);
            // A share of capacity × weight / total_weight reaches the ceiling.
            let fills: ArrayVec<usize, N> = (0..self.entries.len())
                .filter(unfilled)
                .filter(|&index| capacity * group_weight(index) >= ceiling(index) * total_weight)
                .collect();
            if fills.is_empty() {
                break;
            }
            for &index in &fills {
                full[index] = true;
                capacity = capacity.saturating_sub(ceiling(index));
            }
        }
        let (rate_capacity, rate_weight) = rate;
        core::array::from_fn(|index| {
            if !taking_part[index] {
                return (0, None);
            }
            let lead = leader[index];
            let grouped = self.group_index(index).is_some();
            // The entry's even part of its group's weight.
            let weight = (group_weight(lead) << 16) / u128::from(members[lead].max(1));
            if full[lead] {
                // At most one period, since the ceiling is at most one per
                // entry; at most the entry's part of the weight, since the
                // group's share reached the ceiling.
                let grant = ceiling(lead) / u128::from(members[lead].max(1));
                let order_weight = ((grant * rate_weight) << 16) / rate_capacity.max(1);
                (saturate_i64(grant as u64), Some(order_weight.min(weight) as u64))
            } else {
                // Below a period, since the group was not filled.
                let grant = rate_capacity * group_weight(lead) / rate_weight / u128::from(members[lead].max(1));
                (saturate_i64(grant as u64), grouped.then_some(weight as u64))
            }
        })
    }
}

/// Checks a weight against `MIN_WEIGHT..=MAX_WEIGHT`.
fn check_weight(weight: u32) -> Result<(), SchedError> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) { Ok(()) } else { Err(SchedError::InvalidWeight) }
}

/// Ticks still to run in this period under a cap of `cap_percent` of one
/// CPU after `used` ticks (`u64::MAX` without a cap). A cap's budget is
/// rounded up, so it is never zero.
fn cap_left(cap_percent: u32, used: u64, period_tsc: u64) -> u64 {
    if cap_percent == 0 {
        return u64::MAX;
    }
    let budget = (u128::from(period_tsc) * u128::from(cap_percent)).div_ceil(100);
    u64::try_from(budget).unwrap_or(u64::MAX).saturating_sub(used)
}

/// `value` as an `i64`, saturating at `i64::MAX`.
fn saturate_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An entry's own weight and cap (hv always groups its entries; the
    /// rules for an entry alone are tested through these).
    impl<const N: usize> Scheduler<N> {
        /// Sets entry `id`'s own weight (`MIN_WEIGHT..=MAX_WEIGHT`) and cap
        /// (`0..=MAX_CAP_PERCENT` percent of one CPU, 0 = none), which apply
        /// while it is in no group. Arguments are checked before the id. The
        /// cap applies at once; the weight from the next credit grant.
        fn set_params(&mut self, id: DomainId, weight: u32, cap_percent: u32) -> Result<(), SchedError> {
            check_weight(weight)?;
            if cap_percent > MAX_CAP_PERCENT {
                return Err(SchedError::InvalidCap);
            }
            let index = self.find(id).ok_or(SchedError::NotFound)?;
            let entry = &mut self.entries[index];
            entry.weight = weight;
            entry.cap_percent = cap_percent;
            Ok(())
        }

        /// The number of CPUs sharing the queue.
        fn cpus(&self) -> u32 {
            self.cpus
        }

        /// The group entry `id` is in (`None`: alone, or no such entry).
        fn group_of(&self, id: DomainId) -> Option<u32> {
            self.find(id).and_then(|index| self.entries[index].group)
        }

        /// `group`'s `(weight, cap_percent)`; `None` when no entry is in it.
        fn group_params(&self, group: u32) -> Option<(u32, u32)> {
            self.find_group(group).map(|index| (self.groups[index].weight, self.groups[index].cap_percent))
        }

        /// The CPUs entry `id` may run on (bit `i` for CPU `i`).
        fn affinity(&self, id: DomainId) -> Option<u64> {
            self.find(id).map(|index| self.entries[index].affinity)
        }

        /// Entry `id`'s own `(weight, cap_percent)` (in a group, the group's
        /// [apply](Self::group_params) instead).
        fn params(&self, id: DomainId) -> Option<(u32, u32)> {
            self.find(id).map(|index| (self.entries[index].weight, self.entries[index].cap_percent))
        }
    }

    #[test]
    fn an_older_snapshot_never_overwrites_a_newer_one() {
        let mut scheduler: Scheduler<4> = Scheduler::new(10 * SLICE, SLICE);
        scheduler.add(1, 256).unwrap();
        // Snapshot 5 (runnable, CPU 1) arrives first, then an older one,
        // 3, taken before the wake-up (blocked, CPU 0): it is dropped.
        scheduler.apply_snapshot(1, true, 0b10, 5);
        scheduler.apply_snapshot(1, false, 0b01, 3);
        assert_eq!(scheduler.affinity(1), Some(0b10));
        assert_eq!(scheduler.pick(0, 1).map(|(id, _)| id), Some(1), "still runnable, on CPU 1");
        scheduler.charge(1, 10, 10);
        // A newer one applies; affinity 0 leaves the affinity alone; an
        // equal number is not newer.
        scheduler.apply_snapshot(1, false, 0, 6);
        assert_eq!(scheduler.affinity(1), Some(0b10));
        assert_eq!(scheduler.pick(20, 1), None, "blocked");
        scheduler.apply_snapshot(1, true, 0b01, 6);
        assert_eq!(scheduler.pick(30, 0), None, "snapshot 6 again: not newer");
        scheduler.apply_snapshot(1, true, 0b01, 7);
        assert_eq!(scheduler.pick(40, 0).map(|(id, _)| id), Some(1));
        // Unknown ids are ignored.
        scheduler.apply_snapshot(9, true, 1, 8);
    }

    const SLICE: u64 = 1_000;
    const PERIOD: u64 = 30 * SLICE;

    /// A simulated CPU: picks, "runs" domains, charges them, advances time.
    struct Simulation {
        scheduler: Scheduler<8>,
        now: u64,
        /// TSC ticks each domain ran.
        used: HashMap<DomainId, u64>,
        /// TSC ticks nothing ran.
        idle: u64,
    }

    impl Simulation {
        fn new(domains: &[(DomainId, u32)]) -> Self {
            let mut scheduler = Scheduler::new(PERIOD, SLICE);
            for &(id, weight) in domains {
                scheduler.add(id, weight).unwrap();
                scheduler.set_runnable(id, true);
            }
            // Start at an arbitrary, unaligned TSC.
            Simulation { scheduler, now: 123_456_789, used: HashMap::new(), idle: 0 }
        }

        /// Runs every domain it picks for its whole limit (spinners) until
        /// `duration` ticks have passed.
        fn run_for(&mut self, duration: u64) {
            let end = self.now + duration;
            while self.now < end {
                self.step(end);
            }
        }

        /// One pick: runs the domain for its limit (or until `end`), or idles.
        fn step(&mut self, end: u64) -> Option<DomainId> {
            match self.scheduler.pick(self.now, 0) {
                Some((id, limit)) => {
                    assert!((1..=SLICE).contains(&limit), "limit {limit}");
                    let ran = limit.min(end - self.now);
                    self.now += ran;
                    self.scheduler.charge(id, ran, self.now);
                    *self.used.entry(id).or_default() += ran;
                    Some(id)
                }
                None => {
                    let wake = self.scheduler.next_event(self.now).unwrap_or(end).min(end);
                    assert!(wake > self.now, "idle without progress");
                    self.idle += wake - self.now;
                    self.now = wake;
                    None
                }
            }
        }

        fn used(&self, id: DomainId) -> u64 {
            self.used.get(&id).copied().unwrap_or(0)
        }

        fn reset_counters(&mut self) {
            self.used.clear();
            self.idle = 0;
        }
    }

    /// `part / whole` in percent.
    fn percent(part: u64, whole: u64) -> f64 {
        part as f64 * 100.0 / whole as f64
    }

    /// Several simulated CPUs sharing one scheduler, stepped in time order
    /// (the lowest index first at equal times). Each CPU runs the domain it
    /// picks for its whole limit (spinners), then charges it and picks
    /// again. A CPU that finds nothing idles until the scheduler's next
    /// event, or until another CPU charges a domain (the IPI hv sends then).
    struct Machine {
        scheduler: Scheduler<8>,
        now: u64,
        cpus: Vec<Cpu>,
        /// TSC ticks each domain ran on each CPU.
        used: HashMap<(DomainId, u32), u64>,
        /// The CPU each domain last ran on, and how often it ran on
        /// another CPU than the one before (migrations).
        last_cpu: HashMap<DomainId, u32>,
        moves: HashMap<DomainId, u64>,
    }

    /// One CPU of a [`Machine`].
    #[derive(Clone, Copy)]
    struct Cpu {
        /// When the CPU next calls the scheduler; `None`: idle until kicked.
        at: Option<u64>,
        /// The domain it runs, and since when.
        running: Option<(DomainId, u64)>,
    }

    impl Machine {
        fn new(cpus: u32, domains: &[(DomainId, u32)]) -> Self {
            let mut scheduler = Scheduler::new(PERIOD, SLICE);
            scheduler.set_cpus(cpus);
            for &(id, weight) in domains {
                scheduler.add(id, weight).unwrap();
                scheduler.set_runnable(id, true);
            }
            let cpu = Cpu { at: None, running: None };
            Machine {
                scheduler,
                now: 123_456_789,
                cpus: vec![cpu; cpus as usize],
                used: HashMap::new(),
                last_cpu: HashMap::new(),
                moves: HashMap::new(),
            }
        }

        /// Runs the CPUs until `duration` ticks have passed; runs under way
        /// are cut off and charged at the end.
        fn run_for(&mut self, duration: u64) {
            let end = self.now + duration;
            // The CPUs start out of step, as real ones do.
            for (index, cpu) in self.cpus.iter_mut().enumerate() {
                cpu.at = Some(self.now + index as u64 * (SLICE / 3 + 7));
            }
            while let Some((index, at)) = self.next_cpu()
                && at < end
            {
                self.step(index, at, end);
            }
            for index in 0..self.cpus.len() {
                self.charge(index, end);
            }
            self.now = end;
        }

        /// The CPU that calls the scheduler first, and when.
        fn next_cpu(&self) -> Option<(usize, u64)> {
            (0..self.cpus.len())
                .filter_map(|index| Some((index, self.cpus[index].at?)))
                .min_by_key(|&(index, at)| (at, index))
        }

        /// CPU `index` charges the domain it ran until `at`, if any, and
        /// kicks the idle CPUs: the domain may be theirs to run now.
        fn charge(&mut self, index: usize, at: u64) {
            let Some((id, since)) = self.cpus[index].running.take() else { return };
            self.scheduler.charge(id, at - since, at);
            *self.used.entry((id, index as u32)).or_default() += at - since;
            for cpu in &mut self.cpus {
                if cpu.running.is_none() {
                    cpu.at = Some(at);
                }
            }
        }

        /// CPU `index`, at time `at`: charges its run and picks the next one.
        fn step(&mut self, index: usize, at: u64, end: u64) {
            self.charge(index, at);
            let cpu = index as u32;
            match self.scheduler.pick(at, cpu) {
                Some((id, limit)) => {
                    assert!((1..=SLICE).contains(&limit), "limit {limit}");
                    let elsewhere =
                        self.cpus.iter().position(|other| other.running.is_some_and(|(other, _)| other == id));
                    assert_eq!(elsewhere, None, "domain {id} picked on CPU {cpu} while it runs on another");
                    assert_ne!(self.scheduler.affinity(id).unwrap() & 1 << cpu, 0, "domain {id} on CPU {cpu}");
                    self.cpus[index] = Cpu { at: Some(at + limit.min(end - at)), running: Some((id, at)) };
                    if self.last_cpu.insert(id, cpu).is_some_and(|last| last != cpu) {
                        *self.moves.entry(id).or_default() += 1;
                    }
                }
                None => {
                    let wake = self.scheduler.next_event(at);
                    assert!(wake.is_none_or(|wake| wake > at), "idle without progress");
                    self.cpus[index].at = wake;
                }
            }
        }

        /// TSC ticks domain `id` ran, on all CPUs.
        fn used(&self, id: DomainId) -> u64 {
            self.used.iter().filter(|((domain, _), _)| *domain == id).map(|(_, used)| used).sum()
        }

        /// TSC ticks domain `id` ran on CPU `cpu`.
        fn used_on(&self, id: DomainId, cpu: u32) -> u64 {
            self.used.get(&(id, cpu)).copied().unwrap_or(0)
        }

        /// How many CPUs' worth of time each domain got over the last
        /// `duration` ticks (after a warm-up of a few periods).
        fn cpu_shares(&mut self, ids: &[DomainId], duration: u64) -> Vec<f64> {
            self.run_for(3 * PERIOD);
            self.used.clear();
            self.moves.clear();
            self.run_for(duration);
            ids.iter().map(|&id| self.used(id) as f64 / duration as f64).collect()
        }
    }

    /// Asserts that `shares` are within `tolerance` (relative) of `expected`.
    fn assert_shares(shares: &[f64], expected: &[f64], tolerance: f64) {
        for (share, expected) in shares.iter().zip(expected) {
            assert!((share / expected - 1.0).abs() <= tolerance, "shares {shares:?}, expected {expected:?}");
        }
    }

    #[test]
    fn equal_weights_share_evenly() {
        let mut simulation = Simulation::new(&[(1, 256), (2, 256)]);
        simulation.run_for(100 * PERIOD);
        let share = percent(simulation.used(1), 100 * PERIOD);
        assert!((45.0..=55.0).contains(&share), "domain 1 got {share}%");
        // In fact it is even to within a slice.
        assert!(simulation.used(1).abs_diff(simulation.used(2)) <= SLICE);
        assert_eq!(simulation.idle, 0);
    }

    #[test]
    fn equal_domains_alternate() {
        let mut simulation = Simulation::new(&[(1, 256), (2, 256), (3, 256)]);
        let end = simulation.now + 10 * PERIOD;
        let order: Vec<_> = (0..30).map(|_| simulation.step(end).unwrap()).collect();
        for window in order.chunks(3) {
            let mut sorted = window.to_vec();
            sorted.sort();
            assert_eq!(sorted, [1, 2, 3], "order {order:?}");
        }
    }

    #[test]
    fn weights_one_to_three() {
        let mut simulation = Simulation::new(&[(1, 100), (2, 300)]);
        simulation.run_for(100 * PERIOD);
        let share = percent(simulation.used(1), 100 * PERIOD);
        assert!((20.0..=30.0).contains(&share), "weight 1 got {share}%");
        assert!((24.0..=26.0).contains(&share), "weight 1 got {share}%");
        assert_eq!(simulation.used(1) + simulation.used(2), 100 * PERIOD);
    }

    #[test]
    fn shares_follow_weights_among_several() {
        let weights = [(1, 100), (2, 200), (3, 300), (4, 400)];
        let mut simulation = Simulation::new(&weights);
        simulation.run_for(200 * PERIOD);
        for (id, weight) in weights {
            let share = percent(simulation.used(id), 200 * PERIOD);
            let expected = weight as f64 / 10.0;
            assert!((share - expected).abs() < 1.0, "domain {id}: {share}% for {expected}%");
        }
    }

    #[test]
    fn cap_holds_when_alone() {
        let mut simulation = Simulation::new(&[(1, 256)]);
        simulation.scheduler.set_params(1, 256, 20).unwrap();
        // Align to a period start so whole periods are measured.
        simulation.run_for(PERIOD);
        let start = simulation.scheduler.period_start.unwrap();
        simulation.run_for(start + PERIOD - simulation.now);
        simulation.reset_counters();
        let mut idles = 0;
        let end = simulation.now + 100 * PERIOD;
        while simulation.now < end {
            if simulation.step(end).is_none() {
                idles += 1;
                // The idle lasts exactly to the next period start.
                assert_eq!((simulation.now - start) % PERIOD, 0);
            }
        }
        assert_eq!(idles, 100);
        assert_eq!(simulation.used(1), 100 * PERIOD / 5);
        assert_eq!(simulation.idle, 100 * PERIOD * 4 / 5);
    }

    #[test]
    fn capped_domain_leaves_the_rest_to_others() {
        let mut simulation = Simulation::new(&[(1, 1000), (2, 100)]);
        simulation.scheduler.set_params(1, 1000, 20).unwrap();
        simulation.run_for(100 * PERIOD);
        assert!(simulation.used(1) <= 100 * PERIOD / 5 + SLICE);
        assert!(percent(simulation.used(1), 100 * PERIOD) >= 19.0);
        assert_eq!(simulation.idle, 0, "uncapped domain 2 uses the idle time");
        // Each period on its own stays within the cap.
        for _ in 0..10 {
            simulation.reset_counters();
            simulation.run_for(PERIOD);
            assert!(simulation.used(1) <= PERIOD / 5 + SLICE, "{}", simulation.used(1));
        }
    }

    #[test]
    fn uncapped_domain_uses_idle_time_beyond_its_share() {
        // Domain 2 exists but is blocked: domain 1 gets the whole CPU.
        let mut simulation = Simulation::new(&[(1, 1), (2, 65535)]);
        simulation.scheduler.set_runnable(2, false);
        simulation.run_for(10 * PERIOD);
        assert_eq!(simulation.used(1), 10 * PERIOD);
        assert_eq!(simulation.idle, 0);
    }

    /// Two spinners (domains 1 and 2) and an I/O-like domain 3 that runs
    /// for up to `burst_max` ticks, blocks, and wakes a pseudo-random while
    /// later (an interrupt, a ring notification). Returns the longest time
    /// from a wake-up of domain 3 to its pick, and the CPU time each got.
    fn io_latency(weights: [u32; 3], burst_max: u64) -> (u64, [u64; 3]) {
        let mut scheduler = Scheduler::<4>::new(PERIOD, SLICE);
        for (id, weight) in (1..).zip(weights) {
            scheduler.add(id, weight).unwrap();
            scheduler.set_runnable(id, id != 3);
        }
        let mut now = 5_000_000u64;
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        let mut wake_at = Some(now + 2 * SLICE + 1);
        let mut woke_at = 0;
        let mut worst = 0;
        let mut wakes = 0;
        let mut used = [0; 3];
        let end = now + 100 * PERIOD;
        while now < end {
            if wake_at.is_some_and(|at| at <= now) {
                woke_at = wake_at.take().unwrap();
                scheduler.set_runnable(3, true);
                wakes += 1;
            }
            let (id, limit) = scheduler.pick(now, 0).unwrap();
            let ran = if id == 3 {
                worst = worst.max(now - woke_at);
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                scheduler.set_runnable(3, false);
                wake_at = Some(now + 50 + random % (4 * SLICE));
                limit.min(1 + random % burst_max)
            } else {
                limit
            };
            now += ran;
            scheduler.charge(id, ran, now);
            used[id as usize - 1] += ran;
        }
        assert!(wakes > 1000, "{wakes} wakes");
        (worst, used)
    }

    #[test]
    fn io_domain_is_picked_within_a_slice() {
        for (weights, burst_max) in [([512, 256, 256], 150), ([256, 256, 256], 500), ([1000, 1000, 100], 60)] {
            let (worst, used) = io_latency(weights, burst_max);
            assert!(worst <= SLICE, "{weights:?}: woken domain waited {worst} ticks");
            // The spinners share the rest by weight.
            let ratio = used[0] as f64 / used[1] as f64;
            let expected = weights[0] as f64 / weights[1] as f64;
            assert!((ratio / expected - 1.0).abs() < 0.05, "{weights:?}: spinners got {used:?}");
        }
    }

    #[test]
    fn remove_and_add_while_running() {
        let mut simulation = Simulation::new(&[(1, 256), (2, 256)]);
        simulation.run_for(3 * PERIOD + 17);
        // Domain 2 is removed while it runs; charging it afterwards is ignored.
        let (id, limit) = loop {
            let (id, limit) = simulation.scheduler.pick(simulation.now, 0).unwrap();
            if id == 2 {
                break (id, limit);
            }
            simulation.now += limit;
            simulation.scheduler.charge(id, limit, simulation.now);
        };
        simulation.scheduler.remove(2).unwrap();
        simulation.now += limit;
        simulation.scheduler.charge(id, limit, simulation.now);
        assert_eq!(simulation.scheduler.remove(2), Err(SchedError::NotFound));
        simulation.reset_counters();
        simulation.run_for(5 * PERIOD);
        assert_eq!(simulation.used(1), 5 * PERIOD);
        // Domain 3 arrives, and domain 2 comes back, while 1 runs.
        let (running, _) = simulation.scheduler.pick(simulation.now, 0).unwrap();
        assert_eq!(running, 1);
        simulation.scheduler.add(3, 256).unwrap();
        simulation.scheduler.set_runnable(3, true);
        simulation.scheduler.add(2, 256).unwrap();
        simulation.scheduler.set_runnable(2, true);
        simulation.now += SLICE;
        simulation.scheduler.charge(1, SLICE, simulation.now);
        simulation.run_for(2 * PERIOD);
        simulation.reset_counters();
        simulation.run_for(60 * PERIOD);
        for id in 1..=3 {
            let share = percent(simulation.used(id), 60 * PERIOD);
            assert!((share - 100.0 / 3.0).abs() < 2.0, "domain {id}: {share}%");
        }
    }

    #[test]
    fn invalid_weight_and_cap_are_rejected() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        assert_eq!(scheduler.add(1, 0), Err(SchedError::InvalidWeight));
        assert_eq!(scheduler.add(1, 65536), Err(SchedError::InvalidWeight));
        scheduler.add(1, 1).unwrap();
        scheduler.add(2, 65535).unwrap();
        assert_eq!(scheduler.set_params(1, 0, 0), Err(SchedError::InvalidWeight));
        assert_eq!(scheduler.set_params(1, 70000, 0), Err(SchedError::InvalidWeight));
        assert_eq!(scheduler.set_params(1, 256, 101), Err(SchedError::InvalidCap));
        assert_eq!(scheduler.set_params(9, 256, 0), Err(SchedError::NotFound));
        assert_eq!(scheduler.set_params(9, 0, 0), Err(SchedError::InvalidWeight), "arguments first");
        assert_eq!(scheduler.params(1), Some((1, 0)));
        scheduler.set_params(1, 300, 100).unwrap();
        assert_eq!(scheduler.params(1), Some((300, 100)));
        assert_eq!(scheduler.params(9), None);
    }

    #[test]
    fn full_and_duplicate_are_refused() {
        let mut scheduler = Scheduler::<3>::new(PERIOD, SLICE);
        for id in 0..3 {
            scheduler.add(id, 256).unwrap();
        }
        assert_eq!(scheduler.add(1, 256), Err(SchedError::Exists));
        assert_eq!(scheduler.add(3, 256), Err(SchedError::Full));
        scheduler.remove(0).unwrap();
        scheduler.add(3, 256).unwrap();
        assert_eq!(scheduler.params(0), None);
    }

    #[test]
    fn nothing_runnable_means_idle_without_event() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        assert_eq!(scheduler.pick(0, 0), None);
        assert_eq!(scheduler.next_event(0), None);
        scheduler.add(1, 256).unwrap();
        assert_eq!(scheduler.pick(10, 0), None, "added domains start blocked");
        scheduler.set_runnable(7, true); // unknown: ignored
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(20, 0), Some((1, SLICE)));
        scheduler.charge(1, SLICE, 20 + SLICE);
        scheduler.set_runnable(1, false);
        assert_eq!(scheduler.pick(20 + SLICE, 0), None);
        assert_eq!(scheduler.next_event(20 + SLICE), None);
    }

    #[test]
    fn next_event_is_the_next_period_start() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.add(1, 256).unwrap();
        scheduler.set_params(1, 256, 10).unwrap();
        scheduler.set_runnable(1, true);
        let start = 1_000_000;
        let mut now = start;
        // A 10% budget is 3 slices of this period.
        for _ in 0..3 {
            let (id, limit) = scheduler.pick(now, 0).unwrap();
            assert_eq!((id, limit), (1, SLICE));
            now += limit;
            scheduler.charge(id, limit, now);
        }
        assert_eq!(scheduler.pick(now, 0), None);
        assert_eq!(scheduler.next_event(now), Some(start + PERIOD));
        assert_eq!(scheduler.next_event(start + 2 * PERIOD), Some(start + 2 * PERIOD), "never in the past");
        assert_eq!(scheduler.pick(start + PERIOD, 0), Some((1, SLICE)));
        // A blocked capped domain needs no timer.
        scheduler.charge(1, 3 * SLICE, start + PERIOD + 3 * SLICE);
        scheduler.set_runnable(1, false);
        assert_eq!(scheduler.next_event(start + PERIOD + 3 * SLICE), None);
    }

    #[test]
    fn limit_stops_at_period_end_and_cap_budget() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.add(1, 256).unwrap();
        scheduler.set_params(1, 256, 5).unwrap(); // 1500 ticks per period
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(0, 0), Some((1, SLICE)));
        scheduler.charge(1, SLICE, SLICE);
        assert_eq!(scheduler.pick(SLICE, 0), Some((1, 500)));
        scheduler.charge(1, 500, SLICE + 500);
        assert_eq!(scheduler.pick(SLICE + 500, 0), None);
        scheduler.set_params(1, 256, 0).unwrap();
        assert_eq!(scheduler.pick(PERIOD - 300, 0), Some((1, 300)));
    }

    #[test]
    fn late_domain_gets_no_flood_of_credit() {
        // Domain 3 exists from the start but sleeps for 50 periods; domain 4
        // is added after 50 periods. Neither may take more than a fair share
        // when it starts to run.
        let mut simulation = Simulation::new(&[(1, 256), (2, 256), (3, 256)]);
        simulation.scheduler.set_runnable(3, false);
        simulation.run_for(50 * PERIOD + 7);
        simulation.scheduler.set_runnable(3, true);
        simulation.scheduler.add(4, 256).unwrap();
        simulation.scheduler.set_runnable(4, true);
        for period in 0..10 {
            simulation.reset_counters();
            simulation.run_for(PERIOD);
            for id in [3, 4] {
                let used = simulation.used(id);
                // At most one period's share, give or take the slice that
                // rounding carries over.
                assert!(used <= PERIOD / 4 + 2 * SLICE, "period {period}: domain {id} ran {used}");
                assert!(used >= SLICE.min(PERIOD / 4), "period {period}: domain {id} ran {used}");
            }
        }
    }

    #[test]
    fn waking_domain_cannot_starve_a_spinner() {
        // Domain 2 has the larger weight, blocks for a long time, then spins:
        // domain 1 keeps running in every period.
        let mut simulation = Simulation::new(&[(1, 1), (2, 65535)]);
        simulation.scheduler.set_runnable(2, false);
        simulation.run_for(20 * PERIOD);
        simulation.scheduler.set_runnable(2, true);
        for period in 0..20 {
            simulation.reset_counters();
            simulation.run_for(PERIOD);
            assert!(simulation.used(1) >= 1, "period {period}: domain 1 starved");
            assert!(simulation.used(2) >= PERIOD / 3, "period {period}: domain 2 ran {}", simulation.used(2));
            // Domain 2's wake-up took back what domain 1 had been granted
            // while alone: it gets the one run per period that every
            // runnable domain is guaranteed, and no more.
            assert!(simulation.used(1) <= SLICE, "period {period}: domain 1 ran {}", simulation.used(1));
        }
    }

    #[test]
    fn every_runnable_domain_runs_each_period() {
        let mut simulation = Simulation::new(&[(1, 65535), (2, 1), (3, 1), (4, 30000)]);
        simulation.run_for(PERIOD / 3);
        for period in 0..50 {
            simulation.reset_counters();
            simulation.run_for(PERIOD);
            for id in 1..=4 {
                assert!(simulation.used(id) > 0, "period {period}: domain {id} starved");
            }
        }
    }

    #[test]
    fn works_at_large_tsc_values() {
        let mut simulation = Simulation::new(&[(1, 256), (2, 256)]);
        simulation.now = u64::MAX - 1000 * PERIOD;
        simulation.run_for(100 * PERIOD);
        assert!(simulation.used(1).abs_diff(simulation.used(2)) <= SLICE);
    }

    #[test]
    fn random_operations_keep_the_rules() {
        // Random adds, removes, parameter changes, blocks and wakes between
        // picks. Checks: only runnable domains run, the limit respects slice,
        // period end and cap, and no capped domain exceeds its budget in any
        // period (tracked here independently).
        let mut scheduler = Scheduler::<6>::new(PERIOD, SLICE);
        let mut random = crate::test_random::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || random.next();
        // Model: id -> (cap, runnable); per-period usage by id.
        let mut model: HashMap<DomainId, (u32, bool)> = HashMap::new();
        let mut usage: HashMap<DomainId, u64> = HashMap::new();
        let mut now = 777u64;
        let mut period_start: Option<u64> = None;
        for _ in 0..20_000 {
            let id = (next() % 8) as DomainId;
            match next() % 10 {
                0 => {
                    let weight = (next() % 70_000) as u32;
                    let result = scheduler.add(id, weight);
                    let expected = if !(1..=65535).contains(&weight) {
                        Err(SchedError::InvalidWeight)
                    } else if model.contains_key(&id) {
                        Err(SchedError::Exists)
                    } else if model.len() == 6 {
                        Err(SchedError::Full)
                    } else {
                        Ok(())
                    };
                    assert_eq!(result, expected);
                    if result.is_ok() {
                        model.insert(id, (0, false));
                    }
                }
                1 => {
                    let expected = if model.remove(&id).is_some() { Ok(()) } else { Err(SchedError::NotFound) };
                    assert_eq!(scheduler.remove(id), expected);
                    usage.remove(&id);
                }
                2 => {
                    let cap = (next() % 4 * 20) as u32;
                    if scheduler.set_params(id, 1 + (next() % 1000) as u32, cap).is_ok() {
                        model.get_mut(&id).unwrap().0 = cap;
                    } else {
                        assert!(!model.contains_key(&id));
                    }
                }
                3..=4 => {
                    let runnable = next() % 3 != 0;
                    scheduler.set_runnable(id, runnable);
                    if let Some(entry) = model.get_mut(&id) {
                        entry.1 = runnable;
                    }
                }
                _ => {
                    let picked = scheduler.pick(now, 0);
                    let start = *period_start.get_or_insert(now);
                    if now >= start + PERIOD {
                        period_start = Some(start + (now - start) / PERIOD * PERIOD);
                        usage.clear();
                    }
                    let period_end = period_start.unwrap() + PERIOD;
                    match picked {
                        Some((id, limit)) => {
                            let (cap, runnable) = model[&id];
                            assert!(runnable);
                            assert!((1..=SLICE).contains(&limit) && now + limit <= period_end);
                            let ran = if next() % 4 == 0 { next() % limit } else { limit };
                            let used = usage.entry(id).or_default();
                            *used += ran;
                            if cap > 0 {
                                assert!(*used <= PERIOD * u64::from(cap) / 100, "cap {cap} exceeded");
                            }
                            now += ran;
                            scheduler.charge(id, ran, now);
                        }
                        None => {
                            // Nothing runnable is within its cap.
                            for (id, &(cap, runnable)) in &model {
                                if runnable {
                                    assert!(
                                        cap > 0 && usage.get(id).copied().unwrap_or(0) >= PERIOD * u64::from(cap) / 100
                                    );
                                }
                            }
                            now = scheduler.next_event(now).unwrap_or(now + next() % PERIOD);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn two_equal_domains_on_two_cpus_each_get_a_cpu() {
        let mut machine = Machine::new(2, &[(1, 256), (2, 256)]);
        let shares = machine.cpu_shares(&[1, 2], 100 * PERIOD);
        assert!(shares.iter().all(|&share| share >= 0.95), "shares {shares:?}");
    }

    #[test]
    fn entries_keep_to_their_cpus_queues_while_sharing_evenly() {
        // More equal spinners than CPUs: each gets its share, and moves to
        // another CPU's queue only to even out the shares (a few times a
        // period), not at every run as from one shared queue.
        for (cpus, entries) in [(2u32, 3u32), (4, 5), (2, 2), (4, 8)] {
            let ids: Vec<DomainId> = (1..=entries).collect();
            let weights: Vec<(DomainId, u32)> = ids.iter().map(|&id| (id, 256)).collect();
            let mut machine = Machine::new(cpus, &weights);
            let shares = machine.cpu_shares(&ids, 100 * PERIOD);
            let even = f64::from(cpus) / f64::from(entries);
            assert_shares(&shares, &vec![even; ids.len()], 0.02);
            let runs = 100 * PERIOD / SLICE * u64::from(cpus);
            let moves: u64 = machine.moves.values().sum();
            assert!(moves * 8 <= runs, "{entries} entries on {cpus} CPUs: {moves} moves in {runs} runs");
        }
    }

    #[test]
    fn weights_two_one_one_on_two_cpus() {
        // The heavy domain's share is exactly one CPU.
        let mut machine = Machine::new(2, &[(1, 512), (2, 256), (3, 256)]);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert_shares(&shares, &[1.0, 0.5, 0.5], 0.02);
    }

    #[test]
    fn weights_four_one_one_on_two_cpus() {
        // The heavy domain's share (4/3 of a CPU) is more than its one vCPU
        // can use: it gets a CPU, the others share the other one.
        let mut machine = Machine::new(2, &[(1, 1024), (2, 256), (3, 256)]);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert_shares(&shares, &[1.0, 0.5, 0.5], 0.02);
    }

    #[test]
    fn weights_two_two_one_one_on_two_cpus() {
        let mut machine = Machine::new(2, &[(1, 512), (2, 512), (3, 256), (4, 256)]);
        let shares = machine.cpu_shares(&[1, 2, 3, 4], 100 * PERIOD);
        assert_shares(&shares, &[2.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0], 0.02);
    }

    #[test]
    fn capped_domain_next_to_an_uncapped_one_on_two_cpus() {
        let mut machine = Machine::new(2, &[(1, 256), (2, 256)]);
        machine.scheduler.set_params(1, 256, 50).unwrap();
        let shares = machine.cpu_shares(&[1, 2], 100 * PERIOD);
        assert!((0.49..=0.5 + SLICE as f64 / (100 * PERIOD) as f64).contains(&shares[0]), "shares {shares:?}");
        assert!(shares[1] >= 0.99, "shares {shares:?}");
    }

    #[test]
    fn three_domains_on_four_cpus_each_get_a_cpu() {
        let mut machine = Machine::new(4, &[(1, 1000), (2, 10), (3, 1)]);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert!(shares.iter().all(|&share| share >= 0.99), "shares {shares:?}");
    }

    #[test]
    fn pinned_domain_stays_on_its_cpu() {
        let mut machine = Machine::new(2, &[(1, 256), (2, 256), (3, 256)]);
        machine.scheduler.set_affinity(1, 1 << 1).unwrap();
        machine.run_for(100 * PERIOD);
        assert_eq!(machine.used_on(1, 0), 0);
        assert!(machine.used_on(1, 1) >= 100 * PERIOD / 3, "domain 1 ran {}", machine.used_on(1, 1));
        assert!(machine.used_on(2, 0) > 0 && machine.used_on(3, 0) > 0);
    }

    #[test]
    fn domains_pinned_to_one_cpu_share_it() {
        // Alone, they leave CPU 1 idle.
        let mut machine = Machine::new(2, &[(1, 256), (2, 256)]);
        machine.scheduler.set_affinity(1, 1 << 0).unwrap();
        machine.scheduler.set_affinity(2, 1 << 0).unwrap();
        let shares = machine.cpu_shares(&[1, 2], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5], 0.02);
        assert_eq!(machine.used_on(1, 1) + machine.used_on(2, 1), 0);
        // With a third domain that may run anywhere, it takes CPU 1.
        machine.scheduler.add(3, 256).unwrap();
        machine.scheduler.set_runnable(3, true);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5, 1.0], 0.02);
    }

    #[test]
    fn one_cpu_machine_matches_the_simulation() {
        let domains = [(1, 100), (2, 300), (3, 256)];
        let mut machine = Machine::new(1, &domains);
        let mut simulation = Simulation::new(&domains);
        simulation.scheduler.set_params(3, 256, 10).unwrap();
        machine.scheduler.set_params(3, 256, 10).unwrap();
        simulation.run_for(50 * PERIOD + 17);
        machine.run_for(50 * PERIOD + 17);
        for (id, _) in domains {
            assert_eq!(machine.used(id), simulation.used(id), "domain {id}");
        }
    }

    #[test]
    fn running_domain_is_not_picked_again_until_charged() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.set_cpus(2);
        scheduler.add(1, 256).unwrap();
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(100, 0), Some((1, SLICE)));
        assert_eq!(scheduler.pick(100, 1), None, "runs on CPU 0");
        assert_eq!(scheduler.next_event(100), None);
        // Blocked and woken while it runs: still running.
        scheduler.set_runnable(1, false);
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(200, 1), None, "runs on CPU 0");
        scheduler.charge(1, 400, 500);
        assert_eq!(scheduler.pick(500, 1), Some((1, SLICE)));
        // The charge did not wake it: it stayed runnable all along.
        assert!(!scheduler.entries[0].woken && scheduler.entries[0].active);
    }

    #[test]
    fn charge_of_a_domain_not_running_is_ignored() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.add(1, 256).unwrap();
        scheduler.set_params(1, 256, 10).unwrap();
        scheduler.set_runnable(1, true);
        scheduler.charge(1, PERIOD, 0);
        assert_eq!(scheduler.pick(0, 0), Some((1, SLICE)), "the cap budget is whole");
        scheduler.charge(1, 300, 300);
        scheduler.charge(1, 300, 300);
        assert_eq!(scheduler.entries[0].used_this_period, 300);
        // Removed while it runs, then added again: the old run's charge
        // does not touch the new entry.
        assert_eq!(scheduler.pick(300, 0), Some((1, SLICE)));
        scheduler.remove(1).unwrap();
        scheduler.add(1, 256).unwrap();
        scheduler.charge(1, SLICE, 300 + SLICE);
        assert_eq!((scheduler.entries[0].credit, scheduler.entries[0].used_this_period), (0, 0));
    }

    #[test]
    fn run_counts_against_the_period_it_was_picked_in() {
        // Domain 1 (cap 50%) runs to the end of a period on CPU 0, and CPU
        // 1 starts the next period before CPU 0 charges the run: the run
        // takes nothing from the new period's budget.
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.set_cpus(2);
        scheduler.add(1, 256).unwrap();
        scheduler.set_params(1, 256, 50).unwrap();
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(0, 0), Some((1, SLICE)));
        scheduler.charge(1, SLICE, SLICE);
        assert_eq!(scheduler.pick(PERIOD - SLICE, 0), Some((1, SLICE)));
        assert_eq!(scheduler.pick(PERIOD, 1), None);
        scheduler.charge(1, SLICE, PERIOD);
        let mut now = PERIOD;
        let mut ran = 0;
        while let Some((id, limit)) = scheduler.pick(now, 1) {
            ran += limit;
            now += limit;
            scheduler.charge(id, limit, now);
        }
        assert_eq!(ran, PERIOD / 2);
    }

    #[test]
    fn grants_fill_each_domain_to_one_period() {
        let mut scheduler = Scheduler::<4>::new(PERIOD, SLICE);
        scheduler.set_cpus(2);
        for (id, weight) in [(1, 400), (2, 100), (3, 100)] {
            scheduler.add(id, weight).unwrap();
            scheduler.set_runnable(id, true);
        }
        let (id, _) = scheduler.pick(0, 0).unwrap();
        scheduler.charge(id, 0, 0);
        // The first grants: domain 1's share of two CPUs would be 4/3 of a
        // period, so it gets one period and the others share the other.
        let (id, _) = scheduler.pick(PERIOD, 0).unwrap();
        scheduler.charge(id, 0, PERIOD);
        let grants = |scheduler: &Scheduler<4>| -> Vec<_> {
            (1..=4).map(|id| scheduler.find(id).and_then(|index| scheduler.entries[index].grant)).collect()
        };
        let period = PERIOD as i64;
        assert_eq!(grants(&scheduler), [Some(period), Some(period / 2), Some(period / 2), None]);
        // Domain 4 joins: 4:1:1:2 of two CPUs, so domain 1 gets a period
        // and the others share the rest 1:1:2.
        scheduler.add(4, 200).unwrap();
        scheduler.set_runnable(4, true);
        assert_eq!(grants(&scheduler), [Some(period), Some(period / 4), Some(period / 4), Some(period / 2)]);
        let credits: Vec<_> = scheduler.entries.iter().map(|entry| entry.credit).collect();
        assert_eq!(credits, [period, period / 4, period / 4, period / 2]);
        // More CPUs than domains: a period each. One CPU: by weight.
        scheduler.set_cpus(4);
        assert_eq!(grants(&scheduler), [Some(period); 4]);
        scheduler.set_cpus(0);
        assert_eq!(scheduler.cpus(), 1);
        assert_eq!(grants(&scheduler), [Some(period / 2), Some(period / 8), Some(period / 8), Some(period / 4)]);
        scheduler.set_cpus(1000);
        assert_eq!(scheduler.cpus(), MAX_CPUS);
    }

    #[test]
    fn affinity_is_checked_and_kept() {
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.add(1, 256).unwrap();
        assert_eq!(scheduler.affinity(1), Some(ALL_CPUS));
        assert_eq!(scheduler.set_affinity(1, 0), Err(SchedError::InvalidAffinity));
        assert_eq!(scheduler.set_affinity(9, 0), Err(SchedError::InvalidAffinity), "argument first");
        assert_eq!(scheduler.set_affinity(9, 1), Err(SchedError::NotFound));
        scheduler.set_affinity(1, 1 << 63).unwrap();
        assert_eq!(scheduler.affinity(1), Some(1 << 63));
        assert_eq!(scheduler.affinity(9), None);
        scheduler.set_runnable(1, true);
        assert_eq!(scheduler.pick(0, 0), None);
        assert_eq!(scheduler.pick(0, 64), None, "no CPU 64");
        assert_eq!(scheduler.pick(0, 63), Some((1, SLICE)));
    }

    #[test]
    fn random_operations_on_several_cpus_keep_the_rules() {
        // Random adds, removes, parameter and affinity changes, blocks and
        // wakes, picks on random CPUs and charges of the runs under way.
        // Checks: a pick returns a runnable domain allowed on that CPU and
        // running nowhere; no domain exceeds its cap in the period its runs
        // were picked in; `None` only when every runnable domain allowed on
        // the CPU runs elsewhere or is capped out.
        const CPUS: usize = 3;
        let mut scheduler = Scheduler::<6>::new(PERIOD, SLICE);
        scheduler.set_cpus(CPUS as u32);
        let mut random = crate::test_random::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || random.next();
        // Model: id -> (cap, runnable, affinity).
        let mut model: HashMap<DomainId, (u32, bool, u64)> = HashMap::new();
        // Per CPU: the run under way (domain, limit, picked at, period).
        let mut runs: [Option<(DomainId, u64, u64, u64)>; CPUS] = [None; CPUS];
        // Ticks charged per (period, domain), to the period of the pick.
        let mut usage: HashMap<(u64, DomainId), u64> = HashMap::new();
        let mut now = 777u64;
        let mut period_start: Option<u64> = None;
        // The period `now` falls in, as the scheduler reckons it.
        let mut advance = |now: u64| {
            let start = *period_start.get_or_insert(now);
            let start = start + now.saturating_sub(start) / PERIOD * PERIOD;
            period_start = Some(start);
            start
        };
        let budget = |cap: u32| if cap == 0 { u64::MAX } else { PERIOD * u64::from(cap) / 100 };
        let (mut picked, mut idled) = (0, 0);
        for _ in 0..40_000 {
            let id = (next() % 8) as DomainId;
            let cpu = (next() % CPUS as u64) as usize;
            match next() % 12 {
                0 => {
                    if scheduler.add(id, 1 + (next() % 1000) as u32).is_ok() {
                        model.insert(id, (0, false, ALL_CPUS));
                    }
                }
                1 => {
                    assert_eq!(scheduler.remove(id).is_ok(), model.remove(&id).is_some());
                    usage.retain(|&(_, domain), _| domain != id);
                    // hv charges the run of a domain removed while it runs.
                    for run in &mut runs {
                        if let Some((running, limit, ..)) = *run
                            && running == id
                        {
                            scheduler.charge(id, limit, now);
                            advance(now);
                            *run = None;
                        }
                    }
                }
                2 => {
                    let cap = (next() % 4 * 20) as u32;
                    if scheduler.set_params(id, 1 + (next() % 1000) as u32, cap).is_ok() {
                        model.get_mut(&id).unwrap().0 = cap;
                    }
                }
                3 => {
                    let affinity = next() % (1 << CPUS);
                    match scheduler.set_affinity(id, affinity) {
                        Ok(()) => model.get_mut(&id).unwrap().2 = affinity,
                        Err(error) => assert!(affinity == 0 || !model.contains_key(&id), "{error:?}"),
                    }
                }
                4..=5 => {
                    let runnable = next() % 3 != 0;
                    scheduler.set_runnable(id, runnable);
                    if let Some(entry) = model.get_mut(&id) {
                        entry.1 = runnable;
                    }
                }
                6..=7 => now += next() % SLICE,
                _ => match runs[cpu] {
                    Some((id, limit, at, period)) => {
                        let ran = limit.min(now - at);
                        let ran = if next() % 4 == 0 { next() % (ran + 1) } else { ran };
                        scheduler.charge(id, ran, now);
                        advance(now);
                        *usage.entry((period, id)).or_default() += ran;
                        runs[cpu] = None;
                    }
                    None => {
                        let period = advance(now);
                        let running = |id: DomainId| runs.iter().flatten().any(|run| run.0 == id);
                        let used = |id: DomainId| usage.get(&(period, id)).copied().unwrap_or(0);
                        match scheduler.pick(now, cpu as u32) {
                            Some((id, limit)) => {
                                let (cap, runnable, affinity) = model[&id];
                                assert!(runnable && affinity & 1 << cpu != 0 && !running(id));
                                assert!((1..=SLICE).contains(&limit) && now + limit <= period + PERIOD);
                                assert!(used(id) + limit <= budget(cap), "cap {cap} exceeded");
                                runs[cpu] = Some((id, limit, now, period));
                                picked += 1;
                            }
                            None => {
                                for (&id, &(cap, runnable, affinity)) in &model {
                                    if runnable && affinity & 1 << cpu != 0 {
                                        assert!(running(id) || used(id) >= budget(cap), "domain {id} left out");
                                    }
                                }
                                idled += 1;
                            }
                        }
                    }
                },
            }
        }
        assert!(picked > 1000 && idled > 1000, "{picked} picks, {idled} idles");
    }

    /// Puts entries `ids` in `group`, with `weight` and `cap_percent`.
    fn make_group<const N: usize>(
        scheduler: &mut Scheduler<N>,
        group: u32,
        ids: &[DomainId],
        weight: u32,
        cap_percent: u32,
    ) {
        for &id in ids {
            scheduler.set_group(id, group).unwrap();
        }
        scheduler.set_group_params(group, weight, cap_percent).unwrap();
    }

    #[test]
    fn group_of_two_next_to_an_entry_of_equal_weight_on_two_cpus() {
        // Alone, three equal entries would get 2/3 of a CPU each. The
        // group's entries share its weight: 256 against 256, a CPU each way.
        let mut machine = Machine::new(2, &[(1, 256), (2, 256), (3, 256)]);
        make_group(&mut machine.scheduler, 7, &[1, 2], 256, 0);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5, 1.0], 0.02);
    }

    #[test]
    fn group_weight_counts_for_its_entries_together() {
        // Entries of weight 512 each would get 2/3 of a CPU each against
        // two of 256; as a group of weight 512, they get one CPU together.
        let mut machine = Machine::new(2, &[(1, 512), (2, 512), (3, 256), (4, 256)]);
        make_group(&mut machine.scheduler, 7, &[1, 2], 512, 0);
        let shares = machine.cpu_shares(&[1, 2, 3, 4], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5, 0.5, 0.5], 0.02);
    }

    #[test]
    fn group_cap_holds_across_its_entries() {
        // Four spinning entries on four CPUs, capped at 150% together: one
        // and a half CPUs, evenly spread.
        let mut machine = Machine::new(4, &[(1, 256), (2, 256), (3, 256), (4, 256)]);
        make_group(&mut machine.scheduler, 7, &[1, 2, 3, 4], 256, 150);
        let shares = machine.cpu_shares(&[1, 2, 3, 4], 100 * PERIOD);
        let total: f64 = shares.iter().sum();
        assert!((total - 1.5).abs() <= 0.015, "shares {shares:?}");
        assert_shares(&shares, &[0.375; 4], 0.03);
        // Each period on its own: at most the budget, counted in the
        // periods the runs were picked in (so a run may reach a little
        // past a period's start).
        let start = machine.scheduler.period_start.unwrap();
        machine.run_for(start + PERIOD - machine.now);
        for _ in 0..10 {
            machine.used.clear();
            machine.run_for(PERIOD);
            let used: u64 = (1..=4).map(|id| machine.used(id)).sum();
            assert!(used.abs_diff(PERIOD * 3 / 2) <= 4 * SLICE, "ran {used} in a period");
        }
    }

    #[test]
    fn capped_group_next_to_an_uncapped_entry() {
        // The group of two (cap 50) leaves the rest of two CPUs to entry 3.
        let mut machine = Machine::new(2, &[(1, 256), (2, 256), (3, 256)]);
        make_group(&mut machine.scheduler, 7, &[1, 2], 256, 50);
        let shares = machine.cpu_shares(&[1, 2, 3], 100 * PERIOD);
        assert!((shares[0] + shares[1] - 0.5).abs() <= 0.01, "shares {shares:?}");
        assert!(shares[2] >= 0.99, "shares {shares:?}");
    }

    #[test]
    fn group_entries_alternate_with_equal_entries() {
        // Entries 1 and 2 share weight 512, as much each as entry 3 has:
        // they spend their credit at the same pace, so the three alternate.
        let mut simulation = Simulation::new(&[(1, 512), (2, 512), (3, 256)]);
        make_group(&mut simulation.scheduler, 7, &[1, 2], 512, 0);
        simulation.run_for(3 * PERIOD);
        let start = simulation.scheduler.period_start.unwrap();
        simulation.run_for(start + PERIOD - simulation.now);
        let end = simulation.now + 10 * PERIOD;
        let order: Vec<_> = (0..30).map(|_| simulation.step(end).unwrap()).collect();
        for window in order.chunks(3) {
            let mut sorted = window.to_vec();
            sorted.sort();
            assert_eq!(sorted, [1, 2, 3], "order {order:?}");
        }
    }

    #[test]
    fn group_share_goes_to_its_active_entries() {
        // A group of four of which only entry 1 spins, and entry 5 of equal
        // weight, on one CPU: the group's whole share is entry 1's.
        let mut machine = Machine::new(1, &[(1, 256), (5, 256)]);
        for id in 2..=4 {
            machine.scheduler.add(id, 256).unwrap();
        }
        make_group(&mut machine.scheduler, 7, &[1, 2, 3, 4], 256, 0);
        let shares = machine.cpu_shares(&[1, 5], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5], 0.02);
        // Entry 2 spins too: the group's half is split between the two
        // (alone, three equal entries would get a third each).
        machine.scheduler.set_runnable(2, true);
        let shares = machine.cpu_shares(&[1, 2, 5], 100 * PERIOD);
        assert_shares(&shares, &[0.25, 0.25, 0.5], 0.02);
        // And back.
        machine.scheduler.set_runnable(2, false);
        let shares = machine.cpu_shares(&[1, 5], 100 * PERIOD);
        assert_shares(&shares, &[0.5, 0.5], 0.02);
    }

    #[test]
    fn group_grants_are_split_among_entries_taking_part() {
        let mut scheduler = Scheduler::<6>::new(PERIOD, SLICE);
        scheduler.set_cpus(2);
        for id in 1..=5 {
            scheduler.add(id, 256).unwrap();
            scheduler.set_runnable(id, id != 3);
        }
        make_group(&mut scheduler, 7, &[1, 2, 3], 512, 0);
        let (id, _) = scheduler.pick(0, 0).unwrap();
        scheduler.charge(id, 0, 0);
        let (id, _) = scheduler.pick(PERIOD, 0).unwrap();
        scheduler.charge(id, 0, PERIOD);
        let grants = |scheduler: &Scheduler<6>| -> Vec<_> {
            (1..=5).map(|id| scheduler.find(id).and_then(|index| scheduler.entries[index].grant)).collect()
        };
        let period = PERIOD as i64;
        // The group's weight 512 against 256 + 256: a CPU, for its two
        // entries taking part.
        assert_eq!(grants(&scheduler), [Some(period / 2), Some(period / 2), None, Some(period / 2), Some(period / 2)]);
        // Entry 3 wakes: the group's CPU is split three ways.
        scheduler.set_runnable(3, true);
        let third = Some(period / 3);
        assert_eq!(grants(&scheduler), [third, third, third, Some(period / 2), Some(period / 2)]);
        // Capped at 50%, the group's grant is half a period; entries 4 and 5
        // share the rest.
        scheduler.set_group_params(7, 512, 50).unwrap();
        scheduler.set_cpus(2);
        let sixth = Some(period / 6);
        assert_eq!(grants(&scheduler), [sixth, sixth, sixth, Some(period * 3 / 4), Some(period * 3 / 4)]);
        // On four CPUs, a period each for the entries alone; the group is
        // still held to its cap.
        scheduler.set_cpus(4);
        assert_eq!(grants(&scheduler), [sixth, sixth, sixth, Some(period), Some(period)]);
    }

    #[test]
    fn group_params_are_checked_against_the_group() {
        let mut scheduler = Scheduler::<4>::new(PERIOD, SLICE);
        for id in 1..=3 {
            scheduler.add(id, 300).unwrap();
        }
        scheduler.set_params(1, 300, 40).unwrap();
        assert_eq!(scheduler.set_group(9, 7), Err(SchedError::NotFound));
        assert_eq!(scheduler.set_group_params(7, 256, 0), Err(SchedError::NotFound));
        assert_eq!(scheduler.group_of(1), None);
        // A new group takes the parameters of its first entry.
        scheduler.set_group(1, 7).unwrap();
        assert_eq!(scheduler.group_of(1), Some(7));
        assert_eq!(scheduler.group_params(7), Some((300, 40)));
        assert_eq!(scheduler.set_group_params(7, 256, 101), Err(SchedError::InvalidCap));
        scheduler.set_group(2, 7).unwrap();
        scheduler.set_group(2, 7).unwrap();
        assert_eq!(scheduler.set_group_params(7, 256, 201), Err(SchedError::InvalidCap));
        assert_eq!(scheduler.set_group_params(7, 0, 150), Err(SchedError::InvalidWeight));
        assert_eq!(scheduler.set_group_params(7, 65536, 150), Err(SchedError::InvalidWeight));
        assert_eq!(scheduler.set_group_params(8, 0, 0), Err(SchedError::InvalidWeight), "weight first");
        scheduler.set_group_params(7, 256, 200).unwrap();
        assert_eq!(scheduler.group_params(7), Some((256, 200)));
        assert_eq!(scheduler.group_params(8), None);
        // The entries keep their own parameters, for use outside a group.
        assert_eq!(scheduler.params(1), Some((300, 40)));
        assert_eq!(scheduler.set_params(1, 300, 150), Err(SchedError::InvalidCap));
    }

    #[test]
    fn group_is_forgotten_with_its_last_entry() {
        let mut scheduler = Scheduler::<3>::new(PERIOD, SLICE);
        for id in 1..=3 {
            scheduler.add(id, 100).unwrap();
        }
        make_group(&mut scheduler, 7, &[1, 2], 1000, 150);
        scheduler.remove(1).unwrap();
        // One entry left: the cap stays, though it can no longer be set.
        assert_eq!(scheduler.group_params(7), Some((1000, 150)));
        assert_eq!(scheduler.set_group_params(7, 1000, 150), Err(SchedError::InvalidCap));
        // Moving the last entry to another group forgets the first.
        scheduler.set_group(2, 8).unwrap();
        assert_eq!(scheduler.group_params(7), None);
        assert_eq!(scheduler.group_params(8), Some((100, 0)));
        scheduler.remove(2).unwrap();
        assert_eq!(scheduler.group_params(8), None);
        assert_eq!(scheduler.set_group_params(8, 256, 0), Err(SchedError::NotFound));
        assert!(scheduler.groups.is_empty());
        // A group of a forgotten id starts afresh.
        scheduler.add(1, 50).unwrap();
        scheduler.set_group(1, 7).unwrap();
        assert_eq!(scheduler.group_params(7), Some((50, 0)));
        // A group for each entry: moving one to a new group reuses the
        // place of the group it leaves.
        scheduler.add(2, 60).unwrap();
        scheduler.set_group(2, 10).unwrap();
        scheduler.set_group(3, 11).unwrap();
        scheduler.set_group(2, 12).unwrap();
        assert_eq!(scheduler.groups.len(), 3);
        assert_eq!(scheduler.group_params(12), Some((60, 0)));
        assert_eq!(scheduler.group_params(10), None);
    }

    #[test]
    fn refund_in_a_later_period_does_not_lift_the_group_cap() {
        // Entry 1 is picked at the end of a period and charged, having run
        // less than its limit, after CPU 1 started the next period and
        // picked entry 2 of the same group: the ticks left of entry 1's
        // limit belong to the old period, and do not widen the new one's
        // budget. (Entry 2 is first: it ties with entry 1, added earlier.)
        let mut scheduler = Scheduler::<2>::new(PERIOD, SLICE);
        scheduler.set_cpus(2);
        for id in 1..=2 {
            scheduler.add(id, 256).unwrap();
            scheduler.set_runnable(id, true);
        }
        make_group(&mut scheduler, 7, &[1, 2], 256, 10); // 3 slices a period
        assert_eq!(scheduler.pick(0, 0), Some((2, SLICE)));
        scheduler.charge(2, SLICE, SLICE);
        assert_eq!(scheduler.pick(PERIOD - SLICE, 0), Some((1, SLICE)));
        assert_eq!(scheduler.pick(PERIOD, 1), Some((2, SLICE)));
        scheduler.charge(1, SLICE / 2, PERIOD + 1);
        let mut now = PERIOD + 1;
        let mut ran = SLICE;
        // At most ten picks, in case the cap does not hold.
        for _ in 0..10 {
            let Some((id, limit)) = scheduler.pick(now, 0) else { break };
            ran += limit;
            now += limit;
            scheduler.charge(id, limit, now);
        }
        assert_eq!(ran, 3 * SLICE);
    }

    #[test]
    fn random_operations_with_groups_keep_group_caps() {
        // Random adds (into one of three groups, or none), removes, group
        // parameter changes, blocks and wakes, picks on random CPUs and
        // charges of the runs under way. Checks: a pick returns a runnable
        // entry running nowhere; no group exceeds its cap in the period its
        // runs were picked in; `None` only when every runnable entry runs
        // or its group is capped out; group parameters are refused exactly
        // when the cap is above 100 per entry of the group.
        const CPUS: usize = 3;
        let mut scheduler = Scheduler::<6>::new(PERIOD, SLICE);
        scheduler.set_cpus(CPUS as u32);
        let mut random = crate::test_random::XorShift(0x5851_f42d_4c95_7f2d);
        let mut next = move || random.next();
        // Model: entry -> (group, runnable); group -> cap.
        let mut entries: HashMap<DomainId, (Option<u32>, bool)> = HashMap::new();
        let mut caps: HashMap<u32, u32> = HashMap::new();
        // Per CPU: the run under way (entry, limit, picked at, period).
        let mut runs: [Option<(DomainId, u64, u64, u64)>; CPUS] = [None; CPUS];
        // Ticks charged per (period, group), to the period of the pick.
        let mut usage: HashMap<(u64, u32), u64> = HashMap::new();
        let mut now = 777u64;
        let mut period_start: Option<u64> = None;
        let mut advance = |now: u64| {
            let start = *period_start.get_or_insert(now);
            let start = start + now.saturating_sub(start) / PERIOD * PERIOD;
            period_start = Some(start);
            start
        };
        let budget = |cap: u32| if cap == 0 { u64::MAX } else { (PERIOD * u64::from(cap)).div_ceil(100) };
        let (mut picked, mut idled, mut capped_out, mut refused) = (0, 0, 0, 0);
        for _ in 0..40_000 {
            let id = (next() % 8) as DomainId;
            let cpu = (next() % CPUS as u64) as usize;
            let group = (next() % 3) as u32;
            match next() % 12 {
                0 => {
                    if scheduler.add(id, 1 + (next() % 1000) as u32).is_ok() {
                        let group = (next() % 4 != 0).then_some(group);
                        if let Some(group) = group {
                            scheduler.set_group(id, group).unwrap();
                            caps.entry(group).or_insert(0);
                        }
                        entries.insert(id, (group, false));
                    }
                }
                1 => {
                    assert_eq!(scheduler.remove(id).is_ok(), entries.contains_key(&id));
                    let Some((group, _)) = entries.remove(&id) else { continue };
                    for run in &mut runs {
                        if let Some((running, limit, _, period)) = *run
                            && running == id
                        {
                            // The charge is ignored: the limit stays used.
                            scheduler.charge(id, 0, now);
                            advance(now);
                            if let Some(group) = group {
                                *usage.entry((period, group)).or_default() += limit;
                            }
                            *run = None;
                        }
                    }
                    if let Some(group) = group
                        && !entries.values().any(|entry| entry.0 == Some(group))
                    {
                        caps.remove(&group);
                        usage.retain(|&(_, used_by), _| used_by != group);
                        assert_eq!(scheduler.group_params(group), None);
                    }
                }
                2 => {
                    let members = entries.values().filter(|entry| entry.0 == Some(group)).count() as u32;
                    let cap = (next() % u64::from(100 * members + 60)) as u32;
                    let result = scheduler.set_group_params(group, 1 + (next() % 1000) as u32, cap);
                    if members == 0 {
                        assert_eq!(result, Err(SchedError::NotFound));
                    } else if cap > 100 * members {
                        assert_eq!(result, Err(SchedError::InvalidCap));
                        refused += 1;
                    } else {
                        assert_eq!(result, Ok(()));
                        caps.insert(group, cap);
                    }
                }
                3..=4 => {
                    let runnable = next() % 3 != 0;
                    scheduler.set_runnable(id, runnable);
                    if let Some(entry) = entries.get_mut(&id) {
                        entry.1 = runnable;
                    }
                }
                5..=6 => now += next() % SLICE,
                _ => match runs[cpu] {
                    Some((id, limit, at, period)) => {
                        let ran = limit.min(now - at);
                        let ran = if next() % 4 == 0 { next() % (ran + 1) } else { ran };
                        scheduler.charge(id, ran, now);
                        advance(now);
                        if let Some(group) = entries[&id].0 {
                            *usage.entry((period, group)).or_default() += ran;
                        }
                        runs[cpu] = None;
                    }
                    None => {
                        let period = advance(now);
                        let running = |id: DomainId| runs.iter().flatten().any(|run| run.0 == id);
                        // Charged to `group` in this period, and taken in
                        // advance by its runs under way.
                        let used = |group: u32| {
                            let in_flight: u64 = runs
                                .iter()
                                .flatten()
                                .filter(|run| run.3 == period && entries[&run.0].0 == Some(group))
                                .map(|run| run.1)
                                .sum();
                            usage.get(&(period, group)).copied().unwrap_or(0) + in_flight
                        };
                        match scheduler.pick(now, cpu as u32) {
                            Some((id, limit)) => {
                                let (group, runnable) = entries[&id];
                                assert!(runnable && !running(id));
                                assert!((1..=SLICE).contains(&limit) && now + limit <= period + PERIOD);
                                if let Some(group) = group {
                                    let cap = caps[&group];
                                    assert!(used(group) + limit <= budget(cap), "group {group}: cap {cap} exceeded");
                                }
                                runs[cpu] = Some((id, limit, now, period));
                                picked += 1;
                            }
                            None => {
                                for (&id, &(group, runnable)) in &entries {
                                    if runnable && !running(id) {
                                        let group = group.unwrap_or_else(|| panic!("entry {id} left out"));
                                        assert!(used(group) >= budget(caps[&group]), "entry {id} left out");
                                    }
                                }
                                capped_out += entries.values().any(|entry| entry.1) as u32;
                                idled += 1;
                            }
                        }
                    }
                },
            }
        }
        assert!(
            picked > 1000 && idled > 1000 && capped_out > 100 && refused > 100,
            "{picked} picks, {idled} idles, {capped_out} capped out, {refused} refused"
        );
    }
}
