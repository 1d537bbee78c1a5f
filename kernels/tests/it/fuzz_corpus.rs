//! The codegen fuzz target's corpus and minimized crashers replayed through
//! the body `cargo fuzz` runs (`kiln_kernels::codegen::fuzz::exercise`):
//! every WGSL module generated validates with naga, and nothing panics. A
//! short smoke of the target in every CI run, with pseudo-random inputs
//! beyond the committed ones.

use kiln_kernels::codegen::fuzz::exercise;

#[test]
fn codegen_corpus_replays() {
    let inputs = crate::common::codegen_fuzz_inputs(2000);
    for data in &inputs {
        exercise(data);
    }
}
