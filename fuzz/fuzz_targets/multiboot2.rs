//! libFuzzer entry for [`mica_fuzz::multiboot2`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::multiboot2(data));
