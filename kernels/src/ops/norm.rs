//! Layer normalization (optionally fused with the residual add) and L2
//! normalization of rows.

use rayon::prelude::*;

use super::ROWS_PER_TASK;

/// `x = LayerNorm(x + residual)` over rows of `cols`, with BERT's epsilon.
/// Statistics are accumulated in f64.
pub fn add_layer_norm_inplace(
    x: &mut [f32],
    residual: Option<&[f32]>,
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) {
    assert_eq!(gamma.len(), cols);
    assert_eq!(beta.len(), cols);
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len());
    }
    x.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (i, row) in rows.chunks_exact_mut(cols).enumerate() {
                if let Some(r) = residual {
                    let start = (task * ROWS_PER_TASK + i) * cols;
                    for (v, add) in row.iter_mut().zip(&r[start..start + cols]) {
                        *v += add;
                    }
                }
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / cols as f64;
                let var = row
                    .iter()
                    .map(|&v| {
                        let d = f64::from(v) - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / cols as f64;
                let inv = 1.0 / (var + eps).sqrt();
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *v = ((f64::from(*v) - mean) * inv) as f32 * g + b;
                }
            }
        });
}

/// Scales each row to unit L2 norm; a zero row stays zero (as
/// `torch.nn.functional.normalize` leaves it, with its epsilon).
pub fn l2_normalize_rows_inplace(x: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    x.par_chunks_mut(cols).for_each(|row| {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let scale = 1.0 / norm.max(1e-12);
        for v in row {
            *v = (f64::from(*v) * scale) as f32;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_normalizes() {
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        add_layer_norm_inplace(&mut x, None, 4, &[1.0; 4], &[0.0; 4], 1e-12);
        let mean: f32 = x[..4].iter().sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6);
        assert!((x[3] - 1.341_640_8).abs() < 1e-5);
        assert!(x[4..].iter().all(|v| v.abs() < 1e-3));
    }

    #[test]
    fn l2_rows() {
        let mut x = vec![3.0f32, 4.0, 0.0, 0.0];
        l2_normalize_rows_inplace(&mut x, 2);
        assert_eq!(x, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
