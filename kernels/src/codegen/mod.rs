//! Fused relational kernels: an expression IR ([`ir`]) and the code generators
//! that turn one [`Program`] into one kernel — WGSL ([`wgsl`]) for wgpu and
//! CUDA C ([`cuda`]) for NVRTC — cached by the program's fingerprint.
//!
//! The host side of a launch is backend-neutral: [`ColumnData`] describes the
//! input columns as raw little-endian values plus Arrow validity bitmaps, and
//! [`FusedOutput`] carries the compacted result back.

pub mod cuda;
pub mod ir;
pub mod wgsl;

pub use ir::{BinOp, Expr, Program, Ty, UnOp, Value};

/// One input column of a fused launch, in the device layout of its [`Ty`]:
/// 4 or 8 bytes per value (booleans as one 32-bit word each).
#[derive(Debug, Clone, Copy)]
pub struct ColumnData<'a> {
    pub ty: Ty,
    /// `rows * ty.width()` bytes, little-endian.
    pub values: &'a [u8],
    /// Arrow validity bits of the rows, bit `i % 32` of word `i / 32` for row
    /// `i`; `None` when no row is NULL.
    pub validity: Option<&'a [u32]>,
}

/// One output column of a fused launch.
#[derive(Debug, Clone, PartialEq)]
pub struct OutColumn {
    pub ty: Ty,
    /// `rows * ty.width() / 4` words, little-endian.
    pub values: Vec<u32>,
    /// One word per row: 1 when the value is valid.
    pub valid: Vec<u32>,
}

/// What one fused launch returns.
#[derive(Debug, Clone, Default)]
pub struct FusedOutput {
    /// The kernel met a row it cannot compute as the CPU would (an integer
    /// division by zero, a decimal overflow, ...); nothing else is set, and
    /// the caller must evaluate the batch on the CPU.
    pub needs_cpu: bool,
    /// For each output row, the input row it came from (ascending).
    pub indices: Vec<u32>,
    pub columns: Vec<OutColumn>,
    /// Bytes copied host → device and device → host.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl FusedOutput {
    pub fn rows(&self) -> usize {
        self.indices.len()
    }
}

impl crate::Device {
    /// Why this device cannot run `program` as one fused kernel, if it cannot.
    pub fn fused_support(&self, program: &Program) -> Result<(), String> {
        match self {
            crate::Device::Wgpu(d) => d.fused_support(program),
            crate::Device::Cuda(_) => cuda::generate(program).map(|_| ()),
            crate::Device::Cpu(_) => Err("the CPU runs DataFusion's own operators".into()),
        }
    }

    /// Like [`crate::Device::fused_support`] without compiling: whether the
    /// code generator and the device's features take `program`.
    pub fn fused_check(&self, program: &Program) -> Result<(), String> {
        match self {
            crate::Device::Wgpu(d) => d.fused_check(program),
            crate::Device::Cuda(_) => cuda::generate(program).map(|_| ()),
            crate::Device::Cpu(_) => Err("the CPU runs DataFusion's own operators".into()),
        }
    }

    /// The most rows one [`crate::Device::run_fused`] launch takes.
    pub fn fused_max_rows(&self, program: &Program) -> usize {
        match self {
            crate::Device::Wgpu(d) => d.fused_max_rows(program),
            _ => 1 << 20,
        }
    }

    /// Runs `program` over `rows` rows of `inputs` on this device.
    pub fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> crate::Result<FusedOutput> {
        match self {
            crate::Device::Wgpu(d) => d.run_fused(program, rows, inputs),
            _ => Err(crate::KernelError::InvalidInput {
                kernel: "fused",
                detail: self
                    .fused_support(program)
                    .err()
                    .unwrap_or_else(|| "not supported on this device".into()),
            }),
        }
    }
}
