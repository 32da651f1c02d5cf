#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::flags::run(data));
