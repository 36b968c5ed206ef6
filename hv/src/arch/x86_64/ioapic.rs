//! The I/O APIC (Intel 82093AA datasheet; PC default at 0xFEC0_0000): hv
//! routes ISA interrupt lines to the boot CPU's local APIC, one vector per
//! line, and unmasks only the lines dom0 binds to event channels.
//!
//! The address comes from the ACPI MADT (PC default otherwise); the
//! ISA-to-GSI mapping is the identity (MADT interrupt overrides are not
//! applied yet).

use core::sync::atomic::{AtomicU32, Ordering};

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

/// The vector of ISA line 0; line `n` uses `FIRST_VECTOR + n`.
pub const FIRST_VECTOR: u8 = 0x30;
/// ISA lines hv routes.
pub const LINES: u8 = 16;

/// Lines whose interrupts arrived and are not yet delivered (bit n = line n).
static PENDING: AtomicU32 = AtomicU32::new(0);

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

fn write_entry(line: u8, entry: u64) {
    let register = REDIRECTION_BASE + line as u32 * 2;
    write(register + 1, (entry >> 32) as u32);
    write(register, entry as u32);
}

/// Masks every redirection entry and routes ISA lines to their vectors
/// (edge, active high, physical destination APIC `apic_id`), still masked.
/// Returns the number of redirection entries.
pub fn init(apic_id: u32, address: Option<u32>) -> u32 {
    // Only addresses in the uncached top GiB of hv's identity map are used.
    if let Some(address) = address.filter(|&a| (0xc000_0000..0xffff_f000).contains(&a)) {
        BASE.store(address as u64, Ordering::Relaxed);
    }
    let entries = ((read(VERSION_REGISTER) >> 16) & 0xff) + 1;
    if entries == 1 || entries > 240 {
        return 0; // no I/O APIC answered
    }
    for line in 0..entries.min(240) as u8 {
        let vector = if line < LINES { (FIRST_VECTOR + line) as u64 } else { 0xff };
        write_entry(line, MASKED | vector | (apic_id as u64) << 56);
    }
    ENTRIES.store(entries, Ordering::Relaxed);
    APIC_ID.store(apic_id, Ordering::Relaxed);
    entries
}

/// Physical address of the I/O APIC's registers.
pub fn base() -> u64 {
    BASE.load(Ordering::Relaxed)
}

static ENTRIES: AtomicU32 = AtomicU32::new(0);
static APIC_ID: AtomicU32 = AtomicU32::new(0);

/// Unmasks ISA line `line` (edge, active high). False if there is no such line.
pub fn unmask(line: u8) -> bool {
    if line >= LINES || (line as u32) >= ENTRIES.load(Ordering::Relaxed) {
        return false;
    }
    let entry = (FIRST_VECTOR + line) as u64 | (APIC_ID.load(Ordering::Relaxed) as u64) << 56;
    write_entry(line, entry);
    true
}

/// Masks ISA line `line`.
pub fn mask(line: u8) {
    if line < LINES && (line as u32) < ENTRIES.load(Ordering::Relaxed) {
        write_entry(line, MASKED | (FIRST_VECTOR + line) as u64 | (APIC_ID.load(Ordering::Relaxed) as u64) << 56);
    }
}

/// Records that the interrupt with `vector` arrived (from a VM exit or the
/// idle handler). Returns false for vectors that are not ISA lines.
pub fn record(vector: u8) -> bool {
    let Some(line) = vector.checked_sub(FIRST_VECTOR).filter(|line| *line < LINES) else { return false };
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
