#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hyphae_p2p::fuzz::server_name(data));
