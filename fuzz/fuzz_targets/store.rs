//! libFuzzer entry for [`mica_fuzz::store`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::store(data));
