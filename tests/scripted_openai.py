"""A scripted stand-in for the OpenAI Responses API, for driving the real Codex CLI.

Stdlib only. Serves HTTP/1.1 on 127.0.0.1:<free port> from a background thread::

    from tests.scripted_openai import ScriptedOpenAI, reply

    with ScriptedOpenAI([reply.shell("echo hi > hi.txt"), reply.text("done")]) as api:
        home = api.codex_home(tmp_path / "codex")   # a CODEX_HOME whose config.toml points here
        subprocess.run([codex, "app-server"], env=api.env(home), ...)
        api.requests        # every request, in arrival order (Request objects)
        api.turn_requests   # the POST /v1/responses that consumed a scripted reply

Each ``POST /v1/responses`` consumes the next scripted ``Reply``, streamed as server-sent
events the way Codex reads them (tests/codex_notes.md): ``response.created``, one
``response.output_item.done`` per output item (an assistant message, a ``function_call``
such as ``exec_command`` or ``request_user_input``, a ``custom_tool_call`` of
``apply_patch``), then ``response.completed`` with the usage. ``reply.error(status, ...)``
answers with an HTTP error and an OpenAI-style error body instead; ``reply.failed(...)``
streams a ``response.failed`` event.

When the script runs out, further requests get an HTTP 400 and are listed in
``api.unscripted``; ``api.assert_script_done()`` checks that every reply was used and
nothing unscripted was asked. Anything else (``GET /v1/models`` and the like) gets a 404 and
consumes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["API_KEY", "CODEX_VERSION", "INSTALL_HINT", "KEY_VAR", "MODEL", "Reply", "Request", "ScriptedOpenAI",
           "clean_env", "config_toml", "find_codex", "reply"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEX_VERSION = "0.171.0"  # what .ci/run installs
LOCAL_CODEX = os.path.join(REPO_ROOT, ".local", "npm-codex", "node_modules", ".bin", "codex")
INSTALL_HINT = ("Codex CLI not found. Install it with\n"
                f"    npm install --prefix .local/npm-codex @openai/codex@{CODEX_VERSION}\n"
                "(from the repository root), or point $ORCHESTRA_CODEX at a `codex` binary.")

MODEL = "gpt-5.5"  # a model in 0.171.0's catalog (an unknown one gets fallback metadata and no apply_patch tool)
KEY_VAR = "OPENAI_API_KEY"  # the provider's env_key in `config_toml` (the daemon hands OPENAI_* on to codex)
API_KEY = "sk-scripted"

# Inherited variables that would send the CLI elsewhere or change its behaviour.
_SCRUB_PREFIXES = ("OPENAI_", "CODEX_", "AZURE_OPENAI", "OTEL_")
_SCRUB_EXACT = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "RUST_LOG"}


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without variables that steer the Codex CLI."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB_EXACT}


def find_codex() -> str | None:
    """$ORCHESTRA_CODEX, else .local/npm-codex/node_modules/.bin/codex, else `codex` on PATH."""
    env = os.environ.get("ORCHESTRA_CODEX")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access(LOCAL_CODEX, os.X_OK):
        return LOCAL_CODEX
    return shutil.which("codex")


def config_toml(base_url: str, model: str = MODEL) -> str:
    """A Codex config.toml that talks only to `base_url` (a Responses API) with the key in
    $OPENAI_API_KEY, retries nothing itself (the daemon owns retries), and reaches
    for nothing else on the network (plugins, apps, web search, analytics, updates)."""
    return f"""\
model = "{model}"
model_provider = "scripted"
check_for_update_on_startup = false
web_search = "disabled"

[model_providers.scripted]
name = "scripted"
base_url = "{base_url}"
wire_api = "responses"
env_key = "{KEY_VAR}"
request_max_retries = 0
stream_max_retries = 0

[features]
plugins = false
apps = false
goals = false
shell_snapshot = false
image_generation = false
remote_plugin = false
tool_suggest = false
skill_mcp_dependency_install = false

[agents]
enabled = false

[analytics]
enabled = false

[feedback]
enabled = false
"""


# --------------------------------------------------------------------------------------------
# Replies


@dataclass
class Reply:
    """One scripted answer to one POST /v1/responses."""

    items: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    error: dict[str, Any] | None = None  # HTTP error body's "error", or response.failed's
    failed: bool = False  # stream a response.failed event instead of completing
    usage: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None  # wait for this event before answering (max 60 s)
    repeat: int | None = 1  # answer this many consecutive requests (None: every one from here on)


DEFAULT_USAGE = {"input_tokens": 1200, "cached_tokens": 200, "output_tokens": 80, "reasoning_tokens": 16}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class reply:  # noqa: N801 - a namespace of constructors, used as `reply.text(...)`
    """Constructors for ``Reply`` objects and output items."""

    @staticmethod
    def text(text: str, **kw: Any) -> Reply:
        return Reply(items=[reply.message(text)], **kw)

    @staticmethod
    def message(text: str) -> dict[str, Any]:
        return {"type": "message", "role": "assistant", "id": _id("msg"), "content": [{"type": "output_text", "text": text}]}

    @staticmethod
    def function_call(name: str, arguments: Mapping[str, Any], *, call_id: str | None = None) -> dict[str, Any]:
        return {"type": "function_call", "id": _id("fc"), "call_id": call_id or _id("call"), "name": name,
                "arguments": json.dumps(dict(arguments))}

    @staticmethod
    def calls(*items: dict[str, Any], text: str | None = None, **kw: Any) -> Reply:
        """Several output items in one response (optionally after a message)."""
        return Reply(items=([reply.message(text)] if text is not None else []) + list(items), **kw)

    @staticmethod
    def shell(command: str, *, call_id: str | None = None, **kw: Any) -> Reply:
        """A call of Codex's shell tool, `exec_command` (its `cmd` a shell line)."""
        return Reply(items=[reply.function_call("exec_command", {"cmd": command}, call_id=call_id)], **kw)

    @staticmethod
    def patch(patch: str, *, call_id: str | None = None, **kw: Any) -> Reply:
        """A freeform `apply_patch` call (the model's file edits)."""
        item = {"type": "custom_tool_call", "id": _id("ctc"), "call_id": call_id or _id("call"), "name": "apply_patch", "input": patch}
        return Reply(items=[item], **kw)

    @staticmethod
    def add_file(path: str, content: str, **kw: Any) -> Reply:
        """An `apply_patch` call that adds one file."""
        lines = "".join(f"+{line}\n" for line in content.splitlines())
        return reply.patch(f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n", **kw)

    @staticmethod
    def question(question: str, options: Iterable[str], *, header: str = "Question", id: str = "q1",  # noqa: A002
                 **kw: Any) -> Reply:
        """A `request_user_input` call with one question."""
        args = {"questions": [{"header": header, "id": id, "question": question,
                               "options": [{"label": o, "description": o} for o in options]}]}
        return Reply(items=[reply.function_call("request_user_input", args)], **kw)

    @staticmethod
    def error(status: int = 500, message: str | None = None, *, code: str | None = None, **kw: Any) -> Reply:
        """An HTTP error with an OpenAI-style body ``{"error": {"message", "type", "code"}}``."""
        types = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
        error = {"message": message or f"scripted {status}", "type": types.get(status, "server_error"), "param": None,
                 "code": code if code is not None else ("invalid_api_key" if status == 401 else None)}
        return Reply(status=status, error=error, **kw)

    @staticmethod
    def failed(code: str = "server_error", message: str = "scripted failure", **kw: Any) -> Reply:
        """A stream that ends with ``response.failed``."""
        return Reply(failed=True, error={"code": code, "message": message}, **kw)


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    turn: int | None = None  # index of the scripted reply it consumed

    @property
    def input(self) -> list[dict[str, Any]]:
        return [i for i in (self.body or {}).get("input", []) if isinstance(i, dict)] if isinstance(self.body, dict) else []

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def tool_names(self) -> list[str]:
        tools = self.body.get("tools", []) if isinstance(self.body, dict) else []
        return [str(t.get("name") or t.get("type")) for t in tools if isinstance(t, dict)]

    def texts(self, role: str) -> list[str]:
        """The text of every `role` message in the input."""
        out = []
        for item in self.input:
            if item.get("type") == "message" and item.get("role") == role:
                out += [str(c.get("text", "")) for c in item.get("content") or [] if isinstance(c, dict)]
        return out

    @property
    def last_user_text(self) -> str:
        texts = self.texts("user")
        return texts[-1] if texts else ""

    @property
    def developer_text(self) -> str:
        return "\n".join(self.texts("developer"))

    def outputs(self) -> dict[str, str]:
        """call_id -> the output Codex sent back for it (function or custom tool calls)."""
        found = {}
        for item in self.input:
            if item.get("type") in ("function_call_output", "custom_tool_call_output"):
                output = item.get("output")
                found[str(item.get("call_id"))] = output if isinstance(output, str) else json.dumps(output)
        return found

    def conversation_text(self) -> str:
        return json.dumps(self.input)


# --------------------------------------------------------------------------------------------
# The server


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    u = {**DEFAULT_USAGE, **(usage or {})}
    return {
        "input_tokens": u["input_tokens"],
        "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
        "output_tokens": u["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
        "total_tokens": u["input_tokens"] + u["output_tokens"],
    }


def sse(events: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


class ScriptedOpenAI:
    def __init__(self, replies: Iterable[Reply] = (), *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._script: list[Reply] = list(replies)
        self._used = 0  # replies consumed (a repeating reply counts once, when it is done)
        self._repeats = 0  # how often the current reply answered
        self.requests: list[Request] = []
        self.unscripted: list[Request] = []
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ScriptedOpenAI":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-openai", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "ScriptedOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the script -----------------------------------------------------------------------

    def add(self, *replies: Reply) -> "ScriptedOpenAI":
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def turn_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.turn is not None]

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script) - self._used

    def assert_script_done(self) -> None:
        with self._lock:
            left = len(self._script) - self._used
            unscripted = len(self.unscripted)
        assert left == 0 and unscripted == 0, f"{left} scripted replies unused, {unscripted} unscripted requests"

    def codex_home(self, path: str | os.PathLike[str], model: str = MODEL) -> Path:
        """Make `path` a CODEX_HOME whose config.toml points Codex at this server."""
        home = Path(path)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(config_toml(self.url, model))
        return home

    def env(self, codex_home: str | os.PathLike[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for the CLI: `base` cleaned, CODEX_HOME and the fake key set."""
        return {**clean_env(base), "CODEX_HOME": str(codex_home), KEY_VAR: API_KEY}

    def _next(self, request: Request) -> Reply | None:
        with self._lock:
            self.requests.append(request)
            if self._used >= len(self._script):
                self.unscripted.append(request)
                return None
            current = self._script[self._used]
            request.turn = self._used
            self._repeats += 1
            if current.repeat is not None and self._repeats >= current.repeat:
                self._used += 1
                self._repeats = 0
            return current

    # -- HTTP -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not raw:
                    return None
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "zstd":  # Codex may compress its requests
                    raise ValueError("zstd request bodies are not supported")
                if encoding == "gzip":
                    import gzip
                    raw = gzip.decompress(raw)
                try:
                    return json.loads(raw)
                except ValueError:
                    return raw.decode(errors="replace")

            def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: Mapping[str, str] = {}) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                api.requests.append(Request("GET", self.path, dict(self.headers), None))
                self._send(404, json.dumps({"error": {"message": f"no {self.path} here", "type": "not_found"}}).encode())

            do_HEAD = do_GET  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                request = Request("POST", self.path, dict(self.headers), body)
                if not self.path.rstrip("/").endswith("/responses"):
                    with api._lock:
                        api.requests.append(request)
                    self._send(404, json.dumps({"error": {"message": f"no {self.path} here", "type": "not_found"}}).encode())
                    return
                scripted = api._next(request)
                if scripted is None:
                    error = {"message": "the scripted API has no reply left for this request", "type": "invalid_request_error", "code": None}
                    self._send(400, json.dumps({"error": error}).encode())
                    return
                if scripted.gate is not None:
                    scripted.gate.wait(60)
                if scripted.status >= 400:
                    self._send(scripted.status, json.dumps({"error": scripted.error}).encode(), headers=scripted.headers)
                    return
                rid = _id("resp")
                events: list[dict[str, Any]] = [{"type": "response.created", "response": {"id": rid}}]
                for item in scripted.items:
                    events.append({"type": "response.output_item.done", "item": item})
                if scripted.failed:
                    events.append({"type": "response.failed", "response": {"id": rid, "error": scripted.error}})
                else:
                    events.append({"type": "response.completed", "response": {"id": rid, "usage": _usage(scripted.usage)}})
                self._send(200, sse(events), "text/event-stream", scripted.headers)

        return Handler
