//! The BERT encoder's forward pass over a ragged batch: the sequences are
//! laid end to end (no padding), so every FLOP is spent on a real token.

use kiln_kernels::ops::activation::{gelu_inplace, gelu_tanh_inplace, relu_inplace};
use kiln_kernels::ops::attention::attention_ragged;
use kiln_kernels::ops::bf16::Bf16Linear;
use kiln_kernels::ops::linear::{PackedLinear, linear};
use kiln_kernels::ops::norm::add_layer_norm_inplace;
use kiln_kernels::ops::quant::QuantizedLinear;
use std::borrow::Borrow;
use std::marker::PhantomData;

use kiln_kernels::KernelError;
use kiln_kernels::backend::BackendDevice;
use kiln_kernels::cuda_backend::{CudaDense, CudaDevice, CudaTensor};
use kiln_kernels::ops::activation::Activation as DeviceActivation;
use kiln_kernels::wgpu_backend::{WgpuBuffer, WgpuDevice};

use crate::model::config::{Activation, BertConfig};
use crate::model::weights::{BertWeights, Tensor};

/// A batch of tokenized sequences, concatenated.
#[derive(Debug, Default, Clone)]
pub struct RaggedBatch {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// `offsets[s]..offsets[s+1]` are sequence `s`'s tokens; starts with 0.
    pub offsets: Vec<usize>,
}

impl RaggedBatch {
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// Word + position (restarting per sequence) + token type embeddings of
/// every token, before the embedding LayerNorm.
fn embed_tokens(config: &BertConfig, weights: &BertWeights, batch: &RaggedBatch) -> Vec<f32> {
    let h = config.hidden_size;
    let mut x = vec![0f32; batch.tokens() * h];
    for s in 0..batch.sequences() {
        for (pos, tok) in (batch.offsets[s]..batch.offsets[s + 1]).enumerate() {
            let row = &mut x[tok * h..(tok + 1) * h];
            let word = &weights.word_embeddings.data[batch.ids[tok] as usize * h..][..h];
            let position = &weights.position_embeddings.data[pos * h..][..h];
            let kind = &weights.token_type_embeddings.data[batch.type_ids[tok] as usize * h..][..h];
            for i in 0..h {
                row[i] = word[i] + position[i] + kind[i];
            }
        }
    }
    x
}

/// What the encoder's forward pass asks of a device: its own tensor and
/// parameter types and five operations. [`forward_on`] is written once
/// against it; the CPU, wgpu and CUDA implement it.
pub trait EncoderOps {
    /// Activations, `[rows × cols]` row-major.
    type Tensor;
    /// A dense layer's weight `[out × in]` and bias, as the device keeps them.
    type Dense;
    /// A LayerNorm's gamma and beta.
    type Norm;

    /// The embedded tokens, on the device.
    fn input(&self, x: Vec<f32>) -> Result<Self::Tensor, KernelError>;
    /// `act(x · weightᵀ + bias)` over `rows` rows.
    fn dense(
        &self,
        x: &Self::Tensor,
        rows: usize,
        layer: &Self::Dense,
        act: Option<DeviceActivation>,
    ) -> Result<Self::Tensor, KernelError>;
    /// `LayerNorm(x + residual)` over rows of `cols` (may reuse `x`).
    fn add_layer_norm(
        &self,
        x: Self::Tensor,
        residual: Option<&Self::Tensor>,
        cols: usize,
        norm: &Self::Norm,
        eps: f64,
    ) -> Result<Self::Tensor, KernelError>;
    /// Multi-head self-attention of the ragged batch `offsets`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<Self::Tensor, KernelError>;
    /// The last hidden state, on the host.
    fn output(&self, x: Self::Tensor) -> Result<Vec<f32>, KernelError>;
}

/// One encoder layer's parameters in a device's types.
pub struct DeviceLayer<D, N> {
    query: D,
    key: D,
    value: D,
    attention_out: D,
    attention_norm: N,
    intermediate: D,
    output: D,
    output_norm: N,
}

/// The encoder's parameters in a device's types (the embedding tables stay
/// on the host: the lookup runs there).
pub struct DeviceWeights<D, N> {
    embeddings_norm: N,
    layers: Vec<DeviceLayer<D, N>>,
}

impl<D, N> DeviceWeights<D, N> {
    /// Converts every dense layer with `dense` and every LayerNorm with `norm`.
    pub fn convert<'w>(
        weights: &'w BertWeights,
        dense: impl Fn(&'w (Tensor, Tensor)) -> Result<D, KernelError>,
        norm: impl Fn(&'w (Tensor, Tensor)) -> Result<N, KernelError>,
    ) -> Result<Self, KernelError> {
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    query: dense(&l.query)?,
                    key: dense(&l.key)?,
                    value: dense(&l.value)?,
                    attention_out: dense(&l.attention_out)?,
                    attention_norm: norm(&l.attention_norm)?,
                    intermediate: dense(&l.intermediate)?,
                    output: dense(&l.output)?,
                    output_norm: norm(&l.output_norm)?,
                })
            })
            .collect::<Result<_, KernelError>>()?;
        Ok(DeviceWeights {
            embeddings_norm: norm(&weights.embeddings_norm)?,
            layers,
        })
    }
}

/// The last hidden state, `[tokens × hidden]`, of every token in `batch`,
/// on the device `ops`: the embedding lookup on the host, then every
/// LayerNorm, dense layer, attention and activation through `ops`.
pub fn forward_on<E: EncoderOps>(
    ops: &E,
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    device: &DeviceWeights<E::Dense, E::Norm>,
    batch: &RaggedBatch,
) -> Result<Vec<f32>, KernelError> {
    let h = config.hidden_size;
    let t = batch.tokens();
    let eps = config.layer_norm_eps;
    let act = match activation {
        Activation::Gelu => DeviceActivation::Gelu,
        Activation::GeluTanh => DeviceActivation::GeluTanh,
        Activation::Relu => DeviceActivation::Relu,
    };
    let embedded = ops.input(embed_tokens(config, weights, batch))?;
    let mut x = ops.add_layer_norm(embedded, None, h, &device.embeddings_norm, eps)?;
    for layer in &device.layers {
        let q = ops.dense(&x, t, &layer.query, None)?;
        let k = ops.dense(&x, t, &layer.key, None)?;
        let v = ops.dense(&x, t, &layer.value, None)?;
        let context = ops.attention(
            &q,
            &k,
            &v,
            &batch.offsets,
            config.num_attention_heads,
            config.head_dim(),
        )?;
        let projected = ops.dense(&context, t, &layer.attention_out, None)?;
        let attended = ops.add_layer_norm(projected, Some(&x), h, &layer.attention_norm, eps)?;
        let inner = ops.dense(&attended, t, &layer.intermediate, Some(act))?;
        let out = ops.dense(&inner, t, &layer.output, None)?;
        x = ops.add_layer_norm(out, Some(&attended), h, &layer.output_norm, eps)?;
    }
    ops.output(x)
}

/// A dense layer as the CPU runs it: `x[rows × in] · Wᵀ + b`.
pub trait CpuDense {
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, KernelError>;
}

/// f32: the weights as loaded.
impl CpuDense for &(Tensor, Tensor) {
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, KernelError> {
        let (w, b) = self;
        Ok(linear(
            x,
            rows,
            w.shape[1],
            &w.data,
            w.shape[0],
            Some(&b.data),
        ))
    }
}

/// int8: quantized once per model (see [`quantize_int8`]).
impl CpuDense for QuantizedLinear {
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, KernelError> {
        Ok(self.forward(x, rows))
    }
}

/// f32, packed once per model for this CPU (see [`pack_f32`]).
impl CpuDense for PackedLinear {
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, KernelError> {
        Ok(self.forward(x, rows))
    }
}

/// bf16: rounded once per model (see [`round_bf16`]).
impl CpuDense for Bf16Linear {
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, KernelError> {
        self.forward(x, rows).ok_or_else(|| {
            KernelError::Internal("bf16 dense layers on a CPU without AVX512_BF16".into())
        })
    }
}

/// The CPU: Kiln's own kernels over host vectors, dense layers of type `D`
/// (f32 weights borrowed, or int8), LayerNorm parameters `N` (borrowed or
/// owned).
pub struct CpuEncoder<D, N>(PhantomData<(D, N)>);

impl<D, N> CpuEncoder<D, N> {
    pub fn new() -> Self {
        CpuEncoder(PhantomData)
    }
}

impl<D, N> Default for CpuEncoder<D, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: CpuDense, N: Borrow<(Tensor, Tensor)>> EncoderOps for CpuEncoder<D, N> {
    type Tensor = Vec<f32>;
    type Dense = D;
    type Norm = N;

    fn input(&self, x: Vec<f32>) -> Result<Vec<f32>, KernelError> {
        Ok(x)
    }

    fn dense(
        &self,
        x: &Vec<f32>,
        rows: usize,
        layer: &D,
        act: Option<DeviceActivation>,
    ) -> Result<Vec<f32>, KernelError> {
        let mut y = layer.apply(x, rows)?;
        match act {
            Some(DeviceActivation::Gelu) => gelu_inplace(&mut y),
            Some(DeviceActivation::GeluTanh) => gelu_tanh_inplace(&mut y),
            Some(DeviceActivation::Relu) => relu_inplace(&mut y),
            None => {}
        }
        Ok(y)
    }

    fn add_layer_norm(
        &self,
        mut x: Vec<f32>,
        residual: Option<&Vec<f32>>,
        cols: usize,
        norm: &N,
        eps: f64,
    ) -> Result<Vec<f32>, KernelError> {
        let (g, b) = norm.borrow();
        add_layer_norm_inplace(
            &mut x,
            residual.map(Vec::as_slice),
            cols,
            &g.data,
            &b.data,
            eps,
        );
        Ok(x)
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<Vec<f32>, KernelError> {
        Ok(attention_ragged(q, k, v, offsets, heads, head_dim))
    }

    fn output(&self, x: Vec<f32>) -> Result<Vec<f32>, KernelError> {
        Ok(x)
    }
}

/// [`forward_on`] the CPU.
pub fn forward(
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    batch: &RaggedBatch,
) -> Result<Vec<f32>, KernelError> {
    let borrowed = DeviceWeights::convert(weights, Ok, Ok)?;
    forward_on(
        &CpuEncoder::new(),
        config,
        activation,
        weights,
        &borrowed,
        batch,
    )
}

/// Every dense layer made by `make(weight, out, in, bias)`, the LayerNorms
/// copied: the CPU's weights in one precision.
fn for_cpu<D>(
    weights: &BertWeights,
    make: impl Fn(&[f32], usize, usize, Option<&[f32]>) -> D,
) -> Result<DeviceWeights<D, (Tensor, Tensor)>, KernelError> {
    DeviceWeights::convert(
        weights,
        |(w, b)| {
            let (out, inp) = (w.shape[0], *w.shape.get(1).unwrap_or(&1));
            Ok(make(&w.data, out, inp, Some(&b.data)))
        },
        |norm| Ok(norm.clone()),
    )
}

/// The encoder's weights for the CPU in int8: every dense layer quantized
/// per output channel (see [`QuantizedLinear`]), LayerNorms kept in f32.
pub type Int8Weights = DeviceWeights<QuantizedLinear, (Tensor, Tensor)>;

/// Quantizes the encoder's dense layers, once per model.
pub fn quantize_int8(weights: &BertWeights) -> Result<Int8Weights, KernelError> {
    for_cpu(weights, QuantizedLinear::new)
}

/// The encoder's weights for the CPU in bf16: every dense layer rounded to
/// bfloat16 (see [`Bf16Linear`]), LayerNorms kept in f32.
pub type Bf16Weights = DeviceWeights<Bf16Linear, (Tensor, Tensor)>;

/// Rounds the encoder's dense layers to bfloat16, once per model.
pub fn round_bf16(weights: &BertWeights) -> Result<Bf16Weights, KernelError> {
    for_cpu(weights, Bf16Linear::new)
}

/// The encoder's f32 weights packed for this CPU's GEMM kernel.
pub type PackedWeights = DeviceWeights<PackedLinear, (Tensor, Tensor)>;

/// Packs the encoder's dense layers (see [`PackedLinear`]), once per model.
pub fn pack_f32(weights: &BertWeights) -> Result<PackedWeights, KernelError> {
    for_cpu(weights, PackedLinear::new)
}

/// The CPU's dense layers in one precision.
#[derive(Clone, Copy)]
pub enum CpuLayers<'a> {
    /// The weights as loaded (the host fallback of a GPU).
    F32,
    /// f32, packed.
    Packed(&'a PackedWeights),
    Int8(&'a Int8Weights),
    Bf16(&'a Bf16Weights),
}

/// [`forward_on`] the CPU with dense layers `layers`.
pub fn forward_cpu(
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    layers: CpuLayers<'_>,
    batch: &RaggedBatch,
) -> Result<Vec<f32>, KernelError> {
    let (c, a, w) = (config, activation, weights);
    match layers {
        CpuLayers::F32 => forward(c, a, w, batch),
        CpuLayers::Packed(p) => forward_on(&CpuEncoder::new(), c, a, w, p, batch),
        CpuLayers::Int8(q) => forward_on(&CpuEncoder::new(), c, a, w, q, batch),
        CpuLayers::Bf16(b) => forward_on(&CpuEncoder::new(), c, a, w, b, batch),
    }
}

/// A dense layer on a wgpu device: weight, bias and `[out, in]`.
pub type WgpuDense = (WgpuBuffer, WgpuBuffer, [usize; 2]);
/// The encoder's weights on one wgpu device, uploaded once per model.
pub type WgpuWeights = DeviceWeights<WgpuDense, (WgpuBuffer, WgpuBuffer)>;

/// Uploads the encoder's weights to `gpu`.
pub fn upload_wgpu(gpu: &WgpuDevice, weights: &BertWeights) -> Result<WgpuWeights, KernelError> {
    DeviceWeights::convert(
        weights,
        |(w, b)| {
            let shape = [w.shape[0], *w.shape.get(1).unwrap_or(&1)];
            Ok((gpu.upload(&w.data)?, gpu.upload(&b.data)?, shape))
        },
        |(g, b)| Ok((gpu.upload(&g.data)?, gpu.upload(&b.data)?)),
    )
}

impl EncoderOps for WgpuDevice {
    type Tensor = WgpuBuffer;
    type Dense = WgpuDense;
    type Norm = (WgpuBuffer, WgpuBuffer);

    fn input(&self, x: Vec<f32>) -> Result<WgpuBuffer, KernelError> {
        self.upload(&x)
    }

    fn dense(
        &self,
        x: &WgpuBuffer,
        rows: usize,
        (w, b, [n, k]): &WgpuDense,
        act: Option<DeviceActivation>,
    ) -> Result<WgpuBuffer, KernelError> {
        let y = self.matmul_nt(x, [rows, *k, *n], w, Some(b))?;
        if let Some(act) = act {
            self.activation_inplace(&y, act)?;
        }
        Ok(y)
    }

    fn add_layer_norm(
        &self,
        x: WgpuBuffer,
        residual: Option<&WgpuBuffer>,
        cols: usize,
        (g, b): &Self::Norm,
        eps: f64,
    ) -> Result<WgpuBuffer, KernelError> {
        WgpuDevice::add_layer_norm(self, &x, residual, cols, g, b, eps as f32)
    }

    fn attention(
        &self,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<WgpuBuffer, KernelError> {
        self.attention_ragged(q, k, v, offsets, heads, head_dim)
    }

    fn output(&self, x: WgpuBuffer) -> Result<Vec<f32>, KernelError> {
        self.download(&x)
    }
}

/// The encoder's weights on one CUDA device, once per model: dense layers in
/// half precision for the tensor cores, LayerNorm parameters in f32.
pub type CudaWeights = DeviceWeights<CudaDense, (CudaTensor, CudaTensor)>;

/// Uploads the encoder's weights to `gpu`.
pub fn upload_cuda(gpu: &CudaDevice, weights: &BertWeights) -> Result<CudaWeights, KernelError> {
    DeviceWeights::convert(
        weights,
        |(w, b)| {
            let (out, inp) = (w.shape[0], *w.shape.get(1).unwrap_or(&1));
            gpu.upload_dense(&w.data, &b.data, out, inp)
        },
        |(g, b)| Ok((gpu.upload_f32(&g.data)?, gpu.upload_f32(&b.data)?)),
    )
}

/// CUDA: every dense layer a half-precision cuBLAS GEMM with the bias and
/// activation fused after it, LayerNorm and attention in `cuda/encoder.cu`.
/// Unverified on hardware (no GPU has run it yet).
impl EncoderOps for CudaDevice {
    type Tensor = CudaTensor;
    type Dense = CudaDense;
    type Norm = (CudaTensor, CudaTensor);

    fn input(&self, x: Vec<f32>) -> Result<CudaTensor, KernelError> {
        self.upload_f32(&x)
    }

    fn dense(
        &self,
        x: &CudaTensor,
        rows: usize,
        layer: &CudaDense,
        act: Option<DeviceActivation>,
    ) -> Result<CudaTensor, KernelError> {
        CudaDevice::dense(self, x, rows, layer, act)
    }

    fn add_layer_norm(
        &self,
        x: CudaTensor,
        residual: Option<&CudaTensor>,
        cols: usize,
        norm: &Self::Norm,
        eps: f64,
    ) -> Result<CudaTensor, KernelError> {
        let rows = x.len() / cols.max(1);
        CudaDevice::add_layer_norm(self, &x, residual, rows, cols, norm, eps as f32)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Result<CudaTensor, KernelError> {
        self.attention_ragged(q, k, v, offsets, heads, head_dim)
    }

    fn output(&self, x: CudaTensor) -> Result<Vec<f32>, KernelError> {
        self.download_f32(&x)
    }
}
