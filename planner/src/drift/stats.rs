//! The statistics of drift detection, computed as scipy computes them
//! (`ks_2samp`, `chisquare`, `wasserstein_distance`, `jensenshannon`) and
//! chosen, binned and thresholded as Evidently's data drift does.
//!
//! Every test reads a sample as its distinct values with their counts
//! (`(value, count)`, ascending): that is what one grouped pass over a
//! column gives, and it holds everything these statistics need — exactly,
//! not a sketch.

use std::cmp::Ordering;

/// A numeric sample: its distinct values, ascending, with their counts.
pub type Numbers = [(f64, u64)];

/// A sum that keeps the low bits (Neumaier's compensated summation).
#[derive(Default, Clone, Copy)]
struct Sum {
    sum: f64,
    carry: f64,
}

impl Sum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.carry += (self.sum - t) + x;
        } else {
            self.carry += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(self) -> f64 {
        self.sum + self.carry
    }
}

fn total<I: IntoIterator<Item = f64>>(values: I) -> f64 {
    let mut s = Sum::default();
    values.into_iter().for_each(|x| s.add(x));
    s.value()
}

fn count(sample: &Numbers) -> u64 {
    sample.iter().map(|(_, n)| n).sum()
}

/// numpy's `round` (half to even).
fn round_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

fn clip01(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// A statistic with its p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tested {
    pub statistic: f64,
    pub p_value: f64,
}

// ---------------------------------------------------------------- KS

/// The two-sample Kolmogorov–Smirnov test, two-sided, as scipy's
/// `ks_2samp(a, b)` (method 'auto': exact when neither sample has more
/// than 10,000 values, else the asymptotic distribution).
pub fn ks_2samp(a: &Numbers, b: &Numbers) -> Tested {
    let (n1, n2) = (count(a), count(b));
    let (f1, f2) = (n1 as f64, n2 as f64);
    let (mut max_s, mut min_s) = (f64::NEG_INFINITY, f64::INFINITY);
    for (_, c1, c2) in cdf_steps(a, b) {
        let diff = c1 as f64 / f1 - c2 as f64 / f2;
        max_s = max_s.max(diff);
        min_s = min_s.min(diff);
    }
    let min_s = (-min_s).clamp(0.0, 1.0);
    let mut d = if min_s > max_s { min_s } else { max_s };
    if n1.max(n2) <= 10_000 {
        let g = gcd(n1, n2);
        let lcm = ((n1 / g) * n2) as f64;
        let h = round_even(d * lcm) as u64;
        d = h as f64 / lcm;
        if h == 0 {
            return Tested {
                statistic: d,
                p_value: 1.0,
            };
        }
        let p = if n1 == n2 {
            prob_outside_square(n1, h)
        } else {
            outer_prob_inside(n1, n2, g, h)
        };
        if p.is_finite() && (0.0..=1.0).contains(&p) {
            return Tested {
                statistic: d,
                p_value: p,
            };
        }
    }
    let (m, n) = (f1.max(f2), f1.min(f2));
    let en = m * n / (m + n);
    Tested {
        statistic: d,
        p_value: clip01(kolmogorov_sf(round_even(en), d)),
    }
}

/// The two samples' distinct values merged in order, each with both
/// samples' counts at or below it (their empirical CDFs, unnormalized).
fn cdf_steps<'a>(a: &'a Numbers, b: &'a Numbers) -> impl Iterator<Item = (f64, u64, u64)> + 'a {
    let (mut i, mut j, mut c1, mut c2) = (0, 0, 0u64, 0u64);
    std::iter::from_fn(move || {
        let v = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.min(y.0),
            (Some(x), None) => x.0,
            (None, Some(y)) => y.0,
            (None, None) => return None,
        };
        while i < a.len() && a[i].0 <= v {
            c1 += a[i].1;
            i += 1;
        }
        while j < b.len() && b[j].0 <= v {
            c2 += b[j].1;
            j += 1;
        }
        Some((v, c1, c2))
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// P(D_{n,n} >= h/n), the alternating series in Horner form.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as f64, h as f64);
    let mut p = 0.0;
    let mut k = (n / h).floor();
    while k >= 0.0 {
        let mut p1 = 1.0;
        let mut j = 0.0;
        while j < h {
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1.0);
            j += 1.0;
        }
        p = p1 * (1.0 - p);
        k -= 1.0;
    }
    2.0 * p
}

/// The share of lattice paths from (0,0) to (m,n) that leave the band
/// |x/m - y/n| < h/lcm(m,n): Hodges' inside method, recursing on 1 - p
/// (Viehmann 2021), one sliding column at a time.
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = ((m / g) as i64, (n / g) as i64);
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let mut minj: i64 = 0;
    let mut maxj: i64 = ((h as f64 / mg as f64).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len];
    for slot in a.iter_mut().take(maxj as usize) {
        *slot = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((((ng * i - h) as f64) / mg as f64).floor() as i64 + 1).max(0);
        minj = minj.min(n);
        maxj = ((((ng * i + h) as f64) / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let Some(&prev) = a.get((jj + minj - lastminj) as usize) else {
                return f64::NAN;
            };
            val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
            match a.get_mut(jj as usize) {
                Some(slot) => *slot = val,
                None => return f64::NAN,
            }
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let from = ((maxj - minj) as usize).min(a.len());
            let to = ((maxj - minj + lastlen - curlen) as usize).min(a.len());
            a[from..to].iter_mut().for_each(|x| *x = 1.0);
        }
    }
    a.get((maxj - minj - 1) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

const E128: i32 = 128;
const EP128: f64 = 3.402_823_669_209_385e38; // 2^128
const EM128: f64 = 2.938_735_877_055_719e-39; // 2^-128

/// The survival function of the two-sided one-sample Kolmogorov–Smirnov
/// statistic D_n (scipy's `kstwo.sf`), by Simard and L'Ecuyer's choice
/// of method: Ruben–Gambino's closed forms, Durbin's matrix (Marsaglia,
/// Tsang and Wang), Pomeranz's recursion, twice Smirnov's one-sided
/// probability, or Pelz–Good's expansion.
pub fn kolmogorov_sf(n: f64, x: f64) -> f64 {
    if !(n.fract() == 0.0 && n > 0.0) || x.is_nan() {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let t = n * x;
    if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        let prob = if n <= 140.0 {
            (1..=n as u64).fold(1.0, |p, i| p * (i as f64 * (1.0 / n) * (2.0 * t - 1.0)))
        } else {
            (log_nfactorial_div_n_pow_n(n) + n * (2.0 * t - 1.0).ln()).exp()
        };
        return clip01(1.0 - prob);
    }
    if t >= n - 1.0 {
        return clip01(2.0 * (1.0 - x).powf(n));
    }
    if x >= 0.5 {
        return clip01(2.0 * smirnov_sf(n as u64, x));
    }
    let nxsquared = t * x;
    if n <= 140.0 {
        if nxsquared <= 0.754693 {
            return clip01(1.0 - clip01(durbin_cdf(n as u64, x)));
        }
        if nxsquared <= 4.0 {
            return clip01(1.0 - clip01(pomeranz_cdf(n as u64, x)));
        }
        return clip01(2.0 * smirnov_sf(n as u64, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip01(2.0 * smirnov_sf(n as u64, x));
    }
    let cdf = if nxsquared >= 18.0 {
        1.0
    } else if n <= 100_000.0 && n * x.powf(1.5) <= 1.4 {
        clip01(durbin_cdf(n as u64, x))
    } else {
        pelz_good_cdf(n, x)
    };
    clip01(1.0 - cdf)
}

/// ln(n! / n^n) by Stirling's series.
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    const C: [f64; 8] = [
        -2.955_065_359_477_124e-2,
        6.410_256_410_256_41e-3,
        -1.917_526_917_526_917_5e-3,
        8.417_508_417_508_417e-4,
        -5.952_380_952_380_953e-4,
        7.936_507_936_507_937e-4,
        -2.777_777_777_777_778e-3,
        8.333_333_333_333_333e-2,
    ];
    let rn = 1.0 / n;
    let x = rn / n;
    let poly = C.iter().fold(0.0, |acc, c| acc * x + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// Smirnov's one-sided probability P(D+_n >= x) (Birnbaum–Tingey's sum,
/// in logs).
pub fn smirnov_sf(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if n == 1 {
        return 1.0 - x;
    }
    let nf = n as f64;
    let last = (nf * (1.0 - x)).floor() as u64;
    let lg_n = libm::lgamma(nf + 1.0);
    let mut s = Sum::default();
    for j in 0..=last {
        let jf = j as f64;
        let base = 1.0 - x - jf / nf;
        if base <= 0.0 {
            continue;
        }
        let log_term = lg_n - libm::lgamma(jf + 1.0) - libm::lgamma(nf - jf + 1.0)
            + (nf - jf) * base.ln()
            + (jf - 1.0) * (x + jf / nf).ln();
        s.add(log_term.exp());
    }
    x * s.value()
}

fn mat_mul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * m];
    for i in 0..m {
        for k in 0..m {
            let aik = a[i * m + k];
            for j in 0..m {
                out[i * m + j] += aik * b[k * m + j];
            }
        }
    }
    out
}

/// P(D_n <= d) by Durbin's matrix (Marsaglia, Tsang and Wang 2003).
fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut hm = vec![0.0; m * m];
    let mut v: Vec<f64> = (1..=m).map(|i| 1.0 - h.powi(i as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    for i in 1..m {
        for (r, wv) in (i - 1..m).zip(&w) {
            hm[r * m + i] = *wv;
        }
    }
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let mut power: Vec<f64> = (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect();
    let (mut nn, mut expnt, mut hexpnt) = (n, 0i32, 0i32);
    while nn > 0 {
        if nn % 2 == 1 {
            power = mat_mul(&power, &hm, m);
            expnt += hexpnt;
        }
        hm = mat_mul(&hm, &hm, m);
        hexpnt *= 2;
        if hm[(k - 1) * m + k - 1].abs() > EP128 {
            hm.iter_mut().for_each(|x| *x /= EP128);
            hexpnt += E128;
        }
        nn /= 2;
    }
    let mut p = power[(k - 1) * m + k - 1];
    for i in 1..=n {
        p = i as f64 * p / n as f64;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p = libm::ldexp(p, expnt);
    }
    p
}

/// The ends of row `i`'s interval in Pomeranz's recursion.
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (half, odd) = ((i + 1) / 2, (i + 1) % 2);
        if odd == 0 {
            if half == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1)
            }
        } else {
            (half - 1 - ll - 1, half + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// P(D_n <= x) by Pomeranz's recursion (1974).
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let n = n as i64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![1.0; npwrs];
    let mut twogpower = vec![1.0; npwrs];
    let mut onem2gpower = vec![1.0; npwrs];
    let (g_n, two_g_n, one_m2g_n) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_m2g_n / m as f64;
    }
    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt = 0i32;
    let (mut j1, _) = pomeranz_j1j2(0, n, ll, ceilf, roundf);
    for i in 1..(2 * n + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|x| *x = 0.0);
        let j2;
        (j1, j2) = pomeranz_j1j2(i, n, ll, ceilf, roundf);
        let pwrs = if i == 1 || i == 2 * n + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let start = (k1 - v0s).clamp(0, npwrs as i64) as usize;
            let end = (k1 - v0s + ln2).clamp(0, npwrs as i64) as usize;
            let a = &v0[start..end.max(start)];
            let b = &pwrs[..(ln2 as usize).min(npwrs)];
            // np.convolve(a, b), full.
            let mut conv = vec![0.0; (a.len() + b.len()).saturating_sub(1)];
            for (p, av) in a.iter().enumerate() {
                for (q, bv) in b.iter().enumerate() {
                    conv[p + q] += av * bv;
                }
            }
            let conv_start = (j1 - k1).max(0) as usize;
            let conv_len = (j2 - j1 + 1).max(0) as usize;
            let from = conv_start.min(conv.len());
            let to = (conv_start + conv_len).min(conv.len());
            for (slot, c) in v1.iter_mut().zip(&conv[from..to]) {
                *slot = *c;
            }
            let top = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if 0.0 < top && top < EM128 {
                v1.iter_mut().for_each(|x| *x *= EP128);
                expnt -= E128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = v1.get((n - v1s) as usize).copied().unwrap_or(f64::NAN);
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = libm::ldexp(ans, expnt);
    }
    ans
}

/// Pelz and Good's (1976) expansion of P(D_n <= x).
fn pelz_good_cdf(n: f64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let z = n.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -PI * PI / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (slot, c) in k.iter_mut().zip(coeffs) {
            *slot = *slot * qpower + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let div = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (slot, d) in k.iter_mut().zip(div) {
        *slot = *slot * q * sqrt2pi / d;
    }
    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for kk in (1..=maxk).rev() {
        let ks = kk as f64;
        let qp = q.powf(ks * ks);
        k2extra += ks * ks * qp;
        let kspi = PI * ks;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ks * ks * qp;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    (0..4).map(|i| k[i] / n.powf(i as f64 / 2.0)).sum()
}

// ---------------------------------------------------------- chi², z

/// ln Γ(a) for a > 0.
fn ln_gamma(a: f64) -> f64 {
    libm::lgamma(a)
}

/// The regularized upper incomplete gamma function Q(a, x): the series
/// for x < a + 1, Lentz's continued fraction beyond.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x.is_nan() || a.is_nan() || a <= 0.0 || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let log_prefix = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..100_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - sum * log_prefix.exp()
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..100_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-17 {
                break;
            }
        }
        log_prefix.exp() * h
    }
}

/// Pearson's chi-squared test of observed counts against expected ones,
/// as scipy's `chisquare(observed, expected)`.
pub fn chisquare(observed: &[f64], expected: &[f64]) -> Tested {
    let statistic = total(
        observed
            .iter()
            .zip(expected)
            .map(|(o, e)| (o - e) * (o - e) / e),
    );
    let df = observed.len() as f64 - 1.0;
    Tested {
        statistic,
        p_value: if statistic.is_nan() {
            f64::NAN
        } else {
            gamma_q(df / 2.0, statistic / 2.0)
        },
    }
}

/// The standard normal CDF (as Cephes' `ndtr`).
pub fn normal_cdf(a: f64) -> f64 {
    let x = a * std::f64::consts::FRAC_1_SQRT_2;
    let z = x.abs();
    if z < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * libm::erf(x)
    } else {
        let y = 0.5 * libm::erfc(z);
        if x > 0.0 { 1.0 - y } else { y }
    }
}

/// The two-sided z-test of two proportions, as Evidently's: `hits` of
/// `n1` against `hits2` of `n2`.
pub fn proportions_z(hits1: u64, n1: u64, hits2: u64, n2: u64) -> Tested {
    let (n1, n2) = (n1 as f64, n2 as f64);
    let p1 = hits1 as f64 / n1;
    let p2 = hits2 as f64 / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    Tested {
        statistic: z,
        p_value: 2.0 * (1.0 - normal_cdf(z.abs())),
    }
}

// ------------------------------------------------------- distances

/// numpy's population standard deviation of a sample.
pub fn std_dev(sample: &Numbers) -> f64 {
    let n = count(sample) as f64;
    let mean = total(sample.iter().map(|(v, c)| v * *c as f64)) / n;
    let var = total(
        sample
            .iter()
            .map(|(v, c)| (v - mean) * (v - mean) * *c as f64),
    ) / n;
    var.sqrt()
}

/// The first Wasserstein distance between two samples (scipy's
/// `wasserstein_distance`): the area between their CDFs.
pub fn wasserstein(a: &Numbers, b: &Numbers) -> f64 {
    let (n1, n2) = (count(a) as f64, count(b) as f64);
    let mut s = Sum::default();
    let mut previous: Option<(f64, f64)> = None; // (value, |cdf gap|)
    for (v, c1, c2) in cdf_steps(a, b) {
        if let Some((pv, gap)) = previous {
            s.add(gap * (v - pv));
        }
        previous = Some((v, (c1 as f64 / n1 - c2 as f64 / n2).abs()));
    }
    s.value()
}

/// Counts of two samples over the union of their keys (each sample
/// sorted by key, keys distinct), in key order.
pub fn aligned<K>(
    a: &[(K, u64)],
    b: &[(K, u64)],
    cmp: impl Fn(&K, &K) -> Ordering,
) -> (Vec<u64>, Vec<u64>) {
    let (mut i, mut j) = (0, 0);
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => cmp(&x.0, &y.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out_a.push(a[i].1);
                out_b.push(0);
                i += 1;
            }
            Ordering::Greater => {
                out_a.push(0);
                out_b.push(b[j].1);
                j += 1;
            }
            Ordering::Equal => {
                out_a.push(a[i].1);
                out_b.push(b[j].1);
                i += 1;
                j += 1;
            }
        }
    }
    (out_a, out_b)
}

/// The edges numpy's `histogram_bin_edges(both, bins="sturges")` gives
/// for the two samples together (`integer`: the values are integers, so
/// no bin is narrower than 1).
pub fn sturges_edges(a: &Numbers, b: &Numbers, integer: bool) -> Vec<f64> {
    let n = count(a) + count(b);
    let lo = a
        .first()
        .map(|x| x.0)
        .into_iter()
        .chain(b.first().map(|x| x.0))
        .fold(f64::INFINITY, f64::min);
    let hi = a
        .last()
        .map(|x| x.0)
        .into_iter()
        .chain(b.last().map(|x| x.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut first, mut last) = (lo, hi);
    if first == last {
        first -= 0.5;
        last += 0.5;
    }
    let mut width = (hi - lo) / ((n as f64).log2() + 1.0);
    let bins = if n == 0 {
        1
    } else if width != 0.0 {
        if integer && width < 1.0 {
            width = 1.0;
        }
        ((last - first) / width).ceil() as usize
    } else {
        1
    };
    linspace(first, last, bins + 1)
}

/// numpy's `linspace(start, stop, num)` (endpoint included).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            if step == 0.0 {
                i as f64 / div * delta + start
            } else {
                i as f64 * step + start
            }
        })
        .collect();
    if let Some(last) = out.last_mut() {
        *last = stop;
    }
    out
}

/// numpy's `histogram(sample, edges)[0]`: bins closed on the left, the
/// last closed on both sides, values outside left out.
pub fn histogram(sample: &Numbers, edges: &[f64]) -> Vec<u64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0u64; bins];
    if bins == 0 {
        return counts;
    }
    for &(v, c) in sample {
        if v < edges[0] || v > edges[bins] {
            continue;
        }
        let at = edges.partition_point(|e| *e <= v);
        let bin = if v == edges[bins] { bins - 1 } else { at - 1 };
        counts[bin.min(bins - 1)] += c;
    }
    counts
}

/// Each count's share of `n`.
pub fn shares(counts: &[u64], n: u64) -> Vec<f64> {
    counts.iter().map(|c| *c as f64 / n as f64).collect()
}

/// Evidently's "feel zeroes": empty bins get a small share so logarithms
/// stay finite.
pub fn fill_zeros(shares: &mut [f64]) {
    let smallest = shares
        .iter()
        .copied()
        .filter(|x| *x != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return;
    }
    let fill = if smallest <= 0.0001 {
        smallest / 1e6
    } else {
        0.0001
    };
    shares
        .iter_mut()
        .filter(|x| **x == 0.0)
        .for_each(|x| *x = fill);
}

fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The Jensen–Shannon distance (natural logarithm) between two
/// distributions, each normalized to sum to 1 (scipy's `jensenshannon`).
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (total(p.iter().copied()), total(q.iter().copied()));
    let p: Vec<f64> = p.iter().map(|x| x / sp).collect();
    let q: Vec<f64> = q.iter().map(|x| x / sq).collect();
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    let left = total(p.iter().zip(&m).map(|(a, b)| rel_entr(*a, *b)));
    let right = total(q.iter().zip(&m).map(|(a, b)| rel_entr(*a, *b)));
    ((left + right) / 2.0).sqrt()
}

/// The population stability index of `current` against `reference`
/// (shares of the same bins, zeros filled).
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    total(
        reference
            .iter()
            .zip(current)
            .map(|(r, c)| (r - c) * (r / c).ln()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(values: &[f64]) -> Vec<(f64, u64)> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mut out: Vec<(f64, u64)> = Vec::new();
        for x in v {
            match out.last_mut() {
                Some((y, c)) if *y == x => *c += 1,
                _ => out.push((x, 1)),
            }
        }
        out
    }

    #[test]
    fn numpy_rounds_half_to_even() {
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(3.5), 4.0);
        assert_eq!(round_even(-2.5), -2.0);
        assert_eq!(round_even(2.4), 2.0);
    }

    #[test]
    fn identical_samples_have_no_distance() {
        let a = sample(&[1.0, 2.0, 2.0, 3.0]);
        assert_eq!(wasserstein(&a, &a), 0.0);
        let ks = ks_2samp(&a, &a);
        assert_eq!((ks.statistic, ks.p_value), (0.0, 1.0));
        assert_eq!(jensen_shannon(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
    }

    #[test]
    fn wasserstein_of_shifted_points_is_the_shift() {
        let a = sample(&[0.0, 1.0, 3.0]);
        let b = sample(&[5.0, 6.0, 8.0]);
        assert!((wasserstein(&a, &b) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn gamma_q_matches_closed_forms() {
        // Q(1, x) = e^-x; chi² with 2 degrees of freedom.
        for x in [0.1, 1.0, 5.0, 30.0] {
            let q = gamma_q(1.0, x);
            assert!((q - (-x).exp()).abs() <= 1e-14 * (-x).exp(), "{x}: {q}");
        }
        // Q(1/2, x) = erfc(sqrt x).
        for x in [0.01, 0.7, 3.0, 20.0] {
            let q = gamma_q(0.5, x);
            let want = libm::erfc(f64::sqrt(x));
            assert!((q - want).abs() <= 1e-13 * want, "{x}: {q} vs {want}");
        }
    }

    #[test]
    fn histogram_closes_the_last_bin() {
        let edges = [0.0, 1.0, 2.0];
        let s = sample(&[0.0, 0.5, 1.0, 2.0, 2.5, -1.0]);
        assert_eq!(histogram(&s, &edges), vec![2, 2]);
    }
}
