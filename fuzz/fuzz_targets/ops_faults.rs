//! Fuzz target `ops_faults`: see `wharf_fuzz::targets::ops_faults` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::ops_faults(data));
