"""The legacy prompt completion through the official openai SDK, whole and
streamed.

Run by tests/python_sdk.rs against a gateway whose alias `chat` answers with the
user's text."""

import json

import openai

client = openai.OpenAI()
prompt = "Call me on 13812345678 please"

whole = client.completions.create(model="chat", prompt=prompt, max_tokens=32)
assert whole.object == "text_completion", whole
assert whole.choices[0].text == prompt, whole.choices[0].text
assert whole.choices[0].finish_reason == "stop", whole.choices[0]
assert whole.usage.completion_tokens > 0, whole.usage

streamed = ""
finish = None
for chunk in client.completions.create(model="chat", prompt=prompt, stream=True):
    for choice in chunk.choices:
        streamed += choice.text
        finish = choice.finish_reason or finish
assert streamed == prompt, streamed
assert finish == "stop", finish

print(json.dumps({"whole": whole.choices[0].text, "streamed": streamed}))
