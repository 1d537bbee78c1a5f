//! Lowering relational plans onto the GPU: which operators run where, and why.
//!
//! - [`expr`]: DataFusion physical expressions → the fused-kernel IR;
//! - [`place_on_device`]: the physical optimizer rule that groups supported
//!   chains into GPU stages, with the cost model;
//! - [`explain`]: EXPLAIN's placement annotations, recomputed from the same
//!   decisions the rule made.

pub mod cost_model;
pub mod explain;
pub mod expr;
pub mod place_on_device;

pub use place_on_device::{LoweringContext, PlaceOnDevice};
