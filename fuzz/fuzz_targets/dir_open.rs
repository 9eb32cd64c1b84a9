//! Fuzz target `dir_open`: see `wharf_fuzz::targets::dir_open` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::dir_open(data));
