"""Human-readable renderings of the daemon's answers: tables, task details, durations."""

from __future__ import annotations

import os
import sys
import time

from orchestra.shared.vocab import LIVELY, Status, usd, shorten

TYPE_CHECKING = False  # typing itself is not imported: `orchestra.quick` renders with this module
if TYPE_CHECKING:
    from collections.abc import Sequence

    from orchestra.shared.protocol import Question, Role, TaskView, WorkflowTemplate, WorkflowView

MARK = {  # a task's status as one character, in workflow steps and the dashboard
    Status.SUCCEEDED: "✓",
    Status.FAILED: "✗",
    Status.TIMED_OUT: "✗",
    Status.INTERRUPTED: "✗",
    Status.CANCELLED: "–",
    Status.RUNNING: "●",
    Status.WAITING: "?",
    Status.QUEUED: "○",
    Status.CHECKING: "◐",
    Status.REVIEW: "◇",
}


def terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else 120 (output going to a file or a pipe)."""
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.stdout.fileno()).columns
    except (ValueError, OSError):
        return 120


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def cost(amount: float) -> str:
    """A cost in a column: "-" for none."""
    return usd(amount) if amount else "-"


def doing(task: TaskView) -> str:
    """What a person most wants to know about the task in one line."""
    if task.waiting is not None:
        return f"asks: {question_line(task.waiting)}"
    if task.reason:
        return f"{task.title} ({task.reason})"
    if task.status.active and task.activity:
        return f"{task.title} · {task.activity}"
    if getattr(task, "hold", ""):
        return f"{task.title} · {held(task)}"
    if getattr(task, "waits_for", ""):
        return f"{task.title} · waits for {task.waits_for}"
    return task.title


def held(task: TaskView) -> str:
    """What holds a queued task until a time, at the local time it ends: "parked until
    14:05 (usage limit)", "retrying at 14:05:07 (attempt 2 of 5: overloaded)", "held by its
    account's usage limit until 14:05"; "" if nothing does."""
    until = getattr(task, "hold_until", None)
    if not getattr(task, "hold", "") or until is None:
        return ""
    if task.hold == "executor":
        return f"not started, tried again at {time.strftime('%H:%M:%S', time.localtime(until))}: {task.hold_reason}"
    if task.hold == "retry":
        return f"retrying at {time.strftime('%H:%M:%S', time.localtime(until))} ({task.hold_reason})"
    at = time.strftime("%H:%M", time.localtime(until))
    if task.hold == "account":
        return f"held by its account's {task.hold_reason} until {at}"
    return f"{task.hold} until {at} ({task.hold_reason})"


def liveness(task: TaskView, now: float) -> str:
    """What an active task is doing, told apart honestly: "working" (output, a tool use or
    CPU use within the daemon's `silent_after`), "silent 12 min" (a running task that has
    done none of those for longer; how long), "waiting for you" (it asked something),
    "parked until 14:05", "retrying at 14:05:07" or "held until 14:05" (a queued task held
    until a time). "" for a finished task, a queued one nothing holds, or a running one of
    a daemon that does not say when it was last active."""
    if task.status is Status.WAITING:
        return "waiting for you"
    if task.status is Status.QUEUED:
        return _held_short(task)
    if task.status is not Status.RUNNING:
        return ""
    seen = [at for at in (getattr(task, "last_activity", None), getattr(task, "cpu_at", None)) if at is not None]
    if not seen:
        return ""
    quiet = now - max(seen)
    return "working" if quiet <= (getattr(task, "silent_after", None) or LIVELY) else f"silent {ago(quiet)}"


def ago(seconds: float) -> str:
    """A stretch of time as people say it: "45s", "12 min", "2h05m", "3 days"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400} days"


def _held_short(task: TaskView) -> str:
    until = getattr(task, "hold_until", None)
    kind = getattr(task, "hold", "")
    if not kind or until is None:
        return ""
    if kind == "retry":
        return f"retrying at {time.strftime('%H:%M:%S', time.localtime(until))}"
    at = time.strftime("%H:%M", time.localtime(until))
    return f"held until {at}" if kind == "account" else f"{kind} until {at}"


def cpu_line(task: TaskView, now: float) -> str:
    """An active task's CPU use, for `show`: "4.2 s, last 3s ago" ("" if none was read)."""
    seconds = getattr(task, "cpu_seconds", None)
    if seconds is None:
        return ""
    at = getattr(task, "cpu_at", None)
    return f"{seconds:.1f} s" + (f", last used {ago(now - at)} ago" if at is not None else ", none seen in use yet")


def setback_line(s) -> str:
    """One attempt retried or parked, for `show`: "attempt 1: overloaded, retried at
    14:05:07 (API Error: 529 Overloaded…)"."""
    if s.kind == "parked":
        then = f"parked until {time.strftime('%H:%M', time.localtime(s.until))}"
    else:
        then = f"retried at {time.strftime('%H:%M:%S', time.localtime(s.until))}"
    return f"attempt {s.attempt}: {s.error}, {then}" + (f" ({shorten(s.detail, 120)})" if s.detail else "")


def waiting_notice(task: TaskView) -> str:
    """What a waiting task asks and the command that answers it, in one line."""
    w = task.waiting
    if w.kind == "budget":
        return f"task {task.id} is paused: {w.prompt}"
    if w.kind == "review":
        return f"task {task.id} waits for review: orchestra review {task.id}, then orchestra respond {task.id} --approve, or --reject -m \"...\""
    if w.kind == "permission":
        how = f"orchestra respond {task.id} --allow, or --deny"
    elif w.options:
        how = f"orchestra respond {task.id} 1 (an option number, or your own words)"
    else:
        how = f'orchestra respond {task.id} "your answer"'
    return f"task {task.id} is waiting for an answer ({question_line(w)}): {how}"


def question_line(w: Question) -> str:
    """A question and its numbered options, on one line: "Which? [1. Red / 2. Blue]"."""
    return w.prompt + (" [" + " / ".join(f"{i}. {o}" for i, o in enumerate(w.options, 1)) + "]" if w.options else "")


def status_cell(task: TaskView, now: float) -> str:
    """A task's STATUS in `ps`: a running task's liveness ("working", "silent 12 min"), else
    its status ("waiting", "queued": the TASK column says what it asks, or what holds it)."""
    if task.status is Status.RUNNING:
        return liveness(task, now) or task.status.value
    return task.status.value


def table(tasks: Sequence[TaskView], *, width: int = 120, now: float | None = None) -> str:
    now = time.time() if now is None else now
    headers = ("ID", "STATUS", "ROLE", "AGENT", "PRI", "AFTER", "RUNTIME", "COST", "TASK")
    rows = [
        (
            str(t.id),
            status_cell(t, now),
            t.role,
            t.agent + (f"@{t.node.split(' (')[0]}" if getattr(t, "node", "") else ""),  # where it runs, off this machine
            str(t.priority),
            ",".join(map(str, t.after)) or "-",
            duration(t.runtime),
            cost(t.cost_usd),
            doing(t),
        )
        for t in tasks
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        fixed = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1]))
        room = max(20, width - len(fixed) - 2)
        last = shorten(row[-1], room)
        lines.append(f"{fixed}  {last}".rstrip())
    return "\n".join(lines)


PROMPT_LINES = 10  # of a long prompt, `show` prints these many lines ...
PROMPT_CHARS = 1000  # ... or characters, whichever is less, unless --full


def prompt_lines(task: TaskView, *, full: bool = False) -> list[str]:
    """The prompt as `show` prints it: all of it with `full`, else its start, and a last
    line saying how much more there is and how to see it."""
    text = task.prompt
    lines = text.splitlines() or [""]
    if full or (len(text) <= PROMPT_CHARS and len(lines) <= PROMPT_LINES):
        return lines
    shown = text[:PROMPT_CHARS].splitlines()[:PROMPT_LINES]
    if len(lines) > len(shown):
        more = f"{len(lines) - len(shown):,} more lines"
    else:
        more = f"{len(text) - len(chr(10).join(shown)):,} more characters"
    return [*shown, f"… ({more}: orchestra show --full {task.id})"]


def details(task: TaskView, *, full: bool = False, now: float | None = None) -> str:
    """Everything about one task, as `show` prints it (a long prompt shortened unless `full`)."""
    def when(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"

    lines = [
        f"task {task.id}: {task.title}",
        f"  status     {task.status.value}" + (f" ({task.reason})" if task.reason else ""),
        f"  role       {task.role}",
        f"  agent      {task.agent}",
        f"  priority   {task.priority}",
        f"  after      {', '.join(map(str, task.after)) or '-'}",
        f"  cwd        {task.cwd}",
    ]
    if task.argv:
        lines.append(f"  command    {' '.join(task.argv)}")
    if task.prompt:
        first, *rest = prompt_lines(task, full=full)
        lines.append(f"  prompt     {first}")
        lines += [f"             {line}" for line in rest]
    lines += [
        f"  submitted  {when(task.submitted_at)}",
        f"  started    {when(task.started_at)}",
        f"  finished   {when(task.finished_at)}",
        f"  runtime    {duration(task.runtime)}",
        f"  attempts   {task.attempts}",
    ]
    lines += [f"             {setback_line(s)}" for s in getattr(task, "setbacks", [])]
    if task.pid is not None:
        lines.append(f"  pid        {task.pid}")
    if task.sandbox:
        lines.append(f"  sandbox    {task.sandbox}")
    if task.executor != "local":
        lines.append(f"  runs on    {task.executor}" + (f", node {task.node}" if task.node else ""))
    if task.exit_code is not None or task.signal is not None:
        lines.append(f"  exit       {task.exit_code if task.signal is None else 'signal ' + str(task.signal)}")
    limits = [
        f"timeout {duration(task.timeout)}" if task.timeout else "",
        f"idle timeout {duration(task.idle_timeout)}" if task.idle_timeout else "",
        f"budget {usd(task.budget_usd)}" if task.budget_usd else "",
    ]
    if any(limits):
        lines.append(f"  limits     {', '.join(x for x in limits if x)}")
    if task.cost_usd or task.input_tokens or task.output_tokens:
        lines.append(f"  cost       {cost(task.cost_usd)} ({task.input_tokens} tokens in, {task.output_tokens} out)")
    if held(task):
        lines.append(f"  held       {held(task)}")
    if task.waits_for:
        lines.append(f"  waits for  {task.waits_for}")
    if task.parent is not None:
        lines.append(f"  submitted  by task {task.parent}'s agent")
    if task.session_id:
        lines.append(f"  session    {task.session_id}")
    now = time.time() if now is None else now
    if task.status.active and liveness(task, now):
        lines.append(f"  now        {liveness(task, now)}")
    if cpu_line(task, now):
        lines.append(f"  cpu        {cpu_line(task, now)}")
    if task.activity:
        lines.append(f"  activity   {task.activity}")
    if task.result:
        result = task.result.strip().replace("\n", "\n             ")
        lines.append(f"  result     {result}")
    if getattr(task, "changes", None) is not None:
        lines.append(f"  changes    {changes_line(task.changes)} (orchestra diff {task.id})")
        lines += [f"             {line}" for line in task.changes.stat.splitlines()[:-1]]
    lines += check_lines(task)
    if task.env_keys:
        lines.append(f"  env        {', '.join(task.env_keys)} (values not shown)")
    lines.append(f"  output     {task.output_bytes} bytes")
    if task.decisions_total:
        shown = task.decisions if full else task.decisions[-10:]
        earlier = task.decisions_total - len(shown)
        lines.append(f"  decisions  {task.decisions_total} permission decision{'' if task.decisions_total == 1 else 's'}"
                     + (f" (the latest {len(shown)}; --full for up to {len(task.decisions)})" if earlier and not full else ""))
        for d in shown:
            stamp = time.strftime("%H:%M:%S", time.localtime(d.at))
            lines.append(f"    {stamp} {'allowed' if d.effect == 'allow' else 'denied '} {shorten(f'{d.tool}: {d.summary}', 80)}")
            lines.append(f"             by {d.by}")
    if task.waiting is not None:
        w = task.waiting
        lines.append(f"  waiting    {w.kind}: {w.prompt}")
        for i, option in enumerate(w.options, 1):
            lines.append(f"             {i}. {option}")
        hint = {
            "permission": "--allow / --deny",
            "budget": f"--budget N (dollars), or stop it: orchestra stop {task.id}",
            "review": '--approve, or --reject -m "what to change" (orchestra review ' + str(task.id) + " shows what it did)",
        }.get(w.kind, '"your answer"')
        lines.append(f"  answer     orchestra respond {task.id} {hint}")
    return "\n".join(lines)


def changes_line(c) -> str:
    """"3 files, +40 -2"; "no changes"."""
    if not c.files:
        return "no changes"
    return f"{c.files} file{'' if c.files == 1 else 's'}, +{c.insertions} -{c.deletions}"
def check_mark(check) -> str:
    """How one acceptance check ended, in a few words: "passed", "failed (exit 1)"."""
    if check.running:
        return "running"
    if check.passed:
        return "passed"
    if check.timed_out:
        return "failed (timed out)"
    if check.signal is not None:
        return f"failed (signal {check.signal})"
    return "failed (could not run)" if check.exit_code is None else f"failed (exit {check.exit_code})"


def check_lines(task: TaskView, *, tails: bool = False) -> list[str]:
    """`show`'s lines for a task's acceptance checks: each check and how it ended in the
    latest round; with `tails`, a failing one's output's end too."""
    commands = list(getattr(task, "checks", []))
    if not commands:
        return []
    results = list(getattr(task, "check_results", []))
    rounds = f"round {task.check_round} of {task.check_rounds}" if task.check_round else f"not run yet, {task.check_rounds} rounds at most"
    lines = [f"  checks     {rounds}"]
    for i, command in enumerate(commands):
        outcome = check_mark(results[i]) if i < len(results) else "not run"
        lines.append(f"    {i + 1}. {command}: {outcome}")
        if tails and i < len(results) and not results[i].passed and results[i].tail:
            lines += [f"       | {line}" for line in results[i].tail.splitlines()[-20:]]
    return lines


def review_text(task: TaskView, diff: str | None = None) -> str:
    """What `orchestra review ID` shows: the task, its agent's summary, its checks, its
    changes (`diff`, once the daemon gives one), and how to answer. Built from parts, so a
    part can be added without touching the others."""
    parts = [_review_head(task), _review_summary(task), "\n".join(check_lines(task, tails=True)) or "  checks     none"]
    if diff is not None:
        parts.append("  changes\n" + "\n".join(f"    {line}" for line in diff.splitlines()))
    parts.append(_review_answer(task))
    return "\n\n".join(part for part in parts if part)


def _review_head(task: TaskView) -> str:
    where = f" · {task.worktree}" if task.worktree else f" · {task.cwd}"
    return f"task {task.id} · {task.status.value} · {task.role} · {task.title}{where}"


def _review_summary(task: TaskView) -> str:
    if not task.result.strip():
        return "  summary    (the agent gave none)"
    return "  summary    " + task.result.strip().replace("\n", "\n             ")


def _review_answer(task: TaskView) -> str:
    decided = [f"  {'approved' if r.approved else 'rejected'} by {r.by}" + (f": {r.message}" if r.message else "") for r in getattr(task, "reviews", [])]
    if task.status is Status.REVIEW:
        how = f'  answer     orchestra respond {task.id} --approve, or orchestra respond {task.id} --reject -m "what to change"'
    else:
        how = f"  (task {task.id} is {task.status.value}, not in review: there is nothing to answer)"
    return "\n".join([*decided, how])


def grouped(tasks: Sequence[TaskView], workflows: dict[int, WorkflowView], *, width: int = 120) -> str:
    """The task table, with each workflow's tasks together under a line for the workflow."""
    loose = [t for t in tasks if t.workflow is None or t.workflow not in workflows]
    parts = [table(loose, width=width)] if loose else []
    for wid in sorted({t.workflow for t in tasks if t.workflow in workflows}):
        wf = workflows[wid]  # type: ignore[index]
        parts.append(workflow_block(wf, width=width, tasks=[t for t in tasks if t.workflow == wid]))
    return "\n\n".join(parts)


def workflow_block(wf: WorkflowView, *, width: int = 120, tasks: Sequence[TaskView] | None = None, steps: bool = False) -> str:
    """A workflow's line and its tasks' table; with `steps`, the steps as they run between."""
    spent = f"{cost(wf.cost_usd)} of {usd(wf.budget_usd)}" if getattr(wf, "budget_usd", None) else cost(wf.cost_usd)
    head = f"workflow {wf.id} · {wf.template} · {wf.status} · {spent} · {wf.goal}"
    if wf.worktree:
        head += f" · {wf.worktree}"
    if getattr(wf, "merge_note", ""):
        head += f" · {wf.merge_note}"
    lines = [head] + ([f"  steps: {run_steps(wf)}"] if steps else [])
    fitted = [shorten(line, width) for line in lines]
    text = "\n".join(fitted) + "\n" + table(list(tasks if tasks is not None else wf.tasks), width=width)
    if steps:
        changed = [t for t in wf.tasks if getattr(t, "changes", None) is not None]
        text += "".join(f"\n  changes of {t.step or 'task ' + str(t.id)} (task {t.id}): {changes_line(t.changes)}" for t in changed)
    return text


# ---------------------------------------------------------------------------------------
# workflow steps: a chain of levels, the steps of one level side by side ("a → b + c → d")


def step_levels(steps: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """(name, the names it runs after) in template order -> the names by level: each step
    one level after the deepest step it depends on, so the steps of a level may run at the
    same time. Names that are not steps are ignored, and so is a cycle (the daemon refuses
    such templates)."""
    deps = {name: list(after) for name, after in steps}
    level: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...]) -> int:
        if name not in level:
            inner = [depth(d, (*path, name)) for d in deps[name] if d in deps and d not in path and d != name]
            level[name] = 1 + max(inner, default=-1)
        return level[name]

    for name in deps:
        depth(name, ())
    levels: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for name in deps:
        levels[level[name]].append(name)
    return levels


def _chain(levels: list[list[str]]) -> str:
    return " → ".join(" + ".join(level) for level in levels)


def steps_line(t: WorkflowTemplate) -> str:
    """A template's steps in the order they run: "review + tests → report"."""
    return _chain(step_levels([(s.name, [*s.after, *filter(None, [s.if_succeeded, s.if_failed])]) for s in t.steps]))


def run_steps(wf: WorkflowView) -> str:
    """A workflow's steps in the order they run, each with its task and status mark:
    "● review #1 + ✓ tests #2 → ○ report #3"."""
    tasks = {t.id: t for t in wf.tasks}
    step_of = {task_id: step for step, task_id in wf.steps.items()}

    def after(task_id: int) -> list[str]:
        task = tasks.get(task_id)
        return [step_of[a] for a in task.after if a in step_of] if task is not None else []

    def label(step: str) -> str:
        task = tasks.get(wf.steps[step])
        return f"{MARK.get(task.status, '?') if task is not None else '·'} {step} #{wf.steps[step]}"

    levels = step_levels([(step, after(task_id)) for step, task_id in wf.steps.items()])
    return _chain([[label(step) for step in level] for level in levels])


def role_details(role: Role, *, custom: bool = False) -> str:
    lines = [f"{role.name}{' (yours)' if custom else ''}: {role.description}", ""]
    lines += ["  " + line for line in role.prompt.splitlines()]
    lines.append("")
    lines.append(f"  allowed tools     {', '.join(role.allowed_tools) or '-'}")
    lines.append(f"  disallowed tools  {', '.join(role.disallowed_tools) or '-'}")
    lines.append(f"  permission mode   {role.permission_mode}")
    lines.append(f"  agent             {getattr(role, 'agent', None) or '(default)'}")
    lines.append(f"  model             {role.model or '(default)'}")
    limits = [f"timeout {duration(role.timeout)}" if role.timeout else "", f"idle timeout {duration(role.idle_timeout)}" if role.idle_timeout else "", f"budget {usd(role.budget_usd)}" if role.budget_usd else ""]
    lines.append(f"  limits            {', '.join(x for x in limits if x) or '-'}")
    lines.append(f"  worktree          {'yes' if role.worktree else 'no'}")
    checks = list(getattr(role, "check", []))
    if checks or getattr(role, "review", False) or getattr(role, "expects_change", False):
        rounds = f", {role.check_rounds} rounds" if getattr(role, "check_rounds", None) else ""
        lines.append(f"  checks            {'; '.join(checks) or '-'}{rounds}")
        lines.append(f"  expects a change  {'yes' if role.expects_change else 'no'}; review {'yes' if role.review else 'no'}")
    if role.sandbox is not None or role.network is not None:
        network = "" if role.network is None else f", network {'on' if role.network else 'off'}"
        lines.append(f"  sandbox           {role.sandbox or '(as configured)'}{network}")
    rules = list(role.policy) or (["(this built-in role's own rules, scoped to the task's directory)"] if not custom else ["-"])
    lines.append(f"  policy            {rules[0]}")
    lines += [f"                    {rule}" for rule in rules[1:]]
    lines.append(f"                    see which rule decides a call: orchestra policy check --role {role.name} 'Bash(...)'")
    return "\n".join(lines)


def template_details(t: WorkflowTemplate) -> str:
    lines = [f"{t.name}: {t.description}" + (" (in a git worktree)" if t.worktree else ""), f"  steps: {steps_line(t)}", ""]
    for step in t.steps:
        deps = []
        if step.after:
            deps.append("after " + ", ".join(step.after))
        if step.if_succeeded:
            deps.append(f"only if {step.if_succeeded} succeeded")
        if step.if_failed:
            deps.append(f"only if {step.if_failed} failed")
        lines.append(f"  {step.name} ({step.role}, {step.workspace} workspace{'; ' + '; '.join(deps) if deps else ''})")
        body = step.prompt or " ".join(step.argv)
        lines += ["      " + line for line in body.splitlines()]
        if getattr(step, "check", None) or getattr(step, "review", None):
            lines.append(f"      checks: {'; '.join(step.check) or '-'}" + ("; then a person's review" if step.review else ""))
    return "\n".join(lines)


def node_table(result) -> str:
    """`orchestra nodes`: each node of the cluster, its slots in use, labels, health and
    tasks; then what is wrong with the cluster, if anything."""
    if not result.address:
        return result.problem
    rows = [
        (f"{n.host} ({n.id[:8]})", f"{len(n.running)}/{n.slots}", ",".join(n.labels) or "-", "up" if n.alive else "gone",
         " ".join(map(str, n.running)) or "-")
        for n in result.nodes
    ]
    head = ("NODE", "SLOTS", "LABELS", "HEALTH", "TASKS")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [f"ray cluster at {result.address}"]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(r[:4], widths)) + "  " + r[4] for r in [head, *rows]]
    if not rows and not result.problem:
        lines.append("no node offers agent slots: start one with ray start --resources '{\"orchestra_agent\": 4}'")
    if result.problem:
        lines += ["", result.problem]
    return "\n".join(lines)


def agent_table(agents: list) -> str:
    """`orchestra agents`: each kind, whether it can run, its CLI and version; then what
    to do about each one that cannot."""
    rows = [(a.name + (" *" if a.default else ""), "yes" if a.usable else "no", a.version or "-", a.path or a.program or "(the task's program)")
            for a in agents]
    widths = [max(len(r[i]) for r in [("AGENT", "USABLE", "VERSION", "CLI"), *rows]) for i in range(3)]
    lines = [f"{'AGENT':<{widths[0]}}  {'USABLE':<{widths[1]}}  {'VERSION':<{widths[2]}}  CLI"]
    lines += [f"{n:<{widths[0]}}  {u:<{widths[1]}}  {v:<{widths[2]}}  {c}" for n, u, v, c in rows]
    problems = [f"{a.name}: {a.problem}" for a in agents if a.problem]
    if problems:
        lines += ["", *problems]
    if any(a.default for a in agents):
        lines += ["", "* the default agent (orchestra config set default_agent NAME)"]
    return "\n".join(lines)
