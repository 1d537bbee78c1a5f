//! `kiln-planner`: how Kiln plans.
//!
//! This crate owns Kiln's session configuration (the `kiln.*` options a user
//! can `SET`), and is where the logical rules (vector top-k), the extension
//! planners and the device-placement rule are registered as they arrive.

pub mod gather_embeddings;
pub mod lowering;
pub mod options;
pub mod query_planner;
pub mod vector_search;
pub mod vector_topk;

pub use options::KilnOptions;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};
use kiln_engine::functions::{EmbedUdf, VectorOp, VectorUdf};
use kiln_kernels::DeviceRequest;

/// DataFusion's session configuration with Kiln's options added; `device` is
/// the device Kiln's operators are asked to run on.
pub fn session_config(device: DeviceRequest) -> SessionConfig {
    let options = KilnOptions {
        device: device.to_string(),
        ..Default::default()
    };
    SessionConfig::new()
        .with_information_schema(true)
        .with_option_extension(options)
}

/// Installs Kiln's planning extensions on a session being built.
pub fn install(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder
        .with_default_features()
        .with_query_planner(Arc::new(query_planner::KilnQueryPlanner))
        .with_optimizer_rule(Arc::new(vector_topk::VectorTopKRule))
        .with_physical_optimizer_rule(Arc::new(gather_embeddings::GatherEmbeddings))
        .with_physical_optimizer_rule(Arc::new(lowering::PlaceOnDevice))
}

/// Kiln's SQL functions, as DataFusion UDFs.
pub fn kiln_functions() -> Vec<ScalarUDF> {
    let mut udfs = vec![ScalarUDF::from(EmbedUdf::new())];
    udfs.extend(VectorOp::all().map(|op| ScalarUDF::from(VectorUdf::new(op))));
    udfs
}

/// Registers Kiln's SQL functions (`embed`, the vector functions) and table
/// functions (`vector_search`, `knn_join`) on a context.
pub fn register_functions(ctx: &SessionContext) {
    for udf in kiln_functions() {
        ctx.register_udf(udf);
    }
    ctx.register_udtf(
        "vector_search",
        Arc::new(vector_search::VectorSearchFunction),
    );
    ctx.register_udtf("knn_join", Arc::new(vector_search::KnnJoinFunction));
}
