//! Fuzz target: see `kiln::fuzzing::parquet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::fuzzing::parquet(data));
