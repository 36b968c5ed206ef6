//! The hypervisor's state and its run loop: pick a domain with the
//! scheduler, enter it, handle its VM exits until its slice ends, repeat.
//! Nothing a domain does can stop this loop; a domain that misbehaves is
//! marked crashed and no longer entered.
//!
//! Every CPU runs the loop ([`run`]). Each domain has a lock of its own
//! ([`DOMAINS`]), and so does the scheduler ([`SCHEDULER`], taken last);
//! what concerns several domains (dom0's foreign window, creating and
//! destroying domains, binding channels, grants) is under hv's table lock
//! ([`State`]), which comes first and is held with every domain's lock
//! ([`lock`]). The run loop itself takes no table lock: it
//! looks at each domain under its own lock to pick the next vCPU. No lock is held
//! across a VM entry. After an exit a CPU takes its domain's lock alone
//! for what concerns that domain only (most exits, scheduling and event
//! hypercalls); a grant copy also takes the other domain's lock
//! ([`with_other`]); a send to another domain takes the receiver's alone,
//! once the sender's is let go ([`raise_remote`]);
//! exits that need nothing but the vCPU (CPUID, hypercalls that read no
//! state) take no lock ([`handle_exit_unlocked`]). A CPU that holds a
//! domain's lock waits only for the lock of a domain in a higher slot
//! (the table lock's holder takes every domain in slot order; a grant
//! copy takes a lower slot's only if it is free), so no two CPUs wait for each
//! other.
//!
//! While a CPU runs a vCPU, `VcpuSlot::running` is set and the vCPU is out
//! of its slot, so no other CPU can touch it: they set flags
//! (`upcall_due`, `reschedule`, `paused`) under the domain's lock and kick
//! the CPU that runs it ([`Domain::notify`]), which looks at the flags
//! after its next exit (the kick is an external-interrupt exit). Domains
//! stay in their slot from creation to destruction (stable handles), and a
//! domain with a running vCPU is not destroyed, so a CPU's slot number
//! stays valid while it runs one of the domain's vCPUs.

use abi::DomainId;
use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::domctl::State;
use hvcore::event_ops::Call;
use hvcore::exits::Exit;
use hvcore::platform::Platform;
use hvcore::platform::SCHEDULER_ENTRIES;
use hvcore::scheduler::Scheduler;
use hvcore::xen::XenCall;
use spin::mutex::TicketMutex;

use crate::arch::machine::Machine;
use crate::arch::vmx::Vcpu;
use crate::arch::{cpu, lapic, smp};
use hvcore::domain::{DomainGuard as Guard, from_sched_key, sched_key};

/// Longest time slice in TSC ticks (about 2 million instructions under
/// Bochs, where the TSC counts instructions; about 1 ms on a 2 GHz CPU).
const TIME_SLICE_TSC: u64 = 2 << 20;
/// Scheduler accounting period: weights and caps are shares of this.
const PERIOD_TSC: u64 = 16 * TIME_SLICE_TSC;
/// How many times per slice `run_slice` may re-arm the preemption timer
/// with the slice's remaining wall time (see there).
const TIMER_RETARGETS: u64 = 8;

/// The VMX-preemption timer value for `tsc` ticks: the timer counts down
/// once every 2^`rate` TSC ticks (SDM 26.5.1); at least 1.
fn preemption_ticks(tsc: u64, rate: u8) -> u32 {
    (tsc >> rate).clamp(1, u32::MAX as u64) as u32
}

/// A domain on this machine.
pub type Domain = hvcore::domain::Domain<Machine>;
/// One domain of this machine, locked.
pub type DomainGuard<'a> = Guard<'a, Machine>;

/// hv's table lock and what it guards. The lock is fair, so every CPU
/// gets its turn however busy the others are. It comes before any
/// domain's lock.
static STATE: TicketMutex<State> = TicketMutex::new(State::new());

/// The scheduler, under a lock of its own that comes after any domain's
/// (a CPU holding it takes no other).
pub static SCHEDULER: TicketMutex<Scheduler<SCHEDULER_ENTRIES>> =
    TicketMutex::new(Scheduler::new(PERIOD_TSC, TIME_SLICE_TSC));

/// The domains, each under its own lock. Far too large for a stack (every
/// domain's port table and statistics), so they live here, built in place.
pub static DOMAINS: hvcore::domain::Domains<Machine> = hvcore::domain::Domains::new();

/// hv's state with every domain locked.
pub type Hypervisor<'a> = hvcore::domctl::Hypervisor<'a, Machine>;

/// Takes the table lock and every domain's.
pub fn lock() -> Hypervisor<'static> {
    Hypervisor { state: STATE.lock(), domains: DOMAINS.lock_all() }
}

/// Runs domains on this CPU forever: every CPU's loop after boot. It
/// takes no lock of its own: each domain's, one at a time, to look at it,
/// and the scheduler's to pick and to charge.
pub fn run() -> ! {
    let cpu = smp::this_cpu();
    let this = smp::this();
    loop {
        this.kicked.store(false, core::sync::atomic::Ordering::Relaxed);
        crate::events::deliver_device_interrupts();
        let mut choice = choose(cpu);
        if choice.picked.is_none() {
            // About to idle: say so, then look once more. Whoever makes a
            // vCPU runnable does it under its domain's lock and then looks
            // for an idle CPU to kick (smp::wake_idle_cpu): either it sees
            // this CPU idle, or this second look (which takes that lock
            // after) sees the vCPU.
            smp::set_idle(true);
            choice = choose(cpu);
        }
        match choice.picked {
            Some((key, budget)) => {
                smp::set_idle(false);
                let now = choice.now;
                // Wake in time for the next timer even if this vCPU spins.
                let slice =
                    choice.next_timer.map_or(budget, |deadline| budget.min(deadline.saturating_sub(now).max(1)));
                let (id, vcpu) = from_sched_key(key);
                let index = DOMAINS.slot_of(id);
                let (ran, ended) = index.map_or((0, false), |index| run_slice(index, id, vcpu, slice, cpu));
                // A domain that crashed or shut down leaves its peers'
                // channels Closed at once (its own lock let go first).
                if let Some(index) = index.filter(|_| ended) {
                    hvcore::event_ops::end_channels(&mut lock().domains, index);
                }
                SCHEDULER.lock().charge(key, ran, cpu::rdtsc());
            }
            None => {
                let wake = match (choice.next_timer, choice.next_event) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // Device interrupts and kicks also end the wait.
                lapic::wait_until(wake.unwrap_or(u64::MAX), &this.kicked);
                smp::set_idle(false);
            }
        }
    }
}

/// What one look at the domains found ([`choose`]).
struct Choice {
    /// The vCPU (scheduler key) this CPU runs next and its budget.
    picked: Option<(u32, u64)>,
    /// The TSC when the look began.
    now: u64,
    /// The earliest vCPU timer still armed.
    next_timer: Option<u64>,
    /// When the scheduler next has something to say (a period's end).
    next_event: Option<u64>,
}

/// Looks at every domain in turn, each under its own lock: fires the vCPU
/// timers that are due and tells the scheduler which vCPUs can run and
/// where; then picks a vCPU for CPU `cpu`.
fn choose(cpu: usize) -> Choice {
    let now = cpu::rdtsc();
    let mut next_timer: Option<u64> = None;
    // Each vCPU's state, snapshotted under its domain's lock and numbered
    // there, then all applied under one take of the scheduler's lock (not
    // one a domain): the numbers keep a snapshot older than one another
    // CPU applied from overwriting it (`Scheduler::apply_snapshot`).
    let mut snapshots: ArrayVec<(u32, bool, u64, u64), SCHEDULER_ENTRIES> = ArrayVec::new();
    DOMAINS.for_each(|domain| {
        if let Some(deadline) = hvcore::event_ops::fire_timers(domain, now) {
            next_timer = Some(next_timer.map_or(deadline, |earliest| earliest.min(deadline)));
        }
        for vcpu in 0..domain.vcpu_count {
            let number = SNAPSHOTS.fetch_add(1, Ordering::Relaxed) + 1;
            let state = (sched_key(domain.id, vcpu), domain.runnable(vcpu), domain.vcpus[vcpu].affinity, number);
            let _ = snapshots.try_push(state);
        }
    });
    let mut scheduler = SCHEDULER.lock();
    // By reference: moving the ArrayVec would copy all its capacity.
    for &(key, runnable, affinity, number) in &snapshots {
        scheduler.apply_snapshot(key, runnable, affinity, number);
    }
    Choice { picked: scheduler.pick(now, cpu as u32), now, next_timer, next_event: scheduler.next_event(now) }
}

/// Numbers the vCPU state snapshots `choose` takes (see there). Taken
/// under the snapshotted domain's lock, whose release orders it before any
/// later snapshot of that domain on another CPU.
static SNAPSHOTS: AtomicU64 = AtomicU64::new(0);

/// Runs vCPU `v` of domain `id` (in slot `index`) on CPU `cpu` for at most
/// `slice` TSC ticks of wall time, handling its exits, if it can run now.
/// Holds no lock across a VM entry, and only the domain's own lock after
/// an exit, unless the exit concerns other domains: then hv's table lock
/// and every domain's (`lock`). Returns the ticks it was
/// scheduled (charged to it, including hv's work on its behalf) and
/// whether the domain has ended (crashed or shut down) with its channels
/// still to be ended.
///
/// The vCPU stays out of its slot while this CPU runs it (`running` is
/// set), so only this CPU reaches its registers and VMCS, and the domain
/// cannot be destroyed meanwhile (destroy waits for its vCPUs to stop).
///
/// The VMX-preemption timer counts only guest time (and, without the
/// "save timer" exit control, restarts at every entry), so a vCPU that
/// spends its slice in hypercalls or cheap exits would outrun it: after
/// every exit one RDTSC compares the slice's wall-clock deadline, and the
/// timer is re-armed with what is left of the slice whenever
/// `slice / TIMER_RETARGETS` has passed since it was last set, so a long
/// stretch without exits overruns the slice by at most that much.
#[inline(never)]
fn run_slice(index: usize, id: DomainId, v: usize, slice: u64, cpu: usize) -> (u64, bool) {
    let capabilities = smp::capabilities();
    // It may have blocked, been paused or gone since the scheduler chose it.
    let Some(mut domain) = DOMAINS.lock(index).filter(|domain| domain.id == id && domain.runnable(v)) else {
        return (0, false);
    };
    let Some(mut vcpu) = domain.vcpus[v].vcpu.take() else { return (0, false) };
    vcpu.check_out(cpu, capabilities);
    domain.ept_cpus |= 1 << (cpu % 64);
    smp::set_current_vcpu(v);
    let slot = &mut domain.vcpus[v];
    slot.running = true;
    if slot.last_cpu != cpu as u32 && slot.last_cpu != u32::MAX {
        slot.moves = slot.moves.saturating_add(1);
    }
    slot.last_cpu = cpu as u32;
    slot.reschedule = false;
    let start = cpu::rdtsc();
    // The TSC does not wrap in practice (2^64 ticks are over a century),
    // so plain sums keep the hot path free of saturation.
    let deadline = start + slice;
    let retarget_every = slice / TIMER_RETARGETS;
    // The hot path compares the TSC with one value: the deadline or the
    // next re-arming of the timer, whichever is first.
    let mut next_check = (start + retarget_every).min(deadline);
    let rate = capabilities.preemption_timer_rate;
    vcpu.set_preemption_timer(preemption_ticks(slice, rate));
    let mut unlocked = UnlockedExits::default();
    // A send to another domain, raised once the caller's lock is let go.
    let mut raise = None;
    loop {
        if domain.vcpus[v].upcall_due {
            crate::events::deliver_upcall(&mut domain, v, &mut vcpu);
        }
        drop(domain);
        if let Some(send) = raise.take() {
            raise_remote(id, send);
        }
        smp::enter_guest_mode();
        // Exits that touch nothing but this vCPU are handled without any
        // lock; anything another CPU wants from this one comes as a kick
        // (an external-interrupt exit), which takes the domain's lock.
        let (raw, slice_over) = loop {
            let raw = vcpu.enter();
            if !handle_exit_unlocked(&mut vcpu, raw, &mut unlocked) {
                break (raw, false);
            }
            let now = cpu::rdtsc();
            if now >= next_check {
                if now >= deadline {
                    break (raw, true);
                }
                next_check = (now + retarget_every).min(deadline);
                vcpu.set_preemption_timer(preemption_ticks(deadline - now, rate));
            }
        };
        smp::leave_guest_mode();
        domain = DOMAINS.lock_running(index);
        if slice_over {
            break;
        }
        if matches!(raw, Ok(Vcpu::VMCALL_EXIT)) {
            // The hot path of the locked exits, kept inline.
            let number = vcpu.registers.rax;
            // Move past VMCALL first, so a hypercall that blocks resumes after it.
            vcpu.skip_exit_instruction();
            domain.count_exit(Vcpu::VMCALL_EXIT);
            // Xen's calls answer in Xen's terms (their value or -errno),
            // Mica's own in Mica's.
            vcpu.registers.rax = if number == MICA_EVENT && vcpu.registers.rdi == MICA_SEND {
                // The most frequent call of all, ahead of the tables.
                // Ports beyond the table are refused (by `send`) as
                // every port above 2^32 is.
                let port = vcpu.registers.rsi.min(u64::from(u32::MAX)) as u32;
                let sent = hvcore::event_ops::send(&mut domain, port);
                match sent {
                    Ok(Call::Raise { target, port, from }) => {
                        raise = Some(RemoteRaise { target, port, from });
                        0
                    }
                    Ok(Call::Done(Ok(_))) => 0,
                    Ok(Call::Done(Err(error))) | Err(error) => error.code() as u64,
                    Ok(Call::Pair { .. } | Call::Table) => abi::Error::InvalidArgument.code() as u64,
                }
            } else if number == XEN_EVENT_CHANNEL_OP && vcpu.registers.rdi as u32 == XEN_SEND {
                // Xen's send, ahead of Xen's tables: the port is in guest
                // memory (`evtchn_send`), read through the guest's tables.
                let space = vcpu.address_space(v);
                match hvcore::xen::send_port(&domain, &space, vcpu.registers.rsi) {
                    Ok(port) => match hvcore::event_ops::send(&mut domain, port) {
                        Ok(Call::Raise { target, port, from }) => {
                            raise = Some(RemoteRaise { target, port, from });
                            0
                        }
                        Ok(_) => 0,
                        Err(error) => hvcore::xen::send_errno(error).map_or(0, |errno| errno.code() as u64),
                    },
                    Err(errno) => errno.code() as u64,
                }
            } else if !abi::xen::hypercall::is_mica_number(number) {
                // Xen's calls, and every number outside Mica's range:
                // Xen's -ENOSYS for those it does not define.
                let arguments = vcpu.arguments();
                let space = vcpu.address_space(v);
                let result = match hvcore::xen::dispatch(&mut domain, &space, number, arguments) {
                    XenCall::Done(result) => result,
                    XenCall::Raise { target, port, from } => {
                        raise = Some(RemoteRaise { target, port, from });
                        Ok(0)
                    }
                    XenCall::Table => {
                        drop(domain);
                        let result = hvcore::xen::dispatch_table(&mut lock(), index, &space, number, arguments);
                        domain = DOMAINS.lock_running(index);
                        result
                    }
                };
                result.unwrap_or_else(|errno| errno.code() as u64)
            } else {
                let arguments = vcpu.arguments();
                let result = match crate::hypercall::dispatch_own(&mut domain, index, number, arguments) {
                    Call::Done(result) => result,
                    Call::Raise { target, port, from } => {
                        raise = Some(RemoteRaise { target, port, from });
                        Ok(0)
                    }
                    Call::Pair { other } => {
                        let mut result = Err(abi::Error::NotFound);
                        domain = with_other(domain, index, other, |caller, other| {
                            if let Some(other) = other {
                                result = hvcore::grant_ops::copy(caller, other, arguments);
                            }
                        });
                        result
                    }
                    Call::Table => {
                        // Out of line: the hot path stays small.
                        drop(domain);
                        let result = crate::hypercall::dispatch(&mut lock(), index, number, arguments);
                        domain = DOMAINS.lock_running(index);
                        result
                    }
                };
                crate::hypercall::encode(result) as u64
            };
            let slot = &mut domain.vcpus[v];
            if slot.reschedule {
                if core::mem::take(&mut slot.restart_call) {
                    restart_hypercall(&mut vcpu, number);
                }
                break;
            }
        } else {
            let (exit, reason) = match raw {
                Ok(raw) => (Vcpu::decode(raw), raw & 0xffff),
                Err(exit) => (exit, u32::MAX),
            };
            domain.count_exit(reason);
            if !hvcore::exits::handle_exit(&mut domain, &mut vcpu, v, exit) || domain.vcpus[v].reschedule {
                break;
            }
        }
        // The slice is wall time, hv's included: one RDTSC per exit.
        let now = cpu::rdtsc();
        if now >= next_check {
            if now >= deadline {
                break;
            }
            next_check = (now + retarget_every).min(deadline);
            vcpu.set_preemption_timer(preemption_ticks(deadline - now, rate));
        }
    }
    unlocked.count_into(&mut domain);
    vcpu.check_in();
    let slot = &mut domain.vcpus[v];
    slot.running = false;
    let ran = cpu::rdtsc().wrapping_sub(start);
    slot.cpu_time_tsc += ran;
    // A vCPU taken down while it ran is retired now that it is off the CPU.
    if slot.up {
        slot.vcpu = Some(vcpu);
    } else {
        Machine::release_vcpu(vcpu);
    }
    let ended = domain.ended.is_some() && !domain.channels_ended;
    drop(domain);
    if let Some(send) = raise {
        raise_remote_cold(id, send);
    }
    (ran, ended)
}

/// Mica's event send (`Hypercall::Event`, `EventOp::Send`), which
/// [`run_slice`] takes ahead of the dispatch tables.
const MICA_EVENT: u64 = abi::Hypercall::Event as u64;
const MICA_SEND: u64 = abi::event::EventOp::Send as u64;
/// Xen's event send (`event_channel_op`, `EVTCHNOP_send`), taken likewise.
const XEN_EVENT_CHANNEL_OP: u64 = abi::xen::hypercall::Hypercall::EventChannelOp.number();
const XEN_SEND: u32 = abi::xen::event_channel::EvtchnOp::Send.number();

/// [`raise_remote`] out of line, for a send that ended a slice.
#[inline(never)]
fn raise_remote_cold(sender: DomainId, send: RemoteRaise) {
    raise_remote(sender, send);
}

/// A send to another domain that [`run_slice`] finishes once it has let
/// go of the sender's lock (`Call::Raise`).
#[derive(Clone, Copy)]
struct RemoteRaise {
    target: DomainId,
    port: u32,
    from: u32,
}

/// The end of domain `sender`'s send (`Call::Raise`): port `port` of
/// domain `target` is raised, under its lock alone, if it is still
/// connected to the sender's port `from`. The sender's lock is not held:
/// the receiver's binding is what decides (a channel closed or rebound
/// since the sender read its port is closed on both ends, under both
/// locks), and holding one lock only needs no lock order. It runs before
/// the sender's vCPU is entered again, so the guest sees its send done
/// when the hypercall returns.
#[inline(always)]
fn raise_remote(sender: DomainId, RemoteRaise { target, port, from }: RemoteRaise) {
    if let Some(mut receiver) = DOMAINS.slot_of(target).and_then(|slot| DOMAINS.lock(slot)).filter(|d| d.id == target) {
        hvcore::event_ops::raise_connected(&mut receiver, port, sender, from);
    }
}

/// Runs `f` on `caller` (locked, in slot `index`) and on domain `other`
/// if it exists, both locked: `other`'s lock is taken with the caller's
/// held when that keeps the slot order (a higher slot) or needs no wait (a
/// free lower one); else the caller's is let go and both are taken in slot
/// order. Returns the caller, locked.
#[inline]
fn with_other(
    caller: DomainGuard<'static>,
    index: usize,
    other: DomainId,
    f: impl FnOnce(&mut Domain, Option<&mut Domain>),
) -> DomainGuard<'static> {
    let Some(slot) = DOMAINS.slot_of(other).filter(|&slot| slot != index) else {
        let mut caller = caller;
        f(&mut caller, None);
        return caller;
    };
    let (mut caller, other_guard) = match if slot > index { Some(DOMAINS.lock(slot)) } else { DOMAINS.try_lock(slot) } {
        Some(locked) => (caller, locked),
        None => {
            drop(caller);
            let locked = DOMAINS.lock(slot);
            (DOMAINS.lock_running(index), locked)
        }
    };
    let mut other_guard = other_guard.filter(|domain| domain.id == other);
    f(&mut caller, other_guard.as_deref_mut());
    caller
}

/// Exits [`run_slice`] handled without any lock in the current slice,
/// added to the domain's exit counts when the slice ends.
#[derive(Default)]
struct UnlockedExits {
    hypercalls: u64,
    cpuid: u64,
}

impl UnlockedExits {
    fn count_into(&mut self, domain: &mut Domain) {
        domain.count_exits(Vcpu::VMCALL_EXIT, core::mem::take(&mut self.hypercalls));
        domain.count_exits(Vcpu::CPUID_EXIT, core::mem::take(&mut self.cpuid));
    }
}

/// Handles an exit that needs nothing but the vCPU that made it (which
/// this CPU owns while it runs), without any lock: the hypercalls that
/// read no state (`hypercall::without_state`) and CPUID. Returns false for
/// every other exit, which [`run_slice`] handles under the lock.
#[inline(always)]
fn handle_exit_unlocked(vcpu: &mut Vcpu, raw: Result<u32, Exit>, counts: &mut UnlockedExits) -> bool {
    match raw {
        Ok(Vcpu::VMCALL_EXIT) => {
            let Some(result) = crate::hypercall::without_state(vcpu.registers.rax) else { return false };
            vcpu.registers.rax = result as u64;
            vcpu.skip_exit_instruction();
            counts.hypercalls += 1;
            true
        }
        Ok(Vcpu::CPUID_EXIT) => {
            emulate_cpuid(vcpu);
            counts.cpuid += 1;
            true
        }
        _ => false,
    }
}

/// CPUID as hv's policy (`hvcore::cpuid_policy`) shows it.
#[inline]
pub(crate) fn emulate_cpuid(vcpu: &mut Vcpu) {
    let leaf = vcpu.registers.rax as u32;
    // OSXSAVE mirrors the guest's CR4, not hv's (CPUID ran in root).
    let osxsave = leaf == 1 && vcpu.guest_osxsave();
    let subleaf = vcpu.registers.rcx as u32;
    let raw = cpu::cpuid(leaf, subleaf);
    let ids = vcpu.ids;
    let registers = &mut vcpu.registers;
    let [eax, ebx, mut ecx, edx] =
        hvcore::cpuid_policy::filter_cpuid(leaf, subleaf, [raw.eax, raw.ebx, raw.ecx, raw.edx], ids);
    if leaf == 1 {
        ecx = hvcore::cpuid_policy::with_osxsave(ecx, osxsave);
    }
    registers.rax = eax as u64;
    registers.rbx = ebx as u64;
    registers.rcx = ecx as u64;
    registers.rdx = edx as u64;
    vcpu.skip_exit_instruction();
}

/// Makes the caller's VMCALL run again when it is next entered: the call
/// had to wait for another CPU (`VcpuSlot::restart_call`), so the registers
/// go back to how the guest made the call (RAX the hypercall number, RIP
/// at the VMCALL). Cold: taken only while a target is being stopped.
#[cold]
#[inline(never)]
fn restart_hypercall(vcpu: &mut Vcpu, number: u64) {
    vcpu.registers.rax = number;
    vcpu.rewind_exit_instruction();
}
