//! Codecs for Kiln's plan nodes on the wire, wrapping Ballista's.
//!
//! Logical: the vector top-k node (`ORDER BY similarity LIMIT k`,
//! `vector_search`), the kNN join node (`knn_join`) and the as-of join
//! node (`ASOF JOIN`, `asof_join`) travel from the
//! client to the scheduler. The table functions resolve on the client into
//! these nodes over ordinary table scans, so no custom table provider has
//! to travel. Physical: `VectorTopKExec`, `KnnJoinExec` and `AsofJoinExec` travel from the
//! scheduler to the executors. `EmbedExec` and `GpuStageExec` never do:
//! executors create them from the stage they are given
//! ([`super::executor`]). Everything else is Ballista's.
//!
//! A Kiln payload starts with [`MAGIC`] (a zero byte, which no protobuf
//! message starts with) and a kind byte, then JSON. Devices are not
//! encoded: an executor decodes an operator onto its own device.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, DataFusionError, Result, TableReference, plan_datafusion_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use kiln_engine::exec::{
    AsofJoinExec, AsofSpec, AsofStrategy, KnnJoinExec, SearchSpec, Tolerance, TopKMode, Unscored,
    VectorTopKExec,
};
use kiln_kernels::DeviceInfo;
use kiln_kernels::ops::vector::Metric;
use kiln_planner::asof_join::AsofJoinNode;
use kiln_planner::vector_search::KnnJoinNode;
use kiln_planner::vector_topk::VectorTopKNode;
use serde_json::{Value, json};

/// The first bytes of every Kiln payload.
pub const MAGIC: &[u8] = b"\0KILN";

const VECTOR_TOPK_NODE: u8 = 1;
const KNN_JOIN_NODE: u8 = 2;
const VECTOR_TOPK_EXEC: u8 = 3;
const KNN_JOIN_EXEC: u8 = 4;
const ASOF_JOIN_NODE: u8 = 5;
const ASOF_JOIN_EXEC: u8 = 6;

fn write(buf: &mut Vec<u8>, kind: u8, payload: Value) {
    buf.extend_from_slice(MAGIC);
    buf.push(kind);
    buf.extend_from_slice(payload.to_string().as_bytes());
}

/// The kind and JSON of a Kiln payload; `None` for anyone else's.
fn read(buf: &[u8]) -> Result<Option<(u8, Value)>> {
    let Some(rest) = buf.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let (&kind, json) = rest
        .split_first()
        .ok_or_else(|| plan_datafusion_err!("a Kiln plan node on the wire has no kind"))?;
    let value = serde_json::from_slice::<Value>(json)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Some((kind, value)))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name)
        .ok_or_else(|| plan_datafusion_err!("a Kiln plan node on the wire lacks '{name}'"))
}

fn usize_of(v: &Value, name: &str) -> Result<usize> {
    field(v, name)?
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| plan_datafusion_err!("'{name}' of a Kiln plan node is not a count"))
}

fn str_of<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    field(v, name)?
        .as_str()
        .ok_or_else(|| plan_datafusion_err!("'{name}' of a Kiln plan node is not a string"))
}

fn metric_of(v: &Value) -> Result<Metric> {
    str_of(v, "metric")?
        .parse()
        .map_err(|e: String| plan_datafusion_err!("{e}"))
}

/// f32 vectors travel as their bit patterns, exactly.
fn vector_json(query: &[f32]) -> Value {
    Value::from(query.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
}

fn vector_of(v: &Value) -> Result<Vec<f32>> {
    field(v, "query")?
        .as_array()
        .ok_or_else(|| plan_datafusion_err!("'query' of a Kiln plan node is not a list"))?
        .iter()
        .map(|b| {
            b.as_u64()
                .and_then(|b| u32::try_from(b).ok())
                .map(f32::from_bits)
                .ok_or_else(|| plan_datafusion_err!("a query component on the wire is not an f32"))
        })
        .collect()
}

fn unscored_name(u: Unscored) -> &'static str {
    match u {
        Unscored::First => "first",
        Unscored::Last => "last",
        Unscored::Skip => "skip",
    }
}

fn unscored_of(v: &Value) -> Result<Unscored> {
    match str_of(v, "unscored")? {
        "first" => Ok(Unscored::First),
        "last" => Ok(Unscored::Last),
        "skip" => Ok(Unscored::Skip),
        other => Err(plan_datafusion_err!("unknown unscored placement '{other}'")),
    }
}

fn mode_of(v: &Value) -> Result<TopKMode> {
    match str_of(v, "mode")? {
        "single" => Ok(TopKMode::Single),
        "partial" => Ok(TopKMode::Partial),
        "final" => Ok(TopKMode::Final),
        other => Err(plan_datafusion_err!("unknown vector top-k mode '{other}'")),
    }
}

fn score_of(v: &Value) -> Option<String> {
    v.get("score").and_then(Value::as_str).map(str::to_string)
}

fn usizes_of(v: &Value, key: &str) -> Result<Vec<usize>> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| plan_datafusion_err!("'{key}' is missing on the wire"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| plan_datafusion_err!("'{key}' holds a non-index"))
        })
        .collect()
}

fn bool_of(v: &Value, key: &str) -> Result<bool> {
    v.get(key)
        .and_then(Value::as_bool)
        .ok_or_else(|| plan_datafusion_err!("'{key}' is missing on the wire"))
}

fn tolerance_json(t: Option<Tolerance>) -> Value {
    match t {
        None => Value::Null,
        Some(Tolerance::Int(n)) => json!({ "int": n }),
        Some(Tolerance::Float(f)) => json!({ "float": f }),
    }
}

fn tolerance_of(v: &Value) -> Result<Option<Tolerance>> {
    let t = &v["tolerance"];
    if t.is_null() {
        return Ok(None);
    }
    if let Some(n) = t.get("int").and_then(Value::as_i64) {
        return Ok(Some(Tolerance::Int(n)));
    }
    t.get("float")
        .and_then(Value::as_f64)
        .map(|f| Some(Tolerance::Float(f)))
        .ok_or_else(|| plan_datafusion_err!("a malformed as-of tolerance on the wire"))
}

fn asof_json(spec: &AsofSpec) -> Value {
    json!({
        "left_keys": spec.left_keys,
        "right_keys": spec.right_keys,
        "left_time": spec.left_time,
        "right_time": spec.right_time,
        "strict": spec.strict,
        "tolerance": tolerance_json(spec.tolerance),
        "keep_unmatched": spec.keep_unmatched,
        "right_output": spec.right_output,
    })
}

fn asof_spec_of(v: &Value) -> Result<AsofSpec> {
    Ok(AsofSpec {
        left_keys: usizes_of(v, "left_keys")?,
        right_keys: usizes_of(v, "right_keys")?,
        left_time: usize_of(v, "left_time")?,
        right_time: usize_of(v, "right_time")?,
        strict: bool_of(v, "strict")?,
        tolerance: tolerance_of(v)?,
        keep_unmatched: bool_of(v, "keep_unmatched")?,
        right_output: usizes_of(v, "right_output")?,
    })
}

/// Ballista's logical codec, with Kiln's logical nodes.
#[derive(Debug, Default)]
pub struct KilnLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for KilnLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        let Some((kind, v)) = read(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let node: Arc<dyn datafusion::logical_expr::UserDefinedLogicalNode> = match (kind, inputs) {
            (VECTOR_TOPK_NODE, [input]) => {
                // The column travels as its position in the input, exact
                // whatever its qualifier looks like.
                let (qualifier, f) = input.schema().qualified_field(usize_of(&v, "column")?);
                let column = Column::new(qualifier.cloned(), f.name());
                Arc::new(VectorTopKNode::try_new(
                    input.clone(),
                    column,
                    &vector_of(&v)?,
                    metric_of(&v)?,
                    usize_of(&v, "k")?,
                    unscored_of(&v)?,
                    score_of(&v),
                )?)
            }
            (KNN_JOIN_NODE, [queries, corpus]) => Arc::new(KnnJoinNode::try_new(
                queries.clone(),
                usize_of(&v, "query_index")?,
                corpus.clone(),
                usize_of(&v, "corpus_index")?,
                usize_of(&v, "dim")?,
                metric_of(&v)?,
                usize_of(&v, "k")?,
            )?),
            (ASOF_JOIN_NODE, [left, right]) => Arc::new(AsofJoinNode::from_spec(
                left.clone(),
                right.clone(),
                asof_spec_of(&v)?,
                bool_of(&v, "sql")?,
            )?),
            (kind, inputs) => {
                return Err(plan_datafusion_err!(
                    "unknown Kiln logical node {kind} with {} inputs",
                    inputs.len()
                ));
            }
        };
        Ok(Extension { node })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let any = node.node.as_any();
        if let Some(n) = any.downcast_ref::<VectorTopKNode>() {
            let column = n.input().schema().index_of_column(n.column())?;
            let payload = json!({
                "column": column,
                "query": vector_json(&n.query()),
                "metric": n.metric().to_string(),
                "k": n.k(),
                "unscored": unscored_name(n.unscored()),
                "score": n.score(),
            });
            write(buf, VECTOR_TOPK_NODE, payload);
            return Ok(());
        }
        if let Some(n) = any.downcast_ref::<KnnJoinNode>() {
            let payload = json!({
                "query_index": n.query_index(),
                "corpus_index": n.corpus_index(),
                "dim": n.dim(),
                "metric": n.metric().to_string(),
                "k": n.k(),
            });
            write(buf, KNN_JOIN_NODE, payload);
            return Ok(());
        }
        if let Some(n) = any.downcast_ref::<AsofJoinNode>() {
            let (spec, sql) = n.spec();
            let mut payload = asof_json(&spec);
            payload["sql"] = Value::Bool(sql);
            write(buf, ASOF_JOIN_NODE, payload);
            return Ok(());
        }
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// Ballista's physical codec, with Kiln's operators.
#[derive(Debug, Default)]
pub struct KilnPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

/// The device an operator decoded on this node runs on: the one the task's
/// `kiln.device` asks for in this process (an executor's own device, as
/// the executor pins it).
fn decoding_device(ctx: &TaskContext) -> Result<DeviceInfo> {
    kiln_engine::device::session_kernel_info(ctx.session_config().options())
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

fn spec_json(spec: &SearchSpec) -> Value {
    json!({
        "column": spec.column,
        "column_name": spec.column_name,
        "dim": spec.dim,
        "metric": spec.metric.to_string(),
        "k": spec.k,
        "budget_bytes": spec.budget_bytes,
    })
}

fn spec_of(v: &Value) -> Result<SearchSpec> {
    let spec = field(v, "spec")?;
    Ok(SearchSpec {
        column: usize_of(spec, "column")?,
        column_name: str_of(spec, "column_name")?.to_string(),
        dim: usize_of(spec, "dim")?,
        metric: metric_of(spec)?,
        k: usize_of(spec, "k")?,
        budget_bytes: usize_of(spec, "budget_bytes")? as u64,
        keep_unscored: 0,
    })
}

impl PhysicalExtensionCodec for KilnPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some((kind, v)) = read(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        match (kind, inputs) {
            (VECTOR_TOPK_EXEC, [input]) => Ok(Arc::new(VectorTopKExec::with_mode(
                Arc::clone(input),
                mode_of(&v)?,
                spec_of(&v)?,
                vector_of(&v)?,
                unscored_of(&v)?,
                score_of(&v),
                decoding_device(ctx)?,
            )?)),
            (KNN_JOIN_EXEC, [queries, corpus]) => Ok(Arc::new(KnnJoinExec::try_new(
                Arc::clone(queries),
                usize_of(&v, "query_column")?,
                Arc::clone(corpus),
                spec_of(&v)?,
                usize_of(&v, "query_batch")?,
                decoding_device(ctx)?,
            )?)),
            (ASOF_JOIN_EXEC, [left, right]) => {
                let spec = asof_spec_of(&v)?;
                // The output: the left's fields, then the right's named and
                // nullable as they were.
                let names = v["right_fields"]
                    .as_array()
                    .ok_or_else(|| plan_datafusion_err!("'right_fields' is missing on the wire"))?;
                let (ls, rs) = (left.schema(), right.schema());
                let mut fields: Vec<datafusion::arrow::datatypes::FieldRef> =
                    ls.fields().iter().cloned().collect();
                for (i, f) in spec.right_output.iter().zip(names) {
                    let name = f[0].as_str().unwrap_or_default();
                    let nullable = f[1].as_bool().unwrap_or(true);
                    let field = rs
                        .fields()
                        .get(*i)
                        .ok_or_else(|| plan_datafusion_err!("an as-of column out of range"))?;
                    fields.push(Arc::new(
                        field
                            .as_ref()
                            .clone()
                            .with_name(name)
                            .with_nullable(nullable),
                    ));
                }
                let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
                let strategy = match v.get("probe").and_then(Value::as_bool) {
                    Some(true) => AsofStrategy::Probe,
                    _ => AsofStrategy::Merge,
                };
                Ok(Arc::new(
                    AsofJoinExec::try_new(Arc::clone(left), Arc::clone(right), spec, schema)?
                        .with_strategy(strategy),
                ))
            }
            (kind, inputs) => Err(plan_datafusion_err!(
                "unknown Kiln operator {kind} with {} inputs",
                inputs.len()
            )),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(e) = node.downcast_ref::<VectorTopKExec>() {
            let payload = json!({
                "mode": match e.mode() {
                    TopKMode::Single => "single",
                    TopKMode::Partial => "partial",
                    TopKMode::Final => "final",
                },
                "spec": spec_json(e.spec()),
                "query": vector_json(e.query()),
                "unscored": unscored_name(e.unscored()),
                "score": e.score(),
            });
            write(buf, VECTOR_TOPK_EXEC, payload);
            return Ok(());
        }
        if let Some(e) = node.downcast_ref::<KnnJoinExec>() {
            let payload = json!({
                "spec": spec_json(e.spec()),
                "query_column": e.query_column(),
                "query_batch": e.query_batch(),
            });
            write(buf, KNN_JOIN_EXEC, payload);
            return Ok(());
        }
        if let Some(e) = node.downcast_ref::<AsofJoinExec>() {
            let spec = e.spec();
            let mut payload = asof_json(spec);
            let schema = e.schema();
            let skip = schema.fields().len() - spec.right_output.len();
            payload["right_fields"] = Value::Array(
                schema
                    .fields()
                    .iter()
                    .skip(skip)
                    .map(|f| json!([f.name(), f.is_nullable()]))
                    .collect(),
            );
            payload["probe"] = Value::Bool(e.strategy() == AsofStrategy::Probe);
            write(buf, ASOF_JOIN_EXEC, payload);
            return Ok(());
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}
