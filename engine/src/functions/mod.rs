//! Kiln's SQL functions.

pub mod chunk;
pub mod embed;
pub mod minhash;
pub mod pii;
pub mod vector;
pub mod vector_mean;

pub use chunk::ChunkUdf;
pub use embed::EmbedUdf;
pub use minhash::{ConnectedComponentsUdaf, MinHashBandsUdf, MinHashSimilarityUdf, MinHashUdf};
pub use pii::{DetectPiiUdf, MaskPiiUdf};
pub use vector::{VectorOp, VectorUdf, first_vector, is_vector_type};
pub use vector_mean::VectorMeanUdaf;
