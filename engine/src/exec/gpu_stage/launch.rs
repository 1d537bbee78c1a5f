//! One partition of a GPU stage at run time: its input gathered into
//! device batches, each launched (split and retried when the device runs out
//! of memory), numbered and folded for a GROUP BY, read back into Arrow
//! columns, or sent to the CPU batch by batch.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take, take_record_batch,
};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::collect;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, RecordOutput, Time,
};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use kiln_kernels::codegen::numbering::KeyProgram;
use kiln_kernels::codegen::{
    ColumnData, FusedOutput, GroupFold, MAX_GROUPS, OutColumn, Reduced, Ty,
};
use kiln_kernels::memory::{OomCounts, split_and_retry};
use kiln_kernels::{Device, KernelError};

use super::cpu::run_on_cpu;
use super::{CpuStep, StageOutput, StagePlan};
use crate::exec::device_columns::{HostColumn, from_device, inline_view_words, to_device};
use crate::exec::gather_rows;
use crate::exec::group_keys::{GroupIndex, group_index};

pub(super) struct StageMetrics {
    pub(super) baseline: BaselineMetrics,
    pub(super) bytes_to_device: Count,
    pub(super) bytes_from_device: Count,
    pub(super) device_batches: Count,
    pub(super) cpu_batches: Count,
    /// Device batches of a grouped stage folded with atomics.
    pub(super) atomic_batches: Count,
    /// Device batches whose keys the device numbered.
    pub(super) numbered_batches: Count,
    pub(super) device_time: Time,
    pub(super) kernel_time: Time,
    /// A final or single-step aggregate's finish on the host.
    pub(super) finish_time: Time,
    pub(super) oom: crate::exec::OomMetrics,
}

impl StageMetrics {
    pub(super) fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        StageMetrics {
            baseline: BaselineMetrics::new(metrics, partition),
            bytes_to_device: MetricBuilder::new(metrics).counter("bytes_to_device", partition),
            bytes_from_device: MetricBuilder::new(metrics).counter("bytes_from_device", partition),
            device_batches: MetricBuilder::new(metrics).counter("device_batches", partition),
            cpu_batches: MetricBuilder::new(metrics).counter("cpu_fallback_batches", partition),
            atomic_batches: MetricBuilder::new(metrics).counter("atomic_fold_batches", partition),
            numbered_batches: MetricBuilder::new(metrics)
                .counter("device_numbered_batches", partition),
            device_time: MetricBuilder::new(metrics).subset_time("device_time", partition),
            kernel_time: MetricBuilder::new(metrics).subset_time("kernel_time", partition),
            finish_time: MetricBuilder::new(metrics).subset_time("host_finish_time", partition),
            oom: crate::exec::OomMetrics::new(metrics, partition),
        }
    }
}

pub(super) struct StageState {
    pub(super) input: SendableRecordBatchStream,
    pub(super) input_schema: SchemaRef,
    pub(super) schema: SchemaRef,
    pub(super) plan: Arc<StagePlan>,
    pub(super) cpu_steps: Arc<Vec<CpuStep>>,
    pub(super) device: Device,
    pub(super) launch_rows: usize,
    pub(super) metrics: StageMetrics,
    pub(super) done: bool,
    /// Consecutive device batches of a grouped stage with too many key
    /// combinations; past [`GIVE_UP_AFTER`] the partition's remaining
    /// batches go straight to the CPU (high-cardinality keys).
    pub(super) too_many_groups: usize,
}

/// See [`StageState::too_many_groups`].
const GIVE_UP_AFTER: usize = 2;

/// The fewest rows split-and-retry cuts a launch to before it runs the rest
/// of an out-of-memory launch on the CPU.
const OOM_FLOOR_ROWS: usize = 1024;

/// Whether `e` is the device running out of memory (its budget or its
/// driver), which a smaller launch may avoid.
fn out_of_memory(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::External(inner) => inner
            .downcast_ref::<KernelError>()
            .is_some_and(KernelError::is_out_of_memory),
        _ => false,
    }
}

impl StageState {
    /// The next input batches, up to one launch's rows; empty at the end.
    pub(super) async fn gather(&mut self) -> Result<Vec<RecordBatch>> {
        gather_rows(&mut self.input, self.launch_rows, &mut self.done).await
    }

    /// `pending` cut into slices of at most one launch's rows. A single
    /// input batch is sliced in place, not copied.
    pub(super) fn slices(&self, pending: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let batch = match pending {
            [one] => one.clone(),
            _ => concat_batches(&self.input_schema, pending)?,
        };
        let rows = batch.num_rows();
        Ok((0..rows)
            .step_by(self.launch_rows)
            .map(|start| batch.slice(start, self.launch_rows.min(rows - start)))
            .collect())
    }

    /// Runs the program on the device: `None` when the batch needs the CPU.
    /// A grouped program's last input is `groups`' row indices.
    pub(super) fn launch_device(
        &self,
        batch: &RecordBatch,
        groups: Option<(&GroupIndex, GroupFold)>,
    ) -> Result<Option<FusedOutput>> {
        let plan = &self.plan;
        let Some(host) = host_columns(batch, &plan.program.inputs, &plan.program.used_inputs())?
        else {
            return Ok(None);
        };
        let mut inputs: Vec<_> = host
            .iter()
            .map(|h| h.as_ref().map(HostColumn::data))
            .collect();
        if let Some((index, _)) = groups {
            inputs.push(Some(ColumnData {
                ty: Ty::U32,
                values: bytemuck::cast_slice(&index.gid),
                validity: None,
            }));
        }
        let out = {
            let _t = self.metrics.device_time.timer();
            self.device
                .run_grouped(
                    &plan.program,
                    batch.num_rows(),
                    groups.map_or(1, |(g, _)| g.groups),
                    groups.map_or(GroupFold::Tiles, |(_, fold)| fold),
                    &inputs,
                )
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        if let Some(ns) = out.kernel_ns {
            self.metrics
                .kernel_time
                .add_duration(std::time::Duration::from_nanos(ns));
        }
        self.metrics.bytes_to_device.add(out.bytes_up as usize);
        self.metrics.bytes_from_device.add(out.bytes_down as usize);
        if out.needs_cpu {
            return Ok(None);
        }
        self.metrics.device_batches.add(1);
        Ok(Some(out))
    }

    /// The partial states of `pending`'s groups (one group without GROUP
    /// BY), one launch at a time. Each launch runs off the async workers
    /// (the state goes to the blocking pool and back, hence `self` by
    /// value); the CPU fallback's plan runs on them as any plan does.
    pub(super) async fn run_aggregate(
        mut self,
        pending: &[RecordBatch],
        context: &Arc<TaskContext>,
    ) -> Result<(Self, RecordBatch)> {
        let mut parts = Vec::new();
        for part in self.slices(pending)? {
            let pieces = if self.too_many_groups >= GIVE_UP_AFTER {
                vec![(0..part.num_rows(), None)]
            } else {
                let launched = part.clone();
                let (back, out) = crate::exec::off_async(self, move |s| {
                    let time = s.metrics.baseline.elapsed_compute().clone();
                    let _timer = time.timer();
                    s.launch_aggregate_split(&launched)
                })
                .await?;
                self = back;
                out?
            };
            for (rows, on_device) in pieces {
                let piece = part.slice(rows.start, rows.len());
                match on_device {
                    Some(states) => parts.push(states),
                    // States to merge stay as they are, for the final aggregate.
                    None if self.merges() => {
                        self.metrics.cpu_batches.add(1);
                        parts.push(piece);
                    }
                    None => {
                        self.metrics.cpu_batches.add(1);
                        let plan = self.aggregate_on_cpu(piece)?;
                        parts.extend(collect(plan, Arc::clone(context)).await?);
                    }
                }
            }
        }
        let out = concat_batches(&self.states_schema(), &parts)?;
        if self.finishes() {
            return Ok((self, out));
        }
        let out = out.record_output(&self.metrics.baseline);
        Ok((self, out))
    }

    /// Whether the stage merges partial states (a final aggregate).
    pub(super) fn merges(&self) -> bool {
        self.plan.aggregate.as_ref().is_some_and(|a| a.merge)
    }

    /// Whether the stage's states are finished on the host at the end of
    /// the partition (a final or single-step aggregate).
    pub(super) fn finishes(&self) -> bool {
        self.plan
            .aggregate
            .as_ref()
            .is_some_and(|a| a.merge || a.single.is_some())
    }

    /// The schema of the states a launch emits: the stage's output (a
    /// partial aggregate), a final aggregate's input (states merged, still
    /// states), or a single-step aggregate's partial half's output.
    pub(super) fn states_schema(&self) -> SchemaRef {
        match &self.plan.aggregate {
            Some(a) if a.merge => Arc::clone(&self.input_schema),
            Some(a) => match &a.single {
                Some(split) => split.partial.schema(),
                None => Arc::clone(&self.schema),
            },
            None => Arc::clone(&self.schema),
        }
    }

    /// A final or single-step aggregate's result: its final aggregate over
    /// the states the launches emitted (and the batches left to the CPU).
    // `&mut self`: the future holds the state across an await, and the
    // state is `Send`, not `Sync`.
    pub(super) async fn finish_merged(
        &mut self,
        states: Vec<RecordBatch>,
        context: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let single = self.plan.aggregate.as_ref().and_then(|a| a.single.as_ref());
        let Some(aggregate) = single.map(|s| &s.finish).or(self.plan.original_ops.last()) else {
            return internal_err!("GpuStageExec: aggregate stage without its aggregate");
        };
        let source = MemorySourceConfig::try_new_exec(&[states], self.states_schema(), None)?;
        let plan = Arc::clone(aggregate).replace_children(
            vec![source],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        let out = collect(plan, Arc::clone(context)).await?;
        Ok(out
            .into_iter()
            .map(|b| b.record_output(&self.metrics.baseline))
            .collect())
    }

    /// [`Self::launch_aggregate`] with split-and-retry: a launch that runs
    /// out of device memory is halved and its halves launched, down to
    /// [`OOM_FLOOR_ROWS`]; each piece's states, or `None` for a piece the
    /// CPU aggregates.
    pub(super) fn launch_aggregate_split(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<Vec<(std::ops::Range<usize>, Option<RecordBatch>)>> {
        let mut oom = OomCounts::default();
        let pieces = split_and_retry(
            batch.num_rows(),
            OOM_FLOOR_ROWS,
            &mut oom,
            |r| self.launch_aggregate(&batch.slice(r.start, r.len())),
            |_| Ok(None),
            out_of_memory,
        );
        self.metrics.oom.add(oom);
        pieces
    }

    /// One launch of an aggregate stage: `None` when the batch has more key
    /// combinations than the stage folds or the device flags it. A batch
    /// with more groups than the tile fold takes is folded with atomics
    /// where the device has them for the program.
    pub(super) fn launch_aggregate(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let plan = Arc::clone(&self.plan);
        let Some(agg) = &plan.aggregate else {
            return internal_err!("GpuStageExec: aggregate launch without an aggregate");
        };
        let (keys, index) = match &plan.group_by {
            None => (None, None),
            Some(group_by) => {
                let tile_groups = group_by.max_groups.clamp(1, MAX_GROUPS);
                // With atomics every batch can be numbered: at most one
                // group per row.
                let limit = match group_by.atomics {
                    Ok(()) => batch.num_rows().max(tile_groups),
                    Err(_) => tile_groups,
                };
                let numbered = match &group_by.device_keys {
                    Ok(program) => self.number_on_device(program, batch)?,
                    Err(_) => None,
                };
                let (keys, index) = match numbered {
                    // The host evaluates the keys of each group's first row
                    // only, after the launch.
                    Some(index) if index.groups <= limit => (None, index),
                    Some(_) => {
                        self.too_many_groups += 1;
                        return Ok(None);
                    }
                    None => {
                        // Keys are evaluated over every row, also those the
                        // stage's filter drops; an error there (a division by
                        // zero DataFusion would not have met) sends the batch
                        // to the CPU path, which filters first.
                        let Ok(keys) = group_by
                            .keys
                            .iter()
                            .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
                            .collect::<Result<Vec<ArrayRef>>>()
                        else {
                            return Ok(None);
                        };
                        let Some(index) = group_index(&keys, limit) else {
                            self.too_many_groups += 1;
                            return Ok(None);
                        };
                        (Some(keys), index)
                    }
                };
                self.too_many_groups = 0;
                let fold = if index.groups <= tile_groups {
                    GroupFold::Tiles
                } else {
                    GroupFold::Atomics
                };
                (keys, Some((index, fold)))
            }
        };
        let Some(out) = self.launch_device(batch, index.as_ref().map(|(i, f)| (i, *f)))? else {
            return Ok(None);
        };
        if matches!(index, Some((_, GroupFold::Atomics))) {
            self.metrics.atomic_batches.add(1);
        }
        let groups = index.as_ref().map_or(1, |(i, _)| i.groups);
        let present: Vec<usize> = (0..groups)
            .filter(|&g| out.group_rows.get(g).is_some_and(|n| *n > 0))
            .collect();
        let key_columns = match (&index, &plan.group_by) {
            (Some((index, _)), Some(group_by)) => {
                let first = UInt32Array::from(
                    present
                        .iter()
                        .map(|&g| index.first_row[g])
                        .collect::<Vec<_>>(),
                );
                match keys {
                    Some(keys) => keys
                        .iter()
                        .map(|k| take(k.as_ref(), &first, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                    None => {
                        let rows = key_rows(batch, &group_by.keys, &first)?;
                        group_by
                            .keys
                            .iter()
                            .map(|k| k.evaluate(&rows)?.into_array(rows.num_rows()))
                            .collect::<Result<Vec<ArrayRef>>>()?
                    }
                }
            }
            _ => Vec::new(),
        };
        let per_group = plan.program.reduce.len();
        let states: Vec<&[Reduced]> = present
            .iter()
            .filter_map(|&g| out.reduced.get(g * per_group..(g + 1) * per_group))
            .collect();
        agg.finish_groups(key_columns, &states, &self.states_schema())
            .map(Some)
    }

    /// The batch's group index from the device's numbering of its keys:
    /// `None` when a key column does not convert or the device flags the
    /// batch (the host numbers it then).
    pub(super) fn number_on_device(
        &self,
        program: &KeyProgram,
        batch: &RecordBatch,
    ) -> Result<Option<GroupIndex>> {
        let Some(mut host) = host_columns(batch, &program.inputs, &program.used_inputs())? else {
            return Ok(None);
        };
        let views = self.plan.group_by.iter().flat_map(|g| &g.key_views);
        for &column in views {
            // A value past 12 bytes: the host numbers the batch.
            let Some(words) = batch
                .columns()
                .get(column)
                .and_then(|c| inline_view_words(c.as_ref()))
            else {
                return Ok(None);
            };
            host.extend(words.map(Some));
        }
        let inputs: Vec<_> = host
            .iter()
            .map(|h| h.as_ref().map(HostColumn::data))
            .collect();
        let out = {
            let _t = self.metrics.device_time.timer();
            self.device
                .number_groups(program, batch.num_rows(), &inputs)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        self.metrics.bytes_to_device.add(out.bytes_up as usize);
        self.metrics.bytes_from_device.add(out.bytes_down as usize);
        if out.needs_cpu {
            return Ok(None);
        }
        self.metrics.numbered_batches.add(1);
        Ok(Some(GroupIndex {
            groups: out.groups().max(1),
            gid: out.gid,
            first_row: out.first_row,
        }))
    }

    /// The plan that aggregates a batch of an aggregate stage on the CPU: the
    /// replaced `AggregateExec` itself over the batch after the stage's
    /// filters and projections.
    pub(super) fn aggregate_on_cpu(&self, batch: RecordBatch) -> Result<Arc<dyn ExecutionPlan>> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let rows = run_on_cpu(&self.cpu_steps, batch)?;
        let single = self.plan.aggregate.as_ref().and_then(|a| a.single.as_ref());
        let Some(aggregate) = single.map(|s| &s.partial).or(self.plan.original_ops.last()) else {
            return internal_err!("GpuStageExec: aggregate stage without its aggregate");
        };
        let schema = aggregate.children()[0].schema();
        let rows = RecordBatch::try_new_with_options(
            Arc::clone(&schema),
            rows.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        )?;
        let source = MemorySourceConfig::try_new_exec(&[vec![rows]], schema, None)?;
        Arc::clone(aggregate).replace_children(
            vec![source],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    pub(super) fn run(&self, pending: &[RecordBatch]) -> Result<RecordBatch> {
        let out = self.compute(pending)?;
        Ok(out.record_output(&self.metrics.baseline))
    }

    /// The stage's rows of `pending` (for a top-k, its candidates).
    pub(super) fn compute(&self, pending: &[RecordBatch]) -> Result<RecordBatch> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let mut parts = Vec::new();
        for part in self.slices(pending)? {
            // A launch that runs out of device memory is halved and its
            // halves launched, down to OOM_FLOOR_ROWS; the rest runs on the
            // CPU.
            let mut oom = OomCounts::default();
            let pieces = split_and_retry(
                part.num_rows(),
                OOM_FLOOR_ROWS,
                &mut oom,
                |r| self.launch(&part.slice(r.start, r.len())),
                |r| self.on_cpu(&part.slice(r.start, r.len())),
                out_of_memory,
            );
            self.metrics.oom.add(oom);
            parts.extend(pieces?.into_iter().map(|(_, rows)| rows));
        }
        Ok(if parts.len() == 1 {
            parts
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)))
        } else {
            concat_batches(&self.schema, &parts)?
        })
    }

    /// The first `fetch` rows of `best` and `candidates` together, by the
    /// stage's whole ordering, as DataFusion's sort orders them.
    pub(super) fn keep_first(
        &self,
        best: Option<RecordBatch>,
        candidates: RecordBatch,
    ) -> Result<RecordBatch> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let Some(topk) = &self.plan.topk else {
            return internal_err!("GpuStageExec: top-k without an ordering");
        };
        let batch = match best {
            Some(best) => concat_batches(&self.schema, &[best, candidates])?,
            None => candidates,
        };
        let columns = topk
            .ordering
            .iter()
            .map(|e| {
                Ok(SortColumn {
                    values: e.expr.evaluate(&batch)?.into_array(batch.num_rows())?,
                    options: Some(e.options),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let first = lexsort_to_indices(&columns, Some(topk.fetch))?;
        Ok(take_record_batch(&batch, &first)?)
    }

    pub(super) fn launch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let plan = &self.plan;
        let Some(out) = self.launch_device(batch, None)? else {
            return self.on_cpu(batch);
        };
        let rows = out.rows();
        let indices = plan
            .program
            .compacts()
            .then(|| UInt32Array::from(out.indices));
        // Each kernel output feeds one column: move it, don't copy it.
        let mut computed: Vec<Option<OutColumn>> = out.columns.into_iter().map(Some).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(plan.outputs.len());
        for (field, output) in self.schema.fields().iter().zip(&plan.outputs) {
            columns.push(match output {
                StageOutput::Device(k) => {
                    let Some(column) = computed.get_mut(*k).and_then(Option::take) else {
                        return internal_err!(
                            "GpuStageExec: kernel output {k} used twice or missing"
                        );
                    };
                    from_device(column, field.data_type())?
                }
                StageOutput::Input(i) => match &indices {
                    Some(idx) => take(batch.column(*i), idx, None)?,
                    None => Arc::clone(batch.column(*i)),
                },
            });
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    pub(super) fn on_cpu(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.metrics.cpu_batches.add(1);
        let out = run_on_cpu(&self.cpu_steps, batch.clone())?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            out.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(out.num_rows())),
        )?)
    }
}

/// The `rows` of `batch` the GROUP BY `keys` are evaluated over: the
/// columns they read taken, the others all NULL (the schema made nullable
/// to allow it), so a group's keys cost no copy of the columns they do not
/// read — a batch of many groups would otherwise copy every input column.
fn key_rows(
    batch: &RecordBatch,
    keys: &[Arc<dyn PhysicalExpr>],
    rows: &UInt32Array,
) -> Result<RecordBatch> {
    let read: std::collections::HashSet<usize> = keys
        .iter()
        .flat_map(collect_columns)
        .map(|c| c.index())
        .collect();
    let schema = Schema::new(
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    );
    let columns = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if read.contains(&i) {
                Ok(take(c.as_ref(), rows, None)?)
            } else {
                Ok(new_null_array(c.data_type(), rows.len()))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::new(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

/// The columns of `batch` a launch reads (`used`), in the device layout of
/// the program's input types: `None` when one does not convert (a decimal
/// beyond 64 bits, a count past 2^63), and the batch takes the CPU path.
fn host_columns(
    batch: &RecordBatch,
    types: &[Ty],
    used: &[bool],
) -> Result<Option<Vec<Option<HostColumn>>>> {
    let mut host = Vec::with_capacity(used.len());
    for ((column, used), want) in batch.columns().iter().zip(used).zip(types) {
        if !used {
            host.push(None);
            continue;
        }
        match to_device(column.as_ref())?.and_then(|h| h.as_input(*want)) {
            Some(h) => host.push(Some(h)),
            None => return Ok(None),
        }
    }
    Ok(Some(host))
}
