//! The as-of join's probe strategy ([`super::asof_join::AsofStrategy::Probe`]):
//! the right side (the features) is read whole into memory and indexed —
//! its rows grouped by key, each group sorted by time — and each left row
//! (an event) finds its match by a binary search in its key's group, in the
//! left's own order. The left side, usually the far larger one, is neither
//! sorted nor moved between partitions; its partitions probe the one index
//! in parallel.
//!
//! Among right rows of one key and one time, the last in the right's input
//! order is the match (as pandas' `merge_asof` takes the last).

use std::sync::Arc;

use ahash::RandomState;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::Result;
use datafusion::execution::memory_pool::MemoryReservation;
use futures::StreamExt;
use std::collections::HashMap;

use super::asof_join::{AsofSpec, Times, Tolerance, int64_array};

/// Whether a key column is compared as a 64-bit integer.
fn integer_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
    )
}

/// Keys of a batch, as group lookups.
enum Keys {
    /// No keys: every row is in the one group.
    None,
    /// One integer key.
    Int(datafusion::arrow::array::PrimitiveArray<datafusion::arrow::datatypes::Int64Type>),
    /// Anything else: the keys' row format, and whether each row has
    /// every key (no NULL).
    Rows(Rows, Vec<bool>),
}

/// How to read keys into [`Keys`].
#[derive(Debug)]
enum KeyReader {
    None,
    Int,
    /// The keys' types (the left's; the right's are cast to them) and
    /// their converter into row format.
    Rows(Vec<DataType>, RowConverter),
}

impl KeyReader {
    fn new(left_types: &[DataType], right_types: &[DataType]) -> Result<KeyReader> {
        Ok(match (left_types, right_types) {
            ([], []) => KeyReader::None,
            ([l], [r]) if integer_key(l) && integer_key(r) => KeyReader::Int,
            _ => KeyReader::Rows(
                left_types.to_vec(),
                RowConverter::new(
                    left_types
                        .iter()
                        .map(|t| SortField::new(t.clone()))
                        .collect(),
                )?,
            ),
        })
    }

    fn read(&self, batch: &RecordBatch, keys: &[usize]) -> Result<Keys> {
        match self {
            KeyReader::None => Ok(Keys::None),
            KeyReader::Int => Ok(Keys::Int(int64_array(batch.column(keys[0]))?)),
            KeyReader::Rows(types, converter) => {
                let columns: Vec<ArrayRef> = keys
                    .iter()
                    .zip(types)
                    .map(|(i, t)| {
                        let c = batch.column(*i);
                        match c.data_type() == t {
                            true => Ok(Arc::clone(c)),
                            false => cast(c, t),
                        }
                    })
                    .collect::<std::result::Result<_, _>>()?;
                let valid = (0..batch.num_rows())
                    .map(|r| columns.iter().all(|c| c.is_valid(r)))
                    .collect();
                Ok(Keys::Rows(converter.convert_columns(&columns)?, valid))
            }
        }
    }
}

/// The right side, indexed.
#[derive(Debug)]
pub(crate) struct Index {
    /// The right rows with a key and a time (their `right_output` columns),
    /// grouped by key, each group by time (then input order).
    batch: RecordBatch,
    /// Their times, in that order.
    times: Sorted,
    groups: Groups,
    reader: KeyReader,
    /// Held for as long as the index lives.
    _reservation: MemoryReservation,
}

/// The times of the indexed rows, in the index's order.
#[derive(Debug)]
enum Sorted {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

#[derive(Debug)]
enum Groups {
    All,
    Int(HashMap<i64, (u32, u32), RandomState>),
    /// Integer keys in a compact range: a table indexed by key − `min`.
    Dense {
        min: i64,
        table: Vec<(u32, u32)>,
    },
    Rows(HashMap<Box<[u8]>, (u32, u32), RandomState>),
}

impl Index {
    /// Reads and indexes the right side; its rows are counted against
    /// `reservation` (the query's memory pool): a right side that does not
    /// fit fails with the pool's error.
    pub(crate) async fn build(
        mut right: datafusion::physical_plan::SendableRecordBatchStream,
        spec: &AsofSpec,
        left_key_types: &[DataType],
        float: bool,
        reservation: MemoryReservation,
    ) -> Result<Index> {
        let schema = right.schema();
        let mut batches = Vec::new();
        while let Some(batch) = right.next().await.transpose()? {
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        let batch = concat_batches(&schema, &batches)?;
        drop(batches);
        let right_types: Vec<DataType> = spec
            .right_keys
            .iter()
            .map(|i| schema.field(*i).data_type().clone())
            .collect();
        let reader = KeyReader::new(left_key_types, &right_types)?;
        let keys = reader.read(&batch, &spec.right_keys)?;
        let times = Times::of(batch.column(spec.right_time), float)?;
        let n = batch.num_rows();
        reservation.try_grow(n * 24)?;
        let (order, times, groups) = match (&keys, times) {
            (Keys::None, times) => {
                let order = sorted_by_time(&times, (0..n as u32).collect());
                let times = gather_times(&times, &order);
                (order, times, Groups::All)
            }
            (Keys::Int(k), times) => {
                let k: Vec<Option<i64>> = k.iter().collect();
                let mut rows: Vec<u32> =
                    (0..n as u32).filter(|&r| k[r as usize].is_some()).collect();
                // By key, then time, then input order.
                rows.sort_by_key(|&r| k[r as usize]);
                let mut order = Vec::with_capacity(rows.len());
                let mut map = HashMap::with_hasher(RandomState::new());
                for run in rows.chunk_by(|a, b| k[*a as usize] == k[*b as usize]) {
                    let start = order.len() as u32;
                    order.extend(sorted_by_time(&times, run.to_vec()));
                    if let Some(key) = k[run[0] as usize] {
                        map.insert(key, (start, order.len() as u32));
                    }
                }
                let sorted = gather_times(&times, &order);
                (order, sorted, Groups::Int(map))
            }
            (Keys::Rows(k, valid), times) => {
                let mut rows: Vec<u32> = (0..n as u32).filter(|&r| valid[r as usize]).collect();
                rows.sort_by(|a, b| k.row(*a as usize).cmp(&k.row(*b as usize)));
                let mut order = Vec::with_capacity(rows.len());
                let mut map = HashMap::with_hasher(RandomState::new());
                for run in rows.chunk_by(|a, b| k.row(*a as usize) == k.row(*b as usize)) {
                    let start = order.len() as u32;
                    order.extend(sorted_by_time(&times, run.to_vec()));
                    let key: Box<[u8]> = k.row(run[0] as usize).as_ref().into();
                    map.insert(key, (start, order.len() as u32));
                }
                let sorted = gather_times(&times, &order);
                (order, sorted, Groups::Rows(map))
            }
        };
        // The output columns in the index's order: a match's position is
        // its row.
        let indices = UInt32Array::from(order);
        let columns = spec
            .right_output
            .iter()
            .map(|i| take(batch.column(*i), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let fields: Vec<_> = spec
            .right_output
            .iter()
            .map(|i| Arc::clone(&schema.fields()[*i]))
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(indices.len())),
        )?;
        Ok(Index {
            batch,
            times,
            groups: dense(groups),
            reader,
            _reservation: reservation,
        })
    }

    /// The rows of `order` in `[start, end)` of a left row's key.
    fn group(&self, keys: &Keys, i: usize) -> Option<(usize, usize)> {
        let (start, end) = match (&self.groups, keys) {
            (Groups::All, _) => (0, self.batch.num_rows() as u32),
            (Groups::Int(map), Keys::Int(k)) => *map.get(&k.is_valid(i).then(|| k.value(i))?)?,
            (Groups::Dense { min, table }, Keys::Int(k)) => {
                let key = k.is_valid(i).then(|| k.value(i))?;
                *table.get(usize::try_from(key.checked_sub(*min)?).ok()?)?
            }
            (Groups::Rows(map), Keys::Rows(k, valid)) => {
                *map.get(valid[i].then(|| k.row(i))?.as_ref())?
            }
            _ => return None,
        };
        Some((start as usize, end as usize))
    }

    /// The join of one left batch: its columns, then the matched right
    /// row's `right_output` columns (NULL without a match, or the row
    /// dropped unless `keep_unmatched`).
    pub(crate) fn probe(
        &self,
        left: &RecordBatch,
        spec: &AsofSpec,
        float: bool,
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let n = left.num_rows();
        let keys = self.reader.read(left, &spec.left_keys)?;
        // Integer times read in place; float times through Times (NaN is
        // NULL).
        let (int_times, times) = match float {
            false => (
                Some(int64_array(left.column(spec.left_time))?),
                Times::Int(Vec::new()),
            ),
            true => (None, Times::of(left.column(spec.left_time), float)?),
        };
        let mut matches: Vec<Option<u32>> = Vec::with_capacity(n);
        for i in 0..n {
            let found = self.group(&keys, i).and_then(|(start, end)| {
                let at = match (&self.times, &times) {
                    (Sorted::Int(r), _) => {
                        let l = int_times.as_ref()?;
                        let t = l.is_valid(i).then(|| l.value(i))?;
                        let at = start + last_at_or_before(&r[start..end], t, spec.strict)?;
                        let gap = t as i128 - r[at] as i128;
                        let ok = match spec.tolerance {
                            None => true,
                            Some(Tolerance::Int(tol)) => gap <= tol as i128,
                            Some(Tolerance::Float(tol)) => gap as f64 <= tol,
                        };
                        ok.then_some(at)
                    }
                    (Sorted::Float(r), Times::Float(l)) => {
                        let t = l[i]?;
                        let at = start + last_at_or_before(&r[start..end], t, spec.strict)?;
                        let tol = match spec.tolerance {
                            None => f64::INFINITY,
                            Some(Tolerance::Int(tol)) => tol as f64,
                            Some(Tolerance::Float(tol)) => tol,
                        };
                        (t - r[at] <= tol).then_some(at)
                    }
                    _ => None,
                }?;
                Some(at as u32)
            });
            matches.push(found);
        }
        let indices = UInt32Array::from(matches);
        let mut columns: Vec<ArrayRef> = left.columns().to_vec();
        for column in self.batch.columns() {
            columns.push(take(column, &indices, None)?);
        }
        let out = RecordBatch::try_new(Arc::clone(schema), columns)?;
        if spec.keep_unmatched || indices.null_count() == 0 {
            return Ok(out);
        }
        let keep = datafusion::arrow::compute::is_not_null(&indices)?;
        Ok(filter_record_batch(&out, &keep)?)
    }
}

/// Integer groups as a table when their keys are compact (a range at most
/// 4 times their number, plus 4,096).
fn dense(groups: Groups) -> Groups {
    let Groups::Int(map) = &groups else {
        return groups;
    };
    let (Some(&min), Some(&max)) = (map.keys().min(), map.keys().max()) else {
        return groups;
    };
    let span = (max as i128 - min as i128 + 1) as u128;
    if span > 4 * map.len() as u128 + 4096 {
        return groups;
    }
    let mut table = vec![(0u32, 0u32); span as usize];
    for (key, range) in map {
        table[(key - min) as usize] = *range;
    }
    Groups::Dense { min, table }
}

/// The position of the last of `sorted` at or before `t` (strictly before
/// with `strict`).
fn last_at_or_before<T: PartialOrd + Copy>(sorted: &[T], t: T, strict: bool) -> Option<usize> {
    let after = match strict {
        true => sorted.partition_point(|&x| x < t),
        false => sorted.partition_point(|&x| x <= t),
    };
    after.checked_sub(1)
}

/// `rows` (of one key) with a time, ordered by time, then input order;
/// rows with a NULL time dropped.
fn sorted_by_time(times: &Times, mut rows: Vec<u32>) -> Vec<u32> {
    match times {
        Times::Int(t) => {
            rows.retain(|&r| t[r as usize].is_some());
            rows.sort_by_key(|&r| (t[r as usize], r));
        }
        Times::Float(t) => {
            rows.retain(|&r| t[r as usize].is_some());
            rows.sort_by(|&a, &b| {
                let (x, y) = (t[a as usize].unwrap_or(0.0), t[b as usize].unwrap_or(0.0));
                x.total_cmp(&y).then(a.cmp(&b))
            });
        }
    }
    rows
}

/// The times of `order`'s rows (none NULL: [`sorted_by_time`] dropped them).
fn gather_times(times: &Times, order: &[u32]) -> Sorted {
    match times {
        Times::Int(t) => Sorted::Int(order.iter().map(|&r| t[r as usize].unwrap_or(0)).collect()),
        Times::Float(t) => Sorted::Float(
            order
                .iter()
                .map(|&r| t[r as usize].unwrap_or(0.0))
                .collect(),
        ),
    }
}
