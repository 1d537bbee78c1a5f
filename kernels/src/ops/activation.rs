//! Element-wise activations.

use rayon::prelude::*;

/// GELU as BERT defines it (`hidden_act = "gelu"`): `0.5·x·(1 + erf(x/√2))`,
/// computed in f64 so the f32 result is correctly rounded in practice.
pub fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            let f = f64::from(*v);
            *v = (0.5 * f * (1.0 + libm::erf(f * std::f64::consts::FRAC_1_SQRT_2))) as f32;
        }
    });
}

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
    fn gelu_known_values() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0];
        gelu_inplace(&mut x);
        let want = [0.0f32, 0.841_344_7, -0.158_655_26, 2.995_95];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
