"""Commands about one task or a few: `submit`, `ps`, `show`, `logs`, `respond`, `review`,
`stop`, `resume` and `wait`."""

from __future__ import annotations

from orchestra.shared.vocab import shorten, usd

import os
import sys
from typing import Any

import click
import msgspec

from orchestra.shared import protocol as p
from orchestra.commands.base import App, Exit, echo_json, emit, fail, json_option, priority_option, refused, task_id
from orchestra.listing import RECENT


class _SplitAtDashes(click.Command):
    """Everything after `--` is the command to run, kept apart from the prompt words."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            index = args.index("--")
            ctx.meta["argv"] = args[index + 1 :]
            args = args[:index]
        return super().parse_args(ctx, args)


@click.command(cls=_SplitAtDashes)
@click.argument("prompt", nargs=-1)
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="Read the prompt from this file (a PROMPT of - reads it from stdin).")
@click.option("--role", "-r", help="Role (`orchestra roles` lists them; default from config).")
@click.option("--agent", "-a", help="Agent kind (orchestra agents lists them; default: command for `-- argv`, else from config).")
@priority_option
@click.option("--after", multiple=True, type=task_id, help="Start only after this task succeeded (repeatable).")
@click.option("--timeout", type=float, help="Seconds of wall-clock time before it is stopped.")
@click.option("--idle-timeout", type=float, help="Seconds without output or CPU use before it is stopped.")
@click.option("--budget", type=float, help="Dollars the agent may spend.")
@click.option("--model", help="Model for the agent.")
@click.option("--cwd", type=click.Path(file_okay=False), help="Working directory (default: here).")
@click.option("--env", "-e", multiple=True, help="NAME=VALUE for the task's environment (repeatable).")
@click.option("--title", default="", help="A short name shown by `ps`.")
@click.option("--worktree/--no-worktree", default=None, help="Work in a git worktree of its own, on a new branch (default: as the role says).")
@click.option("--check", "checks", multiple=True, help="A shell line that must exit 0 once the agent is done, run in its directory (repeatable; after the role's).")
@click.option("--check-rounds", type=int, help="How often the checks may run before the task fails (default: the role's, else config check_rounds, 2).")
@click.option("--review/--no-review", default=None, help="Once the checks pass, wait for a person to approve or reject it (default: as the role says).")
@click.option("--expects-change/--no-expects-change", default=None, help="Fail if the agent says it is done having changed nothing (default: as the role says).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where it runs: this machine, or a node of the Ray cluster at config ray_address (default: as the role says, else config executor).")
@click.option("--node-label", "node_labels", multiple=True, help="Run only on a cluster node with this label (repeatable; with --executor ray).")
@json_option
@click.pass_context
def submit(ctx, prompt, prompt_file, role, agent, priority, after, timeout, idle_timeout, budget, model, cwd, env, title, worktree,
           checks, check_rounds, review, expects_change, executor, node_labels, as_json):
    """Queue a task: a prompt for an agent, or a command after `--`.

    \b
      orchestra submit --role tester "write tests for the parser"
      orchestra submit --role implementer - < plan.md
      orchestra submit --agent command -- pytest -q
    """
    app: App = ctx.obj
    argv = ctx.meta.get("argv", [])
    env_map = {}
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--env {item!r} must look like NAME=VALUE", Exit.BAD_INPUT)
        env_map[name] = value
    request = p.Submit(
        cwd=os.path.abspath(cwd or os.getcwd()),
        prompt=_prompt(prompt, prompt_file),
        argv=list(argv),
        role=role,
        agent=agent,
        priority=priority,
        after=list(after),
        env=env_map,
        timeout=timeout,
        idle_timeout=idle_timeout,
        budget_usd=budget,
        model=model,
        title=title,
        worktree=worktree,
        checks=list(checks),
        check_rounds=check_rounds,
        review=review,
        expects_change=expects_change,
        executor=executor,
        node_labels=list(node_labels),
    )
    emit(app.call(request, p.TaskView), as_json, lambda task: str(task.id))


def _prompt(words: tuple[str, ...], path: str | None) -> str:
    """The prompt: the words, all of stdin for a single `-`, or the text of --prompt-file."""
    if path is not None:
        if words:
            fail("give the prompt as words or with --prompt-file, not both", Exit.BAD_INPUT)
        try:
            with open(path, "rb") as file:
                return _text(file.read(_MAX_PROMPT_BYTES + 1), f"--prompt-file {path}")
        except OSError as exc:
            fail(f"cannot read --prompt-file {path}: {exc.strerror or exc}", Exit.BAD_INPUT)
    if words == ("-",):
        stdin = sys.stdin.buffer
        if stdin.isatty():
            click.echo("orchestra: reading the prompt from stdin; end it with Ctrl-D", err=True)
        return _text(stdin.read(_MAX_PROMPT_BYTES + 1), "the prompt on stdin")
    return " ".join(words)


_MAX_PROMPT_BYTES = 4 * p.MAX_PROMPT  # UTF-8 takes at most four bytes a character


def _text(data: bytes, where: str) -> str:
    """`data` as a prompt, refused here with the reason (too long to send, not UTF-8,
    empty) rather than as a frame or a decoding error further on."""
    if len(data) > _MAX_PROMPT_BYTES:
        fail(f"{where} is longer than a prompt may be ({p.MAX_PROMPT:,} characters); put long material in a file and tell the agent where it is", Exit.BAD_INPUT)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        fail(f"{where} is not UTF-8 text (byte {exc.start:,} is not); convert it, e.g. with iconv", Exit.BAD_INPUT)
    if not text.strip():
        fail(f"{where} is empty; a prompt says what the agent is to do", Exit.BAD_INPUT)
    return text


# ---------------------------------------------------------------------------------------
# reading


@click.command()
@click.option("--status", "-s", "statuses", multiple=True, type=click.Choice([s.value for s in p.Status]), help="Only tasks in this status (repeatable).")
@click.option("--role", "-r", help="Only tasks with this role.")
@click.option("--active", is_flag=True, help="Only queued, running, waiting, checking and review tasks.")
@click.option("--all", "everything", is_flag=True, help="Every queued and finished task too, not only the newest (with --limit: the newest N finished of the whole history).")
@click.option("--limit", "-n", type=click.IntRange(min=0), help=f"How many of the newest finished tasks to show (default {RECENT}).")
@click.option("--since", "since", metavar="WHEN", help="Only tasks submitted since WHEN: 90m, 2h, 3d, or a date (2026-12-01, 2026-12-01T14:30).")
@click.option("--grep", "grep", metavar="TEXT", default="", help="Only tasks with TEXT in their title or their result (any case).")
@json_option
@click.pass_obj
def ps(app: App, statuses, role, active, everything, limit, since, grep, as_json):
    """List tasks: every one at work, the newest queued and finished ones, with status, role,
    runtime, cost, and what waiting tasks ask."""
    from orchestra.listing import gather, note, parts

    queries = parts(list(statuses), role, active, limit, everything, since=_since(since), grep=grep)
    listing = gather(lambda pages: [app.call(msgspec.convert(fields, p.ListTasks), Any) for fields in pages], queries)  # as maps, like the quick path
    tasks = msgspec.convert(listing.tasks, list[p.TaskView])

    def human(tasks: list[p.TaskView]) -> str | None:
        if not tasks:
            click.echo("no tasks", err=True)
            return None
        from orchestra.render import grouped, terminal_width

        workflows = {}
        wanted = sorted({t.workflow for t in tasks if t.workflow is not None})
        if wanted:
            workflows = {w.id: w for w in app.call(p.ListWorkflows(workflows=wanted), list[p.WorkflowView])}
        return grouped(tasks, workflows, width=terminal_width())

    emit(tasks, as_json, human)
    if note(listing):
        click.echo(note(listing), err=True)


@click.command()
@click.argument("task", type=task_id)
@click.option("--full", is_flag=True, help="All of a long prompt, not only its start.")
@json_option
@click.pass_obj
def show(app: App, task, full, as_json):
    """Everything about one task."""
    from orchestra.render import details

    emit(app.call(p.Show(task=task), p.TaskView), as_json, lambda view: details(view, full=full))


@click.command()
@click.argument("task", type=task_id)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the task ends.")
@click.option("--tail", "-n", type=int, help="Start from the last N lines.")
@click.option("--raw", is_flag=True, help="The agent's raw output (e.g. JSON lines).")
@json_option
@click.pass_obj
def logs(app: App, task, follow, tail, raw, as_json):
    """A task's output."""
    chunks = app.stream(p.Logs(task=task, follow=follow, tail=tail, raw=raw), p.LogChunk)
    if as_json:
        echo_json([{"stream": c.stream, "text": c.data.decode(errors="replace")} for c in chunks])
        return
    out = sys.stdout.buffer
    try:
        for chunk in chunks:
            out.write(chunk.data)
            out.flush()
    except BrokenPipeError:  # `orchestra logs 3 | head`
        sys.stderr.close()


# ---------------------------------------------------------------------------------------
# acting on tasks


@click.command()
@click.argument("task", type=task_id)
@click.argument("text", nargs=-1)
@click.option("--allow", is_flag=True, help="Allow what the task asks permission for.")
@click.option("--deny", is_flag=True, help="Deny it.")
@click.option("--message", "-m", default="", help="With --deny or --reject: why, for the agent.")
@click.option("--budget", type=float, help="Raise the budget that paused the task (or its own) to this many dollars.")
@click.option("--approve", is_flag=True, help="Approve a task in review: it succeeds.")
@click.option("--reject", is_flag=True, help="Reject a task in review; -m says what to change, and its agent works on.")
@json_option
@click.pass_obj
def respond(app: App, task, text, allow, deny, message, budget, approve, reject, as_json):
    """Answer a waiting task (option number, option, or your words), raise the budget that
    paused it (--budget), approve or reject one in review, or write a line to a command's stdin."""
    answer = " ".join(text) if text else None
    if approve or reject:
        request = p.Respond(task=task, text=answer, allow=allow, deny=deny, message=message, via="cli", approve=approve, reject=reject)
        view = app.call(request, p.TaskView)
        emit(view, as_json, lambda v: f"{'approved' if approve else 'rejected'} task {v.id}; it is {v.status.value}")
        return
    asked = _question(app, task) if answer is not None or budget is not None else None
    view = app.call(p.Respond(task=task, text=answer, allow=allow, deny=deny, message=message, via="cli", budget_usd=budget), p.TaskView)
    if budget is not None:
        emit(view, as_json, lambda v: _raised(v, asked, budget))
        return
    emit(view, as_json, lambda v: _sent(v.id, asked, answer, allow, deny, message))


def _question(app: App, task: int) -> p.Question | None:
    """What the task asks right now, to say what an answer chose; None when it asks
    nothing (or is not there: the answer itself then gets the daemon's error)."""
    try:
        return app.connection().call(p.Show(task=task), p.TaskView).waiting
    except p.OrchestraError:
        return None


def _raised(view: p.TaskView, asked: p.Question | None, budget: float) -> str:
    """"raised the budget that paused task 7 to $10.00; it is queued"."""
    which = "that paused" if asked is not None and asked.kind == "budget" else "of"
    return f"raised the budget {which} task {view.id} to {usd(budget)}; it is {view.status.value}"


def _sent(task: int, asked: p.Question | None, answer: str | None, allow: bool, deny: bool, message: str) -> str:
    """What `respond` sent, in a line: "sent to task 8: allow", "answered task 5's
    question with option 2: PostgreSQL"."""
    if allow or deny:
        return f"sent to task {task}: {'allow' if allow else 'deny'}" + (f" ({_brief(message)})" if deny and message else "")
    text = answer or ""
    if asked is not None and asked.kind != "permission":
        options = [o.casefold() for o in asked.options]
        chosen = int(text) if text.strip().isdigit() else (options.index(text.casefold()) + 1 if text.casefold() in options else 0)
        if 1 <= chosen <= len(asked.options):
            return f"answered task {task}'s question with option {chosen}: {_brief(asked.options[chosen - 1])}"
        return f"answered task {task}'s question: {_brief(text)}"
    return f"sent to task {task}: {_brief(text)}"


def _brief(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return shorten(line, limit)


@click.command()
@click.argument("task", type=task_id)
@json_option
@click.pass_obj
def review(app: App, task, as_json):
    """What a task in review did: its summary, its checks and its diff; then approve or
    reject it with `orchestra respond ID --approve` or `--reject -m "..."`."""
    from orchestra.render import review_text

    view = app.call(p.Show(task=task), p.TaskView)
    diff = None
    if view.worktree:  # a worktree task: what it changed, against where it started
        try:
            found = app.connection().call(p.Diff(task=task, limit=256 * 1024), p.DiffResult)
            diff = (found.stat.rstrip() + "\n\n" + found.diff).rstrip() if found.files else "no changes"
        except p.OrchestraError as exc:
            diff = f"(no diff: {exc.message})"
    emit(view, as_json, lambda v: review_text(v, diff))


@click.command()
@click.argument("task", type=task_id)
@json_option
@click.pass_obj
def stop(app: App, task, as_json):
    """Stop a task: cancel it if queued, terminate it if running."""
    view = app.call(p.Stop(task=task), p.TaskView)
    emit(view, as_json, lambda v: f"task {v.id} is {'stopping' if v.status.active else v.status.value}")


@click.command()
@click.argument("task", type=task_id)
@click.argument("message", nargs=-1)
@json_option
@click.pass_obj
def resume(app: App, task, message, as_json):
    """Continue an interrupted or finished task: a Claude task resumes its session
    where it stopped (after a crash, a shutdown or a stop), told MESSAGE or to go on; a
    command runs again."""
    view = app.call(p.Resume(task=task, message=" ".join(message)), p.TaskView)
    emit(view, as_json, lambda v: f"task {v.id} is {v.status.value} again")


@click.command()
@click.argument("tasks", nargs=-1, required=True, type=task_id)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@json_option
@click.pass_obj
def wait(app: App, tasks, timeout, as_json):
    """Block until the tasks have finished. Exit 0 if all succeeded, 1 if any did not."""
    import socket

    conn = app.connection(timeout=timeout)
    done_telling = _tell_when_waiting(app, set(tasks))
    try:
        views = conn.call(p.Wait(tasks=list(tasks)), list[p.TaskView])
    except socket.timeout:
        fail(f"tasks still running after {timeout:g} s", Exit.TASK_FAILED)
    except p.OrchestraError as exc:
        refused(exc)
    finally:
        done_telling()
    emit(views, as_json, lambda views: "\n".join(f"task {v.id} {v.status.value}" + (f": {v.reason}" if v.reason else "") for v in views))
    if any(v.status is not p.Status.SUCCEEDED for v in views):
        sys.exit(int(Exit.TASK_FAILED))


def _tell_when_waiting(app: App, tasks: set[int]):
    """While `wait` blocks: say on stderr, once per task, when one of `tasks` waits for an
    answer (it will not finish until someone gives one), and once per parking when one is
    parked on a usage limit (it will not finish before the reset), from the daemon's Watch stream
    on a connection of its own, in a thread. Returns what ends it."""
    import socket
    import threading

    from orchestra.client import connect
    from orchestra.render import held, waiting_notice
    from orchestra.wire import DaemonUnreachable

    try:
        conn = connect(app.paths, timeout=30)
    except (DaemonUnreachable, OSError):
        return lambda: None  # `wait` itself still works, and reports what it finds
    conn.sock.settimeout(None)

    def follow() -> None:
        told: set[int] = set()
        parked: set[tuple[int, float]] = set()
        try:
            for view in conn.stream(p.Watch(), p.TaskView):
                if view.id in tasks and view.waiting is not None and view.id not in told:
                    told.add(view.id)
                    click.echo(f"orchestra: {waiting_notice(view)}", err=True)
                elif view.id in tasks and view.hold == "parked" and (view.id, view.hold_until) not in parked:
                    parked.add((view.id, view.hold_until))  # type: ignore[arg-type]
                    click.echo(f"orchestra: task {view.id} is {held(view)}; it resumes by itself then", err=True)
        except (DaemonUnreachable, p.OrchestraError, OSError):
            pass  # the daemon went away: `wait` says so

    thread = threading.Thread(target=follow, name="orchestra-wait-notices", daemon=True)
    thread.start()

    def done() -> None:
        try:  # wakes the thread blocked in recv(); close() alone would not
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        thread.join(5)
        conn.close()

    return done


def _since(text: str | None) -> float | None:
    """--since: a span back from now (90m, 2h, 3d, 45s) or a local date and time."""
    if not text:
        return None
    import datetime
    import re
    import time

    span = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if span:
        return time.time() - float(span.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[span.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        fail(f"--since takes a span back from now (90m, 2h, 3d) or a date (2026-12-01, 2026-12-01T14:30), not {text!r}",
             Exit.BAD_INPUT)
