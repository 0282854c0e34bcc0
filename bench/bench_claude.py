"""Orchestration overhead: one scripted Claude Code scenario run directly, and through orchestra.

    .venv/bin/python bench/bench_claude.py [--runs 10]

The scenario: the real `claude` CLI (installed by .ci/run into .local/npm) against the
scripted Messages API, one tool use (Write, allowed by the implementer role) and a final
answer. "Direct" runs the CLI in the same stream-json mode the daemon uses, with the same
flags, writing the prompt and reading to the result; "orchestra" is submit-to-finished
through a running daemon (socket round trips, log appends, supervision included). Both are
wall-clock times; the runs alternate so that both see the same machine. Target: orchestra at
most 1.05x direct + 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestra.shared import protocol as p  # noqa: E402
from orchestrad import roles  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.scripted_api import ScriptedAPI, allow, find_claude, reply, run_claude  # noqa: E402


def scenario(workdir: Path, n: int) -> list:
    target = workdir / f"out-{n}.txt"
    return [reply.tool_use("Write", {"file_path": str(target), "content": "hi\n"}), reply.text("done")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    claude = find_claude()
    if claude is None:
        sys.exit("claude CLI not found: run .ci/run (it installs it into .local/npm)")
    role = roles.get("implementer")
    flags = ["--permission-mode", "default", "--append-system-prompt", role.prompt, "--allowed-tools", ",".join(role.allowed_tools)]
    direct: list[float] = []
    through: list[float] = []
    with ScriptedAPI() as api:
        d = Daemon()
        d.env.update(api.env(d.env))
        d.start()
        try:
            d.call(p.ConfigSet(key="claude_path", value=claude))
            work = Path(tempfile.mkdtemp(prefix="orc-bench-"))
            for n in range(args.runs + 1):  # the first pair warms caches and is not counted
                api.add(*scenario(work, 2 * n))
                start = time.perf_counter()
                run = run_claude(api, "write the file", cwd=work, args=flags, on_permission=allow(), claude=claude)
                t_direct = time.perf_counter() - start
                assert run.returncode == 0, run.stderr
                api.add(*scenario(work, 2 * n + 1))
                start = time.perf_counter()
                with d.connect() as conn:
                    task = conn.call(p.Submit(cwd=str(work), prompt="write the file", role="implementer"), p.TaskView).id
                    [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
                t_orch = time.perf_counter() - start
                assert view.status is p.Status.SUCCEEDED, view.reason
                if n:
                    direct.append(t_direct)
                    through.append(t_orch)
        finally:
            d.cleanup()
    md, mo = statistics.median(direct), statistics.median(through)
    print(f"claude {claude}")
    print(f"runs: {len(direct)} pairs (alternating), median wall time")
    print(f"direct CLI:        {md * 1000:7.0f} ms  (min {min(direct) * 1000:.0f}, max {max(direct) * 1000:.0f})")
    print(f"through orchestra: {mo * 1000:7.0f} ms  (min {min(through) * 1000:.0f}, max {max(through) * 1000:.0f})")
    print(f"ratio: {mo / md:.3f}x; overhead {1000 * (mo - md):+.0f} ms; target <= 1.05x + 50 ms = {1000 * (1.05 * md + 0.05):.0f} ms -> {'met' if mo <= 1.05 * md + 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
