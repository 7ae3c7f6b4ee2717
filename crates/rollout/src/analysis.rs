//! Canary analysis: the new release against the stable one, in the same time window, from the
//! routers' own counters. Pure: counts in, a [`Verdict`] and every number behind it out.
//!
//! ## The checks, in order
//! 1. **Guardrail.** At least [`GUARDRAIL_MIN_REQUESTS`] requests to the new release with at
//!    least [`GUARDRAIL_PERCENT`] % of them 5xx aborts at once, whatever else holds.
//! 2. **Error rate: a sequential test valid under repeated looks** (α = [`ALPHA`]). The
//!    controller looks at the counts on every pass, so a fixed-sample test (a z-test, or
//!    Kayenta's Mann-Whitney, which also passes clear regressions on sparse error data:
//!    kayenta#426) would fail a good canary far more often than α. Instead:
//!    - Condition on the total number of errors `E = e_new + e_stable`. If both releases have
//!      the same error rate, each error came from the new release with probability
//!      `q0 = n_new / (n_new + n_stable)`, the new release's share of the requests: `e_new` is
//!      Binomial(E, q0) (exact for Poisson counts, and close for binomials while errors are a
//!      small part of the requests — the hypergeometric it approximates).
//!    - Test `q = q0` against `q ≠ q0` with a **mixture sequential probability ratio test**:
//!      the likelihood ratio integrated over a Beta(c·q0, c·(1−q0)) prior on `q` (c =
//!      [`PRIOR_STRENGTH`]), `Λ = B(a + e_new, b + e_stable) / B(a, b) / (q0^e_new
//!      (1−q0)^e_stable)`. Under the null, Λ is a non-negative martingale with mean 1, so by
//!      Ville's inequality `P(sup_t Λ_t ≥ 1/α) ≤ α`: checking it after every request, every pass,
//!      forever, still fails a good canary with probability at most α. Its reciprocal is an
//!      always-valid p-value.
//!    - The canary fails when `ln Λ ≥ ln(1/α)` **and** the new release's error rate is the
//!      higher one (a subset of the rejection event, so still at most α): a canary that errs less
//!      than stable is not failed for being different.
//!    - Being valid at any sample size, this check may fail a clearly bad canary before it has
//!      `min_requests`: that is evidence, not "no data".
//! 3. **Too few requests.** Fewer than `min_requests` to the new release is
//!    [`Verdict::InsufficientData`]: never a pass, never a failure (Flagger counts no data as a
//!    failure, flagger#252; Argo reverts a canary with no traffic, argo-rollouts#1905).
//! 4. **Latency.** A p99 above `1.5 × stable p99 + 20 ms` fails ([`latency_limit_ms`]).
//! 5. Otherwise the step passes.
//!
//! Requests that a `match` sent to the new release are not in these counts (the routers count
//! them apart): they were chosen, not sampled.

use serde::{Deserialize, Serialize};

/// The false-failure rate the error test allows, over every look at a step.
pub const ALPHA: f64 = 0.01;
/// The mixture's prior is Beta(c·q0, c·(1−q0)): centred on the null, and weak.
pub const PRIOR_STRENGTH: f64 = 2.0;
/// The guardrail looks only from this many requests to the new release on.
pub const GUARDRAIL_MIN_REQUESTS: u64 = 100;
/// The guardrail's 5xx share, in percent.
pub const GUARDRAIL_PERCENT: u64 = 5;

/// One release's counters over a window: the routers' figures summed over every router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Requests answered (not counting matched ones).
    pub requests: u64,
    /// Of them, answers with a 5xx status (including the router's own 502/504 for it).
    pub errors_5xx: u64,
    /// The 99th percentile latency in ms, if any request was timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
}

impl ArmCounts {
    /// The 5xx share, 0 with no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }
}

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "why")]
pub enum Verdict {
    /// Enough requests, and nothing failed.
    Pass,
    /// Fewer requests than `min_requests` and no evidence against the canary.
    InsufficientData,
    /// The error test or the latency check failed; the reason names the numbers.
    Fail(String),
    /// The guardrail tripped: abort at once; the reason names the numbers.
    Abort(String),
}

impl Verdict {
    /// `pass`, `insufficient data`, `fail`, `abort`: how a status line says it.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::InsufficientData => "insufficient data",
            Verdict::Fail(_) => "fail",
            Verdict::Abort(_) => "abort",
        }
    }

    /// Fail or Abort.
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::Abort(_))
    }
}

/// Every number behind a verdict: what `berth rollout explain` prints for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// The new release's counters.
    pub new: ArmCounts,
    /// The stable release's counters, same window.
    pub stable: ArmCounts,
    /// The new release's share of the requests: the null's probability that an error is its.
    pub q0: f64,
    /// `ln Λ` of the mixture SPRT (0 with no errors).
    pub statistic: f64,
    /// `ln(1/α)`: the statistic at or above which the error rates differ.
    pub threshold: f64,
    /// The p99 above which the new release fails, if stable's p99 is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_limit_ms: Option<u64>,
    /// Requests the step needs before it can pass.
    pub min_requests: u64,
    /// The conclusion.
    pub verdict: Verdict,
}

/// The p99 above which the new release fails: `1.5 × stable + 20 ms`.
pub fn latency_limit_ms(stable_p99_ms: u64) -> u64 {
    stable_p99_ms
        .saturating_add(stable_p99_ms / 2)
        .saturating_add(20)
}

/// Compares `new` with `stable` (see the module documentation for the order of the checks).
pub fn analyse(new: ArmCounts, stable: ArmCounts, min_requests: u64) -> Analysis {
    let total = new.requests.saturating_add(stable.requests);
    let q0 = if total == 0 {
        0.0
    } else {
        new.requests as f64 / total as f64
    };
    // Finite by construction; kept so even a pathological input stores (JSON has no NaN).
    let statistic = match log_mixture_ratio(new.errors_5xx, stable.errors_5xx, q0) {
        s if s.is_nan() => 0.0,
        s => s.clamp(-1e300, 1e300),
    };
    let threshold = (1.0 / ALPHA).ln();
    let latency_limit = stable.p99_ms.map(latency_limit_ms);
    let verdict = if new.requests >= GUARDRAIL_MIN_REQUESTS
        && new.errors_5xx.saturating_mul(100) >= new.requests.saturating_mul(GUARDRAIL_PERCENT)
    {
        Verdict::Abort(format!(
            "guardrail: {} of {} requests to the new release answered 5xx ({:.1}% ≥ {GUARDRAIL_PERCENT}%)",
            new.errors_5xx,
            new.requests,
            100.0 * new.error_rate()
        ))
    } else if statistic >= threshold && new.error_rate() > stable.error_rate() {
        Verdict::Fail(format!(
            "error rate {:.2}% ({} of {}) against stable {:.2}% ({} of {}): ln Λ = {statistic:.2} ≥ {threshold:.2} (α = {ALPHA})",
            100.0 * new.error_rate(),
            new.errors_5xx,
            new.requests,
            100.0 * stable.error_rate(),
            stable.errors_5xx,
            stable.requests
        ))
    } else if new.requests < min_requests {
        Verdict::InsufficientData
    } else {
        match (new.p99_ms, stable.p99_ms, latency_limit) {
            (Some(n), Some(s), Some(limit)) if n > limit => Verdict::Fail(format!(
                "p99 latency {n} ms against stable {s} ms: above 1.5 × {s} + 20 = {limit} ms"
            )),
            _ => Verdict::Pass,
        }
    };
    Analysis {
        new,
        stable,
        q0,
        statistic,
        threshold,
        latency_limit_ms: latency_limit,
        min_requests,
        verdict,
    }
}

/// `ln Λ` for `x` errors of the new release and `y` of the stable one, with the new release's
/// request share `q0`. 0 (no evidence either way) without errors or without a share to test.
pub fn log_mixture_ratio(x: u64, y: u64, q0: f64) -> f64 {
    if x == 0 && y == 0 || !(q0 > 0.0 && q0 < 1.0) {
        return 0.0;
    }
    let a = PRIOR_STRENGTH * q0;
    let b = PRIOR_STRENGTH * (1.0 - q0);
    let (xf, yf) = (x as f64, y as f64);
    ln_beta(a + xf, b + yf) - ln_beta(a, b) - xf * q0.ln() - yf * (1.0 - q0).ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln Γ(x)` for `x > 0`: Lanczos (g = 7, 9 terms), with the reflection formula below ½;
/// about 15 significant digits, plenty for a threshold of 4.6.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors_5xx: u64, p99_ms: Option<u64>) -> ArmCounts {
        ArmCounts {
            requests,
            errors_5xx,
            p99_ms,
        }
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(101.0) - 363.739_375_555_563_5).abs() < 1e-9);
    }

    #[test]
    fn a_bad_canary_fails_on_its_error_rate_before_min_requests() {
        // 30 % errors at a 10 % share: 6 errors of 20, stable clean.
        let a = analyse(arm(20, 6, None), arm(180, 0, None), 300);
        assert!(
            matches!(a.verdict, Verdict::Fail(ref why) if why.contains("error rate 30.00%")),
            "{a:?}"
        );
        assert!(a.statistic >= a.threshold);
    }

    #[test]
    fn the_guardrail_aborts_at_five_percent_over_a_hundred_requests() {
        let a = analyse(arm(100, 5, None), arm(100, 5, None), 300);
        assert!(matches!(a.verdict, Verdict::Abort(_)), "{a:?}");
        let a = analyse(arm(99, 5, None), arm(99, 5, None), 300);
        assert_eq!(a.verdict, Verdict::InsufficientData, "under 100 requests");
        let a = analyse(arm(100, 4, None), arm(100, 4, None), 100);
        assert_eq!(a.verdict, Verdict::Pass, "4 % is under the guardrail");
    }

    #[test]
    fn no_data_is_never_a_pass_nor_a_failure() {
        let a = analyse(arm(0, 0, None), arm(0, 0, None), 300);
        assert_eq!(a.verdict, Verdict::InsufficientData);
        let a = analyse(arm(299, 0, None), arm(2000, 3, None), 300);
        assert_eq!(a.verdict, Verdict::InsufficientData);
    }

    #[test]
    fn a_good_canary_passes_with_the_same_error_rate() {
        let a = analyse(arm(300, 3, Some(40)), arm(2700, 27, Some(40)), 300);
        assert_eq!(a.verdict, Verdict::Pass, "{a:?}");
        assert!(a.statistic < a.threshold);
    }

    #[test]
    fn a_canary_that_errs_less_is_not_failed_for_being_different() {
        let a = analyse(arm(3000, 0, None), arm(3000, 40, None), 300);
        assert!(a.statistic >= a.threshold, "{a:?}");
        assert_eq!(a.verdict, Verdict::Pass);
    }

    #[test]
    fn latency_fails_above_one_and_a_half_times_stable_plus_twenty() {
        assert_eq!(latency_limit_ms(100), 170);
        let a = analyse(arm(300, 0, Some(171)), arm(3000, 0, Some(100)), 300);
        assert!(
            matches!(a.verdict, Verdict::Fail(ref why) if why.contains("170 ms")),
            "{a:?}"
        );
        let a = analyse(arm(300, 0, Some(170)), arm(3000, 0, Some(100)), 300);
        assert_eq!(a.verdict, Verdict::Pass);
    }

    /// The test's promise, checked by simulation: with equal error rates, looking after every
    /// batch of requests for a long time still fails far fewer than α·runs good canaries.
    #[test]
    fn repeated_looks_keep_false_failures_under_alpha() {
        // A small deterministic generator (xorshift), so the test is the same every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let runs = 400;
        let mut failed = 0;
        for _ in 0..runs {
            let (mut new, mut stable) = (arm(0, 0, None), arm(0, 0, None));
            for _look in 0..200 {
                for _ in 0..50 {
                    let is_new = next() < 0.1;
                    let error = next() < 0.02;
                    let a = if is_new { &mut new } else { &mut stable };
                    a.requests += 1;
                    a.errors_5xx += u64::from(error);
                }
                // The SPRT alone: the guardrail is an absolute threshold, and at 2 % errors a
                // hundred requests reach 5 % by chance about one time in twenty.
                if matches!(analyse(new, stable, 300).verdict, Verdict::Fail(_)) {
                    failed += 1;
                    break;
                }
            }
        }
        // α = 1 % of 400 runs is 4; the mixture is conservative.
        assert!(failed <= 4, "{failed} of {runs} good canaries failed");
    }
}
