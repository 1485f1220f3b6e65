#!/usr/bin/env python3
"""Owns: the Python MCP SDK (mcp 2.x) test server used by Flotilla integration tests.

Streamable HTTP on 127.0.0.1 (only), path /mcp; or, with --stdio, stdio (one message per line on
stdin and stdout; --port is then not needed and nothing is printed but the messages).
Usage: .venv/bin/python py_server.py --port N [--host 127.0.0.1] [--stateless] [--json-response]
         [--require-bearer ISSUER [--audience AUD] [--insecure-skip-signature]]
  --port 0 picks a free port. Readiness: once the socket is listening it prints
  exactly one line `READY http://127.0.0.1:<port>/mcp` on stdout (flushed).
  --require-bearer ISSUER: every request to /mcp must carry `Authorization: Bearer <JWT>`
  with iss == ISSUER, exp in the future, (with --audience) aud containing AUD, and a
  signature by a key of ISSUER's JWKS (found via its discovery document; keys are cached,
  an unknown kid refetches at once; skipped with --insecure-skip-signature); otherwise HTTP 401 with `WWW-Authenticate: Bearer realm="py"`.
  GET /stats then answers {"unauthorized": n, "authorized": n} (counts of /mcp requests).
Tools: add(a:int,b:int)->int (structured output {"result": a+b}), echo(text:str),
  slow(seconds:float) (sleeps, then returns "slept <s>"), fail(message:str) (ToolError -> isError=true, text=message),
  grow(name:str) (adds tool `name` at runtime and announces it: to subscriptions/listen, and on 2025 sessions
    as notifications/tools/list_changed),
  auth_header() (returns the Authorization header received, or <none>),
  trace_context() (returns {"header": <traceparent header>, "meta": <_meta traceparent>} as JSON),
  chatty() (logs one debug, one info and one warning message through the SDK's Context, then returns "logged"),
  ask() (asks the client for {"name": str} by form elicitation; returns "hello <name>", or "<action>" when not accepted).
  ask_round_trip() (the 2026-07-28 way: answers input_required with one form elicitation under key
    "name" and requestState "round-1"; on the retry carrying that state and an accepted answer returns
    "hello <name> (state round-1)"; declined or cancelled: "<action>").
  roots_changes() (how many notifications/roots/list_changed this server has received, as text).
  --logging: also answers logging/setLevel (so it announces the logging capability) and has the tool
    log_level() (the level last set, or "unset").
  --modern-only: `initialize` is answered with a JSON-RPC error (-32600), as a server that speaks
    only 2026-07-28 answers it; everything else is served as usual.
Resource: py://info (text/plain). Prompt: greet(name).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
import urllib.request

import anyio
import uvicorn
from pydantic import BaseModel
import mcp_types as types
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
    # 2026-07-28 listeners hear it through subscriptions/listen; sessions of
    # the handshake revisions through notifications/tools/list_changed.
    await ctx.notify_tools_changed()
    if (ctx.protocol_version or "") < "2026-07-28":
        await ctx.session.send_tool_list_changed()
    return f"added {name}"


@mcp.tool(description="Return the Authorization header this server received (for credential tests).")
def auth_header(ctx: Context) -> str:
    headers = ctx.headers or {}
    return headers.get("authorization", "<none>")


@mcp.tool(description="Return the W3C trace context this request carried, as JSON: the traceparent header and the _meta traceparent.")
def trace_context(ctx: Context) -> str:
    headers = ctx.headers or {}
    meta = ctx.request_context.meta or {}
    return json.dumps({"header": headers.get("traceparent"), "meta": meta.get("traceparent")})


@mcp.tool(description="Log a debug, an info and a warning message, then return.")
async def chatty(ctx: Context) -> str:
    await ctx.debug("chatty debug", logger_name="chatty")
    await ctx.info("chatty info", logger_name="chatty")
    await ctx.warning("chatty warning", logger_name="chatty")
    return "logged"


class Name(BaseModel):
    name: str


@mcp.tool(description="Ask the user for a name (form elicitation), then greet them.")
async def ask(ctx: Context) -> str:
    answer = await ctx.elicit("What is your name?", Name)
    if answer.action == "accept":
        return f"hello {answer.data.name}"
    return answer.action


@mcp.tool(description="Ask the user for a name in one 2026-07-28 round trip, then greet them.")
async def ask_round_trip(ctx: Context) -> str | types.InputRequiredResult:
    answer = (ctx.input_responses or {}).get("name")
    if answer is None or ctx.request_state != "round-1":
        question = types.ElicitRequest(
            params=types.ElicitRequestFormParams(
                message="What is your name?",
                requested_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            )
        )
        return types.InputRequiredResult(input_requests={"name": question}, request_state="round-1")
    if answer.action != "accept":
        return answer.action
    return f"hello {answer.content['name']} (state {ctx.request_state})"


class ModernOnly:
    """ASGI middleware for --modern-only: refuses the initialize handshake."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "initialize":
            error = {"jsonrpc": "2.0", "id": request.get("id"),
                     "error": {"code": -32600, "message": "this server speaks only MCP 2026-07-28"}}
            await BearerGate._respond(send, 400, error)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


ROOTS_CHANGES = 0


async def _on_roots_changed(ctx, params) -> None:
    global ROOTS_CHANGES
    ROOTS_CHANGES += 1


mcp._lowlevel_server.add_notification_handler(
    "notifications/roots/list_changed", types.NotificationParams, _on_roots_changed
)


@mcp.tool(description="How many notifications/roots/list_changed this server has received.")
def roots_changes() -> str:
    return str(ROOTS_CHANGES)


LOG_LEVEL = "unset"


async def _on_set_level(ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    global LOG_LEVEL
    LOG_LEVEL = params.level
    return types.EmptyResult()


def log_level() -> str:
    return LOG_LEVEL


@mcp.resource("py://info", name="info", description="Static info about this peer.", mime_type="text/plain")
def info() -> str:
    return "flotilla python mcp peer"


@mcp.prompt(description="Greet someone by name.")
def greet(name: str) -> str:
    return f"Hello, {name}!"


class BearerGate:
    """ASGI middleware for --require-bearer: guards /mcp, serves GET /stats."""

    def __init__(self, app, issuer: str, audience: str | None, verify_signature: bool) -> None:
        self.app = app
        self.issuer = issuer
        self.audience = audience
        self.verify_signature = verify_signature
        self.counts = {"unauthorized": 0, "authorized": 0}
        self._jwks_client = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/stats" and scope["method"] == "GET":
            await self._respond(send, 200, self.counts)
            return
        if path == "/mcp" or path.startswith("/mcp/"):
            auth = ""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    auth = value.decode("latin-1")
            problem = await self._check(auth)
            if problem is not None:
                self.counts["unauthorized"] += 1
                print(f"py_server: 401 {scope['method']} {path}: {problem}", file=sys.stderr, flush=True)
                await self._respond(
                    send,
                    401,
                    {"error": "invalid_token", "error_description": problem},
                    [(b"www-authenticate", b'Bearer realm="py"')],
                )
                return
            self.counts["authorized"] += 1
        await self.app(scope, receive, send)

    async def _check(self, auth: str) -> str | None:
        """None when the header carries an acceptable token, else why not."""
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "missing bearer token"
        parts = token.split(".")
        if len(parts) != 3:
            return "not a JWT"
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
        except (binascii.Error, ValueError):
            return "undecodable JWT payload"
        if not isinstance(claims, dict):
            return "JWT payload is not an object"
        if claims.get("iss") != self.issuer:
            return f"iss {claims.get('iss')!r} is not {self.issuer!r}"
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return "token expired (or no exp)"
        if self.audience is not None:
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if self.audience not in auds:
                return f"aud {aud!r} does not contain {self.audience!r}"
        if self.verify_signature:
            try:
                await anyio.to_thread.run_sync(self._verify, token)
            except Exception as err:  # noqa: BLE001 - any failure means 401
                return f"signature: {type(err).__name__}: {err}"
        return None

    def _verify(self, token: str) -> None:
        import jwt  # PyJWT (with cryptography), pinned in requirements.txt

        if self._jwks_client is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            with urllib.request.urlopen(url, timeout=5) as res:
                jwks_uri = json.load(res)["jwks_uri"]
            # Keys are cached like a production resource server does, so an issuer
            # outage does not reject tokens signed with keys already seen; an
            # unknown kid refetches the JWKS at once (cooldown 0), so a restarted
            # issuer's new key is accepted immediately.
            self._jwks_client = jwt.PyJWKClient(
                jwks_uri, cache_keys=True, cache_jwk_set=True, lifespan=300, timeout=5, cooldown_duration=0
            )
        key = self._jwks_client.get_signing_key_from_jwt(token)
        jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "PS256", "ES256"],
            issuer=self.issuer,
            options={"verify_aud": False, "require": ["exp", "iss"]},
        )

    @staticmethod
    async def _respond(send, status: int, body: dict, headers: list | None = None) -> None:
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int)
    p.add_argument("--stdio", action="store_true", help="serve stdio instead of HTTP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--stateless", action="store_true", help="stateless Streamable HTTP (no Mcp-Session-Id)")
    p.add_argument("--modern-only", action="store_true", help="refuse the initialize handshake (2026-07-28 only)")
    p.add_argument("--json-response", action="store_true", help="answer POSTs with application/json, not SSE")
    p.add_argument("--require-bearer", metavar="ISSUER", help="401 for /mcp requests without a valid JWT from ISSUER")
    p.add_argument("--audience", metavar="AUD", help="with --require-bearer: the JWT aud must contain AUD")
    p.add_argument(
        "--insecure-skip-signature",
        action="store_true",
        help="with --require-bearer: check claims only, not the signature",
    )
    p.add_argument("--logging", action="store_true", help="answer logging/setLevel; adds the log_level tool")
    args = p.parse_args()
    if args.logging:
        mcp._lowlevel_server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _on_set_level)
        mcp.add_tool(log_level, name="log_level", description="The log level last set by logging/setLevel.")
    if args.stdio:
        await mcp.run_stdio_async()
        return
    if args.port is None:
        p.error("--port is required (or --stdio)")
    if (args.audience or args.insecure_skip_signature) and not args.require_bearer:
        p.error("--audience and --insecure-skip-signature need --require-bearer")

    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.json_response,
        host=args.host,
    )
    if args.modern_only:
        app = ModernOnly(app)
    if args.require_bearer:
        app = BearerGate(app, args.require_bearer, args.audience, not args.insecure_skip_signature)
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
