//! Which requests become spans: a head decision when the request starts
//! (parent-based, trace-id ratio), and a second look when it ends (errors and
//! canary calls may be kept anyway).
//!
//! The policies are the OpenTelemetry SDK's, named as `OTEL_TRACES_SAMPLER`
//! names them. The ratio rule is the one the Go and Rust SDKs'
//! `TraceIdRatioBased` use, so a trace that starts elsewhere with the same
//! ratio gets the same decision here: take the trace id's last 8 bytes as a
//! big-endian `u64`, shift it right by one (63 random bits), and sample when
//! that is below `ratio * 2^63`. Ratio 0 samples nothing, 1 everything.
//!
//! Depends on nothing: a trace id is its 16 bytes here.

/// A trace id's 16 bytes, as the context module keeps them.
type TraceId = [u8; 16];

/// The head-sampling policy, as `OTEL_TRACES_SAMPLER` names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerPolicy {
    /// `always_on`: every trace.
    AlwaysOn,
    /// `always_off`: none.
    AlwaysOff,
    /// `traceidratio`: a share of traces by trace id, ignoring the parent.
    TraceIdRatio(f64),
    /// `parentbased_always_on`: the parent's flag, else every trace.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: the parent's flag, else none.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: the parent's flag, else a share by trace id.
    ParentBasedTraceIdRatio(f64),
}

/// Why a sampler name or ratio was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerPolicyError {
    /// Not one of the `OTEL_TRACES_SAMPLER` names supported here.
    #[error(
        "unknown sampler {0:?} (expected always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
    )]
    Unknown(String),
    /// A ratio below 0, above 1, or not a number.
    #[error("sampler ratio {0} is outside 0..=1")]
    RatioOutOfRange(f64),
}

impl SamplerPolicy {
    /// The policy `name` names, with `arg` as the ratio of the ratio policies
    /// (1.0 when absent, as the spec says; ignored by the other policies).
    pub fn parse(name: &str, arg: Option<f64>) -> Result<SamplerPolicy, SamplerPolicyError> {
        let ratio = || match arg.unwrap_or(1.0) {
            r if (0.0..=1.0).contains(&r) => Ok(r),
            r => Err(SamplerPolicyError::RatioOutOfRange(r)),
        };
        Ok(match name {
            "always_on" => SamplerPolicy::AlwaysOn,
            "always_off" => SamplerPolicy::AlwaysOff,
            "traceidratio" => SamplerPolicy::TraceIdRatio(ratio()?),
            "parentbased_always_on" => SamplerPolicy::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerPolicy::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerPolicy::ParentBasedTraceIdRatio(ratio()?),
            other => return Err(SamplerPolicyError::Unknown(other.to_string())),
        })
    }
}

/// The root decision, with the ratio turned into its bound once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    On,
    Off,
    /// Sample when the trace id's 63 low random bits are below this.
    Below(u64),
}

/// A sampler: the head decision and the keep-anyway rules at the end.
/// `Copy`, so each shard holds its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    root: Root,
    parent_based: bool,
    always_errors: bool,
    always_canary: bool,
}

impl Sampler {
    /// A sampler for `policy`; `always_errors` / `always_canary` keep a request
    /// that ends in an error / was served by a canary even when the head
    /// decision was not to sample.
    pub fn new(policy: SamplerPolicy, always_errors: bool, always_canary: bool) -> Sampler {
        let (root, parent_based) = match policy {
            SamplerPolicy::AlwaysOn => (Root::On, false),
            SamplerPolicy::AlwaysOff => (Root::Off, false),
            SamplerPolicy::TraceIdRatio(r) => (Root::Below(ratio_bound(r)), false),
            SamplerPolicy::ParentBasedAlwaysOn => (Root::On, true),
            SamplerPolicy::ParentBasedAlwaysOff => (Root::Off, true),
            SamplerPolicy::ParentBasedTraceIdRatio(r) => (Root::Below(ratio_bound(r)), true),
        };
        Sampler {
            root,
            parent_based,
            always_errors,
            always_canary,
        }
    }

    /// The head decision for a trace: `parent_sampled` is the incoming
    /// `traceparent`'s flag (`None` without one). A parent-based policy follows
    /// it; otherwise, and for a new trace, the root policy decides by trace id.
    pub fn should_sample(&self, parent_sampled: Option<bool>, trace_id: &TraceId) -> bool {
        match parent_sampled {
            Some(flag) if self.parent_based => flag,
            _ => match self.root {
                Root::On => true,
                Root::Off => false,
                Root::Below(bound) => trace_id_bits(trace_id) < bound,
            },
        }
    }

    /// The decision at the end of a request: keep its spans when the head
    /// decision was to sample, or when it failed (`is_error`, e.g. a 5xx or an
    /// upstream error) and errors are always kept, or when a canary served it
    /// and canary calls are always kept.
    pub fn keep(&self, head_sampled: bool, is_error: bool, is_canary: bool) -> bool {
        head_sampled || (is_error && self.always_errors) || (is_canary && self.always_canary)
    }
}

/// `ratio * 2^63`, saturating (1.0 gives 2^63, above every 63-bit value).
fn ratio_bound(ratio: f64) -> u64 {
    // The float-to-int cast saturates; ratios are validated to 0..=1.
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

/// The 63 bits of the trace id the ratio rule compares.
fn trace_id_bits(trace_id: &TraceId) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TraceId = [7; 16];

    fn random_ids(count: usize) -> impl Iterator<Item = TraceId> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..count).map(move |_| {
            let mut id = [0u8; 16];
            for half in id.chunks_exact_mut(8) {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                half.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes());
            }
            id
        })
    }

    #[test]
    fn parent_based_follows_the_parent() {
        for policy in [
            SamplerPolicy::ParentBasedAlwaysOn,
            SamplerPolicy::ParentBasedAlwaysOff,
            SamplerPolicy::ParentBasedTraceIdRatio(0.5),
        ] {
            let s = Sampler::new(policy, false, false);
            assert!(s.should_sample(Some(true), &ID), "{policy:?}");
            assert!(!s.should_sample(Some(false), &ID), "{policy:?}");
        }
        let on = Sampler::new(SamplerPolicy::ParentBasedAlwaysOn, false, false);
        assert!(on.should_sample(None, &ID));
        let off = Sampler::new(SamplerPolicy::ParentBasedAlwaysOff, false, false);
        assert!(!off.should_sample(None, &ID));
    }

    #[test]
    fn non_parent_based_ignores_the_parent() {
        let on = Sampler::new(SamplerPolicy::AlwaysOn, false, false);
        assert!(on.should_sample(Some(false), &ID));
        let off = Sampler::new(SamplerPolicy::AlwaysOff, false, false);
        assert!(!off.should_sample(Some(true), &ID));
        let none = Sampler::new(SamplerPolicy::TraceIdRatio(0.0), false, false);
        assert!(!none.should_sample(Some(true), &[0xff; 16]));
        let all = Sampler::new(SamplerPolicy::TraceIdRatio(1.0), false, false);
        assert!(all.should_sample(Some(false), &[0xff; 16]));
    }

    #[test]
    fn errors_and_canaries_are_kept_at_the_end() {
        let s = Sampler::new(SamplerPolicy::ParentBasedAlwaysOn, true, false);
        let head = s.should_sample(Some(false), &ID);
        assert!(!head);
        assert!(!s.keep(head, false, false));
        assert!(s.keep(head, true, false));
        assert!(!s.keep(head, false, true));
        assert!(s.keep(true, false, false));
        let canary = Sampler::new(SamplerPolicy::AlwaysOff, false, true);
        assert!(canary.keep(false, false, true));
        assert!(!canary.keep(false, true, false));
    }

    #[test]
    fn ratio_samples_its_share_deterministically() {
        let s = Sampler::new(SamplerPolicy::ParentBasedTraceIdRatio(0.01), false, false);
        let n = 200_000;
        let kept = random_ids(n).filter(|id| s.should_sample(None, id)).count();
        // 1% of 200 000 is 2 000; the standard deviation is about 44.
        assert!((1_800..=2_200).contains(&kept), "{kept}");
        // Deterministic: the same ids, the same decisions.
        let again = random_ids(n).filter(|id| s.should_sample(None, id)).count();
        assert_eq!(kept, again);
        // The rule itself: low 8 bytes >> 1 against ratio * 2^63.
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&((ratio_bound(0.01) - 1) << 1).to_be_bytes());
        assert!(s.should_sample(None, &id));
        id[8..].copy_from_slice(&(ratio_bound(0.01) << 1).to_be_bytes());
        assert!(!s.should_sample(None, &id));
    }

    #[test]
    fn policies_parse_by_env_name() {
        assert_eq!(
            SamplerPolicy::parse("always_on", None),
            Ok(SamplerPolicy::AlwaysOn)
        );
        assert_eq!(
            SamplerPolicy::parse("traceidratio", None),
            Ok(SamplerPolicy::TraceIdRatio(1.0))
        );
        assert_eq!(
            SamplerPolicy::parse("parentbased_traceidratio", Some(0.25)),
            Ok(SamplerPolicy::ParentBasedTraceIdRatio(0.25))
        );
        assert_eq!(
            SamplerPolicy::parse("traceidratio", Some(1.5)),
            Err(SamplerPolicyError::RatioOutOfRange(1.5))
        );
        assert!(SamplerPolicy::parse("traceidratio", Some(f64::NAN)).is_err());
        assert_eq!(
            SamplerPolicy::parse("always_on", Some(7.0)),
            Ok(SamplerPolicy::AlwaysOn)
        );
        assert_eq!(
            SamplerPolicy::parse("jaeger_remote", None),
            Err(SamplerPolicyError::Unknown("jaeger_remote".into()))
        );
    }
}
