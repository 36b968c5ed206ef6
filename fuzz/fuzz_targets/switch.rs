//! libFuzzer entry for [`mica_fuzz::switch`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mica_fuzz::switch(data));
