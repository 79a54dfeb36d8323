// One call through the official `openai` npm package, as an unmodified Node application makes it.
// Usage: node client.mjs '{"baseURL": ..., "apiKey": ..., "model": ..., "content": ..., "stream": false,
//                          "timeout": 600000, "maxRetries": 2, "headers": {}}'
// Prints one JSON line: {"ok": true, "content": "..."} or {"ok": false, "error": {...}}.
import OpenAI from "openai";

const args = JSON.parse(process.argv[2]);
const client = new OpenAI({
  baseURL: args.baseURL,
  apiKey: args.apiKey,
  timeout: args.timeout ?? 600000,
  maxRetries: args.maxRetries ?? 2,
  defaultHeaders: args.headers ?? {},
});
const request = { model: args.model, messages: [{ role: "user", content: args.content }] };

try {
  let content = "";
  if (args.stream) {
    const stream = await client.chat.completions.create({ ...request, stream: true });
    let chunks = 0;
    for await (const chunk of stream) {
      chunks += 1;
      content += chunk.choices[0]?.delta?.content ?? "";
    }
    console.log(JSON.stringify({ ok: true, content, chunks }));
  } else {
    const completion = await client.chat.completions.create(request);
    console.log(JSON.stringify({ ok: true, content: completion.choices[0].message.content }));
  }
} catch (err) {
  const error = err?.error ?? {};
  console.log(JSON.stringify({
    ok: false,
    error: { name: err?.constructor?.name, status: err?.status ?? null, message: String(err?.message ?? err),
             code: error.code ?? err?.code ?? null, type: error.type ?? null, ticket: error.ticket ?? null },
  }));
}
