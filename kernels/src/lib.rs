//! `kiln-kernels`: Kiln's device layer.
//!
//! It discovers the devices of the machine (CUDA GPUs through cudarc's dynamic
//! loading, wgpu adapters, the CPU), owns device buffers and runs kernels on them.
//! Every backend sits behind one [`Device`] enum so callers never need a `cfg`:
//! a backend whose driver is missing still compiles and is reported absent, with
//! the reason, at run time.
//!
//! This crate knows nothing of DataFusion; the engine above it adapts Arrow
//! columns to the buffers defined here.

pub mod backend;
pub mod backend_device;
pub mod backend_kind;
pub mod codegen;
pub mod cpu_backend;
pub mod cuda_backend;
pub mod device;
pub mod error;
pub mod memory;
pub mod ops;
pub mod testing;
pub mod vector_search;
pub mod wgpu_backend;

pub use backend::{Buffer, Device, discover};
pub use device::{AbsentBackend, BackendKind, DeviceInfo, DeviceRequest, DeviceType, Discovery};
pub use error::{KernelError, Result};
