//! Fuzz target `salvage`: see `wharf_fuzz::targets::salvage` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::salvage(data));
