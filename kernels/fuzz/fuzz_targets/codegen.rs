//! Fuzz target: see `kiln_kernels::codegen::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_kernels::codegen::fuzz::exercise(data));
