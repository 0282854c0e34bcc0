"""The `codex` agent: OpenAI's Codex CLI as an app server, speaking JSON-RPC on stdin and stdout.

Started as::

    codex app-server --enable default_mode_request_user_input

in the task's directory. Its protocol is JSON-RPC 2.0 without the "jsonrpc" field, one
message a line (tests/codex_notes.md has what 0.171.0 really sends). The adapter writes
`initialize`, the `initialized` notification, and `thread/start` (or, for a follow-up or a
resume, `thread/resume` of the task's session, the thread's id); once the thread's id comes
back (`SessionStarted`), `turn/start` with the prompt. Then the app server notifies
(`item/started`, `item/completed`, `thread/tokenUsage/updated`, `error`, `turn/completed`)
and asks, as server-to-client requests:

* `item/commandExecution/requestApproval`: a shell command, put to the permission policy as
  tool "Bash" with {"command": ...} (the script of a `bash -lc '...'` line), so that rules
  like `allow Bash(pytest *)` apply; when no rule decides, a person (`InputRequested`);
* `item/fileChange/requestApproval`: an `apply_patch` edit, one policy call per file ("Write"
  for a file it adds, "Edit" for one it changes or deletes, with its `file_path`); a deny of
  any file declines the patch, an allow of every file accepts it, else a person decides;
* `item/tool/requestUserInput`: questions for a person (the `request_user_input` tool, which
  0.171.0 offers outside plan mode only with the `default_mode_request_user_input` feature);
  each one an `InputRequested` in turn;
* anything else (MCP elicitations, permission grants) is declined.

Answers go back as JSON-RPC responses. When the turn completes, stdin is closed and the app
server exits. Its approvals let no message through: a denied command is "rejected by user".

Codex reports tokens, not dollars: the cost is computed here from the tokens of this
attempt's turn with `PRICES` (USD per million tokens, by model; `DEFAULT_PRICE` for a model
not listed), so budgets apply: when what the attempt spent reaches the budget it was given,
the adapter interrupts the turn (`turn/interrupt`) and reports `BUDGET_SUBTYPE`.

A failed turn says why in `codexErrorInfo`; `AVAILABILITY` maps the kinds that retrying may
mend to `AgentResult.api_error`, so that `orchestrad.retries` retries them.

Output is stored as whole JSON lines (the raw transcript, for `logs --raw`); what was
written to stdin is stored too, as stream "stdin", so that `render` can show a readable
transcript with the approvals and answers.

It is over 500 lines because the app server's three kinds of requests (commands, patches,
questions) each map onto the policy and onto `respond` their own way, and the transcript's
rendering must read the same messages; they are changed together.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import msgspec

from orchestra.shared.protocol import Role
from orchestra.shared.vocab import shorten, usd
from orchestrad import events as ev
from orchestrad import agents, roles
from orchestrad.agents import Agent, Ask, Item, Reaction, Ruling, SandboxState, Traits, read_message
from orchestrad.agents.claude import summarize
from orchestrad.config import Config
from orchestrad.retries import USAGE_LIMIT
from orchestrad.state import Task

MAX_LINE = 16 << 20  # a longer line is stored unparsed rather than buffered further
NOT_FOUND = (
    "codex not found: install @openai/codex or set the agent path in config "
    "(orchestra config set agent_paths '{\"codex\": \"/path/to/codex\"}')"
)
FEATURES = ("default_mode_request_user_input",)  # so that it can ask a person questions in default mode
INIT, THREAD, TURN, INTERRUPT = "orchestra-init", "orchestra-thread", "orchestra-turn", "orchestra-interrupt"

# USD per million tokens: (input, cached input, output), by model name prefix (the longest
# that matches wins). OpenAI's list prices for the API; a model not listed costs DEFAULT_PRICE.
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-5": (1.25, 0.125, 10.0),
    "gpt-5-codex": (1.25, 0.125, 10.0),
    "gpt-5-mini": (0.25, 0.025, 2.0),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5.1": (1.25, 0.125, 10.0),
    "gpt-5.1-codex-mini": (0.25, 0.025, 2.0),
    "gpt-4.1": (2.0, 0.50, 8.0),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "o3": (2.0, 0.50, 8.0),
    "o4-mini": (1.10, 0.275, 4.40),
    "codex-mini": (1.50, 0.375, 6.0),
}
DEFAULT_PRICE = PRICES["gpt-5"]

# `codexErrorInfo` kinds that retrying may mend -> `AgentResult.api_error`.
AVAILABILITY = {
    "usageLimitExceeded": USAGE_LIMIT,
    "rateLimitExceeded": "rate limited",
    "serverOverloaded": "overloaded",
    "internalServerError": "server error",
}
# In Codex's config directory, what would make a later, unsandboxed run of it do what a
# sandboxed agent wrote there: its config (providers, MCP servers, hooks), its instructions,
# rules, skills, prompts. Kept read-only in a sandbox; directories are made first (None).
PROTECTED: dict[str, str | None] = {
    "config.toml": "",
    "AGENTS.md": "",
    "hooks.json": "",
    "rules": None,
    "skills": None,
    "prompts": None,
}

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _line(obj: Any) -> bytes:
    return _encode(obj) + b"\n"


def price(model: str) -> tuple[float, float, float]:
    """What `model` costs per million tokens: input, cached input, output."""
    best = ""
    for prefix in PRICES:
        if (model == prefix or model.startswith(prefix + "-")) and len(prefix) > len(best):
            best = prefix
    return PRICES[best] if best else DEFAULT_PRICE


def cost(model: str, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
    """USD for these tokens of `model` (input tokens include the cached ones, as the API counts them)."""
    p_in, p_cached, p_out = price(model)
    cached = min(cached_tokens, input_tokens)
    return ((input_tokens - cached) * p_in + cached * p_cached + output_tokens * p_out) / 1e6


def shell_script(command: str) -> str:
    """The script of `bash -lc 'SCRIPT'` (how Codex runs a command), else the line as it is."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) == 3 and os.path.basename(words[0]) in ("bash", "sh", "zsh") and words[1] in ("-lc", "-c"):
        return words[2]
    return command


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class CodexAgent(Agent):
    name = "codex"
    program = "codex"
    traits = Traits(
        converses=True,
        reports_result=True,
        needs_network=True,
        credentials=("OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME"),
        reports_cost=True,
    )
    inherit_env = ("OPENAI_*", "CODEX_*")  # its API key, base URL, config directory

    def __init__(self) -> None:
        self._partial = bytearray()
        self._last_stderr = ""
        self._thread = ""
        self._turn = ""
        self._model = ""
        self._items: dict[str, dict[str, Any]] = {}  # item id -> the item as it started (a file change's changes)
        self._pending: dict[str, dict[str, Any]] = {}  # request id -> what it asked
        self._answered_text = ""  # the last agent message of this turn
        self._error: dict[str, Any] = {}  # the last `error` notification's error
        self._total: dict[str, Any] | None = None  # the thread's token totals as last reported
        self._tokens = {"input": 0, "cached": 0, "output": 0}  # this attempt's
        self._budget: float | None = None
        self._over_budget = False
        self._disallowed: frozenset[str] = frozenset()
        self._accept_edits = False
        self._done = False
        self._text = ""  # what the turn starts with

    # -- starting -----------------------------------------------------------------------

    def command(self, task: Task, config: Config, custom_roles: dict[str, Role]) -> list[str]:
        role = roles.get(task.role, custom_roles)
        self._role = role
        self._mode = role.permission_mode if role is not None and role.permission_mode != "default" else config.permission_mode
        self._disallowed = frozenset([*(role.disallowed_tools if role else []), *config.disallowed_tools])
        self._accept_edits = self._mode == "acceptEdits"
        self._model = task.spec.model or (role.model if role and role.model else "") or ""
        self._budget = task.spec.budget_usd
        argv = [agents.program(self.name, config), "app-server"]
        for feature in FEATURES:
            argv += ["--enable", feature]
        return argv

    def _thread_params(self, task: Task) -> dict[str, Any]:
        read_only = self._mode == "plan" or {"Write", "Edit"} <= self._disallowed
        if self._mode == "bypassPermissions":
            approval, sandbox = "never", "danger-full-access"
        else:
            approval, sandbox = "untrusted", "read-only" if read_only else "workspace-write"
        params: dict[str, Any] = {"cwd": task.cwd or None, "approvalPolicy": approval, "sandbox": sandbox}
        if self._model:
            params["model"] = self._model
        role = getattr(self, "_role", None)
        if role is not None and role.prompt:
            params["developerInstructions"] = role.prompt
        return params

    def greeting(self, task: Task) -> Reaction:
        init = _line({"id": INIT, "method": "initialize", "params": {"clientInfo": {"name": "orchestra", "title": "orchestra", "version": "1"}}})
        initialized = _line({"method": "initialized"})
        params = self._thread_params(task)
        self._text = task.pending_message or task.spec.prompt  # (cleared once the process is spawned)
        if task.session_id and task.continued in ("follow-up", "resume", "retry"):
            thread = {"id": THREAD, "method": "thread/resume", "params": {"threadId": task.session_id, **params, "excludeTurns": True}}
        else:
            thread = {"id": THREAD, "method": "thread/start", "params": params}
        return Reaction(write=init + initialized + _line(thread))

    def sandbox_state(self, env: dict[str, str]) -> SandboxState:
        """Its config directory ($CODEX_HOME, else ~/.codex): sessions, logs and its state
        database go there; what `PROTECTED` names stays read-only."""
        home = env.get("CODEX_HOME") or (os.path.join(env["HOME"], ".codex") if env.get("HOME") else "")
        if not home:
            return SandboxState()
        return SandboxState(
            writable=(home,),
            read_only=tuple(os.path.join(home, name) for name in PROTECTED),
            seed=tuple((os.path.join(home, name), content) for name, content in PROTECTED.items() if content != ""),
        )

    @classmethod
    def missing_credentials(cls, env: dict[str, str], home: str) -> str:
        if env.get("OPENAI_API_KEY") or env.get("CODEX_API_KEY"):
            return ""
        codex_home = env.get("CODEX_HOME") or os.path.join(home, ".codex")
        if os.path.exists(os.path.join(codex_home, "auth.json")):
            return ""
        try:
            with open(os.path.join(codex_home, "config.toml"), "rb") as f:
                if b"model_provider" in f.read():  # a provider of its own, which names its key
                    return ""
        except OSError:
            pass
        return ("Codex has no credentials: run `codex login` (it writes ~/.codex/auth.json), or set OPENAI_API_KEY "
                "in the daemon's environment")

    def spawn_error(self, message: str) -> str:
        return NOT_FOUND if message.startswith("no such program") else message

    def failure_detail(self) -> str:
        return self._last_stderr

    # -- output -------------------------------------------------------------------------

    def output(self, task: Task, stream: str, chunk: bytes) -> Reaction:
        if stream != "stdout":
            lines = [line for line in chunk.decode(errors="replace").splitlines() if line.strip() and not line.startswith("WARNING: proceeding")]
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
        for line in whole.splitlines():
            try:
                message = _decode(line)
            except msgspec.DecodeError:
                continue
            if isinstance(message, dict):
                reaction = read_message(self._message, task, message)
                items += reaction.items
                write += reaction.write
                close = close or reaction.close_stdin
                asks += reaction.asks
        return Reaction(items, bytes(write), close, asks)

    def _message(self, task: Task, m: dict[str, Any]) -> Reaction:
        method = m.get("method")
        if method is None:
            return self._response(task, m)
        params = m.get("params") if isinstance(m.get("params"), dict) else {}
        if "id" in m:
            return self._request(task, m["id"], str(method), params)
        if method == "item/started":
            item = params.get("item") or {}
            if isinstance(item, dict) and item.get("id"):
                self._items[str(item["id"])] = item
            return Reaction(_tool_used(task, item))
        if method == "item/completed":
            item = params.get("item") or {}
            if isinstance(item, dict) and item.get("type") == "agentMessage" and params.get("turnId") == self._turn:
                self._answered_text = str(item.get("text") or "")
            return Reaction()
        if method == "thread/tokenUsage/updated":
            return self._usage(task, params)
        if method == "error":
            if isinstance(params.get("error"), dict) and not params.get("willRetry"):
                self._error = params["error"]
            return Reaction()
        if method == "turn/started" and not self._turn:
            turn = params.get("turn") or {}
            self._turn = str(turn.get("id") or "") if isinstance(turn, dict) else ""
            return Reaction()
        if method == "turn/completed":
            turn = params.get("turn") or {}
            if isinstance(turn, dict) and (not self._turn or turn.get("id") == self._turn):
                return self._result(task, turn)
            return Reaction()
        if method == "serverRequest/resolved":
            request_id = str(params.get("requestId"))
            if self._pending.pop(request_id, None) is not None and task.waiting is not None and task.waiting.request_id.split("#", 1)[0] == request_id:
                return Reaction([ev.InputGiven(task=task.id, request_id=task.waiting.request_id, answer="(withdrawn by the agent)")])
        return Reaction()

    def _response(self, task: Task, m: dict[str, Any]) -> Reaction:
        """A response to one of the adapter's requests."""
        request_id = m.get("id")
        error = m.get("error")
        if isinstance(error, dict) and request_id in (INIT, THREAD, TURN):
            what = {INIT: "initialize", THREAD: "start its thread", TURN: "start its turn"}[request_id]
            return self._end(task, f"codex could not {what}: {error.get('message', error)}", is_error=True, subtype="error_protocol")
        result = m.get("result") if isinstance(m.get("result"), dict) else {}
        if request_id == THREAD:
            thread = result.get("thread") or {}
            self._thread = str(thread.get("id") or "")
            self._model = str(result.get("model") or self._model)
            turn = _line({"id": TURN, "method": "turn/start", "params": {"threadId": self._thread, "input": [{"type": "text", "text": self._text}]}})
            return Reaction([ev.SessionStarted(task=task.id, session_id=self._thread, model=self._model), _stdin(task, turn)], write=turn)
        if request_id == TURN:
            turn = result.get("turn") or {}
            if isinstance(turn, dict) and turn.get("id"):
                self._turn = str(turn["id"])
        return Reaction()

    def _usage(self, task: Task, params: dict[str, Any]) -> Reaction:
        """Token counts: the thread's totals, reported after each model response (and once
        on resume, for the turns before). This attempt's are the growth of the totals during
        its own turn."""
        usage = params.get("tokenUsage") or {}
        total = usage.get("total") if isinstance(usage, dict) else None
        if not isinstance(total, dict):
            return Reaction()
        ours = bool(self._turn) and params.get("turnId") == self._turn
        if ours:
            before = self._total
            if before is None:
                last = usage.get("last") if isinstance(usage.get("last"), dict) else {}
                before = {k: _int(total.get(k)) - _int(last.get(k)) for k in ("inputTokens", "cachedInputTokens", "outputTokens")}
            self._tokens["input"] += max(0, _int(total.get("inputTokens")) - _int(before.get("inputTokens")))
            self._tokens["cached"] += max(0, _int(total.get("cachedInputTokens")) - _int(before.get("cachedInputTokens")))
            self._tokens["output"] += max(0, _int(total.get("outputTokens")) - _int(before.get("outputTokens")))
        self._total = total
        if ours and self._budget is not None and not self._over_budget and self._spent() >= self._budget:
            self._over_budget = True
            line = _line({"id": INTERRUPT, "method": "turn/interrupt", "params": {"threadId": self._thread, "turnId": self._turn}})
            return Reaction([_stdin(task, line)], write=line)
        return Reaction()

    def _spent(self) -> float:
        return cost(self._model, self._tokens["input"], self._tokens["cached"], self._tokens["output"])

    def _result(self, task: Task, turn: dict[str, Any]) -> Reaction:
        status = turn.get("status")
        error = turn.get("error") if isinstance(turn.get("error"), dict) else self._error
        text = self._answered_text
        for item in turn.get("items") or []:
            if isinstance(item, dict) and item.get("type") == "agentMessage" and item.get("text"):
                text = str(item["text"])
        api_error = ""
        if status == "completed":
            subtype, is_error = "success", False
        elif self._over_budget:
            subtype, is_error = ev.BUDGET_SUBTYPE, True
            text = f"stopped at its budget of {usd(self._budget or 0.0)} (spent {usd(self._spent())})"
        elif status == "interrupted":
            subtype, is_error = "interrupted", True
            text = text or "the turn was interrupted"
        else:
            subtype, is_error = "error_during_execution", True
            message = str(error.get("message") or "") if error else ""
            text = message or text or "the turn failed"
            api_error = availability(error.get("codexErrorInfo") if error else None)
        return self._end(task, text, is_error=is_error, subtype=subtype, api_error=api_error, duration_ms=_int(turn.get("durationMs")))

    def _end(self, task: Task, text: str, *, is_error: bool, subtype: str, api_error: str = "", duration_ms: int = 0) -> Reaction:
        if self._done:
            return Reaction()
        self._done = True
        items: list[Item] = [
            ev.AgentResult(task=task.id, text=text, is_error=is_error, subtype=subtype, turns=1, duration_ms=duration_ms, api_error=api_error),
            ev.UsageRecorded(
                task=task.id, cost_usd=self._spent(), input_tokens=self._tokens["input"], output_tokens=self._tokens["output"], role=task.role,
            ),
        ]
        return Reaction(items, close_stdin=True)  # the turn is over: let it exit

    # -- requests from the app server ---------------------------------------------------

    def _request(self, task: Task, rpc_id: Any, method: str, params: dict[str, Any]) -> Reaction:
        request_id = str(rpc_id)
        if method == "item/commandExecution/requestApproval":
            command = shell_script(str(params.get("command") or ""))
            tool_input: dict[str, Any] = {"command": command}
            if params.get("reason"):
                tool_input["description"] = str(params["reason"])
            return self._put(task, request_id, rpc_id, "command", [("Bash", tool_input)])
        if method == "item/fileChange/requestApproval":
            item = self._items.get(str(params.get("itemId")), {})
            calls = [_file_call(change, task.cwd) for change in item.get("changes") or [] if isinstance(change, dict)]
            if not calls:
                calls = [("Edit", {"file_path": str(params.get("grantRoot") or task.cwd)})]
            return self._put(task, request_id, rpc_id, "file", calls)
        if method == "item/tool/requestUserInput":
            questions = [q for q in params.get("questions") or [] if isinstance(q, dict)]
            if not questions:
                return self._reply(task, rpc_id, {"answers": {}})
            self._pending[request_id] = {"kind": "question", "rpc": rpc_id, "questions": questions, "answers": {}, "index": 0}
            return Reaction([self._ask(task, request_id)])
        if method == "mcpServer/elicitation/request":
            return self._reply(task, rpc_id, {"action": "decline"})
        error = {"id": rpc_id, "error": {"code": -32601, "message": f"orchestra does not handle {method!r}"}}
        line = _line(error)
        return Reaction([_stdin(task, line)], write=line)

    def _put(self, task: Task, request_id: str, rpc_id: Any, kind: str, calls: list[tuple[str, dict[str, Any]]]) -> Reaction:
        """An approval: the role's disallowed tools decline it; else each call goes to the policy."""
        self._pending[request_id] = {"kind": kind, "rpc": rpc_id, "calls": calls, "rulings": {}}
        summary = "; ".join(summarize(tool, tool_input) for tool, tool_input in calls)
        barred = next((tool for tool, _ in calls if tool in self._disallowed), None)
        if barred is not None:
            decided = ev.PermissionDecided(task=task.id, request_id=request_id, tool=barred, summary=summary, effect="deny", by=f"the role's disallowed_tools ({barred})")
            return self._verdict(task, request_id, False, [decided])
        if kind == "file" and self._accept_edits:
            decided = ev.PermissionDecided(task=task.id, request_id=request_id, tool=calls[0][0], summary=summary, effect="allow", by="permission mode acceptEdits")
            return self._verdict(task, request_id, True, [decided])
        return Reaction(asks=[Ask(f"{request_id}:{n}" if len(calls) > 1 else request_id, tool, tool_input, "permission")
                              for n, (tool, tool_input) in enumerate(calls)])

    def ruled(self, task: Task, ask: Ask, ruling: Ruling | None) -> Reaction:
        request_id = ask.request_id.split(":", 1)[0]
        pending = self._pending.get(request_id)
        if pending is None or "calls" not in pending:
            return Reaction()
        pending["rulings"][ask.request_id] = ruling
        if len(pending["rulings"]) < len(pending["calls"]):
            return Reaction()  # the other files of the patch are still to be ruled on
        rulings = list(pending["rulings"].values())
        calls = pending["calls"]
        summary = "; ".join(summarize(tool, tool_input) for tool, tool_input in calls)
        deny = next((r for r in rulings if r is not None and r.effect == "deny"), None)
        if deny is not None:
            decided = ev.PermissionDecided(task=task.id, request_id=request_id, tool=calls[0][0], summary=summary, effect="deny", by=deny.by)
            return self._verdict(task, request_id, False, [decided])
        if all(r is not None and r.effect == "allow" for r in rulings):
            decided = ev.PermissionDecided(task=task.id, request_id=request_id, tool=calls[0][0], summary=summary, effect="allow", by=rulings[0].by)
            return self._verdict(task, request_id, True, [decided])
        prompt = f"{calls[0][0]}: {summary}"
        asking = next((r for r in rulings if r is not None), None)
        if asking is not None:
            prompt += f" [{asking.by} asks]"
        return Reaction([ev.InputRequested(task=task.id, request_id=request_id, kind="permission", prompt=shorten(prompt, 300), tool=calls[0][0])])

    def _verdict(self, task: Task, request_id: str, allow: bool, items: list[Item]) -> Reaction:
        pending = self._pending.pop(request_id)
        reply = self._reply(task, pending["rpc"], {"decision": "accept" if allow else "decline"})
        return Reaction([*items, *reply.items], reply.write)

    def _reply(self, task: Task, rpc_id: Any, result: dict[str, Any]) -> Reaction:
        line = _line({"id": rpc_id, "result": result})
        return Reaction([_stdin(task, line)], write=line)

    def _ask(self, task: Task, request_id: str) -> ev.InputRequested:
        pending = self._pending[request_id]
        questions = pending["questions"]
        index = pending["index"]
        q = questions[index]
        prompt = str(q.get("question") or q.get("header") or "")
        if len(questions) > 1:
            prompt = f"({index + 1}/{len(questions)}) {prompt}"
        options = [str(o.get("label", "")) for o in q.get("options") or [] if isinstance(o, dict)]
        return ev.InputRequested(
            task=task.id,
            request_id=request_id if len(questions) == 1 else f"{request_id}#{index}",
            kind="question",
            prompt=prompt,
            options=options,
            tool="request_user_input",
        )

    # -- answers ------------------------------------------------------------------------

    def answer(self, task: Task, given: ev.InputGiven) -> Reaction:
        request_id = given.request_id.split("#", 1)[0]
        pending = self._pending.get(request_id)
        if pending is None:
            return Reaction()
        denied = given.answer == "deny" or given.answer.startswith("deny: ")
        if pending["kind"] == "question":
            if not denied:
                q = pending["questions"][pending["index"]]
                pending["answers"][str(q.get("id") or pending["index"])] = {"answers": [given.answer]}
                pending["index"] += 1
                if pending["index"] < len(pending["questions"]):
                    return Reaction([self._ask(task, request_id)])
            del self._pending[request_id]
            return self._reply(task, pending["rpc"], {"answers": pending["answers"] if not denied else {}})
        return self._verdict(task, request_id, not denied, [])

    # -- transcripts --------------------------------------------------------------------

    @staticmethod
    def shown_as_stored(stream: str) -> bool:
        return stream == "stderr"

    @staticmethod
    def render(stream: str, data: bytes) -> bytes:
        if stream == "stderr":
            return data
        out: list[str] = []
        for raw in data.splitlines():
            try:
                m = _decode(raw)
            except msgspec.DecodeError:
                out.append(raw.decode(errors="replace"))
                continue
            if isinstance(m, dict):
                out += _render_stdin(m) if stream == "stdin" else _render_stdout(m)
        return "".join(line + "\n" for line in out).encode()


def availability(info: Any) -> str:
    """Whether a failed turn's `codexErrorInfo` is about the API's availability (and which
    kind, for `orchestrad.retries`); "" for errors that retrying cannot mend."""
    if isinstance(info, str):
        return AVAILABILITY.get(info, "")
    if isinstance(info, dict) and len(info) == 1:
        [(kind, detail)] = info.items()
        status = detail.get("httpStatusCode") if isinstance(detail, dict) else None
        if kind not in ("httpConnectionFailed", "responseStreamConnectionFailed", "responseStreamDisconnected", "responseTooManyFailedAttempts"):
            return ""
        if status is None:
            return "connection error"
        if status == 429:
            return "rate limited"
        if status >= 500 or status == 408:
            return "server error"
    return ""


def _file_call(change: dict[str, Any], cwd: str) -> tuple[str, dict[str, Any]]:
    path = str(change.get("path") or "")
    if path and not os.path.isabs(path):
        path = os.path.join(cwd or "/", path)
    kind = change.get("kind") if isinstance(change.get("kind"), dict) else {"type": change.get("kind")}
    if kind.get("type") == "add":
        return "Write", {"file_path": path, "content": str(change.get("diff") or "")}
    tool_input = {"file_path": path, "diff": str(change.get("diff") or "")}
    if kind.get("type") == "update" and kind.get("move_path"):
        tool_input["move_path"] = str(kind["move_path"])
    return "Edit", tool_input


def _tool_used(task: Task, item: Any) -> list[Item]:
    if not isinstance(item, dict):
        return []
    if item.get("type") == "commandExecution":
        command = shell_script(str(item.get("command") or ""))
        return [ev.ToolUsed(task=task.id, tool="Bash", summary=summarize("Bash", {"command": command}))]
    if item.get("type") == "fileChange":
        return [ev.ToolUsed(task=task.id, tool=tool, summary=summarize(tool, tool_input))
                for tool, tool_input in (_file_call(c, task.cwd) for c in item.get("changes") or [] if isinstance(c, dict))]
    if item.get("type") in ("mcpToolCall", "dynamicToolCall", "webSearch"):
        return [ev.ToolUsed(task=task.id, tool=str(item.get("tool") or item.get("type")), summary=shorten(str(item.get("query") or item.get("arguments") or ""), 160))]
    return []


def _stdin(task: Task, line: bytes) -> tuple[ev.Event, bytes]:
    return (ev.OutputAppended(task=task.id, stream="stdin", size=len(line)), line)


def _first_line(text: str, limit: int = 200) -> str:
    line = next((x for x in text.splitlines() if x.strip()), "")
    return shorten(line, limit)


def _render_stdout(m: dict[str, Any]) -> list[str]:
    method = m.get("method")
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    if method is None:
        result = m.get("result") if isinstance(m.get("result"), dict) else {}
        thread = result.get("thread")
        if m.get("id") == THREAD and isinstance(thread, dict):
            return [f"── session {thread.get('id', '?')} · {result.get('model', '?')} · {thread.get('cwd', '')}"]
        if isinstance(m.get("error"), dict):
            return [f"✗ {m['error'].get('message', '')}"]
        return []
    item = params.get("item") if isinstance(params.get("item"), dict) else {}
    if method == "item/started" and item.get("type") == "commandExecution":
        return [f"→ Bash: {summarize('Bash', {'command': shell_script(str(item.get('command') or ''))})}"]
    if method == "item/started" and item.get("type") == "fileChange":
        return [f"→ {tool}: {summarize(tool, tool_input)}" for tool, tool_input in (_file_call(c, "") for c in item.get("changes") or [] if isinstance(c, dict))]
    if method == "item/completed" and item.get("type") == "agentMessage" and str(item.get("text") or "").strip():
        return [str(item["text"]).rstrip()]
    if method == "item/completed" and item.get("type") in ("commandExecution", "fileChange"):
        status = item.get("status")
        if status == "declined":
            return ["  ✗ declined"]
        if item.get("type") == "commandExecution":
            output = _first_line(str(item.get("aggregatedOutput") or ""))
            code = item.get("exitCode")
            mark = "←" if code == 0 else "✗"
            return [f"  {mark} exit {code}" + (f": {output}" if output else "")]
        return [f"  {'←' if status == 'completed' else '✗'} {status}"]
    if method == "item/commandExecution/requestApproval":
        return [f"? permission for Bash: {summarize('Bash', {'command': shell_script(str(params.get('command') or ''))})}"]
    if method == "item/fileChange/requestApproval":
        return ["? permission for the file change above"]
    if method == "item/tool/requestUserInput":
        lines = []
        for q in params.get("questions") or []:
            if isinstance(q, dict):
                options = " / ".join(f"{i}. {o.get('label')}" for i, o in enumerate(q.get("options") or [], 1) if isinstance(o, dict))
                lines.append(f"? {q.get('question', '')}" + (f" [{options}]" if options else ""))
        return lines
    if method == "error" and params.get("willRetry"):
        error = params.get("error") if isinstance(params.get("error"), dict) else {}
        return [f"  … API error: {_first_line(str(error.get('message', '')))} (the CLI retries)"]
    if method == "turn/completed":
        turn = params.get("turn") if isinstance(params.get("turn"), dict) else {}
        seconds = _int(turn.get("durationMs")) / 1000
        if turn.get("status") == "completed":
            return [f"✓ turn completed · {seconds:.1f}s"]
        error = turn.get("error") if isinstance(turn.get("error"), dict) else {}
        return [f"✗ {turn.get('status')}: {_first_line(str(error.get('message') or ''))}".rstrip(": ") + f" · {seconds:.1f}s"]
    return []


def _render_stdin(m: dict[str, Any]) -> list[str]:
    if m.get("method") == "turn/start":
        inputs = (m.get("params") or {}).get("input") or []
        text = next((str(i.get("text", "")) for i in inputs if isinstance(i, dict) and i.get("type") == "text"), "")
        return [f"» {_first_line(text, 500)}"]
    if m.get("method") == "turn/interrupt":
        return ["  (interrupted: the budget is spent)"]
    result = m.get("result")
    if isinstance(result, dict):
        if result.get("decision") == "accept":
            return ["  allowed"]
        if result.get("decision") in ("decline", "cancel"):
            return ["  denied"]
        answers = result.get("answers")
        if isinstance(answers, dict):
            given = [a for v in answers.values() if isinstance(v, dict) for a in v.get("answers") or []]
            return [f"  answered: {a}" for a in given] or ["  (no answer)"]
    return []


AGENT = CodexAgent
