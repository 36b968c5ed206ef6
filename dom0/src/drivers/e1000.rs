//! dom0's driver for the Intel 82540EM (e1000, PCI 8086:100E): one receive
//! and one transmit ring of legacy descriptors in dom0's own static memory,
//! polled (see `interrupt_port` for the optional interrupt).
//!
//! The registers are reached through BAR0, mapped uncached with
//! `Physdev::MapMmio`; the device reads and writes descriptors and buffers by
//! machine address (`Physdev::Translate`), page by page: each ring and each
//! 2048-byte buffer lies inside one 4 KiB page. MMIO and DMA memory are only
//! touched through the small volatile / raw-pointer functions below, never
//! through Rust references. The device is trusted no more than a guest:
//! lengths it writes back are checked against the buffer (see
//! `dom0core::drivers::e1000_ring`), and every wait has a deadline.

use core::sync::atomic::{AtomicBool, Ordering, fence};

use abi::event::EventOp;
pub use dom0core::drivers::e1000_ring::NicStats;
use dom0core::drivers::e1000_ring::{
    self as ring, BUFFER_SIZE, DESCRIPTOR_DONE, DESCRIPTOR_SIZE, FRAME_MAX, FRAME_MIN, RxRing, RxWriteBack, TxRing,
    ctrl, eerd, interrupt, rctl, register, status, tctl,
};
use pv_drivers::hypercall;

use crate::drivers::pci::{self, PciDevice};

/// Intel's PCI vendor id and the 82540EM's device id.
const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_82540EM: u16 = 0x100e;
/// Size of the 82540EM's BAR0 (8254x SDM 4.1, table 4-2): all of it is mapped.
const BAR0_BYTES: u64 = 128 << 10;
/// Receive and transmit descriptors (a multiple of 8, so each ring's length
/// is a multiple of 128 bytes as RDLEN and TDLEN require).
const RX_SLOTS: usize = 32;
const TX_SLOTS: usize = 32;
/// Where each ring lies in the ring page (128-byte aligned).
const RX_RING_OFFSET: u64 = 0;
const TX_RING_OFFSET: u64 = 2048;
const PAGE_SIZE: u64 = abi::PAGE_SIZE;
/// Longest wait for the reset and for an EEPROM word.
const RESET_TIMEOUT_MS: u64 = 100;
/// TSC ticks per millisecond assumed when hv cannot say (a high guess, so
/// timeouts only get longer).
const FALLBACK_TICKS_PER_MS: u64 = 3_000_000;

/// The memory the device reaches by DMA: both descriptor rings in one page,
/// then the buffers, two to a page.
#[repr(C, align(4096))]
struct DmaMemory {
    rings: [u8; PAGE_SIZE as usize],
    rx_buffers: [[u8; BUFFER_SIZE]; RX_SLOTS],
    tx_buffers: [[u8; BUFFER_SIZE]; TX_SLOTS],
}

const _: () = assert!(RX_RING_OFFSET as usize + RX_SLOTS * DESCRIPTOR_SIZE <= TX_RING_OFFSET as usize);
const _: () = assert!(TX_RING_OFFSET as usize + TX_SLOTS * DESCRIPTOR_SIZE <= PAGE_SIZE as usize);
const _: () =
    assert!((RX_SLOTS * DESCRIPTOR_SIZE).is_multiple_of(128) && (TX_SLOTS * DESCRIPTOR_SIZE).is_multiple_of(128));
const _: () = assert!((PAGE_SIZE as usize).is_multiple_of(BUFFER_SIZE));

/// The DMA memory; only the one `E1000` that claimed it through `DMA_CLAIMED`
/// touches it, and only through raw pointers.
static mut DMA: DmaMemory = DmaMemory {
    rings: [0; PAGE_SIZE as usize],
    rx_buffers: [[0; BUFFER_SIZE]; RX_SLOTS],
    tx_buffers: [[0; BUFFER_SIZE]; TX_SLOTS],
};
static DMA_CLAIMED: AtomicBool = AtomicBool::new(false);

/// The NIC dom0 found, if any (probed once at start-up).
pub static NIC: spin::Mutex<Option<E1000>> = spin::Mutex::new(None);

/// `transmit` found no free descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxFull;

/// An initialised 82540EM.
pub struct E1000 {
    /// Address of BAR0 (identity-mapped in dom0's device window).
    registers: u64,
    mac: [u8; 6],
    /// Where it sits on the PCI bus: bus, device, function.
    location: (u8, u8, u8),
    /// dom0 addresses of the rings and of buffer 0 of each kind.
    rx_ring: u64,
    tx_ring: u64,
    rx_buffers: u64,
    tx_buffers: u64,
    /// Machine addresses of each buffer, as the device sees them.
    rx_machine: [u64; RX_SLOTS],
    tx_machine: [u64; TX_SLOTS],
    rx: RxRing<RX_SLOTS>,
    tx: TxRing<TX_SLOTS>,
    stats: NicStats,
    interrupt_port: Option<u32>,
    ticks_per_ms: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes a descriptor's two quadwords at dom0 address `slot`.
fn write_descriptor(slot: u64, [low, high]: [u64; 2]) {
    // SAFETY: `slot` is a 16-byte descriptor inside the ring page of DMA,
    // which this driver owns (DMA_CLAIMED); volatile, since the device reads
    // it, and through raw pointers only.
    unsafe {
        core::ptr::write_volatile(slot as *mut u64, low);
        core::ptr::write_volatile((slot + 8) as *mut u64, high);
    }
}

/// Reads the second quadword (status, length) of the descriptor at `slot`.
fn read_descriptor_high(slot: u64) -> u64 {
    // SAFETY: as for `write_descriptor`; the device may write the
    // descriptor at any time, which a volatile load of an aligned quadword
    // tolerates (it sees the old or the new value).
    unsafe { core::ptr::read_volatile((slot + 8) as *const u64) }
}

/// Finds the first 82540EM in `devices`, maps it and brings it up. `None`
/// when there is none; `Some(Err)` with the reason when it cannot be used.
pub fn probe(devices: &[PciDevice]) -> Option<Result<E1000, &'static str>> {
    let device = devices.iter().find(|d| d.vendor == VENDOR_INTEL && d.device_id == DEVICE_82540EM)?;
    Some(E1000::new(device))
}

impl E1000 {
    fn new(device: &PciDevice) -> Result<E1000, &'static str> {
        let base = pci::memory_bar(device, 0).ok_or("BAR0 is not a memory BAR")?;
        if base == 0 || !base.is_multiple_of(BAR0_BYTES) {
            return Err("BAR0 is not assigned");
        }
        hypercall::physdev_map_mmio(base, BAR0_BYTES / PAGE_SIZE).map_err(|_| "hv refused to map BAR0")?;
        if DMA_CLAIMED.swap(true, Ordering::Acquire) {
            return Err("a second e1000 is not supported");
        }
        let dma = &raw mut DMA as u64;
        let translate = |address: u64| hypercall::physdev_translate(address).map_err(|_| "hv refused to translate");
        let page_of = |index: usize| dma + PAGE_SIZE + (index * BUFFER_SIZE) as u64;
        let mut rx_machine = [0; RX_SLOTS];
        for (index, machine) in rx_machine.iter_mut().enumerate() {
            *machine = translate(page_of(index))?;
        }
        let mut tx_machine = [0; TX_SLOTS];
        for (index, machine) in tx_machine.iter_mut().enumerate() {
            *machine = translate(page_of(RX_SLOTS + index))?;
        }
        let rings_machine = translate(dma)?;
        let khz = hypercall::hv_info().map(|info| info.tsc_khz).unwrap_or(0);
        let mut nic = E1000 {
            registers: base,
            mac: [0; 6],
            location: (device.bus, device.device, device.function),
            rx_ring: dma + RX_RING_OFFSET,
            tx_ring: dma + TX_RING_OFFSET,
            rx_buffers: page_of(0),
            tx_buffers: page_of(RX_SLOTS),
            rx_machine,
            tx_machine,
            rx: RxRing::new(),
            tx: TxRing::new(),
            stats: NicStats::default(),
            interrupt_port: None,
            ticks_per_ms: if khz == 0 { FALLBACK_TICKS_PER_MS } else { khz },
        };
        pci::enable_memory_and_bus_master(device);
        nic.reset()?;
        nic.mac = nic.read_mac().ok_or("no valid MAC address")?;
        let (low, high) = ring::receive_address_for(nic.mac);
        nic.write(register::RAL0, low);
        nic.write(register::RAH0, high);
        for index in 0..register::MTA_ENTRIES {
            nic.write(register::MTA + index * 4, 0);
        }
        nic.start_receive(rings_machine + RX_RING_OFFSET);
        nic.start_transmit(rings_machine + TX_RING_OFFSET);
        // Link up: SLU with auto-speed detection; the PHY negotiates.
        let control = nic.read(register::CTRL);
        let cleared = ctrl::LINK_RESET | ctrl::PHY_RESET | ctrl::INVERT_LOSS_OF_SIGNAL | ctrl::VLAN_MODE;
        nic.write(register::CTRL, (control & !cleared) | ctrl::SET_LINK_UP | ctrl::AUTO_SPEED_DETECTION);
        nic.bind_interrupt(device.interrupt_line);
        Ok(nic)
    }

    fn read(&self, offset: u32) -> u32 {
        debug_assert!((offset as u64) < register::USED_BYTES && offset.is_multiple_of(4));
        // SAFETY: `registers` is BAR0, which `new` had hv map uncached into
        // dom0's device window (identity, in its page tables); every offset
        // is one of `register`'s, aligned and inside the 128 KiB BAR.
        // Aligned 32-bit volatile accesses are the device's interface.
        unsafe { core::ptr::read_volatile((self.registers + offset as u64) as *const u32) }
    }

    fn write(&self, offset: u32, value: u32) {
        debug_assert!((offset as u64) < register::USED_BYTES && offset.is_multiple_of(4));
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.registers + offset as u64) as *mut u32, value) }
    }

    fn deadline(&self, milliseconds: u64) -> u64 {
        rdtsc().saturating_add(milliseconds.saturating_mul(self.ticks_per_ms))
    }

    /// Global reset (8254x SDM 14.5): masks interrupts, resets, waits for
    /// RST to clear, masks again (reset unmasks) and clears pending causes.
    fn reset(&mut self) -> Result<(), &'static str> {
        self.write(register::IMC, u32::MAX);
        self.write(register::RCTL, 0);
        self.write(register::TCTL, 0);
        let control = self.read(register::CTRL);
        self.write(register::CTRL, control | ctrl::RESET);
        let deadline = self.deadline(RESET_TIMEOUT_MS);
        while self.read(register::CTRL) & ctrl::RESET != 0 {
            if rdtsc() > deadline {
                return Err("reset did not complete");
            }
            core::hint::spin_loop();
        }
        self.write(register::IMC, u32::MAX);
        let _ = self.read(register::ICR);
        Ok(())
    }

    /// The MAC from RAL0/RAH0 (loaded from the EEPROM at reset), else from
    /// the EEPROM itself.
    fn read_mac(&self) -> Option<[u8; 6]> {
        let loaded = ring::mac_from_receive_address(self.read(register::RAL0), self.read(register::RAH0));
        if let Some(mac) = loaded.filter(|mac| ring::is_unicast(*mac)) {
            return Some(mac);
        }
        let mut words = [0u16; 3];
        for (address, word) in words.iter_mut().enumerate() {
            *word = self.read_eeprom(address as u32)?;
        }
        Some(ring::mac_from_eeprom(words)).filter(|mac| ring::is_unicast(*mac))
    }

    fn read_eeprom(&self, address: u32) -> Option<u16> {
        self.write(register::EERD, eerd::START | address << eerd::ADDRESS_SHIFT);
        let deadline = self.deadline(RESET_TIMEOUT_MS);
        loop {
            let value = self.read(register::EERD);
            if value & eerd::DONE != 0 {
                return Some((value >> eerd::DATA_SHIFT) as u16);
            }
            if rdtsc() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Receive set-up (8254x SDM 14.4): every buffer given to the device
    /// but one, broadcast accepted, CRC stripped, 2048-byte buffers.
    fn start_receive(&mut self, ring_machine: u64) {
        for (index, machine) in self.rx_machine.iter().enumerate() {
            write_descriptor(self.rx_ring + (index * DESCRIPTOR_SIZE) as u64, ring::rx_descriptor(*machine));
        }
        self.write(register::RDBAL, ring_machine as u32);
        self.write(register::RDBAH, (ring_machine >> 32) as u32);
        self.write(register::RDLEN, (RX_SLOTS * DESCRIPTOR_SIZE) as u32);
        self.write(register::RDH, 0);
        // The descriptors above are in memory before the device may read them
        // (x86 keeps stores in order; this keeps the compiler from moving them).
        fence(Ordering::Release);
        self.write(register::RDT, RxRing::<RX_SLOTS>::initial_tail() as u32);
        self.write(
            register::RCTL,
            rctl::ENABLE
                | rctl::UNICAST_PROMISCUOUS
                | rctl::MULTICAST_PROMISCUOUS
                | rctl::BROADCAST_ACCEPT
                | rctl::STRIP_CRC
                | rctl::BUFFER_SIZE_2048
                | rctl::MINIMUM_THRESHOLD_HALF,
        );
    }

    /// Transmit set-up (8254x SDM 14.5): an empty ring, short packets padded.
    fn start_transmit(&mut self, ring_machine: u64) {
        for index in 0..TX_SLOTS {
            write_descriptor(self.tx_ring + (index * DESCRIPTOR_SIZE) as u64, [0, 0]);
        }
        self.write(register::TDBAL, ring_machine as u32);
        self.write(register::TDBAH, (ring_machine >> 32) as u32);
        self.write(register::TDLEN, (TX_SLOTS * DESCRIPTOR_SIZE) as u32);
        self.write(register::TDH, 0);
        self.write(register::TDT, 0);
        self.write(register::TIPG, ring::TIPG_COPPER);
        self.write(
            register::TCTL,
            tctl::ENABLE | tctl::PAD_SHORT_PACKETS | tctl::COLLISION_THRESHOLD | tctl::COLLISION_DISTANCE,
        );
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Bus, device and function on PCI.
    pub fn location(&self) -> (u8, u8, u8) {
        self.location
    }

    pub fn link_up(&self) -> bool {
        self.read(register::STATUS) & status::LINK_UP != 0
    }

    /// Reclaims the transmit descriptors the device has written back.
    fn reclaim_transmitted(&mut self) {
        let tx_ring = self.tx_ring;
        self.tx.reclaim(|slot| {
            let high = read_descriptor_high(tx_ring + (slot * DESCRIPTOR_SIZE) as u64);
            ring::tx_status(high) & DESCRIPTOR_DONE != 0
        });
    }

    /// Queues one Ethernet frame (14..=1514 bytes, no FCS); Err when the tx
    /// ring is full. A frame of another length is counted as dropped and
    /// refused the same way.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), TxFull> {
        if !(FRAME_MIN..=FRAME_MAX).contains(&frame.len()) {
            self.stats.tx_dropped += 1;
            return Err(TxFull);
        }
        let slot = match self.tx.free_slot() {
            Some(slot) => slot,
            None => {
                self.reclaim_transmitted();
                match self.tx.free_slot() {
                    Some(slot) => slot,
                    None => {
                        self.stats.tx_dropped += 1;
                        return Err(TxFull);
                    }
                }
            }
        };
        let buffer = self.tx_buffers + (slot * BUFFER_SIZE) as u64;
        // SAFETY: the slot's buffer is BUFFER_SIZE bytes of DMA memory this
        // driver owns, not in the device's hands (the ring gave the slot
        // out only after reclaiming it); frame.len() <= FRAME_MAX < BUFFER_SIZE.
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), buffer as *mut u8, frame.len()) };
        let descriptor = ring::tx_descriptor(self.tx_machine[slot], frame.len() as u16);
        write_descriptor(self.tx_ring + (slot * DESCRIPTOR_SIZE) as u64, descriptor);
        // The buffer and the descriptor are written before the tail moves
        // (x86 keeps stores in order; the fence stops the compiler).
        fence(Ordering::Release);
        let tail = self.tx.commit();
        self.write(register::TDT, tail as u32);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    /// Copies the next received frame into `out` (2048 bytes), returns its
    /// length; None when none is waiting. Bad descriptors are counted in
    /// `rx_errors`, recycled and skipped. Reclaims completed tx descriptors too.
    pub fn receive(&mut self, out: &mut [u8; BUFFER_SIZE]) -> Option<usize> {
        // First, so that a frame arriving after the descriptors were looked
        // at raises the line again.
        self.acknowledge_interrupt();
        self.reclaim_transmitted();
        // At most one pass over the ring, so a device that marks everything
        // done cannot keep dom0 here.
        for _ in 0..RX_SLOTS {
            let slot = self.rx.next();
            let descriptor = self.rx_ring + (slot * DESCRIPTOR_SIZE) as u64;
            let written = RxWriteBack::decode(read_descriptor_high(descriptor));
            if !written.done() {
                // Idle: collect the frames the device had no buffer for
                // (MPC clears on read).
                self.stats.rx_missed += self.read(register::MPC) as u64;
                return None;
            }
            // The buffer is read only after DD was seen.
            fence(Ordering::Acquire);
            let length = written.frame_length();
            if let Some(length) = length {
                let buffer = self.rx_buffers + (slot * BUFFER_SIZE) as u64;
                // SAFETY: the device has finished with this slot (DD) and gets
                // it back only below; length <= BUFFER_SIZE (frame_length).
                unsafe { core::ptr::copy_nonoverlapping(buffer as *const u8, out.as_mut_ptr(), length) };
            }
            write_descriptor(descriptor, ring::rx_descriptor(self.rx_machine[slot]));
            fence(Ordering::Release);
            let tail = self.rx.advance();
            self.write(register::RDT, tail as u32);
            match length {
                Some(length) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += length as u64;
                    return Some(length);
                }
                None => self.stats.rx_errors += 1,
            }
        }
        None
    }

    /// Counters for the `devices` shell listing.
    pub fn stats(&self) -> NicStats {
        self.stats
    }

    /// The event port the NIC's interrupt arrives on, if hv could bind its
    /// line. Whenever it fires, call `receive` (which also acknowledges the
    /// interrupt) until it returns None.
    pub fn interrupt_port(&self) -> Option<u32> {
        self.interrupt_port
    }

    /// Binds the PCI interrupt line firmware assigned to an event port and
    /// enables the interrupt causes dom0 handles. hv programs ISA lines
    /// edge-triggered while PCI INTx is a level: the device holds the line
    /// until ICR is read, so `receive` reads ICR first, which lets the line
    /// drop and gives the next cause a fresh edge.
    fn bind_interrupt(&mut self, line: u8) {
        if !(1..16).contains(&line) {
            return; // 0xFF: not connected; 0 and above 15: not an ISA line
        }
        if let Ok(port) = hypercall::event(EventOp::BindPirq, line as u64, 0) {
            self.interrupt_port = Some(port as u32);
            self.write(register::IMS, interrupt::ENABLED);
        }
    }

    /// Reads (and so clears) the interrupt causes when interrupts are on.
    fn acknowledge_interrupt(&mut self) {
        if self.interrupt_port.is_some() && self.read(register::ICR) != 0 {
            self.stats.interrupts += 1;
        }
    }
}
