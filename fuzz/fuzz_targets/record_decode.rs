//! Fuzz target `record_decode`: see `wharf_fuzz::targets::record_decode` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::record_decode(data));
