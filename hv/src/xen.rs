//! Xen's guest hypercalls (`abi::xen`), as far as hv implements them yet
//! (issue 10): `xen_version`, `console_io` and `sched_op`, on the calling
//! domain alone (its lock held). Every other number below
//! `XEN_HYPERCALL_LIMIT` answers `-ENOSYS`.
//!
//! As in Xen for HVM and PVH guests, an argument that points at memory is
//! a guest-virtual address of the calling vCPU, translated through its
//! page tables as they are at the call ([`AddressSpace`]); results and
//! errors are Xen's (`-errno`).

use abi::xen::console_io::ConsoleIoOp;
use abi::xen::sched::{SchedOp, SchedShutdown, ShutdownReason};
use abi::xen::version::{XenExtraversion, XenFeatureInfo, XenVersionOp, feature};
use abi::xen::{Errno, Hypercall};
use zerocopy::{FromBytes, IntoBytes};

use crate::domain::{Domain, Ended};
use crate::log_ring::Level;
use crate::platform::Platform;

/// What `XENVER_version` reports: the Xen interface Mica follows.
pub const XEN_VERSION: u32 = abi::xen::version::MICA_XEN_VERSION;
/// The version suffix: Mica names itself here (`xen_version` 4.17.0-mica).
pub const EXTRAVERSION: &str = ".0-mica";
/// The feature bits hv offers so far: memory is translated by EPT (the
/// guest sees its own frame numbers) and page tables are the guest's own.
/// The callback vector and pvclock join them when hv implements them.
pub const FEATURES: u32 = 1 << feature::WRITABLE_PAGE_TABLES | 1 << feature::AUTO_TRANSLATED_PHYSMAP;
/// Longest `console_io` write taken in one call; Xen takes any count, a
/// longer one is cut here (the result is 0 either way, as in Xen).
pub const CONSOLE_WRITE_MAX: usize = 4096;

/// Fills the hypercall page a guest asked for by writing `value` to MSR
/// `HYPERCALL_PAGE_MSR` (CPUID leaf 0x4000_0002 names it): `value` is the
/// page's guest-physical address, whose low 12 bits select the page (Mica
/// offers one, 0). Stub `n` at offset `32 * n` is `mov eax, n; vmcall;
/// ret`, the rest of the page `int3`, so a stray jump into it traps.
/// `Err` for another page index or an address outside the domain's RAM:
/// the write gets #GP, as on Xen.
pub fn fill_hypercall_page<P: Platform>(domain: &Domain<P>, value: u64) -> Result<(), Errno> {
    use abi::xen::hypercall::{HYPERCALL_PAGE_STUBS, HYPERCALL_STUB_SIZE, hypercall_page_stub};
    if !value.is_multiple_of(abi::PAGE_SIZE) {
        return Err(Errno::Einval);
    }
    let mut page = [0xccu8; abi::PAGE_SIZE as usize];
    for (number, stub) in page.chunks_exact_mut(HYPERCALL_STUB_SIZE).enumerate().take(HYPERCALL_PAGE_STUBS) {
        let code = hypercall_page_stub(number as u32);
        stub[..code.len()].copy_from_slice(&code);
    }
    domain.write_guest(value, &page).map_err(|_| Errno::Efault)
}

/// How the calling vCPU translated addresses at the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// Paging off: guest-virtual is guest-physical.
    Physical,
    /// 4-level paging (long mode) rooted at guest-physical `cr3`.
    LongMode { cr3: u64 },
    /// A mode hypercall arguments cannot be read in (32-bit paging, 5-level
    /// paging): every pointer argument is `-EFAULT`.
    Unsupported,
}

/// Page-table entry bits (SDM Vol. 3A 4.5).
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;
/// Bits 12..52 of an entry: the next table's or the page's frame.
const FRAME: u64 = 0x000f_ffff_ffff_f000;

impl AddressSpace {
    /// The guest-physical address of guest-virtual `address`, if the
    /// vCPU's page tables map it (writable, when `write`).
    pub fn translate<P: Platform>(&self, domain: &Domain<P>, address: u64, write: bool) -> Result<u64, Errno> {
        let cr3 = match *self {
            AddressSpace::Physical => return Ok(address),
            AddressSpace::LongMode { cr3 } => cr3,
            AddressSpace::Unsupported => return Err(Errno::Efault),
        };
        // Canonical: bits 63..47 all equal.
        if ((address as i64) << 16 >> 16) as u64 != address {
            return Err(Errno::Efault);
        }
        let mut table = cr3 & FRAME;
        for level in (0..4).rev() {
            let shift = 12 + 9 * level;
            let mut entry = [0u8; 8];
            let index = (address >> shift) & 0x1ff;
            domain.read_guest(table + index * 8, &mut entry).map_err(|_| Errno::Efault)?;
            let entry = u64::from_le_bytes(entry);
            if entry & PRESENT == 0 || (write && entry & WRITABLE == 0) {
                return Err(Errno::Efault);
            }
            // A 1 GiB page (level 2) or a 2 MiB page (level 1) ends the walk.
            if level == 0 || (entry & LARGE != 0 && level < 3) {
                let offset = address & ((1 << shift) - 1);
                return Ok((entry & FRAME & !((1 << shift) - 1)) | offset);
            }
            table = entry & FRAME;
        }
        Err(Errno::Efault)
    }

    /// Copies guest-virtual `address..+out.len()` into `out`.
    pub fn read<P: Platform>(&self, domain: &Domain<P>, address: u64, out: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < out.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::Efault)?;
            let piece = (out.len() - done).min((abi::PAGE_SIZE - at % abi::PAGE_SIZE) as usize);
            let physical = self.translate(domain, at, false)?;
            domain.read_guest(physical, &mut out[done..done + piece]).map_err(|_| Errno::Efault)?;
            done += piece;
        }
        Ok(())
    }

    /// Copies `bytes` to guest-virtual `address` (each page checked
    /// writable first; on error leading pages may have been written).
    pub fn write<P: Platform>(&self, domain: &Domain<P>, address: u64, bytes: &[u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < bytes.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::Efault)?;
            let piece = (bytes.len() - done).min((abi::PAGE_SIZE - at % abi::PAGE_SIZE) as usize);
            let physical = self.translate(domain, at, true)?;
            domain.write_guest(physical, &bytes[done..done + piece]).map_err(|_| Errno::Efault)?;
            done += piece;
        }
        Ok(())
    }

    /// Reads a structure from guest-virtual `address`.
    fn read_struct<T: FromBytes + IntoBytes, P: Platform>(&self, domain: &Domain<P>, address: u64) -> Result<T, Errno> {
        let mut value = T::new_zeroed();
        self.read(domain, address, value.as_mut_bytes())?;
        Ok(value)
    }
}

/// Runs Xen hypercall `number` for the calling vCPU of `domain`, whose
/// addresses `space` translates. `-ENOSYS` for what hv does not offer.
pub fn dispatch<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    number: u64,
    [a1, a2, a3, ..]: [u64; 5],
) -> Result<u64, Errno> {
    // Sub-operations are 32-bit (`cmd` is an `int` in Xen's prototypes).
    let operation = a1 as u32;
    match Hypercall::from_number(number) {
        Some(Hypercall::XenVersion) => xen_version(domain, space, operation, a2),
        Some(Hypercall::ConsoleIo) => console_io(domain, space, operation, a2, a3),
        Some(Hypercall::SchedOp) => sched_op(domain, space, operation, a2),
        _ => Err(Errno::Enosys),
    }
}

fn xen_version<P: Platform>(
    domain: &Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<u64, Errno> {
    match XenVersionOp::from_number(operation).ok_or(Errno::Enosys)? {
        XenVersionOp::Version => Ok(u64::from(XEN_VERSION)),
        XenVersionOp::Pagesize => Ok(abi::PAGE_SIZE),
        XenVersionOp::Extraversion => {
            space.write(domain, address, XenExtraversion::new(EXTRAVERSION).as_bytes()).map(|()| 0)
        }
        XenVersionOp::GetFeatures => {
            let mut info: XenFeatureInfo = space.read_struct(domain, address)?;
            // One word of features; Xen answers a larger index with -EINVAL.
            info.submap = match info.submap_idx {
                0 => FEATURES,
                _ => return Err(Errno::Einval),
            };
            space.write(domain, address, info.as_bytes()).map(|()| 0)
        }
        _ => Err(Errno::Enosys),
    }
}

fn console_io<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    count: u64,
    address: u64,
) -> Result<u64, Errno> {
    match ConsoleIoOp::from_number(operation).ok_or(Errno::Enosys)? {
        ConsoleIoOp::Write => {
            let mut buffer = [0u8; CONSOLE_WRITE_MAX];
            let text = &mut buffer[..count.min(CONSOLE_WRITE_MAX as u64) as usize];
            space.read(domain, address, text)?;
            // As Xen does, pieces are gathered into whole lines: a guest
            // printing a line in parts logs it once.
            for &byte in text.iter() {
                let line = &mut domain.console_line;
                line.push(byte);
                if byte == b'\n' || line.is_full() {
                    P::domain_text(domain.id, line, &mut domain.log_budget);
                    line.clear();
                }
            }
            Ok(0)
        }
        // hv's console input belongs to dom0's UART driver, not to a call.
        ConsoleIoOp::Read => Err(Errno::Eperm),
    }
}

fn sched_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<u64, Errno> {
    let vcpu = P::current_vcpu();
    match SchedOp::from_number(operation).ok_or(Errno::Enosys)? {
        SchedOp::Yield => {
            domain.vcpus[vcpu].reschedule = true;
            Ok(0)
        }
        SchedOp::Block => {
            crate::event_ops::block(domain, vcpu);
            Ok(0)
        }
        SchedOp::Shutdown => {
            let request: SchedShutdown = space.read_struct(domain, address)?;
            let reason = match ShutdownReason::from_number(request.reason).ok_or(Errno::Einval)? {
                ShutdownReason::Poweroff => abi::hypercall::ShutdownReason::PowerOff,
                ShutdownReason::Reboot => abi::hypercall::ShutdownReason::Reboot,
                ShutdownReason::Crash => abi::hypercall::ShutdownReason::Crash,
                // A suspend needs a resume, a watchdog and a soft reset a
                // toolstack that restarts: Mica has none of these.
                _ => return Err(Errno::Einval),
            };
            if domain.privileged {
                // dom0 shutting down is the machine shutting down.
                return Err(Errno::Eperm);
            }
            P::log(Level::Info, format_args!("d{} shut down ({reason:?})", domain.id));
            domain.ended = Some(Ended::Shutdown(reason));
            domain.stop_all();
            Ok(0)
        }
        _ => Err(Errno::Enosys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};
    use abi::xen::hypercall::Hypercall as H;

    /// Guest-physical layout: four page-table pages, then data.
    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    /// Tables of the large-page mappings.
    const PDPT_LOW: u64 = 0x8000;
    const PD_LOW: u64 = 0x9000;
    const PDPT_HIGH: u64 = 0xa000;
    /// Where the tables map `DATA` (and the page after it, read-only).
    const VIRTUAL: u64 = 0xffff_8000_0020_0000;

    /// A domain with 16 pages of RAM from 0 and long-mode page tables that
    /// map `VIRTUAL` to `DATA` (writable) and `VIRTUAL + 4 KiB` to
    /// `DATA + 4 KiB` (read-only), 2 MiB pages at 1 GiB and a 1 GiB page
    /// at 512 GiB onto low memory.
    fn domain(privileged: bool) -> (Domain<Fake>, AddressSpace) {
        let mut domain = Domain::<Fake>::new(if privileged { 0 } else { 1 }, privileged, 64).unwrap();
        domain.populate(0, 16).unwrap();
        let entry = |domain: &Domain<Fake>, table: u64, index: u64, value: u64| {
            domain.write_guest(table + index * 8, &value.to_le_bytes()).unwrap();
        };
        let table = PRESENT | WRITABLE;
        entry(&domain, PML4, (VIRTUAL >> 39) & 0x1ff, PDPT | table);
        entry(&domain, PDPT, (VIRTUAL >> 30) & 0x1ff, PD | table);
        entry(&domain, PD, (VIRTUAL >> 21) & 0x1ff, PT | table);
        entry(&domain, PT, (VIRTUAL >> 12) & 0x1ff, DATA | table);
        entry(&domain, PT, ((VIRTUAL >> 12) & 0x1ff) + 1, (DATA + 0x1000) | PRESENT);
        // 1 GiB: a 2 MiB page onto 0; 512 GiB: a 1 GiB page onto 0.
        entry(&domain, PML4, 0, PDPT_LOW | table);
        entry(&domain, PDPT_LOW, 1, PD_LOW | table);
        entry(&domain, PD_LOW, 0, LARGE | table);
        entry(&domain, PML4, 1, PDPT_HIGH | table);
        entry(&domain, PDPT_HIGH, 0, LARGE | table);
        (domain, AddressSpace::LongMode { cr3: PML4 })
    }

    fn call(domain: &mut Domain<Fake>, space: &AddressSpace, number: H, arguments: [u64; 3]) -> Result<u64, Errno> {
        dispatch(domain, space, number.number(), [arguments[0], arguments[1], arguments[2], 0, 0])
    }

    #[test]
    fn guest_virtual_addresses_go_through_the_vcpus_page_tables() {
        let (domain, space) = domain(false);
        let translate = |address, write| space.translate(&domain, address, write);
        assert_eq!(translate(VIRTUAL + 0x123, true), Ok(DATA + 0x123));
        assert_eq!(translate(VIRTUAL + 0x1008, false), Ok(DATA + 0x1008));
        assert_eq!(translate(VIRTUAL + 0x1008, true), Err(Errno::Efault), "a read-only page is not written");
        assert_eq!(translate(VIRTUAL + 0x2000, false), Err(Errno::Efault), "not present");
        assert_eq!(translate(0x4000_0000 + 0x1_2345, false), Ok(0x1_2345), "2 MiB page");
        assert_eq!(translate((512 << 30) + 0x3456, true), Ok(0x3456), "1 GiB page");
        assert_eq!(translate(0x0000_8000_0000_0000, false), Err(Errno::Efault), "not canonical");
        assert_eq!(AddressSpace::Physical.translate(&domain, 0x1234, true), Ok(0x1234));
        assert_eq!(AddressSpace::Unsupported.translate(&domain, 0x1234, false), Err(Errno::Efault));
        // A copy across the two pages takes each from its own frame, and
        // a write stops at the read-only one.
        domain.write_guest(DATA + 0xffc, b"abcd").unwrap();
        domain.write_guest(DATA + 0x1000, b"efgh").unwrap();
        let mut bytes = [0; 8];
        space.read(&domain, VIRTUAL + 0xffc, &mut bytes).unwrap();
        assert_eq!(&bytes, b"abcdefgh");
        assert_eq!(space.write(&domain, VIRTUAL + 0xffc, b"12345678"), Err(Errno::Efault));
    }

    #[test]
    fn xen_version_reports_xen_4_17_mica_and_the_features_offered() {
        let (mut domain, space) = domain(false);
        let version = |domain: &mut Domain<Fake>, op: XenVersionOp, address| {
            call(domain, &space, H::XenVersion, [u64::from(op.number()), address, 0])
        };
        assert_eq!(version(&mut domain, XenVersionOp::Version, 0), Ok(4 << 16 | 17));
        assert_eq!(version(&mut domain, XenVersionOp::Pagesize, 0), Ok(4096));
        assert_eq!(version(&mut domain, XenVersionOp::Extraversion, VIRTUAL), Ok(0));
        let mut text = [0; 16];
        domain.read_guest(DATA, &mut text).unwrap();
        assert_eq!(&text, b".0-mica\0\0\0\0\0\0\0\0\0");
        domain.write_guest(DATA, &[0; 8]).unwrap();
        assert_eq!(version(&mut domain, XenVersionOp::GetFeatures, VIRTUAL), Ok(0));
        let mut info = [0; 8];
        domain.read_guest(DATA, &mut info).unwrap();
        assert_eq!(u32::from_le_bytes(info[4..].try_into().unwrap()), FEATURES);
        assert_ne!(FEATURES & 1 << feature::AUTO_TRANSLATED_PHYSMAP, 0);
        domain.write_guest(DATA, &1u32.to_le_bytes()).unwrap();
        assert_eq!(version(&mut domain, XenVersionOp::GetFeatures, VIRTUAL), Err(Errno::Einval), "one word only");
        assert_eq!(version(&mut domain, XenVersionOp::Extraversion, VIRTUAL + 0x1000), Err(Errno::Efault));
        assert_eq!(version(&mut domain, XenVersionOp::CompileInfo, VIRTUAL), Err(Errno::Enosys));
        assert_eq!(call(&mut domain, &space, H::XenVersion, [99, 0, 0]), Err(Errno::Enosys));
    }

    #[test]
    fn console_io_writes_lines_to_hvs_log_and_reads_nothing() {
        let (mut domain, space) = domain(false);
        domain.write_guest(DATA, b"hello from a Xen guest\n").unwrap();
        let write = u64::from(ConsoleIoOp::Write.number());
        // In three pieces: logged once, as one line.
        for (offset, length) in [(0, 5), (5, 10), (15, 8)] {
            assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, length, VIRTUAL + offset]), Ok(0));
        }
        assert_eq!(machine::with(|state| state.log.clone()), ["(d1) hello from a Xen guest\n"]);
        // A line longer than the buffer is logged in full pieces.
        let long = [b'x'; crate::domain::CONSOLE_LINE_BYTES + 1];
        domain.write_guest(DATA, &long).unwrap();
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, long.len() as u64, VIRTUAL]), Ok(0));
        assert_eq!(machine::with(|state| state.log.len()), 2);
        assert_eq!(domain.console_line.as_slice(), b"x", "the rest waits for its newline");
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, 4, VIRTUAL + 0x2000]), Err(Errno::Efault));
        let read = u64::from(ConsoleIoOp::Read.number());
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [read, 4, VIRTUAL]), Err(Errno::Eperm));
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [2, 4, VIRTUAL]), Err(Errno::Enosys));
        // Counts past the limit are cut, not refused; the upper half of
        // the sub-operation word is ignored, as in Xen.
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write | 1 << 32, 1 << 40, 0x4000_0000]), Ok(0));
    }

    #[test]
    fn sched_op_shuts_a_guest_down_for_the_reasons_mica_has() {
        let shutdown = u64::from(SchedOp::Shutdown.number());
        for (reason, expected) in [
            (ShutdownReason::Poweroff, Ok(abi::hypercall::ShutdownReason::PowerOff)),
            (ShutdownReason::Reboot, Ok(abi::hypercall::ShutdownReason::Reboot)),
            (ShutdownReason::Crash, Ok(abi::hypercall::ShutdownReason::Crash)),
            (ShutdownReason::Suspend, Err(Errno::Einval)),
            (ShutdownReason::Watchdog, Err(Errno::Einval)),
        ] {
            let (mut domain, space) = domain(false);
            domain.write_guest(DATA, &reason.number().to_le_bytes()).unwrap();
            let result = call(&mut domain, &space, H::SchedOp, [shutdown, VIRTUAL, 0]);
            match expected {
                Ok(ended) => {
                    assert_eq!(result, Ok(0));
                    assert_eq!(domain.ended, Some(Ended::Shutdown(ended)));
                }
                Err(errno) => {
                    assert_eq!(result, Err(errno));
                    assert_eq!(domain.ended, None);
                }
            }
        }
        let (mut domain, space) = domain(false);
        domain.write_guest(DATA, &7u32.to_le_bytes()).unwrap();
        assert_eq!(call(&mut domain, &space, H::SchedOp, [shutdown, VIRTUAL, 0]), Err(Errno::Einval));
        assert_eq!(call(&mut domain, &space, H::SchedOp, [shutdown, VIRTUAL + 0x2000, 0]), Err(Errno::Efault));
        let (mut dom0, space) = self::domain(true);
        assert_eq!(call(&mut dom0, &space, H::SchedOp, [shutdown, VIRTUAL, 0]), Err(Errno::Eperm));
        assert_eq!(dom0.ended, None);
        assert_eq!(call(&mut domain, &space, H::SchedOp, [u64::from(SchedOp::Yield.number()), 0, 0]), Ok(0));
        assert!(domain.vcpus[0].reschedule);
        let poll = u64::from(SchedOp::Poll.number());
        assert_eq!(call(&mut domain, &space, H::SchedOp, [poll, VIRTUAL, 0]), Err(Errno::Enosys), "not yet");
    }

    #[test]
    fn the_hypercall_page_holds_a_vmcall_stub_per_number() {
        let (domain, _) = domain(false);
        assert_eq!(fill_hypercall_page(&domain, DATA), Ok(()));
        let mut page = [0; 4096];
        domain.read_guest(DATA, &mut page).unwrap();
        // Stub 17 (xen_version): mov eax, 17; vmcall; ret; then int3.
        assert_eq!(&page[17 * 32..17 * 32 + 10], [0xb8, 17, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3, 0xcc]);
        assert_eq!(&page[127 * 32..127 * 32 + 5], [0xb8, 127, 0, 0, 0]);
        assert_eq!(fill_hypercall_page(&domain, DATA + 1), Err(Errno::Einval), "page 1: Mica has one");
        assert_eq!(fill_hypercall_page(&domain, 1 << 40), Err(Errno::Efault), "not its RAM");
    }

    #[test]
    fn calls_hv_does_not_offer_yet_answer_enosys() {
        let (mut domain, space) = domain(false);
        for number in [H::MemoryOp, H::EventChannelOp, H::GrantTableOp, H::VcpuOp, H::HvmOp, H::SetTrapTable] {
            assert_eq!(call(&mut domain, &space, number, [0, VIRTUAL, 0]), Err(Errno::Enosys), "{number:?}");
        }
        assert_eq!(dispatch(&mut domain, &space, 63, [0; 5]), Err(Errno::Enosys));
    }
}
