//! `kiln-engine`: Kiln's execution layer.
//!
//! Physical operators (embedding, vector top-k, GPU stages) land here as the
//! later work does; this crate already owns the I/O side of execution: the
//! object-store registry that turns any supported URL into a store on first
//! use, and the redaction of credentials from everything Kiln prints.

pub mod error;
pub mod io;

pub use error::{EngineError, Result};
