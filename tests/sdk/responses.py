"""OpenAI's Responses API through the official openai SDK: whole, streamed (raw
events and the SDK's accumulating helper), function calls and their outputs, and
the refusal of what needs stored responses.

Run by tests/python_sdk.rs against a gateway whose alias `chat` answers with the
user's text and whose alias `tools` calls the function `lookup` with it."""

import json

import openai

client = openai.OpenAI()
prompt = "Call me on 13812345678 please"

whole = client.responses.create(model="chat", instructions="Be brief.", input=prompt)
assert whole.object == "response" and whole.status == "completed", whole
assert whole.output_text == prompt, whole.output_text
assert whole.output[0].type == "message" and whole.output[0].role == "assistant", whole.output
assert whole.usage.output_tokens > 0 and whole.usage.total_tokens > whole.usage.output_tokens, whole.usage
assert whole.store is False, whole.store

# Raw events, as the API sends them, in order.
events = list(
    client.responses.create(
        model="chat",
        input=[{"role": "user", "content": [{"type": "input_text", "text": prompt}]}],
        stream=True,
    )
)
kinds = [event.type for event in events]
assert kinds[:2] == ["response.created", "response.in_progress"], kinds
assert kinds[-1] == "response.completed", kinds
assert [event.sequence_number for event in events] == list(range(len(events))), kinds
streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
assert streamed == prompt, streamed
assert events[-1].response.output_text == prompt, events[-1].response
assert events[-1].response.usage.output_tokens > 0, events[-1].response.usage

# The SDK's helper, which rebuilds the response from the events and checks them.
with client.responses.stream(model="chat", input=prompt) as stream:
    helped = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
    final = stream.get_final_response()
assert helped == prompt and final.output_text == prompt, (helped, final)

# Function calls: whole, streamed, and the next turn with the call's output.
tools = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Looks a question up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]
called = client.responses.create(model="tools", input=prompt, tools=tools)
call = called.output[0]
assert call.type == "function_call" and call.name == "lookup", called.output
assert json.loads(call.arguments) == {"query": prompt}, call.arguments
with client.responses.stream(model="tools", input=prompt, tools=tools) as stream:
    arguments = "".join(
        event.delta for event in stream if event.type == "response.function_call_arguments.delta"
    )
    streamed_call = stream.get_final_response().output[0]
assert streamed_call.type == "function_call" and streamed_call.arguments == arguments, streamed_call
assert json.loads(arguments) == {"query": prompt}, arguments

answered = client.responses.create(
    model="chat",
    input=[
        {"role": "user", "content": prompt},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Found it."},
    ],
    tools=tools,
)
assert answered.output_text == prompt, answered.output_text

try:
    client.responses.create(model="chat", input="hi", previous_response_id="resp_earlier")
    raise AssertionError("a previous response was looked for")
except openai.BadRequestError as error:
    refused = error.param

print(
    json.dumps(
        {
            "whole": whole.output_text,
            "streamed": streamed,
            "helped": helped,
            "call_id": call.call_id,
            "refused": refused,
            "events": sorted(set(kinds)),
        }
    )
)
