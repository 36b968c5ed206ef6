//! dom0: Mica's privileged driver domain. It drives the serial console and
//! offers the operator a shell.
//!
//! The binary holds the device side of dom0's parts and the shell's loop
//! (`Shell`, below); their hardware-free logic is the library, `dom0core`
//! (`lib.rs`). The two share the part folders: a folder's `mod.rs` is the
//! library's module for it, and the binary declares its own files in the
//! same folder through the inline modules below (`drivers { uart }` is
//! `drivers/uart.rs`).
#![no_std]
#![no_main]

// The images disk's filesystem reader (ext4-view) allocates.
extern crate alloc;

/// The drivers that touch the hardware (their protocols are
/// `dom0core::drivers`).
mod drivers {
    pub mod ata;
    pub mod e1000;
    pub mod pci;
    pub mod uart;
}

/// The back ends' I/O and the data paths that serve them (their checks
/// are `dom0core::backends`).
mod backends {
    pub mod data_path;
    /// The block back end's I/O.
    pub mod block {
        pub mod blkback;
    }
    /// The net back end's I/O.
    pub mod net {
        pub mod netback;
    }
}

/// The live toolstack, over hypercalls (its builder and parsers are
/// `dom0core::toolstack`).
mod toolstack {
    pub mod domains;
}

use core::fmt::Write;

use abi::event::EventOp;
use abi::hypercall::PlatformOp;
use abi::start_info::{START_INFO_MAGIC, StartInfo};
use dom0core::shell::line_editor::{Action, LineEditor};
use dom0core::shell::report::{self, Measurement};
use dom0core::shell::{self, COMMANDS, Command};
use pv_drivers::hypercall;

use crate::backends::data_path::{self, DATA};
use crate::drivers::uart::Uart;
use crate::drivers::{ata, e1000, pci};
use crate::toolstack::domains::{self, TOOLSTACK, Toolstack};

const PROMPT: &str = "dom0> ";

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid(leaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The CPU's brand string (CPUID 0x8000_0002..4, decoded by `raw-cpuid`),
/// trimmed, copied into `buffer`.
fn cpu_brand(buffer: &mut [u8; 48]) -> &str {
    let Some(brand) = raw_cpuid::CpuId::new().get_processor_brand_string() else { return "" };
    let text = brand.as_str().trim().as_bytes();
    let length = text.len().min(buffer.len());
    buffer[..length].copy_from_slice(&text[..length]);
    core::str::from_utf8(&buffer[..length]).unwrap_or("")
}

/// Entry point: `rdi` holds the start-info page's address (see `abi::start_info`).
#[unsafe(no_mangle)]
extern "C" fn _start(start_info_address: u64) -> ! {
    let mut console = Uart::init();
    // SAFETY: hv wrote a StartInfo at this identity-mapped address before
    // entry; it is copied out once and never referenced again.
    let start_info: StartInfo = unsafe { core::ptr::read_volatile(start_info_address as *const StartInfo) };
    if start_info.magic != START_INFO_MAGIC {
        let _ = writeln!(console, "dom0: bad start-info magic {:#x}; stopping", start_info.magic);
        stop();
    }
    let [_, _, ecx, _] = cpuid(1);
    let [max_leaf, ebx, ecx_signature, edx] = cpuid(abi::cpuid::LEAF_SIGNATURE);
    let signature = abi::cpuid::signature_from_registers(ebx, ecx_signature, edx);
    if ecx & abi::cpuid::HYPERVISOR_PRESENT_BIT == 0 || signature != abi::cpuid::SIGNATURE {
        let _ = writeln!(console, "dom0: not running on the Mica hypervisor; stopping");
        stop();
    }
    let version = if max_leaf >= abi::cpuid::LEAF_VERSION { cpuid(abi::cpuid::LEAF_VERSION)[0] } else { 0 };
    let (major, minor) = abi::version_parts(version);
    let _ = writeln!(
        console,
        "dom0: running on hypervisor \"{}\" (ABI {major}.{minor})",
        core::str::from_utf8(&signature).unwrap_or("?")
    );
    if major != abi::ABI_VERSION_MAJOR {
        let _ = writeln!(console, "dom0: warning: built for ABI {}.{}", abi::ABI_VERSION_MAJOR, abi::ABI_VERSION_MINOR);
    }
    let _ = hypercall::console_write(b"dom0 started\n");
    let ramdisk: &'static [u8] = if start_info.ramdisk_size > 0 {
        // SAFETY: hv maps the boot ramdisk read-only at this identity-mapped
        // address for dom0's whole life, and nothing writes it.
        unsafe { core::slice::from_raw_parts(start_info.ramdisk_base as *const u8, start_info.ramdisk_size as usize) }
    } else {
        &[]
    };
    let heap = init_heap(&start_info);
    if heap == 0 {
        let _ = writeln!(console, "dom0: no free RAM for a heap: no images disk");
    }
    let mut toolstack = TOOLSTACK.lock();
    toolstack.init(ramdisk, start_info.tsc_khz);
    {
        let mut store = domains::STORE.lock();
        let _ = store.introduce_domain(abi::DOM0, dom0core::store::Quota::UNLIMITED);
        let _ = store.write(abi::DOM0, "/local/domain/0/name", "Domain-0");
    }
    let mut devices = arrayvec::ArrayVec::<pci::PciDevice, 32>::new();
    pci::enumerate(&mut devices);
    for device in &devices {
        let _ = writeln!(
            console,
            "dom0: pci {:02x}:{:02x}.{} {:04x}:{:04x} {}",
            device.bus,
            device.device,
            device.function,
            device.vendor,
            device.device_id,
            pci::class_name(device.class, device.subclass)
        );
    }
    let disks = ata::probe_all(&devices);
    for disk in &disks {
        let (name, sectors, model, mode) = (disk.name(), disk.sectors(), disk.model(), disk.transfer_mode());
        let _ = writeln!(console, "dom0: disk {name}: {sectors} sectors, {model}, {mode}");
    }
    if let Some(probed) = e1000::probe(&devices) {
        match probed {
            Ok(nic) => {
                let (bus, slot, function) = nic.location();
                let mut text = [0u8; 17];
                let mac = abi::net::format_mac(nic.mac(), &mut text);
                let link = if nic.link_up() { "up" } else { "down" };
                let _ = writeln!(console, "dom0: nic e1000 {bus:02x}:{slot:02x}.{function} mac {mac} link {link}");
                *e1000::NIC.lock() = Some(nic);
            }
            Err(reason) => {
                let _ = writeln!(console, "dom0: nic e1000: {reason}");
            }
        }
    }
    // The NIC's interrupt port: its receive ring is looked at when the
    // port fired (or on every pass when the NIC has no interrupt).
    let nic_port = e1000::NIC.lock().as_ref().map(|nic| nic.interrupt_port());
    DATA.lock().init(disks, nic_port, start_info.tsc_khz);
    if heap > 0 {
        toolstack.find_images(&mut console);
    }
    let mut shell = Shell { console, editor: LineEditor::new(), boot_to_prompt: 0, start_info, toolstack };
    shell.run()
}

/// dom0's heap: the images disk's filesystem (its block cache, directory
/// listings, an open file's extents) and the builder's transfer buffers.
/// A first-fit list (linked_list_allocator) rather than a hand-made one:
/// dom0 allocates at boot and a few times per `create`, so its speed does
/// not matter, and its spin lock serves dom0's two vCPUs.
#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// Gives the heap the largest free RAM region hv described: the RAM after
/// dom0's image, which nothing else in dom0 uses. Returns its size.
fn init_heap(start_info: &StartInfo) -> u64 {
    let free = start_info
        .regions()
        .iter()
        .filter(|region| region.kind == abi::start_info::MemoryKind::Free as u32)
        .filter(|region| region.base + region.size <= start_info.identity_mapped_bytes)
        .max_by_key(|region| region.size);
    let Some(region) = free else { return 0 };
    // SAFETY: hv gave dom0 this region as free RAM, identity-mapped and
    // writable; nothing else in dom0 touches it, and this runs once,
    // before anything allocates.
    unsafe { HEAP.lock().init(region.base as *mut u8, region.size as usize) };
    region.size
}

fn stop() -> ! {
    loop {
        // SAFETY: HLT only yields the vCPU to the hypervisor.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) }
    }
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// dom0's shared-info page (Xen's layout), where guests' notifications
/// land: they wake dom0 from `block`.
static mut EVENT_PAGE: Page = Page([0; 4096]);

/// The address of dom0's event page (registered once, in `Shell::run`).
fn event_page() -> u64 {
    &raw mut EVENT_PAGE as u64
}

/// Ctrl-]: detaches from a guest console.
const DETACH: u8 = 0x1d;

struct Shell {
    console: Uart,
    editor: LineEditor,
    /// TSC when the first prompt was printed (instructions since power-on under Bochs).
    boot_to_prompt: u64,
    start_info: StartInfo,
    toolstack: spin::MutexGuard<'static, Toolstack>,
}

impl Shell {
    fn prompt(&mut self) {
        self.console.write_bytes(PROMPT.as_bytes());
    }

    fn run(&mut self) -> ! {
        // Events in Xen's 2-level layout in this shared-info page (ABI
        // 1.0); dom0 polls (no callback vector).
        // SAFETY: the static page is dedicated to hv's event bits for good.
        let _ = unsafe { pv_drivers::xen::place_shared_info_at(event_page()) };
        // A second vCPU, if dom0 has one, serves the disks and the network.
        match data_path::start() {
            Ok(true) => {
                let _ = writeln!(self.console, "dom0: vCPU 1 serves the disks and the network, vCPU 0 the shell");
            }
            Ok(false) => {}
            Err(error) => {
                let _ = writeln!(self.console, "dom0: vCPU 1 not started ({}); vCPU 0 serves all", error.describe());
            }
        }
        self.boot_to_prompt = rdtsc();
        self.prompt();
        // Typed input wakes dom0 through COM1's interrupt line when hv can
        // route it; otherwise dom0 polls the UART every 0.5 ms.
        let ticks_per_ms = self.start_info.tsc_khz.max(1000);
        let serial_interrupt = hypercall::event(EventOp::BindPirq, 4, 0).is_ok();
        if serial_interrupt {
            self.console.enable_receive_interrupt();
        }
        let poll_interval = if serial_interrupt { ticks_per_ms * 10 } else { ticks_per_ms / 2 };
        let reap_interval = ticks_per_ms * 50;
        let mut next_reap = rdtsc() + reap_interval;
        loop {
            let mut busy = false;
            let output_queued = self.console.drain();
            while let Some(byte) = self.console.try_read_byte() {
                busy = true;
                self.receive(byte);
            }
            busy |= self.toolstack.service_consoles(&mut self.console);
            if !data_path::on_own_vcpu() {
                // One vCPU: it serves the disks and the network itself.
                busy |= DATA.lock().serve();
            }
            self.toolstack.report_data_path(&mut self.console);
            // Front ends move through the handshake by writing the store.
            if self.toolstack.service_store() {
                busy = true;
                self.toolstack.follow_devices(&mut self.console);
            }
            let now = rdtsc();
            if now >= next_reap {
                next_reap = now + reap_interval;
                // Detaches whose front end never answers end on time too.
                self.toolstack.follow_devices(&mut self.console);
                if self.toolstack.reap(&mut self.console) && self.toolstack.attached.is_none() {
                    self.prompt();
                    let line = self.editor.line();
                    self.console.write_bytes(line.as_bytes());
                }
            }
            if !busy {
                // Nothing to do: sleep until the next poll or a guest's event.
                // Queued output: back when the UART's FIFO (16 bytes, about
                // 1.4 ms at 115200 baud) has room again.
                let deadline = rdtsc() + if output_queued { ticks_per_ms } else { poll_interval };
                let _ = hypercall::set_timer(deadline);
                hypercall::block();
                let timer_expired = rdtsc() >= deadline;
                // Whatever fired, the next pass polls everything: take all
                // the bits of vCPU 0's ports, or hv would never let it block
                // again (the data-path vCPU's, if it runs, are its own).
                let fired = data_path::take_vcpu0_events();
                if !data_path::on_own_vcpu() {
                    DATA.lock().woke(&fired, timer_expired);
                }
            }
        }
    }

    fn receive(&mut self, byte: u8) {
        if self.toolstack.attached.is_some() {
            if byte == DETACH {
                self.toolstack.attached = None;
                self.console.write_bytes(b"\n");
                self.prompt();
            } else {
                self.toolstack.type_into_attached(&[byte]);
            }
            return;
        }
        match self.editor.feed(byte) {
            Action::None => {}
            Action::Echo(byte) => self.console.write_byte(byte),
            Action::Erase(count) => {
                for _ in 0..count {
                    self.console.write_bytes(b"\x08 \x08");
                }
            }
            Action::Bell => self.console.write_byte(0x07),
            Action::Cancel => {
                self.console.write_bytes(b"^C\n");
                self.prompt();
            }
            Action::Submit => {
                self.console.write_bytes(b"\n");
                let mut line = [0u8; dom0core::shell::line_editor::MAX_LINE];
                let text = self.editor.line();
                let length = text.len();
                line[..length].copy_from_slice(text.as_bytes());
                self.editor.clear();
                self.execute(core::str::from_utf8(&line[..length]).unwrap_or(""));
                if self.toolstack.attached.is_none() {
                    self.prompt();
                }
            }
        }
    }

    fn execute(&mut self, line: &str) {
        let command = match shell::parse(line) {
            Ok(Some(command)) => command,
            Ok(None) => return,
            Err(error) => {
                let _ = writeln!(self.console, "dom0: {error}");
                return;
            }
        };
        let toolstack = &mut *self.toolstack;
        let out = &mut self.console;
        let guest = |toolstack: &Toolstack, out: &mut Uart, name: &str| {
            let index = toolstack.find(name);
            if index.is_none() {
                let _ = writeln!(out, "dom0: no guest '{name}' (see 'list')");
            }
            index
        };
        match command {
            Command::Help => {
                // One column for the usages; a longer one puts its text on the next line.
                const COLUMN: usize = 34;
                for (name, arguments, description) in COMMANDS {
                    let usage_length = name.len() + 1 + arguments.len();
                    if usage_length <= COLUMN {
                        let width = COLUMN - name.len() - 1;
                        let _ = writeln!(out, "  {name} {arguments:<width$} {description}");
                    } else {
                        let _ = writeln!(out, "  {name} {arguments}\n  {:COLUMN$} {description}", "");
                    }
                }
            }
            Command::Info => self.info(),
            Command::Dmesg => {
                let mut buffer = [0u8; 16 * 1024];
                match hypercall::dmesg(&mut buffer) {
                    // Guests' console text is in the log: escaped.
                    Ok(length) => {
                        let _ = write!(
                            out,
                            "{}",
                            dom0core::shell::terminal::escape(
                                &buffer[..length],
                                dom0core::shell::terminal::Context::Log
                            )
                        );
                    }
                    Err(error) => {
                        let _ = writeln!(out, "dom0: dmesg failed: {}", error.describe());
                    }
                }
            }
            Command::Bench => self.bench(),
            Command::SelfTest => self.self_test(),
            Command::List => toolstack.list(out),
            Command::Mem => toolstack.mem(out),
            Command::Ls => toolstack.ls(out),
            Command::Devices => toolstack.devices(out),
            Command::Switch => toolstack.show_switch(out),
            Command::Store(path) => domains::show_store(path.unwrap_or("/local/domain"), out),
            Command::DiskBench(region) => toolstack.disk_bench(region, out),
            Command::DiskMode { disk, dma } => toolstack.disk_mode(disk, dma, out),
            Command::Create(config) => {
                toolstack.create(config, out);
            }
            Command::Destroy(name) => {
                if let Some(index) = guest(toolstack, out, name) {
                    toolstack.destroy(index, out);
                }
            }
            Command::Pause(name) | Command::Unpause(name) => {
                if let Some(index) = guest(toolstack, out, name) {
                    toolstack.set_paused(index, matches!(command, Command::Pause(_)), out);
                }
            }
            Command::BlockAttach { domain, disk } => {
                if let Some(index) = guest(toolstack, out, domain) {
                    toolstack.block_attach(index, disk, out);
                }
            }
            Command::BlockDetach(domain) => {
                if let Some(index) = guest(toolstack, out, domain) {
                    toolstack.block_detach(index, out);
                }
            }
            Command::NetworkAttach { domain, settings } => {
                if let Some(index) = guest(toolstack, out, domain) {
                    toolstack.network_attach(index, settings, out);
                }
            }
            Command::NetworkDetach(domain) => {
                if let Some(index) = guest(toolstack, out, domain) {
                    toolstack.network_detach(index, out);
                }
            }
            Command::Console(name) => {
                if let Some(index) = guest(toolstack, out, name) {
                    toolstack.attach(index, out);
                }
            }
            Command::Sched { domain, weight, cap } => toolstack.sched(domain, weight, cap, out),
            Command::VcpuList(domain) => toolstack.vcpu_list(domain, out),
            Command::VcpuPin { domain, vcpu, cpus } => toolstack.vcpu_pin(domain, vcpu, cpus, out),
            Command::PowerOff | Command::Reboot => {
                let (operation, what) = if command == Command::PowerOff {
                    (PlatformOp::PowerOff, "powering off")
                } else {
                    (PlatformOp::Reboot, "rebooting")
                };
                let _ = writeln!(out, "dom0: {what}");
                out.flush();
                let error = hypercall::platform(operation);
                let _ = writeln!(out, "dom0: {what} failed: {}", error.describe());
            }
        }
    }

    fn info(&mut self) {
        let hv = match hypercall::hv_info() {
            Ok(info) => info,
            Err(error) => {
                let _ = writeln!(self.console, "dom0: hv info failed: {}", error.describe());
                return;
            }
        };
        let dom0 = match hypercall::domain_info(abi::DOM0) {
            Ok(info) => info,
            Err(error) => {
                let _ = writeln!(self.console, "dom0: domain info failed: {}", error.describe());
                return;
            }
        };
        let mut brand = [0u8; 48];
        let _ = report::write_info(&mut self.console, &hv, &dom0, cpu_brand(&mut brand), rdtsc());
    }

    fn self_test(&mut self) {
        use dom0core::shell::selftest::{Argument, CASES, matches};
        let mapped_end = self.start_info.identity_mapped_bytes;
        let ramdisk = if self.start_info.ramdisk_size > 0 { self.start_info.ramdisk_base } else { mapped_end };
        let free_before = hypercall::hv_info().map(|info| info.free_pages).unwrap_or(0);
        // A scratch domain for the domain-control checks: 16 pages allowed,
        // 4 populated at guest-physical 0.
        let scratch = match hypercall::create_domain(16)
            .and_then(|id| hypercall::domctl(abi::domctl::DomCtlOp::PopulateMemory, id, 0, 4, 0).map(|_| id))
        {
            Ok(id) => id,
            Err(error) => {
                let _ = writeln!(self.console, "selftest: cannot create the scratch domain: {}", error.describe());
                return;
            }
        };
        let mut buffer = [0u8; 4096];
        let buffer_address = buffer.as_mut_ptr() as u64;
        let mut passed = 0;
        for case in CASES {
            buffer.fill(0);
            core::hint::black_box(&mut buffer);
            let arguments = case.arguments.map(|argument| match argument {
                Argument::Value(value) => value,
                Argument::Buffer => buffer_address,
                Argument::MappedEnd(offset) => mapped_end.wrapping_add(offset),
                Argument::Ramdisk => ramdisk,
                Argument::Scratch => scratch as u64,
            });
            // SAFETY: every pointer argument is either `buffer` (writable, 4 KiB)
            // or an address outside dom0's writable RAM that hv must refuse.
            let result = unsafe { hypercall::raw(case.number, arguments) };
            passed += self.report_case(case.name, matches(case.expected, result), result);
        }
        core::hint::black_box(&mut buffer);
        // hv refuses a mapping beyond a domain's share of the foreign window.
        let share = self.toolstack.check_foreign_share(scratch);
        let mut name: arrayvec::ArrayString<128> = arrayvec::ArrayString::new();
        let _ = write!(name, "foreign mappings beyond a domain's share refused");
        if let Err(reason) = share {
            let _ = write!(name, " ({reason})");
        }
        passed += self.report_case(&name, share.is_ok(), share.unwrap_or(0));
        let _ = hypercall::domctl(abi::domctl::DomCtlOp::Destroy, scratch, 0, 0, 0);
        let free_after = hypercall::hv_info().map(|info| info.free_pages).unwrap_or(u64::MAX);
        let leak_free = free_before == free_after;
        passed += self.report_case("no frame leaked", leak_free, free_after as i64 - free_before as i64);
        // dom0's ports: the PCI address port works through hv; the reset
        // control register sharing its doubleword stays hv's.
        let address = 0x8000_0000 | 0x10 << 11;
        let echoed = pci::address_round_trip(address);
        passed += self.report_case("PCI config address forwarded", echoed == address, echoed as i64);
        let reset = pci::read_reset_control();
        passed += self.report_case("reset control port 0xcf9 refused", reset == 0xff, reset as i64);
        let _ = writeln!(self.console, "selftest: {passed} of {} hypercall checks passed", CASES.len() + 4);
    }

    fn report_case(&mut self, name: &str, ok: bool, result: i64) -> usize {
        let verdict = if ok { "ok" } else { "FAILED" };
        let _ = writeln!(self.console, "selftest: {name}: {verdict} (rax {result})");
        ok as usize
    }

    fn bench(&mut self) {
        const CALLS: u64 = 10_000;
        let measure = |operation: &dyn Fn()| {
            let mut measurement = Measurement { calls: CALLS, total: 0, minimum: u64::MAX };
            for _ in 0..CALLS {
                let start = rdtsc();
                operation();
                let ticks = rdtsc().wrapping_sub(start);
                measurement.total += ticks;
                measurement.minimum = measurement.minimum.min(ticks);
            }
            measurement
        };
        let baseline = measure(&|| {});
        let null = measure(&|| {
            hypercall::null();
        });
        let cpuid_exit = measure(&|| {
            cpuid(abi::cpuid::LEAF_SIGNATURE);
        });
        let _ = report::write_measurement(&mut self.console, "null hypercall", &null);
        let _ = report::write_measurement(&mut self.console, "cpuid exit", &cpuid_exit);
        let _ = writeln!(self.console, "bench: boot to prompt {} tsc", self.boot_to_prompt);
        if let Ok(hv) = hypercall::hv_info() {
            let _ = writeln!(
                self.console,
                "bench: hv entry to prompt {} tsc (firmware and GRUB took {})",
                self.boot_to_prompt.saturating_sub(hv.boot_tsc),
                hv.boot_tsc
            );
        }
        let _ = report::write_measurement(&mut self.console, "rdtsc pair (overhead)", &baseline);

        // Event delivery: a loopback channel in dom0 (send on one end makes
        // the other pending in dom0's own event page): the hv path of Send,
        // from port lookup to pending bit and wake-up.
        let ports = hypercall::event(EventOp::AllocUnbound, abi::DOM0 as u64, 0).and_then(|unbound| {
            hypercall::event(EventOp::BindInterdomain, abi::DOM0 as u64, unbound).map(|bound| (unbound, bound))
        });
        match ports {
            Ok((unbound, bound)) => {
                let send = measure(&|| {
                    let _ = hypercall::notify(bound as u32);
                    // SAFETY: EVENT_PAGE is dom0's registered event page.
                    unsafe { pv_drivers::event_page::take_pending(&raw mut EVENT_PAGE as u64, unbound as u32) };
                });
                let _ = report::write_measurement(&mut self.console, "event send+deliver", &send);
                let _ = hypercall::event(EventOp::Close, bound, 0);
                let _ = hypercall::event(EventOp::Close, unbound, 0);
            }
            Err(error) => {
                let _ = writeln!(self.console, "bench: event channel setup failed: {}", error.describe());
            }
        }
        for guest in &self.toolstack.guests {
            let _ = writeln!(self.console, "bench: create built in {} tsc ({})", guest.create_build, guest.config.name);
            if let Some(ticks) = guest.create_to_first_output {
                let _ = writeln!(self.console, "bench: create to first output {ticks} tsc ({})", guest.config.name);
            }
            if let Some(ticks) = guest.create_to_latest_output {
                let _ = writeln!(self.console, "bench: create to latest output {ticks} tsc ({})", guest.config.name);
            }
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut console = Uart::without_init();
    let _ = writeln!(console, "dom0: PANIC: {info}");
    console.flush();
    stop()
}
