//! The BERT encoder's operations on wgpu: dense layers (`shaders/gemm.wgsl`),
//! LayerNorm with the residual, ragged attention and the activations, each
//! a pass over buffers that stay on the device between layers.

use super::{
    ATTENTION_MAX_HEAD_DIM, ATTENTION_WGSL, GELU_WGSL, GEMM_TILE, LAYER_NORM_WGSL, MAX_WORKGROUPS,
    WORKGROUP_SIZE, WgpuBuffer, WgpuDevice, grid,
};
use crate::error::{KernelError, Result};
use crate::ops::activation::Activation;

impl WgpuDevice {
    /// `out[m×n] = a[m×k] · b[n×k]ᵀ (+ bias[n])` on the device, all
    /// row-major (`b` laid out as a PyTorch `Linear` weight), with
    /// `shaders/gemm.wgsl`: the dense layer of the encoder on wgpu.
    pub fn matmul_nt(
        &self,
        a: &WgpuBuffer,
        [m, k, n]: [usize; 3],
        b: &WgpuBuffer,
        bias: Option<&WgpuBuffer>,
    ) -> Result<WgpuBuffer> {
        if a.len != m * k || b.len != n * k || bias.is_some_and(|x| x.len != n) {
            return Err(KernelError::LengthMismatch {
                kernel: "matmul_nt",
                detail: format!(
                    "a: {} (want {m}x{k}), b: {} (want {n}x{k}), bias: {:?} (want {n})",
                    a.len,
                    b.len,
                    bias.map(|x| x.len)
                ),
            });
        }
        let dims = [m, n, k].map(|d| u32::try_from(d).ok());
        let [Some(m32), Some(n32), Some(k32)] = dims else {
            return Err(KernelError::InvalidInput {
                kernel: "matmul_nt",
                detail: format!("dimensions {m}x{k}x{n} exceed u32"),
            });
        };
        if n32.div_ceil(GEMM_TILE) > MAX_WORKGROUPS || m32.div_ceil(GEMM_TILE) > MAX_WORKGROUPS {
            return Err(KernelError::InvalidInput {
                kernel: "matmul_nt",
                detail: format!(
                    "{m}x{n} output needs more than {MAX_WORKGROUPS} workgroups a side"
                ),
            });
        }
        let out = self.storage_buffer("kiln matmul out", m * n)?;
        self.scoped("matmul_nt", || {
            if m > 0 && n > 0 {
                let mut encoder =
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("matmul_nt"),
                        });
                self.encode_gemm_nt(
                    &mut encoder,
                    &a.buffer,
                    &b.buffer,
                    &out,
                    bias.map(|x| &*x.buffer),
                    [m32, n32, k32],
                );
                self.queue.submit([encoder.finish()]);
            }
            Ok(WgpuBuffer {
                buffer: out,
                len: m * n,
            })
        })
    }

    /// `LayerNorm(x + residual)·gamma + beta` over rows of `cols`
    /// (`shaders/layer_norm.wgsl`); a new buffer.
    pub fn add_layer_norm(
        &self,
        x: &WgpuBuffer,
        residual: Option<&WgpuBuffer>,
        cols: usize,
        gamma: &WgpuBuffer,
        beta: &WgpuBuffer,
        eps: f32,
    ) -> Result<WgpuBuffer> {
        let rows = x.len / cols.max(1);
        if cols == 0
            || x.len != rows * cols
            || gamma.len != cols
            || beta.len != cols
            || residual.is_some_and(|r| r.len != x.len)
        {
            return Err(KernelError::LengthMismatch {
                kernel: "add_layer_norm",
                detail: format!(
                    "x: {}, residual: {:?}, gamma: {}, beta: {}, cols: {cols}",
                    x.len,
                    residual.map(|r| r.len),
                    gamma.len,
                    beta.len
                ),
            });
        }
        let out = self.storage_buffer("kiln layer norm out", x.len)?;
        self.scoped("add_layer_norm", || {
            let dummy;
            let residual_buf = match residual {
                Some(r) => &r.buffer,
                None => {
                    dummy = self.small_buffer("no residual", &[], wgpu::BufferUsages::STORAGE);
                    &dummy
                }
            };
            let mut params = [rows as u32, cols as u32, u32::from(residual.is_some()), 0];
            params[3] = eps.to_bits();
            let params = self.small_buffer(
                "layer norm params",
                bytemuck::bytes_of(&params),
                wgpu::BufferUsages::UNIFORM,
            );
            let pipeline = self.layer_norm.get_or_init(|| {
                self.build_pipeline("layer_norm.wgsl", LAYER_NORM_WGSL, "add_layer_norm")
            });
            let (gx, gy) = grid(rows as u64);
            self.run_pass(
                "add_layer_norm",
                pipeline,
                &[
                    x.buffer.as_entire_binding(),
                    residual_buf.as_entire_binding(),
                    gamma.buffer.as_entire_binding(),
                    beta.buffer.as_entire_binding(),
                    out.as_entire_binding(),
                    params.as_entire_binding(),
                ],
                (gx, gy),
            );
            Ok(WgpuBuffer {
                buffer: out,
                len: x.len,
            })
        })
    }

    /// `softmax(Q·Kᵀ/√d)·V` per sequence and head over a ragged batch
    /// (`shaders/attention.wgsl`); `offsets` as in
    /// [`crate::ops::attention::attention_ragged`].
    pub fn attention_ragged(
        &self,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<WgpuBuffer> {
        let tokens = offsets.last().copied().unwrap_or(0);
        let hidden = heads * head_dim;
        if q.len != tokens * hidden || k.len != q.len || v.len != q.len {
            return Err(KernelError::LengthMismatch {
                kernel: "attention",
                detail: format!(
                    "q: {}, k: {}, v: {}, want {tokens}x{hidden}",
                    q.len, k.len, v.len
                ),
            });
        }
        if head_dim == 0 || head_dim > ATTENTION_MAX_HEAD_DIM {
            return Err(KernelError::InvalidInput {
                kernel: "attention",
                detail: format!("head_dim {head_dim} (wgpu supports 1..={ATTENTION_MAX_HEAD_DIM})"),
            });
        }
        let mut bounds = Vec::with_capacity(2 * tokens);
        for w in offsets.windows(2) {
            for _ in w[0]..w[1] {
                bounds.extend([w[0] as u32, w[1] as u32]);
            }
        }
        let out = self.storage_buffer("kiln attention out", q.len)?;
        if tokens == 0 {
            return Ok(WgpuBuffer {
                buffer: out,
                len: 0,
            });
        }
        self.scoped("attention", || {
            let bounds = self.init_buffer(
                "attention bounds",
                bytemuck::cast_slice(&bounds),
                wgpu::BufferUsages::STORAGE,
            )?;
            let scale = (1.0 / (head_dim as f32).sqrt()).to_bits();
            let params = self.small_buffer(
                "attention params",
                bytemuck::bytes_of(&[tokens as u32, heads as u32, head_dim as u32, scale]),
                wgpu::BufferUsages::UNIFORM,
            );
            let pipeline = self
                .attention
                .get_or_init(|| self.build_pipeline("attention.wgsl", ATTENTION_WGSL, "attention"));
            let groups = ((tokens * heads) as u64).div_ceil(64);
            self.run_pass(
                "attention",
                pipeline,
                &[
                    q.buffer.as_entire_binding(),
                    k.buffer.as_entire_binding(),
                    v.buffer.as_entire_binding(),
                    bounds.as_entire_binding(),
                    out.as_entire_binding(),
                    params.as_entire_binding(),
                ],
                grid(groups),
            );
            Ok(WgpuBuffer {
                buffer: out,
                len: q.len,
            })
        })
    }

    /// An encoder activation in place (`shaders/gelu.wgsl`).
    pub fn activation_inplace(&self, x: &WgpuBuffer, act: Activation) -> Result<()> {
        if x.len == 0 {
            return Ok(());
        }
        let n = u32::try_from(x.len).map_err(|_| KernelError::InvalidInput {
            kernel: "gelu",
            detail: format!("{} elements exceed u32", x.len),
        })?;
        self.scoped("gelu", || {
            let params = self.small_buffer(
                "gelu params",
                bytemuck::bytes_of(&[n, act as u32, 0, 0]),
                wgpu::BufferUsages::UNIFORM,
            );
            let pipeline = self
                .gelu
                .get_or_init(|| self.build_pipeline("gelu.wgsl", GELU_WGSL, "gelu"));
            let groups = u64::from(n)
                .div_ceil(u64::from(WORKGROUP_SIZE))
                .min(u64::from(MAX_WORKGROUPS)) as u32;
            self.run_pass(
                "gelu",
                pipeline,
                &[x.buffer.as_entire_binding(), params.as_entire_binding()],
                (groups, 1),
            );
            Ok(())
        })
    }
}
