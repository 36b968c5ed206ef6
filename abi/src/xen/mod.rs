//! Xen's PVH guest interface: the subset of Xen's public ABI that Mica
//! implements (issue 10), with Xen's numbers, flag bits, error values and
//! byte-exact structure layouts for x86_64.
//!
//! Status (ABI 1.0, in progress): the conformance table below says, for
//! each of Xen's calls, what Mica does; the CHANGELOG lists what each
//! version adds. Every structure derives zerocopy's `FromBytes` and
//! `IntoBytes`, so Rust code reads and writes it as bytes without
//! `unsafe`.
//!
//! # Conformance
//! Every number below 64 that is not listed, and every sub-operation not
//! listed, answers `-ENOSYS`. "dom0" marks what only the control domain
//! may do (others: `-EPERM`).
//!
//! | call (number) | sub-operation | Mica |
//! |---|---|---|
//! | `memory_op` (12) | `add_to_physmap` | shared info (`XENMAPSPACE_shared_info`, idx 0): the guest's own RAM page at `gpfn` becomes it (zeroed the first time, carried along when moved); grant table frames 0 to 3 (`XENMAPSPACE_grant_table`, 512 v1 entries each, [`grant_table::GRANT_TABLE_FRAMES`]): the guest's RAM page at `gpfn` becomes the frame, or, where the guest has no RAM (Linux's unpopulated space), a page of hv's is placed there, freed with the domain; a frame may be placed while the table's grants are mapped, moved only while none are; other spaces or indices `-EINVAL`/`-ENOSYS` |
//! | | `memory_map` | the map dom0 set (the same as `hvm_start_info`'s for a PVH guest); `-ENOSYS` without one |
//! | | `set_memory_map` | dom0 on a domain it builds (at most 8 entries) |
//! | | others | `-ENOSYS` |
//! | `set_timer_op` (15) | (none: the time in `rdi`) | the caller's single-shot timer at that system time (ns), 0 stops it; fires `VIRQ_TIMER` (a time past at once); returns 0 |
//! | `xen_version` (17) | `version`, `extraversion`, `get_features` (word 0), `pagesize` | 4.17, `".0-mica"`, writable page tables, auto-translated physmap, HVM callback vector and safe pvclock (0x305), 4096; other feature words `-EINVAL` |
//! | | others | `-ENOSYS` |
//! | `console_io` (18) | `write` | to hv's log, per line, rate-limited; returns 0 |
//! | | `read` | `-EPERM` (hv's console is dom0's) |
//! | `grant_table_op` (20) | `map_grant_ref`, `unmap_grant_ref`, `copy` | arrays of at most 64, a `GNTST_*` status each ([`grant_table::GnttabOp`]); host mappings only; a copy between two grants `GNTST_general_error` |
//! | | `query_size`, `set_version`, `get_version` | the frames placed now, 4 (2,048 entries) at most ([`grant_table::GRANT_TABLE_FRAMES`]); version 1 only (`set_version(2)` `-ENOSYS`) |
//! | | `setup_table` and the rest | `-ENOSYS` |
//! | `vcpu_op` (24) | `register_vcpu_info` | once per vCPU (`-EBUSY` again; `-ENXIO` a slot crossing its page) |
//! | | `register_runstate_memory_area`, `stop_periodic_timer` | accepted, nothing done |
//! | | `set_singleshot_timer`, `stop_singleshot_timer` | the caller's own vCPU only (`-EINVAL` another); fires `VIRQ_TIMER` |
//! | | `is_up` | 1 or 0 |
//! | | `initialise` | once per vCPU (`-EEXIST` again, and for a vCPU up or started before); hv's two entry states only, with any general registers, else `-EINVAL`. `VCPU_HVM_MODE_64B`: CR0 0x80050033, CR4 0x20 (PAE), EFER 0xd00 (LME, LMA, NXE), RFLAGS 0x2 (CR0.ET, CR0.NE, EFER.LMA and RFLAGS bit 1 may be left out), RIP and RSP canonical, CR3 page-aligned below the foreign window; flat segments, the GDT register 0. `VCPU_HVM_MODE_32B`: paging off (CR0 PE, ET, NE; CR3, CR4, EFER 0), RFLAGS 0x2, CS, DS, SS, ES base 0, limit 0xffffffff, `ar` 0xc9b (code) or 0xc93 (data), accessed bit optional, TR base 0, limit 0x67, `ar` 0x8b |
//! | | `up` | starts an initialised vCPU (`-EINVAL` if never initialised; 0 if it is up); after `down`, from its initialised state again (Xen resumes it where it stopped) |
//! | | `down` | stops it at once (0 if it is down); the last vCPU up: the domain powers off (dom0 `-EPERM`). It stays initialised; Mica's own `VcpuOp::Down` makes it lose that state |
//! | | the rest | `-ENOSYS` |
//! | `sched_op` (29) | `yield`, `block`, `poll` | as Xen ([`sched::SchedOp`]) |
//! | | `shutdown` | `poweroff`, `reboot`, `crash` end the domain so (dom0's `on_poweroff`, `on_reboot`, `on_crash`); `watchdog` ends it as a crash (`on_crash`); `suspend` and `soft_reset` `-EINVAL`, the guest goes on (Linux takes it as a cancelled suspend); a code Xen does not define `-EINVAL`; dom0 `-EPERM` |
//! | | others | `-ENOSYS` |
//! | `event_channel_op` (32) | `alloc_unbound` | in the caller's table, or (dom0) another domain's |
//! | | `bind_interdomain`, `bind_virq`, `bind_ipi`, `bind_vcpu`, `send`, `close`, `unmask`, `status` | as Xen, 2-level layout, 256 ports per domain; a send to a peer that is gone is dropped (0); a port whose peer ended reads as closed. Every VIRQ Xen defines binds (per vCPU, or on vCPU 0 for the domain-wide ones); hv raises `TIMER` and `CONSOLE` (dom0), the others never fire |
//! | | `init_control`, `expand_array`, `set_priority` (FIFO) and the rest | `-ENOSYS` |
//! | `hvm_op` (34) | `set_param` | `HVM_PARAM_CALLBACK_IRQ` (vector type only); dom0 on another domain: its store and console frame and port |
//! | | `get_param` | the callback, store and console parameters (0 until set) |
//! | | others | `-ENOSYS` |
//!
//! **Where Mica differs from Xen on purpose.** A guest written for Xen
//! meets these differences only on error paths or in what Mica leaves out:
//! - `alloc_unbound` for a domain that does not exist is `-ESRCH` (Xen
//!   accepts any id): a port offered to a domain yet to come would let
//!   whichever domain gets that id bind it.
//! - A port whose peer ended reads as closed (Xen: unbound for the dead
//!   domain's id, which a later domain with that id could bind); sends on
//!   it are dropped (0) as in Xen, and only `close` frees it.
//! - `suspend` and `soft_reset` shutdowns are refused (no save/restore, no
//!   in-place rebuild), and so is a code Xen does not define (Xen ends the
//!   domain whatever the code); `watchdog` is a crash.
//! - `VIRQ_CONSOLE` is raised for dom0 only (a guest's console is its
//!   xencons ring, served by dom0); like every domain-wide VIRQ it binds
//!   on vCPU 0 and moves with `bind_vcpu`.
//! - Grant tables are version 1 with 4 frames; no `setup_table`, no
//!   transitive or sub-page grants; event channels are 2-level only.
//!
//! Xen's CPUID leaves 0x4000_0000..=0x4000_0004 and the hypercall page
//! (MSR 0x4000_0000) are offered ([`cpuid`], [`hypercall`]); a kernel
//! with a `PHYS32_ENTRY` note boots as PVH ([`start_info`]). A guest
//! reads and writes IA32_EFER, the SYSCALL MSRs (STAR, LSTAR, CSTAR,
//! SFMASK), KERNEL_GS_BASE, TSC_AUX, FS/GS base and PAT, each its vCPU's
//! own and checked as a CPU checks it, and reads IA32_MISC_ENABLE; the
//! microcode revision (IA32_BIOS_SIGN_ID, 0x8b) reads 0 and takes any
//! write; every other MSR access gets #GP, but for the local APIC below.
//! CPUID hides what hv does not virtualize (hv's `cpuid_policy`: among
//! others MCE, MCA, MTRR, TSC_ADJUST, PCID, AVX and AVX-512, performance
//! counters, APERF/MPERF), so a kernel that reads CPUID first never
//! touches those MSRs.
//!
//! **Local APIC.** Each vCPU of a guest (not dom0) has a local APIC in
//! x2APIC mode, reached through MSRs only (0x800-0x83f, IA32_APIC_BASE
//! 0x1b, IA32_TSC_DEADLINE 0x6e0; no page at 0xfee00000), as the SDM
//! (Vol. 3A 11.12) defines it: its x2APIC id is the vCPU's index (the id
//! the MADT gives it; CPUID leaf 1 shows x2APIC, APIC, TSC-deadline and
//! that initial APIC id, leaves 0xB and 0x1F that x2APIC id); IA32_APIC_BASE
//! reads 0xfee00c00 (BSP bit 8 on vCPU 0). Registers, reset values and
//! what is #GP: hv's `vlapic` module. Interrupts are edge-triggered; the
//! timer counts TSC ticks through its divider (one-shot, periodic with a
//! period of at least 200 µs, TSC-deadline). IPIs reach the domain's own
//! vCPUs (physical or logical destination, shorthands); INIT then a
//! Start-up IPI starts a vCPU that is down in real mode at the vector's
//! page, as on a PC. NMI, SMI and lowest-priority IPIs, and INIT to a
//! vCPU that runs, are dropped and logged. The event callback vector
//! (`HVM_PARAM_CALLBACK_IRQ`) bypasses the APIC, as in Xen: injected
//! ahead of the APIC's vectors, with no ISR bit and no EOI.
//!
//! # What this module is
//! Xen's interface is defined by C headers (`xen/include/public/` in the
//! Xen tree). This module restates, in Rust and with its own wording, the
//! part of it a Linux PVH guest (Linux 6.1 and later) and Mica's own front
//! ends need: hypercall and sub-operation numbers, argument structures,
//! the shared-info page, event channels (2-level only), grant tables
//! (version 1 only), the PVH start-of-day structure, Xen's CPUID leaves,
//! and the shared-memory protocols of the console, the store, block and
//! network devices. Names are Xen's, Rust-cased: the C structure
//! `evtchn_alloc_unbound` is [`event_channel::EvtchnAllocUnbound`], the
//! constant `GNTST_bad_gntref` is [`grant_table::GrantStatus::BadGntref`];
//! field names are kept as in C so a reader can put the two side by side.
//!
//! Every structure is `#[repr(C)]` (one, [`memory::E820Entry`], also
//! packed, as the BIOS format it copies is) and its size and every field
//! offset are asserted at compile time. Where C leaves padding implicit, the Rust
//! structure names it (`_pad*`, always zero when written, ignored when
//! read). Where C uses a union, this module gives either one structure per
//! case with the same size (so no `unsafe` is needed to read it) or an
//! integer field with accessors; each such place says which.
//!
//! Where each Xen header went: `xen.h` -> [`hypercall`], [`shared_info`],
//! [`event_channel`] (VIRQs), the domain ids below; `errno.h` -> [`errno`];
//! `version.h`, `features.h` -> [`version`]; `event_channel.h` ->
//! [`event_channel`]; `grant_table.h` -> [`grant_table`]; `memory.h` ->
//! [`memory`]; `hvm/hvm_op.h`, `hvm/params.h` -> [`hvm`]; `vcpu.h`,
//! `hvm/hvm_vcpu.h` -> [`vcpu`]; `sched.h` -> [`sched`];
//! `arch-x86/hvm/start_info.h` -> [`start_info`]; `arch-x86/cpuid.h` ->
//! [`cpuid`]; `arch-x86/xen*.h` -> [`shared_info`]; `io/*.h` -> [`io`].
//!
//! # Calling convention (x86_64, Intel VT-x)
//! A hypercall is the `vmcall` instruction executed at guest CPL 0:
//! - `rax`: the hypercall number ([`hypercall::Hypercall`]);
//! - `rdi`, `rsi`, `rdx`, `r10`, `r8`: arguments 1 to 5, in that order. Most
//!   calls take a sub-operation (`cmd`, only its low 32 bits are read) in
//!   `rdi` and the address of an argument structure in `rsi`;
//! - result in `rax`: zero or a positive value on success (its meaning
//!   depends on the call), or a negated [`errno::Errno`] number on failure
//!   (`-22` is `EINVAL`). The argument registers may be clobbered; every
//!   other register is preserved.
//!
//! An unknown hypercall number or sub-operation fails with `-ENOSYS`.
//!
//! **Addresses.** As in Xen for HVM and PVH guests, an argument that
//! points at a structure or buffer (a "guest handle" in Xen's headers) is a
//! *guest-virtual* address in the calling vCPU's current address space:
//! the hypervisor translates it through the guest's page tables (it is a
//! guest-physical address while the guest runs with paging off). A field
//! that names a frame (`gfn`, `gpfn`, `mfn`, `frame`) is a guest frame
//! number: guest-physical address / 4096. A structure or buffer may cross a
//! page boundary. An address the hypervisor cannot translate or that is not
//! RAM of the caller gives `-EFAULT`.
//!
//! A `vmcall` at guest CPL > 0 (user space) does not reach the hypercall:
//! it returns `-EPERM` in `rax`, whatever the number (as Mica's own calls
//! already do). The convention above is for callers in 64-bit mode, the
//! only mode in which a PVH kernel makes hypercalls; Xen also accepts
//! 32-bit callers (arguments in `ebx`, `ecx`, `edx`, `esi`, `edi`), which
//! this module does not describe. Xen reserves numbers with bit 31 set for
//! Hyper-V calls when it offers Hyper-V's interface.
//!
//! # C guests on Xen's headers
//! Xen's public headers describe the interface version a program asks
//! for with `__XEN_INTERFACE_VERSION__` (Linux asks for the latest);
//! without it they describe version 0, whose names are the retired calls
//! (`__HYPERVISOR_sched_op` is then `sched_op_compat`, 6, and
//! `__HYPERVISOR_event_channel_op` is 16), which Mica does not offer
//! (`-ENOSYS`). Define it, as `pv-drivers/c/xenhello.c` does.
//!
//! # Mica's own calls
//! Mica keeps a few calls Xen does not have (domain control, the log,
//! platform control). They are numbered from
//! [`hypercall::MICA_HYPERCALL_BASE`] up (`crate::Hypercall`, since ABI
//! 1.0), outside every range Xen uses or can reach through a hypercall
//! page; see [`hypercall`].
//!
//! # What is left out
//! PV-only interfaces (page-table updates, trap tables, segment
//! descriptors, `multicall`, the PV `start_info`), FIFO event channels,
//! grant table version 2 and transfers, `physdev_op`, domain control for
//! toolstacks (`domctl`, `sysctl`), the device model interface, the
//! network protocol's extra-info slots and control ring, multi-page and
//! multi-queue device rings, and everything ARM-specific. Operations a
//! PVH guest does not use are listed by number (a few with their layout),
//! so that a refusal can be precise.

pub mod console_io;
pub mod cpuid;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod vcpu;
pub mod version;

pub use errno::Errno;
pub use hypercall::Hypercall;

/// A domain id as Xen's structures carry it (`domid_t`, 16 bits).
pub type DomId = u16;

/// Domain ids from this one up are never ordinary domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;
/// "The calling domain", accepted wherever an operation names a domain.
pub const DOMID_SELF: DomId = 0x7ff0;
/// The I/O pseudo-domain (owner of device memory); not used by guests.
pub const DOMID_IO: DomId = 0x7ff1;
/// The hypervisor itself as the owner of a page; not used by guests.
pub const DOMID_XEN: DomId = 0x7ff2;
/// The copy-on-write pseudo-domain; not used by guests.
pub const DOMID_COW: DomId = 0x7ff3;
/// "No domain" (for example the owner of a page nobody owns).
pub const DOMID_INVALID: DomId = 0x7ff4;
/// "Any domain", where an operation accepts a wildcard.
pub const DOMID_ANY: DomId = 0x7ff5;
/// The idle domain.
pub const DOMID_IDLE: DomId = 0x7fff;
/// The bits of a [`DomId`] that carry the id.
pub const DOMID_MASK: DomId = 0x7fff;

/// An event channel port number (`evtchn_port_t`).
pub type EvtchnPort = u32;

/// A grant reference: an index into the granting domain's grant table
/// (`grant_ref_t`).
pub type GrantRef = u32;

/// A grant mapping handle returned by a map and passed to the unmap
/// (`grant_handle_t`).
pub type GrantHandle = u32;

/// Size of a page in Xen's interfaces on x86, in bytes. Frame numbers count
/// these.
pub const XEN_PAGE_SIZE: usize = 4096;

/// Defines a field-less enum of wire numbers with `number`, `from_number`
/// and `ALL`, so every operation table in this module decodes the same way.
macro_rules! numbered_enum {
    (
        $(#[$enum_meta:meta])*
        pub enum $name:ident: $repr:ident {
            $( $(#[$meta:meta])* $variant:ident = $value:expr, )+
        }
    ) => {
        $(#[$enum_meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$meta])* $variant = $value, )+
        }

        impl $name {
            /// Every value this crate defines, in the order listed.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The number on the wire.
            pub const fn number(self) -> $repr {
                self as $repr
            }

            /// Decodes a wire number; `None` for a number this crate does
            /// not define.
            pub const fn from_number(number: $repr) -> Option<$name> {
                $( if number == $value { return Some($name::$variant); } )+
                None
            }
        }
    };
}
pub(crate) use numbered_enum;

#[cfg(test)]
pub(crate) mod test_support {
    /// Checks a numbered enum: every value decodes to itself, numbers are
    /// distinct, and numbers not listed decode to `None`.
    macro_rules! check_numbered {
        ($name:ty, $repr:ty) => {{
            let all = <$name>::ALL;
            for (index, value) in all.iter().enumerate() {
                assert_eq!(<$name>::from_number(value.number()), Some(*value));
                for other in &all[index + 1..] {
                    assert_ne!(value.number(), other.number(), "{value:?} and {other:?} share a number");
                }
            }
            for probe in 0..=255 as $repr {
                if !all.iter().any(|v| v.number() == probe) {
                    assert_eq!(<$name>::from_number(probe), None);
                }
            }
        }};
    }
    pub(crate) use check_numbered;
}

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_domain_ids_are_above_ordinary_ones() {
        use super::*;
        for id in [DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW, DOMID_INVALID, DOMID_ANY, DOMID_IDLE] {
            assert!(id >= DOMID_FIRST_RESERVED);
            assert_eq!(id & DOMID_MASK, id);
        }
    }
}
