"""`Hello.for_pids`: a client acting for other processes (the web console, `orchestra mcp
--http`) gets the narrowest of their rights and its own; a process that is gone, or whose
pid now names another process, counts as an agent's, never as the user's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from orchestra import aclient, peer
from orchestra.shared import protocol as p


def set_config(daemon, for_pids) -> str:
    async def main() -> str:
        conn = await aclient.connect(daemon.paths, for_pids=for_pids)
        try:
            await conn.call(p.ConfigSet(key="max_concurrent", value=3))
            return "allowed"
        except p.OrchestraError as exc:
            return exc.code.value
        finally:
            await conn.aclose()

    return asyncio.run(main())


def test_a_client_acting_for_the_user_s_own_process_keeps_the_user_s_rights(daemon):
    assert set_config(daemon, [(os.getpid(), peer.start_of(os.getpid()))]) == "allowed"
    assert set_config(daemon, []) == "allowed"


def test_a_process_that_is_gone_or_whose_pid_was_reused_counts_as_an_agent_s(daemon):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert set_config(daemon, [(int(gone.stdout), 1)]) == "forbidden"
    assert set_config(daemon, [(os.getpid(), peer.start_of(os.getpid()) + 1)]) == "forbidden"  # another process now


def test_an_agent_s_process_among_them_narrows_the_client_to_the_agent(daemon):
    task = daemon.submit("sleep", "30")
    pid = daemon.wait_status(task, p.Status.RUNNING).pid
    assert set_config(daemon, [(os.getpid(), peer.start_of(os.getpid())), (pid, peer.start_of(pid))]) == "forbidden"
    daemon.call(p.Stop(task=task))


def test_a_socket_peer_that_is_gone_when_the_daemon_looks_is_not_taken_for_the_user():
    from orchestrad import containment

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    actor = containment.identify(int(gone.stdout), {}, None, "home")
    assert actor is not None and actor.task is None
    assert containment.identify(os.getppid(), {}, None, "home") is None  # alive, and no agent: the user
