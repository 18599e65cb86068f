"""OpenAI SDK chat: a complete answer, a stream with include_usage, one without.

Usage: openai_chat.py GATEWAY MODEL CALL... where each CALL is "complete",
"stream_with_usage" or "stream_without_usage", made in that order. Prints one
object with a key per call. Every call sends the same messages (a system
message and a question), so a reassembled stream must equal the complete
answer's content.
"""

import sys

from sdk_common import emit, gateway_address, openai_client

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]


def usage_dict(usage):
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def streamed(client, model, **extra):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        **extra,
    )
    text, finish_reason, usage = "", None, None
    chunks, chunks_with_usage, empty_choice_chunks = 0, 0, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            chunks_with_usage += 1
            usage = usage_dict(chunk.usage)
        if not chunk.choices:
            empty_choice_chunks += 1
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            text += choice.delta.content
        if choice.finish_reason is not None:
            finish_reason = choice.finish_reason
    return {
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage,
        "chunks": chunks,
        "chunks_with_usage": chunks_with_usage,
        "empty_choice_chunks": empty_choice_chunks,
    }


def complete(client, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    choice = completion.choices[0]
    return {
        "object": completion.object,
        "model": completion.model,
        "role": choice.message.role,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": usage_dict(completion.usage),
    }


CALLS = {
    "complete": complete,
    "stream_with_usage": lambda client, model: streamed(
        client, model, stream_options={"include_usage": True}
    ),
    "stream_without_usage": streamed,
}


def main():
    client = openai_client(gateway_address())
    model, calls = sys.argv[2], sys.argv[3:]
    emit({name: CALLS[name](client, model) for name in calls})


if __name__ == "__main__":
    main()
