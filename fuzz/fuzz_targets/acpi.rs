//! libFuzzer entry for [`mica_fuzz::acpi`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::acpi(data));
