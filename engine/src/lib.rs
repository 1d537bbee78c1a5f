//! `kiln-engine`: Kiln's execution layer.
//!
//! Physical operators (embedding, vector top-k, GPU stages) land here as the
//! later work does. It owns the I/O side of execution (the object-store
//! registry that turns any supported URL into a store on first use, and the
//! redaction of credentials from everything Kiln prints) and the models:
//! BERT-family sentence encoders loaded from Hugging Face layout.

pub mod device;
pub mod error;
pub mod exec;
pub mod functions;
pub mod io;
pub mod model;
pub mod options;
pub mod text;

pub use error::{EngineError, Result};
