"""Orchestration overhead: one scripted Gemini CLI scenario run directly, and through orchestra.

    .venv/bin/python bench/bench_gemini.py [--runs 8]

The scenario: the real `gemini` CLI (installed by .ci/run into .local/npm-gemini) in its
Agent Client Protocol mode against the scripted Gemini API, one tool call (write_file,
allowed by the generalist role's `allow Edit(./**)`) and a final answer. "Direct" runs the
CLI with the same argv and environment the daemon gives it and speaks ACP to it from here
(initialize, session/new, session/prompt, allowing the write once, closing stdin at the
result); "orchestra" is submit-to-finished through a running daemon. Both are wall-clock
times; the runs alternate. Target: orchestra at most 1.05x direct + 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestra.shared import protocol as p  # noqa: E402
from orchestrad.agents import gemini  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.scripted_gemini import ScriptedGemini, find_gemini, reply  # noqa: E402

MODEL = "gemini-2.5-pro"


def scenario(workdir: Path, n: int) -> list:
    return [reply.call("write_file", {"file_path": str(workdir / f"out-{n}.txt"), "content": "hi\n"}), reply.text("done")]


def direct(program: str, env: dict[str, str], work: Path) -> None:
    """One turn over ACP, as the adapter speaks it."""
    argv = [program, "--acp", "--policy", gemini.POLICY, "--model", MODEL]
    proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def send(obj: dict) -> None:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **obj}).encode() + b"\n")
        proc.stdin.flush()

    send({"id": 1, "method": "initialize", "params": {"protocolVersion": 1, "clientCapabilities": {}}})
    for raw in proc.stdout:
        m = json.loads(raw)
        if m.get("method") == "session/request_permission":
            send({"id": m["id"], "result": {"outcome": {"outcome": "selected", "optionId": "proceed_once"}}})
        elif m.get("id") == 1 and "method" not in m:
            send({"id": 2, "method": "session/new", "params": {"cwd": str(work), "mcpServers": []}})
        elif m.get("id") == 2 and "method" not in m:
            send({"id": 3, "method": "session/prompt", "params": {"sessionId": m["result"]["sessionId"], "prompt": [{"type": "text", "text": "write the file"}]}})
        elif m.get("id") == 3 and "method" not in m:
            assert m["result"]["stopReason"] == "end_turn", m
            break
    proc.stdin.close()
    assert proc.wait(30) == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    program = find_gemini()
    if program is None:
        sys.exit("gemini CLI not found: run .ci/run (it installs it into .local/npm-gemini)")
    times_direct: list[float] = []
    times_orch: list[float] = []
    with ScriptedGemini() as api:
        d = Daemon()
        d.env.update(api.env(d.home / "h"))
        d.env["PATH"] = f"{os.path.dirname(program)}:{d.env.get('PATH', '')}"
        d.start()
        env = {**d.env, **gemini.GeminiAgent.default_env}
        try:
            work = Path(tempfile.mkdtemp(prefix="orc-bench-"))
            for n in range(args.runs + 1):  # the first pair warms caches and is not counted
                api.add(*scenario(work, 2 * n))
                start = time.perf_counter()
                direct(program, env, work)
                t_direct = time.perf_counter() - start
                api.add(*scenario(work, 2 * n + 1))
                start = time.perf_counter()
                with d.connect() as conn:
                    task = conn.call(p.Submit(cwd=str(work), prompt="write the file", agent="gemini", model=MODEL), p.TaskView).id
                    [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
                t_orch = time.perf_counter() - start
                assert view.status is p.Status.SUCCEEDED, view.reason
                if n:
                    times_direct.append(t_direct)
                    times_orch.append(t_orch)
        finally:
            d.cleanup()
    md, mo = statistics.median(times_direct), statistics.median(times_orch)
    print(f"gemini {program}")
    print(f"runs: {len(times_direct)} pairs (alternating), median wall time")
    print(f"direct CLI:        {md * 1000:7.0f} ms  (min {min(times_direct) * 1000:.0f}, max {max(times_direct) * 1000:.0f})")
    print(f"through orchestra: {mo * 1000:7.0f} ms  (min {min(times_orch) * 1000:.0f}, max {max(times_orch) * 1000:.0f})")
    print(f"ratio: {mo / md:.3f}x; overhead {1000 * (mo - md):+.0f} ms; target <= 1.05x + 50 ms = {1000 * (1.05 * md + 0.05):.0f} ms -> {'met' if mo <= 1.05 * md + 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
