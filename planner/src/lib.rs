//! `kiln-planner`: how Kiln plans.
//!
//! This crate owns Kiln's session configuration (the `kiln.*` options a user
//! can `SET`), and is where the logical rules (vector top-k), the extension
//! planners and the device-placement rule are registered as they arrive.

pub mod asof_join;
pub mod drift;
pub mod gather_embeddings;
pub mod lineage;
pub mod lowering;
pub mod near_duplicates;
pub mod options;
pub mod parquet_checks;
pub mod profile;
pub mod query_planner;
pub mod vector_search;
pub mod vector_topk;

pub use lowering::explain::device_of;
pub use options::KilnOptions;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::AggregateUDF;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SessionConfig, SessionContext};
use kiln_engine::functions::{
    ChunkUdf, ConnectedComponentsUdaf, DetectPiiUdf, EmbedUdf, MaskPiiUdf, MinHashBandsUdf,
    MinHashSimilarityUdf, MinHashUdf, VectorOp, VectorUdf,
};
use kiln_kernels::DeviceRequest;

/// DataFusion's session configuration with Kiln's options added; `device` is
/// the device Kiln's operators are asked to run on.
pub fn session_config(device: DeviceRequest) -> SessionConfig {
    with_kiln_options(SessionConfig::new(), device)
}

/// `config` with Kiln's options added (and the information schema on).
pub fn with_kiln_options(config: SessionConfig, device: DeviceRequest) -> SessionConfig {
    let options = KilnOptions {
        device: device.to_string(),
        ..Default::default()
    };
    config
        .with_information_schema(true)
        .with_option_extension(options)
}

/// Installs Kiln's planning extensions on a session being built: the
/// logical planning of [`install_logical`] and the physical rules of
/// [`physical_rules`].
pub fn install(builder: SessionStateBuilder) -> SessionStateBuilder {
    // Embeddings are gathered first as well: DataFusion's projection
    // pushdown would otherwise merge an `embed()` projection into the scan
    // below it (file and memory scans take expressions), where it runs
    // row batch by row batch as a plain function, outside `EmbedExec`'s
    // batching, device placement and metrics.
    let mut rules = PhysicalOptimizer::new().rules;
    rules.insert(0, Arc::new(gather_embeddings::GatherEmbeddings));
    rules.extend(physical_rules());
    install_logical(builder).with_physical_optimizer_rules(rules)
}

/// Kiln's logical rules and its query planner (its nodes planned into its
/// operators), without the physical rules that place operators on a
/// device: what a cluster's scheduler plans with.
pub fn install_logical(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder
        .with_default_features()
        .with_query_planner(Arc::new(query_planner::KilnQueryPlanner))
        .with_analyzer_rules(analyzer_rules())
        .with_optimizer_rule(Arc::new(vector_topk::VectorTopKRule))
}

/// DataFusion's analyzer rules with Kiln's as-of join rule first: it reads
/// a join's keys as the SQL wrote them, before type coercion wraps them in
/// casts.
fn analyzer_rules() -> Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Analyzer::new().rules;
    rules.insert(0, Arc::new(asof_join::AsofJoinRule));
    rules
}

/// The physical rules Kiln adds, in order: Parquet scans' metadata checked
/// before the reader trusts it, then the rules that depend on the device a
/// plan runs on — embeddings gathered into `EmbedExec`, operators lowered
/// onto the device —, and last every Parquet scan guarded, so a panic
/// decoding its pages is an error (`DecodeGuardExec`). A local session runs them when it plans; a cluster
/// executor runs them on each stage it is given, with its own device.
pub fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    vec![
        Arc::new(parquet_checks::CheckParquetMetadata),
        Arc::new(gather_embeddings::GatherEmbeddings),
        Arc::new(lowering::PlaceOnDevice),
        Arc::new(parquet_checks::GuardParquetDecoding),
    ]
}

/// Kiln's SQL functions, as DataFusion UDFs.
pub fn kiln_functions() -> Vec<ScalarUDF> {
    let mut udfs = vec![
        ScalarUDF::from(EmbedUdf::new()),
        ScalarUDF::from(ChunkUdf::new()),
        ScalarUDF::from(ChunkUdf::chars()),
        ScalarUDF::from(DetectPiiUdf::new()),
        ScalarUDF::from(MaskPiiUdf::new()),
        ScalarUDF::from(MinHashUdf::new()),
        ScalarUDF::from(MinHashBandsUdf::new()),
        ScalarUDF::from(MinHashSimilarityUdf::new()),
        ScalarUDF::from(asof_join::AsofMarker::default()),
    ];
    udfs.extend(VectorOp::all().map(|op| ScalarUDF::from(VectorUdf::new(op))));
    udfs
}

/// Kiln's aggregate functions.
pub fn kiln_aggregates() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(ConnectedComponentsUdaf::new()),
        AggregateUDF::from(kiln_engine::functions::VectorMeanUdaf::new()),
    ]
}

/// Registers Kiln's SQL functions (`embed`, `chunk_text`, the MinHash and
/// vector functions), aggregates (`connected_components`, `vector_mean`) and table
/// functions (`vector_search`, `knn_join`, `near_duplicates`,
/// `near_duplicate_clusters`, `semantic_duplicates`) on a context.
pub fn register_functions(ctx: &SessionContext) {
    for udf in kiln_functions() {
        ctx.register_udf(udf);
    }
    for udaf in kiln_aggregates() {
        ctx.register_udaf(udaf);
    }
    ctx.register_udtf(
        "near_duplicates",
        Arc::new(near_duplicates::NearDuplicatesFunction),
    );
    ctx.register_udtf(
        "near_duplicate_clusters",
        Arc::new(near_duplicates::NearDuplicateClustersFunction),
    );
    ctx.register_udtf(
        "semantic_duplicates",
        Arc::new(near_duplicates::SemanticDuplicatesFunction),
    );
    ctx.register_udtf(
        "vector_search",
        Arc::new(vector_search::VectorSearchFunction),
    );
    ctx.register_udtf("knn_join", Arc::new(vector_search::KnnJoinFunction));
    ctx.register_udtf("profile", Arc::new(profile::ProfileFunction));
    ctx.register_udtf("drift", Arc::new(drift::DriftFunction));
}
