#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::h2_proxy::run(data));
