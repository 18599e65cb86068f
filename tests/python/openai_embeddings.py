"""OpenAI SDK embeddings and model listing.

Usage: openai_embeddings.py GATEWAY MODEL. Embeds two inputs with the SDK's
default encoding (base64, decoded by the SDK) and one with encoding_format
"float", then lists the models. Prints {"base64", "float", "models"}.
"""

import sys

from sdk_common import emit, gateway_address, openai_client


def main():
    client = openai_client(gateway_address())
    model = sys.argv[2]
    default = client.embeddings.create(model=model, input=["first text", "second text"])
    floats = client.embeddings.create(model=model, input="first text", encoding_format="float")
    models = client.models.list()
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
        }
    )


if __name__ == "__main__":
    main()
