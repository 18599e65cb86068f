//! LLM wire formats for Hypergate's AI gateway, with no I/O: everything here is a
//! pure function or a push-style state machine, so the data plane can drive it
//! from its own sockets and it can be tested and fuzzed in isolation.
//!
//! - [`sse`]: incremental Server-Sent Events parser and writer.
//! - [`translate`]: OpenAI Chat Completions <-> Anthropic Messages, for requests,
//!   responses, errors and streams (chunk by chunk); usage extraction.
//! - [`gemini`]: OpenAI Chat Completions -> Google Gemini `generateContent` and back
//!   (responses and SSE streams).
//! - [`bedrock`]: OpenAI Chat Completions -> Amazon Bedrock Converse and back, the AWS
//!   event-stream framing of its streams, and SigV4 request signing.
//! - [`guard`]: guardrails: deny patterns, PII redaction (also across stream chunks).
//! - [`tokens`]: token counting with a real BPE tokenizer, for estimates.
//! - [`responses`]: OpenAI's Responses API over Chat Completions (requests,
//!   answers, the stream's named events).
//! - [`completions`]: OpenAI's legacy Completions API over Chat Completions.

pub mod bedrock;
mod bpe;
pub mod completions;
pub mod gemini;
pub mod guard;
pub mod responses;
pub mod sse;
pub mod tokens;
pub mod translate;
