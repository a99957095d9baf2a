"""Embeddings through the official clients: the openai SDK as it comes (base64 by
default), token-id input as tiktoken makes it, `dimensions`, the model list, and
LangChain's OpenAIEmbeddings with its defaults (which send token ids).

Run by tests/python_sdk.rs with OPENAI_BASE_URL, OPENAI_API_KEY and MODEL set, and
TIKTOKEN_CACHE_DIR holding cl100k_base (nothing is downloaded). Prints one JSON
line of figures for the Rust side to check; asserts on everything else."""

import json
import math
import os

import openai
import tiktoken
from langchain_openai import OpenAIEmbeddings

MODEL = os.environ["MODEL"]
client = openai.OpenAI()


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


texts = ["The warranty covers parts for two years.", "你好，世界"]

# The SDK's default: it asks for base64 and decodes it itself.
default = client.embeddings.create(model=MODEL, input=texts)
assert len(default.data) == 2, default
assert all(len(d.embedding) == 384 for d in default.data)
assert default.usage.prompt_tokens > 0

floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
same_format = min(cosine(a.embedding, b.embedding) for a, b in zip(default.data, floats.data))
assert same_format > 0.99999, same_format

# Token ids, as tiktoken makes them: the vector of the text they stand for.
encoding = tiktoken.get_encoding("cl100k_base")
ids = [encoding.encode(t) for t in texts]
by_ids = client.embeddings.create(model=MODEL, input=ids)
ids_vs_text = min(cosine(a.embedding, b.embedding) for a, b in zip(by_ids.data, default.data))
assert ids_vs_text > 0.9999, ids_vs_text
one_list = client.embeddings.create(model=MODEL, input=ids[0])
assert len(one_list.data) == 1

native = client.embeddings.create(model=MODEL, input="x", dimensions=384)
assert len(native.data[0].embedding) == 384
try:
    client.embeddings.create(model=MODEL, input="x", dimensions=128)
    raise AssertionError("dimensions=128 was served")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert e.body["param"] == "dimensions", e.body
    assert "384" in e.body["message"], e.body
try:
    client.embeddings.create(model=MODEL, input=[[10**9]])
    raise AssertionError("an id outside the vocabulary was served")
except openai.BadRequestError as e:
    assert e.body["param"] == "input", e.body

listed = [m.id for m in client.models.list()]
assert MODEL in listed, listed
assert client.models.retrieve(MODEL).id == MODEL

# LangChain with its defaults: tiktoken ids, in the base64 format.
langchain = OpenAIEmbeddings(model=MODEL)
vectors = langchain.embed_documents(texts)
langchain_vs_sdk = min(cosine(a, b.embedding) for a, b in zip(vectors, default.data))
assert langchain_vs_sdk > 0.9999, langchain_vs_sdk
query = langchain.embed_query(texts[0])
assert cosine(query, default.data[0].embedding) > 0.9999

print(json.dumps({
    "models": listed,
    "ids_vs_text": ids_vs_text,
    "langchain_vs_sdk": langchain_vs_sdk,
    "related": cosine(default.data[0].embedding, client.embeddings.create(
        model=MODEL, input="Parts are covered by the warranty for two years.").data[0].embedding),
    "unrelated": cosine(default.data[0].embedding, client.embeddings.create(
        model=MODEL, input="Bananas are yellow.").data[0].embedding),
}))
