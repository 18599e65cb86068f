//! Per-shard LLM metrics: calls, tokens by kind, cost, and HDR histograms of time
//! to first token, inter-token latency, total latency and tokens per second, per
//! (route, alias, target, consumer); plus guardrail, cache, fallback, breaker and
//! budget counters. Single-writer cells like the rest of the shard's stats; the
//! admin thread merges snapshots and renders them with [`prometheus`].

use hdrhistogram::Histogram;
use hypergate_core::metrics::LazyHistogram;
use hypergate_core::metrics::{escape, header, histogram};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;

/// (route, alias, target, consumer).
pub type CallKey = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

/// Figures of one (route, alias, target, consumer).
#[derive(Default)]
pub struct CallStats {
    /// Calls whose outcome is `ok` (`hypergate_core::error::Outcome`).
    pub ok: Cell<u64>,
    /// Calls whose outcome is an error of the service (upstream error,
    /// gateway error, timeout).
    pub errors: Cell<u64>,
    /// Calls the client left before the end of the answer.
    pub client_aborted: Cell<u64>,
    /// Calls the gateway or the provider refused (a 4xx for the client).
    pub rejected: Cell<u64>,
    /// Streamed calls.
    pub streamed: Cell<u64>,
    /// Calls whose usage was estimated with the tokenizer.
    pub estimated: Cell<u64>,
    /// Prompt tokens (cached included).
    pub prompt_tokens: Cell<u64>,
    /// Completion tokens (reasoning included).
    pub completion_tokens: Cell<u64>,
    /// Cached prompt tokens.
    pub cached_tokens: Cell<u64>,
    /// Reasoning tokens.
    pub reasoning_tokens: Cell<u64>,
    /// Cost in nano-dollars.
    pub cost_nanos: Cell<u64>,
    /// Sum of each call's cost squared, in dollars² (with the sum and the
    /// count, canary analysis compares the mean cost per call).
    pub cost_sq: Cell<f64>,
    /// Time to first token (µs).
    pub ttft: LazyHistogram,
    /// Time between streamed content chunks (µs).
    pub itl: LazyHistogram,
    /// Whole call (µs).
    pub total: LazyHistogram,
    /// Completion tokens per second of generation (recorded as a plain number).
    pub tokens_per_second: LazyHistogram,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl CallStats {
    /// Counts a call by its outcome.
    pub fn outcome(&self, outcome: hypergate_core::error::Outcome) {
        use hypergate_core::error::Outcome;
        add(
            match outcome {
                Outcome::Ok => &self.ok,
                Outcome::ClientAborted => &self.client_aborted,
                Outcome::Rejected => &self.rejected,
                Outcome::UpstreamError | Outcome::GatewayError | Outcome::Timeout => &self.errors,
            },
            1,
        );
    }

    /// Adds a call's usage and cost (nano-dollars).
    pub fn usage(&self, u: &hypergate_ai::translate::Usage, cost_nanos: u64, estimated: bool) {
        add(&self.prompt_tokens, u.prompt);
        add(&self.completion_tokens, u.completion);
        add(&self.cached_tokens, u.cached);
        add(&self.reasoning_tokens, u.reasoning);
        add(&self.cost_nanos, cost_nanos);
        let dollars = cost_nanos as f64 / 1e9;
        self.cost_sq.set(self.cost_sq.get() + dollars * dollars);
        if estimated {
            add(&self.estimated, 1);
        }
    }
}

/// A shard's AI counters.
#[derive(Default)]
pub struct AiStats {
    calls: RefCell<HashMap<CallKey, Rc<CallStats>>>,
    /// (guardrail, action) -> count; action is `deny`, `redact_request`, `redact_response`.
    guardrails: RefCell<HashMap<(Arc<str>, &'static str), u64>>,
    /// (budget, window) -> refused calls.
    budget_refusals: RefCell<HashMap<(Arc<str>, &'static str), u64>>,
    /// Fallbacks to another target, by (alias, reason).
    fallbacks: RefCell<HashMap<(Arc<str>, &'static str), u64>>,
    /// Breaker openings by target.
    breaker_opens: RefCell<HashMap<Arc<str>, u64>>,
    /// Cache hits.
    pub cache_hits: Cell<u64>,
    /// Cache misses (of requests that asked for the cache).
    pub cache_misses: Cell<u64>,
    /// Feedback received.
    pub feedback: Cell<u64>,
}

impl AiStats {
    /// Counters for a key, created on first use.
    pub fn call(&self, key: CallKey) -> Rc<CallStats> {
        self.calls.borrow_mut().entry(key).or_default().clone()
    }

    fn bump<K: std::hash::Hash + Eq>(map: &RefCell<HashMap<K, u64>>, k: K) {
        *map.borrow_mut().entry(k).or_default() += 1;
    }

    /// Counts a guardrail action.
    pub fn guardrail(&self, name: &Arc<str>, action: &'static str) {
        Self::bump(&self.guardrails, (name.clone(), action));
    }

    /// Counts a budget refusal.
    pub fn budget_refused(&self, budget: &Arc<str>, window: &'static str) {
        Self::bump(&self.budget_refusals, (budget.clone(), window));
    }

    /// Counts a fallback away from a failed target.
    pub fn fallback(&self, alias: &Arc<str>, reason: &'static str) {
        Self::bump(&self.fallbacks, (alias.clone(), reason));
    }

    /// Counts a breaker opening.
    pub fn breaker_opened(&self, target: &Arc<str>) {
        Self::bump(&self.breaker_opens, target.clone());
    }

    /// Owned copy for the admin thread.
    pub fn snapshot(&self) -> AiSnapshot {
        let calls = self
            .calls
            .borrow()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    CallSnapshot {
                        counters: [
                            v.ok.get(),
                            v.errors.get(),
                            v.streamed.get(),
                            v.estimated.get(),
                            v.prompt_tokens.get(),
                            v.completion_tokens.get(),
                            v.cached_tokens.get(),
                            v.reasoning_tokens.get(),
                            v.cost_nanos.get(),
                            v.client_aborted.get(),
                            v.rejected.get(),
                        ],
                        cost_sq: v.cost_sq.get(),
                        ttft: v.ttft.snapshot(),
                        itl: v.itl.snapshot(),
                        total: v.total.snapshot(),
                        tokens_per_second: v.tokens_per_second.snapshot(),
                    },
                )
            })
            .collect();
        let pairs = |m: &RefCell<HashMap<(Arc<str>, &'static str), u64>>| {
            m.borrow()
                .iter()
                .map(|((a, b), n)| ((a.to_string(), b.to_string()), *n))
                .collect::<Vec<_>>()
        };
        AiSnapshot {
            calls,
            guardrails: pairs(&self.guardrails),
            budget_refusals: pairs(&self.budget_refusals),
            fallbacks: pairs(&self.fallbacks),
            breaker_opens: self
                .breaker_opens
                .borrow()
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            cache: [
                self.cache_hits.get(),
                self.cache_misses.get(),
                self.feedback.get(),
            ],
        }
    }
}

type HistogramSum = Option<(Histogram<u64>, u64)>;

/// One key's figures in a snapshot.
#[derive(Clone, Default)]
pub struct CallSnapshot {
    /// See [`COUNTER_NAMES`].
    pub counters: [u64; 11],
    /// Sum of each call's cost squared (dollars²).
    pub cost_sq: f64,
    /// Time to first token.
    pub ttft: HistogramSum,
    /// Inter-token latency.
    pub itl: HistogramSum,
    /// Total latency.
    pub total: HistogramSum,
    /// Tokens per second.
    pub tokens_per_second: HistogramSum,
}

/// Names of [`CallSnapshot::counters`].
const COUNTER_NAMES: [&str; 11] = [
    "ok",
    "errors",
    "streamed",
    "estimated",
    "prompt",
    "completion",
    "cached",
    "reasoning",
    "cost_nanos",
    "client_aborted",
    "rejected",
];

/// One shard's AI figures.
#[derive(Default)]
pub struct AiSnapshot {
    calls: Vec<(CallKey, CallSnapshot)>,
    guardrails: Vec<((String, String), u64)>,
    budget_refusals: Vec<((String, String), u64)>,
    fallbacks: Vec<((String, String), u64)>,
    breaker_opens: Vec<(String, u64)>,
    cache: [u64; 3],
}

/// All shards' AI figures merged.
#[derive(Default)]
pub struct AiMerged {
    /// (route, alias, target, consumer) -> figures.
    pub calls: BTreeMap<(String, String, String, String), CallSnapshot>,
    /// (guardrail, action) -> count.
    pub guardrails: BTreeMap<(String, String), u64>,
    /// (budget, window) -> refusals.
    pub budget_refusals: BTreeMap<(String, String), u64>,
    /// (alias, reason) -> fallbacks.
    pub fallbacks: BTreeMap<(String, String), u64>,
    /// target -> breaker openings.
    pub breaker_opens: BTreeMap<String, u64>,
    /// Cache hits, misses, feedback received.
    pub cache: [u64; 3],
}

fn add_hist(into: &mut HistogramSum, from: &HistogramSum) {
    if let Some(f) = from {
        match into {
            Some((h, s)) => {
                let _ = h.add(&f.0);
                *s += f.1;
            }
            None => *into = Some(f.clone()),
        }
    }
}

impl AiMerged {
    /// Adds one shard's snapshot.
    pub fn add(&mut self, s: &AiSnapshot) {
        for ((r, a, t, c), v) in &s.calls {
            let e = self
                .calls
                .entry((r.to_string(), a.to_string(), t.to_string(), c.to_string()))
                .or_default();
            for (x, y) in e.counters.iter_mut().zip(&v.counters) {
                *x += y;
            }
            e.cost_sq += v.cost_sq;
            add_hist(&mut e.ttft, &v.ttft);
            add_hist(&mut e.itl, &v.itl);
            add_hist(&mut e.total, &v.total);
            add_hist(&mut e.tokens_per_second, &v.tokens_per_second);
        }
        for (src, dst) in [
            (&s.guardrails, &mut self.guardrails),
            (&s.budget_refusals, &mut self.budget_refusals),
            (&s.fallbacks, &mut self.fallbacks),
        ] {
            for (k, n) in src {
                *dst.entry(k.clone()).or_default() += n;
            }
        }
        for (k, n) in &s.breaker_opens {
            *self.breaker_opens.entry(k.clone()).or_default() += n;
        }
        for (x, y) in self.cache.iter_mut().zip(&s.cache) {
            *x += y;
        }
    }

    /// `/stats` JSON: per key counters and exact quantiles.
    pub fn json(&self) -> serde_json::Value {
        let q = |h: &HistogramSum| {
            h.as_ref().map(|(h, _)| {
                serde_json::json!({
                    "count": h.len(),
                    "p50_us": h.value_at_quantile(0.5),
                    "p99_us": h.value_at_quantile(0.99),
                })
            })
        };
        let calls: Vec<_> = self
            .calls
            .iter()
            .map(|((r, a, t, c), v)| {
                let mut o = serde_json::json!({
                    "route": r, "alias": a, "target": t, "consumer": c,
                    "ttft": q(&v.ttft), "itl": q(&v.itl), "total": q(&v.total),
                });
                for (name, n) in COUNTER_NAMES.iter().zip(&v.counters) {
                    o[*name] = (*n).into();
                }
                o["cost_usd"] = (v.counters[8] as f64 / 1e9).into();
                o
            })
            .collect();
        serde_json::json!({
            "calls": calls,
            "cache_hits": self.cache[0],
            "cache_misses": self.cache[1],
            "feedback": self.cache[2],
        })
    }
}

/// Renders the AI metric families.
pub fn prometheus(m: &AiMerged, out: &mut String) {
    if m.calls.is_empty()
        && m.cache == [0; 3]
        && m.guardrails.is_empty()
        && m.budget_refusals.is_empty()
    {
        return;
    }
    let labels = |(r, a, t, c): &(String, String, String, String)| {
        format!(
            "route=\"{}\",alias=\"{}\",target=\"{}\",consumer=\"{}\"",
            escape(r),
            escape(a),
            escape(t),
            escape(c)
        )
    };
    header(
        out,
        "hypergate_llm_requests_total",
        "counter",
        "LLM calls by outcome: ok, error (upstream error, gateway error or timeout), \
         client_aborted, rejected (the same outcome as the call record's).",
    );
    for (k, v) in &m.calls {
        let l = labels(k);
        for (outcome, n) in [
            ("ok", v.counters[0]),
            ("error", v.counters[1]),
            ("client_aborted", v.counters[9]),
            ("rejected", v.counters[10]),
        ] {
            let _ = writeln!(
                out,
                "hypergate_llm_requests_total{{{l},outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    header(
        out,
        "hypergate_llm_streamed_requests_total",
        "counter",
        "Streamed LLM calls.",
    );
    for (k, v) in &m.calls {
        let _ = writeln!(
            out,
            "hypergate_llm_streamed_requests_total{{{}}} {}",
            labels(k),
            v.counters[2]
        );
    }
    header(
        out,
        "hypergate_llm_estimated_usage_total",
        "counter",
        "LLM calls whose usage was counted by the gateway's tokenizer (the provider gave none).",
    );
    for (k, v) in &m.calls {
        let _ = writeln!(
            out,
            "hypergate_llm_estimated_usage_total{{{}}} {}",
            labels(k),
            v.counters[3]
        );
    }
    header(
        out,
        "hypergate_llm_tokens_total",
        "counter",
        "LLM tokens by kind (prompt includes cached, completion includes reasoning).",
    );
    for (k, v) in &m.calls {
        let l = labels(k);
        for (kind, n) in [
            ("prompt", v.counters[4]),
            ("completion", v.counters[5]),
            ("cached", v.counters[6]),
            ("reasoning", v.counters[7]),
        ] {
            let _ = writeln!(out, "hypergate_llm_tokens_total{{{l},kind=\"{kind}\"}} {n}");
        }
    }
    header(
        out,
        "hypergate_llm_cost_usd_total",
        "counter",
        "LLM cost in US dollars from the configured price table.",
    );
    for (k, v) in &m.calls {
        let _ = writeln!(
            out,
            "hypergate_llm_cost_usd_total{{{}}} {}",
            labels(k),
            v.counters[8] as f64 / 1e9
        );
    }
    for (name, help, pick) in [
        (
            "hypergate_llm_time_to_first_token_seconds",
            "Time from the request to the first streamed token.",
            0usize,
        ),
        (
            "hypergate_llm_inter_token_latency_seconds",
            "Time between streamed content chunks.",
            1,
        ),
        (
            "hypergate_llm_request_duration_seconds",
            "Whole LLM call, request to last byte.",
            2,
        ),
    ] {
        header(out, name, "histogram", help);
        for (k, v) in &m.calls {
            let h = [&v.ttft, &v.itl, &v.total][pick];
            if let Some((h, sum)) = h {
                histogram(out, name, &labels(k), h, *sum);
            }
        }
    }
    header(
        out,
        "hypergate_llm_tokens_per_second",
        "summary",
        "Completion tokens per second of generation.",
    );
    for (k, v) in &m.calls {
        if let Some((h, sum)) = &v.tokens_per_second {
            let l = labels(k);
            for q in [0.5, 0.9, 0.99] {
                let _ = writeln!(
                    out,
                    "hypergate_llm_tokens_per_second{{{l},quantile=\"{q}\"}} {}",
                    h.value_at_quantile(q)
                );
            }
            let _ = writeln!(out, "hypergate_llm_tokens_per_second_sum{{{l}}} {sum}");
            let _ = writeln!(
                out,
                "hypergate_llm_tokens_per_second_count{{{l}}} {}",
                h.len()
            );
        }
    }
    header(
        out,
        "hypergate_llm_guardrail_actions_total",
        "counter",
        "Guardrail actions (deny, redact_request, redact_response).",
    );
    for ((g, a), n) in &m.guardrails {
        let _ = writeln!(
            out,
            "hypergate_llm_guardrail_actions_total{{guardrail=\"{}\",action=\"{a}\"}} {n}",
            escape(g)
        );
    }
    header(
        out,
        "hypergate_llm_budget_refusals_total",
        "counter",
        "Calls refused by a budget, by window.",
    );
    for ((b, w), n) in &m.budget_refusals {
        let _ = writeln!(
            out,
            "hypergate_llm_budget_refusals_total{{budget=\"{}\",window=\"{w}\"}} {n}",
            escape(b)
        );
    }
    header(
        out,
        "hypergate_llm_fallbacks_total",
        "counter",
        "Attempts moved to another target, by alias and reason.",
    );
    for ((a, r), n) in &m.fallbacks {
        let _ = writeln!(
            out,
            "hypergate_llm_fallbacks_total{{alias=\"{}\",reason=\"{r}\"}} {n}",
            escape(a)
        );
    }
    header(
        out,
        "hypergate_llm_breaker_opens_total",
        "counter",
        "Times a target was ejected after consecutive failures.",
    );
    for (t, n) in &m.breaker_opens {
        let _ = writeln!(
            out,
            "hypergate_llm_breaker_opens_total{{target=\"{}\"}} {n}",
            escape(t)
        );
    }
    header(
        out,
        "hypergate_llm_cache_requests_total",
        "counter",
        "Cacheable LLM calls by result.",
    );
    let _ = writeln!(
        out,
        "hypergate_llm_cache_requests_total{{result=\"hit\"}} {}",
        m.cache[0]
    );
    let _ = writeln!(
        out,
        "hypergate_llm_cache_requests_total{{result=\"miss\"}} {}",
        m.cache[1]
    );
    header(
        out,
        "hypergate_llm_feedback_total",
        "counter",
        "Feedback records received.",
    );
    let _ = writeln!(out, "hypergate_llm_feedback_total {}", m.cache[2]);
}
