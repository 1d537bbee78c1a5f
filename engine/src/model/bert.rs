//! The BERT encoder's forward pass over a ragged batch: the sequences are
//! laid end to end (no padding), so every FLOP is spent on a real token.

use kiln_kernels::ops::activation::{gelu_inplace, gelu_tanh_inplace, relu_inplace};
use kiln_kernels::ops::attention::attention_ragged;
use kiln_kernels::ops::linear::linear;
use kiln_kernels::ops::norm::add_layer_norm_inplace;

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

fn dense(x: &[f32], rows: usize, layer: &(Tensor, Tensor)) -> Vec<f32> {
    let (w, b) = layer;
    linear(x, rows, w.shape[1], &w.data, w.shape[0], Some(&b.data))
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

/// The last hidden state, `[tokens × hidden]`, of every token in `batch`.
pub fn forward(
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    batch: &RaggedBatch,
) -> Vec<f32> {
    let h = config.hidden_size;
    let t = batch.tokens();
    let eps = config.layer_norm_eps;
    let mut x = embed_tokens(config, weights, batch);
    let (g, b) = &weights.embeddings_norm;
    add_layer_norm_inplace(&mut x, None, h, &g.data, &b.data, eps);

    for layer in &weights.layers {
        let q = dense(&x, t, &layer.query);
        let k = dense(&x, t, &layer.key);
        let v = dense(&x, t, &layer.value);
        let context = attention_ragged(
            &q,
            &k,
            &v,
            &batch.offsets,
            config.num_attention_heads,
            config.head_dim(),
        );
        let mut attended = dense(&context, t, &layer.attention_out);
        let (g, b) = &layer.attention_norm;
        add_layer_norm_inplace(&mut attended, Some(&x), h, &g.data, &b.data, eps);

        let mut inner = dense(&attended, t, &layer.intermediate);
        match activation {
            Activation::Gelu => gelu_inplace(&mut inner),
            Activation::GeluTanh => gelu_tanh_inplace(&mut inner),
            Activation::Relu => relu_inplace(&mut inner),
        }
        let mut out = dense(&inner, t, &layer.output);
        let (g, b) = &layer.output_norm;
        add_layer_norm_inplace(&mut out, Some(&attended), h, &g.data, &b.data, eps);
        x = out;
    }
    x
}

/// A layer's weight and bias on a wgpu device.
type WgpuDense = (WgpuBuffer, WgpuBuffer);

/// The encoder's weights uploaded to one wgpu device, once per model.
pub struct WgpuWeights {
    embeddings_norm: WgpuDense,
    layers: Vec<[WgpuDense; 8]>,
    /// `[out, in]` of the dense layers, in the order of `layers`' entries.
    shapes: Vec<[[usize; 2]; 8]>,
}

impl WgpuWeights {
    pub fn upload(gpu: &WgpuDevice, weights: &BertWeights) -> Result<WgpuWeights, KernelError> {
        let pair = |(w, b): &(Tensor, Tensor)| -> Result<WgpuDense, KernelError> {
            Ok((gpu.upload(&w.data)?, gpu.upload(&b.data)?))
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        let mut shapes = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let parts = [
                &l.query,
                &l.key,
                &l.value,
                &l.attention_out,
                &l.attention_norm,
                &l.intermediate,
                &l.output,
                &l.output_norm,
            ];
            let mut uploaded = Vec::with_capacity(8);
            for p in parts {
                uploaded.push(pair(p)?);
            }
            let shape = parts.map(|(w, _)| [w.shape[0], *w.shape.get(1).unwrap_or(&1)]);
            layers.push(
                uploaded
                    .try_into()
                    .map_err(|_| KernelError::Internal("eight tensors per layer".into()))?,
            );
            shapes.push(shape);
        }
        Ok(WgpuWeights {
            embeddings_norm: pair(&weights.embeddings_norm)?,
            layers,
            shapes,
        })
    }
}

/// [`forward`] on a wgpu device: the embedding lookup on the host, every
/// LayerNorm, dense layer, attention and GELU on the device, one download
/// at the end.
pub fn forward_wgpu(
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    device: &WgpuWeights,
    gpu: &WgpuDevice,
    batch: &RaggedBatch,
) -> Result<Vec<f32>, KernelError> {
    let h = config.hidden_size;
    let t = batch.tokens();
    let eps = config.layer_norm_eps as f32;
    let act = match activation {
        Activation::Gelu => DeviceActivation::Gelu,
        Activation::GeluTanh => DeviceActivation::GeluTanh,
        Activation::Relu => DeviceActivation::Relu,
    };
    let dense = |x: &WgpuBuffer, (w, b): &WgpuDense, [n, k]: [usize; 2]| {
        gpu.matmul_nt(x, [t, k, n], w, Some(b))
    };
    let (g, b) = &device.embeddings_norm;
    let mut x = gpu.add_layer_norm(
        &gpu.upload(&embed_tokens(config, weights, batch))?,
        None,
        h,
        g,
        b,
        eps,
    )?;
    for (layer, shape) in device.layers.iter().zip(&device.shapes) {
        let q = dense(&x, &layer[0], shape[0])?;
        let k = dense(&x, &layer[1], shape[1])?;
        let v = dense(&x, &layer[2], shape[2])?;
        let context = gpu.attention_ragged(
            &q,
            &k,
            &v,
            &batch.offsets,
            config.num_attention_heads,
            config.head_dim(),
        )?;
        let projected = dense(&context, &layer[3], shape[3])?;
        let (g, b) = &layer[4];
        let attended = gpu.add_layer_norm(&projected, Some(&x), h, g, b, eps)?;
        let inner = dense(&attended, &layer[5], shape[5])?;
        gpu.activation_inplace(&inner, act)?;
        let out = dense(&inner, &layer[6], shape[6])?;
        let (g, b) = &layer[7];
        x = gpu.add_layer_norm(&out, Some(&attended), h, g, b, eps)?;
    }
    gpu.download(&x)
}

/// The encoder's weights on one CUDA device, once per model: dense layers in
/// half precision for the tensor cores, LayerNorm parameters in f32.
pub struct CudaWeights {
    embeddings_norm: (CudaTensor, CudaTensor),
    layers: Vec<CudaLayer>,
}

struct CudaLayer {
    query: CudaDense,
    key: CudaDense,
    value: CudaDense,
    attention_out: CudaDense,
    attention_norm: (CudaTensor, CudaTensor),
    intermediate: CudaDense,
    output: CudaDense,
    output_norm: (CudaTensor, CudaTensor),
}

impl CudaWeights {
    pub fn upload(gpu: &CudaDevice, weights: &BertWeights) -> Result<CudaWeights, KernelError> {
        let dense = |(w, b): &(Tensor, Tensor)| -> Result<CudaDense, KernelError> {
            let (out, inp) = (w.shape[0], *w.shape.get(1).unwrap_or(&1));
            gpu.upload_dense(&w.data, &b.data, out, inp)
        };
        let norm = |(g, b): &(Tensor, Tensor)| -> Result<_, KernelError> {
            Ok((gpu.upload_f32(&g.data)?, gpu.upload_f32(&b.data)?))
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            layers.push(CudaLayer {
                query: dense(&l.query)?,
                key: dense(&l.key)?,
                value: dense(&l.value)?,
                attention_out: dense(&l.attention_out)?,
                attention_norm: norm(&l.attention_norm)?,
                intermediate: dense(&l.intermediate)?,
                output: dense(&l.output)?,
                output_norm: norm(&l.output_norm)?,
            });
        }
        Ok(CudaWeights {
            embeddings_norm: norm(&weights.embeddings_norm)?,
            layers,
        })
    }
}

/// [`forward`] on a CUDA device: the embedding lookup on the host; every
/// dense layer a half-precision cuBLAS GEMM with the bias and activation
/// fused after it, LayerNorm and attention in `cuda/encoder.cu`; one
/// download at the end. Unverified on hardware (no GPU has run it yet).
pub fn forward_cuda(
    config: &BertConfig,
    activation: Activation,
    weights: &BertWeights,
    device: &CudaWeights,
    gpu: &CudaDevice,
    batch: &RaggedBatch,
) -> Result<Vec<f32>, KernelError> {
    let h = config.hidden_size;
    let t = batch.tokens();
    let eps = config.layer_norm_eps as f32;
    let act = match activation {
        Activation::Gelu => DeviceActivation::Gelu,
        Activation::GeluTanh => DeviceActivation::GeluTanh,
        Activation::Relu => DeviceActivation::Relu,
    };
    let embedded = gpu.upload_f32(&embed_tokens(config, weights, batch))?;
    let mut x = gpu.add_layer_norm(&embedded, None, t, h, &device.embeddings_norm, eps)?;
    for layer in &device.layers {
        let q = gpu.dense(&x, t, &layer.query, None)?;
        let k = gpu.dense(&x, t, &layer.key, None)?;
        let v = gpu.dense(&x, t, &layer.value, None)?;
        let context = gpu.attention_ragged(
            &q,
            &k,
            &v,
            &batch.offsets,
            config.num_attention_heads,
            config.head_dim(),
        )?;
        let projected = gpu.dense(&context, t, &layer.attention_out, None)?;
        let attended =
            gpu.add_layer_norm(&projected, Some(&x), t, h, &layer.attention_norm, eps)?;
        let inner = gpu.dense(&attended, t, &layer.intermediate, Some(act))?;
        let out = gpu.dense(&inner, t, &layer.output, None)?;
        x = gpu.add_layer_norm(&out, Some(&attended), t, h, &layer.output_norm, eps)?;
    }
    gpu.download_f32(&x)
}
