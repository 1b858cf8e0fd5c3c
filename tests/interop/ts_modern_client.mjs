// Interop client on the TypeScript SDK's 2.x client package (@modelcontextprotocol/client 2.4.0).
//
// Usage: node ts_modern_client.mjs URL auto|legacy|2026-07-28
// `new Client(info, {versionNegotiation: {mode}})` over StreamableHTTPClientTransport ('2026-07-28'
// is `{pin: '2026-07-28'}`), then: list tools, call echo, and call the demo's tools that ask the
// client something: ask_user (elicitation, answered accept {"name": "Ada"}), sample_llm (sampling,
// answered `sampled:<prompt>`) and list_client_roots (roots: file:///tmp/x). On 2026-07-28 the
// server asks through an input_required result and the client retries the call with
// inputResponses, all inside callTool.
// A fetch wrapper records every POST the client makes ({method, tool?, protocolVersion (the _meta
// key), header (MCP-Protocol-Version), inputResponses?, requestState?, answers? (the id of the
// server request a POSTed response answers)}): the MRTR retry, or the legacy answer, on the wire.
// Prints ONE JSON object on stdout: {"mode", "protocolVersion", "era", "server", "asked", "steps", "posts"}
// (`asked`: the requests the handlers were given, in order).
// Exit 0 when the run completed (even with step errors), 1 on connection failure/global timeout.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { describe, finish, step, text } from './ts_common.mjs';

const GLOBAL_TIMEOUT_MS = 30_000;
const STEP = { timeout: 10_000 };
const PROTOCOL_VERSION_KEY = 'io.modelcontextprotocol/protocolVersion';

// What each POST carried: the JSON-RPC method and the 2026-07-28 fields that matter here.
function recordingFetch(posts) {
  return async (input, init) => {
    if ((init?.method ?? 'GET') === 'POST' && typeof init.body === 'string') {
      const headers = new Headers(init.headers);
      for (const message of [JSON.parse(init.body)].flat()) {
        const params = message.params ?? {};
        const post = { method: message.method ?? null, header: headers.get('mcp-protocol-version') };
        if (message.method === undefined) post.answers = message.id; // a response to the server's request
        if (message.method === 'tools/call') post.tool = params.name;
        const version = params._meta?.[PROTOCOL_VERSION_KEY];
        if (version !== undefined) post.protocolVersion = version;
        if (params.inputResponses !== undefined) post.inputResponses = params.inputResponses;
        if (params.requestState !== undefined) post.requestState = typeof params.requestState;
        posts.push(post);
      }
    }
    return fetch(input, init);
  };
}

async function main(url, mode) {
  const negotiation = mode === 'auto' || mode === 'legacy' ? mode : { pin: mode };
  const client = new Client(
    { name: 'mcp-ts-client-interop', version: '2.4.0' },
    {
      capabilities: { elicitation: { form: {} }, sampling: {}, roots: {} },
      versionNegotiation: { mode: negotiation },
    },
  );
  const asked = [];
  client.setRequestHandler('elicitation/create', async (request) => {
    asked.push({ kind: 'elicitation', message: request.params.message, schema: request.params.requestedSchema });
    return { action: 'accept', content: { name: 'Ada' } };
  });
  client.setRequestHandler('sampling/createMessage', async (request) => {
    asked.push({ kind: 'sampling' });
    const prompt = request.params.messages[0].content.text;
    return { role: 'assistant', model: 'interop-fake-model', content: { type: 'text', text: `sampled:${prompt}` } };
  });
  client.setRequestHandler('roots/list', async () => {
    asked.push({ kind: 'roots' });
    return { roots: [{ uri: 'file:///tmp/x', name: 'x' }] };
  });
  const posts = [];
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch(posts) });
  await client.connect(transport, STEP);
  const report = {
    mode,
    protocolVersion: client.getNegotiatedProtocolVersion() ?? null,
    era: client.getProtocolEra() ?? null,
    server: client.getServerVersion() ?? null,
    asked,
    steps: {},
    posts,
  };
  const steps = report.steps;
  await step(steps, 'list_tools', async () => (await client.listTools(undefined, STEP)).tools.map((t) => t.name));
  const call = (name, args) => async () => {
    const result = await client.callTool({ name, arguments: args }, STEP);
    return { text: text(result), isError: Boolean(result.isError) };
  };
  await step(steps, 'echo', call('echo', { text: 'hi' }));
  await step(steps, 'elicitation', call('ask_user', { question: 'Your name?' }));
  await step(steps, 'sampling', call('sample_llm', { prompt: 'p' }));
  await step(steps, 'roots', call('list_client_roots', {}));
  await client.close();
  return report;
}

const [url, mode = 'auto'] = process.argv.slice(2);
const timer = setTimeout(() => finish({ fatal: `global timeout ${GLOBAL_TIMEOUT_MS} ms` }, 1), GLOBAL_TIMEOUT_MS);
main(url, mode).then(
  (report) => {
    clearTimeout(timer);
    finish(report, 0);
  },
  (err) => {
    clearTimeout(timer);
    finish({ fatal: describe(err), stack: String(err?.stack ?? '') }, 1);
  },
);
