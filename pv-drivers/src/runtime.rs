//! The guest runtime on the guest target: reads the start-info page,
//! registers the event page and the upcall handler, binds the timer and the
//! console, owns the grant table and the device pages, and implements
//! [`Platform`] for the store client and the front ends with Xen's
//! hypercalls. Also starts further vCPUs and reports crashes.

use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::DomainId;
use abi::event::BITMAP_WORDS;
use abi::start_info::{START_INFO_MAGIC, StartInfo};
use abi::xen::Errno;

use crate::blkfront::{DiskPages, TRANSFER_PAGES};
use crate::console::{ConsoleRing, StoreRingAccess};
#[cfg(doc)]
use crate::guest::Guest;
use crate::netfront::{VIF_PAGES, VifPages};
use crate::platform::{GuestMemory, NotDeviceMemory, Platform};
use crate::ring::{FrontRing, Slot};

/// The vector hv injects for event upcalls.
pub const UPCALL_VECTOR: u8 = 0xf3;

const PAGE_SIZE: usize = abi::PAGE_SIZE as usize;

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// The shared-info page (Xen's layout: event words, `vcpu_info`, time),
/// shared with hv (accessed only through raw pointers).
static mut EVENT_PAGE: Page = Page([0; PAGE_SIZE]);

#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);
static mut IDT: Idt = Idt([[0; 2]; 256]);

/// The grant table page.
static mut GRANT_PAGE: Page = Page([0; PAGE_SIZE]);

// The device pages below are shared with dom0 and reached only through
// raw pointers ([`GuestMemory`] for `Runtime`), never through references.

/// The first vif's pages: the transmit and receive rings, then the
/// transmit and receive buffers (`netfront::VifPages`).
#[repr(C, align(4096))]
struct NetPages([[u8; PAGE_SIZE]; VIF_PAGES]);
static mut NET_PAGES: NetPages = NetPages([[0; PAGE_SIZE]; VIF_PAGES]);

/// The disk ring's page when the builder reserved none (a disk attached
/// after start-up).
static mut DISK_RING: Page = Page([0; PAGE_SIZE]);

/// Pages for disk transfers, granted to dom0 at each connection: as many
/// as dom0 keeps mapped for a guest (persistent grants, `abi::block`), so
/// every transfer is copy-free.
#[repr(C, align(4096))]
struct DiskBuffer([[u8; PAGE_SIZE]; TRANSFER_PAGES]);
static mut DISK_BUFFER: DiskBuffer = DiskBuffer([[0; PAGE_SIZE]; TRANSFER_PAGES]);

/// Upcalls taken so far (written only by the upcall handler).
static UPCALLS: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text
    .balign 16
    .global mica_upcall_stub
mica_upcall_stub:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call {handler}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
"#,
    handler = sym upcall_handler,
);

unsafe extern "C" {
    fn mica_upcall_stub();
}

/// Upcalls each vCPU took (vCPU 0's also count in `UPCALLS`).
static VCPU_UPCALLS: [AtomicU64; abi::hypercall::MAX_VCPUS as usize] =
    [const { AtomicU64::new(0) }; abi::hypercall::MAX_VCPUS as usize];

/// Set once another vCPU takes upcalls ([`accept_upcalls`]): the handler
/// then asks which vCPU it runs on, as Xen tells an HVM or PVH guest (CPUID
/// leaf `base + 4`: one exit per upcall).
static SEVERAL_VCPUS: AtomicBool = AtomicBool::new(false);

extern "C" fn upcall_handler() {
    let vcpu = if SEVERAL_VCPUS.load(Ordering::Relaxed) {
        crate::xen::vcpu_id().unwrap_or(0).min(abi::hypercall::MAX_VCPUS - 1) as usize
    } else {
        0
    };
    // Acknowledge: hv raises this vCPU's upcall again only after its flag
    // and selector (in its `vcpu_info`) are cleared.
    // SAFETY: EVENT_PAGE is this domain's shared-info page.
    unsafe { crate::event_page::clear_upcall(&raw mut EVENT_PAGE as u64, vcpu as u32) };
    VCPU_UPCALLS[vcpu].fetch_add(1, Ordering::Relaxed);
    if vcpu == 0 {
        UPCALLS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Upcalls vCPU `vcpu` has taken so far (0 for a vCPU beyond the limit).
pub fn vcpu_upcalls(vcpu: u32) -> u64 {
    VCPU_UPCALLS.get(vcpu as usize).map_or(0, |count| count.load(Ordering::Relaxed))
}

/// Lets the calling vCPU (one started with [`Guest::start_vcpu`], after
/// [`Guest::init`] ran on vCPU 0) take upcalls: loads the runtime's IDT
/// and enables interrupts. Events reach it on the ports bound to it
/// (`EventOp::BindVcpu`, `BindIpi`).
///
/// # Safety
/// Call once per vCPU, from the vCPU itself, with a stack that can take an
/// interrupt frame.
pub unsafe fn accept_upcalls() {
    SEVERAL_VCPUS.store(true, Ordering::Relaxed);
    let base = &raw const IDT as u64;
    let pointer: [u16; 5] = [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16];
    // SAFETY: the IDT was filled by `Runtime::init` and is never written
    // again; its one gate is the upcall stub, which saves what it uses.
    unsafe { asm!("lidt [{}]", "sti", in(reg) &pointer, options(nostack)) };
}

/// The address of the domain's shared-info page, its event words (for
/// vCPUs other than 0, which must not use the `Guest`:
/// `event_page::take_pending` on it).
pub fn event_page() -> u64 {
    &raw const EVENT_PAGE as u64
}

/// Upcalls vCPU 0 has taken so far.
pub fn upcalls() -> u64 {
    UPCALLS.load(Ordering::Relaxed)
}

/// Tests and clears port `port`'s pending bit.
pub(crate) fn take_pending(port: u32) -> bool {
    // SAFETY: EVENT_PAGE is this domain's registered event page.
    unsafe { crate::event_page::take_pending(&raw mut EVENT_PAGE as u64, port) }
}

/// The runtime of vCPU 0: the ports it waits on, the console, the grant
/// table and the device pages. Not thread-safe: other vCPUs do not use it.
pub struct Runtime {
    /// The start-info page as the builder wrote it.
    pub start_info: StartInfo,
    console: Option<ConsoleRing>,
    console_port: u32,
    /// The console port fired since the last `wait_for_input`.
    console_event: bool,
    /// The grant table (set up when the guest has a store, so devices).
    grants: Option<crate::grant::GrantTable>,
    /// Ports every wait takes, bit `p % 64` of word `p / 64`: the timer's,
    /// the store's, and those allocated for devices until closed.
    listened: [u64; BITMAP_WORDS],
    /// The timer's `VIRQ_TIMER` port.
    timer_port: u32,
    /// The TSC deadline the single-shot timer is armed for, until its
    /// port fires: a wait for a later deadline leaves it armed (it wakes
    /// the waiter sooner, who then waits again) instead of a hypercall.
    timer_armed: Option<u64>,
}

impl Runtime {
    /// Sets the runtime up from the start-info page at
    /// `start_info_address`: the IDT with the upcall gate (interrupts stay
    /// off until [`Runtime::enable_upcalls`]), the shared-info page, the
    /// upcall vector, the timer, the console, and the grant table when the
    /// guest has a store. Stops the domain if the page is not a Mica
    /// start-info page.
    pub fn init(start_info_address: u64) -> Runtime {
        // SAFETY: the builder wrote a StartInfo there before entry; it is
        // copied out once.
        let start_info: StartInfo = unsafe { core::ptr::read_volatile(start_info_address as *const StartInfo) };
        if start_info.magic != START_INFO_MAGIC {
            let _ = crate::xen::console_write(b"guest: bad start-info magic\n");
            let _ = crate::xen::shutdown(abi::xen::sched::ShutdownReason::Crash);
            // Refused (it never is for a guest): nothing to run on.
            loop {
                crate::xen::block();
            }
        }
        // IDT: only the upcall vector (an exception in a guest without
        // handlers triple-faults, and hv reports the crash).
        let handler = mica_upcall_stub as *const () as u64;
        let gate_low = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
        // SAFETY: boot is single-threaded; IDT is written once, then loaded.
        unsafe {
            let idt = &raw mut IDT;
            (*idt).0[UPCALL_VECTOR as usize] = [gate_low, handler >> 32];
            let pointer: [u16; 5] = {
                let base = idt as u64;
                [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16]
            };
            asm!("lidt [{}]", in(reg) &pointer, options(nostack));
        }
        // Events in Xen's 2-level layout, in the shared-info page (ABI 1.0),
        // raised as upcalls on UPCALL_VECTOR.
        // SAFETY: the static page is dedicated to hv's use for the domain's life.
        let _ = unsafe { crate::xen::place_shared_info_at(&raw mut EVENT_PAGE as u64) };
        let _ = crate::xen::set_callback_vector(UPCALL_VECTOR);
        let timer_port = crate::xen::evtchn::bind_virq(abi::xen::event_channel::Virq::Timer, 0).unwrap_or(0);
        let mut runtime = Runtime {
            start_info,
            console: None,
            console_port: 0,
            console_event: false,
            grants: None,
            listened: [0; BITMAP_WORDS],
            timer_port,
            timer_armed: None,
        };
        runtime.listen(timer_port);
        // The store's and the console's ports are ours, connected to
        // dom0's before we first ran (ABI 1.0).
        if start_info.store_page != 0 {
            runtime.listen(start_info.store_port);
        }
        if start_info.console_page != 0 {
            // SAFETY: the builder reserved this page of our RAM for the console.
            runtime.console = Some(unsafe { ConsoleRing::new(start_info.console_page as *mut u8) });
            runtime.console_port = start_info.console_port;
        }
        if start_info.store_page != 0 {
            // SAFETY: the static page is dedicated to the grant table for good.
            runtime.grants = unsafe { crate::grant::GrantTable::new(&raw mut GRANT_PAGE as u64) }.ok();
        }
        runtime
    }

    /// Lets events interrupt us (the upcall handler is installed).
    pub fn enable_upcalls(&mut self) {
        // SAFETY: `init` installed the upcall gate in the loaded IDT.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }

    /// The store ring the builder set up (None without a store).
    pub fn store_ring(&self) -> Option<StoreRingAccess> {
        if self.start_info.store_page == 0 {
            return None;
        }
        // SAFETY: the builder reserved this page of our RAM for the store
        // ring; dom0 maps it; it stays ours for the guest's life.
        Some(unsafe { StoreRingAccess::new(self.start_info.store_page as *mut u8) })
    }

    /// The disk's pages: the builder's ring page if it reserved one (a
    /// disk in the config), else the runtime's own (a disk attached later),
    /// and the transfer pages.
    pub fn disk_pages(&self) -> DiskPages {
        let ring =
            if self.start_info.block_ring != 0 { self.start_info.block_ring } else { &raw const DISK_RING as u64 };
        DiskPages { ring, transfer: &raw const DISK_BUFFER as u64 }
    }

    /// The first vif's pages.
    pub fn vif_pages(&self) -> VifPages {
        VifPages { first: &raw const NET_PAGES as u64 }
    }

    /// Whether the grant table is set up (the guest has a store).
    pub fn has_grant_table(&self) -> bool {
        self.grants.is_some()
    }

    /// Makes waits take `port`'s pending bit.
    fn listen(&mut self, port: u32) {
        if let Some(word) = self.listened.get_mut(port as usize / 64) {
            *word |= 1 << (port % 64);
        }
    }

    /// Waits no longer take `port`'s pending bit.
    fn forget(&mut self, port: u32) {
        if let Some(word) = self.listened.get_mut(port as usize / 64) {
            *word &= !(1 << (port % 64));
        }
    }

    /// Whether `length` bytes at `address` lie inside one group of device
    /// pages: the runtime's statics, or the ring page the builder reserved.
    fn device_memory(&self, address: u64, length: usize) -> bool {
        let Some(end) = address.checked_add(length as u64) else { return false };
        let inside = |start: u64, size: usize| start != 0 && address >= start && end <= start + size as u64;
        inside(&raw const DISK_RING as u64, PAGE_SIZE)
            || inside(&raw const DISK_BUFFER as u64, TRANSFER_PAGES * PAGE_SIZE)
            || inside(&raw const NET_PAGES as u64, VIF_PAGES * PAGE_SIZE)
            || inside(self.start_info.block_ring, PAGE_SIZE)
    }

    /// Takes the pending bits of the ports waits take, and notes whether
    /// the console's fired.
    fn collect_events(&mut self) {
        // SAFETY: EVENT_PAGE is this domain's registered event page.
        let taken = unsafe { crate::event_page::take_pending_of(&raw mut EVENT_PAGE as u64, &self.listened) };
        let timer = self.timer_port as usize;
        if taken.get(timer / 64).is_some_and(|word| word & (1 << (timer % 64)) != 0) {
            self.timer_armed = None;
        }
        if self.console.is_some() && take_pending(self.console_port) {
            self.console_event = true;
        }
    }

    /// The guest-physical addresses of the event page and the grant table
    /// page the runtime registered.
    pub fn registered_pages(&self) -> (u64, u64) {
        (&raw const EVENT_PAGE as u64, &raw const GRANT_PAGE as u64)
    }

    /// This domain's end of the console event channel (0 without a console).
    pub fn console_port(&self) -> u32 {
        self.console_port
    }

    /// Writes to the console (or the hypervisor log when there is none),
    /// waiting while the ring is full.
    pub fn write(&mut self, mut bytes: &[u8]) {
        let Some(ring) = &self.console else {
            let _ = crate::xen::console_write(bytes);
            return;
        };
        while !bytes.is_empty() {
            match ring.write_output(bytes) {
                Ok(0) => {
                    let _ = crate::xen::evtchn::notify(self.console_port);
                    crate::xen::yield_now();
                }
                Ok(count) => bytes = &bytes[count..],
                Err(_) => {
                    // dom0 corrupted the ring: fall back to the hv log.
                    let _ = crate::xen::console_write(bytes);
                    return;
                }
            }
        }
        let _ = crate::xen::evtchn::notify(self.console_port);
    }

    /// Reads waiting console input (non-blocking).
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let count = self.console.as_ref().and_then(|ring| ring.read_input(out).ok()).unwrap_or(0);
        if count > 0 {
            let _ = crate::xen::evtchn::notify(self.console_port);
        }
        count
    }

    /// Waits until the console port fires (input arrived or space freed).
    pub fn wait_for_input(&mut self) {
        self.collect_events();
        while !core::mem::take(&mut self.console_event) {
            self.wait_for_event();
        }
    }

    /// Whether the console port is connected (dom0 still serves it).
    pub fn console_connected(&self) -> bool {
        use abi::xen::event_channel::EvtchnStat;
        crate::xen::evtchn::status(self.console_port)
            .is_ok_and(|status| status.status == EvtchnStat::Interdomain.number())
    }

    /// Sleeps until the TSC reaches `deadline`.
    pub fn sleep_until(&mut self, deadline: u64) {
        // Armed on every round: a timer that fired a little early (hv
        // counts in ns) is armed again, not waited on forever.
        while now() < deadline {
            self.set_timer(deadline);
            self.wait_for_event();
        }
    }
}

impl GuestMemory for Runtime {
    fn write(&mut self, address: u64, bytes: &[u8]) -> Result<(), NotDeviceMemory> {
        if !self.device_memory(address, bytes.len()) {
            return Err(NotDeviceMemory);
        }
        // SAFETY: the range lies inside device pages of ours (checked
        // above), which live for the guest's life and are reached only
        // through raw pointers.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        Ok(())
    }

    fn read(&self, address: u64, out: &mut [u8]) -> Result<(), NotDeviceMemory> {
        if !self.device_memory(address, out.len()) {
            return Err(NotDeviceMemory);
        }
        // SAFETY: as for `write`.
        unsafe { core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn front_ring<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize>(
        &mut self,
        page: u64,
    ) -> Result<FrontRing<Req, Rsp, SLOTS, SLOT_SIZE>, NotDeviceMemory> {
        if !page.is_multiple_of(abi::PAGE_SIZE) || !self.device_memory(page, PAGE_SIZE) {
            return Err(NotDeviceMemory);
        }
        // SAFETY: a whole page of our device memory (checked above), ours
        // for the guest's life, shared with dom0 only through grants and
        // never reached through Rust references.
        Ok(unsafe { FrontRing::new(page as *mut u8) })
    }
}

impl Platform for Runtime {
    fn notify(&mut self, port: u32) {
        let _ = crate::xen::evtchn::notify(port);
    }

    fn alloc_port(&mut self, remote: DomainId) -> Option<u32> {
        let port = crate::xen::evtchn::alloc_unbound(remote as u16).ok()?;
        self.listen(port);
        Some(port)
    }

    fn close_port(&mut self, port: u32) {
        let _ = crate::xen::evtchn::close(port);
        self.forget(port);
    }

    fn take_port(&mut self, port: u32) -> bool {
        take_pending(port)
    }

    /// Halts until an event arrives (the upcall wakes us), then collects
    /// the ports that fired. hv does not block a vCPU while an unmasked port
    /// is pending, so every port we bound is consumed here.
    fn wait_for_event(&mut self) {
        // SAFETY: STI;HLT: the vCPU blocks in hv until an event; the upcall
        // handler runs on wake-up and returns after HLT.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        self.collect_events();
    }

    fn now(&self) -> u64 {
        now()
    }

    /// TSC ticks in one second (from the start-info page; a guess if unknown).
    fn ticks_per_second(&self) -> u64 {
        if self.start_info.tsc_khz == 0 { 1_000_000_000 } else { self.start_info.tsc_khz * 1000 }
    }

    /// Arms this vCPU's single-shot timer (Xen's `set_timer_op`) for TSC
    /// value `deadline`: its `VIRQ_TIMER` port fires then, or sooner when
    /// it is armed already for an earlier time that has not come (a
    /// waiter woken early waits again; a hypercall a wait saved).
    fn set_timer(&mut self, deadline: u64) {
        if self.timer_armed.is_some_and(|armed| armed <= deadline && now() < armed) {
            return;
        }
        // At least 1 ns: 0 would stop the timer.
        let _ = crate::xen::set_timer_op(crate::xen::tsc_to_ns(deadline, self.start_info.tsc_khz).max(1));
        self.timer_armed = Some(deadline);
    }

    fn grant(&mut self, domain: DomainId, address: u64, readonly: bool) -> Result<u32, abi::Error> {
        self.grants.as_mut().ok_or(abi::Error::NotFound)?.grant(domain, address, readonly)
    }

    fn end_grant(&mut self, reference: u32) -> Result<(), abi::Error> {
        self.grants.as_mut().ok_or(abi::Error::NotFound)?.end_access(reference)
    }
}

/// Starts vCPU `vcpu` of this domain running `entry(argument)` on the
/// stack below `stack_top`, with the calling vCPU's page tables (CR3) and
/// GDT, through Xen's `VCPUOP_initialise` and `VCPUOP_up`
/// ([`crate::xen::vcpu_initialise`]): [`Guest::start_vcpu`] without the
/// runtime, for kernels that set themselves up (dom0). The new vCPU
/// starts in 64-bit mode with interrupts off and no IDT.
///
/// # Safety
/// As for [`Guest::start_vcpu`]: `stack_top` ends writable memory of this
/// domain that only the new vCPU uses, and the page tables and GDT of the
/// calling vCPU stay as they are while the new one runs.
pub unsafe fn start_vcpu(
    vcpu: u32,
    entry: extern "C" fn(u64) -> !,
    stack_top: u64,
    argument: u64,
) -> Result<(), abi::Error> {
    /// The new vCPU's first instructions. Xen's 64-bit entry state has
    /// flat segments but no GDT, and an interrupt or IRET (an upcall, once
    /// the vCPU takes them) reads the GDT: so it loads the caller's (base
    /// in RDX, limit in CX, the pointer built below its stack pointer),
    /// then jumps to `entry` (RSI), with RDI and RSP as `entry` expects.
    #[unsafe(naked)]
    extern "C" fn load_gdt_and_enter() -> ! {
        core::arch::naked_asm!(
            "sub rsp, 16",
            "mov [rsp], cx",
            "mov [rsp + 2], rdx",
            "lgdt [rsp]",
            "add rsp, 16",
            "jmp rsi",
        )
    }
    let (gdt_base, gdt_limit) = read_gdtr();
    // Where a `call` would leave the stack pointer (see
    // `hypercall::vcpu_entry_context`).
    let rsp = (stack_top & !0xf).wrapping_sub(8);
    let mut context = crate::xen::long_mode_context(load_gdt_and_enter as *const () as u64, rsp, read_cr3());
    let registers = &mut context.x86_64;
    (registers.rdi, registers.rsi) = (argument, entry as usize as u64);
    (registers.rdx, registers.rcx) = (gdt_base, u64::from(gdt_limit));
    // In Mica's terms, as `hypercall::vcpu_up` answered: a vCPU initialised
    // already is up, or still stopping after `hypercall::vcpu_down`.
    let refused = |errno: Errno| match errno {
        Errno::Eexist | Errno::Ebusy => abi::Error::Busy,
        Errno::Efault => abi::Error::BadAddress,
        Errno::Enomem => abi::Error::OutOfMemory,
        _ => abi::Error::InvalidArgument,
    };
    // SAFETY: `entry` is a function of this kernel that takes a word and
    // never returns, reached through `load_gdt_and_enter`, which touches
    // only the new stack; the caller dedicates the stack and keeps the
    // page tables and GDT this vCPU runs on.
    unsafe { crate::xen::vcpu_initialise(vcpu, &context) }.map_err(refused)?;
    // SAFETY: as above; its stack is its own from now on.
    unsafe { crate::xen::vcpu_up(vcpu) }.map_err(refused)
}

/// The guest-physical address of the current page-table root (CR3
/// without its flag bits; SDM 4.5).
fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 at CPL 0 changes nothing.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3 & 0x000f_ffff_ffff_f000
}

/// The GDT register: (base, limit). SGDT stores the 2-byte limit, then
/// the 8-byte base (SDM 3.5.1).
fn read_gdtr() -> (u64, u16) {
    let mut register = [0u8; 10];
    // SAFETY: SGDT writes exactly the 10 bytes of `register`.
    unsafe { asm!("sgdt [{}]", in(reg) register.as_mut_ptr(), options(nostack, preserves_flags)) };
    let [limit_low, limit_high, base @ ..] = register;
    (u64::from_le_bytes(base), u16::from_le_bytes([limit_low, limit_high]))
}

/// The time-stamp counter.
pub fn now() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Stops the guest with a crash report (for panic handlers), through
/// Xen's calls: the report goes to hv's log with `console_io` (one line
/// when it fits 256 bytes; a newline is added if it lacks one, since hv
/// logs a guest's console text by lines), then `sched_op` shutdown with
/// `SHUTDOWN_crash` stops the domain. Should hv refuse the shutdown, the
/// vCPU blocks for good rather than run on.
pub fn crash(message: fmt::Arguments) -> ! {
    let mut line = arrayvec::ArrayString::<256>::new();
    if fmt::write(&mut line, message).is_err() {
        line.clear();
        let _ = line.try_push_str("crash report too long");
    }
    if !line.ends_with('\n') {
        if line.is_full() {
            line.pop();
        }
        let _ = line.try_push('\n');
    }
    let _ = crate::xen::console_write(line.as_bytes());
    let _ = crate::xen::shutdown(abi::xen::sched::ShutdownReason::Crash);
    loop {
        // SAFETY: CLI; HLT touches no memory: hv blocks the vCPU until an
        // event is due (no upcall runs: interrupts are off), then it halts
        // again.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
