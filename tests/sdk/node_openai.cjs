// The official openai Node SDK against the gateway: models, chat whole and
// streamed, a tool call, the Responses API whole and streamed, and an error.
//
// Run by tests/python_sdk.rs against a gateway whose alias `chat` answers with
// the user's text and whose alias `tools` calls the function `lookup` with it.

const assert = require("node:assert/strict");
const OpenAI = require("openai");

async function main() {
  const client = new OpenAI({ maxRetries: 0 });
  const prompt = "Call me on 13812345678 please";

  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  assert.ok(models.includes("chat") && models.includes("tools"), String(models));

  const whole = await client.chat.completions.create({
    model: "chat",
    messages: [{ role: "user", content: prompt }],
  });
  assert.equal(whole.choices[0].message.content, prompt);
  assert.ok(whole.usage.completion_tokens > 0, JSON.stringify(whole.usage));

  const stream = await client.chat.completions.create({
    model: "chat",
    messages: [{ role: "user", content: prompt }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let streamed = "";
  let usage = null;
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(streamed, prompt);
  assert.ok(usage && usage.completion_tokens > 0, JSON.stringify(usage));

  const tools = [
    {
      type: "function",
      function: {
        name: "lookup",
        parameters: { type: "object", properties: { query: { type: "string" } } },
      },
    },
  ];
  const called = await client.chat.completions.create({
    model: "tools",
    messages: [{ role: "user", content: prompt }],
    tools,
  });
  const call = called.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, "lookup");
  assert.deepEqual(JSON.parse(call.function.arguments), { query: prompt });

  // The SDK's runner accumulates a streamed tool call from its pieces.
  const runner = client.chat.completions.stream({
    model: "tools",
    messages: [{ role: "user", content: prompt }],
    tools,
  });
  const final = await runner.finalChatCompletion();
  const streamedCall = final.choices[0].message.tool_calls[0];
  assert.deepEqual(JSON.parse(streamedCall.function.arguments), { query: prompt });

  const response = await client.responses.create({ model: "chat", input: prompt });
  assert.equal(response.output_text, prompt);
  const events = await client.responses.create({ model: "chat", input: prompt, stream: true });
  let told = "";
  const kinds = [];
  for await (const event of events) {
    kinds.push(event.type);
    if (event.type === "response.output_text.delta") told += event.delta;
  }
  assert.equal(told, prompt);
  assert.equal(kinds[0], "response.created");
  assert.equal(kinds.at(-1), "response.completed");
  const helped = await client.responses.stream({ model: "chat", input: prompt }).finalResponse();
  assert.equal(helped.output_text, prompt);

  let missing = null;
  try {
    await client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "hi" }] });
  } catch (error) {
    assert.ok(error instanceof OpenAI.NotFoundError, String(error));
    missing = error.code;
  }
  assert.equal(missing, "model_not_found");

  console.log(
    JSON.stringify({ whole: whole.choices[0].message.content, streamed, told, missing, call: call.id }),
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
