//! Fuzz target `corrupt_then_recover`: see `wharf_fuzz::targets::corrupt_then_recover` and README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf_fuzz::targets::corrupt_then_recover(data));
