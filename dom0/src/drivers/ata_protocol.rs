//! The ATA protocol without the hardware: IDENTIFY parsing, task-file
//! register values for a transfer, status decoding and request splitting,
//! the IDE bus-master DMA engine's registers and PRD tables, plus the PCI
//! configuration-header decoding the bus scan uses.
//!
//! The port-I/O drivers (`ata.rs`, `pci.rs` in the binary) only move bytes;
//! every decision about what the bytes mean is made here, host-tested, and
//! nothing a device reports is trusted: sizes are clamped to what the
//! addressing mode can reach, and every request is range-checked.
//!
//! References: ATA/ATAPI-6 (T13/1410D, the first with 48-bit addressing)
//! and ATA8-ACS (T13/1699-D) for the commands, the IDENTIFY DEVICE data and
//! the status and error fields; ATA8-APT (T13/1697-D) for the legacy
//! (ISA-compatible) ports, the reset protocol and the device signatures.
//!
//! A transfer (PIO data-in for reads, data-out for writes):
//!
//! ```text
//!  select device (device register), 400 ns, wait !BSY && DRDY
//!  LBA48: write "previous" bytes (count 15:8, LBA 31:24, 39:32, 47:40)
//!  write count 7:0, LBA 7:0, 15:8, 23:16; write the command
//!  for each sector: 400 ns, wait !BSY; ERR or DF -> fail; DRQ -> move 256 words
//!  after the last sector: wait !BSY; ERR or DF -> fail
//! ```
//!
//! A bus-master DMA transfer (READ/WRITE DMA (EXT); SFF-8038i, the PIIX
//! datasheet's bus-master IDE registers):
//!
//! ```text
//!  PRD table (machine addresses) -> PRD table register; direction -> command
//!  clear ERROR and INTERRUPT in the bus-master status (write ones)
//!  select device, write the task file and the DMA command; set START
//!  poll: ACTIVE clears (the table is done) or ERROR sets; deadline
//!  clear START; wait !BSY; ERR, DF or DRQ -> fail
//! ```

use core::fmt;

use arrayvec::ArrayString;

/// Bytes in one logical sector (every device this driver accepts).
pub const SECTOR_SIZE: usize = 512;
/// Sectors one READ/WRITE SECTORS command moves at most: the 8-bit LBA28
/// count register's limit (0 there means 256); LBA48 commands use the same
/// limit so both paths split requests alike.
pub const MAX_SECTORS_PER_COMMAND: u16 = 256;
/// Sectors reachable with 28-bit addressing.
pub const LBA28_LIMIT: u64 = 1 << 28;
/// Sectors reachable with 48-bit addressing.
pub const LBA48_LIMIT: u64 = 1 << 48;

/// Registers of a channel's command block, as offsets from its base port
/// (0x1F0 primary, 0x170 secondary; ATA8-APT's legacy port map).
pub mod register {
    /// Data (16-bit): PIO transfers.
    pub const DATA: u16 = 0;
    /// Error (read) / Features (write).
    pub const ERROR: u16 = 1;
    /// Features (write): same port as [`ERROR`].
    pub const FEATURES: u16 = 1;
    /// Sector count.
    pub const SECTOR_COUNT: u16 = 2;
    /// LBA bits 7:0 (LBA48: 31:24 written first).
    pub const LBA_LOW: u16 = 3;
    /// LBA bits 15:8 (LBA48: 39:32 first); the signature's low byte.
    pub const LBA_MID: u16 = 4;
    /// LBA bits 23:16 (LBA48: 47:40 first); the signature's high byte.
    pub const LBA_HIGH: u16 = 5;
    /// Device: LBA mode, device select, LBA28 bits 27:24.
    pub const DEVICE: u16 = 6;
    /// Status (read; clears a pending interrupt) / Command (write).
    pub const STATUS: u16 = 7;
    /// Command (write): same port as [`STATUS`].
    pub const COMMAND: u16 = 7;
}

/// The control block's one port (0x3F6 primary, 0x376 secondary): reading
/// it gives the alternate status (no side effects), writing it sets the
/// device control register.
pub mod control {
    /// nIEN: the devices do not assert INTRQ. The driver polls, always.
    pub const INTERRUPTS_DISABLED: u8 = 1 << 1;
    /// SRST: software reset of both devices on the channel while set.
    pub const SOFTWARE_RESET: u8 = 1 << 2;
}

/// Commands (ATA8-ACS, "Command descriptions").
pub mod command {
    /// READ SECTORS (28-bit, PIO data-in).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT (48-bit, PIO data-in).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS (28-bit, PIO data-out).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT (48-bit, PIO data-out).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// READ DMA (28-bit).
    pub const READ_DMA: u8 = 0xc8;
    /// READ DMA EXT (48-bit).
    pub const READ_DMA_EXT: u8 = 0x25;
    /// WRITE DMA (28-bit).
    pub const WRITE_DMA: u8 = 0xca;
    /// WRITE DMA EXT (48-bit).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// FLUSH CACHE (28-bit).
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT (48-bit).
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE: 256 words of PIO data-in; packet devices abort it.
    pub const IDENTIFY_DEVICE: u8 = 0xec;
}

/// Device register bits (ATA8-ACS, the "Device" field).
pub mod device {
    /// Bits 7 and 5: obsolete, set by convention (older devices required it).
    pub const OBSOLETE_ONES: u8 = 0xa0;
    /// Bit 6: the address is an LBA (always, with this driver).
    pub const LBA: u8 = 1 << 6;
    /// Bit 4: DEV, selects device 1 (the slave).
    pub const SLAVE: u8 = 1 << 4;

    /// The device register value that only selects `slave` or the master.
    pub const fn select(slave: bool) -> u8 {
        OBSOLETE_ONES | if slave { SLAVE } else { 0 }
    }
}

/// Why a disk request failed. Shared by the protocol rules here and the
/// driver, which re-exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaError {
    /// The device stayed busy (or never asked for data) past the deadline.
    Timeout,
    /// The device reported ERR or DF; the value is its error register
    /// (0 when only DF was set, or it failed without saying why).
    DeviceError(u8),
    /// The request reaches past the end of the disk, or past what its
    /// addressing mode can reach.
    OutOfRange,
    /// The buffer is not a whole number of sectors, or a sector count is
    /// outside 1..=[`MAX_SECTORS_PER_COMMAND`].
    BadLength,
    /// Nothing answers at this position on the channel.
    NoDevice,
    /// The bus-master engine reported an error, or stopped before the
    /// device was done (the driver then repeats the request with PIO).
    Dma,
    /// A DMA transfer failed and the device did not come back from the
    /// reset that aborts its command: DMA on this disk must stop for good.
    DmaStuck,
}

impl fmt::Display for AtaError {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            AtaError::Timeout => out.write_str("timed out"),
            AtaError::DeviceError(error) => write!(out, "device error {error:#04x} ({})", ErrorBits(error)),
            AtaError::OutOfRange => out.write_str("sector out of range"),
            AtaError::BadLength => out.write_str("length is not a whole number of sectors"),
            AtaError::NoDevice => out.write_str("no device"),
            AtaError::Dma => out.write_str("bus-master DMA failed"),
            AtaError::DmaStuck => out.write_str("bus-master DMA failed and the device did not reset"),
        }
    }
}

// ---------------------------------------------------------------------------
// Status and error registers

/// The status (or alternate status) register (ATA8-ACS "Status"). While BSY is
/// set the other bits are not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// Bit 0, ERR: the last command failed; the error register says why.
    pub const ERR: u8 = 1 << 0;
    /// Bit 3, DRQ: the device is ready to move a block of data.
    pub const DRQ: u8 = 1 << 3;
    /// Bit 5, DF: device fault.
    pub const DF: u8 = 1 << 5;
    /// Bit 6, DRDY: the device accepts commands.
    pub const DRDY: u8 = 1 << 6;
    /// Bit 7, BSY: the device owns the command block registers.
    pub const BSY: u8 = 1 << 7;

    /// What the status says the host should do next.
    pub const fn condition(self) -> Condition {
        if self.0 & Status::BSY != 0 {
            Condition::Busy
        } else if self.0 & (Status::ERR | Status::DF) != 0 {
            Condition::Failed
        } else if self.0 & Status::DRQ != 0 {
            Condition::DataRequest
        } else {
            Condition::Idle
        }
    }

    /// All ones: nobody drives the bus (no device, or no channel). A real
    /// device never sets BSY together with every other bit.
    pub const fn floating(self) -> bool {
        self.0 == 0xff
    }

    /// DRDY without BSY: ready for a command.
    pub const fn ready(self) -> bool {
        self.0 & (Status::BSY | Status::DRDY) == Status::DRDY
    }
}

/// The host's next step, decoded from a status value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// BSY: keep polling (up to the deadline).
    Busy,
    /// ERR or DF: the command failed; read the error register.
    Failed,
    /// DRQ: a block of data is to be moved.
    DataRequest,
    /// None of those: the command is done (or none is running).
    Idle,
}

impl fmt::Display for Status {
    /// The set bits by mnemonic, most significant first: "BSY", "DRDY DRQ".
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        const NAMES: [&str; 8] = ["ERR", "IDX", "CORR", "DRQ", "DSC", "DF", "DRDY", "BSY"];
        write_bit_names(out, self.0, &NAMES)
    }
}

/// The error register's bits by mnemonic (ATA8-ACS "Error"; some are obsolete
/// but still set by older devices and emulators).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorBits(pub u8);

impl ErrorBits {
    /// Bit 2, ABRT: the command was aborted (unsupported, or bad parameters).
    pub const ABRT: u8 = 1 << 2;
    /// Bit 4, IDNF: the address was not found.
    pub const IDNF: u8 = 1 << 4;
    /// Bit 6, UNC: uncorrectable data error.
    pub const UNC: u8 = 1 << 6;
}

impl fmt::Display for ErrorBits {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        const NAMES: [&str; 8] = ["AMNF", "TK0NF", "ABRT", "MCR", "IDNF", "MC", "UNC", "ICRC"];
        write_bit_names(out, self.0, &NAMES)
    }
}

fn write_bit_names(out: &mut fmt::Formatter, value: u8, names: &[&str; 8]) -> fmt::Result {
    if value == 0 {
        return out.write_str("none");
    }
    let mut first = true;
    for bit in (0..8).rev() {
        if value & (1 << bit) != 0 {
            if !first {
                out.write_str(" ")?;
            }
            out.write_str(names[bit])?;
            first = false;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Device signatures and IDENTIFY

/// What the LBA mid/high registers say a device is, after a reset or an
/// aborted IDENTIFY DEVICE (ATA8-ACS "Signature and persistence").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// 0x00/0x00 (parallel) or 0x3C/0xC3 (serial): a disk.
    Ata,
    /// 0x14/0xEB (parallel) or 0x69/0x96 (serial): a packet device (CD-ROM);
    /// it aborts IDENTIFY DEVICE and is skipped.
    Atapi,
    /// Anything else: not a device this driver talks to.
    Unknown,
}

/// Classifies a device by its signature (LBA mid, LBA high).
pub const fn device_kind(lba_mid: u8, lba_high: u8) -> DeviceKind {
    match (lba_mid, lba_high) {
        (0x00, 0x00) | (0x3c, 0xc3) => DeviceKind::Ata,
        (0x14, 0xeb) | (0x69, 0x96) => DeviceKind::Atapi,
        _ => DeviceKind::Unknown,
    }
}

/// What the driver keeps from IDENTIFY DEVICE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Addressable sectors (512 bytes each): LBA 0 to `sectors - 1`.
    pub sectors: u64,
    /// The device supports the 48-bit commands (word 83 bit 10).
    pub lba48: bool,
    /// The device supports DMA (word 49 bit 8).
    pub dma: bool,
    /// The model number, byte order fixed, spaces trimmed, non-printable
    /// characters shown as `?`.
    pub model: ArrayString<40>,
}

/// Why an IDENTIFY DEVICE block is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyError {
    /// Word 0 bit 15 is set: not an ATA device (all-ones bus data lands here too).
    NotAta,
    /// Word 49 bit 9 is clear: the device only knows CHS addressing.
    NoLba,
    /// Neither the 28-bit nor the 48-bit sector count is non-zero.
    NoCapacity,
}

/// IDENTIFY DEVICE word numbers (ATA8-ACS, the IDENTIFY DEVICE data table).
mod word {
    pub const GENERAL_CONFIGURATION: usize = 0;
    pub const MODEL: core::ops::Range<usize> = 27..47;
    pub const CAPABILITIES: usize = 49;
    pub const LBA28_SECTORS: usize = 60;
    pub const COMMAND_SETS_SUPPORTED: usize = 83;
    pub const LBA48_SECTORS: usize = 100;
}

/// Parses an IDENTIFY DEVICE block: 256 little-endian words as read from
/// the data port.
///
/// The sector count is words 100-103 when the 48-bit feature set is
/// supported and that count is non-zero, else words 60-61; each is clamped
/// to what its addressing can reach (2^48, 2^28), whatever the device says.
/// Word 83 is believed only when its bits 15:14 are 01 (the "word is valid"
/// marker; an all-ones or all-zeros word says nothing).
pub fn parse_identify(words: &[u16; 256]) -> Result<Identity, IdentifyError> {
    if words[word::GENERAL_CONFIGURATION] & (1 << 15) != 0 {
        return Err(IdentifyError::NotAta);
    }
    if words[word::CAPABILITIES] & (1 << 9) == 0 {
        return Err(IdentifyError::NoLba);
    }
    let command_sets = words[word::COMMAND_SETS_SUPPORTED];
    let lba48 = command_sets & 0xc000 == 0x4000 && command_sets & (1 << 10) != 0;
    let lba28_sectors = u64::from(words[word::LBA28_SECTORS]) | u64::from(words[word::LBA28_SECTORS + 1]) << 16;
    let lba48_sectors =
        (0..4).fold(0u64, |count, index| count | u64::from(words[word::LBA48_SECTORS + index]) << (16 * index));
    let sectors =
        if lba48 && lba48_sectors != 0 { lba48_sectors.min(LBA48_LIMIT) } else { lba28_sectors.min(LBA28_LIMIT) };
    if sectors == 0 {
        return Err(IdentifyError::NoCapacity);
    }
    let dma = words[word::CAPABILITIES] & (1 << 8) != 0;
    Ok(Identity { sectors, lba48, dma, model: ata_string(&words[word::MODEL]) })
}

/// An IDENTIFY string field: each word holds two characters, the first in
/// its high byte. Leading and trailing spaces (and NUL padding) are
/// dropped; anything else outside printable ASCII becomes `?`.
pub fn ata_string(words: &[u16]) -> ArrayString<40> {
    let mut bytes = [0u8; 80];
    let length = (words.len() * 2).min(bytes.len());
    for (index, word) in words.iter().take(length / 2).enumerate() {
        bytes[index * 2..index * 2 + 2].copy_from_slice(&word.to_be_bytes());
    }
    let padding = |byte: &u8| *byte == b' ' || *byte == 0;
    let start = bytes[..length].iter().position(|byte| !padding(byte)).unwrap_or(length);
    let end = bytes[..length].iter().rposition(|byte| !padding(byte)).map_or(start, |last| last + 1);
    let mut text = ArrayString::new();
    for &byte in &bytes[start..end] {
        let printable = if (0x20..0x7f).contains(&byte) { byte as char } else { '?' };
        if text.try_push(printable).is_err() {
            break;
        }
    }
    text
}

// ---------------------------------------------------------------------------
// Task-file values for a transfer

/// Which way the data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device to host: READ SECTORS (EXT).
    Read,
    /// Host to device: WRITE SECTORS (EXT).
    Write,
}

/// One set of the four address/count registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddressRegisters {
    pub sector_count: u8,
    pub lba_low: u8,
    pub lba_mid: u8,
    pub lba_high: u8,
}

/// Everything to write to the command block for one transfer, in order:
/// `device`, then `high_order` (LBA48 only), then `low_order`, then `command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFile {
    /// The device register: LBA mode, device select and, for LBA28, LBA
    /// bits 27:24 in bits 3:0.
    pub device: u8,
    /// LBA48 only, written first (the registers are two-deep FIFOs): count
    /// bits 15:8 and LBA bits 31:24, 39:32, 47:40.
    pub high_order: Option<AddressRegisters>,
    /// Count bits 7:0 (0 means 256 for LBA28) and LBA bits 7:0, 15:8, 23:16.
    pub low_order: AddressRegisters,
    /// The command register, written last: it starts the command.
    pub command: u8,
}

/// The task file for moving `sectors` sectors (1..=256) at `lba`, to or
/// from the master or the slave. 28-bit commands are used whenever the
/// whole range lies below 2^28, the 48-bit ones otherwise (and only when the
/// device supports them).
///
/// The disk's own size is not checked here: see [`split`].
pub fn task_file(direction: Direction, lba: u64, sectors: u16, slave: bool, lba48: bool) -> Result<TaskFile, AtaError> {
    if sectors == 0 || sectors > MAX_SECTORS_PER_COMMAND {
        return Err(AtaError::BadLength);
    }
    let end = lba.checked_add(u64::from(sectors)).ok_or(AtaError::OutOfRange)?;
    let select = device::select(slave) | device::LBA;
    let bytes = lba.to_le_bytes();
    let count = sectors.to_le_bytes();
    if end <= LBA28_LIMIT {
        let command = match direction {
            Direction::Read => command::READ_SECTORS,
            Direction::Write => command::WRITE_SECTORS,
        };
        return Ok(TaskFile {
            device: select | (bytes[3] & 0x0f),
            high_order: None,
            // 256 truncates to 0, which the count register reads as 256.
            low_order: AddressRegisters {
                sector_count: count[0],
                lba_low: bytes[0],
                lba_mid: bytes[1],
                lba_high: bytes[2],
            },
            command,
        });
    }
    if !lba48 || end > LBA48_LIMIT {
        return Err(AtaError::OutOfRange);
    }
    let command = match direction {
        Direction::Read => command::READ_SECTORS_EXT,
        Direction::Write => command::WRITE_SECTORS_EXT,
    };
    Ok(TaskFile {
        device: select,
        high_order: Some(AddressRegisters {
            sector_count: count[1],
            lba_low: bytes[3],
            lba_mid: bytes[4],
            lba_high: bytes[5],
        }),
        low_order: AddressRegisters {
            sector_count: count[0],
            lba_low: bytes[0],
            lba_mid: bytes[1],
            lba_high: bytes[2],
        },
        command,
    })
}

/// As [`task_file`], with the DMA command for the same direction and
/// addressing: READ/WRITE DMA, or their EXT forms above 2^28.
pub fn dma_task_file(
    direction: Direction,
    lba: u64,
    sectors: u16,
    slave: bool,
    lba48: bool,
) -> Result<TaskFile, AtaError> {
    let task = task_file(direction, lba, sectors, slave, lba48)?;
    let command = match (direction, task.high_order.is_some()) {
        (Direction::Read, false) => command::READ_DMA,
        (Direction::Read, true) => command::READ_DMA_EXT,
        (Direction::Write, false) => command::WRITE_DMA,
        (Direction::Write, true) => command::WRITE_DMA_EXT,
    };
    Ok(TaskFile { command, ..task })
}

/// The cache flush command for a device: FLUSH CACHE EXT when it has the
/// 48-bit feature set (it may cache sectors above 2^28), else FLUSH CACHE.
pub const fn flush_command(lba48: bool) -> u8 {
    if lba48 { command::FLUSH_CACHE_EXT } else { command::FLUSH_CACHE }
}

// ---------------------------------------------------------------------------
// Request splitting

/// One command's share of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First sector.
    pub lba: u64,
    /// Sectors, 1..=[`MAX_SECTORS_PER_COMMAND`].
    pub sectors: u16,
    /// Where the chunk's bytes start in the caller's buffer.
    pub offset: usize,
}

impl Chunk {
    /// The chunk's bytes in the caller's buffer.
    pub fn bytes(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + usize::from(self.sectors) * SECTOR_SIZE
    }
}

/// The chunks of a request, in order.
#[derive(Clone, Debug)]
pub struct Chunks {
    lba: u64,
    remaining: u64,
    offset: usize,
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.remaining == 0 {
            return None;
        }
        let sectors = self.remaining.min(u64::from(MAX_SECTORS_PER_COMMAND)) as u16;
        let chunk = Chunk { lba: self.lba, sectors, offset: self.offset };
        self.lba += u64::from(sectors);
        self.remaining -= u64::from(sectors);
        self.offset += usize::from(sectors) * SECTOR_SIZE;
        Some(chunk)
    }
}

/// Checks a request of `length` bytes at `lba` against a disk of
/// `disk_sectors` sectors and splits it into commands of at most 256
/// sectors. `length` must be a multiple of 512 (zero is a request for
/// nothing, and yields no chunk); the whole range must lie on the disk.
pub fn split(lba: u64, length: usize, disk_sectors: u64) -> Result<Chunks, AtaError> {
    if !length.is_multiple_of(SECTOR_SIZE) {
        return Err(AtaError::BadLength);
    }
    let sectors = (length / SECTOR_SIZE) as u64;
    match lba.checked_add(sectors) {
        Some(end) if end <= disk_sectors => {}
        _ => return Err(AtaError::OutOfRange),
    }
    Ok(Chunks { lba, remaining: sectors, offset: 0 })
}

// ---------------------------------------------------------------------------
// Bus-master IDE DMA

/// The bus-master IDE registers (SFF-8038i; Intel PIIX3/PIIX4 datasheets,
/// "Bus Master IDE I/O Registers") and the physical region descriptor
/// (PRD) tables the engine walks.
///
/// The IDE function's BAR4 is a 16-port I/O range: the primary channel's
/// registers at +0, the secondary's at +8. A PRD entry is 8 bytes: a 32-bit
/// machine address (bit 0 zero), a 16-bit byte count (bit 0 zero, 0 means
/// 64 KiB), and in the last dword's bit 31 the end-of-table mark. No entry
/// may cross a 64 KiB boundary; the table itself must be dword aligned and
/// must not cross one either.
pub mod bus_master {
    use core::fmt;

    use arrayvec::ArrayVec;

    use super::AtaError;

    /// Command register (byte): start/stop and direction.
    pub const COMMAND: u16 = 0;
    /// Status register (byte): activity, error and interrupt bits.
    pub const STATUS: u16 = 2;
    /// PRD table address register (dword): the table's machine address.
    pub const PRD_TABLE: u16 = 4;
    /// Ports one channel's registers take.
    pub const CHANNEL_PORTS: u16 = 8;
    /// Ports of the whole BAR (both channels).
    pub const PORTS: u16 = 16;

    /// Command register bits.
    pub mod command {
        /// Start/stop bus master: set starts walking the PRD table, clear
        /// stops the engine (whatever it was doing).
        pub const START: u8 = 1 << 0;
        /// Read/write control: set, the engine writes memory (a disk
        /// read); clear, it reads memory (a disk write).
        pub const WRITE_TO_MEMORY: u8 = 1 << 3;
    }

    /// Status register bits.
    pub mod status {
        /// Bus master IDE active: set by START, cleared when the last PRD
        /// entry is done (or START is cleared).
        pub const ACTIVE: u8 = 1 << 0;
        /// Error in a transfer to or from memory; write one to clear.
        pub const ERROR: u8 = 1 << 1;
        /// The device raised its interrupt; write one to clear.
        pub const INTERRUPT: u8 = 1 << 2;
        /// Firmware's marks that drive 0 and drive 1 may use DMA (kept as
        /// they are: written back unchanged).
        pub const DRIVES_DMA_CAPABLE: u8 = 0b11 << 5;
    }

    /// PRD entry bit 63: the last entry of the table.
    pub const END_OF_TABLE: u64 = 1 << 63;
    /// Most bytes one PRD entry moves, and the boundary none may cross.
    pub const PRD_REGION: u64 = 0x1_0000;
    /// Entries one channel's table holds: 2 KiB, so both channels' tables
    /// fit one page (which crosses no 64 KiB boundary).
    pub const PRD_ENTRIES_MAX: usize = 256;
    /// Bytes of one PRD entry.
    pub const PRD_ENTRY_BYTES: usize = 8;

    /// Why memory cannot be described to the engine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PrdError {
        /// An odd machine address or byte count (the engine moves words).
        Odd,
        /// Memory at or above 4 GiB: PRD addresses are 32 bits.
        AboveFourGiB,
        /// More than [`PRD_ENTRIES_MAX`] entries.
        TooManyEntries,
    }

    /// A PRD table being built: entries as (machine address, byte count).
    #[derive(Clone, Debug, Default)]
    pub struct PrdList {
        entries: ArrayVec<(u32, u32), PRD_ENTRIES_MAX>,
        bytes: u64,
    }

    impl PrdList {
        /// An empty table.
        pub const fn new() -> PrdList {
            PrdList { entries: ArrayVec::new_const(), bytes: 0 }
        }

        /// Appends `length` bytes of machine memory from `machine`: split at
        /// 64 KiB boundaries, and merged into the previous entry when they
        /// continue it inside the same 64 KiB region. On error the list is
        /// unusable (the caller drops it and uses PIO).
        pub fn push(&mut self, machine: u64, length: u64) -> Result<(), PrdError> {
            if !machine.is_multiple_of(2) || !length.is_multiple_of(2) {
                return Err(PrdError::Odd);
            }
            match machine.checked_add(length) {
                Some(end) if end <= 1 << 32 => {}
                _ => return Err(PrdError::AboveFourGiB),
            }
            let (mut address, end) = (machine, machine + length);
            while address < end {
                let region_end = (address / PRD_REGION + 1) * PRD_REGION;
                let piece = end.min(region_end) - address;
                match self.entries.last_mut() {
                    Some((start, count))
                        if u64::from(*start) + u64::from(*count) == address
                            && u64::from(*start) / PRD_REGION == address / PRD_REGION =>
                    {
                        *count += piece as u32;
                    }
                    _ => self.entries.try_push((address as u32, piece as u32)).map_err(|_| PrdError::TooManyEntries)?,
                }
                address += piece;
            }
            self.bytes += length;
            Ok(())
        }

        /// Bytes the table moves.
        pub fn bytes(&self) -> u64 {
            self.bytes
        }

        /// Entries in the table.
        pub fn len(&self) -> usize {
            self.entries.len()
        }

        /// Whether the table is empty (an engine must never be given one).
        pub fn is_empty(&self) -> bool {
            self.entries.is_empty()
        }

        /// The entries as the engine reads them (little-endian 64-bit
        /// values), the last one marked [`END_OF_TABLE`].
        pub fn encoded(&self) -> impl Iterator<Item = u64> + '_ {
            let last = self.entries.len().wrapping_sub(1);
            self.entries.iter().enumerate().map(move |(index, &(address, count))| {
                // 64 KiB is written as 0 (the count field has 16 bits).
                let field = u64::from(count as u16);
                u64::from(address) | field << 32 | if index == last { END_OF_TABLE } else { 0 }
            })
        }
    }

    /// Splits `length` bytes at guest-physical `address` into the pieces
    /// that lie within one 4 KiB page each (each page is translated on its
    /// own: dom0's memory is contiguous in machine memory per page only).
    pub fn page_spans(address: u64, length: usize) -> impl Iterator<Item = (u64, u64)> {
        let end = address.saturating_add(length as u64);
        let mut next = address;
        core::iter::from_fn(move || {
            if next >= end {
                return None;
            }
            let page_end = (next & !(abi::PAGE_SIZE - 1)).saturating_add(abi::PAGE_SIZE);
            let span = (next, end.min(page_end) - next);
            next += span.1;
            Some(span)
        })
    }

    /// Why an IDE function's bus-master engine is not used.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum NoBusMaster {
        /// No PCI function of class IDE controller was found.
        NoController,
        /// Programming interface bit 7 is clear: no bus-master engine.
        NotCapable,
        /// BAR4 is not an I/O BAR, or the firmware left it unassigned.
        Unassigned,
        /// hv refused to open the BAR's ports.
        PortsRefused,
        /// The PRD table's own machine address is not usable.
        TableUnreachable,
        /// The disk's IDENTIFY data says it cannot do DMA.
        DeviceCannot,
        /// The operator chose PIO (`diskmode <disk> pio`).
        TurnedOff,
        /// A failed transfer's command could not be aborted (the device
        /// did not come back from a reset): the engine is not started again.
        Stuck,
    }

    impl fmt::Display for NoBusMaster {
        fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
            out.write_str(match self {
                NoBusMaster::NoController => "no PCI IDE controller",
                NoBusMaster::NotCapable => "the IDE controller has no bus master",
                NoBusMaster::Unassigned => "the bus-master BAR is not assigned",
                NoBusMaster::PortsRefused => "hv refused the bus-master ports",
                NoBusMaster::TableUnreachable => "no machine address for the PRD table",
                NoBusMaster::DeviceCannot => "the disk does not support DMA",
                NoBusMaster::TurnedOff => "chosen with diskmode",
                NoBusMaster::Stuck => "a failed DMA transfer could not be aborted",
            })
        }
    }

    /// What [`run_transfer`] needs of a channel with a started command and
    /// its engine's PRD table set: dom0's port I/O, a model in the tests.
    pub trait DmaChannel {
        /// The engine's status register.
        fn engine_status(&mut self) -> u8;
        /// Writes the engine's command register.
        fn engine_command(&mut self, value: u8);
        /// Clears the engine's error and interrupt bits.
        fn clear_engine_status(&mut self);
        /// Whether the transfer's deadline has passed.
        fn deadline_passed(&mut self) -> bool;
        /// Aborts the device's command (a software reset of the channel);
        /// Err when the device does not come back.
        fn reset_device(&mut self) -> Result<(), AtaError>;
    }

    /// Runs the engine (`direction` is 0 or [`command::WRITE_TO_MEMORY`])
    /// until it is done, reports an error, or the deadline passes. In every
    /// case the engine is stopped when this returns, and after a failure
    /// the device's command is aborted too: left open, it would move its
    /// data the next time the engine starts, into the next transfer's
    /// pages, after the caller let this one's pages go (back to a guest,
    /// or to the free pool). [`AtaError::DmaStuck`] when the device does
    /// not come back from that: the engine must not be started again.
    pub fn run_transfer(channel: &mut impl DmaChannel, direction: u8) -> Result<(), AtaError> {
        channel.engine_command(direction | command::START);
        let outcome = loop {
            let status = channel.engine_status();
            if status & status::ERROR != 0 {
                break Err(AtaError::Dma);
            }
            if status & status::ACTIVE == 0 {
                break Ok(());
            }
            if channel.deadline_passed() {
                break Err(AtaError::Timeout);
            }
            core::hint::spin_loop();
        };
        channel.engine_command(direction);
        channel.clear_engine_status();
        if outcome.is_err() && channel.reset_device().is_err() {
            return Err(AtaError::DmaStuck);
        }
        outcome
    }

    /// PCI class and subclass of an IDE controller.
    pub const IDE_CLASS: (u8, u8) = (0x01, 0x01);
    /// Programming interface bit 7: the function has a bus-master engine.
    pub const PROG_IF_BUS_MASTER: u8 = 1 << 7;

    /// The first port of an IDE function's bus-master registers, from its
    /// programming interface and raw BAR4.
    pub fn base_port(prog_if: u8, bar4: u32) -> Result<u16, NoBusMaster> {
        if prog_if & PROG_IF_BUS_MASTER == 0 {
            return Err(NoBusMaster::NotCapable);
        }
        // An I/O BAR has bit 0 set; bits 31:2 are the address (PCI 3.0, 6.2.5.1).
        let base = bar4 & !0b11;
        if bar4 & 1 == 0 || base == 0 || base > 0x1_0000 - u32::from(PORTS) || !base.is_multiple_of(u32::from(PORTS)) {
            return Err(NoBusMaster::Unassigned);
        }
        Ok(base as u16)
    }
}

// ---------------------------------------------------------------------------
// PCI configuration space (mechanism #1)

/// PCI configuration space, decoded: addresses for configuration mechanism
/// #1 and the fields of the standard header (PCI Local Bus Specification
/// 3.0, 3.2.2.3.2 and 6.1), and names for the class codes (PCI Code and ID
/// Assignment Specification). Kept beside ATA because the IDE controller
/// is found through it and both need host tests.
pub mod pci {
    /// Highest device number on a bus.
    pub const DEVICES_PER_BUS: u8 = 32;
    /// Functions per device.
    pub const FUNCTIONS_PER_DEVICE: u8 = 8;
    /// Vendor ID read from an absent function (nobody drives the bus).
    pub const NO_VENDOR: u16 = 0xffff;
    /// Configuration-space dwords the scan reads (the standard header).
    pub const HEADER_DWORDS: usize = 16;

    /// Header type (byte 0x0E) bit 7: the device has functions 1-7.
    pub const MULTI_FUNCTION: u8 = 1 << 7;

    /// The CONFIG_ADDRESS (port 0xCF8) value for a dword of configuration
    /// space: enable bit 31, bus 23:16, device 15:11, function 10:8,
    /// register 7:2 (the offset's low two bits are dropped: dword access).
    pub const fn config_address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
        1 << 31
            | (bus as u32) << 16
            | ((device & 0x1f) as u32) << 11
            | ((function & 0x07) as u32) << 8
            | (offset & 0xfc) as u32
    }

    /// One function found on the bus.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PciDevice {
        pub bus: u8,
        pub device: u8,
        pub function: u8,
        pub vendor: u16,
        pub device_id: u16,
        pub class: u8,
        pub subclass: u8,
        pub prog_if: u8,
        /// Base address registers, raw. A PCI-to-PCI bridge has two (the
        /// rest are 0), a CardBus bridge none.
        pub bars: [u32; 6],
        /// The IRQ firmware routed the interrupt pin to (0xFF: none).
        pub interrupt_line: u8,
    }

    /// Header type (byte 0x0E, bit 7 masked off) of a dword 3 value.
    pub const fn header_type(dword3: u32) -> u8 {
        (dword3 >> 16) as u8 & !MULTI_FUNCTION
    }

    /// Whether a function 0 whose dword 3 is this has functions 1-7.
    pub const fn is_multi_function(dword3: u32) -> bool {
        (dword3 >> 16) as u8 & MULTI_FUNCTION != 0
    }

    /// Decodes the first 16 dwords of a function's configuration space;
    /// `None` when nothing answers there (vendor 0xFFFF).
    pub fn decode(bus: u8, device: u8, function: u8, header: &[u32; HEADER_DWORDS]) -> Option<PciDevice> {
        let vendor = header[0] as u16;
        if vendor == NO_VENDOR {
            return None;
        }
        let bar_count = match header_type(header[3]) {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        let mut bars = [0u32; 6];
        bars[..bar_count].copy_from_slice(&header[4..4 + bar_count]);
        let [_revision, prog_if, subclass, class] = header[2].to_le_bytes();
        Some(PciDevice {
            bus,
            device,
            function,
            vendor,
            device_id: (header[0] >> 16) as u16,
            class,
            subclass,
            prog_if,
            bars,
            interrupt_line: header[15] as u8,
        })
    }

    /// A name for a class code and subclass: the subclass's name when it
    /// is known, else the class's, else "unknown class".
    pub fn class_name(class: u8, subclass: u8) -> &'static str {
        let specific = match (class, subclass) {
            (0x00, 0x01) => "VGA-compatible device",
            (0x01, 0x00) => "SCSI controller",
            (0x01, 0x01) => "IDE controller",
            (0x01, 0x02) => "floppy controller",
            (0x01, 0x04) => "RAID controller",
            (0x01, 0x05) => "ATA controller (ADMA)",
            (0x01, 0x06) => "SATA controller",
            (0x01, 0x07) => "SAS controller",
            (0x01, 0x08) => "NVM controller",
            (0x02, 0x00) => "Ethernet controller",
            (0x02, 0x01) => "Token Ring controller",
            (0x02, 0x02) => "FDDI controller",
            (0x02, 0x03) => "ATM controller",
            (0x02, 0x80) => "network controller",
            (0x03, 0x00) => "VGA-compatible controller",
            (0x03, 0x01) => "XGA controller",
            (0x03, 0x02) => "3D controller",
            (0x04, 0x00) => "video device",
            (0x04, 0x01) => "audio device",
            (0x04, 0x03) => "HD audio controller",
            (0x05, 0x00) => "RAM controller",
            (0x05, 0x01) => "flash controller",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x01) => "ISA bridge",
            (0x06, 0x02) => "EISA bridge",
            (0x06, 0x04) => "PCI-to-PCI bridge",
            (0x06, 0x05) => "PCMCIA bridge",
            (0x06, 0x07) => "CardBus bridge",
            (0x06, 0x09) => "semi-transparent PCI-to-PCI bridge",
            (0x06, 0x80) => "other bridge",
            (0x07, 0x00) => "serial controller",
            (0x07, 0x01) => "parallel controller",
            (0x07, 0x03) => "modem",
            (0x08, 0x00) => "interrupt controller",
            (0x08, 0x01) => "DMA controller",
            (0x08, 0x02) => "timer",
            (0x08, 0x03) => "RTC controller",
            (0x08, 0x05) => "SD host controller",
            (0x08, 0x06) => "IOMMU",
            (0x09, 0x00) => "keyboard controller",
            (0x09, 0x02) => "mouse controller",
            (0x0c, 0x00) => "FireWire controller",
            (0x0c, 0x03) => "USB controller",
            (0x0c, 0x04) => "Fibre Channel controller",
            (0x0c, 0x05) => "SMBus controller",
            (0x0c, 0x07) => "IPMI interface",
            _ => "",
        };
        if !specific.is_empty() {
            return specific;
        }
        match class {
            0x00 => "unclassified device",
            0x01 => "mass storage controller",
            0x02 => "network controller",
            0x03 => "display controller",
            0x04 => "multimedia controller",
            0x05 => "memory controller",
            0x06 => "bridge",
            0x07 => "communication controller",
            0x08 => "system peripheral",
            0x09 => "input device controller",
            0x0a => "docking station",
            0x0b => "processor",
            0x0c => "serial bus controller",
            0x0d => "wireless controller",
            0x0e => "intelligent I/O controller",
            0x0f => "satellite communication controller",
            0x10 => "encryption controller",
            0x11 => "signal processing controller",
            0x12 => "processing accelerator",
            0x13 => "non-essential instrumentation",
            0x40 => "co-processor",
            0xff => "vendor-specific device",
            _ => "unknown class",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pci::*;
    use super::*;

    /// An IDENTIFY block like a small disk's: LBA, the given counts, a model.
    fn identify_block(lba28: u32, lba48: Option<u64>, model: &str) -> [u16; 256] {
        let mut words = [0u16; 256];
        words[0] = 0x0040; // fixed device
        words[49] = 1 << 9; // LBA supported
        words[60] = lba28 as u16;
        words[61] = (lba28 >> 16) as u16;
        words[83] = 0x4000; // "word valid" marker
        if let Some(count) = lba48 {
            words[83] |= 1 << 10;
            for index in 0..4 {
                words[100 + index] = (count >> (16 * index)) as u16;
            }
        }
        let mut field = [b' '; 40];
        field[..model.len()].copy_from_slice(model.as_bytes());
        for index in 0..20 {
            words[27 + index] = u16::from_be_bytes([field[2 * index], field[2 * index + 1]]);
        }
        words
    }

    #[test]
    fn identify_small_lba28_disk() {
        let identity = parse_identify(&identify_block(32768, None, "Generic 1234")).unwrap();
        assert_eq!(identity.sectors, 32768);
        assert!(!identity.lba48);
        assert_eq!(identity.model.as_str(), "Generic 1234");
    }

    #[test]
    fn identify_prefers_the_48_bit_count() {
        let big = (1u64 << 30) + 5;
        let identity = parse_identify(&identify_block(0x0fff_ffff, Some(big), "BIG DISK")).unwrap();
        assert!(identity.lba48);
        assert_eq!(identity.sectors, big);
        // LBA48 supported but the 48-bit count left at 0: the 28-bit count.
        let identity = parse_identify(&identify_block(1000, Some(0), "X")).unwrap();
        assert!(identity.lba48);
        assert_eq!(identity.sectors, 1000);
    }

    #[test]
    fn identify_clamps_absurd_counts() {
        let identity = parse_identify(&identify_block(0xffff_ffff, None, "")).unwrap();
        assert_eq!(identity.sectors, LBA28_LIMIT, "28-bit count above 2^28");
        let identity = parse_identify(&identify_block(1, Some(u64::MAX), "")).unwrap();
        assert_eq!(identity.sectors, LBA48_LIMIT, "48-bit count above 2^48");
    }

    #[test]
    fn identify_refuses_hostile_blocks() {
        assert_eq!(parse_identify(&identify_block(0, None, "EMPTY")), Err(IdentifyError::NoCapacity));
        assert_eq!(parse_identify(&identify_block(0, Some(0), "EMPTY")), Err(IdentifyError::NoCapacity));
        // A floating bus reads all ones.
        assert_eq!(parse_identify(&[0xffff; 256]), Err(IdentifyError::NotAta));
        assert_eq!(parse_identify(&[0; 256]), Err(IdentifyError::NoLba));
        let mut packet = identify_block(100, None, "CD");
        packet[0] = 0x85c0; // ATAPI CD-ROM general configuration
        assert_eq!(parse_identify(&packet), Err(IdentifyError::NotAta));
        let mut chs_only = identify_block(100, None, "OLD");
        chs_only[49] = 0;
        assert_eq!(parse_identify(&chs_only), Err(IdentifyError::NoLba));
    }

    #[test]
    fn identify_ignores_word_83_without_its_valid_marker() {
        let mut words = identify_block(2000, Some(1 << 40), "");
        words[83] = 0xffff; // bits 15:14 = 11: not a valid word
        let identity = parse_identify(&words).unwrap();
        assert!(!identity.lba48);
        assert_eq!(identity.sectors, 2000);
    }

    #[test]
    fn model_strings_are_unswapped_trimmed_and_printable() {
        // Two characters per word, the first in the high byte; leading spaces go too.
        let words = identify_block(1, None, "  QEMU HARDDISK");
        assert_eq!(words[27], 0x2020);
        assert_eq!(words[28], u16::from_be_bytes(*b"QE"));
        assert_eq!(parse_identify(&words).unwrap().model.as_str(), "QEMU HARDDISK");
        assert_eq!(ata_string(&[0x4142, 0x4300]).as_str(), "ABC");
        assert_eq!(ata_string(&[0x41ff, 0x0142]).as_str(), "A??B");
        assert_eq!(ata_string(&[0x2020, 0x0000]).as_str(), "");
        assert_eq!(ata_string(&[]).as_str(), "");
        // A full 40-character model keeps every character.
        let full = "0123456789012345678901234567890123456789";
        assert_eq!(parse_identify(&identify_block(1, None, full)).unwrap().model.as_str(), full);
    }

    #[test]
    fn signatures() {
        assert_eq!(device_kind(0x00, 0x00), DeviceKind::Ata);
        assert_eq!(device_kind(0x3c, 0xc3), DeviceKind::Ata);
        assert_eq!(device_kind(0x14, 0xeb), DeviceKind::Atapi);
        assert_eq!(device_kind(0x69, 0x96), DeviceKind::Atapi);
        assert_eq!(device_kind(0xff, 0xff), DeviceKind::Unknown);
    }

    #[test]
    fn status_conditions() {
        assert_eq!(Status(0x80).condition(), Condition::Busy);
        // While BSY, the other bits mean nothing: not a failure yet.
        assert_eq!(Status(0x81).condition(), Condition::Busy);
        assert_eq!(Status(0xff).condition(), Condition::Busy);
        assert!(Status(0xff).floating());
        assert_eq!(Status(0x51).condition(), Condition::Failed);
        assert_eq!(Status(0x61).condition(), Condition::Failed, "DF with ERR");
        assert_eq!(Status(0x60).condition(), Condition::Failed, "DF alone");
        assert_eq!(Status(0x58).condition(), Condition::DataRequest);
        assert_eq!(Status(0x59).condition(), Condition::Failed, "ERR wins over DRQ");
        assert_eq!(Status(0x50).condition(), Condition::Idle);
        assert_eq!(Status(0x00).condition(), Condition::Idle);
        assert!(Status(0x50).ready());
        assert!(!Status(0xd0).ready());
        assert!(!Status(0x00).ready());
    }

    #[test]
    fn status_and_error_names() {
        assert_eq!(Status(0x58).to_string(), "DRDY DSC DRQ");
        assert_eq!(Status(0x80).to_string(), "BSY");
        assert_eq!(Status(0).to_string(), "none");
        assert_eq!(ErrorBits(ErrorBits::ABRT).to_string(), "ABRT");
        assert_eq!(ErrorBits(0x50).to_string(), "UNC IDNF");
        assert_eq!(AtaError::DeviceError(0x04).to_string(), "device error 0x04 (ABRT)");
        assert_eq!(AtaError::Timeout.to_string(), "timed out");
    }

    #[test]
    fn lba28_task_file() {
        let file = task_file(Direction::Read, 0x0123_4567, 1, false, false).unwrap();
        assert_eq!(file.command, command::READ_SECTORS);
        assert_eq!(file.device, 0xe0 | 0x1);
        assert_eq!(file.high_order, None);
        assert_eq!(file.low_order, AddressRegisters { sector_count: 1, lba_low: 0x67, lba_mid: 0x45, lba_high: 0x23 });
        let file = task_file(Direction::Write, 0, 256, true, true).unwrap();
        assert_eq!(file.command, command::WRITE_SECTORS, "LBA28 even on a 48-bit disk when it fits");
        assert_eq!(file.device, 0xf0);
        assert_eq!(file.low_order.sector_count, 0, "256 sectors are written as 0");
    }

    #[test]
    fn lba28_reaches_exactly_to_2_pow_28() {
        let file = task_file(Direction::Read, LBA28_LIMIT - 1, 1, false, true).unwrap();
        assert_eq!(file.command, command::READ_SECTORS);
        assert_eq!(file.device, 0xef);
        assert_eq!((file.low_order.lba_low, file.low_order.lba_mid, file.low_order.lba_high), (0xff, 0xff, 0xff));
        // One sector more crosses 2^28: LBA48.
        let file = task_file(Direction::Read, LBA28_LIMIT - 1, 2, false, true).unwrap();
        assert_eq!(file.command, command::READ_SECTORS_EXT);
        // And without 48-bit support that is out of reach.
        assert_eq!(task_file(Direction::Read, LBA28_LIMIT - 1, 2, false, false), Err(AtaError::OutOfRange));
    }

    #[test]
    fn lba48_task_file() {
        let file = task_file(Direction::Write, 0x0000_ba98_7654_3210, 256, true, true).unwrap();
        assert_eq!(file.command, command::WRITE_SECTORS_EXT);
        assert_eq!(file.device, 0x40 | 0xa0 | 0x10, "no LBA bits in the device register");
        assert_eq!(
            file.high_order,
            Some(AddressRegisters { sector_count: 0x01, lba_low: 0x76, lba_mid: 0x98, lba_high: 0xba })
        );
        assert_eq!(
            file.low_order,
            AddressRegisters { sector_count: 0x00, lba_low: 0x10, lba_mid: 0x32, lba_high: 0x54 }
        );
        let file = task_file(Direction::Read, LBA48_LIMIT - 3, 3, false, true).unwrap();
        assert_eq!(file.command, command::READ_SECTORS_EXT);
        assert_eq!(file.high_order.unwrap().sector_count, 0);
        assert_eq!(file.low_order.sector_count, 3);
    }

    #[test]
    fn task_file_refuses_hostile_requests() {
        assert_eq!(task_file(Direction::Read, 0, 0, false, true), Err(AtaError::BadLength));
        assert_eq!(task_file(Direction::Read, 0, 257, false, true), Err(AtaError::BadLength));
        assert_eq!(task_file(Direction::Read, LBA48_LIMIT - 1, 2, false, true), Err(AtaError::OutOfRange));
        assert_eq!(task_file(Direction::Read, u64::MAX, 1, false, true), Err(AtaError::OutOfRange));
        assert_eq!(task_file(Direction::Write, u64::MAX - 1, 256, false, true), Err(AtaError::OutOfRange));
    }

    #[test]
    fn flush_commands() {
        assert_eq!(flush_command(false), 0xe7);
        assert_eq!(flush_command(true), 0xea);
    }

    #[test]
    fn split_into_commands_of_256_sectors() {
        let chunks: Vec<Chunk> = split(10, 600 * SECTOR_SIZE, 1000).unwrap().collect();
        assert_eq!(
            chunks,
            [
                Chunk { lba: 10, sectors: 256, offset: 0 },
                Chunk { lba: 266, sectors: 256, offset: 256 * 512 },
                Chunk { lba: 522, sectors: 88, offset: 512 * 512 },
            ]
        );
        assert_eq!(chunks[2].bytes(), 512 * 512..600 * 512);
        let one: Vec<Chunk> = split(999, 512, 1000).unwrap().collect();
        assert_eq!(one, [Chunk { lba: 999, sectors: 1, offset: 0 }]);
        assert_eq!(split(0, 256 * 512, 256).unwrap().count(), 1);
        assert_eq!(split(5, 0, 1000).unwrap().count(), 0, "an empty request moves nothing");
    }

    #[test]
    fn split_refuses_bad_requests() {
        assert_eq!(split(0, 511, 1000).unwrap_err(), AtaError::BadLength);
        assert_eq!(split(0, 513, 1000).unwrap_err(), AtaError::BadLength);
        assert_eq!(split(999, 1024, 1000).unwrap_err(), AtaError::OutOfRange, "last sector past the end");
        assert_eq!(split(1000, 512, 1000).unwrap_err(), AtaError::OutOfRange);
        assert_eq!(
            split(1001, 0, 1000).unwrap_err(),
            AtaError::OutOfRange,
            "even an empty request must start on the disk"
        );
        assert_eq!(split(u64::MAX, 512, u64::MAX).unwrap_err(), AtaError::OutOfRange, "wrap-around");
        assert_eq!(split(0, 512, 0).unwrap_err(), AtaError::OutOfRange, "a disk with no sectors");
    }

    #[test]
    fn pci_config_addresses() {
        assert_eq!(config_address(0, 0, 0, 0), 0x8000_0000);
        assert_eq!(config_address(0, 1, 1, 0x08), 0x8000_0908);
        assert_eq!(config_address(0xff, 31, 7, 0xff), 0x80ff_fffc);
        // Out-of-range device and function numbers cannot spill into other fields.
        assert_eq!(config_address(0, 32, 8, 0), 0x8000_0000);
    }

    /// A configuration header as Bochs's i440FX shows its e1000 in slot 1.
    fn e1000_header() -> [u32; HEADER_DWORDS] {
        let mut header = [0u32; HEADER_DWORDS];
        header[0] = 0x100e_8086;
        header[2] = 0x0200_0003; // class 02, subclass 00, prog-if 00, revision 03
        header[3] = 0x0000_0000;
        header[4] = 0xc000_0000;
        header[5] = 0x0000_c001;
        header[15] = 0x0000_0109; // pin INTA, line 9
        header
    }

    #[test]
    fn pci_header_decoding() {
        let device = decode(0, 2, 0, &e1000_header()).unwrap();
        assert_eq!((device.vendor, device.device_id), (0x8086, 0x100e));
        assert_eq!((device.class, device.subclass, device.prog_if), (0x02, 0x00, 0x00));
        assert_eq!(device.bars, [0xc000_0000, 0xc001, 0, 0, 0, 0]);
        assert_eq!(device.interrupt_line, 9);
        assert_eq!((device.bus, device.device, device.function), (0, 2, 0));
        assert_eq!(class_name(device.class, device.subclass), "Ethernet controller");

        let mut absent = e1000_header();
        absent[0] = 0xffff_ffff;
        assert_eq!(decode(0, 3, 0, &absent), None);
    }

    #[test]
    fn pci_header_types() {
        let mut bridge = e1000_header();
        bridge[3] = 0x0001_0000; // PCI-to-PCI bridge: two BARs, then bus numbers
        bridge[6] = 0x0002_0100;
        assert_eq!(decode(0, 1, 0, &bridge).unwrap().bars, [0xc000_0000, 0xc001, 0, 0, 0, 0]);
        let mut cardbus = e1000_header();
        cardbus[3] = 0x0002_0000;
        assert_eq!(decode(0, 1, 0, &cardbus).unwrap().bars, [0; 6]);
        let mut multi = e1000_header();
        multi[3] = 0x0080_0000; // PIIX3 function 0: multi-function, type 0
        assert!(is_multi_function(multi[3]));
        assert_eq!(header_type(multi[3]), 0);
        assert!(!is_multi_function(e1000_header()[3]));
    }

    #[test]
    fn pci_class_names() {
        // What Bochs's i440FX shows: host bridge, PIIX3 ISA, IDE, USB, ACPI, e1000.
        assert_eq!(class_name(0x06, 0x00), "host bridge");
        assert_eq!(class_name(0x06, 0x01), "ISA bridge");
        assert_eq!(class_name(0x01, 0x01), "IDE controller");
        assert_eq!(class_name(0x0c, 0x03), "USB controller");
        assert_eq!(class_name(0x06, 0x80), "other bridge");
        assert_eq!(class_name(0x02, 0x00), "Ethernet controller");
        // Unknown subclasses fall back to the class; unknown classes say so.
        assert_eq!(class_name(0x01, 0x42), "mass storage controller");
        assert_eq!(class_name(0x14, 0x00), "unknown class");
        assert_eq!(class_name(0xff, 0xff), "vendor-specific device");
    }

    #[test]
    fn identify_reports_dma_support() {
        let mut words = identify_block(32768, None, "Generic 1234");
        assert!(!parse_identify(&words).unwrap().dma);
        words[49] |= 1 << 8;
        assert!(parse_identify(&words).unwrap().dma);
    }

    #[test]
    fn dma_task_files_use_the_dma_commands() {
        let read = dma_task_file(Direction::Read, 2048, 64, false, true).unwrap();
        assert_eq!(read.command, command::READ_DMA);
        assert_eq!(
            read,
            TaskFile { command: command::READ_DMA, ..task_file(Direction::Read, 2048, 64, false, true).unwrap() }
        );
        assert_eq!(dma_task_file(Direction::Write, 7, 1, true, false).unwrap().command, command::WRITE_DMA);
        assert_eq!(dma_task_file(Direction::Read, LBA28_LIMIT, 8, false, true).unwrap().command, command::READ_DMA_EXT);
        assert_eq!(
            dma_task_file(Direction::Write, LBA28_LIMIT - 1, 2, false, true).unwrap().command,
            command::WRITE_DMA_EXT
        );
        assert_eq!(dma_task_file(Direction::Read, LBA28_LIMIT, 8, false, false), Err(AtaError::OutOfRange));
        assert_eq!(dma_task_file(Direction::Read, 0, 0, false, false), Err(AtaError::BadLength));
    }

    use super::bus_master::{
        DmaChannel, END_OF_TABLE, NoBusMaster, PRD_ENTRIES_MAX, PRD_ENTRY_BYTES, PRD_REGION, PrdError, PrdList,
        base_port, command as engine, page_spans, run_transfer, status as engine_status,
    };

    /// Decodes an encoded entry: (address, bytes, last).
    fn prd(entry: u64) -> (u64, u64, bool) {
        let count = (entry >> 32) & 0xffff;
        (entry & 0xffff_ffff, if count == 0 { 0x1_0000 } else { count }, entry & END_OF_TABLE != 0)
    }

    fn decoded(list: &PrdList) -> Vec<(u64, u64, bool)> {
        list.encoded().map(prd).collect()
    }

    #[test]
    fn prd_entries_per_page_and_the_end_mark() {
        let mut list = PrdList::new();
        assert!(list.is_empty() && list.encoded().next().is_none());
        list.push(0x10_3000, 0x1000).unwrap();
        list.push(0x20_0200, 0x400).unwrap();
        list.push(0x7000, 0x200).unwrap();
        assert_eq!(decoded(&list), [(0x10_3000, 0x1000, false), (0x20_0200, 0x400, false), (0x7000, 0x200, true)]);
        assert_eq!(list.bytes(), 0x1600);
        // Reserved bits stay clear: only address, count and bit 63.
        for entry in list.encoded() {
            assert_eq!(entry & 0x7fff_0000_0000_0000, 0);
        }
    }

    #[test]
    fn prd_entries_merge_but_never_cross_64k() {
        let mut list = PrdList::new();
        // Contiguous pages merge up to the 64 KiB boundary, then a new entry starts.
        for page in 0..20u64 {
            list.push(0x3_c000 + page * 0x1000, 0x1000).unwrap();
        }
        let entries = decoded(&list);
        assert_eq!(entries[0], (0x3_c000, 0x4000, false));
        assert_eq!(entries[1], (0x4_0000, 0x1_0000, true));
        assert_eq!(list.encoded().nth(1).unwrap() >> 32 & 0xffff, 0, "64 KiB is written as 0");
        // One long piece is cut at every boundary.
        let mut long = PrdList::new();
        long.push(0x1_f000, 0x2_2000).unwrap();
        assert_eq!(
            decoded(&long),
            [
                (0x1_f000, 0x1000, false),
                (0x2_0000, 0x1_0000, false),
                (0x3_0000, 0x1_0000, false),
                (0x4_0000, 0x1000, true)
            ]
        );
        // Not contiguous: no merge.
        let mut apart = PrdList::new();
        apart.push(0x5000, 0x200).unwrap();
        apart.push(0x5400, 0x200).unwrap();
        assert_eq!(apart.len(), 2);
    }

    #[test]
    fn no_prd_entry_crosses_64k_whatever_the_pieces() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut list = PrdList::new();
            let mut total = 0;
            let mut address = (next() % 0x100_0000) & !1;
            for _ in 0..(next() % 40 + 1) {
                let length = (next() % 0x3000 + 2) & !1;
                if list.push(address, length).is_err() {
                    break;
                }
                total += length;
                address = if next() % 2 == 0 { address + length } else { (next() % 0x100_0000) & !1 };
            }
            let entries = decoded(&list);
            assert_eq!(entries.iter().map(|e| e.1).sum::<u64>(), total);
            assert_eq!(list.bytes(), total);
            for (index, &(start, count, last)) in entries.iter().enumerate() {
                assert!(count > 0 && count <= PRD_REGION && start % 2 == 0 && count % 2 == 0);
                assert_eq!(start / PRD_REGION, (start + count - 1) / PRD_REGION, "{start:#x}+{count:#x}");
                assert_eq!(last, index + 1 == entries.len());
            }
        }
    }

    #[test]
    fn prd_refusals() {
        let mut list = PrdList::new();
        assert_eq!(list.push(0x1001, 0x200), Err(PrdError::Odd));
        assert_eq!(list.push(0x1000, 0x201), Err(PrdError::Odd));
        assert_eq!(list.push(0x1_0000_0000, 0x200), Err(PrdError::AboveFourGiB));
        assert_eq!(list.push(0xffff_fe00, 0x400), Err(PrdError::AboveFourGiB));
        assert_eq!(list.push(u64::MAX - 1, 0x200), Err(PrdError::AboveFourGiB));
        assert!(list.push(0xffff_fe00, 0x200).is_ok());
        let mut full = PrdList::new();
        for index in 0..PRD_ENTRIES_MAX as u64 {
            full.push(index * 0x2000, 0x200).unwrap();
        }
        assert_eq!(full.push(0x100_0000, 0x200), Err(PrdError::TooManyEntries));
        // Both channels' tables fit one page.
        assert!(2 * PRD_ENTRIES_MAX * PRD_ENTRY_BYTES <= abi::PAGE_SIZE as usize);
    }

    #[test]
    fn page_spans_split_at_pages() {
        assert_eq!(page_spans(0x1000, 0x1000).collect::<Vec<_>>(), [(0x1000, 0x1000)]);
        assert_eq!(page_spans(0x1e00, 0x800).collect::<Vec<_>>(), [(0x1e00, 0x200), (0x2000, 0x600)]);
        assert_eq!(
            page_spans(0x4_0200, 0x2000).collect::<Vec<_>>(),
            [(0x4_0200, 0xe00), (0x4_1000, 0x1000), (0x4_2000, 0x200)]
        );
        assert_eq!(page_spans(0x5000, 0).count(), 0);
        assert_eq!(page_spans(u64::MAX - 0x100, 0x1000).map(|span| span.1).sum::<u64>(), 0x100);
    }

    #[test]
    fn bus_master_base_port() {
        // Bochs's PIIX3 IDE: prog-if 0x80, BAR4 0xc001.
        assert_eq!(base_port(0x80, 0xc001), Ok(0xc000));
        assert_eq!(base_port(0x8a, 0xd001), Ok(0xd000));
        assert_eq!(base_port(0x00, 0xc001), Err(NoBusMaster::NotCapable));
        assert_eq!(base_port(0x80, 0), Err(NoBusMaster::Unassigned));
        assert_eq!(base_port(0x80, 1), Err(NoBusMaster::Unassigned));
        assert_eq!(base_port(0x80, 0xc000_0000), Err(NoBusMaster::Unassigned));
        assert_eq!(base_port(0x80, 0xc009), Err(NoBusMaster::Unassigned));
        assert_eq!(base_port(0x80, 0x1_0001), Err(NoBusMaster::Unassigned));
        assert_eq!(base_port(0x80, 0xfff1), Ok(0xfff0));
    }

    /// A channel: an engine that moves one unit per poll while started,
    /// and a device whose command stays open until it is done or reset.
    /// What reached memory after the call returned is what matters.
    struct ModelChannel {
        /// Units the device has to move; `u32::MAX`: it never finishes.
        remaining: u32,
        /// The engine reports an error at this poll.
        error_at: Option<u32>,
        polls: u32,
        /// Polls before the deadline passes.
        deadline: u32,
        started: bool,
        /// The device's command is still open (it would move data into
        /// whatever table the engine is next started with).
        command_open: bool,
        /// The device comes back from a reset.
        resets_work: bool,
        resets: u32,
    }

    impl ModelChannel {
        fn new(remaining: u32) -> ModelChannel {
            ModelChannel {
                remaining,
                error_at: None,
                polls: 0,
                deadline: 100,
                started: false,
                command_open: true,
                resets_work: true,
                resets: 0,
            }
        }
    }

    impl DmaChannel for ModelChannel {
        fn engine_status(&mut self) -> u8 {
            self.polls += 1;
            if self.error_at == Some(self.polls) {
                return engine_status::ERROR;
            }
            if self.started && self.remaining > 0 {
                self.remaining -= 1;
                if self.remaining == 0 {
                    self.command_open = false;
                    self.started = false;
                }
            }
            if self.started { engine_status::ACTIVE } else { 0 }
        }
        fn engine_command(&mut self, value: u8) {
            self.started = value & engine::START != 0;
        }
        fn clear_engine_status(&mut self) {}
        fn deadline_passed(&mut self) -> bool {
            self.polls >= self.deadline
        }
        fn reset_device(&mut self) -> Result<(), AtaError> {
            self.resets += 1;
            if !self.resets_work {
                return Err(AtaError::Timeout);
            }
            self.command_open = false;
            Ok(())
        }
    }

    #[test]
    fn a_finished_transfer_leaves_the_engine_stopped() {
        let mut channel = ModelChannel::new(5);
        assert_eq!(run_transfer(&mut channel, engine::WRITE_TO_MEMORY), Ok(()));
        assert!(!channel.started && !channel.command_open);
        assert_eq!(channel.resets, 0, "nothing to abort");
    }

    /// Issue 8: a DMA transfer that timed out was stopped at the engine
    /// only; the device's command stayed open, ready to move data the next
    /// time the engine started, into pages that had returned to their
    /// owner (or the free pool) meanwhile. Now the command is aborted too.
    #[test]
    fn a_transfer_that_times_out_or_fails_is_stopped_and_its_command_aborted() {
        let mut hung = ModelChannel::new(u32::MAX);
        assert_eq!(run_transfer(&mut hung, engine::WRITE_TO_MEMORY), Err(AtaError::Timeout));
        assert!(!hung.started, "the engine is stopped");
        assert!(!hung.command_open, "the device's command is aborted");
        let mut failing = ModelChannel { error_at: Some(3), ..ModelChannel::new(50) };
        assert_eq!(run_transfer(&mut failing, 0), Err(AtaError::Dma));
        assert!(!failing.started && !failing.command_open);
        // A device that does not come back from the reset: the caller is
        // told, and must not start this engine again.
        let mut dead = ModelChannel { resets_work: false, ..ModelChannel::new(u32::MAX) };
        assert_eq!(run_transfer(&mut dead, 0), Err(AtaError::DmaStuck));
        assert!(!dead.started);
    }
}
