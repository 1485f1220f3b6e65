// Owns: one long 2025-11-25 session of the TypeScript SDK's 1.x client (npm
// @modelcontextprotocol/sdk, Streamable HTTP), used by Flotilla's replica
// tests: a session initialized once that makes many calls.
//
// Usage: node ts_session.mjs URL TOOL COUNT [JSON_ARGS]
// Connects (initialize), answers every form elicitation with {"name": "Ada"},
// calls TOOL COUNT times in the session, then lists the tools.
// Prints one JSON document: {"protocolVersion", "sessionIds": [every
// Mcp-Session-Id the transport held, in order], "texts": [each call's text, or
// "error: <message>"], "asked": [elicitation messages], "tools": [names]}.
// Exit 1 with the error on stderr when connecting fails.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, tool, count, json] = process.argv.slice(2);
const asked = [];
const client = new Client(
  { name: "flotilla-ts-session", version: "1" },
  { capabilities: { elicitation: { form: {} } } },
);
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  asked.push(request.params.message);
  return { action: "accept", content: { name: "Ada" } };
});

const transport = new StreamableHTTPClientTransport(new URL(url));
try {
  await client.connect(transport);
} catch (error) {
  console.error(`connecting to ${url}: ${error.message ?? error}`);
  process.exit(1);
}
const sessionIds = [transport.sessionId];
const texts = [];
for (let n = 0; n < Number(count); n++) {
  try {
    const result = await client.callTool({ name: tool, arguments: JSON.parse(json ?? "{}") });
    texts.push(result.content.filter((c) => c.type === "text").map((c) => c.text).join(""));
  } catch (error) {
    texts.push(`error: ${error.message ?? error}`);
  }
  if (transport.sessionId !== sessionIds[sessionIds.length - 1]) sessionIds.push(transport.sessionId);
}
const { tools } = await client.listTools();
console.log(
  JSON.stringify({
    protocolVersion: transport.protocolVersion ?? null,
    sessionIds,
    texts,
    asked,
    tools: tools.map((t) => t.name),
  }),
);
await client.close();
