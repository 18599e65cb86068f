"""Helpers shared by the SDK client scripts that tests/tests/ai_sdk.rs runs.

Every script takes the gateway's data address (host:port) as its first
argument, talks to the gateway with an official SDK, and prints exactly one
JSON line with what it observed; the Rust test asserts on that line. Clients
never retry (max_retries=0) and time out after 20 s, so a gateway bug shows up
as an error in the JSON, not as a hang. Each SDK is imported only by the
scripts that use it (importing the Anthropic SDK alone takes over a second).
"""

import json
import sys

TIMEOUT_SECONDS = 20.0

WEATHER_TOOL_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}


def gateway_address() -> str:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} GATEWAY_HOST:PORT [ARGS...]")
    return sys.argv[1]


def openai_client(gateway: str):
    import openai

    return openai.OpenAI(
        base_url=f"http://{gateway}/v1",
        api_key="test",
        max_retries=0,
        timeout=TIMEOUT_SECONDS,
    )


def anthropic_client(gateway: str):
    import anthropic

    # The Anthropic SDK appends /v1/messages itself.
    return anthropic.Anthropic(
        base_url=f"http://{gateway}",
        api_key="test",
        max_retries=0,
        timeout=TIMEOUT_SECONDS,
    )


def status_error(error) -> dict:
    """What an SDK's APIStatusError (or subclass) carried."""
    return {
        "class": type(error).__name__,
        "is_api_status_error": any(
            cls.__name__ == "APIStatusError" for cls in type(error).__mro__
        ),
        "status": error.status_code,
        "message": str(error),
        "body": error.body,
    }


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
