// Owns: a 2025-11-25 task-augmented tool call made by the TypeScript SDK's
// 1.x client (npm @modelcontextprotocol/sdk, `experimental.tasks`), used by
// Flotilla's relay tests to compare tasks directly and through the gateway.
//
// Usage: node ts_tasks.mjs URL TOOL [JSON_ARGS]
// Lists the tools (the client learns which ones take tasks), calls TOOL as a
// task with callToolStream (tasks/get polling, tasks/result), answers an
// elicitation with the first offered choice, then asks for the same task
// from a second session, and whether each session's tasks/list holds it.
// Prints one JSON document:
// {"tasks": server capability, "execution": TOOL's execution, "kinds": [stream
// message types], "statuses": [...], "result", "asked": [...],
// "otherSession": {"status"} | {"error"}, "listed" and "otherListed": true,
// false or {"error"}}. Exit 1 with the error on failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, tool, json] = process.argv.slice(2);
const asked = [];

function client() {
  const c = new Client(
    { name: "flotilla-ts-tasks", version: "1" },
    { capabilities: { elicitation: { form: {} } } },
  );
  c.setRequestHandler(ElicitRequestSchema, async (request) => {
    asked.push(`elicit: ${request.params.message}`);
    const field = Object.values(request.params.requestedSchema?.properties ?? {})[0];
    const first = field?.oneOf?.[0]?.const ?? "first";
    return { action: "accept", content: { interpretation: first } };
  });
  return c;
}

try {
  const main = client();
  await main.connect(new StreamableHTTPClientTransport(new URL(url)));
  const { tools } = await main.listTools();
  const listed = tools.find((t) => t.name === tool);
  const out = {
    tasks: main.getServerCapabilities()?.tasks ?? null,
    execution: listed?.execution ?? null,
    kinds: [],
    statuses: [],
    result: null,
    asked,
  };
  let taskId = null;
  const stream = main.experimental.tasks.callToolStream({
    name: tool,
    arguments: JSON.parse(json ?? "{}"),
  });
  for await (const message of stream) {
    out.kinds.push(message.type);
    if (message.type === "taskCreated") taskId = message.task.taskId;
    if (message.type === "taskStatus") out.statuses.push(message.task.status);
    if (message.type === "result") out.result = message.result;
    if (message.type === "error") throw message.error;
  }
  // Whether a session's tasks/list holds the task (or why it failed).
  const lists = async (c) => {
    try {
      const { tasks } = await c.experimental.tasks.listTasks();
      return tasks.some((t) => t.taskId === taskId);
    } catch (error) {
      return { error: String(error?.message ?? error) };
    }
  };
  if (taskId) {
    out.listed = await lists(main);
    const other = client();
    await other.connect(new StreamableHTTPClientTransport(new URL(url)));
    try {
      const task = await other.experimental.tasks.getTask(taskId);
      out.otherSession = { status: task.status };
    } catch (error) {
      out.otherSession = { error: String(error?.message ?? error) };
    }
    out.otherListed = await lists(other);
    await other.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  await main.close();
  process.exit(0);
} catch (error) {
  process.stderr.write(`ts_tasks: ${error?.stack ?? error}\n`);
  process.exit(1);
}
