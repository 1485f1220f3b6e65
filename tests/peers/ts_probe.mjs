// Owns: the matrix probe for the TypeScript SDK client (npm
// @modelcontextprotocol/client 2.x), the counterpart of probe.py (same
// arguments, same plan, same document; see probe.py's header).
//
// Usage: node ts_probe.mjs (--url URL | --sse URL | --stdio JSON_ARGV) [--prefix P] PLAN_JSON
// The client declares elicitation in form and URL mode (accepting every form
// with {"name": "Ada"}),
// sampling ("sampled: <first message text>") and roots
// (file:///srv/flotilla-matrix), and records what it is asked. Exit 1 with the
// error on stderr when it cannot connect.
import { Client, SSEClientTransport, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";

// The SDK reports some things with console.log (e.g. listing what the
// server does not offer): stdout is kept for the one JSON document.
for (const level of ["log", "info", "warn", "debug"]) {
  console[level] = (...parts) => process.stderr.write(parts.join(" ") + "\n");
}

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const url = option("--url");
const sse = option("--sse");
const stdio = option("--stdio");
const prefix = option("--prefix");
const plan = JSON.parse(args[0] ?? "{}");

const asked = [];
const client = new Client(
  { name: "flotilla-ts-probe", version: "1" },
  { capabilities: { elicitation: { form: {}, url: {} }, sampling: {}, roots: { listChanged: true } } },
);
client.setRequestHandler("elicitation/create", async (request) => {
  asked.push(`elicit: ${request.params.message}`);
  return { action: "accept", content: { name: "Ada" } };
});
client.setRequestHandler("sampling/createMessage", async (request) => {
  const first = request.params.messages.find((m) => m.content?.text !== undefined);
  const text = first?.content?.text ?? "";
  asked.push(`sample: ${text}`);
  return { role: "assistant", content: { type: "text", text: `sampled: ${text}` }, model: "matrix" };
});
client.setRequestHandler("roots/list", async () => {
  asked.push("roots");
  return { roots: [{ uri: "file:///srv/flotilla-matrix", name: "matrix" }] };
});

const logs = [];
client.setNotificationHandler("notifications/message", async (note) => {
  const { level, logger, data } = note.params;
  logs.push({ level, logger, data });
});

const message = (error) => String(error?.message ?? error);

async function listed(fetch, attr, key, named) {
  try {
    let items = [];
    let cursor;
    do {
      const page = await fetch(cursor === undefined ? undefined : { cursor });
      items = items.concat(page[attr]);
      cursor = page.nextCursor;
    } while (cursor);
    if (prefix !== undefined && named) {
      items = items
        .filter((i) => i.name.startsWith(prefix))
        .map((i) => ({ ...i, name: i.name.slice(prefix.length) }));
    }
    return items.sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  } catch (error) {
    return { error: message(error) };
  }
}

async function attempt(promise) {
  try {
    return await promise;
  } catch (error) {
    return { error: message(error) };
  }
}

try {
  let transport;
  if (url) transport = new StreamableHTTPClientTransport(new URL(url));
  else if (sse) transport = new SSEClientTransport(new URL(sse));
  else {
    const argv = JSON.parse(stdio);
    transport = new StdioClientTransport({ command: argv[0], args: argv.slice(1), env: process.env });
  }
  await client.connect(transport);
  const name = (n) => (prefix ?? "") + n;
  const out = { protocolVersion: client.getNegotiatedProtocolVersion?.() ?? null };
  out.tools = await listed((p) => client.listTools(p), "tools", "name", true);
  out.resources = await listed((p) => client.listResources(p), "resources", "uri", false);
  out.templates = await listed((p) => client.listResourceTemplates(p), "resourceTemplates", "uriTemplate", false);
  out.prompts = await listed((p) => client.listPrompts(p), "prompts", "name", true);
  out.calls = [];
  for (const call of plan.calls ?? []) {
    out.calls.push(await attempt(client.callTool({ name: name(call.tool), arguments: call.args ?? {} })));
  }
  out.reads = [];
  for (const uri of plan.reads ?? []) out.reads.push(await attempt(client.readResource({ uri })));
  out.prompt_results = [];
  for (const prompt of plan.prompts ?? []) {
    out.prompt_results.push(await attempt(client.getPrompt({ name: name(prompt.name), arguments: prompt.args ?? {} })));
  }
  if (plan.ping) {
    try {
      await client.ping();
      out.ping = true;
    } catch (error) {
      out.ping = { error: message(error) };
    }
  }
  out.progress = [];
  for (const call of plan.progress ?? []) {
    const steps = [];
    const result = await attempt(
      client.callTool(
        { name: name(call.tool), arguments: call.args ?? {} },
        { onprogress: (p) => steps.push(p.progress) },
      ),
    );
    out.progress.push({ result, steps });
  }
  if ((plan.logged ?? []).length && String(out.protocolVersion).startsWith("2025")) {
    // A server without logging/setLevel refuses; its logs are compared all the same.
    await client.setLoggingLevel("debug").catch(() => {});
  }
  out.logs = [];
  for (const call of plan.logged ?? []) {
    logs.length = 0;
    const result = await attempt(client.callTool({ name: name(call.tool), arguments: call.args ?? {} }));
    out.logs.push({ result, messages: [...logs] });
  }
  out.completions = [];
  for (const k of plan.complete ?? []) {
    const ref = { ...k.ref };
    if (ref.type === "ref/prompt") ref.name = name(ref.name);
    out.completions.push(await attempt(client.complete({ ref, argument: k.argument })));
  }
  out.asked = asked;
  process.stdout.write(JSON.stringify(out) + "\n");
  await client.close();
  process.exit(0);
} catch (error) {
  process.stderr.write(`ts_probe: ${error?.stack ?? error}\n`);
  process.exit(1);
}
