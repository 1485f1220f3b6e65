#!/usr/bin/env python3
"""Owns: the Python MCP SDK (mcp 2.x) test server used by Flotilla integration tests.

Streamable HTTP on 127.0.0.1 (only), path /mcp.
Usage: .venv/bin/python py_server.py --port N [--host 127.0.0.1] [--stateless] [--json-response]
  --port 0 picks a free port. Readiness: once the socket is listening it prints
  exactly one line `READY http://127.0.0.1:<port>/mcp` on stdout (flushed).
Tools: add(a:int,b:int)->int (structured output {"result": a+b}), echo(text:str),
  slow(seconds:float) (sleeps, then returns "slept <s>"), fail(message:str) (ToolError -> isError=true, text=message),
  grow(name:str) (adds tool `name` at runtime and sends tools/list_changed),
  auth_header() (returns the Authorization header received, or <none>).
Resource: py://info (text/plain). Prompt: greet(name).
"""
from __future__ import annotations

import argparse
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer(name="flotilla-py-peer", version="1.0.0", instructions="Python SDK test peer for Flotilla.")


@mcp.tool(description="Add two integers and return the sum.")
def add(a: int, b: int) -> int:
    return a + b


@mcp.tool(description="Echo the given text back unchanged.")
def echo(text: str) -> str:
    return text


@mcp.tool(description="Sleep for the given number of seconds, then return.")
async def slow(seconds: float) -> str:
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@mcp.tool(description="Always fails with the given message (tool error, isError=true).")
def fail(message: str) -> str:
    raise ToolError(message)


@mcp.tool(description="Add a tool named `name` at runtime and announce the tools list change.")
async def grow(name: str, ctx: Context) -> str:
    def grown() -> str:
        return f"grown {name}"

    mcp.add_tool(grown, name=name, description=f"Added at runtime by grow({name!r}).")
    await ctx.notify_tools_changed()
    return f"added {name}"


@mcp.tool(description="Return the Authorization header this server received (for credential tests).")
def auth_header(ctx: Context) -> str:
    headers = ctx.headers or {}
    return headers.get("authorization", "<none>")


@mcp.resource("py://info", name="info", description="Static info about this peer.", mime_type="text/plain")
def info() -> str:
    return "flotilla python mcp peer"


@mcp.prompt(description="Greet someone by name.")
def greet(name: str) -> str:
    return f"Hello, {name}!"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--stateless", action="store_true", help="stateless Streamable HTTP (no Mcp-Session-Id)")
    p.add_argument("--json-response", action="store_true", help="answer POSTs with application/json, not SSE")
    args = p.parse_args()

    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.json_response,
        host=args.host,
    )
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1))

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"READY http://{args.host}:{port}/mcp", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    anyio.run(main)
