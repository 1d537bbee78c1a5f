//! BERT weights from `model.safetensors`, memory-mapped, checked against
//! config.json and converted to f32 (F16 and BF16 checkpoints included).
//! Pickle checkpoints (`pytorch_model.bin`) are refused: loading them can run
//! arbitrary code.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::model::config::BertConfig;

/// A dense row-major f32 tensor.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One encoder layer's parameters; linear weights are `[out, in]`.
#[derive(Debug)]
pub struct LayerWeights {
    pub query: (Tensor, Tensor),
    pub key: (Tensor, Tensor),
    pub value: (Tensor, Tensor),
    pub attention_out: (Tensor, Tensor),
    pub attention_norm: (Tensor, Tensor),
    pub intermediate: (Tensor, Tensor),
    pub output: (Tensor, Tensor),
    pub output_norm: (Tensor, Tensor),
}

/// Every parameter of a BertModel's encoder.
#[derive(Debug)]
pub struct BertWeights {
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub embeddings_norm: (Tensor, Tensor),
    pub layers: Vec<LayerWeights>,
}

struct Reader<'a> {
    path: String,
    tensors: SafeTensors<'a>,
    prefix: &'static str,
}

impl Reader<'_> {
    fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|_| EngineError::MissingTensor {
                path: self.path.clone(),
                name: full.clone(),
            })?;
        if view.shape() != expected {
            return Err(EngineError::TensorShape {
                path: self.path.clone(),
                name: full,
                expected: expected.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => le_f32s(bytes),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(EngineError::Model {
                    path: self.path.clone(),
                    reason: format!(
                        "tensor '{full}' has dtype {other:?}; expected F32, F16 or BF16"
                    ),
                });
            }
        };
        Ok(Tensor {
            shape: expected.to_vec(),
            data,
        })
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.get(&format!("{name}.weight"), &[out, inp])?,
            self.get(&format!("{name}.bias"), &[out])?,
        ))
    }

    fn norm(&self, name: &str, dim: usize) -> Result<(Tensor, Tensor)> {
        // Old checkpoints name LayerNorm's parameters gamma and beta.
        match self.get(&format!("{name}.weight"), &[dim]) {
            Ok(w) => Ok((w, self.get(&format!("{name}.bias"), &[dim])?)),
            Err(EngineError::MissingTensor { .. }) => Ok((
                self.get(&format!("{name}.gamma"), &[dim])?,
                self.get(&format!("{name}.beta"), &[dim])?,
            )),
            Err(e) => Err(e),
        }
    }
}

/// Little-endian f32s from bytes of any alignment.
fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

impl BertWeights {
    /// Loads `dir/model.safetensors` for the shape `config` describes.
    pub fn load(dir: &Path, config: &BertConfig) -> Result<BertWeights> {
        let path = dir.join("model.safetensors");
        let shown = path.display().to_string();
        if !path.exists() {
            if dir.join("pytorch_model.bin").exists() {
                return Err(EngineError::PickleRefused {
                    path: dir.join("pytorch_model.bin").display().to_string(),
                });
            }
            return Err(EngineError::Model {
                path: dir.display().to_string(),
                reason: "no model.safetensors".to_string(),
            });
        }
        let file = std::fs::File::open(&path).map_err(|source| EngineError::File {
            path: shown.clone(),
            source,
        })?;
        // SAFETY: the map is read-only and lives only inside this function;
        // every tensor is copied out before it is dropped. A file truncated
        // by another process while mapped could fault; model directories
        // are not written while Kiln reads them.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| EngineError::File {
            path: shown.clone(),
            source,
        })?;
        let tensors = SafeTensors::deserialize(&map).map_err(|e| EngineError::Model {
            path: shown.clone(),
            reason: format!("not a valid safetensors file: {e}"),
        })?;
        let prefix = ["", "bert.", "model."]
            .into_iter()
            .find(|p| {
                tensors
                    .tensor(&format!("{p}embeddings.word_embeddings.weight"))
                    .is_ok()
            })
            .unwrap_or("");
        let r = Reader {
            path: shown,
            tensors,
            prefix,
        };
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(LayerWeights {
                query: r.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: r.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: r.linear(&format!("{p}.attention.self.value"), h, h)?,
                attention_out: r.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: r.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: r.linear(&format!("{p}.intermediate.dense"), i, h)?,
                output: r.linear(&format!("{p}.output.dense"), h, i)?,
                output_norm: r.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(BertWeights {
            word_embeddings: r.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: r.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type_embeddings: r.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            embeddings_norm: r.norm("embeddings.LayerNorm", h)?,
            layers,
        })
    }
}
