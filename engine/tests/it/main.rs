//! Integration tests of kiln-engine: one binary, one module per area.

mod model_errors;
mod model_reference;
