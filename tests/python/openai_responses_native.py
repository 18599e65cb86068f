"""The Responses API passed through to a provider that serves it, with the openai SDK.

Usage: openai_responses_native.py GATEWAY MODEL. Prints what the SDK saw when
continuing a conversation with `previous_response_id` (complete and streamed),
retrieving and deleting a stored response, and sending a built-in tool the
provider refuses.
"""

import sys

import openai

from sdk_common import emit, gateway_address, openai_client, status_error


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
    first = client.responses.create(model=model, input="What is the capital of France?")
    second = client.responses.create(
        model=model, input="And of Italy?", previous_response_id=first.id
    )
    streamed_text = ""
    with client.responses.stream(
        model=model, input="And of Spain?", previous_response_id=second.id
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                streamed_text += event.delta
        streamed = stream.get_final_response()
    retrieved = client.responses.retrieve(first.id)
    client.responses.delete(first.id)
    emit(
        {
            "first": {"id": first.id, "text": first.output_text, "input_tokens": first.usage.input_tokens},
            "second": {
                "text": second.output_text,
                "input_tokens": second.usage.input_tokens,
                "previous_response_id": second.previous_response_id,
            },
            "streamed": {"text": streamed_text, "final_text": streamed.output_text, "input_tokens": streamed.usage.input_tokens},
            "retrieved": {"id": retrieved.id, "text": retrieved.output_text},
            "after_delete": error_fields(lambda: client.responses.retrieve(first.id)),
            "unknown_previous": error_fields(
                lambda: client.responses.create(model=model, input="x", previous_response_id="resp_nope")
            ),
        }
    )


if __name__ == "__main__":
    main()
