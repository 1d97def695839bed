#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hyphae_node::fuzz::canonical_json(data));
