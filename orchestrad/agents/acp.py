"""The client side of the Agent Client Protocol (agentclientprotocol.com), for agent kinds
whose CLI speaks it: JSON-RPC 2.0 over stdio, one JSON object per line. Not a kind itself
(it defines no `AGENT`); a kind subclasses `AcpAgent` and says how to start its CLI, how to
sign in, and how its tool calls read as the permission policy's tools (`orchestrad.agents.gemini`).

One process serves one turn of one session, as Claude Code's does::

    → initialize {protocolVersion: 1, clientCapabilities}     ← {agentCapabilities: {loadSession}}
    → authenticate {methodId}                                  (when the kind names a method)
    → session/new {cwd, mcpServers: []}                        ← {sessionId, models: {currentModelId}}
      or, for a follow-up or a resume, session/load {sessionId, cwd, mcpServers: []}
    → session/prompt {sessionId, prompt: [{type: text, text}]}
    ← session/update notifications: agent_message_chunk (the answer's text), tool_call,
      tool_call_update, user_message_chunk (a loaded session's history, replayed)
    ← session/request_permission {toolCall, options} (a request: answered with an option)
    ← the prompt's result {stopReason, _meta.quota.token_count} or a JSON-RPC error

then stdin is closed and the CLI exits. A permission request becomes an `Ask` for the
daemon's policy (stage "before" when the kind's CLI would run the tool without asking,
"permission" when it would ask a person); a ruling answers with the matching option, and
where no rule decides, a "before" call runs and a "permission" call waits for a person
(`InputRequested`), whom `orchestra respond` answers: allow once, or reject.

Output is stored as whole lines (the raw transcript); what the daemon wrote to stdin is
stored too, as stream "stdin", for `render`'s readable transcript.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from orchestrad import events as ev
from orchestrad.agents import Agent, Ask, Item, Reaction, Ruling, read_message
from orchestrad.agents.claude import summarize
from orchestrad.state import Task

PROTOCOL_VERSION = 1
MAX_LINE = 16 << 20  # a longer line is stored unparsed rather than buffered further
READ_ONLY_KINDS = frozenset({"read", "search", "think", "fetch"})

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def line(obj: Any) -> bytes:
    return _encode(obj) + b"\n"


def request(id_: int, method: str, params: dict[str, Any]) -> bytes:
    return line({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})


def generic_tool(tool_call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An ACP tool call as the policy's tool and input, from what every ACP agent sends: its
    kind, title and locations (a kind that knows its tools' names does better)."""
    kind = str(tool_call.get("kind") or "other")
    title = str(tool_call.get("title") or "")
    path = first_path(tool_call)
    if kind == "execute":
        return "Bash", {"command": title}
    if kind in ("edit", "delete", "move"):
        return "Edit", {"file_path": path} if path else {"title": title}
    if kind == "read":
        return "Read", {"file_path": path} if path else {"title": title}
    if kind == "search":
        return "Grep", {"path": path} if path else {"pattern": title}
    if kind == "fetch":
        url = re.search(r"https?://\S+", title)
        return "WebFetch", {"url": url.group(0) if url else title}
    return kind, {"title": title}


def first_path(tool_call: dict[str, Any]) -> str:
    for block in tool_call.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "diff" and block.get("path"):
            return str(block["path"])
    for where in tool_call.get("locations") or []:
        if isinstance(where, dict) and where.get("path"):
            return str(where["path"])
    return ""


def diff_of(tool_call: dict[str, Any]) -> dict[str, Any]:
    return next((b for b in tool_call.get("content") or [] if isinstance(b, dict) and b.get("type") == "diff"), {})


class AcpAgent(Agent):
    """An agent speaking ACP. A kind sets `name`, `program`, `traits`, and implements
    `command`; it may override `auth_method`, `tool_of`, `asks_person`, `price` and
    `api_error`."""

    auth_method = ""  # the methodId to `authenticate` with ("": none)
    client_capabilities: dict[str, Any] = {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}

    def __init__(self) -> None:
        self._partial = bytearray()
        self._last_stderr = ""
        self._ids = 0
        self._calls: dict[int, str] = {}  # our request id -> its method
        self._cwd = ""
        self._prompt = ""
        self._resume = ""  # the session to load, if any
        self._session = ""
        self._model = ""
        self._text: list[str] = []
        self._fresh = ""  # the prompt of a new session, should the session not load
        self._previous = ""  # the previous attempt's answer, which a loaded session replays
        self._pending: dict[str, dict[str, Any]] = {}  # the agent's permission request id -> what it asked

    # -- what a kind says -----------------------------------------------------------------

    def tool_of(self, tool_call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A permission request's tool call as the policy's tool name and input."""
        return generic_tool(tool_call)

    def asks_person(self, task: Task, tool: str, tool_call: dict[str, Any]) -> bool:
        """Whether the CLI itself would ask a person before this call (else it would run it)."""
        return str(tool_call.get("kind") or "other") not in READ_ONLY_KINDS

    def price(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """What the tokens cost in USD (0.0: unknown)."""
        return 0.0

    def api_error(self, code: Any, message: str) -> str:
        """Which kind of the API's availability a failed prompt says ("": none; see
        `orchestrad.retries`)."""
        return ""

    def first_message(self, task: Task) -> str:
        """The text of the prompt this process sends."""
        return task.pending_message or task.spec.prompt

    def fresh_message(self, task: Task) -> str:
        """The prompt of a new session that stands in for one that could not be loaded: the
        task's prompt, and a person's follow-up after it."""
        follow_up = task.pending_message if task.continued == "follow-up" else ""
        return task.spec.prompt + (f"\n\n{follow_up}" if follow_up else "")

    # -- starting -------------------------------------------------------------------------

    def prepare(self, task: Task, cwd: str, env: dict[str, str]) -> None:
        self._cwd = cwd

    def greeting(self, task: Task) -> Reaction:
        self._prompt = self.first_message(task)
        self._resume = task.session_id if task.session_id and task.continued in ("follow-up", "resume") else ""
        self._fresh = self.fresh_message(task) if self._resume else ""
        self._previous = task.result if self._resume else ""
        return self._send(task, "initialize", {"protocolVersion": PROTOCOL_VERSION, "clientCapabilities": self.client_capabilities})

    def _send(self, task: Task, method: str, params: dict[str, Any]) -> Reaction:
        self._ids += 1
        self._calls[self._ids] = method
        data = request(self._ids, method, params)
        return Reaction([_stdin(task, data)], write=data)

    def spawn_error(self, message: str) -> str:
        if message.startswith("no such program"):
            return (f"{self.program} not found: install it or name it in config "
                    f"(orchestra config set agent_paths '{{\"{self.name}\": \"/path/to/{self.program}\"}}')")
        return message

    def failure_detail(self) -> str:
        return self._last_stderr

    # -- output ---------------------------------------------------------------------------

    def output(self, task: Task, stream: str, chunk: bytes) -> Reaction:
        if stream != "stdout":
            lines = [x for x in chunk.decode(errors="replace").splitlines() if x.strip()]
            if lines:
                self._last_stderr = lines[-1].strip()[:300]
            return Reaction([(ev.OutputAppended(task=task.id, stream=stream, size=len(chunk)), chunk)])
        self._partial += chunk
        end = self._partial.rfind(b"\n") + 1
        if end == 0:
            if len(self._partial) <= MAX_LINE:
                return Reaction()
            end = len(self._partial)
        whole = bytes(self._partial[:end])
        del self._partial[:end]
        items: list[Item] = [(ev.OutputAppended(task=task.id, stream="stdout", size=len(whole)), whole)]
        write = bytearray()
        close = False
        asks: list[Ask] = []
        for raw in whole.splitlines():
            try:
                message = _decode(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(message, dict):
                reaction = read_message(self.message, task, message)
                items += reaction.items
                write += reaction.write
                close = close or reaction.close_stdin
                asks += reaction.asks
        return Reaction(items, bytes(write), close, asks)

    def message(self, task: Task, m: dict[str, Any]) -> Reaction:
        """One JSON-RPC message from the agent."""
        method = m.get("method")
        if isinstance(method, str):
            params = m.get("params") if isinstance(m.get("params"), dict) else {}
            if "id" in m:
                return self._agent_request(task, m["id"], method, params)
            if method == "session/update":
                return self._update(task, params.get("update") or {})
            return Reaction()
        called = self._calls.pop(m.get("id"), None) if isinstance(m.get("id"), int) else None
        if called is None:
            return Reaction()
        if "error" in m:
            return self._failed(task, called, m.get("error") or {})
        result = m.get("result") if isinstance(m.get("result"), dict) else {}
        return self._answered(task, called, result)

    def _answered(self, task: Task, method: str, result: dict[str, Any]) -> Reaction:
        if method == "initialize":
            can_load = bool((result.get("agentCapabilities") or {}).get("loadSession"))
            if not can_load:
                self._resume = ""  # it cannot: a new session, with the message as its prompt
            if self.auth_method:
                return self._send(task, "authenticate", {"methodId": self.auth_method})
            return self._open(task)
        if method == "authenticate":
            return self._open(task)
        if method in ("session/new", "session/load"):
            self._session = str(result.get("sessionId") or self._resume)
            self._model = str((result.get("models") or {}).get("currentModelId") or "")
            started = ev.SessionStarted(task=task.id, session_id=self._session, model=self._model)
            sent = self._send(task, "session/prompt", {"sessionId": self._session, "prompt": [{"type": "text", "text": self._prompt}]})
            return Reaction([started, *sent.items], sent.write)
        if method == "session/prompt":
            return self._result(task, result)
        return Reaction()

    def _open(self, task: Task) -> Reaction:
        params = {"cwd": self._cwd or task.cwd or "/", "mcpServers": []}
        if self._resume:
            return self._send(task, "session/load", {"sessionId": self._resume, **params})
        return self._send(task, "session/new", params)

    def _failed(self, task: Task, method: str, error: dict[str, Any]) -> Reaction:
        if method == "session/load":  # (a session that never got an answer is not kept): begin anew
            self._resume, self._prompt, self._previous = "", self._fresh, ""
            return self._open(task)
        text = error_text(error)
        if method != "session/prompt":
            text = f"{self.name} could not {method.replace('session/', 'start its session: ')}: {text}"
        result = ev.AgentResult(task=task.id, text=text, is_error=True, subtype="error",
                                api_error=self.api_error(error.get("code"), text) if method == "session/prompt" else "")
        return Reaction([result], close_stdin=True)

    def _result(self, task: Task, result: dict[str, Any]) -> Reaction:
        stop = str(result.get("stopReason") or "")
        quota = ((result.get("_meta") or {}).get("quota") or {}) if isinstance(result.get("_meta"), dict) else {}
        tokens = quota.get("token_count") or {}
        tokens_in, tokens_out = int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0)
        cost = 0.0
        models = [u for u in quota.get("model_usage") or [] if isinstance(u, dict)]
        for usage in models:
            counts = usage.get("token_count") or {}
            cost += self.price(str(usage.get("model") or ""), int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0))
        if not models:
            cost = self.price(self._model, tokens_in, tokens_out)
        text = "".join(self._text).strip()
        if self._previous and text.startswith(self._previous.strip()):  # the loaded history's last answer
            text = text[len(self._previous.strip()):].strip()
        items: list[Item] = [
            ev.AgentResult(task=task.id, text=text or f"(stopped: {stop or 'no reason given'})", is_error=stop != "end_turn", subtype=stop),
            ev.UsageRecorded(task=task.id, cost_usd=cost, input_tokens=tokens_in, output_tokens=tokens_out, role=task.role),
        ]
        return Reaction(items, close_stdin=True)  # the turn is over: let it exit

    def _update(self, task: Task, update: dict[str, Any]) -> Reaction:
        kind = update.get("sessionUpdate")
        if kind == "user_message_chunk":
            self._text = []  # a loaded session's history: what follows is not this turn's answer (yet)
        elif kind == "agent_message_chunk":
            content = update.get("content") or {}
            if isinstance(content, dict) and content.get("type") == "text":
                self._text.append(str(content.get("text", "")))
        elif kind == "tool_call":
            tool, tool_input = self.tool_of(update)
            return Reaction([ev.ToolUsed(task=task.id, tool=tool, summary=summarize(tool, tool_input))])
        return Reaction()

    # -- the agent's requests -------------------------------------------------------------

    def _agent_request(self, task: Task, id_: Any, method: str, params: dict[str, Any]) -> Reaction:
        if method != "session/request_permission":
            return self._reply(task, id_, error={"code": -32601, "message": f"orchestra does not offer {method}"})
        tool_call = params.get("toolCall") if isinstance(params.get("toolCall"), dict) else {}
        options = [o for o in params.get("options") or [] if isinstance(o, dict)]
        tool, tool_input = self.tool_of(tool_call)
        key = str(id_)
        self._pending[key] = {"id": id_, "options": options, "tool": tool, "input": tool_input, "title": str(tool_call.get("title") or "")}
        stage = "permission" if self.asks_person(task, tool, tool_call) else "before"
        used = ev.ToolUsed(task=task.id, tool=tool, summary=summarize(tool, tool_input))
        return Reaction([used], asks=[Ask(key, tool, tool_input, stage)])

    def ruled(self, task: Task, ask: Ask, ruling: Ruling | None) -> Reaction:
        pending = self._pending.get(ask.request_id)
        if pending is None:
            return Reaction()
        summary = summarize(ask.tool, ask.input)
        effect = ruling.effect if ruling is not None else ("allow" if ask.stage == "before" else "ask")
        if effect in ("allow", "deny"):
            decided: list[Item] = []
            if ruling is not None:
                decided.append(ev.PermissionDecided(task=task.id, request_id=ask.request_id, tool=ask.tool, summary=summary, effect=effect, by=ruling.by))
            reply = self._choose(task, ask.request_id, allow=effect == "allow")
            return Reaction([*decided, *reply.items], reply.write)
        prompt = f"{ask.tool}: {summary}"
        if ruling is not None:
            prompt += f" [{ruling.by} asks]"
        return Reaction([ev.InputRequested(task=task.id, request_id=ask.request_id, kind="permission", prompt=prompt, tool=ask.tool)])

    def answer(self, task: Task, given: ev.InputGiven) -> Reaction:
        if given.request_id not in self._pending:
            return Reaction()
        denied = given.answer == "deny" or given.answer.startswith("deny: ")
        return self._choose(task, given.request_id, allow=not denied)

    def _choose(self, task: Task, key: str, *, allow: bool) -> Reaction:
        """Answer a permission request with the option that allows (or rejects) once."""
        pending = self._pending.pop(key)
        wanted = ("allow_once", "allow_always") if allow else ("reject_once", "reject_always")
        option = next((o for kind in wanted for o in pending["options"] if o.get("kind") == kind), None)
        if option is None:
            outcome: dict[str, Any] = {"outcome": "cancelled"}
        else:
            outcome = {"outcome": "selected", "optionId": option.get("optionId")}
        return self._reply(task, pending["id"], result={"outcome": outcome})

    def _reply(self, task: Task, id_: Any, *, result: Any = None, error: Any = None) -> Reaction:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_}
        if error is not None:
            message["error"] = error
        else:
            message["result"] = result
        data = line(message)
        return Reaction([_stdin(task, data)], write=data)

    # -- transcripts ----------------------------------------------------------------------

    @staticmethod
    def shown_as_stored(stream: str) -> bool:
        return stream == "stderr"

    @staticmethod
    def render(stream: str, data: bytes) -> bytes:
        if stream == "stderr":
            return data
        out: list[str] = []
        text: list[str] = []
        for raw in data.splitlines():
            try:
                m = _decode(raw)
            except msgspec.DecodeError:
                m = None
            if not isinstance(m, dict):
                out.append(raw.decode(errors="replace"))
                continue
            chunk = _text_chunk(m) if stream == "stdout" else None
            if chunk is not None:
                text.append(chunk)
                continue
            if text:
                out += "".join(text).strip().splitlines()
                text = []
            out += _render_stdin(m) if stream == "stdin" else _render_stdout(m)
        if text:
            out += "".join(text).strip().splitlines()
        return "".join(x + "\n" for x in out).encode()


def error_text(error: dict[str, Any]) -> str:
    """A JSON-RPC error's words: its message (the API's own message, when it is an API
    error's body), and its details."""
    message = str(error.get("message") or "")
    try:
        body = _decode(message.encode()) if message.startswith("{") else None
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"]
        message = " ".join(str(x) for x in (inner.get("code"), inner.get("status"), inner.get("message")) if x)
    data = error.get("data")
    details = data.get("details") if isinstance(data, dict) else None
    if details:
        message = f"{message}: {details}" if message else str(details)
    return message or f"error {error.get('code', '?')}"


def _stdin(task: Task, data: bytes) -> tuple[ev.Event, bytes]:
    return (ev.OutputAppended(task=task.id, stream="stdin", size=len(data)), data)


def _text_chunk(m: dict[str, Any]) -> str | None:
    update = (m.get("params") or {}).get("update") if m.get("method") == "session/update" else None
    if isinstance(update, dict) and update.get("sessionUpdate") == "agent_message_chunk":
        content = update.get("content") or {}
        if isinstance(content, dict) and content.get("type") == "text":
            return str(content.get("text", ""))
    return None


def _render_stdout(m: dict[str, Any]) -> list[str]:
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    if m.get("method") == "session/update":
        update = params.get("update") or {}
        kind = update.get("sessionUpdate")
        if kind == "tool_call":
            return [f"→ {update.get('title', '')}"]
        if kind == "tool_call_update" and update.get("status") in ("completed", "failed"):
            mark = "✗" if update.get("status") == "failed" else "←"
            return [f"  {mark} {update.get('title', '')}"]
        if kind == "user_message_chunk":
            content = update.get("content") or {}
            return [f"  (earlier) » {summarize('', {'prompt': content.get('text', '')}, 200)}"] if isinstance(content, dict) else []
        return []
    if m.get("method") == "session/request_permission":
        tool_call = params.get("toolCall") or {}
        return [f"? permission for {tool_call.get('kind', 'a tool')}: {tool_call.get('title', '')}"]
    if "error" in m and "method" not in m:
        return [f"✗ {error_text(m.get('error') or {})}"]
    result = m.get("result")
    if isinstance(result, dict):
        if "sessionId" in result and "models" in result:
            models = result.get("models") or {}
            return [f"── session {result.get('sessionId')} · {models.get('currentModelId', '?')}"]
        if "stopReason" in result:
            quota = (result.get("_meta") or {}).get("quota") or {}
            tokens = quota.get("token_count") or {}
            mark = "✓" if result.get("stopReason") == "end_turn" else "✗"
            return [f"{mark} {result.get('stopReason')} · {tokens.get('input_tokens', 0)} tokens in, {tokens.get('output_tokens', 0)} out"]
    return []


def _render_stdin(m: dict[str, Any]) -> list[str]:
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    if m.get("method") == "session/prompt":
        text = " ".join(str(b.get("text", "")) for b in params.get("prompt") or [] if isinstance(b, dict))
        return [f"» {summarize('', {'prompt': text}, 500)}"]
    if m.get("method") == "session/load":
        return [f"── resuming session {params.get('sessionId', '?')}"]
    outcome = (m.get("result") or {}).get("outcome") if isinstance(m.get("result"), dict) else None
    if isinstance(outcome, dict):
        option = str(outcome.get("optionId") or outcome.get("outcome") or "")
        return ["  denied" if option in ("cancel", "cancelled", "reject_once", "reject_always") else f"  allowed ({option})"]
    return []
