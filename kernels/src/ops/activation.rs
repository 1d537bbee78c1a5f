//! Element-wise activations.

use rayon::prelude::*;

use crate::ops::madd;

/// The activations of BERT-family encoders (`hidden_act` in config.json).
/// The discriminants are `shaders/gelu.wgsl`'s modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: 0.5·x·(1 + erf(x/√2)).
    Gelu = 0,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh = 1,
    Relu = 2,
}

/// GELU as BERT defines it (`hidden_act = "gelu"`): `0.5·x·(1 + erf(x/√2))`.
///
/// erf is evaluated in f32 with Abramowitz & Stegun 7.1.26 (absolute error
/// below 1.5e-7) over an exp built from plain arithmetic, so the loop
/// vectorizes (AVX-512/AVX2 chosen at run time): GELU's absolute error stays
/// under 1e-6 for |x| < 4 and under 3e-7·|x| beyond, against a libm call per
/// element that dominated the encoder's time.
pub fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(gelu_chunk);
}

/// `e^x` for x ≤ 0 (arguments below -87 give 2^-126·…, effectively 0):
/// Cody–Waite reduction by ln 2 and a degree-6 polynomial; relative error
/// about 2e-7.
#[inline(always)]
pub(crate) fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without
    // a rounding instruction the baseline target lacks.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.0 / 720.0;
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn gelu_body<const FMA: bool>(chunk: &mut [f32]) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    for v in chunk.iter_mut() {
        let x = *v;
        let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
        let t = 1.0 / madd::<FMA>(P, z, 1.0);
        let mut poly = A[4];
        poly = madd::<FMA>(poly, t, A[3]);
        poly = madd::<FMA>(poly, t, A[2]);
        poly = madd::<FMA>(poly, t, A[1]);
        poly = madd::<FMA>(poly, t, A[0]);
        let erf_abs = 1.0 - poly * t * exp_nonpositive::<FMA>(-z * z);
        let erf = if x < 0.0 { -erf_abs } else { erf_abs };
        *v = 0.5 * x * (1.0 + erf);
    }
}

crate::ops::dispatch!(gelu_chunk, gelu_body, (chunk: &mut [f32]) -> ());

/// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    const C: f64 = 0.797_884_560_802_865_4; // √(2/π)
    x.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            let f = f64::from(*v);
            *v = (0.5 * f * (1.0 + (C * (f + 0.044_715 * f * f * f)).tanh())) as f32;
        }
    });
}

/// ReLU.
pub fn relu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(4096)
        .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = v.max(0.0)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_f64_erf() {
        let mut worst = 0f64;
        let xs: Vec<f32> = (-12_000..12_000).map(|i| i as f32 * 1e-3).collect();
        let mut got = xs.clone();
        gelu_inplace(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let f = f64::from(*x);
            let want = 0.5 * f * (1.0 + libm::erf(f * std::f64::consts::FRAC_1_SQRT_2));
            worst = worst.max((f64::from(*g) - want).abs() / f.abs().max(1.0));
        }
        assert!(worst < 1e-6, "worst scaled error {worst}");
        let mut tiny = [f32::MIN_POSITIVE, -1e-30, -200.0, 200.0];
        gelu_inplace(&mut tiny);
        assert_eq!(tiny[2], 0.0);
        assert_eq!(tiny[3], 200.0);
    }

    #[test]
    fn gelu_known_values() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0];
        gelu_inplace(&mut x);
        let want = [0.0f32, 0.841_344_7, -0.158_655_26, 2.995_95];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
