//! Vector metrics and their exact scalar scores, shared by the SQL scoring
//! functions and the top-k search so that both report the same numbers.

use std::fmt;
use std::str::FromStr;

/// How two vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Inner product; higher is closer.
    Dot,
    /// Cosine similarity; higher is closer. Undefined (NULL) for a zero vector.
    Cosine,
    /// Euclidean distance; lower is closer.
    L2,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Dot => "dot",
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }

    /// Whether a larger score means a closer vector.
    pub fn higher_is_closer(self) -> bool {
        self != Metric::L2
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cosine" | "cos" | "cosine_similarity" => Ok(Metric::Cosine),
            "dot" | "ip" | "inner_product" | "dot_product" => Ok(Metric::Dot),
            "l2" | "euclidean" | "l2_distance" => Ok(Metric::L2),
            other => Err(format!(
                "unknown metric '{other}': expected 'cosine', 'dot' or 'l2'"
            )),
        }
    }
}

/// The exact score of `a` against `b`, accumulated in f64 and rounded to f32
/// once. `None` where it is undefined: the cosine of a zero vector.
pub fn exact_score(metric: Metric, a: &[f32], b: &[f32]) -> Option<f32> {
    debug_assert_eq!(a.len(), b.len());
    let (mut dot, mut na, mut nb, mut dist) = (0f64, 0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        match metric {
            Metric::Dot => dot += x * y,
            Metric::Cosine => {
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            Metric::L2 => dist += (x - y) * (x - y),
        }
    }
    match metric {
        Metric::Dot => Some(dot as f32),
        Metric::Cosine if na == 0.0 || nb == 0.0 => None,
        Metric::Cosine => Some((dot / (na.sqrt() * nb.sqrt())) as f32),
        Metric::L2 => Some(dist.sqrt() as f32),
    }
}

/// `|v|²` in f64, or `None` when a component is NaN or infinite.
pub fn finite_norm2(v: &[f32]) -> Option<f64> {
    let n2: f64 = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    n2.is_finite().then_some(n2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        let (a, b) = ([1.0, 2.0, 2.0], [2.0, 0.0, 0.0]);
        assert_eq!(exact_score(Metric::Dot, &a, &b), Some(2.0));
        assert_eq!(
            exact_score(Metric::Cosine, &a, &b),
            Some((2.0 / 6.0) as f32)
        );
        assert_eq!(exact_score(Metric::L2, &a, &b), Some(3.0));
        assert_eq!(exact_score(Metric::Cosine, &a, &[0.0; 3]), None);
        assert_eq!("IP".parse::<Metric>(), Ok(Metric::Dot));
        assert!("manhattan".parse::<Metric>().is_err());
        assert_eq!(finite_norm2(&[3.0, 4.0]), Some(25.0));
        assert_eq!(finite_norm2(&[f32::NAN]), None);
        assert_eq!(finite_norm2(&[f32::INFINITY]), None);
    }
}
