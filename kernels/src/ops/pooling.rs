//! Pooling token rows into one row per sequence, for ragged batches.

use rayon::prelude::*;

/// How token embeddings become a sentence embedding (sentence-transformers'
/// `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean of all the sequence's tokens.
    Mean,
    /// The first token ([CLS]).
    Cls,
    /// The element-wise maximum.
    Max,
    /// The sum divided by √len.
    MeanSqrtLen,
}

/// One `cols`-wide row per sequence of `offsets`.
pub fn pool_ragged(x: &[f32], cols: usize, offsets: &[usize], mode: PoolingMode) -> Vec<f32> {
    let rows: Vec<Vec<f32>> = offsets
        .par_windows(2)
        .map(|w| {
            let (start, end) = (w[0], w[1]);
            let len = end - start;
            let seq = &x[start * cols..end * cols];
            match mode {
                PoolingMode::Cls => seq[..cols].to_vec(),
                PoolingMode::Max => {
                    let mut out = vec![f32::NEG_INFINITY; cols];
                    for row in seq.chunks_exact(cols) {
                        for (o, v) in out.iter_mut().zip(row) {
                            *o = o.max(*v);
                        }
                    }
                    out
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let mut acc = vec![0f64; cols];
                    for row in seq.chunks_exact(cols) {
                        for (a, v) in acc.iter_mut().zip(row) {
                            *a += f64::from(*v);
                        }
                    }
                    let div = if mode == PoolingMode::Mean {
                        len as f64
                    } else {
                        (len as f64).sqrt()
                    };
                    acc.into_iter().map(|a| (a / div) as f32).collect()
                }
            }
        })
        .collect();
    rows.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let x = vec![1.0, 4.0, 3.0, 2.0, 10.0, 10.0];
        let off = [0, 2, 3];
        assert_eq!(
            pool_ragged(&x, 2, &off, PoolingMode::Mean),
            vec![2.0, 3.0, 10.0, 10.0]
        );
        assert_eq!(
            pool_ragged(&x, 2, &off, PoolingMode::Cls),
            vec![1.0, 4.0, 10.0, 10.0]
        );
        assert_eq!(
            pool_ragged(&x, 2, &off, PoolingMode::Max),
            vec![3.0, 4.0, 10.0, 10.0]
        );
    }
}
