//! The BERT encoder's forward pass over a ragged batch: the sequences are
//! laid end to end (no padding), so every FLOP is spent on a real token.

use kiln_kernels::ops::activation::{gelu_inplace, gelu_tanh_inplace, relu_inplace};
use kiln_kernels::ops::attention::attention_ragged;
use kiln_kernels::ops::linear::linear;
use kiln_kernels::ops::norm::add_layer_norm_inplace;

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

    // Embeddings: word + position (restarting per sequence) + token type.
    let mut x = vec![0f32; t * h];
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
