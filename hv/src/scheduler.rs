//! A proportional-share (credit) scheduler for domains of one vCPU each, on
//! one or more CPUs sharing one run queue, with a weight, a cap and a CPU
//! affinity per domain.
//!
//! The scheduler never reads the clock: the caller passes the TSC (`now`)
//! to [`Scheduler::pick`] and reports how long the chosen domain ran with
//! [`Scheduler::charge`]. Each CPU runs this loop, `cpu` being its index,
//! with every call made under one lock around the scheduler:
//!
//! ```text
//! loop {
//!     match scheduler.pick(now, cpu) {
//!         Some((domain, limit)) => { run domain for at most `limit` TSC ticks;
//!                                    scheduler.charge(domain, ran, now) }
//!         None => idle until scheduler.next_event(now), or until an interrupt
//!                 makes a domain runnable (next_event None: only the interrupt)
//!     }
//! }
//! ```
//!
//! Every `pick` is followed by a `charge` of the domain picked (of 0 ticks if
//! it did not run). An idle CPU is not told when a wake-up or another CPU's
//! `charge` gives it a domain to run: the caller wakes it (an IPI).
//!
//! Time is cut into accounting periods of `period_tsc` ticks; the first one
//! starts at the first `pick` or `charge`. The rules:
//!
//! - **CPUs.** [`set_cpus`](Scheduler::set_cpus) CPUs share the queue, so
//!   a period holds `cpus × period_tsc` ticks of CPU time, its *capacity*.
//!   A domain is *running* from the `pick` that returns it to the `charge`
//!   that reports its run; `pick` skips running domains, so a domain (one
//!   vCPU) never runs on two CPUs at once. A running domain is still
//!   runnable for everything else (credit, caps, wake-ups).
//! - **Affinity.** A domain runs only on the CPUs in its affinity mask (bit
//!   `i` for CPU `i`, all CPUs by default). Credit ignores affinity: domains
//!   confined to fewer CPUs than their grants need share those CPUs in the
//!   order of the rules below, not exactly by weight.
//! - **Credit.** Each period's capacity is granted as credit to the domains
//!   that take part in it, in proportion to their weights, except that no
//!   domain is granted more than one period (one vCPU uses at most one CPU):
//!   a domain whose share would exceed that is granted one period, and the
//!   rest is shared again among the others by weight (water-filling). On
//!   one CPU this is plain proportional sharing. Running consumes credit
//!   tick for tick; a run counts against the period it was picked in, even
//!   when another CPU starts the next period before it is charged (`pick`
//!   takes the limit in advance, `charge` settles the difference). When a
//!   period starts, the domains that were *active* in the one that ended
//!   (runnable at some moment of it) take part. A domain that slept through
//!   the whole last period takes part from the moment it wakes: the period
//!   is shared again among all the domains now taking part, and the
//!   difference is taken back from (or given to) the others' credit. A
//!   domain is thus granted at most one period's share per period, the
//!   grants of a period add up to its capacity (to one period per domain
//!   when there are fewer domains than CPUs), and the result does not depend
//!   on the order of wake-ups.
//! - **Bounded credit.** Before the new credit is added, what a domain
//!   carries over (surplus or debt) is clamped to one slice either way: the
//!   most a domain ever holds is one period's share plus one slice, and time
//!   taken from an otherwise idle CPU is not held against a domain later.
//!   The slice of carry-over keeps the rounding of whole slices from
//!   accumulating into unfairness.
//! - **Choice.** Among the *eligible* domains (runnable, not running,
//!   allowed on the asking CPU, and within their cap) `pick` prefers, in
//!   order: a domain that woke since it last ran and
//!   still has credit (prompt service for I/O; it spends credit each time,
//!   so it cannot starve the others); a domain that has not run yet in this
//!   period (so every runnable domain runs at least once per period, however
//!   small its weight: that run, up to a slice, is the floor of a tiny
//!   share); the most credit per unit of weight; the domain
//!   picked least recently (round robin, so equal domains alternate). A
//!   domain granted a whole period while others share the rest counts with
//!   the weight that earns its grant at the others' rate, not its own
//!   larger one, so that all domains spend their grants at the same pace.
//! - **Work conserving.** Credit only orders the eligible domains: a domain
//!   out of credit still runs when nobody else wants the CPU. Because the
//!   order is by credit per unit of weight, time that a domain leaves unused
//!   is shared among the others by weight too.
//! - **Cap.** A domain with a cap of `c` percent runs at most `c`% of one
//!   CPU in each period. Once it has used that, it is not eligible until the
//!   next period starts; if nothing else is eligible `pick` returns `None`
//!   and the CPU idles (caps are not work conserving).
//! - **Limit.** `pick` also says how long the domain may run: until the end
//!   of its slice, of its cap budget, or of the period, whichever is first,
//!   so that the scheduler is asked again at every boundary that matters.

use arrayvec::ArrayVec;
use core::cmp::Reverse;

/// Identifier of a domain (as in the ABI).
pub type DomainId = abi::DomainId;

/// Smallest valid scheduling weight.
pub const MIN_WEIGHT: u32 = 1;
/// Largest valid scheduling weight.
pub const MAX_WEIGHT: u32 = abi::domctl::MAX_WEIGHT;
/// Largest valid cap, in percent of one CPU (0 means no cap). A domain has
/// one vCPU, so it never uses more than 100%; caps above 100 come with
/// domains of several vCPUs.
pub const MAX_CAP_PERCENT: u32 = 100;
/// Most CPUs the scheduler serves: CPU indexes are `0..MAX_CPUS`, one bit
/// each in an affinity mask.
pub const MAX_CPUS: u32 = 64;
/// The default affinity: every CPU.
pub const ALL_CPUS: u64 = u64::MAX;

/// Why the scheduler refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// The scheduler already holds its maximum number of domains.
    Full,
    /// No domain with that id is known.
    NotFound,
    /// A domain with that id was added already.
    Exists,
    /// The weight is outside `MIN_WEIGHT..=MAX_WEIGHT`.
    InvalidWeight,
    /// The cap is above `MAX_CAP_PERCENT`.
    InvalidCap,
    /// The affinity mask names no CPU.
    InvalidAffinity,
}

/// One domain's scheduling state.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: DomainId,
    /// Relative share, `MIN_WEIGHT..=MAX_WEIGHT`.
    weight: u32,
    /// Most of each period the domain may run, in percent; 0 = no cap.
    cap_percent: u32,
    /// The CPUs the domain may run on, bit `i` for CPU `i`; never 0.
    affinity: u64,
    /// Whether the domain wants the CPU.
    runnable: bool,
    /// While the domain runs (picked, not charged yet): the limit it was
    /// picked with, which `pick` already charged.
    running: Option<u64>,
    /// Runnable at some moment of the current period, so it earns credit at
    /// the period's end. Always true while `runnable` is.
    active: bool,
    /// Credit granted for the current period; `None` while the domain does
    /// not take part in it.
    grant: Option<i64>,
    /// While the grant is one whole period (water-filling stopped it): the
    /// weight, scaled by 2^16, that earns that grant at the rate the others
    /// earn theirs. It orders the domain instead of its weight, so that all
    /// domains spend their grants at the same pace.
    full_weight: Option<u64>,
    /// Became runnable since it was last picked.
    woken: bool,
    /// Picked at least once in the current period.
    ran_this_period: bool,
    /// TSC ticks the domain is owed (negative: ticks it ran beyond its share).
    credit: i64,
    /// TSC ticks charged in the current period, for the cap.
    used_this_period: u64,
    /// The pick counter's value when last picked (0 = never); the least
    /// recently picked domain wins a tie.
    last_pick: u64,
}

impl Entry {
    /// Whether a wake-up gives this domain priority over the others.
    fn boosted(&self) -> bool {
        self.woken && self.credit > 0
    }

    /// Credit per unit of weight (scaled by 2^16 to keep the precision of
    /// a tick), the order among domains otherwise equal.
    fn credit_per_weight(&self) -> i128 {
        let scaled_weight = self.full_weight.unwrap_or(u64::from(self.weight) << 16);
        (i128::from(self.credit) << 32) / i128::from(scaled_weight.max(1))
    }

    /// Adds `ticks` to the run being charged: to the credit it consumes and
    /// to the cap's usage.
    fn consume(&mut self, ticks: u64) {
        self.credit = self.credit.saturating_sub(saturate_i64(ticks));
        self.used_this_period = self.used_this_period.saturating_add(ticks);
    }

    /// Takes `ticks` back from the run being charged (it ran less than it
    /// was charged in advance).
    fn refund(&mut self, ticks: u64) {
        self.credit = self.credit.saturating_add(saturate_i64(ticks));
        self.used_this_period = self.used_this_period.saturating_sub(ticks);
    }
}

/// A credit scheduler for up to `N` domains sharing one or more CPUs.
#[derive(Debug)]
pub struct Scheduler<const N: usize> {
    entries: ArrayVec<Entry, N>,
    /// Length of an accounting period, in TSC ticks (at least 1).
    period_tsc: u64,
    /// Longest run `pick` grants, in TSC ticks (at least 1).
    slice_tsc: u64,
    /// Number of CPUs sharing the queue, `1..=MAX_CPUS`.
    cpus: u32,
    /// TSC at which the current period started; `None` before the first
    /// `pick` or `charge`.
    period_start: Option<u64>,
    /// Number of picks so far, to order domains for round robin.
    picks: u64,
}

impl<const N: usize> Scheduler<N> {
    /// A scheduler with no domains, for one CPU. `period_tsc` is the
    /// accounting period (e.g. 30 ms of TSC); `slice_tsc` the longest a
    /// domain runs before the scheduler is asked again. Zero lengths are
    /// taken as 1.
    pub const fn new(period_tsc: u64, slice_tsc: u64) -> Self {
        Self {
            entries: ArrayVec::new_const(),
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

    /// The number of CPUs sharing the queue.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Adds domain `id` with `weight` (`MIN_WEIGHT..=MAX_WEIGHT`), no cap,
    /// every CPU, no credit, not runnable.
    pub fn add(&mut self, id: DomainId, weight: u32) -> Result<(), SchedError> {
        check_weight(weight)?;
        if self.find(id).is_some() {
            return Err(SchedError::Exists);
        }
        let entry = Entry {
            id,
            weight,
            cap_percent: 0,
            affinity: ALL_CPUS,
            runnable: false,
            running: None,
            active: false,
            grant: None,
            full_weight: None,
            woken: false,
            ran_this_period: false,
            credit: 0,
            used_this_period: 0,
            last_pick: 0,
        };
        self.entries.try_push(entry).map_err(|_| SchedError::Full)
    }

    /// Removes domain `id`. Charging it afterwards is ignored, so it may be
    /// removed while it runs.
    pub fn remove(&mut self, id: DomainId) -> Result<(), SchedError> {
        let index = self.find(id).ok_or(SchedError::NotFound)?;
        self.entries.swap_remove(index);
        Ok(())
    }

    /// Sets domain `id`'s weight (`MIN_WEIGHT..=MAX_WEIGHT`) and cap
    /// (`0..=MAX_CAP_PERCENT` percent of one CPU, 0 = none). Arguments are
    /// checked before the id. The cap applies at once; the weight from the
    /// next credit grant.
    pub fn set_params(&mut self, id: DomainId, weight: u32, cap_percent: u32) -> Result<(), SchedError> {
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

    /// Domain `id`'s `(weight, cap_percent)`.
    pub fn params(&self, id: DomainId) -> Option<(u32, u32)> {
        self.find(id).map(|index| (self.entries[index].weight, self.entries[index].cap_percent))
    }

    /// Sets the CPUs domain `id` may run on: bit `i` of `cpus` for CPU `i`
    /// (not 0; the argument is checked before the id). It applies from the
    /// next `pick`: a run under way is not cut short. A mask naming only
    /// CPUs the machine lacks keeps the domain from running at all.
    pub fn set_affinity(&mut self, id: DomainId, cpus: u64) -> Result<(), SchedError> {
        if cpus == 0 {
            return Err(SchedError::InvalidAffinity);
        }
        let index = self.find(id).ok_or(SchedError::NotFound)?;
        self.entries[index].affinity = cpus;
        Ok(())
    }

    /// The CPUs domain `id` may run on (bit `i` for CPU `i`).
    pub fn affinity(&self, id: DomainId) -> Option<u64> {
        self.find(id).map(|index| self.entries[index].affinity)
    }

    /// Marks domain `id` runnable (it wants the CPU) or blocked. Unknown ids
    /// are ignored. A blocked domain that becomes runnable counts as woken,
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

    /// Which domain CPU `cpu` should run now, and for how many TSC ticks at
    /// most: until the end of its slice, of its cap budget in this period,
    /// or of the period, whichever is first (always at least 1). The domain
    /// is running until it is [charged](Self::charge). `None`: no domain
    /// allowed on `cpu` is runnable, not running and within its cap (always
    /// for a `cpu` beyond `MAX_CPUS`); the caller idles until
    /// [`next_event`](Self::next_event) or an interrupt.
    pub fn pick(&mut self, now: u64, cpu: u32) -> Option<(DomainId, u64)> {
        self.advance(now);
        let period_end = self.period_end()?;
        let period_tsc = self.period_tsc;
        let cpu_bit = 1u64.checked_shl(cpu).unwrap_or(0);
        let index = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| {
                entry.runnable
                    && entry.running.is_none()
                    && entry.affinity & cpu_bit != 0
                    && cap_left(entry, period_tsc) > 0
            })
            .max_by_key(|(_, entry)| {
                (entry.boosted(), !entry.ran_this_period, entry.credit_per_weight(), Reverse(entry.last_pick))
            })
            .map(|(index, _)| index)?;
        self.picks += 1;
        let entry = &mut self.entries[index];
        entry.last_pick = self.picks;
        entry.woken = false;
        entry.ran_this_period = true;
        // `advance` left `now` before the period's end, so every term is at
        // least 1 (another CPU's clock may lag `period_start` a little).
        let limit = self.slice_tsc.min(period_end - now).min(cap_left(entry, period_tsc));
        // Charged now, so that the run counts against this period even if
        // another CPU starts the next one before this run is charged.
        entry.consume(limit);
        entry.running = Some(limit);
        Some((entry.id, limit))
    }

    /// Charges `ran_tsc` ticks to domain `id`, which ran until `now`, and
    /// ends its run. Ids that are unknown or not running are ignored. The
    /// run counts against the period it was picked in, even when `now` lies
    /// in a later one; only if another CPU started a later period meanwhile
    /// does the difference from the limit (ticks beyond it, or left of it)
    /// fall in that later period.
    pub fn charge(&mut self, id: DomainId, ran_tsc: u64, now: u64) {
        if let Some(index) = self.find(id)
            && let Some(charged) = self.entries[index].running.take()
        {
            let entry = &mut self.entries[index];
            if ran_tsc >= charged {
                entry.consume(ran_tsc - charged);
            } else {
                entry.refund(charged - ran_tsc);
            }
        }
        self.advance(now);
    }

    /// When a runnable domain held back by its cap becomes eligible again:
    /// the start of the next period (or `now`, if that has passed). `None`
    /// when no runnable domain is capped out.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        let period_end = self.period_end()?;
        self.entries
            .iter()
            .any(|entry| entry.runnable && cap_left(entry, self.period_tsc) == 0)
            .then_some(period_end.max(now))
    }

    /// Index of domain `id` in `entries`.
    fn find(&self, id: DomainId) -> Option<usize> {
        self.entries.iter().position(|entry| entry.id == id)
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

    /// Shares the current period again among the domains taking part in it
    /// (those with a grant), adjusting each one's credit by the change in
    /// its grant: when a domain joins, or the capacity changes.
    fn share_period_again(&mut self) {
        let mut taking_part = [false; N];
        for (takes_part, entry) in taking_part.iter_mut().zip(&self.entries) {
            *takes_part = entry.grant.is_some();
        }
        let grants = self.water_fill(&taking_part);
        for (entry, (grant, full_weight)) in self.entries.iter_mut().zip(grants) {
            if let Some(old_grant) = entry.grant {
                entry.credit = entry.credit.saturating_add(grant - old_grant);
                entry.grant = Some(grant);
                entry.full_weight = full_weight;
            }
        }
    }

    /// The accounting at a period boundary: clamp what each domain carries
    /// over, share the new period among the domains active in the old one,
    /// and reset the per-period state.
    fn grant_credit(&mut self) {
        let carry = saturate_i64(self.slice_tsc);
        let mut taking_part = [false; N];
        for (takes_part, entry) in taking_part.iter_mut().zip(&self.entries) {
            *takes_part = entry.active;
        }
        let grants = self.water_fill(&taking_part);
        for (entry, (grant, full_weight)) in self.entries.iter_mut().zip(grants) {
            entry.credit = entry.credit.clamp(-carry, carry);
            entry.grant = None;
            entry.full_weight = None;
            if entry.active {
                entry.credit = entry.credit.saturating_add(grant);
                entry.grant = Some(grant);
                entry.full_weight = full_weight;
            }
            entry.active = entry.runnable;
            entry.ran_this_period = false;
            entry.used_this_period = 0;
        }
    }

    /// The credit each entry marked in `taking_part` is granted for a
    /// period (0 for the others), with its `full_weight`: the capacity shared
    /// by weight, but at most one period each. Those whose share reaches a
    /// period get one period, and the rest of the capacity is shared again
    /// among the others; this only raises the others' shares, so it ends
    /// after at most one round per entry.
    fn water_fill(&self, taking_part: &[bool; N]) -> [(i64, Option<u64>); N] {
        let period = u128::from(self.period_tsc);
        let weight = |index: usize| u128::from(self.entries[index].weight);
        let mut full = [false; N];
        let mut capacity = u128::from(self.cpus) * period;
        // Capacity and weight of the last round that had entries left: the
        // rate at which weight earns credit.
        let mut rate = (capacity, 1);
        loop {
            let unfilled = |index: &usize| taking_part[*index] && !full[*index];
            let total_weight: u128 = (0..self.entries.len()).filter(unfilled).map(weight).sum();
            if total_weight == 0 {
                break;
            }
            rate = (capacity, total_weight);
            // A share of capacity × weight / total_weight reaches a period.
            let fills: ArrayVec<usize, N> = (0..self.entries.len())
                .filter(unfilled)
                .filter(|&index| capacity * weight(index) >= period * total_weight)
                .collect();
            if fills.is_empty() {
                break;
            }
            for &index in &fills {
                full[index] = true;
            }
            capacity = capacity.saturating_sub(fills.len() as u128 * period);
        }
        let (rate_capacity, rate_weight) = rate;
        core::array::from_fn(|index| match (taking_part[index], full[index]) {
            (false, _) => (0, None),
            // At most the entry's own weight, since its share reached a period.
            (true, true) => {
                let full_weight = ((period * rate_weight) << 16) / rate_capacity.max(1);
                (saturate_i64(self.period_tsc), Some(full_weight.min(weight(index) << 16) as u64))
            }
            // Below a period, since the entry was not filled.
            (true, false) => (saturate_i64((rate_capacity * weight(index) / rate_weight) as u64), None),
        })
    }
}

/// Checks a weight against `MIN_WEIGHT..=MAX_WEIGHT`.
fn check_weight(weight: u32) -> Result<(), SchedError> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) { Ok(()) } else { Err(SchedError::InvalidWeight) }
}

/// Ticks `entry` may still run in this period under its cap (`u64::MAX`
/// without a cap). A cap's budget is rounded up, so it is never zero.
fn cap_left(entry: &Entry, period_tsc: u64) -> u64 {
    if entry.cap_percent == 0 {
        return u64::MAX;
    }
    // At most period_tsc, since cap_percent <= 100.
    let budget = (u128::from(period_tsc) * u128::from(entry.cap_percent)).div_ceil(100) as u64;
    budget.saturating_sub(entry.used_this_period)
}

/// `value` as an `i64`, saturating at `i64::MAX`.
fn saturate_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
            Machine { scheduler, now: 123_456_789, cpus: vec![cpu; cpus as usize], used: HashMap::new() }
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
}
