//! Integration tests of the `kiln` crate and binary: one test binary, one
//! module per area (DataFusion is slow to link; one binary links it once).

mod asof_join;
mod cli_errors;
mod cli_sql;
mod cluster;
mod commits;
mod common;
mod delta;
mod devices;
mod drift;
mod embed;
mod embed_cache;
mod explain;
mod fuzz_corpus;
mod gpu_transforms;
mod hardening;
mod job;
mod lineage;
mod oom;
mod profile;
mod s3;
mod session_api;
mod text;
mod vector_functions;
mod vector_search;
