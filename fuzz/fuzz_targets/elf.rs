//! libFuzzer entry for [`mica_fuzz::elf`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::elf(data));
