//! A provider's streamed answer, decoded into canonical chat chunks whatever
//! the provider speaks: OpenAI's SSE chunks as they are, Anthropic's and
//! Gemini's SSE events and Bedrock's binary AWS event stream through their
//! translators in `hypergate-ai`. The streaming step of the gateway
//! (`Chat::stream_answer`) sees one interface: push bytes, take chunks, ask
//! whether the answer is complete.
//!
//! Depends on `hypergate-ai` only.

use hypergate_ai::bedrock::event_stream::EventStreamDecoder;
use hypergate_ai::bedrock::ConverseStreamToOpenAi;
use hypergate_ai::gemini::GeminiStreamToOpenAi;
use hypergate_ai::sse::SseParser;
use hypergate_ai::translate::{self, AnthropicStreamToOpenAi, Usage};
use hypergate_core::config::ai::ProviderKind;
use serde_json::Value;

/// Largest single event accepted from a provider (SSE or event-stream message).
pub(crate) const MAX_EVENT: usize = 4 << 20;

/// Decodes one provider stream.
pub(crate) enum StreamDecoder {
    /// OpenAI chunks, ended by `data: [DONE]`.
    OpenAi { sse: SseParser, done: bool },
    /// Anthropic's named events, ended by `message_stop`.
    Anthropic {
        sse: SseParser,
        tr: Box<AnthropicStreamToOpenAi>,
    },
    /// Gemini's `GenerateContentResponse`s, ended by the body's end.
    Gemini {
        sse: SseParser,
        tr: Box<GeminiStreamToOpenAi>,
    },
    /// Bedrock's ConverseStream messages, ended by `metadata` after `messageStop`.
    Bedrock {
        frames: EventStreamDecoder,
        tr: Box<ConverseStreamToOpenAi>,
    },
}

impl StreamDecoder {
    /// A decoder for `kind`'s stream; translated chunks carry `id`, `created`
    /// and `model` until the provider names its own.
    pub(crate) fn new(kind: ProviderKind, id: &str, created: u64, model: &str) -> Self {
        let sse = || SseParser::new(MAX_EVENT);
        match kind {
            ProviderKind::Openai => StreamDecoder::OpenAi {
                sse: sse(),
                done: false,
            },
            ProviderKind::Anthropic => StreamDecoder::Anthropic {
                sse: sse(),
                tr: Box::new(AnthropicStreamToOpenAi::new(id, created)),
            },
            ProviderKind::Gemini => StreamDecoder::Gemini {
                sse: sse(),
                tr: Box::new(GeminiStreamToOpenAi::new(id, created, model)),
            },
            ProviderKind::Bedrock => StreamDecoder::Bedrock {
                frames: EventStreamDecoder::new(),
                tr: Box::new(ConverseStreamToOpenAi::new(id, created, model)),
            },
        }
    }

    /// More of the body.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        match self {
            StreamDecoder::OpenAi { sse, .. }
            | StreamDecoder::Anthropic { sse, .. }
            | StreamDecoder::Gemini { sse, .. } => sse.push(bytes),
            StreamDecoder::Bedrock { frames, .. } => frames.push(bytes),
        }
    }

    /// The chunks of the next complete event (possibly none), `Ok(None)` when
    /// more bytes are needed, or why the stream is broken.
    pub(crate) fn next(&mut self) -> Result<Option<Vec<Value>>, String> {
        let invalid =
            |e: &dyn std::fmt::Display| format!("invalid event stream from the provider: {e}");
        let stream_error = |e: translate::TranslateError| format!("provider stream error: {e}");
        match self {
            StreamDecoder::Bedrock { frames, tr } => {
                let Some(message) = frames.next_message().map_err(|e| invalid(&e))? else {
                    return Ok(None);
                };
                tr.push_message(&message).map(Some).map_err(stream_error)
            }
            StreamDecoder::OpenAi { sse, done } => {
                let Some(ev) = sse.next_event().map_err(|e| invalid(&e))? else {
                    return Ok(None);
                };
                if ev.data.trim() == "[DONE]" {
                    *done = true;
                    return Ok(Some(Vec::new()));
                }
                match serde_json::from_str::<Value>(&ev.data) {
                    Ok(v) if v.get("error").is_some() => Err(translate::provider_error_message(&v)
                        .unwrap_or_else(|| "provider stream error".into())),
                    Ok(v) => Ok(Some(vec![v])),
                    Err(e) => Err(format!("invalid chunk from the provider: {e}")),
                }
            }
            StreamDecoder::Anthropic { sse, tr } => {
                let Some(ev) = sse.next_event().map_err(|e| invalid(&e))? else {
                    return Ok(None);
                };
                tr.push(&ev).map(Some).map_err(stream_error)
            }
            StreamDecoder::Gemini { sse, tr } => {
                let Some(ev) = sse.next_event().map_err(|e| invalid(&e))? else {
                    return Ok(None);
                };
                tr.push(&ev).map(Some).map_err(stream_error)
            }
        }
    }

    /// The provider sent its last event: stop reading.
    pub(crate) fn done(&self) -> bool {
        match self {
            StreamDecoder::OpenAi { done, .. } => *done,
            StreamDecoder::Anthropic { tr, .. } => tr.finished(),
            StreamDecoder::Bedrock { tr, .. } => tr.finished(),
            // Gemini has no last event: its stream ends with the body.
            StreamDecoder::Gemini { .. } => false,
        }
    }

    /// The body's end is the stream's normal end (Gemini, once a finish
    /// reason came); for the others it means the provider broke off.
    pub(crate) fn complete_at_end(&self) -> bool {
        match self {
            StreamDecoder::Gemini { tr, .. } => tr.finished(),
            _ => false,
        }
    }

    /// Usage the translator read from the provider's own events (OpenAI's
    /// comes in a chunk instead).
    pub(crate) fn usage(&self) -> Option<Usage> {
        match self {
            StreamDecoder::OpenAi { .. } => None,
            StreamDecoder::Anthropic { tr, .. } => tr.usage(),
            StreamDecoder::Gemini { tr, .. } => tr.usage(),
            StreamDecoder::Bedrock { tr, .. } => tr.usage(),
        }
    }

    /// Prompt tokens (less cached ones) the provider reported before its
    /// answer (Anthropic's `message_start`), for Anthropic clients, who read
    /// them up front.
    pub(crate) fn upfront_prompt(&self) -> Option<u64> {
        match self {
            StreamDecoder::Anthropic { tr, .. } => {
                tr.usage().map(|u| u.prompt.saturating_sub(u.cached))
            }
            _ => None,
        }
    }
}
