// Drives the unmodified @huggingface/inference client against a local server: every request
// it makes to https://huggingface.co or https://router.huggingface.co goes to SERVER instead
// (a custom fetch, as ../../shared/reference/client-wire-formats.md section 7 describes).
// Usage: node chat.mjs SERVER TOKEN MODEL [BILL_TO]; prints one JSON object.
import { InferenceClient } from "@huggingface/inference";

const [server, token, model, billTo] = process.argv.slice(2);
const local = (url) =>
  String(url)
    .replace("https://router.huggingface.co", server)
    .replace("https://huggingface.co", server);
const fetchLocal = (input, init) =>
  fetch(input instanceof Request ? new Request(local(input.url), input) : local(input), init);

const messages = [{ role: "user", content: "Hello from JS" }];
const options = billTo ? { billTo } : {};
const client = new InferenceClient(token, { fetch: fetchLocal });
const out = {};

const named = await client.chatCompletion({ provider: "together", model, messages, max_tokens: 16 }, options);
out.named = named.choices[0].message.content;

let streamed = "";
for await (const chunk of client.chatCompletionStream(
  { provider: "together", model, messages, max_tokens: 16 },
  options,
)) {
  streamed += chunk.choices?.[0]?.delta?.content ?? "";
}
out.namedStream = streamed;

const auto = await client.chatCompletion({ model, messages, max_tokens: 16 }, options);
out.auto = auto.choices[0].message.content;

const endpoint = new InferenceClient(token, { endpointUrl: `${server}/v1` });
const viaEndpoint = await endpoint.chatCompletion({ model: `${model}:groq`, messages, max_tokens: 16 });
out.endpoint = viaEndpoint.choices[0].message.content;

console.log(JSON.stringify(out));
