"""The console's HTML: pure functions of the daemon's views, no I/O.

Every page is whole HTML from the server; what changes live is sent by the server as the
same fragments (`task_card`, `task_row`, `step_state`), which the page's script puts in
place by id. Every value from a view is escaped (`h`).
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable
from urllib.parse import quote

from orchestra.shared import protocol as p

ACTIVE = ("waiting", "review", "running", "checking", "queued")


def h(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _ago(at: float | None, now: float) -> str:
    if not at:
        return ""
    s = max(0, int(now - at))
    return f"{s}s ago" if s < 60 else f"{s // 60}m ago" if s < 3600 else f"{s // 3600}h ago" if s < 86400 else f"{s // 86400}d ago"


def _money(usd: float) -> str:
    return f"${usd:.2f}" if usd else ""


def layout(title: str, body: str, *, page: str, live: str = "") -> str:
    """A whole page: the navigation, `body`, and the live-update script (fed by
    /events?`live` when given)."""
    nav = "".join(
        f'<a href="{href}"{" class=here" if name == page else ""}>{label}</a>'
        for name, href, label in (("team", "/", "Team"), ("tasks", "/tasks", "Tasks"), ("workflows", "/workflows", "Workflows"),
                                  ("merges", "/merges", "Merges"), ("submit", "/submit", "New task"))
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{h(title)} · orchestra</title><meta name=viewport content='width=device-width, initial-scale=1'>"
        "<link rel=stylesheet href=/static/console.css></head>"
        f"<body data-live='{h(live)}'><header><span class=brand>orchestra</span><nav>{nav}</nav>"
        "<span id=conn class=conn title='live updates'></span></header>"
        f"<main>{body}</main><script src=/static/console.js></script></body></html>"
    )


# -- a task in a list --------------------------------------------------------------------


def status_badge(status: str) -> str:
    return f'<span class="badge s-{h(status)}">{h(status)}</span>'


def question_form(view: p.TaskView) -> str:
    """The question a waiting task asks and the buttons to answer it."""
    q = view.waiting
    if q is None:
        return ""
    act = f"/api/tasks/{view.id}/respond"
    # Enter in a field sends what that field is for (data-enter), never the form's first button.
    parts = [f'<div class=question data-request="{h(q.request_id)}"><div class=asks>{h(q.prompt)}</div>'
             f'<form class=answer data-action="{act}">']
    if q.kind == "permission":
        parts.append('<button name=decision value=allow class=allow>Allow</button>'
                     '<input name=message placeholder="why (for a deny)" aria-label="message" data-enter=deny>'
                     '<button name=decision value=deny class=deny>Deny</button>')
    elif q.kind == "review":
        parts.append('<button name=decision value=approve class=allow>Approve</button>'
                     '<input name=message placeholder="what to change" aria-label="message" data-enter=reject>'
                     '<button name=decision value=reject class=deny>Reject</button>')
    elif q.kind == "budget":
        parts.append('<input name=budget type=number step=0.01 min=0 placeholder="new budget, $" aria-label="budget" data-enter=budget>'
                     '<button name=decision value=budget>Raise the budget</button>')
    else:
        for i, option in enumerate(q.options, 1):
            parts.append(f'<button name=option value="{i}" class=option>{i}. {h(option)}</button>')
        parts.append('<input name=text placeholder="your answer" aria-label="answer" data-enter=text>'
                     '<button name=decision value=text>Send</button>')
    parts.append("</form></div>")
    return "".join(parts)


def task_card(view: p.TaskView, now: float) -> str:
    """A task on the team page: what it is, what it does now, and its question."""
    what = "" if view.waiting else view.activity or view.waits_for or view.reason or view.result
    where = f" on {view.node}" if view.node else ""
    return (
        f'<article class="card s-{h(view.status.value)}" id="task-{view.id}" data-status="{h(view.status.value)}">'
        f'<div class=top><a href="/tasks/{view.id}">#{view.id} {h(view.title)}</a>{status_badge(view.status.value)}</div>'
        f'<div class=meta>{h(view.role)} · {h(view.agent)}{h(where)} · {h(_ago(view.started_at or view.submitted_at, now))}'
        f'{" · " + h(_money(view.cost_usd)) if view.cost_usd else ""}</div>'
        f'<div class=activity>{h(what)}</div>{question_form(view)}</article>'
    )


def task_row(view: p.TaskView, now: float) -> str:
    return (
        f'<tr id="task-{view.id}" data-status="{h(view.status.value)}" data-role="{h(view.role)}">'
        f'<td><a href="/tasks/{view.id}">{view.id}</a></td><td>{status_badge(view.status.value)}</td>'
        f'<td>{h(view.role)}</td><td>{h(view.agent)}</td><td class=title>{h(view.title)}</td>'
        f'<td>{h(_ago(view.submitted_at, now))}</td><td>{h(_money(view.cost_usd))}</td>'
        f'<td class=what>{h((view.waiting.prompt if view.waiting else "") or view.activity or view.reason)}</td></tr>'
    )


# -- pages -------------------------------------------------------------------------------


def team_page(tasks: list[p.TaskView], info: p.DaemonStatus, now: float) -> str:
    """Waiting first, then running, then queued; the newest finished below."""
    order = {s: i for i, s in enumerate(ACTIVE)}
    active = sorted((t for t in tasks if t.status.value in order), key=lambda t: (order[t.status.value], t.id))
    done = sorted((t for t in tasks if t.status.value not in order), key=lambda t: -t.id)[:20]
    counts = " · ".join(f"{h(n)} {h(k)}" for k, n in sorted(info.counts.items()) if n)
    sections = []
    for title, key, views in (("Waiting for you", "waiting", [t for t in active if t.status.value in ("waiting", "review")]),
                              ("Working", "working", [t for t in active if t.status.value in ("running", "checking")]),
                              ("Queued", "queued", [t for t in active if t.status.value == "queued"]),
                              ("Finished lately", "finished", done)):
        cards = "".join(task_card(t, now) for t in views)
        sections.append(f'<section id="{key}" class=group><h2>{title} <span class=count>{len(views)}</span></h2>'
                        f'<div class=cards>{cards}</div></section>')
    body = f'<h1>Team</h1><p class=summary id=summary>{counts or "no tasks yet"} · {h(_money(info.cost_usd) or "$0.00")} spent</p>' + "".join(sections)
    return layout("Team", body, page="team", live="team")


def tasks_page(tasks: list[p.TaskView], now: float, *, status: str, role: str, text: str, roles: list[str],
               older: int | None = None, limit: int = 200, newest: bool = True) -> str:
    """A page of tasks, newest first; only the first page (`newest`) takes in new ones as they come."""
    def option(value: str, chosen: str, label: str | None = None) -> str:
        return f'<option value="{h(value)}"{" selected" if value == chosen else ""}>{h(label or value or "any")}</option>'

    statuses = "".join(option(s, status) for s in ["", *[s.value for s in p.Status]])
    role_options = "".join(option(r, role) for r in ["", *roles])
    rows = "".join(task_row(t, now) for t in tasks)
    filters = (
        f'<form class=filters method=get action=/tasks><label>status <select name=status>{statuses}</select></label>'
        f'<label>role <select name=role>{role_options}</select></label>'
        f'<label>text <input name=q value="{h(text)}" placeholder="in titles and results"></label><button>Filter</button></form>'
    )
    cols = "".join(f"<col class={c}>" for c in ("id", "status", "role", "agent", "title", "when", "cost", "what"))
    table = (f'<table class=tasks><colgroup>{cols}</colgroup><thead><tr><th>id</th><th>status</th><th>role</th><th>agent</th>'
             f'<th>title</th><th>submitted</th><th>cost</th><th>now</th></tr></thead><tbody id=rows>{rows}</tbody></table>')
    kept = [(k, v) for k, v in (("status", status), ("role", role), ("q", text)) if v]
    live = "tasks?" + "&".join(f"{k}={quote(v)}" for k, v in kept) if newest else ""
    more = ""
    if older is not None:
        query = "&".join(f"{k}={quote(str(v))}" for k, v in [*kept, ("limit", limit), ("before", older)])
        more = f'<p class=more><a id=older href="/tasks?{h(query)}">older tasks</a></p>'
    return layout("Tasks", f"<h1>Tasks <span class=count id=shown>{len(tasks)}</span></h1>{filters}{table}{more}", page="tasks", live=live)


def task_page(view: p.TaskView, transcript: str, diff: p.DiffResult | None, now: float) -> str:
    facts = [
        ("status", status_badge(view.status.value) + (f" {h(view.reason)}" if view.reason else "")),
        ("role · agent", h(f"{view.role} · {view.agent}")),
        ("where", h(f"{view.executor}" + (f", {view.node}" if view.node else "") + (f", {view.cwd}" if view.cwd else ""))),
        ("attempts", h(view.attempts)),
        ("cost", h(f"${view.cost_usd:.4f}, {view.input_tokens:,} tokens in, {view.output_tokens:,} out")),
        ("runtime", h(f"{view.runtime:.1f} s" if view.runtime is not None else "")),
        ("worktree", h(view.worktree)),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts if v)
    what = h(" ".join(view.argv)) if view.argv else h(view.prompt)
    checks = "".join(
        f'<li class="{"pass" if c.passed else "running" if c.running else "fail"}"><code>{h(c.command)}</code> '
        f'{"running" if c.running else "passed" if c.passed else f"failed (exit {c.exit_code})"}'
        f'{f"<pre>{h(c.tail)}</pre>" if c.tail and not c.passed else ""}</li>'
        for c in view.check_results
    )
    decisions = "".join(
        f'<li class={h(d.effect)}>{h(time.strftime("%H:%M:%S", time.localtime(d.at)))} {h(d.effect)} '
        f'<b>{h(d.tool)}</b> {h(d.summary)} <span class=by>by {h(d.by)}</span></li>'
        for d in view.decisions
    )
    reviews = "".join(
        f'<li>{"approved" if r.approved else "rejected"} by {h(r.by)}{": " + h(r.message) if r.message else ""}</li>' for r in view.reviews
    )
    sections = [
        f'<h1>#{view.id} {h(view.title)}</h1><div id="task-{view.id}" class=head data-status="{h(view.status.value)}">'
        f'<table class=facts>{table}</table>{question_form(view)}</div>',
        f"<section><h2>Asked</h2><pre class=prompt>{what}</pre></section>",
    ]
    if view.result:
        sections.append(f"<section><h2>Result</h2><pre class=result>{h(view.result)}</pre></section>")
    if view.checks:
        sections.append(f"<section><h2>Checks (round {view.check_round} of {view.check_rounds})</h2><ul class=checks>{checks or '<li>not run yet</li>'}</ul></section>")
    if view.decisions:
        sections.append(f"<section><h2>Permission decisions ({view.decisions_total})</h2><ul class=decisions>{decisions}</ul></section>")
    if view.reviews:
        sections.append(f"<section><h2>Reviews</h2><ul>{reviews}</ul></section>")
    if diff is not None:
        sections.append(f'<section><h2>Changes <span class=count>{diff.files} file{"s" if diff.files != 1 else ""}, +{diff.insertions} -{diff.deletions}</span></h2>'
                        f'{diff_html(diff.diff)}{f"<p class=note>{h(diff.note)}</p>" if diff.note else ""}</section>')
    sections.append(f'<section><h2>Transcript</h2><pre id=transcript class=transcript data-task="{view.id}">{h(transcript)}</pre></section>')
    return layout(f"Task {view.id}", "".join(sections), page="tasks", live=f"task?id={view.id}")


def workflows_page(workflows: list[p.WorkflowView]) -> str:
    rows = "".join(
        f'<tr><td><a href="/workflows/{w.id}">{w.id}</a></td><td>{status_badge(w.status)}</td><td>{h(w.template)}</td>'
        f'<td>{h(w.goal)}</td><td>{len(w.steps)}</td><td>{h(_money(w.cost_usd))}</td></tr>'
        for w in workflows
    )
    body = (f"<h1>Workflows</h1><table class=tasks><thead><tr><th>id</th><th>status</th><th>template</th><th>goal</th>"
            f"<th>steps</th><th>cost</th></tr></thead><tbody>{rows}</tbody></table>")
    return layout("Workflows", body, page="workflows", live="team")


def workflow_page(workflow: p.WorkflowView) -> str:
    body = (f"<h1>Workflow {workflow.id}: {h(workflow.template)}</h1><p class=summary>{h(workflow.goal)} · "
            f"{status_badge(workflow.status)} · {h(_money(workflow.cost_usd) or '$0.00')}</p>{workflow_graph(workflow)}")
    return layout(f"Workflow {workflow.id}", body, page="workflows", live=f"workflow?id={workflow.id}")


def workflow_graph(workflow: p.WorkflowView) -> str:
    """Its steps as an SVG graph: a column per depth of dependency, an arrow per `after`."""
    by_id = {t.id: t for t in workflow.tasks}
    name_of = {task: name for name, task in workflow.steps.items()}
    depth: dict[int, int] = {}
    for task_id in sorted(by_id):  # ids follow the template's order: a step's dependencies come first
        deps = [d for d in by_id[task_id].after if d in by_id]
        depth[task_id] = 1 + max((depth.get(d, 0) for d in deps), default=-1)
    columns: dict[int, list[int]] = {}
    for task_id in sorted(by_id):
        columns.setdefault(depth[task_id], []).append(task_id)
    w, hgt, gap_x, gap_y = 170, 54, 70, 24
    place = {t: (20 + d * (w + gap_x), 20 + i * (hgt + gap_y)) for d, ids in columns.items() for i, t in enumerate(ids)}
    width = 40 + len(columns) * (w + gap_x)
    height = 40 + max((len(ids) for ids in columns.values()), default=1) * (hgt + gap_y)
    edges = []
    for task_id, view in by_id.items():
        for dep in view.after:
            if dep in place:
                (x1, y1), (x2, y2) = place[dep], place[task_id]
                edges.append(f'<path class=edge d="M{x1 + w},{y1 + hgt / 2} C{x1 + w + gap_x / 2},{y1 + hgt / 2} '
                             f'{x2 - gap_x / 2},{y2 + hgt / 2} {x2},{y2 + hgt / 2}" marker-end="url(#arrow)"/>')
    nodes = "".join(
        f'<a href="/tasks/{t}"><g class="step s-{h(by_id[t].status.value)}" id="step-{t}" data-task="{t}">'
        f'<rect x="{x}" y="{y}" width="{w}" height="{hgt}" rx="8"/>'
        f'<text x="{x + 10}" y="{y + 22}" class=name>{h(name_of.get(t, by_id[t].step))}</text>'
        f'<text x="{x + 10}" y="{y + 42}" class=state>{h(by_id[t].status.value)} · #{t}</text></g></a>'
        for t, (x, y) in place.items()
    )
    return (f'<svg class=graph id=graph width="{width}" height="{height}" viewBox="0 0 {width} {height}" role=img '
            f'aria-label="the steps of workflow {workflow.id}"><defs><marker id=arrow viewBox="0 0 10 10" refX=9 refY=5 '
            f'markerWidth=7 markerHeight=7 orient=auto><path d="M0,0 L10,5 L0,10 z"/></marker></defs>{"".join(edges)}{nodes}</svg>')


def step_state(view: p.TaskView) -> dict:
    """What a workflow page changes when one of its steps does."""
    return {"id": view.id, "status": view.status.value}


def merges_page(merges: list[p.MergeView], now: float) -> str:
    rows = "".join(
        f'<tr><td>{m.id}</td><td>{status_badge(m.status)}</td><td><code>{h(m.branch)}</code> → <code>{h(m.target)}</code></td>'
        f'<td>{f"<a href=/tasks/{m.task}>task {m.task}</a>" if m.task else f"<a href=/workflows/{m.workflow}>workflow {m.workflow}</a>" if m.workflow else ""}</td>'
        f'<td>{h(m.reason or (", ".join(m.conflicts)))}</td><td>{h(_ago(m.queued_at, now))}</td></tr>'
        for m in reversed(merges)
    )
    body = (f"<h1>Merge queue</h1><table class=tasks><thead><tr><th>id</th><th>status</th><th>branch</th><th>of</th>"
            f"<th>why</th><th>queued</th></tr></thead><tbody>{rows or '<tr><td colspan=6>nothing queued</td></tr>'}</tbody></table>")
    return layout("Merges", body, page="merges")


def submit_page(roles: list[str], templates: list[str], cwd: str, agents: Iterable[str]) -> str:
    role_options = "".join(f"<option>{h(r)}</option>" for r in roles)
    agent_options = "<option value=''>as the role says</option>" + "".join(f"<option>{h(a)}</option>" for a in agents)
    template_options = "".join(f"<option>{h(t)}</option>" for t in templates)
    body = (
        "<h1>New task</h1><form class=submit data-action=/api/tasks data-then=task>"
        "<label>What to do <textarea name=prompt rows=4 placeholder='a prompt for the agent'></textarea></label>"
        "<label>or a command <input name=command placeholder='pytest -q'></label>"
        f"<label>Role <select name=role>{role_options}</select></label><label>Agent <select name=agent>{agent_options}</select></label>"
        f"<label>Directory <input name=cwd value='{h(cwd)}'></label>"
        "<label>Priority <select name=priority><option>normal</option><option>high</option><option>urgent</option><option>low</option></select></label>"
        "<label class=check><input type=checkbox name=worktree> in a git worktree of its own</label>"
        "<button>Submit</button></form>"
        "<h1>Start a workflow</h1><form class=submit data-action=/api/workflows data-then=workflow>"
        f"<label>Template <select name=template>{template_options}</select></label>"
        "<label>Goal <textarea name=goal rows=3></textarea></label>"
        f"<label>Directory <input name=cwd value='{h(cwd)}'></label>"
        "<label class=check><input type=checkbox name=worktree> in git worktrees</label><button>Start</button></form>"
    )
    return layout("New task", body, page="submit")


# -- diffs -------------------------------------------------------------------------------

_KEYWORDS = {
    "py": "and as assert async await break class continue def del elif else except False finally for from global if "
          "import in is lambda None nonlocal not or pass raise return True try while with yield",
    "js": "async await break case catch class const continue default delete do else export extends false finally for "
          "function if import in instanceof let new null return super switch this throw true try typeof var void while yield",
    "go": "break case chan const continue default defer else fallthrough for func go goto if import interface map "
          "package range return select struct switch type var nil true false",
    "rs": "as async await break const continue crate else enum extern false fn for if impl in let loop match mod move "
          "mut pub ref return self Self static struct super trait true type unsafe use where while",
    "sh": "if then else elif fi for while do done case esac in function return local export",
    "c": "auto break case char const continue default do double else enum extern float for goto if int long register "
         "return short signed sizeof static struct switch typedef union unsigned void volatile while class public private",
}
_LANG = {"py": "py", "js": "js", "ts": "js", "tsx": "js", "jsx": "js", "mjs": "js", "go": "go", "rs": "rs", "sh": "sh",
         "bash": "sh", "c": "c", "h": "c", "cc": "c", "cpp": "c", "hpp": "c", "java": "c", "cs": "c"}
_HASH_COMMENTS = {"py", "sh"}


def _token_pattern(lang: str) -> re.Pattern:
    comment = r"#.*" if lang in _HASH_COMMENTS else r"//.*"
    words = "|".join(sorted(_KEYWORDS[lang].split(), key=len, reverse=True))
    return re.compile(rf'(?P<c>{comment})|(?P<s>"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')|(?P<n>\b\d[\d_.]*\b)|(?P<k>\b(?:{words})\b)')


_PATTERNS = {lang: _token_pattern(lang) for lang in _KEYWORDS}


def highlight(code: str, lang: str | None) -> str:
    """`code` escaped, with its comments, strings, numbers and keywords marked for colour."""
    pattern = _PATTERNS.get(lang or "")
    if pattern is None:
        return h(code)
    out, at = [], 0
    for m in pattern.finditer(code):
        out.append(h(code[at:m.start()]))
        out.append(f'<span class=t{m.lastgroup}>{h(m.group())}</span>')
        at = m.end()
    out.append(h(code[at:]))
    return "".join(out)


def diff_html(patch: str) -> str:
    """A unified diff as lines marked added, removed, hunk or file, with each file's code
    highlighted by its language."""
    lines, lang = [], None
    for line in patch.splitlines():
        if line.startswith("diff --git"):
            name = line.rsplit(" b/", 1)[-1]
            lang = _LANG.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None
            lines.append(f'<span class="dl file">{h(line)}</span>')
        elif line.startswith(("+++", "---", "index ", "new file", "deleted file", "similarity", "rename ")):
            lines.append(f'<span class="dl meta">{h(line)}</span>')
        elif line.startswith("@@"):
            lines.append(f'<span class="dl hunk">{h(line)}</span>')
        elif line[:1] in "+- ":
            kind = {"+": "add", "-": "del", " ": "ctx"}[line[:1]]
            lines.append(f'<span class="dl {kind}"><span class=sign>{h(line[:1])}</span>{highlight(line[1:], lang)}</span>')
        else:
            lines.append(f'<span class="dl meta">{h(line)}</span>')
    return f'<pre class=diff id=diff>{"".join(lines)}</pre>'


def json_event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
