// What the TypeScript interop clients share: a run is a list of named steps,
// each recorded as its result or as the error it raised, printed as one JSON line.

export function describe(err) {
  const out = { error: String(err?.message || err?.type || err) }; // connect errors are bare Events
  if (typeof err?.code === 'number' || typeof err?.code === 'string') out.code = err.code;
  return out;
}

export function finish(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code));
}

export async function step(steps, name, fn) {
  try {
    steps[name] = await fn();
  } catch (err) {
    steps[name] = describe(err);
  }
}

export function text(result) {
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
}
