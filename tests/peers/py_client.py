#!/usr/bin/env python3
"""Owns: the Python MCP SDK (mcp 2.x) test client used by Flotilla integration tests.

Usage (Streamable HTTP only):
  .venv/bin/python py_client.py --url URL [--legacy] [--header 'K: V']... [--timeout S] list-tools
  .venv/bin/python py_client.py --url URL [--legacy] [--header 'K: V']... [--timeout S] call TOOL JSON_ARGS
  .venv/bin/python py_client.py --url URL [--legacy] ... read URI | prompt NAME JSON_ARGS
  .venv/bin/python py_client.py --url URL [--legacy] ... complete REF_JSON ARGUMENT_JSON
    (REF_JSON: {"type": "ref/prompt", "name": ...} or {"type": "ref/resource", "uri": ...};
    ARGUMENT_JSON: {"name": ..., "value": ...})
  --log-level LEVEL: opt in to log messages at LEVEL and above (2026-07-28: the client's log_level
  stamped on every request; handshake mode: logging/setLevel first); every notifications/message
  received is added to the printed document as "logs": [{level, logger, data}].
  --progress-calls N (call only): make the call N times in one session with a progress callback;
  the document gets "progress": [[progress values of call 1], [... of call 2], ...].
  .venv/bin/python py_client.py --url URL --oauth [--redirect-uri URI] ... list-tools | call TOOL JSON_ARGS
--elicit-answer JSON: declare elicitation and accept every form elicitation with JSON as its
content; the document gets "asked": [the message of each elicitation, in order]. Without it
the client declares no elicitation capability.
Any mode: --repeat-after S runs the command a second time S seconds later in the same
session (same client, same tokens) and prints only the second result.
Default mode is the SDK default, Client(mode="auto"): probe `server/discover` at
2026-07-28, fall back to the initialize handshake. --legacy => Client(mode="legacy").
Prints one JSON document on stdout:
  list-tools: {"protocolVersion": ..., "tools": [{name, description, inputSchema, ...}]}
  call:       the CallToolResult (by_alias, None fields dropped), plus "protocolVersion".
  read/prompt/complete: the ReadResourceResult / GetPromptResult / CompleteResult, the same way.
A tool result with isError=true still exits 0. Any other failure: message on stderr, exit 1
(usage errors: exit 2).

--oauth: the SDK's own MCP authorization client (mcp.client.auth.OAuthClientProvider, tokens
and registration kept in memory only) does everything on the first 401: protected resource
metadata (RFC 9728), authorization server metadata (RFC 8414), dynamic client registration
(RFC 7591; public client, token_endpoint_auth_method "none", grants authorization_code +
refresh_token, redirect URI --redirect-uri, default http://127.0.0.1:33418/callback; nothing
listens there), PKCE S256 and the token request. The "browser" is whoever runs this:
  1. stdout gets exactly one line `AUTHORIZE <authorization URL>` (flushed);
  2. stdin must then get one line: the full redirect URL the browser ended at
     (`<redirect uri>?code=...&state=...[&iss=...]`); the SDK checks state and iss.
The JSON document follows as usual, with one extra member "oauth": {"client_id", "issued",
"token_type", "scope", "expires_in", "access_token", "refresh_token"}: the registered client,
the number of token responses the SDK stored (1 = the login; each refresh adds one - the SDK
refreshes by itself once expires_in has passed, e.g. with --repeat-after) and the latest
tokens (members the server left out are absent), so tests can check where the tokens show
up; "oauth" is null
when the server never answered 401 (no AUTHORIZE line then, stdin unused). Login failures
(bad state/iss, error redirect, token endpoint errors) exit 1 like any other failure.
Without --oauth nothing changes.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from urllib.parse import parse_qs, urlparse

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class MemoryTokenStorage:
    """mcp.client.auth.TokenStorage kept in this process only (a fresh client each run)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.issued = 0  # token responses stored: 1 after the login, +1 per refresh

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.issued += 1

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


async def print_authorize(url: str) -> None:
    print(f"AUTHORIZE {url}", flush=True)


async def read_redirect() -> AuthorizationCodeResult:
    # A daemon thread reads stdin so a timeout can still end the process.
    line: list[str] = []
    done = threading.Event()

    def read() -> None:
        line.append(sys.stdin.readline())
        done.set()

    threading.Thread(target=read, daemon=True).start()
    while not done.is_set():
        await anyio.sleep(0.05)
    redirect = line[0].strip()
    if not redirect:
        raise OAuthFlowError("stdin closed before the redirect URL arrived")
    query = parse_qs(urlparse(redirect).query)
    if "error" in query:
        raise OAuthFlowError(f"authorization failed: {redirect}")
    code, state, iss = (query.get(k, [None])[0] for k in ("code", "state", "iss"))
    if code is None:
        raise OAuthFlowError(f"no code in the redirect URL {redirect}")
    return AuthorizationCodeResult(code=code, state=state, iss=iss)


def oauth_provider(args: argparse.Namespace) -> tuple[OAuthClientProvider, MemoryTokenStorage]:
    storage = MemoryTokenStorage()
    metadata = OAuthClientMetadata(
        client_name="flotilla py_client",
        redirect_uris=[args.redirect_uri],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=metadata,
        storage=storage,
        redirect_handler=print_authorize,
        callback_handler=read_redirect,
    )
    return provider, storage


async def command(c: Client, args: argparse.Namespace) -> dict:
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
    if args.cmd == "read":
        res = await c.read_resource(args.uri)
        return {"protocolVersion": c.protocol_version, **dump(res)}
    if args.cmd == "prompt":
        res = await c.get_prompt(args.name, args.tool_args)
        return {"protocolVersion": c.protocol_version, **dump(res)}
    if args.cmd == "complete":
        ref = json.loads(args.ref)
        model = types.PromptReference(**ref) if ref.get("type") == "ref/prompt" else types.ResourceTemplateReference(**ref)
        res = await c.complete(model, json.loads(args.argument))
        return {"protocolVersion": c.protocol_version, **dump(res)}
    if args.progress_calls:
        per_call: list[list[float]] = []
        for _ in range(args.progress_calls):
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            res = await c.call_tool(args.tool, args.tool_args, progress_callback=on_progress)
            per_call.append(seen)
        return {"protocolVersion": c.protocol_version, **dump(res), "progress": per_call}
    res = await c.call_tool(args.tool, args.tool_args)
    return {"protocolVersion": c.protocol_version, **dump(res)}


async def run(args: argparse.Namespace) -> dict:
    transport: object = args.url
    storage = None
    if args.oauth:
        provider, storage = oauth_provider(args)
        http = create_mcp_http_client(headers=args.headers or None, auth=provider)
        transport = streamable_http_client(args.url, http_client=http)
    elif args.headers:
        transport = streamable_http_client(args.url, http_client=create_mcp_http_client(headers=args.headers))
    logs: list[dict] = []

    async def on_log(params) -> None:
        logs.append({"level": params.level, "logger": params.logger, "data": params.data})

    options = {}
    if args.log_level:
        options = {"log_level": args.log_level, "logging_callback": on_log}
    asked: list[str] = []
    if args.elicit_answer is not None:

        async def on_elicit(context, params):
            asked.append(params.message)
            return types.ElicitResult(action="accept", content=args.elicit_answer)

        options["elicitation_callback"] = on_elicit
    with anyio.fail_after(args.timeout):
        async with Client(
            transport, mode="legacy" if args.legacy else "auto", read_timeout_seconds=args.timeout, **options
        ) as c:
            if args.log_level and args.legacy:
                await c.set_logging_level(args.log_level)
            out = await command(c, args)
            if args.log_level:
                out["logs"] = logs
            if args.elicit_answer is not None:
                out["asked"] = asked
            if args.repeat_after is not None:
                await anyio.sleep(args.repeat_after)
                out = await command(c, args)
    if storage is not None:
        out["oauth"] = None  # the server never asked for authorization
        if storage.client_info is not None and storage.tokens is not None:
            out["oauth"] = {
                "client_id": storage.client_info.client_id,
                "issued": storage.issued,
                **storage.tokens.model_dump(mode="json", exclude_none=True),
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="Python MCP SDK test client (Streamable HTTP)")
    p.add_argument("--url", required=True)
    p.add_argument("--legacy", action="store_true", help="force the classic initialize handshake (mode='legacy')")
    p.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value' (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="overall timeout in seconds (default 30)")
    p.add_argument("--oauth", action="store_true", help="authorize with the SDK's OAuth client (see module doc)")
    p.add_argument(
        "--redirect-uri",
        default="http://127.0.0.1:33418/callback",
        help="redirect URI registered with --oauth (default http://127.0.0.1:33418/callback)",
    )
    p.add_argument(
        "--repeat-after",
        type=float,
        metavar="S",
        help="run the command again S seconds later in the same session; print only that result",
    )
    p.add_argument("--log-level", help="opt in to log messages at this level and above")
    p.add_argument("--elicit-answer", type=json.loads, help="accept every elicitation with this JSON content")
    p.add_argument("--progress-calls", type=int, default=0, help="call N times, recording progress")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list-tools")
    call = sub.add_parser("call")
    call.add_argument("tool")
    call.add_argument("json_args", nargs="?", default="{}")
    read = sub.add_parser("read")
    read.add_argument("uri")
    prompt = sub.add_parser("prompt")
    prompt.add_argument("name")
    prompt.add_argument("json_args", nargs="?", default="{}")
    complete = sub.add_parser("complete")
    complete.add_argument("ref")
    complete.add_argument("argument")
    args = p.parse_args()
    args.headers = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep:
            p.error(f"bad --header {h!r}, want 'Name: value'")
        args.headers[k.strip()] = v.strip()
    if args.cmd in ("call", "prompt"):
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
