//! Kiln: a batch engine for data engineering in the age of AI.
//!
//! Users write SQL or a lazy DataFrame program over Parquet in object storage;
//! Kiln plans it with Apache DataFusion and lowers what it can onto CUDA, wgpu
//! or CPU kernels. This crate is the public face: [`Session`], the error type,
//! TPC-H data generation and the `kiln` command line.
//!
//! ```no_run
//! # async fn demo() -> kiln::Result<()> {
//! let session = kiln::Session::new()?;
//! session.register_parquet("lineitem", "s3://bucket/tpch/lineitem/").await?;
//! let df = session.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1").await?;
//! df.show().await?;
//! # Ok(()) }
//! ```

mod asof_sql;
pub mod cli;
pub mod cluster;
mod commit;
pub mod dataframe;
pub mod datagen;
mod delta;
pub mod error;
#[doc(hidden)]
mod fault;
pub mod fuzzing;
pub mod job;
pub mod lineage;
mod mixed_schema;
mod named_args;
pub mod profile_report;
pub mod session;
mod statement_depth;

pub use dataframe::{Dedup, KilnDataFrameExt};
pub use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
pub use error::{KilnError, Result};
pub use kiln_kernels::ops::vector::Metric;
pub use kiln_kernels::{BackendKind, DeviceRequest, discover};
pub use kiln_planner::asof_join::{AsofOptions, AsofTolerance};
pub use session::{Session, SessionBuilder, StatementOutput};
