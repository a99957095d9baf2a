"""Anthropic's Messages API through the official anthropic SDK: whole, streamed,
tool use (whole, streamed, and the next turn with its result), and its errors.

Run by tests/python_sdk.rs against a gateway whose alias `chat` answers with the
user's text and whose alias `tools` calls `lookup` with it, with ANTHROPIC_BASE_URL set to the gateway."""

import json

import anthropic

client = anthropic.Anthropic(api_key="unused")
prompt = "Call me on 13812345678 please"

whole = client.messages.create(
    model="chat",
    max_tokens=64,
    system="Be brief.",
    messages=[{"role": "user", "content": prompt}],
)
assert whole.type == "message" and whole.role == "assistant", whole
assert whole.content[0].type == "text" and whole.content[0].text == prompt, whole.content
assert whole.stop_reason == "end_turn", whole.stop_reason
assert whole.usage.output_tokens > 0, whole.usage

with client.messages.stream(
    model="chat",
    max_tokens=64,
    messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}],
) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == prompt, streamed
assert final.stop_reason == "end_turn", final.stop_reason
assert final.usage.output_tokens > 0, final.usage

tools = [
    {
        "name": "lookup",
        "description": "Looks a question up.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]
used = client.messages.create(
    model="tools", max_tokens=64, tools=tools, messages=[{"role": "user", "content": prompt}]
)
assert used.stop_reason == "tool_use", used
call = used.content[0]
assert call.type == "tool_use" and call.name == "lookup" and call.input == {"query": prompt}, used.content
with client.messages.stream(
    model="tools", max_tokens=64, tools=tools, messages=[{"role": "user", "content": prompt}]
) as stream:
    streamed_call = stream.get_final_message().content[0]
assert streamed_call.type == "tool_use" and streamed_call.input == {"query": prompt}, streamed_call
answered = client.messages.create(
    model="chat",
    max_tokens=64,
    tools=tools,
    messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Found."}]},
    ],
)
assert answered.content[0].text == prompt, answered.content

try:
    client.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown model was served")
except anthropic.NotFoundError as error:
    assert error.body["error"]["type"] == "not_found_error", error.body
    not_found = error.body["error"]["type"]

print(json.dumps({"whole": whole.content[0].text, "streamed": streamed, "not_found": not_found, "tool_use": call.id}))
