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
//!
//! `chunk_text(text, max_chars => N [, overlap_chars => M])` budgets
//! characters instead (Kiln's SQL front end rewrites it to
//! `chunk_text_chars(text, N [, M])`, which may also be called by that
//! name): chunks of at most `N` characters from their first non-space
//! character to their last, the same boundaries preferred, the struct's
//! last field `chars`.

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
use crate::text::chunk::{Span, char_offsets, char_spans, spans};

/// The `chunk_text` scalar function, or `chunk_text_chars` (character
/// budgets).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ChunkUdf {
    signature: Signature,
    chars: bool,
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
            chars: false,
        }
    }

    /// `chunk_text_chars(text, max_chars [, overlap_chars])`.
    pub fn chars() -> Self {
        let mut accepted = Vec::new();
        for text in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            accepted.push(TypeSignature::Exact(vec![text.clone(), DataType::Int64]));
            accepted.push(TypeSignature::Exact(vec![
                text,
                DataType::Int64,
                DataType::Int64,
            ]));
        }
        ChunkUdf {
            signature: Signature::one_of(accepted, Volatility::Immutable),
            chars: true,
        }
    }

    fn fields(&self) -> Fields {
        chunk_fields(if self.chars { "chars" } else { "tokens" })
    }

    fn item_field(&self) -> FieldRef {
        Arc::new(Field::new_list_field(
            DataType::Struct(self.fields()),
            false,
        ))
    }

    fn request(&self, args: &[Option<&ScalarValue>]) -> Result<Request> {
        if self.chars {
            char_request(args)
        } else {
            request(args)
        }
    }
}

/// The struct of one chunk; its size field is `size` (tokens or chars).
fn chunk_fields(size: &str) -> Fields {
    Fields::from(vec![
        Field::new("chunk", DataType::Utf8, false),
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
        Field::new(size, DataType::Int64, false),
    ])
}

/// What a call asks for: budget, overlap and model (none: characters).
struct Request {
    max_tokens: usize,
    overlap: usize,
    model: Option<Arc<EmbeddingModel>>,
}

/// The arguments of `chunk_text_chars(text, max_chars [, overlap_chars])`.
fn char_request(args: &[Option<&ScalarValue>]) -> Result<Request> {
    let int = |i: usize, name: &str| -> Result<Option<i64>> {
        match args.get(i) {
            None => Ok(None),
            Some(Some(ScalarValue::Int64(Some(v)))) => Ok(Some(*v)),
            Some(_) => plan_err!("chunk_text: {name} must be a constant integer"),
        }
    };
    let Some(max_chars) = int(1, "max_chars")? else {
        return plan_err!("chunk_text(text, max_chars => N [, overlap_chars => M])");
    };
    let overlap = int(2, "overlap_chars")?.unwrap_or(0);
    if max_chars <= 0 {
        return plan_err!("chunk_text: max_chars must be at least 1, not {max_chars}");
    }
    if overlap < 0 || overlap >= max_chars {
        return plan_err!(
            "chunk_text: overlap_chars must be at least 0 and less than max_chars \
             ({max_chars}), not {overlap}"
        );
    }
    Ok(Request {
        max_tokens: max_chars as usize,
        overlap: overlap as usize,
        model: None,
    })
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
        model: Some(model),
    })
}

impl ScalarUDFImpl for ChunkUdf {
    fn name(&self) -> &str {
        if self.chars {
            "chunk_text_chars"
        } else {
            "chunk_text"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(self.item_field()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.request(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::List(self.item_field()),
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
        let request = self.request(&scalars)?;
        let texts = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(chunk_array(
            &request,
            &texts,
            self.fields(),
        )?))
    }
}

/// The spans of `text` a request cuts.
fn text_spans(request: &Request, text: &str) -> Result<Vec<Span>> {
    let Some(model) = &request.model else {
        return Ok(char_spans(text, request.max_tokens, request.overlap));
    };
    let token_offsets = model
        .token_offsets(text)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut count = |span: &str| {
        model
            .token_offsets(span)
            .map(|t| t.len())
            .unwrap_or(usize::MAX)
    };
    Ok(spans(
        text,
        &token_offsets,
        request.max_tokens,
        request.overlap,
        &mut count,
    ))
}

/// The chunks of every text of `texts`, as lists of structs of `fields`.
fn chunk_array(request: &Request, texts: &ArrayRef, fields: Fields) -> Result<ArrayRef> {
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
        let found = text_spans(request, text)?;
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
    let item = Arc::new(Field::new_list_field(
        DataType::Struct(fields.clone()),
        false,
    ));
    let structs = StructArray::try_new(fields, columns, None)?;
    let list = ListArray::try_new(
        item,
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
                model: Some(Arc::clone(&model)),
            };
            let list = chunk_array(&request, &texts, chunk_fields("tokens")).unwrap();
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

    /// Character budgets: every chunk at most `max` characters and equal
    /// to the text between its offsets; sentence ends preferred to words,
    /// words to the middle of one; overlap repeats the end of the last.
    #[test]
    fn character_budgets_cut_at_the_best_boundary() {
        let text = "Kiln plans SQL. It lowers it onto kernels.\n\nA new paragraph here; \
                    supercalifragilisticexpialidocious words too.";
        let texts: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec![
            Some(text),
            None,
        ]));
        for (max, overlap) in [(20, 0), (20, 6), (45, 10), (8, 2), (1000, 0)] {
            let request = char_request(&[
                None,
                Some(&ScalarValue::Int64(Some(max))),
                Some(&ScalarValue::Int64(Some(overlap))),
            ])
            .unwrap();
            let list = chunk_array(&request, &texts, chunk_fields("chars")).unwrap();
            let list = list.as_list::<i32>();
            assert_eq!(list.value_length(1), 0);
            let chunks = list.value(0);
            let chunks = chunks.as_struct();
            let chunk = chunks.column(0).as_string::<i32>();
            let int = |c: usize| {
                chunks
                    .column(c)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone()
            };
            let (start, end, size) = (int(1), int(2), int(3));
            let chars: Vec<char> = text.chars().collect();
            for i in 0..chunks.len() {
                let own = chunk.value(i).chars().count();
                assert!(own as i64 <= max, "{max}: {:?}", chunk.value(i));
                assert_eq!(own as i64, size.value(i));
                let between: String = chars[start.value(i) as usize..end.value(i) as usize]
                    .iter()
                    .collect();
                assert_eq!(between, chunk.value(i));
            }
            if max == 45 {
                // The first ends at the sentence end that fits.
                assert_eq!(chunk.value(0), "Kiln plans SQL. It lowers it onto kernels.");
            }
            if max == 1000 {
                assert_eq!(chunks.len(), 1);
            }
            if overlap == 0 && max == 20 {
                assert!(chunk.value(0).ends_with("SQL."), "{:?}", chunk.value(0));
            }
        }
        let bad = |max: i64, overlap: i64| {
            char_request(&[
                None,
                Some(&ScalarValue::Int64(Some(max))),
                Some(&ScalarValue::Int64(Some(overlap))),
            ])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert!(bad(0, 0).contains("max_chars must be at least 1, not 0"));
        assert!(bad(5, 5).contains("overlap_chars must be at least 0 and less than max_chars"));
    }
}
