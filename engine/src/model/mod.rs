//! Sentence encoders: BERT-family models in Hugging Face layout, tokenized
//! with `tokenizers`, weights from safetensors, run as ragged batches
//! grouped by length under a token budget.
//!
//! Nothing is specific to one model: shapes, pooling, normalization and the
//! sequence limit come from the model's files.

pub mod bert;
pub mod cache;
pub mod config;
pub mod embed_cache;
pub mod precision;
pub mod resolve;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_kernels::backend::BackendDevice;
use kiln_kernels::cuda_backend::CudaDevice;
use kiln_kernels::memory::{Evict, MemoryBudget, OomCounts, split_and_retry};
use kiln_kernels::wgpu_backend::WgpuDevice;
use kiln_kernels::{Device, KernelError};

use kiln_kernels::ops::norm::l2_normalize_rows_inplace;
use kiln_kernels::ops::pooling::pool_ragged;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EngineError, Result};
use crate::model::bert::{
    Bf16Weights, CpuLayers, CudaWeights, Int8Weights, PackedWeights, RaggedBatch, WgpuWeights,
    forward_cpu, forward_on, pack_f32, quantize_int8, round_bf16, upload_cuda, upload_wgpu,
};
use crate::model::config::{Activation, BertConfig, SentenceConfig, read_json};
use crate::model::precision::Precision;
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
    /// Encoder batches split or moved to the CPU for want of device memory.
    pub oom: OomCounts,
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
    /// The tokenizer without truncation (chunking counts every token),
    /// made on first use.
    untruncated: std::sync::OnceLock<Tokenizer>,
    weights: BertWeights,
    token_budget: usize,
    /// The weights uploaded to each wgpu device this model ran on.
    wgpu_weights: Mutex<HashMap<String, Arc<Resident<WgpuWeights>>>>,
    /// The weights uploaded to each CUDA device this model ran on.
    cuda_weights: Mutex<HashMap<String, Arc<Resident<CudaWeights>>>>,
    /// The dense layers quantized to int8, on first use of `int8`.
    int8_weights: std::sync::OnceLock<Int8Weights>,
    /// The dense layers rounded to bf16, on first use of `bf16`.
    bf16_weights: std::sync::OnceLock<Bf16Weights>,
    /// The f32 dense layers packed for the CPU's kernel, on first use.
    packed_weights: std::sync::OnceLock<PackedWeights>,
}

/// Weights uploaded to one device: they stay there across batches and
/// calls, and the device's memory budget evicts them only under pressure
/// while no batch uses them (the next batch uploads them again).
struct Resident<W> {
    slot: Mutex<Option<Arc<W>>>,
}

impl<W: Send + Sync> Evict for Resident<W> {
    fn evict(&self) -> bool {
        // `try_lock`: an upload into this slot may be what asked for room.
        let Ok(mut slot) = self.slot.try_lock() else {
            return false;
        };
        match &*slot {
            Some(w) if Arc::strong_count(w) == 1 => slot.take().is_some(),
            _ => false,
        }
    }
}

/// Where an encoder batch runs: a device with the model's weights there,
/// or the host outside every budget (the last resort of split-and-retry).
enum Encoder<'a> {
    /// The host, dense layers in a precision.
    Host(CpuLayers<'a>),
    Cpu(&'a Arc<MemoryBudget>, CpuLayers<'a>),
    Wgpu(&'a WgpuDevice, Arc<WgpuWeights>),
    Cuda(&'a CudaDevice, Arc<CudaWeights>),
}

/// In int8, texts of at most this many tokens (special tokens included) are
/// encoded in f32: with no other tokens to average over, int8 rounding
/// moves a 2-token text's embedding by up to 0.8% in cosine (below the
/// 0.995 contract), and such texts cost a negligible share of the FLOPs.
pub const INT8_F32_MAX_TOKENS: usize = 8;

/// The fewest sequences split-and-retry cuts an encoder batch to: one
/// sequence that does not fit the device is encoded on the CPU.
const OOM_FLOOR_SEQUENCES: usize = 1;

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
            untruncated: std::sync::OnceLock::new(),
            weights,
            token_budget: DEFAULT_TOKEN_BUDGET,
            wgpu_weights: Mutex::new(HashMap::new()),
            cuda_weights: Mutex::new(HashMap::new()),
            int8_weights: std::sync::OnceLock::new(),
            bf16_weights: std::sync::OnceLock::new(),
            packed_weights: std::sync::OnceLock::new(),
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

    /// The byte offsets in `text` of each of its tokens, special tokens
    /// excluded and nothing truncated.
    pub fn token_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let tokenizer = self.untruncated.get_or_init(|| {
            let mut tokenizer = self.tokenizer.clone();
            // Clearing truncation cannot fail.
            let _ = tokenizer.with_truncation(None);
            tokenizer
        });
        let encoding = tokenizer
            .encode(text, false)
            .map_err(|source| EngineError::Tokenizer {
                path: self.dir.join("tokenizer.json").display().to_string(),
                source,
            })?;
        Ok(encoding.get_offsets().to_vec())
    }

    /// The special tokens the encoder adds to every text ([CLS] and [SEP]
    /// for a BERT model): what a chunk leaves of `max_seq_length`.
    pub fn special_tokens(&self) -> usize {
        use tokenizers::PostProcessor as _;
        self.tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false))
    }

    /// Embeds `texts` on the CPU; row `i` of the result is the embedding of
    /// `texts[i]`.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.embed_on(&Device::cpu()?, texts)
    }

    /// Embeds `texts` on `device`: the CPU, a wgpu device or a CUDA device
    /// (the encoder's layers run there; CUDA's path is unverified on
    /// hardware).
    pub fn embed_on(&self, device: &Device, texts: &[&str]) -> Result<Embeddings> {
        self.embed_with(device, Precision::F32, texts)
    }

    /// [`EmbeddingModel::embed_on`] at `precision` (resolved for the device
    /// first: see [`Precision::resolve`]; a mode the device cannot run is an
    /// error).
    pub fn embed_with(
        &self,
        device: &Device,
        precision: Precision,
        texts: &[&str],
    ) -> Result<Embeddings> {
        let precision = precision.resolve(device.info())?;
        let on_cpu = device.info().backend == kiln_kernels::BackendKind::Cpu;
        let layers = match precision {
            Precision::Int8 => CpuLayers::Int8(self.int8_weights()?),
            Precision::Bf16 => CpuLayers::Bf16(self.bf16_weights()?),
            _ if on_cpu => CpuLayers::Packed(self.packed_weights()?),
            _ => CpuLayers::F32,
        };
        let mut oom = OomCounts::default();
        // Weights that do not fit the device: the whole call runs on the CPU.
        let encoder = match device {
            Device::Cpu(cpu) => Encoder::Cpu(cpu.memory(), layers),
            Device::Wgpu(gpu) => match fits(self.wgpu_weights_for(gpu))? {
                Some(w) => Encoder::Wgpu(gpu.as_ref(), w),
                None => Encoder::Host(layers),
            },
            Device::Cuda(gpu) => match fits(self.cuda_weights_for(gpu))? {
                Some(w) => Encoder::Cuda(gpu.as_ref(), w),
                None => Encoder::Host(layers),
            },
        };
        let host = Encoder::Host(layers);
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

        // Short texts in f32 (see INT8_F32_MAX_TOKENS), on the same device.
        let short_encoder = match &encoder {
            Encoder::Cpu(memory, CpuLayers::Int8(_)) => Some(Encoder::Cpu(
                memory,
                CpuLayers::Packed(self.packed_weights()?),
            )),
            _ => None,
        };
        let is_short = |i: usize| {
            short_encoder.is_some() && encodings[i].get_ids().len() <= INT8_F32_MAX_TOKENS
        };
        // Longest first, so each batch holds sequences of similar length and
        // the token budget is spent evenly.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));

        let mut values = vec![0f32; texts.len() * dim];
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut batch_tokens = 0;
            while end < order.len() {
                let n = encodings[order[end]].get_ids().len();
                if end > start
                    && (batch_tokens + n > self.token_budget
                        || is_short(order[end]) != is_short(order[start]))
                {
                    break;
                }
                batch_tokens += n;
                end += 1;
            }
            let seqs = &order[start..end];
            let (batch_encoder, batch_host) = match &short_encoder {
                Some(f32_encoder) if is_short(seqs[0]) => {
                    (f32_encoder, &Encoder::Host(CpuLayers::F32))
                }
                _ => (&encoder, &host),
            };
            // Weights that did not fit: each batch is a piece on the CPU.
            if matches!(encoder, Encoder::Host(_)) {
                oom.cpu_fallbacks += 1;
            }
            // A batch that runs out of device memory is halved and retried;
            // a sequence that still does not fit is encoded on the CPU.
            let pieces = split_and_retry(
                seqs.len(),
                OOM_FLOOR_SEQUENCES,
                &mut oom,
                |r| self.encode(batch_encoder, &encodings, &seqs[r]),
                |r| self.encode(batch_host, &encodings, &seqs[r]),
                KernelError::is_out_of_memory,
            )?;
            for (r, pooled) in pieces {
                for (row, &i) in seqs[r].iter().enumerate() {
                    values[i * dim..(i + 1) * dim]
                        .copy_from_slice(&pooled[row * dim..(row + 1) * dim]);
                }
            }
            // Counted per encoder batch, so progress moves within one call.
            COUNTERS
                .rows
                .fetch_add((end - start) as u64, Ordering::Relaxed);
            COUNTERS
                .tokens
                .fetch_add(batch_tokens as u64, Ordering::Relaxed);
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
            oom,
        })
    }

    /// The pooled (and, as the model says, normalized) embeddings of the
    /// sequences `seqs` (indices into `encodings`), as one ragged batch on
    /// `encoder`.
    fn encode(
        &self,
        encoder: &Encoder<'_>,
        encodings: &[tokenizers::Encoding],
        seqs: &[usize],
    ) -> std::result::Result<Vec<f32>, KernelError> {
        let mut batch = RaggedBatch {
            offsets: vec![0],
            ..Default::default()
        };
        for &i in seqs {
            let e = &encodings[i];
            batch.ids.extend_from_slice(e.get_ids());
            batch.type_ids.extend(
                e.get_type_ids()
                    .iter()
                    .map(|&t| t.min(self.config.type_vocab_size as u32 - 1)),
            );
            batch.offsets.push(batch.ids.len());
        }
        let (config, act, weights) = (&self.config, self.activation, &self.weights);
        let hidden = match encoder {
            Encoder::Wgpu(gpu, uploaded) => {
                forward_on(*gpu, config, act, weights, uploaded, &batch)?
            }
            Encoder::Cuda(gpu, uploaded) => {
                forward_on(*gpu, config, act, weights, uploaded, &batch)?
            }
            Encoder::Cpu(memory, layers) => {
                // The CPU's activations, reserved so that a limit or an
                // injected failure applies to the CPU device too.
                let _activations = memory.reserve(
                    config.activation_bytes(batch.tokens()),
                    "encoder activations",
                )?;
                forward_cpu(config, act, weights, *layers, &batch)?
            }
            Encoder::Host(layers) => forward_cpu(config, act, weights, *layers, &batch)?,
        };
        let dim = self.dim();
        let mut pooled = pool_ragged(&hidden, dim, &batch.offsets, self.sentence.pooling);
        if self.sentence.normalize {
            l2_normalize_rows_inplace(&mut pooled, dim);
        }
        Ok(pooled)
    }
}

/// `Some` weights, or `None` when they do not fit the device.
fn fits<W>(uploaded: Result<W>) -> Result<Option<W>> {
    match uploaded {
        Ok(w) => Ok(Some(w)),
        Err(EngineError::Kernel(e)) if e.is_out_of_memory() => Ok(None),
        Err(e) => Err(e),
    }
}

impl EmbeddingModel {
    /// The int8 dense layers, quantized on first use.
    fn int8_weights(&self) -> Result<&Int8Weights> {
        if let Some(w) = self.int8_weights.get() {
            return Ok(w);
        }
        let quantized = quantize_int8(&self.weights)?;
        // A concurrent first use may have set it: either copy is the same.
        Ok(self.int8_weights.get_or_init(|| quantized))
    }

    /// The f32 dense layers packed for the CPU, on first use.
    fn packed_weights(&self) -> Result<&PackedWeights> {
        if let Some(w) = self.packed_weights.get() {
            return Ok(w);
        }
        let packed = pack_f32(&self.weights)?;
        Ok(self.packed_weights.get_or_init(|| packed))
    }

    /// The bf16 dense layers, rounded on first use.
    fn bf16_weights(&self) -> Result<&Bf16Weights> {
        if let Some(w) = self.bf16_weights.get() {
            return Ok(w);
        }
        let rounded = round_bf16(&self.weights)?;
        Ok(self.bf16_weights.get_or_init(|| rounded))
    }

    fn cuda_weights_for(&self, gpu: &CudaDevice) -> Result<Arc<CudaWeights>> {
        resident(&self.cuda_weights, gpu.info().id(), gpu.memory(), || {
            upload_cuda(gpu, &self.weights)
        })
    }

    fn wgpu_weights_for(&self, gpu: &WgpuDevice) -> Result<Arc<WgpuWeights>> {
        resident(&self.wgpu_weights, gpu.info().id(), gpu.memory(), || {
            upload_wgpu(gpu, &self.weights)
        })
    }
}

/// The weights resident on device `id`, uploaded by `upload` when they are
/// not (the first time, or after the device's budget evicted them).
fn resident<W: Send + Sync + 'static>(
    cache: &Mutex<HashMap<String, Arc<Resident<W>>>>,
    id: String,
    memory: &MemoryBudget,
    upload: impl FnOnce() -> std::result::Result<W, KernelError>,
) -> Result<Arc<W>> {
    let poisoned = || EngineError::Kernel(KernelError::Internal("weights cache poisoned".into()));
    let holder = {
        let mut cache = cache.lock().map_err(|_| poisoned())?;
        Arc::clone(cache.entry(id).or_insert_with(|| {
            let holder = Arc::new(Resident {
                slot: Mutex::new(None),
            });
            let evictable: Arc<dyn Evict> = Arc::<Resident<W>>::clone(&holder);
            memory.register_evictable(Arc::downgrade(&evictable));
            holder
        }))
    };
    let mut slot = holder.slot.lock().map_err(|_| poisoned())?;
    if let Some(w) = &*slot {
        return Ok(Arc::clone(w));
    }
    let uploaded = Arc::new(upload()?);
    *slot = Some(Arc::clone(&uploaded));
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
