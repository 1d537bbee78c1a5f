//! The BERT encoder's operations on CUDA: dense layers as cuBLAS GEMMs in
//! half precision on the tensor cores (weights stored as f16, activations
//! converted per layer, f32 accumulation and output), and `cuda/encoder.cu`
//! for bias + activation, LayerNorm with the residual and ragged attention.
//! Activations stay on the device between layers.
//!
//! Written and compiled here (the kernels through NVRTC), but not yet run on
//! a GPU: unverified until a session with an NVIDIA device runs the tests.

use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{CudaModule, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use crate::error::{KernelError, Result};
use crate::memory::Held;
use crate::ops::activation::Activation;

const BLOCK: u32 = 256;
const MAX_BLOCKS: u32 = 65_535;
/// The attention kernel keeps one head's accumulator in registers.
pub const MAX_HEAD_DIM: usize = 128;

/// f32 values on a CUDA device: activations, LayerNorm parameters.
pub struct CudaTensor(Held<CudaSlice<f32>>);

impl CudaTensor {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

impl std::fmt::Debug for CudaTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaTensor({})", self.0.len())
    }
}

/// A dense layer on the device: `weight` `[out × in]` as IEEE half bits,
/// `bias` `[out]` in f32.
pub struct CudaDense {
    weight: Held<CudaSlice<u16>>,
    bias: Held<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

impl std::fmt::Debug for CudaDense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDense({}x{})", self.out, self.inp)
    }
}

fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = (n as u64)
        .div_ceil(u64::from(BLOCK))
        .clamp(1, u64::from(MAX_BLOCKS)) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    fn encoder_module(&self) -> Result<Arc<CudaModule>> {
        self.module("encoder.cu")
    }

    /// Uploads f32 values.
    pub fn upload_f32(&self, x: &[f32]) -> Result<CudaTensor> {
        Ok(CudaTensor(self.held_htod(x, "encoder activations")?))
    }

    /// Downloads f32 values.
    pub fn download_f32(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        Ok(self.stream.clone_dtoh(&*x.0)?)
    }

    /// Uploads a PyTorch `Linear` layer (`weight` `[out × in]` row-major),
    /// its weight rounded to half precision.
    pub fn upload_dense(
        &self,
        weight: &[f32],
        bias: &[f32],
        out: usize,
        inp: usize,
    ) -> Result<CudaDense> {
        if weight.len() != out * inp || bias.len() != out {
            return Err(KernelError::LengthMismatch {
                kernel: "cuda dense",
                detail: format!(
                    "weight {} (want {out}x{inp}), bias {} (want {out})",
                    weight.len(),
                    bias.len()
                ),
            });
        }
        let half: Vec<u16> = weight
            .iter()
            .map(|w| half::f16::from_f32(*w).to_bits())
            .collect();
        Ok(CudaDense {
            weight: self.held_htod(&half, "encoder weights")?,
            bias: self.held_htod(bias, "encoder weights")?,
            out,
            inp,
        })
    }

    /// `act(x · weightᵀ + bias)` for `rows` rows of `x`: x to half, one
    /// cuBLAS GemmEx (f16 inputs, f32 accumulation and output), then the
    /// bias and activation in one pass.
    pub fn dense(
        &self,
        x: &CudaTensor,
        rows: usize,
        layer: &CudaDense,
        act: Option<Activation>,
    ) -> Result<CudaTensor> {
        let x = &*x.0;
        let (out, inp) = (layer.out, layer.inp);
        if x.len() != rows * inp {
            return Err(KernelError::LengthMismatch {
                kernel: "cuda dense",
                detail: format!("{} inputs for {rows} rows of {inp}", x.len()),
            });
        }
        let module = self.encoder_module()?;
        let n_in = (rows * inp) as u64;
        let mut half = self.held_zeros::<u16>(rows * inp, "encoder activations")?;
        let to_half = module.load_function("kiln_to_half")?;
        let mut launch = self.stream.launch_builder(&to_half);
        launch.arg(x).arg(&mut *half).arg(&n_in);
        // SAFETY: kiln_to_half(const float*, unsigned short*, unsigned long
        // long n): both buffers hold n elements.
        unsafe { launch.launch(grid_stride(rows * inp)) }?;

        let mut y = self.held_zeros::<f32>(rows * out, "encoder activations")?;
        let blas = self.blas()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        {
            let (w, _w) = layer.weight.device_ptr(&self.stream);
            let (a, _a) = half.device_ptr(&self.stream);
            let (c, _c) = y.device_ptr_mut(&self.stream);
            // Row-major y[rows × out] = x · wᵀ is, column-major, the out × rows
            // matrix (w as stored, in × out, transposed) · (x as stored,
            // in × rows).
            // SAFETY: w holds out × in halves (lda = in, op T), the converted
            // x rows × in halves (ldb = in, op N), y rows × out floats
            // (ldc = out); alpha and beta are f32 as CUBLAS_COMPUTE_32F reads
            // them; the pointers stay valid while the guards live.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *blas.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    out as i32,
                    rows as i32,
                    inp as i32,
                    (&alpha) as *const f32 as *const _,
                    w as *const _,
                    cudaDataType_t::CUDA_R_16F,
                    inp as i32,
                    a as *const _,
                    cudaDataType_t::CUDA_R_16F,
                    inp as i32,
                    (&beta) as *const f32 as *const _,
                    c as *mut _,
                    cudaDataType_t::CUDA_R_32F,
                    out as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| self.blas_error("cuBLAS GemmEx", e))?;
        }

        let mode: u32 = match act {
            None => 0,
            Some(Activation::Gelu) => 1,
            Some(Activation::GeluTanh) => 2,
            Some(Activation::Relu) => 3,
        };
        let n_out = (rows * out) as u64;
        let cols = out as u32;
        let bias_act = module.load_function("kiln_bias_act")?;
        let mut launch = self.stream.launch_builder(&bias_act);
        launch
            .arg(&mut *y)
            .arg(&*layer.bias)
            .arg(&n_out)
            .arg(&cols)
            .arg(&mode);
        // SAFETY: kiln_bias_act(float* y, const float* bias, unsigned long
        // long n, unsigned cols, unsigned mode): y holds n = rows × cols
        // values, bias cols.
        unsafe { launch.launch(grid_stride(rows * out)) }?;
        Ok(CudaTensor(y))
    }

    /// `LayerNorm(x + residual) · gamma + beta` over `rows` rows of `cols`
    /// (`norm` is (gamma, beta)).
    pub fn add_layer_norm(
        &self,
        x: &CudaTensor,
        residual: Option<&CudaTensor>,
        rows: usize,
        cols: usize,
        (gamma, beta): &(CudaTensor, CudaTensor),
        eps: f32,
    ) -> Result<CudaTensor> {
        let (x, residual, gamma, beta) = (&*x.0, residual.map(|r| &*r.0), &*gamma.0, &*beta.0);
        if x.len() != rows * cols
            || residual.is_some_and(|r| r.len() != x.len())
            || gamma.len() != cols
            || beta.len() != cols
        {
            return Err(KernelError::LengthMismatch {
                kernel: "cuda layer norm",
                detail: format!("{} values for {rows} rows of {cols}", x.len()),
            });
        }
        let mut out = self.held_zeros::<f32>(rows * cols, "encoder activations")?;
        let function = self
            .encoder_module()?
            .load_function("kiln_add_layer_norm")?;
        let gx = rows.clamp(1, MAX_BLOCKS as usize) as u32;
        let gy = rows.div_ceil(gx as usize).max(1) as u32;
        let config = LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows32, cols32) = (rows as u32, cols as u32);
        // A null residual pointer when there is none.
        let null: u64 = 0;
        let mut launch = self.stream.launch_builder(&function);
        launch.arg(x);
        match residual {
            Some(r) => launch.arg(r),
            None => launch.arg(&null),
        };
        launch
            .arg(gamma)
            .arg(beta)
            .arg(&mut *out)
            .arg(&rows32)
            .arg(&cols32)
            .arg(&eps);
        // SAFETY: kiln_add_layer_norm(const float* x, const float* residual
        // (may be null), const float* gamma, const float* beta, float* out,
        // unsigned rows, unsigned cols, float eps): x, residual and out hold
        // rows × cols values, gamma and beta cols; the grid covers `rows`
        // blocks and extra blocks return.
        unsafe { launch.launch(config) }?;
        Ok(CudaTensor(out))
    }

    /// Multi-head self-attention of a ragged batch (`offsets[s]..offsets[s+1]`
    /// are sequence `s`'s tokens) over `q`, `k`, `v` of `tokens × heads ·
    /// head_dim`.
    pub fn attention_ragged(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<CudaTensor> {
        let (q, k, v) = (&*q.0, &*k.0, &*v.0);
        let tokens = offsets.last().copied().unwrap_or(0);
        let hidden = heads * head_dim;
        if head_dim == 0 || head_dim > MAX_HEAD_DIM {
            return Err(KernelError::InvalidInput {
                kernel: "cuda attention",
                detail: format!("head_dim {head_dim} (the kernel takes 1 to {MAX_HEAD_DIM})"),
            });
        }
        if [q, k, v].iter().any(|x| x.len() != tokens * hidden) {
            return Err(KernelError::LengthMismatch {
                kernel: "cuda attention",
                detail: format!("q/k/v are not {tokens} tokens of {hidden}"),
            });
        }
        let mut bounds = vec![0u32; 2 * tokens];
        for w in offsets.windows(2) {
            for t in w[0]..w[1] {
                bounds[2 * t] = w[0] as u32;
                bounds[2 * t + 1] = w[1] as u32;
            }
        }
        let bounds = self.held_htod(&bounds, "attention bounds")?;
        let mut out = self.held_zeros::<f32>(tokens * hidden, "encoder activations")?;
        let function = self.encoder_module()?.load_function("kiln_attention")?;
        let threads = (tokens * heads) as u64;
        let config = LaunchConfig {
            grid_dim: (threads.div_ceil(u64::from(BLOCK)).max(1) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (t32, h32, d32) = (tokens as u32, heads as u32, head_dim as u32);
        let scale = 1.0f32 / (head_dim as f32).sqrt();
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(&*bounds)
            .arg(&mut *out)
            .arg(&t32)
            .arg(&h32)
            .arg(&d32)
            .arg(&scale);
        // SAFETY: kiln_attention(const float* q, k, v, const unsigned*
        // bounds, float* out, unsigned tokens, heads, head_dim, float scale):
        // q, k, v and out hold tokens × heads × head_dim values, bounds two
        // per token; head_dim ≤ 128 as the kernel's accumulator; threads past
        // tokens × heads return.
        unsafe { launch.launch(config) }?;
        Ok(CudaTensor(out))
    }
}
