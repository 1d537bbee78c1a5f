//! The files of a sentence-transformers model in Hugging Face layout:
//! config.json (the encoder's shape), modules.json (which modules follow the
//! encoder), 1_Pooling/config.json and sentence_bert_config.json.

use std::path::Path;

use kiln_kernels::ops::pooling::PoolingMode;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

/// `config.json` of a BertModel.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The activations one encoder layer keeps alive at once for `tokens`
    /// tokens (the input, q, k, v, the attention's context and output, the
    /// intermediate layer), in bytes of f32: what a batch reserves.
    pub fn activation_bytes(&self, tokens: usize) -> u64 {
        (tokens as u64)
            .saturating_mul((6 * self.hidden_size + self.intermediate_size) as u64)
            .saturating_mul(4)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what Kiln's encoder supports, naming the offending field.
    pub fn validate(&self, path: &str) -> Result<Activation> {
        let bad = |reason: String| EngineError::Model {
            path: path.to_string(),
            reason,
        };
        match self.model_type.as_deref() {
            Some("bert") | None => {}
            Some(other) => {
                return Err(bad(format!(
                    "unknown architecture: model_type '{other}' (Kiln runs BERT-family encoders: model_type 'bert')"
                )));
            }
        }
        if let Some(archs) = &self.architectures
            && let Some(a) = archs.iter().find(|a| !a.starts_with("Bert"))
        {
            return Err(bad(format!(
                "unknown architecture '{a}' (expected BertModel)"
            )));
        }
        if self
            .position_embedding_type
            .as_deref()
            .is_some_and(|p| p != "absolute")
        {
            return Err(bad(format!(
                "position_embedding_type '{}' is not supported (only 'absolute')",
                self.position_embedding_type.as_deref().unwrap_or_default()
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} is 0")));
            }
        }
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(bad(format!("hidden_act '{other}' is not supported"))),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

/// What follows the encoder: pooling, normalization, sequence length.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: PoolingMode,
    pub normalize: bool,
    pub max_seq_length: usize,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::File {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| EngineError::ModelJson {
        path: path.display().to_string(),
        source,
    })
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir`. A plain Hugging Face
    /// model without them gets mean pooling and no normalization, as
    /// sentence-transformers gives it.
    pub fn load(dir: &Path, bert: &BertConfig) -> Result<SentenceConfig> {
        let mut pooling = PoolingMode::Mean;
        let mut normalize = false;
        let modules_path = dir.join("modules.json");
        if modules_path.exists() {
            let modules: Vec<Module> = read_json(&modules_path)?;
            for m in &modules {
                let kind = m.kind.rsplit('.').next().unwrap_or_default();
                match kind {
                    "Pooling" => pooling = pooling_mode(&dir.join(&m.path).join("config.json"))?,
                    "Normalize" => normalize = true,
                    "Transformer" => {}
                    other => {
                        return Err(EngineError::Model {
                            path: modules_path.display().to_string(),
                            reason: format!("module type '{other}' is not supported"),
                        });
                    }
                }
            }
        }
        let sbert = dir.join("sentence_bert_config.json");
        let configured = if sbert.exists() {
            read_json::<SentenceBertConfig>(&sbert)?.max_seq_length
        } else {
            None
        };
        let max_seq_length = configured
            .unwrap_or(bert.max_position_embeddings)
            .min(bert.max_position_embeddings);
        Ok(SentenceConfig {
            pooling,
            normalize,
            max_seq_length,
        })
    }
}

fn pooling_mode(path: &Path) -> Result<PoolingMode> {
    let c: PoolingConfig = read_json(path)?;
    let modes = [
        (c.pooling_mode_cls_token, PoolingMode::Cls),
        (c.pooling_mode_mean_tokens, PoolingMode::Mean),
        (c.pooling_mode_max_tokens, PoolingMode::Max),
        (
            c.pooling_mode_mean_sqrt_len_tokens,
            PoolingMode::MeanSqrtLen,
        ),
    ];
    let on: Vec<PoolingMode> = modes.iter().filter(|(b, _)| *b).map(|(_, m)| *m).collect();
    match on.as_slice() {
        [one] => Ok(*one),
        [] => Err(EngineError::Model {
            path: path.display().to_string(),
            reason: "no pooling mode is enabled".to_string(),
        }),
        _ => Err(EngineError::Model {
            path: path.display().to_string(),
            reason: "several pooling modes at once (concatenated pooling) are not supported"
                .to_string(),
        }),
    }
}
