//! A 4-level page-table builder shared by x86-64 paging (SDM 4.5) and EPT (SDM 29.3), over injected table memory.
//!
//! Both formats walk the same tree: a 4 KiB table of 512 eight-byte entries
//! at each of four levels, indexed by 9 bits of the input address each
//! (bits 47:39, 38:30, 29:21, 20:12). A level-3 entry may map a 1 GiB page
//! and a level-2 entry a 2 MiB page instead of pointing at the next table
//! (bit 7 in both formats). Only the entry bits differ, and those live behind
//! [`EntryFormat`].
//!
//! The tree holds one invariant: every table other than the root has at
//! least one present entry. `unmap` frees tables it empties and `map` frees
//! tables it created before failing, so a table pointer always means
//! "something is mapped below", and a large page can be mapped wherever
//! nothing is.
//!
//! Every mapping is readable: x86 paging cannot express a present page that
//! is not readable (SDM 4.6), and for EPT a write-only page is a
//! misconfiguration (SDM 29.3.3.1) while execute-only needs an optional CPU
//! feature Mica does not use. So `READ` is implied, and always reported back.

use core::marker::PhantomData;

/// Supplies and accesses the memory that page tables live in.
///
/// The hypervisor implements it over real frames; the tests over a hash map.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned table page's physical address, or `None`.
    fn allocate_table(&mut self) -> Option<u64>;
    /// Entry `index` (0..512) of the table at physical address `table`.
    fn read_entry(&self, table: u64, index: usize) -> u64;
    /// Stores entry `index` (0..512) of the table at physical address `table`.
    fn write_entry(&mut self, table: u64, index: usize, value: u64);
    /// Gives back a table page (used when tearing down).
    fn free_table(&mut self, table: u64);
}

/// The page sizes 4-level paging offers (SDM 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// A page mapped by a level-1 (page table) entry.
    Size4K,
    /// A page mapped by a level-2 (page directory) entry with bit 7 set.
    Size2M,
    /// A page mapped by a level-3 (PDPT) entry with bit 7 set; the CPU must
    /// support it (CPUID 8000_0001h:EDX bit 26, or the EPT capability MSR).
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// The tree level whose entries map pages of this size (1 = page table).
    const fn level(self) -> usize {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The size mapped by a leaf at `level`, if that level can hold leaves.
    const fn at_level(level: usize) -> Option<Self> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// What a mapping allows.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Access: u8 {
        /// Reads; implied for every mapping (see the module doc).
        const READ = 1;
        /// Writes.
        const WRITE = 2;
        /// Instruction fetches.
        const EXECUTE = 4;
        /// Access from user mode (CPL 3); x86 paging only, ignored by EPT.
        const USER = 8;
    }
}

/// The memory type of a mapping. The values are the EPT memory type encoding
/// (SDM 29.3.7); x86 paging expresses `Uncacheable` with PCD|PWT instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// UC: for MMIO, every access goes to the device in program order.
    Uncacheable = 0,
    /// WB: for ordinary RAM.
    WriteBack = 6,
}

/// Why a mapping operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// An address or length is not a multiple of the page size in question.
    Misaligned,
    /// The input address is not canonical (x86) or not below 2^48 (EPT).
    NonCanonical,
    /// Something is already mapped where the new page would go.
    AlreadyMapped,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The table memory ran out.
    OutOfTables,
    /// An address plus a length wraps around, or a physical address does not
    /// fit the 52 bits an entry can hold.
    Overflow,
}

impl From<MapError> for abi::Error {
    /// The ABI's error for a mapping of guest memory that failed: `Busy`
    /// when something is mapped there (RAM or another mapping),
    /// `OutOfMemory` when no table was left, else `InvalidArgument`.
    fn from(error: MapError) -> abi::Error {
        match error {
            MapError::AlreadyMapped => abi::Error::Busy,
            MapError::OutOfTables => abi::Error::OutOfMemory,
            _ => abi::Error::InvalidArgument,
        }
    }
}

/// Entries per table.
const ENTRIES: usize = 512;
/// The root's level: the PML4 (or EPT PML4).
const ROOT_LEVEL: usize = 4;
/// Bit 7: in a level-2 or level-3 entry, the entry maps a page rather than a
/// table (PS in SDM 4.5, bit 7 of EPT entries in SDM 29.3.2).
const LARGE_PAGE: u64 = 1 << 7;
/// Physical addresses in entries are at most 52 bits (MAXPHYADDR, SDM 4.1.4).
const PHYSICAL_ADDRESS_LIMIT: u64 = 1 << 52;
/// Bits 51:12 of an entry: the address of a table or a 4 KiB page.
const ADDRESS_MASK: u64 = (PHYSICAL_ADDRESS_LIMIT - 1) & !0xfff;

/// The physical address field of an entry mapping a page of `size`, or of a
/// table when `size` is 4K. The low bits of large leaves are cleared because
/// they hold flags (the PAT bit 12 on x86) or must be zero.
const fn address_of(entry: u64, size: PageSize) -> u64 {
    entry & ADDRESS_MASK & !(size.bytes() - 1)
}

/// The 9-bit index into a table at `level` for input address `virt`.
const fn index_of(virt: u64, level: usize) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & (ENTRIES as u64 - 1)) as usize
}

/// How one paging structure encodes its entries.
///
/// The tree shape, bit 7 as the large-page bit and the address field in bits
/// 51:12 are common to both formats and handled by [`PageTable`]; an
/// implementation only says what the permission and type bits are.
pub trait EntryFormat {
    /// Checks that `virt` is an input address this structure can translate.
    fn check_input_address(virt: u64) -> Result<(), MapError>;

    /// An entry pointing at the next-level table at physical `table`.
    fn table_entry(table: u64) -> u64;

    /// A leaf entry mapping the page of `size` at physical `phys`.
    fn leaf_entry(phys: u64, size: PageSize, access: Access, memory_type: MemoryType) -> u64;

    /// Whether `entry` maps a table or a page (as opposed to nothing).
    fn is_present(entry: u64) -> bool;

    /// The access a present leaf entry grants.
    fn leaf_access(entry: u64) -> Access;
}

/// x86-64 4-level paging (SDM 4.5).
///
/// Leaves: P (bit 0) always, R/W (bit 1) for `WRITE`, U/S (bit 2) for
/// `USER`, PWT|PCD (bits 3, 4) for `Uncacheable` (PAT entry 3, UC, with the
/// power-on PAT), PS (bit 7) on 2 MiB and 1 GiB leaves, and XD (bit 63)
/// without `EXECUTE`; XD needs IA32_EFER.NXE set, or the entry is reserved.
/// Table entries set P|R/W|U/S so that the leaf alone decides: the CPU
/// grants the intersection of every level's rights (SDM 4.6).
#[derive(Debug)]
pub struct X86Paging;

/// x86 paging entry bits (SDM 4.5).
mod x86_bits {
    /// P: the entry maps a table or a page.
    pub const PRESENT: u64 = 1 << 0;
    /// R/W: writes are allowed.
    pub const WRITABLE: u64 = 1 << 1;
    /// U/S: user-mode (CPL 3) accesses are allowed.
    pub const USER: u64 = 1 << 2;
    /// PWT: with PCD, selects PAT entry 3 (UC in the power-on PAT).
    pub const WRITE_THROUGH: u64 = 1 << 3;
    /// PCD: see `WRITE_THROUGH`.
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// XD: instruction fetches are not allowed (needs IA32_EFER.NXE).
    pub const EXECUTE_DISABLE: u64 = 1 << 63;
}

impl EntryFormat for X86Paging {
    /// Canonical: bits 63:47 all equal (SDM Vol. 1 3.3.7.1).
    fn check_input_address(virt: u64) -> Result<(), MapError> {
        let upper = virt >> 47;
        if upper == 0 || upper == (1 << 17) - 1 { Ok(()) } else { Err(MapError::NonCanonical) }
    }

    fn table_entry(table: u64) -> u64 {
        table | x86_bits::PRESENT | x86_bits::WRITABLE | x86_bits::USER
    }

    fn leaf_entry(phys: u64, size: PageSize, access: Access, memory_type: MemoryType) -> u64 {
        let mut entry = phys | x86_bits::PRESENT;
        if access.contains(Access::WRITE) {
            entry |= x86_bits::WRITABLE;
        }
        if access.contains(Access::USER) {
            entry |= x86_bits::USER;
        }
        if !access.contains(Access::EXECUTE) {
            entry |= x86_bits::EXECUTE_DISABLE;
        }
        if memory_type == MemoryType::Uncacheable {
            entry |= x86_bits::WRITE_THROUGH | x86_bits::CACHE_DISABLE;
        }
        if size != PageSize::Size4K {
            entry |= LARGE_PAGE;
        }
        entry
    }

    fn is_present(entry: u64) -> bool {
        entry & x86_bits::PRESENT != 0
    }

    fn leaf_access(entry: u64) -> Access {
        let mut access = Access::READ;
        access.set(Access::WRITE, entry & x86_bits::WRITABLE != 0);
        access.set(Access::USER, entry & x86_bits::USER != 0);
        access.set(Access::EXECUTE, entry & x86_bits::EXECUTE_DISABLE == 0);
        access
    }
}

/// Extended page tables, mapping guest-physical to host-physical (SDM 29.3.2).
///
/// Leaves: read (bit 0) always, write (bit 1), execute (bit 2), the memory
/// type in bits 5:3, and bit 7 on 2 MiB and 1 GiB leaves. Ignore-PAT (bit 6)
/// is set on `Uncacheable` leaves only: MMIO must stay UC whatever the
/// guest's PAT says, while a guest may still choose a weaker type than WB for
/// its own RAM (SDM 29.3.7.2). So a WB RWX 4 KiB leaf is `phys | 0x37` and a
/// UC one `phys | 0x47`. Table entries are R|W|X (`table | 7`); `USER` is
/// ignored since EPT has no user bit (without mode-based execute control).
#[derive(Debug)]
pub struct Ept;

/// EPT entry bits (SDM 29.3.2).
mod ept_bits {
    /// Reads are allowed.
    pub const READ: u64 = 1 << 0;
    /// Writes are allowed.
    pub const WRITE: u64 = 1 << 1;
    /// Instruction fetches are allowed (supervisor-mode ones, with mode-based execute control).
    pub const EXECUTE: u64 = 1 << 2;
    /// Leaves: bits 5:3 hold the EPT memory type (SDM 29.3.7).
    pub const MEMORY_TYPE_SHIFT: u32 = 3;
    /// Leaves: the memory type ignores the guest PAT (SDM 29.3.7.2).
    pub const IGNORE_PAT: u64 = 1 << 6;
}

/// EPT input addresses are guest-physical and must be below 2^48 for a
/// 4-level walk (SDM 29.3.2).
const EPT_INPUT_LIMIT: u64 = 1 << 48;

impl EntryFormat for Ept {
    fn check_input_address(virt: u64) -> Result<(), MapError> {
        if virt < EPT_INPUT_LIMIT { Ok(()) } else { Err(MapError::NonCanonical) }
    }

    fn table_entry(table: u64) -> u64 {
        table | ept_bits::READ | ept_bits::WRITE | ept_bits::EXECUTE
    }

    fn leaf_entry(phys: u64, size: PageSize, access: Access, memory_type: MemoryType) -> u64 {
        let mut entry = phys | ept_bits::READ | ((memory_type as u64) << ept_bits::MEMORY_TYPE_SHIFT);
        if access.contains(Access::WRITE) {
            entry |= ept_bits::WRITE;
        }
        if access.contains(Access::EXECUTE) {
            entry |= ept_bits::EXECUTE;
        }
        if memory_type == MemoryType::Uncacheable {
            entry |= ept_bits::IGNORE_PAT;
        }
        if size != PageSize::Size4K {
            entry |= LARGE_PAGE;
        }
        entry
    }

    /// An EPT entry is present if any of bits 2:0 is set (SDM 29.3.2).
    fn is_present(entry: u64) -> bool {
        entry & (ept_bits::READ | ept_bits::WRITE | ept_bits::EXECUTE) != 0
    }

    fn leaf_access(entry: u64) -> Access {
        let mut access = Access::READ;
        access.set(Access::WRITE, entry & ept_bits::WRITE != 0);
        access.set(Access::EXECUTE, entry & ept_bits::EXECUTE != 0);
        access
    }
}

/// Tables created by one `map` call, at most one per level below the root,
/// kept so that a failure can remove them again.
struct CreatedTables {
    /// (parent table, index in the parent, new table), top-down.
    tables: [(u64, usize, u64); ROOT_LEVEL - 1],
    /// How many of `tables` are filled.
    count: usize,
}

/// A 4-level paging structure of format `F`, owning its table pages (but not
/// the frames it maps). Give the same [`TableMemory`] to every call.
#[derive(Debug)]
pub struct PageTable<F: EntryFormat> {
    /// Physical address of the root (PML4 or EPT PML4) table.
    root: u64,
    /// Pages unmapped so far (see [`PageTable::unmaps`]).
    unmaps: u64,
    format: PhantomData<F>,
}

impl<F: EntryFormat> PageTable<F> {
    /// An empty structure: just a zeroed root table.
    pub fn new(memory: &mut impl TableMemory) -> Result<Self, MapError> {
        let root = memory.allocate_table().ok_or(MapError::OutOfTables)?;
        Ok(Self { root, unmaps: 0, format: PhantomData })
    }

    /// Adopts tables that already exist at `root` (built elsewhere, for
    /// example in a guest's memory), to walk or extend them.
    pub const fn from_root(root: u64) -> Self {
        Self { root, unmaps: 0, format: PhantomData }
    }

    /// Physical address of the root table, for CR3 or the EPT pointer.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// How many pages were unmapped so far. Only `unmap` takes a
    /// translation away (`map` refuses to replace one), so a translation
    /// read while this count had some value holds as long as it keeps it.
    pub fn unmaps(&self) -> u64 {
        self.unmaps
    }

    /// Maps one page of `size` at input address `virt` to physical `phys`.
    /// Both must be aligned to `size`, and `virt` must be canonical (x86) or
    /// below 2^48 (EPT). Fails with `AlreadyMapped` if any part of the page
    /// is mapped already; on any failure the structure is left as it was.
    pub fn map(
        &mut self,
        memory: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        size: PageSize,
        access: Access,
        memory_type: MemoryType,
    ) -> Result<(), MapError> {
        if !virt.is_multiple_of(size.bytes()) || !phys.is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        F::check_input_address(virt)?;
        if phys >= PHYSICAL_ADDRESS_LIMIT {
            return Err(MapError::Overflow);
        }

        let mut created = CreatedTables { tables: [(0, 0, 0); ROOT_LEVEL - 1], count: 0 };
        let mut table = self.root;
        for level in (size.level() + 1..=ROOT_LEVEL).rev() {
            let index = index_of(virt, level);
            let entry = memory.read_entry(table, index);
            if !F::is_present(entry) {
                let Some(next) = memory.allocate_table() else {
                    Self::remove_created(memory, &created);
                    return Err(MapError::OutOfTables);
                };
                memory.write_entry(table, index, F::table_entry(next));
                if let Some(slot) = created.tables.get_mut(created.count) {
                    *slot = (table, index, next);
                    created.count += 1;
                }
                table = next;
            } else if Self::is_leaf(entry, level) {
                // A larger page covers this one; nothing was created yet,
                // since a fresh table cannot hold a leaf.
                return Err(MapError::AlreadyMapped);
            } else {
                table = address_of(entry, PageSize::Size4K);
            }
        }

        let index = index_of(virt, size.level());
        // Present here means a leaf or a table with something mapped in it.
        // Again nothing was created, or this entry would be in a fresh table.
        if F::is_present(memory.read_entry(table, index)) {
            return Err(MapError::AlreadyMapped);
        }
        memory.write_entry(table, index, F::leaf_entry(phys, size, access, memory_type));
        Ok(())
    }

    /// Maps `[virt, virt + length)` to `[phys, phys + length)` with the
    /// largest pages that the alignment of both addresses and the remaining
    /// length allow, up to `largest` (so callers can forbid 1 GiB pages).
    /// `virt`, `phys` and `length` must be multiples of 4 KiB. On failure,
    /// everything this call mapped is unmapped again.
    #[allow(clippy::too_many_arguments)] // the two addresses, length and attributes are all needed
    pub fn map_range(
        &mut self,
        memory: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        length: u64,
        access: Access,
        memory_type: MemoryType,
        largest: PageSize,
    ) -> Result<(), MapError> {
        let small = PageSize::Size4K.bytes();
        if !virt.is_multiple_of(small) || !phys.is_multiple_of(small) || !length.is_multiple_of(small) {
            return Err(MapError::Misaligned);
        }
        if virt.checked_add(length).is_none() || phys.checked_add(length).is_none() {
            return Err(MapError::Overflow);
        }

        let mut offset = 0;
        while offset < length {
            let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
                .into_iter()
                .filter(|size| size.bytes() <= largest.bytes())
                .find(|size| {
                    let bytes = size.bytes();
                    (virt + offset).is_multiple_of(bytes)
                        && (phys + offset).is_multiple_of(bytes)
                        && length - offset >= bytes
                })
                .unwrap_or(PageSize::Size4K);
            if let Err(error) = self.map(memory, virt + offset, phys + offset, size, access, memory_type) {
                self.unmap_mapped_prefix(memory, virt, offset);
                return Err(error);
            }
            offset += size.bytes();
        }
        Ok(())
    }

    /// Undoes the first `length` bytes of a `map_range` from `virt`, page by
    /// page as it mapped them.
    fn unmap_mapped_prefix(&mut self, memory: &mut impl TableMemory, virt: u64, length: u64) {
        let mut offset = 0;
        while offset < length {
            match self.unmap(memory, virt + offset) {
                Ok((_, size)) => offset += size.bytes(),
                // Cannot happen: this call just mapped it. Step on regardless.
                Err(_) => offset += PageSize::Size4K.bytes(),
            }
        }
    }

    /// Unmaps the page containing `virt` and frees any tables that become
    /// empty; returns that page's physical base and size. The caller must
    /// flush the TLB (INVLPG / INVEPT) before reusing the frame.
    pub fn unmap(&mut self, memory: &mut impl TableMemory, virt: u64) -> Result<(u64, PageSize), MapError> {
        F::check_input_address(virt)?;
        // The tables on the path, root first, to climb back up while freeing.
        let mut path = [(0u64, 0usize); ROOT_LEVEL];
        let mut table = self.root;
        for level in (1..=ROOT_LEVEL).rev() {
            let index = index_of(virt, level);
            let entry = memory.read_entry(table, index);
            let depth = ROOT_LEVEL - level;
            if let Some(step) = path.get_mut(depth) {
                *step = (table, index);
            }
            if !F::is_present(entry) {
                return Err(MapError::NotMapped);
            }
            if let Some(size) = PageSize::at_level(level).filter(|_| Self::is_leaf(entry, level)) {
                memory.write_entry(table, index, 0);
                self.unmaps += 1;
                self.free_empty_tables(memory, path.get(..=depth).unwrap_or(&[]));
                return Ok((address_of(entry, size), size));
            }
            table = address_of(entry, PageSize::Size4K);
        }
        Err(MapError::NotMapped)
    }

    /// After an entry in the last table of `path` was cleared, frees that
    /// table and its ancestors as long as they are empty (never the root).
    fn free_empty_tables(&mut self, memory: &mut impl TableMemory, path: &[(u64, usize)]) {
        for pair in path.windows(2).rev() {
            let [(parent, parent_index), (table, _)] = [pair[0], pair[1]];
            if (0..ENTRIES).any(|index| F::is_present(memory.read_entry(table, index))) {
                return;
            }
            memory.write_entry(parent, parent_index, 0);
            memory.free_table(table);
        }
    }

    /// Removes the tables a failed `map` created, bottom-up.
    fn remove_created(memory: &mut impl TableMemory, created: &CreatedTables) {
        for &(parent, index, table) in created.tables.iter().take(created.count).rev() {
            memory.write_entry(parent, index, 0);
            memory.free_table(table);
        }
    }

    /// Walks the tables for `virt`: the physical address it translates to
    /// (page base plus the offset within the page), the page's access and
    /// its size; `None` if unmapped or not a valid input address.
    pub fn translate(&self, memory: &impl TableMemory, virt: u64) -> Option<(u64, Access, PageSize)> {
        F::check_input_address(virt).ok()?;
        let (_, _, entry, size) = self.walk(memory, virt)?;
        Some((address_of(entry, size) | (virt & (size.bytes() - 1)), F::leaf_access(entry), size))
    }

    /// Follows `virt` down from the root to a present leaf: the table holding
    /// it, its index there, the entry and the page size. `None` at a hole.
    fn walk(&self, memory: &impl TableMemory, virt: u64) -> Option<(u64, usize, u64, PageSize)> {
        let mut table = self.root;
        for level in (1..=ROOT_LEVEL).rev() {
            let index = index_of(virt, level);
            let entry = memory.read_entry(table, index);
            if !F::is_present(entry) {
                return None;
            }
            if let Some(size) = PageSize::at_level(level).filter(|_| Self::is_leaf(entry, level)) {
                return Some((table, index, entry, size));
            }
            table = address_of(entry, PageSize::Size4K);
        }
        None
    }

    /// Whether a present `entry` at `level` maps a page: always at level 1,
    /// with bit 7 at levels 2 and 3, never at the root (bit 7 is reserved there).
    fn is_leaf(entry: u64, level: usize) -> bool {
        match level {
            1 => true,
            2 | 3 => entry & LARGE_PAGE != 0,
            _ => false,
        }
    }

    /// Frees every table page (not the mapped frames), consuming the table.
    /// Flush any TLB entries that cached it before reusing the pages.
    pub fn destroy(self, memory: &mut impl TableMemory) {
        Self::free_subtree(memory, self.root, ROOT_LEVEL);
    }

    /// Frees `table` at `level` and all tables below it.
    fn free_subtree(memory: &mut impl TableMemory, table: u64, level: usize) {
        if level > 1 {
            for index in 0..ENTRIES {
                let entry = memory.read_entry(table, index);
                if F::is_present(entry) && !Self::is_leaf(entry, level) {
                    Self::free_subtree(memory, address_of(entry, PageSize::Size4K), level - 1);
                }
            }
        }
        memory.free_table(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Table memory backed by a hash map, counting what it hands out, and
    /// optionally refusing after a number of tables.
    #[derive(Default)]
    struct TestMemory {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
        allocated: usize,
        freed: usize,
        limit: Option<usize>,
    }

    impl TestMemory {
        fn new() -> Self {
            Self { next: 0x10_0000, ..Self::default() }
        }

        fn with_limit(limit: usize) -> Self {
            Self { limit: Some(limit), ..Self::new() }
        }

        fn live(&self) -> usize {
            self.tables.len()
        }
    }

    impl TableMemory for TestMemory {
        fn allocate_table(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|limit| self.allocated >= limit) {
                return None;
            }
            let address = self.next;
            self.next += 0x1000;
            self.allocated += 1;
            self.tables.insert(address, [0; 512]);
            Some(address)
        }

        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.tables.get(&table).expect("read from a table that is not live")[index]
        }

        fn write_entry(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).expect("write to a table that is not live")[index] = value;
        }

        fn free_table(&mut self, table: u64) {
            assert!(self.tables.remove(&table).is_some(), "double free of table {table:#x}");
            self.freed += 1;
        }
    }

    const RWX: Access = Access::READ.union(Access::WRITE).union(Access::EXECUTE);
    const KIB4: u64 = 0x1000;
    const MIB2: u64 = 0x20_0000;
    const GIB1: u64 = 0x4000_0000;

    /// The raw leaf entry for `virt`, read table by table.
    fn raw_leaf<F: EntryFormat>(table: &PageTable<F>, memory: &TestMemory, virt: u64) -> u64 {
        let (table, index, _, _) = table.walk(memory, virt).expect("no leaf");
        memory.read_entry(table, index)
    }

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::Size4K.bytes(), 4096);
        assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
    }

    #[test]
    fn ept_leaf_bits() {
        let mut memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        ept.map(&mut memory, 0x5000, 0x1234_5000, PageSize::Size4K, RWX, MemoryType::WriteBack).unwrap();
        // R|W|X = 0x7, WB (6) << 3 = 0x30, ignore-PAT clear.
        assert_eq!(raw_leaf(&ept, &memory, 0x5000), 0x1234_5000 | 0x37);
        ept.map(
            &mut memory,
            0x6000,
            0xfee0_0000,
            PageSize::Size4K,
            Access::READ | Access::WRITE,
            MemoryType::Uncacheable,
        )
        .unwrap();
        // R|W = 0x3, UC = 0, ignore-PAT 0x40.
        assert_eq!(raw_leaf(&ept, &memory, 0x6000), 0xfee0_0000 | 0x43);
        ept.map(
            &mut memory,
            3 * MIB2,
            7 * MIB2,
            PageSize::Size2M,
            Access::READ | Access::EXECUTE,
            MemoryType::WriteBack,
        )
        .unwrap();
        // R|X = 0x5, WB 0x30, large 0x80.
        assert_eq!(raw_leaf(&ept, &memory, 3 * MIB2), (7 * MIB2) | 0xb5);
        ept.map(&mut memory, 2 * GIB1, 5 * GIB1, PageSize::Size1G, Access::READ, MemoryType::WriteBack).unwrap();
        assert_eq!(raw_leaf(&ept, &memory, 2 * GIB1), (5 * GIB1) | 0xb1);
        // Table entries are R|W|X.
        let root_entry = memory.read_entry(ept.root(), 0);
        assert_eq!(root_entry & 0xfff, 0x7);
        // USER means nothing to EPT.
        ept.map(&mut memory, 0x7000, 0x7000, PageSize::Size4K, RWX | Access::USER, MemoryType::WriteBack).unwrap();
        assert_eq!(raw_leaf(&ept, &memory, 0x7000), 0x7000 | 0x37);
        assert_eq!(ept.translate(&memory, 0x7000), Some((0x7000, RWX, PageSize::Size4K)));
    }

    #[test]
    fn x86_leaf_bits() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let kernel = 0xffff_8000_0000_0000;
        table.map(&mut memory, kernel, 0x20_0000, PageSize::Size4K, RWX, MemoryType::WriteBack).unwrap();
        // P|RW, executable: no XD.
        assert_eq!(raw_leaf(&table, &memory, kernel), 0x20_0000 | 0x3);
        table
            .map(&mut memory, kernel + KIB4, 0x21_0000, PageSize::Size4K, Access::READ, MemoryType::WriteBack)
            .unwrap();
        assert_eq!(raw_leaf(&table, &memory, kernel + KIB4), 0x21_0000 | 0x1 | 1 << 63);
        table
            .map(
                &mut memory,
                kernel + 2 * KIB4,
                0xfec0_0000,
                PageSize::Size4K,
                Access::READ | Access::WRITE,
                MemoryType::Uncacheable,
            )
            .unwrap();
        // P|RW|PWT|PCD|XD.
        assert_eq!(raw_leaf(&table, &memory, kernel + 2 * KIB4), 0xfec0_0000 | 0x1b | 1 << 63);
        table.map(&mut memory, MIB2, MIB2, PageSize::Size2M, RWX | Access::USER, MemoryType::WriteBack).unwrap();
        // P|RW|US|PS.
        assert_eq!(raw_leaf(&table, &memory, MIB2), MIB2 | 0x87);
        table
            .map(&mut memory, GIB1, 3 * GIB1, PageSize::Size1G, Access::READ | Access::EXECUTE, MemoryType::WriteBack)
            .unwrap();
        assert_eq!(raw_leaf(&table, &memory, GIB1), (3 * GIB1) | 0x81);
        // Table entries grant everything; the leaves decide.
        assert_eq!(memory.read_entry(table.root(), 256) & 0xfff, 0x7);
        assert_eq!(memory.read_entry(table.root(), 256) & (1 << 63), 0);
    }

    #[test]
    fn translate_reports_address_access_and_size() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let kernel = 0xffff_ffff_8000_0000;
        table
            .map(
                &mut memory,
                kernel,
                0x40_0000,
                PageSize::Size2M,
                Access::READ | Access::EXECUTE,
                MemoryType::WriteBack,
            )
            .unwrap();
        assert_eq!(
            table.translate(&memory, kernel + 0x1_2345),
            Some((0x41_2345, Access::READ | Access::EXECUTE, PageSize::Size2M))
        );
        table
            .map(&mut memory, 0x1000, 0x9000, PageSize::Size4K, Access::WRITE | Access::USER, MemoryType::WriteBack)
            .unwrap();
        // READ is implied.
        assert_eq!(
            table.translate(&memory, 0x1fff),
            Some((0x9fff, Access::READ | Access::WRITE | Access::USER, PageSize::Size4K))
        );
        assert_eq!(table.translate(&memory, 0x2000), None);
        assert_eq!(table.translate(&memory, 0), None);
        assert_eq!(table.translate(&memory, 0x8000_0000_0000), None);
        let mut ept_memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut ept_memory).unwrap();
        ept.map(&mut ept_memory, 4 * GIB1, GIB1, PageSize::Size1G, RWX, MemoryType::WriteBack).unwrap();
        assert_eq!(ept.translate(&ept_memory, 4 * GIB1 + 0x3fff_ffff), Some((2 * GIB1 - 1, RWX, PageSize::Size1G)));
        assert_eq!(ept.translate(&ept_memory, 1 << 48), None);
    }

    #[test]
    fn map_range_uses_large_pages_inside_and_small_at_edges() {
        let mut memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        // 0x1f_e000 .. 0x60_3000: two 4K pages, then 2M pages, then three 4K pages.
        let start = MIB2 - 2 * KIB4;
        let end = 3 * MIB2 + 3 * KIB4;
        ept.map_range(&mut memory, start, start, end - start, RWX, MemoryType::WriteBack, PageSize::Size1G).unwrap();
        let mut address = start;
        let mut sizes = Vec::new();
        while address < end {
            let (phys, access, size) = ept.translate(&memory, address).unwrap();
            assert_eq!(phys, address);
            assert_eq!(access, RWX);
            sizes.push(size);
            address += size.bytes();
        }
        use PageSize::*;
        assert_eq!(sizes, [Size4K, Size4K, Size2M, Size2M, Size4K, Size4K, Size4K]);
        assert_eq!(ept.translate(&memory, start - 1), None);
        assert_eq!(ept.translate(&memory, end), None);
    }

    #[test]
    fn map_range_needs_both_addresses_aligned() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        // Virtual 2M-aligned, physical only 4K-aligned: 4K pages only.
        table.map_range(&mut memory, MIB2, MIB2 + KIB4, MIB2, RWX, MemoryType::WriteBack, PageSize::Size1G).unwrap();
        assert_eq!(table.translate(&memory, MIB2).unwrap().2, PageSize::Size4K);
        assert_eq!(table.translate(&memory, 2 * MIB2 - 1).unwrap().0, 2 * MIB2 + KIB4 - 1);
    }

    #[test]
    fn map_range_respects_largest() {
        let mut memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        ept.map_range(&mut memory, 0, 0, 2 * GIB1, RWX, MemoryType::WriteBack, PageSize::Size1G).unwrap();
        assert_eq!(ept.translate(&memory, GIB1).unwrap().2, PageSize::Size1G);
        ept.map_range(&mut memory, 4 * GIB1, 4 * GIB1, GIB1, RWX, MemoryType::WriteBack, PageSize::Size2M).unwrap();
        assert_eq!(ept.translate(&memory, 4 * GIB1).unwrap().2, PageSize::Size2M);
        ept.map_range(&mut memory, 8 * GIB1, 8 * GIB1, MIB2, RWX, MemoryType::WriteBack, PageSize::Size4K).unwrap();
        assert_eq!(ept.translate(&memory, 8 * GIB1 + MIB2 - 1).unwrap().2, PageSize::Size4K);
        // Zero length maps nothing.
        ept.map_range(&mut memory, 9 * GIB1, 0, 0, RWX, MemoryType::WriteBack, PageSize::Size1G).unwrap();
        assert_eq!(ept.translate(&memory, 9 * GIB1), None);
    }

    #[test]
    fn already_mapped_in_every_shape() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        table.map(&mut memory, 0x40_1000, 0x1000, PageSize::Size4K, RWX, wb).unwrap();
        // Same page again.
        assert_eq!(table.map(&mut memory, 0x40_1000, 0x2000, PageSize::Size4K, RWX, wb), Err(MapError::AlreadyMapped));
        // A 2M page over a 4K page.
        assert_eq!(table.map(&mut memory, 0x40_0000, 0, PageSize::Size2M, RWX, wb), Err(MapError::AlreadyMapped));
        // A 1G page over it.
        assert_eq!(table.map(&mut memory, 0, 0, PageSize::Size1G, RWX, wb), Err(MapError::AlreadyMapped));
        // A 4K page under a 2M page, and under a 1G page.
        table.map(&mut memory, 0x80_0000, 0, PageSize::Size2M, RWX, wb).unwrap();
        assert_eq!(table.map(&mut memory, 0x80_5000, 0, PageSize::Size4K, RWX, wb), Err(MapError::AlreadyMapped));
        table.map(&mut memory, GIB1, 0, PageSize::Size1G, RWX, wb).unwrap();
        assert_eq!(table.map(&mut memory, GIB1 + MIB2, 0, PageSize::Size2M, RWX, wb), Err(MapError::AlreadyMapped));
        assert_eq!(table.map(&mut memory, GIB1 + KIB4, 0, PageSize::Size4K, RWX, wb), Err(MapError::AlreadyMapped));
        // The failed calls left no tables behind.
        let live = memory.live();
        assert_eq!(table.map(&mut memory, GIB1 + 7 * KIB4, 0, PageSize::Size4K, RWX, wb), Err(MapError::AlreadyMapped));
        assert_eq!(memory.live(), live);
    }

    #[test]
    fn misaligned_and_out_of_range_addresses() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        assert_eq!(table.map(&mut memory, 0x1001, 0, PageSize::Size4K, RWX, wb), Err(MapError::Misaligned));
        assert_eq!(table.map(&mut memory, 0x1000, 0x10, PageSize::Size4K, RWX, wb), Err(MapError::Misaligned));
        assert_eq!(table.map(&mut memory, 0x1000, 0, PageSize::Size2M, RWX, wb), Err(MapError::Misaligned));
        assert_eq!(table.map(&mut memory, 0, MIB2, PageSize::Size1G, RWX, wb), Err(MapError::Misaligned));
        assert_eq!(table.map_range(&mut memory, 0, 0, 0x1800, RWX, wb, PageSize::Size2M), Err(MapError::Misaligned));
        for virt in [0x8000_0000_0000, 0xffff_7fff_ffff_f000, 0x0001_0000_0000_0000] {
            assert_eq!(table.map(&mut memory, virt, 0, PageSize::Size4K, RWX, wb), Err(MapError::NonCanonical));
            assert_eq!(table.unmap(&mut memory, virt), Err(MapError::NonCanonical));
        }
        assert_eq!(table.map(&mut memory, 0, 1 << 52, PageSize::Size4K, RWX, wb), Err(MapError::Overflow));
        assert_eq!(table.map_range(&mut memory, !0xfff, 0, 0x2000, RWX, wb, PageSize::Size4K), Err(MapError::Overflow));
        // The top canonical page works.
        table.map(&mut memory, 0xffff_ffff_ffff_f000, 0x5000, PageSize::Size4K, RWX, wb).unwrap();
        assert_eq!(table.translate(&memory, u64::MAX).unwrap().0, 0x5fff);

        let mut ept_memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut ept_memory).unwrap();
        assert_eq!(ept.map(&mut ept_memory, 1 << 48, 0, PageSize::Size4K, RWX, wb), Err(MapError::NonCanonical));
        assert_eq!(
            ept.map(&mut ept_memory, 0xffff_8000_0000_0000, 0, PageSize::Size4K, RWX, wb),
            Err(MapError::NonCanonical)
        );
        ept.map(&mut ept_memory, (1 << 48) - KIB4, 0, PageSize::Size4K, RWX, wb).unwrap();
    }

    #[test]
    fn map_range_crossing_the_canonical_hole_rolls_back() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let below_hole = 0x7fff_ffff_e000;
        let result = table.map_range(&mut memory, below_hole, 0, 0x4000, RWX, MemoryType::WriteBack, PageSize::Size2M);
        assert_eq!(result, Err(MapError::NonCanonical));
        assert_eq!(table.translate(&memory, below_hole), None);
        assert_eq!(memory.live(), 1);
    }

    #[test]
    fn unmap_then_translate_is_none() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        table.map(&mut memory, 0x3000, 0x7000, PageSize::Size4K, RWX, wb).unwrap();
        table.map(&mut memory, 0x4000, 0x8000, PageSize::Size4K, RWX, wb).unwrap();
        table.map(&mut memory, 0x60_0000, 0x80_0000, PageSize::Size2M, RWX, wb).unwrap();
        assert_eq!(table.unmap(&mut memory, 0x3abc), Ok((0x7000, PageSize::Size4K)));
        assert_eq!(table.translate(&memory, 0x3000), None);
        assert_eq!(table.translate(&memory, 0x4000).unwrap().0, 0x8000);
        assert_eq!(table.unmap(&mut memory, 0x3000), Err(MapError::NotMapped));
        assert_eq!(table.unmap(&mut memory, 0x71_2345), Ok((0x80_0000, PageSize::Size2M)));
        assert_eq!(table.translate(&memory, 0x60_0000), None);
        assert_eq!(table.unmap(&mut memory, 0x4000), Ok((0x8000, PageSize::Size4K)));
        assert_eq!(table.unmap(&mut memory, 0xffff_8000_0000_0000), Err(MapError::NotMapped));
        // Every table but the root was emptied and freed.
        assert_eq!(memory.live(), 1);
        assert_eq!(memory.read_entry(table.root(), 0), 0);
    }

    #[test]
    fn large_page_fits_where_small_pages_were_unmapped() {
        let mut memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        ept.map_range(&mut memory, 0, 0x1000_0000, MIB2, RWX, wb, PageSize::Size4K).unwrap();
        for page in 0..512 {
            ept.unmap(&mut memory, page * KIB4).unwrap();
        }
        ept.map(&mut memory, 0, 0x1000_0000, PageSize::Size2M, RWX, wb).unwrap();
        assert_eq!(ept.translate(&memory, 0x1234), Some((0x1000_1234, RWX, PageSize::Size2M)));
    }

    #[test]
    fn map_rolls_back_created_tables_when_out_of_tables() {
        // Root plus one table: the PDPT fits, the PD does not.
        let mut memory = TestMemory::with_limit(2);
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        assert_eq!(
            table.map(&mut memory, 0x1000, 0x1000, PageSize::Size4K, RWX, MemoryType::WriteBack),
            Err(MapError::OutOfTables)
        );
        assert_eq!(memory.allocated, 2);
        assert_eq!(memory.freed, 1);
        assert_eq!(memory.live(), 1);
        assert_eq!(memory.read_entry(table.root(), 0), 0);
        let mut empty = TestMemory::with_limit(0);
        assert!(PageTable::<Ept>::new(&mut empty).is_err());
    }

    #[test]
    fn map_range_rolls_back_on_out_of_tables() {
        // Root, PDPT, PD and one page table: 4K pages up to the next 2M
        // boundary fit, then a 2M page fits in the PD, then the 4K tail
        // beyond it needs a second page table that is refused.
        let mut memory = TestMemory::with_limit(4);
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        let start = MIB2 - 4 * KIB4;
        let length = 4 * KIB4 + MIB2 + KIB4;
        assert_eq!(
            ept.map_range(&mut memory, start, start, length, RWX, wb, PageSize::Size1G),
            Err(MapError::OutOfTables)
        );
        let mut address = start;
        while address < start + length {
            assert_eq!(ept.translate(&memory, address), None, "{address:#x} still mapped");
            address += KIB4;
        }
        assert_eq!(memory.live(), 1);
        assert_eq!(memory.freed, memory.allocated - 1);

        // Existing mappings survive another call's rollback.
        let mut memory = TestMemory::with_limit(4);
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        ept.map(&mut memory, 0, 0x9000, PageSize::Size4K, RWX, wb).unwrap();
        assert_eq!(
            ept.map_range(&mut memory, KIB4, KIB4, MIB2 + KIB4, RWX, wb, PageSize::Size2M),
            Err(MapError::OutOfTables)
        );
        assert_eq!(ept.translate(&memory, 0), Some((0x9000, RWX, PageSize::Size4K)));
        assert_eq!(ept.translate(&memory, KIB4), None);
        assert_eq!(memory.live(), 4);
    }

    #[test]
    fn map_range_rolls_back_on_already_mapped() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        table.map(&mut memory, 0x40_0000, 0, PageSize::Size4K, RWX, wb).unwrap();
        let live = memory.live();
        assert_eq!(
            table.map_range(&mut memory, 0, 0, 0x80_0000, RWX, wb, PageSize::Size2M),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(table.translate(&memory, 0), None);
        assert_eq!(table.translate(&memory, 0x20_0000), None);
        assert_eq!(table.translate(&memory, 0x40_0000).unwrap().0, 0);
        assert_eq!(memory.live(), live);
    }

    #[test]
    fn destroy_frees_every_table() {
        let mut memory = TestMemory::new();
        let mut table = PageTable::<X86Paging>::new(&mut memory).unwrap();
        let wb = MemoryType::WriteBack;
        table.map_range(&mut memory, 0, 0, 4 * GIB1 + 3 * MIB2 + 5 * KIB4, RWX, wb, PageSize::Size1G).unwrap();
        table.map_range(&mut memory, 0xffff_8000_0000_0000, 0, 3 * MIB2, RWX, wb, PageSize::Size4K).unwrap();
        table.map(&mut memory, 0xffff_ffff_ffe0_0000, 0, PageSize::Size2M, RWX, wb).unwrap();
        assert!(memory.allocated > 5);
        table.destroy(&mut memory);
        assert_eq!(memory.freed, memory.allocated);
        assert_eq!(memory.live(), 0);

        let mut memory = TestMemory::new();
        PageTable::<Ept>::new(&mut memory).unwrap().destroy(&mut memory);
        assert_eq!((memory.allocated, memory.freed), (1, 1));
    }

    #[test]
    fn random_operations_match_a_model() {
        // Map and unmap pseudo-random pages of mixed sizes, comparing every
        // result with a simple model of which pages are mapped.
        let mut memory = TestMemory::new();
        let mut ept = PageTable::<Ept>::new(&mut memory).unwrap();
        let mut model: HashMap<u64, (u64, PageSize)> = HashMap::new();
        let mut random = crate::test_random::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || random.next();
        let covering = |model: &HashMap<u64, (u64, PageSize)>, start: u64, end: u64| {
            model.iter().any(|(&virt, &(_, size))| virt < end && start < virt + size.bytes())
        };
        for _ in 0..3000 {
            let size = [PageSize::Size4K, PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][(next() % 4) as usize];
            // A small window of 4 GiB so that operations collide often.
            let virt = (next() % (4 * GIB1)) & !(size.bytes() - 1);
            if next() % 3 == 0 {
                let expected =
                    model.iter().find(|(v, (_, s))| **v <= virt && virt < **v + s.bytes()).map(|(v, e)| (*v, *e));
                let result = ept.unmap(&mut memory, virt);
                match expected {
                    Some((base, (phys, size))) => {
                        assert_eq!(result, Ok((phys, size)));
                        model.remove(&base);
                    }
                    None => assert_eq!(result, Err(MapError::NotMapped)),
                }
            } else {
                let phys = (next() % (1 << 40)) & !(size.bytes() - 1);
                let result = ept.map(&mut memory, virt, phys, size, RWX, MemoryType::WriteBack);
                if covering(&model, virt, virt + size.bytes()) {
                    assert_eq!(result, Err(MapError::AlreadyMapped));
                } else {
                    assert_eq!(result, Ok(()));
                    model.insert(virt, (phys, size));
                }
            }
        }
        for (&virt, &(phys, size)) in &model {
            assert_eq!(ept.translate(&memory, virt + size.bytes() - 1), Some((phys + size.bytes() - 1, RWX, size)));
        }
        let bases: Vec<u64> = model.keys().copied().collect();
        for virt in bases {
            ept.unmap(&mut memory, virt).unwrap();
        }
        assert_eq!(memory.live(), 1);
    }
}
