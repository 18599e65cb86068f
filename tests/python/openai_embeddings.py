"""OpenAI SDK embeddings and model listing.

Usage: openai_embeddings.py GATEWAY MODEL. Embeds two inputs with the SDK's
default encoding (base64, decoded by the SDK) and one with encoding_format
"float", then lists the models and retrieves one, and one that does not exist.
Prints {"base64", "float", "models", "model_objects", "retrieved", "missing"}.
"""

import sys

import openai

from sdk_common import emit, gateway_address, openai_client


def main():
    client = openai_client(gateway_address())
    model = sys.argv[2]
    default = client.embeddings.create(model=model, input=["first text", "second text"])
    floats = client.embeddings.create(model=model, input="first text", encoding_format="float")
    models = client.models.list()
    retrieved = client.models.retrieve(model)
    try:
        client.models.retrieve("no-such-model")
        missing = {"raised": None}
    except openai.NotFoundError as e:
        missing = {"raised": type(e).__name__, "status": e.status_code, "type": e.type}
    emit(
        {
            "base64": {
                "model": default.model,
                "indexes": [d.index for d in default.data],
                "vectors": [d.embedding for d in default.data],
                "prompt_tokens": default.usage.prompt_tokens,
            },
            "float": {"vector": floats.data[0].embedding},
            "models": sorted(m.id for m in models.data),
            "model_objects": sorted({m.object for m in models.data}),
            "retrieved": {"id": retrieved.id, "object": retrieved.object},
            "missing": missing,
        }
    )


if __name__ == "__main__":
    main()
