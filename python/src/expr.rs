//! Expressions: `kiln.col`, `kiln.lit`, Python operators on them, and the
//! SQL functions by name (DataFusion's and Kiln's: `cosine_similarity`,
//! `embed`, `chunk_text`, ...). They are DataFusion's `Expr`.

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, Float32Array};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{AggregateUDF, BinaryExpr, Expr, Operator, ScalarUDF, SortExpr};
use datafusion::prelude::lit as df_lit;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::usage;

/// An expression over a frame's columns (`kiln.col("x") + 1`).
#[pyclass(module = "kiln._kiln", name = "Expr", from_py_object)]
#[derive(Clone)]
pub(crate) struct PyExpr {
    pub(crate) expr: Expr,
}

impl From<Expr> for PyExpr {
    fn from(expr: Expr) -> Self {
        PyExpr { expr }
    }
}

/// A sort key: an expression, ascending or descending (`col("x").desc()`).
#[pyclass(module = "kiln._kiln", name = "SortExpr", from_py_object)]
#[derive(Clone)]
pub(crate) struct PySortExpr {
    pub(crate) sort: SortExpr,
}

/// A column by its exact name (no case folding, no parsing of dots).
#[pyfunction]
pub(crate) fn col(name: &str) -> PyExpr {
    Expr::Column(Column::from_name(name)).into()
}

/// A constant: None, bool, int (Int64), float (Float64), str, bytes, or a
/// list of numbers (a vector: FixedSizeList<Float32>).
#[pyfunction]
pub(crate) fn lit(value: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
    Ok(df_lit(scalar(value)?).into())
}

/// The scalar of a Python constant.
pub(crate) fn scalar(value: &Bound<'_, PyAny>) -> PyResult<ScalarValue> {
    if value.is_none() {
        return Ok(ScalarValue::Null);
    }
    // bool before int: Python's bool is an int.
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(ScalarValue::Boolean(Some(b.is_true())));
    }
    if value.is_instance_of::<PyInt>() {
        let v: i64 = value
            .extract()
            .map_err(|_| usage(format!("the integer {value} does not fit in 64 bits")))?;
        return Ok(ScalarValue::Int64(Some(v)));
    }
    if value.is_instance_of::<PyFloat>() {
        return Ok(ScalarValue::Float64(Some(value.extract()?)));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(ScalarValue::Utf8(Some(s.to_cow()?.to_string())));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(ScalarValue::Binary(Some(b.as_bytes().to_vec())));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        return Ok(vector_scalar(&vector(value)?));
    }
    Err(usage(format!(
        "cannot use a {} as a constant: use None, bool, int, float, str, bytes or a list of numbers",
        value.get_type().name()?
    )))
}

/// A Python sequence of numbers as a vector.
pub(crate) fn vector(value: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    value
        .extract::<Vec<f32>>()
        .map_err(|_| usage("a vector must be a list of numbers"))
}

/// A vector constant: FixedSizeList<Float32> of its length, as embeddings are.
fn vector_scalar(values: &[f32]) -> ScalarValue {
    let items: Arc<dyn Array> = Arc::new(Float32Array::from(values.to_vec()));
    let field = Arc::new(Field::new_list_field(DataType::Float32, true));
    let list = arrow::array::FixedSizeListArray::new(field, values.len() as i32, items, None);
    ScalarValue::FixedSizeList(Arc::new(list))
}

/// An operand: an `Expr` as it is, anything else as a constant.
pub(crate) fn operand(value: &Bound<'_, PyAny>) -> PyResult<Expr> {
    match value.extract::<PyExpr>() {
        Ok(e) => Ok(e.expr),
        Err(_) => Ok(df_lit(scalar(value)?)),
    }
}

/// A column argument: a name (`"x"`) or an `Expr`.
pub(crate) fn column_or_expr(value: &Bound<'_, PyAny>) -> PyResult<Expr> {
    if let Ok(name) = value.cast::<PyString>() {
        return Ok(col(&name.to_cow()?).expr);
    }
    value.extract::<PyExpr>().map(|e| e.expr).map_err(|_| {
        usage(format!(
            "expected a column name or an Expr, got a {}",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// Every function `call_function` knows: DataFusion's scalar and aggregate
/// functions, then Kiln's (a Kiln function of the same name wins). Built
/// once per process.
fn scalar_functions() -> &'static [Arc<ScalarUDF>] {
    static ALL: OnceLock<Vec<Arc<ScalarUDF>>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = datafusion::functions::all_default_functions();
        all.extend(datafusion::functions_nested::all_default_nested_functions());
        all.extend(kiln_planner::kiln_functions().into_iter().map(Arc::new));
        all
    })
}

fn aggregate_functions() -> &'static [Arc<AggregateUDF>] {
    static ALL: OnceLock<Vec<Arc<AggregateUDF>>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = datafusion::functions_aggregate::all_default_aggregate_functions();
        all.extend(kiln_planner::kiln_aggregates().into_iter().map(Arc::new));
        all
    })
}

/// Calls the SQL function `name` on `args` (expressions or constants).
#[pyfunction]
#[pyo3(signature = (name, *args))]
pub(crate) fn call_function(name: &str, args: &Bound<'_, PyTuple>) -> PyResult<PyExpr> {
    let args = args
        .iter()
        .map(|a| operand(&a))
        .collect::<PyResult<Vec<_>>>()?;
    let wanted = name.to_ascii_lowercase();
    let matches = |n: &str, aliases: &[String]| n == wanted || aliases.contains(&wanted);
    if let Some(udf) = scalar_functions()
        .iter()
        .rev()
        .find(|f| matches(f.name(), f.aliases()))
    {
        return Ok(udf.call(args).into());
    }
    if let Some(udaf) = aggregate_functions()
        .iter()
        .rev()
        .find(|f| matches(f.name(), f.aliases()))
    {
        return Ok(udaf.call(args).into());
    }
    Err(usage(format!("no function named '{name}'")))
}

/// The names of the functions `call_function` knows, sorted.
#[pyfunction]
pub(crate) fn function_names() -> Vec<String> {
    let mut names: Vec<String> = scalar_functions()
        .iter()
        .map(|f| f.name().to_string())
        .chain(aggregate_functions().iter().map(|f| f.name().to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn binary(left: &Expr, op: Operator, right: Expr) -> PyExpr {
    Expr::BinaryExpr(BinaryExpr::new(Box::new(left.clone()), op, Box::new(right))).into()
}

impl PyExpr {
    /// `self op other`, or `other op self` when `reflected` (Python's
    /// `__radd__` and kin, for `1 + col("x")`).
    fn apply(&self, op: Operator, other: &Bound<'_, PyAny>, reflected: bool) -> PyResult<PyExpr> {
        let other = operand(other)?;
        Ok(if reflected {
            binary(&other, op, self.expr.clone())
        } else {
            binary(&self.expr, op, other)
        })
    }
}

#[pymethods]
impl PyExpr {
    fn __repr__(&self) -> String {
        format!("Expr({})", self.expr)
    }

    fn __str__(&self) -> String {
        self.expr.to_string()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<PyExpr> {
        let op = match op {
            CompareOp::Eq => Operator::Eq,
            CompareOp::Ne => Operator::NotEq,
            CompareOp::Lt => Operator::Lt,
            CompareOp::Le => Operator::LtEq,
            CompareOp::Gt => Operator::Gt,
            CompareOp::Ge => Operator::GtEq,
        };
        self.apply(op, other, false)
    }

    fn __add__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Plus, other, false)
    }
    fn __radd__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Plus, other, true)
    }
    fn __sub__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Minus, other, false)
    }
    fn __rsub__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Minus, other, true)
    }
    fn __mul__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Multiply, other, false)
    }
    fn __rmul__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Multiply, other, true)
    }
    fn __truediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Divide, other, false)
    }
    fn __rtruediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Divide, other, true)
    }
    fn __mod__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Modulo, other, false)
    }
    fn __and__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::And, other, false)
    }
    fn __rand__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::And, other, true)
    }
    fn __or__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Or, other, false)
    }
    fn __ror__(&self, other: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        self.apply(Operator::Or, other, true)
    }
    fn __invert__(&self) -> PyExpr {
        Expr::Not(Box::new(self.expr.clone())).into()
    }
    fn __neg__(&self) -> PyExpr {
        Expr::Negative(Box::new(self.expr.clone())).into()
    }
    fn __bool__(&self) -> PyResult<bool> {
        Err(usage(
            "an Expr has no truth value: combine conditions with & and |, not 'and' and 'or'",
        ))
    }

    /// The name `alias` gave this expression (None when it has none).
    #[getter]
    fn alias_name(&self) -> Option<String> {
        match &self.expr {
            Expr::Alias(a) => Some(a.name.clone()),
            _ => None,
        }
    }

    /// The expression under another name.
    fn alias(&self, name: &str) -> PyExpr {
        self.expr.clone().alias(name).into()
    }

    fn is_null(&self) -> PyExpr {
        self.expr.clone().is_null().into()
    }

    fn is_not_null(&self) -> PyExpr {
        self.expr.clone().is_not_null().into()
    }

    /// Whether the value is one of `values`.
    fn is_in(&self, values: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
        let list = values
            .try_iter()?
            .map(|v| operand(&v?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(self.expr.clone().in_list(list, false).into())
    }

    /// The value as another Arrow type, named as Arrow names it
    /// (`"Int64"`, `"Float32"`, `"Utf8"`, `"Date32"`, ...).
    fn cast(&self, dtype: &str) -> PyResult<PyExpr> {
        let to: DataType = dtype
            .parse()
            .map_err(|e| usage(format!("cast: '{dtype}' is not an Arrow type: {e}")))?;
        Ok(datafusion::logical_expr::cast(self.expr.clone(), to).into())
    }

    /// This expression as an ascending sort key.
    #[pyo3(signature = (nulls_first = false))]
    fn asc(&self, nulls_first: bool) -> PySortExpr {
        PySortExpr {
            sort: self.expr.clone().sort(true, nulls_first),
        }
    }

    /// This expression as a descending sort key.
    #[pyo3(signature = (nulls_first = true))]
    fn desc(&self, nulls_first: bool) -> PySortExpr {
        PySortExpr {
            sort: self.expr.clone().sort(false, nulls_first),
        }
    }
}

#[pymethods]
impl PySortExpr {
    fn __repr__(&self) -> String {
        format!("SortExpr({})", self.sort)
    }
}
