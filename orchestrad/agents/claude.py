"""The `claude` agent: Claude Code in print mode, speaking stream-json on stdin and stdout.

Started as::

    claude -p --input-format stream-json --output-format stream-json --verbose
           --permission-prompt-tool stdio --permission-mode MODE
           [--append-system-prompt ROLE_PROMPT] [--allowed-tools ...] [--disallowed-tools ...]
           [--model M] [--max-budget-usd B] [--resume SESSION]

stdin gets one JSON object per line: an `initialize` control request (which registers a
PreToolUse hook), then the user's message. stdout gives one JSON object per line:
`system/init` (the session id), `assistant` (text and tool uses), `user` (tool results),
`result` (the answer, cost and tokens), and `control_request`s:

* `hook_callback` before every tool call: the daemon's permission policy rules on it
  (allow, deny, ask), or lets the CLI's own rules apply when no rule decides;
* `can_use_tool` when the CLI wants permission for a tool: the policy again, and when no
  rule decides, `InputRequested` for a person; or when it asks the person a question (tool
  `AskUserQuestion`), which always goes to a person.

Answers go back as `control_response`s. After the result, stdin is closed and the CLI
exits.

An error result says whether the API's availability ended the attempt (`AgentResult.api_error`):
a usage limit, from a `rate_limit_event` whose status is "rejected" with `resetsAt` (only
under an OAuth login), or a transient failure, from the result's `api_error_status` and
the synthetic assistant message's `error`; `orchestrad.retries` parks or retries the task.
The CLI is started with `CLAUDE_CODE_MAX_RETRIES=0` (unless the environment sets it), so
that retrying is the daemon's to do and to show.

What a run cost is counted once (`_spent`): 2.1.277 and later report a resumed session's
running total, 2.1.3xx also what was spent since the previous result. The CLI may withdraw a
request (`control_cancel_request`), say that only a person may allow a call
(`requires_user_interaction`), and say why a turn ended (`terminal_reason`). Claude Code
2.1.197 to 2.1.332 are tested (tests/claude_notes.md).

Output is stored as whole JSON lines (the raw transcript, for `logs --raw`); what was
written to stdin is stored too, as stream "stdin", so that `render` can show a readable
transcript with the questions and their answers (`claude_render`). The module is a little
over 500 lines because it is one job, the CLI's protocol, whose parts share one adapter's
state (the pending requests, the session, the running total); the rendering is apart.
"""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec

from orchestra.shared.protocol import Role
from orchestrad import events as ev
from orchestrad import agents, roles
from orchestrad.agents import Agent, Ask, Item, Reaction, Ruling, SandboxState, Traits, read_message
from orchestrad.agents import claude_render
from orchestrad.agents.claude_render import QUESTION_TOOL, message_blocks, summarize
from orchestrad.config import Config
from orchestrad.retries import USAGE_LIMIT
from orchestrad.state import Task

MAX_LINE = 16 << 20  # a longer line is stored unparsed rather than buffered further
NOT_FOUND = (
    "claude not found: install @anthropic-ai/claude-code or set the agent path in config "
    "(orchestra config set claude_path /path/to/claude)"
)
HOOK_ID = "orchestra-policy"
# Asked of the CLI at start-up: every tool call goes through a PreToolUse hook answered on
# stdin, so the daemon's policy sees calls the CLI would make without asking (a read-only
# command, a read), not only those it would ask about.
HOOKS = {"PreToolUse": [{"matcher": None, "hookCallbackIds": [HOOK_ID]}]}

# In Claude Code's config directory, what would make a later, unsandboxed run of it do what
# a sandboxed agent wrote there: settings (hooks, permissions), MCP servers (.claude.json),
# memory, commands, agents, skills, hooks, plugins, output styles. Kept read-only in a
# sandbox; those with a value are made first where missing (None: an empty directory), so
# that an agent cannot make them instead.
PROTECTED: dict[str, str | None] = {
    "settings.json": "{}\n",
    "settings.local.json": "",
    ".claude.json": "",
    "CLAUDE.md": "",
    "commands": None,
    "agents": None,
    "skills": None,
    "hooks": None,
    "plugins": None,
    "output-styles": None,
}
# What older CLIs (1.0.x) said of a usage limit, with its reset as epoch seconds.
OLD_LIMIT_TEXT = re.compile(r"usage limit reached\|(\d{9,12})")

# From this version on, a resumed process's `total_cost_usd` starts from what the session had
# cost (2.1.276 started at 0; both measured, tests/claude_notes.md).
SESSION_TOTALS = (2, 1, 277)
# Why a turn ended (`result.terminal_reason`, 2.1.3xx), for a result that says nothing else;
# those of FAILED_ENDINGS make it a failure even without `is_error`.
ENDINGS = {
    "blocking_limit": "the conversation reached the model's context limit",
    "rapid_refill_breaker": "the conversation kept refilling the model's context",
    "prompt_too_long": "the prompt is too long for the model's context",
    "image_error": "an image could not be sent to the model",
    "model_error": "the model failed to answer",
    "api_error": "the API failed",
    "malformed_tool_use_exhausted": "the model's tool calls stayed unreadable",
    "budget_exhausted": "the budget it was given is spent",
    "structured_output_retry_exhausted": "the model never gave the structured output asked for",
    "tool_deferred_unavailable": "a tool it needed was unavailable",
    "turn_setup_failed": "the turn could not be set up",
    "aborted_streaming": "the turn was interrupted while the model answered",
    "aborted_tools": "the turn was interrupted while a tool ran",
    "stop_hook_prevented": "a stop hook prevented the turn from ending",
    "hook_stopped": "a hook stopped the turn",
    "max_turns": "the turn reached its limit of model calls",
}
FAILED_ENDINGS = frozenset(ENDINGS) - {"aborted_streaming", "aborted_tools", "stop_hook_prevented", "hook_stopped", "max_turns"}
WITHDRAWN = "(withdrawn by the agent)"

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _line(obj: Any) -> bytes:
    return _encode(obj) + b"\n"


class ClaudeAgent(Agent):
    name = "claude"
    program = "claude"
    traits = Traits(
        converses=True,
        reports_result=True,
        needs_network=True,
        credentials=("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL", "CLAUDE_CONFIG_DIR"),
        reports_cost=True,
    )
    inherit_env = ("ANTHROPIC_*", "CLAUDE_*")  # its API key, base URL, OAuth token
    # The daemon owns retries (orchestrad.retries): the CLI's own would wait up to minutes
    # inside a "running" task, holding its slot, unseen. The environment may still set it.
    default_env = {"CLAUDE_CODE_MAX_RETRIES": "0"}

    def __init__(self) -> None:
        self._partial = bytearray()
        self._last_stderr = ""
        self._pending: dict[str, dict[str, Any]] = {}  # control request id -> what it asked
        self._limit: dict[str, Any] | None = None  # the last `rate_limit_event` that said "rejected"
        self._api_error = ""  # the `error` of the CLI's synthetic assistant message for an API error
        self._cancelled: set[str] = set()  # control requests the CLI withdrew (control_cancel_request)
        self._last_text = ""  # the latest assistant text of this turn (a result without text falls back to it)
        self._version: tuple[int, ...] = ()  # the CLI's, from system/init
        self._resumed = ""  # the session this process resumes ("" for a new one)
        self._session_cost = 0.0  # what that session cost before this process (the task's record)
        self._total: float | None = None  # the running total of this process's latest result

    # -- starting -----------------------------------------------------------------------

    def command(self, task: Task, config: Config, custom_roles: dict[str, Role]) -> list[str]:
        role = roles.get(task.role, custom_roles)
        argv = [
            agents.program(self.name, config), "-p",
            "--input-format", "stream-json",
            "--output-format", "stream-json",
            "--verbose",
            "--permission-prompt-tool", "stdio",
        ]
        mode = config.permission_mode
        if role is not None and role.permission_mode != "default":
            mode = role.permission_mode
        argv += ["--permission-mode", mode]
        if role is not None and role.prompt:
            argv += ["--append-system-prompt", role.prompt]
        allowed = [*(role.allowed_tools if role else []), *config.allowed_tools]
        disallowed = [*(role.disallowed_tools if role else []), *config.disallowed_tools]
        if allowed:
            argv += ["--allowed-tools", ",".join(dict.fromkeys(allowed))]
        if disallowed:
            argv += ["--disallowed-tools", ",".join(dict.fromkeys(disallowed))]
        model = task.spec.model or (role.model if role else None)
        if model:
            argv += ["--model", model]
        if task.spec.budget_usd is not None:  # what it may still spend (launch.prepared)
            argv += ["--max-budget-usd", f"{task.spec.budget_usd:.6f}".rstrip("0").rstrip(".")]
        if task.session_id and task.continued in ("follow-up", "resume"):
            argv += ["--resume", task.session_id]
            self._resumed, self._session_cost = task.session_id, task.session_cost_usd
        return argv

    @classmethod
    def missing_credentials(cls, env: dict[str, str], home: str) -> str:
        """An API key or token in the environment, or a login's credentials file in its
        config directory (where a macOS keychain login is not seen)."""
        if any(env.get(name) for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")):
            return ""
        config = env.get("CLAUDE_CONFIG_DIR") or os.path.join(home, ".claude")
        if os.path.isfile(os.path.join(config, ".credentials.json")):
            return ""
        return ("no credentials: set ANTHROPIC_API_KEY in the daemon's environment, or run `claude` once "
                "and log in (orchestra daemon stop, then start it again so it sees them)")

    def sandbox_state(self, env: dict[str, str]) -> SandboxState:
        """Its config directory ($CLAUDE_CONFIG_DIR, else ~/.claude), writable but for what
        `PROTECTED` names. What 2.1.197 writes (traced with strace): sessions, projects,
        shell snapshots, session-env and backups, all in there; and its global config,
        ~/.claude.json (in the config directory when $CLAUDE_CONFIG_DIR is set), through a
        lock directory and a temporary file beside it, then a rename. That file stays
        read-only: the CLI reads it and, unable to save it, carries on without (tested)."""
        config = env.get("CLAUDE_CONFIG_DIR") or (os.path.join(env["HOME"], ".claude") if env.get("HOME") else "")
        if not config:
            return SandboxState()
        return SandboxState(
            writable=(config,),
            read_only=tuple(os.path.join(config, name) for name in PROTECTED),
            seed=tuple((os.path.join(config, name), content) for name, content in PROTECTED.items() if content != ""),
        )

    def workdir_state(self, cwd: str, env: dict[str, str]) -> list[str]:
        """<config>/projects/<cwd with every character but a letter or digit as '-'>, where
        the CLI keeps a project's session transcripts (what `--resume` reads). A name past
        200 characters ends in a hash of the CLI's own, not computed here: none then."""
        config = env.get("CLAUDE_CONFIG_DIR") or (os.path.join(env["HOME"], ".claude") if env.get("HOME") else "")
        name = re.sub(r"[^a-zA-Z0-9]", "-", os.path.realpath(cwd))
        return [os.path.join(config, "projects", name)] if config and len(name) <= 200 else []

    def greeting(self, task: Task) -> Reaction:
        text = task.pending_message or task.spec.prompt
        init = _line({"type": "control_request", "request_id": f"init-{task.id}", "request": {"subtype": "initialize", "hooks": HOOKS}})
        user = _line({"type": "user", "message": {"role": "user", "content": text}, "parent_tool_use_id": None, "session_id": ""})
        return Reaction(items=[_stdin(task, user)], write=init + user)

    def spawn_error(self, message: str) -> str:
        return NOT_FOUND if message.startswith("no such program") else message

    def failure_detail(self) -> str:
        return self._last_stderr

    # -- output -------------------------------------------------------------------------

    def output(self, task: Task, stream: str, chunk: bytes) -> Reaction:
        if stream != "stdout":
            lines = [line for line in chunk.decode(errors="replace").splitlines() if line.strip()]
            if lines:
                self._last_stderr = lines[-1].strip()[:300]
            return Reaction([(ev.OutputAppended(task=task.id, stream=stream, size=len(chunk)), chunk)])
        self._partial += chunk
        end = self._partial.rfind(b"\n") + 1
        if end == 0:
            if len(self._partial) <= MAX_LINE:
                return Reaction()
            end = len(self._partial)  # give up on parsing this monster; keep it raw
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
        kind = m.get("type")
        if kind == "system" and m.get("subtype") == "init" and m.get("session_id"):
            self._version = _version(m.get("claude_code_version"))
            return Reaction([ev.SessionStarted(task=task.id, session_id=str(m["session_id"]), model=str(m.get("model") or ""))])
        if kind == "rate_limit_event":
            info = m.get("rate_limit_info")
            if isinstance(info, dict) and info.get("status") == "rejected":
                self._limit = info
            return Reaction()
        if kind == "assistant":
            if m.get("error"):
                self._api_error = str(m["error"])
            texts = [str(b.get("text", "")).strip() for b in message_blocks(m) if b.get("type") == "text"]
            if any(texts) and m.get("parent_tool_use_id") is None:  # not a subagent's
                self._last_text = "\n".join(t for t in texts if t)
            return Reaction([
                ev.ToolUsed(task=task.id, tool=str(block.get("name", "?")), summary=summarize(str(block.get("name")), block.get("input")))
                for block in message_blocks(m)
                if block.get("type") == "tool_use"
            ])
        if kind == "result":
            return self._result(task, m)
        if kind == "control_request":
            return self._control_request(task, m)
        if kind == "control_cancel_request":  # the CLI withdrew a request: it waits no more
            request_id = str(m.get("request_id", ""))
            self._cancelled.add(request_id)
            if self._pending.pop(request_id, None) is not None and task.waiting is not None and _waiting_id(request_id, task) == task.waiting.request_id:
                return Reaction([ev.InputGiven(task=task.id, request_id=task.waiting.request_id, answer=WITHDRAWN)])
        return Reaction()

    def _result(self, task: Task, m: dict[str, Any]) -> Reaction:
        is_error = bool(m.get("is_error")) or m.get("terminal_reason") in FAILED_ENDINGS
        text = self._result_text(m, is_error)
        self._last_text = ""
        api_error, resets_at = self._availability(m, text) if is_error else ("", None)
        cost, tokens_in, tokens_out = self._spent(m)
        items: list[Item] = [
            ev.AgentResult(
                task=task.id,
                text=text,
                is_error=is_error,
                subtype=str(m.get("subtype", "")),
                turns=int(m.get("num_turns") or 0),
                duration_ms=int(m.get("duration_ms") or 0),
                api_error=api_error,
                resets_at=resets_at,
            ),
            ev.UsageRecorded(
                task=task.id, cost_usd=cost, input_tokens=tokens_in, output_tokens=tokens_out, role=task.role,
                session=str(m.get("session_id") or ""),
            ),
        ]
        return Reaction(items, close_stdin=True)  # the conversation turn is over: let it exit

    def _result_text(self, m: dict[str, Any], is_error: bool) -> str:
        """The result's words: its `result`; for an error without one, its `errors` (but the
        CLI's own diagnostics); else the turn's last assistant text; else, for an error, why
        the turn ended (`terminal_reason`, the subtype)."""
        text = m.get("result")
        if isinstance(text, str) and text.strip():
            return text
        errors = m.get("errors")
        errors = [str(e) for e in errors if not str(e).startswith("[ede_diagnostic]")] if isinstance(errors, list) else []
        if is_error and errors:
            return "; ".join(errors)
        if self._last_text:
            return self._last_text
        if not is_error:
            return ""
        reason = str(m.get("terminal_reason") or "")
        return ENDINGS.get(reason, f"the turn ended: {reason or m.get('subtype') or 'no reason given'}")

    def _spent(self, m: dict[str, Any]) -> tuple[float, int, int]:
        """What this result's run cost (dollars, tokens in, tokens out), counted once.

        `total_cost_usd` is a running total: of this process up to 2.1.276, and from 2.1.277
        on of the session, a resumed process starting from what the session had cost. From
        2.1.3xx the result also says what was spent since the previous result
        (`model_usage_since_last_result`), which is summed when present. Else the cost is the
        total less what was already counted: this process's previous total, or for its first
        result, what the resumed session had cost (the task's record) when the CLI's totals
        carry it (tests/claude_notes.md, "Cost per run")."""
        total = float(m.get("total_cost_usd") or 0.0)
        usage = m.get("usage") if isinstance(m.get("usage"), dict) else {}
        tokens_in = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        tokens_out = int(usage.get("output_tokens") or 0)
        since = m.get("model_usage_since_last_result")
        if isinstance(since, dict):
            models = [u for u in since.values() if isinstance(u, dict)]
            cost = sum(float(u.get("costUSD") or 0.0) for u in models)
            tokens_in = sum(int(u.get(k) or 0) for u in models for k in ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens"))
            tokens_out = sum(int(u.get("outputTokens") or 0) for u in models)
        elif self._total is not None:
            cost = total - self._total
        elif self._resumed and self._resumed == m.get("session_id") and self._version >= SESSION_TOTALS:
            cost = total - self._session_cost
        else:
            cost = total
        if total > 0:  # an error result may carry zeroed totals
            self._total = total
        return max(0.0, cost), tokens_in, tokens_out

    def _availability(self, m: dict[str, Any], text: str) -> tuple[str, float | None]:
        """Whether an error result is about the API's availability, and which kind: a usage
        limit (and when it resets), or a transient failure worth retrying. "" for errors
        that retrying cannot mend (a bad key, a bad request, the task's own budget).

        What the CLI says (tests/claude_notes.md, "Usage limits and transient errors"): a
        `rate_limit_event` whose status is "rejected" with `resetsAt` before the result is a
        usage limit; without `resetsAt` it is the server throttling ("not your usage
        limit"). The result's `api_error_status` gives the HTTP status (None when no answer
        came), and the synthetic assistant message's `error` says "server_error" for a
        connection that failed."""
        reset = self._limit.get("resetsAt") if self._limit is not None else None
        old = OLD_LIMIT_TEXT.search(text)
        if isinstance(reset, (int, float)) and not isinstance(reset, bool) and reset > 0:
            return USAGE_LIMIT, float(reset)
        if old is not None:
            return USAGE_LIMIT, float(old.group(1))
        status = m.get("api_error_status")
        status = status if isinstance(status, int) and not isinstance(status, bool) else None
        if status == 529:
            return "overloaded", None
        if status == 429 or self._limit is not None:
            return "rate limited", None
        if status is not None and (status >= 500 or status == 408):
            return "server error", None
        if status is None and self._api_error == "server_error":
            return "connection error", None
        return "", None

    def _control_request(self, task: Task, m: dict[str, Any]) -> Reaction:
        request_id = str(m.get("request_id", ""))
        request = m.get("request") or {}
        subtype = request.get("subtype")
        if subtype == "hook_callback":
            return self._hook(task, request_id, request)
        if subtype != "can_use_tool":
            error = {"type": "control_response", "response": {"subtype": "error", "request_id": request_id, "error": f"orchestra does not handle {subtype!r}"}}
            return Reaction(write=_line(error))
        tool = str(request.get("tool_name", "?"))
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        if tool == QUESTION_TOOL and isinstance(tool_input.get("questions"), list) and tool_input["questions"]:
            self._pending[request_id] = {"tool": tool, "input": tool_input, "answers": {}, "index": 0}
            return Reaction([self._ask(task, request_id)])
        self._pending[request_id] = {
            "tool": tool, "input": tool_input, "blocked_path": str(request.get("blocked_path") or ""),
            # the CLI says only a person may allow it: no rule, no stored grant (2.1.3xx)
            "person": request.get("requires_user_interaction") is True,
        }
        return Reaction(asks=[Ask(request_id, tool, tool_input, "permission")])

    def _hook(self, task: Task, request_id: str, request: dict[str, Any]) -> Reaction:
        """A PreToolUse hook call: put the tool call to the policy before the CLI's own rules."""
        hook_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        tool = str(hook_input.get("tool_name", ""))
        if request.get("callback_id") != HOOK_ID or hook_input.get("hook_event_name") != "PreToolUse" or not tool or tool == QUESTION_TOOL:
            return self._reply(task, request_id, {})  # nothing to rule on: carry on
        tool_input = hook_input.get("tool_input") if isinstance(hook_input.get("tool_input"), dict) else {}
        return Reaction(asks=[Ask(request_id, tool, tool_input, "before")])

    def ruled(self, task: Task, ask: Ask, ruling: Ruling | None) -> Reaction:
        summary = summarize(ask.tool, ask.input)
        decided: list[Item] = []
        if ruling is not None and ruling.effect in ("allow", "deny"):
            decided.append(ev.PermissionDecided(task=task.id, request_id=ask.request_id, tool=ask.tool, summary=summary, effect=ruling.effect, by=ruling.by))
        if ask.request_id in self._cancelled:
            return Reaction()  # withdrawn while the policy ruled on it
        pending = self._pending.get(ask.request_id)
        if pending is not None and pending["person"] and ruling is not None and ruling.effect == "allow":
            ruling, decided = None, []  # a rule may deny it, never allow it
        if ask.stage == "before":
            if ruling is None:
                return self._reply(task, ask.request_id, {})  # the CLI's own rules apply
            output: dict[str, Any] = {"hookEventName": "PreToolUse", "permissionDecision": ruling.effect}
            if ruling.effect != "ask":
                output["permissionDecisionReason"] = f"orchestra's policy: {ruling.by}"
            reply = self._reply(task, ask.request_id, {"hookSpecificOutput": output})
            return Reaction([*decided, *reply.items], reply.write)
        if pending is None:
            return Reaction()
        if ruling is not None and ruling.effect in ("allow", "deny"):
            if ruling.effect == "allow":
                verdict = {"behavior": "allow", "updatedInput": pending["input"]}
            else:
                verdict = {"behavior": "deny", "message": f"Denied by orchestra's policy: {ruling.by}."}
            del self._pending[ask.request_id]
            line = _line({"type": "control_response", "response": {"subtype": "success", "request_id": ask.request_id, "response": verdict}})
            return Reaction([*decided, _stdin(task, line)], write=line)
        prompt = f"{ask.tool}: {summary}"
        if pending["blocked_path"]:
            prompt += f" (touches {pending['blocked_path']})"
        if ruling is not None:
            prompt += f" [{ruling.by} asks]"
        elif pending["person"]:
            prompt += " [Claude Code asks a person, not a rule]"
        return Reaction([ev.InputRequested(task=task.id, request_id=ask.request_id, kind="permission", prompt=prompt, tool=ask.tool)])

    def _reply(self, task: Task, request_id: str, response: dict[str, Any]) -> Reaction:
        line = _line({"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": response}})
        return Reaction([_stdin(task, line)], write=line)

    def _ask(self, task: Task, request_id: str) -> ev.InputRequested:
        pending = self._pending[request_id]
        questions = pending["input"]["questions"]
        index = pending["index"]
        q = questions[index] if isinstance(questions[index], dict) else {"question": str(questions[index])}
        prompt = str(q.get("question", ""))
        if len(questions) > 1:
            prompt = f"({index + 1}/{len(questions)}) {prompt}"
        options = [str(o.get("label", "")) for o in q.get("options") or [] if isinstance(o, dict)]
        if q.get("multiSelect") is True and options:
            prompt += " (one or more: their numbers, e.g. 1,3)"
        return ev.InputRequested(
            task=task.id,
            request_id=request_id if len(questions) == 1 else f"{request_id}#{index}",
            kind="question",
            prompt=prompt,
            options=options,
            tool=QUESTION_TOOL,
        )

    # -- answers ------------------------------------------------------------------------

    def answer(self, task: Task, given: ev.InputGiven) -> Reaction:
        request_id = given.request_id.split("#", 1)[0]
        pending = self._pending.get(request_id)
        if pending is None:
            return Reaction()
        denied = given.answer == "deny" or given.answer.startswith("deny: ")
        if pending["tool"] == QUESTION_TOOL and not denied:
            questions = pending["input"]["questions"]
            q = questions[pending["index"]]
            q = q if isinstance(q, dict) else {"question": str(q)}
            pending["answers"][str(q.get("question", ""))] = _chosen(q, given.answer)
            pending["index"] += 1
            if pending["index"] < len(questions):
                return Reaction([self._ask(task, request_id)])
            verdict = {"behavior": "allow", "updatedInput": {**pending["input"], "answers": pending["answers"]}}
        elif denied:
            message = given.answer[len("deny: "):] if given.answer.startswith("deny: ") else ""
            verdict = {"behavior": "deny", "message": message or "The user denied this request."}
        else:
            verdict = {"behavior": "allow", "updatedInput": pending["input"]}
        del self._pending[request_id]
        line = _line({"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": verdict}})
        return Reaction([_stdin(task, line)], write=line)

    # -- transcripts --------------------------------------------------------------------

    @staticmethod
    def shown_as_stored(stream: str) -> bool:
        return stream == "stderr"

    @staticmethod
    def render(stream: str, data: bytes) -> bytes:
        return claude_render.render(stream, data)


def _chosen(question: dict[str, Any], answer: str) -> str:
    """A multi-select question's answer as the CLI takes it: the labels chosen, by number or
    by name, joined by ", " ("1,3" -> "Red, Blue"); words that name no option stay as given."""
    labels = [str(o.get("label", "")) for o in question.get("options") or [] if isinstance(o, dict)]
    if question.get("multiSelect") is not True or not labels:
        return answer
    by_name = {label.casefold(): label for label in labels}
    chosen = []
    for part in (x.strip() for x in answer.split(",")):
        if part.isdigit() and 1 <= int(part) <= len(labels):
            chosen.append(labels[int(part) - 1])
        elif part.casefold() in by_name:
            chosen.append(by_name[part.casefold()])
        else:
            return answer
    return ", ".join(dict.fromkeys(chosen)) or answer


def _version(text: Any) -> tuple[int, ...]:
    """"2.1.332" -> (2, 1, 332); () when it is not a version."""
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(x) for x in found.groups()) if found else ()


def _stdin(task: Task, line: bytes) -> tuple[ev.Event, bytes]:
    return (ev.OutputAppended(task=task.id, stream="stdin", size=len(line)), line)


def _waiting_id(request_id: str, task: Task) -> str:
    if task.waiting is not None and task.waiting.request_id.split("#", 1)[0] == request_id:
        return task.waiting.request_id
    return request_id


AGENT = ClaudeAgent
