//! Text preparation for AI (issue 19): chunking by a model's tokens.

pub mod chunk;
