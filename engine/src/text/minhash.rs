//! MinHash signatures and LSH banding for near-duplicate detection.
//!
//! A text's **shingles** are its overlapping n-grams after normalization:
//! - [`Unit::Word`]: the text lowercased, its words the maximal runs of
//!   alphanumeric characters, each shingle `n` consecutive words joined by
//!   one space (Python: `re.findall(r"[^\W_]+", text.lower())`, the same
//!   for most scripts; it differs where Rust counts combining marks, as in
//!   Indic and Thai vowel signs, as alphanumeric);
//! - [`Unit::Char`]: the text lowercased with every run of whitespace made
//!   one space and the ends trimmed, each shingle `n` consecutive characters
//!   (Python: `" ".join(text.lower().split())`).
//!
//! A text with fewer than `n` units is one shingle, the whole normalized
//! text; a text without any unit has no shingles.
//!
//! A shingle is hashed once (xxHash64 of its UTF-8 bytes, seed 0, reduced
//! modulo the Mersenne prime 2^61 − 1) and permuted `num_perm` times by
//! `(a·h + b) mod (2^61 − 1)`, `a` and `b` drawn from a fixed splitmix64
//! sequence: signatures are deterministic across runs, machines and
//! versions. Each signature value is the least permuted hash over the
//! text's shingles; the share of positions where two signatures agree
//! estimates the Jaccard similarity of their shingle sets (standard error
//! `sqrt(J(1 − J) / num_perm)`). A text without shingles has the signature
//! of `u64::MAX` everywhere, as datasketch's empty MinHash.
//!
//! **Banding**: `b` bands of `r` rows; two signatures that agree on all `r`
//! values of some band are candidates. [`optimal_bands`] chooses `(b, r)` for
//! a threshold as datasketch's `MinHashLSH` does: the least sum of the
//! probabilities of a false positive below the threshold and of a false
//! negative above it, each weighted 0.5.

use twox_hash::XxHash64;

/// The Mersenne prime 2^61 − 1 the permutations work modulo.
pub const PRIME: u64 = (1 << 61) - 1;

/// The most permutations a signature may have.
pub const MAX_PERM: usize = 1024;

/// What a shingle is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Word,
    Char,
}

impl Unit {
    pub fn parse(name: &str) -> Option<Unit> {
        match name.to_ascii_lowercase().as_str() {
            "word" | "words" => Some(Unit::Word),
            "char" | "chars" | "character" | "characters" => Some(Unit::Char),
            _ => None,
        }
    }
}

/// `x mod 2^61 − 1` for `x < 2^123` (a permuted hash `a·h + b` with `a`,
/// `h` and `b` below 2^61, or a 64-bit hash).
#[inline(always)]
fn reduce(x: u128) -> u64 {
    let folded = (x as u64 & PRIME) + (x >> 61) as u64;
    let folded = (folded & PRIME) + (folded >> 61);
    if folded >= PRIME {
        folded - PRIME
    } else {
        folded
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the permutations' sequence (the bytes of "kiln").
const PERMUTATION_SEED: u64 = 0x6b69_6c6e;

/// Computes MinHash signatures: the permutations, and buffers reused from
/// text to text (no allocation per text once they have grown).
#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    ngram: usize,
    unit: Unit,
    normalized: String,
    /// Byte offsets of each unit's start in `normalized`, then its end.
    bounds: Vec<(usize, usize)>,
}

impl MinHasher {
    /// `num_perm` in `1..=MAX_PERM` and `ngram ≥ 1` (checked by the caller).
    pub fn new(num_perm: usize, ngram: usize, unit: Unit) -> MinHasher {
        let mut state = PERMUTATION_SEED;
        let (mut a, mut b) = (Vec::with_capacity(num_perm), Vec::with_capacity(num_perm));
        for _ in 0..num_perm {
            a.push(1 + splitmix64(&mut state) % (PRIME - 1));
            b.push(splitmix64(&mut state) % PRIME);
        }
        MinHasher {
            a,
            b,
            ngram: ngram.max(1),
            unit,
            normalized: String::new(),
            bounds: Vec::new(),
        }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// Writes `text`'s signature into `out` (`num_perm` values); returns
    /// the number of shingles (0: `out` is all `u64::MAX`).
    pub fn signature(&mut self, text: &str, out: &mut [u64]) -> usize {
        debug_assert_eq!(out.len(), self.a.len());
        out.fill(u64::MAX);
        self.normalize(text);
        let units = self.bounds.len();
        if units == 0 {
            return 0;
        }
        let n = self.ngram.min(units);
        let shingles = units - n + 1;
        for first in 0..shingles {
            let start = self.bounds[first].0;
            let end = self.bounds[first + n - 1].1;
            let h = XxHash64::oneshot(0, &self.normalized.as_bytes()[start..end]);
            let h = reduce(h as u128) as u128;
            for ((slot, &a), &b) in out.iter_mut().zip(&self.a).zip(&self.b) {
                let v = reduce(a as u128 * h + b as u128);
                if v < *slot {
                    *slot = v;
                }
            }
        }
        shingles
    }

    /// Fills `normalized` and `bounds` (one entry per unit).
    fn normalize(&mut self, text: &str) {
        self.normalized.clear();
        self.bounds.clear();
        match self.unit {
            Unit::Word => {
                let mut in_word = false;
                for c in text.chars() {
                    if c.is_alphanumeric() {
                        if !in_word {
                            if !self.normalized.is_empty() {
                                self.normalized.push(' ');
                            }
                            self.bounds
                                .push((self.normalized.len(), self.normalized.len()));
                            in_word = true;
                        }
                        self.normalized.extend(c.to_lowercase());
                        if let Some(last) = self.bounds.last_mut() {
                            last.1 = self.normalized.len();
                        }
                    } else {
                        in_word = false;
                    }
                }
            }
            Unit::Char => {
                let mut space = false;
                for c in text.chars() {
                    if c.is_whitespace() {
                        space = !self.normalized.is_empty();
                        continue;
                    }
                    if space {
                        let at = self.normalized.len();
                        self.normalized.push(' ');
                        self.bounds.push((at, at + 1));
                        space = false;
                    }
                    for lower in c.to_lowercase() {
                        let at = self.normalized.len();
                        self.normalized.push(lower);
                        self.bounds.push((at, self.normalized.len()));
                    }
                }
            }
        }
    }
}

/// The estimated Jaccard similarity of two signatures of the same length:
/// the share of positions where they agree (`None` when the lengths differ
/// or are 0).
pub fn similarity(a: &[u64], b: &[u64]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    Some(equal as f64 / a.len() as f64)
}

/// Appends the `bands` band hashes of `signature` (`bands · rows` values at
/// most) to `out`: xxHash64 of each band's values, seeded by the band's
/// index, so equal hashes mean the same band agrees. A signature without
/// shingles (all `u64::MAX`) has no bands: texts without words are no one's
/// near-duplicates.
pub fn band_hashes(signature: &[u64], bands: usize, rows: usize, out: &mut Vec<u64>) {
    if signature.iter().all(|&v| v == u64::MAX) {
        return;
    }
    let mut bytes = [0u8; 8 * 64];
    for band in 0..bands {
        let values = &signature[band * rows..(band + 1) * rows];
        let mut hasher = XxHash64::with_seed(band as u64);
        for chunk in values.chunks(64) {
            for (dst, v) in bytes.chunks_exact_mut(8).zip(chunk) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            std::hash::Hasher::write(&mut hasher, &bytes[..8 * chunk.len()]);
        }
        out.push(std::hash::Hasher::finish(&hasher));
    }
}

/// ∫ f over [lo, hi] by composite Simpson's rule (1,000 intervals; the
/// integrands are smooth polynomials in s).
fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    const N: usize = 1000;
    let h = (hi - lo) / N as f64;
    let mut sum = f(lo) + f(hi);
    for i in 1..N {
        let weight = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += weight * f(lo + i as f64 * h);
    }
    sum * h / 3.0
}

/// The bands and rows per band for `threshold` and `num_perm`, as
/// datasketch's `MinHashLSH` chooses them (false positives and false
/// negatives weighted 0.5 each).
pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
    let mut best = (1, 1);
    let mut least = f64::INFINITY;
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let (bf, rf) = (b as f64, r as f64);
            let candidate = |s: f64| 1.0 - (1.0 - s.powf(rf)).powf(bf);
            let false_positive = integrate(candidate, 0.0, threshold);
            let false_negative = integrate(|s| 1.0 - candidate(s), threshold, 1.0);
            let error = 0.5 * false_positive + 0.5 * false_negative;
            if error < least {
                least = error;
                best = (b, r);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shingles(text: &str, ngram: usize, unit: Unit) -> Vec<String> {
        let mut hasher = MinHasher::new(1, ngram, unit);
        hasher.normalize(text);
        let units = hasher.bounds.len();
        if units == 0 {
            return vec![];
        }
        let n = ngram.min(units);
        (0..=units - n)
            .map(|i| hasher.normalized[hasher.bounds[i].0..hasher.bounds[i + n - 1].1].to_string())
            .collect()
    }

    #[test]
    fn shingles_follow_the_documented_normalization() {
        assert_eq!(
            shingles("Hello,  World! It's ÜBER-cool_ok", 2, Unit::Word),
            [
                "hello world",
                "world it",
                "it s",
                "s über",
                "über cool",
                "cool ok"
            ]
        );
        assert_eq!(shingles("one two", 5, Unit::Word), ["one two"]);
        assert!(shingles(" ,;- ", 3, Unit::Word).is_empty());
        assert_eq!(shingles("  Ab \n\t C ", 3, Unit::Char), ["ab ", "b c"]);
        assert_eq!(shingles("Ab", 3, Unit::Char), ["ab"]);
    }

    #[test]
    fn reduce_is_the_remainder() {
        for x in [
            0u128,
            1,
            PRIME as u128,
            PRIME as u128 + 5,
            u64::MAX as u128,
            (PRIME as u128 - 1) * (PRIME as u128 - 1) + PRIME as u128,
            ((1u128 << 123) - 1),
        ] {
            assert_eq!(reduce(x) as u128, x % PRIME as u128, "{x}");
        }
    }

    #[test]
    fn similarity_estimates_jaccard() {
        // 60 shared words of 100 distinct: Jaccard 0.6 with word 1-grams.
        let a: Vec<String> = (0..80).map(|i| format!("w{i}")).collect();
        let b: Vec<String> = (20..100).map(|i| format!("w{i}")).collect();
        let mut hasher = MinHasher::new(1024, 1, Unit::Word);
        let (mut sa, mut sb) = (vec![0; 1024], vec![0; 1024]);
        assert_eq!(hasher.signature(&a.join(" "), &mut sa), 80);
        hasher.signature(&b.join(" "), &mut sb);
        let estimate = similarity(&sa, &sb).unwrap();
        // Standard error sqrt(0.24 / 1024) ≈ 0.015: four of them.
        assert!((estimate - 0.6).abs() < 0.06, "{estimate}");
        // Deterministic, and the same text gives the same signature.
        let mut again = vec![0; 1024];
        MinHasher::new(1024, 1, Unit::Word).signature(&a.join(" "), &mut again);
        assert_eq!(sa, again);
        let mut empty = vec![0; 1024];
        assert_eq!(hasher.signature("...", &mut empty), 0);
        assert!(empty.iter().all(|&v| v == u64::MAX));
    }

    #[test]
    fn bands_match_for_equal_signatures_only() {
        let mut hasher = MinHasher::new(128, 3, Unit::Word);
        let (mut sa, mut sb) = (vec![0; 128], vec![0; 128]);
        hasher.signature("the quick brown fox jumps over the lazy dog", &mut sa);
        hasher.signature("the quick brown fox jumps over the lazy dog", &mut sb);
        let (mut ba, mut bb) = (vec![], vec![]);
        band_hashes(&sa, 9, 13, &mut ba);
        band_hashes(&sb, 9, 13, &mut bb);
        assert_eq!(ba.len(), 9);
        assert_eq!(ba, bb);
        sb[0] ^= 1;
        bb.clear();
        band_hashes(&sb, 9, 13, &mut bb);
        assert_ne!(ba[0], bb[0]);
        assert_eq!(ba[1..], bb[1..]);
        let mut none = vec![];
        band_hashes(&[u64::MAX; 128], 9, 13, &mut none);
        assert!(none.is_empty());
    }

    /// The (bands, rows) datasketch 2.0's `MinHashLSH` chose for these
    /// thresholds and sizes (printed by `MinHashLSH(threshold=t,
    /// num_perm=n).b, .r`).
    #[test]
    fn bands_are_chosen_as_datasketch_chooses_them() {
        for (t, n, b, r) in [
            (0.5, 64, 14, 4),
            (0.5, 128, 25, 5),
            (0.7, 128, 14, 9),
            (0.8, 64, 5, 11),
            (0.8, 128, 9, 13),
            (0.8, 256, 17, 15),
            (0.9, 128, 5, 25),
            (0.95, 128, 3, 42),
            (0.95, 256, 5, 51),
        ] {
            assert_eq!(
                optimal_bands(t, n),
                (b, r),
                "threshold {t}, {n} permutations"
            );
        }
    }
}
