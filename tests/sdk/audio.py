"""OpenAI's audio endpoints through the official openai SDK: speech spoken by an
alias of kind tts and a transcription recognised by an alias of kind asr, both in
Qiniu's shapes, and refusals the SDK raises by name.

Run by tests/python_sdk.rs against a gateway whose alias `tts` speaks text as
the fake provider does (`AUDIO:` and the text) and whose alias `asr` recognises
its sentence."""

import json

import openai

client = openai.OpenAI()

spoken = client.audio.speech.create(
    model="tts", voice="tts", input="您好，欢迎致电", response_format="wav", speed=1.5
)
audio = spoken.read()
assert audio.decode() == "AUDIO:您好，欢迎致电", audio
assert spoken.response.headers["content-type"] == "audio/wav", spoken.response.headers

refused = []
try:
    client.audio.speech.create(model="tts", voice="tts", input="hi", response_format="flac")
    raise AssertionError("flac was taken")
except openai.BadRequestError as error:
    refused.append(error.body["param"])

recording = ("call.wav", b"RIFF" + bytes(32_000), "audio/wav")
transcript = client.audio.transcriptions.create(model="asr", file=recording)
as_text = client.audio.transcriptions.create(model="asr", file=recording, response_format="text")
assert transcript.text == as_text.strip(), (transcript, as_text)

try:
    client.audio.transcriptions.create(model="asr", file=recording, language="zh")
    raise AssertionError("language was taken")
except openai.BadRequestError as error:
    refused.append(error.body["param"])

print(json.dumps({"audio": audio.decode(), "text": transcript.text, "refused": refused}))
