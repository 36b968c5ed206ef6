//! Fuzz target bodies for every parser of untrusted input in Mica: block and
//! net ring requests and the ring indices themselves, store messages, guest
//! configs, the boot ramdisk's tar, ELF kernels, multiboot2 boot information,
//! ACPI tables, and the frames dom0's switch forwards.
//!
//! Each target takes arbitrary bytes, hands them to the real parser, and
//! checks the invariants its callers rely on where they are cheap to check
//! (an accepted disk request stays in its region, an ELF segment lies inside
//! the file, a tar entry's data inside the archive, ...). A panic is a
//! finding. The same functions run under libFuzzer (`fuzz_targets/`, with the
//! `libfuzzer` feature) and as ordinary tests that replay the checked-in
//! corpora (`tests/corpora.rs`).

mod boot;
mod bytes;
mod config;
mod image;
mod ring;
mod store;
mod switch;

pub use boot::{acpi, multiboot2};
pub use config::config;
pub use image::{elf, tar};
pub use ring::{block_request, net_request, ring};
pub use store::store;
pub use switch::switch;

/// A fuzz target: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target by name; the name is its binary in `fuzz_targets/` and its
/// directory in `corpus/` and `regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("block_request", block_request),
    ("net_request", net_request),
    ("ring", ring),
    ("store", store),
    ("config", config),
    ("tar", tar),
    ("elf", elf),
    ("multiboot2", multiboot2),
    ("acpi", acpi),
    ("switch", switch),
];
