"""The Responses API (`client.responses`) through the gateway, with the openai SDK.

Usage: openai_responses.py GATEWAY MODEL. Prints what the SDK saw for: a
complete call, a raw stream (event types in order and the final response), the
`responses.stream()` helper, a tool call and its follow-up with the tool's
output, and the errors for state the gateway does not keep.
"""

import openai

from sdk_common import WEATHER_TOOL_SCHEMA, emit, gateway_address, openai_client, status_error
import sys

QUESTION = "What is the capital of France?"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": WEATHER_TOOL_SCHEMA,
}


def error_fields(call):
    try:
        call()
    except openai.APIStatusError as error:
        out = status_error(error)
        out["code"] = error.code
        out["type"] = error.type
        out["param"] = error.param
        return out
    return {"class": None}


def main():
    client = openai_client(gateway_address())
    model = sys.argv[2]
    complete = client.responses.create(
        model=model, instructions="Be brief.", input=QUESTION, max_output_tokens=100
    )

    events = []
    text = ""
    final = None
    for event in client.responses.create(model=model, input=QUESTION, stream=True):
        events.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response

    with client.responses.stream(model=model, input=QUESTION) as stream:
        helper_text = "".join(
            e.delta for e in stream if e.type == "response.output_text.delta"
        )
        helper_final = stream.get_final_response()

    call = client.responses.create(model=model, input="Weather in Paris?", tools=[TOOL])
    calls = [item for item in call.output if item.type == "function_call"]
    follow = client.responses.create(
        model=model,
        tools=[TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump() for item in calls],
            *[
                {"type": "function_call_output", "call_id": c.call_id, "output": "18 degrees and sunny"}
                for c in calls
            ],
        ],
    )

    with client.responses.stream(model=model, input="Weather in Paris?", tools=[TOOL]) as stream:
        streamed_call = [i for i in stream.get_final_response().output if i.type == "function_call"]

    emit(
        {
            "complete": {
                "id": complete.id,
                "object": complete.object,
                "status": complete.status,
                "output_text": complete.output_text,
                "item_types": [i.type for i in complete.output],
                "usage": complete.usage.model_dump(),
                "instructions": complete.instructions,
                "max_output_tokens": complete.max_output_tokens,
            },
            "stream": {
                "events": events,
                "text": text,
                "final_text": final.output_text if final else None,
                "final_usage": final.usage.model_dump() if final and final.usage else None,
            },
            "helper": {"text": helper_text, "final_text": helper_final.output_text},
            "tool": {
                "calls": [{"name": c.name, "arguments": c.arguments, "call_id": c.call_id} for c in calls],
                "follow_up": follow.output_text,
                "streamed_calls": [{"name": c.name, "arguments": c.arguments} for c in streamed_call],
            },
            "previous_response_id": error_fields(
                lambda: client.responses.create(
                    model=model, input="again", previous_response_id=complete.id
                )
            ),
            "retrieve": error_fields(lambda: client.responses.retrieve(complete.id)),
            "builtin_tool": error_fields(
                lambda: client.responses.create(
                    model=model, input="x", tools=[{"type": "web_search_preview"}]
                )
            ),
        }
    )


if __name__ == "__main__":
    main()
