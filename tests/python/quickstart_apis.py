"""Every AI endpoint of the quickstart, with both official SDKs.

Usage: quickstart_apis.py GATEWAY. Against the quickstart's `demo` alias:
chat, Responses and legacy completions (complete and streamed), models,
embeddings, Anthropic messages (complete and streamed) and count_tokens, and
the errors both SDKs raise for an unknown model and an empty conversation.
Prints what each call gave.
"""

import anthropic
import openai

from sdk_common import anthropic_client, emit, gateway_address, openai_client, status_error

Q = "What is the capital of France?"


def error_of(call, module):
    try:
        call()
    except module.APIStatusError as error:
        out = status_error(error)
        body = error.body if isinstance(error.body, dict) else {}
        out["type"] = getattr(error, "type", None) or body.get("error", {}).get("type")
        out["code"] = getattr(error, "code", None)
        return out
    return {"class": None}


def main():
    gw = gateway_address()
    oa = openai_client(gw)
    an = anthropic_client(gw)
    msgs = [{"role": "user", "content": Q}]
    out = {}
    out["chat"] = oa.chat.completions.create(model="demo", messages=msgs).choices[0].message.content
    out["chat_stream"] = "".join(
        c.choices[0].delta.content or ""
        for c in oa.chat.completions.create(model="demo", messages=msgs, stream=True)
        if c.choices
    )
    out["responses"] = oa.responses.create(model="demo", input=Q).output_text
    with oa.responses.stream(model="demo", input=Q) as s:
        out["responses_stream"] = s.get_final_response().output_text
    out["completions"] = oa.completions.create(model="demo", prompt=Q).choices[0].text
    out["completions_stream"] = "".join(
        c.choices[0].text for c in oa.completions.create(model="demo", prompt=Q, stream=True) if c.choices
    )
    out["models"] = [m.id for m in oa.models.list()]
    out["model"] = oa.models.retrieve("demo").id
    out["embedding_len"] = len(oa.embeddings.create(model="demo", input="hi").data[0].embedding)
    out["messages"] = an.messages.create(model="demo", max_tokens=100, messages=msgs).content[0].text
    with an.messages.stream(model="demo", max_tokens=100, messages=msgs) as s:
        out["messages_stream"] = s.get_final_text()
    counted = an.messages.count_tokens(model="demo", messages=msgs)
    out["count_tokens"] = {"input_tokens": counted.input_tokens, "estimated": (counted.model_extra or {}).get("estimated")}
    out["errors"] = {
        "openai_unknown": error_of(lambda: oa.responses.create(model="nope", input=Q), openai),
        "openai_empty": error_of(lambda: oa.chat.completions.create(model="demo", messages=[]), openai),
        "anthropic_unknown": error_of(
            lambda: an.messages.create(model="nope", max_tokens=10, messages=msgs), anthropic
        ),
        "anthropic_empty": error_of(
            lambda: an.messages.create(model="demo", max_tokens=10, messages=[]), anthropic
        ),
    }
    emit(out)


if __name__ == "__main__":
    main()
