//! `embed(text)` and `embed(text, 'model-name-or-path')`: sentence embeddings
//! as `FixedSizeList<Float32, dim>`.
//!
//! The model is resolved and loaded while the query is planned (its width is
//! the result type), once per process. In a projection or a filter the
//! planner replaces the call with an [`crate::exec::embed::EmbedExec`],
//! which gathers rows across input batches; elsewhere (an aggregate's
//! argument, a sort key) each input batch is embedded as a whole, grouped
//! into token-budget batches by length. NULL text gives a NULL embedding.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, StringArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use kiln_kernels::Device;

use crate::model::embed_cache::{EmbedCache, text_key};
use crate::model::precision::Precision;
use crate::model::{DEFAULT_MODEL, EmbeddingModel, Embeddings, shared_model};

/// The `embed` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedUdf {
    signature: Signature,
}

impl Default for EmbedUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbedUdf {
    pub fn new() -> Self {
        // Exact types, no coercion: a coerced model argument would become a
        // CAST expression, and the model must be seen as a literal while the
        // query is planned (its width is the result type).
        let strings = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut accepted = Vec::new();
        for text in &strings {
            accepted.push(TypeSignature::Exact(vec![text.clone()]));
            for model in &strings {
                accepted.push(TypeSignature::Exact(vec![text.clone(), model.clone()]));
            }
        }
        EmbedUdf {
            signature: Signature::one_of(accepted, Volatility::Immutable),
        }
    }
}

/// The result type for a model of width `dim`.
pub fn embedding_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
    )
}

/// The model an `embed` call names: its second argument, or the default.
pub fn model_name(arg: Option<&ScalarValue>) -> Result<String> {
    match arg {
        None => Ok(DEFAULT_MODEL.to_string()),
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s.clone()),
        Some(other) => {
            plan_err!("embed(text, model): the model must be a non-NULL string, got {other}")
        }
    }
}

fn load(name: &str) -> Result<Arc<EmbeddingModel>> {
    shared_model(name).map_err(|e| DataFusionError::External(Box::new(e)))
}

impl ScalarUDFImpl for EmbedUdf {
    fn name(&self) -> &str {
        "embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        // The width depends on the model: return_field_from_args answers.
        plan_err!("embed: the result type depends on the model argument")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = match args.scalar_arguments {
            [_] => model_name(None)?,
            [_, Some(model)] => model_name(Some(model))?,
            [_, None] => {
                return plan_err!("embed(text, model): the model must be a constant string");
            }
            _ => return plan_err!("embed takes (text) or (text, model)"),
        };
        let model = load(&name)?;
        Ok(Arc::new(Field::new(
            self.name(),
            embedding_type(model.dim()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = match args.args.get(1) {
            None => model_name(None)?,
            Some(ColumnarValue::Scalar(s)) => model_name(Some(s))?,
            Some(ColumnarValue::Array(_)) => {
                return exec_err!("embed(text, model): the model must be a constant string");
            }
        };
        let model = load(&name)?;
        let texts = args.args[0].to_array(args.number_rows)?;
        let device = session_device(&args.config_options)?;
        let precision = session_precision(&args.config_options, device.info())?;
        let (embedded, _) = embed_array(&model, &device, precision, &texts)?;
        Ok(ColumnarValue::Array(embedded))
    }
}

/// The device Kiln's encoder runs on for the session's options (see
/// [`crate::device::session_kernel_device`]), opened once per process.
pub fn session_device(options: &ConfigOptions) -> Result<Device> {
    crate::device::session_kernel_device(options)
}

pub use crate::device::session_precision;

/// Embeds `texts` (any string array) with `model` on `device` at
/// `precision`: a
/// `FixedSizeList<Float32, dim>` array, NULL where the text is NULL, and
/// what the encoder counted.
pub fn embed_array(
    model: &EmbeddingModel,
    device: &Device,
    precision: Precision,
    texts: &ArrayRef,
) -> Result<(ArrayRef, Embeddings)> {
    let (array, embedded, _) = embed_array_cached(model, device, precision, texts, None)?;
    Ok((array, embedded))
}

/// Rows of one call served by the embedding cache, and texts embedded.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// Where a row's embedding comes from.
enum Source {
    Null,
    /// Row `i` of the vectors read from the cache.
    Cached(usize),
    /// Row `i` of the vectors the encoder computed.
    Computed(usize),
}

/// [`embed_array`], looking each text up in `cache` first: only texts not
/// there (each once) go to the encoder, and what it computes joins the
/// cache. What was embedded is in the [`Embeddings`] returned.
pub fn embed_array_cached(
    model: &EmbeddingModel,
    device: &Device,
    precision: Precision,
    texts: &ArrayRef,
    cache: Option<&EmbedCache>,
) -> Result<(ArrayRef, Embeddings, CacheCounts)> {
    let texts: StringArray = match texts.data_type() {
        DataType::Utf8 => texts.as_string::<i32>().clone(),
        _ => datafusion::arrow::compute::cast(texts, &DataType::Utf8)?
            .as_string::<i32>()
            .clone(),
    };
    let dim = model.dim();
    let mut sources = Vec::with_capacity(texts.len());
    let mut cached = Vec::new();
    let mut misses: Vec<&str> = Vec::new();
    let mut miss_keys: Vec<[u8; 32]> = Vec::new();
    let mut first_miss: std::collections::HashMap<[u8; 32], usize> = Default::default();
    let mut counts = CacheCounts::default();
    for text in texts.iter() {
        let Some(text) = text else {
            sources.push(Source::Null);
            continue;
        };
        let Some(cache) = cache else {
            sources.push(Source::Computed(misses.len()));
            misses.push(text);
            continue;
        };
        let key = text_key(text);
        if let Some(&i) = first_miss.get(&key) {
            counts.hits += 1;
            sources.push(Source::Computed(i));
        } else if cache.get(&key, &mut cached) {
            counts.hits += 1;
            sources.push(Source::Cached(cached.len() / dim - 1));
        } else {
            first_miss.insert(key, misses.len());
            sources.push(Source::Computed(misses.len()));
            misses.push(text);
            miss_keys.push(key);
        }
    }
    let embedded = model
        .embed_with(device, precision, &misses)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    if let Some(cache) = cache {
        counts.misses = misses.len() as u64;
        cache.put(&miss_keys, &embedded.values);
    }
    let mut values = Vec::with_capacity(texts.len() * dim);
    for source in &sources {
        match source {
            Source::Null => values.extend(std::iter::repeat_n(0f32, dim)),
            Source::Cached(i) => values.extend_from_slice(&cached[i * dim..(i + 1) * dim]),
            Source::Computed(i) => values.extend_from_slice(embedded.row(*i)),
        }
    }
    let nulls = texts
        .nulls()
        .cloned()
        .map(|n| NullBuffer::new(n.into_inner()));
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        nulls,
    )?;
    Ok((Arc::new(list), embedded, counts))
}
