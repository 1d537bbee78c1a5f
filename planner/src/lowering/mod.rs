//! Lowering relational plans onto the GPU: which operators run where, and why.
//!
//! - [`expr`]: DataFusion physical expressions → the fused-kernel IR;
//! - [`place_on_device`]: the physical optimizer rule that groups supported
//!   chains into GPU stages, with the cost model;
//! - [`placement`]: placement as data: typed reasons, and the record of a
//!   plan's placements the rule writes;
//! - [`explain`]: EXPLAIN's placement annotations, read from that record.

pub mod cost_model;
pub mod explain;
pub mod expr;
pub mod place_on_device;
pub mod placement;

pub use place_on_device::{LoweringContext, PlaceOnDevice};
pub use placement::{Placement, PlacementLog, PlacementRecord, Reason};
