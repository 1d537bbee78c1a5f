//! Kiln's SQL functions.

pub mod embed;

pub use embed::EmbedUdf;
