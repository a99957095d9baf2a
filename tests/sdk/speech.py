"""OpenAI's speech endpoint through the official openai SDK, spoken by an alias
of kind tts in Qiniu's shape, and a refusal the SDK raises by name.

Run by tests/python_sdk.rs against a gateway whose alias `tts` speaks text as
the fake provider does (`AUDIO:` and the text)."""

import json

import openai

client = openai.OpenAI()

spoken = client.audio.speech.create(
    model="tts", voice="tts", input="您好，欢迎致电", response_format="wav", speed=1.5
)
audio = spoken.read()
assert audio.decode() == "AUDIO:您好，欢迎致电", audio
assert spoken.response.headers["content-type"] == "audio/wav", spoken.response.headers

try:
    client.audio.speech.create(model="tts", voice="tts", input="hi", response_format="flac")
    raise AssertionError("flac was taken")
except openai.BadRequestError as error:
    refused = error.body["param"]

print(json.dumps({"audio": audio.decode(), "refused": refused}))
