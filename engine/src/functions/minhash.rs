//! Near-duplicate detection in SQL ([`crate::text::minhash`] says how
//! signatures are made):
//! - `minhash(text, num_perm [, ngram [, unit]])`: a text's MinHash
//!   signature, `FixedSizeList<UInt64, num_perm>`; `ngram` defaults to 5,
//!   `unit` to `'word'` (or `'char'`). NULL text gives NULL.
//! - `minhash_bands(signature, bands, rows)`: the signature's LSH band
//!   hashes, a list of `bands` u64 (empty for a text without shingles).
//! - `minhash_similarity(a, b)`: the estimated Jaccard similarity of two
//!   signatures (the share of equal values), Float64.
//! - `connected_components(a, b)`: an aggregate over edges; a list of
//!   structs `{node, component}`, one per node seen, `component` the least
//!   node of its connected component (NULL ends are skipped).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Builder, ListArray, StructArray,
    UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, UInt64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

use crate::text::minhash::{MAX_PERM, MinHasher, Unit, band_hashes, similarity};

/// The default shingle length.
pub const DEFAULT_NGRAM: usize = 5;

const STRINGS: [DataType; 3] = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];

/// The texts of a string array, whatever its string type.
fn strings<'a>(array: &'a ArrayRef, func: &str) -> Result<Vec<Option<&'a str>>> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        other => return exec_err!("{func}: the text must be a string, not {other}"),
    })
}

/// The constant arguments after the first, `None` where one is a column.
fn constants(args: &[ColumnarValue]) -> Vec<Option<&ScalarValue>> {
    std::iter::once(None)
        .chain(args[1..].iter().map(|a| match a {
            ColumnarValue::Scalar(s) => Some(s),
            ColumnarValue::Array(_) => None,
        }))
        .collect()
}

/// Argument `i` as a constant positive integer at most `max`.
fn positive(
    args: &[Option<&ScalarValue>],
    i: usize,
    func: &str,
    name: &str,
    max: usize,
) -> Result<Option<usize>> {
    match args.get(i) {
        None => Ok(None),
        Some(Some(ScalarValue::Int64(Some(v)))) if *v >= 1 && *v as u64 <= max as u64 => {
            Ok(Some(*v as usize))
        }
        Some(Some(ScalarValue::Int64(Some(v)))) => {
            plan_err!("{func}: {name} must be between 1 and {max}, not {v}")
        }
        Some(_) => plan_err!("{func}: {name} must be a constant integer"),
    }
}

/// The `minhash` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinHashUdf {
    signature: Signature,
}

impl Default for MinHashUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl MinHashUdf {
    pub fn new() -> Self {
        // Exact types: the constants must be seen as literals when planned.
        let mut accepted = Vec::new();
        for text in &STRINGS {
            accepted.push(TypeSignature::Exact(vec![text.clone(), DataType::Int64]));
            accepted.push(TypeSignature::Exact(vec![
                text.clone(),
                DataType::Int64,
                DataType::Int64,
            ]));
            for unit in &STRINGS {
                accepted.push(TypeSignature::Exact(vec![
                    text.clone(),
                    DataType::Int64,
                    DataType::Int64,
                    unit.clone(),
                ]));
            }
        }
        MinHashUdf {
            signature: Signature::one_of(accepted, Volatility::Immutable),
        }
    }
}

/// What a `minhash` call asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinHashRequest {
    pub num_perm: usize,
    pub ngram: usize,
    pub unit: Unit,
}

impl MinHashRequest {
    fn from_args(args: &[Option<&ScalarValue>]) -> Result<Self> {
        const F: &str = "minhash";
        let Some(num_perm) = positive(args, 1, F, "num_perm", MAX_PERM)? else {
            return plan_err!("{F}(text, num_perm [, ngram [, unit]])");
        };
        let ngram = positive(args, 2, F, "ngram", 1 << 16)?.unwrap_or(DEFAULT_NGRAM);
        let unit = match args.get(3) {
            None => Unit::Word,
            Some(Some(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            )) => match Unit::parse(s) {
                Some(unit) => unit,
                None => return plan_err!("{F}: unit must be 'word' or 'char', not '{s}'"),
            },
            Some(_) => return plan_err!("{F}: unit must be a constant string"),
        };
        Ok(MinHashRequest {
            num_perm,
            ngram,
            unit,
        })
    }
}

/// The type of a signature of `num_perm` values.
pub fn signature_type(num_perm: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::UInt64, false)),
        num_perm as i32,
    )
}

impl ScalarUDFImpl for MinHashUdf {
    fn name(&self) -> &str {
        "minhash"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("minhash: the return type depends on num_perm")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let request = MinHashRequest::from_args(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            signature_type(request.num_perm),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let request = MinHashRequest::from_args(&constants(&args.args))?;
        let texts = args.args[0].to_array(args.number_rows)?;
        let texts = strings(&texts, "minhash")?;
        let mut hasher = MinHasher::new(request.num_perm, request.ngram, request.unit);
        let mut values = vec![0u64; texts.len() * request.num_perm];
        let mut valid = Vec::with_capacity(texts.len());
        for (text, out) in texts.iter().zip(values.chunks_exact_mut(request.num_perm)) {
            match text {
                Some(text) => {
                    hasher.signature(text, out);
                    valid.push(true);
                }
                None => {
                    out.fill(0);
                    valid.push(false);
                }
            }
        }
        let list = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::UInt64, false)),
            request.num_perm as i32,
            Arc::new(UInt64Array::from(values)),
            Some(NullBuffer::from(valid)),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The length of the signature type `t`, or a plan error.
fn signature_len(t: &DataType, func: &str) -> Result<usize> {
    match t {
        DataType::FixedSizeList(item, n) if item.data_type() == &DataType::UInt64 => {
            Ok(*n as usize)
        }
        other => {
            plan_err!("{func}: a signature must be minhash()'s FixedSizeList<UInt64>, not {other}")
        }
    }
}

/// The values of signature `row` of `list` (`None` when NULL).
fn signature_at(list: &FixedSizeListArray, row: usize) -> Option<&[u64]> {
    if list.is_null(row) {
        return None;
    }
    let n = list.value_length() as usize;
    let values = list.values().as_primitive::<UInt64Type>().values();
    let start = (list.offset() + row) * n;
    Some(&values[start..start + n])
}

/// The `minhash_bands` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinHashBandsUdf {
    signature: Signature,
}

impl Default for MinHashBandsUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl MinHashBandsUdf {
    pub fn new() -> Self {
        MinHashBandsUdf {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

fn bands_request(args: &[Option<&ScalarValue>], len: usize) -> Result<(usize, usize)> {
    const F: &str = "minhash_bands";
    let (Some(bands), Some(rows)) = (
        positive(args, 1, F, "bands", len)?,
        positive(args, 2, F, "rows", len)?,
    ) else {
        return plan_err!("{F}(signature, bands, rows)");
    };
    if bands * rows > len {
        return plan_err!(
            "{F}: {bands} bands of {rows} rows need {} signature values, the signature has {len}",
            bands * rows
        );
    }
    Ok((bands, rows))
}

impl ScalarUDFImpl for MinHashBandsUdf {
    fn name(&self) -> &str {
        "minhash_bands"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::UInt64, false))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let len = signature_len(args.arg_fields[0].data_type(), self.name())?;
        for (i, field) in args.arg_fields.iter().enumerate().skip(1) {
            if field.data_type() != &DataType::Int64 && !field.data_type().is_integer() {
                return plan_err!("minhash_bands: argument {} must be an integer", i + 1);
            }
        }
        let ints: Vec<Option<ScalarValue>> = args
            .scalar_arguments
            .iter()
            .map(|s| s.and_then(|s| s.cast_to(&DataType::Int64).ok()))
            .collect();
        let ints: Vec<Option<&ScalarValue>> = ints.iter().map(Option::as_ref).collect();
        bands_request(&ints, len)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::new_list(DataType::UInt64, false),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ints: Vec<Option<ScalarValue>> = constants(&args.args)
            .into_iter()
            .map(|s| s.and_then(|s| s.cast_to(&DataType::Int64).ok()))
            .collect();
        let ints: Vec<Option<&ScalarValue>> = ints.iter().map(Option::as_ref).collect();
        let signatures = args.args[0].to_array(args.number_rows)?;
        let len = signature_len(signatures.data_type(), self.name())?;
        let (bands, rows) = bands_request(&ints, len)?;
        let list = signatures.as_fixed_size_list();
        let mut values = Vec::with_capacity(list.len() * bands);
        let mut offsets = Vec::with_capacity(list.len() + 1);
        offsets.push(0i32);
        for row in 0..list.len() {
            if let Some(signature) = signature_at(list, row) {
                band_hashes(signature, bands, rows, &mut values);
            }
            let Ok(end) = i32::try_from(values.len()) else {
                return exec_err!("minhash_bands: more than 2^31 bands in one batch");
            };
            offsets.push(end);
        }
        let bands = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::UInt64, false)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(UInt64Array::from(values)),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(bands)))
    }
}

/// The `minhash_similarity` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinHashSimilarityUdf {
    signature: Signature,
}

impl Default for MinHashSimilarityUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl MinHashSimilarityUdf {
    pub fn new() -> Self {
        MinHashSimilarityUdf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for MinHashSimilarityUdf {
    fn name(&self) -> &str {
        "minhash_similarity"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let a = signature_len(&arg_types[0], self.name())?;
        let b = signature_len(&arg_types[1], self.name())?;
        if a != b {
            return plan_err!(
                "minhash_similarity: the signatures have {a} and {b} values; compare signatures \
                 of the same num_perm"
            );
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let b = args.args[1].to_array(args.number_rows)?;
        let (a, b) = (a.as_fixed_size_list(), b.as_fixed_size_list());
        let mut out = Float64Builder::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            match (signature_at(a, row), signature_at(b, row)) {
                (Some(x), Some(y)) => out.append_option(similarity(x, y)),
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The `connected_components` aggregate function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ConnectedComponentsUdaf {
    signature: Signature,
}

impl Default for ConnectedComponentsUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectedComponentsUdaf {
    pub fn new() -> Self {
        ConnectedComponentsUdaf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

fn component_fields(node: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("node", node.clone(), false),
        Field::new("component", node.clone(), false),
    ])
}

fn node_type(arg_types: &[DataType]) -> Result<DataType> {
    if let DataType::Dictionary(_, values) = &arg_types[0] {
        return plan_err!("connected_components: dictionary-encoded nodes; CAST them to {values}");
    }
    if arg_types[0] != arg_types[1] {
        return plan_err!(
            "connected_components: both ends of an edge must have one type, not {} and {}",
            arg_types[0],
            arg_types[1]
        );
    }
    Ok(arg_types[0].clone())
}

impl AggregateUDFImpl for ConnectedComponentsUdaf {
    fn name(&self) -> &str {
        "connected_components"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let node = node_type(arg_types)?;
        Ok(DataType::new_list(
            DataType::Struct(component_fields(&node)),
            false,
        ))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let node = args.exprs[0].data_type(args.schema)?;
        Ok(Box::new(Components::try_new(node)?))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let node = args.input_fields[0].data_type().clone();
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[nodes]", args.name),
                DataType::new_list(node.clone(), false),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[parents]", args.name),
                DataType::new_list(node, false),
                true,
            )),
        ])
    }
}

/// Union-find over nodes in Arrow's row format (order-preserving bytes, so
/// the least bytes are the least node); a component's root is its least
/// node.
#[derive(Debug)]
struct Components {
    node: DataType,
    converter: RowConverter,
    index: HashMap<Box<[u8]>, usize>,
    nodes: Vec<Box<[u8]>>,
    parent: Vec<usize>,
    bytes: usize,
}

impl Components {
    fn try_new(node: DataType) -> Result<Self> {
        let converter = RowConverter::new(vec![SortField::new(node.clone())])?;
        Ok(Components {
            node,
            converter,
            index: HashMap::new(),
            nodes: Vec::new(),
            parent: Vec::new(),
            bytes: 0,
        })
    }

    fn id(&mut self, bytes: &[u8]) -> usize {
        if let Some(&i) = self.index.get(bytes) {
            return i;
        }
        let i = self.nodes.len();
        let owned: Box<[u8]> = bytes.into();
        self.bytes += 2 * owned.len() + 48;
        self.index.insert(owned.clone(), i);
        self.nodes.push(owned);
        self.parent.push(i);
        i
    }

    fn find(&mut self, mut i: usize) -> usize {
        let mut root = i;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        while self.parent[i] != root {
            let next = self.parent[i];
            self.parent[i] = root;
            i = next;
        }
        root
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        if self.nodes[ra] < self.nodes[rb] {
            self.parent[rb] = ra;
        } else {
            self.parent[ra] = rb;
        }
    }

    /// Adds the edges `a[i]`–`b[i]` (rows with a NULL end are skipped).
    fn add_edges(&mut self, a: &ArrayRef, b: &ArrayRef) -> Result<()> {
        let ra = self.converter.convert_columns(&[Arc::clone(a)])?;
        let rb = self.converter.convert_columns(&[Arc::clone(b)])?;
        for i in 0..a.len() {
            if a.is_null(i) || b.is_null(i) {
                continue;
            }
            let x = self.id(ra.row(i).as_ref());
            let y = self.id(rb.row(i).as_ref());
            self.union(x, y);
        }
        Ok(())
    }

    /// Every node, and the root of each.
    fn nodes_and_roots(&mut self) -> Result<(ArrayRef, ArrayRef)> {
        let roots: Vec<usize> = (0..self.nodes.len()).map(|i| self.find(i)).collect();
        let parser = self.converter.parser();
        let nodes = self
            .converter
            .convert_rows(self.nodes.iter().map(|b| parser.parse(b)))?;
        let roots = self
            .converter
            .convert_rows(roots.iter().map(|&r| parser.parse(&self.nodes[r])))?;
        Ok((Arc::clone(&nodes[0]), Arc::clone(&roots[0])))
    }
}

/// A one-row list of `values`.
fn list_of(values: ArrayRef) -> ScalarValue {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), false));
    let offsets = OffsetBuffer::from_lengths([values.len()]);
    ScalarValue::List(Arc::new(ListArray::new(field, offsets, values, None)))
}

impl Accumulator for Components {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add_edges(&values[0], &values[1])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (nodes, parents) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        for row in 0..nodes.len() {
            if nodes.is_null(row) || parents.is_null(row) {
                continue;
            }
            self.add_edges(&nodes.value(row), &parents.value(row))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (nodes, roots) = self.nodes_and_roots()?;
        Ok(vec![list_of(nodes), list_of(roots)])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let (nodes, roots) = self.nodes_and_roots()?;
        let structs = StructArray::try_new(component_fields(&self.node), vec![nodes, roots], None)?;
        Ok(list_of(Arc::new(structs)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes + self.parent.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn components_join_chains_and_name_the_least_node() {
        let mut c = Components::try_new(DataType::Utf8).unwrap();
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("d"),
            Some("b"),
            None,
            Some("x"),
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("c"),
            Some("c"),
            Some("q"),
            Some("y"),
        ]));
        c.add_edges(&a, &b).unwrap();
        // A second partial state merged in: y–a joins {x, y} to a.
        let mut other = Components::try_new(DataType::Utf8).unwrap();
        let a2: ArrayRef = Arc::new(StringArray::from(vec!["y"]));
        let b2: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        other.add_edges(&a2, &b2).unwrap();
        let state: Vec<ArrayRef> = other
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        c.merge_batch(&state).unwrap();
        let ScalarValue::List(list) = c.evaluate().unwrap() else {
            panic!("not a list")
        };
        let structs = list.value(0);
        let structs = structs.as_struct();
        let mut pairs: Vec<(String, String)> = (0..structs.len())
            .map(|i| {
                (
                    structs.column(0).as_string::<i32>().value(i).to_string(),
                    structs.column(1).as_string::<i32>().value(i).to_string(),
                )
            })
            .collect();
        pairs.sort();
        let expect = [
            ("a", "a"),
            ("b", "b"),
            ("c", "b"),
            ("d", "b"),
            ("x", "a"),
            ("y", "a"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect();
        assert_eq!(pairs, expect);
    }

    #[test]
    fn integer_nodes_order_by_value_not_bytes() {
        let mut c = Components::try_new(DataType::Int64).unwrap();
        let a: ArrayRef = Arc::new(Int64Array::from(vec![256, -3]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, 256]));
        c.add_edges(&a, &b).unwrap();
        let (_, roots) = c.nodes_and_roots().unwrap();
        let roots = roots.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert!(roots.values().iter().all(|&r| r == -3));
    }

    #[test]
    fn arguments_are_checked_when_planned() {
        let int = |v: i64| ScalarValue::Int64(Some(v));
        let unit = ScalarValue::Utf8(Some("syllable".into()));
        let (zero, big, five) = (int(0), int(5000), int(5));
        let error = |args: &[Option<&ScalarValue>]| {
            MinHashRequest::from_args(args).unwrap_err().to_string()
        };
        assert!(error(&[None, Some(&zero)]).contains("num_perm must be between 1 and 1024, not 0"));
        assert!(error(&[None, Some(&big)]).contains("not 5000"));
        assert!(error(&[None, None]).contains("constant integer"));
        assert!(error(&[None, Some(&five), Some(&zero)]).contains("ngram must be between"));
        assert!(error(&[None, Some(&five), Some(&five), Some(&unit)]).contains("'word' or 'char'"));
        assert!(
            bands_request(&[None, Some(&five), Some(&five)], 20)
                .unwrap_err()
                .to_string()
                .contains("need 25 signature values")
        );
    }
}
