//! Numerical building blocks shared by the tests: the always-valid boundary of a
//! normal-mixture sequential test, the standard normal tail, and Student's t tail.
//!
//! # The normal-mixture boundary
//!
//! Every test in this crate reduces its data to a z statistic: an estimate minus the
//! edge of the null hypothesis, divided by the estimate's standard error. For a sum of
//! independent observations that statistic behaves like a Brownian motion indexed by
//! the *information* `n_eff = 1 / (1/n_canary + 1/n_stable)` (the number of
//! observation pairs). Averaging the likelihood ratio over a normal prior on the
//! standardised effect, with standard deviation [`EFFECT_SCALE`], gives the mixture
//! likelihood ratio
//!
//! `Lambda = sqrt(1 / (1 + r)) * exp(z^2 * r / (2 * (1 + r)))`, with `r = n_eff * EFFECT_SCALE^2`,
//!
//! which is a non-negative martingale under the null (a supermartingale anywhere
//! inside a one-sided null). Ville's inequality bounds the chance that it *ever*
//! reaches `1/alpha` by `alpha`, so the test may be looked at after every request
//! without inflating the false-alarm rate (Robbins 1970; Johari et al., "Always
//! valid inference", 2017). Solving `Lambda = 1/alpha` for `z` gives the boundary
//!
//! `z_crit(n_eff) = sqrt((1 + r) / r * (2 * ln(1/alpha) + ln(1 + r)))`.
//!
//! The mixture is symmetric, so using it for a one-sided test is conservative: the
//! chance of ever crossing the upper boundary alone is at most `alpha` too.
//!
//! `EFFECT_SCALE = 0.1` puts the prior's mass on effects of about a tenth of a
//! standard deviation per request: one error-rate point at a 1 % baseline
//! (`0.01 / sqrt(0.01 * 0.99)`), a doubling of the tail mass above a p99, or a
//! small Cohen's d for a mean. The boundary is tightest for effects of that size and
//! still valid for any other.

/// Standard deviation of the mixture prior on the standardised effect (see the
/// module docs).
pub const EFFECT_SCALE: f64 = 0.1;

/// The information (effective number of observation pairs) of a two-sample
/// comparison: `1 / (1/a + 1/b)`, zero when either side is empty.
pub fn information(a: u64, b: u64) -> f64 {
    if a == 0 || b == 0 {
        return 0.0;
    }
    let (a, b) = (a as f64, b as f64);
    a * b / (a + b)
}

/// The z value that the normal-mixture statistic must reach after `information`
/// observation pairs to reject at level `alpha`, valid under continuous monitoring.
pub fn mixture_critical_z(information: f64, alpha: f64) -> f64 {
    let r = information * EFFECT_SCALE * EFFECT_SCALE;
    ((1.0 + r) / r * (2.0 * (1.0 / alpha).ln() + (1.0 + r).ln())).sqrt()
}

/// Upper tail of the standard normal distribution, `P(Z > z)`.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Upper tail of Student's t distribution with `df` degrees of freedom, `P(T > t)`.
pub fn student_t_upper_tail(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    let tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// Complementary error function, with fractional error below 1.2e-7 everywhere
/// (the Chebyshev fit of Press et al., *Numerical Recipes*, 6.2).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * poly.exp();
    if x >= 0.0 {
        value
    } else {
        2.0 - value
    }
}

/// Natural logarithm of the gamma function for `x > 0` (Lanczos approximation,
/// relative error below 2e-10).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 6] = [
        76.180_091_729_471_46,
        -86.505_320_329_416_77,
        24.014_098_240_830_91,
        -1.231_739_572_450_155,
        0.120_865_097_386_617_9e-2,
        -0.539_523_938_495_3e-5,
    ];
    let mut y = x;
    let tmp = x + 5.5;
    let tmp = tmp - (x + 0.5) * tmp.ln();
    let mut series = 1.000_000_000_190_015;
    for c in COEFFICIENTS {
        y += 1.0;
        series += c / y;
    }
    -tmp + (2.506_628_274_631_000_5 * series / x).ln()
}

/// The regularised incomplete beta function `I_x(a, b)`, by the continued fraction
/// of *Numerical Recipes* 6.4 on whichever side of the mean converges fast.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// Modified Lentz evaluation of the incomplete beta continued fraction.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const MAX_ITERATIONS: u32 = 300;
    const EPSILON: f64 = 3e-14;
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (sum, plus, minus) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - sum * x / plus);
    let mut h = d;
    for m in 1..=MAX_ITERATIONS {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let even = m * (b - m) * x / ((minus + m2) * (a + m2));
        d = 1.0 / guard(1.0 + even * d);
        c = guard(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (sum + m) * x / ((a + m2) * (plus + m2));
        d = 1.0 / guard(1.0 + odd * d);
        c = guard(1.0 + odd / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPSILON {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn normal_tail_matches_tables() {
        close(normal_upper_tail(0.0), 0.5, 1e-7);
        close(normal_upper_tail(1.959_964), 0.025, 1e-7);
        close(normal_upper_tail(-1.644_854), 0.95, 1e-7);
        close(normal_upper_tail(3.090_232), 0.001, 1e-8);
    }

    #[test]
    fn student_t_tail_matches_tables() {
        // Two-sided 5 % critical values: t(10) = 2.228139, t(30) = 2.042272.
        close(student_t_upper_tail(2.228_139, 10.0), 0.025, 1e-6);
        close(student_t_upper_tail(2.042_272, 30.0), 0.025, 1e-6);
        // One-sided 1 % critical value of t(5) = 3.364930, and symmetry.
        close(student_t_upper_tail(3.364_930, 5.0), 0.01, 1e-6);
        close(student_t_upper_tail(-3.364_930, 5.0), 0.99, 1e-6);
        // With many degrees of freedom it is the normal tail.
        close(student_t_upper_tail(1.959_964, 1e7), 0.025, 1e-6);
        assert_eq!(student_t_upper_tail(f64::INFINITY, 3.0), 0.0);
    }

    #[test]
    fn mixture_boundary_is_where_the_likelihood_ratio_reaches_one_over_alpha() {
        for (information, alpha) in [(50.0, 0.05), (2_000.0, 0.001), (1e6, 0.01)] {
            let z = mixture_critical_z(information, alpha);
            let r: f64 = information * EFFECT_SCALE * EFFECT_SCALE;
            let lambda = (1.0 / (1.0 + r)).sqrt() * (z * z * r / (2.0 * (1.0 + r))).exp();
            close(lambda, 1.0 / alpha, 1e-6 / alpha);
        }
        // Stricter than a fixed-sample test at the same level: that is the price of
        // looking continuously.
        assert!(mixture_critical_z(2_000.0, 0.001) > 3.090_232);
    }

    #[test]
    fn information_is_the_harmonic_pair_count() {
        close(information(1_000, 1_000), 500.0, 1e-12);
        close(information(300, 600), 200.0, 1e-12);
        assert_eq!(information(0, 10), 0.0);
    }
}
