"""Agents on the nodes of a real Ray cluster (`ray_cluster`: a head and two workers on this
machine), driven through a real daemon, its socket and the real CLI."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.main import Exit
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, alive, wait_for
from tests.gitrepo import git, make_repo

PY = sys.executable


@pytest.fixture
def ray_daemon(ray_cluster):
    d = Daemon()
    d.env["XDG_CACHE_HOME"] = str(d.home / "cache")  # the nodes' checkouts: with the test's home, removed with it
    d.start()
    d.call(p.ConfigSet(key="ray_address", value=ray_cluster.address))
    d.repo = make_repo(d.home / "repo")
    yield d
    d.cleanup()


def nodes(daemon: Daemon) -> dict[str, p.NodeView]:
    return {n.id: n for n in daemon.call(p.Nodes(), p.NodeList).nodes}


def remote(daemon: Daemon, *argv: str, **kw) -> int:
    """A task on the cluster, in the daemon's repository (`repo`) unless told."""
    if "cwd" not in kw:
        repo = getattr(daemon, "repo", None) or make_repo(daemon.home / "repo")
        daemon.repo, kw["cwd"] = repo, str(repo)
    return daemon.submit(*argv, executor="ray", **kw)



def test_nodes_lists_the_cluster_with_slots_labels_and_health(ray_daemon):
    listed = ray_daemon.call(p.Nodes(), p.NodeList)
    assert listed.problem == "" and listed.address
    shapes = sorted((n.slots, n.labels, n.alive) for n in listed.nodes)
    assert shapes == [(1, ["gpu"], True), (2, [], True), (3, ["big"], True)]
    shown = ray_daemon.run_cli("nodes")
    assert shown.returncode == 0, shown.stderr
    assert "SLOTS" in shown.stdout and "0/3" in shown.stdout and "gpu" in shown.stdout


def test_tasks_spread_by_slots_then_wait_for_one(ray_daemon, tmp_path):
    gate = tmp_path / "go"
    hold = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    tasks = [remote(ray_daemon, PY, "-c", hold) for _ in range(6)]
    views = [ray_daemon.wait_status(t, Status.RUNNING, timeout=60) for t in tasks]
    wait_for(lambda: all(ray_daemon.task(t).node for t in tasks), 30, "every task on a node")
    listed = nodes(ray_daemon)
    per_node = sorted((listed[n].slots, len(listed[n].running)) for n in listed)
    assert per_node == [(1, 1), (2, 2), (3, 3)]  # every slot taken, none twice
    seventh = remote(ray_daemon, "true")
    time.sleep(1.0)
    assert ray_daemon.task(seventh).status is Status.QUEUED  # no slot is free
    gate.touch()
    for t in [*tasks, seventh]:
        assert ray_daemon.wait_status(t, Status.SUCCEEDED, timeout=60).exit_code == 0
    assert all(v.executor == "ray" for v in views)


def test_a_label_chooses_the_node(ray_daemon):
    listed = nodes(ray_daemon)
    gpu = next(n for n in listed.values() if n.labels == ["gpu"])
    tasks = [remote(ray_daemon, "sh", "-c", "sleep 0.3", node_labels=["gpu"]) for _ in range(3)]
    views = [ray_daemon.wait_status(t, Status.SUCCEEDED, timeout=60) for t in tasks]
    assert {v.node for v in views} == {f"{gpu.host} ({gpu.id[:8]})"}
    spans = sorted((v.started_at, v.finished_at) for v in views)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one slot: one at a time
    missing = remote(ray_daemon, "true", node_labels=["tpu"])
    waiting = wait_for(lambda: (t := ray_daemon.task(missing)).hold == "executor" and t, 30, "the start deferred")
    assert waiting.status is Status.QUEUED and "no node of the Ray cluster has the label tpu" in waiting.hold_reason
    ray_daemon.call(p.Stop(task=missing))


def test_a_label_without_a_cluster_executor_is_refused(ray_daemon):
    result = ray_daemon.cli("submit", "--node-label", "gpu", "--", "true")
    assert result.exit_code != 0 and "--executor ray" in result.output


def test_a_directory_outside_git_is_refused_for_the_cluster_with_what_to_do(ray_daemon):
    plain = ray_daemon.home / "plain"
    plain.mkdir()
    result = ray_daemon.cli("submit", "--executor", "ray", "--cwd", str(plain), "--", "true")
    assert result.exit_code == Exit.BAD_INPUT
    assert "not in a git repository" in result.output and "--executor local" in result.output
    refused = ray_daemon.cli("submit", "--executor", "ray", "--no-worktree", "--cwd", str(ray_daemon.repo), "--", "true")
    assert refused.exit_code == Exit.BAD_INPUT and "drop --no-worktree" in refused.output
    assert ray_daemon.tasks() == []  # nothing recorded


def test_a_worktree_task_that_ran_on_a_node_is_diffed_and_merged_here(ray_daemon):
    repo = ray_daemon.repo
    (repo / "sent.txt").write_text("uncommitted here\n")  # not in the task's worktree: that starts from HEAD
    code = (
        "import pathlib, socket, subprocess\n"
        "pathlib.Path('feature.txt').write_text('made on a node\\n')\n"
        "subprocess.run(['git', 'add', 'feature.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-q', '-m', 'the feature'], check=True)\n"
        "pathlib.Path('notes.txt').write_text('left uncommitted\\n')\n"
        "print(pathlib.Path.cwd())"
    )
    task = remote(ray_daemon, PY, "-c", code, node_labels=["big"])
    view = ray_daemon.wait_status(task, *p.FINISHED, timeout=90)
    assert view.status is Status.SUCCEEDED, (view.reason, ray_daemon.output_of(task))
    ran_in = ray_daemon.output_of(task).decode().strip()
    assert ran_in != view.worktree and "/orchestra/nodes/" in ran_in  # a checkout of its own on the node
    here = Path(view.worktree)
    assert (here / "feature.txt").read_text() == "made on a node\n" and (here / "notes.txt").read_text() == "left uncommitted\n"
    assert git(here, "log", "-1", "--format=%s %an") == "the feature t"  # committed there as here
    diff = ray_daemon.call(p.Diff(task=task), p.DiffResult)
    assert "feature.txt" in diff.stat and "notes.txt" in diff.stat, diff.stat
    queued = ray_daemon.call(p.Merge(tasks=[task]), p.MergeQueue).queued
    merged = wait_for(lambda: [m for m in ray_daemon.call(p.MergeStatus(limit=10), p.MergeQueue).merges
                               if m.id in queued and m.status in ("merged", "conflicted", "failed")], 60, "the merge")
    assert merged[0].status == "merged", merged[0].reason
    assert git(repo, "show", "main:feature.txt") == "made on a node" and git(repo, "show", "main:notes.txt") == "left uncommitted"
    assert not os.path.exists(ran_in)  # the node's checkout is gone once its work is here


def test_output_comes_back_in_order_and_logs_follow_serves_it(ray_daemon):
    code = "import time\nfor i in range(20): print(i, flush=True); time.sleep(0.05)"
    task = remote(ray_daemon, PY, "-c", code)
    followed = ray_daemon.run_cli("logs", "-f", str(task), timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "".join(f"{i}\n" for i in range(20))
    view = ray_daemon.wait_status(task, Status.SUCCEEDED)
    assert view.node and ray_daemon.run_cli("show", str(task)).stdout.count(f"node {view.node}") == 1


def test_respond_reaches_a_command_waiting_on_stdin_on_a_node(ray_daemon):
    task = remote(ray_daemon, PY, "-c", "name = input(); print(f'hello {name}')")
    wait_for(lambda: ray_daemon.task(task).node, 60, "the task on a node")
    result = ray_daemon.cli("respond", str(task), "world")
    assert result.exit_code == 0, result.output
    ray_daemon.wait_status(task, Status.SUCCEEDED, timeout=30)
    assert ray_daemon.output_of(task) == b"hello world\n"


def test_stop_kills_the_remote_group_and_what_it_started(ray_daemon):
    ray_daemon.call(p.ConfigSet(key="kill_grace", value=1.0))
    code = (
        "import signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\ntime.sleep(120)"
    )
    task = remote(ray_daemon, PY, "-c", code)
    child = int(wait_for(lambda: ray_daemon.output_of(task).strip(), 60, "the child's pid"))
    pid = ray_daemon.task(task).pid
    assert alive(child) and alive(pid)
    stopped = ray_daemon.cli("stop", str(task))
    assert stopped.exit_code == 0, stopped.output
    view = ray_daemon.wait_status(task, Status.CANCELLED, timeout=30)
    assert view.signal == signal.SIGKILL  # it ignored SIGTERM: the grace ladder went on
    wait_for(lambda: not alive(child) and not alive(pid), 10, "the group gone")


def test_a_node_that_dies_mid_task_interrupts_it_naming_the_node(ray_daemon, ray_cluster):
    worker = ray_cluster.add_worker(slots=1, labels=("doomed",))
    wait_for(lambda: any(n.labels == ["doomed"] and n.alive for n in nodes(ray_daemon).values()), 60, "the new node")
    task = remote(ray_daemon, PY, "-c", "import time\nprint('working', flush=True)\ntime.sleep(120)", node_labels=["doomed"])
    wait_for(lambda: ray_daemon.output_of(task) == b"working\n", 60, "the task working")
    node = ray_daemon.task(task).node
    local = ray_daemon.submit("sh", "-c", "sleep 0.5")  # this machine's tasks go on
    ray_cluster.kill_node(worker)
    view = ray_daemon.wait_status(task, Status.INTERRUPTED, timeout=60)
    assert view.reason.startswith("lost: ") and node in view.reason, view.reason
    assert ray_daemon.wait_status(local, Status.SUCCEEDED).exit_code == 0
    wait_for(lambda: [n.alive for n in nodes(ray_daemon).values() if n.labels == ["doomed"]] == [False], 90,
             "the cluster to call the node dead")  # its health checks take longer than the lost process
    assert "gone" in ray_daemon.run_cli("nodes").stdout


def test_a_daemon_killed_and_restarted_finds_its_remote_tasks_again(ray_cluster):
    daemon = Daemon()
    daemon.env["XDG_CACHE_HOME"] = str(daemon.home / "cache")
    daemon.start()
    try:
        daemon.call(p.ConfigSet(key="ray_address", value=ray_cluster.address))
        code = "import time\nfor i in range(8): print(i, flush=True); time.sleep(0.5)"
        tasks = [remote(daemon, PY, "-c", code) for _ in range(3)]
        wait_for(lambda: all(daemon.output_of(t).startswith(b"0\n1\n") for t in tasks), 60, "the tasks under way")
        pids = {t: daemon.task(t).pid for t in tasks}
        daemon.kill9()
        time.sleep(1.0)  # they run on without a daemon
        daemon.start()
        for t in tasks:
            view = daemon.wait_status(t, Status.SUCCEEDED, timeout=60)
            assert view.pid is None and view.attempts == 1
            assert daemon.output_of(t) == b"".join(b"%d\n" % i for i in range(8))  # every line, once
        with daemon.connect() as conn:
            shown = [conn.call(p.Show(task=t), p.TaskView) for t in tasks]
        assert all(v.reason == "" for v in shown) and all(pids.values())
    finally:
        daemon.cleanup()


def test_an_unreachable_cluster_keeps_its_tasks_queued_with_the_reason_and_local_ones_run(daemon):
    daemon.call(p.ConfigSet(key="ray_address", value="127.0.0.1:1"))
    task = remote(daemon, "true")
    view = wait_for(lambda: (t := daemon.task(task)).hold == "executor" and t, 120, "the start deferred")
    assert view.status is Status.QUEUED and "127.0.0.1:1" in view.hold_reason, view.hold_reason
    local = daemon.submit("true")
    assert daemon.wait_status(local, Status.SUCCEEDED).exit_code == 0
    listed = daemon.call(p.Nodes(), p.NodeList)
    assert listed.nodes == [] and "127.0.0.1:1" in listed.problem
    shown = daemon.run_cli("ps", "--json")
    assert "not started" not in shown.stdout and "127.0.0.1:1" in shown.stdout
    assert "not started, tried again at" in daemon.run_cli("ps").stdout


def test_claude_code_on_a_worker_asks_permission_through_orchestra_and_its_follow_up_resumes(ray_cluster, claude):
    from orchestrad.agents.claude import ClaudeAgent
    from tests.scripted_api import ScriptedAPI, reply

    api = ScriptedAPI().start()
    d = Daemon()
    d.env.update(api.env(d.env))
    d.env["XDG_CACHE_HOME"] = str(d.home / "cache")
    try:
        d.start()
        repo = make_repo(d.home / "repo")
        d.call(p.ConfigSet(key="claude_path", value=claude))
        d.call(p.ConfigSet(key="ray_address", value=ray_cluster.address))
        api.add(reply.tool_use("Bash", {"command": "/bin/echo ran > allowed.txt", "description": "write a file"}), reply.text("done"))
        task = d.call(p.Submit(prompt="run it", cwd=str(repo), executor="ray", node_labels=["big"]), p.TaskView).id
        waiting = d.wait_status(task, Status.WAITING, *p.FINISHED, timeout=90)
        assert waiting.status is Status.WAITING, waiting.reason
        assert waiting.waiting.kind == "permission" and waiting.waiting.prompt.startswith("Bash: /bin/echo ran")
        big = next(n for n in nodes(d).values() if n.labels == ["big"])
        assert waiting.node == f"{big.host} ({big.id[:8]})"
        allowed = d.cli("respond", str(task), "--allow")
        assert allowed.exit_code == 0, allowed.output
        view = d.wait_status(task, *p.FINISHED, timeout=90)
        assert view.status is Status.SUCCEEDED, view.reason
        here = Path(view.worktree)
        assert (here / "allowed.txt").read_text() == "ran\n" and view.result == "done" and view.cost_usd > 0
        assert not (repo / "allowed.txt").exists()  # in its worktree, not in the repository's checkout
        [projects] = ClaudeAgent().workdir_state(str(here), api.env_vars())
        assert (Path(projects) / f"{view.session_id}.jsonl").is_file()  # its transcript came back with it
        # The follow-up is a new attempt, in a new checkout on its node: it resumes from the transcript taken there.
        api.add(reply.text("Because you asked."))
        assert d.cli("respond", str(task), "why?").exit_code == 0
        wait_for(lambda: d.task(task).attempts == 2, 30, "the second attempt")
        second = d.wait_status(task, *p.FINISHED, timeout=90)
        assert second.status is Status.SUCCEEDED and second.result == "Because you asked.", second.reason
        assert second.session_id == view.session_id
        conversation = api.turn_requests[-1].conversation_text()
        assert "run it" in conversation and "done" in conversation and "why?" in conversation
    finally:
        d.cleanup()
        api.close()
