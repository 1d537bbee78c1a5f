//! Sentence encoders: BERT-family models in Hugging Face layout, tokenized
//! with `tokenizers`, weights from safetensors, run as ragged batches
//! grouped by length under a token budget.
//!
//! Nothing is specific to one model: shapes, pooling, normalization and the
//! sequence limit come from the model's files.

pub mod bert;
pub mod cache;
pub mod config;
pub mod resolve;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_kernels::backend::BackendDevice;
use kiln_kernels::cuda_backend::CudaDevice;
use kiln_kernels::wgpu_backend::WgpuDevice;
use kiln_kernels::{Device, KernelError};

use kiln_kernels::ops::norm::l2_normalize_rows_inplace;
use kiln_kernels::ops::pooling::pool_ragged;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EngineError, Result};
use crate::model::bert::{
    CudaWeights, RaggedBatch, WgpuWeights, forward, forward_on, upload_cuda, upload_wgpu,
};
use crate::model::config::{Activation, BertConfig, SentenceConfig, read_json};
use crate::model::weights::BertWeights;

pub use cache::shared_model;
pub use resolve::{DEFAULT_MODEL, model_dir, resolve_model};

/// Tokens per encoder batch by default: large enough to keep GEMMs
/// efficient, small enough that activations stay in cache-friendly sizes.
pub const DEFAULT_TOKEN_BUDGET: usize = 8192;

/// Embeddings of a list of texts, row `i` for text `i`.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub dim: usize,
    /// `rows × dim`, row-major.
    pub values: Vec<f32>,
    /// How many texts were longer than the model's max_seq_length and cut.
    pub truncated: usize,
    /// Tokens encoded, special tokens included.
    pub tokens: usize,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }
}

/// A loaded sentence encoder.
pub struct EmbeddingModel {
    dir: PathBuf,
    config: BertConfig,
    activation: Activation,
    sentence: SentenceConfig,
    tokenizer: Tokenizer,
    weights: BertWeights,
    token_budget: usize,
    /// The weights uploaded to each wgpu device this model ran on.
    wgpu_weights: Mutex<HashMap<String, Arc<WgpuWeights>>>,
    /// The weights uploaded to each CUDA device this model ran on.
    cuda_weights: Mutex<HashMap<String, Arc<CudaWeights>>>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("dir", &self.dir)
            .field("hidden_size", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field("sentence", &self.sentence)
            .finish()
    }
}

impl EmbeddingModel {
    /// Loads a model by name or path (see [`resolve_model`]).
    pub fn load(name_or_path: &str) -> Result<EmbeddingModel> {
        EmbeddingModel::load_dir(&resolve_model(name_or_path)?)
    }

    /// Loads the model in `dir`.
    pub fn load_dir(dir: &Path) -> Result<EmbeddingModel> {
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        let activation = config.validate(&config_path.display().to_string())?;
        let sentence = SentenceConfig::load(dir, &config)?;
        let tokenizer = load_tokenizer(dir, sentence.max_seq_length)?;
        let weights = BertWeights::load(dir, &config)?;
        Ok(EmbeddingModel {
            dir: dir.to_path_buf(),
            config,
            activation,
            sentence,
            tokenizer,
            weights,
            token_budget: DEFAULT_TOKEN_BUDGET,
            wgpu_weights: Mutex::new(HashMap::new()),
            cuda_weights: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the tokens per encoder batch (at least one sequence per batch).
    pub fn with_token_budget(mut self, tokens: usize) -> Self {
        self.token_budget = tokens.max(1);
        self
    }

    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    pub fn max_seq_length(&self) -> usize {
        self.sentence.max_seq_length
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Embeds `texts` on the CPU; row `i` of the result is the embedding of
    /// `texts[i]`.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.embed_on(&Device::cpu(), texts)
    }

    /// Embeds `texts` on `device`: the CPU, a wgpu device or a CUDA device
    /// (the encoder's layers run there; CUDA's path is unverified on
    /// hardware).
    pub fn embed_on(&self, device: &Device, texts: &[&str]) -> Result<Embeddings> {
        let gpu = match device {
            Device::Wgpu(gpu) => Some((Arc::clone(gpu), self.wgpu_weights_for(gpu)?)),
            Device::Cpu(_) | Device::Cuda(_) => None,
        };
        let cuda = match device {
            Device::Cuda(gpu) => Some((Arc::clone(gpu), self.cuda_weights_for(gpu)?)),
            Device::Cpu(_) | Device::Wgpu(_) => None,
        };
        let dim = self.dim();
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|source| EngineError::Tokenizer {
                path: self.dir.join("tokenizer.json").display().to_string(),
                source,
            })?;
        let truncated = encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        let tokens: usize = encodings.iter().map(|e| e.get_ids().len()).sum();
        for e in &encodings {
            if let Some(bad) = e
                .get_ids()
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(EngineError::Model {
                    path: self.dir.display().to_string(),
                    reason: format!(
                        "tokenizer produced id {bad}, beyond vocab_size {}",
                        self.config.vocab_size
                    ),
                });
            }
        }

        // Longest first, so each batch holds sequences of similar length and
        // the token budget is spent evenly.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));

        let mut values = vec![0f32; texts.len() * dim];
        let mut start = 0;
        while start < order.len() {
            let mut batch = RaggedBatch {
                offsets: vec![0],
                ..Default::default()
            };
            let mut end = start;
            while end < order.len() {
                let e = &encodings[order[end]];
                if end > start && batch.tokens() + e.get_ids().len() > self.token_budget {
                    break;
                }
                batch.ids.extend_from_slice(e.get_ids());
                batch.type_ids.extend(
                    e.get_type_ids()
                        .iter()
                        .map(|&t| t.min(self.config.type_vocab_size as u32 - 1)),
                );
                batch.offsets.push(batch.ids.len());
                end += 1;
            }
            let (config, act, weights) = (&self.config, self.activation, &self.weights);
            let hidden = match (&gpu, &cuda) {
                (Some((gpu, uploaded)), _) => {
                    forward_on(gpu.as_ref(), config, act, weights, uploaded, &batch)?
                }
                (_, Some((gpu, uploaded))) => {
                    forward_on(gpu.as_ref(), config, act, weights, uploaded, &batch)?
                }
                _ => forward(config, act, weights, &batch)?,
            };
            let mut pooled = pool_ragged(&hidden, dim, &batch.offsets, self.sentence.pooling);
            if self.sentence.normalize {
                l2_normalize_rows_inplace(&mut pooled, dim);
            }
            for (row, &i) in order[start..end].iter().enumerate() {
                values[i * dim..(i + 1) * dim].copy_from_slice(&pooled[row * dim..(row + 1) * dim]);
            }
            // Counted per encoder batch, so progress moves within one call.
            COUNTERS
                .rows
                .fetch_add((end - start) as u64, Ordering::Relaxed);
            COUNTERS
                .tokens
                .fetch_add(batch.tokens() as u64, Ordering::Relaxed);
            start = end;
        }
        COUNTERS
            .truncated
            .fetch_add(truncated as u64, Ordering::Relaxed);
        Ok(Embeddings {
            dim,
            values,
            truncated,
            tokens,
        })
    }
}

impl EmbeddingModel {
    fn cuda_weights_for(&self, gpu: &CudaDevice) -> Result<Arc<CudaWeights>> {
        uploaded_once(&self.cuda_weights, &gpu.info().id(), || {
            upload_cuda(gpu, &self.weights)
        })
    }

    fn wgpu_weights_for(&self, gpu: &WgpuDevice) -> Result<Arc<WgpuWeights>> {
        uploaded_once(&self.wgpu_weights, &gpu.info().id(), || {
            upload_wgpu(gpu, &self.weights)
        })
    }
}

/// The weights cached for device `id`, uploaded by `upload` the first time.
fn uploaded_once<W>(
    cache: &Mutex<HashMap<String, Arc<W>>>,
    id: &str,
    upload: impl FnOnce() -> std::result::Result<W, KernelError>,
) -> Result<Arc<W>> {
    let mut cache = cache
        .lock()
        .map_err(|_| EngineError::Kernel(KernelError::Internal("weights cache poisoned".into())))?;
    if let Some(w) = cache.get(id) {
        return Ok(Arc::clone(w));
    }
    let uploaded = Arc::new(upload()?);
    cache.insert(id.to_string(), Arc::clone(&uploaded));
    Ok(uploaded)
}

/// What this process has embedded so far, for progress lines and job
/// summaries (`kiln embed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedTotals {
    pub rows: u64,
    pub tokens: u64,
    /// Texts longer than their model's max_seq_length, truncated.
    pub truncated: u64,
}

impl std::ops::Sub for EmbedTotals {
    type Output = EmbedTotals;

    fn sub(self, rhs: EmbedTotals) -> EmbedTotals {
        EmbedTotals {
            rows: self.rows - rhs.rows,
            tokens: self.tokens - rhs.tokens,
            truncated: self.truncated - rhs.truncated,
        }
    }
}

struct Counters {
    rows: AtomicU64,
    tokens: AtomicU64,
    truncated: AtomicU64,
}

static COUNTERS: Counters = Counters {
    rows: AtomicU64::new(0),
    tokens: AtomicU64::new(0),
    truncated: AtomicU64::new(0),
};

/// The process-wide totals of every [`EmbeddingModel::embed`] call.
pub fn embed_totals() -> EmbedTotals {
    EmbedTotals {
        rows: COUNTERS.rows.load(Ordering::Relaxed),
        tokens: COUNTERS.tokens.load(Ordering::Relaxed),
        truncated: COUNTERS.truncated.load(Ordering::Relaxed),
    }
}

/// A tokenizer.json whose syntax is wrong.
#[derive(Debug, thiserror::Error)]
#[error("not valid JSON: {0}")]
struct NotJson(#[source] serde_json::Error);

/// tokenizer.json, set up as sentence-transformers uses it: truncation at
/// max_seq_length (special tokens included) and no padding (batches are
/// ragged).
fn load_tokenizer(dir: &Path, max_seq_length: usize) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(EngineError::Model {
            path: dir.display().to_string(),
            reason: "no tokenizer.json".to_string(),
        });
    }
    let text = std::fs::read(&path).map_err(|source| EngineError::File {
        path: shown.clone(),
        source,
    })?;
    // The JSON's syntax first: tokenizers 0.22 panics (an `expect` in its
    // decoder's deserializer) on a syntax error inside the `decoder` field,
    // where any well-formed JSON is an error or a decoder. Found by the
    // model-directory fuzz smoke.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&text) {
        return Err(EngineError::Tokenizer {
            path: shown,
            source: Box::new(NotJson(e)),
        });
    }
    let mut tokenizer = Tokenizer::from_bytes(&text).map_err(|source| EngineError::Tokenizer {
        path: shown.clone(),
        source,
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_seq_length,
            ..Default::default()
        }))
        .map_err(|source| EngineError::Tokenizer {
            path: shown,
            source,
        })?;
    Ok(tokenizer)
}
