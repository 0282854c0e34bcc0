"""What `orchestra agents` says of each agent kind: where its CLI is found on the PATH its
agents would get, what version that CLI says it is, and whether the environment its agents
would get holds what it needs to sign in. Shell: it looks at files and runs `CLI --version`
(remembered while the file stays the same, so listing the agents costs nothing the second time).
"""

from __future__ import annotations

import os
import shutil

from orchestra.shared import protocol as p
from orchestrad import agentenv, agents, procs
from orchestrad.config import Config

VERSION_TIMEOUT = 10.0  # seconds a CLI may take to say its version
_VERSIONS: dict[tuple[str, int, int], str] = {}  # (path, mtime, size) -> what it said


def _traits(t: agents.Traits) -> list[str]:
    named = [("runs a program", t.runs_argv), ("keeps a conversation", t.converses),
             ("reports its result", t.reports_result), ("reports its cost", t.reports_cost),
             ("needs the network", t.needs_network)]
    return [name for name, has in named if has]


async def version(path: str, args: tuple[str, ...]) -> str:
    """The first line `path ARGS` prints ("" if it cannot say)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _VERSIONS:
        try:
            code, out, err = await procs.run([path, *args], timeout=VERSION_TIMEOUT)
        except OSError:
            code, out, err = 1, b"", b""
        text = (out or err).decode(errors="replace").strip().splitlines() if code == 0 else []
        _VERSIONS[key] = text[0].strip()[:200] if text else ""
    return _VERSIONS[key]


async def describe(config: Config, base: dict[str, str]) -> list[p.AgentView]:
    """Every agent kind, as a task of that kind would be started with the daemon's
    environment `base` and settings `config`."""
    views = []
    for name in agents.kinds():
        kind = agents.kind(name)
        env = {**kind.default_env, **agentenv.inherited(base, (*kind.inherit_env, *config.pass_env))}
        program = agents.program(name, config)
        path, found, problem = "", "", ""
        if program:
            path = shutil.which(program, path=env.get("PATH", os.defpath)) or ""
            if not path:
                problem = (f"{program} not found on the agents' PATH; install it, or say where it is: "
                           f"orchestra config set agent_paths '{{\"{name}\": \"/path/to/{os.path.basename(program)}\"}}'")
            else:
                found = await version(path, kind.version_args)
                problem = kind.missing_credentials(env, env.get("HOME") or os.path.expanduser("~"))
        views.append(p.AgentView(
            name=name, program=program, path=path, version=found, usable=not problem, problem=problem,
            default=name == config.default_agent, traits=_traits(kind.traits),
        ))
    return views
