"""Legacy completions, `n` and the error fields the openai SDK reads.

Usage: openai_legacy.py GATEWAY MODEL. Prints what the SDK saw for
`completions.create` (complete and streamed), a chat call with `n=2` (complete,
and streamed, which the gateway refuses), and for each gateway error the
exception class, `status_code`, `code`, `type` and `param`.
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
    complete = client.completions.create(model=model, prompt="Say hello", max_tokens=50)
    chunks = list(
        client.completions.create(
            model=model, prompt="Say hello", max_tokens=50, stream=True,
            stream_options={"include_usage": True},
        )
    )
    default_cap = client.completions.create(model=model, prompt=" ".join(["word"] * 40))
    two = client.chat.completions.create(
        model=model, n=2, messages=[{"role": "user", "content": "Say hello"}]
    )
    ask = lambda **kw: client.chat.completions.create(
        model=kw.pop("model", model), messages=kw.pop("messages", [{"role": "user", "content": "hi"}]), **kw
    )
    emit(
        {
            "complete": {
                "object": complete.object,
                "id": complete.id,
                "text": complete.choices[0].text,
                "finish_reason": complete.choices[0].finish_reason,
                "usage": complete.usage.model_dump() if complete.usage else None,
            },
            "stream": {
                "objects": sorted({c.object for c in chunks}),
                "text": "".join(c.choices[0].text for c in chunks if c.choices),
                "usage": next((c.usage.model_dump() for c in chunks if c.usage), None),
            },
            "default_cap": {
                "finish_reason": default_cap.choices[0].finish_reason,
                "completion_tokens": default_cap.usage.completion_tokens,
            },
            "n2": {
                "choices": [c.message.content for c in two.choices],
                "completion_tokens": two.usage.completion_tokens,
            },
            "errors": {
                "n2_stream": error_fields(lambda: ask(n=2, stream=True)),
                "unknown_model": error_fields(lambda: ask(model="no-such-model")),
                "empty_messages": error_fields(lambda: ask(messages=[])),
                "too_long": error_fields(
                    lambda: ask(model="small", messages=[{"role": "user", "content": "word " * 200}])
                ),
                "over_window": error_fields(lambda: ask(max_tokens=100000)),
                "suffix": error_fields(
                    lambda: client.completions.create(model=model, prompt="x", suffix="y")
                ),
                "provider_down": error_fields(lambda: ask(model="down")),
                "rate_limited": error_fields(lambda: ask(model="limited")),
            },
        }
    )


if __name__ == "__main__":
    main()
