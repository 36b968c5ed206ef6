//! libFuzzer entry for [`mica_fuzz::tar`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::tar(data));
