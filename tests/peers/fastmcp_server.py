#!/usr/bin/env python3
"""Owns: the fastmcp test server used by tests/integration/matrix.rs (a fastmcp 4.x server, Streamable HTTP).

Usage: .venv/bin/python fastmcp_server.py
  Listens on 127.0.0.1, on a port the kernel picks; once listening prints exactly one line
  `READY http://127.0.0.1:<port>/mcp` on stdout (flushed).
Tools: echo(text) -> text; add(a:int, b:float) -> a+b (structured output {"result": ...});
  ask() (form elicitation for {"name": str}; "hello <name>", or the action when not accepted);
  steps(n:int) (reports progress 1..n, logs one info message, returns "done <n>");
  fail() (a tool error, text "it failed").
Resource: fast://info (text/plain). Prompt: greet(name).
"""
from __future__ import annotations

import sys

import anyio
import uvicorn
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from pydantic import BaseModel

mcp = FastMCP(name="flotilla-fastmcp-peer", version="1.0.0")


@mcp.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return text


@mcp.tool(description="Add two numbers.")
def add(a: int, b: float) -> float:
    return a + b


class Name(BaseModel):
    name: str


@mcp.tool(description="Ask the user for a name, then greet them.")
async def ask(ctx: Context) -> str:
    answer = await ctx.elicit("What is your name?", Name)
    if answer.action == "accept":
        return f"hello {answer.data.name}"
    return answer.action


@mcp.tool(description="Report progress n times, log once, then finish.")
async def steps(n: int, ctx: Context) -> str:
    for i in range(1, n + 1):
        await ctx.report_progress(i, n)
    await ctx.info(f"did {n} steps")
    return f"done {n}"


@mcp.tool(description="Always fails.")
def fail() -> str:
    raise ToolError("it failed")


@mcp.resource("fast://info", name="info", description="Static info.", mime_type="text/plain")
def info() -> str:
    return "flotilla fastmcp peer"


@mcp.prompt(description="Greet someone by name.")
def greet(name: str) -> str:
    return f"Hello, {name}!"


async def main() -> None:
    app = mcp.http_app(path="/mcp")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"READY http://127.0.0.1:{port}/mcp", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    anyio.run(main)
