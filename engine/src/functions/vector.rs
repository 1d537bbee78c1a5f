//! Vector scoring functions: `dot_product(a, b)`, `cosine_similarity(a, b)`,
//! `l2_distance(a, b)` and `l2_normalize(a)`.
//!
//! Arguments are vectors: `FixedSizeList` or `List` of Float32 (or Float64,
//! read as Float32), a column or a constant such as the array literal
//! `[0.1, 0.2, ...]`. Where both dimensions are known while planning (fixed
//! size lists, literals) a mismatch is a planning error naming both; `List`
//! columns are checked row by row. NULL in gives NULL out, and the cosine
//! similarity of a zero vector is NULL (it has no direction). Scores are
//! Float32, accumulated in f64.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float32Builder, GenericListArray,
    OffsetSizeTrait,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use kiln_kernels::ops::vector::{Metric, exact_score};

/// Which function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorOp {
    DotProduct,
    CosineSimilarity,
    L2Distance,
    L2Normalize,
}

impl VectorOp {
    pub fn name(self) -> &'static str {
        match self {
            VectorOp::DotProduct => "dot_product",
            VectorOp::CosineSimilarity => "cosine_similarity",
            VectorOp::L2Distance => "l2_distance",
            VectorOp::L2Normalize => "l2_normalize",
        }
    }

    /// The metric a scoring function computes; `None` for `l2_normalize`.
    pub fn metric(self) -> Option<Metric> {
        match self {
            VectorOp::DotProduct => Some(Metric::Dot),
            VectorOp::CosineSimilarity => Some(Metric::Cosine),
            VectorOp::L2Distance => Some(Metric::L2),
            VectorOp::L2Normalize => None,
        }
    }

    /// The scoring function of a metric.
    pub fn of_metric(metric: Metric) -> VectorOp {
        match metric {
            Metric::Dot => VectorOp::DotProduct,
            Metric::Cosine => VectorOp::CosineSimilarity,
            Metric::L2 => VectorOp::L2Distance,
        }
    }

    fn arity(self) -> usize {
        if self == VectorOp::L2Normalize { 1 } else { 2 }
    }

    pub fn all() -> [VectorOp; 4] {
        [
            VectorOp::DotProduct,
            VectorOp::CosineSimilarity,
            VectorOp::L2Distance,
            VectorOp::L2Normalize,
        ]
    }
}

/// One of the vector functions as a DataFusion UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorUdf {
    op: VectorOp,
    signature: Signature,
}

impl VectorUdf {
    pub fn new(op: VectorOp) -> Self {
        VectorUdf {
            op,
            signature: Signature::any(op.arity(), Volatility::Immutable),
        }
    }
}

/// The element type of a vector type, if it is one.
pub(crate) fn element_type(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

/// The dimension known while planning: a fixed size list's size, or a
/// literal's length.
fn planned_dim(field: &Field, scalar: Option<&ScalarValue>) -> Option<usize> {
    if let DataType::FixedSizeList(_, d) = field.data_type() {
        return Some(*d as usize);
    }
    match scalar {
        Some(ScalarValue::List(a)) if a.len() == 1 && !a.is_null(0) => {
            Some(a.value_length(0) as usize)
        }
        Some(ScalarValue::LargeList(a)) if a.len() == 1 && !a.is_null(0) => {
            Some(a.value_length(0) as usize)
        }
        _ => None,
    }
}

/// Rows of vectors, however they arrived.
pub(crate) struct Vectors {
    /// The components, as f32.
    values: Float32Array,
    /// `(start, len)` of each row, `None` for NULL.
    rows: Vec<Option<(usize, usize)>>,
    /// A constant broadcast to every row.
    constant: bool,
}

impl Vectors {
    pub(crate) fn row(&self, i: usize) -> Option<&[f32]> {
        let (start, len) = self.rows[if self.constant { 0 } else { i }]?;
        Some(&self.values.values()[start..start + len])
    }
}

fn to_f32(values: &ArrayRef, name: &str) -> Result<Float32Array> {
    match values.data_type() {
        DataType::Float32 => Ok(values.as_primitive::<Float32Type>().clone()),
        DataType::Float64 | DataType::Float16 | DataType::Int64 | DataType::Int32 => {
            let cast = datafusion::arrow::compute::cast(values, &DataType::Float32)?;
            Ok(cast.as_primitive::<Float32Type>().clone())
        }
        other => exec_err!("{name}: vector components must be floats, got {other}"),
    }
}

fn list_rows<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Vec<Option<(usize, usize)>> {
    let offsets = list.value_offsets();
    (0..list.len())
        .map(|i| {
            (!list.is_null(i)).then(|| {
                let start = offsets[i].as_usize();
                (start, offsets[i + 1].as_usize() - start)
            })
        })
        .collect()
}

pub(crate) fn vectors(array: &ArrayRef, constant: bool, name: &str) -> Result<Vectors> {
    let (values, rows) = match array.data_type() {
        DataType::FixedSizeList(_, d) => {
            let list = array.as_fixed_size_list();
            let d = *d as usize;
            let rows = (0..list.len())
                .map(|i| (!list.is_null(i)).then_some((i * d, d)))
                .collect();
            (to_f32(list.values(), name)?, rows)
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            (to_f32(list.values(), name)?, list_rows(list))
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            (to_f32(list.values(), name)?, list_rows(list))
        }
        other => return exec_err!("{name}: expected a vector (a list of floats), got {other}"),
    };
    // A NULL row's slots may hold anything (Parquet writes them as NULL);
    // only the components of present rows must be present.
    if values.null_count() > 0
        && rows
            .iter()
            .flatten()
            .any(|&(start, len)| (start..start + len).any(|j| values.is_null(j)))
    {
        return exec_err!("{name}: vectors must not contain NULL components");
    }
    Ok(Vectors {
        values,
        rows,
        constant,
    })
}

fn arg_vectors(arg: &ColumnarValue, name: &str) -> Result<Vectors> {
    match arg {
        ColumnarValue::Array(a) => vectors(a, false, name),
        ColumnarValue::Scalar(s) => vectors(&s.to_array_of_size(1)?, true, name),
    }
}

impl ScalarUDFImpl for VectorUdf {
    fn name(&self) -> &str {
        self.op.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!(
            "{}: the result type is computed from the arguments",
            self.name()
        )
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = self.name();
        for (i, f) in args.arg_fields.iter().enumerate() {
            match element_type(f.data_type()) {
                Some(DataType::Float32 | DataType::Float64 | DataType::Float16) => {}
                _ => {
                    return plan_err!(
                        "{name}: argument {} must be a vector (a list of floats), got {}",
                        i + 1,
                        f.data_type()
                    );
                }
            }
        }
        if self.op == VectorOp::L2Normalize {
            let out = match args.arg_fields[0].data_type() {
                DataType::FixedSizeList(_, d) => DataType::FixedSizeList(
                    Arc::new(Field::new_list_field(DataType::Float32, false)),
                    *d,
                ),
                _ => DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
            };
            return Ok(Arc::new(Field::new(name, out, true)));
        }
        let dims: Vec<Option<usize>> = args
            .arg_fields
            .iter()
            .zip(args.scalar_arguments)
            .map(|(f, s)| planned_dim(f, *s))
            .collect();
        if let [Some(a), Some(b)] = dims[..]
            && a != b
        {
            return plan_err!(
                "{name}: dimension mismatch: the first vector has {a} components, the second {b}"
            );
        }
        Ok(Arc::new(Field::new(name, DataType::Float32, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let n = args.number_rows;
        let a = arg_vectors(&args.args[0], name)?;
        if self.op == VectorOp::L2Normalize {
            return normalize(&a, n, args.return_field.data_type()).map(ColumnarValue::Array);
        }
        let b = arg_vectors(&args.args[1], name)?;
        let mut out = Float32Builder::with_capacity(n);
        for i in 0..n {
            match (a.row(i), b.row(i)) {
                (Some(x), Some(y)) => {
                    if x.len() != y.len() {
                        return exec_err!(
                            "{name}: dimension mismatch in row {} of its batch: the first vector has {} components, the second {}",
                            i + 1,
                            x.len(),
                            y.len()
                        );
                    }
                    out.append_option(self.op.metric().and_then(|m| exact_score(m, x, y)));
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Each row scaled to unit L2 norm; a zero vector stays zero (as
/// `torch.nn.functional.normalize` leaves it).
fn normalize(a: &Vectors, n: usize, out_type: &DataType) -> Result<ArrayRef> {
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let mut values = Vec::new();
    let mut lens = Vec::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    for i in 0..n {
        match a.row(i) {
            Some(x) => {
                let norm = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                values.extend(x.iter().map(|v| (f64::from(*v) * scale) as f32));
                lens.push(x.len());
                valid.push(true);
            }
            None => {
                lens.push(0);
                valid.push(false);
            }
        }
    }
    let nulls = valid
        .contains(&false)
        .then(|| NullBuffer::from(valid.clone()));
    match out_type {
        DataType::FixedSizeList(_, d) => {
            // NULL rows still own `d` (zero) slots in a fixed size list.
            let d = *d as usize;
            let mut fixed = Vec::with_capacity(n * d);
            let mut src = values.iter();
            for (len, ok) in lens.iter().zip(&valid) {
                if *ok {
                    fixed.extend(src.by_ref().take(*len));
                } else {
                    fixed.extend(std::iter::repeat_n(0f32, d));
                }
            }
            Ok(Arc::new(FixedSizeListArray::try_new(
                item,
                d as i32,
                Arc::new(Float32Array::from(fixed)),
                nulls,
            )?))
        }
        _ => {
            let offsets = datafusion::arrow::buffer::OffsetBuffer::from_lengths(lens);
            Ok(Arc::new(GenericListArray::<i32>::try_new(
                item,
                offsets,
                Arc::new(Float32Array::from(values)),
                nulls,
            )?))
        }
    }
}

/// The vector in row 0 of `array` (a one-row array, such as an evaluated
/// constant), or `None` when it is NULL.
pub fn first_vector(array: &ArrayRef, name: &str) -> Result<Option<Vec<f32>>> {
    if array.is_empty() {
        return Ok(None);
    }
    Ok(vectors(array, true, name)?.row(0).map(<[f32]>::to_vec))
}

/// Whether `t` is a vector type these functions accept (a list of floats).
pub fn is_vector_type(t: &DataType) -> bool {
    matches!(
        element_type(t),
        Some(DataType::Float32 | DataType::Float64 | DataType::Float16)
    )
}
