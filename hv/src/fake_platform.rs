//! A [`Platform`] over plain memory for host tests: frames in a map, one
//! thread's machine per test thread (tests run in parallel, each with its
//! own), and a record of what hvcore asked of the machine (kicks, wake-ups,
//! flushes, released vCPUs, interrupt lines, log lines).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use abi::Error;
use spin::mutex::TicketMutex;

use crate::log_ring::Level;
use crate::paging::TableMemory;
use crate::platform::{Platform, SCHEDULER_ENTRIES, VcpuSetup};
use crate::scheduler::Scheduler;

/// The fake machine's RAM, in frames (`total_pages`).
pub const TOTAL_PAGES: u64 = 1 << 20;
/// The fake machine's TSC: 2 GHz.
pub const TSC_KHZ: u64 = 2_000_000;

/// The fake machine.
pub struct Fake;

/// A fake vCPU: its instruction pointer and a frame standing for its VMCS
/// (so a vCPU never released shows as a frame never freed).
#[derive(Debug)]
pub struct FakeVcpu {
    pub rip: u64,
    pub frame: u64,
}

/// What the machine holds and what was asked of it.
#[derive(Default)]
pub struct State {
    pub frames: HashMap<u64, Box<[u64; 512]>>,
    pub next_frame: u64,
    /// Frames to hand out before allocation fails (`None`: no limit).
    pub frames_left: Option<u64>,
    pub this_cpu: usize,
    pub current_vcpu: usize,
    pub kicks: Vec<usize>,
    /// The home CPU named by each idle wake-up.
    pub idle_wakes: Vec<usize>,
    pub flushes: Vec<(u64, u64)>,
    pub released_vcpus: Vec<u64>,
    pub masked_lines: Vec<u8>,
    pub unmasked_lines: Vec<u8>,
    /// Lines `unmask_line` refuses.
    pub missing_lines: Vec<u8>,
    pub log: Vec<String>,
    /// The CPUs running domains (`online_cpus`).
    pub online_cpus: u64,
    /// `create_vcpu` refuses the state (as a CPU whose VM entry checks fail).
    pub refuse_vcpus: bool,
}

thread_local! {
    static STATE: RefCell<State> =
        RefCell::new(State { next_frame: 0x10_0000, online_cpus: 0b11, ..State::default() });
    static SCHEDULER: &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> =
        Box::leak(Box::new(TicketMutex::new(Scheduler::new(30_000, 1_000))));
}

/// Runs `f` on this thread's machine.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

impl State {
    fn word(&mut self, address: u64) -> &mut u64 {
        let frame = self.frames.get_mut(&(address & !0xfff)).expect("fake machine: address is not RAM");
        &mut frame[(address as usize & 0xfff) / 8]
    }
}

/// Table memory in the fake machine's frames.
pub struct FakeTables;

impl TableMemory for FakeTables {
    fn allocate_table(&mut self) -> Option<u64> {
        Fake::allocate_frame()
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        Fake::load(table + index as u64 * 8)
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        Fake::swap(table + index as u64 * 8, value);
    }
    fn free_table(&mut self, table: u64) {
        Fake::free_frame(table)
    }
}

impl Platform for Fake {
    type Vcpu = FakeVcpu;
    type Tables = FakeTables;

    fn tables() -> FakeTables {
        FakeTables
    }
    fn allocate_frame() -> Option<u64> {
        with(|state| {
            if let Some(left) = state.frames_left.as_mut() {
                *left = left.checked_sub(1)?;
            }
            let frame = state.next_frame;
            state.next_frame += 0x1000;
            state.frames.insert(frame, Box::new([0; 512]));
            Some(frame)
        })
    }
    fn free_frame(frame: u64) {
        with(|state| assert!(state.frames.remove(&frame).is_some(), "fake machine: freed {frame:#x} twice"));
    }
    fn copy_to(address: u64, bytes: &[u8]) -> bool {
        with(|state| {
            for (offset, byte) in bytes.iter().enumerate() {
                let at = address + offset as u64;
                let Some(frame) = state.frames.get_mut(&(at & !0xfff)) else { return false };
                let word = &mut frame[(at as usize & 0xfff) / 8];
                let shift = (at % 8) * 8;
                *word = (*word & !(0xff << shift)) | (*byte as u64) << shift;
            }
            true
        })
    }
    fn copy_from(address: u64, out: &mut [u8]) -> bool {
        with(|state| {
            for (offset, byte) in out.iter_mut().enumerate() {
                let at = address + offset as u64;
                let Some(frame) = state.frames.get(&(at & !0xfff)) else { return false };
                *byte = (frame[(at as usize & 0xfff) / 8] >> ((at % 8) * 8)) as u8;
            }
            true
        })
    }
    fn test_and_set_bit(address: u64, bit: u32) -> bool {
        with(|state| {
            let word = state.word(address);
            let was = *word & (1 << bit) != 0;
            *word |= 1 << bit;
            was
        })
    }
    fn test_and_clear_bit(address: u64, bit: u32) -> bool {
        with(|state| {
            let word = state.word(address);
            let was = *word & (1 << bit) != 0;
            *word &= !(1 << bit);
            was
        })
    }
    fn compare_exchange(address: u64, current: u64, new: u64) -> Result<u64, u64> {
        with(|state| {
            let word = state.word(address);
            if *word != current {
                return Err(*word);
            }
            *word = new;
            Ok(current)
        })
    }
    fn load(address: u64) -> u64 {
        with(|state| *state.word(address))
    }
    fn swap(address: u64, value: u64) -> u64 {
        with(|state| core::mem::replace(state.word(address), value))
    }
    fn this_cpu() -> usize {
        with(|state| state.this_cpu)
    }
    fn current_vcpu() -> usize {
        with(|state| state.current_vcpu)
    }
    fn kick(cpu: usize) {
        with(|state| state.kicks.push(cpu));
    }
    fn wake_idle_cpu(home: usize) {
        with(|state| state.idle_wakes.push(home));
    }
    fn flush_ept(root: u64, elsewhere: u64) {
        with(|state| state.flushes.push((root, elsewhere)));
    }
    fn create_vcpu(setup: &VcpuSetup) -> Result<FakeVcpu, Error> {
        if with(|state| state.refuse_vcpus) {
            return Err(Error::InvalidArgument);
        }
        let frame = Self::allocate_frame().ok_or(Error::OutOfMemory)?;
        Ok(FakeVcpu { rip: setup.context.rip, frame })
    }
    fn release_vcpu(vcpu: FakeVcpu) {
        Self::free_frame(vcpu.frame);
        with(|state| state.released_vcpus.push(vcpu.rip));
    }
    fn online_cpus() -> u64 {
        with(|state| state.online_cpus)
    }
    fn total_pages() -> u64 {
        TOTAL_PAGES
    }
    fn tsc_khz() -> u64 {
        TSC_KHZ
    }
    fn scheduler() -> &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> {
        SCHEDULER.with(|scheduler| *scheduler)
    }
    fn mask_line(line: u8) {
        with(|state| state.masked_lines.push(line));
    }
    fn unmask_line(line: u8) -> bool {
        with(|state| {
            state.unmasked_lines.push(line);
            !state.missing_lines.contains(&line)
        })
    }
    fn domain_text(id: abi::DomainId, text: &[u8], _: &mut crate::log_ring::LineBudget) {
        with(|state| state.log.push(format!("(d{id}) {}", String::from_utf8_lossy(text))));
    }
    fn log(level: Level, line: fmt::Arguments) {
        with(|state| state.log.push(format!("{level:?}: {line}")));
    }
}
