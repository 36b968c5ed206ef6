//! ATA disks on the two legacy IDE channels (ports 0x1F0/0x3F6 and
//! 0x170/0x376, passed through to dom0 by hv): probing, and polled reads,
//! writes and cache flushes, by bus-master DMA when the IDE controller and
//! the disk allow it, else by PIO.
//!
//! DMA: the PCI IDE function's bus-master engine (BAR4, opened to dom0 with
//! `Physdev::AllowIoPorts`) walks a PRD table in dom0's static memory that
//! names the machine addresses (`Physdev::Translate`) of the caller's
//! pieces, page by page: dom0's own RAM, or guest pages mapped into its
//! foreign window, so a guest's data moves in place. A transfer is started
//! and polled to its end (or stopped at the deadline) before the call
//! returns, so the device never touches a page after its caller let go of
//! it. Anything that goes wrong with DMA (no translation, an engine error,
//! a timeout, a device error) makes that request go again by PIO; a
//! transfer that failed with its command still open has that command
//! aborted (a channel reset) first, and if the device does not come back,
//! DMA stays off for the disk.
//!
//! Interrupts stay off (nIEN in the device control register). Every wait
//! polls a status register against a deadline on the TSC, so a dead or
//! hostile device costs dom0 at most a timeout, never a hang. What the
//! bytes mean (IDENTIFY data, task-file values, status bits, request
//! splitting, PRD entries) is decided in `dom0core::drivers::ata_protocol`,
//! host-tested.
//!
//! Packet devices (ATAPI CD-ROMs, like Bochs's boot CD on ata0-master) are
//! recognised by their signature and skipped.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering, fence};

use arrayvec::{ArrayString, ArrayVec};
pub use dom0core::drivers::ata_protocol::AtaError;
use dom0core::drivers::ata_protocol::bus_master::{
    self, DmaChannel, NoBusMaster, PRD_ENTRIES_MAX, PrdList, page_spans, run_transfer,
};
use dom0core::drivers::ata_protocol::{
    Condition, DeviceKind, Direction, MAX_SECTORS_PER_COMMAND, SECTOR_SIZE, Status, TaskFile, control, device,
    device_kind, dma_task_file, flush_command, parse_identify, register, split, task_file,
};
use pv_drivers::hypercall;

use crate::drivers::pci::{self, PciDevice};

/// Longest wait for BSY to clear after a software reset (ATA allows a
/// device 31 s to spin up; emulated and solid-state devices take
/// microseconds, and dom0 should not stall for half a minute at boot).
const RESET_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for one step of a command: the device to become ready, or
/// one sector's data.
const COMMAND_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for a cache flush, which may write a whole cache to media.
const FLUSH_TIMEOUT_MS: u64 = 30_000;
/// TSC ticks per millisecond assumed when hv cannot say: a 3 GHz guess,
/// on the high side so that timeouts only get longer.
const FALLBACK_TICKS_PER_MS: u64 = 3_000_000;

/// One IDE channel's ports.
#[derive(Clone, Copy, Debug)]
struct Channel {
    /// 0 for the primary channel, 1 for the secondary.
    number: u8,
    /// Command block: data port, then the registers of `ata_protocol::register`.
    base: u16,
    /// Control block: alternate status (read), device control (write).
    control: u16,
}

/// The legacy (ISA-compatible) channels: fixed ports, no PCI BARs needed.
const CHANNELS: [Channel; 2] =
    [Channel { number: 0, base: 0x1f0, control: 0x3f6 }, Channel { number: 1, base: 0x170, control: 0x376 }];

fn outb(port: u16, value: u8) {
    // SAFETY: only the IDE channels' ports in `CHANNELS` are used, which hv
    // passes through to dom0; no command written there starts DMA, so a
    // write affects only the disk controller.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reads have no memory effects.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads one sector's 256 words from a data port to `block`.
///
/// # Safety
/// `block` must be valid for 512 bytes of writes: memory dom0 owns, or a
/// guest page mapped into dom0 (written without any Rust reference to it).
unsafe fn read_block(port: u16, block: *mut u8) {
    // SAFETY: REP INSW stores RCX = 256 words, 512 bytes, from the data port
    // at RDI upwards (the direction flag is clear on entry to inline asm):
    // exactly the 512 bytes the caller vouches for. The port is a channel's
    // data port (see `outb`).
    unsafe {
        asm!(
            "rep insw",
            in("dx") port,
            inout("rdi") block => _,
            inout("rcx") SECTOR_SIZE / 2 => _,
            options(nostack, preserves_flags)
        )
    }
}

/// Writes one sector's 256 words from `block` to a data port.
///
/// # Safety
/// `block` must be valid for 512 bytes of reads.
unsafe fn write_block(port: u16, block: *const u8) {
    // SAFETY: REP OUTSW loads RCX = 256 words, 512 bytes, from RSI upwards
    // (the direction flag is clear on entry to inline asm): the caller's 512
    // bytes. It writes no memory. The port is a channel's data port.
    unsafe {
        asm!(
            "rep outsw",
            in("dx") port,
            inout("rsi") block => _,
            inout("rcx") SECTOR_SIZE / 2 => _,
            options(readonly, nostack, preserves_flags)
        )
    }
}

/// The two channels' PRD tables, one page (so neither crosses a 64 KiB
/// boundary). Only the engine and `BusMaster::transfer` touch it, through
/// raw pointers; one transfer runs at a time (dom0 is single-threaded and
/// a transfer ends before its call returns).
#[repr(C, align(4096))]
struct PrdTables([[u64; PRD_ENTRIES_MAX]; 2]);

const _: () = assert!(core::mem::size_of::<PrdTables>() <= abi::PAGE_SIZE as usize);

static mut PRD_TABLES: PrdTables = PrdTables([[0; PRD_ENTRIES_MAX]; 2]);
/// Set by the first `probe_all` that hands the tables to disks.
static PRD_TABLES_CLAIMED: AtomicBool = AtomicBool::new(false);

/// One channel's bus-master registers and PRD table.
#[derive(Clone, Copy, Debug)]
struct BusMaster {
    /// Command register; status at +2, PRD table address at +4.
    base: u16,
    /// Which of `PRD_TABLES` is the channel's (0 or 1).
    table: usize,
    /// Its machine address, for the engine.
    table_machine: u32,
}

// The bus-master registers are ports dom0 alone uses (hv opened them for
// it); unlike the ATA command blocks these accessors are not `nomem`: the
// engine reads and writes memory between them, so the compiler must keep
// every memory access on its side of each one.

fn bus_master_out8(port: u16, value: u8) {
    // SAFETY: a bus-master register hv opened for dom0. Writing the status
    // register only clears its bits; the command register's START bit is
    // written by `BusMaster::transfer` only, with a table it built.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

fn bus_master_in8(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading a bus-master register has no side effects.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nostack, preserves_flags)) }
    value
}

fn bus_master_out32(port: u16, value: u32) {
    // SAFETY: the PRD table address register; the engine reads the table
    // only once started.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) }
}

/// The IDE controller's bus-master engine, made reachable: its base port
/// and the PRD tables' machine address.
fn find_bus_master(devices: &[PciDevice]) -> Result<(u16, u32), NoBusMaster> {
    let controller = devices
        .iter()
        .find(|device| (device.class, device.subclass) == bus_master::IDE_CLASS)
        .ok_or(NoBusMaster::NoController)?;
    let base = bus_master::base_port(controller.prog_if, controller.bars[4])?;
    hypercall::physdev_allow_io_ports(base, bus_master::PORTS).map_err(|_| NoBusMaster::PortsRefused)?;
    if PRD_TABLES_CLAIMED.swap(true, Ordering::Acquire) {
        return Err(NoBusMaster::TableUnreachable);
    }
    let table = &raw mut PRD_TABLES as u64;
    let machine = hypercall::physdev_translate(table).map_err(|_| NoBusMaster::TableUnreachable)?;
    let machine = u32::try_from(machine).map_err(|_| NoBusMaster::TableUnreachable)?;
    pci::enable_io_and_bus_master(controller);
    // Whatever the firmware left running stops.
    for channel in 0..2 {
        let port = base + channel * bus_master::CHANNEL_PORTS;
        bus_master_out8(port + bus_master::COMMAND, 0);
        let status = bus_master_in8(port + bus_master::STATUS);
        bus_master_out8(
            port + bus_master::STATUS,
            status & bus_master::status::DRIVES_DMA_CAPABLE | bus_master::status::ERROR | bus_master::status::INTERRUPT,
        );
    }
    Ok((base, machine))
}

impl BusMaster {
    /// Channel `channel`'s engine of the one at `base`.
    fn new(base: u16, tables_machine: u32, channel: u8) -> BusMaster {
        let index = usize::from(channel & 1);
        let offset = index * PRD_ENTRIES_MAX * bus_master::PRD_ENTRY_BYTES;
        BusMaster {
            base: base + u16::from(channel & 1) * bus_master::CHANNEL_PORTS,
            table: index,
            table_machine: tables_machine + offset as u32,
        }
    }

    fn status(&self) -> u8 {
        bus_master_in8(self.base + bus_master::STATUS)
    }

    /// Clears the error and interrupt bits, keeping the firmware's bits.
    fn clear_status(&self) {
        let status = self.status() & bus_master::status::DRIVES_DMA_CAPABLE;
        bus_master_out8(
            self.base + bus_master::STATUS,
            status | bus_master::status::ERROR | bus_master::status::INTERRUPT,
        );
    }

    /// The PRD table for `pieces` (dom0 addresses), page by page; `None`
    /// when some page has no usable machine address.
    fn describe(pieces: impl Iterator<Item = (u64, usize)>, device_writes: bool) -> Option<PrdList> {
        let mut list = PrdList::new();
        for (address, length) in pieces {
            for (span, span_length) in page_spans(address, length) {
                let machine = hypercall::physdev_translate_for_dma(span, device_writes).ok()?;
                list.push(machine, span_length).ok()?;
            }
        }
        (!list.is_empty()).then_some(list)
    }
}

/// A started DMA transfer, as `run_transfer` drives it.
struct RunningTransfer {
    engine: BusMaster,
    channel: Channel,
    clock: Clock,
    deadline: Deadline,
}

impl DmaChannel for RunningTransfer {
    fn engine_status(&mut self) -> u8 {
        self.engine.status()
    }

    fn engine_command(&mut self, value: u8) {
        bus_master_out8(self.engine.base + bus_master::COMMAND, value);
    }

    fn clear_engine_status(&mut self) {
        self.engine.clear_status();
    }

    fn deadline_passed(&mut self) -> bool {
        self.deadline.passed()
    }

    fn reset_device(&mut self) -> Result<(), AtaError> {
        self.channel.reset(self.clock)
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Converts milliseconds into TSC deadlines.
#[derive(Clone, Copy, Debug)]
struct Clock {
    ticks_per_ms: u64,
}

impl Clock {
    /// The TSC rate hv measured at boot (kHz is ticks per millisecond).
    fn from_hv() -> Clock {
        let khz = hypercall::hv_info().map(|info| info.tsc_khz).unwrap_or(0);
        Clock { ticks_per_ms: if khz == 0 { FALLBACK_TICKS_PER_MS } else { khz } }
    }

    fn deadline(self, milliseconds: u64) -> Deadline {
        Deadline(rdtsc().saturating_add(milliseconds.saturating_mul(self.ticks_per_ms)))
    }
}

/// A TSC value after which a wait gives up.
#[derive(Clone, Copy, Debug)]
struct Deadline(u64);

impl Deadline {
    fn passed(self) -> bool {
        rdtsc() > self.0
    }
}

impl Channel {
    fn write(&self, register: u16, value: u8) {
        outb(self.base + register, value);
    }

    fn read(&self, register: u16) -> u8 {
        inb(self.base + register)
    }

    /// The status register (reading it also acknowledges an interrupt,
    /// which nIEN keeps from being raised anyway).
    fn status(&self) -> Status {
        Status(self.read(register::STATUS))
    }

    /// The 400 ns a device may take to put a valid status after a command
    /// or device selection: four reads of the alternate status register,
    /// which take at least 100 ns each on a real controller.
    fn delay_400ns(&self) {
        for _ in 0..4 {
            inb(self.control);
        }
    }

    /// Polls the status until `done` holds for it. All ones means nobody
    /// drives the bus: no device, without waiting for the deadline.
    fn wait(&self, deadline: Deadline, done: impl Fn(Status) -> bool) -> Result<Status, AtaError> {
        loop {
            let status = self.status();
            if status.floating() {
                return Err(AtaError::NoDevice);
            }
            if done(status) {
                return Ok(status);
            }
            if deadline.passed() {
                return Err(AtaError::Timeout);
            }
            core::hint::spin_loop();
        }
    }

    fn wait_not_busy(&self, deadline: Deadline) -> Result<Status, AtaError> {
        self.wait(deadline, |status| status.condition() != Condition::Busy)
    }

    /// The error register, for a failed command.
    fn error(&self) -> AtaError {
        AtaError::DeviceError(self.read(register::ERROR))
    }

    /// Software reset of both devices (SRST), leaving interrupts disabled;
    /// afterwards the master is selected and each device's signature is in
    /// its LBA mid/high registers.
    fn reset(&self, clock: Clock) -> Result<(), AtaError> {
        outb(self.control, control::SOFTWARE_RESET | control::INTERRUPTS_DISABLED);
        // SRST must stay set at least 5 us: 13 delays of 400 ns.
        for _ in 0..13 {
            self.delay_400ns();
        }
        outb(self.control, control::INTERRUPTS_DISABLED);
        // The host waits 2 ms before it may trust BSY (ATA8-APT, software reset protocol).
        let settle = clock.deadline(2);
        while !settle.passed() {
            core::hint::spin_loop();
        }
        self.wait_not_busy(clock.deadline(RESET_TIMEOUT_MS)).map(|_| ())
    }

    /// Selects a device (with the device register value `select`) and
    /// waits until it accepts a command. A channel left mid-transfer by an
    /// earlier failure (DRQ still set), or stuck busy, is reset once.
    fn select(&self, clock: Clock, select: u8) -> Result<(), AtaError> {
        if self.try_select(clock, select)? {
            return Ok(());
        }
        self.reset(clock)?;
        if self.try_select(clock, select)? { Ok(()) } else { Err(AtaError::Timeout) }
    }

    /// `select`'s one attempt: `Ok(false)` when the channel is stuck.
    fn try_select(&self, clock: Clock, select: u8) -> Result<bool, AtaError> {
        let idle = |status: Status| status.0 & Status::DRQ == 0;
        // The device register may only be written while BSY is clear.
        match self.wait_not_busy(clock.deadline(COMMAND_TIMEOUT_MS)) {
            Ok(status) if idle(status) => {}
            Ok(_) | Err(AtaError::Timeout) => return Ok(false),
            Err(error) => return Err(error),
        }
        self.write(register::DEVICE, select);
        self.delay_400ns();
        match self.wait(clock.deadline(COMMAND_TIMEOUT_MS), Status::ready) {
            Ok(status) => Ok(idle(status)),
            Err(AtaError::Timeout) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// An ATA disk found by [`probe_all`].
#[derive(Debug)]
pub struct AtaDisk {
    channel: Channel,
    slave: bool,
    sectors: u64,
    lba48: bool,
    model: ArrayString<40>,
    clock: Clock,
    /// The bus-master engine to use, or why there is none (PIO then).
    dma: Result<BusMaster, NoBusMaster>,
    /// The operator's choice (`diskmode`): use the engine when there is one.
    use_dma: bool,
}

/// How an [`AtaDisk`] moves data, for the probe's log line: `DMA` or
/// `PIO (<reason>)`.
#[derive(Clone, Copy, Debug)]
pub struct TransferMode(Option<NoBusMaster>);

impl fmt::Display for TransferMode {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            None => out.write_str("DMA"),
            Some(reason) => write!(out, "PIO ({reason})"),
        }
    }
}

/// Every ATA disk on the two legacy channels, master and slave; ATAPI
/// devices and anything that does not answer IDENTIFY DEVICE sensibly are
/// left out. Resets both channels. `devices` is the PCI scan, where the IDE
/// controller's bus-master engine is looked for.
pub fn probe_all(devices: &[PciDevice]) -> ArrayVec<AtaDisk, 4> {
    let clock = Clock::from_hv();
    let engine = find_bus_master(devices);
    let mut disks = ArrayVec::new();
    for channel in CHANNELS {
        // Nobody drives an empty channel's bus: no reset, no waiting.
        if channel.status().floating() {
            continue;
        }
        if channel.reset(clock).is_err() {
            continue;
        }
        for slave in [false, true] {
            if let Ok((mut disk, dma_capable)) = identify(channel, slave, clock) {
                disk.dma = match engine {
                    Ok(_) if !dma_capable => Err(NoBusMaster::DeviceCannot),
                    Ok((base, tables)) => Ok(BusMaster::new(base, tables, channel.number)),
                    Err(reason) => Err(reason),
                };
                disks.push(disk);
            }
        }
    }
    disks
}

/// Looks at one position on a freshly reset channel: a disk answers
/// IDENTIFY DEVICE with its 256 words; a packet device aborts it and shows
/// its signature; an empty position reads status 0 (or all ones). Also
/// says whether the disk can do DMA (IDENTIFY word 49 bit 8).
fn identify(channel: Channel, slave: bool, clock: Clock) -> Result<(AtaDisk, bool), AtaError> {
    channel.write(register::DEVICE, device::select(slave));
    channel.delay_400ns();
    if channel.status().0 == 0 {
        return Err(AtaError::NoDevice);
    }
    channel.wait_not_busy(clock.deadline(RESET_TIMEOUT_MS))?;
    let signature = || device_kind(channel.read(register::LBA_MID), channel.read(register::LBA_HIGH));
    if signature() != DeviceKind::Ata {
        return Err(AtaError::NoDevice);
    }
    channel.write(register::COMMAND, dom0core::drivers::ata_protocol::command::IDENTIFY_DEVICE);
    channel.delay_400ns();
    if channel.status().0 == 0 {
        return Err(AtaError::NoDevice);
    }
    let status = channel.wait_not_busy(clock.deadline(COMMAND_TIMEOUT_MS))?;
    match status.condition() {
        Condition::DataRequest => {}
        // A packet device aborts with its signature set; either way, not a disk.
        Condition::Failed => {
            return Err(if signature() == DeviceKind::Ata { channel.error() } else { AtaError::NoDevice });
        }
        Condition::Busy | Condition::Idle => return Err(AtaError::NoDevice),
    }
    let mut block = [0u8; SECTOR_SIZE];
    // SAFETY: `block` is 512 bytes of dom0's own stack.
    unsafe { read_block(channel.base + register::DATA, block.as_mut_ptr()) };
    channel.delay_400ns();
    let mut words = [0u16; 256];
    for (word, bytes) in words.iter_mut().zip(block.as_chunks::<2>().0) {
        *word = u16::from_le_bytes(*bytes);
    }
    let identity = parse_identify(&words).map_err(|_| AtaError::NoDevice)?;
    let disk = AtaDisk {
        channel,
        slave,
        sectors: identity.sectors,
        lba48: identity.lba48,
        model: identity.model,
        clock,
        dma: Err(NoBusMaster::NoController),
        use_dma: true,
    };
    Ok((disk, identity.dma))
}

impl AtaDisk {
    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The model string from IDENTIFY DEVICE.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// DMA or PIO (and why), for the log.
    pub fn transfer_mode(&self) -> TransferMode {
        match self.dma {
            Ok(_) if !self.use_dma => TransferMode(Some(NoBusMaster::TurnedOff)),
            _ => TransferMode(self.dma.err()),
        }
    }

    /// Chooses DMA (where the disk has a bus-master engine) or PIO. Refused
    /// with the reason when DMA is asked for and there is no engine.
    pub fn set_dma(&mut self, on: bool) -> Result<(), NoBusMaster> {
        if on && let Err(reason) = self.dma {
            return Err(reason);
        }
        self.use_dma = on;
        Ok(())
    }

    /// Where the disk sits: "ata0-master", "ata0-slave", "ata1-master", "ata1-slave".
    pub fn name(&self) -> &'static str {
        match (self.channel.number, self.slave) {
            (0, false) => "ata0-master",
            (0, true) => "ata0-slave",
            (_, false) => "ata1-master",
            (_, true) => "ata1-slave",
        }
    }

    /// Reads `buffer.len()` bytes, a multiple of 512, from sector `lba` on,
    /// in commands of up to 256 sectors. The whole range must lie on the disk.
    pub fn read(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), AtaError> {
        for chunk in split(lba, buffer.len(), self.sectors)? {
            self.read_sectors(chunk.lba, chunk.sectors, &mut buffer[chunk.bytes()])?;
        }
        Ok(())
    }

    /// Writes `data`, a multiple of 512 bytes, from sector `lba` on. The
    /// data may sit in the disk's cache until [`flush`](Self::flush).
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), AtaError> {
        for chunk in split(lba, data.len(), self.sectors)? {
            self.write_sectors(chunk.lba, chunk.sectors, &data[chunk.bytes()])?;
        }
        Ok(())
    }

    /// Makes everything written so far durable: FLUSH CACHE (EXT).
    pub fn flush(&mut self) -> Result<(), AtaError> {
        let channel = self.channel;
        channel.select(self.clock, device::select(self.slave))?;
        channel.write(register::COMMAND, flush_command(self.lba48));
        channel.delay_400ns();
        let status = channel.wait_not_busy(self.clock.deadline(FLUSH_TIMEOUT_MS))?;
        match status.condition() {
            Condition::Failed => Err(channel.error()),
            _ => Ok(()),
        }
    }

    /// One READ SECTORS (EXT) command: `sectors` (1..=256) sectors at `lba`
    /// into `buffer`, which must be exactly that long.
    pub fn read_sectors(&mut self, lba: u64, sectors: u16, buffer: &mut [u8]) -> Result<(), AtaError> {
        // SAFETY: `buffer` is valid for its whole length, which task_file
        // checks is exactly `sectors` sectors.
        unsafe { self.read_sectors_to(lba, sectors, buffer.as_mut_ptr(), buffer.len()) }
    }

    /// As [`read_sectors`](Self::read_sectors), into raw memory: a guest's
    /// page mapped into dom0, which must never be reached through a reference.
    ///
    /// # Safety
    /// `destination` must be valid for `length` bytes of writes.
    pub unsafe fn read_sectors_to(
        &mut self,
        lba: u64,
        sectors: u16,
        destination: *mut u8,
        length: usize,
    ) -> Result<(), AtaError> {
        if usize::from(sectors) * SECTOR_SIZE != length {
            return Err(AtaError::BadLength);
        }
        // SAFETY: the caller vouches for the one piece.
        unsafe { self.read_scattered(lba, &[(destination, length)]) }
    }

    /// Reads consecutive sectors from `lba` into several pieces of raw
    /// memory, in one command: each piece a multiple of 512 bytes, at most
    /// 256 sectors in all.
    ///
    /// # Safety
    /// Every piece must be valid for its length of writes.
    pub unsafe fn read_scattered(&mut self, lba: u64, pieces: &[(*mut u8, usize)]) -> Result<(), AtaError> {
        let length: usize = pieces.iter().map(|(_, length)| length).sum();
        if pieces.iter().any(|(_, length)| length % SECTOR_SIZE != 0)
            || length > usize::from(MAX_SECTORS_PER_COMMAND) * SECTOR_SIZE
        {
            return Err(AtaError::BadLength);
        }
        let task = self.task_file(Direction::Read, lba, (length / SECTOR_SIZE) as u16, length)?;
        let pieces_as_addresses = pieces.iter().map(|&(address, length)| (address as u64, length));
        // SAFETY: the caller vouches that every piece may be written; the
        // transfer is over when this returns.
        if unsafe { self.dma_transfer(Direction::Read, lba, length, pieces_as_addresses) }.is_ok() {
            return Ok(());
        }
        self.start(&task)?;
        let channel = self.channel;
        for &(destination, piece) in pieces {
            for offset in (0..piece).step_by(SECTOR_SIZE) {
                self.wait_for_data()?;
                // SAFETY: offset + 512 <= piece, inside the caller's range.
                unsafe { read_block(channel.base + register::DATA, destination.add(offset)) };
            }
        }
        self.finish()
    }

    /// One WRITE SECTORS (EXT) command: `sectors` (1..=256) sectors at
    /// `lba` from `data`, which must be exactly that long.
    pub fn write_sectors(&mut self, lba: u64, sectors: u16, data: &[u8]) -> Result<(), AtaError> {
        // SAFETY: `data` is valid for its whole length.
        unsafe { self.write_sectors_from(lba, sectors, data.as_ptr(), data.len()) }
    }

    /// As [`write_sectors`](Self::write_sectors), from raw memory.
    ///
    /// # Safety
    /// `source` must be valid for `length` bytes of reads.
    pub unsafe fn write_sectors_from(
        &mut self,
        lba: u64,
        sectors: u16,
        source: *const u8,
        length: usize,
    ) -> Result<(), AtaError> {
        if usize::from(sectors) * SECTOR_SIZE != length {
            return Err(AtaError::BadLength);
        }
        // SAFETY: the caller vouches for the one piece.
        unsafe { self.write_gathered(lba, &[(source, length)]) }
    }

    /// Writes consecutive sectors from `lba` out of several pieces of raw
    /// memory, in one command (pieces as for [`read_scattered`](Self::read_scattered)).
    ///
    /// # Safety
    /// Every piece must be valid for its length of reads.
    pub unsafe fn write_gathered(&mut self, lba: u64, pieces: &[(*const u8, usize)]) -> Result<(), AtaError> {
        let length: usize = pieces.iter().map(|(_, length)| length).sum();
        if pieces.iter().any(|(_, length)| length % SECTOR_SIZE != 0)
            || length > usize::from(MAX_SECTORS_PER_COMMAND) * SECTOR_SIZE
        {
            return Err(AtaError::BadLength);
        }
        let task = self.task_file(Direction::Write, lba, (length / SECTOR_SIZE) as u16, length)?;
        let pieces_as_addresses = pieces.iter().map(|&(address, length)| (address as u64, length));
        // SAFETY: the caller vouches that every piece may be read; the
        // device only reads memory in a disk write.
        if unsafe { self.dma_transfer(Direction::Write, lba, length, pieces_as_addresses) }.is_ok() {
            return Ok(());
        }
        self.start(&task)?;
        let channel = self.channel;
        for &(source, piece) in pieces {
            for offset in (0..piece).step_by(SECTOR_SIZE) {
                self.wait_for_data()?;
                // SAFETY: offset + 512 <= piece, inside the caller's range.
                unsafe { write_block(channel.base + register::DATA, source.add(offset)) };
            }
        }
        self.finish()
    }

    /// One command by bus-master DMA: `length` bytes (checked by the caller
    /// against the disk and the command limit) at `lba`, to or from
    /// `pieces` (dom0 addresses and lengths, in order). Any error means the
    /// caller repeats the request by PIO; the engine is stopped by then.
    ///
    /// # Safety
    /// Every piece must be valid for its length of writes (`Read`) or of
    /// reads (`Write`) until this returns.
    unsafe fn dma_transfer(
        &mut self,
        direction: Direction,
        lba: u64,
        length: usize,
        pieces: impl Iterator<Item = (u64, usize)>,
    ) -> Result<(), AtaError> {
        let Ok(engine) = self.dma else { return Err(AtaError::Dma) };
        if !self.use_dma {
            return Err(AtaError::Dma);
        }
        let device_writes = direction == Direction::Read;
        let list = BusMaster::describe(pieces, device_writes).ok_or(AtaError::Dma)?;
        if list.bytes() != length as u64 {
            return Err(AtaError::Dma);
        }
        let task = dma_task_file(direction, lba, (length / SECTOR_SIZE) as u16, self.slave, self.lba48)?;
        let table = (&raw mut PRD_TABLES).cast::<u64>().wrapping_add(engine.table * PRD_ENTRIES_MAX);
        for (index, entry) in list.encoded().enumerate() {
            // SAFETY: index < PRD_ENTRIES_MAX (the list's capacity), so the
            // entry lies in this channel's table inside PRD_TABLES, which
            // nothing else uses while no transfer runs (none does now).
            unsafe { table.add(index).write_volatile(entry) };
        }
        // The table's stores are done before the OUTs that hand it over
        // (x86 does not buffer port writes ahead of stores; this keeps the
        // compiler from moving them either).
        fence(Ordering::SeqCst);
        let direction_bit = if device_writes { bus_master::command::WRITE_TO_MEMORY } else { 0 };
        bus_master_out32(engine.base + bus_master::PRD_TABLE, engine.table_machine);
        bus_master_out8(engine.base + bus_master::COMMAND, direction_bit);
        engine.clear_status();
        self.start(&task)?;
        // The device waits for the engine: START lets it move the data.
        // Stopped in every case, the command aborted after a failure: no
        // memory access after this returns (see `run_transfer`).
        let deadline = self.clock.deadline(COMMAND_TIMEOUT_MS);
        let mut transfer = RunningTransfer { engine, channel: self.channel, clock: self.clock, deadline };
        let outcome = run_transfer(&mut transfer, direction_bit);
        // What the device wrote is read only after the engine stopped.
        fence(Ordering::SeqCst);
        if outcome == Err(AtaError::DmaStuck) {
            self.dma = Err(NoBusMaster::Stuck);
        }
        outcome?;
        let channel = self.channel;
        channel.delay_400ns();
        let ended = channel.wait_not_busy(self.clock.deadline(COMMAND_TIMEOUT_MS)).and_then(|status| {
            match status.condition() {
                Condition::Idle => Ok(()),
                Condition::Failed => Err(channel.error()),
                // Still asking for data: the engine stopped short of the transfer.
                _ => Err(AtaError::Dma),
            }
        });
        // Still busy, or still wanting data: the command is open. Abort it
        // before the caller lets the pages go (see `run_transfer`).
        if matches!(ended, Err(AtaError::Dma | AtaError::Timeout)) && transfer.reset_device().is_err() {
            self.dma = Err(NoBusMaster::Stuck);
            return Err(AtaError::DmaStuck);
        }
        ended
    }

    /// Checks a one-command request and makes its task file.
    fn task_file(&self, direction: Direction, lba: u64, sectors: u16, length: usize) -> Result<TaskFile, AtaError> {
        if sectors == 0 || sectors > MAX_SECTORS_PER_COMMAND || length != usize::from(sectors) * SECTOR_SIZE {
            return Err(AtaError::BadLength);
        }
        match lba.checked_add(u64::from(sectors)) {
            Some(end) if end <= self.sectors => task_file(direction, lba, sectors, self.slave, self.lba48),
            _ => Err(AtaError::OutOfRange),
        }
    }

    /// Selects the device and writes the task file; the command starts.
    fn start(&self, task: &TaskFile) -> Result<(), AtaError> {
        let channel = self.channel;
        channel.select(self.clock, task.device)?;
        // LBA48: the "previous" bytes first; each register keeps the last two writes.
        for registers in task.high_order.iter().chain(core::iter::once(&task.low_order)) {
            channel.write(register::SECTOR_COUNT, registers.sector_count);
            channel.write(register::LBA_LOW, registers.lba_low);
            channel.write(register::LBA_MID, registers.lba_mid);
            channel.write(register::LBA_HIGH, registers.lba_high);
        }
        channel.write(register::COMMAND, task.command);
        Ok(())
    }

    /// Waits until the device asks for (or offers) the next sector.
    fn wait_for_data(&self) -> Result<(), AtaError> {
        let channel = self.channel;
        channel.delay_400ns();
        let status = channel.wait_not_busy(self.clock.deadline(COMMAND_TIMEOUT_MS))?;
        match status.condition() {
            Condition::DataRequest => Ok(()),
            // Failed, or done early: the device will not move this sector.
            _ => Err(channel.error()),
        }
    }

    /// Waits for the command to end after the last sector and checks it went well.
    fn finish(&self) -> Result<(), AtaError> {
        let channel = self.channel;
        channel.delay_400ns();
        let status = channel.wait_not_busy(self.clock.deadline(COMMAND_TIMEOUT_MS))?;
        match status.condition() {
            Condition::Idle => Ok(()),
            // ERR/DF, or DRQ still set: it wants to move more than was asked.
            _ => Err(channel.error()),
        }
    }
}
