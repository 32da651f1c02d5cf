#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::http_filter::run(data));
