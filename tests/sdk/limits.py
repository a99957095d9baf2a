"""Governance refusals as the official openai SDK sees them: a key over its
requests per minute gets `openai.RateLimitError` with `rate_limit_exceeded` and
OpenAI's rate-limit headers, a key whose budget is spent gets the same class with
`insufficient_quota` (the SDK's own retry is off, so the first refusal is seen).

Run by tests/python_sdk.rs with OPENAI_BASE_URL, LIMITED_KEY (rpm 1) and
SPENT_KEY (a budget smaller than one call). Prints one JSON line of figures."""

import json
import os

import openai


def refusal(key):
    client = openai.OpenAI(api_key=key, max_retries=0)
    try:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello"}]
        )
    except openai.RateLimitError as error:
        return error
    raise AssertionError("the call was not refused")


limited = openai.OpenAI(api_key=os.environ["LIMITED_KEY"], max_retries=0)
first = limited.chat.completions.with_raw_response.create(
    model="chat", messages=[{"role": "user", "content": "hello"}]
)
assert first.headers["x-ratelimit-limit-requests"] == "1", dict(first.headers)
assert first.headers["x-ratelimit-remaining-requests"] == "0", dict(first.headers)
assert first.parse().choices[0].message.content

rate = refusal(os.environ["LIMITED_KEY"])
assert rate.status_code == 429, rate
assert rate.code == "rate_limit_exceeded", rate.body
assert rate.type == "requests", rate.body
headers = rate.response.headers
assert int(headers["retry-after"]) >= 1, dict(headers)
assert headers["x-ratelimit-remaining-requests"] == "0", dict(headers)

quota = refusal(os.environ["SPENT_KEY"])
assert quota.status_code == 429, quota
assert quota.code == "insufficient_quota", quota.body

print(
    json.dumps(
        {
            "rate_code": rate.code,
            "rate_reset": headers.get("x-ratelimit-reset-requests"),
            "quota_code": quota.code,
            "quota_message": quota.message,
        }
    )
)
