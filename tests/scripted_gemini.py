"""A scripted stand-in for the Gemini API (generativelanguage v1beta), for driving the real
Gemini CLI. Stdlib only; serves HTTP/1.1 on 127.0.0.1:<free port> from a background thread::

    from tests.scripted_gemini import ScriptedGemini, reply

    with ScriptedGemini([reply.call("write_file", {"file_path": "/x", "content": "hi"}),
                         reply.text("done")]) as api:
        subprocess.run([gemini, "--acp", ...], env=api.env(home), ...)
        api.turns           # the requests that consumed a scripted turn

Each ``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` (the agent loop) consumes
the next scripted ``Reply``, streamed as server-sent events (``data: <GenerateContentResponse>``
chunks, the last with ``finishReason`` and ``usageMetadata``), or answered with an HTTP error
status and a Google-style error body (``{"error": {"code", "message", "status"}}``).
``:generateContent`` (the model router's and other side calls) and ``:countTokens`` never
consume a turn. Once the script runs out, turns get HTTP 400 and are listed in
``api.unscripted``.

What Gemini CLI 0.61.0 sends and expects is in tests/gemini_notes.md.
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
from typing import Any

__all__ = ["GEMINI_INSTALL_HINT", "Reply", "Request", "ScriptedGemini", "find_gemini", "gemini_home", "reply"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_GEMINI = os.path.join(REPO_ROOT, ".local", "npm-gemini", "node_modules", ".bin", "gemini")
GEMINI_INSTALL_HINT = ("Gemini CLI not found. Install it with\n"
                       "    npm install --prefix .local/npm-gemini @google/gemini-cli@0.61.0\n"
                       "(from the repository root), or point $ORCHESTRA_GEMINI at a `gemini` program.")
API_KEY = "scripted-gemini-key"
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

# The user settings that keep the CLI offline and quiet: no usage statistics, no telemetry,
# no update check, no folder-trust dialog; an API key as its sign-in.
QUIET_SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


def find_gemini() -> str | None:
    """$ORCHESTRA_GEMINI, else .local/npm-gemini/node_modules/.bin/gemini, else `gemini` on PATH."""
    env = os.environ.get("ORCHESTRA_GEMINI")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access(LOCAL_GEMINI, os.X_OK):
        return LOCAL_GEMINI
    return shutil.which("gemini")


def gemini_home(home: str | os.PathLike[str]) -> str:
    """Make `home` a home for the CLI: ~/.gemini/settings.json with `QUIET_SETTINGS`."""
    directory = os.path.join(os.fspath(home), ".gemini")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "settings.json"), "w") as f:
        json.dump(QUIET_SETTINGS, f)
    return os.fspath(home)


@dataclass
class Reply:
    """One scripted answer to one agent-loop request."""

    parts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    message: str = ""
    prompt_tokens: int = 120
    output_tokens: int = 30
    model_version: str = ""  # default: the request's model
    repeat: int | None = 1  # answer this many consecutive turns (None: every one from here on)

    @property
    def is_error(self) -> bool:
        return self.status >= 400


class reply:  # noqa: N801 - a namespace of constructors
    @staticmethod
    def text(text: str, **kw: Any) -> Reply:
        return Reply(parts=[{"text": text}], **kw)

    @staticmethod
    def call(name: str, args: Mapping[str, Any], *, text: str | None = None, **kw: Any) -> Reply:
        """One function call (after some text, if given), as the model asks for a tool."""
        parts = [] if text is None else [{"text": text}]
        parts.append({"functionCall": {"name": name, "args": dict(args)}})
        return Reply(parts=parts, **kw)

    @staticmethod
    def error(status: int = 500, message: str | None = None, **kw: Any) -> Reply:
        return Reply(status=status, message=message or f"scripted {STATUS_NAMES.get(status, 'error')}", **kw)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    kind: str  # "turn" | "side" | "count_tokens" | "unscripted" | "other"

    @property
    def model(self) -> str:
        route = self.path.split("?", 1)[0]
        return route.rsplit("/", 1)[-1].split(":", 1)[0]

    @property
    def contents(self) -> list[dict[str, Any]]:
        return list(self.body.get("contents") or []) if isinstance(self.body, dict) else []

    def texts(self, role: str | None = None) -> list[str]:
        return [str(p["text"]) for c in self.contents if role in (None, c.get("role"))
                for p in c.get("parts") or [] if isinstance(p, dict) and "text" in p]

    @property
    def last_user_text(self) -> str:
        texts = self.texts("user")
        return texts[-1] if texts else ""

    def function_responses(self) -> list[dict[str, Any]]:
        return [p["functionResponse"] for c in self.contents for p in c.get("parts") or []
                if isinstance(p, dict) and "functionResponse" in p]

    @property
    def system_text(self) -> str:
        system = self.body.get("systemInstruction") if isinstance(self.body, dict) else None
        parts = system.get("parts") if isinstance(system, dict) else None
        return "\n".join(str(p.get("text", "")) for p in parts or [] if isinstance(p, dict))


class ScriptedGemini:
    def __init__(self, turns: Iterable[Reply] = ()) -> None:
        self.script: list[Reply] = list(turns)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the script ---------------------------------------------------------------------

    def add(self, *replies: Reply) -> "ScriptedGemini":
        with self.lock:
            self.script.extend(replies)
        return self

    @property
    def turns(self) -> list[Request]:
        return [r for r in self.requests if r.kind == "turn"]

    @property
    def unscripted(self) -> list[Request]:
        return [r for r in self.requests if r.kind == "unscripted"]

    def _next(self) -> Reply | None:
        with self.lock:
            if not self.script:
                return None
            answer = self.script[0]
            if answer.repeat is not None:
                answer.repeat -= 1
                if answer.repeat <= 0:
                    self.script.pop(0)
            return answer

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, home: str | os.PathLike[str]) -> dict[str, str]:
        """Variables that point the CLI at this API, signed in with a fake key, its state in
        `home` (made quiet by `gemini_home`)."""
        return {"HOME": gemini_home(home), "GEMINI_API_KEY": API_KEY, "GOOGLE_GEMINI_BASE_URL": self.url,
                "GEMINI_CLI_NO_RELAUNCH": "1", "NO_BROWSER": "1"}

    def start(self) -> "ScriptedGemini":
        api = self

        class Handler(_Handler):
            owner = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ScriptedGemini":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk(parts: list[dict[str, Any]], model: str, *, finish: bool, usage: tuple[int, int] | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": uuid.uuid4().hex[:16]}
    if usage is not None:
        chunk["usageMetadata"] = {"promptTokenCount": usage[0], "candidatesTokenCount": usage[1], "totalTokenCount": sum(usage)}
    return chunk


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: ScriptedGemini

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._record("other", None)
        self._json(404, {"error": {"code": 404, "message": "not scripted", "status": "NOT_FOUND"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        route = self.path.split("?", 1)[0]
        if route.endswith(":countTokens"):
            self._record("count_tokens", body)
            self._json(200, {"totalTokens": 100})
        elif route.endswith(":generateContent"):
            request = self._record("side", body)
            # The model router asks which model fits; any other side call gets plain text.
            text = json.dumps({"reasoning": "scripted", "model_choice": "pro", "complexity_score": 50})
            self._json(200, _chunk([{"text": text}], request.model, finish=True, usage=(10, 5)))
        elif route.endswith(":streamGenerateContent"):
            answer = self.owner._next()
            request = self._record("turn" if answer is not None else "unscripted", body)
            if answer is None:
                self._json(400, {"error": {"code": 400, "message": "the script has no more turns", "status": "INVALID_ARGUMENT"}})
            elif answer.is_error:
                status = STATUS_NAMES.get(answer.status, "UNKNOWN")
                self._json(answer.status, {"error": {"code": answer.status, "message": answer.message, "status": status}})
            else:
                self._stream(answer, answer.model_version or request.model)
        else:
            self._record("other", body)
            self._json(404, {"error": {"code": 404, "message": "not scripted", "status": "NOT_FOUND"}})

    def _record(self, kind: str, body: Any) -> Request:
        request = Request("POST" if self.command == "POST" else self.command, self.path,
                          {k.lower(): v for k, v in self.headers.items()}, body, kind)
        with self.owner.lock:
            self.owner.requests.append(request)
        return request

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, answer: Reply, model: str) -> None:
        chunks = [_chunk([part], model, finish=False, usage=None) for part in answer.parts[:-1]]
        chunks.append(_chunk(answer.parts[-1:] or [{"text": ""}], model, finish=True, usage=(answer.prompt_tokens, answer.output_tokens)))
        data = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
