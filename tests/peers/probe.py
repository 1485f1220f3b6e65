#!/usr/bin/env python3
"""Owns: the matrix probe: one MCP client SDK exercising one server, printing what it saw.

Used by tests/integration/matrix.rs to compare what a client gets from an upstream directly with what
it gets through the gateway. Usage:
  .venv/bin/python probe.py --sdk mcp|mcp-legacy|fastmcp (--url URL | --stdio JSON_ARGV)
      [--prefix P] [--timeout S] PLAN_JSON       (or --sse URL: a legacy HTTP+SSE server)
--sdk: mcp = the Python `mcp` SDK Client in its default mode (2026-07-28 when the server has
  it, else the initialize handshake); mcp-legacy = the same client forced to the handshake
  (2025-11-25); fastmcp = the `fastmcp` Client (default mode).
--stdio: the server is a child process, JSON_ARGV = ["command", "arg", ...].
--prefix: names of tools and prompts as the client sees them start with P (the gateway's
  `x_<server>_`); listed names without it are left out (the gateway's own tool) and P is
  stripped, calls and prompts get it added, so both sides print the upstream's names.
PLAN_JSON: {"calls": [{"tool": NAME, "args": {...}, "asks": true?}...], "reads": [URI...],
  "prompts": [{"name": NAME, "args": {...}}...], "ping": true,
  "progress": [{"tool", "args"}...]   (each called with a progress callback),
  "logged": [{"tool", "args"}...]     (each called with logs asked for at "debug"),
  "complete": [{"ref": {...}, "argument": {"name", "value"}}...]}
("asks": the call asks the client something; read only by the matrix's Inspector CLI
probe, which cannot answer and skips it.) The client declares elicitation (accepting
every form with {"name": "Ada"}), sampling (answering "sampled: <first message text>")
and roots (file:///srv/flotilla-matrix), and records the messages it is asked.
Prints one JSON document: {"protocolVersion", "tools", "resources", "templates", "prompts",
  "calls": [result or {"error": message}], "reads": [...], "prompt_results": [...],
  "ping": true|error, "asked": [...], "progress": [{"result", "steps": [progress...]}],
  "logs": [{"result", "messages": [{level, logger, data}]}], "completions": [...]}; lists are sorted by name (or uri). A list the server
  does not offer is {"error": message}. Exit 1 with a message on stderr if the client cannot
  connect at all.
"""
from __future__ import annotations

import argparse
import json
import sys

import anyio
import mcp_types as types

ANSWER = {"name": "Ada"}
ROOT = "file:///srv/flotilla-matrix"


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def error_text(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return str(e) or type(e).__name__


class Recorder:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.logs: list[dict] = []

    async def log(self, level, logger, data) -> None:
        self.logs.append({"level": level, "logger": logger, "data": data})

    async def elicit(self, message: str) -> None:
        self.asked.append(f"elicit: {message}")

    async def sample(self, text: str) -> str:
        self.asked.append(f"sample: {text}")
        return f"sampled: {text}"

    async def roots(self) -> None:
        self.asked.append("roots")


def first_text(messages) -> str:
    for m in messages:
        content = m.content if not isinstance(m.content, list) else (m.content[0] if m.content else None)
        if content is not None and getattr(content, "text", None) is not None:
            return content.text
    return ""


def mcp_client(args, rec: Recorder):
    from mcp import Client, StdioServerParameters

    async def on_elicit(context, params):
        await rec.elicit(params.message)
        return types.ElicitResult(action="accept", content=ANSWER)

    async def on_sample(context, params):
        text = await rec.sample(first_text(params.messages))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=text), model="matrix"
        )

    async def on_roots(context):
        await rec.roots()
        return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="matrix")])

    if args.sse:
        from mcp.client.sse import sse_client

        server = sse_client(args.sse)
    elif args.url:
        server = args.url
    else:
        server = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:])

    async def on_log(params):
        await rec.log(params.level, params.logger, params.data)

    return Client(
        server,
        mode="legacy" if args.sdk == "mcp-legacy" else "auto",
        log_level="debug" if args.sdk == "mcp" else None,
        logging_callback=on_log,
        read_timeout_seconds=args.timeout,
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        list_roots_callback=on_roots,
    )


class McpOps:
    """The Python SDK Client's calls, in the probe's terms."""

    def __init__(self, c) -> None:
        self.c = c

    def version(self):
        return self.c.protocol_version

    async def pages(self, method: str, attr: str) -> list:
        out, cursor = [], None
        while True:
            page = await getattr(self.c, method)(cursor=cursor)
            out += getattr(page, attr)
            cursor = page.next_cursor
            if not cursor:
                return out

    async def tools(self):
        return await self.pages("list_tools", "tools")

    async def resources(self):
        return await self.pages("list_resources", "resources")

    async def templates(self):
        return await self.pages("list_resource_templates", "resource_templates")

    async def prompts(self):
        return await self.pages("list_prompts", "prompts")

    async def call(self, name, arguments, on_progress=None):
        return await self.c.call_tool(name, arguments, progress_callback=on_progress)

    async def want_logs(self):
        # A 2026-07-28 client names its level on every request instead.
        await self.c.set_logging_level("debug")

    async def complete(self, ref, argument):
        return await self.c.complete(ref, argument)

    async def read(self, uri):
        return await self.c.read_resource(uri)

    async def prompt(self, name, arguments):
        return await self.c.get_prompt(name, arguments)

    async def ping(self):
        await self.c.send_ping()


def fastmcp_client(args, rec: Recorder):
    from fastmcp import Client
    from fastmcp.client.transports import StdioTransport

    async def on_elicit(message, response_type, params, context):
        await rec.elicit(message)
        return ANSWER

    async def on_sample(messages, params, context):
        return await rec.sample(first_text(messages))

    async def on_roots(context):
        await rec.roots()
        return [types.Root(uri=ROOT, name="matrix")]

    async def on_log(message):
        await rec.log(message.level, message.logger, message.data)

    if args.sse:
        from fastmcp.client.transports import SSETransport

        transport = SSETransport(args.sse)
    elif args.url:
        transport = args.url
    else:
        transport = StdioTransport(command=args.stdio[0], args=args.stdio[1:])
    return Client(
        transport,
        timeout=args.timeout,
        elicitation_handler=on_elicit,
        sampling_handler=on_sample,
        roots=on_roots,
        log_handler=on_log,
    )


class FastOps:
    """The fastmcp Client's calls (its `_mcp` variants: the protocol's results)."""

    def __init__(self, c) -> None:
        self.c = c

    def version(self):
        result = getattr(self.c, "initialize_result", None)
        return getattr(result, "protocol_version", None) if result is not None else None

    async def tools(self):
        return (await self.c.list_tools_mcp()).tools

    async def resources(self):
        return (await self.c.list_resources_mcp()).resources

    async def templates(self):
        return (await self.c.list_resource_templates_mcp()).resource_templates

    async def prompts(self):
        return (await self.c.list_prompts_mcp()).prompts

    async def call(self, name, arguments, on_progress=None):
        return await self.c.call_tool_mcp(name, arguments, progress_handler=on_progress)

    async def want_logs(self):
        await self.c.set_logging_level("debug")

    async def complete(self, ref, argument):
        return await self.c.complete_mcp(ref, argument)

    async def read(self, uri):
        return await self.c.read_resource_mcp(uri)

    async def prompt(self, name, arguments):
        return await self.c.get_prompt_mcp(name, arguments)

    async def ping(self):
        if not await self.c.ping():
            raise RuntimeError("ping failed")


async def listed(fetch, key: str, prefix: str | None) -> list | dict:
    try:
        items = [dump(i) for i in await fetch()]
    except Exception as e:  # noqa: BLE001 - a list the server does not offer
        return {"error": error_text(e)}
    if prefix is not None and key == "name":
        items = [dict(i, name=i["name"][len(prefix):]) for i in items if i["name"].startswith(prefix)]
    return sorted(items, key=lambda i: i.get(key, ""))


async def attempt(coro) -> dict:
    try:
        return dump(await coro)
    except Exception as e:  # noqa: BLE001 - recorded, compared like a result
        return {"error": error_text(e)}


async def run(args, plan: dict) -> dict:
    rec = Recorder()
    prefix = args.prefix or ""
    if args.sdk == "fastmcp":
        client, ops = fastmcp_client(args, rec), FastOps
    else:
        client, ops = mcp_client(args, rec), McpOps
    with anyio.fail_after(args.timeout * 4):
        async with client as c:
            o = ops(c)
            out: dict = {"protocolVersion": o.version()}
            out["tools"] = await listed(o.tools, "name", args.prefix)
            out["resources"] = await listed(o.resources, "uri", None)
            out["templates"] = await listed(o.templates, "uriTemplate", None)
            out["prompts"] = await listed(o.prompts, "name", args.prefix)
            out["calls"] = [await attempt(o.call(prefix + k["tool"], k.get("args", {}))) for k in plan.get("calls", [])]
            out["reads"] = [await attempt(o.read(uri)) for uri in plan.get("reads", [])]
            out["prompt_results"] = [
                await attempt(o.prompt(prefix + k["name"], k.get("args", {}))) for k in plan.get("prompts", [])
            ]
            if plan.get("ping"):
                try:
                    await o.ping()
                    out["ping"] = True
                except Exception as e:  # noqa: BLE001
                    out["ping"] = {"error": error_text(e)}
            out["progress"] = []
            for k in plan.get("progress", []):
                steps: list[float] = []

                async def on_progress(progress, total=None, message=None):
                    steps.append(progress)

                result = await attempt(o.call(prefix + k["tool"], k.get("args", {}), on_progress))
                out["progress"].append({"result": result, "steps": steps})
            if plan.get("logged") and str(o.version() or "").startswith("2025"):
                # A session asks once (a server without logging/setLevel
                # refuses; its logs, if any, are compared all the same).
                try:
                    await o.want_logs()
                except Exception:  # noqa: BLE001
                    pass
            out["logs"] = []
            for k in plan.get("logged", []):
                rec.logs.clear()
                result = await attempt(o.call(prefix + k["tool"], k.get("args", {})))
                out["logs"].append({"result": result, "messages": list(rec.logs)})
            out["completions"] = []
            for k in plan.get("complete", []):
                ref = dict(k["ref"])
                if ref.get("type") == "ref/prompt":
                    ref["name"] = prefix + ref["name"]
                ref_model = (
                    types.PromptReference(**ref) if ref["type"] == "ref/prompt" else types.ResourceTemplateReference(**ref)
                )
                out["completions"].append(await attempt(o.complete(ref_model, k["argument"])))
            out["asked"] = rec.asked
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="MCP matrix probe")
    p.add_argument("--sdk", choices=["mcp", "mcp-legacy", "fastmcp"], required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url")
    target.add_argument("--stdio", type=json.loads)
    target.add_argument("--sse", help="a legacy HTTP+SSE server's /sse URL")
    p.add_argument("--prefix")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("plan", type=json.loads)
    args = p.parse_args()
    try:
        out = anyio.run(run, args, args.plan)
    except BaseException as e:  # noqa: BLE001
        print(f"probe: error: {type(e).__name__}: {error_text(e)}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
