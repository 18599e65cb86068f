"""Anthropic's `messages.count_tokens` through the gateway, with the anthropic SDK.

Usage: anthropic_count_tokens.py GATEWAY MODEL... Prints, per model, the
`input_tokens` the SDK read and whether the answer was marked estimated, or the
error the SDK raised (class, status, `type`).
"""

import sys

import anthropic

from sdk_common import anthropic_client, emit, gateway_address, status_error


def count(client, model):
    try:
        r = client.messages.count_tokens(
            model=model,
            system="Be brief.",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    except anthropic.APIStatusError as error:
        out = status_error(error)
        out["type"] = error.body.get("error", {}).get("type") if isinstance(error.body, dict) else None
        return out
    return {"input_tokens": r.input_tokens, "estimated": (r.model_extra or {}).get("estimated", False)}


def main():
    client = anthropic_client(gateway_address())
    emit({model: count(client, model) for model in sys.argv[2:]})


if __name__ == "__main__":
    main()
