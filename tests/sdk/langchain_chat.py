"""LangChain's ChatOpenAI with its defaults against the gateway: invoke, stream
(with the usage LangChain asks for), a bound tool, and the same model over the
Responses API (`use_responses_api=True`).

Run by tests/python_sdk.rs against a gateway whose alias `chat` answers with the
user's text and whose alias `tools` calls the function `lookup` with it."""

import json

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

prompt = "Call me on 13812345678 please"

chat = ChatOpenAI(model="chat")
whole = chat.invoke(prompt)
assert whole.content == prompt, whole
assert whole.usage_metadata["output_tokens"] > 0, whole.usage_metadata

chunks = list(ChatOpenAI(model="chat", stream_usage=True).stream(prompt))
streamed = "".join(chunk.content for chunk in chunks)
assert streamed == prompt, streamed
total = chunks[0]
for chunk in chunks[1:]:
    total = total + chunk
assert total.usage_metadata and total.usage_metadata["output_tokens"] > 0, total


@tool
def lookup(query: str) -> str:
    """Looks a question up."""
    return query


called = ChatOpenAI(model="tools").bind_tools([lookup]).invoke(prompt)
assert called.tool_calls[0]["name"] == "lookup", called
assert called.tool_calls[0]["args"] == {"query": prompt}, called.tool_calls

responses = ChatOpenAI(model="chat", use_responses_api=True).invoke(prompt)
assert responses.text == prompt, responses

print(
    json.dumps(
        {
            "whole": whole.content,
            "streamed": streamed,
            "responses": responses.text,
            "tool": called.tool_calls[0]["name"],
            "stream_tokens": total.usage_metadata["output_tokens"],
        }
    )
)
