// Owns: the TypeScript SDK client (npm @modelcontextprotocol/client 2.x, the
// 2026-07-28 line, which negotiates down to a 2025 session where a server has
// no server/discover) used by Flotilla's integration tests.
//
// Usage: node ts_client.mjs URL list-tools | call TOOL [JSON_ARGS]
// Prints one JSON document: {"protocolVersion", "tools"} or {"protocolVersion",
// "result", "progress": [progress values], "asked": [what the server asked]}.
// Answers elicitation by accepting {"name": "Ada"}, roots/list with one root
// (file:///srv/flotilla-test). Exit 1 with the error on stderr on failure.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const [url, command, tool, json] = process.argv.slice(2);
const asked = [];
const client = new Client(
  { name: "flotilla-ts-client", version: "1" },
  { capabilities: { elicitation: { form: {} }, roots: { listChanged: true } } },
);
client.setRequestHandler("elicitation/create", async (request) => {
  asked.push(`elicit: ${request.params.message}`);
  return { action: "accept", content: { name: "Ada" } };
});
client.setRequestHandler("roots/list", async () => {
  asked.push("roots");
  return { roots: [{ uri: "file:///srv/flotilla-test", name: "flotilla-test" }] };
});

try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const protocolVersion = client.getNegotiatedProtocolVersion?.() ?? null;
  let out;
  if (command === "list-tools") {
    const { tools } = await client.listTools();
    out = { protocolVersion, tools };
  } else if (command === "call") {
    const progress = [];
    const result = await client.callTool(
      { name: tool, arguments: JSON.parse(json ?? "{}") },
      { onprogress: (p) => progress.push(p.progress) },
    );
    out = { protocolVersion, result, progress, asked };
  } else {
    throw new Error(`unknown command ${command}`);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  await client.close();
  process.exit(0);
} catch (error) {
  process.stderr.write(`ts_client: ${error?.stack ?? error}\n`);
  process.exit(1);
}
