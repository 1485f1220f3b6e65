#!/usr/bin/env python3
"""Owns: the client under test that the MCP conformance suite (npm
@modelcontextprotocol/conformance, `client` mode) runs for Flotilla's tests.

Usage (by the suite): .venv/bin/python conformance_client.py URL
The scenario comes in $MCP_CONFORMANCE_SCENARIO. A plain Python `mcp` 2.x SDK
session client (initialize handshake): it initializes, lists the tools and
makes the call the scenario is about; elicitation is accepted with each
field's schema default (what a form would show pre-filled). Exit 0 when the
client side went through; the suite judges the protocol.
"""
from __future__ import annotations

import os
import sys

import anyio
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

# The tool each scenario has the client call (none: initialize and list only).
SCENARIO_TOOL = {
    "tools_call": ("add_numbers", {"a": 2, "b": 3}),
    "elicitation-sep1034-client-defaults": ("test_client_elicitation_defaults", {}),
    "sse-retry": ("test_reconnection", {}),
}


async def accept_defaults(_context, params) -> types.ElicitResult:
    schema = params.requested_schema
    if not isinstance(schema, dict):
        schema = schema.model_dump(by_alias=True)
    fields = schema.get("properties", {})
    content = {k: v["default"] for k, v in fields.items() if isinstance(v, dict) and "default" in v}
    return types.ElicitResult(action="accept", content=content)


async def main(url: str, scenario: str) -> None:
    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        info = types.Implementation(name="flotilla-conformance-client", version="1")
        async with ClientSession(read, write, elicitation_callback=accept_defaults, client_info=info) as session:
            await session.initialize()
            await session.list_tools()
            if scenario in SCENARIO_TOOL:
                name, arguments = SCENARIO_TOOL[scenario]
                result = await session.call_tool(name, arguments)
                print(f"{name}: is_error={result.is_error}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: conformance_client.py URL", file=sys.stderr)
        sys.exit(2)
    # The suite names its server `localhost`; the tests keep it on 127.0.0.1
    # (tests/peers/loopback-preload.cjs), which `localhost` may not resolve to first.
    url = sys.argv[1].replace("://localhost:", "://127.0.0.1:", 1)
    anyio.run(main, url, os.environ.get("MCP_CONFORMANCE_SCENARIO", ""))
