//! Tensor operations of the encoder and of vector scoring, on row-major f32
//! matrices. This module holds the CPU implementations (the `gemm` crate and
//! rayon); the wgpu and CUDA versions of each family join them file by file.

/// The vector instruction sets Kiln's CPU kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Baseline,
    Avx2,
    Avx512,
}

/// The best level this CPU has (AVX2 and AVX-512 counted only with FMA),
/// capped by `KILN_CPU_SIMD` (`avx512`, `avx2` or `baseline`), which exists
/// so the tests can run every fallback on one machine; any other value of it
/// is ignored. Read once per process.
pub fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[allow(unused_mut)]
        let mut found = SimdLevel::Baseline;
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                found = SimdLevel::Avx512;
            } else if fma && std::arch::is_x86_feature_detected!("avx2") {
                found = SimdLevel::Avx2;
            }
        }
        let cap = match std::env::var("KILN_CPU_SIMD").as_deref() {
            Ok("baseline") => SimdLevel::Baseline,
            Ok("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        found.min(cap)
    })
}

/// Defines `fn $name(args) -> ret` that runs `$body::<true>` compiled for
/// AVX-512 (or AVX2) with FMA where [`simd_level`] allows, else
/// `$body::<false>` for the baseline target: a portable binary still runs the
/// hot loops at full vector width. `$body` takes a `const FMA: bool` (fused
/// multiply-add allowed).
macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $body::<true>($($arg),*)
                }
                match crate::ops::simd_level() {
                    // SAFETY: simd_level() reports AVX-512F and FMA only
                    // where the CPU has them.
                    crate::ops::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: likewise for AVX2 and FMA.
                    crate::ops::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::ops::SimdLevel::Baseline => {}
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `a·b + c`: one fused instruction in a [`dispatch!`] variant with FMA (Rust
/// never contracts `a * b + c` by itself), else a multiply and an add.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `a·b` in f32 with 16 independent accumulators, so it vectorizes without
/// reassociating one chain; the residual is added in order. Plain loops only:
/// iterator adapters would be compiled outside the caller's target features.
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut sum = 0f32;
    for v in acc {
        sum += v;
    }
    for (x, y) in ra.iter().zip(rb) {
        sum = madd::<FMA>(*x, *y, sum);
    }
    sum
}

/// Runs `$block::<MR>(args)` over `$rows` rows in blocks of 6 (`$r0` the
/// block's first row, `MR` its rows: 6, or 1–5 for the last): the row loop
/// of the register-blocked AVX-512 kernels (f32, bf16, int8). Expands to
/// calls of an `unsafe fn`: use it inside an `unsafe` block.
macro_rules! row_blocks {
    ($rows:expr, $r0:ident, $block:ident($($arg:expr),*)) => {{
        let rows = $rows;
        let mut $r0 = 0;
        while $r0 < rows {
            let mr = 6.min(rows - $r0);
            match mr {
                1 => $block::<1>($($arg),*),
                2 => $block::<2>($($arg),*),
                3 => $block::<3>($($arg),*),
                4 => $block::<4>($($arg),*),
                5 => $block::<5>($($arg),*),
                _ => $block::<6>($($arg),*),
            }
            $r0 += mr;
        }
    }};
}
pub(crate) use row_blocks;

/// Stores the first `lanes` (at most 16) values of `v` at the start of
/// `dst`: a plain store for 16, a masked one for fewer.
///
/// # Safety
/// The CPU must have AVX-512F.
///
/// # Panics
/// When `dst` holds fewer than `lanes` values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn store16(dst: &mut [f32], v: std::arch::x86_64::__m512, lanes: usize) {
    use std::arch::x86_64::{_mm512_mask_storeu_ps, _mm512_storeu_ps};
    let dst = &mut dst[..lanes.min(16)];
    // SAFETY: `dst` holds `lanes` values (the slice above checked it); the
    // masked store writes only those.
    unsafe {
        if lanes >= 16 {
            _mm512_storeu_ps(dst.as_mut_ptr(), v);
        } else {
            _mm512_mask_storeu_ps(dst.as_mut_ptr(), (1u16 << lanes) - 1, v);
        }
    }
}

pub mod activation;
pub mod attention;
pub mod bf16;
pub mod linear;
pub mod norm;
pub mod pooling;
pub mod quant;
pub mod score_gemm;
pub mod select;
pub mod vector;

/// Rows per rayon task in row-wise operations.
pub(crate) const ROWS_PER_TASK: usize = 16;
