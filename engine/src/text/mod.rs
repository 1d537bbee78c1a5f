//! Text preparation for AI (issue 19): chunking by a model's tokens, and
//! MinHash signatures for near-duplicate detection.

pub mod chunk;
pub mod minhash;
