//! Layer normalization (optionally fused with the residual add) and L2
//! normalization of rows.

use rayon::prelude::*;

use super::ROWS_PER_TASK;

/// `x = LayerNorm(x + residual)` over rows of `cols`, with BERT's epsilon.
/// Statistics are accumulated in f64 (eight lanes, so the loops vectorize).
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
    if cols == 0 {
        return;
    }
    x.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            let start = task * ROWS_PER_TASK * cols;
            let residual = residual.map(|r| &r[start..start + rows.len()]);
            layer_norm_rows(rows, residual, cols, gamma, beta, eps);
        });
}

#[inline(always)]
fn layer_norm_rows_body<const FMA: bool>(
    rows: &mut [f32],
    residual: Option<&[f32]>,
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) {
    for (i, row) in rows.chunks_exact_mut(cols).enumerate() {
        if let Some(r) = residual {
            let r = &r[i * cols..(i + 1) * cols];
            for c in 0..cols {
                row[c] += r[c];
            }
        }
        let (chunks, rest) = (row.chunks_exact(8), row.len() / 8 * 8);
        let mut lanes = [0f64; 8];
        for ch in chunks {
            for l in 0..8 {
                lanes[l] += f64::from(ch[l]);
            }
        }
        let mut total = 0f64;
        for v in lanes {
            total += v;
        }
        for v in &row[rest..] {
            total += f64::from(*v);
        }
        let mean = total / cols as f64;
        let mut lanes = [0f64; 8];
        for ch in row.chunks_exact(8) {
            for l in 0..8 {
                let d = f64::from(ch[l]) - mean;
                lanes[l] += d * d;
            }
        }
        let mut total = 0f64;
        for v in lanes {
            total += v;
        }
        for v in &row[rest..] {
            let d = f64::from(*v) - mean;
            total += d * d;
        }
        let var = total / cols as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for c in 0..cols {
            row[c] = ((f64::from(row[c]) - mean) * inv) as f32 * gamma[c] + beta[c];
        }
    }
}

crate::ops::dispatch!(
    layer_norm_rows,
    layer_norm_rows_body,
    (rows: &mut [f32], residual: Option<&[f32]>, cols: usize, gamma: &[f32], beta: &[f32], eps: f64) -> ()
);

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
    fn layer_norm_with_residual_matches_f64() {
        // 37 columns: vector lanes and a remainder; 40 rows: several tasks.
        let (rows, cols) = (40, 37);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let r: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let g: Vec<f32> = (0..cols).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 * -0.02).collect();
        let mut got = x.clone();
        add_layer_norm_inplace(&mut got, Some(&r), cols, &g, &b, 1e-12);
        for row in 0..rows {
            let v: Vec<f64> = (0..cols)
                .map(|c| f64::from(x[row * cols + c]) + f64::from(r[row * cols + c]))
                .collect();
            let mean = v.iter().sum::<f64>() / cols as f64;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                let want = (v[c] - mean) / (var + 1e-12).sqrt() * f64::from(g[c]) + f64::from(b[c]);
                assert!(
                    (f64::from(got[row * cols + c]) - want).abs() < 1e-5,
                    "{row},{c}"
                );
            }
        }
    }

    #[test]
    fn l2_rows() {
        let mut x = vec![3.0f32, 4.0, 0.0, 0.0];
        l2_normalize_rows_inplace(&mut x, 2);
        assert_eq!(x, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
