//! libFuzzer entry for [`mica_fuzz::ring`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::ring(data));
