//! Personal data and secrets in SQL ([`crate::text::pii`] says what is
//! found and how):
//! - `detect_pii(text [, types])`: a list of structs `{type, start, end,
//!   score}`, one per finding, in order; `start` and `end` are character
//!   offsets (from 0, `end` exclusive, as `chunk_text`'s). NULL text gives
//!   NULL.
//! - `mask_pii(text [, types [, mode]])`: the text with each finding
//!   replaced: `mode` `'redact'` (the default: `<EMAIL>`), `'mask'`
//!   (`j***@*******.com`) or `'hash'` (`<EMAIL:9f86d081884c7d65>`, SHA-256
//!   salted with `kiln.pii_salt`, which it requires).
//!
//! `types` is a constant string of comma-separated kinds (`'email,phone'`;
//! Presidio's entity names are accepted too), or NULL or `'all'` for every
//! kind.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, ListArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::options::KilnOptions;
use crate::text::chunk::char_offsets;
use crate::text::pii::{MaskMode, PiiType, detect, mask};

const STRINGS: [DataType; 3] = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];

/// Signatures: text, then up to `constants` more strings (or NULLs).
fn signature(constants: usize) -> Signature {
    let mut accepted = Vec::new();
    for text in &STRINGS {
        accepted.push(TypeSignature::Exact(vec![text.clone()]));
        let mut prefix = vec![text.clone()];
        for _ in 0..constants {
            prefix.push(DataType::Utf8);
            accepted.push(TypeSignature::Exact(prefix.clone()));
        }
    }
    // NULL types (`detect_pii(t, NULL)`) come as Null.
    for text in &STRINGS {
        accepted.push(TypeSignature::Exact(vec![text.clone(), DataType::Null]));
        if constants > 1 {
            accepted.push(TypeSignature::Exact(vec![
                text.clone(),
                DataType::Null,
                DataType::Utf8,
            ]));
        }
    }
    Signature::one_of(accepted, Volatility::Immutable)
}

/// Argument `i` as a constant string (`Ok(None)`: absent or NULL).
fn constant<'a>(
    args: &'a [Option<&'a ScalarValue>],
    i: usize,
    func: &str,
    what: &str,
) -> Result<Option<&'a str>> {
    match args.get(i) {
        None => Ok(None),
        Some(Some(ScalarValue::Null)) => Ok(None),
        Some(Some(ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s))) => {
            Ok(s.as_deref())
        }
        Some(_) => plan_err!("{func}: {what} must be a constant string"),
    }
}

/// The kinds a `types` argument names.
pub fn parse_types(types: Option<&str>, func: &str) -> Result<Vec<PiiType>> {
    let Some(types) = types.filter(|t| !t.trim().eq_ignore_ascii_case("all")) else {
        return Ok(PiiType::ALL.to_vec());
    };
    let mut kinds = Vec::new();
    for name in types.split(',').filter(|n| !n.trim().is_empty()) {
        match PiiType::parse(name) {
            Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
            Some(_) => {}
            None => {
                let known: Vec<&str> = PiiType::ALL.iter().map(|k| k.name()).collect();
                return plan_err!(
                    "{func}: unknown PII type '{}' (known: {})",
                    name.trim(),
                    known.join(", ")
                );
            }
        }
    }
    if kinds.is_empty() {
        return plan_err!("{func}: types names no PII type");
    }
    Ok(kinds)
}

fn scalars(args: &ScalarFunctionArgs) -> Vec<Option<&ScalarValue>> {
    args.args
        .iter()
        .map(|a| match a {
            ColumnarValue::Scalar(s) => Some(s),
            ColumnarValue::Array(_) => None,
        })
        .collect()
}

/// The texts of a string array, whatever its string type.
fn texts<'a>(array: &'a ArrayRef, func: &str) -> Result<Vec<Option<&'a str>>> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        other => return exec_err!("{func}: the text must be a string, not {other}"),
    })
}

/// The `detect_pii` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DetectPiiUdf {
    signature: Signature,
}

impl Default for DetectPiiUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl DetectPiiUdf {
    pub fn new() -> Self {
        DetectPiiUdf {
            signature: signature(1),
        }
    }
}

fn finding_fields() -> Fields {
    Fields::from(vec![
        Field::new("type", DataType::Utf8, false),
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
    ])
}

fn finding_item() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(finding_fields()),
        false,
    ))
}

impl ScalarUDFImpl for DetectPiiUdf {
    fn name(&self) -> &str {
        "detect_pii"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(finding_item()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types = constant(args.scalar_arguments, 1, self.name(), "types")?;
        if args.arg_fields.len() > 1 && args.scalar_arguments[1].is_none() {
            return plan_err!("detect_pii: types must be a constant string");
        }
        parse_types(types, self.name())?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::List(finding_item()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let constants = scalars(&args);
        let kinds = parse_types(constant(&constants, 1, self.name(), "types")?, self.name())?;
        let array = args.args[0].to_array(args.number_rows)?;
        let texts = texts(&array, self.name())?;
        let (mut kind, mut start, mut end, mut score) = (
            StringBuilder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            Float64Builder::new(),
        );
        let mut offsets = vec![0i32];
        let mut valid = Vec::with_capacity(texts.len());
        let mut total = 0usize;
        for text in &texts {
            if let Some(text) = text {
                let found = detect(text, &kinds);
                let bytes: Vec<usize> = found.iter().flat_map(|f| [f.start, f.end]).collect();
                let chars = char_offsets(text, &bytes);
                for (i, f) in found.iter().enumerate() {
                    kind.append_value(f.kind.name());
                    start.append_value(chars[2 * i] as i64);
                    end.append_value(chars[2 * i + 1] as i64);
                    score.append_value(f.score);
                }
                total += found.len();
            }
            valid.push(text.is_some());
            let Ok(offset) = i32::try_from(total) else {
                return exec_err!("detect_pii: more than 2^31 findings in one batch");
            };
            offsets.push(offset);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(kind.finish()),
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(score.finish()),
        ];
        let structs = StructArray::try_new(finding_fields(), columns, None)?;
        let list = ListArray::try_new(
            finding_item(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            Some(NullBuffer::from(valid)),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The `mask_pii` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MaskPiiUdf {
    signature: Signature,
}

impl Default for MaskPiiUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskPiiUdf {
    pub fn new() -> Self {
        MaskPiiUdf {
            signature: signature(2),
        }
    }
}

/// The mode argument, checked (the salt is read when the function runs).
fn mode_name<'a>(args: &'a [Option<&'a ScalarValue>]) -> Result<&'a str> {
    let mode = constant(args, 2, "mask_pii", "mode")?.unwrap_or("redact");
    if !["redact", "mask", "hash"].contains(&mode.to_ascii_lowercase().as_str()) {
        return plan_err!("mask_pii: mode must be 'redact', 'mask' or 'hash', not '{mode}'");
    }
    Ok(mode)
}

impl ScalarUDFImpl for MaskPiiUdf {
    fn name(&self) -> &str {
        "mask_pii"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        for i in 1..args.arg_fields.len() {
            if args.scalar_arguments[i].is_none() {
                let what = if i == 1 { "types" } else { "mode" };
                return plan_err!("mask_pii: {what} must be a constant string");
            }
        }
        parse_types(
            constant(args.scalar_arguments, 1, self.name(), "types")?,
            self.name(),
        )?;
        mode_name(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(self.name(), DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let constants = scalars(&args);
        let kinds = parse_types(constant(&constants, 1, self.name(), "types")?, self.name())?;
        let salt = args
            .config_options
            .extensions
            .get::<KilnOptions>()
            .map(|o| o.pii_salt.clone());
        let mode = match MaskMode::parse(mode_name(&constants)?, salt.as_deref()) {
            Ok(mode) => mode,
            Err(e) => return exec_err!("{e}"),
        };
        let array = args.args[0].to_array(args.number_rows)?;
        let texts = texts(&array, self.name())?;
        let mut out = StringBuilder::with_capacity(texts.len(), array.get_buffer_memory_size());
        let mut bytes = 0usize;
        for text in texts {
            match text {
                Some(text) => {
                    let masked = mask(text, &kinds, &mode);
                    // Labels can be longer than what they replace.
                    bytes += masked.len();
                    if bytes > i32::MAX as usize {
                        return exec_err!(
                            "mask_pii: the masked texts of one batch exceed 2 GiB; \
                             use smaller batches (datafusion.execution.batch_size)"
                        );
                    }
                    out.append_value(masked);
                }
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
