"""Anthropic SDK error mapping through the gateway.

Usage: anthropic_errors.py GATEWAY. Asks for a model the gateway does not
know, once with messages.create and once with stream=True, and prints the
exception the SDK raised for each: {"create", "stream"}.
"""

import anthropic

from sdk_common import anthropic_client, emit, gateway_address, status_error

MESSAGES = [{"role": "user", "content": "hello"}]


def call(client, **extra):
    try:
        response = client.messages.create(
            model="no-such-model", max_tokens=16, messages=MESSAGES, **extra
        )
        if extra.get("stream"):
            for _ in response:
                pass
    except anthropic.APIStatusError as error:
        return status_error(error)
    return {"class": None, "status": 200}


def main():
    client = anthropic_client(gateway_address())
    emit({"create": call(client), "stream": call(client, stream=True)})


if __name__ == "__main__":
    main()
