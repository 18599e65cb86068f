//! Seeded simulations of whole rollouts: the acceptance tests for power
//! (regressions are rolled back within a minute) and false alarms (identical sides
//! are never rolled back), through the same `observe`/`decide` calls the gateway
//! makes.
//!
//! Assumptions: 200 stable and 200 canary requests per second, latencies lognormal
//! with a 50 ms median and sigma 0.5 (p99 about 160 ms). The regression runs feed
//! one-second windows and call `decide` after each; the ten-minute A/A runs look
//! every five seconds, the gateway's cadence, which also keeps them fast in debug
//! builds (a look costs a few passes over the histograms' 18k buckets).

use std::time::Duration;

use crate::{
    CanaryAnalysis, CanaryPlan, Decision, RollbackReason, Step, Window, LATENCY_HIGHEST_US,
};

/// SplitMix64: tiny, fast and good enough to drive a simulation reproducibly.
struct Rng {
    state: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare_normal: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal by Box–Muller, using both values of each pair.
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform();
        self.spare_normal = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// How one side behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    /// Multiplier applied to latencies whose normal draw is at least `slow_from`.
    slowdown: f64,
    slow_from: f64,
}

impl Behaviour {
    fn healthy(error_rate: f64) -> Self {
        Behaviour {
            error_rate,
            slowdown: 1.0,
            slow_from: f64::NEG_INFINITY,
        }
    }

    fn fill(&self, rng: &mut Rng, window: &mut Window, requests: u64) {
        const MEDIAN_US: f64 = 50_000.0;
        const SIGMA: f64 = 0.5;
        window.clear();
        window.requests = requests;
        for _ in 0..requests {
            if rng.uniform() < self.error_rate {
                window.errors += 1;
            }
            let z = rng.normal();
            let factor = if z >= self.slow_from {
                self.slowdown
            } else {
                1.0
            };
            let latency = (MEDIAN_US * (SIGMA * z).exp() * factor) as u64;
            window
                .latency
                .record(latency.clamp(1, LATENCY_HIGHEST_US))
                .unwrap();
        }
    }
}

const REQUESTS_PER_SECOND: u64 = 200;
const SEEDS: u64 = 100;

/// Three steps of 200 s: the whole rollout lasts ten minutes.
fn plan() -> CanaryPlan {
    let step = |weight| Step {
        weight,
        bake: Duration::from_secs(200),
        min_requests: 5_000,
    };
    CanaryPlan {
        steps: vec![step(5), step(25), step(50)],
        error_margin: 0.005,
        latency_quantile: 0.99,
        latency_tolerance: 0.1,
        alpha: 0.01,
        extra: vec![],
    }
}

enum Outcome {
    RolledBack { second: u64, reason: RollbackReason },
    Completed,
    StillRunning,
}

/// How a simulated rollout is run.
#[derive(Clone, Copy)]
struct Schedule {
    /// Simulated time.
    seconds: u64,
    /// Seconds per window, and between calls to `decide`.
    look_every: u64,
}

/// Regression runs: one minute, looking every second.
const ONE_MINUTE: Schedule = Schedule {
    seconds: 60,
    look_every: 1,
};
/// A/A runs: the whole ten-minute plan, looking every five seconds.
const WHOLE_ROLLOUT: Schedule = Schedule {
    seconds: 600,
    look_every: 5,
};

fn simulate(seed: u64, stable: Behaviour, canary: Behaviour, schedule: Schedule) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut analysis = CanaryAnalysis::new(plan()).unwrap();
    let (mut stable_window, mut canary_window) = (Window::new(), Window::new());
    let requests = REQUESTS_PER_SECOND * schedule.look_every;
    for second in (schedule.look_every..=schedule.seconds).step_by(schedule.look_every as usize) {
        stable.fill(&mut rng, &mut stable_window, requests);
        canary.fill(&mut rng, &mut canary_window, requests);
        let now = Duration::from_secs(second);
        analysis
            .observe(now, &stable_window, &canary_window)
            .unwrap();
        match analysis.decide(now) {
            Decision::Rollback { reason, .. } => return Outcome::RolledBack { second, reason },
            Decision::Complete { .. } => return Outcome::Completed,
            Decision::Hold { .. } | Decision::Promote { .. } => {}
        }
    }
    Outcome::StillRunning
}

/// What happened over all seeds.
struct Summary {
    /// Seconds to roll back, for the runs rolled back for the expected reason.
    times: Vec<u64>,
    /// Runs rolled back for any reason.
    rolled_back: u64,
    /// Runs that completed the plan.
    completed: u64,
}

/// Runs every seed and prints a one-line summary (see it with `--nocapture`).
fn run_seeds(
    label: &str,
    stable: Behaviour,
    canary: Behaviour,
    schedule: Schedule,
    reason: &RollbackReason,
) -> Summary {
    let mut times = Vec::new();
    let (mut any, mut completed) = (0, 0);
    for seed in 0..SEEDS {
        match simulate(seed, stable, canary, schedule) {
            Outcome::RolledBack {
                second,
                reason: why,
            } => {
                any += 1;
                if &why == reason {
                    times.push(second);
                }
            }
            Outcome::Completed => completed += 1,
            Outcome::StillRunning => {}
        }
    }
    times.sort_unstable();
    let median = times.get(times.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "{label}: rolled back in {any}/{SEEDS} ({} for {reason:?}, median {median} s, max {} s), completed {completed}/{SEEDS}",
        times.len(),
        times.last().copied().unwrap_or(0)
    );
    Summary {
        times,
        rolled_back: any,
        completed,
    }
}

#[test]
fn two_points_more_errors_are_rolled_back_within_a_minute() {
    let summary = run_seeds(
        "error +2 points",
        Behaviour::healthy(0.01),
        Behaviour::healthy(0.03),
        ONE_MINUTE,
        &RollbackReason::ErrorRate,
    );
    assert!(
        summary.times.len() >= 95,
        "only {} of {SEEDS} rolled back within 60 s",
        summary.times.len()
    );
}

#[test]
fn thirty_percent_slower_p99_is_rolled_back_within_a_minute() {
    let stable = Behaviour::healthy(0.01);
    let everything = Behaviour {
        slowdown: 1.3,
        slow_from: f64::NEG_INFINITY,
        ..stable
    };
    // Only the slowest 10 % (normal draw above its 90th percentile) slow down: the
    // median is unchanged, the p99 is 30 % higher. The tail test only looks above
    // the bound, so it must catch this exactly as fast as the whole-distribution
    // slowdown; a test of the body (Mann-Whitney) would barely notice it.
    let tail_only = Behaviour {
        slowdown: 1.3,
        slow_from: 1.281_552,
        ..stable
    };
    for (label, canary) in [
        ("latency x1.3", everything),
        ("latency x1.3 above p90", tail_only),
    ] {
        let summary = run_seeds(label, stable, canary, ONE_MINUTE, &RollbackReason::Latency);
        assert!(
            summary.times.len() >= 95,
            "{label}: only {} of {SEEDS} rolled back within 60 s",
            summary.times.len()
        );
    }
}

/// An A/A rollout at one baseline error rate: never rolled back (at most one seed
/// in a hundred), and completed.
fn identical_sides_pass(error_rate: f64) {
    let side = Behaviour::healthy(error_rate);
    let label = format!("A/A at {error_rate} errors, 600 s");
    let summary = run_seeds(
        &label,
        side,
        side,
        WHOLE_ROLLOUT,
        &RollbackReason::ErrorRate,
    );
    assert!(
        summary.rolled_back <= 1,
        "{label}: {} of {SEEDS} false rollbacks",
        summary.rolled_back
    );
    // Healthy canaries also get through every step within the ten minutes.
    assert!(
        summary.completed >= 99,
        "{label}: only {} of {SEEDS} completed",
        summary.completed
    );
}

#[test]
fn identical_sides_at_half_a_percent_errors_are_not_rolled_back() {
    identical_sides_pass(0.005);
}

#[test]
fn identical_sides_at_one_percent_errors_are_not_rolled_back() {
    identical_sides_pass(0.01);
}

#[test]
fn identical_sides_at_five_percent_errors_are_not_rolled_back() {
    identical_sides_pass(0.05);
}
