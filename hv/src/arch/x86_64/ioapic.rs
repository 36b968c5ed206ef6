//! The I/O APIC (Intel 82093AA datasheet; PC default at 0xFEC0_0000): hv
//! routes ISA interrupt lines to the boot CPU's local APIC, one vector per
//! line, and unmasks only the lines dom0 binds to event channels.
//!
//! The address and the ISA-to-GSI routes (input, polarity, trigger) come
//! from the ACPI MADT, PC defaults otherwise. A level-triggered line (a PCI
//! interrupt shared onto an ISA IRQ, the ACPI SCI) would fire again at once
//! after the EOI while its device still asserts it, so hv masks it when it
//! fires; dom0 unmasks it (`EventOp::Unmask` on its port) once it has
//! serviced the device.

use core::sync::atomic::{AtomicU32, Ordering};

use hvcore::acpi::IsaRoute;

/// The PC default address of the I/O APIC's registers, used when the ACPI
/// MADT names none.
const DEFAULT_BASE: u64 = 0xfec0_0000;
/// Physical (= hv virtual) address of the I/O APIC's registers.
static BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(DEFAULT_BASE);
const SELECT: u64 = 0x00;
const WINDOW: u64 = 0x10;
const VERSION_REGISTER: u32 = 0x01;
const REDIRECTION_BASE: u32 = 0x10;
/// Redirection entry bit 16: masked.
const MASKED: u64 = 1 << 16;
/// Redirection entry bit 13: active low.
const ACTIVE_LOW: u64 = 1 << 13;
/// Redirection entry bit 15: level-triggered.
const LEVEL: u64 = 1 << 15;

/// The vector of ISA line 0; line `n` uses `FIRST_VECTOR + n`.
pub const FIRST_VECTOR: u8 = 0x30;
/// ISA lines hv routes.
pub const LINES: u8 = 16;

/// Lines whose interrupts arrived and are not yet delivered (bit n = line n).
static PENDING: AtomicU32 = AtomicU32::new(0);

/// Each ISA line's route, packed: the I/O APIC input in bits 0-7, bit 8
/// active low, bit 9 level; `NO_ROUTE` when another line's override took
/// its input (IRQ 2 once IRQ 0 arrives at GSI 2) or the input is missing.
static ROUTES: [AtomicU32; LINES as usize] = [const { AtomicU32::new(NO_ROUTE) }; LINES as usize];
const NO_ROUTE: u32 = u32::MAX;

fn read(register: u32) -> u32 {
    // SAFETY: the I/O APIC's select/window registers are identity-mapped
    // uncached by hv's boot page tables; 32-bit volatile accesses are the
    // documented interface.
    unsafe {
        let base = BASE.load(Ordering::Relaxed);
        core::ptr::write_volatile((base + SELECT) as *mut u32, register);
        core::ptr::read_volatile((base + WINDOW) as *const u32)
    }
}

fn write(register: u32, value: u32) {
    // SAFETY: as for `read`.
    unsafe {
        let base = BASE.load(Ordering::Relaxed);
        core::ptr::write_volatile((base + SELECT) as *mut u32, register);
        core::ptr::write_volatile((base + WINDOW) as *mut u32, value);
    }
}

fn write_entry(input: u8, entry: u64) {
    let register = REDIRECTION_BASE + input as u32 * 2;
    write(register + 1, (entry >> 32) as u32);
    write(register, entry as u32);
}

/// ISA line `line`'s redirection entry (masked or not) and its input.
fn entry_of(line: u8, masked: bool) -> Option<(u8, u64)> {
    let route = ROUTES.get(line as usize)?.load(Ordering::Relaxed);
    if route == NO_ROUTE {
        return None;
    }
    let mut entry = (FIRST_VECTOR + line) as u64 | (APIC_ID.load(Ordering::Relaxed) as u64) << 56;
    if route & 1 << 8 != 0 {
        entry |= ACTIVE_LOW;
    }
    if route & 1 << 9 != 0 {
        entry |= LEVEL;
    }
    if masked {
        entry |= MASKED;
    }
    Some((route as u8, entry))
}

/// Masks every redirection entry and routes ISA lines to their vectors
/// along `routes` (the MADT's overrides; physical destination APIC
/// `apic_id`), still masked. Returns the number of redirection entries.
pub fn init(apic_id: u32, address: Option<u32>, routes: &[IsaRoute; LINES as usize]) -> u32 {
    // Only addresses in the uncached top GiB of hv's identity map are used.
    if let Some(address) = address.filter(|&a| (0xc000_0000..0xffff_f000).contains(&a)) {
        BASE.store(address as u64, Ordering::Relaxed);
    }
    let entries = ((read(VERSION_REGISTER) >> 16) & 0xff) + 1;
    if entries == 1 || entries > 240 {
        return 0; // no I/O APIC answered
    }
    for input in 0..entries as u8 {
        write_entry(input, MASKED | 0xff | (apic_id as u64) << 56);
    }
    APIC_ID.store(apic_id, Ordering::Relaxed);
    for (line, input) in hvcore::acpi::assign_inputs(routes, entries).into_iter().enumerate() {
        let Some(input) = input else { continue };
        let route = routes[line];
        let packed = input | (route.active_low as u32) << 8 | (route.level as u32) << 9;
        ROUTES[line].store(packed, Ordering::Relaxed);
        if let Some((input, entry)) = entry_of(line as u8, true) {
            write_entry(input, entry);
        }
    }
    ENTRIES.store(entries, Ordering::Relaxed);
    entries
}

/// Physical address of the I/O APIC's registers.
pub fn base() -> u64 {
    BASE.load(Ordering::Relaxed)
}

static ENTRIES: AtomicU32 = AtomicU32::new(0);
static APIC_ID: AtomicU32 = AtomicU32::new(0);

/// Unmasks ISA line `line`. False if it has no route.
pub fn unmask(line: u8) -> bool {
    match entry_of(line, false) {
        Some((input, entry)) => {
            write_entry(input, entry);
            true
        }
        None => false,
    }
}

/// Masks ISA line `line`.
pub fn mask(line: u8) {
    if let Some((input, entry)) = entry_of(line, true) {
        write_entry(input, entry);
    }
}

/// Whether ISA line `line` is level-triggered.
pub fn is_level(line: u8) -> bool {
    ROUTES.get(line as usize).is_some_and(|route| {
        let route = route.load(Ordering::Relaxed);
        route != NO_ROUTE && route & 1 << 9 != 0
    })
}

/// Records that the interrupt with `vector` arrived (from a VM exit or the
/// idle handler). A level-triggered line is masked until its owner unmasks
/// it. Returns false for vectors that are not ISA lines.
pub fn record(vector: u8) -> bool {
    let Some(line) = vector.checked_sub(FIRST_VECTOR).filter(|line| *line < LINES) else { return false };
    if is_level(line) {
        mask(line);
    }
    PENDING.fetch_or(1 << line, Ordering::SeqCst);
    true
}

/// Takes the set of lines that fired since the last call.
pub fn take_pending() -> u32 {
    PENDING.swap(0, Ordering::SeqCst)
}

/// Whether any line fired and is waiting to be delivered.
pub fn any_pending() -> bool {
    PENDING.load(Ordering::SeqCst) != 0
}

/// Called by the idle interrupt stubs: record the line and acknowledge.
pub extern "C" fn device_interrupt(vector: u64) {
    record(vector as u8);
    super::lapic::end_of_interrupt();
}
