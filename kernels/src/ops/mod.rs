//! Tensor operations of the encoder and of vector scoring, on row-major f32
//! matrices. This module holds the CPU implementations (the `gemm` crate and
//! rayon); the wgpu and CUDA versions of each family join them file by file.

pub mod activation;
pub mod attention;
pub mod linear;
pub mod norm;
pub mod pooling;
pub mod score_gemm;
pub mod topk;
pub mod vector;

/// Rows per rayon task in row-wise operations.
pub(crate) const ROWS_PER_TASK: usize = 16;
