//! Fuzz target: see `kiln::fuzzing::model_dir`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::fuzzing::model_dir(data));
