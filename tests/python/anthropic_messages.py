"""Anthropic SDK messages: text, two kinds of streams, and tool use.

Usage: anthropic_messages.py GATEWAY MODEL. Prints {"create", "helper_stream",
"raw_stream", "tools", "tools_stream"}: the answers of messages.create, of the
messages.stream helper (text_stream and the final message), of stream=True (the
raw event types), and of a tool-use round trip, complete and streamed.
"""

import sys

from sdk_common import WEATHER_TOOL_SCHEMA, anthropic_client, emit, gateway_address

SYSTEM = "You are terse."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": WEATHER_TOOL_SCHEMA,
    }
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_RESULT = "18 degrees and sunny"
MAX_TOKENS = 256


def usage_dict(usage):
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def message_dict(message):
    blocks = []
    for block in message.content:
        if block.type == "text":
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            blocks.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
        else:
            blocks.append({"type": block.type})
    return {
        "type": message.type,
        "role": message.role,
        "model": message.model,
        "content": blocks,
        "stop_reason": message.stop_reason,
        "usage": usage_dict(message.usage),
    }


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


def create(client, model):
    message = client.messages.create(
        model=model, max_tokens=MAX_TOKENS, system=SYSTEM, messages=QUESTION
    )
    return message_dict(message)


def helper_stream(client, model):
    with client.messages.stream(
        model=model, max_tokens=MAX_TOKENS, system=SYSTEM, messages=QUESTION
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return {"text": text, "final": message_dict(final)}


def raw_stream(client, model):
    events, text, stop_reason = [], "", None
    start_input_tokens, delta_input_tokens, output_tokens = None, None, None
    for event in client.messages.create(
        model=model, max_tokens=MAX_TOKENS, system=SYSTEM, messages=QUESTION, stream=True
    ):
        events.append(event.type)
        if event.type == "message_start":
            start_input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
            delta_input_tokens = event.usage.input_tokens
            output_tokens = event.usage.output_tokens
    return {
        "events": events,
        "text": text,
        "stop_reason": stop_reason,
        "start_input_tokens": start_input_tokens,
        "delta_input_tokens": delta_input_tokens,
        "output_tokens": output_tokens,
    }


def tool_round_trip(client, model, streamed):
    def ask(messages):
        if not streamed:
            return client.messages.create(
                model=model, max_tokens=MAX_TOKENS, tools=TOOLS, messages=messages
            )
        with client.messages.stream(
            model=model, max_tokens=MAX_TOKENS, tools=TOOLS, messages=messages
        ) as stream:
            return stream.get_final_message()

    messages = list(WEATHER_QUESTION)
    first = ask(messages)
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": block.id, "content": TOOL_RESULT}
                for block in first.content
                if block.type == "tool_use"
            ],
        }
    )
    final = ask(messages)
    return {
        "first": message_dict(first),
        "final": {"text": text_of(final), "stop_reason": final.stop_reason},
    }


def main():
    client = anthropic_client(gateway_address())
    model = sys.argv[2]
    emit(
        {
            "create": create(client, model),
            "helper_stream": helper_stream(client, model),
            "raw_stream": raw_stream(client, model),
            "tools": tool_round_trip(client, model, streamed=False),
            "tools_stream": tool_round_trip(client, model, streamed=True),
        }
    )


if __name__ == "__main__":
    main()
