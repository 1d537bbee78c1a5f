//! Kiln's SQL functions.

pub mod embed;
pub mod vector;

pub use embed::EmbedUdf;
pub use vector::{VectorOp, VectorUdf};
