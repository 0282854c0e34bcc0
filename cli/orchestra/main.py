"""`orchestra`: the command-line client.

Every command is a thin call to one daemon request. Read commands take `--json`. Errors are
one line on stderr saying what went wrong and what to do, with exit codes that mean
something (see `Exit`). Imports are kept to what a command needs, so `orchestra ps` starts
fast: nothing here imports the daemon, asyncio or the MCP SDK at module level.
"""

from __future__ import annotations

import enum
import os
import sys
from typing import Any, NoReturn

import click
import msgspec

from orchestra import protocol as p
from orchestra.listing import RECENT


class Exit(enum.IntEnum):
    OK = 0
    TASK_FAILED = 1  # `wait`: a task ended other than succeeded
    BAD_INPUT = 2  # also click's own usage errors
    UNREACHABLE = 3  # no daemon answers (and none could be started)
    NOT_FOUND = 4
    CONFLICT = 5  # valid, but not in the task's current state
    UNAVAILABLE = 6  # the daemon refuses work for now (shutting down, disk full)
    FORBIDDEN = 7  # asked from an agent's process, and only a person may ask it


_EXIT_FOR = {
    p.ErrorCode.BAD_REQUEST: Exit.BAD_INPUT,
    p.ErrorCode.NOT_FOUND: Exit.NOT_FOUND,
    p.ErrorCode.CONFLICT: Exit.CONFLICT,
    p.ErrorCode.PROTOCOL: Exit.UNREACHABLE,
    p.ErrorCode.UNAVAILABLE: Exit.UNAVAILABLE,
    p.ErrorCode.INTERNAL: Exit.UNAVAILABLE,
    p.ErrorCode.FORBIDDEN: Exit.FORBIDDEN,
}


def fail(message: str, code: Exit) -> NoReturn:
    click.echo(f"orchestra: {message}", err=True)
    sys.exit(int(code))


class App:
    def __init__(self, home: str | None, autostart: bool) -> None:
        from orchestra.paths import resolve

        self.paths = resolve(home)
        self.autostart = autostart
        self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def connection(self, *, timeout: float | None = 30.0):
        from orchestra.client import connect_or_start
        from orchestra.wire import DaemonUnreachable

        if self._conn is None:
            try:
                self._conn = connect_or_start(self.paths, autostart=self.autostart, timeout=timeout)
            except DaemonUnreachable as exc:
                hint = "start it with `orchestra daemon start`" if not self.autostart else "see `orchestra daemon status`"
                fail(f"{exc}; {hint}", Exit.UNREACHABLE)
        return self._conn

    def call(self, request: p.Request, result_type: Any = Any, *, timeout: float | None = 30.0) -> Any:
        try:
            return self.connection(timeout=timeout).call(request, result_type)
        except p.OrchestraError as exc:
            fail(exc.message, _EXIT_FOR.get(exc.code, Exit.UNAVAILABLE))
        except OSError as exc:
            fail(f"lost the connection to the daemon: {exc}", Exit.UNREACHABLE)

    def stream(self, request: p.Request, item_type: Any = Any):
        try:
            yield from self.connection(timeout=None).stream(request, item_type)
        except p.OrchestraError as exc:
            fail(exc.message, _EXIT_FOR.get(exc.code, Exit.UNAVAILABLE))
        except OSError as exc:
            fail(f"lost the connection to the daemon: {exc}", Exit.UNREACHABLE)


def echo_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="ORCHESTRA_HOME", help="Directory for config, state and socket (default: the platform's places).")
@click.option("--no-autostart", is_flag=True, envvar="ORCHESTRA_NO_AUTOSTART", help="Do not start a daemon when none is running.")
@click.version_option(package_name="orchestra")
@click.pass_context
def cli(ctx: click.Context, home: str | None, no_autostart: bool) -> None:
    """Run a team of coding agents: queue tasks, watch them, answer them."""
    ctx.obj = App(home, autostart=not no_autostart)
    ctx.call_on_close(ctx.obj.close)


def task_id(value: str) -> int:
    try:
        number = int(value.lstrip("#"))
    except ValueError:
        number = 0
    if not 1 <= number <= p.MAX_TASK_ID:
        shown = value if len(value) <= 40 else value[:39] + "…"
        fail(f"{shown!r} is not a task id (a whole number from 1, as `orchestra ps` shows)", Exit.BAD_INPUT)
    return number


# ---------------------------------------------------------------------------------------
# submit


class _SplitAtDashes(click.Command):
    """Everything after `--` is the command to run, kept apart from the prompt words."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            index = args.index("--")
            ctx.meta["argv"] = args[index + 1 :]
            args = args[:index]
        return super().parse_args(ctx, args)


def _priority(ctx, param, value):
    if value is None:
        return 0
    try:
        return p.parse_priority(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command(cls=_SplitAtDashes)
@click.argument("prompt", nargs=-1)
@click.option("--role", "-r", help=f"Role: {', '.join(p.BUILTIN_ROLES)}, or one of yours (default from config).")
@click.option("--agent", "-a", type=click.Choice(p.AGENTS), help="Agent (default: command for `-- argv`, else from config).")
@click.option("--priority", "-p", callback=_priority, help="A number, or low/normal/high/urgent.")
@click.option("--after", multiple=True, type=task_id, help="Start only after this task succeeded (repeatable).")
@click.option("--timeout", type=float, help="Seconds of wall-clock time before it is stopped.")
@click.option("--idle-timeout", type=float, help="Seconds without output before it is stopped.")
@click.option("--budget", type=float, help="Dollars the agent may spend.")
@click.option("--model", help="Model for the agent.")
@click.option("--cwd", type=click.Path(file_okay=False), help="Working directory (default: here).")
@click.option("--env", "-e", multiple=True, help="NAME=VALUE for the task's environment (repeatable).")
@click.option("--title", default="", help="A short name shown by `ps`.")
@click.option("--worktree/--no-worktree", default=None, help="Work in a git worktree of its own, on a new branch (default: as the role says).")
@json_option
@click.pass_context
def submit(ctx, prompt, role, agent, priority, after, timeout, idle_timeout, budget, model, cwd, env, title, worktree, as_json):
    """Queue a task: a prompt for an agent, or a command after `--`.

    \b
      orchestra submit --role tester "write tests for the parser"
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
        prompt=" ".join(prompt),
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
    )
    task = app.call(request, p.TaskView)
    if as_json:
        echo_json(task)
    else:
        click.echo(task.id)


# ---------------------------------------------------------------------------------------
# reading


@cli.command()
@click.option("--status", "-s", "statuses", multiple=True, type=click.Choice([s.value for s in p.Status]), help="Only tasks in this status (repeatable).")
@click.option("--role", "-r", help="Only tasks with this role.")
@click.option("--active", is_flag=True, help="Only queued, running and waiting tasks.")
@click.option("--all", "everything", is_flag=True, help="Every finished task too, not only the newest.")
@click.option("--limit", "-n", type=click.IntRange(min=0), help=f"How many of the newest finished tasks to show (default {RECENT}).")
@json_option
@click.pass_obj
def ps(app: App, statuses, role, active, everything, limit, as_json):
    """List tasks: every active one and the newest finished ones, with status, role,
    runtime, cost, and what waiting tasks ask."""
    from orchestra.listing import gather, note, parts

    if everything and limit is not None:
        fail("give --all or --limit, not both", Exit.BAD_INPUT)
    queries = parts(list(statuses), role, active, limit, everything)
    listing = gather(lambda pages: [app.call(msgspec.convert(fields, p.ListTasks)) for fields in pages], queries)
    tasks = msgspec.convert(listing.tasks, list[p.TaskView])
    if as_json:
        echo_json(tasks)
    elif tasks:
        from orchestra.render import grouped, terminal_width

        workflows = {}
        wanted = sorted({t.workflow for t in tasks if t.workflow is not None})
        if wanted:
            workflows = {w.id: w for w in app.call(p.ListWorkflows(workflows=wanted), list[p.WorkflowView])}
        click.echo(grouped(tasks, workflows, width=terminal_width()))
    else:
        click.echo("no tasks", err=True)
    if note(listing):
        click.echo(note(listing), err=True)


@cli.command()
@click.argument("task", type=task_id)
@json_option
@click.pass_obj
def show(app: App, task, as_json):
    """Everything about one task."""
    view = app.call(p.Show(task=task), p.TaskView)
    if as_json:
        echo_json(view)
    else:
        from orchestra.render import details

        click.echo(details(view))


@cli.command()
@click.argument("task", type=task_id)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the task ends.")
@click.option("--tail", "-n", type=int, help="Start from the last N lines.")
@click.option("--raw", is_flag=True, help="The agent's raw output (e.g. JSON lines).")
@json_option
@click.pass_obj
def logs(app: App, task, follow, tail, raw, as_json):
    """A task's output."""
    out = sys.stdout.buffer
    chunks = app.stream(p.Logs(task=task, follow=follow, tail=tail, raw=raw), p.LogChunk)
    if as_json:
        echo_json([{"stream": c.stream, "text": c.data.decode(errors="replace")} for c in chunks])
        return
    try:
        for chunk in chunks:
            out.write(chunk.data)
            out.flush()
    except BrokenPipeError:  # `orchestra logs 3 | head`
        sys.stderr.close()


# ---------------------------------------------------------------------------------------
# acting on tasks


@cli.command()
@click.argument("task", type=task_id)
@click.argument("text", nargs=-1)
@click.option("--allow", is_flag=True, help="Allow what the task asks permission for.")
@click.option("--deny", is_flag=True, help="Deny it.")
@click.option("--message", "-m", default="", help="With --deny: why, for the agent.")
@json_option
@click.pass_obj
def respond(app: App, task, text, allow, deny, message, as_json):
    """Answer a waiting task (option number, option, or your words), or write a line to a
    command's stdin."""
    answer = " ".join(text) if text else None
    view = app.call(p.Respond(task=task, text=answer, allow=allow, deny=deny, message=message), p.TaskView)
    if as_json:
        echo_json(view)
    else:
        click.echo(f"task {view.id} is {view.status.value}")


@cli.command()
@click.argument("task", type=task_id)
@json_option
@click.pass_obj
def stop(app: App, task, as_json):
    """Stop a task: cancel it if queued, terminate it if running."""
    view = app.call(p.Stop(task=task), p.TaskView)
    if as_json:
        echo_json(view)
    else:
        state = "stopping" if view.status.active else view.status.value
        click.echo(f"task {view.id} is {state}")


@cli.command()
@click.argument("task", type=task_id)
@click.argument("message", nargs=-1)
@json_option
@click.pass_obj
def resume(app: App, task, message, as_json):
    """Run a finished task again. A Claude task continues its conversation where it
    stopped (after a crash, a shutdown or a stop); MESSAGE replaces the default nudge."""
    view = app.call(p.Resume(task=task, message=" ".join(message)), p.TaskView)
    if as_json:
        echo_json(view)
    else:
        click.echo(f"task {view.id} is {view.status.value} again")


@cli.command()
@click.argument("tasks", nargs=-1, required=True, type=task_id)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@json_option
@click.pass_obj
def wait(app: App, tasks, timeout, as_json):
    """Block until the tasks have finished. Exit 0 if all succeeded, 1 if any did not."""
    import socket

    try:
        views = app.connection(timeout=timeout).call(p.Wait(tasks=list(tasks)), list[p.TaskView])
    except socket.timeout:
        fail(f"tasks still running after {timeout:g} s", Exit.TASK_FAILED)
    except p.OrchestraError as exc:
        fail(exc.message, _EXIT_FOR.get(exc.code, Exit.UNAVAILABLE))
    if as_json:
        echo_json(views)
    else:
        for v in views:
            click.echo(f"task {v.id} {v.status.value}" + (f": {v.reason}" if v.reason else ""))
    if any(v.status is not p.Status.SUCCEEDED for v in views):
        sys.exit(int(Exit.TASK_FAILED))


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def queue(ctx, as_json):
    """The queue in run order; change a task's priority or remove it."""
    if ctx.invoked_subcommand is None:
        tasks = ctx.obj.call(p.Queue(), list[p.TaskView])
        if as_json:
            echo_json(tasks)
        elif tasks:
            from orchestra.render import table, terminal_width

            click.echo(table(tasks, width=terminal_width()))
        else:
            click.echo("the queue is empty", err=True)
        if len(tasks) >= p.PAGE_MAX:  # the head of a long queue: say how long it is
            queued = ctx.obj.call(p.Info(), p.DaemonStatus).counts.get(p.Status.QUEUED.value, 0)
            click.echo(f"the first {len(tasks):,} of {queued:,} queued tasks are shown; `orchestra ps --status queued` lists them all", err=True)


@queue.command("priority")
@click.argument("task", type=task_id)
@click.argument("priority")
@click.pass_obj
def queue_priority(app: App, task, priority):
    """Set a queued task's priority (a number or low/normal/high/urgent)."""
    try:
        value = p.parse_priority(priority)
    except ValueError as exc:
        fail(str(exc), Exit.BAD_INPUT)
    view = app.call(p.SetPriority(task=task, priority=value), p.TaskView)
    click.echo(f"task {view.id} has priority {view.priority}")


@queue.command("remove")
@click.argument("task", type=task_id)
@click.pass_obj
def queue_remove(app: App, task):
    """Take a queued task out of the queue."""
    app.call(p.Remove(task=task))
    click.echo(f"task {task} removed")


# ---------------------------------------------------------------------------------------
# roles and workflows


@cli.command()
@click.argument("name", required=False)
@json_option
@click.pass_obj
def roles(app: App, name, as_json):
    """List the roles, or show one: its prompt, tools and limits."""
    result = app.call(p.Roles(), p.RolesResult)
    if name is not None:
        match = [r for r in result.roles if r.name == name]
        if not match:
            fail(f"no role {name!r}; known roles: {', '.join(r.name for r in result.roles)}", Exit.NOT_FOUND)
        if as_json:
            echo_json(match[0])
        else:
            from orchestra.render import role_details

            click.echo(role_details(match[0], custom=name in result.custom))
        return
    if as_json:
        echo_json(result)
        return
    for role in result.roles:
        source = " (yours)" if role.name in result.custom else ""
        click.echo(f"{role.name:<12} {role.description}{source}")
    for problem in result.problems:
        click.echo(f"problem: {problem}", err=True)


@cli.group()
def workflow():
    """Workflow templates: a goal becomes a small team whose steps feed each other."""


@workflow.command("list")
@json_option
@click.pass_obj
def workflow_list(app: App, as_json):
    """The templates you can run."""
    result = app.call(p.Templates(), p.TemplatesResult)
    if as_json:
        echo_json(result)
        return
    for template in result.templates:
        source = " (yours)" if template.name in result.custom else ""
        steps = " → ".join(s.name for s in template.steps)
        click.echo(f"{template.name:<20} {template.description}{source}\n{'':<20} {steps}")
    for problem in result.problems:
        click.echo(f"problem: {problem}", err=True)


@workflow.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def workflow_show(app: App, name, as_json):
    """One template: its steps, their roles, order and prompts."""
    result = app.call(p.Templates(), p.TemplatesResult)
    match = [t for t in result.templates if t.name == name]
    if not match:
        fail(f"no workflow template {name!r}; `orchestra workflow list` shows them", Exit.NOT_FOUND)
    if as_json:
        echo_json(match[0])
    else:
        from orchestra.render import template_details

        click.echo(template_details(match[0]))


@workflow.command("run")
@click.argument("name")
@click.argument("goal", nargs=-1, required=True)
@click.option("--cwd", type=click.Path(file_okay=False), help="Where the team works (default: here).")
@click.option("--worktree/--no-worktree", default=None, help="Work in a git worktree on a new branch (default: as the template says).")
@click.option("--priority", "-p", callback=_priority, help="A number, or low/normal/high/urgent.")
@click.option("--agent", "-a", type=click.Choice(p.AGENTS), help="Run every step with this agent.")
@json_option
@click.pass_obj
def workflow_run(app: App, name, goal, cwd, worktree, priority, agent, as_json):
    """Run template NAME for GOAL; prints the workflow's id and its tasks."""
    view = app.call(
        p.RunWorkflow(template=name, goal=" ".join(goal), cwd=os.path.abspath(cwd or os.getcwd()), worktree=worktree, priority=priority, agent=agent),
        p.WorkflowView,
    )
    if as_json:
        echo_json(view)
    else:
        click.echo(f"workflow {view.id}: " + ", ".join(f"{step} = task {task}" for step, task in view.steps.items()))


@workflow.command("status")
@click.argument("workflow_id", required=False, type=task_id)
@json_option
@click.pass_obj
def workflow_status(app: App, workflow_id, as_json):
    """A workflow's steps and overall status and cost (all workflows without an id)."""
    from orchestra.render import terminal_width, workflow_block

    views = [app.call(p.ShowWorkflow(workflow=workflow_id), p.WorkflowView)] if workflow_id is not None else app.call(p.ListWorkflows(), list[p.WorkflowView])
    if as_json:
        echo_json(views[0] if workflow_id is not None else views)
        return
    if not views:
        click.echo("no workflows yet", err=True)
    for view in views:
        click.echo(workflow_block(view, width=terminal_width()))


@cli.command("assign-role")
@click.argument("task", type=task_id)
@click.argument("role")
@json_option
@click.pass_obj
def assign_role(app: App, task, role, as_json):
    """Give a task another role (a running one takes it from its next attempt)."""
    result = app.call(p.AssignRole(task=task, role=role))
    if as_json:
        echo_json(result)
    else:
        click.echo(result["note"])


# ---------------------------------------------------------------------------------------
# config and the daemon


@cli.group()
def config():
    """Read or change settings (recorded in the daemon's log)."""


@config.command("get")
@click.argument("key", required=False)
@json_option
@click.pass_obj
def config_get(app: App, key, as_json):
    values = app.call(p.ConfigGet(key=key))
    if as_json:
        echo_json(values)
    else:
        for name, value in values.items():
            click.echo(f"{name} = {msgspec.json.encode(value).decode()}")


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def config_set(app: App, key, value):
    """VALUE is JSON where it parses as JSON (4, 2.5, null, {"tester": 1}), else text."""
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        parsed = value
    result = app.call(p.ConfigSet(key=key, value=parsed))
    for name, v in result.items():
        click.echo(f"{name} = {msgspec.json.encode(v).decode()}")


@cli.command()
@click.pass_obj
def mcp(app: App):
    """Serve the Model Context Protocol on stdio, for Claude Desktop, Claude Code and other
    MCP clients (starts the daemon if none answers)."""
    from orchestra.mcp_server import serve

    serve(app.paths, autostart=app.autostart)


@cli.command()
@click.pass_obj
def dashboard(app: App):
    """A live view of the team: tasks by status, what waiting tasks ask, the queue,
    workflows and cost. Updates as things happen; q or Ctrl-C to leave."""
    from orchestra.dashboard import run

    run(app)


@cli.command()
@click.option("--force", is_flag=True, help="Remove worktrees even where work would be lost with them.")
@json_option
@click.pass_obj
def cleanup(app: App, force, as_json):
    """Forget finished tasks older than the retention (config retention_days), free
    the log space only they used, and remove their worktrees (their branches stay;
    uncommitted work is committed to the branch first, and a worktree whose work cannot be
    saved is kept unless --force)."""
    result = app.call(p.Cleanup(force=force), p.CleanupResult)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"purged {len(result.purged)} finished task(s); removed {result.segments_removed} log segment(s), {result.bytes_freed:,} bytes")
        for line in result.saved:
            click.echo(f"saved: {line}")
        for line in result.kept:
            click.echo(f"kept: {line}")


@cli.group(invoke_without_command=True)
@click.pass_context
def daemon(ctx):
    """Run the daemon in the foreground, or start, stop or check it."""
    if ctx.invoked_subcommand is None:
        from orchestrad.__main__ import main as daemon_main

        app: App = ctx.obj
        sys.exit(daemon_main(["--home", str(app.paths.home)] if app.paths.home else []))


@daemon.command("start")
@click.pass_obj
def daemon_start(app: App):
    """Start the daemon in the background if it is not running."""
    from orchestra.client import connect, start_daemon
    from orchestra.wire import DaemonUnreachable

    try:
        connect(app.paths, timeout=5).close()
        click.echo("the daemon is already running")
        return
    except DaemonUnreachable:
        pass
    try:
        pid = start_daemon(app.paths)
    except DaemonUnreachable as exc:
        fail(str(exc), Exit.UNREACHABLE)
    click.echo(f"started orchestrad (pid {pid}); socket {app.paths.socket}")


@daemon.command("stop")
@click.pass_obj
def daemon_stop(app: App):
    """Stop the daemon; running tasks are stopped and recorded as interrupted."""
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    try:
        conn = connect(app.paths, timeout=5)
    except DaemonUnreachable:
        click.echo("the daemon is not running")
        return
    try:
        result = conn.call(p.Shutdown())
    except p.OrchestraError as exc:
        fail(exc.message, _EXIT_FOR.get(exc.code, Exit.UNAVAILABLE))
    pid = result["stopping"]
    _wait_gone(conn)
    click.echo(f"stopped orchestrad (pid {pid})")


def _wait_gone(conn) -> None:
    """The daemon closes every connection last thing before it exits."""
    conn.sock.settimeout(60)
    try:
        while conn.sock.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


@daemon.command("status")
@json_option
@click.pass_obj
def daemon_status(app: App, as_json):
    """Whether the daemon runs, where, and what it holds."""
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    try:
        conn = connect(app.paths, timeout=5)
    except DaemonUnreachable as exc:
        if as_json:
            echo_json({"running": False, "socket": str(app.paths.socket)})
        else:
            click.echo(f"not running ({exc})")
        sys.exit(int(Exit.UNREACHABLE))
    info = conn.call(p.Info(), p.DaemonStatus)
    if as_json:
        echo_json({"running": True, **msgspec.structs.asdict(info)})
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(info.counts.items())) or "no tasks"
        click.echo(f"running: pid {info.pid}, version {info.version}, socket {info.socket}\n{counts}")


@cli.group()
def service():
    """Have the service manager run the daemon: a systemd user unit, or a launchd agent."""


def _platform(value: str | None) -> str:
    return value or ("darwin" if sys.platform == "darwin" else "linux")


@service.command("install")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@click.option("--socket", is_flag=True, help="systemd: also install orchestrad.socket (socket activation).")
@click.option("--platform", "platform_", type=click.Choice(["linux", "darwin"]), help="Which service manager (default: this machine's).")
@click.pass_obj
def service_install(app: App, dry_run, socket, platform_):
    """Write the unit (or plist) for this user with the real path of orchestrad, and say
    how to enable it."""
    from orchestra import service as svc
    from orchestra.paths import make_private_dir

    platform = _platform(platform_)
    try:
        files = [svc.launchd_plist(app.paths.home)] if platform == "darwin" else svc.systemd_units(app.paths.home, socket=socket)
    except FileNotFoundError as exc:
        fail(f"{exc}; install orchestra first (pip install .)", Exit.BAD_INPUT)
    for unit in files:
        if dry_run:
            click.echo(f"# would write {unit.path}\n{unit.text}")
        else:
            make_private_dir(unit.path.parent)
            unit.path.write_text(unit.text)
            unit.path.chmod(0o644)  # the service manager runs what it says: nobody else may change it
            click.echo(f"wrote {unit.path}")
    click.echo("to enable it, run:")
    for command in svc.enable_commands(platform, socket):
        click.echo(f"  {command}")


@service.command("uninstall")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--platform", "platform_", type=click.Choice(["linux", "darwin"]), help="Which service manager (default: this machine's).")
@click.pass_obj
def service_uninstall(app: App, dry_run, platform_):
    """Remove the unit files (run the printed commands first to stop the service)."""
    from orchestra import service as svc

    platform = _platform(platform_)
    click.echo("first stop it:")
    for command in svc.disable_commands(platform):
        click.echo(f"  {command}")
    paths = [svc.launchd_plist(None, daemon="orchestrad").path] if platform == "darwin" else [u.path for u in svc.systemd_units(None, socket=True, daemon="orchestrad")]
    for path in paths:
        if path.exists():
            if not dry_run:
                path.unlink()
            click.echo(f"{'would remove' if dry_run else 'removed'} {path}")


@service.command("status")
@click.option("--platform", "platform_", type=click.Choice(["linux", "darwin"]), help="Which service manager (default: this machine's).")
@click.pass_obj
def service_status(app: App, platform_):
    """Whether the unit is installed, and whether the daemon answers."""
    from orchestra import service as svc
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    platform = _platform(platform_)
    paths = [svc.launchd_plist(None, daemon="orchestrad").path] if platform == "darwin" else [u.path for u in svc.systemd_units(None, socket=True, daemon="orchestrad")]
    for path in paths:
        click.echo(f"{path}: {'installed' if path.exists() else 'not installed'}")
    try:
        connect(app.paths, timeout=5).close()
        click.echo(f"daemon: answering on {app.paths.socket}")
    except DaemonUnreachable:
        click.echo(f"daemon: not answering on {app.paths.socket}")


def main() -> None:
    cli(prog_name="orchestra")


if __name__ == "__main__":
    main()
