//! Fuzz target `segment_recover`: see `wharf_fuzz::targets::segment_recover` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::segment_recover(data));
