//! `vector_mean(vector)`: the component-wise mean (centroid) of a column of
//! vectors (fixed-size or variable lists of floats or integers), as a list
//! of doubles; NULL vectors are skipped, and no vector at all gives NULL.
//! Vectors of different lengths are an error. Mergeable (the state is the
//! component sums and the count), so it runs in parallel and distributes.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// The `vector_mean` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorMeanUdaf {
    signature: Signature,
}

impl Default for VectorMeanUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl VectorMeanUdaf {
    pub fn new() -> Self {
        VectorMeanUdaf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

fn doubles() -> DataType {
    DataType::new_list(DataType::Float64, true)
}

impl AggregateUDFImpl for VectorMeanUdaf {
    fn name(&self) -> &str {
        "vector_mean"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let inner = match &arg_types[0] {
            DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
                f.data_type().clone()
            }
            other => return plan_err!("vector_mean: the argument must be a vector, not {other}"),
        };
        if !inner.is_numeric() {
            return plan_err!("vector_mean: the vectors' components must be numbers, not {inner}");
        }
        Ok(doubles())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Mean::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(format!("{}[sums]", args.name), doubles(), true)),
            Arc::new(Field::new(
                format!("{}[count]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
}

/// Component sums and how many vectors were added.
#[derive(Debug, Default)]
struct Mean {
    sums: Vec<f64>,
    count: i64,
}

impl Mean {
    /// Adds `values`: one vector (`weight` 1), or a partial state's sums
    /// of `weight` vectors.
    fn add(&mut self, values: &Float64Array, weight: i64) -> Result<()> {
        if self.count == 0 && self.sums.is_empty() {
            self.sums = vec![0.0; values.len()];
        }
        if values.len() != self.sums.len() {
            return exec_err!(
                "vector_mean: vectors of lengths {} and {}",
                self.sums.len(),
                values.len()
            );
        }
        for (sum, v) in self.sums.iter_mut().zip(values.iter()) {
            *sum += v.unwrap_or(0.0);
        }
        self.count += weight;
        Ok(())
    }

    fn list(values: Option<Vec<f64>>) -> ScalarValue {
        match values {
            None => ScalarValue::List(Arc::new(ListArray::new_null(
                Arc::new(Field::new_list_field(DataType::Float64, true)),
                1,
            ))),
            Some(values) => {
                let field = Arc::new(Field::new_list_field(DataType::Float64, true));
                let offsets = OffsetBuffer::from_lengths([values.len()]);
                let values = Arc::new(Float64Array::from(values)) as ArrayRef;
                ScalarValue::List(Arc::new(ListArray::new(field, offsets, values, None)))
            }
        }
    }
}

impl Accumulator for Mean {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let lists = cast(&values[0], &doubles())?;
        let lists = lists.as_list::<i32>();
        for row in 0..lists.len() {
            if lists.is_null(row) {
                continue;
            }
            let vector = lists.value(row);
            self.add(vector.as_primitive::<Float64Type>(), 1)?;
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (sums, counts) = (
            states[0].as_list::<i32>(),
            states[1].as_primitive::<Int64Type>(),
        );
        for row in 0..sums.len() {
            if sums.is_null(row) || counts.is_null(row) || counts.value(row) == 0 {
                continue;
            }
            let partial = sums.value(row);
            self.add(partial.as_primitive::<Float64Type>(), counts.value(row))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let sums = (self.count > 0).then(|| self.sums.clone());
        Ok(vec![Self::list(sums), ScalarValue::Int64(Some(self.count))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mean = (self.count > 0).then(|| {
            self.sums
                .iter()
                .map(|s| s / self.count as f64)
                .collect::<Vec<_>>()
        });
        Ok(Self::list(mean))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sums.capacity() * 8
    }
}
