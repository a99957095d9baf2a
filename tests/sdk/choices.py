"""Several choices (`n`) through the official openai SDK, whole and streamed.

Run by tests/python_sdk.rs against a gateway whose alias `chat` answers each
choice as "choice I: <the question>"."""

import json

import openai

client = openai.OpenAI()
question = "Call me on 13812345678 please"
messages = [{"role": "user", "content": question}]

whole = client.chat.completions.create(model="chat", messages=messages, n=2)
texts = [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]
assert texts == [f"choice {i}: {question}" for i in range(2)], texts

streamed = {}
finished = {}
for chunk in client.chat.completions.create(model="chat", messages=messages, n=2, stream=True):
    for choice in chunk.choices:
        streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
        if choice.finish_reason:
            finished[choice.index] = choice.finish_reason
assert streamed == {i: f"choice {i}: {question}" for i in range(2)}, streamed
assert finished == {0: "stop", 1: "stop"}, finished

print(json.dumps({"whole": texts, "streamed": [streamed[0], streamed[1]]}))
