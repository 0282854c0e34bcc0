"""Orchestration overhead: one scripted Codex CLI scenario run directly, and through orchestra.

    .venv/bin/python bench/bench_codex.py [--runs 10]

The scenario: the real `codex` CLI (installed by .ci/run into .local/npm-codex) against the
scripted Responses API (tests/scripted_openai.py), one `apply_patch` that adds a file (the
implementer role's rules allow it) and a final answer. "Direct" drives `codex app-server`
the way the daemon does, with a small client in this script (initialize, thread/start with
the same parameters, turn/start, accept the approval, read to turn/completed, close stdin);
"orchestra" is submit-to-finished through a running daemon (socket round trips, log
appends, the policy's ruling, supervision included). Both are wall-clock times; the runs
alternate so that both see the same machine. Target: orchestra at most 1.05x direct + 50 ms.
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
from orchestrad import roles  # noqa: E402
from orchestrad.agents.codex import FEATURES  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.scripted_openai import ScriptedOpenAI, find_codex, reply  # noqa: E402


def scenario(workdir: Path, n: int) -> list:
    return [reply.add_file(str(workdir / f"out-{n}.txt"), "hi"), reply.text("done")]


def direct(codex: str, env: dict[str, str], cwd: Path, prompt: str) -> None:
    """One turn of `codex app-server`, driven as the daemon drives it; every approval accepted."""
    argv = [codex, "app-server", *(a for f in FEATURES for a in ("--enable", f))]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    assert proc.stdin is not None and proc.stdout is not None

    def send(obj: dict) -> None:
        proc.stdin.write(json.dumps(obj).encode() + b"\n")
        proc.stdin.flush()

    params = {"cwd": str(cwd), "approvalPolicy": "untrusted", "sandbox": "workspace-write",
              "developerInstructions": roles.get("implementer").prompt}
    send({"id": "init", "method": "initialize", "params": {"clientInfo": {"name": "bench", "version": "1"}}})
    send({"method": "initialized"})
    send({"id": "thread", "method": "thread/start", "params": params})
    for line in proc.stdout:
        m = json.loads(line)
        if m.get("id") == "thread":
            send({"id": "turn", "method": "turn/start", "params": {"threadId": m["result"]["thread"]["id"], "input": [{"type": "text", "text": prompt}]}})
        elif str(m.get("method", "")).endswith("/requestApproval"):
            send({"id": m["id"], "result": {"decision": "accept"}})
        elif m.get("method") == "turn/completed":
            assert m["params"]["turn"]["status"] == "completed", m
            break
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    codex = find_codex()
    if codex is None:
        sys.exit("codex CLI not found: run .ci/run (it installs it into .local/npm-codex)")
    times_direct: list[float] = []
    times_orch: list[float] = []
    with ScriptedOpenAI() as api:
        d = Daemon()
        home = api.codex_home(d.home / "codex")
        d.env.update(api.env(home, d.env))
        d.paths.config_file.parent.mkdir(parents=True, exist_ok=True)
        d.paths.config_file.write_text(f"agent_paths = {{ codex = {json.dumps(codex)} }}\n")
        d.start()
        try:
            work = Path(tempfile.mkdtemp(prefix="orc-bench-"))
            env = api.env(home, os.environ)
            for n in range(args.runs + 1):  # the first pair warms caches and is not counted
                api.add(*scenario(work, 2 * n))
                start = time.perf_counter()
                direct(codex, env, work, "write the file")
                t_direct = time.perf_counter() - start
                assert (work / f"out-{2 * n}.txt").exists()
                api.add(*scenario(work, 2 * n + 1))
                start = time.perf_counter()
                with d.connect() as conn:
                    task = conn.call(p.Submit(cwd=str(work), prompt="write the file", role="implementer", agent="codex"), p.TaskView).id
                    [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
                t_orch = time.perf_counter() - start
                assert view.status is p.Status.SUCCEEDED, view.reason
                assert (work / f"out-{2 * n + 1}.txt").exists()
                if n:
                    times_direct.append(t_direct)
                    times_orch.append(t_orch)
        finally:
            d.cleanup()
    md, mo = statistics.median(times_direct), statistics.median(times_orch)
    version = subprocess.run([codex, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"codex {codex} ({version})")
    print(f"runs: {len(times_direct)} pairs (alternating), median wall time")
    print(f"direct CLI:        {md * 1000:7.0f} ms  (min {min(times_direct) * 1000:.0f}, max {max(times_direct) * 1000:.0f})")
    print(f"through orchestra: {mo * 1000:7.0f} ms  (min {min(times_orch) * 1000:.0f}, max {max(times_orch) * 1000:.0f})")
    print(f"ratio: {mo / md:.3f}x; overhead {1000 * (mo - md):+.0f} ms; target <= 1.05x + 50 ms = {1000 * (1.05 * md + 0.05):.0f} ms -> {'met' if mo <= 1.05 * md + 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
