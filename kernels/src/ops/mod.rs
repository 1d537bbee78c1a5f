//! Tensor operations of the encoder and of vector scoring, on row-major f32
//! matrices. This module holds the CPU implementations (the `gemm` crate and
//! rayon); the wgpu and CUDA versions of each family join them file by file.

/// Defines `fn $name(args) -> ret` that runs `$body::<true>` compiled for
/// AVX-512 (or AVX2) with FMA where the CPU has them, else `$body::<false>`
/// for the baseline target: a portable binary still runs the hot loops at full
/// vector width. `$body` takes a `const FMA: bool` (fused multiply-add allowed).
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
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

pub mod activation;
pub mod attention;
pub mod linear;
pub mod norm;
pub mod pooling;
pub mod score_gemm;
pub mod topk;
pub mod vector;

/// Rows per rayon task in row-wise operations.
pub(crate) const ROWS_PER_TASK: usize = 16;
