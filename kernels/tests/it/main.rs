//! Integration tests of kiln-kernels: one binary, one module per area.

mod backend;
mod common;
mod cuda_compile;
mod discovery;
mod fused;
mod fuzz_corpus;
mod topk;
