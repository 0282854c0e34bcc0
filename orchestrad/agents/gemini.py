"""The `gemini` agent: Gemini CLI (@google/gemini-cli, tested with 0.61.0) in its Agent Client
Protocol mode, through `orchestrad.agents.acp`. Started as::

    gemini --acp --policy orchestrad/agents/gemini-policy.toml [--model M]

What it gives and what it does not (tests/gemini_notes.md has the evidence):

* Permissions before every tool call: the policy file makes every tool call ask the client
  (`session/request_permission`), so orchestra's policy rules on reads too. The request
  names no tool input, so the call is read back from what it has: the tool's name (the
  `toolCallId` starts with it: `run_shell_command__...`), its title (a shell command's
  line), its diff (a file's path and new text) and locations. Where no rule decides, this
  adapter does what Gemini CLI does by default: read-only tools run, the others wait for a
  person (`permission_mode` acceptEdits lets edits run too, bypassPermissions everything).
* No questions: in ACP mode Gemini CLI leaves its `ask_user` tool out.
* Resume: `session/load`. Gemini CLI 0.61.0 names a session's file by the minute it began
  and, loading a session in the minute its file was named, appends a fresh start to that
  same file and then finds no session to load; `prepare` first moves such a file aside
  (`_move_aside`), which the CLI still finds (it reads every session file in the folder).
* Tokens from the prompt's `_meta.quota`, per model; cost from `PRICES`.
* Retries: the daemon's (`orchestrad.retries`): the CLI is given system defaults
  (gemini-defaults.json, the lowest of its settings' layers) with `general.maxAttempts` 1.
  An API error fails the prompt with the HTTP status as the JSON-RPC error code.
* The role's prompt goes before the task's first message (the CLI has no option to add to
  its system prompt).
"""

from __future__ import annotations

import datetime
import glob
import os
import re
from typing import Any

from orchestra.shared.protocol import Role
from orchestrad import agents, roles
from orchestrad.agents import SandboxState, Traits
from orchestrad.agents.acp import READ_ONLY_KINDS, AcpAgent, diff_of, first_path, generic_tool
from orchestrad.config import Config
from orchestrad.state import Task

HERE = os.path.dirname(os.path.abspath(__file__))
POLICY = os.path.join(HERE, "gemini-policy.toml")
DEFAULTS = os.path.join(HERE, "gemini-defaults.json")

# USD per million tokens (input, output): the Gemini API's paid-tier list prices for prompts
# up to 200k tokens as known when this was written, without network access to check them
# (ai.google.dev/gemini-api/docs/pricing has the current ones). A model is priced by
# the longest entry its name starts with; one that matches none costs 0.0 (its tokens are
# still recorded).
PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-3-pro": (2.00, 12.00),
    "gemini-3.1-pro": (2.00, 12.00),
    "gemini-3-flash": (0.50, 3.00),
}

# Gemini CLI's tools, as the policy's (orchestrad.policy) tools.
TOOLS = {
    "run_shell_command": "Bash",
    "write_file": "Write",
    "replace": "Edit",
    "read_file": "Read",
    "read_many_files": "Read",
    "list_directory": "LS",
    "glob": "Glob",
    "grep_search": "Grep",
    "search_file_content": "Grep",
    "web_fetch": "WebFetch",
    "google_web_search": "WebSearch",
}
EDITS = frozenset({"Write", "Edit"})
SESSION_FILE = re.compile(r"^session-(\d{4}-\d\d-\d\dT\d\d-\d\d)-([0-9a-f]{8})\.jsonl$")


class GeminiAgent(AcpAgent):
    name = "gemini"
    program = "gemini"
    traits = Traits(
        converses=True,
        reports_result=True,
        needs_network=True,
        credentials=("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_GEMINI_BASE_URL", "GEMINI_CLI_HOME"),
        reports_cost=True,
    )
    inherit_env = ("GEMINI_*", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_GENAI_*", "GOOGLE_CLOUD_*", "GOOGLE_APPLICATION_CREDENTIALS")
    # The daemon owns retries; and the CLI starts once, not twice (it otherwise relaunches
    # itself to set its heap size).
    default_env = {"GEMINI_CLI_SYSTEM_DEFAULTS_PATH": DEFAULTS, "GEMINI_CLI_NO_RELAUNCH": "1"}

    def __init__(self) -> None:
        super().__init__()
        self._mode = "default"
        self._role_prompt = ""

    def command(self, task: Task, config: Config, custom_roles: dict[str, Role]) -> list[str]:
        role = roles.get(task.role, custom_roles)
        argv = [agents.program(self.name, config), "--acp", "--policy", POLICY]
        model = task.spec.model or (role.model if role else None)
        if model:
            argv += ["--model", model]
        self._mode = role.permission_mode if role is not None and role.permission_mode != "default" else config.permission_mode
        self._role_prompt = role.prompt if role is not None else ""
        return argv

    def first_message(self, task: Task) -> str:
        text = super().first_message(task)
        if self._role_prompt and not task.pending_message:
            return f"{self._role_prompt}\n\n{text}"
        return text

    def sandbox_state(self, env: dict[str, str]) -> SandboxState:
        """Its state: ~/.gemini (or $GEMINI_CLI_HOME/.gemini), where it keeps sessions,
        history and its settings; the settings and its extensions stay read-only."""
        base = env.get("GEMINI_CLI_HOME") or env.get("HOME") or ""
        if not base:
            return SandboxState()
        state = os.path.join(base, ".gemini")
        protected: dict[str, str | None] = {"settings.json": "{}\n", "extensions": None, "policies": None, "commands": None}
        return SandboxState(
            writable=(state,),
            read_only=tuple(os.path.join(state, n) for n in protected),
            seed=tuple((os.path.join(state, n), c) for n, c in protected.items()),
        )

    @classmethod
    def missing_credentials(cls, env: dict[str, str], home: str) -> str:
        if env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or env.get("GOOGLE_GENAI_USE_VERTEXAI") or env.get("GOOGLE_CLOUD_PROJECT"):
            return ""
        base = env.get("GEMINI_CLI_HOME") or home
        if base and os.path.exists(os.path.join(base, ".gemini", "oauth_creds.json")):
            return ""
        return "set GEMINI_API_KEY (an API key from aistudio.google.com), or sign in once with `gemini` (Log in with Google)"

    # -- resume ---------------------------------------------------------------------------

    def prepare(self, task: Task, cwd: str, env: dict[str, str]) -> None:
        super().prepare(task, cwd, env)
        if task.session_id and task.continued in ("follow-up", "resume"):
            base = env.get("GEMINI_CLI_HOME") or env.get("HOME") or ""
            if base:
                _move_aside(os.path.join(base, ".gemini", "tmp"), task.session_id, datetime.datetime.now(datetime.timezone.utc))

    # -- tools ----------------------------------------------------------------------------

    def tool_of(self, tool_call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        native = str(tool_call.get("toolCallId") or "").split("__", 1)[0]
        tool = TOOLS.get(native)
        if tool is None:
            return generic_tool(tool_call) if not native else (native, {"title": str(tool_call.get("title") or "")})
        title = str(tool_call.get("title") or "")
        path = first_path(tool_call)
        if tool == "Bash":
            return tool, {"command": title}
        if tool == "Write":
            return tool, {"file_path": path, "content": str(diff_of(tool_call).get("newText") or "")}
        if tool in ("Edit", "Read"):
            return tool, {"file_path": path}
        if tool in ("LS", "Glob", "Grep"):
            return tool, {"path": path} if path else {"pattern": title}
        if tool == "WebFetch":
            url = re.search(r"https?://\S+", title)
            return tool, {"url": url.group(0) if url else title}
        return tool, {"query": title}

    def asks_person(self, task: Task, tool: str, tool_call: dict[str, Any]) -> bool:
        """What Gemini CLI's own defaults would do: read-only tools run; edits run under
        acceptEdits; everything runs under bypassPermissions."""
        if self._mode == "bypassPermissions":
            return False
        if self._mode == "acceptEdits" and tool in EDITS:
            return False
        return str(tool_call.get("kind") or "other") not in READ_ONLY_KINDS - {"fetch"}

    def price(self, model: str, input_tokens: int, output_tokens: int) -> float:
        key = max((k for k in PRICES if model.startswith(k)), key=len, default="")
        if not key:
            return 0.0
        per_in, per_out = PRICES[key]
        return (input_tokens * per_in + output_tokens * per_out) / 1_000_000

    def api_error(self, code: Any, message: str) -> str:
        """The HTTP status is the JSON-RPC error's code (a failed connection: 500 and the
        fetch's error)."""
        lowered = message.lower()
        if any(s in lowered for s in ("fetch failed", "econnrefused", "econnreset", "etimedout", "socket hang up")):
            return "connection error"
        if code == 429:
            return "rate limited"
        if code == 503 or "overloaded" in lowered:
            return "overloaded"
        if isinstance(code, int) and not isinstance(code, bool) and (code >= 500 or code == 408) and code < 600:
            return "server error"
        return ""


def _move_aside(tmp: str, session_id: str, now: datetime.datetime) -> None:
    """Rename the session's file when Gemini CLI would name a new one the same: it was begun
    in this minute (UTC) or later. The new name keeps the CLI's prefix and suffix, so the CLI
    still lists it; it can never be a name the CLI would give a new file."""
    minute = now.strftime("%Y-%m-%dT%H-%M")
    for path in glob.glob(os.path.join(glob.escape(tmp), "*", "chats", f"session-*-{session_id[:8]}.jsonl")):
        m = SESSION_FILE.match(os.path.basename(path))
        if m is not None and m.group(1) >= minute:
            aside = path[: -len(".jsonl")] + "-resumed.jsonl"
            if not os.path.exists(aside):
                os.rename(path, aside)


AGENT = GeminiAgent
