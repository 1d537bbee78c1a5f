//! `chunk_text(text, max_tokens [, overlap_tokens [, model]])`: a text cut
//! into chunks of at most `max_tokens` tokens of `model`'s tokenizer (the
//! default embedding model's when not named), as a list of structs
//! `{chunk, start, end, tokens}` to `unnest` into a row per chunk
//! ([`crate::text::chunk`] says where chunks end).
//!
//! `start` and `end` are character offsets (Unicode code points) into the
//! text, from 0, `end` exclusive: `substr(text, start + 1, end - start)` is
//! `chunk`. `tokens` is the chunk's token count without the special tokens
//! the encoder adds; `max_tokens` may be at most the model's
//! `max_seq_length` less those, so `embed(chunk)` never truncates. NULL and
//! empty texts give no chunks (an empty list).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Builder, ListArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::functions::embed::model_name;
use crate::model::{EmbeddingModel, shared_model};
use crate::text::chunk::{char_offsets, spans};

/// The `chunk_text` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ChunkUdf {
    signature: Signature,
}

impl Default for ChunkUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkUdf {
    pub fn new() -> Self {
        // Exact types: the budget, overlap and model must be seen as
        // literals while the query is planned (a coercion would hide them
        // behind a CAST).
        let strings = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut accepted = Vec::new();
        for text in &strings {
            accepted.push(TypeSignature::Exact(vec![text.clone(), DataType::Int64]));
            accepted.push(TypeSignature::Exact(vec![
                text.clone(),
                DataType::Int64,
                DataType::Int64,
            ]));
            for model in &strings {
                accepted.push(TypeSignature::Exact(vec![
                    text.clone(),
                    DataType::Int64,
                    DataType::Int64,
                    model.clone(),
                ]));
            }
        }
        ChunkUdf {
            signature: Signature::one_of(accepted, Volatility::Immutable),
        }
    }
}

/// The struct of one chunk.
fn chunk_fields() -> Fields {
    Fields::from(vec![
        Field::new("chunk", DataType::Utf8, false),
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
        Field::new("tokens", DataType::Int64, false),
    ])
}

fn item_field() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(chunk_fields()),
        false,
    ))
}

/// What a call asks for: budget, overlap and model.
struct Request {
    max_tokens: usize,
    overlap: usize,
    model: Arc<EmbeddingModel>,
}

/// Reads and checks the constant arguments (`None`: not a constant).
fn request(args: &[Option<&ScalarValue>]) -> Result<Request> {
    let int = |i: usize, name: &str| -> Result<Option<i64>> {
        match args.get(i) {
            None => Ok(None),
            Some(Some(ScalarValue::Int64(Some(v)))) => Ok(Some(*v)),
            Some(_) => plan_err!("chunk_text: {name} must be a constant integer"),
        }
    };
    let Some(max_tokens) = int(1, "max_tokens")? else {
        return plan_err!("chunk_text(text, max_tokens [, overlap_tokens [, model]])");
    };
    let overlap = int(2, "overlap_tokens")?.unwrap_or(0);
    let name = match args.get(3) {
        None => model_name(None)?,
        Some(Some(model)) => model_name(Some(model))?,
        Some(None) => return plan_err!("chunk_text: the model must be a constant string"),
    };
    if max_tokens <= 0 {
        return plan_err!("chunk_text: max_tokens must be at least 1, not {max_tokens}");
    }
    if overlap < 0 || overlap >= max_tokens {
        return plan_err!(
            "chunk_text: overlap_tokens must be at least 0 and less than max_tokens \
             ({max_tokens}), not {overlap}"
        );
    }
    let model = shared_model(&name).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let room = model
        .max_seq_length()
        .saturating_sub(model.special_tokens());
    if max_tokens as usize > room {
        return plan_err!(
            "chunk_text: max_tokens {max_tokens} is more than {name} reads without truncating \
             ({} tokens, {} of them special): at most {room}",
            model.max_seq_length(),
            model.special_tokens()
        );
    }
    Ok(Request {
        max_tokens: max_tokens as usize,
        overlap: overlap as usize,
        model,
    })
}

impl ScalarUDFImpl for ChunkUdf {
    fn name(&self) -> &str {
        "chunk_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item_field()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        request(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::List(item_field()),
            false,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut constants = Vec::new();
        for arg in &args.args[1..] {
            match arg {
                ColumnarValue::Scalar(s) => constants.push(Some(s)),
                ColumnarValue::Array(_) => constants.push(None),
            }
        }
        let mut scalars: Vec<Option<&ScalarValue>> = vec![None];
        scalars.extend(constants);
        let request = request(&scalars)?;
        let texts = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(chunk_array(&request, &texts)?))
    }
}

/// The chunks of every text of `texts`.
fn chunk_array(request: &Request, texts: &ArrayRef) -> Result<ArrayRef> {
    let texts: Vec<Option<&str>> = match texts.data_type() {
        DataType::Utf8 => texts.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => texts.as_string::<i64>().iter().collect(),
        DataType::Utf8View => texts.as_string_view().iter().collect(),
        other => return exec_err!("chunk_text: the text must be a string, not {other}"),
    };
    let mut chunk = StringBuilder::new();
    let (mut start, mut end, mut tokens) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut offsets = vec![0i32];
    let mut total = 0usize;
    for text in texts {
        let text = text.unwrap_or("");
        let token_offsets = request
            .model
            .token_offsets(text)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut count = |span: &str| {
            request
                .model
                .token_offsets(span)
                .map(|t| t.len())
                .unwrap_or(usize::MAX)
        };
        let found = spans(
            text,
            &token_offsets,
            request.max_tokens,
            request.overlap,
            &mut count,
        );
        let bytes: Vec<usize> = found.iter().flat_map(|s| [s.start, s.end]).collect();
        let chars = char_offsets(text, &bytes);
        for (i, span) in found.iter().enumerate() {
            chunk.append_value(&text[span.start..span.end]);
            start.append_value(chars[2 * i] as i64);
            end.append_value(chars[2 * i + 1] as i64);
            tokens.append_value(span.tokens as i64);
        }
        total += found.len();
        let Ok(offset) = i32::try_from(total) else {
            return exec_err!("chunk_text: more than 2^31 chunks in one batch");
        };
        offsets.push(offset);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(chunk.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(tokens.finish()),
    ];
    let structs = StructArray::try_new(chunk_fields(), columns, None)?;
    let list = ListArray::try_new(
        item_field(),
        OffsetBuffer::new(offsets.into()),
        Arc::new(structs),
        None,
    )?;
    Ok(Arc::new(list) as ArrayRef)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_when_planned() {
        let text = None;
        let int = |v: i64| ScalarValue::Int64(Some(v));
        let tiny = ScalarValue::Utf8(Some(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-bert").to_string(),
        ));
        let (zero, four, five, big) = (int(0), int(4), int(5), int(1000));
        let error = |args: &[Option<&ScalarValue>]| match request(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(error(&[text, Some(&zero)]).contains("max_tokens must be at least 1"));
        assert!(
            error(&[text, Some(&four), Some(&five), Some(&tiny)])
                .contains("overlap_tokens must be at least 0 and less than max_tokens")
        );
        assert!(error(&[text, Some(&big), Some(&zero), Some(&tiny)]).contains("at most 126"));
        assert!(error(&[text, None]).contains("constant integer"));
        let ok = request(&[text, Some(&five), Some(&four), Some(&tiny)]).unwrap();
        assert_eq!((ok.max_tokens, ok.overlap), (5, 4));
    }

    /// Over the real tokenizer (the tiny test model's): each chunk's own
    /// tokens are at most the budget and what the chunk reports, and the
    /// chunks cover the text's words in order.
    #[test]
    fn chunks_keep_their_budget_under_the_models_own_tokenizer() {
        let model = shared_model(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-bert"
        ))
        .unwrap();
        let texts: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec![
            Some(
                "Kiln plans SQL as a DAG.\n\nIt lowers it onto GPU kernels: embeddings, \
                 vector scoring, relational transforms. Unbelievably-hyphenated-wordsmithing \
                 tokenizes into many pieces; antidisestablishmentarianism too!",
            ),
            None,
            Some(""),
            Some("日本語の文章です。次の文です。"),
        ]));
        for (max, overlap) in [(4, 0), (6, 2), (10, 3), (30, 5)] {
            let request = Request {
                max_tokens: max,
                overlap,
                model: Arc::clone(&model),
            };
            let list = chunk_array(&request, &texts).unwrap();
            let list = list.as_list::<i32>();
            assert_eq!(list.value_length(1), 0);
            assert_eq!(list.value_length(2), 0);
            for row in [0, 3] {
                let chunks = list.value(row);
                let chunks = chunks.as_struct();
                let text = chunks.column(0).as_string::<i32>();
                let tokens = chunks
                    .column(3)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                assert!(!chunks.is_empty());
                for i in 0..chunks.len() {
                    let own = model.token_offsets(text.value(i)).unwrap().len();
                    assert!(own <= max, "{max}/{overlap}: {:?} has {own}", text.value(i));
                    assert!(tokens.value(i) as usize <= max);
                }
            }
        }
    }
}
