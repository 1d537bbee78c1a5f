//! CUDA C generation for fused programs (compiled by NVRTC). Not written yet:
//! every program is reported unsupported on CUDA, so the planner keeps its
//! operators on the CPU there and says why.

use super::ir::Program;

/// Generates the CUDA C source of `program`, or says why it cannot.
pub fn generate(program: &Program) -> Result<String, String> {
    program.check()?;
    Err("fused CUDA kernels are not implemented yet".into())
}
