//! Feedback on LLM calls (`POST /v1/feedback`): the gateway remembers which
//! alias, target and prompt version answered each recent call, so a score sent
//! later by the application is attributed to them. Scores are summed per
//! (alias, target, prompt, version) for `/metrics`, and each feedback is logged
//! as a structured line with its call's details.
//!
//! Shared by all shards through `papaya` maps (lock-free); each shard bounds its
//! share of remembered calls with its own FIFO of ids.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// What the gateway remembers about a call.
#[derive(Debug, Clone)]
pub struct CallMeta {
    /// Alias asked for.
    pub alias: Arc<str>,
    /// Target that answered (`provider/model`).
    pub target: Arc<str>,
    /// Prompt template name (empty for plain calls).
    pub prompt: Arc<str>,
    /// Prompt version (empty for plain calls).
    pub version: Arc<str>,
    /// Route.
    pub route: Arc<str>,
    /// Consumer (empty when anonymous).
    pub consumer: Arc<str>,
}

type ScoreKey = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

/// Scores per (alias, target): count, sum, sum of squares.
pub type TargetScores = std::collections::BTreeMap<(String, String), (u64, f64, f64)>;

/// Score totals: count, sum in thousandths, sum of squares in millionths.
#[derive(Default, Debug)]
struct Score {
    count: AtomicU64,
    sum_milli: AtomicI64,
    sum_sq_micro: AtomicU64,
}

/// Process-wide feedback state.
#[derive(Default)]
pub struct FeedbackStore {
    calls: papaya::HashMap<String, Arc<CallMeta>>,
    scores: papaya::HashMap<ScoreKey, Arc<Score>>,
}

/// A shard's FIFO of the ids it remembered, to bound the store.
#[derive(Default)]
pub struct Remembered(RefCell<VecDeque<String>>);

/// Why feedback was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedbackError {
    /// No call with that id is remembered.
    UnknownCall,
}

impl FeedbackStore {
    /// Remembers a call; the shard's share of the memory is `per_shard` ids.
    pub fn remember(&self, shard: &Remembered, id: &str, meta: CallMeta, per_shard: usize) {
        if per_shard == 0 {
            return;
        }
        let calls = self.calls.pin();
        calls.insert(id.to_string(), Arc::new(meta));
        let mut fifo = shard.0.borrow_mut();
        fifo.push_back(id.to_string());
        while fifo.len() > per_shard {
            if let Some(old) = fifo.pop_front() {
                calls.remove(&old);
            }
        }
    }

    /// Attaches a score to a remembered call.
    pub fn record(
        &self,
        id: &str,
        score: f64,
        comment: &str,
    ) -> Result<Arc<CallMeta>, FeedbackError> {
        let meta = self
            .calls
            .pin()
            .get(id)
            .cloned()
            .ok_or(FeedbackError::UnknownCall)?;
        let key = (
            meta.alias.clone(),
            meta.target.clone(),
            meta.prompt.clone(),
            meta.version.clone(),
        );
        let scores = self.scores.pin();
        let s = scores.get_or_insert_with(key, || Arc::new(Score::default()));
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_milli
            .fetch_add((score * 1000.0).round() as i64, Ordering::Relaxed);
        s.sum_sq_micro
            .fetch_add((score * score * 1e6).round() as u64, Ordering::Relaxed);
        tracing::info!(
            target: "hypergate::feedback",
            request_id = id,
            score,
            comment,
            alias = %meta.alias,
            target_model = %meta.target,
            prompt = %meta.prompt,
            prompt_version = %meta.version,
            route = %meta.route,
            consumer = %meta.consumer,
            "feedback"
        );
        Ok(meta)
    }

    /// Scores so far per (alias, target), all prompts together: (count, sum,
    /// sum of squares), for canary analysis of an alias's targets.
    pub fn target_scores(&self) -> TargetScores {
        let mut out = TargetScores::new();
        for ((alias, target, _, _), s) in self.scores.pin().iter() {
            let e: &mut (u64, f64, f64) = out
                .entry((alias.to_string(), target.to_string()))
                .or_default();
            e.0 += s.count.load(Ordering::Relaxed);
            e.1 += s.sum_milli.load(Ordering::Relaxed) as f64 / 1e3;
            e.2 += s.sum_sq_micro.load(Ordering::Relaxed) as f64 / 1e6;
        }
        out
    }

    /// Renders score sums and counts for `/metrics`.
    pub fn prometheus(&self, out: &mut String) {
        let scores = self.scores.pin();
        if scores.is_empty() {
            return;
        }
        let mut rows: Vec<_> = scores
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    s.count.load(Ordering::Relaxed),
                    s.sum_milli.load(Ordering::Relaxed),
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        use hypergate_core::metrics::{escape, header};
        header(
            out,
            "hypergate_llm_feedback_score",
            "summary",
            "User feedback scores by alias, target and prompt version.",
        );
        for ((a, t, p, v), count, sum) in rows {
            let l = format!(
                "alias=\"{}\",target=\"{}\",prompt=\"{}\",prompt_version=\"{}\"",
                escape(&a),
                escape(&t),
                escape(&p),
                escape(&v)
            );
            let _ = writeln!(
                out,
                "hypergate_llm_feedback_score_sum{{{l}}} {}",
                sum as f64 / 1000.0
            );
            let _ = writeln!(out, "hypergate_llm_feedback_score_count{{{l}}} {count}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: &str) -> CallMeta {
        CallMeta {
            alias: "demo".into(),
            target: "mock/m".into(),
            prompt: "p".into(),
            version: version.into(),
            route: "llm".into(),
            consumer: "".into(),
        }
    }

    #[test]
    fn target_scores_add_up_over_prompt_versions() {
        let store = FeedbackStore::default();
        let shard = Remembered::default();
        for (i, v) in ["v1", "v2", "v1"].iter().enumerate() {
            store.remember(&shard, &format!("r{i}"), meta(v), 10);
        }
        for (id, score) in [("r0", 1.0), ("r1", 0.5), ("r2", -0.25)] {
            store.record(id, score, "").unwrap();
        }
        let scores = store.target_scores();
        let (n, sum, sum_sq) = scores[&("demo".to_string(), "mock/m".to_string())];
        assert_eq!(n, 3);
        assert!((sum - 1.25).abs() < 1e-9, "{sum}");
        assert!((sum_sq - 1.3125).abs() < 1e-9, "{sum_sq}");
    }

    #[test]
    fn scores_are_attributed_and_memory_is_bounded() {
        let store = FeedbackStore::default();
        let shard = Remembered::default();
        for i in 0..5 {
            store.remember(
                &shard,
                &format!("r{i}"),
                meta(if i % 2 == 0 { "v1" } else { "v2" }),
                3,
            );
        }
        assert_eq!(
            store.record("r0", 1.0, "").unwrap_err(),
            FeedbackError::UnknownCall
        );
        assert_eq!(&*store.record("r2", 1.0, "good").unwrap().version, "v1");
        store.record("r4", 0.5, "").unwrap();
        store.record("r3", -1.0, "bad").unwrap();
        let mut out = String::new();
        store.prometheus(&mut out);
        assert!(out.contains("prompt_version=\"v1\"} 1.5"), "{out}");
        assert!(out.contains("prompt_version=\"v2\"} -1"), "{out}");
    }
}
