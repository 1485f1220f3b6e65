#!/usr/bin/env python3
"""Owns: one long-lived Python MCP SDK (mcp 2.x) client session in 2025 mode (the initialize
handshake, Client(mode="legacy")), driven line by line, for Flotilla's tests of sessions served
by several gateway replicas.

Usage: .venv/bin/python session_driver.py --url URL [--header 'K: V']... [--elicit-answer JSON]

Reads one JSON command per line on stdin and prints one JSON line per answer on stdout (flushed):
  {"op": "call", "tool": T, "args": {...}}  -> {"ok": true, "text": ..., "isError": bool} or
                                              {"ok": false, "error": "..."}
  {"op": "calls", "tool": T, "args": {...}, "count": N, "pause": S}
                                           -> one such line per call (with "n"), S seconds apart,
                                              then {"done": N, "failed": k}
  {"op": "list"}                           -> {"tools": [names]}
  {"op": "wait_list_changed", "timeout": S} -> {"list_changed": count so far} once at least one
                                              tools/list_changed arrived (or the timeout passed)
  {"op": "stats"}                          -> {"sessions": [every Mcp-Session-Id the client sent],
                                              "initializes": POSTs sent without a session id,
                                              "asked": [elicitation messages answered]}
The first line printed is {"ready": true, "protocolVersion": ...} once the session is up.
EOF on stdin ends the session. --elicit-answer declares elicitation and accepts every form
elicitation with that content.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

import anyio
import httpx2 as httpx
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def say(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


def text_of(result) -> str:
    return "".join(block.text for block in result.content if getattr(block, "type", None) == "text")


async def main_async(args: argparse.Namespace) -> None:
    sent_sessions: list[str] = []
    initializes = 0
    list_changed = 0
    asked: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        nonlocal initializes
        session = request.headers.get("mcp-session-id")
        if session is None and request.method == "POST":
            initializes += 1
        elif session is not None and session not in sent_sessions:
            sent_sessions.append(session)

    http = create_mcp_http_client(headers=args.headers or None)
    http.event_hooks["request"].append(on_request)

    async def on_message(message) -> None:
        nonlocal list_changed
        if isinstance(message, types.ToolListChangedNotification):
            list_changed += 1

    options: dict = {"message_handler": on_message}
    if args.elicit_answer is not None:

        async def on_elicit(context, params):
            asked.append(params.message)
            return types.ElicitResult(action="accept", content=args.elicit_answer)

        options["elicitation_callback"] = on_elicit

    async def call(tool: str, arguments: dict) -> dict:
        try:
            with anyio.fail_after(args.timeout):
                result = await c.call_tool(tool, arguments)
            return {"ok": True, "text": text_of(result), "isError": bool(result.is_error)}
        except Exception as error:  # reported to the test, which decides
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}

    transport = streamable_http_client(args.url, http_client=http)
    async with Client(transport, mode="legacy", read_timeout_seconds=args.timeout, **options) as c:
        say({"ready": True, "protocolVersion": c.protocol_version})
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            op = command.get("op")
            if op == "call":
                say(await call(command["tool"], command.get("args", {})))
            elif op == "calls":
                failed = 0
                for n in range(command["count"]):
                    answer = await call(command["tool"], command.get("args", {}))
                    failed += 0 if answer["ok"] else 1
                    say({"n": n, **answer})
                    if command.get("pause"):
                        await anyio.sleep(command["pause"])
                say({"done": command["count"], "failed": failed})
            elif op == "list":
                tools = await c.list_tools()
                say({"tools": [t.name for t in tools.tools]})
            elif op == "wait_list_changed":
                with anyio.move_on_after(command.get("timeout", 10)):
                    while list_changed == 0:
                        await anyio.sleep(0.05)
                say({"list_changed": list_changed})
            elif op == "stats":
                say({"sessions": sent_sessions, "initializes": initializes, "asked": asked})
            else:
                say({"ok": False, "error": f"unknown op {op!r}"})


def main() -> int:
    p = argparse.ArgumentParser(description="a long-lived Python MCP SDK session driven from stdin")
    p.add_argument("--url", required=True)
    p.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value'")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--elicit-answer", type=json.loads, help="accept every elicitation with this content")
    args = p.parse_args()
    args.headers = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep:
            p.error(f"bad --header {h!r}, want 'Name: value'")
        args.headers[k.strip()] = v.strip()
    try:
        anyio.run(main_async, args)
    except Exception as error:
        print(f"session_driver: {type(error).__name__}: {error}", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
