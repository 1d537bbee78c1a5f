//! Drift of embedding columns: the distance between the two centroids, and
//! a domain classifier — a logistic regression trained to tell reference
//! rows from current ones on half of a sample and scored (ROC AUC) on the
//! other half, as Evidently's embedding drift does.

/// splitmix64: a small deterministic generator, so a drift report is the
/// same every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// A column's vectors seen one at a time: their sum (for the centroid)
/// and a uniform sample of at most `capacity` of them (reservoir
/// sampling).
#[derive(Debug)]
pub struct Vectors {
    pub dimension: Option<usize>,
    pub seen: u64,
    sum: Vec<f64>,
    pub sample: Vec<Vec<f64>>,
    capacity: usize,
    rng: Rng,
}

impl Vectors {
    pub fn new(capacity: usize, seed: u64) -> Self {
        Vectors {
            dimension: None,
            seen: 0,
            sum: Vec::new(),
            sample: Vec::new(),
            capacity,
            rng: Rng::new(seed),
        }
    }

    /// Adds one vector; Err(dimension seen before) when its length differs.
    pub fn push(&mut self, v: &[f64]) -> Result<(), usize> {
        match self.dimension {
            None => {
                self.dimension = Some(v.len());
                self.sum = vec![0.0; v.len()];
            }
            Some(d) if d != v.len() => return Err(d),
            Some(_) => {}
        }
        for (s, x) in self.sum.iter_mut().zip(v) {
            *s += x;
        }
        self.seen += 1;
        if self.sample.len() < self.capacity {
            self.sample.push(v.to_vec());
        } else {
            let at = self.rng.below(self.seen) as usize;
            if at < self.capacity {
                self.sample[at] = v.to_vec();
            }
        }
        Ok(())
    }

    /// The mean vector.
    pub fn centroid(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.seen as f64).collect()
    }
}

/// The Euclidean distance between two vectors of one length.
pub fn euclidean(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// The ROC AUC of `scores` for `labels` (the Mann–Whitney statistic, ties
/// counted half); 0.5 when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their mean.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// How many passes of gradient descent the classifier takes.
const EPOCHS: usize = 200;
/// The L2 penalty of the classifier (scikit-learn's SGDClassifier default).
const ALPHA: f64 = 1e-4;

/// The domain classifier's ROC AUC: reference rows (label 1) against
/// current rows (label 0), shuffled, trained on one half, scored on the
/// other. Features are standardized on the training half; the model is
/// an L2-regularized logistic regression fitted by Nesterov-accelerated
/// gradient descent.
pub fn domain_classifier_auc(reference: &[Vec<f64>], current: &[Vec<f64>], seed: u64) -> f64 {
    let mut rows: Vec<(&[f64], bool)> = reference
        .iter()
        .map(|v| (v.as_slice(), true))
        .chain(current.iter().map(|v| (v.as_slice(), false)))
        .collect();
    let mut rng = Rng::new(seed);
    for i in (1..rows.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        rows.swap(i, j);
    }
    let half = rows.len() / 2;
    let (train, test) = rows.split_at(half);
    if train.is_empty() || test.is_empty() {
        return 0.5;
    }
    let d = train[0].0.len();
    let n = train.len() as f64;
    let mut mean = vec![0.0; d];
    for (x, _) in train {
        for (m, v) in mean.iter_mut().zip(x.iter()) {
            *m += v / n;
        }
    }
    let mut scale = vec![0.0; d];
    for (x, _) in train {
        for ((s, v), m) in scale.iter_mut().zip(x.iter()).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    for s in scale.iter_mut() {
        *s = if *s > 0.0 { 1.0 / s.sqrt() } else { 0.0 };
    }
    let standardize = |x: &[f64]| -> Vec<f64> {
        x.iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((v, m), s)| (v - m) * s)
            .collect()
    };
    let xs: Vec<Vec<f64>> = train.iter().map(|(x, _)| standardize(x)).collect();
    let ys: Vec<f64> = train.iter().map(|(_, y)| f64::from(u8::from(*y))).collect();
    // The logistic loss's gradient is Lipschitz with constant at most
    // max ||x||² / 4 (bias included) plus the penalty.
    let lipschitz = xs
        .iter()
        .map(|x| x.iter().map(|v| v * v).sum::<f64>() + 1.0)
        .fold(0.0, f64::max)
        / 4.0
        + ALPHA;
    let step = 1.0 / lipschitz;
    let mut w = vec![0.0; d + 1];
    let mut previous = w.clone();
    let mut grad = vec![0.0; d + 1];
    for epoch in 0..EPOCHS {
        let momentum = epoch as f64 / (epoch as f64 + 3.0);
        let look: Vec<f64> = w
            .iter()
            .zip(&previous)
            .map(|(a, b)| a + momentum * (a - b))
            .collect();
        grad.iter_mut().for_each(|g| *g = 0.0);
        for (x, y) in xs.iter().zip(&ys) {
            let z = look[d] + x.iter().zip(&look).map(|(a, b)| a * b).sum::<f64>();
            let residual = (sigmoid(z) - y) / n;
            for (g, v) in grad.iter_mut().zip(x) {
                *g += residual * v;
            }
            grad[d] += residual;
        }
        for (g, l) in grad.iter_mut().zip(&look).take(d) {
            *g += ALPHA * l;
        }
        previous = std::mem::replace(
            &mut w,
            look.iter().zip(&grad).map(|(l, g)| l - step * g).collect(),
        );
    }
    let scores: Vec<f64> = test
        .iter()
        .map(|(x, _)| {
            let x = standardize(x);
            w[d] + x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
        })
        .collect();
    let labels: Vec<bool> = test.iter().map(|(_, y)| *y).collect();
    roc_auc(&scores, &labels)
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(roc_auc(&[0.1, 0.9], &[false, true]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.1], &[false, true]), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), 0.5);
        // sklearn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            0.75
        );
    }

    fn gaussian(rng: &mut Rng) -> f64 {
        // Box–Muller.
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * (u.max(1e-300)).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn cloud(rng: &mut Rng, n: usize, d: usize, shift: f64) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|i| gaussian(rng) + if i == 0 { shift } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_classifier_separates_shifted_clouds_and_not_equal_ones() {
        let mut rng = Rng::new(7);
        let a = cloud(&mut rng, 400, 16, 0.0);
        let b = cloud(&mut rng, 400, 16, 0.0);
        let c = cloud(&mut rng, 400, 16, 1.5);
        let same = domain_classifier_auc(&a, &b, 1);
        let shifted = domain_classifier_auc(&a, &c, 1);
        assert!(same < 0.55, "same distribution: AUC {same}");
        assert!(shifted > 0.8, "shifted: AUC {shifted}");
    }

    #[test]
    fn the_reservoir_keeps_capacity_and_the_centroid_sees_all() {
        let mut v = Vectors::new(3, 1);
        for i in 0..10 {
            v.push(&[i as f64, 1.0]).unwrap();
        }
        assert_eq!(v.sample.len(), 3);
        assert_eq!(v.centroid(), vec![4.5, 1.0]);
        assert_eq!(v.push(&[1.0]), Err(2));
    }
}
