"""A scripted stand-in for the Anthropic Messages API, for driving the real Claude Code CLI.

Stdlib only. Serves HTTP/1.1 on 127.0.0.1:<free port> from a background thread::

    from tests.scripted_api import ScriptedAPI, reply

    with ScriptedAPI([reply.text("hello"),
                      reply.tool_use("Bash", {"command": "echo hi"}),
                      reply.text("done")]) as api:
        subprocess.run([claude, "-p", ...], env=api.env(), ...)
        api.requests        # every request, in arrival order (Request objects)
        api.turn_requests   # the ones that consumed a scripted turn

Each "main" request (a ``POST /v1/messages`` of the agent loop) consumes the next scripted
``Reply``: streamed as server-sent events when the request says ``"stream": true`` (exactly the
event sequence of the real API: message_start, content_block_start/delta/stop, message_delta,
message_stop), or as one JSON Message otherwise. A ``reply.error(...)`` answers with an HTTP error
status and an Anthropic-style error body instead.

Requests that are not part of the agent loop never consume a turn: ``HEAD`` probes (2.1.197:
``HEAD /``; 2.1.332 without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: ``HEAD /api/hello``),
``/v1/messages/count_tokens``, ``GET /v1/models``, and "side" calls to /v1/messages (session
title, /compact summary, auto-mode classifier, quota probe; see ``side_kind``). Side calls get
``side_reply`` (default: ``default_side_reply``, an answer in the shape each one expects).
What the CLI really sends is documented in tests/claude_notes.md.

When the script runs out, further main requests get an HTTP 400 ``invalid_request_error`` and
are listed in ``api.unscripted`` (2.1.332 retries a 400 up to 5 times with fewer betas, so
several may pile up); ``api.assert_script_done()`` checks that every turn was used and nothing
unscripted was asked. ``Reply.repeat`` lets one reply answer several consecutive requests
(``repeat=None``: all the rest), e.g. an error the CLI retries.

Usage limits: ``reply.usage_limit(resets_in)`` answers 429 with the unified rate-limit
headers of a subscription (``unified_headers``), its reset computed when it is answered;
Claude Code reports it (a ``rate_limit_event`` with status "rejected") only when logged in
with OAuth, which ``api.oauth_env()`` gives it. ``Reply.headers_at`` makes any reply's
headers at answer time.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["INITIALIZE", "INSTALL_HINT", "OAUTH_TOKEN", "QUIET_ENV", "Reply", "Request", "Run", "ScriptedAPI", "allow", "clean_env",
           "default_side_reply", "deny", "find_claude", "is_side_request", "reply", "run_claude", "side_kind",
           "unified_headers", "user_message"]

DEFAULT_MODEL = "claude-sonnet-4-5"
OAUTH_TOKEN = "sk-ant-oat01-scripted"  # what `oauth_env()` logs the CLI in with

# Environment variables that make the CLI talk only to ScriptedAPI and keep it quiet and fast.
QUIET_ENV: dict[str, str] = {
    "ANTHROPIC_API_KEY": "test-key",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry / updates / feature flags
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_UPDATES": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_COST_WARNINGS": "1",
    "DISABLE_GROWTHBOOK": "1",
    "DISABLE_INSTALLATION_CHECKS": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",  # an error status fails the turn at once (default: 10 retries with backoff)
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    "CLAUDE_CODE_IDE_SKIP_AUTO_INSTALL": "1",
}

# Inherited variables that would send the CLI elsewhere or change its behaviour (e.g. when the
# tests themselves run inside a Claude Code session).
_SCRUB_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_", "CLAUDECODE", "CLAUDE_CONFIG_DIR", "CLAUDE_AGENT_SDK",
                   "OTEL_", "AWS_BEARER_TOKEN_BEDROCK", "VERTEX_", "CLOUD_ML_REGION")
_SCRUB_EXACT = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                "NO_PROXY", "no_proxy", "MCP_TIMEOUT", "MAX_THINKING_TOKENS", "DISABLE_PROMPT_CACHING"}


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without variables that steer the Claude CLI."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB_EXACT}


# --------------------------------------------------------------------------------------------
# Replies


@dataclass
class Reply:
    """One scripted answer to one main /v1/messages request."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = "end_turn"
    status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    model: str | None = None  # default: echo the request's model
    delay: float = 0.0  # seconds to wait before answering
    event_delay: float = 0.0  # seconds between SSE events (streaming only)
    gate: threading.Event | None = None  # wait for this event before answering (max 60 s)
    stream_error: dict[str, Any] | None = None  # send this `error` event after the first events
    repeat: int | None = 1  # answer this many consecutive turn requests (None: every one from here on)
    headers_at: Callable[[], Mapping[str, str]] | None = None  # more headers, made when it is answered

    def all_headers(self) -> dict[str, str]:
        return {**self.headers, **(self.headers_at() if self.headers_at is not None else {})}

    @property
    def is_error(self) -> bool:
        return self.status >= 400


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


class reply:  # noqa: N801 - a namespace of constructors, used as `reply.text(...)`
    """Constructors for ``Reply`` objects and content blocks."""

    @staticmethod
    def text(text: str, *, stop_reason: str = "end_turn", **kw: Any) -> Reply:
        return Reply(content=[{"type": "text", "text": text}], stop_reason=stop_reason, **kw)

    @staticmethod
    def tool_use(name: str, input: Mapping[str, Any], *, id: str | None = None,  # noqa: A002
                 text: str | None = None, **kw: Any) -> Reply:
        """One tool_use block (optionally preceded by a text block); stop_reason "tool_use"."""
        blocks = [] if text is None else [reply.text_block(text)]
        blocks.append(reply.tool_use_block(name, input, id=id))
        return Reply(content=blocks, stop_reason="tool_use", **kw)

    @staticmethod
    def tool_uses(*calls: tuple[str, Mapping[str, Any]] | dict[str, Any], text: str | None = None,
                  **kw: Any) -> Reply:
        """Several parallel tool_use blocks: ``reply.tool_uses(("Bash", {...}), ("Read", {...}))``."""
        blocks = [] if text is None else [reply.text_block(text)]
        for c in calls:
            blocks.append(c if isinstance(c, dict) else reply.tool_use_block(c[0], c[1]))
        return Reply(content=blocks, stop_reason="tool_use", **kw)

    @staticmethod
    def blocks(*blocks: dict[str, Any], stop_reason: str = "end_turn", **kw: Any) -> Reply:
        return Reply(content=list(blocks), stop_reason=stop_reason, **kw)

    @staticmethod
    def text_block(text: str) -> dict[str, Any]:
        return {"type": "text", "text": text}

    @staticmethod
    def tool_use_block(name: str, input: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]:  # noqa: A002
        return {"type": "tool_use", "id": id or _tool_id(), "name": name, "input": dict(input)}

    @staticmethod
    def thinking_block(thinking: str, signature: str = "sig") -> dict[str, Any]:
        return {"type": "thinking", "thinking": thinking, "signature": signature}

    @staticmethod
    def error(status: int = 500, error_type: str | None = None, message: str | None = None, *,
              headers: Mapping[str, str] | None = None, **kw: Any) -> Reply:
        """An HTTP error with an Anthropic-style body ``{"type":"error","error":{...}}``."""
        default_types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 529: "overloaded_error"}
        error_type = error_type or default_types.get(status, "api_error")
        return Reply(status=status, error_type=error_type, error_message=message or f"scripted {error_type}",
                     headers=dict(headers or {}), stop_reason=None, **kw)

    @staticmethod
    def usage_limit(resets_in: float = 3.0, *, claim: str = "five_hour", retry_after: bool = True,
                    message: str = "This request would exceed your account's rate limit. Please try again later.",
                    **kw: Any) -> Reply:
        """HTTP 429 of a subscription's usage limit: ``rate_limit_error`` with the unified
        rate-limit headers (status ``rejected``, its reset a whole epoch second at least
        ``resets_in`` seconds after it is answered, as the API sends it). Claude Code reports
        it as a usage limit only when it is logged in with OAuth (``ScriptedAPI.oauth_env``);
        with an API key it reads these headers not at all."""
        def headers() -> dict[str, str]:
            reset = math.ceil(time.time() + resets_in)
            extra = {"retry-after": str(max(1, math.ceil(resets_in)))} if retry_after else {}
            return {**unified_headers("rejected", reset, claim=claim), **extra}
        return reply.error(429, "rate_limit_error", message, headers_at=headers, **kw)

    @staticmethod
    def overloaded(message: str = "Overloaded", **kw: Any) -> Reply:
        return reply.error(529, "overloaded_error", message, **kw)

    @staticmethod
    def mid_stream_error(text: str = "partial", error_type: str = "overloaded_error",
                         message: str = "Overloaded", **kw: Any) -> Reply:
        """HTTP 200, some streamed text, then an SSE ``error`` event (as the real API does)."""
        return Reply(content=[{"type": "text", "text": text}], stop_reason=None,
                     stream_error={"type": "error", "error": {"type": error_type, "message": message}}, **kw)


def unified_headers(status: str, reset: int, *, claim: str = "five_hour", utilization: float | None = None) -> dict[str, str]:
    """The ``anthropic-ratelimit-unified-*`` headers a subscription's answers carry: ``status``
    "allowed", "allowed_warning" or "rejected", the window's ``reset`` (epoch seconds), which
    window it is (``claim``: five_hour, seven_day, ...) and how much of it is used. Claude
    Code turns them into ``rate_limit_event`` lines (OAuth only); it computes a warning
    itself from the utilization and the time left in the window."""
    abbrev = {"five_hour": "5h", "seven_day": "7d"}.get(claim, claim)
    headers = {"anthropic-ratelimit-unified-status": status, "anthropic-ratelimit-unified-reset": str(reset),
               "anthropic-ratelimit-unified-representative-claim": claim,
               f"anthropic-ratelimit-unified-{abbrev}-status": status, f"anthropic-ratelimit-unified-{abbrev}-reset": str(reset)}
    if utilization is not None:
        headers[f"anthropic-ratelimit-unified-{abbrev}-utilization"] = str(utilization)
    return headers


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """One request the CLI made, as received."""

    method: str
    path: str  # with the query string, e.g. "/v1/messages?beta=true"
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, raw text, or None
    kind: str  # "turn" | "side" | "unscripted" | "probe" | "count_tokens" | "models" | "other"
    turn: int | None = None  # index of the scripted reply it consumed
    time: float = 0.0

    @property
    def side_kind(self) -> str | None:
        """For kind == "side": "title" | "compact" | "classifier" | "quota" | "side" (see ``side_kind()``)."""
        return side_kind(self.body) if self.kind == "side" else None

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or []) if isinstance(self.body, dict) else []

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.tools]

    @property
    def system_text(self) -> str:
        """The ``system`` field flattened to text (it may be a string or a list of blocks)."""
        system = self.body.get("system") if isinstance(self.body, dict) else None
        return _flatten_text(system)

    def text_of(self, message: Mapping[str, Any]) -> str:
        return _flatten_text(message.get("content"))

    @property
    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return self.text_of(m)
        return ""

    def content_blocks(self, type_: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            if role and m.get("role") != role:
                continue
            c = m.get("content")
            if isinstance(c, list):
                out.extend(b for b in c if isinstance(b, dict) and (type_ is None or b.get("type") == type_))
            elif isinstance(c, str) and type_ in (None, "text"):
                out.append({"type": "text", "text": c})
        return out

    def tool_results(self) -> list[dict[str, Any]]:
        """All tool_result blocks in the conversation sent with this request."""
        return self.content_blocks("tool_result", role="user")

    def tool_result_for(self, tool_use_id: str) -> dict[str, Any] | None:
        for b in self.tool_results():
            if b.get("tool_use_id") == tool_use_id:
                return b
        return None

    def conversation_text(self) -> str:
        return "\n".join(self.text_of(m) for m in self.messages)


def _flatten_text(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        parts = []
        for b in x:
            if isinstance(b, str):
                parts.append(b)
            elif isinstance(b, dict):
                if b.get("type") == "tool_result":
                    parts.append(_flatten_text(b.get("content")))
                elif "text" in b:
                    parts.append(str(b["text"]))
                elif b.get("type") == "tool_use":
                    parts.append(json.dumps(b.get("input")))
        return "\n".join(parts)
    if isinstance(x, dict):
        return _flatten_text([x])
    return str(x)


# Phrases of the agent's own system prompt (side calls replace it with a task-specific one).
_AGENT_MARKERS = ("helps users with software engineering tasks", "interactive CLI tool",
                  "You are an interactive agent", "You are an agent working with the user",
                  "You are Claude Code, Anthropic's official CLI")
# The last user message of a compaction request (/compact, or automatic near a full context):
# it reuses the agent's system prompt and tools, so it is recognised by this instruction.
_COMPACT_MARKERS = ("create a detailed summary of the conversation", "Respond with TEXT ONLY")


def side_kind(body: Any) -> str | None:
    """What kind of side call a /v1/messages body is, or None for an agent-loop turn.

    * "quota":   ``max_tokens == 1`` (a quota/credential probe)
    * "compact": the conversation-summary request of /compact or auto-compaction
    * "classifier": the auto-mode permission classifier (``--permission-mode auto``), which
                 expects ``<block>no`` / ``<block>yes</block><reason>...`` and stops at ``</block>``
    * "title":   a JSON-schema'd ``{"title": ...}`` request (session title, sent with the
                 second prompt unless CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1)
    * "side":    any other call without tools whose system prompt is not the agent's
    """
    if not isinstance(body, dict):
        return "side"
    if body.get("max_tokens") == 1:
        return "quota"
    if "</block>" in (body.get("stop_sequences") or []):
        return "classifier"
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
        last = _flatten_text(messages[-1].get("content"))
        if all(m in last for m in _COMPACT_MARKERS):
            return "compact"
    fmt = (body.get("output_config") or {}).get("format") or {}
    props = ((fmt.get("schema") or {}).get("properties") or {}) if isinstance(fmt, dict) else {}
    if "title" in props:
        return "title"
    if body.get("tools") or "context_management" in body:  # the agent loop sends both (or, with
        return None  # --tools "", context_management alone); side calls so far send neither
    system = _flatten_text(body.get("system"))
    if any(m in system for m in _AGENT_MARKERS):
        return None
    return "side"


def is_side_request(body: Any) -> bool:
    """Default classifier: True for /v1/messages calls outside the agent loop (see side_kind)."""
    return side_kind(body) is not None


def default_side_reply(request: Request) -> Reply:
    """A generic answer to a side call that fits what it asks for."""
    body = request.body if isinstance(request.body, dict) else {}
    kind = side_kind(body)
    if kind == "classifier":  # allow the action
        return reply.text("<block>no", stop_reason="stop_sequence")
    if kind == "compact":
        return reply.text("<analysis>Scripted.</analysis>\n<summary>Scripted conversation summary.</summary>")
    fmt = (body.get("output_config") or {}).get("format") or {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return reply.text(json.dumps(_sample_for_schema(fmt.get("schema") or {})))
    return reply.text("Scripted side reply.")


def _sample_for_schema(schema: Mapping[str, Any]) -> Any:
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if t == "object":
        return {k: _sample_for_schema(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return []
    if t in ("integer", "number"):
        return 0
    if t == "boolean":
        return False
    return "Scripted"


# --------------------------------------------------------------------------------------------
# Server


class ScriptedAPI:
    """Scripted Messages API on 127.0.0.1. Use as a context manager (or start()/close())."""

    def __init__(self, turns: Iterable[Reply] = (), *,
                 side_reply: Reply | Callable[[Request], Reply] | None = None,
                 classify: Callable[[Any], bool] = is_side_request,
                 log_path: str | os.PathLike[str] | None = None,
                 home: str | os.PathLike[str] | None = None) -> None:
        self.turns: list[Reply] = list(turns)
        self.side_reply: Reply | Callable[[Request], Reply] = side_reply or default_side_reply
        self.classify = classify
        self.requests: list[Request] = []
        self._next = 0  # index of the next scripted reply
        self._uses = 0  # how often turns[_next] has answered (for Reply.repeat)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._log_path = os.fspath(log_path) if log_path else None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._own_home = home is None
        self.home = os.fspath(home) if home else ""
        self._msg_ids = itertools.count(1)

    # ---- lifecycle
    def start(self) -> ScriptedAPI:
        if self._own_home:
            self.home = tempfile.mkdtemp(prefix="scripted-api-home-")
        api = self

        class Handler(_Handler):
            owner = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ScriptedAPI", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        for r in self.turns:  # release handlers waiting on a gate, so shutdown is quick
            if r.gate is not None:
                r.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_home and self.home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> ScriptedAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- addresses and environment
    @property
    def port(self) -> int:
        assert self._server is not None, "ScriptedAPI not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env_vars(self, **overrides: str) -> dict[str, str]:
        """Only the variables ScriptedAPI sets (base URL, key, quiet flags, temp HOME)."""
        v = dict(QUIET_ENV)
        v["ANTHROPIC_BASE_URL"] = self.base_url
        v["HOME"] = self.home
        v["CLAUDE_CONFIG_DIR"] = os.path.join(self.home, ".claude")
        v.update(overrides)
        return v

    def env(self, base: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
        """A complete environment for the CLI: ``base`` (default os.environ) scrubbed of
        ANTHROPIC_*/CLAUDE_CODE_*/proxy variables, plus ``env_vars()``."""
        e = clean_env(base)
        e.update(self.env_vars(**overrides))
        return e

    def oauth_env(self, base: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
        """``env()`` as for a subscriber logged in with OAuth (``CLAUDE_CODE_OAUTH_TOKEN``, no
        API key): the CLI then sends ``authorization: Bearer …`` and reads the unified
        rate-limit headers into ``rate_limit_event`` lines (see ``reply.usage_limit``)."""
        e = self.env(base, **overrides)
        e.pop("ANTHROPIC_API_KEY", None)
        e.setdefault("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN)
        return e

    # ---- script
    def add(self, *turns: Reply) -> None:
        with self._lock:
            self.turns.extend(turns)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self.turns) - self._next

    @property
    def turn_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == "turn"]

    @property
    def side_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == "side"]

    @property
    def unscripted(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == "unscripted"]

    def messages_requests(self) -> list[Request]:
        """Every POST /v1/messages (turn, side and unscripted)."""
        with self._lock:
            return [r for r in self.requests if r.kind in ("turn", "side", "unscripted")]

    def wait_for_turns(self, n: int, timeout: float = 30.0) -> list[Request]:
        """Block until ``n`` turn requests have arrived; returns the turn requests."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(r.kind == "turn" for r in self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sum(r.kind == "turn" for r in self.requests)
                    raise TimeoutError(f"only {got} of {n} turn requests arrived within {timeout}s")
                self._cond.wait(left)
            return [r for r in self.requests if r.kind == "turn"]

    def assert_script_done(self) -> None:
        with self._lock:
            used, total = self._next, len(self.turns)
            if used < total and self.turns[used].repeat is None and self._uses:
                used += 1  # a repeat-forever reply that has answered counts as used
        assert used >= total, f"only {used} of {total} scripted turns were requested"
        assert not self.unscripted, f"{len(self.unscripted)} request(s) beyond the script"

    # ---- request handling (called from handler threads)
    def _record(self, req: Request) -> None:
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        if self._log_path:
            with open(self._log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"t": req.time, "kind": req.kind, "turn": req.turn, "method": req.method,
                                    "path": req.path, "headers": req.headers, "body": req.body}) + "\n")

    def _take_turn(self, body: Any) -> tuple[str, Reply | None, int | None]:
        """(kind, reply, turn index); reply None means "ask side_reply"."""
        if self.classify(body):
            return "side", None, None
        with self._lock:
            if self._next < len(self.turns):
                i = self._next
                rep = self.turns[i]
                self._uses += 1
                if rep.repeat is not None and self._uses >= rep.repeat:
                    self._next += 1
                    self._uses = 0
                return "turn", rep, i
        return "unscripted", reply.error(400, "invalid_request_error", "ScriptedAPI: script exhausted"), None

    def _side_reply_for(self, req: Request) -> Reply:
        return self.side_reply if isinstance(self.side_reply, Reply) else self.side_reply(req)

    def _next_msg_id(self) -> str:
        return f"msg_scripted_{next(self._msg_ids):04d}"


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedAPI
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedAPI/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError):  # the CLI hung up (e.g. aborted)
            pass

    # -- plumbing
    def _read_body(self) -> tuple[bytes, Any]:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return raw, None
        try:
            return raw, json.loads(raw)
        except ValueError:
            return raw, raw.decode("utf-8", "replace")

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_scripted_" + uuid.uuid4().hex[:12])
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _record(self, kind: str, body: Any, turn: int | None = None) -> Request:
        req = Request(method=self.command, path=self.path,
                      headers={k.lower(): v for k, v in self.headers.items()},
                      body=body, kind=kind, turn=turn, time=time.time())
        self.owner._record(req)
        return req

    # -- verbs
    def do_HEAD(self) -> None:
        self._read_body()
        self._record("probe", None)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route.rstrip("/") == "/v1/models":
            self._record("models", None)
            models = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                      for m in ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5")]
            self._send_json(200, {"data": models, "has_more": False, "first_id": models[0]["id"],
                                  "last_id": models[-1]["id"]})
            return
        if route == "/":
            self._record("probe", None)
            self._send_json(200, {"ok": True})
            return
        self._record("other", None)
        self._send_json(404, _error_body("not_found_error", f"ScriptedAPI: no route {route}"))

    def do_POST(self) -> None:
        _raw, body = self._read_body()
        route = self.path.split("?", 1)[0]
        if route == "/v1/messages/count_tokens":
            self._record("count_tokens", body)
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if route != "/v1/messages":
            self._record("other", body)
            self._send_json(404, _error_body("not_found_error", f"ScriptedAPI: no route {route}"))
            return
        kind, rep, turn = self.owner._take_turn(body)
        req = self._record(kind, body, turn)
        if rep is None:
            rep = self.owner._side_reply_for(req)
        self._answer(rep, body if isinstance(body, dict) else {})

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815 - anything else: recorded, 404

    # -- answering /v1/messages
    def _answer(self, rep: Reply, body: dict[str, Any]) -> None:
        if rep.gate is not None:
            rep.gate.wait(60)
        if rep.delay:
            time.sleep(rep.delay)
        headers = rep.all_headers()
        if rep.is_error:
            self._send_json(rep.status, _error_body(rep.error_type or "api_error", rep.error_message or "error"),
                            headers)
            return
        msg = self._message(rep, body)
        if not body.get("stream"):
            self._send_json(rep.status, msg, headers)
            return
        self.send_response(rep.status)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_scripted_" + uuid.uuid4().hex[:12])
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, (event, data) in enumerate(_sse_events(msg, rep)):
            if i and rep.event_delay:
                time.sleep(rep.event_delay)
            chunk = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _message(self, rep: Reply, body: dict[str, Any]) -> dict[str, Any]:
        content = copy.deepcopy(rep.content)
        usage = {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": 20, "service_tier": "standard"}  # fixed, so costs are predictable
        usage.update(rep.usage or {})
        return {"id": self.owner._next_msg_id(), "type": "message", "role": "assistant",
                "model": rep.model or body.get("model") or DEFAULT_MODEL, "content": content,
                "stop_reason": rep.stop_reason, "stop_sequence": None, "usage": usage}


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": "req_scripted_" + uuid.uuid4().hex[:12]}


def _chunks(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)] or [""]


def _sse_events(msg: dict[str, Any], rep: Reply) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API streaming event sequence for a complete message."""
    usage = msg["usage"]
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
    start_usage["output_tokens"] = 1
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start",
                           "message": {**msg, "content": [], "stop_reason": None, "stop_sequence": None,
                                       "usage": start_usage}}),
    ]
    for index, block in enumerate(msg["content"]):
        btype = block.get("type")
        if btype == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}}))
            for piece in _chunks(block["text"], 40):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "text_delta", "text": piece}}))
        elif btype in ("tool_use", "server_tool_use"):
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": btype, "id": block["id"],
                                                                     "name": block["name"], "input": {}}}))
            for piece in _chunks(json.dumps(block.get("input", {})), 40):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "input_json_delta",
                                                                 "partial_json": piece}}))
        elif btype == "thinking":
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "thinking", "thinking": "",
                                                                     "signature": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "thinking_delta",
                                                             "thinking": block.get("thinking", "")}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "signature_delta",
                                                             "signature": block.get("signature", "sig")}}))
        else:  # anything else is sent whole in content_block_start
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": block}))
        if rep.stream_error is not None:
            events.append(("error", rep.stream_error))
            return events
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    if rep.stream_error is not None:
        events.append(("error", rep.stream_error))
        return events
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------------------------
# Driving the real CLI (stream-json in and out, permission prompts over stdio)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where .ci/run installs each tested Claude Code: the oldest supported and the current release.
CLAUDE_PREFIXES = {"old": os.path.join(REPO_ROOT, ".local", "npm"), "current": os.path.join(REPO_ROOT, ".local", "npm-claude-current")}
CLAUDE_VERSIONS = {"old": "2.1.197", "current": "2.1.332"}
LOCAL_CLAUDE = os.path.join(CLAUDE_PREFIXES["old"], "node_modules", ".bin", "claude")


def _native(path: str) -> bool:
    """An executable that is the real CLI, not the 500-byte shell stub that the npm package
    leaves in bin/claude.exe when its postinstall did not run (e.g. --ignore-scripts)."""
    try:
        return os.access(path, os.X_OK) and os.path.getsize(os.path.realpath(path)) > 1_000_000
    except OSError:
        return False


def find_claude(version: str | None = None) -> str | None:
    """The Claude Code CLI of `version` ("old" or "current"; default $ORCHESTRA_TEST_CLAUDE,
    else "old"): $ORCHESTRA_CLAUDE when no version is asked for, else its prefix's
    node_modules/.bin/claude (or, if that is only the stub, the binary of the platform
    package @anthropic-ai/claude-code-<os>-<arch>[-musl]), else (for "old") `claude` on PATH."""
    env = os.environ.get("ORCHESTRA_CLAUDE")
    if env and version is None:
        return env if os.access(env, os.X_OK) else None
    version = version or os.environ.get("ORCHESTRA_TEST_CLAUDE") or "old"
    prefix = CLAUDE_PREFIXES[version]
    local = os.path.join(prefix, "node_modules", ".bin", "claude")
    if _native(local):
        return local
    scope = os.path.join(prefix, "node_modules", "@anthropic-ai")
    try:
        platform_pkgs = sorted(d for d in os.listdir(scope) if d.startswith("claude-code-"))
    except OSError:
        platform_pkgs = []
    for d in platform_pkgs:
        candidate = os.path.join(scope, d, "claude")
        if _native(candidate):
            return candidate
    return shutil.which("claude") if version == "old" else None


INSTALL_HINT = ("Claude Code CLI not found. Install it with\n"
                "    npm install --prefix .local/npm @anthropic-ai/claude-code@2.1.197\n"
                "    npm install --prefix .local/npm-claude-current @anthropic-ai/claude-code@2.1.332\n"
                "(from the repository root; .ci/run does both), or point $ORCHESTRA_CLAUDE at a `claude` binary.")

PermissionHandler = Callable[[dict[str, Any]], dict[str, Any]]


def allow(updated_input: Mapping[str, Any] | None = None) -> PermissionHandler:
    """A can_use_tool handler that allows every tool (with its input, or ``updated_input``)."""
    def handler(request: dict[str, Any]) -> dict[str, Any]:
        return {"behavior": "allow", "updatedInput": dict(updated_input or request.get("input") or {})}
    return handler


def deny(message: str = "denied by test") -> PermissionHandler:
    def handler(request: dict[str, Any]) -> dict[str, Any]:
        return {"behavior": "deny", "message": message}
    return handler


@dataclass
class Run:
    """What one CLI process did."""

    argv: list[str]
    messages: list[dict[str, Any]]  # every stdout JSON line, in order
    stdout_other: list[str]  # stdout lines that were not JSON
    stderr: str
    returncode: int | None
    sent: list[dict[str, Any]]  # every line written to its stdin
    duration: float

    def of_type(self, type_: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages
                if m.get("type") == type_ and (subtype is None or m.get("subtype") == subtype)]

    @property
    def result(self) -> dict[str, Any]:
        results = self.of_type("result")
        assert results, f"no result message; stderr={self.stderr!r} stdout={self.messages!r}"
        return results[-1]

    @property
    def init(self) -> dict[str, Any]:
        return self.of_type("system", "init")[0]

    @property
    def session_id(self) -> str:
        return str(self.result["session_id"])

    def permission_requests(self) -> list[dict[str, Any]]:
        return [m for m in self.of_type("control_request") if m["request"].get("subtype") == "can_use_tool"]

    def tool_results(self) -> list[dict[str, Any]]:
        """tool_result blocks from the `user` messages the CLI printed."""
        out = []
        for m in self.of_type("user"):
            content = m.get("message", {}).get("content")
            if isinstance(content, list):
                out.extend(b for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
        return out


def user_message(text: str | list[dict[str, Any]], session_id: str = "") -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": text},
            "parent_tool_use_id": None, "session_id": session_id}


INITIALIZE = {"type": "control_request", "request_id": "init1", "request": {"subtype": "initialize", "hooks": None}}


def run_claude(api: ScriptedAPI, prompts: str | list[str] | None, *, args: Iterable[str] = (),
               cwd: str | os.PathLike[str] | None = None, on_permission: PermissionHandler | None = None,
               initialize: bool = True, timeout: float = 60.0, claude: str | None = None,
               env: Mapping[str, str] | None = None, close_stdin: str = "after_result",
               stdin_extra: Iterable[dict[str, Any]] = (),
               on_message: Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None] | None = None) -> Run:
    """Run ``claude -p --input-format stream-json --output-format stream-json --verbose
    --permission-prompt-tool stdio [args]`` against ``api``.

    Sends the initialize control_request (unless ``initialize=False``), then each prompt as a
    `user` line, the next one after each `result`. ``can_use_tool`` control requests are
    answered with ``on_permission(request)`` (default: deny). ``close_stdin``: "after_result"
    (close after the last result), "after_send" (close right after writing the prompts: only for
    a single prompt), or "never" (leave open until the process exits or the timeout).
    ``on_message(msg, send)`` sees every stdout message first and may write to stdin with
    ``send(obj)`` (e.g. an interrupt control_request). ``timeout`` kills the process.
    """
    import subprocess  # local: keeps module import light

    claude = claude or find_claude()
    if not claude:
        raise FileNotFoundError(INSTALL_HINT)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts or [])
    argv = [claude, "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
            "--permission-prompt-tool", "stdio", *args]
    handler = on_permission or deny("no permission handler in test")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=os.fspath(cwd) if cwd else None, env=dict(env) if env else api.env())
    assert proc.stdin and proc.stdout and proc.stderr
    sent: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    other: list[str] = []
    err_chunks: list[bytes] = []
    stdin_lock = threading.Lock()
    t0 = time.monotonic()

    def send(obj: dict[str, Any]) -> None:
        with stdin_lock:
            if proc.stdin is None or proc.stdin.closed:
                return
            sent.append(obj)
            try:
                proc.stdin.write((json.dumps(obj) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def close() -> None:
        with stdin_lock:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass

    stderr_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    stderr_thread.start()
    pending = list(prompts)
    if initialize:
        send(INITIALIZE)
    for extra in stdin_extra:
        send(extra)
    if pending:
        send(user_message(pending.pop(0)))
    if close_stdin == "after_send":
        for p in pending:
            send(user_message(p))
        pending = []
        close()
    if not prompts and close_stdin == "after_result":
        close()

    killed: list[bool] = []

    def kill() -> None:
        killed.append(True)
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                other.append(line)
                continue
            messages.append(msg)
            if on_message is not None:
                on_message(msg, send)
            if msg.get("type") == "control_request" and msg.get("request", {}).get("subtype") == "can_use_tool":
                try:
                    resp = handler(msg["request"])
                    send({"type": "control_response",
                          "response": {"subtype": "success", "request_id": msg["request_id"], "response": resp}})
                except Exception as e:  # noqa: BLE001 - report to the CLI as an error response
                    send({"type": "control_response",
                          "response": {"subtype": "error", "request_id": msg["request_id"], "error": str(e)}})
            elif msg.get("type") == "result":
                if pending:
                    send(user_message(pending.pop(0), msg.get("session_id", "")))
                elif close_stdin == "after_result":
                    close()
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        kill()
        proc.wait()
    finally:
        timer.cancel()
        close()
        stderr_thread.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    if killed:
        stderr += f"\n[run_claude: killed after {timeout}s timeout]"
    return Run(argv=argv, messages=messages, stdout_other=other, stderr=stderr, returncode=proc.returncode,
               sent=sent, duration=time.monotonic() - t0)
