"""OpenAI SDK error mapping through the gateway.

Usage: openai_errors.py GATEWAY. Calls four aliases the test configures:
"no-such-model" (not configured), "bad-request" (provider answers 400),
"all-fail" (every target answers 500) and "rate-limited" (its one target
answers 429). Prints, per alias, the exception the SDK raised.
"""

import openai

from sdk_common import emit, gateway_address, openai_client, status_error


def call(client, model):
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}]
        )
    except openai.APIStatusError as error:
        return status_error(error)
    return {"class": None, "status": 200}


def main():
    client = openai_client(gateway_address())
    emit(
        {
            model: call(client, model)
            for model in ("no-such-model", "bad-request", "all-fail", "rate-limited")
        }
    )


if __name__ == "__main__":
    main()
