"""Claude Code's stream-json, made readable: the transcript `orchestra logs` shows of what
the CLI wrote on stdout and what the daemon wrote to its stdin (`orchestrad.agents.claude`
stores both). A module of its own so that the adapter stays one job: the protocol.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from orchestra.shared.vocab import shorten, usd

QUESTION_TOOL = "AskUserQuestion"

_decode = msgspec.json.Decoder().decode


def summarize(tool: str, tool_input: Any, limit: int = 160) -> str:
    """One line a person can decide on: the command, the file, the pattern, the URL."""
    text = ""
    if isinstance(tool_input, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt"):
            value = tool_input.get(key)
            if isinstance(value, str) and value.strip():
                text = value
                break
        else:
            text = json.dumps(tool_input, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return shorten(text, limit)


def message_blocks(m: dict[str, Any]) -> list[dict[str, Any]]:
    message = m.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def render(stream: str, data: bytes) -> bytes:
    """A readable transcript of stored output: stderr as it is, stdout and stdin line by line."""
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
            out += render_stdin(m) if stream == "stdin" else render_stdout(m)
    return "".join(line + "\n" for line in out).encode()


def _first_line(text: str, limit: int = 200) -> str:
    line = next((x for x in text.splitlines() if x.strip()), "")
    return shorten(line, limit)


def render_stdout(m: dict[str, Any]) -> list[str]:
    kind = m.get("type")
    if kind == "system" and m.get("subtype") == "init":
        return [f"── session {m.get('session_id', '?')} · {m.get('model', '?')} · {m.get('cwd', '')}"]
    if kind == "assistant":
        lines = []
        for block in message_blocks(m):
            if block.get("type") == "text" and str(block.get("text", "")).strip():
                lines.append(str(block["text"]).rstrip())
            elif block.get("type") == "tool_use":
                lines.append(f"→ {block.get('name')}: {summarize(str(block.get('name')), block.get('input'))}")
        return lines
    if kind == "user":
        lines = []
        for block in message_blocks(m):
            if block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
                mark = "✗" if block.get("is_error") else "←"
                lines.append(f"  {mark} {_first_line(str(content or ''))}")
        return lines
    if kind == "system" and m.get("subtype") == "api_retry":
        delay = float(m.get("retry_delay_ms") or 0) / 1000
        what = m.get("error_status") or m.get("error") or "error"
        return [f"  … API {what}: the CLI retries ({m.get('attempt', '?')} of {m.get('max_retries', '?')}) in {delay:.1f}s"]
    if kind == "result":
        mark = "✗" if m.get("is_error") else "✓"
        text = m.get("result") if isinstance(m.get("result"), str) else m.get("subtype", "")
        since = m.get("model_usage_since_last_result")  # this run's, where the total covers a resumed session
        cost = sum(float(u.get("costUSD") or 0.0) for u in since.values() if isinstance(u, dict)) if isinstance(since, dict) else float(m.get("total_cost_usd") or 0.0)
        seconds = int(m.get("duration_ms") or 0) / 1000
        turns = int(m.get("num_turns") or 0)
        return [f"{mark} {text}", f"  {usd(cost)} · {turns} turn{'' if turns == 1 else 's'} · {seconds:.1f}s"]
    if kind == "control_request":
        request = m.get("request") or {}
        if request.get("subtype") == "can_use_tool":
            tool = str(request.get("tool_name", "?"))
            tool_input = request.get("input") or {}
            if tool == QUESTION_TOOL:
                lines = []
                for q in tool_input.get("questions") or []:
                    if isinstance(q, dict):
                        options = " / ".join(f"{i}. {o.get('label')}" for i, o in enumerate(q.get("options") or [], 1) if isinstance(o, dict))
                        lines.append(f"? {q.get('question', '')}" + (f" [{options}]" if options else ""))
                return lines
            return [f"? permission for {tool}: {summarize(tool, tool_input)}"]
    return []


def render_stdin(m: dict[str, Any]) -> list[str]:
    if m.get("type") == "user":
        return [f"» {_first_line(str(message_blocks(m)[0].get('text', '')) if message_blocks(m) else '', 500)}"]
    if m.get("type") == "control_response":
        verdict = (m.get("response") or {}).get("response") or {}
        hook = verdict.get("hookSpecificOutput")
        if isinstance(hook, dict):
            decision, why = hook.get("permissionDecision"), hook.get("permissionDecisionReason", "")
            return [f"  {'allowed' if decision == 'allow' else 'denied'}: {why}"] if decision in ("allow", "deny") else []
        if verdict.get("behavior") == "deny":
            return [f"  denied: {verdict.get('message', '')}"]
        answers = (verdict.get("updatedInput") or {}).get("answers")
        if isinstance(answers, dict) and answers:
            return [f"  answered: {a}" for a in answers.values()]
        if verdict.get("behavior") == "allow":
            return ["  allowed"]
    return []
