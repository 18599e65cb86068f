//! `mock-llm`: runs the mock OpenAI / Anthropic / Gemini / Bedrock provider until killed.
//!
//! Every [`MockConfig`] knob is a flag; the bound address is printed as
//! `listening on ADDR` once the socket is open (so `--listen 127.0.0.1:0` works).

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "a mock provider for tests and the demo, not part of the gateway"
)]

use anyhow::Context;
use clap::Parser;
use hypergate_mock_llm::{
    MockConfig, MockLlm, DEFAULT_AWS_ACCESS_KEY_ID, DEFAULT_AWS_REGION,
    DEFAULT_AWS_SECRET_ACCESS_KEY,
};
use std::io::Write;
use std::time::Duration;

/// A mock LLM provider speaking the OpenAI, Anthropic, Gemini and Bedrock wire formats.
#[derive(Debug, Parser)]
#[command(name = "mock-llm", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: String,
    /// Wait this long before each response head.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Wait this long between two SSE events.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Answer requests with this error status and the provider's error JSON.
    #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
    error_status: Option<u16>,
    /// Send `Retry-After: SECONDS` with 429, 503 and 529 errors.
    #[arg(long, value_name = "SECONDS")]
    retry_after: Option<u64>,
    /// With --error-status, fail only the first N requests (0: all).
    #[arg(long, default_value_t = 0, value_name = "N")]
    fail_first: u32,
    /// Streaming: close the connection after N content events, without the end of the stream.
    #[arg(long, value_name = "N")]
    truncate_after: Option<usize>,
    /// Report no usage (OpenAI: no usage object or chunk; Anthropic: zero counts).
    #[arg(long)]
    no_usage: bool,
    /// A fixed reply text instead of "Mock reply to: <last user text>".
    #[arg(long)]
    reply: Option<String>,
    /// Streaming: characters per text event (0: one word per event).
    #[arg(long, default_value_t = 0)]
    chunk_chars: usize,
    /// The model name reported in answers (default: the requested model).
    #[arg(long)]
    model_label: Option<String>,
    /// Accept requests without an API key header (and Bedrock requests without a
    /// valid SigV4 signature).
    #[arg(long)]
    no_auth: bool,
    /// Bedrock: the access key id SigV4 signatures must use.
    #[arg(long, default_value = DEFAULT_AWS_ACCESS_KEY_ID)]
    aws_access_key_id: String,
    /// Bedrock: the secret access key signatures are checked with.
    #[arg(long, default_value = DEFAULT_AWS_SECRET_ACCESS_KEY)]
    aws_secret_access_key: String,
    /// Bedrock: the region signatures must be scoped to.
    #[arg(long, default_value = DEFAULT_AWS_REGION)]
    aws_region: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        latency: Duration::from_millis(args.latency_ms),
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        error_status: args.error_status,
        retry_after_secs: args.retry_after,
        fail_first: args.fail_first,
        truncate_after: args.truncate_after,
        usage: !args.no_usage,
        reply: args.reply,
        chunk_chars: args.chunk_chars,
        model_label: args.model_label,
        require_auth: !args.no_auth,
        aws_access_key_id: args.aws_access_key_id,
        aws_secret_access_key: args.aws_secret_access_key,
        aws_region: args.aws_region,
    };
    let mock =
        MockLlm::start(&args.listen, config).with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", mock.addr())?;
    stdout.flush()?;
    loop {
        std::thread::park();
    }
}
