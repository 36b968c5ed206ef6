//! libFuzzer entry for [`mica_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::config(data));
