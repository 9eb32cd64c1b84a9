//! Fuzz target `ops_crash`: see `wharf_fuzz::targets::ops_crash` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::ops_crash(data));
