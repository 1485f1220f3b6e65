#!/usr/bin/env python3
"""Owns: the Python MCP SDK (mcp 2.x) test client used by Flotilla integration tests.

Usage (Streamable HTTP only):
  .venv/bin/python py_client.py --url URL [--legacy] [--header 'K: V']... [--timeout S] list-tools
  .venv/bin/python py_client.py --url URL [--legacy] [--header 'K: V']... [--timeout S] call TOOL JSON_ARGS
Default mode is the SDK default, Client(mode="auto"): probe `server/discover` at
2026-07-28, fall back to the initialize handshake. --legacy => Client(mode="legacy").
Prints one JSON document on stdout:
  list-tools: {"protocolVersion": ..., "tools": [{name, description, inputSchema, ...}]}
  call:       the CallToolResult (by_alias, None fields dropped), plus "protocolVersion".
A tool result with isError=true still exits 0. Any other failure: message on stderr, exit 1
(usage errors: exit 2).
"""
from __future__ import annotations

import argparse
import json
import sys

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run(args: argparse.Namespace) -> dict:
    transport: object = args.url
    if args.headers:
        transport = streamable_http_client(args.url, http_client=create_mcp_http_client(headers=args.headers))
    with anyio.fail_after(args.timeout):
        async with Client(transport, mode="legacy" if args.legacy else "auto", read_timeout_seconds=args.timeout) as c:
            if args.cmd == "list-tools":
                tools = []
                cursor = None
                while True:
                    page = await c.list_tools(cursor=cursor)
                    tools += [dump(t) for t in page.tools]
                    cursor = page.next_cursor
                    if not cursor:
                        break
                return {"protocolVersion": c.protocol_version, "tools": tools}
            res = await c.call_tool(args.tool, args.tool_args)
            return {"protocolVersion": c.protocol_version, **dump(res)}


def main() -> int:
    p = argparse.ArgumentParser(description="Python MCP SDK test client (Streamable HTTP)")
    p.add_argument("--url", required=True)
    p.add_argument("--legacy", action="store_true", help="force the classic initialize handshake (mode='legacy')")
    p.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value' (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="overall timeout in seconds (default 30)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list-tools")
    call = sub.add_parser("call")
    call.add_argument("tool")
    call.add_argument("json_args", nargs="?", default="{}")
    args = p.parse_args()
    args.headers = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep:
            p.error(f"bad --header {h!r}, want 'Name: value'")
        args.headers[k.strip()] = v.strip()
    if args.cmd == "call":
        try:
            args.tool_args = json.loads(args.json_args)
        except json.JSONDecodeError as e:
            p.error(f"JSON_ARGS is not valid JSON: {e}")
        if not isinstance(args.tool_args, dict):
            p.error("JSON_ARGS must be a JSON object")
    try:
        out = anyio.run(run, args)
    except BaseException as e:  # noqa: BLE001 - report anything (incl. ExceptionGroup) and exit 1
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]
        msg = str(e) or ("timed out after %gs" % args.timeout if isinstance(e, TimeoutError) else repr(e))
        print(f"py_client: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
