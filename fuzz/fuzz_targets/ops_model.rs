//! Fuzz target `ops_model`: see `wharf_fuzz::targets::ops_model` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::ops_model(data));
