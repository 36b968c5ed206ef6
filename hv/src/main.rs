//! The Mica hypervisor: boots from multiboot2, takes the CPU into VMX root
//! mode, partitions memory with EPT and runs dom0 in VMX non-root mode.
//!
//! Start-up order: serial log, descriptor tables, boot information, frame
//! allocator, ACPI tables, VT-x check (stop with one clear line if anything
//! is missing; the lines before say what memory and ACPI hv found), local
//! APIC, VMXON, the other CPUs (each into VMX root, where it waits: see
//! arch::smp), dom0, then the run loop on every CPU.
#![no_std]
#![no_main]

mod arch;
mod dom0;
mod events;
mod hypercall;
mod hypervisor;
mod log;
mod memory;

use arrayvec::ArrayVec;
use hvcore::frame::PhysRange;
use hvcore::multiboot2;

use crate::arch::{cpu, gdt, idt, lapic, serial, vmx};
use crate::log::Level;

unsafe extern "C" {
    static __hv_start: u8;
    static __hv_end: u8;
}

/// Where the local APIC's registers are after reset (SDM Vol. 3A 12.4.4),
/// kept from dom0 even if the firmware moved or disabled the APIC.
const LAPIC_DEFAULT_BASE: u64 = 0xfee0_0000;

/// Stops hv with a clear reason; nothing else runs.
fn stop(reason: &str) -> ! {
    log::emergency(format_args!("hv: cannot start: {reason}\nhv: halted\n"));
    cpu::halt_forever()
}

/// Rust entry point, called by `boot` in 64-bit mode on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn hv_main(magic: u32, info_address: u32) -> ! {
    serial::init();
    gdt::init();
    arch::smp::claim_boot_slot();
    idt::init();
    let boot_tsc = cpu::rdtsc();
    info!("Mica hv {} (ABI {}.{})", env!("CARGO_PKG_VERSION"), abi::ABI_VERSION_MAJOR, abi::ABI_VERSION_MINOR);

    if magic != multiboot2::BOOTLOADER_MAGIC {
        stop("not started by a multiboot2 boot loader");
    }
    let info_address = info_address as u64;
    // SAFETY: the boot loader placed the information structure here; its
    // first word is its total size, and hv reserves it and never writes it.
    let boot_bytes = unsafe {
        let total = arch::memory::read_u64(info_address & !7) >> ((info_address & 4) * 8);
        arch::memory::boot_slice(info_address, total as u32 as u64)
    };
    let boot = match multiboot2::parse(boot_bytes) {
        Ok(boot) => boot,
        Err(_) => stop("the multiboot2 boot information is malformed"),
    };
    if let Some(level) =
        boot.cmdline.split_whitespace().find_map(|w| w.strip_prefix("loglevel=")).and_then(Level::parse)
    {
        log::set_record_level(level);
        log::set_console_level(Some(level));
    }
    info!("command line '{}', loaded by '{}'", boot.cmdline, boot.bootloader_name);

    // Modules: "dom0" and "ramdisk" by the first word of their command line.
    let module_named = |name: &str| boot.modules.iter().find(|m| m.cmdline.split_whitespace().next() == Some(name));
    let Some(dom0_module) = module_named("dom0") else { stop("no boot module named 'dom0'") };
    let ramdisk_module = module_named("ramdisk");

    let mut reserved: ArrayVec<PhysRange, 20> = ArrayVec::new();
    // Only the addresses of the linker symbols are taken; nothing is read.
    let (hv_start, hv_end) = (&raw const __hv_start as u64, &raw const __hv_end as u64);
    reserved.push(PhysRange { start: hv_start, end: hv_end });
    reserved.push(PhysRange { start: info_address, end: info_address + boot_bytes.len() as u64 });
    for module in &boot.modules {
        let _ = reserved.try_push(PhysRange { start: module.start as u64, end: module.end as u64 });
    }
    let totals = match memory::init(&boot, &reserved) {
        Ok(totals) => totals,
        Err(reason) => stop(reason),
    };
    info!("memory: {} KiB managed, {} KiB free", totals.total_pages * 4, totals.free_pages * 4);

    let acpi = boot.acpi_rsdp.and_then(|rsdp| hvcore::acpi::parse(rsdp, &arch::memory::PhysicalMemory));
    match acpi {
        Some(acpi) => {
            // Tag 15's RSDP is 36 bytes or more, tag 14's 20.
            let rsdp = if boot.acpi_rsdp.is_some_and(|rsdp| rsdp.len() >= 36) { "2.0+" } else { "1.0" };
            info!(
                "ACPI {rsdp} RSDP: FADT PM1a control {:#x}, reset register {:?}; DSDT S5 sleep types {:?}; \
                 MADT I/O APIC at {:#x}, {} CPUs",
                acpi.pm1a_control,
                acpi.reset,
                acpi.s5_sleep_types,
                acpi.ioapic_address.unwrap_or(0),
                acpi.cpus().len()
            );
            arch::platform::set_acpi(acpi);
        }
        None => warning!("no usable ACPI tables; power-off falls back to emulator ports"),
    }

    let capabilities = match vmx::probe() {
        Ok(capabilities) => capabilities,
        Err(missing) => stop(missing),
    };

    let (apic_id, apic_version) = lapic::init();
    let apic_mode = if lapic::x2apic() { "x2APIC" } else { "xAPIC" };
    info!("local APIC id {apic_id}, version {apic_version:#x}, {apic_mode} mode");
    let routes = acpi.map_or_else(|| hvcore::acpi::AcpiInfo::default().isa_routes, |a| a.isa_routes);
    let ioapic_entries = arch::ioapic::init(apic_id, acpi.and_then(|a| a.ioapic_address), &routes);
    info!("I/O APIC: {ioapic_entries} redirection entries, ISA lines routed to vectors 0x30-0x3f (masked)");
    for (irq, route) in
        routes.iter().enumerate().filter(|(irq, route)| **route != hvcore::acpi::IsaRoute::identity(*irq as u8))
    {
        info!(
            "I/O APIC: IRQ {irq} -> input {}, {}, active {}",
            route.gsi,
            if route.level { "level" } else { "edge" },
            if route.active_low { "low" } else { "high" }
        );
    }
    // Device memory dom0 may map: not RAM, not the APICs (hv's).
    let mut device_policy = hvcore::mmio::DevicePolicy::new();
    device_policy.forbid_ram(&boot.memory_map);
    for page in [lapic::base(), LAPIC_DEFAULT_BASE, arch::ioapic::base()] {
        device_policy.forbid(page, page + abi::PAGE_SIZE);
    }
    let tsc_khz = arch::tsc::calibrate();
    info!("TSC runs at {} kHz", tsc_khz);
    log::set_tsc_khz(tsc_khz);

    let Some(vmxon_region) = memory::allocate_frame() else { stop("out of memory for the VMXON region") };
    if let Err(reason) = vmx::enable(&capabilities, vmxon_region) {
        stop(reason);
    }
    start_application_processors(&boot, acpi.as_ref(), apic_id, &capabilities, tsc_khz, &reserved);

    let names: ArrayVec<&str, 8> = abi::info::feature::NAMES
        .iter()
        .filter(|(bit, _)| capabilities.features & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    info!(
        "VMX on; features: {:?}; preemption timer ticks every 2^{} TSC ticks ({})",
        names.as_slice(),
        capabilities.preemption_timer_rate,
        if capabilities.timer_saved_on_exit { "saved on exit" } else { "restarted at each entry" }
    );

    // SAFETY: the module is boot data hv reserved above and never writes.
    let kernel =
        unsafe { arch::memory::boot_slice(dom0_module.start as u64, (dom0_module.end - dom0_module.start) as u64) };
    let dom0_command_line = dom0_module.cmdline.split_once(' ').map(|(_, rest)| rest).unwrap_or("");
    let images = dom0::Dom0Images {
        kernel,
        command_line: dom0_command_line,
        ramdisk: ramdisk_module.map(|m| (m.start as u64, m.end as u64)),
    };
    let dom0_memory = dom0::memory_from_command_line(boot.cmdline).unwrap_or(dom0::DEFAULT_MEMORY);
    let dom0_vcpus = hvcore::smp::dom0_vcpus(boot.cmdline);
    let (dom0, dom0_context) = match dom0::build(&images, dom0_memory, dom0_vcpus, tsc_khz) {
        Ok(built) => built,
        Err(reason) => stop(reason),
    };
    let mut hv = hypervisor::lock();
    hypervisor::SCHEDULER.lock().set_cpus(arch::smp::running());
    hv.state.boot_tsc = boot_tsc;
    hv.state.reserved_pages = (hv_end - hv_start).div_ceil(4096) + totals.bitmap_pages;
    hypercall::DEVICES.call_once(|| (device_policy, dom0.max_pages * abi::PAGE_SIZE));
    // Guests get no ports and no MSRs: one all-ones page serves as both I/O
    // bitmaps and as the MSR bitmap of every guest (the CPU only reads them).
    let Some(deny_all) = memory::allocate_frame() else { stop("out of memory for the guest bitmaps") };
    arch::memory::copy_to(deny_all, &[0xff; 4096]);
    crate::arch::machine::GUEST_BITMAPS.store(deny_all, core::sync::atomic::Ordering::Relaxed);
    // The table and the scheduler are empty: dom0 goes in slot 0.
    if hvcore::domctl::add_to_scheduler(&mut hv, dom0).is_err()
        || hvcore::domctl::start_vcpu(&mut hv.domains[0], 0, 0, &dom0_context).is_err()
    {
        stop("dom0's vCPU could not be created");
    }
    info!("starting dom0; hv log continues in 'dmesg'");
    // dom0 owns the console from here: hv writes its log only to the dmesg
    // ring (dom0 reports what concerns the operator, such as a crash and its
    // reason, as whole lines). Only fatal hv errors still go to COM1.
    log::set_console_level(None);
    drop(hv);
    arch::smp::start_scheduling();
    hypervisor::run()
}

/// Starts the MADT's other CPUs (at most `maxcpus=N` CPUs in all), each
/// into VMX root where it halts; logs one line per CPU.
fn start_application_processors(
    boot: &multiboot2::BootInfo,
    acpi: Option<&hvcore::acpi::AcpiInfo>,
    apic_id: u32,
    capabilities: &vmx::Capabilities,
    tsc_khz: u64,
    reserved: &[PhysRange],
) {
    use arch::smp;
    smp::init_boot_cpu(apic_id, capabilities);
    info!("CPU 0: APIC id {apic_id}, boot CPU");
    let max_cpus = hvcore::smp::max_cpus(boot.cmdline);
    let madt = acpi.map_or(&[][..], |acpi| acpi.cpus());
    let mut aps = [0u32; hvcore::acpi::MAX_CPUS];
    let count = hvcore::smp::application_processors(madt, apic_id, max_cpus, &mut aps);
    let trampoline = PhysRange { start: smp::TRAMPOLINE, end: smp::TRAMPOLINE + abi::PAGE_SIZE };
    if count > 0 && reserved.iter().any(|range| range.start < trampoline.end && trampoline.start < range.end) {
        warning!("the AP trampoline page {:#x} holds boot data: only the boot CPU runs", smp::TRAMPOLINE);
        return;
    }
    for &id in &aps[..count] {
        match smp::start_ap(id, tsc_khz) {
            Ok(index) => info!("CPU {index}: APIC id {id}, vmx-root idle"),
            Err(reason) => warning!("CPU with APIC id {id} not started: {reason}"),
        }
    }
    let running = smp::running();
    match max_cpus {
        Some(limit) => info!("{running} CPUs running ({} in the MADT, maxcpus={limit})", madt.len().max(1)),
        None => info!("{running} CPUs running ({} in the MADT)", madt.len().max(1)),
    }
}

#[panic_handler]
fn panic(panic: &core::panic::PanicInfo) -> ! {
    log::emergency(format_args!("hv: PANIC: {panic}\nhv: halted\n"));
    cpu::halt_forever()
}
