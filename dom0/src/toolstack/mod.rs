//! dom0's toolstack: builds guests from their configs and images in the
//! boot ramdisk or on the images disk, connects their devices, and tears
//! them down.
//!
//! The library holds what needs no hypervisor, host-tested:
//! - [`config`]: guest configuration files (xl.cfg-like).
//! - [`disk_spec`]: the entries of a config's `disk = [...]`.
//! - [`tar`]: the boot ramdisk's archive reader.
//! - [`images`]: the images disk's filesystem (ext4), and where `create`
//!   looks for a file: the ramdisk or that disk.
//! - [`ext4_map`]: where a file's blocks are on that disk (its extents), so
//!   a kernel is read from it in runs of blocks.
//! - [`image_file`]: files the builder reads ranges of, and a kernel's
//!   ELF headers read from one.
//! - [`builder`]: the domain builder, over a `DomainControl` trait that
//!   tests mock.
//! - [`acpi_tables`]: the ACPI tables a PVH guest is given.
//!
//! The binary's toolstack sits beside them (declared in `main.rs`):
//! `domains.rs`, the guests dom0 built, their consoles and devices, and
//! the shell commands that manage them, through hypercalls.

pub mod acpi_tables;
pub mod builder;
pub mod config;
pub mod disk_spec;
pub mod ext4_map;
pub mod image_file;
pub mod images;
pub mod tar;
