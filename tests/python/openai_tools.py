"""OpenAI SDK tool calling, complete and streamed, each followed by the tool's result.

Usage: openai_tools.py GATEWAY MODEL. Prints {"complete", "stream"}: the tool
calls the model made (id, name, parsed arguments), the finish reason, and the
final answer after the tool result was sent back. The streamed tool call is
rebuilt from its deltas the way the SDK documentation shows (by index, id and
name from the first delta, arguments concatenated).
"""

import json
import sys

from sdk_common import WEATHER_TOOL_SCHEMA, emit, gateway_address, openai_client

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER_TOOL_SCHEMA,
        },
    }
]
TOOL_RESULT = "18 degrees and sunny"


def conversation():
    return [
        {"role": "system", "content": "Use tools when they help."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]


def complete(client, model):
    messages = conversation()
    first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    message = first.choices[0].message
    calls = [
        {
            "id": call.id,
            "type": call.type,
            "name": call.function.name,
            "arguments": json.loads(call.function.arguments),
        }
        for call in message.tool_calls or []
    ]
    messages.append(message)
    for call in message.tool_calls or []:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    final = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    return {
        "tool_calls": calls,
        "finish_reason": first.choices[0].finish_reason,
        "final": {
            "content": final.choices[0].message.content,
            "finish_reason": final.choices[0].finish_reason,
        },
    }


def streamed(client, model):
    messages = conversation()
    calls = {}
    finish_reason = None
    tool_call_deltas = 0
    for chunk in client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, stream=True
    ):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            tool_call_deltas += 1
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
        if choice.finish_reason is not None:
            finish_reason = choice.finish_reason
    ordered = [calls[i] for i in sorted(calls)]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in ordered
            ],
        }
    )
    for call in ordered:
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT})
    text, final_finish = "", None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, stream=True
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            final_finish = chunk.choices[0].finish_reason or final_finish
    return {
        "tool_calls": [
            {"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])}
            for c in ordered
        ],
        "tool_call_deltas": tool_call_deltas,
        "finish_reason": finish_reason,
        "final": {"content": text, "finish_reason": final_finish},
    }


def main():
    gateway = gateway_address()
    model = sys.argv[2]
    client = openai_client(gateway)
    emit({"complete": complete(client, model), "stream": streamed(client, model)})


if __name__ == "__main__":
    main()
