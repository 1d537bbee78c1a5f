//! Text preparation for AI (issue 19): chunking by a model's tokens or
//! characters, MinHash signatures for near-duplicate detection, and
//! detecting and masking personal data and secrets.

pub mod chunk;
pub mod minhash;
pub mod pii;
