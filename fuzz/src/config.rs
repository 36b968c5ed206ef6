//! Guest configuration files, and the disk and vif entries inside them.

use core::fmt::Write as _;

use dom0core::backends::net::parse_vif;
use dom0core::toolstack::config::{
    CMDLINE_MAX, GuestConfig, KERNEL_MAX, LIST_ENTRIES_MAX, LIST_ENTRY_MAX, MEMORY_MIB_MAX, NAME_MAX, OnCrash,
    VCPUS_MAX, parse,
};
use dom0core::toolstack::disk_spec;

/// Parses the input as a config file. A rejection must display without
/// panicking and name a line of the file; an accepted config must hold
/// every documented rule, survive being written out and parsed again
/// unchanged, reach the guest's start-info page whole (the command line),
/// and its disk and vif entries must parse (or be refused) into regions
/// that do not wrap and unicast MACs.
pub fn config(data: &[u8]) {
    let config = match parse(data) {
        Ok(config) => config,
        Err(error) => {
            let mut message = String::new();
            write!(message, "{error}").expect("an error displays");
            let lines = data.split(|&byte| byte == b'\n').count();
            assert!(error.line <= lines, "error on line {} of {lines}", error.line);
            return;
        }
    };
    check_rules(&config);
    let text = write_config(&config);
    assert_eq!(parse(text.as_bytes()), Ok(config.clone()), "written out as:\n{text}");
    // The builder hands the command line to the guest in its start-info page.
    let mut start_info = abi::start_info::StartInfo::new(1);
    start_info.set_cmdline(&config.cmdline);
    assert_eq!(start_info.cmdline(), config.cmdline.as_str(), "the guest gets another command line");
    for entry in &config.disks {
        if let Ok(spec) = disk_spec::parse(entry) {
            assert!(spec.sectors > 0 && spec.start.checked_add(spec.sectors).is_some(), "{spec:?}");
            assert!(!spec.device.is_empty());
        }
    }
    for entry in &config.vifs {
        if let Ok(spec) = parse_vif(entry)
            && let Some(mac) = spec.mac
        {
            assert!(mac[0] & 1 == 0 && mac != [0; 6], "{mac:?}");
        }
    }
}

fn check_rules(config: &GuestConfig) {
    let name = config.name.as_str();
    assert!((1..=NAME_MAX).contains(&name.len()));
    assert!(name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')));
    assert!(!name.starts_with(['-', '.']) && !name.bytes().all(|byte| byte.is_ascii_digit()));
    assert!((1..=MEMORY_MIB_MAX).contains(&config.memory_mib));
    assert!((1..=VCPUS_MAX).contains(&config.vcpus));
    assert!((1..=KERNEL_MAX).contains(&config.kernel.len()) && !config.kernel.contains('\0'));
    assert!(config.cmdline.len() <= CMDLINE_MAX && !config.cmdline.contains('\0'));
    assert!((1..=65535).contains(&config.weight));
    assert!(config.cap <= 100 * config.vcpus);
    for list in [&config.disks, &config.vifs] {
        assert!(list.len() <= LIST_ENTRIES_MAX);
        assert!(list.iter().all(|entry| entry.len() <= LIST_ENTRY_MAX));
    }
}

/// The config as a file, in the documented syntax.
fn write_config(config: &GuestConfig) -> String {
    let quote = |text: &str| {
        let mut quoted = String::from("\"");
        for c in text.chars() {
            if matches!(c, '"' | '\\') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    };
    let list = |entries: &[arrayvec::ArrayString<LIST_ENTRY_MAX>]| {
        let items: Vec<String> = entries.iter().map(|entry| quote(entry)).collect();
        format!("[ {} ]", items.join(", "))
    };
    let on_crash = match config.on_crash {
        OnCrash::Destroy => "destroy",
        OnCrash::Restart => "restart",
        OnCrash::Preserve => "preserve",
    };
    format!(
        "name = {}\nmemory = {}\nvcpus = {}\nkernel = {}\ncmdline = {}\non_crash = {}\nweight = {}\ncap = {}\n\
         disk = {}\nvif = {}\n",
        quote(&config.name),
        config.memory_mib,
        config.vcpus,
        quote(&config.kernel),
        quote(&config.cmdline),
        quote(on_crash),
        config.weight,
        config.cap,
        list(&config.disks),
        list(&config.vifs),
    )
}
