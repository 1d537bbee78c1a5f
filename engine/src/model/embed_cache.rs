//! The embedding cache (issue 16, §4): embeddings already computed, kept
//! as Parquet in a location of the user's choice (`SET kiln.embed_cache =
//! 's3://bucket/cache/'`), so that a rerun over a corpus embeds only the
//! texts it has not embedded before.
//!
//! **Keys.** An entry is keyed by the model's identity and the text: the
//! identity ([`model_key`]) is blake3 of the files that decide an embedding
//! (config, tokenizer, pooling, normalization, `max_seq_length`, weights),
//! of the device kind that computed it (the CPU, wgpu and CUDA round
//! differently) and of Kiln's encoder revision; the text's key is blake3 of
//! its UTF-8 bytes. Entries of one identity live under
//! `<cache>/<identity>/`, so changing the model (a new revision, another
//! pooling, another max length) starts a new cache beside the old.
//!
//! **Files.** Each flush writes one Parquet file, `part-<ms>-<id>.parquet`,
//! with columns `key` (32 bytes), `vector` (`FixedSizeList<Float32, dim>`)
//! and `check` (the first 8 bytes of blake3 of identity, key and the
//! vector's bytes), and the identity and dimension in its metadata. Files
//! are written whole (an object store's put; a local rename), so a crash
//! leaves none half-written.
//!
//! **Trust.** A file whose metadata names another identity or dimension,
//! or that does not parse, is skipped; a row whose check does not match its
//! key and vector is dropped. Either is counted (`rejected`) and the text is
//! embedded again: nothing read from the cache is returned unchecked. A
//! returned vector is the bytes that were computed and stored.
//!
//! **Scale.** The entries of an identity are read whole into memory by
//! each query that uses the cache (shared by its partitions; about
//! `dim × 4 + 50` bytes an entry: 1.6 KB for a 384-dimension model), so a
//! query sees what other processes added before it started; a cache larger
//! than memory is not handled yet.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema};
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::EmbeddingModel;

/// Changes whenever Kiln's encoder computes different floats for the same
/// model and text: entries of an older revision are not read.
pub const ENCODER_REVISION: u32 = 1;

/// Metadata keys of a cache file.
const IDENTITY_KEY: &str = "kiln.embed_cache.identity";
const DIM_KEY: &str = "kiln.embed_cache.dim";

/// Entries held before they are written out as a file.
pub const FLUSH_ROWS: usize = 65_536;

/// The files of a model that decide its embeddings.
const MODEL_FILES: [&str; 10] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "model.safetensors",
];

/// The identity of `model` computing on a device of kind `device` (see the
/// module's doc), as 32 hex digits.
pub fn model_key(model: &EmbeddingModel, device: &str) -> Result<String> {
    let files = model_files_hash(model.dir())?;
    let mut h = blake3::Hasher::new();
    h.update(files.as_bytes());
    h.update(device.as_bytes());
    h.update(&ENCODER_REVISION.to_le_bytes());
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// blake3 of the model files in `dir`, once per directory per process.
fn model_files_hash(dir: &FsPath) -> Result<String> {
    static HASHES: Mutex<Vec<(std::path::PathBuf, String)>> = Mutex::new(Vec::new());
    let mut hashes = HASHES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, h)) = hashes.iter().find(|(d, _)| d == dir) {
        return Ok(h.clone());
    }
    let mut h = blake3::Hasher::new();
    for name in MODEL_FILES {
        let path = dir.join(name);
        h.update(name.as_bytes());
        match std::fs::File::open(&path) {
            Ok(file) => {
                h.update(b"\x01");
                h.update_reader(file)
                    .map_err(|e| DataFusionError::Execution(format!("{}: {e}", path.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                h.update(b"\x00");
            }
            Err(e) => {
                return Err(DataFusionError::Execution(format!(
                    "{}: {e}",
                    path.display()
                )));
            }
        }
    }
    let hash = h.finalize().to_hex().to_string();
    hashes.push((dir.to_path_buf(), hash.clone()));
    Ok(hash)
}

/// The key of a text.
pub fn text_key(text: &str) -> [u8; 32] {
    *blake3::hash(text.as_bytes()).as_bytes()
}

fn check(identity: &str, key: &[u8], vector: &[f32]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(identity.as_bytes());
    h.update(key);
    h.update(bytemuck::cast_slice(vector));
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default())
}

/// The entries of one identity in one cache location.
#[derive(Debug)]
pub struct EmbedCache {
    store: Arc<dyn ObjectStore>,
    /// `<cache>/<identity>`.
    dir: Path,
    identity: String,
    dim: usize,
    entries: RwLock<Entries>,
    pending: Mutex<Entries>,
    /// Files and rows refused as foreign or corrupt when the cache was read.
    rejected: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    slots: HashMap<[u8; 32], usize>,
    keys: Vec<[u8; 32]>,
    values: Vec<f32>,
}

impl Entries {
    fn insert(&mut self, key: [u8; 32], vector: &[f32]) {
        if self.slots.contains_key(&key) {
            return;
        }
        self.slots.insert(key, self.keys.len());
        self.keys.push(key);
        self.values.extend_from_slice(vector);
    }
}

impl EmbedCache {
    /// Reads the cache of `identity` under `root` in `store`.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        root: &Path,
        identity: &str,
        dim: usize,
    ) -> Result<EmbedCache> {
        let cache = EmbedCache {
            store,
            dir: root.clone().join(identity),
            identity: identity.to_string(),
            dim,
            entries: RwLock::new(Entries::default()),
            pending: Mutex::new(Entries::default()),
            rejected: AtomicU64::new(0),
        };
        cache.load().await?;
        Ok(cache)
    }

    async fn load(&self) -> Result<()> {
        let files: Vec<_> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
        let mut entries = Entries::default();
        for file in files {
            if !file.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let bytes = self
                .store
                .get(&file.location)
                .await
                .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?
                .bytes()
                .await
                .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
            if self.read_file(bytes, &mut entries).is_err() {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
        Ok(())
    }

    /// Reads one file's checked rows into `entries`; an error for a file
    /// that is not a cache file of this identity.
    fn read_file(&self, bytes: bytes::Bytes, entries: &mut Entries) -> Result<()> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let meta = builder.metadata().file_metadata().key_value_metadata();
        let value = |key: &str| {
            meta.and_then(|kv| kv.iter().find(|e| e.key == key))
                .and_then(|e| e.value.clone())
        };
        if value(IDENTITY_KEY).as_deref() != Some(self.identity.as_str())
            || value(DIM_KEY).as_deref() != Some(self.dim.to_string().as_str())
        {
            return Err(DataFusionError::Execution("a foreign cache file".into()));
        }
        for batch in builder.build()? {
            let batch = batch?;
            let (Some(keys), Some(vectors), Some(checks)) = (
                batch
                    .column_by_name("key")
                    .and_then(|c| c.as_fixed_size_binary_opt()),
                batch
                    .column_by_name("vector")
                    .and_then(|c| c.as_fixed_size_list_opt()),
                batch
                    .column_by_name("check")
                    .and_then(|c| c.as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>()),
            ) else {
                return Err(DataFusionError::Execution("not a cache file".into()));
            };
            if keys.value_length() != 32 || vectors.value_length() as usize != self.dim {
                return Err(DataFusionError::Execution("not a cache file".into()));
            }
            let Some(values) = vectors.values().as_primitive_opt::<Float32Type>() else {
                return Err(DataFusionError::Execution("not a cache file".into()));
            };
            for i in 0..batch.num_rows() {
                if keys.is_null(i) || vectors.is_null(i) || checks.is_null(i) {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let key = keys.value(i);
                let start = vectors.value_offset(i) as usize;
                let Some(vector) = values.values().get(start..start + self.dim) else {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if check(&self.identity, key, vector) != checks.value(i) {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(key) = <[u8; 32]>::try_from(key) else {
                    continue;
                };
                entries.insert(key, vector);
            }
        }
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Files and rows refused (foreign, unreadable, or failing their check)
    /// when the cache was read.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Copies the vector of `key` into `out`; false when there is none.
    pub fn get(&self, key: &[u8; 32], out: &mut Vec<f32>) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.slots.get(key) {
            Some(&slot) => {
                out.extend_from_slice(&entries.values[slot * self.dim..(slot + 1) * self.dim]);
                true
            }
            None => false,
        }
    }

    /// Adds computed vectors (`keys[i]` ↦ row `i` of `values`): readable at
    /// once, written out by [`EmbedCache::flush`].
    pub fn put(&self, keys: &[[u8; 32]], values: &[f32]) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (i, key) in keys.iter().enumerate() {
            let vector = &values[i * self.dim..(i + 1) * self.dim];
            if !entries.slots.contains_key(key) {
                entries.insert(*key, vector);
                pending.insert(*key, vector);
            }
        }
    }

    /// Entries added and not yet written.
    pub fn pending_rows(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len()
    }

    /// Writes the entries added since the last flush as one file.
    pub async fn flush(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.keys.is_empty() {
            return Ok(());
        }
        let bytes = self.encode(&pending)?;
        let name = format!(
            "part-{}-{}.parquet",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
            &blake3::hash(&bytes).to_hex()[..16]
        );
        let path = self.dir.clone().join(name);
        self.store
            .put(&path, bytes.into())
            .await
            .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
        Ok(())
    }

    fn encode(&self, entries: &Entries) -> Result<Vec<u8>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::FixedSizeBinary(32), false),
            Field::new(
                "vector",
                DataType::FixedSizeList(
                    Arc::new(Field::new_list_field(DataType::Float32, false)),
                    self.dim as i32,
                ),
                false,
            ),
            Field::new("check", DataType::UInt64, false),
        ]));
        let keys = FixedSizeBinaryArray::try_from_iter(entries.keys.iter())?;
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, false)),
            self.dim as i32,
            Arc::new(Float32Array::from(entries.values.clone())),
            None,
        )?;
        let checks: UInt64Array = entries
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                check(
                    &self.identity,
                    k,
                    &entries.values[i * self.dim..(i + 1) * self.dim],
                )
            })
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(keys), Arc::new(vectors), Arc::new(checks)],
        )?;
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![
                KeyValue::new(IDENTITY_KEY.to_string(), self.identity.clone()),
                KeyValue::new(DIM_KEY.to_string(), self.dim.to_string()),
            ]))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(out)
    }
}
