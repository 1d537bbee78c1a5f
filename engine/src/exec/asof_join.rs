//! The as-of (point-in-time) join: for each left row (an event), the latest
//! right row (a feature value) with equal keys whose time is at or before
//! the event's (strictly before with `strict`), within `tolerance` if one is
//! given — never a later one.
//!
//! A sort-merge join: both inputs are hash-partitioned on the keys and
//! sorted by (keys, time), which DataFusion's optimizer arranges from
//! [`ExecutionPlan::required_input_distribution`] and
//! [`ExecutionPlan::required_input_ordering`] (its sorts spill to disk, so
//! neither side need fit in memory); each partition is then one merge pass
//! holding at most two right batches. Without keys both inputs are one
//! partition.
//!
//! NULL or NaN keys and times never match. A left row without a match is
//! kept with NULL right columns when `keep_unmatched` (`ASOF LEFT JOIN`,
//! pandas' `merge_asof`), else dropped (`ASOF JOIN` in DuckDB).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::{SortOptions, cast, filter_record_batch, interleave};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// How far back a match may lie: in the time column's own unit (days for
/// dates, the timestamp's unit for timestamps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Int(i64),
    Float(f64),
}

/// What to join on, by column index of each input.
#[derive(Debug, Clone, PartialEq)]
pub struct AsofSpec {
    pub left_keys: Vec<usize>,
    pub right_keys: Vec<usize>,
    pub left_time: usize,
    pub right_time: usize,
    /// Match only right times strictly before the left time.
    pub strict: bool,
    pub tolerance: Option<Tolerance>,
    /// Keep left rows without a match (right columns NULL).
    pub keep_unmatched: bool,
    /// The right columns in the output, in order.
    pub right_output: Vec<usize>,
}

/// Whether the time column is compared as integers (integers, dates,
/// timestamps) or as floats (floats, decimals).
pub fn float_time(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// Whether `t` can be an as-of join's time column.
pub fn is_time_type(t: &DataType) -> bool {
    float_time(t)
        || matches!(
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

/// How an as-of join finds each left row's match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsofStrategy {
    /// Both sides partitioned on the keys and sorted by (keys, time), then
    /// merged: sorts spill, so neither side need fit in memory.
    Merge,
    /// The right side read whole into memory and indexed by key and time;
    /// each left row looked up by a binary search, in the left's own order
    /// and partitions ([`super::asof_probe`]): the left is not sorted.
    Probe,
}

/// The as-of join of `left` (events) and `right` (features).
#[derive(Debug)]
pub struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: AsofSpec,
    schema: SchemaRef,
    strategy: AsofStrategy,
    /// The probe strategy's index of the right side, built once for all
    /// left partitions.
    index: Arc<tokio::sync::OnceCell<Arc<super::asof_probe::Index>>>,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

fn sort_options() -> SortOptions {
    SortOptions {
        descending: false,
        nulls_first: false,
    }
}

impl AsofJoinExec {
    /// `schema`: the left's fields, then `spec.right_output`'s (nullable).
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        spec: AsofSpec,
        schema: SchemaRef,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        if spec.left_keys.len() != spec.right_keys.len() {
            return plan_err!(
                "as-of join: {} left keys but {} right keys",
                spec.left_keys.len(),
                spec.right_keys.len()
            );
        }
        let in_range = |i: &usize, n: usize| *i < n;
        if !spec
            .left_keys
            .iter()
            .chain([&spec.left_time])
            .all(|i| in_range(i, ls.fields().len()))
            || !spec
                .right_keys
                .iter()
                .chain([&spec.right_time])
                .chain(&spec.right_output)
                .all(|i| in_range(i, rs.fields().len()))
        {
            return internal_err!("as-of join: a column index is out of range");
        }
        let (lt, rt) = (
            ls.field(spec.left_time).data_type(),
            rs.field(spec.right_time).data_type(),
        );
        if !is_time_type(lt) || !is_time_type(rt) || float_time(lt) != float_time(rt) {
            return plan_err!(
                "as-of join: the times must both be numbers, dates or timestamps, got {lt} and {rt}"
            );
        }
        if schema.fields().len() != ls.fields().len() + spec.right_output.len() {
            return internal_err!("as-of join: the output schema does not fit the inputs");
        }
        let cache = Self::properties_of(&left, &spec, &schema, AsofStrategy::Merge);
        Ok(AsofJoinExec {
            left,
            right,
            spec,
            schema,
            strategy: AsofStrategy::Merge,
            index: Default::default(),
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The join with `strategy` (a new join: [`AsofJoinExec::try_new`]
    /// merges).
    pub fn with_strategy(mut self, strategy: AsofStrategy) -> Self {
        self.cache = Self::properties_of(&self.left, &self.spec, &self.schema, strategy);
        self.strategy = strategy;
        self
    }

    fn properties_of(
        left: &Arc<dyn ExecutionPlan>,
        spec: &AsofSpec,
        schema: &SchemaRef,
        strategy: AsofStrategy,
    ) -> Arc<PlanProperties> {
        // Probing keeps the left's partitions; merging needs the keys'
        // partitions (or, without keys, one).
        let partitioning = if spec.left_keys.is_empty() && strategy == AsofStrategy::Merge {
            datafusion::physical_plan::Partitioning::UnknownPartitioning(1)
        } else {
            left.output_partitioning().clone()
        };
        Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(schema)),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ))
    }

    pub fn spec(&self) -> &AsofSpec {
        &self.spec
    }

    pub fn strategy(&self) -> AsofStrategy {
        self.strategy
    }

    fn column(plan: &Arc<dyn ExecutionPlan>, i: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(plan.schema().field(i).name(), i))
    }

    fn ordering(plan: &Arc<dyn ExecutionPlan>, keys: &[usize], time: usize) -> Option<LexOrdering> {
        LexOrdering::new(keys.iter().chain([&time]).map(|i| PhysicalSortExpr {
            expr: Self::column(plan, *i),
            options: sort_options(),
        }))
    }
}

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let (ls, rs) = (self.left.schema(), self.right.schema());
        let keys: Vec<String> = self
            .spec
            .left_keys
            .iter()
            .zip(&self.spec.right_keys)
            .map(|(l, r)| format!("{} = {}", ls.field(*l).name(), rs.field(*r).name()))
            .collect();
        write!(
            f,
            "AsofJoinExec: {}on=[{}], {} {} {}{}{}",
            match self.strategy {
                AsofStrategy::Merge => "",
                AsofStrategy::Probe => "probe, ",
            },
            keys.join(", "),
            ls.field(self.spec.left_time).name(),
            if self.spec.strict { ">" } else { ">=" },
            rs.field(self.spec.right_time).name(),
            match self.spec.tolerance {
                Some(Tolerance::Int(t)) => format!(", tolerance={t}"),
                Some(Tolerance::Float(t)) => format!(", tolerance={t}"),
                None => String::new(),
            },
            if self.spec.keep_unmatched {
                ", keep unmatched"
            } else {
                ""
            }
        )
    }
}

impl ExecutionPlan for AsofJoinExec {
    fn name(&self) -> &'static str {
        "AsofJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        self.input_distribution_requirements().into_per_child()
    }

    /// Equal keys meet in one partition: both sides partitioned alike on
    /// the keys (or, without keys, each side whole).
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        if self.strategy == AsofStrategy::Probe {
            // The right side is read whole (one partition) and shared.
            return InputDistributionRequirements::new(vec![
                Distribution::UnspecifiedDistribution,
                Distribution::SinglePartition,
            ]);
        }
        if self.spec.left_keys.is_empty() {
            return InputDistributionRequirements::new(vec![Distribution::SinglePartition; 2]);
        }
        let exprs = |plan, keys: &[usize]| keys.iter().map(|i| Self::column(plan, *i)).collect();
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(exprs(&self.left, &self.spec.left_keys)),
            Distribution::KeyPartitioned(exprs(&self.right, &self.spec.right_keys)),
        ])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        if self.strategy == AsofStrategy::Probe {
            return vec![None, None];
        }
        vec![
            Self::ordering(&self.left, &self.spec.left_keys, self.spec.left_time)
                .map(OrderingRequirements::from),
            Self::ordering(&self.right, &self.spec.right_keys, self.spec.right_time)
                .map(OrderingRequirements::from),
        ]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("AsofJoinExec takes two children".into()))?;
        Ok(Arc::new(
            AsofJoinExec::try_new(left, right, self.spec.clone(), Arc::clone(&self.schema))?
                .with_strategy(self.strategy),
        ))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let partitions = self.properties().output_partitioning().partition_count();
        if partition >= partitions {
            return internal_err!(
                "AsofJoinExec has {partitions} partitions, asked for {partition}"
            );
        }
        if self.strategy == AsofStrategy::Probe {
            return self.probe(partition, context);
        }
        let left = self.left.execute(partition, Arc::clone(&context))?.boxed();
        let right = self.right.execute(partition, context)?.boxed();
        let ls = self.left.schema();
        let mut key_types: Vec<DataType> = self
            .spec
            .left_keys
            .iter()
            .map(|i| ls.field(*i).data_type().clone())
            .collect();
        if key_types.is_empty() {
            key_types.push(DataType::Boolean);
        }
        let converter = RowConverter::new(
            key_types
                .iter()
                .map(|t| SortField::new_with_options(t.clone(), sort_options()))
                .collect(),
        )?;
        let float = float_time(ls.field(self.spec.left_time).data_type());
        let rs = self.right.schema();
        let misses = RecordBatch::try_new_with_options(
            Arc::new(datafusion::arrow::datatypes::Schema::new(
                self.spec
                    .right_output
                    .iter()
                    .map(|i| rs.field(*i).as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            self.spec
                .right_output
                .iter()
                .map(|i| new_null_array(rs.field(*i).data_type(), 1))
                .collect(),
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let merge = Merge {
            spec: self.spec.clone(),
            key_types,
            converter,
            float,
            right,
            right_done: false,
            cursor: None,
            candidate: None,
            misses,
            schema: Arc::clone(&self.schema),
            baseline: BaselineMetrics::new(&self.metrics, partition),
        };
        let stream =
            futures::stream::try_unfold((left, merge), |(mut left, mut merge)| async move {
                loop {
                    let Some(batch) = left.next().await.transpose()? else {
                        return Ok(None);
                    };
                    let mut progress = merge.start(&batch)?;
                    loop {
                        let timer = merge.baseline.elapsed_compute().clone();
                        let started = timer.timer();
                        let done = merge.advance(&mut progress);
                        drop(started);
                        if done {
                            break;
                        }
                        merge.pull_right().await?;
                    }
                    let out = merge.output(&batch, &progress.matches)?;
                    if out.num_rows() > 0 {
                        merge.baseline.record_output(out.num_rows());
                        return Ok(Some((out, (left, merge))));
                    }
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

impl AsofJoinExec {
    /// One left partition, probed against the index of the right side
    /// (built by the first partition to need it).
    fn probe(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let left = self.left.execute(partition, Arc::clone(&context))?;
        let ls = self.left.schema();
        let left_key_types: Vec<DataType> = self
            .spec
            .left_keys
            .iter()
            .map(|i| ls.field(*i).data_type().clone())
            .collect();
        let float = float_time(ls.field(self.spec.left_time).data_type());
        let (index, right, spec, schema) = (
            Arc::clone(&self.index),
            Arc::clone(&self.right),
            self.spec.clone(),
            Arc::clone(&self.schema),
        );
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = futures::stream::once(async move {
            let built = index
                .get_or_try_init(|| async {
                    let reservation = MemoryConsumer::new("AsofJoinExec[probe index]")
                        .register(context.memory_pool());
                    let stream = right.execute(0, Arc::clone(&context))?;
                    let built = super::asof_probe::Index::build(
                        stream,
                        &spec,
                        &left_key_types,
                        float,
                        reservation,
                    )
                    .await?;
                    Ok::<_, DataFusionError>(Arc::new(built))
                })
                .await?;
            let built = Arc::clone(built);
            Ok::<_, DataFusionError>(left.map(move |batch| {
                let batch = batch?;
                let timer = baseline.elapsed_compute().clone();
                let _started = timer.timer();
                let out = built.probe(&batch, &spec, float, &schema)?;
                baseline.record_output(out.num_rows());
                Ok(out)
            }))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// A right batch with its keys as comparable rows and its times.
struct RightBatch {
    batch: RecordBatch,
    keys: Rows,
    key_valid: Vec<bool>,
    times: Times,
}

/// A column as i64 values (NULL: None): integer times and keys, dates and
/// timestamps as their count of days or units.
pub(super) fn as_i64(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    Ok(int64_array(array)?.iter().collect())
}

/// [`as_i64`]'s values as an Arrow array.
pub(super) fn int64_array(
    array: &ArrayRef,
) -> Result<datafusion::arrow::array::PrimitiveArray<Int64Type>> {
    let a = match array.data_type() {
        DataType::Date32 => cast(&cast(array, &DataType::Int32)?, &DataType::Int64)?,
        _ => cast(array, &DataType::Int64)?,
    };
    Ok(a.as_primitive::<Int64Type>().clone())
}

/// A time column, as integers or floats; NULL (and NaN) is None.
pub(super) enum Times {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
}

impl Times {
    pub(super) fn of(array: &ArrayRef, float: bool) -> Result<Times> {
        // Integers widen; decimals and floats become doubles.
        Ok(if float {
            let a = cast(array, &DataType::Float64)?;
            Times::Float(
                a.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.filter(|x| !x.is_nan()))
                    .collect(),
            )
        } else {
            Times::Int(as_i64(array)?)
        })
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Times::Int(v) => v[i].is_none(),
            Times::Float(v) => v[i].is_none(),
        }
    }

    /// Whether right time `j` of `self` may match left time `i` of `left`
    /// (at or before, or strictly before).
    fn before(&self, j: usize, left: &Times, i: usize, strict: bool) -> bool {
        match (self, left) {
            (Times::Int(r), Times::Int(l)) => match (r[j], l[i]) {
                (Some(a), Some(b)) => {
                    if strict {
                        a < b
                    } else {
                        a <= b
                    }
                }
                _ => false,
            },
            (Times::Float(r), Times::Float(l)) => match (r[j], l[i]) {
                (Some(a), Some(b)) => {
                    if strict {
                        a < b
                    } else {
                        a <= b
                    }
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether right time `j` lies within `tolerance` of left time `i`.
    fn within(&self, j: usize, left: &Times, i: usize, tolerance: Option<Tolerance>) -> bool {
        let Some(tolerance) = tolerance else {
            return true;
        };
        match (self, left, tolerance) {
            (Times::Int(r), Times::Int(l), Tolerance::Int(t)) => match (r[j], l[i]) {
                (Some(a), Some(b)) => (b as i128 - a as i128) <= t as i128,
                _ => false,
            },
            (Times::Float(r), Times::Float(l), tol) => {
                let t = match tol {
                    Tolerance::Int(t) => t as f64,
                    Tolerance::Float(t) => t,
                };
                match (r[j], l[i]) {
                    (Some(a), Some(b)) => b - a <= t,
                    _ => false,
                }
            }
            (Times::Int(r), Times::Int(l), Tolerance::Float(t)) => match (r[j], l[i]) {
                (Some(a), Some(b)) => ((b as i128 - a as i128) as f64) <= t,
                _ => false,
            },
            _ => false,
        }
    }
}

/// How far the merge is through one left batch.
struct Progress {
    keys: Rows,
    valid: Vec<bool>,
    times: Times,
    next: usize,
    matches: Vec<Option<(Arc<RightBatch>, usize)>>,
}

/// One partition's merge state.
struct Merge {
    spec: AsofSpec,
    key_types: Vec<DataType>,
    converter: RowConverter,
    float: bool,
    right: BoxStream<'static, Result<RecordBatch>>,
    right_done: bool,
    /// The next right row not yet passed.
    cursor: Option<(Arc<RightBatch>, usize)>,
    /// The last right row passed (keys and time at or before the current
    /// left row's).
    candidate: Option<(Arc<RightBatch>, usize)>,
    /// A one-row batch of NULLs: the right columns of a row without match.
    misses: RecordBatch,
    schema: SchemaRef,
    baseline: BaselineMetrics,
}

fn keys_valid(columns: &[ArrayRef], rows: usize) -> Vec<bool> {
    (0..rows)
        .map(|r| columns.iter().all(|c| c.is_valid(r)))
        .collect()
}

impl Merge {
    fn key_columns(&self, batch: &RecordBatch, keys: &[usize]) -> Result<Vec<ArrayRef>> {
        if keys.is_empty() {
            // No keys: every row has the same one.
            let all = BooleanArray::from(vec![true; batch.num_rows()]);
            return Ok(vec![Arc::new(all)]);
        }
        keys.iter()
            .zip(&self.key_types)
            .map(|(i, t)| {
                let c = batch.column(*i);
                if c.data_type() == t {
                    Ok(Arc::clone(c))
                } else {
                    Ok(cast(c, t)?)
                }
            })
            .collect()
    }

    /// Reads the next non-empty right batch into the cursor (or marks the
    /// right side done).
    async fn pull_right(&mut self) -> Result<()> {
        loop {
            let Some(batch) = self.right.next().await.transpose()? else {
                self.right_done = true;
                return Ok(());
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.key_columns(&batch, &self.spec.right_keys)?;
            let key_valid = keys_valid(&keys, batch.num_rows());
            let rows = self.converter.convert_columns(&keys)?;
            let times = Times::of(batch.column(self.spec.right_time), self.float)?;
            self.cursor = Some((
                Arc::new(RightBatch {
                    batch,
                    keys: rows,
                    key_valid,
                    times,
                }),
                0,
            ));
            return Ok(());
        }
    }

    /// A left batch's keys and times, ready to be matched.
    fn start(&mut self, batch: &RecordBatch) -> Result<Progress> {
        let n = batch.num_rows();
        let keys = self.key_columns(batch, &self.spec.left_keys)?;
        Ok(Progress {
            valid: keys_valid(&keys, n),
            keys: self.converter.convert_columns(&keys)?,
            times: Times::of(batch.column(self.spec.left_time), self.float)?,
            next: 0,
            matches: Vec::with_capacity(n),
        })
    }

    /// Matches left rows from `p.next` on: true when the batch is done,
    /// false when the right side must be read further first (the merge
    /// then resumes at the same row).
    fn advance(&mut self, p: &mut Progress) -> bool {
        while p.next < p.valid.len() {
            let i = p.next;
            if !p.valid[i] || p.times.is_null(i) {
                p.matches.push(None);
                p.next += 1;
                continue;
            }
            let key = p.keys.row(i);
            loop {
                // Taken, not cloned: put back where the merge stops.
                let Some((rb, j)) = self.cursor.take() else {
                    if self.right_done {
                        break;
                    }
                    return false;
                };
                let pass = match rb.keys.row(j).cmp(&key) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => {
                        if rb.times.is_null(j) {
                            true
                        } else if rb.times.before(j, &p.times, i, self.spec.strict) {
                            self.candidate = Some((Arc::clone(&rb), j));
                            true
                        } else {
                            false
                        }
                    }
                    std::cmp::Ordering::Greater => false,
                };
                if !pass {
                    self.cursor = Some((rb, j));
                    break;
                }
                self.cursor = (j + 1 < rb.batch.num_rows()).then(|| (rb, j + 1));
            }
            let found = self.candidate.as_ref().filter(|(rb, j)| {
                rb.key_valid[*j]
                    && rb.keys.row(*j) == key
                    && rb.times.within(*j, &p.times, i, self.spec.tolerance)
            });
            p.matches.push(found.map(|(rb, j)| (Arc::clone(rb), *j)));
            p.next += 1;
        }
        true
    }

    fn output(
        &self,
        batch: &RecordBatch,
        matches: &[Option<(Arc<RightBatch>, usize)>],
    ) -> Result<RecordBatch> {
        // Sources: 0 is the row of NULLs, then each right batch referenced.
        let mut sources: Vec<&RecordBatch> = vec![&self.misses];
        let mut seen: HashMap<*const RightBatch, usize> = HashMap::new();
        let mut indices = Vec::with_capacity(matches.len());
        for m in matches {
            match m {
                None => indices.push((0, 0)),
                Some((rb, j)) => {
                    let at = *seen.entry(Arc::as_ptr(rb)).or_insert_with(|| {
                        sources.push(&rb.batch);
                        sources.len() - 1
                    });
                    indices.push((at, *j));
                }
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (out, i) in self.spec.right_output.iter().enumerate() {
            let arrays: Vec<&dyn Array> = sources
                .iter()
                .enumerate()
                .map(|(s, b)| {
                    if s == 0 {
                        b.column(out).as_ref()
                    } else {
                        b.column(*i).as_ref()
                    }
                })
                .collect();
            columns.push(interleave(&arrays, &indices)?);
        }
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        if self.spec.keep_unmatched {
            return Ok(out);
        }
        let keep = BooleanArray::from(matches.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(filter_record_batch(&out, &keep)?)
    }
}
