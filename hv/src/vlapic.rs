//! A virtual local APIC for each vCPU of a guest (dom0 has none), in
//! x2APIC mode and reached only through MSRs: the x2APIC registers
//! (0x800-0x83f), IA32_APIC_BASE and IA32_TSC_DEADLINE. There is no
//! memory-mapped page, so hv decodes no instruction (SDM Vol. 3A 11.12).
//! Linux as a PVH guest needs one to register its per-CPU Xen timer, and
//! starts its other vCPUs with INIT and Start-up IPIs.
//!
//! | MSR         | Register                 | Reset              | Access |
//! |-------------|--------------------------|--------------------|--------|
//! | 0x1b        | IA32_APIC_BASE           | 0xfee00c00, BSP (bit 8) on vCPU 0 | read, write (below) |
//! | 0x802       | ID                       | the vCPU's index   | read   |
//! | 0x803       | version                  | 0x50014 (6 LVTs)   | read   |
//! | 0x808       | TPR                      | 0                  | read, write (bits 7:0) |
//! | 0x80a       | PPR                      | 0                  | read   |
//! | 0x80b       | EOI                      |                    | write 0 |
//! | 0x80d       | LDR                      | cluster id << 16, 1 << (id % 16) | read |
//! | 0x80f       | SVR                      | 0xff (APIC software-disabled) | read, write (bits 9:0) |
//! | 0x810-0x817 | ISR                      | 0                  | read   |
//! | 0x818-0x81f | TMR                      | 0 (every interrupt is edge-triggered) | read |
//! | 0x820-0x827 | IRR                      | 0                  | read   |
//! | 0x828       | ESR                      | 0                  | read, write 0 (latches the errors) |
//! | 0x830       | ICR                      | 0                  | read, write (sends an IPI) |
//! | 0x832-0x837 | LVT timer, thermal, performance, LINT0, LINT1, error | 0x10000 (masked) | read, write |
//! | 0x838       | timer initial count      | 0                  | read, write |
//! | 0x839       | timer current count      | 0                  | read   |
//! | 0x83e       | timer divide configuration | 0 (by 2)         | read, write (bits 0, 1, 3) |
//! | 0x83f       | self IPI                 |                    | write (bits 7:0) |
//! | 0x6e0       | IA32_TSC_DEADLINE        | 0                  | read, write (0 in other timer modes) |
//!
//! As a CPU does, hv answers with #GP a read of a write-only register, a
//! write to a read-only one, a set reserved bit, any other MSR of the
//! range, and every x2APIC register while the APIC is not in x2APIC mode.
//! IA32_APIC_BASE follows the SDM's states (11.12.5): x2APIC to disabled,
//! disabled to xAPIC, xAPIC to x2APIC; the other changes, EXTD without EN
//! and reserved bits are #GP. Disabling resets the APIC. In xAPIC mode
//! the APIC has no registers (hv maps no APIC page), and the base address
//! stays 0xfee00000 (moving it is #GP).
//!
//! Interrupts are edge-triggered. A vector becomes pending in the IRR; the
//! highest one whose priority class is above the PPR's is injected as an
//! external interrupt when the guest takes interrupts (the run loop's
//! upcall path: [`take_interrupt`]) and moves to the ISR until an EOI.
//! Xen's event upcall goes first and bypasses the APIC, as Xen's callback
//! vector does (no ISR bit, no EOI).
//!
//! The timer counts TSC ticks through the divider (one count per 2^n
//! ticks). One-shot and periodic modes load their count from a write of
//! the initial count; a periodic period is at least 200 µs
//! ([`MIN_PERIOD_US`], as KVM limits it), so a guest cannot make hv fire
//! its timer without end; a new divide value applies from the next
//! initial count. TSC-deadline mode fires when the TSC reaches
//! IA32_TSC_DEADLINE. A timer is fired by the scheduler's look at the
//! domain (`event_ops::fire_timers`) or by the vCPU's next APIC access.
//!
//! IPIs (ICR, self IPI) reach the vCPUs of the same domain: by x2APIC id
//! (physical), by cluster and bit (logical), or with the self, all and
//! all-but-self shorthands; 0xffffffff is every vCPU. Fixed interrupts are
//! taken by a vCPU that is up with its APIC enabled. INIT (assert) puts a
//! vCPU that is down into wait-for-SIPI, and a Start-up IPI then starts it
//! in real mode at vector × 0x1000 (CS = vector << 8, IP = 0), as a CPU
//! does. INIT to a vCPU that runs, NMI, SMI and lowest-priority IPIs are
//! refused and logged: the guest's interrupt is lost.
//!
//! CR8 stays a separate virtual TPR (`cpu_state::cr8_write`), which this
//! APIC does not read; Linux on x86-64 writes the TPR through the MSR.

use abi::domctl::VcpuContext;

use crate::domain::Domain;
use crate::log_ring::Level;
use crate::platform::{Platform, StartRegisters};

/// IA32_APIC_BASE (SDM Vol. 3A 11.4.4).
pub const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE (SDM Vol. 3A 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC's registers: MSR 0x800 + the xAPIC offset / 16 (SDM Vol. 3A
/// 11.12.1.2, Table 11-6).
const X2APIC_FIRST: u32 = 0x800;
const X2APIC_LAST: u32 = 0x83f;

/// The only APIC base address (the xAPIC page, which hv does not map).
pub const BASE_ADDRESS: u64 = 0xfee0_0000;
const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;
/// The address field, bits 12 up to the widest MAXPHYADDR (52).
const BASE_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Registers, by MSR number less 0x800.
const ID: u32 = 0x02;
const VERSION: u32 = 0x03;
const TPR: u32 = 0x08;
const PPR: u32 = 0x0a;
const EOI: u32 = 0x0b;
const LDR: u32 = 0x0d;
const SVR: u32 = 0x0f;
const ISR: u32 = 0x10;
const TMR: u32 = 0x18;
const IRR: u32 = 0x20;
const ESR: u32 = 0x28;
const ICR: u32 = 0x30;
const LVT_TIMER: u32 = 0x32;
const LVT_ERROR: u32 = 0x37;
const INITIAL_COUNT: u32 = 0x38;
const CURRENT_COUNT: u32 = 0x39;
const DIVIDE: u32 = 0x3e;
const SELF_IPI: u32 = 0x3f;

/// Version 0x14 (an integrated APIC), six LVT entries (the highest is
/// number 5, bits 23:16), no EOI-broadcast suppression (bit 24).
const VERSION_VALUE: u32 = 0x14 | 5 << 16;
/// SVR: the spurious vector (7:0), APIC software enable (8) and focus
/// processor checking (9) (SDM 11.9).
const SVR_ENABLE: u32 = 1 << 8;
const SVR_WRITABLE: u32 = 0x3ff;
const SVR_RESET: u32 = 0xff;
/// LVT entries (SDM 11.5.1, Figure 11-8), in MSR order from the timer.
const LVT_MASKED: u32 = 1 << 16;
const LVT_WRITABLE: [u32; 6] = [
    0x0007_00ff, // timer: vector, mask, timer mode
    0x0001_07ff, // thermal: vector, delivery mode, mask
    0x0001_07ff, // performance counters
    0x0001_a7ff, // LINT0: and pin polarity, trigger mode
    0x0001_a7ff, // LINT1
    0x0001_00ff, // error: vector, mask
];
const TIMER_ERROR: usize = (LVT_ERROR - LVT_TIMER) as usize;
/// The timer modes (LVT timer bits 18:17): 0 is one-shot, 3 reserved.
const PERIODIC: u32 = 1;
const TSC_DEADLINE: u32 = 2;
/// ESR bits hv sets (SDM 11.5.3): an IPI of vector 0-15 sent, or any
/// interrupt of vector 0-15 received.
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ICR (SDM 11.12.9): vector 7:0, delivery mode 10:8, destination mode
/// 11 (logical), level 14 (assert), trigger mode 15, shorthand 19:18,
/// destination 63:32. Bits 12, 13, 16, 17 and 31:20 are reserved.
const ICR_WRITABLE: u64 = 0xffff_ffff_000c_cfff;
const ICR_LOGICAL: u64 = 1 << 11;
const ICR_ASSERT: u64 = 1 << 14;
const FIXED: u64 = 0;
const INIT: u64 = 5;
const STARTUP: u64 = 6;
/// The destination that names every APIC.
const BROADCAST: u32 = u32::MAX;

/// Shortest period of a periodic timer, in microseconds.
pub const MIN_PERIOD_US: u64 = 200;

/// What IA32_APIC_BASE's EN and EXTD bits say (SDM 11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disabled,
    XApic,
    X2Apic,
}

/// An access a CPU answers with #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// The time an access happens at.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// The TSC now.
    pub now: u64,
    /// The shortest period of a periodic timer, in TSC ticks.
    pub min_period: u64,
}

impl Clock {
    /// The machine's clock now.
    pub fn of<P: Platform>() -> Clock {
        Clock { now: P::tsc(), min_period: P::tsc_khz() * MIN_PERIOD_US / 1000 }
    }
}

/// One vCPU's APIC (see the module documentation). Its x2APIC id is the
/// vCPU's index, which every access is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualApic {
    mode: Mode,
    /// Pending and in-service vectors, bit v % 32 of word v / 32.
    irr: [u32; 8],
    isr: [u32; 8],
    tpr: u32,
    svr: u32,
    /// Errors since the last ESR write, and what that write latched.
    errors: u32,
    esr: u32,
    icr: u64,
    lvt: [u32; 6],
    divide: u32,
    initial_count: u32,
    /// When the count was loaded or last reloaded, its TSC ticks per
    /// count and per period (one-shot: the whole count).
    count_start: u64,
    ticks_per_count: u64,
    period: u64,
    /// When the timer fires next (TSC-deadline mode: IA32_TSC_DEADLINE),
    /// 0 = not armed.
    deadline: u64,
    /// An INIT reached it while its vCPU was down: a Start-up IPI starts it.
    wait_for_sipi: bool,
    /// It made the run loop look for its vector ([`update`]) and may
    /// still have one ready: the upcall's injection looks at this alone.
    signalled: bool,
}

impl Default for VirtualApic {
    fn default() -> Self {
        Self::RESET
    }
}

/// The highest vector set in `bits`.
fn highest(bits: &[u32; 8]) -> Option<u8> {
    let word = bits.iter().rposition(|&word| word != 0)?;
    Some((word * 32 + 31 - bits[word].leading_zeros() as usize) as u8)
}

fn set(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector / 32)] |= 1 << (vector % 32);
}

fn clear(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector / 32)] &= !(1 << (vector % 32));
}

/// The logical id of x2APIC `id`: cluster id / 16 in bits 31:16, bit id % 16
/// below (SDM 11.12.10.2).
fn logical_id(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 0xf)
}

impl VirtualApic {
    /// The state a vCPU starts with: x2APIC mode (as firmware leaves it),
    /// software-disabled, every LVT masked, nothing pending.
    pub const RESET: VirtualApic = VirtualApic {
        mode: Mode::X2Apic,
        irr: [0; 8],
        isr: [0; 8],
        tpr: 0,
        svr: SVR_RESET,
        errors: 0,
        esr: 0,
        icr: 0,
        lvt: [LVT_MASKED; 6],
        divide: 0,
        initial_count: 0,
        count_start: 0,
        ticks_per_count: 2,
        period: 0,
        deadline: 0,
        wait_for_sipi: false,
        signalled: false,
    };

    /// When the timer fires next (TSC), 0 if it is not armed.
    #[inline]
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// The vector to inject next: the highest pending one whose priority
    /// class is above the processor priority's.
    pub fn ready(&self) -> Option<u8> {
        let vector = highest(&self.irr)?;
        (u32::from(vector) & 0xf0 > self.ppr() & 0xf0).then_some(vector)
    }

    /// Takes the vector [`VirtualApic::ready`] names: it is in service
    /// from now until an EOI.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.ready()?;
        clear(&mut self.irr, vector);
        set(&mut self.isr, vector);
        Some(vector)
    }

    /// The processor priority: the TPR, or the class of the highest vector
    /// in service if that is higher (SDM 11.8.3.1).
    fn ppr(&self) -> u32 {
        let in_service = highest(&self.isr).map_or(0, u32::from) & 0xf0;
        if self.tpr & 0xf0 >= in_service { self.tpr } else { in_service }
    }

    fn enabled(&self) -> bool {
        self.mode == Mode::X2Apic && self.svr & SVR_ENABLE != 0
    }

    fn timer_mode(&self) -> u32 {
        self.lvt[0] >> 17 & 3
    }

    /// Makes `vector` pending; vectors 0-15 are illegal (ESR).
    fn accept(&mut self, vector: u8) {
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
        } else {
            set(&mut self.irr, vector);
        }
    }

    /// Records an error in the ESR, with the error LVT's interrupt.
    fn signal_error(&mut self, error: u32) {
        self.errors |= error;
        let lvt = self.lvt[TIMER_ERROR];
        if lvt & LVT_MASKED == 0 && lvt as u8 >= 16 {
            set(&mut self.irr, lvt as u8);
        }
    }

    /// The timer's current count at `now` (0 when it is not counting).
    fn current_count(&self, now: u64) -> u32 {
        if self.initial_count == 0 || self.timer_mode() == TSC_DEADLINE {
            return 0;
        }
        let elapsed = now.saturating_sub(self.count_start);
        let left = match self.timer_mode() {
            PERIODIC => self.period - elapsed % self.period,
            _ => self.period.saturating_sub(elapsed),
        };
        (left / self.ticks_per_count).min(u64::from(self.initial_count)) as u32
    }

    /// Fires the timer if it is due at `now`: its vector pending (unless
    /// the LVT is masked); a periodic count reloaded, periods the vCPU
    /// missed merged into this one.
    fn fire_due(&mut self, now: u64) {
        if self.deadline == 0 || self.deadline > now {
            return;
        }
        if self.timer_mode() == PERIODIC {
            let missed = (now - self.deadline) / self.period;
            self.count_start = self.deadline + missed * self.period;
            self.deadline = self.count_start + self.period;
        } else {
            self.deadline = 0;
        }
        if self.lvt[0] & LVT_MASKED == 0 {
            self.accept(self.lvt[0] as u8);
        }
    }

    /// IA32_APIC_BASE as vCPU `id` reads it.
    fn base(&self, id: u32) -> u64 {
        let bsp = if id == 0 { BASE_BSP } else { 0 };
        let mode = match self.mode {
            Mode::Disabled => 0,
            Mode::XApic => BASE_ENABLE,
            Mode::X2Apic => BASE_ENABLE | BASE_EXTD,
        };
        BASE_ADDRESS | bsp | mode
    }

    /// RDMSR of `msr` by vCPU `id`; `None`: #GP.
    pub fn read(&self, id: u32, msr: u32, now: u64) -> Option<u64> {
        let value = match msr {
            IA32_APIC_BASE => return Some(self.base(id)),
            IA32_TSC_DEADLINE if self.timer_mode() == TSC_DEADLINE => return Some(self.deadline),
            IA32_TSC_DEADLINE => return Some(0),
            _ if self.mode != Mode::X2Apic => return None,
            _ => match msr.checked_sub(X2APIC_FIRST)? {
                ID => id,
                VERSION => VERSION_VALUE,
                TPR => self.tpr,
                PPR => self.ppr(),
                LDR => logical_id(id),
                SVR => self.svr,
                register @ ISR..=0x17 => self.isr[(register - ISR) as usize],
                TMR..=0x1f => 0,
                register @ IRR..=0x27 => self.irr[(register - IRR) as usize],
                ESR => self.esr,
                ICR => return Some(self.icr),
                register @ LVT_TIMER..=LVT_ERROR => self.lvt[(register - LVT_TIMER) as usize],
                INITIAL_COUNT => self.initial_count,
                CURRENT_COUNT => self.current_count(now),
                DIVIDE => self.divide,
                _ => return None,
            },
        };
        Some(u64::from(value))
    }

    /// WRMSR of `value` to `msr` by vCPU `id` at `clock`: `Err` is #GP;
    /// `Ok(Some(icr))` asks for the IPI `icr` describes to be sent.
    pub fn write(&mut self, id: u32, msr: u32, value: u64, clock: Clock) -> Result<Option<u64>, Fault> {
        match msr {
            IA32_APIC_BASE => return self.write_base(value).map(|()| None),
            IA32_TSC_DEADLINE => {
                if self.timer_mode() == TSC_DEADLINE {
                    self.deadline = value;
                }
                return Ok(None);
            }
            _ if self.mode != Mode::X2Apic => return Err(Fault),
            _ => {}
        }
        let register = msr.checked_sub(X2APIC_FIRST).filter(|_| msr <= X2APIC_LAST).ok_or(Fault)?;
        if register == ICR {
            if value & !ICR_WRITABLE != 0 {
                return Err(Fault);
            }
            self.icr = value;
            return Ok(Some(value));
        }
        // Every other register is 32 bits wide.
        let value = u32::try_from(value).map_err(|_| Fault)?;
        let fits = |writable: u32| if value & !writable == 0 { Ok(()) } else { Err(Fault) };
        match register {
            TPR => fits(0xff).map(|()| self.tpr = value)?,
            EOI => {
                fits(0)?;
                if let Some(vector) = highest(&self.isr) {
                    clear(&mut self.isr, vector);
                }
            }
            SVR => {
                fits(SVR_WRITABLE)?;
                self.svr = value;
                if value & SVR_ENABLE == 0 {
                    // Software-disabled: every LVT masked (SDM 11.4.7.2).
                    self.lvt.iter_mut().for_each(|lvt| *lvt |= LVT_MASKED);
                }
            }
            ESR => {
                fits(0)?;
                self.esr = core::mem::take(&mut self.errors);
            }
            LVT_TIMER..=LVT_ERROR => {
                let index = (register - LVT_TIMER) as usize;
                fits(LVT_WRITABLE[index])?;
                if index == 0 && value >> 17 & 3 == 3 {
                    return Err(Fault);
                }
                let old_mode = self.timer_mode();
                let masked = if self.svr & SVR_ENABLE == 0 { LVT_MASKED } else { 0 };
                self.lvt[index] = value | masked;
                if index == 0 && self.timer_mode() != old_mode {
                    // A new mode disarms the timer (SDM 11.5.4.1).
                    (self.initial_count, self.deadline) = (0, 0);
                }
            }
            INITIAL_COUNT => {
                if self.timer_mode() != TSC_DEADLINE {
                    self.load_count(value, clock);
                }
            }
            DIVIDE => fits(0b1011).map(|()| self.divide = value)?,
            SELF_IPI => {
                fits(0xff)?;
                // A fixed IPI of this vector to itself alone (shorthand 01).
                return Ok(Some(value as u64 | 1 << 18 | u64::from(id) << 32));
            }
            _ => return Err(Fault),
        }
        Ok(None)
    }

    /// Loads the timer's count (0 stops it) at `clock`, through the
    /// divider as it is set now.
    fn load_count(&mut self, count: u32, clock: Clock) {
        let code = (self.divide & 3) | (self.divide & 8) >> 1;
        self.ticks_per_count = 1 << ((code + 1) & 7);
        self.initial_count = count;
        self.count_start = clock.now;
        self.period = u64::from(count) * self.ticks_per_count;
        if self.timer_mode() == PERIODIC {
            self.period = self.period.max(clock.min_period).max(1);
        }
        self.deadline = if count == 0 { 0 } else { clock.now + self.period };
    }

    /// A write of IA32_APIC_BASE: the SDM's mode changes (11.12.5), the
    /// BSP bit kept as it is, the base address fixed.
    fn write_base(&mut self, value: u64) -> Result<(), Fault> {
        if value & !(BASE_BSP | BASE_EXTD | BASE_ENABLE | BASE_ADDRESS_MASK) != 0
            || value & BASE_ADDRESS_MASK != BASE_ADDRESS
        {
            return Err(Fault);
        }
        let mode = match (value & BASE_ENABLE != 0, value & BASE_EXTD != 0) {
            (false, false) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
            (false, true) => return Err(Fault),
        };
        match (self.mode, mode) {
            (old, new) if old == new => {}
            (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic) => return Err(Fault),
            (_, Mode::Disabled) => *self = VirtualApic { mode, ..VirtualApic::RESET },
            _ => self.mode = mode,
        }
        Ok(())
    }
}

/// RDMSR of `msr` (one [`handles`] names) by vCPU `vcpu` of a guest;
/// `None`: #GP.
pub fn read_msr<P: Platform>(domain: &mut Domain<P>, vcpu: usize, msr: u32) -> Option<u64> {
    let now = P::tsc();
    let value = domain.vcpus[vcpu].apic.read(vcpu as u32, msr, now);
    update(domain, vcpu, now);
    value
}

/// Whether `msr` is one of the APIC's (for a guest).
pub fn handles(msr: u32) -> bool {
    matches!(msr, IA32_APIC_BASE | IA32_TSC_DEADLINE | X2APIC_FIRST..=X2APIC_LAST)
}

/// WRMSR of `value` to `msr` (one [`handles`] names) by vCPU `vcpu` of a
/// guest; false: #GP. An IPI is sent at once.
pub fn write_msr<P: Platform>(domain: &mut Domain<P>, vcpu: usize, msr: u32, value: u64) -> bool {
    let clock = Clock::of::<P>();
    match domain.vcpus[vcpu].apic.write(vcpu as u32, msr, value, clock) {
        Err(Fault) => return false,
        Ok(Some(icr)) => send(domain, vcpu, icr, clock.now),
        Ok(None) => {}
    }
    update(domain, vcpu, clock.now);
    true
}

/// Fires vCPU `vcpu`'s timer if it is due at `now` and, if its APIC has a
/// vector ready, makes the run loop inject it (`upcall_due`): the vCPU
/// wakes (unless it polls ports in `sched_op` poll, which only its ports
/// or its timeout end) and its CPU is told.
pub fn update<P: Platform>(domain: &mut Domain<P>, vcpu: usize, now: u64) {
    let polling = domain.polling & 1 << vcpu != 0;
    let slot = &mut domain.vcpus[vcpu];
    slot.apic.fire_due(now);
    if slot.apic.ready().is_none() {
        return;
    }
    slot.apic.signalled = true;
    let was_due = core::mem::replace(&mut slot.upcall_due, true);
    let woke = slot.blocked && !polling;
    if woke {
        slot.blocked = false;
    }
    if woke || !was_due {
        domain.notify(vcpu);
    }
}

/// The interrupt to inject now into vCPU `vcpu`, which takes interrupts:
/// the event upcall (`upcall_vector`) if it is raised, else its APIC's
/// ready vector (now in service). `upcall_due` stays set while another
/// waits, so the run loop asks for the next interrupt window.
pub fn take_interrupt<P: Platform>(domain: &mut Domain<P>, vcpu: usize) -> Option<u8> {
    let upcall_vector = domain.upcall_vector;
    let slot = &mut domain.vcpus[vcpu];
    let vector = if core::mem::take(&mut slot.upcall_raised) { Some(upcall_vector) } else { slot.apic.acknowledge() };
    // The upcall alone (every event of dom0's) reads no APIC register.
    if slot.apic.signalled {
        slot.apic.signalled = slot.apic.ready().is_some();
    }
    slot.upcall_due = slot.apic.signalled;
    vector
}

/// Sends the IPI `icr` describes from vCPU `from` to the vCPUs of its
/// domain it names (see the module documentation).
fn send<P: Platform>(domain: &mut Domain<P>, from: usize, icr: u64, now: u64) {
    let (vector, delivery, destination) = (icr as u8, icr >> 8 & 7, (icr >> 32) as u32);
    let named = |id: u32| match icr >> 18 & 3 {
        0 if destination == BROADCAST => true,
        0 if icr & ICR_LOGICAL != 0 => {
            let logical = logical_id(id);
            destination >> 16 == logical >> 16 && destination & logical & 0xffff != 0
        }
        0 => destination == id,
        1 => id as usize == from,
        2 => true,
        _ => id as usize != from,
    };
    let targets = (0..domain.vcpu_count).filter(|&vcpu| named(vcpu as u32));
    match delivery {
        FIXED if vector < 16 => domain.vcpus[from].apic.signal_error(ESR_SEND_ILLEGAL_VECTOR),
        FIXED => {
            for target in targets {
                let apic = &mut domain.vcpus[target].apic;
                if domain.vcpus[target].up && apic.enabled() {
                    apic.accept(vector);
                    update(domain, target, now);
                }
            }
        }
        // INIT de-assert (level 0) only mattered to the 82489DX.
        INIT if icr & ICR_ASSERT == 0 => {}
        INIT => {
            for target in targets.filter(|&target| target != from) {
                if domain.vcpus[target].up {
                    domain.report_refusal(format_args!("INIT IPI from vCPU {from} to vCPU {target}, which runs"));
                } else {
                    domain.vcpus[target].apic.wait_for_sipi = true;
                }
            }
        }
        STARTUP => {
            for target in targets.filter(|&target| target != from) {
                // Else ignored, as a CPU not waiting for a SIPI does (one
                // that is up never waits: starting resets its APIC).
                if core::mem::take(&mut domain.vcpus[target].apic.wait_for_sipi) {
                    start_in_real_mode(domain, target, vector);
                }
            }
        }
        _ => domain.report_refusal(format_args!("IPI {icr:#x} from vCPU {from} (delivery mode {delivery})")),
    }
}

/// Starts vCPU `vcpu` as a Start-up IPI of `vector` does: real mode at
/// vector × 0x1000 (`platform::VCPU_MODE_REAL`).
fn start_in_real_mode<P: Platform>(domain: &mut Domain<P>, vcpu: usize, vector: u8) {
    let context =
        VcpuContext { rip: u64::from(vector) << 12, mode: crate::platform::VCPU_MODE_REAL, ..VcpuContext::default() };
    if let Err(error) = crate::domctl::start_checked(domain, domain.slot, vcpu, &context, StartRegisters::default()) {
        P::log(Level::Warning, format_args!("d{}: a Start-up IPI could not start vCPU {vcpu}: {error:?}", domain.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};

    /// A clock at TSC 1000 whose periodic timers are at least 400 ticks.
    fn at(now: u64) -> Clock {
        Clock { now, min_period: 400 }
    }

    /// A reset APIC, software-enabled (SVR bit 8) unless `enabled` is false.
    fn apic(enabled: bool) -> VirtualApic {
        let mut apic = VirtualApic::RESET;
        if enabled {
            apic.write(0, 0x80f, 0x1ff, at(0)).unwrap();
        }
        apic
    }

    #[test]
    fn every_register_reads_its_reset_value_and_unknown_ones_are_gp() {
        let apic = VirtualApic::RESET;
        let read = |id, msr| apic.read(id, msr, 5000);
        let expected = [
            (0x802, 3),
            (0x803, 0x0005_0014),
            (0x808, 0),
            (0x80a, 0),
            (0x80d, 1 << 3),
            (0x80f, 0xff),
            (0x828, 0),
            (0x830, 0),
            (0x838, 0),
            (0x839, 0),
            (0x83e, 0),
            (IA32_TSC_DEADLINE, 0),
            (IA32_APIC_BASE, 0xfee0_0c00),
        ];
        for (msr, value) in expected {
            assert_eq!(read(3, msr), Some(value), "{msr:#x}");
        }
        for msr in (0x810..=0x827).chain(0x832..=0x837) {
            let reset = if msr >= 0x832 { 0x1_0000 } else { 0 };
            assert_eq!(read(3, msr), Some(reset), "{msr:#x}");
        }
        assert_eq!(read(0, IA32_APIC_BASE), Some(0xfee0_0d00), "vCPU 0 is the BSP");
        assert_eq!((read(17, 0x802), read(17, 0x80d)), (Some(17), Some(1 << 16 | 1 << 1)), "cluster 1");
        // Write-only, absent in x2APIC mode (ICR2, DFR, APR, RRD) or not
        // offered (CMCI): #GP both ways.
        for msr in [0x80b, 0x83f] {
            assert_eq!(read(3, msr), None, "{msr:#x} is write-only");
        }
        let mut apic = VirtualApic::RESET;
        for msr in [0x800, 0x801, 0x804, 0x809, 0x80c, 0x80e, 0x82f, 0x831, 0x83a, 0x83d] {
            assert_eq!(apic.read(3, msr, 0), None, "{msr:#x}");
            assert_eq!(apic.write(3, msr, 0, at(0)), Err(Fault), "{msr:#x}");
        }
        assert_eq!(apic, VirtualApic::RESET);
    }

    #[test]
    fn read_only_registers_and_reserved_bits_refuse_writes_and_the_rest_read_back() {
        let mut apic = apic(true);
        let enabled = apic.clone();
        let read_only = [0x802, 0x803, 0x80a, 0x80d, 0x839].into_iter().chain(0x810..=0x827);
        for msr in read_only {
            assert_eq!(apic.write(0, msr, 0, at(0)), Err(Fault), "{msr:#x} is read-only");
        }
        let reserved = [
            (0x808, 0x100),
            (0x80b, 1),
            (0x80f, 0x400),
            (0x828, 1),
            (0x830, 1 << 12),
            (0x830, 1 << 13),
            (0x830, 1 << 16),
            (0x830, 1 << 20),
            (0x832, 1 << 12),
            (0x832, 1 << 19),
            (0x832, 3 << 17),
            (0x833, 1 << 13),
            (0x835, 1 << 12),
            (0x835, 1 << 14),
            (0x837, 0x700),
            (0x838, 1 << 32),
            (0x83e, 0b100),
            (0x83f, 0x100),
            (0x808, 1 << 32),
        ];
        for (msr, value) in reserved {
            assert_eq!(apic.write(0, msr, value, at(0)), Err(Fault), "{msr:#x} {value:#x}");
        }
        assert_eq!(apic, enabled, "a refused write changes nothing");
        let writable = [
            (0x808, 0xff),
            (0x80f, 0x3ff),
            (0x830, 0xffff_ffff_000c_cfff),
            (0x832, 0x7_00ff & !(1 << 18)),
            (0x833, 0x1_07ff),
            (0x834, 0x1_07ff),
            (0x835, 0x1_a7ff),
            (0x836, 0x1_a7ff),
            (0x837, 0x1_00ff),
            (0x83e, 0b1011),
            (0x838, 0xffff_ffff),
        ];
        for (msr, value) in writable {
            assert!(apic.write(0, msr, value, at(0)).is_ok(), "{msr:#x}");
            assert_eq!(apic.read(0, msr, 0), Some(value), "{msr:#x} reads back");
        }
    }

    #[test]
    fn a_software_disabled_apic_keeps_its_lvts_masked() {
        let mut apic = apic(false);
        apic.write(0, 0x832, 0x30, at(0)).unwrap();
        assert_eq!(apic.read(0, 0x832, 0), Some(0x1_0030));
        apic.write(0, 0x80f, 0x1ff, at(0)).unwrap();
        apic.write(0, 0x832, 0x30, at(0)).unwrap();
        apic.write(0, 0x837, 0x31, at(0)).unwrap();
        assert_eq!(apic.read(0, 0x832, 0), Some(0x30));
        apic.write(0, 0x80f, 0xff, at(0)).unwrap();
        assert_eq!((apic.read(0, 0x832, 0), apic.read(0, 0x837, 0)), (Some(0x1_0030), Some(0x1_0031)));
    }

    #[test]
    fn apic_base_moves_between_modes_as_the_sdm_allows_and_disabling_resets() {
        let mut apic = apic(true);
        apic.write(1, 0x808, 0x30, at(0)).unwrap();
        let refused = [
            0xfee0_0800, // x2APIC to xAPIC
            0xfee0_0400, // EXTD without EN
            0xfee0_0e00, // reserved bit 9
            0xfed0_0c00, // a moved base
            1 << 52 | 0xfee0_0c00,
        ];
        for value in refused {
            assert_eq!(apic.write(1, IA32_APIC_BASE, value, at(0)), Err(Fault), "{value:#x}");
        }
        // The same mode, the BSP bit ignored.
        assert!(apic.write(1, IA32_APIC_BASE, 0xfee0_0d00, at(0)).is_ok());
        assert_eq!(apic.read(1, IA32_APIC_BASE, 0), Some(0xfee0_0c00));
        assert_eq!(apic.read(1, 0x808, 0), Some(0x30));
        // x2APIC to disabled: the registers go (#GP) and the state resets.
        apic.write(1, IA32_APIC_BASE, 0xfee0_0000, at(0)).unwrap();
        assert_eq!((apic.read(1, IA32_APIC_BASE, 0), apic.read(1, 0x802, 0)), (Some(0xfee0_0000), None));
        assert_eq!(apic.write(1, 0x808, 0, at(0)), Err(Fault));
        assert_eq!(apic.write(1, IA32_APIC_BASE, 0xfee0_0c00, at(0)), Err(Fault), "disabled to x2APIC");
        // Through xAPIC (no registers: hv maps no APIC page) to x2APIC.
        apic.write(1, IA32_APIC_BASE, 0xfee0_0800, at(0)).unwrap();
        assert_eq!((apic.read(1, IA32_APIC_BASE, 0), apic.read(1, 0x802, 0)), (Some(0xfee0_0800), None));
        apic.write(1, IA32_APIC_BASE, 0xfee0_0c00, at(0)).unwrap();
        assert_eq!((apic.read(1, 0x802, 0), apic.read(1, 0x808, 0)), (Some(1), Some(0)));
        assert_eq!(apic, VirtualApic::RESET);
    }

    #[test]
    fn the_highest_vector_above_the_processor_priority_goes_first_and_eoi_ends_the_highest_in_service() {
        let mut apic = apic(true);
        for vector in [0x31, 0x52, 0x41] {
            apic.accept(vector);
        }
        assert_eq!((apic.read(0, 0x821, 0), apic.read(0, 0x822, 0)), (Some(1 << 17), Some(1 << 18 | 1 << 1)));
        assert_eq!(apic.acknowledge(), Some(0x52));
        assert_eq!((apic.read(0, 0x812, 0), apic.read(0, 0x822, 0)), (Some(1 << 18), Some(1 << 1)));
        assert_eq!(apic.read(0, 0x80a, 0), Some(0x50), "PPR: the class in service");
        assert_eq!(apic.ready(), None, "0x41 is of a lower class");
        apic.write(0, 0x808, 0x5f, at(0)).unwrap();
        assert_eq!(apic.read(0, 0x80a, 0), Some(0x5f), "PPR: the TPR when its class is as high");
        apic.write(0, 0x808, 0, at(0)).unwrap();
        apic.write(0, 0x80b, 0, at(0)).unwrap();
        assert_eq!((apic.read(0, 0x812, 0), apic.ready()), (Some(0), Some(0x41)));
        // The TPR holds back its class and those below.
        apic.write(0, 0x808, 0x40, at(0)).unwrap();
        assert_eq!((apic.read(0, 0x80a, 0), apic.ready()), (Some(0x40), None));
        apic.write(0, 0x808, 0x3f, at(0)).unwrap();
        assert_eq!(apic.acknowledge(), Some(0x41));
        // A higher class nests; EOI ends the highest first.
        apic.accept(0x61);
        assert_eq!(apic.acknowledge(), Some(0x61));
        apic.write(0, 0x80b, 0, at(0)).unwrap();
        assert_eq!((apic.read(0, 0x80a, 0), apic.ready()), (Some(0x40), None));
        apic.write(0, 0x80b, 0, at(0)).unwrap();
        assert_eq!((apic.read(0, 0x80a, 0), apic.acknowledge()), (Some(0x3f), None), "0x31 is below the TPR");
        apic.write(0, 0x808, 0, at(0)).unwrap();
        assert_eq!(apic.acknowledge(), Some(0x31));
        // Vectors 0-15 are illegal: the ESR says so after a write latches it.
        apic.accept(5);
        assert_eq!((apic.ready(), apic.read(0, 0x828, 0)), (None, Some(0)));
        apic.write(0, 0x828, 0, at(0)).unwrap();
        assert_eq!(apic.read(0, 0x828, 0), Some(u64::from(ESR_RECEIVE_ILLEGAL_VECTOR)));
    }

    #[test]
    fn a_one_shot_timer_counts_down_through_the_divider_and_fires_once() {
        let mut apic = apic(true);
        apic.write(0, 0x832, 0x30, at(0)).unwrap();
        apic.write(0, 0x838, 100, at(1000)).unwrap();
        assert_eq!(apic.deadline(), 1200, "divide by 2 (the reset value)");
        assert_eq!(apic.read(0, 0x839, 1100), Some(50));
        apic.fire_due(1199);
        assert_eq!(apic.ready(), None);
        apic.fire_due(1200);
        assert_eq!((apic.ready(), apic.deadline(), apic.read(0, 0x839, 1200)), (Some(0x30), 0, Some(0)));
        apic.acknowledge();
        apic.fire_due(5000);
        assert_eq!(apic.ready(), None, "once");
        for (divide, ticks) in [(0b1011, 1), (0b0001, 4), (0b1010, 128)] {
            apic.write(0, 0x83e, divide, at(0)).unwrap();
            apic.write(0, 0x838, 100, at(1000)).unwrap();
            assert_eq!(apic.deadline(), 1000 + 100 * ticks, "divide {divide:#b}");
        }
        apic.write(0, 0x838, 0, at(1000)).unwrap();
        assert_eq!((apic.deadline(), apic.read(0, 0x839, 1000)), (0, Some(0)), "a zero count stops it");
        // Masked, it counts and fires no interrupt.
        apic.write(0, 0x832, 0x1_0030, at(0)).unwrap();
        apic.write(0, 0x838, 10, at(1000)).unwrap();
        assert_eq!(apic.read(0, 0x839, 1640), Some(5));
        apic.fire_due(2280);
        assert_eq!((apic.deadline(), apic.ready()), (0, None));
    }

    #[test]
    fn a_periodic_timer_reloads_merges_missed_periods_and_has_a_shortest_period() {
        let mut apic = apic(true);
        apic.write(0, 0x832, 0x30 | 1 << 17, at(0)).unwrap();
        apic.write(0, 0x838, 300, at(1000)).unwrap();
        assert_eq!(apic.deadline(), 1600);
        assert_eq!(apic.read(0, 0x839, 1300), Some(150));
        apic.fire_due(1600);
        assert_eq!((apic.acknowledge(), apic.deadline()), (Some(0x30), 2200));
        apic.write(0, 0x80b, 0, at(0)).unwrap();
        assert_eq!(apic.read(0, 0x839, 1900), Some(150), "counting again from the reload");
        // Late by two periods: one interrupt, the next period on time.
        apic.fire_due(3500);
        assert_eq!((apic.acknowledge(), apic.acknowledge(), apic.deadline()), (Some(0x30), None, 4000));
        // 100 counts by 2 would be 200 ticks: the period is 400.
        apic.write(0, 0x838, 100, at(5000)).unwrap();
        assert_eq!(apic.deadline(), 5400);
        // Another mode disarms it.
        apic.write(0, 0x832, 0x30, at(0)).unwrap();
        assert_eq!((apic.deadline(), apic.read(0, 0x838, 0), apic.read(0, 0x839, 5100)), (0, Some(0), Some(0)));
    }

    #[test]
    fn the_tsc_deadline_mode_fires_at_ia32_tsc_deadline_and_other_modes_ignore_it() {
        let mut apic = apic(true);
        apic.write(0, IA32_TSC_DEADLINE, 5000, at(0)).unwrap();
        assert_eq!((apic.read(0, IA32_TSC_DEADLINE, 0), apic.deadline()), (Some(0), 0), "one-shot mode");
        apic.write(0, 0x838, 100, at(1000)).unwrap();
        apic.write(0, 0x832, 0x30 | 2 << 17, at(0)).unwrap();
        assert_eq!(apic.deadline(), 0, "the one-shot count is disarmed");
        apic.write(0, IA32_TSC_DEADLINE, 5000, at(0)).unwrap();
        apic.write(0, 0x838, 100, at(1000)).unwrap();
        assert_eq!((apic.read(0, 0x838, 0), apic.read(0, 0x839, 0)), (Some(0), Some(0)), "no count");
        assert_eq!((apic.read(0, IA32_TSC_DEADLINE, 0), apic.deadline()), (Some(5000), 5000));
        apic.fire_due(4999);
        assert_eq!(apic.ready(), None);
        apic.fire_due(5000);
        assert_eq!((apic.ready(), apic.read(0, IA32_TSC_DEADLINE, 0)), (Some(0x30), Some(0)));
        apic.write(0, IA32_TSC_DEADLINE, 9000, at(0)).unwrap();
        apic.write(0, IA32_TSC_DEADLINE, 0, at(0)).unwrap();
        assert_eq!(apic.deadline(), 0, "0 disarms it");
        apic.write(0, IA32_TSC_DEADLINE, 9000, at(0)).unwrap();
        apic.write(0, 0x832, 0x30, at(0)).unwrap();
        assert_eq!((apic.deadline(), apic.read(0, IA32_TSC_DEADLINE, 0)), (0, Some(0)), "another mode disarms it");
    }

    /// d1 with `vcpus` vCPUs, those in `up` started (their APICs
    /// software-enabled), none running, in slot 3.
    fn guest(vcpus: usize, up: &[usize]) -> Domain<Fake> {
        let mut domain = Domain::<Fake>::new(1, false, 16).unwrap();
        (domain.vcpu_count, domain.paused) = (vcpus, false);
        for &vcpu in up {
            domain.vcpus[vcpu].up = true;
            assert!(write_msr(&mut domain, vcpu, 0x80f, 0x1ff));
        }
        domain
    }

    fn pending(domain: &Domain<Fake>) -> Vec<Option<u8>> {
        domain.vcpus[..domain.vcpu_count].iter().map(|slot| slot.apic.ready()).collect()
    }

    #[test]
    fn a_fixed_ipi_reaches_the_vcpus_it_names_and_wakes_them() {
        let mut domain = guest(3, &[0, 1, 2]);
        domain.vcpus[1].blocked = true;
        assert!(write_msr(&mut domain, 0, 0x830, 1 << 32 | 0x40));
        assert_eq!(pending(&domain), [None, Some(0x40), None]);
        let taker = &domain.vcpus[1];
        assert!(taker.upcall_due && !taker.blocked && !taker.upcall_raised);
        assert_eq!(machine::with(|m| m.idle_wakes.len()), 1, "an idle CPU looks for it");
        assert_eq!(take_interrupt(&mut domain, 1), Some(0x40));
        assert_eq!(domain.vcpus[1].apic.read(1, 0x812, 0), Some(1), "in service");
        assert!(!domain.vcpus[1].upcall_due);
        // One running on another CPU is kicked out of the guest.
        (domain.vcpus[2].running, domain.vcpus[2].last_cpu) = (true, 1);
        assert!(write_msr(&mut domain, 0, 0x830, 2 << 32 | 0x41));
        assert_eq!(machine::with(|m| m.kicks.clone()), [1]);
        let shorthands = [
            (1 << 18, [Some(0x50), None, None]),
            (2 << 18, [Some(0x50); 3]),
            (3 << 18, [None, Some(0x50), Some(0x50)]),
            // Every x2APIC id; logical cluster 0, vCPUs 0 and 2.
            (0xffff_ffff << 32, [Some(0x50); 3]),
            (1 << 11 | 0b101 << 32, [Some(0x50), None, Some(0x50)]),
            (1 << 11 | (1 << 16 | 0b101) << 32, [None; 3]),
            (7 << 32, [None; 3]),
        ];
        for (icr, reached) in shorthands {
            let mut domain = guest(3, &[0, 1, 2]);
            assert!(write_msr(&mut domain, 0, 0x830, icr | 0x50));
            assert_eq!(pending(&domain), reached, "{icr:#x}");
        }
    }

    #[test]
    fn an_ipi_is_lost_on_a_disabled_apic_a_vcpu_that_is_down_and_an_illegal_vector() {
        let mut domain = guest(3, &[0, 1]);
        assert!(write_msr(&mut domain, 1, 0x80f, 0xff));
        assert!(write_msr(&mut domain, 0, 0x830, 2 << 18 | 0x50));
        assert_eq!(pending(&domain), [Some(0x50), None, None]);
        assert!(write_msr(&mut domain, 0, 0x830, 1 << 32 | 0x0f));
        assert!(write_msr(&mut domain, 0, 0x828, 0));
        assert_eq!(domain.vcpus[0].apic.read(0, 0x828, 0), Some(u64::from(ESR_SEND_ILLEGAL_VECTOR)));
    }

    #[test]
    fn a_self_ipi_waits_for_the_vcpu_and_the_event_upcall_goes_first() {
        let mut domain = guest(1, &[0]);
        domain.upcall_vector = 0xf3;
        assert!(write_msr(&mut domain, 0, 0x83f, 0x45));
        (domain.vcpus[0].upcall_raised, domain.vcpus[0].upcall_due) = (true, true);
        assert_eq!(take_interrupt(&mut domain, 0), Some(0xf3));
        assert!(domain.vcpus[0].upcall_due, "the APIC's vector still waits");
        assert_eq!(take_interrupt(&mut domain, 0), Some(0x45));
        assert!(!domain.vcpus[0].upcall_due);
        assert_eq!(take_interrupt(&mut domain, 0), None);
    }

    #[test]
    fn init_and_startup_ipis_start_a_vcpu_that_is_down_in_real_mode() {
        let mut domain = guest(3, &[0]);
        let send = |domain: &mut Domain<Fake>, icr: u64| assert!(write_msr(domain, 0, 0x830, icr));
        // A Start-up IPI without INIT first is ignored, as is INIT de-assert.
        send(&mut domain, 1 << 32 | 0x4608);
        send(&mut domain, 1 << 32 | 0x8500);
        send(&mut domain, 1 << 32 | 0x4608);
        assert!(!domain.vcpus[1].up);
        // INIT, then Start-up with vector 8: real mode at 0x8000.
        send(&mut domain, 1 << 32 | 0xc500);
        send(&mut domain, 1 << 32 | 0x4608);
        let started = &domain.vcpus[1];
        assert!(started.up && started.vcpu.is_some());
        let context = started.vcpu.as_ref().unwrap().context;
        assert_eq!((context.mode, context.rip), (crate::platform::VCPU_MODE_REAL, 0x8000));
        assert_eq!(started.apic.read(1, 0x80f, 0), Some(0xff), "a fresh APIC");
        // The second Start-up IPI Linux sends finds it running: ignored.
        send(&mut domain, 1 << 32 | 0x4609);
        assert_eq!(domain.vcpus[1].vcpu.as_ref().unwrap().context.rip, 0x8000);
        // INIT to a vCPU that runs, and NMIs, are refused with a log line.
        send(&mut domain, 1 << 32 | 0x4500);
        send(&mut domain, 1 << 32 | 0x0400);
        let log = machine::with(|m| m.log.clone());
        assert_eq!(log[0], "Warning: d1: refused INIT IPI from vCPU 0 to vCPU 1, which runs");
        assert_eq!(log[1], "Warning: d1: refused IPI 0x100000400 from vCPU 0 (delivery mode 4)");
        // The all-but-self shorthand starts every vCPU that is down.
        send(&mut domain, 3 << 18 | 0x4500);
        send(&mut domain, 3 << 18 | 0x4610);
        assert_eq!(domain.vcpus[2].vcpu.as_ref().unwrap().context.rip, 0x10000);
    }

    #[test]
    fn a_due_apic_timer_fires_with_the_domains_timers_and_wakes_its_vcpu() {
        let mut domain = guest(2, &[0, 1]);
        machine::with(|m| m.tsc = 1000);
        assert!(write_msr(&mut domain, 1, 0x832, 0x30));
        assert!(write_msr(&mut domain, 1, 0x83e, 0b1011));
        assert!(write_msr(&mut domain, 1, 0x838, 500));
        domain.vcpus[1].blocked = true;
        assert_eq!(crate::event_ops::fire_timers(&mut domain, 1499), Some(1500));
        assert!(domain.vcpus[1].blocked);
        assert_eq!(crate::event_ops::fire_timers(&mut domain, 1500), None);
        assert!(!domain.vcpus[1].blocked && domain.vcpus[1].upcall_due);
        assert_eq!(pending(&domain), [None, Some(0x30)]);
        // A vCPU in Xen's poll stays there.
        machine::with(|m| m.tsc = 2000);
        assert!(write_msr(&mut domain, 0, 0x832, 0x31 | 2 << 17));
        assert!(write_msr(&mut domain, 0, IA32_TSC_DEADLINE, 2500));
        (domain.vcpus[0].blocked, domain.polling) = (true, 1);
        assert_eq!(crate::event_ops::fire_timers(&mut domain, 2600), None);
        assert!(domain.vcpus[0].blocked && domain.vcpus[0].upcall_due);
        // A deadline already past fires on the write.
        assert_eq!(take_interrupt(&mut domain, 0), Some(0x31));
        assert!(write_msr(&mut domain, 0, 0x80b, 0));
        assert!(write_msr(&mut domain, 0, IA32_TSC_DEADLINE, 1));
        assert_eq!(pending(&domain), [Some(0x31), Some(0x30)]);
        assert_eq!(domain.vcpus[0].apic.deadline(), 0);
    }
}
