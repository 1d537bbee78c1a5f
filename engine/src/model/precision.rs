//! `kiln.embed_precision`: the arithmetic the encoder's dense layers use.
//!
//! | mode | CPU | wgpu | CUDA |
//! | --- | --- | --- | --- |
//! | `f32` (default) | f32 | f32 | f16 GEMMs (the CUDA path has no f32 GEMM) |
//! | `int8` | dynamic int8 (VNNI where the CPU has it) | refused | refused |
//! | `bf16` | with AVX512_BF16, else refused | refused | refused |
//! | `f16` | refused | refused | f16 GEMMs |
//! | `auto` | int8 with VNNI or AMX, else f32 | f32 | f16 |
//!
//! Attention, LayerNorm, GELU and pooling stay in f32 in every mode.
//! `auto` takes the fastest mode whose accuracy contract the tests hold
//! (int8: cosine ≥ 0.995 with the f32 reference for every text of the
//! committed fixture, recall@10 ≥ 0.98 against f32).

use std::fmt;
use std::str::FromStr;

use kiln_kernels::ops::quant::{Int8Kernel, int8_kernel};
use kiln_kernels::{BackendKind, DeviceInfo};

use crate::error::{EngineError, Result};

/// A requested or resolved encoder precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    Int8,
    Bf16,
    F16,
    /// The fastest mode whose contract holds on the device.
    Auto,
}

impl Precision {
    /// Every mode, as `kiln.embed_precision` spells them.
    pub const NAMES: [&'static str; 5] = ["f32", "int8", "bf16", "f16", "auto"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Auto => "auto",
        }
    }

    /// The precision the encoder runs at on `device` for this request
    /// (never `Auto`), or why the device cannot run it.
    pub fn resolve(self, device: &DeviceInfo) -> Result<Precision> {
        let refuse = |reason: &str| {
            Err(EngineError::Precision {
                requested: self.name(),
                device: device.id(),
                reason: reason.to_string(),
            })
        };
        match (self, device.backend) {
            // int8 is the faster only with a dot-product instruction (VNNI,
            // AMX); the portable int8 loop is slower than f32's GEMM.
            (Precision::Auto, BackendKind::Cpu) => Ok(if int8_kernel() >= Int8Kernel::Avx512Vnni {
                Precision::Int8
            } else {
                Precision::F32
            }),
            (Precision::Auto | Precision::F32, BackendKind::Wgpu) => Ok(Precision::F32),
            (Precision::Auto | Precision::F32 | Precision::F16, BackendKind::Cuda) => {
                Ok(Precision::F16)
            }
            (Precision::F32 | Precision::Int8, BackendKind::Cpu) => Ok(self),
            (Precision::Int8, _) => {
                refuse("int8 embeddings run on the CPU only (kiln.device = 'cpu')")
            }
            (Precision::Bf16, BackendKind::Cpu) => {
                if kiln_kernels::ops::bf16::available() {
                    Ok(Precision::Bf16)
                } else {
                    refuse(
                        "bf16 needs a CPU with AVX512_BF16 (Intel Cooper Lake or Sapphire Rapids \
                         on, AMD Zen 4 on), which this one lacks or KILN_CPU_SIMD caps; use f32 \
                         or int8",
                    )
                }
            }
            (Precision::Bf16, _) => refuse("bf16 dense layers are not built for GPUs yet"),
            (Precision::F16, BackendKind::Cpu) => {
                refuse("the CPU has no f16 dense layers; use f32 or int8")
            }
            (Precision::F16, BackendKind::Wgpu) => refuse(
                "f16 dense layers are not built for wgpu yet (they need the adapter's shader-f16 \
                 feature); use f32",
            ),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that names no precision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision '{0}' (expected f32, int8, bf16, f16 or auto)")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> std::result::Result<Precision, UnknownPrecision> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Precision::F32,
            "int8" | "i8" => Precision::Int8,
            "bf16" | "bfloat16" => Precision::Bf16,
            "f16" | "fp16" | "float16" => Precision::F16,
            "auto" => Precision::Auto,
            _ => return Err(UnknownPrecision(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_kernels::DeviceType;

    fn device(backend: BackendKind) -> DeviceInfo {
        DeviceInfo {
            backend,
            index: 0,
            name: "test".into(),
            device_type: DeviceType::Cpu,
            memory_bytes: None,
            details: String::new(),
        }
    }

    #[test]
    fn parses_and_resolves() {
        for name in Precision::NAMES {
            assert_eq!(name.parse::<Precision>().unwrap().name(), name);
        }
        assert_eq!("INT8".parse::<Precision>(), Ok(Precision::Int8));
        assert!(
            "int4"
                .parse::<Precision>()
                .unwrap_err()
                .to_string()
                .contains("'int4'")
        );
        let cpu = device(BackendKind::Cpu);
        let wgpu = device(BackendKind::Wgpu);
        let fast_int8 = int8_kernel() >= Int8Kernel::Avx512Vnni;
        let auto = Precision::Auto.resolve(&cpu).unwrap();
        assert_eq!(auto == Precision::Int8, fast_int8, "{auto}");
        assert_eq!(Precision::F32.resolve(&cpu).unwrap(), Precision::F32);
        assert_eq!(Precision::Auto.resolve(&wgpu).unwrap(), Precision::F32);
        let err = Precision::Int8.resolve(&wgpu).unwrap_err().to_string();
        assert!(
            err.contains("'int8'") && err.contains("wgpu:0") && err.contains("CPU only"),
            "{err}"
        );
        assert!(Precision::F16.resolve(&cpu).is_err());
        assert_eq!(
            Precision::Bf16.resolve(&cpu).is_ok(),
            kiln_kernels::ops::bf16::available()
        );
    }
}
