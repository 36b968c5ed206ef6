//! libFuzzer entry for [`mica_fuzz::net_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::net_request(data));
